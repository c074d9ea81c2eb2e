#include "nn/model.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <set>
#include <sstream>

#include "core/error.h"
#include "kernels/ops.h"
#include "nn/train_execution.h"

namespace dnns {

static void check_name(const std::string& name) {
  check(!name.empty(), "graph: empty node name");
  for (char c : name)
    check(c > ' ' && c != ',' && c != '=' && c != ':' && c < 127,
          "graph: node name '" + name + "' contains a space, ',', '=' or ':'");
}

int Model::add_input(const Shape& chw, const std::string& name) {
  check(nodes_.empty(), "graph: the input must be the first node");
  check(chw.size() == 3 && chw[0] > 0 && chw[1] > 0 && chw[2] > 0,
        "graph: input shape must be (C, H, W), got " + shape_str(chw));
  check_name(name);
  input_chw_ = chw;
  nodes_.push_back(Node{name, nullptr, {}});
  return 0;
}

int Model::add(const std::string& name, std::unique_ptr<Layer> layer, std::vector<int> inputs) {
  check(!nodes_.empty(), "graph: add the input node before '" + name + "'");
  check_name(name);
  check(find(name) < 0, "graph: duplicate node name '" + name + "'");
  check(layer != nullptr, "graph: node '" + name + "' has no layer");
  check(static_cast<int>(inputs.size()) == layer->num_inputs(),
        "graph: node '" + name + "' (" + layer_kind_name(layer->kind()) + ") takes " +
            std::to_string(layer->num_inputs()) + " input(s), got " + std::to_string(inputs.size()));
  for (int i : inputs)
    check(i >= 0 && i < static_cast<int>(nodes_.size()),
          "graph: node '" + name + "' reads a node that does not exist yet (index " + std::to_string(i) + ")");
  layer->to(device_);
  nodes_.push_back(Node{name, std::move(layer), std::move(inputs)});
  return static_cast<int>(nodes_.size()) - 1;
}

int Model::find(const std::string& name) const {
  for (size_t i = 0; i < nodes_.size(); ++i)
    if (nodes_[i].name == name) return static_cast<int>(i);
  return -1;
}

std::vector<int> eval_fusion_chains(const Model& m) {
  const auto& nodes = m.nodes();
  const int n = static_cast<int>(nodes.size()), out = m.output_node();
  const std::vector<std::vector<int>> cons = m.consumers();
  std::vector<int> last(n, -1);
  for (int i = 1; i < n; ++i) {
    if (nodes[i].layer->kind() != LayerKind::Conv || i == out || cons[i].size() != 1 ||
        static_cast<const Conv2d&>(*nodes[i].layer).fused_relu)  // a ReLU sits between the conv and the batchnorm
      continue;
    const int bn = cons[i][0];
    if (nodes[bn].layer->kind() != LayerKind::BatchNorm) continue;
    last[i] = bn;
    if (bn != out && cons[bn].size() == 1 && nodes[cons[bn][0]].layer->kind() == LayerKind::ReLU)
      last[i] = cons[bn][0];
  }
  return last;
}

std::vector<int> add_relu_pairs(const Model& m) {
  const auto& nodes = m.nodes();
  const int n = static_cast<int>(nodes.size()), out = m.output_node();
  const std::vector<std::vector<int>> cons = m.consumers();
  std::vector<int> relu(n, -1);
  for (int i = 1; i < n; ++i)
    if (nodes[i].layer->kind() == LayerKind::Add && !static_cast<const Add&>(*nodes[i].layer).mapped() && i != out &&
        cons[i].size() == 1 && nodes[cons[i][0]].layer->kind() == LayerKind::ReLU)
      relu[i] = cons[i][0];
  return relu;
}

std::vector<std::vector<int>> Model::consumers() const {
  std::vector<std::vector<int>> c(nodes_.size());
  for (size_t i = 0; i < nodes_.size(); ++i)
    for (int j : nodes_[i].inputs) c[j].push_back(static_cast<int>(i));
  return c;
}

std::vector<Shape> Model::infer_shapes(int64_t batch) const {
  check(!nodes_.empty(), "graph: empty model");
  std::vector<Shape> shapes(nodes_.size());
  shapes[0] = {batch, input_chw_[0], input_chw_[1], input_chw_[2]};
  for (size_t i = 1; i < nodes_.size(); ++i) {
    std::vector<Shape> in;
    for (int j : nodes_[i].inputs) in.push_back(shapes[j]);
    try {
      shapes[i] = nodes_[i].layer->output_shape(in);
    } catch (const Error& e) {
      throw Error("node '" + nodes_[i].name + "': " + e.what());
    }
  }
  return shapes;
}

Model Model::clone() const {
  Model m;
  m.input_chw_ = input_chw_;
  m.output_ = output_;
  m.device_ = device_;
  m.arch = arch;
  m.data_info = data_info;
  m.fuse_ = fuse_;
  for (const Node& n : nodes_) {
    std::unique_ptr<Layer> l;
    if (n.layer) {
      l = n.layer->clone();  // copies tensor handles; make them deep below
      for (Param* p : l->params()) {
        if (p->value.defined()) p->value = p->value.clone();  // released: stays so (the plan is shared)
        p->grad = Tensor();
      }
      for (auto& [bn, t] : l->buffers()) *t = t->clone();
      if (auto* bn = dynamic_cast<BatchNorm2d*>(l.get())) bn->save_mean = Tensor(), bn->save_invstd = Tensor();
    }
    m.nodes_.push_back(Node{n.name, std::move(l), n.inputs});
  }
  for (const auto& [k, v] : masks) m.masks[k] = v.clone();
  // A sparse-training pattern made from one of our masks was made from the clone's copy of it
  // too (else its first training forward would make it again: follow_mask_changes).
  for (size_t i = 0; i < nodes_.size(); ++i) {
    auto it = masks.find(nodes_[i].name + ".weight");
    if (it == masks.end()) continue;
    auto* c = dynamic_cast<Conv2d*>(m.nodes_[i].layer.get());
    auto* l = dynamic_cast<Linear*>(m.nodes_[i].layer.get());
    Tensor* made_from = c ? &c->sparse_train_mask : l ? &l->sparse_train_mask : nullptr;
    if (made_from && made_from->same_storage(it->second)) *made_from = m.masks[it->first];
  }
  return m;
}

void Model::to(Device dev) {
  for (Node& n : nodes_)
    if (n.layer) n.layer->to(dev);
  for (auto& [k, v] : masks) v = v.to(dev);
  device_ = dev;
  acts_.clear();
  have_train_forward_ = false;
}

// ---------------------------------------------------------------- execution

Tensor Model::forward(const Tensor& x, bool train) {
  const int n = static_cast<int>(nodes_.size());
  check(n > 1, "model: forward on an empty graph");
  check(x.ndim() == 4 && x.dim(1) == input_chw_[0] && x.dim(2) == input_chw_[1] && x.dim(3) == input_chw_[2],
        "model input: expected (N, " + std::to_string(input_chw_[0]) + ", " + std::to_string(input_chw_[1]) +
            ", " + std::to_string(input_chw_[2]) + "), got " + shape_str(x.shape()));
  check(x.device() == device_, std::string("model input is on ") + device_name(x.device()) +
                                   " but the model is on " + device_name(device_));
  // Sparse-training patterns follow masks replaced since they were planned (nn/train_execution.h).
  if (train) follow_mask_changes(*this);
  auto cons = consumers();
  const int out_node = output_node();

  // Which outputs must survive until backward.
  std::vector<bool> keep(n, false);
  if (train)
    for (int i = 1; i < n; ++i) {
      BackwardNeeds need = nodes_[i].layer->backward_needs();
      if (need.output) keep[i] = true;
      if (need.input)
        for (int j : nodes_[i].inputs) keep[j] = true;
    }
  std::vector<int> pending(n);
  for (int i = 0; i < n; ++i) pending[i] = static_cast<int>(cons[i].size());
  // Batchnorm + ReLU pairs that run fused in this pass (see set_fusion).
  fused_src_.assign(n, -1);
  for (int i = 1; i < n; ++i)
    if (auto* bn = dynamic_cast<BatchNorm2d*>(nodes_[i].layer.get())) bn->relu_fused = false;
  if (train && fuse_)
    for (int i = 1; i < n; ++i) {
      if (nodes_[i].layer->kind() != LayerKind::ReLU) continue;
      const int src = nodes_[i].inputs[0];
      auto* bn = src != 0 ? dynamic_cast<BatchNorm2d*>(nodes_[src].layer.get()) : nullptr;
      if (!bn || cons[src].size() != 1 || src == out_node || !bn->fusable_with_relu(x)) continue;
      bn->relu_fused = true;
      fused_src_[i] = src;
    }

  // A plain add whose only reader is a ReLU computes the ReLU too (add_relu_pairs); the ReLU
  // then takes the add's output as its own. Its backward runs as usual from that output.
  const std::vector<int> relu_of_add = fuse_ && x.is_cpu() ? add_relu_pairs(*this) : std::vector<int>(n, -1);
  std::vector<int> add_of_relu(n, -1);
  for (int i = 1; i < n; ++i)
    if (relu_of_add[i] >= 0) add_of_relu[relu_of_add[i]] = i;

  // Eval-mode conv -> batchnorm [-> ReLU] chains (see set_fusion); folded[j]: node j was
  // computed by the conv heading its chain.
  const std::vector<int> chain_last = !train && fuse_ ? eval_fusion_chains(*this) : std::vector<int>(n, -1);
  std::vector<char> folded(n, 0);

  acts_.assign(n, Tensor());
  shapes_.assign(n, Shape());
  acts_[0] = x;
  shapes_[0] = x.shape();
  std::vector<Shape> in_shapes;
  std::vector<const Tensor*> ins;
  for (int i = 1; i < n; ++i) {
    Node& node = nodes_[i];
    if (folded[i]) continue;  // its output (or the chain's) is already written
    in_shapes.clear();
    ins.clear();
    for (int j : node.inputs) {
      check(acts_[j].defined(), "internal: activation of '" + nodes_[j].name + "' released too early");
      in_shapes.push_back(acts_[j].shape());
      ins.push_back(&acts_[j]);
    }
    Shape out_shape;
    try {
      out_shape = node.layer->output_shape(in_shapes);
    } catch (const Error& e) {
      throw Error("node '" + node.name + "': " + e.what());
    }
    shapes_[i] = out_shape;
    const int writer = fused_src_[i] >= 0 ? fused_src_[i] : add_of_relu[i];
    if (writer >= 0) {  // the batchnorm or add before wrote this ReLU's output: take its storage
      acts_[i] = std::move(acts_[writer]);
      acts_[writer] = Tensor();
      continue;
    }
    if (relu_of_add[i] >= 0) {
      acts_[i] = Tensor::uninit(out_shape, device_);
      try {
        ops::add_relu_forward(*ins[0], *ins[1], acts_[i]);
      } catch (const Error& e) {
        throw Error("forward of node '" + node.name + "' (with '" + nodes_[relu_of_add[i]].name + "'): " + e.what());
      }
      for (int j : node.inputs)
        if (--pending[j] == 0 && !keep[j] && j != 0 && j != out_node) acts_[j] = Tensor();
      continue;
    }
    const int last = chain_last[i];
    if (last >= 0 && x.is_cpu() && static_cast<const Conv2d&>(*node.layer).folds_batchnorm(in_shapes[0])) {
      const int bn = cons[i][0];  // the chain's batchnorm
      const auto& conv = static_cast<const Conv2d&>(*node.layer);
      const auto& norm = static_cast<const BatchNorm2d&>(*nodes_[bn].layer);
      acts_[last] = Tensor::uninit(out_shape, device_);
      try {
        conv.forward_folded(*ins[0], norm, last != bn, acts_[last]);
      } catch (const Error& e) {
        throw Error("forward of node '" + node.name + "' (with '" + nodes_[bn].name + "' folded in): " + e.what());
      }
      shapes_[bn] = shapes_[last] = out_shape;
      folded[bn] = folded[last] = 1;
      for (int j : node.inputs)
        if (--pending[j] == 0 && !keep[j] && j != 0 && j != out_node) acts_[j] = Tensor();
      continue;
    }
    // ReLU runs in place when its input has no other reader and nobody's backward needs it.
    int src = node.inputs[0];
    bool in_place = node.layer->kind() == LayerKind::ReLU && src != 0 && cons[src].size() == 1 &&
                    !nodes_[src].layer->backward_needs().output && src != out_node;
    try {
      if (in_place) {
        acts_[i] = acts_[src];
        node.layer->forward(ins, acts_[i], train);
        acts_[src] = Tensor();  // the storage now holds this node's output
      } else {
        acts_[i] = Tensor::uninit(out_shape, device_);
        node.layer->forward(ins, acts_[i], train);
      }
    } catch (const Error& e) {
      throw Error("forward of node '" + node.name + "': " + e.what());
    }
    for (int j : node.inputs)
      if (--pending[j] == 0 && !keep[j] && j != 0 && j != out_node) acts_[j] = Tensor();
  }
  Tensor out = acts_[out_node];
  have_train_forward_ = train;
  if (!train) acts_.clear();
  return out;
}

void Model::backward(const Tensor& dlogits, const std::function<void(Layer&)>& grads_ready) {
  check(have_train_forward_, "model: backward needs a preceding forward in training mode");
  const int n = static_cast<int>(nodes_.size());
  const int out_node = output_node();
  check_shape(dlogits.shape(), acts_[out_node].shape(), "model backward: logit gradient");
  // grads[j]: the gradient of node j's output. A plain add passes its output gradient to both
  // inputs unchanged, so they share its storage instead of copying it; a storage is written in
  // place (a ReLU's backward over its own gradient, a sum into an input's gradient) only while
  // no other node's gradient shares it.
  std::vector<Tensor> grads(n);
  grads[out_node] = dlogits;
  // Whether another node's gradient than `except`'s, or the caller's logit gradient, holds g's storage.
  auto held = [&](const Tensor& g, int except) {
    for (int m = 1; m < n; ++m)
      if (m != except && grads[m].same_storage(g)) return true;
    return except != out_node && g.same_storage(dlogits);
  };
  auto shared = [&](int j) { return held(grads[j], j); };
  // A ReLU's gradient arriving in two parts (a block output read by the next block's add and
  // its first conv) keeps the second apart, in second[j], and its backward sums the two as it
  // masks them (ops::relu_backward_sum): one pass instead of a sum and a mask.
  std::vector<Tensor> second(n);
  // grads[j] += g, in place unless grads[j]'s storage is shared; `g_own` says g may be kept.
  auto sum_into = [&](int j, Tensor& g, bool g_own) {
    if (!grads[j].defined()) {
      grads[j] = g;
    } else if (!shared(j)) {
      ops::accumulate(g, grads[j]);
    } else if (g_own && !g.same_storage(grads[j])) {
      ops::accumulate(grads[j], g);  // the same sum, written over g
      grads[j] = g;
    } else {
      Tensor sum = grads[j].clone();
      ops::accumulate(g, sum);
      grads[j] = sum;
    }
  };
  // Part g of node j's gradient arrives: kept apart as second[j] where that applies, else summed.
  auto add_into = [&](int j, Tensor& g, bool g_own) {
    if (second[j].defined()) {  // a third part: the first two are summed first, in arrival order
      Tensor s = std::move(second[j]);
      second[j] = Tensor();
      sum_into(j, s, true);
    } else if (grads[j].defined() && g_own && fuse_ && g.is_cpu() && nodes_[j].layer->kind() == LayerKind::ReLU &&
               fused_src_[j] < 0 && j != out_node && nodes_[j].inputs[0] != 0 && !held(g, -1)) {
      second[j] = g;
      return;
    }
    sum_into(j, g, g_own);
  };
  std::vector<const Tensor*> ins;
  std::vector<Tensor*> din;
  std::vector<Tensor> fresh;
  for (int i = n - 1; i >= 1; --i) {
    Node& node = nodes_[i];
    if (!grads[i].defined()) {
      // No gradient reaches this node (it does not feed the output): its parameters get none.
      for (Param* p : node.layer->params()) p->grad = Tensor::zeros(p->value.shape(), device_);
      if (grads_ready) grads_ready(*node.layer);
      continue;
    }
    if (fused_src_[i] >= 0) {  // fused into its batchnorm, whose backward takes this gradient
      grads[fused_src_[i]] = std::move(grads[i]);
      if (grads_ready) grads_ready(*node.layer);
      grads[i] = Tensor();
      acts_[i] = Tensor();
      continue;
    }
    if (second[i].defined()) {  // a ReLU: dx = mask * (grads[i] + second[i])
      Tensor dx = std::move(second[i]);
      second[i] = Tensor();
      try {
        ops::relu_backward_sum(acts_[i], grads[i], dx, dx);
      } catch (const Error& e) {
        throw Error("backward of node '" + node.name + "': " + e.what());
      }
      if (grads_ready) grads_ready(*node.layer);
      add_into(node.inputs[0], dx, true);
      grads[i] = Tensor();
      acts_[i] = Tensor();
      continue;
    }
    if (node.layer->kind() == LayerKind::Add && !static_cast<const Add&>(*node.layer).mapped()) {
      for (int j : node.inputs)  // d(a + b)/da = d(a + b)/db = 1: both take grads[i] itself
        if (j != 0) add_into(j, grads[i], false);
      if (grads_ready) grads_ready(*node.layer);
      grads[i] = Tensor();
      acts_[i] = Tensor();
      continue;
    }
    ins.clear();
    din.clear();
    fresh.assign(node.inputs.size(), Tensor());
    for (size_t k = 0; k < node.inputs.size(); ++k) {
      int j = node.inputs[k];
      ins.push_back(&acts_[j]);
      if (j == 0) {
        din.push_back(nullptr);  // no gradient for the images
      } else if (node.layer->kind() == LayerKind::ReLU && !grads[j].defined() && i != out_node && !shared(i)) {
        fresh[k] = grads[i];  // relu_backward may write over its own output gradient
        din.push_back(&fresh[k]);
      } else {
        fresh[k] = Tensor::uninit(shapes_[j], device_);
        din.push_back(&fresh[k]);
      }
    }
    static const Tensor kNone;
    const Tensor& out = acts_[i].defined() ? acts_[i] : kNone;
    try {
      node.layer->backward(ins, out, grads[i], din);
    } catch (const Error& e) {
      throw Error("backward of node '" + node.name + "': " + e.what());
    }
    if (grads_ready) grads_ready(*node.layer);
    for (size_t k = 0; k < node.inputs.size(); ++k) {
      int j = node.inputs[k];
      if (j == 0) continue;
      // fresh[k] is this call's own tensor, except a ReLU's written over grads[i] (released next)
      add_into(j, fresh[k], true);
    }
    grads[i] = Tensor();
    acts_[i] = Tensor();
  }
  acts_.clear();
  have_train_forward_ = false;
}

// ---------------------------------------------------------------- parameters

namespace {

// The layer's releasable weight: a conv's or linear layer's, else none.
struct Releasable {
  Conv2d* conv = nullptr;
  Linear* linear = nullptr;
  bool released() const { return conv ? conv->weight_released() : linear && linear->weight_released(); }
  bool release() { return conv ? conv->release_dense_weight() : linear && linear->release_dense_weight(); }
  void restore() {
    if (conv) conv->restore_dense_weight();
    if (linear) linear->restore_dense_weight();
  }
  Shape shape() const { return conv ? conv->weight_shape() : linear ? linear->weight_shape() : Shape{}; }
  const SparseExecution* plan() const {
    return conv ? conv->sparse_exec.get() : linear ? linear->sparse_exec.get() : nullptr;
  }
  const Tensor* held() const {
    return conv ? &conv->weight.value : linear ? &linear->weight.value : nullptr;
  }
};

Releasable releasable(const Layer* l) {
  Layer* m = const_cast<Layer*>(l);  // callers that only read pass const layers
  return {dynamic_cast<Conv2d*>(m), dynamic_cast<Linear*>(m)};
}

}  // namespace

int64_t Model::release_dense_weights() {
  int64_t bytes = 0;
  for (Node& n : nodes_) {
    Releasable r = releasable(n.layer.get());
    const int64_t held = r.held() && !r.released() ? int64_t(r.held()->bytes()) : 0;
    if (r.release()) bytes += held;
  }
  return bytes;
}

void Model::restore_dense_weights() {
  for (Node& n : nodes_) releasable(n.layer.get()).restore();
}

int64_t Model::releasable_weight_bytes() const {
  int64_t bytes = 0;
  for (const Node& n : nodes_) {
    const Releasable r = releasable(n.layer.get());
    if (r.held() && !r.released() && r.held()->is_cpu() && r.plan() && r.plan()->sparse_at_every_batch())
      bytes += int64_t(r.held()->bytes());
  }
  return bytes;
}

int Model::released_weights() const {
  int count = 0;
  for (const Node& n : nodes_) count += releasable(n.layer.get()).released();
  return count;
}

void Model::require_dense_weights(const std::string& what) const {
  for (const Node& n : nodes_)
    check(!releasable(n.layer.get()).released(), [&] {
      return what + ": node '" + n.name + "' holds only its sparse weight (Model::release_dense_weights, an " +
             "inference-only model): call restore_dense_weights on a copy first";
    });
}

std::vector<std::pair<std::string, Tensor>> Model::state_for_reading() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (const Node& n : nodes_) {
    if (!n.layer) continue;
    Layer& l = const_cast<Layer&>(*n.layer);  // params()/buffers() only hand out pointers: read only
    const Releasable r = releasable(&l);
    for (Param* p : l.params()) {
      Tensor t = p->value;
      if (!t.defined() && r.conv) t = r.conv->dense_weight();
      if (!t.defined() && r.linear) t = r.linear->dense_weight();
      out.push_back({n.name + "." + p->name, t});
    }
    for (auto& [b, t] : l.buffers()) out.push_back({n.name + "." + b, *t});
  }
  return out;
}

