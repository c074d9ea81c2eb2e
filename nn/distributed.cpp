#include "nn/distributed.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <thread>

#include "core/error.h"
#include "core/fs.h"
#include "kernels/ops.h"
#include "nn/model.h"

#if DNNS_HAVE_MPI
#include <mpi.h>
#if __has_include(<mpi-ext.h>)
#include <mpi-ext.h>  // MPIX_Query_cuda_support (Open MPI)
#endif
#endif

namespace dnns::dist {

namespace {

using Clock = std::chrono::steady_clock;

int g_rank = 0, g_size = 1, g_local_size = 1;  // in the group (the whole job unless split)
int g_world_rank = 0, g_world_size = 1;           // in the whole job
double g_comm_seconds = 0;

// Adds the wall time of its scope to g_comm_seconds.
struct CommTimer {
  Clock::time_point t0 = Clock::now();
  ~CommTimer() { g_comm_seconds += std::chrono::duration<double>(Clock::now() - t0).count(); }
};

#if DNNS_HAVE_MPI
bool g_started = false;  // MPI initialised by init()
MPI_Comm g_job = MPI_COMM_NULL;    // every rank of the job (world_* calls)
MPI_Comm g_comm = MPI_COMM_NULL;   // collectives of the trainer, batchnorm and the apps, in the group
MPI_Comm g_grads = MPI_COMM_NULL;  // gradient buckets only: they overlap with batchnorm's
bool g_split = false;              // g_comm and g_grads are a group's (split_world)

// Makes `comm` the group's communicators (duplicates for the gradients) with errors returned.
void set_group(MPI_Comm comm) {
  g_comm = comm;
  MPI_Comm_dup(g_comm, &g_grads);
  // Errors come back as codes (turned into exceptions, then MPI_Abort in main) instead of
  // Open MPI killing the job from inside the call without saying where.
  MPI_Comm_set_errhandler(g_comm, MPI_ERRORS_RETURN);
  MPI_Comm_set_errhandler(g_grads, MPI_ERRORS_RETURN);
  MPI_Comm_rank(g_comm, &g_rank);
  MPI_Comm_size(g_comm, &g_size);
  set_file_writer(g_rank == 0);
}

void mpi_check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw Error(std::string("MPI ") + what + " failed on rank " + std::to_string(g_world_rank) + ": " + std::string(msg, len));
}

// A barrier over `comm` that waits without spinning: an MPI_Ibarrier polled every 20 ms.
void idle_barrier(MPI_Comm comm) {
  MPI_Request req;
  mpi_check(MPI_Ibarrier(comm, &req), "ibarrier");
  for (;;) {
    int done = 0;
    mpi_check(MPI_Test(&req, &done, MPI_STATUS_IGNORE), "ibarrier test");
    if (done) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK", "MV2_COMM_WORLD_SIZE"})
    if (std::getenv(v)) return true;
  const char* force = std::getenv("DNNS_MPI_INIT");
  return force && std::strcmp(force, "1") == 0;
}
#endif

}  // namespace

bool built_with_mpi() {
#if DNNS_HAVE_MPI
  return true;
#else
  return false;
#endif
}

void init(int* argc, char*** argv) {
#if DNNS_HAVE_MPI
  if (g_started || !launched_by_mpi()) return;
  int provided = 0;
  // Only the main thread calls MPI (the loader's and TBB's threads never do).
  mpi_check(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "init");
  g_started = true;
  MPI_Comm_dup(MPI_COMM_WORLD, &g_job);
  MPI_Comm_set_errhandler(g_job, MPI_ERRORS_RETURN);
  MPI_Comm_rank(g_job, &g_world_rank);
  MPI_Comm_size(g_job, &g_world_size);
  MPI_Comm all;
  MPI_Comm_dup(MPI_COMM_WORLD, &all);
  set_group(all);
  MPI_Comm local;
  MPI_Comm_split_type(g_job, MPI_COMM_TYPE_SHARED, g_world_rank, MPI_INFO_NULL, &local);
  MPI_Comm_size(local, &g_local_size);
  MPI_Comm_free(&local);
  // Results go to stdout once, from rank 0; every rank keeps stderr for its errors.
  if (g_world_rank != 0 && !std::getenv("DNNS_MPI_ALL_STDOUT")) std::freopen("/dev/null", "w", stdout);
#else
  (void)argc, (void)argv;
#endif
}

void finalize() {
#if DNNS_HAVE_MPI
  if (!g_started) return;
  MPI_Comm_free(&g_grads);
  MPI_Comm_free(&g_comm);
  MPI_Comm_free(&g_job);
  MPI_Finalize();
  g_started = false;
  g_split = false;
  g_rank = 0, g_size = 1, g_local_size = 1, g_world_rank = 0, g_world_size = 1;
  set_file_writer(true);
#endif
}

int rank() { return g_rank; }
int size() { return g_size; }
int local_size() { return g_local_size; }
int world_rank() { return g_world_rank; }
int world_size() { return g_world_size; }

int split_world(int groups) {
  check(groups >= 1 && g_world_size % groups == 0,
        "cannot split " + std::to_string(g_world_size) + " rank(s) into " + std::to_string(groups) +
            " groups of equal size (the number of ranks must be a multiple of the number of groups)");
#if DNNS_HAVE_MPI
  if (!g_started) return 0;
  check(!g_split, "split_world: the ranks are already split into groups (join_world first)");
  const int per_group = g_world_size / groups, group = g_world_rank / per_group;
  MPI_Comm comm;
  mpi_check(MPI_Comm_split(g_job, group, g_world_rank, &comm), "split into groups");
  MPI_Comm_free(&g_grads);
  MPI_Comm_free(&g_comm);
  set_group(comm);
  g_split = true;
  return group;
#else
  return 0;
#endif
}

void join_world() {
#if DNNS_HAVE_MPI
  if (!g_started || !g_split) return;
  MPI_Comm_free(&g_grads);
  MPI_Comm_free(&g_comm);
  MPI_Comm all;
  MPI_Comm_dup(g_job, &all);
  set_group(all);
  g_split = false;
#endif
}

void world_wait_idle() {
#if DNNS_HAVE_MPI
  if (g_world_size > 1) idle_barrier(g_job);
#endif
}

std::vector<std::string> world_gather(const std::string& mine) {
#if DNNS_HAVE_MPI
  if (g_world_size > 1) {
    CommTimer t;
    const int n = static_cast<int>(mine.size());
    std::vector<int> sizes(static_cast<size_t>(g_world_size)), offsets(static_cast<size_t>(g_world_size));
    mpi_check(MPI_Gather(&n, 1, MPI_INT, sizes.data(), 1, MPI_INT, 0, g_job), "gather to rank 0");
    std::string all;
    if (g_world_rank == 0) {
      int64_t total = 0;
      for (int r = 0; r < g_world_size; ++r) offsets[r] = static_cast<int>(total), total += sizes[r];
      check(total < (int64_t(1) << 31), "world_gather: more than 2 GiB gathered");
      all.resize(size_t(total));
    }
    mpi_check(MPI_Gatherv(mine.data(), n, MPI_CHAR, all.data(), sizes.data(), offsets.data(), MPI_CHAR, 0, g_job),
              "gather to rank 0");
    std::vector<std::string> out;
    if (g_world_rank == 0)
      for (int r = 0; r < g_world_size; ++r) out.push_back(all.substr(size_t(offsets[r]), size_t(sizes[r])));
    return out;
  }
#endif
  return {mine};
}

void abort_job(int code) {
#if DNNS_HAVE_MPI
  if (!g_started || g_world_size <= 1) return;
  std::fprintf(stderr, "rank %d of %d failed: stopping all ranks (MPI_Abort)\n", g_world_rank, g_world_size);
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, code);
#endif
  (void)code;
}

