// ONNX import (see onnx_import.h for what is supported). The file is parsed by the ONNX
// project's generated protobuf classes; this file only walks the parsed graph.
//
// The walk is an interpreter over the ONNX nodes in their (topological) order. Every ONNX
// value name maps to a Val: either a tensor computed by a node of our model graph, or a
// constant known at import time (an initializer, or shape arithmetic on them). Shape
// arithmetic may depend on the batch size, which ONNX leaves symbolic: constants hold their
// integer values at two probe batch sizes, and a Reshape is accepted only when its target
// is the same flatten (or no change) at both (at the file's batch size where it fixes one).
#include "nn/import/onnx_import.h"

#include <onnx/onnx_pb.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <map>
#include <numeric>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "core/fs.h"

namespace dnns {

namespace {

constexpr int kProbes = 2;
constexpr int64_t kMaxElements = int64_t(1) << 31;  // any one tensor (the file could not hold more)

// A value known at import time. Floats are weights (batch-independent); integers are shapes
// and indices, held once per probe batch size.
struct Const {
  bool is_float = true;
  Shape dims;
  std::vector<float> f;
  std::array<std::vector<int64_t>, kProbes> i;
  int64_t numel() const { return is_float ? int64_t(f.size()) : int64_t(i[0].size()); }
};

struct Val {
  bool is_const = false;
  Const c;                // constants
  int node = -1;          // tensors: the model node holding it
  Shape dims;             // tensors: per-image ONNX dims, (C, H, W) or (F)
  bool squeezed = false;  // the node holds (N, C) where ONNX has (N, C, 1, 1): GlobalAveragePool
  bool direct = false;    // the node's own output (not an alias): a constant Add may fold into it
  // The channel spread of a compacted residual join (our exporter's Pad + Gather + Add):
  // `padded`: the node's tensor with one zero channel appended (dims count it), readable only
  // by a Gather along axis 1; `mapped`: that Gather's result, the node's channel c standing at
  // channel map[c] of dims[0] (the others zero), readable only by an Add of two tensors.
  bool padded = false;
  bool mapped = false;
  std::vector<int32_t> map;
};

std::string dtype_name(int t) {
  const std::string& n = onnx::TensorProto_DataType_Name(static_cast<onnx::TensorProto_DataType>(t));
  return n.empty() ? "data type " + std::to_string(t) : n;
}

// Per-image dims with the symbolic batch dimension in front: "(N, 32, 2, 2)".
std::string batch_str(const Shape& dims) {
  std::string s = "(N";
  for (int64_t d : dims) s += ", " + std::to_string(d);
  return s + ")";
}

std::string ints_str(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t k = 0; k < v.size(); ++k) s += (k ? ", " : "") + std::to_string(v[k]);
  return s + "]";
}

// Dims of an ONNX tensor, checked: none negative, the product bounded.
Shape checked_dims(const google::protobuf::RepeatedField<int64_t>& d, const std::string& what) {
  Shape dims(d.begin(), d.end());
  int64_t n = 1;
  for (int64_t x : dims) {
    check(x >= 0, [&] { return what + ": negative dimension in " + shape_str(dims); });
    check(x == 0 || n <= kMaxElements / x, [&] { return what + ": shape " + shape_str(dims) + " is too large"; });
    n *= x;
  }
  return dims;
}

// Little-endian decoding, independent of the host's byte order.
uint64_t le_bytes(const std::string& raw, size_t at, int n) {
  uint64_t v = 0;
  for (int b = 0; b < n; ++b) v |= uint64_t(static_cast<unsigned char>(raw[at + b])) << (8 * b);
  return v;
}

Const decode_tensor(const onnx::TensorProto& t, const std::string& what) {
  check(!(t.has_data_location() && t.data_location() == onnx::TensorProto::EXTERNAL),
        what + ": its data is stored in an external file, which is not supported (export with the weights inside)");
  check(!t.has_segment(), what + ": segmented tensors are not supported");
  Const c;
  c.dims = checked_dims(t.dims(), what);
  const int64_t n = shape_numel(c.dims);
  const std::string& raw = t.raw_data();
  auto size_error = [&](int64_t got) {
    return what + ": holds " + std::to_string(got) + " values, its shape " + shape_str(c.dims) + " needs " +
           std::to_string(n) + " (truncated or corrupt)";
  };
  switch (t.data_type()) {
    case onnx::TensorProto::FLOAT: {
      c.is_float = true;
      if (t.has_raw_data()) {
        check(int64_t(raw.size()) == 4 * n, [&] { return size_error(int64_t(raw.size()) / 4); });
        c.f.resize(n);
        for (int64_t k = 0; k < n; ++k) {
          uint32_t bits = static_cast<uint32_t>(le_bytes(raw, 4 * k, 4));
          std::memcpy(&c.f[k], &bits, 4);
        }
      } else {
        check(t.float_data_size() == n, [&] { return size_error(t.float_data_size()); });
        c.f.assign(t.float_data().begin(), t.float_data().end());
      }
      return c;
    }
    case onnx::TensorProto::INT64:
    case onnx::TensorProto::INT32:
    case onnx::TensorProto::BOOL: {  // booleans: Dropout's training_mode
      c.is_float = false;
      const int bytes = t.data_type() == onnx::TensorProto::INT64 ? 8 : t.data_type() == onnx::TensorProto::INT32 ? 4 : 1;
      std::vector<int64_t> v;
      if (t.has_raw_data()) {
        check(int64_t(raw.size()) == bytes * n, [&] { return size_error(int64_t(raw.size()) / bytes); });
        for (int64_t k = 0; k < n; ++k) {
          uint64_t u = le_bytes(raw, bytes * k, bytes);
          v.push_back(bytes == 8   ? static_cast<int64_t>(u)
                      : bytes == 4 ? int64_t(static_cast<int32_t>(static_cast<uint32_t>(u)))
                                   : int64_t(u != 0));
        }
      } else if (bytes == 8) {
        check(t.int64_data_size() == n, [&] { return size_error(t.int64_data_size()); });
        v.assign(t.int64_data().begin(), t.int64_data().end());
      } else {  // int32 and bool values live in int32_data
        check(t.int32_data_size() == n, [&] { return size_error(t.int32_data_size()); });
        v.assign(t.int32_data().begin(), t.int32_data().end());
      }
      c.i.fill(v);
      return c;
    }
    default:
      throw Error(what + ": data type " + dtype_name(t.data_type()) +
                  " is not supported (float32 weights, int64/int32 shapes and indices, bool flags only)");
  }
}

// Characters our graph spec cannot hold in a node name become '_'; PyTorch's leading '/' goes.
std::string sanitize(const std::string& s) {
  std::string out;
  for (char ch : s) out += (ch > ' ' && ch != ',' && ch != '=' && ch != ':' && ch < 127) ? ch : '_';
  size_t start = out.find_first_not_of('/');
  return start == std::string::npos ? "" : out.substr(start);
}

class Importer {
 public:
  Importer(const onnx::ModelProto& proto, const std::string& where, OnnxImportInfo& info)
      : proto_(proto), where_(where), info_(info) {}

