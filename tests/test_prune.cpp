// Masks and magnitude pruning: which weights get masks, the ceil rule of open_lth's pruning
// counts, deterministic tie-breaking, ignored layers, the layer-wise and random variants,
// masked weights held at zero through training, the sparsity and level reports.
#include <doctest/doctest.h>

#include "tests/test_util.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "core/error.h"
#include "core/rng.h"
#include "nn/models/zoo.h"
#include "nn/trainer.h"
#include "prune/magnitude.h"
#include "prune/mask.h"
#include "prune/report.h"

using namespace dnns;
using dnns::testing::contains;
using dnns::testing::error_of;
using dnns::testing::QuadrantData;
using dnns::testing::same_bits;

namespace {

Model initialised(const std::string& arch, const Shape& chw = {3, 8, 8}, uint64_t seed = 1) {
  Model m = build_model(arch, 10, chw);
  Rng rng(seed);
  init_model(m, rng);
  return m;
}

int64_t count_ones(const MaskSet& masks, const std::vector<std::string>& ignore = {}, bool only_pruned = true) {
  int64_t n = 0;
  for (const auto& [name, t] : masks)
    if (!only_pruned || !is_ignored(name, ignore)) n += mask_count(t);
  return n;
}

// Scales every weight by a random factor in [0.5, 1.5): the ranking changes between levels
// as it does when a level retrains.
void perturb_weights(Model& m, Rng& rng) {
  for (auto& p : m.params()) {
    float* w = p.param->value.data();
    for (int64_t i = 0; i < p.param->value.numel(); ++i) w[i] *= rng.uniform(0.5f, 1.5f);
  }
  m.apply_masks();
}

// A two-layer model whose weights the test sets by hand: conv "a" (2, 1, 1, 2) = 4 weights,
// linear "b" (4, 2) = 8 weights; 12 prunable weights in all, in the order a[0..3], b[0..7].
Model tiny_model(const std::vector<float>& a, const std::vector<float>& b) {
  Model m;
  int x = m.add_input({1, 1, 2});
  x = m.add("a", std::make_unique<Conv2d>(1, 2, 1, 2, 1, 0, true), {x});  // (N, 2, 1, 1)
  x = m.add("flat", std::make_unique<Flatten>(), {x});                    // (N, 2)
  m.add("b", std::make_unique<Linear>(2, 4, true), {x});                  // weight (4, 2)
  auto params = m.params();
  for (auto& p : params) {
    if (p.name == "a.weight") p.param->value.copy_from(Tensor::from({2, 1, 1, 2}, a));
    if (p.name == "b.weight") p.param->value.copy_from(Tensor::from({4, 2}, b));
    if (p.name == "a.bias" || p.name == "b.bias") p.param->value.fill(0.01f);  // never pruned, however small
  }
  return m;
}

std::vector<float> mask_values(const MaskSet& masks, const std::string& name) { return masks.at(name).to_vector(); }


}  // namespace

