// Finite-difference gradient checks: every layer alone, then whole graphs (a residual
// block exercises gradient accumulation where one tensor feeds two consumers).
#include <doctest/doctest.h>

#include <cmath>
#include <functional>

#include "core/rng.h"
#include "kernels/ops.h"
#include "nn/layers.h"
#include "nn/model.h"

using namespace dnns;

namespace {

Tensor random_tensor(const Shape& s, Rng& rng, float scale = 1.0f) {
  Tensor t(s);
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = rng.normal() * scale;
  return t;
}

// Values well apart from each other and from zero, so ReLU and max-pool have no kink within
// the finite-difference step.
Tensor spread_tensor(const Shape& s, Rng& rng) {
  Tensor t(s);
  int64_t n = t.numel();
  std::vector<int64_t> perm(n);
  for (int64_t i = 0; i < n; ++i) perm[i] = i;
  for (int64_t i = n - 1; i > 0; --i) std::swap(perm[i], perm[rng.below(static_cast<uint32_t>(i + 1))]);
  for (int64_t i = 0; i < n; ++i) t[perm[i]] = (static_cast<float>(i) - n / 2.0f + 0.5f) * 0.1f;
  return t;
}

double dot(const Tensor& a, const Tensor& b) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += double(a[i]) * b[i];
  return s;
}

// Checks d(sum(r * f))/dv against central differences for every element of v (or a sample).
void check_grad(const char* what, Tensor& v, const Tensor& analytic, const std::function<double()>& loss,
                float eps, double tol) {
  REQUIRE(analytic.numel() == v.numel());
  int64_t n = v.numel();
  int64_t stride = n > 200 ? n / 200 : 1;
  double worst = 0;
  for (int64_t i = 0; i < n; i += stride) {
    float orig = v[i];
    v[i] = orig + eps;
    double lp = loss();
    v[i] = orig - eps;
    double lm = loss();
    v[i] = orig;
    double numeric = (lp - lm) / (2.0 * eps);
    double err = std::fabs(numeric - analytic[i]) / std::max(1.0, std::fabs(numeric));
    worst = std::max(worst, err);
  }
  INFO(what << ": worst relative error " << worst);
  CHECK(worst < tol);
}

// Runs one layer forward in training mode, backward with random r, and checks the input
// gradient and every parameter gradient numerically.
void gradcheck_layer(Layer& layer, std::vector<Tensor> inputs, Rng& rng, bool train = true, float eps = 1e-2f,
                     double tol = 2e-2) {
  std::vector<Shape> shapes;
  for (auto& t : inputs) shapes.push_back(t.shape());
  Shape out_shape = layer.output_shape(shapes);
  Tensor r = random_tensor(out_shape, rng);
  auto run = [&]() {
    std::vector<const Tensor*> in;
    for (auto& t : inputs) in.push_back(&t);
    Tensor out(out_shape);
    layer.forward(in, out, train);
    return out;
  };
  auto loss = [&]() { return dot(run(), r); };
  Tensor out = run();
  std::vector<Tensor> din;
  for (auto& t : inputs) din.emplace_back(t.shape());
  std::vector<Tensor*> dp;
  for (auto& t : din) dp.push_back(&t);
  std::vector<const Tensor*> in;
  for (auto& t : inputs) in.push_back(&t);
  layer.backward(in, out, r, dp);
  for (size_t k = 0; k < inputs.size(); ++k) check_grad("input", inputs[k], din[k], loss, eps, tol);
  for (Param* p : layer.params()) {
    Tensor g = p->grad.clone();
    check_grad(p->name.c_str(), p->value, g, loss, eps, tol);
  }
}

// A training step's parameter gradients of a whole graph (softmax cross-entropy over labels)
// against central differences of the loss; the logit gradient handed to backward must come back
// unwritten.
void gradcheck_model(Model& m, const Tensor& input, const Tensor& labels, float eps, double tol) {
  Tensor logits = m.forward(input, true);
  Tensor d(logits.shape());
  ops::softmax_cross_entropy(logits, labels, 0.0f, &d, nullptr);
  const Tensor d_before = d.clone();
  m.backward(d);
  for (int64_t i = 0; i < d.numel(); ++i) REQUIRE(d[i] == d_before[i]);  // the caller's gradient is not written
  auto loss = [&]() {
    // Training-mode forward: batch statistics, as in the analytic gradient. The running
    // averages it updates do not affect the training-mode output.
    Tensor l = m.forward(input, true);
    return double(ops::softmax_cross_entropy(l, labels, 0.0f, nullptr, nullptr));
  };
  for (auto& p : m.params()) {
    Tensor g = p.param->grad.clone();
    check_grad(p.name.c_str(), p.param->value, g, loss, eps, tol);
  }
}

}  // namespace