std::vector<Model::NamedParam> Model::params() {
  restore_dense_weights();  // callers may write through the pointers
  std::vector<NamedParam> out;
  for (Node& n : nodes_)
    if (n.layer)
      for (Param* p : n.layer->params()) out.push_back({n.name + "." + p->name, p});
  return out;
}

std::vector<std::pair<std::string, Tensor*>> Model::state() {
  restore_dense_weights();  // callers may write through the pointers
  std::vector<std::pair<std::string, Tensor*>> out;
  for (Node& n : nodes_) {
    if (!n.layer) continue;
    for (Param* p : n.layer->params()) out.push_back({n.name + "." + p->name, &p->value});
    for (auto& [b, t] : n.layer->buffers()) out.push_back({n.name + "." + b, t});
  }
  return out;
}

int64_t Model::num_params() const {
  int64_t total = 0;
  for (const Node& n : nodes_)
    if (n.layer)
      for (Param* p : const_cast<Layer&>(*n.layer).params())
        total += p->value.defined() ? p->value.numel() : shape_numel(releasable(n.layer.get()).shape());
  return total;
}

int64_t Model::forward_macs() const {
  std::vector<Shape> shapes = infer_shapes(1);
  int64_t macs = 0;
  for (size_t i = 1; i < nodes_.size(); ++i) {
    const Layer& l = *nodes_[i].layer;
    if (auto* c = dynamic_cast<const Conv2d*>(&l))
      macs += int64_t(c->out_channels) * c->in_channels * c->kernel_h * c->kernel_w * shapes[i][2] * shapes[i][3];
    else if (auto* f = dynamic_cast<const Linear*>(&l))
      macs += int64_t(f->out_features) * f->in_features;
  }
  return macs;
}

