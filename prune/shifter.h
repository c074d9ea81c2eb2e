// The shifter: picks the portfolio variant that fits the device's current conditions and
// hot-swaps it while inference requests keep being served.
//
// Choosing (select_variant, metadata only). Conditions are any combination of a latency
// budget (ms, at batch 1 or at the portfolio's batch, p50 or p99), a memory budget (bytes of
// working memory of one call, InferenceMemory::total at that batch) and a minimum accuracy.
// Among the variants within every given budget the best is, in order:
//   1. the highest accuracy;   2. then the lowest latency (the conditions' basis and stat);
//   3. then the least working memory;   4. then the smallest model file;   5. then the
//   lowest index in the portfolio.
// When none fits, the selection says how many variants each budget excluded and names the
// closest variant: the fewest budgets broken, then the smallest worst relative excess
// ((value - budget) / budget for latency and memory, (minimum - accuracy) / minimum for
// accuracy), then the order above.
//
// Serving (Shifter). Every variant is loaded and checked before it can be chosen, and served
// as an immutable shared_ptr<const Model> that is complete before it is published; the active
// variant is one shared_ptr, copied or replaced under a mutex held for nothing else. A request
// takes a snapshot of it when it starts and runs `infer` (prune/
// infer.h, safe on one model from many threads) on that snapshot, so a swap never stalls,
// never drops a request, and never lets one see a half-loaded model: requests in flight
// finish on the variant they started on, and keep it alive until they do. Every answer names
// the variant that computed it.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/sparse.h"
#include "prune/portfolio.h"