  Model run() {
    check(proto_.has_graph(), where_ + ": the ONNX model holds no graph");
    info_.producer = proto_.producer_name() + (proto_.producer_version().empty() ? "" : " " + proto_.producer_version());
    for (const auto& o : proto_.opset_import())
      if (o.domain().empty() || o.domain() == "ai.onnx") info_.opset = o.version();
    check(info_.opset >= 7, [&] {
      return where_ + ": needs opset 7 or later of the default ONNX domain, the file declares " +
             (info_.opset ? std::to_string(info_.opset) : std::string("none"));
    });
    const onnx::GraphProto& g = proto_.graph();
    check(g.sparse_initializer_size() == 0, where_ + ": sparse initializers are not supported");
    for (const auto& t : g.initializer()) {
      check(!t.name().empty(), where_ + ": an initializer has no name");
      Val v;
      v.is_const = true;
      v.c = decode_tensor(t, where_ + ": initializer '" + t.name() + "'");
      vals_[t.name()] = std::move(v);
    }
    add_graph_input(g);
    for (const auto& n : g.node())
      for (const std::string& s : n.input()) ++uses_[s];
    for (const auto& o : g.output()) ++uses_[o.name()];

    for (int k = 0; k < g.node_size(); ++k) {
      const onnx::NodeProto& n = g.node(k);
      ++info_.onnx_nodes;
      index_ = k;
      if (!n.domain().empty() && n.domain() != "ai.onnx") fail(n, "operator domain '" + n.domain() + "' is not supported");
      for (const std::string& s : n.input())
        if (!s.empty() && !vals_.count(s))
          fail(n, "reads '" + s + "', which no earlier node, initializer or graph input defines");
      check(n.output_size() >= 1 && !n.output(0).empty(), [&] { return where_ + ": node " + node_label(n) + " has no output"; });
      try {
        node(n);
      } catch (const Error& e) {
        // Errors from our layers (a kernel larger than its input, ...) get the node's name.
        if (std::string(e.what()).rfind(where_ + ": ", 0) == 0) throw;
        fail(n, e.what());
      }
    }

    check(g.output_size() == 1, [&] {
      return where_ + ": the graph has " + std::to_string(g.output_size()) + " outputs; one (the logits) is supported";
    });
    const std::string& out = g.output(0).name();
    auto it = vals_.find(out);
    check(it != vals_.end(), where_ + ": the graph output '" + out + "' is computed by no node");
    check(!it->second.is_const && it->second.node > 0,
          where_ + ": the graph output '" + out + "' is a constant or the input itself, not computed by a layer");
    m_.set_output(it->second.node);
    m_.arch = "onnx";
    make_masks();
    m_.infer_shapes(1);
    return std::move(m_);
  }

 private:
  // ---------------------------------------------------------------- helpers

  std::string node_label(const onnx::NodeProto& n) const {
    return "'" + (n.name().empty() ? "#" + std::to_string(index_) : n.name()) + "' (" + n.op_type() + ")";
  }
  [[noreturn]] void fail(const onnx::NodeProto& n, const std::string& msg) const {
    throw Error(where_ + ": node " + node_label(n) + ": " + msg);
  }

  // Attributes of one node: typed getters with defaults; done() refuses any attribute the
  // op's mapping did not read, so an option we would silently ignore is an error instead.
  class Attrs {
   public:
    Attrs(const Importer& im, const onnx::NodeProto& n) : im_(im), n_(n) {}
    bool has(const std::string& name) const { return find(name) != nullptr; }
    int64_t i(const std::string& name, int64_t def) {
      const onnx::AttributeProto* a = get(name, onnx::AttributeProto::INT);
      return a ? a->i() : def;
    }
    float f(const std::string& name, float def) {
      const onnx::AttributeProto* a = get(name, onnx::AttributeProto::FLOAT);
      return a ? a->f() : def;
    }
    std::string s(const std::string& name, const std::string& def) {
      const onnx::AttributeProto* a = get(name, onnx::AttributeProto::STRING);
      return a ? a->s() : def;
    }
    std::vector<int64_t> ints(const std::string& name, std::vector<int64_t> def) {
      const onnx::AttributeProto* a = get(name, onnx::AttributeProto::INTS);
      return a ? std::vector<int64_t>(a->ints().begin(), a->ints().end()) : def;
    }
    std::vector<float> floats(const std::string& name) {
      const onnx::AttributeProto* a = get(name, onnx::AttributeProto::FLOATS);
      return a ? std::vector<float>(a->floats().begin(), a->floats().end()) : std::vector<float>();
    }
    const onnx::TensorProto* tensor(const std::string& name) {
      const onnx::AttributeProto* a = get(name, onnx::AttributeProto::TENSOR);
      return a ? &a->t() : nullptr;
    }
    void done() const {
      for (const auto& a : n_.attribute())
        if (!read_.count(a.name())) im_.fail(n_, "attribute '" + a.name() + "' is not supported");
    }

   private:
    const onnx::AttributeProto* find(const std::string& name) const {
      for (const auto& a : n_.attribute())
        if (a.name() == name) return &a;
      return nullptr;
    }
    const onnx::AttributeProto* get(const std::string& name, onnx::AttributeProto::AttributeType type) {
      const onnx::AttributeProto* a = find(name);
      if (!a) return nullptr;
      read_.insert(name);
      if (a->type() != type && a->type() != onnx::AttributeProto::UNDEFINED)
        im_.fail(n_, "attribute '" + name + "' has type " + onnx::AttributeProto::AttributeType_Name(a->type()) +
                         ", expected " + onnx::AttributeProto::AttributeType_Name(type));
      return a;
    }
    const Importer& im_;
    const onnx::NodeProto& n_;
    std::set<std::string> read_;
  };

  // A size read from the file (kernel, stride, padding) that our layers hold as int.
  int size_attr(const onnx::NodeProto& n, const std::string& what, int64_t v, int64_t min) const {
    if (v < min || v > (1 << 16)) fail(n, what + " = " + std::to_string(v) + " is out of range");
    return static_cast<int>(v);
  }

  bool has_input(const onnx::NodeProto& n, int k) const { return n.input_size() > k && !n.input(k).empty(); }
  const Val& in(const onnx::NodeProto& n, int k) const {
    if (!has_input(n, k)) fail(n, "input " + std::to_string(k) + " is missing");
    return vals_.at(n.input(k));
  }
  const Val& tensor_in(const onnx::NodeProto& n, int k) const {
    const Val& v = in(n, k);
    if (v.is_const)
      fail(n, "input '" + n.input(k) + "' is a constant; this op is supported only on tensors computed from the graph input");
    if (v.padded || v.mapped) refuse_spread(n, n.input(k), v);
    return v;
  }
  // A reader other than the next step of the residual join's channel spread.
  [[noreturn]] void refuse_spread(const onnx::NodeProto& n, const std::string& name, const Val& v) const {
    fail(n, "reads '" + name + "', " +
                (v.padded ? "a tensor padded by one channel, which only a Gather along axis 1 may read"
                          : "a tensor spread over channels by a Gather, which only an Add of two tensors may read") +
                " (the channel map of a residual join: Pad of one zero channel, Gather along axis 1, Add)");
  }
  const Const& const_in(const onnx::NodeProto& n, int k, bool want_float) const {
    const Val& v = in(n, k);
    if (!v.is_const) fail(n, "input '" + n.input(k) + "' must be a constant (an initializer), it is computed by the graph");
    if (v.c.is_float != want_float)
      fail(n, "input '" + n.input(k) + "' must hold " + (want_float ? "float32 values" : "integers"));
    return v.c;
  }
  std::vector<int64_t> ints_in(const onnx::NodeProto& n, int k) const {
    const Const& c = const_in(n, k, false);
    if (c.i[0] != c.i[1]) fail(n, "input '" + n.input(k) + "' depends on the batch size");
    return c.i[0];
  }
  // Optional outputs (BatchNormalization's statistics, MaxPool's indices, Dropout's mask)
  // must be unused.
  void only_first_output(const onnx::NodeProto& n) const {
    for (int k = 1; k < n.output_size(); ++k)
      if (!n.output(k).empty() && uses_.count(n.output(k)))
        fail(n, "output " + std::to_string(k) + " ('" + n.output(k) + "') is read by the graph; only the first output is supported");
  }
  void set_out(const onnx::NodeProto& n, Val v) {
    if (vals_.count(n.output(0))) fail(n, "its output '" + n.output(0) + "' is defined twice");
    vals_[n.output(0)] = std::move(v);
  }
  void alias(const onnx::NodeProto& n, Val v) {
    v.direct = false;
    ++info_.aliases;
    set_out(n, std::move(v));
  }
  Val constant(Const c) {
    ++info_.constant_nodes;
    Val v;
    v.is_const = true;
    v.c = std::move(c);
    return v;
  }

