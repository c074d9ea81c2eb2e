// shifter: run-time adaptation with a portfolio of compact variants (prune/shifter.h).
//
//   shifter show   --portfolio DIR                      the variants, every file checked
//   shifter select --portfolio DIR --latency-ms 2 ...   which variant fits these conditions
//   shifter replay --portfolio DIR --trace T.csv --data D   a trace of changing conditions
//                  against a stream of inference requests; replay.json + front.svg
//   shifter bench  --portfolio DIR                      decision, swap and memory overheads
//                  against an ensemble of dense models (and the DNNShifter paper's figures)
#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "core/cli.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/json.h"
#include "core/rng.h"
#include "core/threading.h"
#include "datasets/dataset.h"
#include "datasets/loader.h"
#include "nn/models/zoo.h"
#include "prune/infer.h"
#include "prune/portfolio.h"
#include "prune/shifter.h"

using namespace dnns;
using Clock = std::chrono::steady_clock;

namespace {

const char* kUsage =
    "usage: shifter COMMAND --portfolio DIR [flags]\n"
    "\n"
    "commands:\n"
    "  show     list the portfolio's variants (every model file checked against the manifest)\n"
    "  select   choose the variant for given conditions (latency, memory, accuracy)\n"
    "  replay   replay a trace of changing conditions against a stream of inference requests\n"
    "  bench    decision time, swap time and memory of the shifter vs an ensemble of dense models\n"
    "\n"
    "Build a portfolio with `cifar_prune portfolio --run RUN`. Run `shifter COMMAND --help` for flags.\n";

void add_common(Flags& f) {
  f.add("portfolio", "", "portfolio folder (cifar_prune portfolio --out)");
  f.add("threads", "0", "worker threads (0 = all cores)");
}

void add_condition_flags(Flags& f) {
  f.add("basis", "batch1", "which measured latency and memory the budgets apply to: batch1 or batch (the "
                           "portfolio's latency batch)");
  f.add("stat", "p99", "latency statistic the budget applies to: p50 or p99");
}

std::string portfolio_dir(const Flags& f) {
  check(!f.str("portfolio").empty(), "--portfolio is required");
  int64_t t = f.integer("threads");
  check(t >= 0 && t <= 1024, "--threads must be between 0 and 1024");
  set_num_threads(static_cast<int>(t));
  return f.str("portfolio");
}

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

// Resident set size of this process, from /proc/self/status (bytes; 0 when unavailable).
int64_t rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::atoll(line.c_str() + 6) * 1024;
  return 0;
}

// ---------------------------------------------------------------- show

int cmd_show(int argc, char** argv) {
  Flags f("shifter show", "Loads a portfolio, checks every model file against its manifest entry (size, CRC-32,\n"
                          "parameters, FLOPs, shapes) and lists the variants.");
  add_common(f);
  if (!f.parse(argc, argv)) return 0;
  LoadedPortfolio lp = load_portfolio(portfolio_dir(f));
  const Portfolio& p = lp.manifest;
  std::printf("portfolio %s: %s, input %s, %d classes, %lld parameters dense\n", lp.dir.c_str(), p.arch.c_str(),
              shape_str(p.input_shape).c_str(), p.num_classes, (long long)p.dense_params);
  std::printf("accuracy on %s; latency on %s with %d threads; from %s\n\n", p.data.c_str(), p.machine.c_str(), p.threads,
              p.source_run.c_str());
  std::printf("%s\nall %zu model files match their manifest entries\n", portfolio_table(p).c_str(), p.variants.size());
  return 0;
}

// ---------------------------------------------------------------- select

Conditions conditions_from_flags(const Flags& f) {
  Conditions c;
  if (!f.str("latency-ms").empty()) c.latency_ms = f.number("latency-ms");
  if (!f.str("memory-mb").empty()) c.memory_bytes = std::llround(f.number("memory-mb") * 1e6);
  if (!f.str("min-accuracy").empty()) c.min_accuracy = f.number("min-accuracy");
  c.basis = parse_latency_basis(f.str("basis"));
  c.stat = parse_latency_stat(f.str("stat"));
  c.validate();
  return c;
}

