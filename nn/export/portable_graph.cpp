// The model as a node table of the portable runtime, and running it there.
#include <vector>

#include "core/error.h"
#include "nn/export/export.h"

namespace dnns {

namespace {

const float* data_or_null(const Tensor& t) { return t.numel() > 0 ? t.data() : nullptr; }

}  // namespace

PortableGraph portable_graph(const Model& m) {
  check(m.device() == Device::CPU, std::string("portable export: the model is on ") + device_name(m.device()) +
                                       "; move it to the CPU first");
  m.require_dense_weights("portable export");
  const std::vector<Node>& nodes = m.nodes();
  check(nodes.size() >= 2, "portable export: empty model");
  PortableGraph pg;
  pg.nodes.reserve(nodes.size());
  for (const Node& n : nodes) {
    rt::Node r{};
    r.name = n.name.c_str();
    r.in0 = n.inputs.size() > 0 ? n.inputs[0] : -1;
    r.in1 = n.inputs.size() > 1 ? n.inputs[1] : -1;
    if (!n.layer) {
      r.op = rt::Op::Input;
      pg.nodes.push_back(r);
      continue;
    }
    const Layer& l = *n.layer;
    switch (l.kind()) {
      case LayerKind::Conv: {
        const auto& c = static_cast<const Conv2d&>(l);
        r.op = rt::Op::Conv;
        r.in_ch = c.in_channels, r.out_ch = c.out_channels;
        r.kernel_h = c.kernel_h, r.kernel_w = c.kernel_w, r.stride = c.stride, r.pad = c.pad;
        r.fused_relu = c.fused_relu ? 1 : 0;
        r.pos_h = c.pos_h, r.pos_w = c.pos_w;
        r.weight = data_or_null(c.weight.value);
        r.bias = c.has_bias ? data_or_null(c.bias.value) : nullptr;
        r.pos_bias = c.pos_h > 0 ? data_or_null(c.pos_bias.value) : nullptr;
        if (c.pos_h > 0) {
          r.pos_row_class = c.pos_rows.data(), r.pos_col_class = c.pos_cols.data();
          r.pos_rows = static_cast<int32_t>(c.table_rows()), r.pos_cols = static_cast<int32_t>(c.table_cols());
        }
        break;
      }
      case LayerKind::BatchNorm: {
        const auto& b = static_cast<const BatchNorm2d&>(l);
        r.op = rt::Op::BatchNorm;
        r.in_ch = r.out_ch = b.channels;
        r.eps = b.eps;
        r.weight = data_or_null(b.gamma.value), r.bias = data_or_null(b.beta.value);
        r.mean = data_or_null(b.running_mean), r.var = data_or_null(b.running_var);
        break;
      }
      case LayerKind::ReLU: r.op = rt::Op::ReLU; break;
      case LayerKind::MaxPool:
      case LayerKind::AvgPool: {
        const auto& p = static_cast<const Pool2d&>(l);
        r.op = p.is_max ? rt::Op::MaxPool : rt::Op::AvgPool;
        r.kernel_h = r.kernel_w = p.kernel, r.stride = p.stride;
        break;
      }
      case LayerKind::GlobalAvgPool: r.op = rt::Op::GlobalAvgPool; break;
      case LayerKind::Flatten: r.op = rt::Op::Flatten; break;
      case LayerKind::Linear: {
        const auto& f = static_cast<const Linear&>(l);
        r.op = rt::Op::Linear;
        r.in_ch = f.in_features, r.out_ch = f.out_features;
        r.weight = data_or_null(f.weight.value);
        r.bias = f.has_bias ? data_or_null(f.bias.value) : nullptr;
        break;
      }
      case LayerKind::Add: {
        const auto& a = static_cast<const Add&>(l);
        r.op = rt::Op::Add;
        if (a.mapped()) {
          r.out_ch = a.channels;
          r.map0 = a.map[0].empty() ? nullptr : a.map[0].data();
          r.map1 = a.map[1].empty() ? nullptr : a.map[1].data();
          r.bias = a.has_bias ? data_or_null(a.bias.value) : nullptr;
        }
        break;
      }
    }
    pg.nodes.push_back(r);
  }
  const Shape& in = m.input_shape();
  pg.graph = rt::Graph{pg.nodes.data(), static_cast<int32_t>(pg.nodes.size()), m.output_node(),
                       static_cast<int32_t>(in[0]), static_cast<int32_t>(in[1]), static_cast<int32_t>(in[2])};
  return pg;
}

int64_t portable_arena_bytes(const Model& m) {
  PortableGraph pg = portable_graph(m);
  std::vector<rt::NodePlan> plan(pg.nodes.size());
  int64_t per_image = 0;
  char err[256] = "";  // read below even when planning succeeds: the message is built eagerly
  check(rt::plan_graph(pg.graph, plan.data(), &per_image, err, sizeof err) == rt::kOk,
        std::string("portable runtime: ") + err);
  return per_image * static_cast<int64_t>(sizeof(float));
}

Tensor run_portable(const Model& m, const Tensor& x, int64_t* arena_bytes) {
  const Shape& in = m.input_shape();
  check(x.is_cpu() && x.ndim() == 4 && x.dim(1) == in[0] && x.dim(2) == in[1] && x.dim(3) == in[2] && x.dim(0) > 0,
        "run_portable: expected CPU images (N, " + std::to_string(in[0]) + ", " + std::to_string(in[1]) + ", " +
            std::to_string(in[2]) + "), got " + shape_str(x.shape()));
  PortableGraph pg = portable_graph(m);
  std::vector<rt::NodePlan> plan(pg.nodes.size());
  int64_t per_image = 0;
  char err[256] = "";  // read below even when planning succeeds: the message is built eagerly
  rt::Status s = rt::plan_graph(pg.graph, plan.data(), &per_image, err, sizeof err);
  check(s == rt::kOk, std::string("portable runtime: ") + err);
  const int32_t batch = static_cast<int32_t>(x.dim(0));
  std::vector<float> arena(static_cast<size_t>(per_image * batch) + 1);
  rt::Engine e;
  s = rt::engine_init(&e, &pg.graph, plan.data(), arena.data(), per_image * batch, batch);
  check(s == rt::kOk, std::string("portable runtime: ") + e.error);
  const rt::NodePlan& op = plan[pg.graph.output];
  Shape out_shape = op.rank == 4 ? Shape{x.dim(0), op.c, op.h, op.w} : Shape{x.dim(0), op.c};
  Tensor y = Tensor::uninit(out_shape);
  s = rt::engine_run(&e, x.data(), batch, y.data());
  check(s == rt::kOk, std::string("portable runtime: ") + e.error);
  if (arena_bytes) *arena_bytes = per_image * batch * static_cast<int64_t>(sizeof(float));
  return y;
}

}  // namespace dnns
