// Layers: each declares its parameters, its output shape, its forward and its backward
// (Caffe's contract). The model graph (nn/model.h) owns them and runs them in order.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "kernels/params.h"
#include "kernels/cpu/sparse_train.h"
#include "kernels/sparse.h"

namespace dnns {

enum class LayerKind { Conv, BatchNorm, ReLU, MaxPool, AvgPool, GlobalAvgPool, Flatten, Linear, Add };
const char* layer_kind_name(LayerKind k);
LayerKind parse_layer_kind(const std::string& s);  // throws Error on an unknown name

// How an eval-mode forward runs a conv or linear layer on the CPU besides the dense kernel
// (made by plan_execution, nn/execution.h): the weight's nonzeros, and per planned batch size
// whether the sparse kernel runs (measured costs). A batch that was not planned follows the
// nearest planned one (log scale); `always` runs sparse at every batch (--execution sparse).
// It describes the weight as it was when made: backward and Model::apply_masks drop it;
// other code that edits the weight must drop it too (plan_execution dense).
struct SparseExecution {
  struct Choice {
    int64_t batch = 1;
    bool sparse = false;
    double dense_ms = -1, sparse_ms = -1;  // the measured layer times behind the choice
  };
  SparseRows weight;            // (K, C*R*S) or (O, I)
  // conv: `weight` prepared for the layer's input size (made by plan_execution), or null
  std::shared_ptr<const cpu::SparseConvRuns> runs;
  bool always = false;
  std::vector<Choice> choices;  // ascending batch, unique
  bool runs_sparse(int64_t batch) const;
  const Choice* choice_for(int64_t batch) const;  // the planned entry of exactly `batch`, or nullptr
  // Whether an eval forward on the CPU runs sparse at every batch (`always`, or every planned
  // batch sparse) with a sparse form: the dense weight is then never read in eval mode, and
  // an inference-only model may release it (Model::release_dense_weights).
  bool sparse_at_every_batch() const;
  int64_t bytes() const;  // what the sparse form holds: the nonzeros and columns, and the runs
};

// Inference-only memory: a conv or linear layer whose plan runs sparse at every batch may
// release its dense weight (weight.value becomes an undefined tensor), the sparse form holding
// every nonzero. What needs the dense weight afterwards rebuilds it exactly from the sparse form
// (a zero of either sign comes back as +0.0, which changes no sum): a training forward, a
// backward, to(CUDA), Model::params() / state() (so save, masks, optimizers, re-planning) and
// dense_weight() (a copy, the layer unchanged). An eval forward that would run dense on a
// released weight (its plan dropped without restore_dense_weight) throws Error naming the
// layer; it never runs on an empty weight. Conv2d and Linear both provide:
//   bool release_dense_weight();  // true when released now (plan sparse at every batch, CPU)
//   void restore_dense_weight();  // rebuilds a released weight; nothing when it is held
//   bool weight_released() const;
//   Shape weight_shape() const;   // (K, C, R, S) or (O, I), held or not
//   Tensor dense_weight() const;  // the held tensor, or a rebuilt copy

// A learnable tensor with its gradient. `prunable` marks conv and linear weights (the only
// tensors that get masks); biases and batchnorm parameters are never pruned.
struct Param {
  std::string name;  // local name: "weight", "bias"
  Tensor value;
  Tensor grad;       // same shape; written by backward
  bool prunable = false;
};

// Which forward tensors a layer's backward reads. The executor frees every activation no
// later consumer and no backward needs, so memory holds only what training requires.
struct BackwardNeeds {
  bool input = false;
  bool output = false;
};

class Layer {
 public:
  virtual ~Layer() = default;
  virtual LayerKind kind() const = 0;
  // Attributes as "key=value" pairs (the graph spec stores them; `make_layer` parses them).
  virtual std::map<std::string, std::string> attrs() const = 0;
  virtual Shape output_shape(const std::vector<Shape>& in) const = 0;
  virtual BackwardNeeds backward_needs() const { return {}; }
  // in: the input tensors; out: preallocated with output_shape (may alias in[0] when the
  // executor runs an in-place ReLU). `train` selects batch statistics for batchnorm.
  virtual void forward(const std::vector<const Tensor*>& in, Tensor& out, bool train) = 0;
  // dout: gradient of the output. din[i]: preallocated gradients of the inputs to write
  // (overwrite, not accumulate). Parameter gradients are overwritten in Param::grad.
  virtual void backward(const std::vector<const Tensor*>& in, const Tensor& out, const Tensor& dout,
                        const std::vector<Tensor*>& din) = 0;
  virtual std::vector<Param*> params() { return {}; }
  // Non-learned state saved with the model (batchnorm running statistics).
  virtual std::vector<std::pair<std::string, Tensor*>> buffers() { return {}; }
  virtual void to(Device dev);
  virtual std::unique_ptr<Layer> clone() const = 0;
  int num_inputs() const { return kind() == LayerKind::Add ? 2 : 1; }
};

// Conv2d: weight (K, C, R, S), optional bias (K). `fused_relu` applies ReLU to the output in
// the same pass (inference graphs made by the compactor). The compactor may also give it a
// border table: the exact contribution of removed constant input channels, which differs
// near the zero-padded border. It depends on the output position (p, q) only through a row
// class and a column class (which kernel taps, at any depth, fell into padding), so it is
// stored as pos_bias (K, row classes, column classes) with the class of each output row and
// column: y[n, k, p, q] += pos_bias[k, pos_rows[p], pos_cols[q]]. A model file from before
// the tables holds a full (K, P, Q) map: the same thing with one class per row and column.
// C or K may be 0 in a compacted model (every input channel removed: the output is the bias
// alone; every output channel removed: nothing).
class BatchNorm2d;

class Conv2d : public Layer {
 public:
  // zero_weight = false leaves the weight uninitialised, for a caller that fills it.
  Conv2d(int in_channels, int out_channels, int kernel_h, int kernel_w, int stride, int pad, bool bias,
         bool fused_relu = false, int pos_h = 0, int pos_w = 0, bool zero_weight = true);
  LayerKind kind() const override { return LayerKind::Conv; }
  std::map<std::string, std::string> attrs() const override;
  Shape output_shape(const std::vector<Shape>& in) const override;
  BackwardNeeds backward_needs() const override { return {true, fused_relu}; }
  void forward(const std::vector<const Tensor*>& in, Tensor& out, bool train) override;
  void backward(const std::vector<const Tensor*>& in, const Tensor& out, const Tensor& dout,
                const std::vector<Tensor*>& din) override;
  std::vector<Param*> params() override;
  std::unique_ptr<Layer> clone() const override;
  Conv2dParams conv_params(const Shape& x) const;
  // Gives the conv a border table for outputs of pos_h = rows.size() by pos_w = cols.size()
  // positions, row class rows[p] and column class cols[q]: pos_bias becomes a zero table
  // (K, max(rows) + 1, max(cols) + 1). Throws on an empty list or a negative class.
  void set_border_table(std::vector<int32_t> rows, std::vector<int32_t> cols);
  int64_t table_rows() const { return pos_h > 0 ? pos_bias.value.dim(1) : 0; }
  int64_t table_cols() const { return pos_h > 0 ? pos_bias.value.dim(2) : 0; }