  // `base`, or base_2, base_3, ... : the first name no node has. Linear over an import: the
  // names taken are a hash set, and each base remembers its next suffix.
  std::string unique_name(std::string base) {
    if (base.empty()) base = "node";
    if (!names_.count(base)) return base;
    int& k = next_suffix_.emplace(base, 2).first->second;
    std::string name;
    do name = base + "_" + std::to_string(k++);
    while (names_.count(name));
    return name;
  }
  // A layer's node name: PyTorch's module path where the weight initializer carries it
  // ("features.0.weight" -> "features.0"), else the ONNX node name, else op and index.
  std::string layer_name(const onnx::NodeProto& n, int weight_input = -1) {
    if (weight_input >= 0 && has_input(n, weight_input)) {
      const std::string& w = n.input(weight_input);
      const std::string suffix = ".weight";
      if (w.size() > suffix.size() && w.compare(w.size() - suffix.size(), suffix.size(), suffix) == 0) {
        std::string stem = w.substr(0, w.size() - suffix.size());
        if (sanitize(stem) == stem) return unique_name(stem);
      }
    }
    std::string s = sanitize(n.name());
    if (s.empty()) s = n.op_type() + "_" + std::to_string(index_);
    return unique_name(s);
  }

  // Ops on images: x must be (N, C, H, W), not a pooled (N, C).
  void need_image(const onnx::NodeProto& n, const Val& x) const {
    if (x.squeezed)
      fail(n, "reads the (N, C, 1, 1) output of a GlobalAveragePool; only Flatten, Reshape, Gemm, MatMul, Relu "
              "and Add may read it");
    if (x.dims.size() != 3) fail(n, "expects a (N, C, H, W) input, got " + batch_str(x.dims));
  }

  // Adds a layer reading `inputs`; the output's ONNX dims are ours without the batch.
  Val add_layer(const onnx::NodeProto& n, const std::string& name, std::unique_ptr<Layer> layer, std::vector<int> inputs) {
    std::vector<Shape> in_shapes;
    for (int j : inputs) in_shapes.push_back(shapes_[j]);
    Shape out;
    try {
      out = layer->output_shape(in_shapes);
      m_.add(name, std::move(layer), inputs);
      names_.insert(name);
    } catch (const Error& e) {
      fail(n, e.what());
    }
    shapes_.push_back(out);
    Val v;
    v.node = static_cast<int>(m_.nodes().size()) - 1;
    v.dims = Shape(out.begin() + 1, out.end());
    v.direct = true;
    return v;
  }

  static Tensor tensor_of(const Shape& dims, const std::vector<float>& v) {
    Tensor t(dims);
    std::copy(v.begin(), v.end(), t.data());
    return t;
  }

  // ---------------------------------------------------------------- the graph input

  void add_graph_input(const onnx::GraphProto& g) {
    const onnx::ValueInfoProto* input = nullptr;
    for (const auto& vi : g.input()) {
      if (vals_.count(vi.name())) continue;  // older exporters list initializers as inputs too
      check(input == nullptr, [&] {
        return where_ + ": the graph has more than one input ('" + input->name() + "', '" + vi.name() +
               "'); one image input is supported";
      });
      input = &vi;
    }
    check(input != nullptr, where_ + ": the graph has no input");
    const std::string what = where_ + ": graph input '" + input->name() + "'";
    check(input->type().has_tensor_type(), what + " is not a tensor");
    const auto& tt = input->type().tensor_type();
    check(tt.elem_type() == onnx::TensorProto::FLOAT,
          what + " has data type " + dtype_name(tt.elem_type()) + "; float32 images are supported");
    check(tt.has_shape() && tt.shape().dim_size() == 4, what + ": expected a 4-D (N, C, H, W) input with a known shape");
    Shape chw;
    for (int k = 1; k < 4; ++k) {
      const auto& d = tt.shape().dim(k);
      check(d.has_dim_value() && d.dim_value() > 0 && d.dim_value() <= (1 << 16),
            what + ": dimension " + std::to_string(k) + " of (N, C, H, W) must be a fixed positive size");
      chw.push_back(d.dim_value());
    }
    // Exported with a fixed batch size (no dynamic axes), the shape arithmetic before a
    // Reshape was folded to constants for that batch: probe it at that batch only. A flatten
    // at one batch size is a flatten at every size, which is what our Flatten layer does.
    const auto& batch = tt.shape().dim(0);
    if (batch.has_dim_value() && batch.dim_value() > 0 && batch.dim_value() <= (1 << 16))
      probe_batch_ = {batch.dim_value(), batch.dim_value()};
    std::string name = sanitize(input->name());
    m_.add_input(chw, name.empty() ? "input" : name);
    names_.insert(m_.nodes()[0].name);
    shapes_.push_back({1, chw[0], chw[1], chw[2]});
    Val v;
    v.node = 0;
    v.dims = chw;
    vals_[input->name()] = v;
  }

  // ---------------------------------------------------------------- one node

  void node(const onnx::NodeProto& n) {
    const std::string& op = n.op_type();
    Attrs a(*this, n);
    if (op == "Conv") conv(n, a);
    else if (op == "BatchNormalization") batchnorm(n, a);
    else if (op == "Relu") set_out(n, relu(n));
    else if (op == "MaxPool" || op == "AveragePool") pool(n, a, op == "MaxPool");
    else if (op == "GlobalAveragePool") global_pool(n);
    else if (op == "Flatten") flatten(n, a);
    else if (op == "Reshape") reshape(n, a);
    else if (op == "Gemm") gemm(n, a);
    else if (op == "MatMul") matmul(n);
    else if (op == "Add") add(n);
    else if (op == "Identity") alias(n, in(n, 0));
    else if (op == "Dropout") dropout(n, a);
    else if (op == "Pad") pad(n, a);
    else if (op == "Constant") set_out(n, constant_node(n, a));
    else if (op == "Shape") shape(n, a);
    else if (op == "Gather") gather(n, a);
    else if (op == "Unsqueeze" || op == "Squeeze") squeeze(n, a, op == "Unsqueeze");
    else if (op == "Concat") concat(n, a);
    else if (op == "Slice") slice(n, a);
    else if (op == "Cast") cast(n, a);
    else fail(n, "operator " + op + " is not supported");
    a.done();
  }

