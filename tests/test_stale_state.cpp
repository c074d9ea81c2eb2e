// Stale state: what the framework keeps between calls (the eval execution plans and their sparse
// forms, released dense weights, sparse-training patterns, the host tensor cache, per-thread
// scratch, the ISA, the backend, the thread count) against sequences of calls that change what
// it was made from. Each case runs such a sequence and checks the outputs against a fresh copy of
// the model or the reference backend: bit for bit where the same kernels run in the same order,
// within float summation order (check_close: 1e-4 of the largest value) where they may not.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/host_cache.h"
#include "core/rng.h"
#include "core/tensor.h"
#include "core/threading.h"
#include "kernels/cpu/isa.h"
#include "kernels/ops.h"
#include "nn/execution.h"
#include "nn/optim.h"
#include "nn/train_execution.h"
#include "nn/trainer.h"
#include "prune/compact.h"
#include "prune/infer.h"
#include "prune/mask.h"
#include "prune/shifter.h"
#include "tests/test_util.h"

using namespace dnns;
using dnns::testing::check_close;
using dnns::testing::same_bits;

namespace {

// A masked residual net on 3x8x8 images: conv -> bn -> relu chains (eval folding), a plain
// residual add with a ReLU after it, a strided conv, a 1x1 conv with bias, global pooling and a
// linear layer. Masks keep about 30% of each weight, some filters dead.
Model small_net(uint64_t seed) {
  Model m;
  int x = m.add_input({3, 8, 8});
  int c1 = m.add("c1", std::make_unique<Conv2d>(3, 8, 3, 3, 1, 1, false), {x});
  int b1 = m.add("bn1", std::make_unique<BatchNorm2d>(8), {c1});
  int r1 = m.add("r1", std::make_unique<ReLU>(), {b1});
  int c2 = m.add("c2", std::make_unique<Conv2d>(8, 8, 3, 3, 1, 1, false), {r1});
  int b2 = m.add("bn2", std::make_unique<BatchNorm2d>(8), {c2});
  int sum = m.add("sum", std::make_unique<Add>(), {r1, b2});
  int r2 = m.add("r2", std::make_unique<ReLU>(), {sum});
  int c3 = m.add("c3", std::make_unique<Conv2d>(8, 12, 3, 3, 2, 1, false), {r2});
  int b3 = m.add("bn3", std::make_unique<BatchNorm2d>(12), {c3});
  int r3 = m.add("r3", std::make_unique<ReLU>(), {b3});
  int c4 = m.add("c4", std::make_unique<Conv2d>(12, 12, 1, 1, 1, 0, true), {r3});
  int r4 = m.add("r4", std::make_unique<ReLU>(), {c4});
  int gap = m.add("gap", std::make_unique<GlobalAvgPool>(), {r4});
  m.add("fc", std::make_unique<Linear>(12, 4, true), {gap});
  Rng rng(seed);
  init_model(m, rng);
  testing::randomize_batchnorm(m, rng);
  testing::random_masks(m, rng, 0.15f, 0.3f);
  return m;
}

Tensor labels_for(int64_t n) {
  Tensor y({n});
  for (int64_t i = 0; i < n; ++i) y[i] = float(i % 4);
  return y;
}

// One SGD step of m on (x, labels).
void train_step(Model& m, Sgd& opt, const Tensor& x) {
  Tensor y = m.forward(x, true), d = Tensor::uninit(y.shape());
  ops::softmax_cross_entropy(y, labels_for(x.dim(0)), 0.0f, &d, nullptr);
  m.backward(d);
  opt.step(m, 0.05f);
}
SgdParams sgd_params() { return {0.05f, 0.9f, 1e-3f, false}; }

void check_close_t(const Tensor& got, const Tensor& want, const std::string& what) {
  check_close(got.to_vector(), want.to_vector(), what);
}

// Equal value for value (a zero of either sign equals the other: a weight rebuilt from its
// sparse form comes back +0.0), no NaN.
bool same_values(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return false;
  const std::vector<float> x = a.to_vector(), y = b.to_vector();
  for (size_t i = 0; i < x.size(); ++i)
    if (!(x[i] == y[i])) return false;
  return true;
}

// Every parameter and buffer of a and b, value for value.
void check_same_state(Model& a, Model& b, const std::string& what) {
  auto sa = a.state_for_reading(), sb = b.state_for_reading();
  REQUIRE(sa.size() == sb.size());
  for (size_t i = 0; i < sa.size(); ++i) {
    INFO(what << ": " << sa[i].first);
    CHECK(sa[i].first == sb[i].first);
    CHECK(same_values(sa[i].second, sb[i].second));
  }
}

struct ScopedBackend {
  explicit ScopedBackend(CpuBackend b) : saved(cpu_backend()) { set_cpu_backend(b); }
  ~ScopedBackend() { set_cpu_backend(saved); }
  const CpuBackend saved;
};

// The logits of a plain copy of m (dense plan, weights rebuilt) under the reference backend.
Tensor reference_logits(const Model& m, const Tensor& x) {
  const ScopedBackend ref(CpuBackend::Reference);
  Model c = m.clone();
  plan_execution(c, Execution::Dense, {x.dim(0)});
  return c.forward(x, false);
}

template <class L>
L& layer_of(Model& m, const std::string& name) {
  const int i = m.find(name);
  REQUIRE(i > 0);
  auto* l = dynamic_cast<L*>(m.nodes()[size_t(i)].layer.get());
  REQUIRE(l != nullptr);
  return *l;
}

}  // namespace