void barrier() {
#if DNNS_HAVE_MPI
  if (g_size <= 1) return;
  CommTimer t;
  mpi_check(MPI_Barrier(g_comm), "barrier");
#endif
}

void wait_idle() {
#if DNNS_HAVE_MPI
  if (g_size > 1) idle_barrier(g_comm);
#endif
}

void allreduce_sum(double* values, int n) {
#if DNNS_HAVE_MPI
  if (g_size <= 1) return;
  CommTimer t;
  mpi_check(MPI_Allreduce(MPI_IN_PLACE, values, n, MPI_DOUBLE, MPI_SUM, g_comm), "allreduce");
#else
  (void)values, (void)n;
#endif
}

void allgather(const double* values, int n, double* out) {
#if DNNS_HAVE_MPI
  if (g_size > 1) {
    CommTimer t;
    mpi_check(MPI_Allgather(values, n, MPI_DOUBLE, out, n, MPI_DOUBLE, g_comm), "allgather");
    return;
  }
#endif
  std::memcpy(out, values, sizeof(double) * size_t(n));
}

void broadcast(std::string& bytes, int root) {
#if DNNS_HAVE_MPI
  if (g_size <= 1) return;
  CommTimer t;
  uint64_t n = bytes.size();
  mpi_check(MPI_Bcast(&n, 1, MPI_UINT64_T, root, g_comm), "broadcast");
  bytes.resize(n);
  if (n) mpi_check(MPI_Bcast(bytes.data(), static_cast<int>(n), MPI_CHAR, root, g_comm), "broadcast");
#else
  (void)bytes, (void)root;
#endif
}