  // ---------------------------------------------------------------- layers

  void conv(const onnx::NodeProto& n, Attrs& a) {
    const Val& x = tensor_in(n, 0);
    const Const& w = const_in(n, 1, true);
    need_image(n, x);
    if (w.dims.size() != 4) fail(n, "weight shape " + shape_str(w.dims) + ": only 2-D convolutions are supported");
    const int64_t K = w.dims[0], C = w.dims[1], R = w.dims[2], S = w.dims[3];
    if (a.i("group", 1) != 1) fail(n, "attribute 'group' = " + std::to_string(a.i("group", 1)) + ": grouped convolutions are not supported");
    if (C != x.dims[0]) fail(n, "weight " + shape_str(w.dims) + " expects " + std::to_string(C) + " input channels, the input has " + std::to_string(x.dims[0]));
    std::vector<int64_t> ks = a.ints("kernel_shape", {R, S});
    if (ks != std::vector<int64_t>{R, S}) fail(n, "attribute 'kernel_shape' " + ints_str(ks) + " disagrees with the weight " + shape_str(w.dims));
    std::vector<int64_t> st = a.ints("strides", {1, 1});
    if (st.size() != 2 || st[0] != st[1]) fail(n, "attribute 'strides' = " + ints_str(st) + ": only equal strides are supported");
    std::vector<int64_t> dl = a.ints("dilations", {1, 1});
    if (dl != std::vector<int64_t>{1, 1}) fail(n, "attribute 'dilations' = " + ints_str(dl) + ": dilated convolutions are not supported");
    std::vector<int64_t> pads = a.ints("pads", {0, 0, 0, 0});
    std::string auto_pad = a.s("auto_pad", "NOTSET");
    if (auto_pad != "NOTSET" && auto_pad != "VALID") fail(n, "attribute 'auto_pad' = " + auto_pad + " is not supported (give explicit pads)");
    if (pads.size() != 4 || pads[0] != pads[1] || pads[0] != pads[2] || pads[0] != pads[3])
      fail(n, "attribute 'pads' = " + ints_str(pads) + ": only the same padding on all four sides is supported");
    const Const* b = has_input(n, 2) ? &const_in(n, 2, true) : nullptr;
    if (b && b->numel() != K) fail(n, "bias shape " + shape_str(b->dims) + " does not match " + std::to_string(K) + " filters");
    size_attr(n, "kernel size", std::max(R, S), 1);
    auto layer = std::make_unique<Conv2d>(int(C), int(K), int(R), int(S), size_attr(n, "attribute 'strides'", st[0], 1),
                                          size_attr(n, "attribute 'pads'", pads[0], 0), b != nullptr,
                                          false, 0, 0, /*zero_weight=*/false);
    layer->weight.value = tensor_of({K, C, R, S}, w.f);
    if (b) layer->bias.value = tensor_of({K}, b->f);
    set_out(n, add_layer(n, layer_name(n, 1), std::move(layer), {x.node}));
  }

  void batchnorm(const onnx::NodeProto& n, Attrs& a) {
    const Val& x = tensor_in(n, 0);
    need_image(n, x);
    const int64_t C = x.dims[0];
    const char* roles[] = {"scale", "bias", "mean", "var"};
    std::vector<float> p[4];
    for (int k = 0; k < 4; ++k) {
      const Const& c = const_in(n, k + 1, true);
      if (c.numel() != C) fail(n, std::string(roles[k]) + " has shape " + shape_str(c.dims) + ", expected (" + std::to_string(C) + ")");
      p[k] = c.f;
    }
    if (a.i("training_mode", 0) != 0) fail(n, "attribute 'training_mode' = 1: only the inference form is supported (export in eval mode)");
    if (a.i("spatial", 1) != 1) fail(n, "attribute 'spatial' = 0 is not supported");
    const float eps = a.f("epsilon", 1e-5f), momentum = a.f("momentum", 0.9f);
    if (!(eps > 0.0f)) fail(n, "attribute 'epsilon' must be positive");
    only_first_output(n);
    // ONNX's momentum weighs the old running value; ours (PyTorch's) weighs the new batch.
    auto bn = std::make_unique<BatchNorm2d>(int(C), eps, 1.0f - momentum);
    bn->gamma.value = tensor_of({C}, p[0]);
    bn->beta.value = tensor_of({C}, p[1]);
    bn->running_mean = tensor_of({C}, p[2]);
    bn->running_var = tensor_of({C}, p[3]);
    set_out(n, add_layer(n, layer_name(n, 1), std::move(bn), {x.node}));
  }

  Val relu(const onnx::NodeProto& n) {
    const Val& x = tensor_in(n, 0);
    Val v = add_layer(n, layer_name(n), std::make_unique<ReLU>(), {x.node});
    v.dims = x.dims, v.squeezed = x.squeezed;
    return v;
  }

  void pool(const onnx::NodeProto& n, Attrs& a, bool is_max) {
    const Val& x = tensor_in(n, 0);
    need_image(n, x);
    std::vector<int64_t> ks = a.ints("kernel_shape", {});
    if (ks.size() != 2 || ks[0] != ks[1]) fail(n, "attribute 'kernel_shape' = " + ints_str(ks) + ": only square 2-D windows are supported");
    std::vector<int64_t> st = a.ints("strides", {1, 1});
    if (st.size() != 2 || st[0] != st[1]) fail(n, "attribute 'strides' = " + ints_str(st) + ": only equal strides are supported");
    std::vector<int64_t> pads = a.ints("pads", {0, 0, 0, 0});
    for (int64_t p : pads)
      if (p != 0) fail(n, "attribute 'pads' = " + ints_str(pads) + ": padded pooling is not supported");
    std::string auto_pad = a.s("auto_pad", "NOTSET");
    if (auto_pad != "NOTSET" && auto_pad != "VALID") fail(n, "attribute 'auto_pad' = " + auto_pad + " is not supported");
    std::vector<int64_t> dl = a.ints("dilations", {1, 1});
    if (dl != std::vector<int64_t>{1, 1}) fail(n, "attribute 'dilations' = " + ints_str(dl) + " is not supported");
    if (a.i("storage_order", 0) != 0) fail(n, "attribute 'storage_order' = 1 is not supported");
    a.i("count_include_pad", 0);  // no padding: either way the same
    // ceil_mode rounds the output size up; without padding it changes nothing when the
    // windows tile the input exactly.
    if (st[0] < 1) fail(n, "attribute 'strides' = " + ints_str(st) + " is out of range");
    if (a.i("ceil_mode", 0) != 0 && ((x.dims[1] - ks[0]) % st[0] != 0 || (x.dims[2] - ks[0]) % st[0] != 0))
      fail(n, "attribute 'ceil_mode' = 1 adds a partial window on this " + shape_str(x.dims) + " input; not supported");
    only_first_output(n);
    const int k = size_attr(n, "attribute 'kernel_shape'", ks[0], 1), s = size_attr(n, "attribute 'strides'", st[0], 1);
    set_out(n, add_layer(n, layer_name(n), std::make_unique<Pool2d>(is_max, k, s), {x.node}));
  }

