// Exact compaction: the compact model's logits equal the masked model's, for VGG and ResNet,
// with dead filters whose constants are positive, padded consumers, residual groups, and
// whole dead layers.
#include <doctest/doctest.h>

#include "tests/test_util.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "core/error.h"
#include "core/rng.h"
#include "datasets/dataset.h"
#include "datasets/loader.h"
#include "kernels/ops.h"
#include "nn/export/export.h"
#include "nn/models/zoo.h"
#include "prune/compact.h"

using namespace dnns;
using dnns::testing::logit_scale;
using dnns::testing::randomize_batchnorm;
using dnns::testing::random_masks;
using dnns::testing::random_images;
using dnns::testing::TempDir;

namespace {

Conv2d& conv(Model& m, const std::string& name) {
  int i = m.find(name);
  REQUIRE(i >= 0);
  return dynamic_cast<Conv2d&>(*m.nodes()[i].layer);
}

// Zeroes filter k of a conv (its mask too), leaving the bias: the channel becomes a constant.
void kill_filter(Model& m, const std::string& name, int k) {
  Conv2d& c = conv(m, name);
  std::string key = name + ".weight";
  if (!m.masks.count(key)) m.masks[key] = Tensor::full(c.weight.value.shape(), 1.0f);
  int64_t per = c.weight.value.numel() / c.out_channels;
  for (int64_t q = 0; q < per; ++q) m.masks[key][k * per + q] = 0.0f;
  m.apply_masks();
}

// Compacts and checks logits (relative to the logit scale) and identical predictions.
Model check_exact(Model& masked, const Tensor& x, CompactReport* out_rep = nullptr, float tol = 1e-4f) {
  CompactReport rep;
  Model c = compact_model(masked, &rep);
  Tensor a = masked.forward(x, false), b = c.forward(x, false);
  const float scale = logit_scale(a);
  float diff = max_abs_diff(a, b);
  INFO("max |logit difference| " << diff << " at logit scale " << scale);
  CHECK(diff <= tol * scale);
  int64_t classes = a.dim(1);
  for (int64_t r = 0; r < a.dim(0); ++r) {
    int64_t pa = 0, pb = 0;
    for (int64_t k = 1; k < classes; ++k) {
      if (a[r * classes + k] > a[r * classes + pa]) pa = k;
      if (b[r * classes + k] > b[r * classes + pb]) pb = k;
    }
    CHECK(pa == pb);
  }
  // The pruning masks follow the kept slices: a compact weight is nonzero only where its mask
  // is one, and a mask exists for every masked layer that survives.
  for (const auto& [key, mask] : masked.masks) {
    std::string layer = key.substr(0, key.rfind('.'));
    int i = c.find(layer);
    if (i < 0) continue;  // folded away entirely
    REQUIRE(c.masks.count(key) == 1);
    const Tensor& cm = c.masks.at(key);
    Param* w = c.nodes()[i].layer->params()[0];
    REQUIRE(cm.shape() == w->value.shape());
    int64_t bad = 0;
    for (int64_t q = 0; q < cm.numel(); ++q) bad += cm[q] == 0.0f && w->value[q] != 0.0f;
    CHECK(bad == 0);
  }
  if (out_rep) *out_rep = rep;
  return c;
}

// The border-table numbers of a model read from its convs' own fields (not through params(),
// which the report's split also sums): K x row classes x column classes per table.
int64_t table_numbers(Model& m) {
  int64_t n = 0;
  for (Node& node : m.nodes())
    if (auto* cv = dynamic_cast<Conv2d*>(node.layer.get()); cv && cv->pos_h > 0)
      n += int64_t(cv->out_channels) * cv->table_rows() * cv->table_cols();
  return n;
}

// Every border table is as small as its values allow: no two row classes (column classes)
// hold the same slice. With check_exact, a table is then exact and minimal.
void check_tables_minimal(Model& m) {
  for (Node& node : m.nodes()) {
    auto* cv = dynamic_cast<Conv2d*>(node.layer.get());
    if (!cv || cv->pos_h == 0) continue;
    CAPTURE(node.name);
    const int64_t K = cv->out_channels, R = cv->table_rows(), C = cv->table_cols();
    auto at = [&](int64_t k, int64_t r, int64_t c) { return cv->pos_bias.value[(k * R + r) * C + c]; };
    for (int64_t a = 0; a < R; ++a)
      for (int64_t b = a + 1; b < R; ++b) {
        bool same = true;
        for (int64_t k = 0; k < K && same; ++k)
          for (int64_t c = 0; c < C && same; ++c) same = at(k, a, c) == at(k, b, c);
        CHECK_MESSAGE(!same, "row classes " << a << " and " << b << " hold the same slice");
      }
    for (int64_t a = 0; a < C; ++a)
      for (int64_t b = a + 1; b < C; ++b) {
        bool same = true;
        for (int64_t k = 0; k < K && same; ++k)
          for (int64_t r = 0; r < R && same; ++r) same = at(k, r, a) == at(k, r, b);
        CHECK_MESSAGE(!same, "column classes " << a << " and " << b << " hold the same slice");
      }
  }
}

}  // namespace

