// ONNX export, written with a hand-made protobuf encoder (see export.h for the op mapping).
//
// The protobuf wire format in brief: a message is a sequence of fields, each a key
// varint (field_number << 3 | wire_type) followed by its value: wire type 0 a varint (int64,
// int32, enum), 2 a length-delimited byte string (string, bytes, embedded message), 5 four
// little-endian bytes (float). Repeated fields repeat the key. Field numbers below are onnx.proto's
// (ONNX IR version 7, opset 13).
#include <cmath>
#include <cstring>
#include <map>

#include "core/error.h"
#include "core/json.h"
#include "core/fs.h"
#include "nn/export/export.h"

namespace dnns {

namespace {

// ---------------------------------------------------------------- protobuf encoding

class Message {
 public:
  void varint(int field, uint64_t v) {
    key(field, 0);
    raw_varint(v);
  }
  void int64(int field, int64_t v) { varint(field, static_cast<uint64_t>(v)); }  // two's complement, 10 bytes if < 0
  void bytes(int field, const void* data, size_t n) {
    key(field, 2);
    raw_varint(n);
    buf_.append(static_cast<const char*>(data), n);
  }
  void string(int field, const std::string& s) { bytes(field, s.data(), s.size()); }
  void message(int field, const Message& m) { string(field, m.buf_); }
  void float32(int field, float v) {
    key(field, 5);
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    for (int i = 0; i < 4; ++i) buf_.push_back(static_cast<char>(bits >> (8 * i)));
  }
  const std::string& str() const { return buf_; }