void Model::apply_masks() {
  if (masks.empty()) return;
  for (NamedParam& p : params()) {
    auto it = masks.find(p.name);
    if (it != masks.end()) ops::mask_apply(p.param->value, it->second);
  }
  for (Node& n : nodes_) {  // a sparse form made before describes other weights now
    if (auto* c = dynamic_cast<Conv2d*>(n.layer.get())) c->sparse_exec.reset();
    if (auto* l = dynamic_cast<Linear*>(n.layer.get())) l->sparse_exec.reset();
  }
}

void Model::apply_masks_to_grads() {
  if (masks.empty()) return;
  for (NamedParam& p : params()) {
    auto it = masks.find(p.name);
    if (it != masks.end() && p.param->grad.defined()) ops::mask_apply(p.param->grad, it->second);
  }
}

// ---------------------------------------------------------------- spec and files

// One line per node: "<kind> <name> inputs=<a>,<b> key=value ...", after a header line, and
// an "output <name>" line. The input node is "input <name> shape=C,H,W".
std::string Model::spec() const {
  std::ostringstream os;
  os << "dnnshifter-graph 1\n";
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const Node& n = nodes_[i];
    if (!n.layer) {
      os << "input " << n.name << " shape=" << input_chw_[0] << "," << input_chw_[1] << "," << input_chw_[2] << "\n";
      continue;
    }
    os << layer_kind_name(n.layer->kind()) << " " << n.name << " inputs=";
    for (size_t k = 0; k < n.inputs.size(); ++k) os << (k ? "," : "") << nodes_[n.inputs[k]].name;
    for (const auto& [k, v] : n.layer->attrs()) os << " " << k << "=" << v;
    os << "\n";
  }
  os << "output " << nodes_[output_node()].name << "\n";
  return os.str();
}

