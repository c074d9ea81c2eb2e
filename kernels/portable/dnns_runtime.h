// dnnshifter portable inference runtime: runs a model graph (dense or compacted) on a CPU with
// nothing but a C++17 compiler. No BLAS, no threads, no exceptions, no heap use while running:
// every activation lives in one arena the caller provides, planned once from the graph.
//
// Two ways to get a graph:
//   - a model file saved by the full build (core/archive.h format), read by model_file.cpp
//     (`load_model_file`, hosted targets: stdio + malloc), or
//   - a C-array export (`cifar_prune export MODEL --format c`): the node table and the weights
//     are constant arrays compiled into the program, for targets with no file system.
//
// Running (no allocation):
//   NodePlan plan[num_nodes];                     // the planner's per-node shapes and offsets
//   int64_t per_image;  plan_graph(g, plan, &per_image, err, sizeof err);
//   float arena[max_batch * per_image];           // activations, reused between layers
//   Engine e;  engine_init(&e, &g, plan, arena, max_batch * per_image, max_batch);
//   engine_run(&e, images /* (N, C, H, W) */, N, logits /* (N, output_size) */);
//
// Semantics are the full build's eval-mode forward (nn/layers.h): the same node kinds, the
// same shapes; results agree within float rounding (this runtime accumulates in float).
// This file and dnns_runtime.cpp are self-contained: they include only C library headers and
// use no C++ library, so a bare-metal toolchain with newlib (arm-none-eabi-g++) builds them.
#pragma once
#include <stddef.h>
#include <stdint.h>