 private:
  void key(int field, int wire) { raw_varint(static_cast<uint64_t>(field) << 3 | static_cast<uint64_t>(wire)); }
  void raw_varint(uint64_t v) {
    while (v >= 0x80) {
      buf_.push_back(static_cast<char>((v & 0x7F) | 0x80));
      v >>= 7;
    }
    buf_.push_back(static_cast<char>(v));
  }
  std::string buf_;
};

// onnx.proto field numbers and enums used here.
namespace f {
constexpr int kModelIrVersion = 1, kModelProducerName = 2, kModelProducerVersion = 3, kModelGraph = 7,
              kModelOpsetImport = 8, kModelMetadataProps = 14;
constexpr int kEntryKey = 1, kEntryValue = 2;  // StringStringEntryProto
constexpr int kOpsetDomain = 1, kOpsetVersion = 2;
constexpr int kGraphNode = 1, kGraphName = 2, kGraphInitializer = 5, kGraphInput = 11, kGraphOutput = 12;
constexpr int kNodeInput = 1, kNodeOutput = 2, kNodeName = 3, kNodeOpType = 4, kNodeAttribute = 5;
constexpr int kAttrName = 1, kAttrF = 2, kAttrI = 3, kAttrInts = 8, kAttrType = 20;
constexpr int kAttrTypeFloat = 1, kAttrTypeInt = 2, kAttrTypeInts = 7;
constexpr int kTensorDims = 1, kTensorDataType = 2, kTensorName = 8, kTensorRawData = 9;
constexpr int kTensorFloat = 1, kTensorInt64 = 7;
constexpr int kValueName = 1, kValueType = 2;
constexpr int kTypeTensor = 1, kTypeTensorElemType = 1, kTypeTensorShape = 2;
constexpr int kShapeDim = 1, kDimValue = 1, kDimParam = 2;
}  // namespace f

constexpr int kIrVersion = 7;  // the IR version of opset 13 (ONNX 1.8)
constexpr int kOpset = 13;

Message attr_int(const std::string& name, int64_t v) {
  Message a;
  a.string(f::kAttrName, name);
  a.int64(f::kAttrI, v);
  a.varint(f::kAttrType, f::kAttrTypeInt);
  return a;
}
Message attr_float(const std::string& name, float v) {
  Message a;
  a.string(f::kAttrName, name);
  a.float32(f::kAttrF, v);
  a.varint(f::kAttrType, f::kAttrTypeFloat);
  return a;
}
Message attr_ints(const std::string& name, const std::vector<int64_t>& v) {
  Message a;
  a.string(f::kAttrName, name);
  for (int64_t x : v) a.int64(f::kAttrInts, x);  // unpacked: what onnx.proto (proto2) declares
  a.varint(f::kAttrType, f::kAttrTypeInts);
  return a;
}

// The graph being written: nodes, initializers, unique value names.
class GraphBuilder {
 public:
  void node(const std::string& op, const std::vector<std::string>& inputs, const std::string& output,
            const std::vector<Message>& attrs = {}) {
    Message n;
    for (const std::string& i : inputs) n.string(f::kNodeInput, i);
    n.string(f::kNodeOutput, output);
    n.string(f::kNodeName, output);
    n.string(f::kNodeOpType, op);
    for (const Message& a : attrs) n.message(f::kNodeAttribute, a);
    graph_.message(f::kGraphNode, n);
    ++info.nodes;
  }
  // A float32 initializer; returns its name.
  std::string initializer(const std::string& name, const Shape& dims, const std::vector<float>& v) {
    check(static_cast<int64_t>(v.size()) == shape_numel(dims), "onnx export: initializer '" + name + "' size mismatch");
    Message t;
    for (int64_t d : dims) t.int64(f::kTensorDims, d);
    t.varint(f::kTensorDataType, f::kTensorFloat);
    t.string(f::kTensorName, name);
    std::string raw(v.size() * 4, '\0');
    for (size_t i = 0; i < v.size(); ++i) {
      uint32_t bits;
      std::memcpy(&bits, &v[i], 4);
      for (int b = 0; b < 4; ++b) raw[4 * i + b] = static_cast<char>(bits >> (8 * b));
    }
    t.string(f::kTensorRawData, raw);
    graph_.message(f::kGraphInitializer, t);
    ++info.initializers;
    return name;
  }
  std::string initializer_i64(const std::string& name, const std::vector<int64_t>& v) {
    Message t;
    t.int64(f::kTensorDims, static_cast<int64_t>(v.size()));
    t.varint(f::kTensorDataType, f::kTensorInt64);
    t.string(f::kTensorName, name);
    std::string raw(v.size() * 8, '\0');
    for (size_t i = 0; i < v.size(); ++i)
      for (int b = 0; b < 8; ++b) raw[8 * i + b] = static_cast<char>(static_cast<uint64_t>(v[i]) >> (8 * b));
    t.string(f::kTensorRawData, raw);
    graph_.message(f::kGraphInitializer, t);
    ++info.initializers;
    return name;
  }
  // A float tensor value: name, batch dimension "N", then `dims`.
  void value_info(int field, const std::string& name, const Shape& dims) {
    Message shape;
    Message batch;
    batch.string(f::kDimParam, "N");
    shape.message(f::kShapeDim, batch);
    for (int64_t d : dims) {
      Message dim;
      dim.int64(f::kDimValue, d);
      shape.message(f::kShapeDim, dim);
    }
    Message tensor;
    tensor.varint(f::kTypeTensorElemType, f::kTensorFloat);
    tensor.message(f::kTypeTensorShape, shape);
    Message type;
    type.message(f::kTypeTensor, tensor);
    Message v;
    v.string(f::kValueName, name);
    v.message(f::kValueType, type);
    graph_.message(field, v);
  }
  // (N, 1, ..., 1) of the given rank, computed from the input: the shape Expand broadcasts a
  // (1, ...) constant to, so constants follow the batch size the model is run with.
  std::string batch_ones_shape(const std::string& input, int rank) {
    auto it = batch_shapes_.find(rank);
    if (it != batch_shapes_.end()) return it->second;
    if (batch_.empty()) {
      node("Shape", {input}, "dnns:input_shape");
      std::string zero = initializer_i64("dnns:zero", {0}), one = initializer_i64("dnns:one", {1});
      node("Slice", {"dnns:input_shape", zero, one}, "dnns:batch");
      batch_ = "dnns:batch";
    }
    std::string name = "dnns:batch_ones_" + std::to_string(rank);
    std::string ones = initializer_i64(name + ":tail", std::vector<int64_t>(rank - 1, 1));
    node("Concat", {batch_, ones}, name, {attr_int("axis", 0)});
    batch_shapes_[rank] = name;
    return name;
  }
  Message& graph() { return graph_; }
  OnnxExportInfo info;