namespace dnns {

enum class LatencyBasis { Batch1, Batch };  // batch 1, or Portfolio::latency_batch
enum class LatencyStat { P50, P99 };
LatencyBasis parse_latency_basis(const std::string& s);  // "batch1" | "batch"
LatencyStat parse_latency_stat(const std::string& s);    // "p50" | "p99"

struct Conditions {
  std::optional<double> latency_ms;     // the variant's latency must not exceed this
  std::optional<int64_t> memory_bytes;  // its working memory of one call must not exceed this
  std::optional<double> min_accuracy;   // its test accuracy (fraction in [0, 1]) must reach this
  LatencyBasis basis = LatencyBasis::Batch1;  // which measured latency and memory apply
  LatencyStat stat = LatencyStat::P99;
  // "latency <= 5 ms (p99, batch 1), memory <= 12.5 MB, accuracy >= 90.00%" or "no budgets".
  std::string str() const;
  void validate() const;  // throws Error on a non-positive budget or an accuracy outside [0, 1]
};

double variant_latency_ms(const VariantInfo& v, const Conditions& c);  // per the basis and stat
int64_t variant_memory_bytes(const VariantInfo& v, const Conditions& c);

enum : unsigned { kBreaksLatency = 1u, kBreaksMemory = 2u, kBreaksAccuracy = 4u };

struct Selection {
  int chosen = -1;                   // the best variant within every budget; -1: none fits
  int closest = -1;                  // equals chosen, or the closest variant when none fits
  std::vector<unsigned> violations;  // (variants) the budgets each one breaks (kBreaks* bits)
  int excluded_by_latency = 0, excluded_by_memory = 0, excluded_by_accuracy = 0;
  bool fits() const { return chosen >= 0; }
};

// The choice described above. Throws Error on an empty list or invalid conditions.
Selection select_variant(const std::vector<VariantInfo>& variants, const Conditions& c);
// Whether variant a is preferred to variant b under the tie-breaks (1-5) above.
bool preferred(const std::vector<VariantInfo>& variants, int a, int b, const Conditions& c);
// One line: "level_6 fits (accuracy 91.2%, 1.3 ms, 2.1 MB)" or "no variant fits: latency
// <= 1 ms excludes 5 of 5 (level_0 ...), ...; closest: level_12 (...)".
std::string explain_selection(const std::vector<VariantInfo>& variants, const Conditions& c, const Selection& s);

// ---- serving ------------------------------------------------------------------------------

struct Answer {
  Tensor logits;            // (N, classes)
  int variant = -1;         // index of the variant that computed them
  uint64_t generation = 0;  // which activation served it (1 for the first, +1 per swap)
};

// What to do when no variant fits: serve the closest one, or keep the active one.
enum class NoFitPolicy { Closest, KeepCurrent };

// How the shifter holds the variants it is not serving.
//   Dense:  every variant as a ready model; a swap only publishes a pointer (microseconds).
//           A layer whose plan runs sparse at every batch holds only its sparse form
//           (Model::release_dense_weights), in Packed residency's active model too.
//   Packed: every variant as a PackedModel (its nonzero weights with their positions where
//           that is smaller), only the active one as a ready model; a swap unpacks the new
//           variant first (a fresh, complete model) and then publishes it. Less memory for
//           portfolios of sparse variants, a slower swap.
enum class Residency { Dense, Packed };
Residency parse_residency(const std::string& s);  // "dense" | "packed"

// A model kept compactly: its graph spec and every state tensor, dense or sparse (its nonzeros
// and their positions in a bitmap or gap8 index: core/sparse.h, the format of model files),
// whichever is smaller, so its bytes follow the surviving weights. Masks are not kept
// (inference only); a zero weight of either sign unpacks as +0.0.
struct PackedModel {
  struct PackedTensor {
    std::string name;
    Shape shape;
    bool sparse = false;
    SparseTensor kept;          // sparse: the nonzeros and their coded positions
    std::vector<float> values;  // dense: (numel)
  };
  std::string spec, arch;
  DataInfo data_info;  // what a caller needs to feed the model and label its output
  bool fusion = true;  // Model::fusion(): the eval path it runs (other bits without)
  std::vector<PackedTensor> tensors;  // in Model::state() order
  // The model's execution plan (nn/execution.h) without its sparse weights: unpacking
  // rebuilds them, so the unpacked model runs as the packed one was planned.
  std::vector<SavedLayerPlan> plan;
  int64_t bytes() const;  // what it holds: values, indices, the spec text and the plan
};
PackedModel pack_model(const Model& m);
Model unpack_model(const PackedModel& p);  // equal to the packed model, value for value, same plan and fusion

struct ShiftResult {
  Selection selection;
  int previous = -1, active = -1;  // variant indices before and after
  bool swapped = false;
  double decision_us = 0;  // select_variant
  double swap_us = 0;      // publishing the new active variant (0 when none was needed)
  uint64_t generation = 0; // the active generation after the shift
};

class Shifter {
 public:
  // Starts with the most accurate variant active (ties as in select_variant).
  explicit Shifter(LoadedPortfolio portfolio, NoFitPolicy policy = NoFitPolicy::Closest,
                   Residency residency = Residency::Dense);
  Shifter(const Shifter&) = delete;
  Shifter& operator=(const Shifter&) = delete;

  const Portfolio& portfolio() const { return p_.manifest; }
  const std::string& dir() const { return p_.dir; }
  int size() const { return static_cast<int>(p_.manifest.variants.size()); }
  Residency residency() const { return residency_; }
  // Variant `index` as a ready model (the held one, or freshly unpacked when packed).
  std::shared_ptr<const Model> model(int index) const;

  // Chooses for `c` and swaps when the choice differs from the active variant. Safe to call
  // while other threads call infer(); calls to shift/activate are serialised.
  ShiftResult shift(const Conditions& c);
  // Makes variant `index` active (a hot swap); returns the time it took in microseconds.
  double activate(int index);

  // Serves one request on the variant active when it starts. Thread-safe.
  Answer infer(const Tensor& x) const;

  int active() const;
  uint64_t generation() const;
  int64_t swaps() const { return swaps_.load(); }
  std::vector<int64_t> served_counts() const;  // (variants) answers served by each
  // What the shifter holds: Dense, the tensors of every variant (model_resident_bytes: the
  // released dense weights not counted) and the sparse weight copies their execution plans keep
  // (sparse_execution_bytes); Packed, every packed variant plus the active variant's ready
  // model, counted alike. (A request still running on the previous variant
  // keeps that model alive until it finishes.)
  int64_t resident_bytes() const;

