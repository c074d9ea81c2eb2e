// Exact structural compaction: turns a masked (unstructured-sparse) model into a slimmer
// dense one whose logits equal the masked model's in eval mode.
//
// The maths (DESIGN.md "Exact compaction"): a channel whose filter is all zero still emits a
// constant, b_k through batchnorm and ReLU. More generally a channel may not depend on the
// input at all (a conv reading only such channels); these fixed channels and their exact
// values are propagated through the graph in eval mode. A channel is removed when every
// consumer (conv or linear reading it) either reads it with all-zero weights or sees it fixed,
// in which case its contribution is folded into the consumer: into its bias when it is the
// same at every output position, into a border table (K x row classes x column classes, see
// nn/layers.h Conv2d) when zero padding (or a fixed map that is not constant) makes positions
// differ. Tensors joined
// by an `add` (and by the channel-preserving ops between) form one channel space: a channel of
// a ResNet's residual stream is removed only when it is removable in every member. A stream
// channel that lives may still have a branch writer (a conv read only by an add: ResNet conv2,
// projection shortcuts) whose filter for it is constant: that conv does not compute it, the
// compact add maps the conv's computed channels into their stream channels and holds the
// constant in its bias (nn/layers.h Add). Batchnorm is folded into the conv before it, and a
// following ReLU is fused.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "nn/model.h"

namespace dnns {

// Per node output, per channel: constant (with its value) or live. Channel spaces group the
// node outputs that share one channel index (joined by batchnorm, ReLU, pooling, flatten, add).
struct ChannelAnalysis {
  std::vector<int> space;                      // (nodes) channel-space id of each node's output
  std::vector<int> features_per_channel;       // (nodes) > 1 after a flatten of an HxW map
  std::vector<std::vector<uint8_t>> fixed;     // (nodes, channels) 1 = does not depend on the input
  std::vector<std::vector<int>> slot;          // (nodes, channels) a fixed channel's index in maps, else -1
  std::vector<Tensor> maps;                    // (nodes) batch-1 values of the fixed channels only, in channel
                                               // order: (1, F, H, W) or (1, F * features); (1, F, 1, 1) when
                                               // map_uniform; undefined when none is fixed
  std::vector<int64_t> map_plane;              // (nodes) floats per fixed channel in maps
  std::vector<uint8_t> map_uniform;            // (nodes) 1 = maps holds the one value of every position
  std::vector<std::vector<uint8_t>> keep;      // (spaces, channels) 1 = kept by compaction
  std::vector<int> space_channels;             // (spaces) channel count
  int64_t dead_filters = 0;                    // conv/linear output channels with all-zero weights
  // The values of channel c of node i (map_plane[i] floats: one when map_uniform[i]) when it
  // is fixed, else nullptr.
  const float* map_of(int i, int c) const;
  // Whether channel c of node i is fixed with a map that is not all zero.
  bool map_nonzero(int i, int c) const;
  // Whether channel c of node i is fixed with the same value at every position.
  bool map_one_value(int i, int c) const;
};

// The weights must already be masked (training leaves them so; Model::apply_masks does it).
ChannelAnalysis analyze_channels(const Model& masked);

struct LayerChannels {
  std::string name;  // conv or linear node
  int in_before = 0, in_after = 0, out_before = 0, out_after = 0;
};

// Parameters by role: conv and linear weights; biases (conv, linear, and batchnorm's scale and
// shift); border tables (conv pos_bias). The three add up to Model::num_params.
struct ParamSplit {
  int64_t weights = 0, biases = 0, tables = 0;
  int64_t total() const { return weights + biases + tables; }
};
ParamSplit param_split(const Model& m);

struct CompactReport {
  std::vector<LayerChannels> layers;
  int64_t params_before = 0, params_after = 0;
  ParamSplit split_before, split_after;
  int64_t nonzero_before = 0;  // surviving (unmasked) weights of the masked model
  int64_t macs_before = 0, macs_after = 0;
  int64_t channels_removed = 0;
  int64_t constants_folded = 0;     // (consumer, removed channel) pairs whose nonzero constant was folded
  int64_t branch_rows_dropped = 0;  // residual-branch conv filters not computed (their constant goes into the add)
  int64_t position_bias_layers = 0; // convs that needed a border table (a correction differing by position)
  double milliseconds = 0;          // time compact_model took
};

// Builds the compact model (eval-mode inference graph). `report` is optional.
Model compact_model(const Model& masked, CompactReport* report = nullptr);

// Maximum absolute difference of the two models' eval-mode logits on `x`.
float max_logit_difference(Model& a, Model& b, const Tensor& x);

}  // namespace dnns
