// The shifter: stateless inference equals Model::forward, its memory figure, the choice of a
// variant on hand-made portfolios (every tie-break, infeasible conditions), traces, hot swaps
// under concurrent load with every answer checked against the variant that served it, and a
// short replay.
#include <doctest/doctest.h>

#include "tests/test_util.h"

#include <atomic>
#include <cmath>
#include <functional>
#include <thread>

#include "core/error.h"
#include "core/rng.h"
#include "kernels/cpu/isa.h"
#include "nn/models/zoo.h"
#include "prune/compact.h"
#include "prune/infer.h"
#include "core/json.h"
#include "prune/shifter.h"

using namespace dnns;
using dnns::testing::randomize_batchnorm;
using dnns::testing::random_masks;
using dnns::testing::random_images;
using dnns::testing::contains;
using dnns::testing::error_of;

namespace {

Model zoo(const std::string& name, uint64_t seed, const Shape& chw = {3, 8, 8}) {
  Model m = build_model(name, 10, chw);
  Rng rng(seed);
  init_model(m, rng);
  randomize_batchnorm(m, rng);
  return m;
}

// Hand-made metadata: what the selection tests need.
VariantInfo meta(const std::string& name, double acc, double p99_b1, int64_t mem_b1, int64_t file_bytes = 1000) {
  VariantInfo v;
  v.name = name;
  v.file = name + ".dnns";
  v.accuracy = acc;
  v.latency_ms_p50_b1 = p99_b1 / 2;
  v.latency_ms_p99_b1 = p99_b1;
  v.latency_ms_p50_batch = p99_b1 * 8;
  v.latency_ms_p99_batch = p99_b1 * 10;
  v.memory_bytes_b1 = mem_b1;
  v.memory_bytes_batch = mem_b1 * 4;
  v.file_bytes = file_bytes;
  return v;
}

Conditions cond(std::optional<double> lat, std::optional<int64_t> mem, std::optional<double> acc) {
  Conditions c;
  c.latency_ms = lat;
  c.memory_bytes = mem;
  c.min_accuracy = acc;
  return c;
}

// A portfolio held in memory (no files): the models and their hand-made metadata.
LoadedPortfolio in_memory(std::vector<Model> models, std::vector<VariantInfo> infos) {
  LoadedPortfolio lp;
  lp.dir = "(memory)";
  lp.manifest.arch = "test";
  lp.manifest.input_shape = models.at(0).input_shape();
  lp.manifest.num_classes = 10;
  lp.manifest.latency_batch = 4;
  for (Model& m : models) lp.models.push_back(std::make_shared<Model>(std::move(m)));
  lp.manifest.variants = std::move(infos);
  return lp;
}

// Three real variants of different architectures and sizes: a dense ResNet-20, a compact
// masked ResNet-20 (per-position biases included), and a VGG-11 at 32x32... kept small:
// everything at 8x8 except where the architecture needs more.
LoadedPortfolio three_variants() {
  std::vector<Model> models;
  models.push_back(zoo("resnet20", 1));
  Model masked = zoo("resnet20", 2);
  Rng rng(3);
  random_masks(masked, rng, 0.4f, 0.5f);
  models.push_back(compact_model(masked));
  Model other = zoo("resnet20", 4);
  Rng rng2(5);
  random_masks(other, rng2, 0.7f, 0.3f);
  models.push_back(compact_model(other));
  return in_memory(std::move(models), {meta("dense", 0.9, 3.0, 3000), meta("mid", 0.85, 2.0, 2000),
                                       meta("small", 0.8, 1.0, 1000)});
}

}  // namespace

TEST_CASE("stateless infer equals Model::forward bit for bit") {
  Rng rng(7);
  for (const char* name : {"resnet20", "vgg11"}) {
    CAPTURE(name);
    Shape chw = std::string(name) == "vgg11" ? Shape{3, 32, 32} : Shape{3, 8, 8};
    Model m = zoo(name, 8, chw);
    Tensor x = random_images(3, chw, rng);
    CHECK(max_abs_diff(infer(m, x), m.forward(x, false)) == 0.0f);
    random_masks(m, rng, 0.4f, 0.5f);
    Model c = compact_model(m);
    CHECK(max_abs_diff(infer(c, x), c.forward(x, false)) == 0.0f);
    // The input is not written (ReLU never runs in place on the caller's images).
    Tensor before = x.clone();
    infer(c, x);
    CHECK(max_abs_diff(before, x) == 0.0f);
  }
  Model m = zoo("resnet20", 9);
  CHECK(contains(error_of([&] { infer(m, Tensor({1, 3, 9, 8})); }), "infer: expected input (N, 3, 8, 8)"));
}