TEST_CASE("every conv and linear weight gets a mask; biases and batchnorm never") {
  Model m = initialised("resnet20");
  MaskSet masks = ones_masks(m);
  std::set<std::string> expected;
  for (const Node& n : m.nodes())
    if (n.layer && (n.layer->kind() == LayerKind::Conv || n.layer->kind() == LayerKind::Linear))
      expected.insert(n.name + ".weight");
  std::set<std::string> got;
  for (const auto& [name, t] : masks) {
    got.insert(name);
    CHECK(mask_count(t) == t.numel());
  }
  CHECK(got == expected);
  CHECK(got.count("conv.weight"));
  CHECK(got.count("fc.weight"));
  CHECK_FALSE(got.count("fc.bias"));
  CHECK_FALSE(got.count("bn.weight"));
  CHECK(expected.size() == 22);  // 19 convs + 2 shortcut convs + fc

  CHECK(default_prune_ignore("vgg16") == std::vector<std::string>{"fc"});
  CHECK(default_prune_ignore("resnet20").empty());
  CHECK(parse_prune_ignore("auto", "vgg11") == std::vector<std::string>{"fc"});
  CHECK(parse_prune_ignore("auto", "resnet56").empty());
  CHECK(parse_prune_ignore("none", "vgg11").empty());
  CHECK(parse_prune_ignore("fc,conv.weight", "resnet20") == std::vector<std::string>{"fc", "conv.weight"});
  CHECK(is_ignored("fc.weight", {"fc"}));
  CHECK(is_ignored("blocks.0.conv1.weight", {"blocks.0.conv1"}));
  CHECK_FALSE(is_ignored("blocks.0.conv1.weight", {"blocks.0"}));  // a node name must be exact
  CHECK_FALSE(is_ignored("fc2.weight", {"fc"}));
  CHECK_NOTHROW(check_prune_ignore(m, {"fc", "blocks.3.conv2.weight"}));
  CHECK_THROWS_WITH_AS(check_prune_ignore(m, {"fcc"}), doctest::Contains("'fcc' names no prunable weight"), Error);
  CHECK_THROWS_WITH_AS(check_prune_ignore(m, {"bn"}), doctest::Contains("'bn' names no prunable weight"), Error);

  // set_masks validates what it installs.
  MaskSet bad = masks;
  bad["fc.weight"][3] = 0.5f;
  CHECK_THROWS_WITH_AS(set_masks(m, bad), doctest::Contains("mask of 'fc.weight' holds 0.5"), Error);
  bad = masks;
  bad.erase("conv.weight");
  CHECK_THROWS_WITH_AS(set_masks(m, bad), doctest::Contains("'conv.weight' has no mask"), Error);
  bad = masks;
  bad["bn.weight"] = Tensor::full({16}, 1.0f);
  CHECK_THROWS_WITH_AS(set_masks(m, bad), doctest::Contains("'bn.weight' is not a prunable weight"), Error);
}

TEST_CASE("prune_count is ceil(fraction x remaining)") {
  for (int64_t r = 0; r <= 2000000; ++r) {
    if (prune_count(0.2, r) != (r + 4) / 5) {
      FAIL("prune_count(0.2, " << r << ") = " << prune_count(0.2, r) << ", expected " << (r + 4) / 5);
    }
  }
  CHECK(prune_count(0.5, 7) == 4);
  CHECK(prune_count(0.1, 1) == 1);
}

TEST_CASE("global magnitude pruning follows the ceil rule exactly, level after level") {
  Model m = initialised("resnet20");
  set_masks(m, ones_masks(m));
  Rng rng(7);
  int64_t remaining = count_ones(current_masks(m));
  CHECK(remaining == 270896);
  for (int level = 1; level <= 12; ++level) {
    perturb_weights(m, rng);
    MaskSet before = current_masks(m);
    MaskSet after = prune_by_magnitude(m, 0.2, PruneStrategy::Global, {});
    const int64_t expected = remaining - (remaining + 4) / 5;  // remaining - ceil(0.2 remaining)
    CHECK(count_ones(after) == expected);
    // Pruned weights stay pruned, and every newly removed |w| <= every surviving |w|.
    float max_removed = 0, min_kept = INFINITY;
    int64_t revived = 0;
    for (auto& p : prunable_weights(m)) {
      auto w = p.param->value.to_vector();
      auto b = mask_values(before, p.name), a = mask_values(after, p.name);
      for (size_t i = 0; i < w.size(); ++i) {
        revived += b[i] == 0 && a[i] == 1;
        if (b[i] == 1 && a[i] == 0) max_removed = std::max(max_removed, std::fabs(w[i]));
        if (a[i] == 1) min_kept = std::min(min_kept, std::fabs(w[i]));
      }
    }
    CHECK(revived == 0);
    CHECK(max_removed <= min_kept);
    set_masks(m, after);
    remaining = expected;
  }
  // 0.8^12 = 6.87% of the weights, to the ceil rule's exact count.
  CHECK(remaining == count_ones(current_masks(m)));
  MESSAGE("after 12 levels of 20%: " << remaining << " of 270896 weights remain");
}

