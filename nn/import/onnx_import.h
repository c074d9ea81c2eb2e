// ONNX import: a CNN exported by PyTorch (torch.onnx.export) or by our own exporter becomes a
// model graph, its exact zeros the masks, so a network pruned elsewhere compacts here.
//
// The file is parsed by the ONNX project's own protobuf classes (libonnx-dev, libprotobuf-dev),
// never by hand. This library exists only where CMake found them (DNNS_HAVE_ONNX_IMPORT).
//
// Supported (opset 7 and later, default domain, float32 tensors):
//   Conv (2-D, with or without bias; square stride, the same padding on all four sides, no
//   dilation, no groups), BatchNormalization (inference form), Relu, MaxPool and AveragePool
//   (square window, no padding), GlobalAveragePool, Flatten (axis 1) and Reshape to (N, -1),
//   Gemm and MatMul with a constant weight, Add (of two equal-shaped tensors: a residual join;
//   or of a constant folded into the conv or linear layer before it: its bias), Identity,
//   Dropout (inference: identity), Pad with zero padding (PyTorch's AvgPool2d exports one).
//   What PyTorch puts around a Reshape is evaluated at import time: Constant, Shape, Gather,
//   Unsqueeze, Squeeze, Concat, Slice and Cast on constants. Our exporter's compact forms:
//   a constant (K, P, Q) Add after a conv (a spread border table: Gather of constants, any
//   axis) becomes the conv's border table; Pad of one zero channel + Gather along axis 1 +
//   Add (+ a per-channel constant Add) becomes a residual Add with channel maps (and bias).
//   A Gather on a computed tensor is refused unless it is that channel spread.
// Anything else is refused with an Error naming the node, its op and the unsupported op,
// attribute or data type; nothing is silently dropped.
//
// Masks: every conv and linear weight gets one, 0 exactly where the weight is 0.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "nn/model.h"

namespace dnns {

struct OnnxImportInfo {
  std::string producer;       // "pytorch 1.13.1", from the file
  int64_t opset = 0;
  int onnx_nodes = 0;         // nodes in the file
  int constant_nodes = 0;     // evaluated at import time (shape arithmetic, constants)
  int folded_adds = 0;        // Add of a constant folded into a conv or linear bias
  int aliases = 0;            // Identity, Dropout, zero Pad, Flatten/Reshape that move no data
  int64_t weights = 0;        // conv and linear weights
  int64_t zero_weights = 0;   // of which exactly zero (masked)
};

// `where` names the source in error messages (the file path).
Model import_onnx_bytes(const std::string& bytes, const std::string& where, OnnxImportInfo* info = nullptr);
// Throws Error naming `path` when the file is missing, not ONNX, truncated or unsupported.
Model import_onnx(const std::string& path, OnnxImportInfo* info = nullptr);

}  // namespace dnns
