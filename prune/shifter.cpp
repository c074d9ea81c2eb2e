#include "prune/shifter.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/fs.h"
#include "core/json.h"
#include "prune/infer.h"
#include "prune/report.h"

namespace dnns {

using Clock = std::chrono::steady_clock;

namespace {

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}
std::string mb(int64_t bytes) { return fmt("%.3g", bytes / 1e6) + " MB"; }
double us_between(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::micro>(b - a).count(); }

}  // namespace

// ---------------------------------------------------------------- conditions and selection

LatencyBasis parse_latency_basis(const std::string& s) {
  if (s == "batch1") return LatencyBasis::Batch1;
  if (s == "batch") return LatencyBasis::Batch;
  throw Error("latency basis must be 'batch1' or 'batch' (the portfolio's latency batch), got '" + s + "'");
}

LatencyStat parse_latency_stat(const std::string& s) {
  if (s == "p50") return LatencyStat::P50;
  if (s == "p99") return LatencyStat::P99;
  throw Error("latency statistic must be 'p50' or 'p99', got '" + s + "'");
}

std::string Conditions::str() const {
  std::vector<std::string> parts;
  if (latency_ms)
    parts.push_back("latency <= " + json_number(*latency_ms) + " ms (" + (stat == LatencyStat::P50 ? "p50" : "p99") +
                    ", " + (basis == LatencyBasis::Batch1 ? "batch 1" : "portfolio batch") + ")");
  if (memory_bytes) parts.push_back("memory <= " + mb(*memory_bytes));
  if (min_accuracy) parts.push_back("accuracy >= " + fmt("%.2f%%", 100.0 * *min_accuracy));
  if (parts.empty()) return "no budgets";
  std::string s;
  for (size_t i = 0; i < parts.size(); ++i) s += (i ? ", " : "") + parts[i];
  return s;
}

void Conditions::validate() const {
  if (latency_ms)
    check(std::isfinite(*latency_ms) && *latency_ms > 0, "latency budget must be a positive number of ms, got " +
                                                             json_number(*latency_ms));
  if (memory_bytes) check(*memory_bytes > 0, "memory budget must be positive, got " + std::to_string(*memory_bytes) + " bytes");
  if (min_accuracy)
    check(*min_accuracy >= 0 && *min_accuracy <= 1, "minimum accuracy must be a fraction in [0, 1], got " +
                                                        json_number(*min_accuracy));
}

double variant_latency_ms(const VariantInfo& v, const Conditions& c) {
  if (c.basis == LatencyBasis::Batch1) return c.stat == LatencyStat::P50 ? v.latency_ms_p50_b1 : v.latency_ms_p99_b1;
  return c.stat == LatencyStat::P50 ? v.latency_ms_p50_batch : v.latency_ms_p99_batch;
}

int64_t variant_memory_bytes(const VariantInfo& v, const Conditions& c) {
  return c.basis == LatencyBasis::Batch1 ? v.memory_bytes_b1 : v.memory_bytes_batch;
}

bool preferred(const std::vector<VariantInfo>& vs, int a, int b, const Conditions& c) {
  const VariantInfo &x = vs[a], &y = vs[b];
  if (x.accuracy != y.accuracy) return x.accuracy > y.accuracy;
  double lx = variant_latency_ms(x, c), ly = variant_latency_ms(y, c);
  if (lx != ly) return lx < ly;
  int64_t mx = variant_memory_bytes(x, c), my = variant_memory_bytes(y, c);
  if (mx != my) return mx < my;
  if (x.file_bytes != y.file_bytes) return x.file_bytes < y.file_bytes;
  return a < b;
}

namespace {

// The largest relative excess over the budgets variant i breaks (0 when it breaks none).
double worst_excess(const VariantInfo& v, const Conditions& c) {
  double worst = 0;
  if (c.latency_ms && variant_latency_ms(v, c) > *c.latency_ms)
    worst = std::max(worst, (variant_latency_ms(v, c) - *c.latency_ms) / *c.latency_ms);
  if (c.memory_bytes && variant_memory_bytes(v, c) > *c.memory_bytes)
    worst = std::max(worst, double(variant_memory_bytes(v, c) - *c.memory_bytes) / double(*c.memory_bytes));
  if (c.min_accuracy && v.accuracy < *c.min_accuracy)
    worst = std::max(worst, (*c.min_accuracy - v.accuracy) / *c.min_accuracy);
  return worst;
}

}  // namespace