TEST_CASE("merge_equal_classes merges equal slices wherever they are, renumbering by first use") {
  // K = 2 filters, 4 row classes, 1 column class: row classes 0 and 2 hold the same slice (not
  // adjacent), 1 and 3 differ from everything. Rows 0..5 use classes 3, 0, 2, 1, 2, 0.
  const std::vector<double> table = {
      // k = 0: classes 0..3
      1.0, 5.0, 1.0, 7.0,
      // k = 1
      -2.0, 5.0, -2.0, 8.0};
  std::vector<int32_t> rows = {3, 0, 2, 1, 2, 0}, cols = {0, 0};
  const std::vector<double> merged = merge_equal_classes(table, 2, rows, cols, 0);
  // Classes in order of first appearance in the table's class numbering after the merge:
  // old 0 and 2 -> one class; 1 and 3 stay apart: three classes.
  REQUIRE(merged.size() == 2u * 3u);
  CHECK(class_count(rows) == 3);
  // Every row still reads what it read before.
  const std::vector<int32_t> old_rows = {3, 0, 2, 1, 2, 0};
  for (int k = 0; k < 2; ++k)
    for (size_t r = 0; r < rows.size(); ++r) {
      INFO("k " << k << ", row " << r);
      CHECK(merged[(size_t)k * 3 + rows[r]] == table[(size_t)k * 4 + old_rows[r]]);
    }
  // The rows that used classes 0 and 2 now share one class.
  CHECK(rows[1] == rows[2]);
  CHECK(rows[1] == rows[5]);
  CHECK(rows[0] != rows[1]);
  CHECK(rows[3] != rows[1]);
  CHECK(rows[0] != rows[3]);
  CHECK(cols == std::vector<int32_t>{0, 0});
}

TEST_CASE("compaction of randomly masked zoo models is exact") {
  for (std::string name : {"vgg11", "vgg16", "vgg19", "resnet20", "resnet56"}) {
    CAPTURE(name);
    Rng rng(42);
    Model m = build_model(name);
    init_model(m, rng);
    randomize_batchnorm(m, rng);
    random_masks(m, rng, 0.4f, 0.5f);
    Tensor x = random_images(4, {3, 32, 32}, rng);
    CompactReport rep;
    Model c = check_exact(m, x, &rep);
    MESSAGE(name << ": params " << rep.params_before << " -> " << rep.params_after << ", MACs " << rep.macs_before
                 << " -> " << rep.macs_after << ", channels removed " << rep.channels_removed << ", constants folded "
                 << rep.constants_folded << ", per-position biases " << rep.position_bias_layers << ", "
                 << rep.milliseconds << " ms");
    CHECK(rep.params_after < rep.params_before);
    CHECK(rep.channels_removed > 0);
    CHECK(rep.constants_folded > 0);
  }
}

TEST_CASE("compaction targets: 40% of every conv's filters dead") {
  // Random masks (40% dead filters, half of the other weights), batchnorm with positive and
  // negative shifts: the compact model's parameters (border tables included) against the
  // dense count, the share of the tables, and the portable runtime's arena per image.
  struct Target {
    const char* name;
    double max_ratio;
  };
  for (Target t : {Target{"resnet20", 0.55}, Target{"resnet56", 0.55}, Target{"vgg16", 0.40}}) {
    const std::string name = t.name;
    CAPTURE(name);
    Rng rng(2024);
    Model m = build_model(t.name);
    init_model(m, rng);
    randomize_batchnorm(m, rng);
    random_masks(m, rng, 0.4f, 0.5f);
    Tensor x = random_images(2, {3, 32, 32}, rng);
    CompactReport rep;
    Model c = check_exact(m, x, &rep);
    const double ratio = double(rep.params_after) / double(rep.params_before);
    const double table_share = double(rep.split_after.tables) / double(rep.params_after);
    const int64_t arena_masked = portable_arena_bytes(m), arena_compact = portable_arena_bytes(c);
    MESSAGE(name << ": " << rep.params_before << " -> " << rep.params_after << " parameters (" << ratio
                   << "x; weights " << rep.split_after.weights << ", biases " << rep.split_after.biases << ", tables "
                   << rep.split_after.tables << " = " << 100 * table_share << "%), arena " << arena_masked / 1024.0
                   << " -> " << arena_compact / 1024.0 << " KiB per image");
    const int64_t onnx_masked = static_cast<int64_t>(onnx_model_bytes(m).size());
    const int64_t onnx_compact = static_cast<int64_t>(onnx_model_bytes(c).size());
    MESSAGE(name << ": ONNX " << onnx_masked << " -> " << onnx_compact << " bytes");
    CHECK(onnx_compact < onnx_masked);
    // The report's tables are the convs' tables (the total alone cannot tell: it sums the same
    // parameters whichever part each is counted in).
    CHECK(rep.split_after.tables == table_numbers(c));
    CHECK(rep.split_after.tables > 0);
    check_tables_minimal(c);
    CHECK(ratio <= t.max_ratio);
    CHECK(table_share <= 0.02);
    CHECK(arena_compact <= arena_masked);
  }
}

