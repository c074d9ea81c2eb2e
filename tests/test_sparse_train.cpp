// Sparse training (kernels/cpu/sparse_train.h, nn/train_execution.h): the sparse forward,
// input gradient and weight gradient of masked conv and linear layers against the dense
// reference kernels, on odd shapes, strides 1 to 3, padding, 1x1 and rectangular kernels,
// masks from 50% to 99.9% sparsity with empty filters and an all-zero mask, batch 1 and more;
// then a few training steps of a small masked model, sparse against dense.
//
// Tolerance: max|got - want| <= 1e-4 * max(1, max|want|) (float sums in another order than the
// reference's double accumulation). The weight gradient at masked positions must be exactly 0
// (what apply_masks_to_grads would leave).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/threading.h"
#include "kernels/cpu/gemm_util.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/sparse_train.h"
#include "kernels/ops.h"
#include "kernels/ref/ref.h"
#include "nn/train_execution.h"
#include "nn/trainer.h"
#include "prune/magnitude.h"
#include "prune/mask.h"
#include "tests/test_util.h"

using namespace dnns;
using dnns::testing::conv;
using dnns::testing::conv_str;
using dnns::testing::check_close;
using dnns::testing::random_mask;
using dnns::testing::randn;

namespace {

// One masked conv: sparse forward, dx and dw against ref's dense kernels on the masked weight.
void check_conv(const Conv2dParams& p, double density, const std::vector<int>& empty, uint64_t seed) {
  Rng rng(seed);
  const int CRS = p.C * p.R * p.S;
  const std::vector<float> mask = random_mask(rng, p.K, CRS, density, empty);
  std::vector<float> w = randn(rng, int64_t(p.K) * CRS), b = randn(rng, p.K);
  for (size_t i = 0; i < w.size(); ++i) w[i] *= mask[i];
  const std::vector<float> x = randn(rng, int64_t(p.N) * p.C * p.H * p.W);
  const std::vector<float> dy = randn(rng, int64_t(p.N) * p.K * p.P() * p.Q());
  const std::string what = conv_str(p) + " density " + std::to_string(density);

  SparseTrainPattern pat = sparse_train_pattern(mask.data(), p.K, p.C, p.R, p.S);
  sparse_train_gather(pat, w.data(), int64_t(w.size()), "test conv");

  std::vector<float> y_ref(dy.size()), y(dy.size());
  ref::conv2d_forward(p, x.data(), w.data(), b.data(), y_ref.data());
  cpu::sparse_conv2d_forward(p, x.data(), pat.w, b.data(), false, y.data());
  check_close(y, y_ref, what + ": forward");

  std::vector<float> dx_ref(x.size()), dx(x.size(), -7.0f);
  ref::conv2d_backward_data(p, dy.data(), w.data(), dx_ref.data());
  cpu::sparse_conv2d_backward_data(p, dy.data(), pat, dx.data());
  check_close(dx, dx_ref, what + ": input gradient");

  std::vector<float> dw_ref(w.size()), db_ref(b.size()), dw(w.size(), -7.0f), db(b.size(), -7.0f);
  ref::conv2d_backward_weights(p, x.data(), dy.data(), dw_ref.data(), db_ref.data());
  cpu::sparse_conv2d_backward_weights(p, x.data(), dy.data(), pat, dw.data(), db.data());
  int nonzero_masked = 0;
  for (size_t i = 0; i < dw.size(); ++i) {
    if (mask[i] == 0.0f && dw[i] != 0.0f) ++nonzero_masked;
    dw_ref[i] *= mask[i];
  }
  INFO(what);
  CHECK(nonzero_masked == 0);
  check_close(dw, dw_ref, what + ": weight gradient");
  check_close(db, db_ref, what + ": bias gradient");
}

}  // namespace

