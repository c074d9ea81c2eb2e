// How the training passes of masked conv and linear layers run on the CPU: dense, or the
// sparse kernels over the mask's pattern (kernels/cpu/sparse_train.h): the forward and the
// input gradient skip the masked weights, the weight gradient is computed at the unmasked
// positions only. Both give the same results within float rounding; which is faster depends
// on the layer's density and stride, so `auto` trains a layer sparse when its mask keeps at
// most kSparseTrainDensity of its weights (kSparseTrainDensityStrided for a strided conv,
// whose input gradient the sparse path computes at 4x the work of its forward). Measured
// per layer on ResNet-20's conv shapes at batch 64, one thread, AMD EPYC (AVX-512 path), November
// 2026: forward + dx + dw break even near 40% density at stride 1 (1.05-1.1x), 20% at stride
// 2 (0.96-1.15x); at 5% sparse is 3.0-3.9x faster at stride 1, 1.25-2.0x at stride 2.
// IMP levels from the sixth (26% kept) on retrain mostly sparse.
#pragma once
#include <string>
#include <vector>

#include "core/tensor.h"
#include "nn/execution.h"
#include "nn/model.h"

namespace dnns {

// The density (unmasked weights / weights) at or below which `auto` trains a layer sparse:
// a linear layer or a stride-1 conv, and a strided conv.
constexpr double kSparseTrainDensity = 0.3;
constexpr double kSparseTrainDensityStrided = 0.15;

struct TrainLayerExecution {
  std::string node;      // the node's name
  std::string kind;      // "conv" or "linear"
  Shape weight_shape;    // (K, C, R, S) or (O, I)
  double density = 1;    // the mask's ones / weights (1 without a mask)
  bool sparse = false;   // the execution chosen
};

// Sets how every conv and linear layer of `m` trains (Conv2d/Linear::sparse_train):
//   dense   every layer dense;
//   sparse  every layer with a mask in m.masks sparse (a layer without one has nothing to skip);
//   auto    the layers with a mask of density <= kSparseTrainDensity (strided convs:
//           kSparseTrainDensityStrided) sparse.
// The pattern is the mask's ones as they are now: call it again after the masks change (the
// training passes refuse a weight that is nonzero outside its pattern). On a CUDA model every
// layer trains dense, and `sparse` throws Error. A layer with a border table or no input
// channels (compacted models) always trains dense. Returns what was planned.
std::vector<TrainLayerExecution> plan_training_execution(Model& m, Execution mode);

// "3 of 20 conv/linear layers train sparse (densities 0.05-0.08)" for a log line.
std::string training_plan_summary(const std::vector<TrainLayerExecution>& plan);

}  // namespace dnns
