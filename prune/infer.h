// Stateless eval-mode inference: the path the shifter serves requests on.
//
// Model::forward keeps its activations in members of the Model, so two threads must never
// run it on one Model object at the same time. `infer` walks the same graph with activations
// held in local buffers, and reads the model only, so any number of threads may call it on
// one `const Model&` at once (the shifter's variants are shared, immutable models). The
// result equals Model::forward(x, false) bit for bit: the same layers run the same kernels
// in the same order on the same inputs.
#pragma once
#include <cstdint>

#include "core/tensor.h"
#include "nn/model.h"

namespace dnns {

// x: (N, C, H, W) on the model's device -> logits (N, classes). Throws Error on a wrong input
// shape or device, or on a layer kind not vetted as stateless in eval mode.
Tensor infer(const Model& m, const Tensor& x);

// The working memory of one `infer` call at a batch size, computed from the graph's shapes
// (no allocation is observed): what the model holds plus what the call allocates.
struct InferenceMemory {
  int64_t parameter_bytes = 0;   // every parameter tensor held (float32; a dense weight
                                 // released by Model::release_dense_weights: none)
  int64_t buffer_bytes = 0;      // non-learned state (batchnorm running statistics)
  int64_t activation_bytes = 0;  // the largest sum of live activations during the pass, the
                                 // input batch included, under infer's release order (an
                                 // activation is freed after its last reader; ReLU in place;
                                 // a folded conv -> batchnorm [-> ReLU] chain holds one output)
  int64_t workspace_bytes = 0;   // the scratch buffers one CPU worker thread grows for the
                                 // convs, on the paths they take now (the im2col columns, the
                                 // padded image of the direct kernels, Winograd's transforms:
                                 // cpu::conv_forward_scratch; a layer planned sparse at this
                                 // batch: cpu::sparse_*_forward_scratch, its slots), plus the
                                 // largest buffer one call allocates (a sparse call's own, a
                                 // conv's filters with a batchnorm folded in)
  int64_t sparse_weight_bytes = 0;  // the sparse weight copies the execution plan keeps
                                    // (nn/execution.h sparse_execution_bytes)
  int64_t total() const {
    return parameter_bytes + buffer_bytes + activation_bytes + workspace_bytes + sparse_weight_bytes;
  }
};
InferenceMemory inference_memory(const Model& m, int64_t batch);

// Bytes of every tensor the model holds (parameters, buffers and masks): its resident size.
// A dense weight released by Model::release_dense_weights counts nothing; the plan's sparse
// copies are apart (sparse_execution_bytes, nn/execution.h): a ready model holds the sum.
int64_t model_resident_bytes(const Model& m);

}  // namespace dnns