Selection select_variant(const std::vector<VariantInfo>& vs, const Conditions& c) {
  c.validate();
  check(!vs.empty(), "select_variant: the portfolio has no variants");
  const int n = static_cast<int>(vs.size());
  Selection s;
  s.violations.assign(n, 0);
  for (int i = 0; i < n; ++i) {
    unsigned bits = 0;
    if (c.latency_ms && variant_latency_ms(vs[i], c) > *c.latency_ms) bits |= kBreaksLatency, ++s.excluded_by_latency;
    if (c.memory_bytes && variant_memory_bytes(vs[i], c) > *c.memory_bytes) bits |= kBreaksMemory, ++s.excluded_by_memory;
    if (c.min_accuracy && vs[i].accuracy < *c.min_accuracy) bits |= kBreaksAccuracy, ++s.excluded_by_accuracy;
    s.violations[i] = bits;
    if (bits == 0 && (s.chosen < 0 || preferred(vs, i, s.chosen, c))) s.chosen = i;
  }
  if (s.fits()) {
    s.closest = s.chosen;
    return s;
  }
  for (int i = 0; i < n; ++i) {
    if (s.closest < 0) {
      s.closest = i;
      continue;
    }
    const int j = s.closest;
    const int bi = std::popcount(s.violations[i]), bj = std::popcount(s.violations[j]);
    if (bi != bj) {
      if (bi < bj) s.closest = i;
      continue;
    }
    const double ei = worst_excess(vs[i], c), ej = worst_excess(vs[j], c);
    if (ei != ej) {
      if (ei < ej) s.closest = i;
      continue;
    }
    if (preferred(vs, i, j, c)) s.closest = i;
  }
  return s;
}

std::string explain_selection(const std::vector<VariantInfo>& vs, const Conditions& c, const Selection& s) {
  auto describe = [&](int i) {
    const VariantInfo& v = vs[i];
    return v.name + " (accuracy " + fmt("%.2f%%", 100.0 * v.accuracy) + ", " + fmt("%.3g", variant_latency_ms(v, c)) +
           " ms, " + mb(variant_memory_bytes(v, c)) + ")";
  };
  const int n = static_cast<int>(vs.size());
  if (s.fits()) {
    int within = 0;
    for (unsigned b : s.violations) within += b == 0;
    return describe(s.chosen) + " chosen: " + std::to_string(within) + " of " + std::to_string(n) +
           " variants fit " + c.str();
  }
  std::string out = "no variant fits " + c.str() + ":";
  auto excluded = [&](unsigned bit, const std::string& what, int count) {
    if (!count) return;
    std::string names;
    for (int i = 0; i < n; ++i)
      if (s.violations[i] & bit) names += (names.empty() ? "" : " ") + vs[i].name;
    out += " " + what + " excludes " + std::to_string(count) + " of " + std::to_string(n) + " (" + names + ");";
  };
  excluded(kBreaksLatency, "the latency budget", s.excluded_by_latency);
  excluded(kBreaksMemory, "the memory budget", s.excluded_by_memory);
  excluded(kBreaksAccuracy, "the accuracy minimum", s.excluded_by_accuracy);
  if (s.closest >= 0) out += " closest: " + describe(s.closest);
  return out;
}

// ---------------------------------------------------------------- packed variants

Residency parse_residency(const std::string& s) {
  if (s == "dense") return Residency::Dense;
  if (s == "packed") return Residency::Packed;
  throw Error("residency must be 'dense' or 'packed', got '" + s + "'");
}

int64_t PackedModel::bytes() const {
  int64_t total = static_cast<int64_t>(spec.size() + arch.size() + data_info.dataset.size() +
                                       data_info.channel_order.size() +
                                       (data_info.mean.size() + data_info.std.size()) * sizeof(float));
  for (const std::string& c : data_info.class_names) total += static_cast<int64_t>(c.size());
  for (const PackedTensor& t : tensors)
    total += t.sparse ? t.kept.bytes() : static_cast<int64_t>(t.values.size() * sizeof(float));
  for (const SavedLayerPlan& l : plan) total += l.bytes();
  return total;
}

PackedModel pack_model(const Model& m) {
  check(m.device() == Device::CPU, "pack_model: the model must be on the CPU");
  PackedModel p;
  p.spec = m.spec();
  p.arch = m.arch;
  p.data_info = m.data_info;
  p.fusion = m.fusion();
  for (auto& [name, t] : m.state_for_reading()) {  // a released weight comes back rebuilt
    PackedModel::PackedTensor pt;
    pt.name = name;
    pt.shape = t.shape();
    // Zeros of either sign are dropped: -0.0 unpacks as +0.0, which changes no sum.
    pt.kept = to_sparse(t.data(), pt.shape, ZeroSign::AnySign);
    pt.sparse = sparse_pays(pt.kept);
    if (!pt.sparse) {
      pt.kept = SparseTensor{};
      pt.values.assign(t.data(), t.data() + t.numel());
    }
    p.tensors.push_back(std::move(pt));
  }
  p.plan = save_execution_plan(m);
  return p;
}

