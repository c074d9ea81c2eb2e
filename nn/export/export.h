// Model export for edge deployment. Every exporter takes any model, dense or compacted, and
// exports its eval-mode forward:
//   - the portable runtime's node table (kernels/portable), to run a model in-process with the
//     runtime that deployments use, and to check it against Model::forward;
//   - ONNX (opset 13), written by our own protobuf encoder: no protobuf dependency;
//   - C arrays: a header of constant weights and a static node table, plus the runtime sources,
//     to compile a model into a program that has no file system.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/portable/dnns_runtime.h"
#include "nn/model.h"

namespace dnns {

// The model as the portable runtime's graph. Names and weights point into the model (its CPU
// tensors), which must outlive this and stay unchanged. Throws Error for a model not on the CPU.
struct PortableGraph {
  std::vector<rt::Node> nodes;
  rt::Graph graph{};
  PortableGraph() = default;
  PortableGraph(PortableGraph&&) = default;
  PortableGraph& operator=(PortableGraph&&) = default;
  PortableGraph(const PortableGraph&) = delete;  // graph.nodes points into nodes
  PortableGraph& operator=(const PortableGraph&) = delete;
};
PortableGraph portable_graph(const Model& m);

// Runs x (N, C, H, W) through the portable runtime: what a deployment computes. Returns the
// output node's values with the shape Model::forward gives. *arena_bytes: the activation
// memory the runtime planned for this batch.
Tensor run_portable(const Model& m, const Tensor& x, int64_t* arena_bytes = nullptr);

// Activation bytes the portable runtime plans for one image of the model (its arena per image).
int64_t portable_arena_bytes(const Model& m);

// ONNX export. Batchnorm is folded into the conv before it when that conv feeds only the
// batchnorm (the zoo's conv-bn pairs; the exported graph is an inference graph); any other
// batchnorm becomes a BatchNormalization node. Conv with fused ReLU -> Conv + Relu; a border
// table -> its (1, K, row classes, column classes) initializer, spread to (1, K, P, Q) by two
// Gathers of int64 class initializers (axis 2, then 3), then Add; global_avgpool -> GlobalAveragePool +
// Flatten (our layer yields (N, C)); linear -> Gemm (transB = 1). Zero-channel tensors of a
// compacted model never appear: ops on them are dropped, and a conv or linear layer with no
// input channels (its output is its bias) becomes a constant broadcast to the batch by Expand
// (for a conv: its table, or one value per channel, spread by the Gathers). The batch dimension is symbolic ("N"); the graph's input and output are
// named after the model's input and output nodes, initializers after the model's tensors.
struct OnnxExportInfo {
  int nodes = 0;               // ONNX nodes written
  int initializers = 0;
  int folded_batchnorms = 0;
  int constant_layers = 0;     // conv/linear layers exported as constants (no input channels)
  int64_t bytes = 0;
};
std::string onnx_model_bytes(const Model& m, OnnxExportInfo* info = nullptr);
void export_onnx(const Model& m, const std::string& path, OnnxExportInfo* info = nullptr);

// C-array export into `dir` (created if needed):
//   <name>.h          constant weight arrays, the node table, the graph and size macros
//                     (<NAME>_NUM_NODES, _INPUT_C/H/W, _OUTPUT_SIZE, _ARENA_FLOATS_PER_IMAGE)
//   <name>_main.cpp   an example program: static memory only, one image at a time
//   dnns_runtime.h, dnns_runtime.cpp   the portable runtime (no file system needed)
// `name` must be a C identifier. The model's batchnorms stay batchnorm nodes (the runtime runs
// them); compact a masked model first (cifar_prune export --compact) to get a slim one.
// A conv or linear weight is written sparse (its kept values and a uint8 index of their
// positions, core/sparse.h; the runtime runs it so) when that is smaller than dense, so the
// program's flash holds only the surviving weights.
struct CExportInfo {
  std::vector<std::string> files;     // paths written
  int64_t weight_floats = 0;          // floats in the weight arrays (kept values of sparse weights)
  int64_t index_bytes = 0;            // bytes of the sparse weights' index arrays
  int64_t arena_floats_per_image = 0; // activation memory the runtime needs per image
};
CExportInfo export_c(const Model& m, const std::string& dir, const std::string& name = "dnns_model");

}  // namespace dnns