void broadcast(Tensor& t, int root) {
#if DNNS_HAVE_MPI
  if (g_size <= 1 || t.numel() == 0) return;
  CommTimer timer;
  const bool direct = t.is_cpu() || cuda_aware();
  if (!t.is_cpu() && direct) device_synchronize(t.device());  // MPI reads outside the stream
  Tensor host = direct ? t : t.to(Device::CPU);
  mpi_check(MPI_Bcast(host.data(), static_cast<int>(host.numel()), MPI_FLOAT, root, g_comm), "broadcast");
  if (!direct) t.copy_from(host);
#else
  (void)t, (void)root;
#endif
}

void check_same(uint64_t value, const std::string& what) {
  if (g_size <= 1) return;
  std::vector<double> all(size_t(g_size) * 2);
  // Two doubles carry the 64 bits exactly (32 each).
  const double mine[2] = {double(value >> 32), double(value & 0xffffffffu)};
  allgather(mine, 2, all.data());
  std::string differ;
  for (int r = 1; r < g_size; ++r)
    if (all[2 * r] != all[0] || all[2 * r + 1] != all[1]) differ += (differ.empty() ? "" : ", ") + std::to_string(r);
  if (!differ.empty())
    throw Error(what + " differs between the ranks: rank(s) " + differ + " disagree with rank 0 (checked on rank " +
                std::to_string(g_rank) + " of " + std::to_string(g_size) +
                "); the ranks no longer train one model (different files under --out on each machine?)");
}

