// bench: timings of our CPU path, printed with the hardware they ran on. The PyTorch peer
// runs beside it from bench/run.sh, which prints the ratios.
//
//   bench train   --model vgg16 --batch 128 --steps 5     training img/s (forward+backward+SGD)
//                 --densities 1,0.2,0.05 --train-execution dense,sparse: masked models, each
//                 density x execution, their steps alternated (side by side in one process)
//   bench infer   --model resnet20 --batch 1              inference latency (p50/p99)
//   bench compact --model vgg16 --density 0.05            compaction time of an IMP-like mask
//   bench conv    --model resnet20 --batch 128            each conv shape of a model: the
//                 direct kernels against im2col + sgemm, per op, alternated in one process
//   bench sparse  --model resnet20 --densities 0.2,0.1,0.05 --batches 1,128
//                                                          compact models run dense, sparse and
//                                                          auto, side by side (speed-up ratios)
//   bench storage --model resnet20                        file and packed bytes, sparse vs dense
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <string>
#include <vector>

#include <unistd.h>

#include <tbb/blocked_range.h>
#include <tbb/parallel_reduce.h>

#include "core/cli.h"
#include "core/error.h"
#include "core/json.h"
#include "core/rng.h"
#include "core/threading.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/isa.h"
#include "kernels/ops.h"
#include "nn/execution.h"
#include "nn/export/export.h"
#include "nn/models/zoo.h"
#include "nn/optim.h"
#include "nn/train_execution.h"
#include "prune/compact.h"
#include "prune/magnitude.h"
#include "prune/infer.h"
#include "prune/mask.h"
#include "prune/portfolio.h"
#include "prune/shifter.h"
#ifdef DNNS_HAVE_CUDA
#include "kernels/cuda/cuda.h"
#endif

using namespace dnns;
using Clock = std::chrono::steady_clock;

