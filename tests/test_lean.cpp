// Inference-only models without the dense weights of their always-sparse layers
// (Model::release_dense_weights, nn/model.h): the same outputs bit for bit, the bytes held drop
// by exactly those weights, every operation that needs a dense weight rebuilds it exactly or
// refuses, and the shifter holds its variants this way and counts what it holds.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/threading.h"
#include "nn/execution.h"
#include "nn/train_execution.h"
#include "nn/export/export.h"
#include "nn/models/zoo.h"
#include "prune/compact.h"
#include "prune/infer.h"
#include "prune/shifter.h"
#include "tests/test_util.h"

using namespace dnns;

namespace {

// every_kind_model (convs c1, c2 and linear fc) with about a third of each weight zeroed, one
// zero stored as -0.0 (a rebuilt weight holds +0.0 there), and no masks (an inference model).
Model masked_small_model(Rng& rng) {
  Model m = testing::every_kind_model();
  for (auto& p : m.params())
    if (p.param->prunable)
      for (int64_t i = 0; i < p.param->value.numel(); ++i)
        if (rng.uniform() < 0.35f) p.param->value[i] = 0.0f;
  Tensor& w = dynamic_cast<Conv2d&>(*m.nodes()[size_t(m.find("c1"))].layer).weight.value;
  w[0] = -0.0f;
  return m;
}

// The plan of masked_small_model used below, batches 1 and 4: c1 sparse at both (its dense
// weight can go), c2 sparse at batch 1 only (it must stay), fc sparse at both.
std::vector<SavedLayerPlan> mixed_plan() {
  auto choice = [](int64_t batch, bool sparse) {
    SparseExecution::Choice c;
    c.batch = batch;
    c.sparse = sparse;
    return c;
  };
  return {{"c1", false, {choice(1, true), choice(4, true)}},
          {"c2", false, {choice(1, true), choice(4, false)}},
          {"fc", false, {choice(1, true), choice(4, true)}}};
}

Conv2d& conv_of(Model& m, const std::string& name) { return dynamic_cast<Conv2d&>(*m.nodes()[size_t(m.find(name))].layer); }
Linear& linear_of(Model& m, const std::string& name) { return dynamic_cast<Linear&>(*m.nodes()[size_t(m.find(name))].layer); }

// Every state tensor of a and b has the same name, shape and bytes.
bool same_state(const Model& a, const Model& b) {
  const auto sa = a.state_for_reading(), sb = b.state_for_reading();
  if (sa.size() != sb.size()) return false;
  for (size_t i = 0; i < sa.size(); ++i)
    if (sa[i].first != sb[i].first || !testing::same_bits(sa[i].second, sb[i].second)) return false;
  return true;
}

}  // namespace

TEST_CASE("a lean model computes the full model's logits bit for bit and holds exactly the released bytes less") {
  const testing::ScopedThreads threads(2);
  Rng rng(31);
  Model full = masked_small_model(rng);
  restore_execution_plan(full, mixed_plan());
  Model lean = full.clone();
  // c1 (6, 3, 3, 3) and fc (5, 16) run sparse at every planned batch; c2 does not.
  const int64_t expected = (6 * 3 * 3 * 3 + 5 * 16) * int64_t(sizeof(float));
  CHECK(lean.releasable_weight_bytes() == expected);
  CHECK(lean.release_dense_weights() == expected);
  CHECK(lean.released_weights() == 2);
  CHECK(conv_of(lean, "c1").weight_released());
  CHECK(!conv_of(lean, "c2").weight_released());
  CHECK(linear_of(lean, "fc").weight_released());
  CHECK(lean.releasable_weight_bytes() == 0);
  CHECK(lean.release_dense_weights() == 0);  // nothing left to release
  CHECK(model_resident_bytes(lean) == model_resident_bytes(full) - expected);
  CHECK(sparse_execution_bytes(lean) == sparse_execution_bytes(full));  // the sparse forms stay
  CHECK(inference_memory(lean, 1).total() == inference_memory(full, 1).total() - expected);
  CHECK(lean.num_params() == full.num_params());

  for (int64_t batch : {1, 4, 7}) {  // 7 was not planned: it follows batch 4
    CAPTURE(batch);
    const Tensor x = testing::random_images(batch, full.input_shape(), rng);
    const Tensor want = infer(full, x);
    CHECK(testing::same_bits(infer(lean, x), want));
    CHECK(testing::same_bits(lean.forward(x, false), want));
  }
}