TEST_CASE("dirty blocks from the host tensor cache change no result") {
  // A freed tensor's block goes back to the cache and comes out again, unwritten, for the next
  // Tensor::uninit of its size. Every pass below is run once, then again after every cached block
  // was overwritten with NaNs: a kernel or layer that reads what it did not write shows.
  const testing::ScopedThreads threads(2);
  Rng rng(3);
  const Model base = small_net(1);
  Model resnet = build_model("resnet20", 4, {3, 8, 8});
  init_model(resnet, rng);
  testing::randomize_batchnorm(resnet, rng);
  testing::random_masks(resnet, rng, 0.3f, 0.2f);
  const Tensor x = testing::random_images(5, base.input_shape(), rng);

  auto run = [&]() {
    std::vector<std::pair<std::string, Tensor>> out;
    const Model* models[] = {&base, &resnet};
    for (const Model* src : models) {
      const std::string tag = src == &base ? "small net " : "resnet20 ";
      Model a = src->clone();
      out.push_back({tag + "eval forward", a.forward(x, false)});
      out.push_back({tag + "infer", infer(a, x)});
      Sgd opt(sgd_params());
      train_step(a, opt, x);
      for (auto& p : a.params()) out.push_back({tag + "gradient of " + p.name, p.param->grad.clone()});
      out.push_back({tag + "eval after a step", a.forward(x, false)});
      plan_training_execution(a, Execution::Sparse);
      train_step(a, opt, x);
      for (auto& p : a.params()) out.push_back({tag + "sparse-trained gradient of " + p.name, p.param->grad.clone()});
      plan_execution(a, Execution::Sparse, {5});
      out.push_back({tag + "sparse eval", infer(a, x)});
      a.release_dense_weights();
      out.push_back({tag + "lean eval", infer(a, x)});
      plan_execution(a, Execution::Dense, {5});
      Model c = compact_model(a);
      out.push_back({tag + "compact eval", infer(c, x)});
      plan_execution(c, Execution::Sparse, {5});
      out.push_back({tag + "compact sparse eval", infer(c, x)});
      out.push_back({tag + "compact eval, batch 1", infer(c, testing::random_images(1, c.input_shape(), rng))});
    }
    return out;
  };
  Rng keep = rng;
  const auto first = run();
  fill_host_cache(0xFF);
  REQUIRE(host_cache_bytes() > 0);
  rng = keep;
  const auto second = run();
  REQUIRE(first.size() == second.size());
  for (size_t i = 0; i < first.size(); ++i) {
    INFO(first[i].first);
    CHECK(same_bits(first[i].second, second[i].second));
  }
}