 private:
  Message graph_;
  std::string batch_;
  std::map<int, std::string> batch_shapes_;
};

std::vector<float> values(const Tensor& t) { return t.numel() > 0 ? t.to_vector() : std::vector<float>(); }

}  // namespace

std::string onnx_model_bytes(const Model& model, OnnxExportInfo* info_out) {
  const Model& m = model;
  m.require_dense_weights("ONNX export");
  const std::vector<Node>& nodes = m.nodes();
  const int n = static_cast<int>(nodes.size());
  check(n >= 2, "onnx export: empty model");
  const std::vector<Shape> shapes = m.infer_shapes(1);
  const auto consumers = m.consumers();
  const int out_node = m.output_node();
  const std::vector<int> chains = eval_fusion_chains(m);  // the batchnorms folded into their conv
  auto per_image = [&](int i) { return shape_numel(shapes[i]); };
  auto dims_of = [&](int i) { return Shape(shapes[i].begin() + 1, shapes[i].end()); };
  check(per_image(out_node) > 0, "onnx export: the output node '" + nodes[out_node].name + "' has no values");

  GraphBuilder gb;
  std::vector<std::string> value(n);  // ONNX value holding node i's output; "" when it is empty
  std::vector<bool> folded(n, false);  // batchnorms folded into the conv before them
  const std::string input_name = nodes[0].name;
  value[0] = input_name;

  for (int i = 1; i < n; ++i) {
    const Node& node = nodes[i];
    const Layer& l = *node.layer;
    if (folded[i]) continue;
    if (per_image(i) == 0) continue;  // zero channels: nothing to compute, nobody reads values
    const std::string& x = value[node.inputs[0]];
    const std::string& name = node.name;
    switch (l.kind()) {
      case LayerKind::Conv: {
        const auto& c = static_cast<const Conv2d&>(l);
        const int K = c.out_channels;
        const int64_t P = shapes[i][2], Q = shapes[i][3];
        std::vector<float> w = values(c.weight.value);
        std::vector<float> b = c.has_bias ? values(c.bias.value) : std::vector<float>(K, 0.0f);
        std::vector<float> pos = c.pos_h > 0 ? values(c.pos_bias.value) : std::vector<float>();
        bool have_bias = c.has_bias;
        int out = i;  // the node whose output this conv's ONNX value stands for
        // Fold a batchnorm that only this conv feeds: w' = w * s, b' = (b - mean) * s + beta,
        // pos' = pos * s with s = gamma / sqrt(var + eps).
        if (chains[i] >= 0) {
          out = consumers[i][0];
          const auto& bn = static_cast<const BatchNorm2d&>(*nodes[out].layer);
          std::vector<double> scale, shift;  // b' = b * s + (beta - mean * s)
          bn.eval_affine(scale, shift);
          const int64_t per_filter = K > 0 ? static_cast<int64_t>(w.size()) / K : 0;
          const int64_t plane = c.table_rows() * c.table_cols();
          for (int k = 0; k < K; ++k) {
            const double s = scale[k];
            for (int64_t j = 0; j < per_filter; ++j) w[k * per_filter + j] = float(w[k * per_filter + j] * s);
            b[k] = float(double(b[k]) * s + shift[k]);
            for (int64_t j = 0; j < plane && !pos.empty(); ++j) pos[k * plane + j] = float(pos[k * plane + j] * s);
          }
          have_bias = true;
          folded[out] = true;
          ++gb.info.folded_batchnorms;
        }
        const std::string& out_name = nodes[out].name;
        // The border table (1, K, TR, TC) spread to (1, K, P, Q) by two Gathers of its row and
        // column classes: exact, and only the table and the classes are stored.
        auto spread = [&](const std::string& table_name, const std::vector<float>& table, int64_t TR, int64_t TC,
                          const std::vector<int32_t>& rows, const std::vector<int32_t>& cols) {
          std::string t = gb.initializer(table_name, {1, K, TR, TC}, table);
          std::string r = gb.initializer_i64(name + ".pos_rows", std::vector<int64_t>(rows.begin(), rows.end()));
          std::string cl = gb.initializer_i64(name + ".pos_cols", std::vector<int64_t>(cols.begin(), cols.end()));
          gb.node("Gather", {t, r}, name + ":table_rows", {attr_int("axis", 2)});
          gb.node("Gather", {name + ":table_rows", cl}, name + ":table", {attr_int("axis", 3)});
          return name + ":table";
        };
        if (c.in_channels == 0) {
          // No input channels: the output is bias (+ border table), then the ReLU, the same at
          // every image: that table (one class when there is none), spread and broadcast to the batch.
          const int64_t TR = pos.empty() ? 1 : c.table_rows(), TC = pos.empty() ? 1 : c.table_cols();
          std::vector<float> table(static_cast<size_t>(K * TR * TC));
          for (int k = 0; k < K; ++k)
            for (int64_t j = 0; j < TR * TC; ++j) {
              float v = b[k] + (pos.empty() ? 0.0f : pos[k * TR * TC + j]);
              table[k * TR * TC + j] = c.fused_relu && !(v > 0.0f) ? 0.0f : v;
            }
          std::string map = pos.empty() ? spread(name + ":constant", table, 1, 1, std::vector<int32_t>(P, 0),
                                                 std::vector<int32_t>(Q, 0))
                                        : spread(name + ":constant", table, TR, TC, c.pos_rows, c.pos_cols);
          gb.node("Expand", {map, gb.batch_ones_shape(input_name, 4)}, out_name);
          ++gb.info.constant_layers;
          value[out] = out_name;
          break;
        }
        std::vector<std::string> ins = {x, gb.initializer(name + ".weight", {K, c.in_channels, c.kernel_h, c.kernel_w}, w)};
        if (have_bias) ins.push_back(gb.initializer(name + ".bias", {K}, b));
        const bool more = !pos.empty() || c.fused_relu;
        std::string y = more ? name + ":conv" : out_name;
        gb.node("Conv", ins, y,
                {attr_ints("kernel_shape", {c.kernel_h, c.kernel_w}), attr_ints("strides", {c.stride, c.stride}),
                 attr_ints("pads", {c.pad, c.pad, c.pad, c.pad})});
        if (!pos.empty()) {
          std::string pb = spread(name + ".pos_bias", pos, c.table_rows(), c.table_cols(), c.pos_rows, c.pos_cols);
          std::string z = c.fused_relu ? name + ":pos" : out_name;
          gb.node("Add", {y, pb}, z);
          y = z;
        }
        if (c.fused_relu) gb.node("Relu", {y}, out_name);
        value[out] = out_name;
        break;
      }
      case LayerKind::BatchNorm: {
        const auto& bn = static_cast<const BatchNorm2d&>(l);
        const int C = bn.channels;
        gb.node("BatchNormalization",
                {x, gb.initializer(name + ".weight", {C}, values(bn.gamma.value)),
                 gb.initializer(name + ".bias", {C}, values(bn.beta.value)),
                 gb.initializer(name + ".running_mean", {C}, values(bn.running_mean)),
                 gb.initializer(name + ".running_var", {C}, values(bn.running_var))},
                name, {attr_float("epsilon", bn.eps)});
        value[i] = name;
        break;
      }
      case LayerKind::ReLU:
        gb.node("Relu", {x}, name);
        value[i] = name;
        break;
      case LayerKind::MaxPool:
      case LayerKind::AvgPool: {
        const auto& p = static_cast<const Pool2d&>(l);
        gb.node(p.is_max ? "MaxPool" : "AveragePool", {x}, name,
                {attr_ints("kernel_shape", {p.kernel, p.kernel}), attr_ints("strides", {p.stride, p.stride})});
        value[i] = name;
        break;
      }
      case LayerKind::GlobalAvgPool:
        gb.node("GlobalAveragePool", {x}, name + ":pool");  // (N, C, 1, 1)
        gb.node("Flatten", {name + ":pool"}, name, {attr_int("axis", 1)});
        value[i] = name;
        break;
      case LayerKind::Flatten:
        gb.node("Flatten", {x}, name, {attr_int("axis", 1)});
        value[i] = name;
        break;
      case LayerKind::Linear: {
        const auto& fc = static_cast<const Linear&>(l);
        const int O = fc.out_features;
        std::vector<float> b = fc.has_bias ? values(fc.bias.value) : std::vector<float>(O, 0.0f);
        if (fc.in_features == 0) {  // no input features: every row is the bias
          std::string cst = gb.initializer(name + ":constant", {1, O}, b);
          gb.node("Expand", {cst, gb.batch_ones_shape(input_name, 2)}, name);
          ++gb.info.constant_layers;
        } else {
          std::vector<std::string> ins = {x, gb.initializer(name + ".weight", {O, fc.in_features}, values(fc.weight.value))};
          if (fc.has_bias) ins.push_back(gb.initializer(name + ".bias", {O}, b));
          gb.node("Gemm", ins, name, {attr_int("transB", 1)});
        }
        value[i] = name;
        break;
      }
      case LayerKind::Add: {
        const auto& a = static_cast<const Add&>(l);
        if (!a.mapped()) {
          gb.node("Add", {x, value[node.inputs[1]]}, name);
          value[i] = name;
          break;
        }
        // A compacted residual join: each mapped input gets a zero channel appended (Pad) and
        // is spread to the output's channels by a Gather (axis 1) whose index names, per
        // output channel, its input channel or that zero channel; then the sum and the bias.
        const int C = a.channels;
        const int rank = static_cast<int>(shapes[i].size());
        std::string ins[2];
        for (int s = 0; s < 2; ++s) {
          ins[s] = value[node.inputs[s]];
          if (a.map[s].empty()) continue;
          const int64_t Cs = static_cast<int64_t>(a.map[s].size());
          std::vector<int64_t> pads(2 * rank, 0);
          pads[rank + 1] = 1;  // one channel at the end
          const std::string tag = name + ":in" + std::to_string(s);
          gb.node("Pad", {ins[s], gb.initializer_i64(tag + ":pads", pads)}, tag + ":padded");
          std::vector<int64_t> index(C, Cs);
          for (int64_t c = 0; c < Cs; ++c) index[a.map[s][c]] = c;
          gb.node("Gather", {tag + ":padded", gb.initializer_i64(tag + ":map", index)}, tag, {attr_int("axis", 1)});
          ins[s] = tag;
        }
        if (a.has_bias) {
          Shape bshape(rank, 1);
          bshape[1] = C;
          gb.node("Add", {ins[0], ins[1]}, name + ":sum");
          gb.node("Add", {name + ":sum", gb.initializer(name + ".bias", bshape, values(a.bias.value))}, name);
        } else {
          gb.node("Add", {ins[0], ins[1]}, name);
        }
        value[i] = name;
        break;
      }
    }
  }
  check(!value[out_node].empty(), "onnx export: internal: no value for the output node");
  gb.value_info(f::kGraphInput, input_name, dims_of(0));
  gb.value_info(f::kGraphOutput, value[out_node], dims_of(out_node));
  gb.graph().string(f::kGraphName, m.arch.empty() ? "dnnshifter" : m.arch);

  Message opset;
  opset.string(f::kOpsetDomain, "");
  opset.int64(f::kOpsetVersion, kOpset);
  Message model_proto;
  model_proto.int64(f::kModelIrVersion, kIrVersion);
  model_proto.string(f::kModelProducerName, "dnnshifter");
  model_proto.string(f::kModelProducerVersion, "1");
  model_proto.message(f::kModelGraph, gb.graph());
  model_proto.message(f::kModelOpsetImport, opset);
  // metadata_props: what the model file records about its data (nn/model.h, DataInfo), as
  // "dnnshifter.*" keys; lists as JSON arrays.
  auto meta = [&](const std::string& key, const std::string& value) {
    Message entry;
    entry.string(f::kEntryKey, key);
    entry.string(f::kEntryValue, value);
    model_proto.message(f::kModelMetadataProps, entry);
  };
  auto json_list = [](const auto& items, auto encode) {
    std::string out = "[";
    for (size_t i = 0; i < items.size(); ++i) {
      out += i ? "," : "";
      out += encode(items[i]);
    }
    return out + "]";
  };
  const DataInfo& di = m.data_info;
  if (!di.dataset.empty()) meta("dnnshifter.dataset", di.dataset);
  if (!di.class_names.empty())
    meta("dnnshifter.class_names", json_list(di.class_names, [](const std::string& s) { return json_escape(s); }));
  if (!di.channel_order.empty()) meta("dnnshifter.channel_order", di.channel_order);
  if (!di.mean.empty()) {
    auto num = [](float v) { return json_number(v); };
    meta("dnnshifter.normalize_mean", json_list(di.mean, num));
    meta("dnnshifter.normalize_std", json_list(di.std, num));
  }
  gb.info.bytes = static_cast<int64_t>(model_proto.str().size());
  if (info_out) *info_out = gb.info;
  return model_proto.str();
}

void export_onnx(const Model& m, const std::string& path, OnnxExportInfo* info) {
  std::string bytes = onnx_model_bytes(m, info);
  write_text_atomic(path, bytes);
}

}  // namespace dnns