  // Eval mode on the CPU: this conv, then `bn`, then a ReLU when `relu`, as one convolution:
  // the batchnorm folded into this call's filters and bias (w' = w s, b' = (b - mean) s + beta,
  // s = gamma / sqrt(var + eps), in double; nothing stored) and the ReLU in the output pass.
  // folds_batchnorm(x) says whether forward_folded applies to input shape x: CPU weights, no
  // border table, channels both ways, no fused ReLU of its own, no sparse plan for this batch,
  // and at least kMinFoldOutputs outputs per filter (N*P*Q), so that folding the K*C*R*S
  // weights costs little next to the convolution. forward_folded throws where it does not apply.
  static constexpr int64_t kMinFoldOutputs = 256;
  bool folds_batchnorm(const Shape& x) const;
  void forward_folded(const Tensor& x, const BatchNorm2d& bn, bool relu, Tensor& out) const;

  int in_channels, out_channels, kernel_h, kernel_w, stride, pad;
  bool has_bias, fused_relu;
  int pos_h, pos_w;                         // > 0: the output size its border table covers
  std::vector<int32_t> pos_rows, pos_cols;  // (pos_h), (pos_w): class of each output row, column
  Param weight, bias, pos_bias;             // pos_bias: (K, row classes, column classes)
  std::shared_ptr<const SparseExecution> sparse_exec;  // see SparseExecution; null: dense
  // A released dense weight (see SparseExecution above).
  bool release_dense_weight();
  void restore_dense_weight();
  bool weight_released() const { return !weight.value.defined(); }
  Shape weight_shape() const { return {out_channels, in_channels, kernel_h, kernel_w}; }
  Tensor dense_weight() const;
  void to(Device dev) override;  // rebuilds a released weight first when leaving the CPU
  // Sparse training (nn/train_execution.h): set, a training forward and backward on the CPU run
  // the sparse kernels over this pattern of the weight's mask (no border table, C > 0); null:
  // dense. Each layer (and each clone) holds its own: the values are gathered into it per step.
  std::shared_ptr<SparseTrainPattern> sparse_train;
  // The mask tensor (Model::masks) sparse_train was made from: a training forward of the model
  // re-makes the pattern when the model's mask is another tensor now (nn/train_execution.h).
  Tensor sparse_train_mask;
};

// Border-table helpers, shared by the compactor and the ONNX importer. class_count: the number
// of classes a class list uses (its largest entry + 1; 0 for an empty list).
int32_t class_count(const std::vector<int32_t>& classes);
// Merges the classes whose table slices are exactly equal, renumbering in order of first
// appearance. table: (K, class_count(rows), class_count(cols)), row-major; along = 0 merges
// row classes (rewriting `rows`), 1 column classes (rewriting `cols`). Returns the reduced
// table. A full (K, P, Q) map with one class per row and column, merged along 0 and then 1,
// becomes the smallest exact border table.
std::vector<double> merge_equal_classes(std::vector<double> table, int K, std::vector<int32_t>& rows,
                                        std::vector<int32_t>& cols, int along);

// BatchNorm2d over channels: gamma ("weight"), beta ("bias"), running mean/var buffers.
class BatchNorm2d : public Layer {
 public:
  explicit BatchNorm2d(int channels, float eps = 1e-5f, float momentum = 0.1f);
  LayerKind kind() const override { return LayerKind::BatchNorm; }
  std::map<std::string, std::string> attrs() const override;
  Shape output_shape(const std::vector<Shape>& in) const override;
  BackwardNeeds backward_needs() const override { return {true, false}; }
  void forward(const std::vector<const Tensor*>& in, Tensor& out, bool train) override;
  void backward(const std::vector<const Tensor*>& in, const Tensor& out, const Tensor& dout,
                const std::vector<Tensor*>& din) override;
  std::vector<Param*> params() override { return {&gamma, &beta}; }
  std::vector<std::pair<std::string, Tensor*>> buffers() override;
  void to(Device dev) override;
  std::unique_ptr<Layer> clone() const override;
  BatchNormParams bn_params(const Shape& x) const;
  // Eval mode as a per-channel affine map y = scale * x + shift, in double:
  // scale = gamma / sqrt(running_var + eps), shift = beta - running_mean * scale. The one
  // formula every batchnorm fold uses (Conv2d::forward_folded, the compactor, the ONNX export).
  void eval_affine(std::vector<double>& scale, std::vector<double>& shift) const;