TEST_CASE("sparse conv training kernels match the dense reference") {
  struct Case {
    Conv2dParams p;
    std::vector<int> empty;  // filters with no nonzero
  };
  const std::vector<Case> cases = {
      {conv(1, 3, 7, 9, 5, 3, 3, 1, 1), {}},         // batch 1, odd sizes
      {conv(3, 5, 8, 8, 6, 3, 3, 2, 1), {0, 4}},     // stride 2, padded
      {conv(2, 6, 9, 7, 4, 3, 3, 2, 1), {}},         // stride 2 on odd sizes
      {conv(2, 4, 9, 7, 3, 1, 1, 1, 0), {1}},        // 1x1
      {conv(2, 6, 10, 10, 4, 1, 1, 2, 0), {}},       // 1x1 stride 2 (a ResNet shortcut)
      {conv(2, 3, 6, 11, 4, 3, 5, 1, 2), {}},        // rectangular kernel, pad > (R-1)/2
      {conv(4, 7, 13, 12, 9, 5, 5, 3, 2), {2, 3}},   // 5x5 stride 3
      {conv(1, 2, 5, 5, 3, 3, 3, 1, 0), {}},         // no padding
      {conv(2, 3, 9, 10, 4, 3, 3, 2, 0), {}},        // stride 2, no padding: taps read dy[i - 1]
      {conv(2, 3, 4, 4, 2, 3, 3, 1, 3), {}},         // padding larger than the kernel
  };
  // On every instruction-set path this CPU has (the weight gradient's dot kernels are built per ISA).
  const testing::ScopedKernelChoice restore;
  for (int isa = (int)cpu::best_cpu_isa(); isa >= 0; --isa) {
    cpu::set_cpu_isa((cpu::Isa)isa);
    INFO("isa " << std::string(cpu::isa_name((cpu::Isa)isa)));
    uint64_t seed = 1;
    for (const Case& c : cases)
      for (double density : {0.5, 0.2, 0.05, 0.001}) check_conv(c.p, density, c.empty, seed++);
    // every filter empty: forward is the bias, both gradients 0
    check_conv(conv(2, 4, 6, 6, 3, 3, 3, 1, 1), 0.5, {0, 1, 2}, 99);
  }
}

TEST_CASE("sparse conv weight gradient: bit-identical at a fixed thread count, close across counts") {
  const Conv2dParams p = conv(5, 6, 9, 9, 7, 3, 3, 1, 1);
  Rng rng(3);
  const std::vector<float> mask = random_mask(rng, p.K, p.C * 9, 0.2, {});
  const std::vector<float> x = randn(rng, int64_t(p.N) * p.C * 81), dy = randn(rng, int64_t(p.N) * p.K * 81);
  SparseTrainPattern pat = sparse_train_pattern(mask.data(), p.K, p.C, 3, 3);
  std::vector<float> dw1(mask.size()), dw2(mask.size());
  const testing::ScopedThreads threads(1);
  cpu::sparse_conv2d_backward_weights(p, x.data(), dy.data(), pat, dw1.data(), nullptr);
  set_num_threads(3);
  cpu::sparse_conv2d_backward_weights(p, x.data(), dy.data(), pat, dw2.data(), nullptr);
  std::vector<float> dw3(mask.size());
  cpu::sparse_conv2d_backward_weights(p, x.data(), dy.data(), pat, dw3.data(), nullptr);
  check_close(dw2, dw1, "1 thread against 3");
  CHECK(dw3 == dw2);  // the image parts are summed in a fixed order, whichever thread ran them
}