// Every field between separators, empty ones included ("a,", ",a" and "" have an empty field,
// which no node name or dimension matches: refused, as the portable runtime's reader does).
static std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t at = s.find(sep); at != std::string::npos; at = s.find(sep, start)) {
    out.push_back(s.substr(start, at - start));
    start = at + 1;
  }
  out.push_back(s.substr(start));
  return out;
}

Model Model::from_spec(const std::string& spec) {
  check(spec.find('\0') == std::string::npos, "graph spec: holds a NUL byte");
  Model m;
  std::istringstream is(spec);
  std::string line;
  int lineno = 0;
  bool header = false, have_output = false;
  int64_t params = 0;  // declared so far, against kMaxSpecParams
  while (std::getline(is, line)) {
    ++lineno;
    if (line.empty()) continue;
    std::string where = "graph spec line " + std::to_string(lineno);
    std::istringstream ls(line);
    std::string kind, name, tok;
    ls >> kind;
    if (!header) {
      std::string version;
      ls >> version;
      check(kind == "dnnshifter-graph" && version == "1" && !(ls >> tok),
            where + ": not a dnnshifter graph spec (version 1)");
      header = true;
      continue;
    }
    ls >> name;
    check(!name.empty(), where + ": missing node name");
    if (kind == "output") {
      check(!(ls >> tok), where + ": unexpected '" + tok + "' after the output node");
      int o = m.find(name);
      check(o > 0, where + ": output node '" + name + "' does not exist");
      m.set_output(o);
      have_output = true;
      continue;
    }
    // "inputs" (layers) and "shape" (the input) are the graph's; the rest go to the layer,
    // which refuses what it does not know. An attribute given twice is refused.
    std::map<std::string, std::string> attrs;
    std::vector<int> inputs;
    Shape shape;
    std::set<std::string> seen;
    while (ls >> tok) {
      size_t eq = tok.find('=');
      check(eq != std::string::npos, where + ": expected key=value, got '" + tok + "'");
      std::string key = tok.substr(0, eq), val = tok.substr(eq + 1);
      check(seen.insert(key).second, [&] { return where + ": " + kind + " '" + name + "': attribute '" + key + "' given twice"; });
      if (key == "inputs" && kind != "input") {
        for (const std::string& in : split(val, ',')) {
          int j = m.find(in);
          check(j >= 0, where + ": node '" + name + "' reads unknown node '" + in + "'");
          inputs.push_back(j);
        }
      } else if (key == "shape" && kind == "input") {
        for (const std::string& d : split(val, ',')) {
          // Whole decimal numbers that fit an int, as the layers' integer attributes.
          size_t used = 0;
          long long v = 0;
          try {
            v = std::stoll(d, &used);
          } catch (...) {
            used = 0;
          }
          check(used > 0 && used == d.size() && v <= std::numeric_limits<int>::max() &&
                    v >= std::numeric_limits<int>::min(),
                [&] { return where + ": bad shape '" + val + "'"; });
          shape.push_back(v);
        }
      } else {
        check(kind != "input", where + ": input: unknown attribute '" + key + "'");
        attrs[key] = val;
      }
    }
    try {
      if (kind == "input") {
        m.add_input(shape, name);
      } else {
        const LayerKind k = parse_layer_kind(kind);
        params += declared_params(k, attrs);  // checked before anything is allocated
        check(params <= kMaxSpecParams, [&] {
          return "this node brings the parameters declared to more than the limit of " +
                 std::to_string(kMaxSpecParams) + " (2^27)";
        });
        m.add(name, make_layer(k, attrs), inputs);
      }
    } catch (const Error& e) {
      throw Error(where + " (node '" + name + "'): " + e.what());
    }
  }
  check(header, "graph spec: empty");
  check(m.nodes_.size() > 1, "graph spec: no layers");
  check(have_output, "graph spec: missing 'output' line");
  m.infer_shapes(1);  // validates every shape
  return m;
}