Model unpack_model(const PackedModel& p) {
  Model m = Model::from_spec(p.spec);  // every tensor allocated and zero-filled
  m.arch = p.arch;
  m.data_info = p.data_info;
  m.set_fusion(p.fusion);
  auto state = m.state();
  check(state.size() == p.tensors.size(), "unpack_model: the graph has " + std::to_string(state.size()) +
                                              " tensors, the packed model " + std::to_string(p.tensors.size()));
  for (size_t k = 0; k < state.size(); ++k) {
    const PackedModel::PackedTensor& pt = p.tensors[k];
    Tensor& t = *state[k].second;
    check(state[k].first == pt.name && t.shape() == pt.shape,
          "unpack_model: tensor " + std::to_string(k) + " is '" + state[k].first + "' " + shape_str(t.shape()) +
              ", the packed model has '" + pt.name + "' " + shape_str(pt.shape));
    if (pt.sparse)
      to_dense(pt.kept, t.data());
    else
      std::copy(pt.values.begin(), pt.values.end(), t.data());
  }
  restore_execution_plan(m, p.plan);
  return m;
}

// ---------------------------------------------------------------- the shifter

// A variant as the shifter holds it ready: one form per layer where the plan allows it
// (settle_sparse_plans, nn/execution.h), then the dense weights of the layers that run sparse at
// every batch released. The loaded model itself when that changes nothing; else that model,
// changed in place when the shifter holds the only reference (the portfolio was moved in),
// before anyone can serve it; otherwise a changed copy (whoever else holds the loaded model
// keeps it unchanged; both exist until they let it go).
static void make_lean(Model& m) {
  settle_sparse_plans(m);
  m.release_dense_weights();
}
static std::shared_ptr<Model> ready_model(std::shared_ptr<Model> shared) {
  if (shared->releasable_weight_bytes() == 0 && settleable_sparse_plans(*shared) == 0) return shared;
  if (shared.use_count() == 1) {
    make_lean(*shared);
    return shared;
  }
  Model lean = shared->clone();
  make_lean(lean);
  return std::make_shared<Model>(std::move(lean));
}

Shifter::Shifter(LoadedPortfolio portfolio, NoFitPolicy policy, Residency residency)
    : p_(std::move(portfolio)), policy_(policy), residency_(residency) {
  check(!p_.models.empty() && p_.models.size() == p_.manifest.variants.size(),
        "shifter: portfolio " + p_.dir + " has " + std::to_string(p_.manifest.variants.size()) + " variants but " +
            std::to_string(p_.models.size()) + " models");
  for (size_t i = 0; i < p_.models.size(); ++i)
    check(p_.models[i] != nullptr && p_.models[i]->device() == Device::CPU,
          "shifter: variant '" + p_.manifest.variants[i].name + "' is not loaded on the CPU");
  if (residency_ == Residency::Packed) {
    for (auto& m : p_.models) {
      packed_.push_back(pack_model(*m));
      m.reset();  // the ready model goes; the packed one stays
    }
  } else {
    for (auto& m : p_.models) m = ready_model(std::move(m));
  }
  served_ = std::make_unique<std::atomic<int64_t>[]>(p_.manifest.variants.size());
  for (size_t i = 0; i < p_.manifest.variants.size(); ++i) served_[i].store(0);
  std::lock_guard<std::mutex> lock(mu_);
  publish(select_variant(p_.manifest.variants, Conditions{}).chosen);
  swaps_.store(0);  // the first activation is not a swap
}

std::shared_ptr<const Model> Shifter::model(int index) const {
  check(index >= 0 && index < size(), "shifter: no variant " + std::to_string(index));
  if (residency_ == Residency::Dense) return p_.models[index];
  Model m = unpack_model(packed_[index]);
  make_lean(m);
  return std::make_shared<const Model>(std::move(m));
}

double Shifter::publish(int index) {
  const auto t0 = Clock::now();
  // The model is complete before anyone can see it: requests only ever reach it through the
  // pointer stored below.
  std::shared_ptr<const Model> model = this->model(index);
  std::shared_ptr<const Active> next =
      std::make_shared<const Active>(Active{index, ++generation_, std::move(model)});
  {
    std::lock_guard<std::mutex> lock(active_mu_);
    active_.swap(next);
  }
  next.reset();  // the previous variant, freed here unless a request still holds it
  const auto t1 = Clock::now();
  swaps_.fetch_add(1);
  return us_between(t0, t1);
}