TEST_CASE("a dead filter with a positive constant feeding a padded conv needs the border correction") {
  Rng rng(3);
  Model m = build_model("vgg11");
  init_model(m, rng);
  randomize_batchnorm(m, rng);
  // conv1's filter 5 is dead; its batchnorm makes the constant clearly positive after ReLU.
  kill_filter(m, "conv1", 5);
  auto& bn = dynamic_cast<BatchNorm2d&>(*m.nodes()[m.find("conv1.bn")].layer);
  bn.beta.value[5] = 2.0f;
  Tensor x = random_images(3, {3, 32, 32}, rng);
  CompactReport rep;
  Model c = check_exact(m, x, &rep);
  CHECK(rep.position_bias_layers >= 1);
  CHECK(conv(c, "conv1").out_channels == 127);
  CHECK(conv(c, "conv2").in_channels == 127);
  CHECK(conv(c, "conv2").pos_h == 8);  // conv2 sees 8x8 maps after two pools

  SUBCASE("dropping the constant instead, as DNNShifter does, is not exact") {
    // Zero the per-position bias: the logits must move, proving the correction matters.
    Conv2d& c2 = conv(c, "conv2");
    c2.pos_bias.value.zero();
    Tensor a = m.forward(x, false), b = c.forward(x, false);
    CHECK(max_abs_diff(a, b) > 1e-3f);
  }
}