TEST_CASE("gradcheck: every layer") {
  Rng rng(7);
  SUBCASE("conv 3x3 stride 1 pad 1 with bias") {
    Conv2d c(3, 4, 3, 3, 1, 1, true);
    c.weight.value = random_tensor(c.weight.value.shape(), rng, 0.5f);
    c.bias.value = random_tensor({4}, rng);
    gradcheck_layer(c, {random_tensor({2, 3, 6, 5}, rng)}, rng);
  }
  SUBCASE("conv 3x3 stride 2 pad 1, no bias") {
    Conv2d c(2, 3, 3, 3, 2, 1, false);
    c.weight.value = random_tensor(c.weight.value.shape(), rng, 0.5f);
    gradcheck_layer(c, {random_tensor({2, 2, 7, 7}, rng)}, rng);
  }
  SUBCASE("conv 1x1 stride 2 (projection shortcut)") {
    Conv2d c(4, 3, 1, 1, 2, 0, false);
    c.weight.value = random_tensor(c.weight.value.shape(), rng, 0.5f);
    gradcheck_layer(c, {random_tensor({2, 4, 6, 6}, rng)}, rng);
  }
  SUBCASE("conv with fused relu") {
    Conv2d c(2, 3, 3, 3, 1, 1, true, true);
    // Small weights and a spread input keep pre-activations away from the kink.
    c.weight.value = random_tensor(c.weight.value.shape(), rng, 0.3f);
    c.bias.value = random_tensor({3}, rng);
    gradcheck_layer(c, {spread_tensor({1, 2, 4, 4}, rng)}, rng, true, 1e-3f, 5e-2);
  }
  SUBCASE("batchnorm (training statistics)") {
    BatchNorm2d bn(3);
    bn.gamma.value = random_tensor({3}, rng);
    bn.beta.value = random_tensor({3}, rng);
    gradcheck_layer(bn, {random_tensor({4, 3, 3, 2}, rng)}, rng);
  }
  SUBCASE("relu") {
    ReLU relu;
    gradcheck_layer(relu, {spread_tensor({2, 3, 4, 4}, rng)}, rng);
  }
  SUBCASE("maxpool 2x2") {
    Pool2d p(true, 2, 2);
    gradcheck_layer(p, {spread_tensor({2, 3, 6, 5}, rng)}, rng);
  }
  SUBCASE("maxpool 3x3 stride 2 (overlapping windows)") {
    Pool2d p(true, 3, 2);
    gradcheck_layer(p, {spread_tensor({1, 2, 7, 7}, rng)}, rng);
  }
  SUBCASE("avgpool 2x2") {
    Pool2d p(false, 2, 2);
    gradcheck_layer(p, {random_tensor({2, 3, 4, 6}, rng)}, rng);
  }
  SUBCASE("global average pool") {
    GlobalAvgPool g;
    gradcheck_layer(g, {random_tensor({2, 3, 3, 5}, rng)}, rng);
  }
  SUBCASE("flatten") {
    Flatten f;
    gradcheck_layer(f, {random_tensor({2, 3, 2, 2}, rng)}, rng);
  }
  SUBCASE("linear") {
    Linear l(7, 4, true);
    l.weight.value = random_tensor({4, 7}, rng, 0.5f);
    l.bias.value = random_tensor({4}, rng);
    gradcheck_layer(l, {random_tensor({3, 7}, rng)}, rng);
  }
  SUBCASE("add") {
    Add a;
    gradcheck_layer(a, {random_tensor({2, 3, 2, 2}, rng), random_tensor({2, 3, 2, 2}, rng)}, rng);
  }
  SUBCASE("add with channel maps and a bias (a compacted residual join)") {
    Add a(5, {0, 2, 3}, {}, true);  // 3 branch channels into stream channels 0, 2, 3; an identity shortcut
    a.bias.value = random_tensor({5}, rng);
    // Twice: the second backward reuses the gradient and scratch tensors of the first.
    for (int rep = 0; rep < 2; ++rep)
      gradcheck_layer(a, {random_tensor({2, 3, 2, 3}, rng), random_tensor({2, 5, 2, 3}, rng)}, rng);
  }
  SUBCASE("conv with a border table") {
    Conv2d c(2, 3, 3, 3, 1, 1, true);
    c.set_border_table({0, 1, 1, 2}, {0, 1, 1, 1, 2});  // (4 x 5) outputs, 3 x 3 classes
    c.weight.value = random_tensor(c.weight.value.shape(), rng, 0.5f);
    c.bias.value = random_tensor({3}, rng);
    c.pos_bias.value = random_tensor({3, 3, 3}, rng);
    gradcheck_layer(c, {random_tensor({2, 2, 4, 5}, rng)}, rng);
  }
}