TEST_CASE("working memory of inference, computed from the graph") {
  // input (1, 3, 8, 8) -> conv 3->4 3x3 pad 1 -> relu (in place) -> flatten -> linear 256->10
  Model m;
  int x = m.add_input({3, 8, 8});
  x = m.add("conv", std::make_unique<Conv2d>(3, 4, 3, 3, 1, 1, true), {x});
  x = m.add("relu", std::make_unique<ReLU>(), {x});
  x = m.add("flat", std::make_unique<Flatten>(), {x});
  m.add("fc", std::make_unique<Linear>(256, 10, true), {x});
  InferenceMemory mem = inference_memory(m, 1);
  CHECK(mem.parameter_bytes == (4 * 3 * 9 + 4 + 256 * 10 + 10) * 4);
  CHECK(mem.buffer_bytes == 0);
  // Peak while flatten runs: the images (768 B), relu's output in conv's storage (1024 B) and
  // flatten's output (1024 B).
  CHECK(mem.activation_bytes == 768 + 1024 + 1024);
  // The conv's scratch: with im2col + sgemm its column buffer (C*R*S, P*Q) = (27, 64) floats;
  // with the direct kernels the padded image, 3 channels of 10 x 10, then a row and a vector
  // of 8 floats of slack.
  {
    struct Restore {
      ~Restore() { cpu::set_conv_algo(cpu::ConvAlgo::Auto); }
    } restore;
    cpu::set_conv_algo(cpu::ConvAlgo::Gemm);
    CHECK(inference_memory(m, 1).workspace_bytes == 27 * 64 * 4);
    if (cpu::cpu_isa() != cpu::Isa::Generic) {
      cpu::set_conv_algo(cpu::ConvAlgo::Direct);
      CHECK(inference_memory(m, 1).workspace_bytes == (3 * 10 * 10 + 10 + 8) * 4);
    }
  }
  CHECK(mem.total() == mem.parameter_bytes + mem.activation_bytes + mem.workspace_bytes);
  CHECK(inference_memory(m, 8).activation_bytes == 8 * (768 + 1024 + 1024));
  Model r = zoo("resnet20", 1);
  CHECK(inference_memory(r, 1).buffer_bytes > 0);  // batchnorm statistics
  CHECK(model_resident_bytes(r) == inference_memory(r, 1).parameter_bytes + inference_memory(r, 1).buffer_bytes);
}