TEST_CASE("residual channel groups") {
  Rng rng(5);
  Model m = build_model("resnet20");
  init_model(m, rng);
  randomize_batchnorm(m, rng);
  Tensor x = random_images(3, {3, 32, 32}, rng);

  SUBCASE("a dead conv2 filter whose stream channel lives: conv2 drops it, the add maps") {
    kill_filter(m, "blocks.1.conv2", 3);
    CompactReport rep;
    Model c = check_exact(m, x, &rep);
    CHECK(conv(c, "conv").out_channels == 16);
    CHECK(conv(c, "blocks.0.conv1").in_channels == 16);
    CHECK(conv(c, "blocks.1.conv2").out_channels == 15);  // computes its 15 live filters only
    CHECK(rep.branch_rows_dropped == 1);
    auto& add = dynamic_cast<Add&>(*c.nodes()[c.find("blocks.1.add")].layer);
    REQUIRE(add.mapped());
    CHECK(add.channels == 16);
    CHECK(add.map[1].empty());  // the identity shortcut: every stream channel
    REQUIRE(add.map[0].size() == 15);
    CHECK(add.map[0][2] == 2);
    CHECK(add.map[0][3] == 4);  // stream channel 3 comes from the bias
    REQUIRE(add.has_bias);
    // The dead filter's constant (batchnorm shift of bn2, channel 3) is the add's bias there.
    auto& bn2 = dynamic_cast<BatchNorm2d&>(*m.nodes()[m.find("blocks.1.bn2")].layer);
    const double constant = bn2.beta.value[3] - bn2.running_mean[3] * bn2.gamma.value[3] / std::sqrt(bn2.running_var[3] + bn2.eps);
    CHECK(add.bias.value[3] == doctest::Approx(constant).epsilon(1e-5));
    CHECK(add.bias.value[2] == 0.0f);
    SUBCASE("the constant matters") {
      add.bias.value[3] = 0.0f;
      CHECK(max_abs_diff(m.forward(x, false), c.forward(x, false)) > 1e-4f);
    }
    SUBCASE("a bad channel map is refused with the layer named") {
      const std::string spec = c.spec();
      const size_t at = spec.find("map0=0,1,2,4");
      REQUIRE(at != std::string::npos);
      const std::string bad = spec.substr(0, at) + "map0=0,2,1,4" + spec.substr(at + 12);
      CHECK_THROWS_WITH_AS(Model::from_spec(bad), doctest::Contains("blocks.1.add"), Error);
    }
    SUBCASE("saved, loaded, compacted again") {
      TempDir dir("mapped_add");
      c.save(dir / "c.dnns");
      Model l = Model::load(dir / "c.dnns");
      CHECK(max_abs_diff(c.forward(x, false), l.forward(x, false)) == 0.0f);
      kill_filter(l, "blocks.1.conv2", 0);  // another filter of the mapped branch
      kill_filter(l, "blocks.3.shortcut.conv", 5);
      Model l2 = check_exact(l, x);
      CHECK(conv(l2, "blocks.1.conv2").out_channels == 14);
      CHECK(conv(l2, "blocks.3.shortcut.conv").out_channels == 31);
      Model l3 = check_exact(l2, x);  // and once more: a fixpoint
      CHECK(conv(l3, "blocks.1.conv2").out_channels == 14);
    }
  }
  SUBCASE("a branch whose filters are all dead: the add holds its constants") {
    for (int k = 0; k < 16; ++k) kill_filter(m, "blocks.1.conv2", k);
    Model c = check_exact(m, x);
    CHECK(conv(c, "blocks.1.conv2").out_channels == 1);  // one kept: a channel map needs a channel
    CHECK(conv(c, "blocks.1.conv2").in_channels == 0);   // it reads nothing: its bias alone
    Model again = check_exact(c, x);
    CHECK(conv(again, "blocks.1.conv2").out_channels == 1);
  }
  SUBCASE("a dead projection-shortcut filter: the shortcut conv drops it") {
    kill_filter(m, "blocks.3.shortcut.conv", 5);
    kill_filter(m, "blocks.3.conv2", 9);
    Model c = check_exact(m, x);
    CHECK(conv(c, "blocks.3.shortcut.conv").out_channels == 31);
    CHECK(conv(c, "blocks.3.conv2").out_channels == 31);
    auto& add = dynamic_cast<Add&>(*c.nodes()[c.find("blocks.3.add")].layer);
    REQUIRE(add.mapped());
    CHECK(add.map[0].size() == 31);
    CHECK(add.map[1].size() == 31);
    CHECK(conv(c, "blocks.4.conv1").in_channels == 32);  // the stream keeps all its channels
  }
  SUBCASE("a channel dead in every member of the stage-1 stream is removed everywhere") {
    for (const char* name : {"conv", "blocks.0.conv2", "blocks.1.conv2", "blocks.2.conv2"}) kill_filter(m, name, 3);
    CompactReport rep;
    Model c = check_exact(m, x, &rep);
    CHECK(conv(c, "conv").out_channels == 15);
    for (const char* name : {"blocks.0.conv2", "blocks.1.conv2", "blocks.2.conv2"}) CHECK(conv(c, name).out_channels == 15);
    for (const char* name : {"blocks.0.conv1", "blocks.1.conv1", "blocks.2.conv1", "blocks.3.conv1", "blocks.3.shortcut.conv"})
      CHECK(conv(c, name).in_channels == 15);
  }
  SUBCASE("a stream channel no consumer reads is removed even though it is live") {
    for (const char* name : {"blocks.0.conv1", "blocks.1.conv1", "blocks.2.conv1", "blocks.3.conv1", "blocks.3.shortcut.conv"}) {
      Conv2d& cv = conv(m, name);
      std::string key = std::string(name) + ".weight";
      m.masks[key] = Tensor::full(cv.weight.value.shape(), 1.0f);
      int64_t per = cv.kernel_h * cv.kernel_w;
      for (int k = 0; k < cv.out_channels; ++k)
        for (int64_t q = 0; q < per; ++q) m.masks[key][(int64_t(k) * cv.in_channels + 7) * per + q] = 0.0f;
    }
    m.apply_masks();
    Model c = check_exact(m, x);
    CHECK(conv(c, "conv").out_channels == 15);
    CHECK(conv(c, "blocks.3.shortcut.conv").in_channels == 15);
  }
}

TEST_CASE("a whole dead layer") {
  Rng rng(8);
  Model m = build_model("vgg11");
  init_model(m, rng);
  randomize_batchnorm(m, rng);
  Tensor x = random_images(3, {3, 32, 32}, rng);
  Conv2d& c3 = conv(m, "conv3");
  for (int k = 0; k < c3.out_channels; ++k) kill_filter(m, "conv3", k);
  auto& bn = dynamic_cast<BatchNorm2d&>(*m.nodes()[m.find("conv3.bn")].layer);

  // Either way nothing downstream depends on the input any more: the compact network is
  // its constant logits.
  SUBCASE("its constants die in the ReLU") {
    for (int c = 0; c < bn.channels; ++c) bn.beta.value[c] = -5.0f;
  }
  SUBCASE("its constants are positive and reach padded convs") {
    for (int c = 0; c < bn.channels; ++c) bn.beta.value[c] = 1.0f + 0.01f * c;
  }
  CompactReport rep;
  Model c = check_exact(m, x, &rep);
  Tensor y = c.forward(x, false);
  for (int64_t k = 0; k < y.dim(1); ++k) CHECK(y[k] == y[y.dim(1) + k]);  // the same logits for every image
  CHECK(rep.params_after == 10);  // the final layer's bias, holding the constant logits
  CHECK(rep.macs_after == 0);
}