TEST_CASE("a released weight is rebuilt exactly where it is needed, and refused where it cannot be") {
  const testing::ScopedThreads threads(2);
  Rng rng(32);
  Model full = masked_small_model(rng);
  restore_execution_plan(full, mixed_plan());
  Model lean = full.clone();
  REQUIRE(lean.release_dense_weights() > 0);
  const Tensor x = testing::random_images(4, full.input_shape(), rng);

  SUBCASE("dense_weight and state_for_reading rebuild a copy, the layer stays released; -0.0 comes back +0.0") {
    const Tensor w = conv_of(lean, "c1").dense_weight();
    CHECK(conv_of(lean, "c1").weight_released());
    const Tensor& orig = conv_of(full, "c1").weight.value;
    REQUIRE(w.shape() == orig.shape());
    CHECK(std::signbit(orig[0]));
    CHECK(!std::signbit(w[0]));
    for (int64_t i = 0; i < w.numel(); ++i) CHECK(w[i] == orig[i]);
    CHECK(testing::same_bits(linear_of(lean, "fc").dense_weight(), linear_of(full, "fc").weight.value));
    CHECK(lean.released_weights() == 2);
  }
  SUBCASE("save writes the full weights; the lean model stays lean") {
    const std::string path = "test_lean_model.dnns";
    lean.save(path);
    CHECK(lean.released_weights() == 2);
    Model back = Model::load(path);
    std::remove(path.c_str());
    CHECK(back.released_weights() == 0);
    Model want = full.clone();
    conv_of(want, "c1").weight.value[0] = 0.0f;  // the -0.0 is stored as +0.0
    CHECK(same_state(back, want));
  }
  SUBCASE("clone is lean too and computes the same") {
    Model c = lean.clone();
    CHECK(c.released_weights() == 2);
    CHECK(model_resident_bytes(c) == model_resident_bytes(lean));
    CHECK(testing::same_bits(infer(c, x), infer(full, x)));
  }
  SUBCASE("state() and params() hand out writable tensors: the weights are restored first") {
    auto st = lean.state();
    CHECK(lean.released_weights() == 0);
    CHECK(model_resident_bytes(lean) == model_resident_bytes(full));
    CHECK(testing::same_bits(infer(lean, x), infer(full, x)));  // the plan is kept
    Model again = full.clone();
    REQUIRE(again.release_dense_weights() > 0);
    again.params();
    CHECK(again.released_weights() == 0);
  }
  SUBCASE("training: forward and backward rebuild the weights and give the full model's gradients") {
    const Tensor y_full = full.forward(x, true), y_lean = lean.forward(x, true);
    CHECK(lean.released_weights() == 0);
    CHECK(testing::same_bits(y_lean, y_full));
    const Tensor dy = testing::random_images(4, {5, 1, 1}, rng).reshape({4, 5});
    full.backward(dy);
    lean.backward(dy);
    CHECK(testing::same_bits(conv_of(lean, "c1").weight.grad, conv_of(full, "c1").weight.grad));
    CHECK(testing::same_bits(linear_of(lean, "fc").weight.grad, linear_of(full, "fc").weight.grad));
  }
  SUBCASE("re-planning dense rebuilds the weights and runs the full model's dense path") {
    plan_execution(lean, Execution::Dense, {4});
    plan_execution(full, Execution::Dense, {4});
    CHECK(lean.released_weights() == 0);
    CHECK(testing::same_bits(infer(lean, x), infer(full, x)));
  }
  SUBCASE("an eval forward whose plan was dropped without restoring refuses, naming the layer") {
    conv_of(lean, "c1").sparse_exec.reset();
    const std::string e = testing::error_of([&] { infer(lean, x); });
    CHECK(testing::contains(e, "conv (6, 3, 3, 3)"));
    CHECK(testing::contains(e, "released"));
    CHECK(testing::contains(testing::error_of([&] { conv_of(lean, "c1").restore_dense_weight(); }), "no sparse form"));
  }
  SUBCASE("exports and compaction refuse a lean model, naming the node") {
    CHECK(testing::contains(testing::error_of([&] { portable_graph(lean); }), "node 'c1'"));
    CHECK(testing::contains(testing::error_of([&] { onnx_model_bytes(lean); }), "node 'c1'"));
    CHECK(testing::contains(testing::error_of([&] { compact_model(lean); }), "node 'c1'"));
    Model restored = lean.clone();
    restored.restore_dense_weights();
    CHECK(restored.released_weights() == 0);
    CHECK_NOTHROW(portable_graph(restored));
  }
  SUBCASE("packing a lean model packs the full weights") {
    const PackedModel a = pack_model(lean), b = pack_model(full);
    CHECK(a.bytes() == b.bytes());
    Model u = unpack_model(a);
    CHECK(u.released_weights() == 0);
    CHECK(testing::same_bits(infer(u, x), infer(full, x)));
  }
}