TEST_CASE("selection: the most accurate variant within every budget, with documented tie-breaks") {
  std::vector<VariantInfo> vs = {meta("a", 0.92, 10.0, 100000000), meta("b", 0.90, 5.0, 50000000),
                                 meta("c", 0.85, 2.0, 20000000), meta("d", 0.70, 0.5, 5000000)};
  CHECK(select_variant(vs, {}).chosen == 0);
  CHECK(select_variant(vs, cond(6.0, {}, {})).chosen == 1);
  CHECK(select_variant(vs, cond(5.0, {}, {})).chosen == 1);  // a budget is inclusive
  CHECK(select_variant(vs, cond({}, 20000000, {})).chosen == 2);
  CHECK(select_variant(vs, cond(100.0, 10000000, {})).chosen == 3);
  CHECK(select_variant(vs, cond({}, {}, 0.9)).chosen == 0);
  Selection s = select_variant(vs, cond(6.0, 60000000, 0.86));
  CHECK(s.chosen == 1);
  CHECK(s.closest == 1);
  CHECK(s.violations == std::vector<unsigned>{kBreaksLatency | kBreaksMemory, 0, kBreaksAccuracy, kBreaksAccuracy});
  CHECK(s.excluded_by_latency == 1);
  CHECK(s.excluded_by_memory == 1);
  CHECK(s.excluded_by_accuracy == 2);
  CHECK(contains(explain_selection(vs, cond(6.0, 60000000, 0.86), s), "b (accuracy 90.00%"));

  SUBCASE("basis and statistic pick the latency that is compared") {
    Conditions c = cond(4.0, {}, {});
    c.stat = LatencyStat::P50;  // p50 at batch 1 is half of p99: b (2.5 ms) fits, a (5 ms) not
    CHECK(select_variant(vs, c).chosen == 1);
    c.basis = LatencyBasis::Batch;  // batch p50 is 8x the batch-1 p99: only d (4 ms) fits
    CHECK(select_variant(vs, c).chosen == 3);
    Conditions m = cond({}, 90000000, {});
    m.basis = LatencyBasis::Batch;  // batch memory is 4x: c (80 MB) and d fit
    CHECK(select_variant(vs, m).chosen == 2);
  }
  SUBCASE("tie-breaks: accuracy, then latency, then memory, then file bytes, then index") {
    std::vector<VariantInfo> t = {meta("p", 0.9, 3.0, 10), meta("q", 0.9, 2.0, 30), meta("r", 0.9, 2.0, 20, 500),
                                  meta("s", 0.9, 2.0, 20, 400), meta("u", 0.9, 2.0, 20, 400), meta("v", 0.8, 1.0, 1)};
    CHECK(select_variant(t, {}).chosen == 3);         // q, r, s, u at 2 ms; r, s, u at 20 B; s, u at 400 B; s first
    CHECK(preferred(t, 1, 0, {}));                    // equal accuracy: lower latency wins
    CHECK(preferred(t, 2, 1, {}));                    // equal latency: less memory wins
    CHECK(preferred(t, 3, 2, {}));                    // equal memory: smaller file wins
    CHECK(preferred(t, 3, 4, {}));                    // all equal: lower index wins
    CHECK_FALSE(preferred(t, 4, 3, {}));
    CHECK(preferred(t, 0, 5, {}));                    // accuracy first, however slow
    CHECK(select_variant(t, cond({}, 15, {})).chosen == 0);
  }
  SUBCASE("none fits: who excluded what, and the closest variant") {
    Conditions c = cond(0.4, {}, 0.95);  // every variant breaks one or both
    Selection n = select_variant(vs, c);
    CHECK_FALSE(n.fits());
    CHECK(n.chosen == -1);
    CHECK(n.excluded_by_latency == 4);
    CHECK(n.excluded_by_accuracy == 4);
    // All break both budgets; worst relative excess: a 24 (latency), b 11.5, c 4, d 0.263
    // (latency 0.25, accuracy 0.263): d is closest.
    CHECK(n.closest == 3);
    std::string e = explain_selection(vs, c, n);
    CHECK(contains(e, "no variant fits latency <= 0.4 ms (p99, batch 1), accuracy >= 95.00%"));
    CHECK(contains(e, "the latency budget excludes 4 of 4 (a b c d)"));
    CHECK(contains(e, "the accuracy minimum excludes 4 of 4"));
    CHECK(contains(e, "closest: d"));
    // One broken budget each (a: latency x10, d: accuracy 0.70 < 0.91): the smaller excess wins.
    CHECK(select_variant(vs, cond(1.0, {}, 0.91)).closest == 3);
    // Fewer broken budgets beats a smaller excess: d breaks both (by 11% and 1.4%), c only the
    // latency (by 344%), b and a only the latency by more.
    Selection f = select_variant(vs, cond(0.45, {}, 0.71));
    CHECK(f.violations[3] == (kBreaksLatency | kBreaksAccuracy));
    CHECK(f.closest == 2);
  }
  SUBCASE("invalid conditions and an empty portfolio are refused") {
    CHECK(contains(error_of([&] { select_variant(vs, cond(0.0, {}, {})); }), "latency budget must be a positive"));
    CHECK(contains(error_of([&] { select_variant(vs, cond({}, -5, {})); }), "memory budget must be positive"));
    CHECK(contains(error_of([&] { select_variant(vs, cond({}, {}, 91.0)); }), "fraction in [0, 1]"));
    CHECK(contains(error_of([&] { select_variant({}, {}); }), "no variants"));
  }
}