TEST_CASE("fixed maps that differ by position reach a linear layer through a flatten") {
  // conv a -> bn -> relu -> maxpool -> conv b (padded) -> relu -> flatten (5 x 4 x 4) -> fc.
  // Filter 2 of conv a is dead with a positive constant. Filter 1 of conv b reads only that
  // channel, so it is input-independent but differs at the border; filter 3 of conv b is dead
  // (its bias). Both reach the linear layer as 16 features each, folded into its bias.
  Rng rng(21);
  Model m;
  int x = m.add_input({3, 8, 8});
  int a = m.add("a", std::make_unique<Conv2d>(3, 6, 3, 3, 1, 1, true), {x});
  int bn = m.add("a.bn", std::make_unique<BatchNorm2d>(6), {a});
  int r1 = m.add("a.relu", std::make_unique<ReLU>(), {bn});
  int pool = m.add("pool", std::make_unique<Pool2d>(true, 2, 2), {r1});
  int b = m.add("b", std::make_unique<Conv2d>(6, 5, 3, 3, 1, 1, true), {pool});
  int r2 = m.add("b.relu", std::make_unique<ReLU>(), {b});
  int fl = m.add("flatten", std::make_unique<Flatten>(), {r2});
  int fc = m.add("fc", std::make_unique<Linear>(80, 4, true), {fl});
  m.set_output(fc);
  init_model(m, rng);
  randomize_batchnorm(m, rng);
  for (Param* p : {&conv(m, "a").bias, &conv(m, "b").bias}) p->value.fill(0.5f);
  kill_filter(m, "a", 2);
  dynamic_cast<BatchNorm2d&>(*m.nodes()[bn].layer).beta.value[2] = 1.5f;
  Conv2d& cb = conv(m, "b");
  m.masks["b.weight"] = Tensor::full(cb.weight.value.shape(), 1.0f);
  for (int c = 0; c < 6; ++c)
    for (int q = 0; q < 9; ++q) {
      if (c != 2) m.masks["b.weight"][(1 * 6 + c) * 9 + q] = 0.0f;  // filter 1 reads channel 2 only
      m.masks["b.weight"][(3 * 6 + c) * 9 + q] = 0.0f;              // filter 3 is dead
    }
  for (int q = 0; q < 9; ++q) cb.weight.value[(1 * 6 + 2) * 9 + q] = 0.3f + 0.05f * q;  // positive: survives the ReLU
  m.apply_masks();

  ChannelAnalysis ca = analyze_channels(m);
  CHECK(ca.fixed[pool][2] == 1);
  CHECK(ca.map_uniform[pool] == 1);  // the dead filter's constant: one value per channel
  CHECK(ca.map_plane[pool] == 1);
  CHECK(ca.map_uniform[b] == 0);     // spelled out: the border differs
  CHECK(ca.fixed[b][1] == 1);
  CHECK(ca.fixed[b][3] == 1);
  const float* map = ca.map_of(r2, 1);  // 4 x 4 values of channel 1 after the ReLU
  REQUIRE(map != nullptr);
  CHECK(map[0] != map[5]);  // the corner sees the zero padding, the interior does not

  Tensor images = random_images(3, {3, 8, 8}, rng);
  CompactReport rep;
  Model c = check_exact(m, images, &rep);
  CHECK(conv(c, "a").out_channels == 5);
  CHECK(conv(c, "b").in_channels == 5);
  CHECK(conv(c, "b").out_channels == 3);
  CHECK(dynamic_cast<Linear&>(*c.nodes()[c.find("fc")].layer).in_features == 48);
  CHECK(rep.constants_folded >= 3);  // a's channel 2 into b; b's channels 1 and 3 into fc
}

TEST_CASE("5x5 stride-2 convs, a flatten of 8x8 maps and a hidden linear layer") {
  // conv 5x5 stride 2 (16x16 -> 8x8) -> bn -> relu -> conv 3x3 -> relu -> flatten (4 x 64
  // features: the general slice path) -> fc1 -> relu -> fc.
  auto build = [](Rng& rng) {
    Model m;
    int x = m.add_input({3, 16, 16});
    int a = m.add("a", std::make_unique<Conv2d>(3, 6, 5, 5, 2, 2, true), {x});
    int bn = m.add("a.bn", std::make_unique<BatchNorm2d>(6), {a});
    int r1 = m.add("a.relu", std::make_unique<ReLU>(), {bn});
    int b = m.add("b", std::make_unique<Conv2d>(6, 4, 3, 3, 1, 1, true), {r1});
    int r2 = m.add("b.relu", std::make_unique<ReLU>(), {b});
    int fl = m.add("flatten", std::make_unique<Flatten>(), {r2});
    int h = m.add("fc1", std::make_unique<Linear>(256, 12, true), {fl});
    int r3 = m.add("fc1.relu", std::make_unique<ReLU>(), {h});
    int fc = m.add("fc", std::make_unique<Linear>(12, 5, true), {r3});
    m.set_output(fc);
    init_model(m, rng);
    randomize_batchnorm(m, rng);
    for (const char* name : {"a", "b"}) conv(m, name).bias.value.fill(0.2f);
    kill_filter(m, "a", 1);
    dynamic_cast<BatchNorm2d&>(*m.nodes()[bn].layer).beta.value[1] = 1.0f;
    kill_filter(m, "b", 2);
    return m;
  };
  Rng rng(31);
  Tensor images = random_images(3, {3, 16, 16}, rng);
  SUBCASE("some hidden rows dead") {
    Model m = build(rng);
    auto& fc1 = dynamic_cast<Linear&>(*m.nodes()[m.find("fc1")].layer);
    m.masks["fc1.weight"] = Tensor::full(fc1.weight.value.shape(), 1.0f);
    for (int o : {0, 5, 7})
      for (int q = 0; q < 256; ++q) m.masks["fc1.weight"][o * 256 + q] = 0.0f;
    m.apply_masks();
    CompactReport rep;
    Model c = check_exact(m, images, &rep);
    CHECK(conv(c, "a").out_channels == 5);
    CHECK(conv(c, "b").out_channels == 3);
    CHECK(dynamic_cast<Linear&>(*c.nodes()[c.find("fc1")].layer).in_features == 192);
    CHECK(dynamic_cast<Linear&>(*c.nodes()[c.find("fc1")].layer).out_features == 9);
  }
  SUBCASE("every hidden row dead: the logits are constant") {
    Model m = build(rng);
    auto& fc1 = dynamic_cast<Linear&>(*m.nodes()[m.find("fc1")].layer);
    m.masks["fc1.weight"] = Tensor::zeros(fc1.weight.value.shape());
    m.apply_masks();
    CompactReport rep;
    Model c = check_exact(m, images, &rep);
    CHECK(rep.params_after == 5);  // the output layer's bias
  }
}