// The backward kernels work in the thread's scratch (kernels/cpu/gemm_util.h thread_scratch),
// which holds whatever the last op left there: every float they read must be written by them
// first (the zero padding, the planes' slack, the grid columns past Q). Stale NaNs left in
// both slots must not change a bit of the result (1 thread: the scratch poisoned is the one
// the tasks take).
TEST_CASE("sparse conv backward kernels do not read what other ops left in the scratch") {
  const testing::ScopedThreads threads(1);
  Rng rng(17);
  for (const Conv2dParams& p : {conv(2, 5, 9, 11, 6, 3, 3, 1, 1), conv(2, 5, 10, 12, 6, 3, 3, 2, 1),
                                conv(2, 6, 8, 8, 7, 1, 1, 2, 0)}) {
    INFO(conv_str(p));
    const std::vector<float> mask = random_mask(rng, p.K, p.C * p.R * p.S, 0.3, {});
    const SparseTrainPattern pat = sparse_train_pattern(mask.data(), p.K, p.C, p.R, p.S);
    const std::vector<float> x = randn(rng, int64_t(p.N) * p.C * p.H * p.W),
                             dy = randn(rng, int64_t(p.N) * p.K * p.P() * p.Q());
    std::vector<float> dw(mask.size()), dx(x.size()), dw_stale(mask.size()), dx_stale(x.size());
    cpu::sparse_conv2d_backward_weights(p, x.data(), dy.data(), pat, dw.data(), nullptr);
    cpu::sparse_conv2d_backward_data(p, dy.data(), pat, dx.data());
    for (int slot : {0, 1}) {
      float* junk = cpu::thread_scratch<float>(slot, size_t(1) << 16);
      std::fill(junk, junk + (size_t(1) << 16), std::numeric_limits<float>::quiet_NaN());
    }
    cpu::sparse_conv2d_backward_weights(p, x.data(), dy.data(), pat, dw_stale.data(), nullptr);
    for (int slot : {0, 1}) {
      float* junk = cpu::thread_scratch<float>(slot, size_t(1) << 16);
      std::fill(junk, junk + (size_t(1) << 16), std::numeric_limits<float>::quiet_NaN());
    }
    cpu::sparse_conv2d_backward_data(p, dy.data(), pat, dx_stale.data());
    CHECK(dw_stale == dw);
    CHECK(dx_stale == dx);
  }
}

TEST_CASE("sparse linear training kernels match the dense reference") {
  for (int N : {1, 3, 17})
    for (double density : {0.5, 0.05}) {
      const int I = 23, O = 11;
      Rng rng(uint64_t(N * 100 + density * 10));
      const std::vector<float> mask = random_mask(rng, O, I, density, {4});
      std::vector<float> w = randn(rng, int64_t(O) * I), b = randn(rng, O);
      for (size_t i = 0; i < w.size(); ++i) w[i] *= mask[i];
      const std::vector<float> x = randn(rng, int64_t(N) * I), dy = randn(rng, int64_t(N) * O);
      SparseTrainPattern pat = sparse_train_pattern(mask.data(), O, I, 1, 1);
      sparse_train_gather(pat, w.data(), int64_t(w.size()), "test linear");
      const std::string what = "linear N=" + std::to_string(N) + " density " + std::to_string(density);

      std::vector<float> y_ref(static_cast<size_t>(N) * O), y(y_ref.size());
      ref::linear_forward(N, I, O, x.data(), w.data(), b.data(), y_ref.data());
      cpu::sparse_linear_forward(N, x.data(), pat.w, b.data(), false, y.data());
      check_close(y, y_ref, what + ": forward");

      std::vector<float> dx_ref(x.size()), dx(x.size());
      ref::linear_backward_data(N, I, O, dy.data(), w.data(), dx_ref.data());
      cpu::sparse_linear_forward(N, dy.data(), pat.wt, nullptr, false, dx.data());
      check_close(dx, dx_ref, what + ": input gradient");

      std::vector<float> dw_ref(w.size()), db_ref(static_cast<size_t>(O)), dw(w.size(), -7.0f),
          db(static_cast<size_t>(O), -7.0f);
      ref::linear_backward_weights(N, I, O, x.data(), dy.data(), dw_ref.data(), db_ref.data());
      cpu::sparse_linear_backward_weights(N, x.data(), dy.data(), pat, dw.data(), db.data());
      int nonzero_masked = 0;
      for (size_t i = 0; i < dw.size(); ++i) {
        if (mask[i] == 0.0f && dw[i] != 0.0f) ++nonzero_masked;
        dw_ref[i] *= mask[i];
      }
      CHECK(nonzero_masked == 0);
      check_close(dw, dw_ref, what + ": weight gradient");
      check_close(db, db_ref, what + ": bias gradient");
    }
}