 private:
  struct Active {
    int index;
    uint64_t generation;
    std::shared_ptr<const Model> model;
  };
  double publish(int index);  // with mu_ held
  std::shared_ptr<const Active> snapshot() const;  // the active variant, kept alive by the copy

  LoadedPortfolio p_;       // Packed: p_.models is emptied once packed
  NoFitPolicy policy_;
  Residency residency_;
  std::vector<PackedModel> packed_;  // (variants) Packed only
  // The active variant. active_mu_ is held only to copy or replace this pointer, never while a
  // model runs or is freed. (Not std::atomic<std::shared_ptr>: GCC 12's libstdc++ ends its
  // load() with a relaxed unlock, so the pointer read in a load is not ordered before the next
  // store's write; ThreadSanitizer reported that race between serving clients and a hot swap.)
  mutable std::mutex active_mu_;
  std::shared_ptr<const Active> active_;
  std::mutex mu_;  // serialises shift/activate
  uint64_t generation_ = 0;  // the last generation published; guarded by mu_
  std::unique_ptr<std::atomic<int64_t>[]> served_;
  std::atomic<int64_t> swaps_{0};
};

// ---- traces and replay --------------------------------------------------------------------

// One change of conditions: from time_s (trace seconds) on, these conditions hold.
struct TracePhase {
  double time_s = 0;
  Conditions conditions;
};
// CSV: a header "time_s,latency_ms,memory_mb,min_accuracy", then one row per phase with
// empty fields for unset budgets; memory in MB (10^6 bytes), min_accuracy a fraction in
// [0, 1]. Times must be >= 0 and increasing. `#` starts a comment line. Errors name the line.
std::vector<TracePhase> parse_trace_csv(const std::string& text, const std::string& where);
// JSON: an array of objects (or {"phases": [...]}) with the same keys; a missing key or null
// leaves that budget unset.
std::vector<TracePhase> parse_trace_json(const std::string& text, const std::string& where);
// By extension: ".json" is JSON, anything else CSV.
std::vector<TracePhase> load_trace(const std::string& path);

struct ReplayOptions {
  int clients = 2;            // threads sending requests back to back
  int64_t batch = 1;          // images per request
  double time_scale = 1.0;    // wall seconds per trace second
  double last_phase_s = 2.0;  // trace seconds the last phase lasts
  LatencyBasis basis = LatencyBasis::Batch1;  // applied to every phase's conditions
  LatencyStat stat = LatencyStat::P99;
};

struct PhaseReport {
  int phase = 0;
  double start_s = 0, duration_s = 0;  // wall seconds from the start of the replay
  Conditions conditions;
  ShiftResult shift;
  std::string explanation;
  int64_t requests = 0, images = 0, correct = 0;
  double accuracy = 0, latency_ms_p50 = 0, latency_ms_p99 = 0;
  std::vector<int64_t> served_by;  // (variants) requests of this phase each variant answered
};

struct ReplayReport {
  std::vector<PhaseReport> phases;
  int64_t requests = 0, images = 0, swaps = 0;
  double wall_s = 0;
};

// Replays `trace` against requests drawn in order (wrapping) from `images` (N, C, H, W,
// normalised) with `labels` (N): the calling thread applies each phase's conditions at its
// time (shift), opt.clients threads send requests meanwhile. A request belongs to the phase
// in force when it started; a phase comes into force once its variant is active.
ReplayReport replay_trace(Shifter& shifter, const std::vector<TracePhase>& trace, const Tensor& images,
                          const std::vector<int>& labels, const ReplayOptions& opt);
std::string replay_report_json(const Shifter& shifter, const ReplayReport& r, const ReplayOptions& opt);

// SVG scatter of the portfolio: latency (per basis and stat) against accuracy, every variant,
// its Pareto front (no other variant both faster and at least as accurate), and the variants
// chosen in `phases` ringed and labelled with their phase numbers.
std::string portfolio_front_svg(const Portfolio& p, const std::vector<PhaseReport>& phases, LatencyBasis basis,
                                LatencyStat stat);

}  // namespace dnns