std::shared_ptr<const Shifter::Active> Shifter::snapshot() const {
  std::lock_guard<std::mutex> lock(active_mu_);
  return active_;
}

double Shifter::activate(int index) {
  check(index >= 0 && index < size(), "shifter: no variant " + std::to_string(index) + " (the portfolio has " +
                                          std::to_string(size()) + ")");
  std::lock_guard<std::mutex> lock(mu_);
  if (snapshot()->index == index) return 0;
  return publish(index);
}

ShiftResult Shifter::shift(const Conditions& c) {
  std::lock_guard<std::mutex> lock(mu_);
  ShiftResult r;
  const auto t0 = Clock::now();
  r.selection = select_variant(p_.manifest.variants, c);
  r.decision_us = us_between(t0, Clock::now());
  r.previous = snapshot()->index;
  int target = r.selection.chosen;
  if (target < 0) target = policy_ == NoFitPolicy::Closest ? r.selection.closest : r.previous;
  if (target != r.previous) {
    r.swap_us = publish(target);
    r.swapped = true;
  }
  std::shared_ptr<const Active> now = snapshot();
  r.active = now->index;
  r.generation = now->generation;
  return r;
}

Answer Shifter::infer(const Tensor& x) const {
  // The snapshot keeps this variant alive and fixed for the whole request, whatever swaps
  // happen meanwhile.
  std::shared_ptr<const Active> a = snapshot();
  Answer ans;
  ans.logits = ::dnns::infer(*a->model, x);
  ans.variant = a->index;
  ans.generation = a->generation;
  served_[a->index].fetch_add(1, std::memory_order_relaxed);
  return ans;
}

int Shifter::active() const { return snapshot()->index; }
uint64_t Shifter::generation() const { return snapshot()->generation; }

std::vector<int64_t> Shifter::served_counts() const {
  std::vector<int64_t> out(p_.manifest.variants.size());
  for (size_t i = 0; i < out.size(); ++i) out[i] = served_[i].load();
  return out;
}

int64_t Shifter::resident_bytes() const {
  int64_t total = 0;
  if (residency_ == Residency::Dense) {
    for (const auto& m : p_.models) total += model_resident_bytes(*m) + sparse_execution_bytes(*m);
    return total;
  }
  for (const PackedModel& pm : packed_) total += pm.bytes();
  const Model& active = *snapshot()->model;
  return total + model_resident_bytes(active) + sparse_execution_bytes(active);
}

// ---------------------------------------------------------------- traces

namespace {

const char* const kTraceKeys[] = {"time_s", "latency_ms", "memory_mb", "min_accuracy"};

std::string trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t\r"), b = s.find_last_not_of(" \t\r");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

double parse_number(const std::string& s, const std::string& where) {
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  check(!s.empty() && end && *end == '\0' && std::isfinite(v), where + ": '" + s + "' is not a number");
  return v;
}

// Sets one trace field of `ph` from a number; checks its range.
void set_trace_field(TracePhase& ph, const std::string& key, double v, const std::string& where) {
  if (key == "time_s") {
    check(v >= 0, where + ": time_s must be >= 0, got " + json_number(v));
    ph.time_s = v;
  } else if (key == "latency_ms") {
    check(v > 0, where + ": latency_ms must be positive, got " + json_number(v));
    ph.conditions.latency_ms = v;
  } else if (key == "memory_mb") {
    check(v > 0, where + ": memory_mb must be positive, got " + json_number(v));
    ph.conditions.memory_bytes = std::llround(v * 1e6);
  } else {
    check(v >= 0 && v <= 1, where + ": min_accuracy must be a fraction in [0, 1], got " + json_number(v));
    ph.conditions.min_accuracy = v;
  }
}

void check_trace_times(const std::vector<TracePhase>& t, const std::string& where) {
  check(!t.empty(), where + ": the trace has no phases");
  for (size_t i = 1; i < t.size(); ++i)
    check(t[i].time_s > t[i - 1].time_s, where + ": phase " + std::to_string(i) + " starts at " +
                                             json_number(t[i].time_s) + " s, not after the previous phase (" +
                                             json_number(t[i - 1].time_s) + " s)");
}

}  // namespace

