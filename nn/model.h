// The model: a static DAG of named nodes, each a layer, with named parameters. Residual
// joins are explicit `add` nodes, so the channel dependencies the compactor needs are
// visible in the graph. Node 0 is the input; nodes are stored in topological order.
#pragma once
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/archive.h"
#include "core/tensor.h"
#include "nn/layers.h"

namespace dnns {

// What a program receiving a model file needs to feed it and to label its output, recorded by
// training (`cifar_prune train`, `imp`, `run`) and carried along by clone, checkpoints,
// compaction, portfolios and exports. Files written before it existed hold none of it: every
// field is then empty and the reader says what it assumes instead.
struct DataInfo {
  std::string dataset;                   // the data set trained on, as given to --data
  std::vector<std::string> class_names;  // (classes) the label of each output; no '\n' inside
  std::string channel_order;             // "RGB" (3 channels) or "L" (1, luminance)
  std::vector<float> mean, std;          // (C) the input is x = (pixel / 255 - mean[c]) / std[c]
  bool empty() const { return dataset.empty() && class_names.empty() && channel_order.empty() && mean.empty(); }
};

struct Node {
  std::string name;
  std::unique_ptr<Layer> layer;  // nullptr for the input node
  std::vector<int> inputs;       // producer node indices (all smaller than this node's)
};

class Model;

// Eval-mode fusion on the CPU (Model::forward and infer, prune/infer.h): conv -> batchnorm
// [-> ReLU] chains in which each later node is the only reader of the one before, the conv has
// no ReLU of its own and is not the output (the batchnorm may be: then it ends the chain). Per
// node: for the conv heading a chain, the chain's last node (its batchnorm, or the ReLU after
// it); -1 elsewhere. Whether a chain runs as one convolution (Conv2d::forward_folded) is decided per
// call by Conv2d::folds_batchnorm. The ONNX export folds the same batchnorms.
std::vector<int> eval_fusion_chains(const Model& m);
// Residual fusion on the CPU (Model::forward in training and eval, and infer): a plain add (no
// channel maps, no bias) whose only reader is a ReLU, the add not being the output, computes
// the ReLU in the same pass (ops::add_relu_forward). Per node: for such an add, that ReLU; -1
// elsewhere. The caller checks that the fusion is on and the model on the CPU.
std::vector<int> add_relu_pairs(const Model& m);

class Model {
 public:
  Model() = default;
  Model(Model&&) = default;
  Model& operator=(Model&&) = default;
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
  Model clone() const;  // deep copy: parameters, buffers, masks

  // ---- building
  int add_input(const Shape& chw, const std::string& name = "input");  // must come first
  int add(const std::string& name, std::unique_ptr<Layer> layer, std::vector<int> inputs);
  void set_output(int node) { output_ = node; }

  // ---- structure
  const std::vector<Node>& nodes() const { return nodes_; }
  std::vector<Node>& nodes() { return nodes_; }
  int find(const std::string& name) const;  // -1 when absent
  int output_node() const { return output_ < 0 ? static_cast<int>(nodes_.size()) - 1 : output_; }
  const Shape& input_shape() const { return input_chw_; }  // (C, H, W)
  std::vector<std::vector<int>> consumers() const;         // per node: the nodes reading it
  std::vector<Shape> infer_shapes(int64_t batch) const;    // per node output shape
  std::string arch;  // zoo name ("vgg16", "resnet20") or "custom"; informational
  DataInfo data_info;  // empty for models from older files

  // ---- execution
  // x: (N, C, H, W) on the model's device -> logits (N, classes). In training mode the
  // activations backward needs are kept until `backward`.
  // On the CPU a training forward runs each batchnorm whose output only a ReLU reads fused
  // with it (one pass instead of two forward, the mask recomputed in backward instead of a
  // ReLU pass), and an eval forward runs conv -> batchnorm [-> ReLU] chains as one convolution
  // (eval_fusion_chains); set_fusion(false) runs every node on its own (same results within
  // float rounding: tests compare the two).
  Tensor forward(const Tensor& x, bool train);
  void set_fusion(bool on) { fuse_ = on; }
  bool fusion() const { return fuse_; }
  // dlogits: gradient of the loss w.r.t. the last forward's output. Writes every Param::grad.
  // `grads_ready` (optional) runs after each layer's parameter gradients are written, last
  // layer first (data-parallel training starts their allreduce there).
  void backward(const Tensor& dlogits, const std::function<void(Layer&)>& grads_ready = {});
  Device device() const { return device_; }
  void to(Device dev);

  // ---- parameters and state
  struct NamedParam {
    std::string name;  // "node.weight"
    Param* param;
  };
  // params() and state() hand out pointers callers may write through: a dense weight released
  // by release_dense_weights is rebuilt first (exactly, from its sparse form).
  std::vector<NamedParam> params();
  // Every tensor a model file holds (parameters and buffers), by full name.
  std::vector<std::pair<std::string, Tensor*>> state();
  // The same tensors for reading, the model unchanged: a released weight comes back rebuilt in
  // a fresh tensor. Safe on a model other threads serve (save and packing use it).
  std::vector<std::pair<std::string, Tensor>> state_for_reading() const;
  int64_t num_params() const;  // released weights included

  // ---- inference-only memory (SparseExecution in nn/layers.h): explicit, opt-in
  // Every conv and linear layer whose execution plan (nn/execution.h) runs sparse at every batch
  // drops its dense weight and keeps only the sparse form. Returns the bytes released. The model
  // computes the same outputs, bit for bit (those layers never read the dense weight in eval
  // mode); training, params()/state(), to(CUDA) and re-planning rebuild the weights exactly.
  int64_t release_dense_weights();
  void restore_dense_weights();           // every released weight rebuilt
  int64_t releasable_weight_bytes() const;  // what release_dense_weights would release now
  int released_weights() const;           // layers whose dense weight is released
  // For code that reads the dense weights of a const model (exports, compaction): throws Error
  // "<what>: node 'x' holds only its sparse weight ..." when one is released.
  void require_dense_weights(const std::string& what) const;
  // Multiply-accumulates of one forward pass for one image of the input shape.
  int64_t forward_macs() const;

  // ---- masks: one 0/1 tensor per pruned weight, by the weight's full name
  std::map<std::string, Tensor> masks;
  void apply_masks();           // weight *= mask
  void apply_masks_to_grads();  // grad *= mask

  // ---- text spec and files
  std::string spec() const;
  static Model from_spec(const std::string& spec);
  // kind "model": graph spec, arch, data_info (meta "data.*", only when set), state, masks.
  // from_archive checks data_info against the graph (one class name per output, one mean and
  // std per input channel) and refuses a file where they disagree.
  Archive to_archive() const;
  static Model from_archive(const Archive& a, const std::string& where);
  void save(const std::string& path) const;
  static Model load(const std::string& path);

 private:
  std::vector<Node> nodes_;
  Shape input_chw_;
  int output_ = -1;
  Device device_ = Device::CPU;
  // Forward state kept for backward (training mode only).
  std::vector<Tensor> acts_;
  std::vector<Shape> shapes_;
  bool have_train_forward_ = false;
  bool fuse_ = true;
  // fused_src_[i]: for a ReLU node run fused into the batchnorm that feeds it (this training
  // pass), that batchnorm's node; -1 otherwise.
  std::vector<int> fused_src_;
};

}  // namespace dnns