// ---- data_info in archive meta: "data.dataset", "data.classes" (names joined by '\n'),
// "data.channels" ("RGB" or "L"), "data.mean" and "data.std" (comma-separated, %.9g: every
// float round-trips exactly). Keys are written only when set.

static std::string float_list(const std::vector<float>& v) {
  std::string out;
  char buf[32];
  for (size_t i = 0; i < v.size(); ++i) {
    std::snprintf(buf, sizeof buf, "%s%.9g", i ? "," : "", double(v[i]));
    out += buf;
  }
  return out;
}

static std::vector<float> parse_float_list(const std::string& s, const std::string& where) {
  std::vector<float> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    float v = std::strtof(item.c_str(), &end);
    check(!item.empty() && end == item.c_str() + item.size() && std::isfinite(v),
          where + ": '" + item + "' is not a finite number");
    out.push_back(v);
  }
  return out;
}

static void write_data_info(const DataInfo& d, Archive& a) {
  if (!d.dataset.empty()) a.meta["data.dataset"] = d.dataset;
  if (!d.class_names.empty()) {
    std::string joined;
    for (size_t i = 0; i < d.class_names.size(); ++i) {
      check(d.class_names[i].find('\n') == std::string::npos,
            "model: class name '" + d.class_names[i] + "' holds a line break");
      joined += i ? "\n" : "";
      joined += d.class_names[i];
    }
    a.meta["data.classes"] = joined;
  }
  if (!d.channel_order.empty()) a.meta["data.channels"] = d.channel_order;
  if (!d.mean.empty()) a.meta["data.mean"] = float_list(d.mean);
  if (!d.std.empty()) a.meta["data.std"] = float_list(d.std);
}