TEST_CASE("traces: CSV with empty fields, JSON, and errors naming the line") {
  auto t = parse_trace_csv(
      "# a comment\n"
      "time_s,latency_ms,memory_mb,min_accuracy\n"
      "0,,,\n"
      "1.5,2.5,,0.9\n"
      "3,,12.5,\n",
      "trace.csv");
  REQUIRE(t.size() == 3);
  CHECK_FALSE(t[0].conditions.latency_ms.has_value());
  CHECK(t[1].time_s == 1.5);
  CHECK(*t[1].conditions.latency_ms == 2.5);
  CHECK(*t[1].conditions.min_accuracy == 0.9);
  CHECK_FALSE(t[1].conditions.memory_bytes.has_value());
  CHECK(*t[2].conditions.memory_bytes == 12500000);
  auto j = parse_trace_json(R"({"phases": [{"time_s": 0, "latency_ms": 3}, {"time_s": 2, "memory_mb": null, "min_accuracy": 0.5}]})",
                            "t.json");
  REQUIRE(j.size() == 2);
  CHECK(*j[0].conditions.latency_ms == 3);
  CHECK_FALSE(j[1].conditions.memory_bytes.has_value());
  CHECK(*j[1].conditions.min_accuracy == 0.5);

  const std::string h = "time_s,latency_ms,memory_mb,min_accuracy\n";
  CHECK(contains(error_of([&] { parse_trace_csv(h + "0,,,\n0,,,\n", "t"); }), "phase 1 starts at 0 s, not after"));
  CHECK(contains(error_of([&] { parse_trace_csv(h + "0,fast,,\n", "t"); }), "t line 2, latency_ms: 'fast' is not a number"));
  CHECK(contains(error_of([&] { parse_trace_csv(h + "0,1,,\n1,1\n", "t"); }), "t line 3: 2 fields, the header has 4"));
  CHECK(contains(error_of([&] { parse_trace_csv("time_s,latency\n", "t"); }), "unknown column 'latency'"));
  CHECK(contains(error_of([&] { parse_trace_csv(h + "0,,,95\n", "t"); }), "min_accuracy must be a fraction"));
  CHECK(contains(error_of([&] { parse_trace_json(R"([{"time_s": 0, "latency": 1}])", "t"); }), "unknown key 'latency'"));
  CHECK(contains(error_of([&] { parse_trace_json(R"([{"latency_ms": 1}])", "t"); }), "missing field 'time_s'"));
}

TEST_CASE("shift: chooses, swaps, and follows the no-fit policy") {
  LoadedPortfolio lp = three_variants();
  Shifter s(std::move(lp));
  CHECK(s.active() == 0);  // the most accurate
  CHECK(s.generation() == 1);
  CHECK(s.swaps() == 0);
  ShiftResult r = s.shift(cond(1.5, {}, {}));
  CHECK(r.selection.chosen == 2);
  CHECK(r.swapped);
  CHECK(r.previous == 0);
  CHECK(r.active == 2);
  CHECK(r.generation == 2);
  r = s.shift(cond(1.5, {}, 0.5));  // the same choice: no swap
  CHECK_FALSE(r.swapped);
  CHECK(r.generation == 2);
  r = s.shift(cond(0.1, {}, {}));  // nothing fits: the closest (the fastest) serves
  CHECK_FALSE(r.selection.fits());
  CHECK(r.active == 2);
  r = s.shift(cond({}, 2500, {}));
  CHECK(r.active == 1);
  CHECK(s.swaps() == 2);
  CHECK(s.activate(0) > 0.0);
  CHECK(s.active() == 0);
  CHECK(s.activate(0) == 0.0);  // already active
  CHECK(contains(error_of([&] { s.activate(3); }), "no variant 3"));

  Shifter keep(three_variants(), NoFitPolicy::KeepCurrent);
  ShiftResult k = keep.shift(cond(0.1, {}, {}));
  CHECK_FALSE(k.selection.fits());
  CHECK(k.selection.closest == 2);
  CHECK(k.active == 0);
  CHECK_FALSE(k.swapped);
  CHECK(keep.resident_bytes() > 0);

  // Packed: the variants compactly (without their masks), the active one ready. With the
  // small variant active the packed portfolio is smaller than the dense one, which keeps every
  // variant's masks. (Compact variants are small enough that a dense variant held twice, packed
  // and ready, can outweigh the masks saved.)
  Shifter dense(three_variants()), packed(three_variants(), NoFitPolicy::Closest, Residency::Packed);
  CHECK(packed.residency() == Residency::Packed);
  ShiftResult pr = packed.shift(cond(1.5, {}, {}));
  CHECK(pr.swapped);
  CHECK(pr.active == 2);
  CHECK(pr.swap_us > 0);
  CHECK(packed.resident_bytes() < dense.resident_bytes());
}