std::vector<TracePhase> parse_trace_csv(const std::string& text, const std::string& where) {
  std::istringstream is(text);
  std::string line;
  std::vector<std::string> columns;
  std::vector<TracePhase> out;
  int lineno = 0;
  while (std::getline(is, line)) {
    ++lineno;
    const std::string t = trim(line);
    if (t.empty() || t[0] == '#') continue;
    const std::string w = where + " line " + std::to_string(lineno);
    std::vector<std::string> fields;
    std::stringstream ss(t);
    std::string f;
    while (std::getline(ss, f, ',')) fields.push_back(trim(f));
    if (t.back() == ',') fields.push_back("");
    if (columns.empty()) {
      std::set<std::string> seen;
      for (const std::string& c : fields) {
        bool known = std::find(std::begin(kTraceKeys), std::end(kTraceKeys), c) != std::end(kTraceKeys);
        check(known, w + ": unknown column '" + c + "' (expected time_s, latency_ms, memory_mb, min_accuracy)");
        check(seen.insert(c).second, w + ": column '" + c + "' appears twice");
      }
      check(seen.count("time_s"), w + ": the header needs a time_s column");
      columns = fields;
      continue;
    }
    check(fields.size() == columns.size(), w + ": " + std::to_string(fields.size()) + " fields, the header has " +
                                               std::to_string(columns.size()));
    TracePhase ph;
    for (size_t k = 0; k < fields.size(); ++k) {
      if (fields[k].empty()) {
        check(columns[k] != "time_s", w + ": time_s is empty");
        continue;
      }
      set_trace_field(ph, columns[k], parse_number(fields[k], w + ", " + columns[k]), w);
    }
    out.push_back(ph);
  }
  check(!columns.empty(), where + ": empty trace (expected a header time_s,latency_ms,memory_mb,min_accuracy)");
  check_trace_times(out, where);
  return out;
}

std::vector<TracePhase> parse_trace_json(const std::string& text, const std::string& where) {
  JsonValue root = parse_json(text, where);
  const JsonValue* list = &root;
  if (root.type == JsonValue::Type::Object) list = &json_field(root, "phases", where);
  std::vector<TracePhase> out;
  const auto& items = json_array(*list, where + ": phases");
  for (size_t i = 0; i < items.size(); ++i) {
    const std::string w = where + ": phase " + std::to_string(i);
    check(items[i].type == JsonValue::Type::Object, w + ": expected an object");
    TracePhase ph;
    for (const auto& [key, v] : items[i].members) {
      bool known = std::find(std::begin(kTraceKeys), std::end(kTraceKeys), key) != std::end(kTraceKeys);
      check(known, w + ": unknown key '" + key + "' (expected time_s, latency_ms, memory_mb, min_accuracy)");
      if (v.type == JsonValue::Type::Null) {
        check(key != "time_s", w + ": time_s is null");
        continue;
      }
      set_trace_field(ph, key, json_double(v, w + ": " + key), w);
    }
    json_field(items[i], "time_s", w);  // required
    out.push_back(ph);
  }
  check_trace_times(out, where);
  return out;
}

std::vector<TracePhase> load_trace(const std::string& path) {
  const std::string text = read_text(path);
  const bool json = path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0;
  return json ? parse_trace_json(text, path) : parse_trace_csv(text, path);
}

// ---------------------------------------------------------------- replay

namespace {

struct Record {
  int phase;
  int variant;
  int32_t images, correct;
  double ms;
};

}  // namespace