namespace dnns::rt {

// Every function reports failure by status; the message (naming the node, file or shape) is
// written to the error buffer the call was given.
enum Status : int {
  kOk = 0,
  kErrArgument,  // a null pointer, a batch size out of range
  kErrIo,        // the model file could not be opened or read
  kErrFormat,    // not a model file: bad magic, version, truncated, malformed entry
  kErrChecksum,  // the file's CRC-32 does not match its content
  kErrGraph,     // the graph is not runnable: unknown kind, bad attribute, shape mismatch
  kErrMemory,    // an allocation failed or the arena is too small
};
const char* status_name(Status s);

// Node kinds: those of nn/layers.h, plus the graph input.
enum class Op : uint8_t { Input, Conv, BatchNorm, ReLU, MaxPool, AvgPool, GlobalAvgPool, Flatten, Linear, Add };
const char* op_name(Op op);

// One graph node. A C-array export writes a table of these with every field in this order.
struct Node {
  const char* name;  // for error messages
  Op op;
  int32_t in0, in1;  // producer node indices, smaller than this node's; -1 when unused
  // conv: in_ch = C, out_ch = K (either may be 0 in a compacted model); linear: in and out
  // features (in may be 0); batchnorm: channels (both fields). Unused otherwise.
  int32_t in_ch, out_ch;
  int32_t kernel_h, kernel_w;  // conv kernel; pools: the square window in kernel_h
  int32_t stride, pad;         // conv: both; pools: stride (no padding)
  int32_t fused_relu;          // conv: 1 = ReLU applied to its output
  int32_t pos_h, pos_w;        // conv: output size its border table covers; 0 = no table
  float eps;                   // batchnorm
  const float* weight;         // conv (K, C, kh, kw); linear (out, in); batchnorm gamma (C)
  const float* bias;           // conv, linear (K) or nullptr; batchnorm beta (C)
  const float* pos_bias;       // conv border table (K, pos_rows, pos_cols) or nullptr
  const float* mean;           // batchnorm running mean (C)
  const float* var;            // batchnorm running variance (C)
  // conv border table: y[n, k, p, q] += pos_bias[k, pos_row_class[p], pos_col_class[q]], with
  // pos_rows x pos_cols classes. nullptr class lists: one class per row and column (a full
  // (K, pos_h, pos_w) map, as model files from before the tables hold).
  const int32_t* pos_row_class;  // (pos_h) or nullptr
  const int32_t* pos_col_class;  // (pos_w) or nullptr
  int32_t pos_rows, pos_cols;
  // add with out_ch > 0 (a compacted residual join): y[n, k] = bias[k] (bias may be nullptr)
  // plus, for each input, its channel c added into channel map[c] (strictly ascending; nullptr:
  // the identity, the input has out_ch channels). out_ch = 0: the plain sum of two equal shapes.
  const int32_t* map0;  // (channels of in0) or nullptr
  const int32_t* map1;  // (channels of in1) or nullptr
  // conv, linear: sparse weights, run as they are (no dense copy). weight_coding 0: `weight` is
  // dense. 1 (bitmap) or 2 (gap8): `weight` holds the weight_count kept values in position order,
  // and weight_index (weight_index_bytes bytes) codes their flat positions in the dense weight
  // (docs/file-formats.md, "Sparse tensors"); every other weight is zero.
  int32_t weight_coding;
  int64_t weight_count;
  const uint8_t* weight_index;
  int64_t weight_index_bytes;
};

// ---------------------------------------------------------------- sparse weights

enum WeightCoding : int32_t { kDenseWeights = 0, kBitmapIndex = 1, kGap8Index = 2 };

// Whether `len` bytes of index `coding` hold exactly `count` positions among `numel` values, by
// the rules of the format: bitmap, ceil(numel / 8) bytes with no bit set past numel; gap8, a
// byte b < 255 skips b positions and keeps the next, 255 skips 255, every kept position is below
// numel, fewer than 255 positions follow the stream's end, and numel < 255 x (len + 1).
bool sparse_index_valid(int32_t coding, const uint8_t* bytes, uint64_t len, uint64_t numel, uint64_t count);

// Walks the kept positions of a valid index in ascending order:
//   IndexWalk w = index_walk(coding, bytes, len);
//   for (int64_t pos; (pos = index_next(&w)) >= 0;) ...
struct IndexWalk {
  int32_t coding;
  const uint8_t* bytes;
  int64_t len;
  int64_t at;     // bitmap: the byte in `bits`; gap8: the next byte
  int64_t pos;    // gap8: the next position not yet passed
  unsigned bits;  // bitmap: the bits of byte `at` not yet returned
};
inline IndexWalk index_walk(int32_t coding, const uint8_t* bytes, int64_t len) {
  return IndexWalk{coding, bytes, len, coding == kBitmapIndex ? -1 : 0, 0, 0u};
}
inline int64_t index_next(IndexWalk* w) {
  if (w->coding == kBitmapIndex) {
    while (w->bits == 0) {
      if (++w->at >= w->len) return -1;
      w->bits = w->bytes[w->at];
    }
    int b = 0;
    while (!((w->bits >> b) & 1u)) ++b;
    w->bits &= w->bits - 1;
    return w->at * 8 + b;
  }
  while (w->at < w->len) {
    const uint8_t b = w->bytes[w->at++];
    w->pos += b;
    if (b != 255) return w->pos++;
  }
  return -1;
}

struct Graph {
  const Node* nodes;  // topological order; nodes[0] is the input
  int32_t num_nodes;
  int32_t output;              // index of the output node
  int32_t in_c, in_h, in_w;    // input image shape (C, H, W)
};

// What the planner derives for one node, per image.
struct NodePlan {
  int32_t rank;     // 4: (C, H, W) maps; 2: (C) features, with h = w = 1
  int32_t c, h, w;  // output shape per image
  int64_t offset;   // per-image float offset of its output in the arena (scaled by the batch)
  int32_t last_use; // index of the last node that reads it (num_nodes for the output)
  int32_t group;    // the node whose buffer it writes (itself, or an input it runs in place over)
};

// Infers and validates every node's output shape and assigns arena offsets so that buffers
// whose lifetimes overlap never share memory (largest buffers first, each at the lowest
// offset free for its lifetime). plan: num_nodes entries. *floats_per_image: the
// arena one image needs (a batch of N needs N times as much).
Status plan_graph(const Graph& g, NodePlan* plan, int64_t* floats_per_image, char* err, size_t err_len);

struct Engine {
  const Graph* graph = nullptr;
  NodePlan* plan = nullptr;  // (num_nodes), filled by engine_init
  float* arena = nullptr;    // (max_batch * floats_per_image)
  int64_t floats_per_image = 0;
  int32_t max_batch = 0;
  char error[256] = {0};     // the last failure's message
};

// Plans `g` into `plan` (num_nodes entries) and checks that `arena_floats` floats hold
// max_batch images. The graph, plan and arena must outlive the engine; nothing is copied.
Status engine_init(Engine* e, const Graph* g, NodePlan* plan, float* arena, int64_t arena_floats, int32_t max_batch);

// input: (batch, in_c, in_h, in_w); output: (batch, engine_output_size(e)). 1 <= batch <= max_batch.
Status engine_run(Engine* e, const float* input, int32_t batch, float* output);

// Floats of output per image (the class count for a classifier).
int64_t engine_output_size(const Engine* e);

// CRC-32 (IEEE, zlib's crc32) of n bytes continuing from crc (0 to start).
uint32_t crc32_update(uint32_t crc, const void* data, size_t n);

// ---------------------------------------------------------------- model files (model_file.cpp)

// A graph read from a model file: the node table, the names and the weights it points into
// are owned here (heap memory, allocated once at load).
struct LoadedModel {
  Graph graph = {nullptr, 0, 0, 0, 0, 0};
  Node* nodes = nullptr;
  char* text = nullptr;      // the graph spec, split into the node names
  float* weights = nullptr;  // every tensor the graph uses, 4-byte aligned, host byte order
  int32_t* classes = nullptr;  // the border tables' row and column classes (conv pos_rows, pos_cols)
  uint8_t* indices = nullptr;  // the index bytes of sparse conv and linear weights
  int64_t num_weights = 0;     // floats in `weights` (the kept values of sparse weights)
  char error[512] = {0};
};

// Reads and validates a model file (magic, version, CRC-32, structure, tensor shapes against
// the graph). On failure `m` holds nothing and m->error says what is wrong with which file.
Status load_model_file(const char* path, LoadedModel* m);
// The same from bytes in memory; `where` names them in messages. The bytes are not kept.
Status load_model_memory(const unsigned char* data, size_t size, const char* where, LoadedModel* m);
void free_model(LoadedModel* m);

}  // namespace dnns::rt