  void global_pool(const onnx::NodeProto& n) {
    const Val& x = tensor_in(n, 0);
    need_image(n, x);
    Val v = add_layer(n, layer_name(n), std::make_unique<GlobalAvgPool>(), {x.node});
    v.dims = {x.dims[0], 1, 1};
    v.squeezed = true;
    set_out(n, v);
  }

  // (N, ...) -> (N, features): an alias when the node already holds that, else a Flatten.
  void flatten_to_features(const onnx::NodeProto& n, const Val& x) {
    if (x.dims.size() == 1 || x.squeezed) {
      Val v = x;
      v.dims = {shape_numel(x.dims)};
      v.squeezed = false;
      alias(n, v);
      return;
    }
    set_out(n, add_layer(n, layer_name(n), std::make_unique<Flatten>(), {x.node}));
  }

  void flatten(const onnx::NodeProto& n, Attrs& a) {
    const Val& x = tensor_in(n, 0);
    int64_t axis = a.i("axis", 1);
    if (axis < 0) axis += int64_t(x.dims.size()) + 1;
    if (axis != 1) fail(n, "attribute 'axis' = " + std::to_string(a.i("axis", 1)) + ": only a flatten after the batch dimension (axis 1) is supported");
    flatten_to_features(n, x);
  }

  void reshape(const onnx::NodeProto& n, Attrs& a) {
    const Val& x = tensor_in(n, 0);
    const Const& target = const_in(n, 1, false);
    const bool allowzero = a.i("allowzero", 0) != 0;
    bool is_flatten = true, is_same = true;
    for (int p = 0; p < kProbes; ++p) {
      Shape in = {probe_batch_[p]};
      in.insert(in.end(), x.dims.begin(), x.dims.end());
      Shape out = target.i[p];
      int infer = -1;
      for (size_t k = 0; k < out.size(); ++k) {
        if (out[k] == 0 && !allowzero) {
          if (k >= in.size()) fail(n, "target shape " + ints_str(target.i[p]) + " copies a dimension the input lacks");
          out[k] = in[k];
        } else if (out[k] == -1) {
          if (infer >= 0) fail(n, "target shape " + ints_str(target.i[p]) + " has two -1");
          infer = int(k);
        } else if (out[k] < 0 || out[k] > kMaxElements) {
          fail(n, "target shape " + ints_str(target.i[p]) + " is invalid");
        }
      }
      int64_t rest = 1;  // the product of the given dims (each at most kMaxElements: no overflow)
      for (size_t k = 0; k < out.size(); ++k)
        if (int(k) != infer) rest = std::min(rest * out[k], kMaxElements + 1);
      const int64_t total = shape_numel(in);
      if (infer >= 0 && rest > 0 && total % rest == 0) out[infer] = total / rest, rest = total;
      if (rest != total) fail(n, "cannot reshape " + shape_str(in) + " to " + ints_str(target.i[p]));
      is_flatten = is_flatten && out == Shape{in[0], shape_numel(in) / in[0]};
      is_same = is_same && out == in;
    }
    if (is_same) alias(n, x);
    else if (is_flatten) flatten_to_features(n, x);
    else
      fail(n, "reshape of " + batch_str(x.dims) + " to " + ints_str(target.i[0]) + " (at batch " +
                  std::to_string(probe_batch_[0]) + ") is not supported: only a flatten to (N, -1)");
  }

  // A linear layer on (N, I) features: weight (O, I), optional bias (O).
  Val linear(const onnx::NodeProto& n, const Val& x, int64_t O, int64_t I, std::vector<float> w,
             const std::vector<float>* b, int weight_input) {
    if (!(x.dims.size() == 1 || x.squeezed)) fail(n, "expects (N, features) input, got " + batch_str(x.dims));
    if (shape_numel(x.dims) != I)
      fail(n, "weight needs " + std::to_string(I) + " input features, the input has " + std::to_string(shape_numel(x.dims)));
    auto fc = std::make_unique<Linear>(int(I), int(O), b != nullptr, /*zero_weight=*/false);
    fc->weight.value = tensor_of({O, I}, w);
    if (b) fc->bias.value = tensor_of({O}, *b);
    return add_layer(n, layer_name(n, weight_input), std::move(fc), {x.node});
  }

  void gemm(const onnx::NodeProto& n, Attrs& a) {
    const Val& x = tensor_in(n, 0);
    const Const& B = const_in(n, 1, true);
    if (B.dims.size() != 2) fail(n, "weight shape " + shape_str(B.dims) + " is not 2-D");
    if (a.i("transA", 0) != 0) fail(n, "attribute 'transA' = 1 is not supported");
    const bool transB = a.i("transB", 0) != 0;
    const float alpha = a.f("alpha", 1.0f), beta = a.f("beta", 1.0f);
    const int64_t O = transB ? B.dims[0] : B.dims[1], I = transB ? B.dims[1] : B.dims[0];
    std::vector<float> w(O * I);  // (O, I)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t i = 0; i < I; ++i) w[o * I + i] = alpha * (transB ? B.f[o * I + i] : B.f[i * O + o]);
    std::vector<float> bias;
    if (has_input(n, 2)) {
      const Const& C = const_in(n, 2, true);
      if (C.numel() != O && C.numel() != 1) fail(n, "bias shape " + shape_str(C.dims) + " does not broadcast to (" + std::to_string(O) + ")");
      if (C.dims.size() == 2 && C.dims[0] != 1) fail(n, "bias shape " + shape_str(C.dims) + " varies over the batch");
      for (int64_t o = 0; o < O; ++o) bias.push_back(beta * C.f[C.numel() == 1 ? 0 : o]);
    }
    set_out(n, linear(n, x, O, I, std::move(w), has_input(n, 2) ? &bias : nullptr, 1));
  }

  void matmul(const onnx::NodeProto& n) {
    const Val& x = tensor_in(n, 0);
    const Const& B = const_in(n, 1, true);  // (I, O)
    if (B.dims.size() != 2) fail(n, "weight shape " + shape_str(B.dims) + " is not 2-D");
    const int64_t I = B.dims[0], O = B.dims[1];
    std::vector<float> w(O * I);
    for (int64_t o = 0; o < O; ++o)
      for (int64_t i = 0; i < I; ++i) w[o * I + i] = B.f[i * O + o];
    set_out(n, linear(n, x, O, I, std::move(w), nullptr, 1));
  }

  void add(const onnx::NodeProto& n) {
    const Val& a = in(n, 0);
    const Val& b = in(n, 1);
    for (int k = 0; k < 2; ++k) {
      const Val& v = k == 0 ? a : b;
      if (v.padded || (v.mapped && (a.is_const || b.is_const))) refuse_spread(n, n.input(k), v);
    }
    if (!a.is_const && !b.is_const) {
      if (a.dims != b.dims || a.squeezed != b.squeezed)
        fail(n, "adds tensors of shapes " + batch_str(a.dims) + " and " + batch_str(b.dims) +
                    "; broadcasting between computed tensors is not supported");
      // A residual join with channel maps: our Add puts each input's channels into place.
      std::unique_ptr<Add> layer = a.mapped || b.mapped ? std::make_unique<Add>(int(a.dims[0]), a.map, b.map, false)
                                                        : std::make_unique<Add>();
      Val v = add_layer(n, layer_name(n), std::move(layer), {a.node, b.node});
      v.dims = a.dims, v.squeezed = a.squeezed;
      set_out(n, v);
      return;
    }
    if (a.is_const && b.is_const) fail(n, "adds two constants; constant arithmetic on weights is not supported");
    const Val& x = a.is_const ? b : a;
    const Const& c = a.is_const ? a.c : b.c;
    const std::string& xname = a.is_const ? n.input(1) : n.input(0);
    if (!c.is_float) fail(n, "adds integers to a tensor");
    fold_bias(n, x, xname, c);
  }