ReplayReport replay_trace(Shifter& shifter, const std::vector<TracePhase>& trace, const Tensor& images,
                          const std::vector<int>& labels, const ReplayOptions& opt) {
  check(!trace.empty(), "replay: empty trace");
  check(images.ndim() == 4 && images.dim(0) > 0 && static_cast<int64_t>(labels.size()) == images.dim(0),
        "replay: expected images (N, C, H, W) and N labels, got " + shape_str(images.shape()) + " and " +
            std::to_string(labels.size()) + " labels");
  check(opt.clients >= 1 && opt.batch >= 1 && opt.time_scale > 0 && opt.last_phase_s > 0,
        "replay: clients and batch must be >= 1, time scale and last phase length positive");
  // Phase times become steady_clock durations (int64 nanoseconds, about 292 years): a timeline
  // past that wrapped, every phase ran at once and 0 requests were reported as a success.
  const double wall_span_s = (trace.back().time_s - trace.front().time_s + opt.last_phase_s) * opt.time_scale;
  check(std::isfinite(wall_span_s) && wall_span_s <= 1e9,
        "replay: the trace lasts " + json_number(wall_span_s) + " s of wall time at time scale " +
            json_number(opt.time_scale) + " (at most 1e9 s)");
  const int64_t n = images.dim(0), per = images.numel() / n;
  const int variants = shifter.size();

  std::atomic<int> phase{-1};
  std::atomic<bool> stop{false};
  std::atomic<int64_t> next_request{0};
  std::vector<std::vector<Record>> records(opt.clients);
  std::vector<std::exception_ptr> errors(opt.clients);
  std::vector<std::thread> clients;
  for (int t = 0; t < opt.clients; ++t)
    clients.emplace_back([&, t] {
      try {
        Tensor x({opt.batch, images.dim(1), images.dim(2), images.dim(3)});  // (B, C, H, W)
        while (!stop.load()) {
          const int ph = phase.load();
          if (ph < 0) {
            std::this_thread::yield();
            continue;
          }
          const int64_t first = (next_request.fetch_add(1) * opt.batch) % n;
          int32_t correct = 0;
          for (int64_t b = 0; b < opt.batch; ++b)
            std::copy(images.data() + ((first + b) % n) * per, images.data() + ((first + b) % n + 1) * per,
                      x.data() + b * per);
          const auto t0 = Clock::now();
          Answer a = shifter.infer(x);
          const double ms = us_between(t0, Clock::now()) / 1000.0;
          const int64_t k = a.logits.dim(1);
          for (int64_t b = 0; b < opt.batch; ++b) {
            const float* row = a.logits.data() + b * k;
            correct += std::max_element(row, row + k) - row == labels[(first + b) % n];
          }
          records[t].push_back({ph, a.variant, static_cast<int32_t>(opt.batch), correct, ms});
        }
      } catch (...) {
        errors[t] = std::current_exception();
        stop.store(true);
      }
    });

  ReplayReport report;
  const auto t_start = Clock::now();
  auto wall = [&] { return std::chrono::duration<double>(Clock::now() - t_start).count(); };
  std::exception_ptr controller_error;
  try {
    for (size_t i = 0; i < trace.size() && !stop.load(); ++i) {
      const double at = (trace[i].time_s - trace[0].time_s) * opt.time_scale;
      std::this_thread::sleep_until(t_start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(at)));
      PhaseReport pr;
      pr.phase = static_cast<int>(i);
      pr.conditions = trace[i].conditions;
      pr.conditions.basis = opt.basis;
      pr.conditions.stat = opt.stat;
      pr.shift = shifter.shift(pr.conditions);
      pr.explanation = explain_selection(shifter.portfolio().variants, pr.conditions, pr.shift.selection);
      pr.start_s = wall();
      pr.served_by.assign(variants, 0);
      report.phases.push_back(pr);
      phase.store(static_cast<int>(i));
    }
    const auto end = t_start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                                   (trace.back().time_s - trace[0].time_s + opt.last_phase_s) * opt.time_scale));
    while (!stop.load() && Clock::now() < end) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  } catch (...) {
    controller_error = std::current_exception();
  }
  stop.store(true);
  for (std::thread& c : clients) c.join();
  if (controller_error) std::rethrow_exception(controller_error);
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  report.wall_s = wall();

  std::vector<std::vector<double>> lat(report.phases.size());
  for (const auto& per_client : records)
    for (const Record& r : per_client) {
      PhaseReport& p = report.phases[r.phase];
      ++p.requests;
      p.images += r.images;
      p.correct += r.correct;
      ++p.served_by[r.variant];
      lat[r.phase].push_back(r.ms);
    }
  for (size_t i = 0; i < report.phases.size(); ++i) {
    PhaseReport& p = report.phases[i];
    p.duration_s = (i + 1 < report.phases.size() ? report.phases[i + 1].start_s : report.wall_s) - p.start_s;
    p.accuracy = p.images ? double(p.correct) / double(p.images) : 0.0;
    p.latency_ms_p50 = nearest_rank_percentile(lat[i], 0.5);
    p.latency_ms_p99 = nearest_rank_percentile(lat[i], 0.99);
    report.requests += p.requests;
    report.images += p.images;
    report.swaps += p.shift.swapped;
  }
  return report;
}

namespace {

std::string conditions_json(const Conditions& c) {
  Json j;
  if (c.latency_ms) j.add("latency_ms", *c.latency_ms);
  else j.add_raw("latency_ms", "null");
  if (c.memory_bytes) j.add("memory_bytes", *c.memory_bytes);
  else j.add_raw("memory_bytes", "null");
  if (c.min_accuracy) j.add("min_accuracy", *c.min_accuracy);
  else j.add_raw("min_accuracy", "null");
  j.add("basis", c.basis == LatencyBasis::Batch1 ? "batch1" : "batch");
  j.add("stat", c.stat == LatencyStat::P50 ? "p50" : "p99");
  return j.str();
}

}  // namespace

