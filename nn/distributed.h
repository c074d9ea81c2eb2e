// Data-parallel training over MPI: the one place of the code base that talks to MPI.
//
// Every rank holds the whole model and trains on its shard of each global batch (the loader's
// LoaderOptions::shard). Per step, the trainer sums three kinds of values over the ranks:
//   - the loss, accuracy and example counts of the global batch (one small allreduce);
//   - batchnorm statistics, when synchronised (BatchNorm2d::sync_stats): forward gathers each
//     rank's (count, mean, variance) per channel, backward each rank's (sum dy, sum dy*xhat),
//     both combined in rank order, so the batch is normalised over the global batch;
//   - the gradients, in buckets of about `bucket_bytes` started (MPI_Iallreduce) as backward
//     produces them, last layer first, and completed before the optimizer step.
// Each rank scales its loss gradient by (its rows / global rows), so the sum over ranks is the
// gradient of the global batch's mean loss, as one process computes it.
//
// Built without MPI (DNNS_MPI=OFF, or no MPI found), or run without an MPI launcher, this is a
// single rank: size() == 1 and every call below returns at once.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace dnns {

class Layer;
class Model;

namespace dist {

bool built_with_mpi();

// Starts MPI when an MPI launcher started this process (mpirun/mpiexec/srun leave their
// variables in the environment; DNNS_MPI_INIT=1 forces it), and nothing otherwise: a plain run
// is one process that never touches MPI. Ranks other than 0 stop writing files (core/fs.h)
// and send stdout to /dev/null (results are printed once; DNNS_MPI_ALL_STDOUT=1 keeps it).
// Idempotent; finalize() ends MPI (at the end of main).
void init(int* argc, char*** argv);
void finalize();
// init + finalize for the scope of main().
struct Session {
  Session(int& argc, char**& argv) { init(&argc, &argv); }
  ~Session() { finalize(); }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
};

int rank();
int size();
int local_size();  // ranks on this machine (to share its cores between them)
inline bool is_root() { return rank() == 0; }

// In a run of several ranks: says on stderr that this rank failed and stops every rank with
// MPI_Abort(code) (the others would otherwise wait forever in their next collective). Does
// nothing in a single process.
void abort_job(int code);

// Independent chains (cifar_prune imp --seeds): splits the job into `groups` groups of
// world_size() / groups consecutive ranks (MPI_Comm_split; world_size() must be a multiple of
// `groups`) and returns this rank's group, 0..groups-1. Until join_world(), rank(), size(),
// every collective below, the file writer (the group's rank 0) and the gradient buckets are
// the group's: each group trains its own model, data-parallel over its ranks, while
// abort_job() and fault_point() still act on the whole job. In a single process: returns 0.
int split_world(int groups);
// Back to one group of all ranks (frees the groups' communicators). Collective over the world.
void join_world();
int world_rank();
int world_size();
// World-wide, whatever the groups: wait_idle() over every rank of the job, and every rank's
// `mine` gathered to world rank 0 (in world rank order; the other ranks get an empty list).
void world_wait_idle();
std::vector<std::string> world_gather(const std::string& mine);

// Collectives over all ranks of the group (blocking; every rank must call them in the same order).
void barrier();
// A barrier that waits without spinning (an MPI_Ibarrier polled every few milliseconds), for
// ranks that idle while rank 0 works alone (measurements must not compete with them).
void wait_idle();
void allreduce_sum(double* values, int n);
// out (size() * n): every rank's `n` values, in rank order.
void allgather(const double* values, int n, double* out);
void broadcast(std::string& bytes, int root = 0);
void broadcast(Tensor& t, int root = 0);  // same shape on every rank; host or device
// Throws Error on every rank when `value` is not the same on all ranks, naming `what` and the
// ranks that differ from rank 0.
void check_same(uint64_t value, const std::string& what);
// FNV-1a of a tensor's bytes (a host copy for device tensors), mixed into `h`.
uint64_t fingerprint(const Tensor& t, uint64_t h = 0xcbf29ce484222325ull);
// The model's parameters, buffers and masks.
uint64_t fingerprint(Model& m);

// Wall time this process has spent in the calls of this module since start-up (seconds).
double comm_seconds();

// Fault injection for the tests: DNNS_FAULT_INJECT="RANK:STEP:kill" sends SIGKILL to rank RANK
// when the trainer is about to run global step STEP; "RANK:STEP:error" throws an Error there;
// a fourth field ":N" waits for the N-th time the rank reaches STEP (each IMP level passes the
// steps after the rewind point again). RANK is the rank in the whole job (world_rank()).
void fault_point(int64_t step);

// Whether device (CUDA) buffers go to MPI directly: an MPI with CUDA support
// (MPIX_Query_cuda_support() == 1, from mpi-ext.h where the MPI has it), or the environment's
// DNNS_MPI_CUDA_AWARE=1 (0 forces staging). Otherwise they are staged through host memory.
// Either way the device's queued work is waited for before MPI touches the memory.
bool cuda_aware();

// Sums the parameter gradients over the ranks, in buckets started during backward.
class GradientReducer {
 public:
  explicit GradientReducer(size_t bucket_bytes = size_t(1) << 20);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // Before backward: plans the buckets for `m`'s parameters (again when they changed).
  void begin(Model& m);
  // After `layer`'s backward wrote its gradients: starts every bucket that is now complete,
  // in bucket order (the same on every rank), and lets MPI progress the ones in flight.
  void layer_done(Layer& layer);
  // Starts what is left, waits for every bucket and writes the sums into the gradients.
  void finish();

  int64_t bytes_per_step() const;  // gradient bytes each rank sends into the allreduce
  int num_buckets() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dist
}  // namespace dnns
