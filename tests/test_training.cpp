// Training: a small network learns a synthetic task; runs are deterministic for a seed;
// a checkpoint resumes bit-exactly; a NaN loss stops training with a clear error.
#include <doctest/doctest.h>

#include "tests/test_util.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <string>

#include "core/error.h"
#include "core/rng.h"
#include "kernels/ops.h"
#include "nn/optim.h"
#include "prune/infer.h"
#include "nn/models/zoo.h"
#include "nn/trainer.h"

using namespace dnns;
using dnns::testing::QuadrantData;

namespace {


Model small_net(uint64_t seed) {
  Model m;
  int x = m.add_input({3, 8, 8});
  x = m.add("conv1", std::make_unique<Conv2d>(3, 8, 3, 3, 1, 1, false), {x});
  x = m.add("bn1", std::make_unique<BatchNorm2d>(8), {x});
  x = m.add("relu1", std::make_unique<ReLU>(), {x});
  x = m.add("pool1", std::make_unique<Pool2d>(true, 2, 2), {x});
  x = m.add("conv2", std::make_unique<Conv2d>(8, 8, 3, 3, 1, 1, true), {x});
  x = m.add("relu2", std::make_unique<ReLU>(), {x});
  x = m.add("gap", std::make_unique<GlobalAvgPool>(), {x});
  m.add("fc", std::make_unique<Linear>(8, 4, true), {x});
  Rng rng(seed);
  init_model(m, rng);
  return m;
}

TrainConfig small_config(int64_t epochs) {
  TrainConfig cfg;
  cfg.epochs = epochs;
  cfg.sgd = {0.05f, 0.9f, 1e-4f, false};
  cfg.schedule.kind = LrSchedule::Kind::MultiStep;
  cfg.schedule.base_lr = 0.05f;
  cfg.schedule.milestones = {60};
  return cfg;
}

std::vector<float> all_weights(Model& m) {
  std::vector<float> out;
  for (auto& [name, t] : m.state()) {
    auto v = t->to_vector();
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

}  // namespace

TEST_CASE("a small network learns the synthetic task") {
  QuadrantData train(512, 32, 1), test(256, 64, 2);
  Model m = small_net(3);
  EvalStats before = evaluate(m, test);
  Trainer t(m, small_config(6));
  double first_loss = 0, last_loss = 0;
  for (int e = 0; e < 6; ++e) {
    EpochStats s = t.train_epoch(train);
    if (e == 0) first_loss = s.loss;
    last_loss = s.loss;
  }
  EvalStats after = evaluate(m, test);
  MESSAGE("synthetic: test accuracy " << before.accuracy << " -> " << after.accuracy << ", train loss "
                                      << first_loss << " -> " << last_loss);
  CHECK(last_loss < 0.5 * first_loss);
  CHECK(after.accuracy > 0.9);  // chance is 0.25
}

// A source that takes 20 ms per batch: the epoch's data wait counts that time, and no more
// than the epoch took.
TEST_CASE("an epoch reports how long its steps waited for data") {
  struct SlowData : QuadrantData {
    using QuadrantData::QuadrantData;
    bool next(Batch& out) override {
      usleep(20000);
      return QuadrantData::next(out);
    }
  };
  SlowData slow(128, 32, 1);
  QuadrantData fast(128, 32, 1);
  Model a = small_net(3), b = small_net(3);
  Trainer ta(a, small_config(1)), tb(b, small_config(1));
  const EpochStats s = ta.train_epoch(slow), f = tb.train_epoch(fast);
  CHECK(s.data_wait_seconds >= 4 * 0.020);  // 4 batches (the call that ends the epoch is not a step's)
  CHECK(s.data_wait_seconds <= s.seconds);
  CHECK(f.data_wait_seconds < s.data_wait_seconds - 3 * 0.020);
}

TEST_CASE("two runs with one seed give identical weights") {
  QuadrantData a(256, 32, 1), b(256, 32, 1);
  Model m1 = small_net(9), m2 = small_net(9);
  Trainer t1(m1, small_config(2)), t2(m2, small_config(2));
  for (int e = 0; e < 2; ++e) {
    t1.train_epoch(a);
    t2.train_epoch(b);
  }
  CHECK(all_weights(m1) == all_weights(m2));
  Model m3 = small_net(10);
  CHECK(all_weights(m1) != all_weights(m3));
}

TEST_CASE("resume from a checkpoint continues bit-exactly, also mid-epoch") {
  auto dir = std::filesystem::temp_directory_path() / ("dnns_train_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::string path = (dir / "ckpt.dnns").string();

  QuadrantData data(256, 32, 4);
  Model ref = small_net(21);
  Trainer tr(ref, small_config(3));
  for (int e = 0; e < 3; ++e) tr.train_epoch(data);

  // Interrupted run: one epoch and three steps, checkpoint, then a fresh process state.
  {
    Model m = small_net(21);
    Trainer t(m, small_config(3));
    t.train_epoch(data);
    t.train_epoch(data, {}, t.step() + 3);
    t.save_checkpoint(path);
  }
  Model m = small_net(999);  // different initial weights: all must come from the checkpoint
  Trainer t(m, small_config(3));
  t.load_checkpoint(path);
  CHECK(t.step() == 8 + 3);
  while (t.step() < 3 * data.batches_per_epoch()) t.train_epoch(data);
  CHECK(all_weights(m) == all_weights(ref));
  std::filesystem::remove_all(dir);
}

TEST_CASE("a checkpoint of another graph is refused") {
  auto dir = std::filesystem::temp_directory_path() / ("dnns_train2_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::string path = (dir / "ckpt.dnns").string();
  Model a = small_net(1);
  Trainer ta(a, small_config(1));
  ta.save_checkpoint(path);
  Model b = build_model("resnet20", 4, {3, 8, 8});
  Trainer tb(b, small_config(1));
  CHECK_THROWS_WITH_AS(tb.load_checkpoint(path), doctest::Contains("graph differs"), Error);
  std::filesystem::remove_all(dir);
}

TEST_CASE("a diverging run stops with a clear error") {
  QuadrantData data(128, 32, 1);
  Model m = small_net(2);
  TrainConfig cfg = small_config(1);
  cfg.schedule.base_lr = 1e30f;
  Trainer t(m, cfg);
  CHECK_THROWS_WITH_AS(
      {
        for (int e = 0; e < 3; ++e) t.train_epoch(data);
      },
      doctest::Contains("training diverged"), Error);
}

TEST_CASE("learning-rate schedules") {
  LrSchedule ms;
  ms.kind = LrSchedule::Kind::MultiStep;
  ms.base_lr = 0.1f;
  ms.milestones = {100, 150};
  CHECK(ms.lr_at(0) == doctest::Approx(0.1));
  CHECK(ms.lr_at(99) == doctest::Approx(0.1));
  CHECK(ms.lr_at(100) == doctest::Approx(0.01));
  CHECK(ms.lr_at(149) == doctest::Approx(0.01));
  CHECK(ms.lr_at(150) == doctest::Approx(0.001));

  LrSchedule cos;
  cos.kind = LrSchedule::Kind::Cosine;
  cos.base_lr = 0.2f;
  cos.total_steps = 100;
  CHECK(cos.lr_at(0) == doctest::Approx(0.2));
  CHECK(cos.lr_at(50) == doctest::Approx(0.1));
  CHECK(cos.lr_at(100) == doctest::Approx(0.0));

  LrSchedule warm = ms;
  warm.warmup_steps = 10;
  CHECK(warm.lr_at(0) == doctest::Approx(0.0));
  CHECK(warm.lr_at(5) == doctest::Approx(0.05));
  CHECK(warm.lr_at(10) == doctest::Approx(0.1));
  CHECK(warm.lr_at(120) == doctest::Approx(0.01));
}

// Training fuses each batchnorm whose only reader is a ReLU (Model::forward): the fused graph
// must train like the unfused one, and the fusion must really happen where it may and only
// there (counted with the op profile).
namespace {

// conv1 -> bn1 -> relu1 -> conv2 (bias) -> bn2 -> {relu2, add}, add(relu2, bn2) -> conv3 -> bn3
// -> relu3 -> gap -> fc: bn1 and bn3 have a ReLU as only reader, bn2 two readers.
Model fusion_net() {
    Model m;
    int x = m.add_input({3, 8, 8});
    x = m.add("conv1", std::make_unique<Conv2d>(3, 8, 3, 3, 1, 1, false), {x});
    x = m.add("bn1", std::make_unique<BatchNorm2d>(8), {x});
    x = m.add("relu1", std::make_unique<ReLU>(), {x});  // fused: bn1's only reader
    x = m.add("conv2", std::make_unique<Conv2d>(8, 8, 3, 3, 1, 1, true), {x});  // a bias for the fold to carry
    const int bn2 = m.add("bn2", std::make_unique<BatchNorm2d>(8), {x});
    const int relu2 = m.add("relu2", std::make_unique<ReLU>(), {bn2});  // not fused: bn2 has two readers
    x = m.add("add", std::make_unique<Add>(), {relu2, bn2});
    x = m.add("conv3", std::make_unique<Conv2d>(8, 8, 3, 3, 1, 1, false), {x});
    x = m.add("bn3", std::make_unique<BatchNorm2d>(8), {x});
    x = m.add("relu3", std::make_unique<ReLU>(), {x});  // fused
    x = m.add("gap", std::make_unique<GlobalAvgPool>(), {x});
    m.add("fc", std::make_unique<Linear>(8, 4, true, false), {x});
    Rng rng(5);
    init_model(m, rng);
    return m;
}

// Calls per op name of what f runs, from the op profile.
template <class F>
std::map<std::string, int64_t> op_calls(F&& f) {
  ops::take_profile();
  ops::set_profiling(true);
  f();
  ops::set_profiling(false);
  std::map<std::string, int64_t> calls;
  for (const ops::OpTime& t : ops::take_profile()) calls[t.op] = t.calls;
  return calls;
}

}  // namespace

TEST_CASE("batchnorm + ReLU fusion: same training steps as the unfused graph, fused only where it may") {
  Model fused = fusion_net(), apart = fusion_net();
  apart.set_fusion(false);
  Rng rng(6);
  Tensor x({6, 3, 8, 8}), labels({6});
  for (int64_t i = 0; i < x.numel(); ++i) x[i] = rng.normal();
  for (int64_t i = 0; i < 6; ++i) labels[i] = float(i % 4);
  Sgd sgd_f({0.1f, 0.9f, 1e-4f, false}), sgd_a({0.1f, 0.9f, 1e-4f, false});
  for (int step = 0; step < 3; ++step) {
    CAPTURE(step);
    ops::take_profile();
    ops::set_profiling(true);
    Tensor yf = fused.forward(x, true);
    Tensor df(yf.shape());
    ops::softmax_cross_entropy(yf, labels, 0.0f, &df, nullptr);
    fused.backward(df);
    ops::set_profiling(false);
    int64_t fused_fwd = 0, fused_bwd = 0, bn_fwd = 0, relu_fwd = 0, relu_bwd = 0;
    for (const ops::OpTime& t : ops::take_profile()) {
      if (t.op == "batchnorm_forward_train_relu") fused_fwd = t.calls;
      if (t.op == "batchnorm_backward_relu") fused_bwd = t.calls;
      if (t.op == "batchnorm_forward_train") bn_fwd = t.calls;
      if (t.op == "relu_forward") relu_fwd = t.calls;
      if (t.op == "relu_backward") relu_bwd = t.calls;
    }
    CHECK(fused_fwd == 2);  // bn1 and bn3
    CHECK(fused_bwd == 2);
    CHECK(bn_fwd == 1);  // bn2
    CHECK(relu_fwd == 1);  // relu2
    CHECK(relu_bwd == 1);
    Tensor ya = apart.forward(x, true);
    Tensor da(ya.shape());
    ops::softmax_cross_entropy(ya, labels, 0.0f, &da, nullptr);
    apart.backward(da);
    const std::vector<float> lf = yf.to_vector(), la = ya.to_vector();
    for (size_t i = 0; i < lf.size(); ++i) CHECK(lf[i] == doctest::Approx(la[i]).epsilon(1e-4));
    sgd_f.step(fused, 0.1f);
    sgd_a.step(apart, 0.1f);
    const std::vector<float> wf = all_weights(fused), wa = all_weights(apart);  // parameters and running stats
    REQUIRE(wf.size() == wa.size());
    double worst = 0.0;
    for (size_t i = 0; i < wf.size(); ++i) worst = std::max(worst, std::fabs(double(wf[i]) - wa[i]));
    CHECK(worst < 1e-5);
  }
  // Evaluation takes none of the training kernels (it has its own fusion: next test case).
  const auto eval = op_calls([&] { fused.forward(x, false); });
  CHECK(eval.count("batchnorm_forward_train_relu") == 0);
  CHECK(eval.count("batchnorm_forward_train") == 0);
  CHECK(eval.count("conv2d_forward") + eval.count("conv2d_forward_relu") > 0);
}

// Residual blocks: each add whose only reader is a ReLU computes it in the same pass
// (ops::add_relu_forward), and a ReLU whose gradient arrives in two parts (a block output read
// by the next block's add and by its first conv) sums them as it masks them
// (ops::relu_backward_sum). Same training as the unfused graph; counted with the op profile.
namespace {

Model residual_net() {
  Model m;
  int x = m.add_input({3, 8, 8});
  x = m.add("stem", std::make_unique<Conv2d>(3, 8, 3, 3, 1, 1, false), {x});
  x = m.add("stem.bn", std::make_unique<BatchNorm2d>(8), {x});
  x = m.add("stem.relu", std::make_unique<ReLU>(), {x});  // fused into stem.bn: its two parts are summed
  for (const char* b : {"a", "b"}) {
    const std::string p = b;
    int y = m.add(p + ".conv1", std::make_unique<Conv2d>(8, 8, 3, 3, 1, 1, false), {x});
    y = m.add(p + ".bn1", std::make_unique<BatchNorm2d>(8), {y});
    y = m.add(p + ".relu1", std::make_unique<ReLU>(), {y});
    y = m.add(p + ".conv2", std::make_unique<Conv2d>(8, 8, 3, 3, 1, 1, false), {y});
    y = m.add(p + ".bn2", std::make_unique<BatchNorm2d>(8), {y});
    y = m.add(p + ".add", std::make_unique<Add>(), {y, x});
    x = m.add(p + ".relu", std::make_unique<ReLU>(), {y});  // computed by the add
  }
  x = m.add("gap", std::make_unique<GlobalAvgPool>(), {x});
  m.add("fc", std::make_unique<Linear>(8, 4, true, false), {x});
  Rng rng(9);
  init_model(m, rng);
  return m;
}

}  // namespace

TEST_CASE("residual add + ReLU fusion: same training steps as the unfused graph") {
  Model fused = residual_net(), apart = residual_net();
  apart.set_fusion(false);
  Rng rng(10);
  Tensor x({5, 3, 8, 8}), labels({5});
  for (int64_t i = 0; i < x.numel(); ++i) x[i] = rng.normal();
  for (int64_t i = 0; i < 5; ++i) labels[i] = float(i % 4);
  Sgd sgd_f({0.1f, 0.9f, 1e-4f, false}), sgd_a({0.1f, 0.9f, 1e-4f, false});
  for (int step = 0; step < 3; ++step) {
    CAPTURE(step);
    Tensor yf, ya;
    const auto f = op_calls([&] {
      yf = fused.forward(x, true);
      Tensor d(yf.shape());
      ops::softmax_cross_entropy(yf, labels, 0.0f, &d, nullptr);
      fused.backward(d);
    });
    const auto a = op_calls([&] {
      ya = apart.forward(x, true);
      Tensor d(ya.shape());
      ops::softmax_cross_entropy(ya, labels, 0.0f, &d, nullptr);
      apart.backward(d);
    });
    auto count = [](const std::map<std::string, int64_t>& c, const char* op) {
      auto it = c.find(op);
      return it == c.end() ? int64_t(0) : it->second;
    };
    CHECK(count(f, "add_relu_forward") == 2);  // a.add and b.add
    CHECK(count(f, "add_forward") == 0);
    CHECK(count(f, "relu_forward") == 0);
    CHECK(count(f, "relu_backward_sum") == 1);  // a.relu: from b.add and b.conv1
    CHECK(count(f, "relu_backward") == 1);      // b.relu: one part
    CHECK(count(f, "accumulate") == 1);         // stem.relu's parts (fused into stem.bn's backward)
    CHECK(count(a, "add_relu_forward") + count(a, "relu_backward_sum") == 0);
    CHECK(count(a, "accumulate") == 2);
    const std::vector<float> lf = yf.to_vector(), la = ya.to_vector();
    for (size_t i = 0; i < lf.size(); ++i) CHECK(lf[i] == doctest::Approx(la[i]).epsilon(1e-4));
    sgd_f.step(fused, 0.1f);
    sgd_a.step(apart, 0.1f);
    const std::vector<float> wf = all_weights(fused), wa = all_weights(apart);
    REQUIRE(wf.size() == wa.size());
    double worst = 0.0;
    for (size_t i = 0; i < wf.size(); ++i) worst = std::max(worst, std::fabs(double(wf[i]) - wa[i]));
    CHECK(worst < 1e-5);
  }
  const auto eval = op_calls([&] { fused.forward(x, false); });
  CHECK(eval.count("add_relu_forward") == 1);
  CHECK(eval.at("add_relu_forward") == 2);
  const std::vector<float> ef = fused.forward(x, false).to_vector(), ea = apart.forward(x, false).to_vector();
  for (size_t i = 0; i < ef.size(); ++i) CHECK(ef[i] == doctest::Approx(ea[i]).epsilon(1e-4));
  // infer (the serving path) fuses the same pairs and gives Model::forward's logits.
  Tensor yi;
  const auto served = op_calls([&] { yi = infer(fused, x); });
  CHECK(served.count("add_relu_forward") == 1);
  CHECK(served.at("add_relu_forward") == 2);
  CHECK(served.count("relu_forward") == 0);
  CHECK(op_calls([&] { infer(apart, x); }).count("add_relu_forward") == 0);
  const std::vector<float> yv = yi.to_vector();
  for (size_t i = 0; i < ef.size(); ++i) CHECK(yv[i] == ef[i]);
}

// Eval mode folds conv -> batchnorm [-> ReLU] chains into one convolution (Model::forward and
// infer), where the batch gives each filter enough outputs to pay for the fold.
TEST_CASE("eval fusion: conv -> batchnorm [-> ReLU] chains run as one convolution, same logits") {
  Model fused = fusion_net(), apart = fusion_net();
  apart.set_fusion(false);
  // Trained a little, so the running statistics are not the identity.
  Rng rng(7);
  Tensor x({6, 3, 8, 8}), labels({6});
  for (int64_t i = 0; i < x.numel(); ++i) x[i] = rng.normal(0.5f, 2.0f);
  for (int64_t i = 0; i < 6; ++i) labels[i] = float(i % 4);
  Sgd sgd({0.1f, 0.9f, 0.0f, false});
  for (int step = 0; step < 3; ++step) {
    Tensor y = fused.forward(x, true), d(y.shape());
    ops::softmax_cross_entropy(y, labels, 0.0f, &d, nullptr);
    fused.backward(d);
    sgd.step(fused, 0.1f);
  }
  // A conv bias before a batchnorm learns next to nothing (the batchnorm removes the mean): set
  // conv2's, so that the fold's bias term (b - mean) * s is checked.
  {
    Tensor& b2 = static_cast<Conv2d&>(*fused.nodes()[size_t(fused.find("conv2"))].layer).bias.value;
    for (int64_t k = 0; k < b2.numel(); ++k) b2[k] = rng.normal(0.0f, 0.5f);
  }
  {
    auto from = fused.state(), to = apart.state();  // same graph: same names in the same order
    REQUIRE(from.size() == to.size());
    for (size_t k = 0; k < from.size(); ++k) *to[k].second = from[k].second->clone();
  }
  // Batch 6 of 8x8 images: 384 outputs per filter, past Conv2d::kMinFoldOutputs.
  Tensor yf, ya, yi, yi_apart;
  const auto calls = op_calls([&] { yf = fused.forward(x, false); });
  CHECK(calls.count("batchnorm_forward_eval") == 0);
  CHECK(calls.at("conv2d_forward_relu") == 2);  // conv1 + bn1 + relu1, conv3 + bn3 + relu3
  CHECK(calls.at("conv2d_forward") == 1);       // conv2 + bn2 (bn2 has two readers: no ReLU)
  CHECK(calls.at("relu_forward") == 1);         // relu2
  const auto calls_infer = op_calls([&] { yi = infer(fused, x); });
  CHECK(calls_infer == calls);
  ya = apart.forward(x, false);
  yi_apart = infer(apart, x);
  // A clone keeps the setting: the copy of `apart` runs every batchnorm on its own too.
  Model apart_copy = apart.clone();
  CHECK(op_calls([&] { apart_copy.forward(x, false); }).at("batchnorm_forward_eval") == 3);
  CHECK(op_calls([&] { infer(apart_copy, x); }).at("batchnorm_forward_eval") == 3);
  const std::vector<float> f = yf.to_vector(), a = ya.to_vector(), i = yi.to_vector(), ia = yi_apart.to_vector();
  REQUIRE(f.size() == a.size());
  for (size_t k = 0; k < f.size(); ++k) {
    CHECK(f[k] == doctest::Approx(a[k]).epsilon(1e-4).scale(1.0));
    CHECK(i[k] == f[k]);    // both executors run the same fused ops
    CHECK(ia[k] == a[k]);
  }
  // Batch 2: 128 outputs per filter, below the threshold: nothing folds.
  Tensor x2({2, 3, 8, 8});
  for (int64_t k = 0; k < x2.numel(); ++k) x2[k] = x[k];
  const auto small = op_calls([&] { infer(fused, x2); });
  CHECK(small.at("batchnorm_forward_eval") == 3);
  CHECK(small.count("conv2d_forward_relu") == 0);
  // inference_memory follows the folded pass: one output per chain instead of two, and the
  // folded filters as a call's own buffer. small_net at batch 6: images 6x3x8x8, conv1 / bn1 /
  // relu1 6x8x8x8, pool1 6x8x4x4 floats. Apart, the peak is at bn1 (images, conv1's output and
  // bn1's); folded, conv1..relu1 is one tensor and the peak moves to pool1 (images, relu1's
  // output, pool1's).
  Model plain = small_net(1), plain_apart = small_net(1);
  plain_apart.set_fusion(false);
  const InferenceMemory mf = inference_memory(plain, 6), ma = inference_memory(plain_apart, 6);
  const int64_t images = 6 * 3 * 8 * 8 * 4, conv_out = 6 * 8 * 8 * 8 * 4, pooled = 6 * 8 * 4 * 4 * 4;
  CHECK(ma.activation_bytes == images + 2 * conv_out);
  CHECK(mf.activation_bytes == images + conv_out + pooled);
  CHECK(mf.workspace_bytes - ma.workspace_bytes == (8 * 3 * 3 * 3 + 8) * 4);  // conv1's folded filters, bias
}