std::string replay_report_json(const Shifter& shifter, const ReplayReport& r, const ReplayOptions& opt) {
  const auto& vs = shifter.portfolio().variants;
  std::string phases = "[";
  for (size_t i = 0; i < r.phases.size(); ++i) {
    const PhaseReport& p = r.phases[i];
    Json served;
    for (size_t v = 0; v < vs.size(); ++v)
      if (p.served_by[v]) served.add(vs[v].name, p.served_by[v]);
    Json j;
    j.add("phase", p.phase)
        .add("start_s", p.start_s)
        .add("duration_s", p.duration_s)
        .add_raw("conditions", conditions_json(p.conditions))
        .add("fits", p.shift.selection.fits())
        .add("active", vs[p.shift.active].name)
        .add("previous", vs[p.shift.previous].name)
        .add("swapped", p.shift.swapped)
        .add("decision_us", p.shift.decision_us)
        .add("swap_us", p.shift.swap_us)
        .add("explanation", p.explanation)
        .add("requests", p.requests)
        .add("images", p.images)
        .add("accuracy", p.accuracy)
        .add("latency_ms_p50", p.latency_ms_p50)
        .add("latency_ms_p99", p.latency_ms_p99)
        .add_raw("served_by", served.str());
    phases += std::string(i ? "," : "") + "\n    " + j.str();
  }
  phases += "\n  ]";
  Json top;
  top.add("portfolio", shifter.dir())
      .add("clients", opt.clients)
      .add("batch", opt.batch)
      .add("time_scale", opt.time_scale)
      .add("requests", r.requests)
      .add("images", r.images)
      .add("swaps", r.swaps)
      .add("wall_s", r.wall_s)
      .add_raw("phases", phases);
  return top.str() + "\n";
}

// ---------------------------------------------------------------- SVG of the front

namespace {

double nice_step(double span) {
  double p = std::pow(10.0, std::floor(std::log10(span)));
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (m * p >= span) return m * p;
  return 10 * p;
}

}  // namespace