TEST_CASE("the gather refuses a weight that left its mask pattern") {
  const std::vector<float> mask = {1, 0, 0, 1, 0, 1};  // (2, 3)
  SparseTrainPattern pat = sparse_train_pattern(mask.data(), 2, 3, 1, 1);
  CHECK(pat.w.nnz() == 3);
  std::vector<float> w = {2, 0, 0, -1, 0, 4};
  sparse_train_gather(pat, w.data(), 6, "fc");
  CHECK(pat.w.value == std::vector<float>{2, -1, 4});
  CHECK(pat.wt.value == std::vector<float>{2, -1, 4});  // wt: (3, 2) rows 0, 0, 2 hold (k=0), (k=1), (k=1)
  w[1] = 0.5f;  // outside the pattern
  CHECK_THROWS_WITH(sparse_train_gather(pat, w.data(), 6, "fc"),
                    doctest::Contains("fc: weight [0, column 1] lies outside the sparse-training mask pattern"));
  w[1] = 0.0f;
  CHECK_THROWS_WITH(sparse_train_gather(pat, w.data(), 4, "fc"), doctest::Contains("holds 4 values"));
  w[5] = NAN;
  CHECK_THROWS_WITH(sparse_train_gather(pat, w.data(), 6, "fc"), doctest::Contains("is not finite"));
}

TEST_CASE("the sparse-training ops refuse a pattern of another shape and the reference backend") {
  const Conv2dParams p = conv(2, 3, 6, 6, 4, 3, 3, 1, 1);
  Rng rng(21);
  const std::vector<float> mask = random_mask(rng, p.K, p.C * 9, 0.3);
  SparseTrainPattern pat = sparse_train_pattern(mask.data(), p.K, p.C, 3, 3);
  Tensor x({p.N, p.C, p.H, p.W}), dy({p.N, p.K, p.P(), p.Q()}), dw({p.K, p.C, 3, 3}), db({p.K}), dx(x.shape());
  // a pattern made for another weight: the op names itself and both shapes
  Conv2dParams q = p;
  q.C = 5;
  Tensor x5({q.N, q.C, q.H, q.W}), dw5({q.K, q.C, 3, 3});
  CHECK_THROWS_WITH(ops::sparse_conv2d_backward_weights(q, x5, dy, pat, dw5, db),
                    doctest::Contains("sparse_conv2d_backward_weights: the sparse-training pattern is of a (4, 3, 3, 3) "
                                      "weight, the layer's is (4, 5, 3, 3)"));
  CHECK_THROWS_WITH(ops::sparse_conv2d_backward_data(q, dy, pat, x5),
                    doctest::Contains("sparse_conv2d_backward_data: the sparse-training pattern is of a"));
  Tensor lx({2, 7}), ldy({2, 4}), ldw({4, 7}), lb({4});
  CHECK_THROWS_WITH(ops::sparse_linear_backward_weights(lx, ldy, pat, ldw, lb),
                    doctest::Contains("sparse_linear_backward_weights: the sparse-training pattern is of a"));
  // a weight-gradient tensor of the wrong shape
  Tensor dw_bad({p.K, p.C, 3, 1});
  CHECK_THROWS_WITH(ops::sparse_conv2d_backward_weights(p, x, dy, pat, dw_bad, db),
                    doctest::Contains("sparse_conv2d_backward_weights weight gradient"));
  ops::sparse_conv2d_backward_weights(p, x, dy, pat, dw, db);  // the right shapes pass

  // Under the reference backend the ops refuse (they have no reference version) and the
  // plan trains every layer dense, so a training run never reaches them there.
  struct Restore {
    ~Restore() { set_cpu_backend(CpuBackend::Optimized); }
  } restore;
  set_cpu_backend(CpuBackend::Reference);
  CHECK_THROWS_WITH(ops::sparse_conv2d_backward_weights(p, x, dy, pat, dw, db),
                    doctest::Contains("sparse_conv2d_backward_weights: no reference version"));
  CHECK_THROWS_WITH(ops::sparse_conv2d_backward_data(p, dy, pat, dx), doctest::Contains("no reference version"));
  Model m = dnns::testing::every_kind_model();
  dnns::testing::random_masks(m, rng, 0.0f, 0.1f);
  for (const TrainLayerExecution& e : plan_training_execution(m, Execution::Sparse)) {
    CAPTURE(e.node);
    CHECK(!e.sparse);
  }
  set_cpu_backend(CpuBackend::Optimized);
  int planned_sparse = 0;
  for (const TrainLayerExecution& e : plan_training_execution(m, Execution::Sparse)) planned_sparse += e.sparse;
  CHECK(planned_sparse == 3);  // c1, c2, fc: the same model does train sparse under the optimized backend

  // a mask of another shape than its weight is refused by name
  m.masks["c2.weight"] = Tensor::full({4, 6, 3, 1}, 1.0f);
  CHECK_THROWS_WITH(plan_training_execution(m, Execution::Auto),
                    doctest::Contains("plan_training_execution: the mask of 'c2.weight' has shape"));
}