TEST_CASE("the shifter holds every variant lean and counts what it holds") {
  const testing::ScopedThreads threads(2);
  Rng rng(33);
  LoadedPortfolio lp;
  lp.dir = "(memory)";
  lp.manifest.arch = "custom";
  lp.manifest.input_shape = {3, 12, 12};
  lp.manifest.num_classes = 5;
  lp.manifest.latency_batch = 4;
  std::vector<int64_t> held, released;
  std::vector<Tensor> want;
  const Tensor x = testing::random_images(4, lp.manifest.input_shape, rng);
  for (int i = 0; i < 3; ++i) {
    Model m = masked_small_model(rng);
    if (i == 0) restore_execution_plan(m, mixed_plan());  // c1 and fc released
    if (i == 1) plan_execution(m, Execution::Sparse, {1});  // every layer released
    // i == 2: dense, nothing released
    want.push_back(infer(m, x));
    released.push_back(m.releasable_weight_bytes());
    held.push_back(model_resident_bytes(m) + sparse_execution_bytes(m));
    lp.models.push_back(std::make_shared<Model>(std::move(m)));
    VariantInfo v;
    v.name = "v" + std::to_string(i);
    v.file = v.name + ".dnns";
    v.accuracy = 0.5 + 0.1 * i;
    lp.manifest.variants.push_back(v);
  }
  CHECK(released[0] == (6 * 27 + 5 * 16) * 4);
  CHECK(released[1] == (6 * 27 + 4 * 54 + 5 * 16) * 4);
  CHECK(released[2] == 0);

  Shifter dense(LoadedPortfolio(lp), NoFitPolicy::Closest, Residency::Dense);
  int64_t expect = 0;
  for (int i = 0; i < 3; ++i) expect += held[size_t(i)] - released[size_t(i)];
  CHECK(dense.resident_bytes() == expect);
  for (int i = 0; i < 3; ++i) {
    CAPTURE(i);
    CHECK(dense.model(i)->released_weights() == (i == 0 ? 2 : i == 1 ? 3 : 0));
    dense.activate(i);
    CHECK(testing::same_bits(dense.infer(x).logits, want[size_t(i)]));
  }
  CHECK(dense.model(2) == lp.models[2]);  // nothing to release: the loaded model itself is served
  for (int i = 0; i < 2; ++i) CHECK(lp.models[size_t(i)]->released_weights() == 0);  // copies were released

  {  // Given the only references, the shifter releases the loaded models in place: no copies.
    LoadedPortfolio own;
    own.dir = lp.dir;
    own.manifest = lp.manifest;
    std::vector<const Model*> objects;
    for (const auto& m : lp.models) {
      own.models.push_back(std::make_shared<Model>(m->clone()));
      objects.push_back(own.models.back().get());
    }
    Shifter in_place(std::move(own), NoFitPolicy::Closest, Residency::Dense);
    CHECK(in_place.resident_bytes() == expect);
    for (int i = 0; i < 3; ++i) {
      CAPTURE(i);
      CHECK(in_place.model(i).get() == objects[size_t(i)]);
      CHECK(in_place.model(i)->released_weights() == (i == 0 ? 2 : i == 1 ? 3 : 0));
      in_place.activate(i);
      CHECK(testing::same_bits(in_place.infer(x).logits, want[size_t(i)]));
    }
  }

  std::vector<PackedModel> packed;
  for (const auto& m : lp.models) packed.push_back(pack_model(*m));
  Shifter s(std::move(lp), NoFitPolicy::Closest, Residency::Packed);
  for (int i = 0; i < 3; ++i) {
    CAPTURE(i);
    s.activate(i);
    const int64_t packed_bytes = packed[0].bytes() + packed[1].bytes() + packed[2].bytes();
    CHECK(s.resident_bytes() == packed_bytes + held[size_t(i)] - released[size_t(i)]);
    CHECK(testing::same_bits(s.infer(x).logits, want[size_t(i)]));
  }
}

// Planning the training execution of a lean model (a Trainer's first step) takes its weights
// back first: the masks are checked against the real weight shapes and a masked layer can
// train sparse.
TEST_CASE("planning the training of a lean model restores its weights first") {
  const testing::ScopedThreads threads(2);
  Rng rng(8);
  Model m = masked_small_model(rng);
  restore_execution_plan(m, mixed_plan());
  REQUIRE(m.release_dense_weights() > 0);
  REQUIRE(m.released_weights() == 2);  // c1 and fc
  const Shape c1 = conv_of(m, "c1").weight_shape();
  Tensor mask = Tensor::full(c1, 0.0f);
  mask[0] = 1.0f;  // one weight of c1 kept: far below the auto threshold
  m.masks["c1.weight"] = mask;
  const std::vector<TrainLayerExecution> plan = plan_training_execution(m, Execution::Auto);
  CHECK(m.released_weights() == 0);
  bool c1_sparse = false;
  for (const TrainLayerExecution& e : plan)
    if (e.node == "c1") {
      c1_sparse = e.sparse;
      CHECK(e.weight_shape == c1);
    }
  CHECK(c1_sparse);
}