TEST_CASE("layer-wise pruning removes ceil(fraction x remaining) in every layer") {
  Model m = initialised("resnet20");
  set_masks(m, ones_masks(m));
  Rng rng(11);
  for (int level = 1; level <= 5; ++level) {
    perturb_weights(m, rng);
    MaskSet before = current_masks(m);
    MaskSet after = prune_by_magnitude(m, 0.3, PruneStrategy::LayerWise, {});
    for (const auto& [name, t] : before) {
      int64_t r = mask_count(t);
      CHECK_MESSAGE(mask_count(after.at(name)) == r - prune_count(0.3, r), name << " at level " << level);
    }
    set_masks(m, after);
  }
  CHECK(parse_prune_strategy("global") == PruneStrategy::Global);
  CHECK(parse_prune_strategy("layerwise") == PruneStrategy::LayerWise);
  CHECK_THROWS_AS(parse_prune_strategy("structured"), Error);
}

TEST_CASE("ties are broken by layer order, then by index") {
  // Every weight has |w| = 0.5: the first ceil(0.5 x 12) = 6 in (layer, index) order go,
  // that is all 4 of layer a and the first 2 of layer b, whatever their signs.
  Model m = tiny_model({0.5f, -0.5f, 0.5f, -0.5f}, {-0.5f, 0.5f, 0.5f, -0.5f, 0.5f, 0.5f, -0.5f, 0.5f});
  MaskSet masks = prune_by_magnitude(m, 0.5, PruneStrategy::Global, {});
  CHECK(mask_values(masks, "a.weight") == std::vector<float>{0, 0, 0, 0});
  CHECK(mask_values(masks, "b.weight") == std::vector<float>{0, 0, 1, 1, 1, 1, 1, 1});
  // Again: the same answer (no dependence on memory or thread layout).
  CHECK(mask_values(prune_by_magnitude(m, 0.5, PruneStrategy::Global, {}), "b.weight") == mask_values(masks, "b.weight"));

  // A tie at the threshold: 3 smaller weights go first, then 2 of the four tied at 0.3, in order.
  Model t = tiny_model({0.9f, 0.3f, 0.1f, -0.3f}, {0.05f, 0.3f, 0.7f, -0.02f, 0.3f, 0.8f, 0.6f, 0.4f});
  MaskSet tm = prune_by_magnitude(t, 0.4, PruneStrategy::Global, {});  // ceil(4.8) = 5 removed
  CHECK(mask_values(tm, "a.weight") == std::vector<float>{1, 0, 0, 0});
  CHECK(mask_values(tm, "b.weight") == std::vector<float>{0, 1, 1, 0, 1, 1, 1, 1});
  // Layer-wise, with ties inside a layer: a loses 2 (0.1, then the first of its two 0.3s),
  // b loses 4 (0.02, 0.05, then both of its 0.3s).
  MaskSet lw = prune_by_magnitude(t, 0.5, PruneStrategy::LayerWise, {});
  CHECK(mask_values(lw, "a.weight") == std::vector<float>{1, 0, 0, 1});  // 0.1, then the first 0.3
  CHECK(mask_values(lw, "b.weight") == std::vector<float>{0, 0, 1, 0, 0, 1, 1, 1});

  // Biases are never masked, however small.
  for (const auto& [name, mask] : tm) CHECK(name.find("bias") == std::string::npos);
  // Bad input is refused by name.
  CHECK_THROWS_WITH_AS(prune_by_magnitude(t, 1.0, PruneStrategy::Global, {}), doctest::Contains("(0, 1)"), Error);
  Model nan_model = tiny_model({0.9f, NAN, 0.1f, 0.2f}, {1, 1, 1, 1, 1, 1, 1, 1});
  CHECK_THROWS_WITH_AS(prune_by_magnitude(nan_model, 0.2, PruneStrategy::Global, {}),
                       doctest::Contains("'a.weight' holds a non-finite value"), Error);
}