uint64_t fingerprint(const Tensor& t, uint64_t h) {
  if (t.numel() == 0) return h;
  Tensor host = t.is_cpu() ? t : t.to(Device::CPU);
  const unsigned char* p = reinterpret_cast<const unsigned char*>(host.data());
  for (size_t i = 0; i < host.bytes(); ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

uint64_t fingerprint(Model& m) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (auto& [name, t] : m.state()) h = fingerprint(*t, h);
  for (auto& [name, t] : m.masks) h = fingerprint(t, h);
  return h;
}

double comm_seconds() { return g_comm_seconds; }

void fault_point(int64_t step) {
  static const char* spec = std::getenv("DNNS_FAULT_INJECT");
  static int passes = 0;  // times this rank reached the step (IMP levels pass the same steps again)
  if (!spec || !*spec) return;
  int r = -1, nth = 1;
  long long s = -1;
  char kind[16] = {0};
  const int got = std::sscanf(spec, "%d:%lld:%15[a-z]:%d", &r, &s, kind, &nth);
  if (got < 3 || nth < 1)
    throw Error(std::string("DNNS_FAULT_INJECT='") + spec + "': expected RANK:STEP:kill or RANK:STEP:error, "
                "optionally :N (the N-th time the step is reached)");
  if (r != g_world_rank || s != step || ++passes != nth) return;
  if (std::strcmp(kind, "kill") == 0) {
    std::fprintf(stderr, "DNNS_FAULT_INJECT: rank %d kills itself at step %lld\n", g_world_rank, s);
    std::fflush(stderr);
    ::kill(::getpid(), SIGKILL);
  }
  throw Error("DNNS_FAULT_INJECT: rank " + std::to_string(g_world_rank) + " fails at step " + std::to_string(s));
}

bool cuda_aware() {
#if DNNS_HAVE_MPI
  static const bool yes = [] {
    // DNNS_MPI_CUDA_AWARE=0 forces host staging; =1 trusts an MPI that is CUDA-aware without
    // Open MPI's query (MPICH, MVAPICH2-GDR, Cray MPICH with GPU support enabled).
    if (const char* force = std::getenv("DNNS_MPI_CUDA_AWARE"); force && (!std::strcmp(force, "0") || !std::strcmp(force, "1")))
      return force[0] == '1';
#if defined(MPIX_CUDA_AWARE_SUPPORT)
    return g_started && MPIX_Query_cuda_support() == 1;  // the library's answer at run time
#else
    return false;
#endif
  }();
  return yes;
#else
  return false;
#endif
}

// ---------------------------------------------------------------- GradientReducer

struct GradientReducer::Impl {
  struct Bucket {
    std::vector<Param*> params;  // in the order backward produces them (last layer first)
    int64_t numel = 0;
    int pending = 0;             // parameters whose gradient is not written yet
    bool started = false;
    Device device = Device::CPU;
    Tensor buffer;               // (numel) packed gradients, on the parameters' device
    Tensor staging;              // (numel) host copy when the device buffer cannot go to MPI
#if DNNS_HAVE_MPI
    MPI_Request request = MPI_REQUEST_NULL;
#endif
  };
  size_t bucket_bytes;
  std::vector<Param*> planned;       // the parameter list the buckets were made for
  std::vector<Bucket> buckets;
  std::map<const Param*, int> bucket_of;
  std::map<const Layer*, std::vector<Param*>> layer_params;
  int next_start = 0;                // buckets start strictly in order

  // Copies every gradient of `b` into its buffer and starts the sum over the ranks.
  void start(Bucket& b) {
#if DNNS_HAVE_MPI
    CommTimer t;
    int64_t off = 0;
    for (Param* p : b.params) {
      check(p->grad.defined() && p->grad.numel() == p->value.numel(),
            "gradient allreduce: parameter '" + p->name + "' has no gradient after backward");
      if (b.device == Device::CPU) {
        std::memcpy(b.buffer.data() + off, p->grad.data(), p->grad.bytes());
      } else {
        device_allocator(b.device)->copy_on_device(b.buffer.data() + off, p->grad.data(), p->grad.bytes());
      }
      off += p->grad.numel();
    }
    float* data = b.buffer.data();
    if (b.device != Device::CPU && !cuda_aware()) {
      b.staging.copy_from(b.buffer);  // waits for the device's stream
      data = b.staging.data();
    } else if (b.device != Device::CPU) {
      // A CUDA-aware MPI reads the buffer outside the backend's stream: the backward kernels
      // and the copies above must have finished first.
      device_synchronize(b.device);
    }
    mpi_check(MPI_Iallreduce(MPI_IN_PLACE, data, static_cast<int>(b.numel), MPI_FLOAT, MPI_SUM, g_grads, &b.request),
              "iallreduce of the gradients");
#endif
    b.started = true;
  }

  void progress() {
#if DNNS_HAVE_MPI
    for (Bucket& b : buckets)
      if (b.started && b.request != MPI_REQUEST_NULL) {
        int done = 0;
        mpi_check(MPI_Test(&b.request, &done, MPI_STATUS_IGNORE), "test of a gradient bucket");
      }
#endif
  }
};

GradientReducer::GradientReducer(size_t bucket_bytes) : impl_(std::make_unique<Impl>()) {
  impl_->bucket_bytes = std::max<size_t>(bucket_bytes, sizeof(float));
}
GradientReducer::~GradientReducer() {
#if DNNS_HAVE_MPI
  // An exception left buckets in flight: waiting could hang (the other ranks may never join),
  // and MPI may still write into the buffers, so they are left allocated; main() then stops
  // every rank (abort_job).
  for (auto& b : impl_->buckets)
    if (b.request != MPI_REQUEST_NULL) {
      (void)impl_.release();  // deliberately leaked
      return;
    }
#endif
}

void GradientReducer::begin(Model& m) {
  if (g_size <= 1) return;
  Impl& d = *impl_;
  std::vector<Param*> params;
  for (auto& np : m.params()) params.push_back(np.param);
  if (params != d.planned) {
    d.planned = params;
    d.buckets.clear();
    d.bucket_of.clear();
    d.layer_params.clear();
    for (Node& n : m.nodes())
      if (n.layer)
        for (Param* p : n.layer->params()) d.layer_params[n.layer.get()].push_back(p);
    // Last parameter first: backward writes the gradients of the last layers first.
    for (auto it = params.rbegin(); it != params.rend(); ++it) {
      Param* p = *it;
      if (d.buckets.empty() || size_t(d.buckets.back().numel) * sizeof(float) >= d.bucket_bytes ||
          d.buckets.back().device != p->value.device())
        d.buckets.emplace_back(), d.buckets.back().device = p->value.device();
      d.buckets.back().params.push_back(p);
      d.buckets.back().numel += p->value.numel();
      d.bucket_of[p] = static_cast<int>(d.buckets.size()) - 1;
    }
    for (auto& b : d.buckets) {
      b.buffer = Tensor::uninit({b.numel}, b.device);
      if (b.device != Device::CPU) b.staging = Tensor::uninit({b.numel});
    }
  }
  for (auto& b : d.buckets) b.pending = static_cast<int>(b.params.size()), b.started = false;
  d.next_start = 0;
}

void GradientReducer::layer_done(Layer& layer) {
  if (g_size <= 1) return;
  Impl& d = *impl_;
  auto it = d.layer_params.find(&layer);
  if (it == d.layer_params.end()) return;
  for (Param* p : it->second) {
    auto b = d.bucket_of.find(p);
    if (b != d.bucket_of.end()) --d.buckets[b->second].pending;
  }
  while (d.next_start < static_cast<int>(d.buckets.size()) && d.buckets[d.next_start].pending == 0)
    d.start(d.buckets[d.next_start++]);
  d.progress();
}

void GradientReducer::finish() {
  if (g_size <= 1) return;
  Impl& d = *impl_;
  while (d.next_start < static_cast<int>(d.buckets.size())) d.start(d.buckets[d.next_start++]);
#if DNNS_HAVE_MPI
  CommTimer t;
  for (auto& b : d.buckets) {
    mpi_check(MPI_Wait(&b.request, MPI_STATUS_IGNORE), "wait for a gradient bucket");
    if (b.device != Device::CPU && !cuda_aware()) b.buffer.copy_from(b.staging);
    int64_t off = 0;
    for (Param* p : b.params) {
      if (b.device == Device::CPU) {
        std::memcpy(p->grad.data(), b.buffer.data() + off, p->grad.bytes());
      } else {
        device_allocator(b.device)->copy_on_device(p->grad.data(), b.buffer.data() + off, p->grad.bytes());
      }
      off += p->grad.numel();
    }
  }
#endif
}

int64_t GradientReducer::bytes_per_step() const {
  int64_t n = 0;
  for (const auto& b : impl_->buckets) n += b.numel;
  return n * int64_t(sizeof(float));
}

int GradientReducer::num_buckets() const { return static_cast<int>(impl_->buckets.size()); }

}  // namespace dnns::dist