TEST_CASE("training after a sparse plan or a release: the same steps as a plain copy") {
  // With masks, the optimizer's apply_masks drops the plans; without (a compact model), the
  // backward pass must.
  const testing::ScopedThreads threads(2);
  Rng rng(5);
  for (bool masked : {true, false}) {
    INFO((masked ? "masked model" : "compact model, no masks"));
    Model a = small_net(2);
    if (!masked) {
      a = compact_model(a);
      a.masks.clear();  // as the portfolio's variants: the compact weights hold the zeros
    }
    Model b = a.clone();
    REQUIRE(a.masks.empty() != masked);
    const Tensor x = testing::random_images(4, a.input_shape(), rng);
    plan_execution(a, Execution::Sparse, {1, 4});
    const Tensor planned = infer(a, x);
    CHECK(a.release_dense_weights() > 0);
    CHECK(same_bits(infer(a, x), planned));
    Sgd oa(sgd_params()), ob(sgd_params());
    for (int step = 0; step < 2; ++step) {
      train_step(a, oa, x);
      train_step(b, ob, x);
      check_same_state(a, b, "after step " + std::to_string(step));
    }
    CHECK(a.released_weights() == 0);
    // the plan went with the weights it described: the eval forward is the plain copy's
    CHECK(same_values(a.forward(x, false), b.forward(x, false)));
    CHECK(same_values(infer(a, x), infer(b, x)));
    // planned, released and saved again: the trained weights, not the ones first planned
    plan_execution(a, Execution::Sparse, {1, 4});
    a.release_dense_weights();
    check_close_t(infer(a, x), infer(b, x), "re-planned after training");
    testing::TempDir dir("stale");
    a.save(dir / "a.dnns");
    Model back = Model::load(dir / "a.dnns");
    check_same_state(back, b, "saved after training");
    Model unpacked = unpack_model(pack_model(a));
    check_close_t(infer(unpacked, x), infer(b, x), "packed after training");
  }
}

TEST_CASE("a clone trained or re-planned leaves the original's plan and outputs alone") {
  const testing::ScopedThreads threads(2);
  Rng rng(6);
  Model a = small_net(3);
  const Tensor x = testing::random_images(3, a.input_shape(), rng);
  plan_execution(a, Execution::Sparse, {3});
  a.release_dense_weights();
  const Tensor before = infer(a, x);
  Model c = a.clone();  // shares the plan objects
  Sgd opt(sgd_params());
  train_step(c, opt, x);
  plan_execution(c, Execution::Dense, {3});
  CHECK(same_bits(infer(a, x), before));
  CHECK(a.released_weights() > 0);
  Model fresh = c.clone();
  CHECK(same_bits(infer(c, x), infer(fresh, x)));
  check_close_t(infer(c, x), reference_logits(c, x), "the trained clone against the reference");
  check_close_t(before, reference_logits(a, x), "the original against the reference");
}

