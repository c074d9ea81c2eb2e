// Pruning masks: one 0/1 tensor per prunable weight (every conv and linear weight; biases and
// batchnorm parameters never), kept in Model::masks under the weight's full name
// ("conv0.weight"), saved inside the model file, and applied by the optimizer after every
// step and to every gradient (nn/optim.h), so a pruned weight stays exactly zero.
//
// Some prunable weights can be left out of pruning (the ignore list): they keep an all-ones
// mask, so every prunable weight has a mask and the sparsity reports cover all of them.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "nn/model.h"

namespace dnns {

using MaskSet = std::map<std::string, Tensor>;  // weight full name -> 0/1 tensor of its shape

// The default ignore list of an architecture, as open_lth prunes it: VGG keeps its final
// linear layer dense ({"fc"}); ResNets and everything else prune every conv and linear weight.
std::vector<std::string> default_prune_ignore(const std::string& arch);

// Parses an --prune-ignore value: "auto" -> default_prune_ignore(arch), "none" or "" -> {},
// otherwise comma-separated node or weight names ("fc" or "fc.weight").
std::vector<std::string> parse_prune_ignore(const std::string& value, const std::string& arch);

// The prunable weights of `m` in graph order (Param::prunable).
std::vector<Model::NamedParam> prunable_weights(Model& m);

// Whether the weight `weight_name` (full name, "fc.weight") of node `node_name` is named by
// the ignore list, which holds node names or full weight names.
bool is_ignored(const std::string& weight_name, const std::vector<std::string>& ignore);

// Throws Error naming the entry when an ignore-list entry names no prunable weight of `m`
// (a typo would otherwise silently prune a layer meant to stay dense).
void check_prune_ignore(const Model& m, const std::vector<std::string>& ignore);

// All-ones masks for every prunable weight of `m`, on the CPU.
MaskSet ones_masks(const Model& m);

// A copy of the masks of `m` on the CPU; a prunable weight without a mask gets an all-ones one.
MaskSet current_masks(Model& m);

// Installs `masks` as the model's masks (copied onto the model's device) and zeroes the
// pruned weights. Every mask must name a prunable weight of `m`, have its shape and hold
// only 0 and 1; every prunable weight must have a mask. Throws Error naming the weight otherwise.
void set_masks(Model& m, const MaskSet& masks);

// Number of ones in a (CPU or device) mask.
int64_t mask_count(const Tensor& mask);

// ---- sparsity reports ------------------------------------------------------------------

struct LayerSparsity {
  std::string name;     // weight full name, "conv0.weight"
  Shape shape;
  int64_t total = 0;     // weights in the tensor
  int64_t remaining = 0; // unpruned (mask 1)
  bool ignored = false;  // on the ignore list (never pruned)
  double density() const { return total ? double(remaining) / total : 1.0; }
};

struct SparsityReport {
  std::vector<LayerSparsity> layers;  // every prunable weight, in graph order
  int64_t total = 0, remaining = 0;   // over all prunable weights (ignored ones included)
  int64_t prunable_total = 0, prunable_remaining = 0;  // over the weights not ignored
  int64_t model_parameters = 0;       // every parameter of the model (biases, batchnorm too)
  double density() const { return total ? double(remaining) / total : 1.0; }
};

// Counts from the model's masks (a prunable weight without a mask counts as dense).
SparsityReport sparsity_report(Model& m, const std::vector<std::string>& ignore);
std::string sparsity_json(const SparsityReport& r);   // one JSON object, layers as an array
// A text table: layer, shape, total, remaining, density, then an "overall" row.
std::string sparsity_table(const SparsityReport& r);

}  // namespace dnns