TEST_CASE("gradcheck: softmax cross-entropy, with and without label smoothing") {
  Rng rng(3);
  for (float smoothing : {0.0f, 0.1f}) {
    Tensor logits = random_tensor({4, 5}, rng);
    Tensor labels = Tensor::from({4}, {0, 3, 4, 1});
    Tensor d({4, 5});
    ops::softmax_cross_entropy(logits, labels, smoothing, &d, nullptr);
    auto loss = [&]() { return double(ops::softmax_cross_entropy(logits, labels, smoothing, nullptr, nullptr)); };
    check_grad("logits", logits, d, loss, 1e-2f, 1e-2);
  }
}

TEST_CASE("gradcheck: a residual graph end to end (accumulation at a shared tensor)") {
  Rng rng(11);
  Model m;
  int x = m.add_input({2, 6, 6});
  int c0 = m.add("stem", std::make_unique<Conv2d>(2, 3, 3, 3, 1, 1, true), {x});
  int b0 = m.add("stem.bn", std::make_unique<BatchNorm2d>(3), {c0});
  // The stem's output feeds both the block and the identity shortcut: its gradient sums two paths.
  int c1 = m.add("block.conv", std::make_unique<Conv2d>(3, 3, 3, 3, 1, 1, false), {b0});
  int b1 = m.add("block.bn", std::make_unique<BatchNorm2d>(3), {c1});
  int add = m.add("block.add", std::make_unique<Add>(), {b1, b0});
  int pool = m.add("pool", std::make_unique<GlobalAvgPool>(), {add});
  m.add("fc", std::make_unique<Linear>(3, 4, true), {pool});
  for (auto& p : m.params()) p.param->value = random_tensor(p.param->value.shape(), rng, 0.5f);
  Tensor input = random_tensor({3, 2, 6, 6}, rng);
  Tensor labels = Tensor::from({3}, {0, 2, 3});

  gradcheck_model(m, input, labels, 1e-2f, 3e-2);
}

// A plain add hands its output gradient to its inputs without copying it, so several nodes'
// gradients share one storage until each is processed. Nothing may write over a shared one:
//   - a ReLU writes its input gradient over its own when no other node holds it ('relu', whose
//     gradient is shared with the pending 's', 'u' and 't'; 'relu_out', whose gradient is the
//     caller's logit gradient);
//   - a sum into an input's gradient ('t' adds into 's', whose gradient 'u' still shares);
//   - 'twice' reads one tensor twice: its gradient is twice the output's.
TEST_CASE("gradcheck: shared gradients through plain adds (nothing written over a shared one)") {
  Rng rng(5);
  Model m;
  int x = m.add_input({2, 5, 5});
  int s = m.add("s", std::make_unique<Conv2d>(2, 3, 3, 3, 1, 1, true), {x});
  int u = m.add("u", std::make_unique<Conv2d>(2, 3, 3, 3, 1, 1, true), {x});
  int v = m.add("v", std::make_unique<Conv2d>(2, 3, 3, 3, 1, 1, true), {x});
  int t = m.add("t", std::make_unique<Conv2d>(3, 3, 3, 3, 1, 1, true), {s});
  int r = m.add("relu", std::make_unique<ReLU>(), {v});
  int a = m.add("a", std::make_unique<Add>(), {s, u});
  int b = m.add("b", std::make_unique<Add>(), {a, t});
  int c = m.add("c", std::make_unique<Add>(), {b, r});
  int twice = m.add("twice", std::make_unique<Add>(), {c, c});
  int pool = m.add("pool", std::make_unique<GlobalAvgPool>(), {twice});
  int fc1 = m.add("fc1", std::make_unique<Linear>(3, 4, true), {pool});
  int r2 = m.add("relu_out", std::make_unique<ReLU>(), {fc1});
  int fc2 = m.add("fc2", std::make_unique<Linear>(3, 4, true), {pool});
  m.add("out", std::make_unique<Add>(), {r2, fc2});
  for (auto& p : m.params()) p.param->value = random_tensor(p.param->value.shape(), rng, 0.5f);
  Tensor input = random_tensor({3, 2, 5, 5}, rng);
  Tensor labels = Tensor::from({3}, {1, 0, 3});

  gradcheck_model(m, input, labels, 1e-3f, 3e-2);
}