TEST_CASE("batch size and thread count changing between calls: same answers, bit for bit at one count") {
  Rng rng(7);
  Model m = compact_model(small_net(4));
  Model every = testing::every_kind_model();
  testing::random_masks(every, rng, 0.0f, 0.3f);
  std::map<int64_t, Tensor> xs, want, want_every;
  for (int64_t n : {1, 2, 4, 5, 9}) {
    xs[n] = testing::random_images(n, m.input_shape(), rng);
    want[n] = reference_logits(m, xs[n]);
  }
  std::map<int64_t, Tensor> xe;
  for (int64_t n : {1, 3, 8}) {
    xe[n] = testing::random_images(n, every.input_shape(), rng);
    want_every[n] = reference_logits(every, xe[n]);
  }
  {
    // m: alternate layers sparse at batch 1 and dense at 8, or the other way round; the other
    // batches follow the nearest planned one (1 and 2: batch 1's choice; 4, 5 and 9: batch 8's).
    // every: sparse everywhere, its dense weights released.
    const testing::ScopedThreads threads(2);
    plan_execution(m, Execution::Sparse, {1});
    std::vector<SavedLayerPlan> mixed = save_execution_plan(m);
    REQUIRE(mixed.size() >= 4);
    for (size_t i = 0; i < mixed.size(); ++i) {
      mixed[i].always = false;
      mixed[i].choices = {{1, i % 2 == 0, 1, 1}, {8, i % 2 == 1, 1, 1}};
    }
    restore_execution_plan(m, mixed);
    plan_execution(every, Execution::Sparse, {3});
    REQUIRE(every.release_dense_weights() > 0);
  }
  std::map<std::pair<int, int64_t>, Tensor> seen;  // (threads, batch) -> the first answer
  for (int round = 0; round < 2; ++round)
    for (int t : {3, 1, 2}) {
      const testing::ScopedThreads threads(t);
      for (auto& [n, x] : xs) {
        const Tensor y = infer(m, x);
        INFO("threads " << t << " batch " << n << " round " << round);
        check_close_t(y, want[n], "compact net against the reference");
        CHECK(same_bits(m.forward(x, false), y));
        auto [it, fresh] = seen.insert({{t, n}, y});
        if (!fresh) CHECK(same_bits(y, it->second));
      }
      for (auto& [n, x] : xe) {
        INFO("every-kind model, threads " << t << " batch " << n);
        check_close_t(infer(every, x), want_every[n], "every-kind model against the reference");
      }
    }

  // Training: the weight gradients partition the batch by the thread count; at one count the
  // step is the same bits whatever ran in between, dense and sparse.
  const Model base = small_net(5);
  const Tensor x = testing::random_images(6, base.input_shape(), rng);
  for (Execution e : {Execution::Dense, Execution::Sparse}) {
    std::map<int, Model> trained;
    for (int t : {2, 1, 3, 2, 1}) {
      const testing::ScopedThreads threads(t);
      Model a = base.clone();
      plan_training_execution(a, e);
      Sgd opt(sgd_params());
      train_step(a, opt, x);
      train_step(a, opt, testing::random_images(3, base.input_shape(), rng));  // another batch size between
      Model b = base.clone();
      plan_training_execution(b, e);
      Sgd ob(sgd_params());
      train_step(b, ob, x);
      auto it = trained.find(t);
      if (it == trained.end()) {
        trained.emplace(t, std::move(b));
        continue;
      }
      auto sa = it->second.state_for_reading(), sb = b.state_for_reading();
      for (size_t i = 0; i < sa.size(); ++i) {
        INFO(execution_name(e) << " training at " << t << " threads: " << sa[i].first);
        CHECK(same_bits(sa[i].second, sb[i].second));
      }
    }
  }
}

TEST_CASE("switching the ISA after planning: every path gives the reference's answers") {
  const testing::ScopedKernelChoice keep;
  const testing::ScopedThreads threads(2);
  Rng rng(8);
  Model m = compact_model(small_net(6));
  const Tensor x = testing::random_images(4, m.input_shape(), rng);
  const Tensor want = reference_logits(m, x);
  plan_execution(m, Execution::Sparse, {4});
  Model lean = m.clone();
  lean.release_dense_weights();
  const Model base = small_net(7);
  Model ref_trained = base.clone();
  {
    const ScopedBackend ref(CpuBackend::Reference);
    Sgd opt(sgd_params());
    train_step(ref_trained, opt, x);
  }
  Model sparse_planned = base.clone();
  plan_training_execution(sparse_planned, Execution::Sparse);  // at the best ISA
  for (int isa = 0; isa <= int(cpu::best_cpu_isa()); ++isa) {
    cpu::set_cpu_isa(cpu::Isa(isa));
    INFO("isa " << cpu::isa_name(cpu::Isa(isa)));
    check_close_t(infer(m, x), want, "planned model");
    check_close_t(infer(lean, x), want, "lean model");
    Model t = sparse_planned.clone();
    Sgd opt(sgd_params());
    train_step(t, opt, x);
    auto got = t.state_for_reading(), ref = ref_trained.state_for_reading();
    for (size_t i = 0; i < got.size(); ++i) check_close_t(got[i].second, ref[i].second, "sparse-trained " + got[i].first);
  }
}

TEST_CASE("a sparse-training plan followed by the reference backend trains as the reference") {
  // The reference backend is the ground truth the optimized kernels are checked by; the sparse
  // training kernels have no reference version, so a layer planned sparse trains dense there.
  const testing::ScopedThreads threads(2);
  Rng rng(9);
  Model a = small_net(8), b = a.clone();
  const Tensor x = testing::random_images(4, a.input_shape(), rng);
  const std::vector<TrainLayerExecution> plan = plan_training_execution(a, Execution::Sparse);
  REQUIRE(layer_of<Conv2d>(a, "c2").sparse_train != nullptr);
  const ScopedBackend ref(CpuBackend::Reference);
  Sgd oa(sgd_params()), ob(sgd_params());
  CHECK_NOTHROW(train_step(a, oa, x));
  train_step(b, ob, x);
  check_same_state(a, b, "planned sparse, trained under the reference backend");
}