// A chain input -> a (3x3 pad 1) -> relu -> b1 -> relu [-> pool] -> b2 -> ... -> global pool ->
// fc, where filter 0 of a is dead with a positive constant and filter 0 of every b reads only
// channel 0 before it (positive weights): channel 0 stays input-independent all along the
// chain, a map that differs near the border in more rows and columns at every padded conv.
std::string bname(size_t d) {  // "b1", "b2", ...
  std::string s = "b";
  s += std::to_string(d);
  return s;
}

struct ChainLayer {
  int kernel, stride, pad;
  char pool;  // 0, 'm' (2x2 max) or 'a' (2x2 average) after the layer's ReLU
};
Model border_chain(Rng& rng, int size, const std::vector<ChainLayer>& layers, int C = 5) {
  Model m;
  int x = m.add_input({3, size, size});
  int t = m.add("a", std::make_unique<Conv2d>(3, C, 3, 3, 1, 1, true), {x});
  t = m.add("a.relu", std::make_unique<ReLU>(), {t});
  for (size_t d = 0; d < layers.size(); ++d) {
    const ChainLayer& l = layers[d];
    const std::string name = bname(d + 1);
    t = m.add(name, std::make_unique<Conv2d>(C, C, l.kernel, l.kernel, l.stride, l.pad, true), {t});
    t = m.add(name + ".relu", std::make_unique<ReLU>(), {t});
    if (l.pool) t = m.add(name + ".pool", std::make_unique<Pool2d>(l.pool == 'm', 2, 2), {t});
  }
  t = m.add("gap", std::make_unique<GlobalAvgPool>(), {t});
  m.set_output(m.add("fc", std::make_unique<Linear>(C, 4, true), {t}));
  init_model(m, rng);
  conv(m, "a").bias.value.fill(0.5f);
  kill_filter(m, "a", 0);
  for (size_t d = 0; d < layers.size(); ++d) {
    const std::string name = bname(d + 1);
    Conv2d& b = conv(m, name);
    const int64_t area = int64_t(b.kernel_h) * b.kernel_w;
    m.masks[name + ".weight"] = Tensor::full(b.weight.value.shape(), 1.0f);
    for (int c = 1; c < C; ++c)
      for (int64_t q = 0; q < area; ++q) m.masks[name + ".weight"][c * area + q] = 0.0f;  // filter 0 reads channel 0
    for (int64_t q = 0; q < area; ++q) b.weight.value[q] = 0.1f + 0.37f * float((q * 7) % 5) / float(area);
    b.bias.value[0] = 0.05f;
  }
  m.apply_masks();
  return m;
}