int cmd_select(int argc, char** argv) {
  Flags f("shifter select",
          "Chooses the variant for the given conditions: the most accurate within every budget (ties: lower\n"
          "latency, then less memory, then a smaller file, then the lower index). When none fits it says\n"
          "which budget excluded which variants and names the closest one. Prints one JSON line.");
  add_common(f);
  add_condition_flags(f);
  f.add("latency-ms", "", "latency budget in ms (unset: none)");
  f.add("memory-mb", "", "working-memory budget in MB, 10^6 bytes (unset: none)");
  f.add("min-accuracy", "", "minimum test accuracy, a fraction in [0, 1] (unset: none)");
  if (!f.parse(argc, argv)) return 0;
  Portfolio p = load_portfolio_manifest(portfolio_dir(f));
  Conditions c = conditions_from_flags(f);
  const auto t0 = Clock::now();
  Selection s = select_variant(p.variants, c);
  const double us = ms_since(t0) * 1000.0;
  std::fprintf(stderr, "%s\n", explain_selection(p.variants, c, s).c_str());
  Json j;
  j.add("conditions", c.str()).add("fits", s.fits());
  if (s.fits()) j.add("chosen", p.variants[s.chosen].name);
  else j.add_raw("chosen", "null");
  j.add("closest", p.variants[s.closest].name)
      .add("excluded_by_latency", s.excluded_by_latency)
      .add("excluded_by_memory", s.excluded_by_memory)
      .add("excluded_by_accuracy", s.excluded_by_accuracy)
      .add("decision_us", us);
  std::printf("%s\n", j.str().c_str());
  return 0;
}

// ---------------------------------------------------------------- replay

// The request stream: the first --requests-pool images of the test split, normalised as the
// portfolio was measured.
struct Requests {
  Tensor images;  // (N, C, H, W)
  std::vector<int> labels;
  std::string description;
};

Requests load_requests(const Flags& f, const Portfolio& p) {
  DatasetOptions o;
  o.height = static_cast<int>(p.input_shape[1]);
  o.width = static_cast<int>(p.input_shape[2]);
  o.channels = static_cast<int>(p.input_shape[0]);
  o.synthetic.channels = o.channels;
  o.synthetic.height = o.height;
  o.synthetic.width = o.width;
  o.synthetic.num_classes = p.num_classes;
  const int64_t pool = f.integer("requests-pool");
  check(pool > 0, "--requests-pool must be positive");
  o.synthetic_test_examples = pool;
  Dataset test = load_dataset(f.str("data"), false, o);
  check(test.channels == p.input_shape[0] && test.height == p.input_shape[1] && test.width == p.input_shape[2],
        f.str("data") + ": images are " + std::to_string(test.channels) + "x" + std::to_string(test.height) + "x" +
            std::to_string(test.width) + ", the portfolio takes " + shape_str(p.input_shape));
  check(test.num_classes == p.num_classes, f.str("data") + ": " + std::to_string(test.num_classes) +
                                               " classes, the portfolio has " + std::to_string(p.num_classes));
  if (test.size() > pool) test = test.sample(pool, static_cast<uint64_t>(f.integer("seed")));
  LoaderOptions lo;
  lo.batch_size = test.size();
  lo.shuffle = false;
  lo.prefetch = 0;
  lo.normalize.mean.assign(p.normalize_mean.begin(), p.normalize_mean.end());
  lo.normalize.std.assign(p.normalize_std.begin(), p.normalize_std.end());
  Requests r;
  r.description = f.str("data") + " test split, " + std::to_string(test.size()) + " images";
  Loader loader(std::move(test), lo);
  Batch b;
  loader.start_epoch(0);
  check(loader.next(b), f.str("data") + ": empty test split");
  r.images = b.images;
  for (int64_t i = 0; i < b.labels.numel(); ++i) r.labels.push_back(static_cast<int>(b.labels[i]));
  return r;
}

std::string budget_text(const std::optional<double>& v, const char* unit, double scale = 1.0) {
  if (!v) return "-";
  char b[32];
  std::snprintf(b, sizeof b, "%.4g%s", *v * scale, unit);
  return b;
}