namespace {

// conv 3x3 -> bn -> relu -> conv 3x3 stride 2 -> bn -> relu -> conv 1x1 (bias) -> relu -> gap -> fc
Model masked_net(uint64_t seed) {
  Model m;
  int x = m.add_input({3, 8, 8});
  x = m.add("c1", std::make_unique<Conv2d>(3, 8, 3, 3, 1, 1, false), {x});
  x = m.add("bn1", std::make_unique<BatchNorm2d>(8), {x});
  x = m.add("r1", std::make_unique<ReLU>(), {x});
  x = m.add("c2", std::make_unique<Conv2d>(8, 12, 3, 3, 2, 1, false), {x});
  x = m.add("bn2", std::make_unique<BatchNorm2d>(12), {x});
  x = m.add("r2", std::make_unique<ReLU>(), {x});
  x = m.add("c3", std::make_unique<Conv2d>(12, 12, 1, 1, 1, 0, true), {x});
  x = m.add("r3", std::make_unique<ReLU>(), {x});
  x = m.add("gap", std::make_unique<GlobalAvgPool>(), {x});
  m.add("fc", std::make_unique<Linear>(12, 4, true), {x});
  Rng rng(seed);
  init_model(m, rng);
  dnns::testing::random_masks(m, rng, 0.1f, 0.25f);
  return m;
}

}  // namespace

TEST_CASE("a masked model trains the same sparse as dense") {
  Model dense = masked_net(7);
  Model sparse = dense.clone();
  TrainConfig cfg;
  cfg.sgd = {0.05f, 0.9f, 1e-4f, false};
  cfg.schedule.base_lr = 0.05f;
  cfg.train_execution = Execution::Dense;
  Trainer td(dense, cfg);
  cfg.train_execution = Execution::Sparse;
  Trainer ts(sparse, cfg);
  dnns::testing::QuadrantData a(96, 16, 1), b(96, 16, 1);  // 6 steps
  const EpochStats sd = td.train_epoch(a);
  ops::take_profile();
  ops::set_profiling(true);
  const EpochStats ss = ts.train_epoch(b);
  ops::set_profiling(false);
  std::map<std::string, int64_t> calls;
  for (const ops::OpTime& t : ops::take_profile()) calls[t.op] = t.calls;
  CHECK(sd.steps == 6);
  // every step ran the sparse kernels (c1 needs no input gradient) and no dense conv gradient
  CHECK(calls["sparse_conv2d_backward_weights"] == 3 * 6);
  CHECK(calls["sparse_conv2d_backward_data"] == 2 * 6);
  CHECK(calls["sparse_linear_backward_weights"] == 6);
  CHECK(calls["sparse_conv2d_forward"] == 3 * 6);
  CHECK(calls.count("conv2d_backward_weights") == 0);
  CHECK(std::fabs(sd.loss - ss.loss) <= 1e-4 * std::max(1.0, std::fabs(sd.loss)));
  // the sparse model really trained sparse, every masked layer
  int sparse_layers = 0;
  for (Node& n : sparse.nodes()) {
    if (auto* c = dynamic_cast<Conv2d*>(n.layer.get())) sparse_layers += c->sparse_train != nullptr;
    if (auto* l = dynamic_cast<Linear*>(n.layer.get())) sparse_layers += l->sparse_train != nullptr;
  }
  CHECK(sparse_layers == 4);
  auto sd_state = dense.state(), ss_state = sparse.state();
  REQUIRE(sd_state.size() == ss_state.size());
  for (size_t i = 0; i < sd_state.size(); ++i) {
    const std::vector<float> want = sd_state[i].second->to_vector(), got = ss_state[i].second->to_vector();
    check_close(got, want, "parameter " + sd_state[i].first);
  }
  // the weights moved (the comparison is not of two untouched copies)
  const std::vector<float> w0 = masked_net(7).state()[0].second->to_vector();
  CHECK(w0 != ss_state[0].second->to_vector());
  // masked weights stayed 0 on the sparse path
  for (auto& [name, mask] : sparse.masks) {
    Tensor* t = nullptr;
    for (auto& [n2, t2] : ss_state)
      if (n2 == name) t = t2;
    REQUIRE(t);
    int stray = 0;
    for (int64_t i = 0; i < mask.numel(); ++i) stray += mask[i] == 0.0f && (*t)[i] != 0.0f;
    CHECK(stray == 0);
  }
}