  // Gives `conv` the border table of a (K, P, Q) position bias: rows (and columns) that hold
  // the same values at every channel and column (row) share a class, so the table is exact
  // and as small as the map allows (our exporter's spread table comes back to its classes).
  static void set_border_table(Conv2d& conv, const std::vector<float>& pos, int64_t P, int64_t Q) {
    const int K = conv.out_channels;
    std::vector<double> table(pos.begin(), pos.end());  // (K, P, Q): one class per row and column
    std::vector<int32_t> rows(P), cols(Q);
    std::iota(rows.begin(), rows.end(), 0);
    std::iota(cols.begin(), cols.end(), 0);
    table = merge_equal_classes(std::move(table), K, rows, cols, 0);
    table = merge_equal_classes(std::move(table), K, rows, cols, 1);  // (K, row classes, column classes)
    conv.set_border_table(std::move(rows), std::move(cols));
    float* t = conv.pos_bias.value.data();
    for (size_t i = 0; i < table.size(); ++i) t[i] = static_cast<float>(table[i]);  // the floats read, exactly
  }

  // x + c where x is the output of a conv or linear layer nobody else reads: c joins its
  // bias (per channel, or per position for a conv: what our exporter writes for a compacted
  // model's border correction, which becomes the conv's border table), or of a residual join
  // (per channel: the bias of a compacted join).
  void fold_bias(const onnx::NodeProto& n, const Val& x, const std::string& xname, const Const& c) {
    auto refuse = [&](const std::string& why) {
      fail(n, "adds a constant of shape " + shape_str(c.dims) + " to '" + xname + "': " + why +
                  " (a constant Add is supported only as the bias of the Conv, Gemm, MatMul or residual Add right before it)");
    };
    if (!x.direct || x.node <= 0 || uses_[xname] != 1) refuse("it is not the sole use of a layer's own output");
    Node& node = m_.nodes()[x.node];
    Shape cd = c.dims;  // broadcast dims without leading ones beyond the tensor's rank
    while (cd.size() > x.dims.size() && cd.front() == 1) cd.erase(cd.begin());
    if (cd.size() > x.dims.size()) refuse("its rank exceeds the tensor's");
    while (cd.size() < x.dims.size()) cd.insert(cd.begin(), 1);
    if (auto* fc = dynamic_cast<Linear*>(node.layer.get())) {
      const int64_t O = fc->out_features;
      if (!(cd == Shape{O} || cd == Shape{1})) refuse("it is not one value per output");
      std::vector<float> bias = fc->has_bias ? fc->bias.value.to_vector() : std::vector<float>(O, 0.0f);
      for (int64_t o = 0; o < O; ++o) bias[o] += c.f[cd[0] == 1 ? 0 : o];
      auto nf = std::make_unique<Linear>(fc->in_features, int(O), true, false);
      nf->weight.value = fc->weight.value;
      nf->bias.value = tensor_of({O}, bias);
      node.layer = std::move(nf);
    } else if (auto* cv = dynamic_cast<Conv2d*>(node.layer.get())) {
      if (cv->fused_relu) refuse("the conv applies a ReLU");
      const int64_t K = cv->out_channels, P = x.dims[1], Q = x.dims[2];
      const bool per_channel = (cd[0] == K || cd[0] == 1) && cd[1] == 1 && cd[2] == 1;
      const bool per_position = cd == Shape{K, P, Q};
      if (!per_channel && !per_position) refuse("it is neither one value per channel nor a (K, P, Q) map");
      if (cv->pos_h > 0 && (cv->pos_h != P || cv->pos_w != Q)) refuse("the conv's border table covers another output size");
      std::vector<float> bias = cv->has_bias ? cv->bias.value.to_vector() : std::vector<float>(K, 0.0f);
      std::vector<float> pos;  // (K, P, Q): the conv's border table spread out, or empty
      if (cv->pos_h > 0) {
        pos.resize(K * P * Q);
        const int64_t TR = cv->table_rows(), TC = cv->table_cols();
        for (int64_t k = 0; k < K; ++k)
          for (int64_t p = 0; p < P; ++p)
            for (int64_t q = 0; q < Q; ++q)
              pos[(k * P + p) * Q + q] = cv->pos_bias.value[(k * TR + cv->pos_rows[p]) * TC + cv->pos_cols[q]];
      }
      if (per_channel) {
        for (int64_t k = 0; k < K; ++k) bias[k] += c.f[cd[0] == 1 ? 0 : k];
      } else {
        if (pos.empty()) pos.assign(K * P * Q, 0.0f);
        for (int64_t j = 0; j < K * P * Q; ++j) pos[j] += c.f[j];
      }
      auto nc = std::make_unique<Conv2d>(cv->in_channels, int(K), cv->kernel_h, cv->kernel_w, cv->stride, cv->pad, true,
                                         false, 0, 0, false);
      nc->weight.value = cv->weight.value;
      nc->bias.value = tensor_of({K}, bias);
      if (!pos.empty()) set_border_table(*nc, pos, P, Q);
      node.layer = std::move(nc);
    } else if (auto* ad = dynamic_cast<Add*>(node.layer.get())) {
      // The bias of a residual join (our exporter writes one after a mapped Add).
      const int64_t C = x.dims[0];
      if (!((cd[0] == C || cd[0] == 1) && shape_numel(cd) == cd[0])) refuse("it is not one value per channel");
      std::vector<float> bias = ad->has_bias ? ad->bias.value.to_vector() : std::vector<float>(C, 0.0f);
      for (int64_t k = 0; k < C; ++k) bias[k] += c.f[cd[0] == 1 ? 0 : k];
      auto na = std::make_unique<Add>(int(C), ad->map[0], ad->map[1], true);
      na->bias.value = tensor_of({C}, bias);
      node.layer = std::move(na);
    } else {
      refuse(std::string("it is the output of a ") + layer_kind_name(node.layer->kind()) + " layer");
    }
    ++info_.folded_adds;
    Val v = x;
    v.direct = true;
    set_out(n, v);
  }

  void dropout(const onnx::NodeProto& n, Attrs& a) {
    a.f("ratio", 0.5f);
    a.i("seed", 0);
    if (a.i("is_test", 1) == 0) fail(n, "attribute 'is_test' = 0: training-mode dropout is not supported");
    if (has_input(n, 2)) {
      std::vector<int64_t> t = ints_in(n, 2);
      if (!t.empty() && t[0] != 0) fail(n, "training_mode is true: training-mode dropout is not supported");
    }
    only_first_output(n);
    alias(n, tensor_in(n, 0));
  }

