#include "nn/train_execution.h"

#include <algorithm>
#include <cstdio>

#include "core/error.h"
#include "kernels/ops.h"

namespace dnns {

namespace {

// A conv's or linear layer's training slots (see Conv2d::sparse_train).
struct TrainSlots {
  Param* weight = nullptr;
  Shape shape;                  // the weight's, held or released
  std::shared_ptr<SparseTrainPattern>* pattern = nullptr;
  Tensor* made_from = nullptr;  // the mask tensor the pattern was made from
  int K = 0, C = 0, R = 1, S = 1;
  bool coverable = false;       // a layer the sparse kernels can train (no border table, inputs left)
  const char* kind = "";
};

TrainSlots train_slots(Layer* layer) {
  TrainSlots t;
  if (auto* c = dynamic_cast<Conv2d*>(layer)) {
    t = {&c->weight, c->weight_shape(), &c->sparse_train, &c->sparse_train_mask, c->out_channels, c->in_channels, c->kernel_h,
         c->kernel_w, c->pos_h == 0 && c->in_channels > 0, "conv"};
  } else if (auto* l = dynamic_cast<Linear*>(layer)) {
    t = {&l->weight, l->weight_shape(), &l->sparse_train, &l->sparse_train_mask, l->out_features, l->in_features, 1, 1,
         l->in_features > 0, "linear"};
  }
  return t;
}

// The mask of node `name`'s weight (of shape `shape`) in m.masks, nullptr when it has none; its
// shape checked.
const Tensor* mask_of(Model& m, const std::string& name, const Shape& shape, const char* who) {
  const auto it = m.masks.find(name + ".weight");
  if (it == m.masks.end()) return nullptr;
  check(it->second.shape() == shape, [&] {
    return std::string(who) + ": the mask of '" + name + ".weight' has shape " + shape_str(it->second.shape()) +
           ", the weight " + shape_str(shape);
  });
  return &it->second;
}

// Gives the layer the pattern of `mask` (on any device), remembering which tensor it came from.
void set_pattern(const TrainSlots& t, const Tensor& mask) {
  const Tensor host = mask.is_cpu() ? mask : mask.to(Device::CPU);
  *t.pattern = std::make_shared<SparseTrainPattern>(sparse_train_pattern(host.data(), t.K, t.C, t.R, t.S));
  *t.made_from = mask;
}

void clear_pattern(const TrainSlots& t) {
  t.pattern->reset();
  *t.made_from = Tensor();
}

}  // namespace

std::vector<TrainLayerExecution> plan_training_execution(Model& m, Execution mode) {
  const bool cpu = m.device() == Device::CPU;
  check(cpu || mode != Execution::Sparse,
        "--train-execution sparse: the sparse training kernels run on the CPU only (this model is on CUDA)");
  m.restore_dense_weights();  // an inference-only model's released weights: training needs them

  std::vector<TrainLayerExecution> plan;
  for (Node& n : m.nodes()) {
    const TrainSlots t = train_slots(n.layer.get());
    if (!t.weight) continue;
    const Param& w = *t.weight;
    TrainLayerExecution e;
    e.node = n.name, e.kind = t.kind, e.weight_shape = w.value.shape();
    const Tensor* mask = mask_of(m, n.name, t.shape, "plan_training_execution");
    if (mask) {
      const Tensor host = mask->is_cpu() ? *mask : mask->to(Device::CPU);
      int64_t ones = 0;
      for (int64_t i = 0; i < host.numel(); ++i) ones += host[i] != 0.0f;
      e.density = host.numel() ? double(ones) / double(host.numel()) : 1.0;
    }
    // (The sparse training kernels have no reference version: under the reference backend
    // every layer trains dense, the reference being what the optimized kernels are checked by.)
    e.sparse = cpu && cpu_backend() == CpuBackend::Optimized && t.coverable && mask && w.value.numel() > 0 &&
               (mode == Execution::Sparse || (mode == Execution::Auto && e.density <= kSparseTrainDensity));
    if (e.sparse) set_pattern(t, *mask);
    else clear_pattern(t);
    plan.push_back(std::move(e));
  }
  return plan;
}

int follow_mask_changes(Model& m) {
  int changed = 0;
  for (Node& n : m.nodes()) {
    const TrainSlots t = train_slots(n.layer.get());
    if (!t.weight || !*t.pattern) continue;
    const Tensor* mask = mask_of(m, n.name, t.shape, "training forward");
    if (mask && mask->same_storage(*t.made_from)) continue;
    ++changed;
    if (mask) set_pattern(t, *mask);
    else clear_pattern(t);  // no mask: every weight trains, which the dense kernels do
  }
  return changed;
}

std::string training_plan_summary(const std::vector<TrainLayerExecution>& plan) {
  int sparse = 0;
  double lo = 1, hi = 0;
  for (const TrainLayerExecution& e : plan)
    if (e.sparse) ++sparse, lo = std::min(lo, e.density), hi = std::max(hi, e.density);
  char buf[160];
  if (sparse)
    std::snprintf(buf, sizeof buf, "%d of %zu conv/linear layers train sparse (densities %.3g-%.3g)", sparse,
                  plan.size(), lo, hi);
  else
    std::snprintf(buf, sizeof buf, "all %zu conv/linear layers train dense", plan.size());
  return buf;
}

}  // namespace dnns