namespace {

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

// --device and --tf32: where the benchmark runs. Times on CUDA include a final synchronise.
Device setup_device(const Flags& f) {
  Device d = parse_device(f.str("device"));
  if (d == Device::CUDA) {
    check(cuda_available(), "--device cuda: no CUDA device available (or this build has no CUDA backend)");
#ifdef DNNS_HAVE_CUDA
    cuda::set_tf32(f.flag("tf32"));
#endif
  }
  return d;
}

void sync(Device d) {
#ifdef DNNS_HAVE_CUDA
  if (d == Device::CUDA) cuda::synchronize();
#else
  (void)d;
#endif
}

std::string device_description(Device d) {
#ifdef DNNS_HAVE_CUDA
  if (d == Device::CUDA) return cuda::device_name();
#endif
  (void)d;
  return cpu_model_name();
}

double process_cpu_ms() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

double percentile(std::vector<double> v, double p) {
  check(!v.empty(), "no timed runs: --runs/--steps must be at least 1");
  std::sort(v.begin(), v.end());
  size_t i = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  return v[i];
}

Tensor random_batch(int64_t n, const Shape& chw, Rng& rng) {
  Tensor x({n, chw[0], chw[1], chw[2]});
  for (int64_t i = 0; i < x.numel(); ++i) x[i] = rng.normal();
  return x;
}

// Runs `steps` more training steps with the op profile on (ops::set_profiling); prints the
// per-op time of one step to stderr, longest first, with the step time no op accounts for
// (allocation, the layers' own loops) as "(outside ops)"; returns the breakdown as JSON.
template <class Step>
std::string profile_steps(const char* what, int64_t steps, Step&& step) {
  const int64_t n = std::max<int64_t>(1, steps);
  ops::take_profile();
  ops::set_profiling(true);
  const auto t0 = Clock::now();
  for (int64_t s = 0; s < n; ++s) step();
  const double step_ms = ms_since(t0) / n;
  ops::set_profiling(false);
  std::vector<ops::OpTime> ops_time = ops::take_profile();
  double in_ops = 0.0;
  for (const ops::OpTime& t : ops_time) in_ops += t.ms / n;
  ops_time.push_back({"(outside ops)", 0, std::max(0.0, step_ms - in_ops) * n});
  std::fprintf(stderr, "per-op time of one %s (%.2f ms, mean of %lld profiled runs):\n", what, step_ms,
               static_cast<long long>(n));
  std::fprintf(stderr, "  %-32s %8s %10s %7s\n", "op", "calls", "ms", "share");
  std::string json = "[";
  for (const ops::OpTime& t : ops_time) {
    const double ms = t.ms / n, share = step_ms > 0 ? ms / step_ms : 0.0;
    std::fprintf(stderr, "  %-32s %8lld %10.3f %6.1f%%\n", t.op.c_str(), static_cast<long long>(t.calls / n), ms,
                 100.0 * share);
    if (json.size() > 1) json += ",";
    json += Json().add("op", t.op).add("calls_per_step", t.calls / n).add("ms_per_step", ms).add("share", share).str();
  }
  return json + "]";
}

std::vector<double> parse_numbers(const std::string& s, const std::string& flag);

int bench_train(int argc, char** argv) {
  Flags f("bench train",
          "Training throughput: forward, backward and SGD step on random data. With --densities, the model "
          "masked at each density (IMP-like global magnitude masks, prune/magnitude.h) and trained with each "
          "--train-execution; the configurations' steps alternate, so a loaded machine slows all of them alike.");
  f.add("model", "resnet20", "zoo model");
  f.add("batch", "128", "batch size");
  f.add("steps", "5", "timed steps (after 1 warm-up step)");
  f.add("threads", "0", "threads (0 = all cores)");
  f.add("backend", "cpu", "cpu (optimized) or ref (reference kernels)");
  f.add("device", "cpu", "cpu or cuda");
  f.add_bool("tf32", "CUDA: allow TF32 tensor-core GEMMs");
  f.add_bool("no-fusion", "run every batchnorm and ReLU apart (Model::set_fusion(false)), to measure the fusion");
  f.add_bool("profile", "after the timed steps, time every op of as many steps again and print the "
                        "per-op breakdown of one step (stderr table, \"profile\" in the JSON)");
  f.add("densities", "1", "comma list: fractions of the prunable weights kept (1: no mask)");
  f.add("masks-from", "",
        "a model file (an IMP level's model.dnns) of the --model architecture: train with its masks (and no "
        "others) instead of --densities");
  f.add("train-execution", "dense",
        "comma list of dense, sparse, auto: how masked conv/linear layers train (nn/train_execution.h)");
  if (!f.parse(argc, argv)) return 0;
  set_num_threads(static_cast<int>(f.integer("threads")));
  Device dev = setup_device(f);
  if (f.str("backend") == "ref") set_cpu_backend(CpuBackend::Reference);
  const std::string masks_from = f.str("masks-from");
  // density 0 stands for the masks of --masks-from
  const std::vector<double> densities =
      masks_from.empty() ? parse_numbers(f.str("densities"), "densities") : std::vector<double>{0.0};
  MaskSet file_masks;
  double file_density = 1;
  if (!masks_from.empty()) {
    Model level = Model::load(masks_from);
    check(!level.masks.empty(), "bench train: --masks-from " + masks_from + ": the model holds no masks");
    int64_t ones = 0, all = 0;
    for (auto& [name, mask] : level.masks) {
      file_masks[name] = mask;
      for (int64_t i = 0; i < mask.numel(); ++i) ones += mask[i] != 0.0f;
      all += mask.numel();
    }
    file_density = double(ones) / double(std::max<int64_t>(all, 1));
  }
  std::vector<Execution> executions;
  {
    const std::string list = f.str("train-execution");
    for (size_t pos = 0; pos <= list.size();) {
      const size_t comma = std::min(list.find(',', pos), list.size());
      executions.push_back(parse_execution(list.substr(pos, comma - pos), "bench train: --train-execution"));
      pos = comma + 1;
    }
  }
  int64_t batch = f.integer("batch"), steps = f.integer("steps");
  check(batch > 0 && steps > 0, "bench train: --batch and --steps must be positive");
  struct Config {
    double density;
    Execution execution;
    Model m;
    std::unique_ptr<Sgd> sgd;
    std::string plan;
    std::vector<double> times, cpu_times;
  };
  std::vector<Config> configs;
  Rng data_rng(2);
  Model proto = build_model(f.str("model"));
  {
    Rng rng(1);
    init_model(proto, rng);
  }
  Tensor x = random_batch(batch, proto.input_shape(), data_rng).to(dev);
  Tensor labels({batch});
  for (int64_t i = 0; i < batch; ++i) labels[i] = static_cast<float>(data_rng.below(10));
  labels = labels.to(dev);
  for (double density : densities)
    for (Execution e : executions) {
      check(!masks_from.empty() || (density > 0 && density <= 1),
            "bench train: --densities: each must be in (0, 1], got " + std::to_string(density));
      Config c{masks_from.empty() ? density : file_density, e, proto.clone(),
               std::make_unique<Sgd>(SgdParams{0.01f, 0.9f, 1e-4f, false}), "", {}, {}};
      if (!masks_from.empty()) {
        set_masks(c.m, file_masks);  // checks every mask against the model's weights
      } else if (density < 1) {
        Rng mask_rng(3);
        set_masks(c.m, imp_like_masks(c.m, density, mask_rng));  // prune/magnitude.h
      }
      c.m.to(dev);
      c.m.set_fusion(!f.flag("no-fusion"));
      c.plan = training_plan_summary(plan_training_execution(c.m, e));
      configs.push_back(std::move(c));
    }
  Tensor d;
  auto step = [&](Config& c) {
    Tensor y = c.m.forward(x, true);
    if (!d.defined()) d = Tensor(y.shape(), dev);
    ops::softmax_cross_entropy(y, labels, 0.0f, &d, nullptr);
    c.m.backward(d);
    c.sgd->step(c.m, 0.01f);
    sync(dev);
  };
  for (int64_t s = 0; s <= steps; ++s)
    for (Config& c : configs) {
      auto t0 = Clock::now();
      const double c0 = process_cpu_ms();
      step(c);
      if (s > 0) c.times.push_back(ms_since(t0)), c.cpu_times.push_back(process_cpu_ms() - c0);
    }
  for (Config& c : configs) {
    const double med = percentile(c.times, 0.5);
    // Training FLOPs per image: the forward's 2 x MACs, and as much again for each of the data
    // and weight gradients (the usual 3x-forward count; a masked model counts its dense FLOPs).
    const double gflops = 6.0 * static_cast<double>(c.m.forward_macs()) * batch / (med * 1e6);
    std::string profile_json;
    if (f.flag("profile")) {
      const std::string what = "training step (density " + json_number(c.density) + ", " +
                               execution_name(c.execution) + " training)";
      profile_json = profile_steps(what.c_str(), steps, [&] { step(c); });
    }
    Json out;
    out.add("bench", "train")
        .add("model", f.str("model"))
        .add("batch", batch)
        .add("density", c.density)
        .add("train_execution", execution_name(c.execution))
        .add("plan", c.plan)
        .add("device", device_name(dev))
        .add("tf32", f.flag("tf32"))
        .add("threads", num_threads())
        .add("fusion", !f.flag("no-fusion"))
        .add("ms_per_step_median", med)
        .add("images_per_sec", batch * 1000.0 / med)
        .add("isa", cpu::isa_name(cpu::cpu_isa()))
        // CPU time of the process per step (all threads): with 1 thread, the
        // work a step takes even on a loaded machine
        .add("cpu_ms_per_step_median", percentile(c.cpu_times, 0.5))
        .add("gflops", gflops)
        .add("hardware", device_description(dev));
    if (!profile_json.empty()) out.add_raw("profile", profile_json);
    std::printf("%s\n", out.str().c_str());
  }
  return 0;
}

int bench_infer(int argc, char** argv) {
  Flags f("bench infer", "Inference latency of a model file or a dense zoo model (eval mode).");
  f.add("model", "resnet20", "zoo model name, or a model file (.dnns)");
  f.add("batch", "1", "batch size");
  f.add("runs", "50", "timed runs");
  f.add("threads", "0", "threads (0 = all cores)");
  f.add("device", "cpu", "cpu or cuda");
  f.add("execution", "auto", "conv/linear layers: dense, sparse, or auto (per layer, the faster measured here)");
  f.add_bool("tf32", "CUDA: allow TF32 tensor-core GEMMs");
  f.add_bool("no-fusion", "run every conv, batchnorm and ReLU apart (Model::set_fusion(false)), to measure the fusion");
  f.add_bool("profile", "after the timed runs, time every op of as many runs again and print the per-op "
                        "breakdown of one batch (stderr table, \"profile\" in the JSON)");
  if (!f.parse(argc, argv)) return 0;
  set_num_threads(static_cast<int>(f.integer("threads")));
  Device dev = setup_device(f);
  const Execution exec = parse_execution(f.str("execution"));
  Rng rng(1);
  std::string name = f.str("model");
  Model m = is_zoo_name(name) ? build_model(name) : Model::load(name);
  if (is_zoo_name(name)) init_model(m, rng);
  int64_t batch = f.integer("batch"), runs = f.integer("runs");
  m.to(dev);
  m.set_fusion(!f.flag("no-fusion"));
  const ExecutionPlan plan = plan_execution(m, exec, {batch});
  Tensor x = random_batch(batch, m.input_shape(), rng).to(dev);
  m.forward(x, false);
  sync(dev);
  std::vector<double> times, cpu_times;
  for (int64_t r = 0; r < runs; ++r) {
    auto t0 = Clock::now();
    const double c0 = process_cpu_ms();
    m.forward(x, false);
    sync(dev);
    times.push_back(ms_since(t0));
    cpu_times.push_back(process_cpu_ms() - c0);
  }
  std::string profile_json;
  if (f.flag("profile")) profile_json = profile_steps("batch", runs, [&] {
      m.forward(x, false);
      sync(dev);
    });
  Json out;
  out.add("bench", "infer")
      .add("model", name)
      .add("batch", batch)
      .add("device", device_name(dev))
      .add("tf32", f.flag("tf32"))
      .add("threads", num_threads())
      .add("params", m.num_params())
      .add("execution", execution_name(exec))
      .add("fusion", !f.flag("no-fusion"))
      .add("sparse_layers", plan.sparse_layers(batch))
      .add("p50_ms", percentile(times, 0.5))
      .add("p99_ms", percentile(times, 0.99))
      .add("cpu_ms_median", percentile(cpu_times, 0.5))
      .add("gflops", 2.0 * static_cast<double>(m.forward_macs()) * batch /
                         (percentile(times, 0.5) * 1e6))
      .add("isa", cpu::isa_name(cpu::cpu_isa()))
      .add("hardware", device_description(dev));
  if (!profile_json.empty()) out.add_raw("profile", profile_json);
  std::printf("%s\n", out.str().c_str());
  return 0;
}

int bench_compact(int argc, char** argv) {
  Flags f("bench compact", "Time to compact a masked model (IMP-like global magnitude mask).");
  f.add("model", "vgg16", "zoo model");
  f.add("density", "0.05", "fraction of prunable weights kept");
  f.add("runs", "20", "timed runs");
  f.add("threads", "0", "threads (0 = all cores)");
  f.add("save-masked", "", "also save the masked model to this file");
  f.add("save-compact", "", "also save the compact model to this file");
  if (!f.parse(argc, argv)) return 0;
  set_num_threads(static_cast<int>(f.integer("threads")));
  Rng rng(1);
  Model m = build_model(f.str("model"));
  init_model(m, rng);
  set_masks(m, imp_like_masks(m, f.number("density"), rng));  // prune/magnitude.h
  CompactReport rep;
  Model c = compact_model(m, &rep);
  // The memory floor, timed between the runs: one plain read of every weight compaction must
  // scan, on the same threads. Compaction cannot beat it; the ratio says how close it gets,
  // and both move together when the machine's memory bandwidth does.
  std::vector<const Tensor*> weights;
  for (auto& p : m.params())
    if (p.param->prunable) weights.push_back(&p.param->value);
  auto read_all = [&] {
    uint32_t any = 0;
    for (const Tensor* t : weights)
      any |= tbb::parallel_reduce(
          tbb::blocked_range<int64_t>(0, t->numel(), 1 << 16), uint32_t(0),
          [&](const tbb::blocked_range<int64_t>& r, uint32_t acc) {
            const uint32_t* u = reinterpret_cast<const uint32_t*>(t->data());
            for (int64_t i = r.begin(); i < r.end(); ++i) acc |= u[i];
            return acc;
          },
          [](uint32_t a, uint32_t b) { return a | b; });
    return any;
  };
  std::vector<double> times, read_times;
  uint32_t sink = 0;
  for (int64_t r = 0; r < f.integer("runs"); ++r) {
    auto t0 = Clock::now();
    Model c2 = compact_model(m, nullptr);
    times.push_back(ms_since(t0));
    t0 = Clock::now();
    sink |= read_all();
    read_times.push_back(ms_since(t0));
  }
  if (sink == 0x12345678u) std::printf("\n");  // keeps the reads
  Tensor x = random_batch(8, m.input_shape(), rng);
  float diff = max_logit_difference(m, c, x);
  if (!f.str("save-masked").empty()) m.save(f.str("save-masked"));
  if (!f.str("save-compact").empty()) c.save(f.str("save-compact"));
  std::printf("%s\n", Json()
                          .add("bench", "compact")
                          .add("model", f.str("model"))
                          .add("density", f.number("density"))
                          .add("threads", num_threads())
                          .add("ms_median", percentile(times, 0.5))
                          .add("ms_min", percentile(times, 0.0))
                          .add("read_weights_ms_median", percentile(read_times, 0.5))
                          .add("params_before", rep.params_before)
                          .add("params_after", rep.params_after)
                          .add("macs_before", rep.macs_before)
                          .add("macs_after", rep.macs_after)
                          .add("max_logit_diff", double(diff))
                          .add("cpu", cpu_model_name())
                          .str()
                          .c_str());
  return 0;
}

// Every distinct conv shape of a model at a batch size, each op (forward, backward data,
// backward weights) timed with two convolution algorithms (--algo, default auto, against
// --against, default gemm = im2col + sgemm), alternating, so both see the same machine load;
// the best of --reps.
int bench_conv(int argc, char** argv) {
  Flags f("bench conv", "Convolution kernels per layer shape: one algorithm against another.");
  f.add("model", "resnet20", "zoo model or model file whose conv shapes are timed");
  f.add("batch", "128", "batch size");
  f.add("reps", "5", "timed repetitions per op and algorithm (the minimum is reported)");
  f.add("threads", "0", "threads (0 = all cores)");
  f.add("algo", "auto", "the convolution algorithm timed: auto, direct, winograd or gemm");
  f.add("against", "gemm", "the algorithm it is compared with");
  f.add("clock", "wall", "wall (elapsed time) or cpu (CPU time of the process, all threads: on a loaded machine it "
                         "still compares the work each path does)");
  if (!f.parse(argc, argv)) return 0;
  set_num_threads(static_cast<int>(f.integer("threads")));
  const std::string name = f.str("model"), clock_name = f.str("clock");
  check(clock_name == "wall" || clock_name == "cpu", "--clock must be wall or cpu, got '" + clock_name + "'");
  const bool cpu_clock = clock_name == "cpu";
  auto now_ms = [&] {
    return cpu_clock ? process_cpu_ms() : std::chrono::duration<double, std::milli>(Clock::now().time_since_epoch()).count();
  };
  Model m = is_zoo_name(name) ? build_model(name) : Model::load(name);
  const int64_t batch = f.integer("batch"), reps = f.integer("reps");
  check(batch >= 1 && reps >= 1, "--batch and --reps must be at least 1");
  const std::vector<Shape> shapes = m.infer_shapes(batch);
  std::vector<Conv2dParams> convs;
  std::vector<int> counts;
  for (size_t i = 0; i < m.nodes().size(); ++i) {
    const Node& n = m.nodes()[i];
    auto* c = dynamic_cast<const Conv2d*>(n.layer.get());
    if (!c) continue;
    const Conv2dParams p = c->conv_params(shapes[n.inputs.at(0)]);
    auto same = [&](const Conv2dParams& q) {
      return q.N == p.N && q.C == p.C && q.H == p.H && q.W == p.W && q.K == p.K && q.R == p.R && q.S == p.S &&
             q.stride == p.stride && q.pad == p.pad;
    };
    auto it = std::find_if(convs.begin(), convs.end(), same);
    if (it == convs.end()) convs.push_back(p), counts.push_back(1);
    else ++counts[it - convs.begin()];
  }
  Rng rng(1);
  const cpu::ConvAlgo before = cpu::conv_algo();
  const cpu::ConvAlgo algos[2] = {cpu::parse_conv_algo(f.str("algo").c_str()),
                                  cpu::parse_conv_algo(f.str("against").c_str())};
  double total[2][3] = {};
  std::printf("# bench conv: %s, batch %lld, %d threads, %s, ISA %s, %s clock\n", name.c_str(), (long long)batch,
              num_threads(), cpu_model_name().c_str(), cpu::isa_name(cpu::cpu_isa()), clock_name.c_str());
  const std::string vs = f.str("algo") + "/" + f.str("against");
  std::printf("%-34s %5s %-18s %27s %27s %27s\n", "shape (N,C,H,W)->K RxS/stride,pad", "count",
              (f.str("algo") + " path").c_str(), ("forward ms " + vs).c_str(), ("bwd data ms " + vs).c_str(),
              ("bwd weights ms " + vs).c_str());
  for (size_t i = 0; i < convs.size(); ++i) {
    const Conv2dParams& p = convs[i];
    const int64_t nx = (int64_t)p.N * p.C * p.H * p.W, nw = (int64_t)p.K * p.C * p.R * p.S;
    const int64_t ny = (int64_t)p.N * p.K * p.P() * p.Q();
    std::vector<float> x(nx), w(nw), b(p.K), y(ny), dy(ny), dx(nx), dw(nw), db(p.K);
    for (float& v : x) v = rng.normal();
    for (float& v : w) v = rng.normal();
    for (float& v : dy) v = rng.normal();
    double best[2][3];
    for (auto& row : best)
      for (double& v : row) v = 1e300;
    for (int64_t r = 0; r <= reps; ++r)
      for (int a = 0; a < 2; ++a) {
        cpu::set_conv_algo(algos[a]);
        double t0 = now_ms();
        cpu::conv2d_forward(p, x.data(), w.data(), b.data(), y.data());
        const double t_fwd = now_ms() - t0;
        t0 = now_ms();
        cpu::conv2d_backward_data(p, dy.data(), w.data(), dx.data());
        const double t_bd = now_ms() - t0;
        t0 = now_ms();
        cpu::conv2d_backward_weights(p, x.data(), dy.data(), dw.data(), db.data());
        const double t_bw = now_ms() - t0;
        if (r == 0) continue;  // warm-up
        best[a][0] = std::min(best[a][0], t_fwd);
        best[a][1] = std::min(best[a][1], t_bd);
        best[a][2] = std::min(best[a][2], t_bw);
      }
    cpu::set_conv_algo(before);
    char label[96];
    std::snprintf(label, sizeof label, "(%d,%d,%d,%d)->%d %dx%d/%d,%d", p.N, p.C, p.H, p.W, p.K, p.R, p.S, p.stride, p.pad);
    cpu::set_conv_algo(algos[0]);
    std::printf("%-34s %5d %-18s", label, counts[i], cpu::conv_path(p).c_str());
    cpu::set_conv_algo(before);
    for (int op = 0; op < 3; ++op) {
      std::printf("   %7.2f/%7.2f (%5.2fx)", best[0][op], best[1][op], best[1][op] / best[0][op]);
      for (int a = 0; a < 2; ++a) total[a][op] += counts[i] * best[a][op];
    }
    std::printf("\n");
  }
  std::printf("%-34s %5s %-18s", "all layers (count-weighted)", "", "");
  for (int op = 0; op < 3; ++op) std::printf("   %7.1f/%7.1f (%5.2fx)", total[0][op], total[1][op], total[1][op] / total[0][op]);
  std::printf("\n");
  const double all_auto = total[0][0] + total[0][1] + total[0][2], all_gemm = total[1][0] + total[1][1] + total[1][2];
  std::printf("%s\n", Json()
                          .add("bench", "conv")
                          .add("model", name)
                          .add("batch", batch)
                          .add("threads", num_threads())
                          .add("isa", cpu::isa_name(cpu::cpu_isa()))
                          .add("clock", clock_name)
                          .add("algo", f.str("algo"))
                          .add("against", f.str("against"))
                          .add("ms_algo", all_auto)
                          .add("ms_against", all_gemm)
                          .add("speedup", all_gemm / all_auto)
                          .add("cpu", cpu_model_name())
                          .str()
                          .c_str());
  return 0;
}

std::vector<double> parse_numbers(const std::string& s, const std::string& flag) {
  std::vector<double> out;
  size_t pos = 0;
  while (pos <= s.size()) {
    const size_t comma = std::min(s.find(',', pos), s.size());
    const std::string item = s.substr(pos, comma - pos);
    char* end = nullptr;
    const double v = std::strtod(item.c_str(), &end);
    check(!item.empty() && end && *end == '\0' && std::isfinite(v),
          "--" + flag + ": expected comma-separated numbers, got '" + s + "'");
    out.push_back(v);
    pos = comma + 1;
  }
  return out;
}

// Compact models of IMP-like masks at several densities, each run dense, sparse and auto in
// turn (round-robin over the three, so the machine's load hits them alike).
int bench_sparse(int argc, char** argv) {
  Flags f("bench sparse",
          "Compacted models at IMP-like densities, executed dense, sparse and auto (per-layer plan) side by side.");
  f.add("model", "resnet20", "zoo model");
  f.add("densities", "0.2,0.1,0.05", "fractions of prunable weights kept, comma-separated");
  f.add("batches", "1,128", "batch sizes, comma-separated");
  f.add("runs", "10", "timed runs per execution (batch 1; fewer for large batches, at least 3)");
  f.add("threads", "2", "threads (0 = all cores)");
  f.add_bool("plan", "also print each auto plan's per-layer table (stderr)");
  f.add("clock", "wall", "wall (elapsed time) or cpu (CPU time of the process, all threads: on a loaded machine it "
                         "still compares the work each execution does; the auto plan is measured in wall time)");
  if (!f.parse(argc, argv)) return 0;
  set_num_threads(static_cast<int>(f.integer("threads")));
  const std::string clock_name = f.str("clock");
  check(clock_name == "wall" || clock_name == "cpu", "--clock must be wall or cpu, got '" + clock_name + "'");
  const bool cpu_clock = clock_name == "cpu";
  auto now_ms = [&] {
    return cpu_clock ? process_cpu_ms() : std::chrono::duration<double, std::milli>(Clock::now().time_since_epoch()).count();
  };
  const std::vector<double> densities = parse_numbers(f.str("densities"), "densities");
  std::vector<int64_t> batches;
  for (double b : parse_numbers(f.str("batches"), "batches")) {
    check(b >= 1 && b == std::floor(b), "--batches: batch sizes must be positive integers");
    batches.push_back(int64_t(b));
  }
  for (double d : densities) check(d > 0 && d <= 1, "--densities: each must be in (0, 1]");
  const int64_t runs = f.integer("runs");
  check(runs >= 1, "--runs must be at least 1");
  for (double density : densities) {
    Rng rng(1);
    Model m = build_model(f.str("model"));
    init_model(m, rng);
    set_masks(m, imp_like_masks(m, density, rng));
    CompactReport rep;
    Model dense = compact_model(m, &rep);
    Model sparse = dense.clone(), autom = dense.clone();
    plan_execution(dense, Execution::Dense, batches);
    plan_execution(sparse, Execution::Sparse, batches);
    const ExecutionPlan plan = plan_execution(autom, Execution::Auto, batches);
    int64_t nonzeros = 0;  // weights of the compact model's conv/linear layers that are not zero
    for (auto& p : dense.params())
      if (p.param->prunable)
        for (float v : p.param->value.to_vector()) nonzeros += v != 0.0f;
    if (f.flag("plan")) std::fprintf(stderr, "%s density %.3f:\n%s", f.str("model").c_str(), density,
                                     execution_plan_table(plan).c_str());
    for (int64_t batch : batches) {
      const Tensor x = random_batch(batch, m.input_shape(), rng);
      Model* models[3] = {&dense, &sparse, &autom};
      std::vector<double> times[3];
      const int64_t n = batch == 1 ? runs : std::max<int64_t>(3, runs / 3);
      for (Model* mm : models) infer(*mm, x);  // warm-up
      for (int64_t r = 0; r < n; ++r)
        for (int k = 0; k < 3; ++k) {  // the order rotates: none always follows the same one
          const int i = int((r + k) % 3);
          const double t0 = now_ms();
          infer(*models[i], x);
          times[i].push_back(now_ms() - t0);
        }
      const double d = percentile(times[0], 0.5), s = percentile(times[1], 0.5), a = percentile(times[2], 0.5);
      std::printf("%s\n", Json()
                              .add("bench", "sparse")
                              .add("model", f.str("model"))
                              .add("density", density)
                              .add("batch", batch)
                              .add("threads", num_threads())
                              .add("params_compact", rep.params_after)
                              .add("nonzeros", nonzeros)
                              .add("auto_sparse_layers", plan.sparse_layers(batch))
                              .add("dense_ms_p50", d)
                              .add("sparse_ms_p50", s)
                              .add("auto_ms_p50", a)
                              .add("speedup_sparse", d / s)
                              .add("speedup_auto", d / a)
                              .add("clock", clock_name)
                              .add("cpu", cpu_model_name())
                              .str()
                              .c_str());
      std::fflush(stdout);
    }
  }
  return 0;
}

// Bytes of sparse storage against the old dense layout, per IMP-like density: the IMP level's
// model file (weights and masks), the compact variant's file (a portfolio entry), the shifter's
// packed form of that variant, and its C-array export.
int bench_storage(int argc, char** argv) {
  Flags f("bench storage", "bytes on disk and in the shifter's packed residency, sparse (format 2) vs dense (format 1)");
  f.add("model", "resnet20", "zoo model");
  f.add("densities", "1,0.2,0.05,0.01", "comma-separated densities of IMP-like masks");
  f.add("dir", "/tmp", "folder for the scratch files");
  if (!f.parse(argc, argv)) return 0;
  const std::string dir = f.str("dir");
  const std::vector<double> densities = parse_numbers(f.str("densities"), "densities");
  const std::string scratch = dir + "/bench_storage." + std::to_string(::getpid()) + ".dnns";
  auto file_bytes = [&](const Model& m, uint32_t version) {
    save_archive(scratch, m.to_archive(), ArchiveWriteOptions{version});
    const int64_t n = static_cast<int64_t>(std::filesystem::file_size(scratch));
    std::filesystem::remove(scratch);
    return n;
  };
  // The previous packed form (before format 2): (u32 index, f32 value) pairs of the nonzeros
  // when under half the values are nonzero, else dense.
  auto old_packed = [](const Model& m) {
    int64_t total = static_cast<int64_t>(m.spec().size() + m.arch.size());
    for (auto& [name, t] : const_cast<Model&>(m).state()) {
      int64_t nnz = 0;
      for (int64_t i = 0; i < t->numel(); ++i) nnz += (*t)[i] != 0.0f;
      total += 2 * nnz < t->numel() ? 8 * nnz : 4 * t->numel();
    }
    return total;
  };
  for (double d : densities) {
    Rng rng(1);
    Model m = build_model(f.str("model"));
    init_model(m, rng);
    set_masks(m, imp_like_masks(m, d, rng));
    int64_t kept = 0;
    for (const auto& [name, mask] : m.masks) kept += mask_count(mask);
    Model c = compact_model(m, nullptr);
    c.masks.clear();  // a portfolio variant carries no masks
    // The C export, where its header stays small enough to write (its weights as text).
    int64_t c_bytes = -1;
    if (c.num_params() <= 2000000) {
      const std::string cdir = dir + "/bench_storage_c." + std::to_string(::getpid());
      CExportInfo ci = export_c(c, cdir, "m");
      std::filesystem::remove_all(cdir);
      c_bytes = ci.weight_floats * 4 + ci.index_bytes;
    }
    std::printf("%s\n", Json()
                            .add("bench", "storage")
                            .add("model", f.str("model"))
                            .add("density", d)
                            .add("weights_kept", kept)
                            .add("level_file_v1", file_bytes(m, kArchiveFormatVersionDense))
                            .add("level_file_v2", file_bytes(m, kArchiveFormatVersion))
                            .add("compact_params", c.num_params())
                            .add("variant_file_v1", file_bytes(c, kArchiveFormatVersionDense))
                            .add("variant_file_v2", file_bytes(c, kArchiveFormatVersion))
                            .add("packed_old", old_packed(c))
                            .add("packed_new", pack_model(c).bytes())
                            .add("c_export_weight_bytes", c_bytes)
                            .str()
                            .c_str());
  }
  return 0;
}

// The machine's sgemm peak as our kernels can use it: an n x n x n product through the fully
// connected layer's op (OpenBLAS sgemm in row blocks over the threads, as every GEMM here runs).
int bench_peak(int argc, char** argv) {
  Flags f("bench peak", "sgemm throughput (GFLOP/s) of an n x n x n product: the peak the efficiency figures use.");
  f.add("size", "2048", "n");
  f.add("runs", "5", "timed runs (after 1 warm-up run); the fastest counts");
  f.add("threads", "0", "threads (0 = all cores)");
  if (!f.parse(argc, argv)) return 0;
  set_num_threads(static_cast<int>(f.integer("threads")));
  const int64_t n = f.integer("size"), runs = f.integer("runs");
  check(n >= 1 && n <= 16384, "--size must be in [1, 16384], got " + std::to_string(n));
  check(runs >= 1, "--runs must be at least 1, got " + std::to_string(runs));
  Rng rng(1);
  Tensor a({n, n}), b({n, n}), c({n, n});
  for (int64_t i = 0; i < a.numel(); ++i) a[i] = rng.normal(), b[i] = rng.normal();
  double best = 0.0, best_cpu = 0.0;
  for (int64_t r = 0; r <= runs; ++r) {
    const auto t0 = Clock::now();
    const double c0 = process_cpu_ms();
    ops::linear_forward(a, b, Tensor(), c);
    const double ms = ms_since(t0), cpu_ms = process_cpu_ms() - c0;
    if (r > 0 && (best == 0.0 || ms < best)) best = ms;
    if (r > 0 && (best_cpu == 0.0 || cpu_ms < best_cpu)) best_cpu = cpu_ms;
  }
  std::printf("%s\n", Json()
                          .add("bench", "peak")
                          .add("size", n)
                          .add("threads", num_threads())
                          .add("ms", best)
                          .add("gflops", 2.0 * n * n * n / (best * 1e6))
                          // per thread-second of CPU time: the core's rate even on a loaded machine
                          .add("cpu_ms", best_cpu)
                          .add("isa", cpu::isa_name(cpu::cpu_isa()))
                          .add("hardware", device_description(Device::CPU))
                          .str()
                          .c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const char* usage = "usage: bench train|infer|compact|conv|sparse|storage|peak [flags]   (bench COMMAND --help)\n";
  if (argc < 2) {
    std::fputs(usage, stderr);
    return 2;
  }
  std::string cmd = argv[1];
  try {
    if (cmd == "train") return bench_train(argc - 1, argv + 1);
    if (cmd == "infer") return bench_infer(argc - 1, argv + 1);
    if (cmd == "compact") return bench_compact(argc - 1, argv + 1);
    if (cmd == "conv") return bench_conv(argc - 1, argv + 1);
    if (cmd == "sparse") return bench_sparse(argc - 1, argv + 1);
    if (cmd == "storage") return bench_storage(argc - 1, argv + 1);
    if (cmd == "peak") return bench_peak(argc - 1, argv + 1);
    if (cmd == "--help" || cmd == "-h") {
      std::fputs(usage, stdout);
      return 0;
    }
    std::fprintf(stderr, "bench: unknown command '%s'\n%s", cmd.c_str(), usage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench %s: error: %s\n", cmd.c_str(), e.what());
    return 1;
  }
}