TEST_CASE("ignored layers keep their weights and all-ones masks; the rule counts the others") {
  Model m = initialised("resnet20");
  set_masks(m, ones_masks(m));
  const std::vector<std::string> ignore{"fc", "conv"};
  int64_t remaining = count_ones(current_masks(m), ignore);
  CHECK(remaining == 270896 - 640 - 432);
  std::vector<float> fc_weights;
  for (auto& p : m.params())
    if (p.name == "fc.weight") fc_weights = p.param->value.to_vector();
  for (int level = 1; level <= 6; ++level) {
    MaskSet after = prune_by_magnitude(m, 0.2, PruneStrategy::Global, ignore);
    CHECK(count_ones(after, ignore) == remaining - (remaining + 4) / 5);
    remaining = count_ones(after, ignore);
    CHECK(mask_count(after.at("fc.weight")) == 640);
    CHECK(mask_count(after.at("conv.weight")) == 432);
    set_masks(m, after);
  }
  for (auto& p : m.params())
    if (p.name == "fc.weight") CHECK(p.param->value.to_vector() == fc_weights);
  SparsityReport r = sparsity_report(m, ignore);
  CHECK(r.prunable_remaining == remaining);
  CHECK(r.remaining == remaining + 640 + 432);
  CHECK(r.total == 270896);

  // VGG's default keeps its final linear layer dense.
  Model vgg = initialised("vgg11", {3, 32, 32});
  MaskSet vm = prune_by_magnitude(vgg, 0.2, PruneStrategy::Global, default_prune_ignore(vgg.arch));
  CHECK(mask_count(vm.at("fc.weight")) == 5120);
  CHECK(mask_count(vm.at("conv0.weight")) < 1728);
}

TEST_CASE("random pruning removes the same counts per layer as the magnitude mask") {
  Model m = initialised("resnet20");
  set_masks(m, ones_masks(m));
  MaskSet ones = current_masks(m);
  MaskSet mag1 = prune_by_magnitude(m, 0.2, PruneStrategy::Global, {});
  Rng r1(mix_seed(5, 1)), r2(mix_seed(5, 1)), r3(mix_seed(6, 1));
  MaskSet rnd1 = prune_randomly_like(m, ones, mag1, r1);
  MaskSet again = prune_randomly_like(m, ones, mag1, r2);
  MaskSet other = prune_randomly_like(m, ones, mag1, r3);
  int64_t differ_from_magnitude = 0, differ_from_other_seed = 0;
  for (const auto& [name, t] : mag1) {
    CHECK_MESSAGE(mask_count(rnd1.at(name)) == mask_count(t), name);
    CHECK(rnd1.at(name).to_vector() == again.at(name).to_vector());  // seeded: reproducible
    auto a = rnd1.at(name).to_vector(), b = t.to_vector(), c = other.at(name).to_vector();
    for (size_t i = 0; i < a.size(); ++i) differ_from_magnitude += a[i] != b[i], differ_from_other_seed += a[i] != c[i];
  }
  CHECK(differ_from_magnitude > 10000);  // a random mask, not the magnitude one
  CHECK(differ_from_other_seed > 10000);

  // Next level: thin random level 1's survivors to magnitude level 2's counts; nested.
  set_masks(m, mag1);
  MaskSet mag2 = prune_by_magnitude(m, 0.2, PruneStrategy::Global, {});
  MaskSet rnd2 = prune_randomly_like(m, rnd1, mag2, r1);
  for (const auto& [name, t] : mag2) {
    CHECK(mask_count(rnd2.at(name)) == mask_count(t));
    auto prev = rnd1.at(name).to_vector(), cur = rnd2.at(name).to_vector();
    int64_t revived = 0;
    for (size_t i = 0; i < cur.size(); ++i) revived += cur[i] == 1 && prev[i] == 0;
    CHECK_MESSAGE(revived == 0, name);
  }
  // A reference that keeps more than survive is refused.
  CHECK_THROWS_WITH_AS(prune_randomly_like(m, mag2, ones, r1), doctest::Contains("only"), Error);
}

