// How the training passes of masked conv and linear layers run on the CPU: dense, or the
// sparse kernels over the mask's pattern (kernels/cpu/sparse_train.h): the forward and the
// input gradient skip the masked weights, the weight gradient is computed at the unmasked
// positions only. Both give the same results within float rounding; which is faster depends
// on the layer's density, so `auto` trains a layer sparse when its mask keeps at most
// kSparseTrainDensity of its weights. Measured per layer on ResNet-20's conv shapes (3x3
// stride 1 and 2, the strided 1x1 shortcuts, the 3-channel first conv) at batch 64, one
// thread, AMD EPYC (AVX-512 path), November 2026: forward + dx + dw break even near 40%
// density (0.9-1.1x), gain 1.15-1.35x at 30%, 2.0-3.9x at 5% (the 1x1 shortcuts 1.25x).
// IMP levels from the sixth (26% kept) on retrain mostly sparse.
#pragma once
#include <string>
#include <vector>

#include "core/tensor.h"
#include "nn/execution.h"
#include "nn/model.h"

namespace dnns {

// The density (unmasked weights / weights) at or below which `auto` trains a layer sparse.
constexpr double kSparseTrainDensity = 0.3;

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
//   auto    the layers with a mask of density <= kSparseTrainDensity sparse.
// The pattern is the mask's ones as they are now. A mask replaced by another tensor since
// (set_masks, an assignment to Model::masks) or removed is followed by the next training forward
// (follow_mask_changes); a mask edited in place is not: plan again (the training passes refuse a
// weight that is nonzero outside its pattern, but cannot tell a weight the mask now lets train,
// still exactly 0, from a masked one). On a CUDA model every layer trains dense, and `sparse`
// throws Error. A layer with a border table or no input channels (compacted models) always
// trains dense. Returns what was planned.
std::vector<TrainLayerExecution> plan_training_execution(Model& m, Execution mode);

// For every layer training sparse whose mask in m.masks is no longer the tensor its pattern was
// made from: the pattern of the mask there now, or none (dense) where the mask was removed.
// Model::forward runs it before every training pass. Returns the layers changed.
int follow_mask_changes(Model& m);

// "3 of 20 conv/linear layers train sparse (densities 0.05-0.08)" for a log line.
std::string training_plan_summary(const std::vector<TrainLayerExecution>& plan);

}  // namespace dnns