  int channels;
  float eps, momentum;
  Param gamma, beta;
  Tensor running_mean, running_var;  // (C)
  Tensor save_mean, save_invstd;     // (C), from the last training forward
  // Data-parallel training (nn/distributed.h): a training forward normalises with the
  // statistics of the global batch, gathered from every rank, and backward sums the two
  // per-channel reductions it needs over the ranks too. Set by the trainer for its epochs.
  bool sync_stats = false;
  // Set by Model::forward for one training pass when a ReLU is the only reader of this layer's
  // output and the pair can run fused (fusable_with_relu): forward then writes relu(bn(x))
  // (the model skips the ReLU node) and backward takes the ReLU output's gradient.
  bool relu_fused = false;
  // Whether a training forward on x can take the fused batchnorm + ReLU kernels: CPU tensors,
  // and not the data-parallel path with global statistics.
  bool fusable_with_relu(const Tensor& x) const;

 private:
  void forward_synced(const BatchNormParams& p, const Tensor& x, Tensor& out);
  void backward_synced(const BatchNormParams& p, const Tensor& x, const Tensor& dout, Tensor* dx);
  bool synced_forward_ = false;  // the last training forward used global statistics
  int64_t global_count_ = 0;     // values per channel over all ranks in that forward
};

class ReLU : public Layer {
 public:
  LayerKind kind() const override { return LayerKind::ReLU; }
  std::map<std::string, std::string> attrs() const override { return {}; }
  Shape output_shape(const std::vector<Shape>& in) const override { return in.at(0); }
  BackwardNeeds backward_needs() const override { return {false, true}; }
  void forward(const std::vector<const Tensor*>& in, Tensor& out, bool train) override;
  void backward(const std::vector<const Tensor*>& in, const Tensor& out, const Tensor& dout,
                const std::vector<Tensor*>& din) override;
  std::unique_ptr<Layer> clone() const override { return std::make_unique<ReLU>(*this); }
};

// Max or average pooling with a square window and no padding.
class Pool2d : public Layer {
 public:
  Pool2d(bool max, int kernel, int stride) : is_max(max), kernel(kernel), stride(stride) {}
  LayerKind kind() const override { return is_max ? LayerKind::MaxPool : LayerKind::AvgPool; }
  std::map<std::string, std::string> attrs() const override;
  Shape output_shape(const std::vector<Shape>& in) const override;
  BackwardNeeds backward_needs() const override { return {is_max, false}; }
  void forward(const std::vector<const Tensor*>& in, Tensor& out, bool train) override;
  void backward(const std::vector<const Tensor*>& in, const Tensor& out, const Tensor& dout,
                const std::vector<Tensor*>& din) override;
  std::unique_ptr<Layer> clone() const override { return std::make_unique<Pool2d>(*this); }
  Pool2dParams pool_params(const Shape& x) const;