TEST_CASE("the training plan: auto by density, dense resets, sparse needs a mask") {
  Model m = masked_net(3);
  // c1 keeps about 25% (auto: sparse); c2 all (auto: dense); c3 no mask at all
  m.masks["c2.weight"] = Tensor::full(m.masks["c2.weight"].shape(), 1.0f);
  m.masks.erase("c3.weight");
  std::vector<TrainLayerExecution> plan = plan_training_execution(m, Execution::Auto);
  REQUIRE(plan.size() == 4);
  CHECK(plan[0].node == "c1");
  CHECK(plan[0].density < kSparseTrainDensity);
  CHECK(plan[0].sparse);
  CHECK(plan[1].density == 1.0);
  CHECK(!plan[1].sparse);
  CHECK(!plan[2].sparse);
  CHECK(plan[3].sparse);  // fc: random_masks keeps ~25% of it
  CHECK(training_plan_summary(plan).find("2 of 4") == 0);
  plan = plan_training_execution(m, Execution::Sparse);
  CHECK(plan[1].sparse);    // forced, though all ones
  CHECK(!plan[2].sparse);   // nothing to skip without a mask
  plan = plan_training_execution(m, Execution::Dense);
  for (Node& n : m.nodes())
    if (auto* c = dynamic_cast<Conv2d*>(n.layer.get())) CHECK(c->sparse_train == nullptr);
  CHECK(training_plan_summary(plan) == "all 4 conv/linear layers train dense");
  CHECK_THROWS_WITH(parse_execution("fast", "--train-execution"), doctest::Contains("--train-execution"));
}

TEST_CASE("ResNet-20 with an IMP-like 5% mask: three steps sparse equal three steps dense") {
  Model dense = build_model("resnet20");
  Rng rng(11);
  init_model(dense, rng);
  set_masks(dense, imp_like_masks(dense, 0.05, rng));
  Model sparse = dense.clone();
  std::vector<TrainLayerExecution> plan = plan_training_execution(sparse, Execution::Sparse);
  CHECK(std::count_if(plan.begin(), plan.end(), [](const TrainLayerExecution& e) { return e.sparse; }) == 22);
  Tensor x = dnns::testing::random_images(4, dense.input_shape(), rng), labels({4});
  for (int i = 0; i < 4; ++i) labels[i] = float(i % 10);
  Sgd sd({0.05f, 0.9f, 1e-4f, false}), ss({0.05f, 0.9f, 1e-4f, false});
  for (int step = 0; step < 3; ++step)
    for (auto [m, opt] : {std::pair<Model*, Sgd*>{&dense, &sd}, {&sparse, &ss}}) {
      Tensor y = m->forward(x, true), d(y.shape());
      ops::softmax_cross_entropy(y, labels, 0.0f, &d, nullptr);
      m->backward(d);
      opt->step(*m, 0.05f);
    }
  auto a = dense.state(), b = sparse.state();
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i)
    check_close(b[i].second->to_vector(), a[i].second->to_vector(), "resnet20 " + a[i].first);
}