TEST_CASE("border tables: deep chains of padded convs over constant channels") {
  // Through d 3x3 pad-1 convs a constant reaches d rows into the map from each side: 2d + 1
  // row classes (and column classes) at depth d, whatever the map size.
  Rng rng(41);
  const int depth = 5;
  Model m = border_chain(rng, 16, std::vector<ChainLayer>(depth, {3, 1, 1, 0}));
  Tensor x = random_images(3, {3, 16, 16}, rng);
  CompactReport rep;
  Model c = check_exact(m, x, &rep);
  for (int d = 1; d <= depth; ++d) {
    CAPTURE(d);
    Conv2d& b = conv(c, bname(d));
    REQUIRE(b.pos_h == 16);
    CHECK(b.table_rows() == 2 * d + 1);
    CHECK(b.table_cols() == 2 * d + 1);
    CHECK(b.pos_bias.value.dim(0) == b.out_channels);  // (K, row classes, column classes)
    CHECK(b.pos_rows[d] == d);
    CHECK(b.pos_rows[8] == d);  // an interior row: class d (classes number by first appearance)
    CHECK(b.pos_rows[15] == 2 * d);
    CHECK(b.in_channels == 4);  // channel 0 folded at every depth
  }
  CHECK(rep.position_bias_layers == depth);
  CHECK(rep.split_after.tables == 4 * (9 + 25 + 49 + 81 + 121));  // 4 filters x (2d + 1)^2
  check_tables_minimal(c);

  SUBCASE("the table matters") {  // zeroing one table moves the logits
    conv(c, "b3").pos_bias.value.zero();
    CHECK(max_abs_diff(m.forward(x, false), c.forward(x, false)) > 1e-4f);
  }
  SUBCASE("wrong classes are caught by exactness") {  // one border row given the interior's class
    Conv2d& b = conv(c, "b2");
    b.pos_rows[0] = b.pos_rows[8];
    CHECK(max_abs_diff(m.forward(x, false), c.forward(x, false)) > 1e-4f);
  }
}

TEST_CASE("border tables: stride 2, 5x5 kernels and pooling") {
  Rng rng(43);
  Tensor x = random_images(3, {3, 24, 24}, rng);
  SUBCASE("5x5 pad 2, then 5x5 stride 2, then 3x3 stride 2") {
    Model m = border_chain(rng, 24, {{5, 1, 2, 0}, {5, 2, 2, 0}, {3, 2, 1, 0}});
    Model c = check_exact(m, x);
    // 5x5 pad 2 over a constant: rows 0, 1 and 22, 23 see padding: 5 classes.
    CHECK(conv(c, "b1").table_rows() == 5);
    // Then a stride-2 5x5 (24 -> 12): 12 rows, at most as many classes, fewer than positions.
    CHECK(conv(c, "b2").pos_h == 12);
    CHECK(conv(c, "b2").table_rows() < 12);
    CHECK(conv(c, "b3").pos_h == 6);
    check_tables_minimal(c);  // (classes <= positions holds by construction; minimality does not)
  }
  SUBCASE("max and average pooling of border tables") {
    for (char pool : {'m', 'a'}) {
      CAPTURE(pool);
      Model m = border_chain(rng, 24, {{3, 1, 1, pool}, {3, 1, 1, pool}, {3, 1, 1, 0}});
      Model c = check_exact(m, x);
      // b1: 3 classes over 24 rows; pooled to 12 rows (2 classes there: the first row pools
      // rows 0 and 1, which differ); b2 reads them through its padding.
      CHECK(conv(c, "b1").table_rows() == 3);
      CHECK(conv(c, "b2").pos_h == 12);
      CHECK(conv(c, "b2").table_rows() >= 3);
      CHECK(conv(c, "b2").table_rows() <= 5);
      CHECK(conv(c, "b3").pos_h == 6);
      check_tables_minimal(c);
    }
  }
}

TEST_CASE("border tables: saved and loaded, and old files with full per-position maps") {
  Rng rng(47);
  Model m = border_chain(rng, 12, std::vector<ChainLayer>(3, {3, 1, 1, 0}));
  Tensor x = random_images(2, {3, 12, 12}, rng);
  Model c = check_exact(m, x);
  TempDir dir("tables");
  c.save(dir / "c.dnns");
  Model l = Model::load(dir / "c.dnns");
  CHECK(c.spec().find("pos_rows=0,1,2,3,3,3,3,3,3,4,5,6") != std::string::npos);
  CHECK(max_abs_diff(c.forward(x, false), l.forward(x, false)) == 0.0f);
  CHECK(conv(l, "b3").table_rows() == 7);

  // A file from before the tables: the same model with each table spread to a full (K, P, Q)
  // map and no class attributes. It loads as a table of one class per row and column.
  Model old = c.clone();
  for (Node& n : old.nodes()) {
    auto* cv = dynamic_cast<Conv2d*>(n.layer.get());
    if (!cv || cv->pos_h == 0) continue;
    auto full = std::make_unique<Conv2d>(cv->in_channels, cv->out_channels, cv->kernel_h, cv->kernel_w, cv->stride,
                                         cv->pad, cv->has_bias, cv->fused_relu, cv->pos_h, cv->pos_w);
    full->weight.value = cv->weight.value;
    full->bias.value = cv->bias.value;
    const int64_t TR = cv->table_rows(), TC = cv->table_cols();
    for (int k = 0; k < cv->out_channels; ++k)
      for (int p = 0; p < cv->pos_h; ++p)
        for (int q = 0; q < cv->pos_w; ++q)
          full->pos_bias.value[(int64_t(k) * cv->pos_h + p) * cv->pos_w + q] =
              cv->pos_bias.value[(k * TR + cv->pos_rows[p]) * TC + cv->pos_cols[q]];
    n.layer = std::move(full);
  }
  old.save(dir / "old.dnns");
  CHECK(old.spec().find("pos_rows") == std::string::npos);  // written as the old format
  CHECK(old.spec().find("pos_h=12") != std::string::npos);
  Model lo = Model::load(dir / "old.dnns");
  CHECK(conv(lo, "b3").pos_bias.value.shape() == Shape{conv(lo, "b3").out_channels, 12, 12});
  CHECK(max_abs_diff(c.forward(x, false), lo.forward(x, false)) <= 1e-5f);
  // Compacting the old model again converts its maps into small tables.
  Model again = check_exact(lo, x);
  CHECK(conv(again, "b3").table_rows() == 7);
  CHECK(conv(again, "b3").table_cols() == 7);

  SUBCASE("bad class attributes are refused with the layer named") {
    const std::string spec = c.spec();
    const size_t at = spec.find("pos_rows=0,1,2");
    REQUIRE(at != std::string::npos);
    auto with = [&](const std::string& classes) { return spec.substr(0, at) + classes + spec.substr(at + 14); };
    CHECK_THROWS_WITH_AS(Model::from_spec(with("pos_rows=0,1,x")), doctest::Contains("pos_rows"), Error);
    CHECK_THROWS_WITH_AS(Model::from_spec(with("pos_rows=0,1")), doctest::Contains("border-table classes"), Error);
  }
}

