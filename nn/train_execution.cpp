#include "nn/train_execution.h"

#include <algorithm>
#include <cstdio>

#include "core/error.h"
#include "kernels/ops.h"

namespace dnns {

std::vector<TrainLayerExecution> plan_training_execution(Model& m, Execution mode) {
  const bool cpu = m.device() == Device::CPU;
  check(cpu || mode != Execution::Sparse,
        "--train-execution sparse: the sparse training kernels run on the CPU only (this model is on CUDA)");
  m.restore_dense_weights();  // an inference-only model's released weights: training needs them

  std::vector<TrainLayerExecution> plan;
  for (Node& n : m.nodes()) {
    auto* conv = dynamic_cast<Conv2d*>(n.layer.get());
    auto* lin = dynamic_cast<Linear*>(n.layer.get());
    if (!conv && !lin) continue;
    Param& w = conv ? conv->weight : lin->weight;
    std::shared_ptr<SparseTrainPattern>& slot = conv ? conv->sparse_train : lin->sparse_train;
    TrainLayerExecution e;
    e.node = n.name, e.kind = conv ? "conv" : "linear", e.weight_shape = w.value.shape();
    const auto it = m.masks.find(n.name + ".weight");
    const bool coverable = conv ? conv->pos_h == 0 && conv->in_channels > 0 : lin->in_features > 0;
    Tensor mask;
    if (it != m.masks.end()) {
      check(it->second.shape() == w.value.shape(), [&] {
        return "plan_training_execution: the mask of '" + n.name + ".weight' has shape " +
               shape_str(it->second.shape()) + ", the weight " + shape_str(w.value.shape());
      });
      mask = it->second.is_cpu() ? it->second : it->second.to(Device::CPU);
      int64_t ones = 0;
      for (int64_t i = 0; i < mask.numel(); ++i) ones += mask[i] != 0.0f;
      e.density = mask.numel() ? double(ones) / double(mask.numel()) : 1.0;
    }
    // (The sparse training kernels have no reference version: under the reference backend
    // every layer trains dense, the reference being what the optimized kernels are checked by.)
    e.sparse = cpu && cpu_backend() == CpuBackend::Optimized && coverable && mask.defined() && w.value.numel() > 0 &&
               (mode == Execution::Sparse || (mode == Execution::Auto && e.density <= kSparseTrainDensity));
    if (!e.sparse) {
      slot.reset();
    } else if (conv) {
      slot = std::make_shared<SparseTrainPattern>(sparse_train_pattern(
          mask.data(), conv->out_channels, conv->in_channels, conv->kernel_h, conv->kernel_w));
    } else {
      slot = std::make_shared<SparseTrainPattern>(
          sparse_train_pattern(mask.data(), lin->out_features, lin->in_features, 1, 1));
    }
    plan.push_back(std::move(e));
  }
  return plan;
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