TEST_CASE("packed variants unpack to the same model, value for value") {
  Model m = zoo("resnet20", 2);
  Rng rng(3);
  random_masks(m, rng, 0.4f, 0.3f);
  PackedModel p = pack_model(m);
  Model u = unpack_model(p);
  CHECK(u.spec() == m.spec());
  CHECK(u.arch == m.arch);
  auto a = m.state(), b = u.state();
  REQUIRE(a.size() == b.size());
  int sparse = 0;
  for (size_t k = 0; k < a.size(); ++k) {
    CAPTURE(a[k].first);
    CHECK(a[k].first == b[k].first);
    CHECK(a[k].second->to_vector() == b[k].second->to_vector());
    sparse += p.tensors[k].sparse;
  }
  CHECK(sparse > 0);
  int64_t dense_bytes = 0;  // parameters and buffers, without the masks
  for (auto& [n, t] : a) dense_bytes += static_cast<int64_t>(t->bytes());
  CHECK(p.bytes() < dense_bytes * 7 / 10);  // 30% density: well under the dense bytes
  Tensor x = random_images(2, {3, 8, 8}, rng);
  CHECK(max_abs_diff(infer(u, x), infer(m, x)) == 0.0f);
  CHECK(parse_residency("packed") == Residency::Packed);
  CHECK(contains(error_of([] { parse_residency("zip"); }), "residency must be 'dense' or 'packed'"));
}