  // Zero padding (PyTorch's AvgPool2d writes a Pad of zeros before the AveragePool), or one
  // zero channel appended: the first step of a residual join's channel spread (see Val).
  void pad(const onnx::NodeProto& n, Attrs& a) {
    const Val& x = tensor_in(n, 0);
    std::vector<int64_t> pads = has_input(n, 1) ? ints_in(n, 1) : a.ints("pads", {});
    const std::string mode = a.s("mode", "constant");
    float value = a.f("value", 0.0f);
    if (has_input(n, 2)) {
      const Const& v = const_in(n, 2, true);
      if (v.numel() != 1) fail(n, "constant_value has shape " + shape_str(v.dims) + ", expected one value");
      value = v.f[0];
    }
    if (has_input(n, 3)) fail(n, "the 'axes' input is not supported");
    const int64_t rank = int64_t(x.dims.size()) + 1;
    std::vector<int64_t> channel_pad(2 * rank, 0);
    channel_pad[rank + 1] = 1;
    if (pads == channel_pad) {
      if (mode != "constant" || value != 0.0f)
        fail(n, "pads one channel with mode '" + mode + "' and value " + std::to_string(value) +
                    "; only zeros are supported (the channel map of a residual join)");
      Val v = x;
      v.padded = true;
      v.dims[0] += 1;
      alias(n, v);
      return;
    }
    for (int64_t p : pads)
      if (p != 0)
        fail(n, "pads " + ints_str(pads) + ": nonzero padding outside a Conv is supported only as one zero channel "
                "appended (" + ints_str(channel_pad) + ") before a Gather along axis 1");
    alias(n, x);
  }

  // ---------------------------------------------------------------- constants

  Val constant_node(const onnx::NodeProto& n, Attrs& a) {
    Const c;
    if (const onnx::TensorProto* t = a.tensor("value")) {
      try {
        c = decode_tensor(*t, "value");
      } catch (const Error& e) {
        fail(n, e.what());
      }
    } else if (a.has("value_float")) {
      c.f = {a.f("value_float", 0.0f)};
    } else if (a.has("value_floats")) {
      c.f = a.floats("value_floats");
      c.dims = {int64_t(c.f.size())};
    } else if (a.has("value_int")) {
      c.is_float = false;
      c.i.fill({a.i("value_int", 0)});
    } else if (a.has("value_ints")) {
      c.is_float = false;
      c.i.fill(a.ints("value_ints", {}));
      c.dims = {int64_t(c.i[0].size())};
    } else if (n.attribute_size() == 0) {
      fail(n, "has no value");
    }
    return constant(std::move(c));
  }

  void shape(const onnx::NodeProto& n, Attrs& a) {
    const Val& x = in(n, 0);
    Const c;
    c.is_float = false;
    for (int p = 0; p < kProbes; ++p) {
      std::vector<int64_t> s;
      if (x.is_const) s = x.c.dims;
      else {
        s = {probe_batch_[p]};
        s.insert(s.end(), x.dims.begin(), x.dims.end());
      }
      const int64_t r = int64_t(s.size());
      int64_t start = a.i("start", 0), end = a.i("end", r);
      if (start < 0) start += r;
      if (end < 0) end += r;
      start = std::clamp<int64_t>(start, 0, r), end = std::clamp<int64_t>(end, start, r);
      c.i[p].assign(s.begin() + start, s.begin() + end);
    }
    c.dims = {int64_t(c.i[0].size())};
    set_out(n, constant(std::move(c)));
  }

  // Gather along any axis of a constant (float weights or integer shapes: PyTorch's shape
  // arithmetic, our exporter's spread border tables), or the channel spread of a residual join.
  void gather(const onnx::NodeProto& n, Attrs& a) {
    if (!in(n, 0).is_const) {
      gather_channels(n, a);
      return;
    }
    const Const& data = in(n, 0).c;
    const Const& idx = const_in(n, 1, false);
    const int64_t rank = int64_t(data.dims.size());
    int64_t axis = a.i("axis", 0);
    if (rank == 0) fail(n, "gathers from a scalar");
    if (axis < -rank || axis >= rank)
      fail(n, "attribute 'axis' = " + std::to_string(axis) + " is out of range for a constant of shape " + shape_str(data.dims));
    if (axis < 0) axis += rank;
    if (data.is_float && idx.i[0] != idx.i[1]) fail(n, "input '" + n.input(1) + "' depends on the batch size");
    // data (outer, len, inner) -> (outer, indices, inner)
    int64_t outer = 1, inner = 1;
    for (int64_t k = 0; k < axis; ++k) outer *= data.dims[k];
    for (int64_t k = axis + 1; k < rank; ++k) inner *= data.dims[k];
    const int64_t len = data.dims[axis], count = int64_t(idx.i[0].size());
    Const c;
    c.is_float = data.is_float;
    c.dims.assign(data.dims.begin(), data.dims.begin() + axis);
    c.dims.insert(c.dims.end(), idx.dims.begin(), idx.dims.end());
    c.dims.insert(c.dims.end(), data.dims.begin() + axis + 1, data.dims.end());
    if (count > 0 && outer * inner > 0 && outer * inner > kMaxElements / count)
      fail(n, "its result of shape " + shape_str(c.dims) + " is too large");
    for (int p = 0; p < (data.is_float ? 1 : kProbes); ++p) {
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t k : idx.i[p]) {
          if (k < -len || k >= len) fail(n, "index " + std::to_string(k) + " out of range for " + std::to_string(len) + " values");
          const int64_t from = (o * len + (k < 0 ? k + len : k)) * inner;
          if (data.is_float) c.f.insert(c.f.end(), data.f.begin() + from, data.f.begin() + from + inner);
          else c.i[p].insert(c.i[p].end(), data.i[p].begin() + from, data.i[p].begin() + from + inner);
        }
    }
    set_out(n, constant(std::move(c)));
  }

  // Gather (axis 1, constant 1-D indices) from a tensor padded by one zero channel: index k
  // names, per output channel, an input channel or the zero channel. Every input channel must
  // appear once, in ascending order: our Add's channel map.
  void gather_channels(const onnx::NodeProto& n, Attrs& a) {
    const Val& x = in(n, 0);
    const std::string pattern = " (a Gather on a computed tensor is supported only as the channel map of a residual "
                                "join: Pad of one zero channel, Gather along axis 1 with constant indices, Add)";
    if (!x.padded)
      fail(n, "gathers from the computed tensor '" + n.input(0) + "', which is not padded by one zero channel" + pattern);
    const int64_t rank = int64_t(x.dims.size()) + 1;
    int64_t axis = a.i("axis", 0);
    if (axis < 0) axis += rank;
    if (axis != 1) fail(n, "attribute 'axis' = " + std::to_string(a.i("axis", 0)) + ", expected 1 (channels)" + pattern);
    const Const& ic = const_in(n, 1, false);
    if (ic.dims.size() != 1) fail(n, "indices of shape " + shape_str(ic.dims) + ", expected a 1-D list" + pattern);
    std::vector<int64_t> idx = ints_in(n, 1);
    const int64_t Cs = x.dims[0] - 1, C = int64_t(idx.size());
    if (C == 0) fail(n, "gathers no channels" + pattern);
    std::vector<int32_t> map(Cs, -1);
    for (int64_t k = 0; k < C; ++k) {
      int64_t c = idx[k] < 0 ? idx[k] + Cs + 1 : idx[k];
      if (c < 0 || c > Cs) fail(n, "index " + std::to_string(idx[k]) + " out of range for " + std::to_string(Cs + 1) + " channels");
      if (c == Cs) continue;  // the zero channel
      if (map[c] >= 0) fail(n, "gathers channel " + std::to_string(c) + " twice" + pattern);
      if (c > 0 && map[c - 1] < 0) fail(n, "gathers channel " + std::to_string(c) + " before channel " + std::to_string(c - 1) + pattern);
      map[c] = int32_t(k);
    }
    for (int64_t c = 0; c < Cs; ++c)
      if (map[c] < 0) fail(n, "drops channel " + std::to_string(c) + " of '" + n.input(0) + "'" + pattern);
    Val v = x;
    v.padded = false;
    v.mapped = true;
    v.map = std::move(map);
    v.dims[0] = C;
    alias(n, v);
  }