int cmd_replay(int argc, char** argv) {
  Flags f("shifter replay",
          "Replays a trace of changing conditions against a stream of inference requests. At each phase's\n"
          "time the shifter chooses and hot-swaps the variant; --clients threads send requests back to back\n"
          "meanwhile. Reports per phase the chosen variant, the requests' latency p50/p99 and accuracy, and\n"
          "the swaps; writes replay.json and front.svg (latency vs accuracy, chosen variants marked) to --out.\n"
          "Trace: CSV 'time_s,latency_ms,memory_mb,min_accuracy' with empty fields for unset budgets, or JSON.");
  add_common(f);
  add_condition_flags(f);
  f.add("trace", "", "the conditions trace (.csv or .json)");
  f.add("data", "synthetic", "where requests come from (as cifar_prune --data); its test split is used");
  f.add("requests-pool", "2000", "test images requests are drawn from (in order, wrapping)");
  f.add("seed", "1", "which images make the pool when the split is larger");
  f.add("clients", "2", "threads sending requests");
  f.add("batch", "1", "images per request");
  f.add("time-scale", "1", "wall seconds per trace second");
  f.add("last-phase-s", "2", "trace seconds the last phase lasts");
  f.add("policy", "closest", "when no variant fits: closest (serve the closest) or keep (keep the active one)");
  f.add("residency", "dense", "dense (every variant ready: fastest swaps) or packed (variants kept as their nonzero "
                              "weights, the active one unpacked: less memory)");
  f.add("out", "shifter_replay", "output folder for replay.json and front.svg");
  f.add("execution", "auto", "conv/linear layers of the ready variants: dense, sparse, or auto (per layer, whichever "
                             "measures faster here at --batch, once at load); packed variants keep their plan");
  if (!f.parse(argc, argv)) return 0;
  const std::string dir = portfolio_dir(f);
  const Execution execution = parse_execution(f.str("execution"));
  check(!f.str("trace").empty(), "--trace is required");
  std::vector<TracePhase> trace = load_trace(f.str("trace"));
  const std::string policy = f.str("policy");
  check(policy == "closest" || policy == "keep", "--policy must be closest or keep, got '" + policy + "'");
  Shifter shifter(load_portfolio(dir, execution, {f.integer("batch")}), policy == "closest" ? NoFitPolicy::Closest : NoFitPolicy::KeepCurrent,
                  parse_residency(f.str("residency")));
  const Portfolio& p = shifter.portfolio();
  Requests req = load_requests(f, p);

  ReplayOptions o;
  o.clients = static_cast<int>(f.integer("clients"));
  o.batch = f.integer("batch");
  o.time_scale = f.number("time-scale");
  o.last_phase_s = f.number("last-phase-s");
  o.basis = parse_latency_basis(f.str("basis"));
  o.stat = parse_latency_stat(f.str("stat"));
  if (o.basis == LatencyBasis::Batch1 && o.batch != 1)
    std::fprintf(stderr, "replay: requests carry %lld images but the budgets apply to batch-1 latency (--basis batch "
                         "uses the portfolio's batch of %lld)\n", (long long)o.batch, (long long)p.latency_batch);
  std::fprintf(stderr, "replay: %zu phases, %d clients, batch %lld, requests from %s; portfolio of %d variants\n",
               trace.size(), o.clients, (long long)o.batch, req.description.c_str(), shifter.size());

  ReplayReport r = replay_trace(shifter, trace, req.images, req.labels, o);

  std::printf("| phase | start s | latency budget | memory budget | min accuracy | active | fits | swap | decision us | "
              "requests | accuracy | p50 ms | p99 ms |\n|---:|---:|---:|---:|---:|---|---|---|---:|---:|---:|---:|---:|\n");
  for (const PhaseReport& ph : r.phases) {
    std::printf("| %d | %.2f | %s | %s | %s | %s | %s | %s | %.2f | %lld | %.2f%% | %.3f | %.3f |\n", ph.phase,
                ph.start_s, budget_text(ph.conditions.latency_ms, " ms").c_str(),
                budget_text(ph.conditions.memory_bytes ? std::optional<double>(*ph.conditions.memory_bytes / 1e6)
                                                       : std::nullopt, " MB").c_str(),
                budget_text(ph.conditions.min_accuracy, "%", 100.0).c_str(), p.variants[ph.shift.active].name.c_str(),
                ph.shift.selection.fits() ? "yes" : "no", ph.shift.swapped ? "yes" : "-", ph.shift.decision_us,
                (long long)ph.requests, 100.0 * ph.accuracy, ph.latency_ms_p50, ph.latency_ms_p99);
  }
  for (const PhaseReport& ph : r.phases) std::printf("phase %d: %s\n", ph.phase, ph.explanation.c_str());
  const std::string out = f.str("out");
  make_dirs(out);
  write_text_atomic(out + "/replay.json", replay_report_json(shifter, r, o));
  write_text_atomic(out + "/front.svg", portfolio_front_svg(p, r.phases, o.basis, o.stat));
  std::printf("\n%lld requests (%lld images) in %.2f s, %lld swaps; %s/replay.json, %s/front.svg\n",
              (long long)r.requests, (long long)r.images, r.wall_s, (long long)r.swaps, out.c_str(), out.c_str());
  return 0;
}