// Reads and checks what write_data_info wrote against the model's input and output shapes.
static DataInfo read_data_info(const Archive& a, const Model& m, const std::string& where) {
  DataInfo d;
  auto get = [&](const char* key) { auto it = a.meta.find(key); return it == a.meta.end() ? std::string() : it->second; };
  d.dataset = get("data.dataset");
  const int64_t C = m.input_shape()[0];
  if (a.meta.count("data.classes")) {
    std::stringstream ss(get("data.classes"));
    std::string name;
    while (std::getline(ss, name, '\n')) d.class_names.push_back(name);
    if (!get("data.classes").empty() && get("data.classes").back() == '\n') d.class_names.push_back("");
    const int64_t classes = m.infer_shapes(1)[m.output_node()].back();
    check(static_cast<int64_t>(d.class_names.size()) == classes,
          where + ": meta 'data.classes' names " + std::to_string(d.class_names.size()) + " classes, the model has " +
              std::to_string(classes) + " outputs");
  }
  d.channel_order = get("data.channels");
  if (!d.channel_order.empty())
    check((d.channel_order == "RGB" && C == 3) || (d.channel_order == "L" && C == 1),
          where + ": meta 'data.channels' is '" + d.channel_order + "', which does not fit an input of " +
              std::to_string(C) + " channels (expected RGB for 3, L for 1)");
  if (a.meta.count("data.mean") || a.meta.count("data.std")) {
    d.mean = parse_float_list(get("data.mean"), where + ": meta 'data.mean'");
    d.std = parse_float_list(get("data.std"), where + ": meta 'data.std'");
    check(static_cast<int64_t>(d.mean.size()) == C && static_cast<int64_t>(d.std.size()) == C,
          where + ": meta 'data.mean' and 'data.std' need one value per input channel (" + std::to_string(C) +
              "), got " + std::to_string(d.mean.size()) + " and " + std::to_string(d.std.size()));
    for (float s : d.std) check(s >= 0, where + ": meta 'data.std' holds a negative value");
  }
  return d;
}