TEST_CASE("masked weights stay exactly zero through training with momentum and weight decay") {
  Model m;
  int x = m.add_input({3, 8, 8});
  x = m.add("conv1", std::make_unique<Conv2d>(3, 8, 3, 3, 1, 1, true), {x});
  x = m.add("bn1", std::make_unique<BatchNorm2d>(8), {x});
  x = m.add("relu1", std::make_unique<ReLU>(), {x});
  x = m.add("conv2", std::make_unique<Conv2d>(8, 8, 3, 3, 1, 1, false), {x});
  x = m.add("relu2", std::make_unique<ReLU>(), {x});
  x = m.add("gap", std::make_unique<GlobalAvgPool>(), {x});
  m.add("fc", std::make_unique<Linear>(8, 4, true), {x});
  Rng rng(4);
  init_model(m, rng);
  QuadrantData data(96, 16, 2);
  TrainConfig cfg;
  cfg.sgd = {0.05f, 0.9f, 5e-3f, false};
  cfg.schedule.kind = LrSchedule::Kind::Constant;
  cfg.schedule.base_lr = 0.05f;
  Trainer t(m, cfg);
  t.train_epoch(data, {}, 3);  // momentum buffers now hold non-zero values everywhere

  // Prune half of every layer, keeping the optimizer's momentum: the update would move the
  // pruned weights if masks were not applied to gradients and weights.
  set_masks(m, prune_by_magnitude(m, 0.5, PruneStrategy::Global, {}));
  std::map<std::string, std::vector<float>> start;
  for (auto& p : prunable_weights(m)) start[p.name] = p.param->value.to_vector();
  for (int e = 0; e < 2; ++e) t.train_epoch(data);  // 12 more steps
  int64_t pruned = 0, moved = 0, nonzero_pruned = 0;
  for (auto& p : prunable_weights(m)) {
    auto w = p.param->value.to_vector();
    auto mask = m.masks.at(p.name).to_vector();
    for (size_t i = 0; i < w.size(); ++i) {
      if (mask[i] == 0) {
        ++pruned;
        nonzero_pruned += w[i] != 0.0f;
      } else {
        moved += w[i] != start[p.name][i];
      }
    }
  }
  CHECK(nonzero_pruned == 0);
  CHECK(pruned == (216 + 576 + 32) / 2);
  CHECK(moved > (216 + 576 + 32) / 2 - 20);  // the survivors did train
  // Saved and loaded with the model, the masks come back unchanged.
  Model copy = Model::from_archive(m.to_archive(), "in-memory");
  for (const auto& [name, mask] : m.masks) CHECK(copy.masks.at(name).to_vector() == mask.to_vector());
}

TEST_CASE("sparsity report: per layer and overall, as JSON and as a table") {
  Model t = tiny_model({0.9f, 0.3f, 0.1f, -0.3f}, {0.05f, 0.3f, 0.7f, -0.02f, 0.3f, 0.8f, 0.6f, 0.4f});
  set_masks(t, prune_by_magnitude(t, 0.5, PruneStrategy::LayerWise, {}));
  SparsityReport r = sparsity_report(t, {});
  REQUIRE(r.layers.size() == 2);
  CHECK(r.layers[0].name == "a.weight");
  CHECK(r.layers[0].shape == Shape{2, 1, 1, 2});
  CHECK(r.layers[0].total == 4);
  CHECK(r.layers[0].remaining == 2);
  CHECK(r.layers[1].remaining == 4);
  CHECK(r.total == 12);
  CHECK(r.remaining == 6);
  CHECK(r.density() == doctest::Approx(0.5));
  CHECK(r.model_parameters == 12 + 2 + 4);
  std::string json = sparsity_json(r);
  CHECK(json.find("\"remaining\": 6") != std::string::npos);
  CHECK(json.find("{\"name\": \"b.weight\", \"shape\": [4, 2], \"total\": 8, \"remaining\": 4, \"density\": 0.5, "
                  "\"ignored\": false}") != std::string::npos);
  std::string table = sparsity_table(r);
  CHECK(table.find("layer") == 0);
  CHECK(table.find("a.weight") != std::string::npos);
  CHECK(table.find("(2, 1, 1, 2)") != std::string::npos);
  CHECK(table.find("50.00%") != std::string::npos);
  CHECK(table.find("overall") != std::string::npos);
  SparsityReport ri = sparsity_report(t, {"a"});
  CHECK(ri.layers[0].ignored);
  CHECK(sparsity_table(ri).find("a.weight (ignored)") != std::string::npos);
}