// ---------------------------------------------------------------- bench

struct Stats {
  double mean = 0, p50 = 0, p99 = 0, max = 0;
};
Stats stats_of(const std::vector<double>& v) {
  Stats s;
  if (v.empty()) return s;
  for (double x : v) s.mean += x, s.max = std::max(s.max, x);
  s.mean /= static_cast<double>(v.size());
  s.p50 = nearest_rank_percentile(v, 0.5);
  s.p99 = nearest_rank_percentile(v, 0.99);
  return s;
}
std::string stats_json(const Stats& s) {
  return Json().add("mean", s.mean).add("p50", s.p50).add("p99", s.p99).add("max", s.max).str();
}

// What one ready variant holds (Dense residency).
struct VariantHeld {
  std::string name;
  int64_t tensors = 0, sparse = 0;  // model_resident_bytes, sparse_execution_bytes
  int released = 0, layers = 0;     // conv/linear layers holding only their sparse form, of all
};

// One residency's figures.
struct ResidencyBench {
  std::string name;
  int64_t held = 0, rss = 0;  // bytes: what the shifter holds (computed), RSS growth loading it
  std::vector<VariantHeld> variants;  // Dense residency: the split of `held` by variant
  Stats shift_us, swap_idle_us, swap_load_us;
  int64_t served = 0;
  double load_s = 0;
};