TEST_CASE("masks replaced after the sparse-training plan: the new masks are trained") {
  // plan_training_execution made each layer's pattern from the masks of the time. When a mask is
  // replaced by a larger one (or removed), the weights it now lets train are still exactly 0, so
  // they pass the gather's check: the pattern must follow the new mask, not keep their
  // gradients at 0.
  const testing::ScopedThreads threads(2);
  Rng rng(10);
  Model a = small_net(9);
  const Tensor x = testing::random_images(4, a.input_shape(), rng);
  plan_training_execution(a, Execution::Sparse);
  REQUIRE(layer_of<Conv2d>(a, "c2").sparse_train != nullptr);
  REQUIRE(layer_of<Linear>(a, "fc").sparse_train != nullptr);
  MaskSet masks = current_masks(a);
  Tensor grown = masks.at("c2.weight").clone();
  for (int64_t i = 0; i < grown.numel(); i += 2) grown[i] = 1.0f;  // half the pruned weights back
  masks["c2.weight"] = grown;
  set_masks(a, masks);
  a.masks.erase("fc.weight");  // fc trains unmasked now
  Model b = a.clone();
  plan_training_execution(b, Execution::Dense);
  Sgd oa(sgd_params()), ob(sgd_params());
  train_step(a, oa, x);
  train_step(b, ob, x);
  auto sa = a.state_for_reading(), sb = b.state_for_reading();
  for (size_t i = 0; i < sa.size(); ++i) check_close_t(sa[i].second, sb[i].second, "after the masks changed: " + sa[i].first);
  // the revived weights did move
  const Tensor& w = layer_of<Conv2d>(a, "c2").weight.value;
  int moved = 0;
  for (int64_t i = 0; i < w.numel(); i += 2) moved += w[i] != 0.0f;
  CHECK(moved > w.numel() / 4);
}

TEST_CASE("a packed variant unpacks with the model's fusion setting and data description") {
  // The shifter's packed residency serves what unpack_model rebuilds: the same eval path as the
  // model packed (a model set to run every node on its own must not come back folding its
  // batchnorms: other bits), and what a caller needs to feed it and label its output.
  const testing::ScopedThreads threads(2);
  Rng rng(11);
  Model m = small_net(10);
  m.set_fusion(false);
  m.data_info.dataset = "quadrants";
  m.data_info.class_names = {"a", "b", "c", "d"};
  m.data_info.channel_order = "RGB";
  m.data_info.mean = {0.1f, 0.2f, 0.3f};
  m.data_info.std = {1.0f, 2.0f, 3.0f};
  const Tensor x = testing::random_images(4, m.input_shape(), rng);
  const Model u = unpack_model(pack_model(m));
  CHECK_FALSE(u.fusion());
  CHECK(u.data_info.dataset == m.data_info.dataset);
  CHECK(u.data_info.class_names == m.data_info.class_names);
  CHECK(u.data_info.channel_order == "RGB");
  CHECK(u.data_info.mean == m.data_info.mean);
  CHECK(u.data_info.std == m.data_info.std);
  CHECK(same_bits(infer(u, x), infer(m, x)));
}

TEST_CASE("a restored training checkpoint keeps the model's fusion setting") {
  // Trainer::restore replaces the model with the checkpoint's (IMP's rewind too): a model set to
  // run every node on its own must go on doing so, or the resumed run computes other bits.
  const testing::ScopedThreads threads(2);
  Rng rng(12);
  Model m = small_net(11);
  m.set_fusion(false);
  TrainConfig cfg;
  cfg.sgd = sgd_params();
  cfg.schedule.base_lr = 0.05f;
  Trainer t(m, cfg);
  testing::QuadrantData data(32, 16, 1);
  t.train_epoch(data);
  const Tensor x = testing::random_images(4, m.input_shape(), rng);
  const Tensor before = m.forward(x, false);
  t.restore(t.checkpoint(), "the checkpoint in memory");
  CHECK_FALSE(m.fusion());
  CHECK(same_bits(m.forward(x, false), before));
}