TEST_CASE("level records, tables and the accuracy-vs-sparsity plot") {
  std::vector<LevelRecord> recs;
  const int64_t total = 1000;
  int64_t remaining = total;
  for (int level = 0; level <= 4; ++level) {
    LevelRecord r;
    r.level = level;
    r.remaining = remaining;
    r.total = total;
    r.test_accuracy = 0.9 - 0.01 * level;
    r.test_loss = 0.3 + 0.01 * level;
    r.train_seconds = 12.5;
    recs.push_back(r);
    if (level > 0) {
      LevelRecord q = r;
      q.chain = "random";
      q.test_accuracy = 0.9 - 0.05 * level;
      recs.push_back(q);
    }
    remaining -= (remaining + 4) / 5;
  }
  // JSON round trip.
  LevelRecord back = parse_level_record(level_record_json(recs[3]), "test");
  CHECK(back.chain == recs[3].chain);
  CHECK(back.level == recs[3].level);
  CHECK(back.remaining == recs[3].remaining);
  CHECK(back.test_accuracy == recs[3].test_accuracy);
  CHECK(back.test_loss == recs[3].test_loss);
  CHECK_THROWS_WITH_AS(parse_level_record("{\"chain\": \"random\"}", "x/metrics.json"),
                       doctest::Contains("x/metrics.json: missing key 'level'"), Error);

  std::string csv = levels_csv(recs);
  CHECK(std::count(csv.begin(), csv.end(), '\n') == 1 + 9);
  CHECK(csv.find("magnitude,2,640,1000,") != std::string::npos);
  CHECK(csv.find("random,4,") != std::string::npos);

  std::string md = levels_markdown(recs);
  CHECK(md.find("| level | weights remaining | % remaining | test acc (magnitude) | test acc (random) |") == 0);
  CHECK(md.find("| 2 | 640 / 1000 | 64.00 | 88.00% | 80.00% |") != std::string::npos);
  CHECK(md.find("| 4 | 409 / 1000 | 40.90 | 86.00% | 70.00% |") != std::string::npos);
  CHECK(std::count(md.begin(), md.end(), '\n') == 2 + 5);

  std::string svg = accuracy_vs_sparsity_svg(recs, "resnet20 <test>");
  CHECK(svg.find("<svg") != std::string::npos);
  CHECK(svg.find("</svg>") != std::string::npos);
  CHECK(svg.find("resnet20 &lt;test&gt;") != std::string::npos);
  size_t lines = 0;
  for (size_t p = svg.find("<polyline"); p != std::string::npos; p = svg.find("<polyline", p + 1)) ++lines;
  CHECK(lines == 2);  // one per chain
  size_t markers = 0;
  for (size_t p = svg.find("<circle"); p != std::string::npos; p = svg.find("<circle", p + 1)) ++markers;
  CHECK(markers == 5 + 5 + 2);  // magnitude 0..4, random 0 (shared) ..4, two legend markers
  CHECK(svg.find(">86.0</text>") != std::string::npos);  // point labels: accuracy in %
  CHECK(svg.find(">70.0</text>") != std::string::npos);
  CHECK(svg.find(">100</text>") != std::string::npos);  // an x tick at 100% remaining
  CHECK(svg.find("random (same layer counts)") != std::string::npos);
  // Only the magnitude chain: one line, no random legend.
  std::vector<LevelRecord> mag(recs.begin(), recs.begin() + 1);
  std::string one = accuracy_vs_sparsity_svg(mag, "dense only");
  CHECK(one.find("random") == std::string::npos);
  CHECK(one.find("<circle") != std::string::npos);
  // A linear x axis, increasing to the right: ticks at multiples of a 1-2-5 step.
  LinePlot lin;
  lin.title = "latency";
  lin.series.push_back({"a", "black", false, {{1.0, 10.0, "p"}, {9.0, 20.0, ""}}});
  std::string ls = render_line_plot_svg(lin);
  CHECK(ls.find(">2</text>") != std::string::npos);
  CHECK(ls.find(">9</text>") != std::string::npos);
  CHECK(ls.find(">p</text>") != std::string::npos);
  LinePlot bad;
  bad.log_x = true;
  bad.series.push_back({"s", "red", false, {{0.0, 1.0, ""}}});
  CHECK_THROWS_WITH_AS(render_line_plot_svg(bad), doctest::Contains("log x axis needs x > 0"), Error);
  CHECK_THROWS_WITH_AS(render_line_plot_svg(LinePlot{}), doctest::Contains("nothing to plot"), Error);
}