Archive Model::to_archive() const {
  Archive a;
  a.kind = "model";
  a.meta["graph"] = spec();
  a.meta["arch"] = arch;
  write_data_info(data_info, a);
  for (auto& [name, t] : state_for_reading()) a.tensors[name] = t.is_cpu() ? t : t.to(Device::CPU);
  for (const auto& [name, t] : masks) a.tensors["mask:" + name] = t.is_cpu() ? t : t.to(Device::CPU);
  return a;
}

Model Model::from_archive(const Archive& a, const std::string& where) {
  check(a.meta.count("graph"), where + ": holds no graph spec (not a model file?)");
  Model m;
  try {
    m = from_spec(a.meta.at("graph"));
  } catch (const Error& e) {
    throw Error(where + ": " + e.what());
  }
  if (a.meta.count("arch")) m.arch = a.meta.at("arch");
  m.data_info = read_data_info(a, m, where);
  std::set<std::string> used;
  for (auto& [name, t] : m.state()) {
    auto it = a.tensors.find(name);
    check(it != a.tensors.end(), where + ": tensor '" + name + "' is missing");
    check(it->second.shape() == t->shape(), where + ": tensor '" + name + "' has shape " +
                                                shape_str(it->second.shape()) + ", the graph expects " +
                                                shape_str(t->shape()));
    t->copy_from(it->second);
    used.insert(name);
  }
  for (auto& p : m.params()) {
    auto it = a.tensors.find("mask:" + p.name);
    if (it == a.tensors.end()) continue;
    check(it->second.shape() == p.param->value.shape(), where + ": mask of '" + p.name + "' has shape " +
                                                            shape_str(it->second.shape()));
    for (int64_t i = 0; i < it->second.numel(); ++i) {
      float v = it->second[i];
      // Not check(): its message would be built for every element (seconds for a VGG).
      if (v != 0.0f && v != 1.0f) throw Error(where + ": mask of '" + p.name + "' holds a value other than 0 and 1");
    }
    m.masks[p.name] = it->second.clone();
    used.insert("mask:" + p.name);
  }
  for (const auto& [name, t] : a.tensors)
    check(used.count(name), where + ": tensor '" + name + "' does not belong to the graph");
  return m;
}

void Model::save(const std::string& path) const { save_archive(path, to_archive()); }

Model Model::load(const std::string& path) {
  Archive a = load_archive(path);
  check(a.kind == "model", path + ": holds a '" + a.kind + "', not a model");
  return from_archive(a, path);
}

}  // namespace dnns