  bool is_max;
  int kernel, stride;
};

// (N, C, H, W) -> (N, C)
class GlobalAvgPool : public Layer {
 public:
  LayerKind kind() const override { return LayerKind::GlobalAvgPool; }
  std::map<std::string, std::string> attrs() const override { return {}; }
  Shape output_shape(const std::vector<Shape>& in) const override;
  void forward(const std::vector<const Tensor*>& in, Tensor& out, bool train) override;
  void backward(const std::vector<const Tensor*>& in, const Tensor& out, const Tensor& dout,
                const std::vector<Tensor*>& din) override;
  std::unique_ptr<Layer> clone() const override { return std::make_unique<GlobalAvgPool>(*this); }
};

// (N, C, H, W) -> (N, C*H*W), channel-major as PyTorch's flatten.
class Flatten : public Layer {
 public:
  LayerKind kind() const override { return LayerKind::Flatten; }
  std::map<std::string, std::string> attrs() const override { return {}; }
  Shape output_shape(const std::vector<Shape>& in) const override;
  void forward(const std::vector<const Tensor*>& in, Tensor& out, bool train) override;
  void backward(const std::vector<const Tensor*>& in, const Tensor& out, const Tensor& dout,
                const std::vector<Tensor*>& din) override;
  std::unique_ptr<Layer> clone() const override { return std::make_unique<Flatten>(*this); }
};

// Linear: weight (O, I), optional bias (O); input (N, I).
class Linear : public Layer {
 public:
  // zero_weight = false leaves the weight uninitialised, for a caller that fills it.
  Linear(int in_features, int out_features, bool bias = true, bool zero_weight = true);
  LayerKind kind() const override { return LayerKind::Linear; }
  std::map<std::string, std::string> attrs() const override;
  Shape output_shape(const std::vector<Shape>& in) const override;
  BackwardNeeds backward_needs() const override { return {true, false}; }
  void forward(const std::vector<const Tensor*>& in, Tensor& out, bool train) override;
  void backward(const std::vector<const Tensor*>& in, const Tensor& out, const Tensor& dout,
                const std::vector<Tensor*>& din) override;
  std::vector<Param*> params() override;
  std::unique_ptr<Layer> clone() const override;

