#include "prune/infer.h"

#include <algorithm>

#include "core/error.h"
#include "core/threading.h"
#include "kernels/cpu/cpu.h"
#include "kernels/ops.h"
#include "kernels/sparse.h"
#include "nn/execution.h"

namespace dnns {

namespace {

// Whether a layer's eval-mode forward only reads the layer. Checked against nn/layers.cpp:
//   Conv2d     reads weight, bias, pos_bias and its execution plan (sparse_exec, set by
//              plan_execution before serving); writes `out` (and, with no input channels,
//              a local host tensor); the CPU kernels' scratch is thread_local or per call.
//   BatchNorm  the eval path (train == false) reads gamma, beta and the running statistics;
//              only the training path writes running_mean/var and save_mean/invstd.
//   ReLU, Pool2d, GlobalAvgPool, Flatten, Add: no state at all.
//   Linear     reads weight, bias and sparse_exec.
// A new layer kind must be vetted here before `infer` runs it.
bool eval_forward_is_stateless(LayerKind k) {
  switch (k) {
    case LayerKind::Conv:
    case LayerKind::BatchNorm:
    case LayerKind::ReLU:
    case LayerKind::MaxPool:
    case LayerKind::AvgPool:
    case LayerKind::GlobalAvgPool:
    case LayerKind::Flatten:
    case LayerKind::Linear:
    case LayerKind::Add: return true;
  }
  return false;
}

// The release plan infer follows, shared with inference_memory so the computed peak is the
// peak of the real pass. A ReLU runs in place when its input is an intermediate activation
// (not the caller's images, not the output) that nothing else reads.
struct Plan {
  std::vector<int> readers;   // (nodes) how many nodes read each node's output
  std::vector<bool> in_place; // (nodes) ReLU that overwrites its input
  std::vector<int> chain_last, chain_bn;  // (nodes) eval_fusion_chains, and each chain's batchnorm
  // (nodes) add_relu_pairs (CPU, fusion on): the ReLU computed with each such add, as
  // Model::forward does; the bytes are those of the add's output with the ReLU in place, as
  // inference_memory counts them.
  std::vector<int> relu_of_add;
  int out_node = 0;
};

Plan make_plan(const Model& m) {
  const auto& nodes = m.nodes();
  const int n = static_cast<int>(nodes.size());
  Plan p;
  p.out_node = m.output_node();
  p.readers.assign(n, 0);
  p.in_place.assign(n, false);
  for (int i = 1; i < n; ++i)
    for (int j : nodes[i].inputs) ++p.readers[j];
  for (int i = 1; i < n; ++i) {
    int src = nodes[i].inputs[0];
    p.in_place[i] = nodes[i].layer->kind() == LayerKind::ReLU && src != 0 && p.readers[src] == 1 && src != p.out_node;
  }
  p.chain_last = m.device() == Device::CPU && m.fusion() ? eval_fusion_chains(m) : std::vector<int>(n, -1);
  p.chain_bn.assign(n, -1);
  for (int i = 1; i < n; ++i)
    for (int j : nodes[i].inputs)
      if (p.chain_last[j] >= 0) p.chain_bn[j] = i;  // the conv's only reader
  p.relu_of_add = m.device() == Device::CPU && m.fusion() ? add_relu_pairs(m) : std::vector<int>(n, -1);
  return p;
}

}  // namespace

Tensor infer(const Model& m, const Tensor& x) {
  const auto& nodes = m.nodes();
  const int n = static_cast<int>(nodes.size());
  check(n > 1, "infer: empty model graph");
  const Shape& chw = m.input_shape();
  check(x.ndim() == 4 && x.dim(1) == chw[0] && x.dim(2) == chw[1] && x.dim(3) == chw[2], [&] {
    return "infer: expected input (N, " + std::to_string(chw[0]) + ", " + std::to_string(chw[1]) + ", " +
           std::to_string(chw[2]) + "), got " + shape_str(x.shape());
  });
  check(x.device() == m.device(), [&] {
    return std::string("infer: input is on ") + device_name(x.device()) + " but the model is on " +
           device_name(m.device());
  });
  const Plan plan = make_plan(m);
  std::vector<int> pending = plan.readers;
  std::vector<Tensor> acts(n);  // (nodes) live activations of this call only
  acts[0] = x;
  std::vector<Shape> in_shapes;
  std::vector<const Tensor*> ins;
  std::vector<char> folded(n, 0);  // computed by the conv heading its chain (plan.chain_last)
  for (int i = 1; i < n; ++i) {
    const Node& node = nodes[i];
    if (folded[i]) continue;
    check(eval_forward_is_stateless(node.layer->kind()),
          [&] { return "infer: node '" + node.name + "' has a layer kind not vetted for concurrent eval-mode inference"; });
    in_shapes.clear();
    ins.clear();
    for (int j : node.inputs) {
      in_shapes.push_back(acts[j].shape());
      ins.push_back(&acts[j]);
    }
    Shape out_shape;
    try {
      out_shape = node.layer->output_shape(in_shapes);
    } catch (const Error& e) {
      throw Error("infer: node '" + node.name + "': " + e.what());
    }
    // Layer::forward is declared non-const for the training path; in eval mode every vetted
    // layer only reads itself (see eval_forward_is_stateless), so this const_cast never
    // leads to a write and concurrent calls on one model are safe.
    Layer& layer = const_cast<Layer&>(*node.layer);
    const int last = plan.chain_last[i];
    if (last >= 0 && static_cast<const Conv2d&>(layer).folds_batchnorm(in_shapes[0])) {
      const int bn = plan.chain_bn[i];
      acts[last] = Tensor::uninit(out_shape, m.device());
      static_cast<const Conv2d&>(layer).forward_folded(*ins[0], static_cast<const BatchNorm2d&>(*nodes[bn].layer),
                                                       last != bn, acts[last]);
      folded[bn] = folded[last] = 1;
    } else if (plan.relu_of_add[i] >= 0) {
      const int relu = plan.relu_of_add[i];
      acts[relu] = Tensor::uninit(out_shape, m.device());
      try {
        ops::add_relu_forward(*ins[0], *ins[1], acts[relu]);
      } catch (const Error& e) {
        throw Error("infer: node '" + node.name + "' (with '" + nodes[relu].name + "'): " + e.what());
      }
      folded[relu] = 1;
    } else if (plan.in_place[i]) {
      const int src = node.inputs[0];
      acts[i] = acts[src];
      layer.forward(ins, acts[i], false);
      acts[src] = Tensor();
    } else {
      acts[i] = Tensor::uninit(out_shape, m.device());
      layer.forward(ins, acts[i], false);
    }
    for (int j : node.inputs)
      if (--pending[j] == 0 && j != 0 && j != plan.out_node) acts[j] = Tensor();
  }
  return acts[plan.out_node];
}

InferenceMemory inference_memory(const Model& m, int64_t batch) {
  check(batch > 0, "inference_memory: batch must be positive, got " + std::to_string(batch));
  InferenceMemory r;
  for (const Node& node : m.nodes()) {
    if (!node.layer) continue;
    Layer& layer = const_cast<Layer&>(*node.layer);  // params()/buffers() only hand out pointers
    for (Param* p : layer.params()) r.parameter_bytes += static_cast<int64_t>(p->value.bytes());
    for (auto& [name, t] : layer.buffers()) r.buffer_bytes += static_cast<int64_t>(t->bytes());
  }
  const std::vector<Shape> shapes = m.infer_shapes(batch);
  const Plan plan = make_plan(m);
  const auto& nodes = m.nodes();
  const int n = static_cast<int>(nodes.size());
  auto bytes_of = [&](int i) { return shape_numel(shapes[i]) * static_cast<int64_t>(sizeof(float)); };
  std::vector<int> pending = plan.readers;
  int64_t live = bytes_of(0), peak = live;
  int64_t slot0 = 0, slot1 = 0;  // floats of the two thread_local scratch slots the conv kernel grows
  int64_t call_bytes = 0;        // the largest buffer one call allocates for itself
  std::vector<char> folded(n, 0);
  for (int i = 1; i < n; ++i) {
    if (folded[i]) continue;  // computed with the conv heading its chain, as infer does
    auto* c = dynamic_cast<const Conv2d*>(nodes[i].layer.get());
    const int last = plan.chain_last[i];
    const bool fold = last >= 0 && c->folds_batchnorm(shapes[nodes[i].inputs[0]]);
    if (fold) folded[plan.chain_bn[i]] = folded[last] = 1;
    if (!plan.in_place[i]) live += bytes_of(fold ? last : i);
    peak = std::max(peak, live);  // inputs and output are all alive while node i runs
    for (int j : nodes[i].inputs)  // an in-place ReLU's input storage lives on as its output
      if (--pending[j] == 0 && j != 0 && j != plan.out_node && !plan.in_place[i]) live -= bytes_of(j);
    // A layer planned sparse at this batch runs the sparse kernel (as Conv2d/Linear::forward).
    auto sparse_here = [&](const std::shared_ptr<const SparseExecution>& e) {
      return m.device() == Device::CPU && e && e->weight.rows && e->runs_sparse(batch);
    };
    if (c) {
      if (c->in_channels == 0 || c->out_channels == 0) continue;
      const Conv2dParams cp = c->conv_params(shapes[nodes[i].inputs[0]]);
      if (sparse_here(c->sparse_exec)) {
        const cpu::SparseScratch need = cpu::sparse_conv2d_forward_scratch(cp, c->sparse_exec->weight);
        slot0 = std::max(slot0, need.slot0);
        slot1 = std::max(slot1, need.slot1);
        call_bytes = std::max(call_bytes, need.call_bytes);
        continue;
      }
      const cpu::ConvScratch need = cpu::conv_forward_scratch(cp);
      slot0 = std::max(slot0, need.slot0);
      slot1 = std::max(slot1, need.slot1);
      int64_t own = need.call * static_cast<int64_t>(sizeof(float));
      if (fold)  // the folded filters and bias (Conv2d::forward_folded), alive during the call
        own += static_cast<int64_t>(c->weight.value.bytes()) + c->out_channels * static_cast<int64_t>(sizeof(float));
      call_bytes = std::max(call_bytes, own);
    } else if (auto* l = dynamic_cast<const Linear*>(nodes[i].layer.get())) {
      if (!sparse_here(l->sparse_exec)) continue;
      const cpu::SparseScratch need = cpu::sparse_linear_forward_scratch(int(batch), l->sparse_exec->weight);
      slot0 = std::max(slot0, need.slot0);
      call_bytes = std::max(call_bytes, need.call_bytes);
    }
  }
  r.activation_bytes = peak;
  r.workspace_bytes = (slot0 + slot1) * static_cast<int64_t>(sizeof(float)) + call_bytes;
  r.sparse_weight_bytes = sparse_execution_bytes(m);
  return r;
}

int64_t model_resident_bytes(const Model& m) {
  int64_t total = 0;
  for (const Node& node : m.nodes()) {
    if (!node.layer) continue;
    Layer& layer = const_cast<Layer&>(*node.layer);  // params()/buffers() only hand out pointers
    for (Param* p : layer.params()) total += static_cast<int64_t>(p->value.bytes());  // released: 0
    for (auto& [name, t] : layer.buffers()) total += static_cast<int64_t>(t->bytes());
  }
  for (const auto& [name, t] : m.masks) total += static_cast<int64_t>(t.bytes());
  return total;
}

}  // namespace dnns