TEST_CASE("IMP-like masks: exactly round(density x total) survivors at any density, 0 and 1 included") {
  Model m = initialised("resnet20");
  const int64_t total = count_ones(ones_masks(m));
  REQUIRE(total > 100000);
  auto kept_at = [&](double density, uint64_t seed = 7) {
    Rng rng(seed);
    MaskSet masks = imp_like_masks(m, density, rng);
    CHECK(masks.size() == ones_masks(m).size());  // a mask for every prunable weight
    return count_ones(masks);
  };
  CHECK(kept_at(0.0) == 0);  // every weight pruned (read past the scores before the fix)
  CHECK(kept_at(1.0) == total);
  CHECK(kept_at(1.0 / double(total)) == 1);  // tiny: one survivor
  CHECK(kept_at(0.4 / double(total)) == 0);
  CHECK(kept_at(0.3) == std::llround(0.3 * double(total)));
  CHECK(kept_at(0.05, 8) == std::llround(0.05 * double(total)));
  // The same seed gives the same masks (the model is const to imp_like_masks).
  {
    Rng a(3), b(3);
    MaskSet x = imp_like_masks(m, 0.2, a), y = imp_like_masks(m, 0.2, b);
    for (const auto& [name, mask] : x) CHECK(same_bits(mask, y.at(name)));
  }
  // As in IMP masks at high sparsity, whole filters die (per-filter importance).
  {
    Rng rng(4);
    MaskSet masks = imp_like_masks(m, 0.05, rng);
    int dead_rows = 0;
    for (const auto& [name, mask] : masks) {
      const int64_t rows = mask.dim(0), per = mask.numel() / rows;
      for (int64_t k = 0; k < rows; ++k) {
        int64_t alive = 0;
        for (int64_t q = 0; q < per; ++q) alive += mask[k * per + q] != 0.0f;
        dead_rows += alive == 0;
      }
    }
    CHECK(dead_rows > 0);
  }
  // Ties (every weight zero, so every score is 0): the earliest weights in graph order survive.
  {
    Model zero = m.clone();
    for (auto& p : zero.params())
      if (p.param->prunable) p.param->value.fill(0.0f);
    Rng rng(5);
    const int64_t keep = std::llround(0.1 * double(total));
    MaskSet masks = imp_like_masks(zero, 0.1, rng);
    int64_t seen = 0;
    bool ordered = true;
    for (auto& p : prunable_weights(zero)) {
      const Tensor& mask = masks.at(p.name);
      for (int64_t i = 0; i < mask.numel(); ++i, ++seen) ordered = ordered && (mask[i] != 0.0f) == (seen < keep);
    }
    CHECK(ordered);
    CHECK(count_ones(masks) == keep);
  }
  // Densities outside [0, 1] are refused, naming the value.
  for (double bad : {-0.1, 1.5, std::nan("")}) {
    Rng rng(1);
    CHECK(contains(error_of([&] { imp_like_masks(m, bad, rng); }), "imp_like_masks: density must be in [0, 1]"));
  }
}