  int in_features, out_features;
  bool has_bias;
  Param weight, bias;
  std::shared_ptr<const SparseExecution> sparse_exec;  // see SparseExecution; null: dense
  std::shared_ptr<SparseTrainPattern> sparse_train;    // as Conv2d's: (O, I) as (O, I, 1, 1)
  Tensor sparse_train_mask;                            // as Conv2d's
  // A released dense weight (see SparseExecution above).
  bool release_dense_weight();
  void restore_dense_weight();
  bool weight_released() const { return !weight.value.defined(); }
  Shape weight_shape() const { return {out_features, in_features}; }
  Tensor dense_weight() const;
  void to(Device dev) override;  // rebuilds a released weight first when leaving the CPU
};

// Elementwise sum of two tensors of one shape: the residual join. The compactor treats all
// tensors joined by an Add as one channel group.
//
// A compacted residual join may also carry channel maps and a bias: a branch conv whose
// filters are dead computes only its live channels, and the add puts them into their stream
// channels: y[n, k] = bias[k] + sum over inputs i and their channels c with map_i[c] = k of
// x_i[n, c] (a map is a strictly ascending list of output channels, one per input channel;
// an empty map is the identity). The dead filters' constants are in the bias.
class Add : public Layer {
 public:
  Add() = default;
  // channels: the output's; map0/map1: the inputs' channel maps (empty: identity); bias: a
  // per-channel bias (zero until set).
  Add(int channels, std::vector<int32_t> map0, std::vector<int32_t> map1, bool bias);
  LayerKind kind() const override { return LayerKind::Add; }
  std::map<std::string, std::string> attrs() const override;
  Shape output_shape(const std::vector<Shape>& in) const override;
  void forward(const std::vector<const Tensor*>& in, Tensor& out, bool train) override;
  void backward(const std::vector<const Tensor*>& in, const Tensor& out, const Tensor& dout,
                const std::vector<Tensor*>& din) override;
  std::vector<Param*> params() override;
  std::unique_ptr<Layer> clone() const override {
    auto c = std::make_unique<Add>(*this);
    c->scratch_ = Tensor();  // a clone may run on another thread: its own scratch
    return c;
  }
  bool mapped() const { return channels > 0; }  // channel maps or a bias: not a plain sum

  int channels = 0;                   // > 0: the output's channel count (maps or bias present)
  std::vector<int32_t> map[2];        // (input channels) output channel of each, or empty
  bool has_bias = false;
  Param bias;                         // (channels)

 private:
  // Host scratch of the mapped forward and backward, kept across calls while its shape stays
  // (used only where the result cannot be written in place: a device tensor, an aliased one).
  Tensor& scratch(const Shape& shape);
  Tensor scratch_;
};

// Builds a layer from its kind and attributes (as stored in a graph spec).
std::unique_ptr<Layer> make_layer(LayerKind kind, const std::map<std::string, std::string>& attrs);

// The most parameters a graph spec may declare, all layers together: 2^27 (512 MiB of float32;
// VGG-19, the zoo's largest, has 20M). A spec comes from a file, and make_layer allocates what
// the attributes say before the graph's shapes are checked: without a bound, one line of a
// stranger's file ("conv ... in=122222222") asks for gigabytes (found by tests/fuzz/fuzz_spec).
constexpr int64_t kMaxSpecParams = int64_t(1) << 27;

// The parameters (and batchnorm statistics) a layer of this kind and these attributes would
// hold, computed from the attributes without building it; saturates at kMaxSpecParams + 1.
// Throws Error like make_layer for a missing or non-integer size attribute.
int64_t declared_params(LayerKind kind, const std::map<std::string, std::string>& attrs);

}  // namespace dnns