TEST_CASE("compacting a compact model again") {
  // The compact model carries fused ReLUs and per-position biases; pruning it further and
  // compacting again must stay exact.
  Rng rng(17);
  Model m = build_model("vgg11");
  init_model(m, rng);
  randomize_batchnorm(m, rng);
  kill_filter(m, "conv1", 5);
  dynamic_cast<BatchNorm2d&>(*m.nodes()[m.find("conv1.bn")].layer).beta.value[5] = 2.0f;
  Tensor x = random_images(3, {3, 32, 32}, rng);
  Model c = check_exact(m, x);
  REQUIRE(conv(c, "conv2").pos_h > 0);
  for (const char* name : {"conv2", "conv4"}) {
    Conv2d& cv = conv(c, name);
    for (int k = 0; k < cv.out_channels; k += 3) kill_filter(c, name, k);
  }
  CompactReport rep;
  Model c2 = check_exact(c, x, &rep);
  CHECK(rep.channels_removed > 0);
}

TEST_CASE("compact models are ordinary models: save, load, run, train") {
  Rng rng(13);
  Model m = build_model("resnet20");
  init_model(m, rng);
  randomize_batchnorm(m, rng);
  random_masks(m, rng, 0.3f, 0.6f);
  Tensor x = random_images(2, {3, 32, 32}, rng);
  Model c = check_exact(m, x);
  TempDir dir("compact");
  c.save(dir / "c.dnns");
  Model l = Model::load(dir / "c.dnns");
  CHECK(max_abs_diff(c.forward(x, false), l.forward(x, false)) == 0.0f);
  // One training step runs and changes the weights (per-position biases included).
  Tensor logits = l.forward(x, true);
  Tensor d(logits.shape());
  Tensor labels = Tensor::from({2}, {1, 7});
  float before = ops::softmax_cross_entropy(logits, labels, 0.0f, &d, nullptr);
  l.backward(d);
  for (auto& p : l.params()) {
    REQUIRE(p.param->grad.defined());
    for (int64_t i = 0; i < p.param->value.numel(); ++i) p.param->value[i] -= 0.01f * p.param->grad[i];
  }
  float after = ops::softmax_cross_entropy(l.forward(x, true), labels, 0.0f, nullptr, nullptr);
  CHECK(after < before);
}

TEST_CASE("compaction is exact on real CIFAR-10 images") {
  std::string dir = std::string(DNNS_SHARED_DATA) + "/cifar10-jpeg";
  if (!std::filesystem::exists(dir + "/test")) {  // its own CTest test: test_compact_cifar10_jpeg
    testing::skip_part("compaction on real CIFAR-10 images: the JPEG copy is not at " + dir);
    return;
  }
  ImageFolderOptions io;
  io.cache_dir = std::string(DNNS_BINARY_DIR) + "/cache";
  Dataset test = load_image_folder(dir + "/test", 32, 32, 3, io).first_per_class(4);
  LoaderOptions lo;
  lo.batch_size = 40;
  lo.shuffle = false;
  lo.normalize = cifar10_stats();
  Loader loader(std::move(test), lo);
  Batch b;
  loader.start_epoch(0);
  REQUIRE(loader.next(b));
  for (std::string name : {"vgg16", "resnet20"}) {
    CAPTURE(name);
    Rng rng(77);
    Model m = build_model(name);
    init_model(m, rng);
    randomize_batchnorm(m, rng);
    random_masks(m, rng, 0.5f, 0.3f);
    check_exact(m, b.images);
  }
}