// A layer planned dense at some batch holds its dense weight (and its sparse form too when it
// runs sparse at another); a ready variant settles it on the sparse form where that is the
// smaller form and costs no more time than it saves memory (its size ratio, here about 1.6 at
// 40% of the weights, capped at 1.5) at each batch planned dense (nn/execution.h
// settle_sparse_plans).
TEST_CASE("settle_sparse_plans: the smaller form where it costs no more than it saves at each batch planned dense") {
  Rng rng(5);
  Model m = testing::every_kind_model();
  for (auto& p : m.params())
    if (p.param->prunable)
      for (int64_t i = 0; i < p.param->value.numel(); ++i)
        if (rng.uniform() < 0.6f) p.param->value[i] = 0.0f;  // 40% left: the sparse form is the smaller
  auto choice = [](int64_t batch, bool sparse, double dense_ms, double sparse_ms) {
    SparseExecution::Choice c;
    c.batch = batch;
    c.sparse = sparse;
    c.dense_ms = dense_ms;
    c.sparse_ms = sparse_ms;
    return c;
  };
  const std::vector<SavedLayerPlan> mixed = {
      {"c1", false, {choice(1, true, 1.0, 0.8), choice(4, false, 1.0, 1.4)}},    // 40% slower at 4: settles
      {"c2", false, {choice(1, true, 1.0, 0.8), choice(4, false, 1.0, 1.55)}},   // 55%: past the cap, stays mixed
      {"fc", false, {choice(1, false, 1.0, 1.05), choice(4, false, 1.0, 1.02)}}};  // dense at both, 5%: settles
  restore_execution_plan(m, mixed);
  const Model before = m.clone();
  ExecutionPlan plan;  // what plan_execution would have returned
  for (const SavedLayerPlan& l : mixed)
    for (const SparseExecution::Choice& c : l.choices) {
      LayerExecution le;
      le.node = l.node;
      le.batch = c.batch;
      le.sparse = c.sparse;
      plan.layers.push_back(le);
    }
  CHECK(settleable_sparse_plans(m) == 2);
  CHECK(settle_sparse_plans(m, &plan) == 2);
  CHECK(conv_of(m, "c1").sparse_exec->sparse_at_every_batch());
  CHECK(!conv_of(m, "c2").sparse_exec->sparse_at_every_batch());
  CHECK(linear_of(m, "fc").sparse_exec->sparse_at_every_batch());
  CHECK(conv_of(m, "c1").sparse_exec->runs);  // prepared for its own form
  const std::vector<float> fc = linear_of(m, "fc").weight.value.to_vector();
  CHECK(linear_of(m, "fc").sparse_exec->weight.nnz() ==
        std::count_if(fc.begin(), fc.end(), [](float v) { return v != 0.0f; }));  // made from the weight
  CHECK(plan.sparse_layers(1) == 3);
  CHECK(plan.sparse_layers(4) == 2);  // c2 still dense at 4
  // A fresh plan object: a clone sharing the old one is unchanged.
  Model& b = const_cast<Model&>(before);
  CHECK(!conv_of(b, "c1").sparse_exec->sparse_at_every_batch());
  CHECK(settleable_sparse_plans(m) == 0);
  CHECK(settle_sparse_plans(m) == 0);
  // Its results: those of the sparse kernels at batch 4 now, within rounding of before.
  const Tensor x = testing::random_images(4, m.input_shape(), rng);
  testing::check_close(infer(m, x).to_vector(), infer(before, x).to_vector(), "settled plan");
  // Then c1 and fc release their dense weights.
  CHECK(m.release_dense_weights() == (6 * 3 * 3 * 3 + 5 * 16) * int64_t(sizeof(float)));

  // Unmeasured choices (a forced or hand-made plan) and forms not smaller than the weight stay.
  Model dense = testing::every_kind_model();  // nothing pruned: 6 bytes a nonzero against 4
  restore_execution_plan(dense, mixed);
  CHECK(settleable_sparse_plans(dense) == 0);
  Model unmeasured = before.clone();
  restore_execution_plan(unmeasured, mixed_plan());
  CHECK(settleable_sparse_plans(unmeasured) == 0);
}