ResidencyBench bench_residency(const std::string& dir, Residency residency, Execution execution,
                               const std::vector<Conditions>& conds, int64_t shifts, int64_t swaps, int clients) {
  ResidencyBench b;
  b.name = residency == Residency::Dense ? "dense" : "packed";
  release_host_cache();  // freed tensor blocks go back to malloc, then to the OS
  malloc_trim(0);
  const int64_t rss0 = rss_bytes();
  // Planned for the batch-1 requests below; the plan's sparse copies count in what it holds.
  Shifter shifter(load_portfolio(dir, execution, {1}), NoFitPolicy::Closest, residency);
  release_host_cache();  // freed tensor blocks go back to malloc, then to the OS
  malloc_trim(0);
  b.rss = rss_bytes() - rss0;
  b.held = shifter.resident_bytes();
  const int n = shifter.size();
  if (residency == Residency::Dense)
    for (int i = 0; i < n; ++i) {
      const std::shared_ptr<const Model> m = shifter.model(i);
      VariantHeld v{shifter.portfolio().variants[size_t(i)].name, model_resident_bytes(*m), sparse_execution_bytes(*m),
                    m->released_weights(), 0};
      for (const Node& node : m->nodes())
        v.layers += dynamic_cast<const Conv2d*>(node.layer.get()) || dynamic_cast<const Linear*>(node.layer.get());
      b.variants.push_back(v);
    }
  const Shape& chw = shifter.portfolio().input_shape;

  // shift(): the decision plus the swap when the choice changes (the whole run-time overhead).
  std::vector<double> shift_us, idle, load;
  for (int64_t k = 0; k < shifts; ++k) {
    const auto t0 = Clock::now();
    shifter.shift(conds[static_cast<size_t>(k) % conds.size()]);
    shift_us.push_back(ms_since(t0) * 1000.0);
  }
  for (int64_t k = 0; k < swaps; ++k) idle.push_back(shifter.activate(static_cast<int>((shifter.active() + 1) % n)));
  // Swaps while --clients threads serve batch-1 requests back to back.
  std::atomic<bool> stop{false};
  std::atomic<int64_t> served{0};
  Rng rng(2);
  Tensor x({1, chw[0], chw[1], chw[2]});
  for (int64_t i = 0; i < x.numel(); ++i) x[i] = rng.normal();
  std::vector<std::thread> threads;
  for (int t = 0; t < clients; ++t)
    threads.emplace_back([&] {
      while (!stop.load()) {
        shifter.infer(x);
        served.fetch_add(1);
      }
    });
  const auto t0 = Clock::now();
  for (int64_t k = 0; k < swaps; ++k) {
    load.push_back(shifter.activate(static_cast<int>((shifter.active() + 1) % n)));
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  stop.store(true);
  for (std::thread& t : threads) t.join();
  b.load_s = ms_since(t0) / 1000.0;
  b.served = served.load();
  b.shift_us = stats_of(shift_us);
  b.swap_idle_us = stats_of(idle);
  b.swap_load_us = stats_of(load);
  return b;
}

int cmd_bench(int argc, char** argv) {
  Flags f("shifter bench",
          "Overheads of the shifter, measured on this machine:\n"
          "  decision:  select_variant for random conditions over the portfolio's ranges\n"
          "  shift:     decision plus the swap when the choice changes\n"
          "  swap:      making another variant active (idle, and while --clients threads serve requests);\n"
          "             dense residency publishes a ready model, packed residency unpacks it first\n"
          "  cold load: reading and checking one variant from disk (a swap if nothing were resident)\n"
          "  memory:    what the shifter holds for the whole portfolio (computed tensor bytes, and the\n"
          "             process's RSS growth loading it) against an ensemble holding every variant as a\n"
          "             dense model (the masked model at full size: dense parameters x 4 bytes each),\n"
          "             computed and built for real.\n"
          "Targets: decision < 1 ms, swap < 5 ms, memory <= half the ensemble's. DNNShifter's paper reports\n"
          "43 ms / 47 MB, a model ensemble 49 ms / 115.8 MB, Dynamic-OFA 512 ms / 56.2 MB.");
  add_common(f);
  f.add("decisions", "20000", "timed decisions");
  f.add("shifts", "2000", "timed shift() calls per residency");
  f.add("swaps", "1000", "timed swaps per residency (idle and under load each)");
  f.add("clients", "2", "request threads during the swaps under load");
  f.add("out", "", "also write the results as JSON to this file");
  f.add("execution", "auto", "conv/linear layers of the variants: dense, sparse, or auto (per layer, whichever "
                             "measures faster here at batch 1, once at load; packed variants keep their plan)");
  if (!f.parse(argc, argv)) return 0;
  const std::string dir = portfolio_dir(f);
  const Execution execution = parse_execution(f.str("execution"));
  const int64_t decisions = f.integer("decisions"), shifts = f.integer("shifts"), swaps = f.integer("swaps");
  const int clients = static_cast<int>(f.integer("clients"));
  check(decisions > 0 && shifts > 0 && swaps > 0 && clients >= 0,
        "--decisions, --shifts and --swaps must be positive, --clients >= 0");
  const Portfolio p = load_portfolio_manifest(dir);
  const int n = static_cast<int>(p.variants.size());

  // Random conditions spanning the portfolio's ranges (some budgets unset, some unmeetable).
  double lat_lo = 1e300, lat_hi = 0, acc_lo = 1, acc_hi = 0;
  int64_t mem_lo = INT64_MAX, mem_hi = 0;
  for (const VariantInfo& v : p.variants) {
    lat_lo = std::min(lat_lo, v.latency_ms_p99_b1), lat_hi = std::max(lat_hi, v.latency_ms_p99_b1);
    mem_lo = std::min(mem_lo, v.memory_bytes_b1), mem_hi = std::max(mem_hi, v.memory_bytes_b1);
    acc_lo = std::min(acc_lo, v.accuracy), acc_hi = std::max(acc_hi, v.accuracy);
  }
  Rng rng(1);
  std::vector<Conditions> conds(4096);
  for (Conditions& c : conds) {
    if (rng.uniform() < 0.7f) c.latency_ms = std::max(1e-3, 0.5 * lat_lo + rng.uniform() * (1.5 * lat_hi - 0.5 * lat_lo));
    if (rng.uniform() < 0.5f)
      c.memory_bytes = std::max<int64_t>(1, int64_t(0.5 * mem_lo + rng.uniform() * (1.5 * mem_hi - 0.5 * mem_lo)));
    if (rng.uniform() < 0.5f) c.min_accuracy = std::clamp(acc_lo - 0.05 + rng.uniform() * (acc_hi - acc_lo + 0.05), 0.0, 1.0);
  }
  std::vector<double> decide_us;
  int64_t fitted = 0;
  for (int64_t k = 0; k < decisions; ++k) {
    const Conditions& c = conds[static_cast<size_t>(k) % conds.size()];
    const auto t0 = Clock::now();
    Selection s = select_variant(p.variants, c);
    decide_us.push_back(ms_since(t0) * 1000.0);
    fitted += s.fits();
  }
  const Stats d = stats_of(decide_us);

  std::vector<ResidencyBench> rb;
  for (Residency r : {Residency::Dense, Residency::Packed}) rb.push_back(bench_residency(dir, r, execution, conds, shifts, swaps, clients));

  // The ensemble: every variant as the dense network.
  const int64_t ensemble_computed = int64_t(n) * p.dense_params * int64_t(sizeof(float));
  int64_t ensemble_rss = 0, ensemble_held = 0;
  if (!is_zoo_name(p.arch)) {
    std::fprintf(stderr, "bench: '%s' is not a zoo architecture; the ensemble is only computed, not built\n",
                 p.arch.c_str());
  } else {
    release_host_cache();  // freed tensor blocks go back to malloc, then to the OS
    malloc_trim(0);
    const int64_t before = rss_bytes();
    std::vector<Model> ensemble;
    for (int i = 0; i < n; ++i) {
      ensemble.push_back(build_model(p.arch, p.num_classes, p.input_shape));  // zero-filled: pages are touched
      ensemble_held += model_resident_bytes(ensemble.back());
    }
    release_host_cache();  // freed tensor blocks go back to malloc, then to the OS
    malloc_trim(0);
    ensemble_rss = rss_bytes() - before;
  }

  // Cold loads: each variant read and checked from disk.
  std::vector<double> cold_ms;
  for (int i = 0; i < n; ++i) {
    const auto t0 = Clock::now();
    load_variant_model(dir, p, i);
    cold_ms.push_back(ms_since(t0));
  }
  const Stats cl = stats_of(cold_ms);

  std::printf("shifter bench: portfolio %s, %d variants of %s (%lld parameters dense), %d threads on %s\n\n",
              dir.c_str(), n, p.arch.c_str(), (long long)p.dense_params, num_threads(), cpu_model_name().c_str());
  std::printf("| overhead | mean | p50 | p99 | max |\n|---|---:|---:|---:|---:|\n");
  auto row = [](const std::string& name, const Stats& s, const char* unit) {
    std::printf("| %s | %.3f %s | %.3f %s | %.3f %s | %.3f %s |\n", name.c_str(), s.mean, unit, s.p50, unit, s.p99, unit,
                s.max, unit);
  };
  row("decision (select_variant)", d, "us");
  for (const ResidencyBench& b : rb) {
    row("shift, " + b.name + " (decision + swap when needed)", b.shift_us, "us");
    row("swap, " + b.name + ", idle", b.swap_idle_us, "us");
    row("swap, " + b.name + ", while serving", b.swap_load_us, "us");
  }
  row("cold load of one variant from disk", cl, "ms");
  std::printf("\n| memory | MB | of the ensemble |\n|---|---:|---:|\n");
  const double ens = static_cast<double>(ensemble_computed);
  for (const ResidencyBench& b : rb) {
    std::printf("| shifter, %s: held for all %d variants (computed) | %.3f | %.1f%% |\n", b.name.c_str(), n, b.held / 1e6,
                100.0 * b.held / ens);
    std::printf("| shifter, %s: RSS growth loading the portfolio | %.3f | %.1f%% |\n", b.name.c_str(), b.rss / 1e6,
                100.0 * b.rss / ens);
  }
  std::printf("| ensemble: %d x %lld dense parameters x 4 B (computed) | %.3f | 100%% |\n", n, (long long)p.dense_params,
              ens / 1e6);
  std::printf("| ensemble: tensors of %d dense models (parameters + batchnorm buffers) | %.3f | %.1f%% |\n", n,
              ensemble_held / 1e6, 100.0 * ensemble_held / ens);
  std::printf("| ensemble: RSS growth building it | %.3f | %.1f%% |\n", ensemble_rss / 1e6, 100.0 * ensemble_rss / ens);
  for (const ResidencyBench& b : rb) {
    if (b.variants.empty()) continue;
    std::printf("\nheld ready (%s residency): a layer whose plan runs sparse at every batch keeps only its sparse form\n"
                "(values, 16-bit columns (32 past 65535), row starts, a conv's prepared layout); the others keep the dense weight (and a sparse\n"
                "copy where they run sparse at some batch)\n\n"
                "| variant | tensors MB | sparse forms MB | held MB | of the ensemble | layers holding only the sparse form |\n"
                "|---|---:|---:|---:|---:|---:|\n",
                b.name.c_str());
    for (const VariantHeld& v : b.variants)
      std::printf("| %s | %.3f | %.3f | %.3f | %.1f%% | %d of %d |\n", v.name.c_str(), v.tensors / 1e6, v.sparse / 1e6,
                  (v.tensors + v.sparse) / 1e6, 100.0 * double(v.tensors + v.sparse) / ens, v.released, v.layers);
  }
  std::printf("\n%lld of %lld random conditions had a fitting variant; during the swaps under load %d threads served ",
              (long long)fitted, (long long)decisions, clients);
  for (const ResidencyBench& b : rb) std::printf("%lld requests in %.2f s (%s) ", (long long)b.served, b.load_s, b.name.c_str());
  std::printf("\n\ntargets: decision < 1 ms: %s (p99 %.3f us)\n", d.p99 < 1000 ? "met" : "MISSED", d.p99);
  for (const ResidencyBench& b : rb)
    std::printf("         %s: swap < 5 ms: %s (p99 under load %.3f us); memory <= half the ensemble: %s (%.1f%%)\n",
                b.name.c_str(), std::max(b.swap_idle_us.p99, b.swap_load_us.p99) < 5000 ? "met" : "MISSED",
                b.swap_load_us.p99, b.held <= ens / 2 ? "met" : "MISSED", 100.0 * b.held / ens);
  std::printf("paper (DNNShifter): DNNShifter 43 ms / 47 MB, model ensemble 49 ms / 115.8 MB, Dynamic-OFA 512 ms / 56.2 MB\n");
  if (!f.str("out").empty()) {
    std::string res = "[";
    for (size_t i = 0; i < rb.size(); ++i) {
      const ResidencyBench& b = rb[i];
      Json r;
      r.add("residency", b.name)
          .add("held_bytes", b.held)
          .add("rss_bytes", b.rss)
          .add("memory_ratio", b.held / ens)
          .add_raw("shift_us", stats_json(b.shift_us))
          .add_raw("swap_idle_us", stats_json(b.swap_idle_us))
          .add_raw("swap_under_load_us", stats_json(b.swap_load_us))
          .add("requests_during_swaps", b.served);
      if (!b.variants.empty()) {
        std::string vs = "[";
        for (size_t k = 0; k < b.variants.size(); ++k)
          vs += std::string(k ? ", " : "") + Json()
                                                 .add("name", b.variants[k].name)
                                                 .add("tensor_bytes", b.variants[k].tensors)
                                                 .add("sparse_bytes", b.variants[k].sparse)
                                                 .add("released_layers", b.variants[k].released)
                                                 .add("layers", b.variants[k].layers)
                                                 .str();
        r.add_raw("variants_held", vs + "]");
      }
      res += std::string(i ? ", " : "") + r.str();
    }
    Json j;
    j.add("portfolio", dir)
        .add("variants", n)
        .add("arch", p.arch)
        .add("threads", num_threads())
        .add("execution", execution_name(execution))
        .add("machine", cpu_model_name())
        .add_raw("decision_us", stats_json(d))
        .add_raw("cold_load_ms", stats_json(cl))
        .add_raw("residencies", res + "]")
        .add("ensemble_computed_bytes", ensemble_computed)
        .add("ensemble_tensor_bytes", ensemble_held)
        .add("ensemble_rss_bytes", ensemble_rss);
    write_text_atomic(f.str("out"), j.str() + "\n");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  try {
    if (cmd == "show") return cmd_show(argc - 1, argv + 1);
    if (cmd == "select") return cmd_select(argc - 1, argv + 1);
    if (cmd == "replay") return cmd_replay(argc - 1, argv + 1);
    if (cmd == "bench") return cmd_bench(argc - 1, argv + 1);
    std::fprintf(stderr, "shifter: unknown command '%s'\n\n%s", cmd.c_str(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\nshifter %s: error: %s\n", cmd.c_str(), e.what());
    return 1;
  }
}