namespace {

// 8 client threads send requests while another thread makes 200 swaps; every answer is
// compared bit for bit with the logits its variant gives alone.
void check_hot_swaps(Residency residency) {
  Shifter s(three_variants(), NoFitPolicy::Closest, residency);
  const int n_inputs = 6, clients = 8, min_requests = 25, swaps = 200;
  Rng rng(21);
  std::vector<Tensor> inputs;
  for (int i = 0; i < n_inputs; ++i) inputs.push_back(random_images(1, {3, 8, 8}, rng));
  // Expected logits of every variant on every input, computed one at a time beforehand.
  std::vector<std::vector<Tensor>> expected(s.size());
  for (int v = 0; v < s.size(); ++v)
    for (const Tensor& x : inputs) expected[v].push_back(infer(*s.model(v), x));
  for (int v = 1; v < s.size(); ++v) REQUIRE(max_abs_diff(expected[v][0], expected[0][0]) > 0);  // distinguishable

  std::atomic<bool> swapper_done{false};
  // wrong_generation: an answer whose generation is not the activation of the variant that
  // served it (activation k, k >= 1, serves variant (k - 1) % 3: 0, then 1, 2, 0, ...).
  std::atomic<int64_t> sent{0}, mismatched{0}, stale_generation{0}, wrong_generation{0};
  std::atomic<uint64_t> newest_served{0};  // the highest generation any answer carried
  std::vector<std::vector<int64_t>> per_client_served(clients, std::vector<int64_t>(s.size(), 0));
  std::vector<std::thread> threads;
  for (int t = 0; t < clients; ++t)
    threads.emplace_back([&, t] {
      Rng r(1000 + t);
      uint64_t last_generation = 0;
      for (int k = 0; k < min_requests || !swapper_done.load(); ++k) {
        int i = static_cast<int>(r.below(n_inputs));
        sent.fetch_add(1);
        Answer a = s.infer(inputs[i]);
        if (a.variant < 0 || a.variant >= s.size() || max_abs_diff(a.logits, expected[a.variant][i]) != 0.0f)
          mismatched.fetch_add(1);
        else
          ++per_client_served[t][a.variant];
        if (a.generation < 1 || a.generation > 1 + swaps ||
            static_cast<int>((a.generation - 1) % static_cast<uint64_t>(s.size())) != a.variant)
          wrong_generation.fetch_add(1);
        if (a.generation < last_generation) stale_generation.fetch_add(1);  // a thread never goes back in time
        last_generation = a.generation;
        for (uint64_t seen = newest_served.load(); seen < a.generation;)
          if (newest_served.compare_exchange_weak(seen, a.generation)) break;
      }
    });
  std::thread swapper([&] {
    for (int k = 0; k < swaps; ++k) {
      // The first activations wait (10 s at most) until a request was served on the variant
      // active now, so every variant serves some even on a slow run (a sanitizer build):
      // the check that each one was used must not depend on the scheduler.
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (k < s.size() && newest_served.load() < s.generation() && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::microseconds(20));
      s.activate((k + 1) % s.size());  // 1, 2, 0, 1, ...: always another variant
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    swapper_done.store(true);
  });
  swapper.join();
  for (std::thread& t : threads) t.join();

  CHECK(mismatched.load() == 0);
  CHECK(stale_generation.load() == 0);
  CHECK(wrong_generation.load() == 0);
  CHECK(s.swaps() == swaps);
  CHECK(s.generation() == 1 + swaps);
  std::vector<int64_t> served = s.served_counts();
  int64_t total = 0, used = 0;
  for (int v = 0; v < s.size(); ++v) {
    int64_t mine = 0;
    for (int t = 0; t < clients; ++t) mine += per_client_served[t][v];
    CHECK(served[v] == mine);
    total += served[v];
    used += served[v] > 0;
  }
  CHECK(total == sent.load());  // none dropped: the shifter counted every request it served
  CHECK(used == s.size());      // requests really ran on every variant across the swaps
  MESSAGE(std::string(residency == Residency::Dense ? "dense: " : "packed: ") << sent.load() << " requests from " << clients
          << " threads across " << swaps << " swaps, served " << served[0]
                      << "/" << served[1] << "/" << served[2]);
}

}  // namespace

TEST_CASE("hot swaps under load: every answer matches the variant that served it, none dropped") {
  SUBCASE("variants held ready (dense)") { check_hot_swaps(Residency::Dense); }
  SUBCASE("variants held packed, unpacked on each swap") { check_hot_swaps(Residency::Packed); }
}

TEST_CASE("a short replay: phases, swaps, per-phase figures, JSON report and SVG") {
  Shifter s(three_variants());
  std::vector<TracePhase> trace = parse_trace_csv(
      "time_s,latency_ms,memory_mb,min_accuracy\n0,,,\n1,1.5,,\n2,,0.0025,\n3,0.1,,\n", "trace");
  Rng rng(4);
  Tensor images = random_images(16, {3, 8, 8}, rng);
  std::vector<int> labels(16);
  for (int i = 0; i < 16; ++i) labels[i] = i % 10;
  ReplayOptions o;
  o.clients = 2;
  o.time_scale = 0.08;
  o.last_phase_s = 1;
  ReplayReport r = replay_trace(s, trace, images, labels, o);
  REQUIRE(r.phases.size() == 4);
  CHECK(r.phases[0].shift.active == 0);
  CHECK(r.phases[1].shift.active == 2);
  CHECK(r.phases[2].shift.active == 1);
  CHECK_FALSE(r.phases[3].shift.selection.fits());
  CHECK(r.phases[3].shift.active == 2);  // the closest
  CHECK(r.swaps == 3);
  int64_t sum = 0;
  for (const PhaseReport& p : r.phases) {
    int64_t served = 0;
    for (int64_t c : p.served_by) served += c;
    CHECK(served == p.requests);
    CHECK(p.images == p.requests);
    CHECK(p.accuracy >= 0.0);
    CHECK(p.accuracy <= 1.0);
    sum += p.requests;
  }
  CHECK(sum == r.requests);
  CHECK(r.requests > 0);
  JsonValue j = parse_json(replay_report_json(s, r, o), "report");
  CHECK(json_array(json_field(j, "phases", "r"), "r").size() == 4);
  CHECK(json_string(json_field(json_array(json_field(j, "phases", "r"), "r")[1], "active", "r"), "r") == "small");
  std::string svg = portfolio_front_svg(s.portfolio(), r.phases, o.basis, o.stat);
  CHECK(contains(svg, "<svg"));
  CHECK(contains(svg, "P1, P3"));  // the small variant, chosen in phases 1 and 3
  CHECK(contains(svg, "Pareto front"));
  // A timeline past the clock's range (time scale 1e300) ran every phase at once and reported
  // 0 requests as a success.
  o.time_scale = 1e300;
  CHECK(contains(error_of([&] { replay_trace(s, trace, images, labels, o); }), "replay: the trace lasts"));
}