  void squeeze(const onnx::NodeProto& n, Attrs& a, bool unsqueeze) {
    const Val& v = in(n, 0);
    if (!v.is_const) fail(n, "is supported only on constants (shape arithmetic), not on computed tensors");
    Const c = v.c;
    std::vector<int64_t> axes = has_input(n, 1) ? ints_in(n, 1) : a.ints("axes", {});
    if (unsqueeze) {
      const int64_t rank = int64_t(c.dims.size() + axes.size());
      for (int64_t& ax : axes) ax = ax < 0 ? ax + rank : ax;
      std::sort(axes.begin(), axes.end());
      for (int64_t ax : axes) {
        if (ax < 0 || ax > int64_t(c.dims.size())) fail(n, "axis out of range");
        c.dims.insert(c.dims.begin() + ax, 1);
      }
    } else {
      const int64_t rank = int64_t(c.dims.size());
      Shape dims;
      for (int64_t k = 0; k < rank; ++k) {
        bool listed = axes.empty() ? c.dims[k] == 1
                                   : std::find_if(axes.begin(), axes.end(), [&](int64_t ax) {
                                       return (ax < 0 ? ax + rank : ax) == k;
                                     }) != axes.end();
        if (listed && c.dims[k] != 1) fail(n, "squeezes axis " + std::to_string(k) + " of size " + std::to_string(c.dims[k]));
        if (!listed) dims.push_back(c.dims[k]);
      }
      c.dims = dims;
    }
    set_out(n, constant(std::move(c)));
  }

  void concat(const onnx::NodeProto& n, Attrs& a) {
    const int64_t axis = a.i("axis", 0);
    if (axis != 0 && axis != -1) fail(n, "attribute 'axis' = " + std::to_string(axis) + ": only 1-D concatenation is supported");
    Const c;
    c.is_float = false;
    for (int k = 0; k < n.input_size(); ++k) {
      const Val& v = in(n, k);
      if (!v.is_const) fail(n, "is supported only on constants (shape arithmetic), not on computed tensors");
      if (v.c.is_float || v.c.dims.size() != 1) fail(n, "only 1-D integer constants are supported");
      for (int p = 0; p < kProbes; ++p) c.i[p].insert(c.i[p].end(), v.c.i[p].begin(), v.c.i[p].end());
    }
    c.dims = {int64_t(c.i[0].size())};
    set_out(n, constant(std::move(c)));
  }

  void slice(const onnx::NodeProto& n, Attrs& a) {
    const Const& data = const_in(n, 0, false);
    if (data.dims.size() != 1) fail(n, "slices a constant of shape " + shape_str(data.dims) + "; only 1-D is supported");
    std::vector<int64_t> starts = has_input(n, 1) ? ints_in(n, 1) : a.ints("starts", {});
    std::vector<int64_t> ends = has_input(n, 2) ? ints_in(n, 2) : a.ints("ends", {});
    std::vector<int64_t> axes = has_input(n, 3) ? ints_in(n, 3) : a.ints("axes", {0});
    std::vector<int64_t> steps = has_input(n, 4) ? ints_in(n, 4) : std::vector<int64_t>{1};
    if (starts.size() != 1 || ends.size() != 1 || axes.size() != 1 || (axes[0] != 0 && axes[0] != -1) ||
        steps.size() != 1 || steps[0] != 1)
      fail(n, "only a unit-step slice of one 1-D constant is supported");
    const int64_t len = data.dims[0];
    int64_t s = starts[0] < 0 ? starts[0] + len : starts[0], e = ends[0] < 0 ? ends[0] + len : ends[0];
    s = std::clamp<int64_t>(s, 0, len), e = std::clamp<int64_t>(e, s, len);
    Const c;
    c.is_float = false;
    for (int p = 0; p < kProbes; ++p) c.i[p].assign(data.i[p].begin() + s, data.i[p].begin() + e);
    c.dims = {e - s};
    set_out(n, constant(std::move(c)));
  }

  void cast(const onnx::NodeProto& n, Attrs& a) {
    const Val& v = in(n, 0);
    if (!v.is_const) fail(n, "is supported only on constants (shape arithmetic), not on computed tensors");
    const int64_t to = a.i("to", 0);
    Const c = v.c;
    if (to == onnx::TensorProto::FLOAT) {
      if (!c.is_float) {
        if (c.i[0] != c.i[1]) fail(n, "casts a batch-dependent shape to float");
        c.f.assign(c.i[0].begin(), c.i[0].end());
        c.is_float = true;
      }
    } else if (to == onnx::TensorProto::INT64 || to == onnx::TensorProto::INT32) {
      if (c.is_float) {
        std::vector<int64_t> v2;
        for (float x : c.f) v2.push_back(static_cast<int64_t>(x));
        c.i.fill(v2);
        c.is_float = false;
      }
    } else {
      fail(n, "cast to " + dtype_name(int(to)) + " is not supported");
    }
    set_out(n, constant(std::move(c)));
  }

  // ---------------------------------------------------------------- masks

  void make_masks() {
    for (auto& p : m_.params()) {
      if (!p.param->prunable) continue;
      const Tensor& w = p.param->value;
      Tensor mask(w.shape());
      for (int64_t k = 0; k < w.numel(); ++k) mask[k] = w[k] != 0.0f ? 1.0f : 0.0f;
      info_.weights += w.numel();
      info_.zero_weights += w.numel() - static_cast<int64_t>(std::count(mask.data(), mask.data() + mask.numel(), 1.0f));
      m_.masks[p.name] = std::move(mask);
    }
  }

  const onnx::ModelProto& proto_;
  std::string where_;
  OnnxImportInfo& info_;
  Model m_;
  std::vector<Shape> shapes_;  // per model node, at batch 1
  std::map<std::string, Val> vals_;
  std::map<std::string, int> uses_;
  std::unordered_set<std::string> names_;                // the model's node names so far
  std::unordered_map<std::string, int> next_suffix_;     // unique_name: base -> next _k to try
  int index_ = 0;
  // The batch sizes shape arithmetic is evaluated at: two, so that what depends on the batch
  // shows; one, when the file fixes the batch size.
  std::array<int64_t, kProbes> probe_batch_ = {2, 3};
};

}  // namespace

Model import_onnx_bytes(const std::string& bytes, const std::string& where, OnnxImportInfo* info) {
  onnx::ModelProto proto;
  check(!bytes.empty(), where + ": empty file, not an ONNX model");
  check(proto.ParseFromString(bytes), where + ": not an ONNX model, or truncated or corrupt (the protobuf does not parse)");
  OnnxImportInfo local;
  Model m = Importer(proto, where, info ? *info : local).run();
  return m;
}

Model import_onnx(const std::string& path, OnnxImportInfo* info) {
  return import_onnx_bytes(read_text(path), path, info);
}

}  // namespace dnns