std::string portfolio_front_svg(const Portfolio& p, const std::vector<PhaseReport>& phases, LatencyBasis basis,
                                LatencyStat stat) {
  check(!p.variants.empty(), "portfolio plot: no variants");
  Conditions c;
  c.basis = basis;
  c.stat = stat;
  const int n = static_cast<int>(p.variants.size());
  std::vector<double> xs(n), ys(n);
  for (int i = 0; i < n; ++i)
    xs[i] = std::max(1e-6, variant_latency_ms(p.variants[i], c)), ys[i] = 100.0 * p.variants[i].accuracy;
  // Pareto front: no other variant is at least as fast and as accurate, and better in one.
  std::vector<int> front;
  for (int i = 0; i < n; ++i) {
    bool dominated = false;
    for (int j = 0; j < n && !dominated; ++j)
      dominated = j != i && xs[j] <= xs[i] && ys[j] >= ys[i] && (xs[j] < xs[i] || ys[j] > ys[i]);
    if (!dominated) front.push_back(i);
  }
  std::sort(front.begin(), front.end(), [&](int a, int b) { return xs[a] < xs[b]; });
  std::map<int, std::string> chosen;  // variant -> "P0, P2"
  for (const PhaseReport& ph : phases) {
    std::string& s = chosen[ph.shift.active];
    s += (s.empty() ? "P" : ", P") + std::to_string(ph.phase);
  }

  const double W = 760, H = 460, left = 70, right = 30, top = 46, bottom = 60;
  const double pw = W - left - right, ph = H - top - bottom;
  double xmin = *std::min_element(xs.begin(), xs.end()), xmax = *std::max_element(xs.begin(), xs.end());
  double ymin = *std::min_element(ys.begin(), ys.end()), ymax = *std::max_element(ys.begin(), ys.end());
  const bool logx = xmax / xmin > 8;
  auto tx = [&](double x) { return logx ? std::log10(x) : x; };
  double a0 = tx(xmin), a1 = tx(xmax);
  double span = a1 - a0 > 0 ? a1 - a0 : (logx ? 0.5 : std::max(0.1, std::fabs(a0) * 0.5));
  a0 -= 0.08 * span, a1 += 0.08 * span;
  if (!logx) a0 = std::max(0.0, a0);
  if (ymax - ymin < 1) ymin -= 1, ymax += 1;
  const double ystep = nice_step((ymax - ymin) / 5);
  const double y0 = std::floor(ymin / ystep) * ystep - ystep * 0.5, y1 = std::ceil(ymax / ystep) * ystep + ystep * 0.5;
  auto px = [&](double x) { return left + (tx(x) - a0) / (a1 - a0) * pw; };
  auto py = [&](double y) { return top + (1 - (y - y0) / (y1 - y0)) * ph; };

  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(1);
  const char* stat_name = stat == LatencyStat::P50 ? "p50" : "p99";
  const std::string batch = basis == LatencyBasis::Batch1 ? "batch 1" : "batch " + std::to_string(p.latency_batch);
  os << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W
     << "\" height=\"" << H << "\" viewBox=\"0 0 " << W << " " << H
     << "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  os << "<text x=\"" << left + pw / 2 << "\" y=\"26\" text-anchor=\"middle\" font-size=\"15\">"
     << xml_escape(p.arch + " portfolio: latency vs accuracy (" + std::to_string(n) + " variants)") << "</text>\n";
  os << "<rect x=\"" << left << "\" y=\"" << top << "\" width=\"" << pw << "\" height=\"" << ph
     << "\" fill=\"none\" stroke=\"black\"/>\n";
  // x ticks: decades x {1, 2, 5} on a log axis, nice steps on a linear one.
  std::vector<double> xt;
  if (logx) {
    for (int e = static_cast<int>(std::floor(a0)) - 1; e <= static_cast<int>(std::ceil(a1)); ++e)
      for (double m : {1.0, 2.0, 5.0}) {
        double v = m * std::pow(10.0, e);
        if (tx(v) >= a0 && tx(v) <= a1) xt.push_back(v);
      }
  } else {
    double st = nice_step((a1 - a0) / 6);
    for (double v = std::ceil(a0 / st) * st; v <= a1; v += st) xt.push_back(v);
  }
  for (double v : xt)
    os << "<line x1=\"" << px(v) << "\" y1=\"" << top << "\" x2=\"" << px(v) << "\" y2=\"" << top + ph
       << "\" stroke=\"#e0e0e0\"/><text x=\"" << px(v) << "\" y=\"" << top + ph + 18 << "\" text-anchor=\"middle\">"
       << json_number(v) << "</text>\n";
  for (double v = std::ceil(y0 / ystep) * ystep; v <= y1; v += ystep)
    os << "<line x1=\"" << left << "\" y1=\"" << py(v) << "\" x2=\"" << left + pw << "\" y2=\"" << py(v)
       << "\" stroke=\"#e0e0e0\"/><text x=\"" << left - 8 << "\" y=\"" << py(v) + 4 << "\" text-anchor=\"end\">"
       << json_number(v) << "</text>\n";
  os << "<text x=\"" << left + pw / 2 << "\" y=\"" << H - 18 << "\" text-anchor=\"middle\">"
     << xml_escape(std::string("latency, ms (") + stat_name + ", " + batch + (logx ? ", log scale" : "") + ")") << "</text>\n";
  os << "<text transform=\"translate(20 " << top + ph / 2 << ") rotate(-90)\" text-anchor=\"middle\">test accuracy (%)</text>\n";
  // Front, variants, chosen rings.
  os << "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"";
  for (size_t k = 0; k < front.size(); ++k) os << (k ? " " : "") << px(xs[front[k]]) << "," << py(ys[front[k]]);
  os << "\"/>\n";
  for (int i = 0; i < n; ++i) {
    os << "<circle cx=\"" << px(xs[i]) << "\" cy=\"" << py(ys[i]) << "\" r=\"4\" fill=\"#555555\"/>"
       << "<text x=\"" << px(xs[i]) + 7 << "\" y=\"" << py(ys[i]) - 6 << "\" font-size=\"10\">" << xml_escape(p.variants[i].name)
       << "</text>\n";
    auto it = chosen.find(i);
    if (it != chosen.end())
      os << "<circle cx=\"" << px(xs[i]) << "\" cy=\"" << py(ys[i]) << "\" r=\"9\" fill=\"none\" stroke=\"#d62728\" "
         << "stroke-width=\"2\"/><text x=\"" << px(xs[i]) + 7 << "\" y=\"" << py(ys[i]) + 16
         << "\" font-size=\"10\" fill=\"#d62728\">" << xml_escape(it->second) << "</text>\n";
  }
  // Legend.
  const double lx = left + 12, ly = top + 16;
  os << "<line x1=\"" << lx << "\" y1=\"" << ly << "\" x2=\"" << lx + 24 << "\" y2=\"" << ly
     << "\" stroke=\"#1f77b4\" stroke-width=\"2\"/><text x=\"" << lx + 30 << "\" y=\"" << ly + 4
     << "\">Pareto front</text>\n";
  os << "<circle cx=\"" << lx + 12 << "\" cy=\"" << ly + 18 << "\" r=\"4\" fill=\"#555555\"/><text x=\"" << lx + 30
     << "\" y=\"" << ly + 22 << "\">variant</text>\n";
  if (!chosen.empty())
    os << "<circle cx=\"" << lx + 12 << "\" cy=\"" << ly + 36 << "\" r=\"8\" fill=\"none\" stroke=\"#d62728\" "
       << "stroke-width=\"2\"/><text x=\"" << lx + 30 << "\" y=\"" << ly + 40 << "\">chosen in phase Pk</text>\n";
  os << "</svg>\n";
  return os.str();
}

}  // namespace dnns
