// ONNX import: models exported by PyTorch (tests/fixtures/onnx, made by make_fixtures.py with
// Debian's python3-torch) give PyTorch's logits and, pruned there, compact exactly here; our
// own exports come back with the same logits; unsupported ops, attributes, data types and
// broken files are refused by name; `cifar_prune import` writes a loadable model file.
#include <doctest/doctest.h>

#include "tests/test_util.h"

#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/rng.h"
#include "nn/model.h"

#ifndef DNNS_HAVE_ONNX_IMPORT

TEST_CASE("onnx import: not built") {
  std::printf("SKIPPED: this build has no ONNX import (libonnx-dev and libprotobuf-dev were not found)\n");
  std::exit(77);  // CTest reports exit code 77 as "skipped"
}

#else

#include <onnx/onnx_pb.h>

#include "nn/export/export.h"
#include "nn/import/onnx_import.h"
#include "nn/models/zoo.h"
#include "prune/compact.h"
#include "prune/mask.h"

using namespace dnns;
using dnns::testing::contains;
using dnns::testing::error_of;
using dnns::testing::logit_scale;
using dnns::testing::TempDir;
namespace fs = std::filesystem;

static_assert(std::endian::native == std::endian::little, "the fixtures' raw .bin files are little-endian float32");

namespace {

// Imported logits vs PyTorch's: the same maths in another summation order. Relative to the
// logit scale max(1, max |logit|).
constexpr float kTol = 1e-5f;

const std::string kFixtures = std::string(DNNS_SOURCE_DIR) + "/tests/fixtures/onnx";

int run_command(const std::string& cmd, const std::string& log) {
  const int rc = std::system((cmd + " >" + log + " 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

std::string file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

Tensor read_floats(const std::string& path, const Shape& shape) {
  std::string b = file_bytes(path);
  REQUIRE_MESSAGE(static_cast<int64_t>(b.size()) == 4 * shape_numel(shape), path << ": unexpected size");
  Tensor t(shape);
  std::memcpy(t.data(), b.data(), b.size());
  return t;
}

std::vector<int> predictions(const Tensor& logits) {
  std::vector<int> p;
  const int64_t n = logits.dim(0), k = logits.dim(1);
  for (int64_t i = 0; i < n; ++i)
    p.push_back(int(std::max_element(logits.data() + i * k, logits.data() + (i + 1) * k) - (logits.data() + i * k)));
  return p;
}

int count_kind(const Model& m, LayerKind kind) {
  int c = 0;
  for (const Node& n : m.nodes())
    if (n.layer && n.layer->kind() == kind) ++c;
  return c;
}

int position_bias_convs(const Model& m) {
  int c = 0;
  for (const Node& n : m.nodes())
    if (auto* conv = dynamic_cast<const Conv2d*>(n.layer.get())) c += conv->pos_h > 0;
  return c;
}

// The mapped residual joins of a model in node order: channels, maps, bias flag and values.
struct MappedAdd {
  int channels;
  std::vector<int32_t> map0, map1;
  bool has_bias;
  std::vector<float> bias;
};
std::vector<MappedAdd> mapped_adds(const Model& m) {
  std::vector<MappedAdd> v;
  for (const Node& n : m.nodes())
    if (auto* a = dynamic_cast<const Add*>(n.layer.get()); a && a->mapped())
      v.push_back({a->channels, a->map[0], a->map[1], a->has_bias,
                   a->has_bias ? a->bias.value.to_vector() : std::vector<float>()});
  return v;
}

// A fixture, parsed, for a test to break in one place.
onnx::ModelProto fixture_proto(const std::string& name) {
  onnx::ModelProto p;
  REQUIRE(p.ParseFromString(file_bytes(kFixtures + "/" + name)));
  return p;
}
onnx::NodeProto* first_node(onnx::ModelProto& p, const std::string& op) {
  for (auto& n : *p.mutable_graph()->mutable_node())
    if (n.op_type() == op) return &n;
  FAIL("no " << op << " node");
  return nullptr;
}
std::string import_error(const onnx::ModelProto& p) {
  return error_of([&] { import_onnx_bytes(p.SerializeAsString(), "bad.onnx"); });
}

struct Fixture {
  std::string file, logits;
  int batchnorms;  // BatchNormalization nodes the export kept
};
const Fixture kCases[] = {{"vgg_eval.onnx", "vgg.logits.bin", 0},
                          {"vgg_bn.onnx", "vgg.logits.bin", 4},
                          {"vgg_default.onnx", "vgg.logits.bin", 0},  // every default: batch fixed at 2
                          {"resnet_eval.onnx", "resnet.logits.bin", 0},
                          {"resnet_bn.onnx", "resnet.logits.bin", 9}};
const Shape kInput = {2, 3, 16, 16}, kLogits = {2, 10};

// Imports the fixtures in `dir` and checks them against the PyTorch logits stored there.
void check_fixtures(const std::string& dir) {
  const Tensor x = read_floats(dir + "/input.bin", kInput);
  int64_t zeros[2] = {-1, -1};  // per network, from the first of its two exports
  for (const Fixture& f : kCases) {
    CAPTURE(f.file);
    OnnxImportInfo info;
    Model m = import_onnx(dir + "/" + f.file, &info);
    const Tensor want = read_floats(dir + "/" + f.logits, kLogits);
    const Tensor got = m.forward(x, false);
    const float diff = max_abs_diff(got, want), scale = logit_scale(want);
    MESSAGE(f.file << ": " << m.nodes().size() - 1 << " layers, " << info.zero_weights << " of " << info.weights
                   << " weights zero; max |logit - PyTorch's| " << diff << " at scale " << scale);
    CHECK(diff <= kTol * scale);
    CHECK(predictions(got) == predictions(want));
    CHECK(count_kind(m, LayerKind::BatchNorm) == f.batchnorms);
    // Both exports of one network carry the same zeros (folding batchnorm keeps a zero a zero),
    // about 80% of the weights: the global magnitude pruning the script did.
    int64_t& z = zeros[f.file[0] == 'v' ? 0 : 1];
    if (z < 0) z = info.zero_weights;
    CHECK(info.zero_weights == z);
    CHECK(info.zero_weights > info.weights * 3 / 4);
    int64_t masked = 0;
    for (const auto& [name, mask] : m.masks) masked += mask.numel() - mask_count(mask);
    CHECK(masked == info.zero_weights);
  }
}

}  // namespace

TEST_CASE("onnx import: PyTorch's VGG and ResNet give PyTorch's logits") { check_fixtures(kFixtures); }

TEST_CASE("onnx import: the graphs map onto our layers") {
  Model vgg = import_onnx(kFixtures + "/vgg_eval.onnx");
  // Eval-mode export: batchnorm folded into convs that have a bias; the Shape/Gather/
  // Unsqueeze/Concat/Reshape chain became one Flatten; the Pad of zeros vanished.
  CHECK(count_kind(vgg, LayerKind::Conv) == 4);
  CHECK(count_kind(vgg, LayerKind::Flatten) == 1);
  CHECK(count_kind(vgg, LayerKind::Linear) == 2);
  CHECK(count_kind(vgg, LayerKind::MaxPool) == 2);
  CHECK(count_kind(vgg, LayerKind::AvgPool) == 1);
  for (const Node& n : vgg.nodes())
    if (auto* c = dynamic_cast<const Conv2d*>(n.layer.get())) CHECK(c->has_bias);
  Model bn = import_onnx(kFixtures + "/vgg_bn.onnx");
  CHECK(bn.find("features.0") > 0);    // PyTorch's module names, from the weights' names
  CHECK(bn.find("classifier.2") > 0);
  CHECK(bn.masks.count("features.0.weight") == 1);
  Model res = import_onnx(kFixtures + "/resnet_bn.onnx");
  CHECK(count_kind(res, LayerKind::Add) == 3);
  CHECK(count_kind(res, LayerKind::GlobalAvgPool) == 1);
  CHECK(count_kind(res, LayerKind::Flatten) == 0);  // GlobalAveragePool + Flatten is our (N, C) pool
  CHECK(res.find("blocks.1.shortcut.0") > 0);
  // Exported with the batch fixed at 2 (Reshape to the constant [2, -1]): the imported model
  // still takes any batch size.
  Model fixed = import_onnx(kFixtures + "/vgg_default.onnx");
  CHECK(count_kind(fixed, LayerKind::Flatten) == 1);
  const Tensor x = read_floats(kFixtures + "/input.bin", kInput);
  Tensor one({1, 3, 16, 16});
  std::memcpy(one.data(), x.data(), 4 * one.numel());
  const Tensor want = read_floats(kFixtures + "/vgg.logits.bin", kLogits);
  const Tensor got = fixed.forward(one, false);
  for (int k = 0; k < 10; ++k) CHECK(got[k] == doctest::Approx(want[k]).epsilon(1e-4));
}

TEST_CASE("onnx import: clashing node names get the first free suffix") {
  // Every Relu named "r", the first one "r_3": the others become r, r_2, r_4, r_5, ... in order.
  onnx::ModelProto p = fixture_proto("resnet_eval.onnx");
  int relus = 0;
  for (auto& n : *p.mutable_graph()->mutable_node())
    if (n.op_type() == "Relu") n.set_name(relus++ == 0 ? "r_3" : "r");
  REQUIRE(relus >= 5);
  Model m = import_onnx_bytes(p.SerializeAsString(), "names.onnx");
  std::vector<std::string> got, want = {"r_3", "r", "r_2"};
  for (int k = 4; k <= relus; ++k) want.push_back("r_" + std::to_string(k));
  for (const Node& n : m.nodes())
    if (n.layer && n.layer->kind() == LayerKind::ReLU) got.push_back(n.name);
  CHECK(got == want);
}

TEST_CASE("onnx import: pruned in PyTorch, compacted exactly here") {
  const Tensor fixed = read_floats(kFixtures + "/input.bin", kInput);
  Rng rng(5);
  const Tensor random = dnns::testing::random_images(16, {3, 16, 16}, rng);
  for (const Fixture& f : kCases) {
    CAPTURE(f.file);
    Model m = import_onnx(kFixtures + "/" + f.file);
    CompactReport rep;
    Model c = compact_model(m, &rep);
    MESSAGE(f.file << ": " << rep.channels_removed << " channels removed, parameters " << rep.params_before << " -> "
                   << rep.params_after << ", " << rep.constants_folded << " constants folded");
    CHECK(rep.channels_removed > 0);
    CHECK(rep.params_after < rep.params_before * 9 / 10);
    for (const Tensor* x : {&fixed, &random}) {
      const Tensor a = m.forward(*x, false), b = c.forward(*x, false);
      CHECK(max_abs_diff(a, b) <= 1e-5f * logit_scale(a));
      CHECK(predictions(a) == predictions(b));
    }
    const Tensor want = read_floats(kFixtures + "/" + f.logits, kLogits);
    CHECK(max_abs_diff(c.forward(fixed, false), want) <= kTol * logit_scale(want));
  }
}

TEST_CASE("onnx import: our own exports come back with the same logits") {
  Rng rng(11);
  struct Case {
    std::string name;
    Model model;
  };
  std::vector<Case> cases;
  cases.push_back({"resnet20", build_model("resnet20", 10, {3, 16, 16})});
  cases.push_back({"vgg11", build_model("vgg11", 10, {3, 32, 32})});
  const Tensor x = dnns::testing::random_images(4, {3, 16, 16}, rng), x32 = dnns::testing::random_images(2, {3, 32, 32}, rng);
  for (Case& c : cases) {
    CAPTURE(c.name);
    init_model(c.model, rng);
    dnns::testing::randomize_batchnorm(c.model, rng);
    dnns::testing::random_masks(c.model, rng, 0.3f, 0.3f);
    const Tensor& in = c.name == "vgg11" ? x32 : x;
    Model compact = compact_model(c.model);
    for (Model* src : {&c.model, &compact}) {
      const bool is_compact = src == &compact;
      CAPTURE(is_compact);
      OnnxExportInfo ex;
      const std::string bytes = onnx_model_bytes(*src, &ex);
      OnnxImportInfo info;
      Model back = import_onnx_bytes(bytes, c.name + ".onnx", &info);
      const Tensor a = src->forward(in, false), b = back.forward(in, false);
      MESSAGE(c.name << std::string(is_compact ? " compact" : " masked") << ": max |logit diff| after export and import "
                     << max_abs_diff(a, b) << " at scale " << logit_scale(a) << ", " << info.folded_adds
                     << " constant adds folded");
      CHECK(max_abs_diff(a, b) <= 1e-4f * logit_scale(a));
      CHECK(predictions(a) == predictions(b));
      if (!is_compact) {
        // Batchnorm folding keeps every masked weight zero: the masks come back.
        int64_t masked = 0;
        for (const auto& [name, mask] : c.model.masks) masked += mask.numel() - mask_count(mask);
        CHECK(info.zero_weights == masked);
        CHECK(count_kind(back, LayerKind::BatchNorm) == 0);
      } else {
        // The border corrections come back as border tables, the residual joins' channel maps
        // and biases as mapped Adds: nothing is folded away or spread out into a full map.
        const std::vector<MappedAdd> want = mapped_adds(compact), got = mapped_adds(back);
        int biased = 0;
        for (const MappedAdd& a : want) biased += a.has_bias;
        CHECK(info.folded_adds == position_bias_convs(compact) + biased);
        CHECK(position_bias_convs(back) == position_bias_convs(compact));
        int tables = 0;
        for (const Node& n : compact.nodes()) {
          auto* conv = dynamic_cast<const Conv2d*>(n.layer.get());
          if (!conv || conv->pos_h == 0) continue;
          CAPTURE(n.name);
          const int j = back.find(n.name);
          REQUIRE(j >= 0);
          auto* conv_back = dynamic_cast<const Conv2d*>(back.nodes()[j].layer.get());
          REQUIRE(conv_back != nullptr);
          CHECK(conv_back->pos_h == conv->pos_h);
          CHECK(conv_back->pos_w == conv->pos_w);
          CHECK(conv_back->table_rows() <= conv->table_rows());
          CHECK(conv_back->table_cols() <= conv->table_cols());
          tables += conv->table_rows() < conv->pos_h && conv_back->table_rows() < conv_back->pos_h;
        }
        REQUIRE(got.size() == want.size());
        for (size_t k = 0; k < want.size(); ++k) {
          CAPTURE(k);
          CHECK(got[k].channels == want[k].channels);
          CHECK(got[k].map0 == want[k].map0);
          CHECK(got[k].map1 == want[k].map1);
          CHECK(got[k].has_bias == want[k].has_bias);
          REQUIRE(got[k].bias.size() == want[k].bias.size());
          for (size_t c = 0; c < want[k].bias.size(); ++c) CHECK(got[k].bias[c] == doctest::Approx(want[k].bias[c]));
        }
        MESSAGE(c.name << " compact: " << position_bias_convs(compact) << " border-table convs (" << tables
                       << " smaller than their map), " << want.size() << " mapped adds (" << biased << " with a bias)");
        if (c.name == "resnet20") {  // the new forms really are in this model
          CHECK(tables > 0);
          CHECK(!want.empty());
        }
      }
    }
  }
}

TEST_CASE("onnx import: unsupported ops, attributes and data types are refused by name") {
  {
    onnx::ModelProto p = fixture_proto("vgg_eval.onnx");
    onnx::NodeProto* relu = first_node(p, "Relu");
    relu->set_op_type("Sigmoid");
    const std::string e = import_error(p);
    CHECK(contains(e, "bad.onnx: node '" + relu->name() + "' (Sigmoid): operator Sigmoid is not supported"));
  }
  {
    onnx::ModelProto p = fixture_proto("vgg_eval.onnx");
    onnx::NodeProto* conv = first_node(p, "Conv");
    for (auto& a : *conv->mutable_attribute())
      if (a.name() == "dilations") a.set_ints(0, 2), a.set_ints(1, 2);
    CHECK(contains(import_error(p), "node '" + conv->name() + "' (Conv): attribute 'dilations' = [2, 2]"));
  }
  {
    onnx::ModelProto p = fixture_proto("vgg_eval.onnx");
    onnx::NodeProto* conv = first_node(p, "Conv");
    for (auto& a : *conv->mutable_attribute())
      if (a.name() == "group") a.set_i(3);
    CHECK(contains(import_error(p), "(Conv): attribute 'group' = 3"));
  }
  {
    onnx::ModelProto p = fixture_proto("vgg_eval.onnx");
    onnx::NodeProto* pool = first_node(p, "MaxPool");
    for (auto& a : *pool->mutable_attribute())
      if (a.name() == "pads") a.set_ints(0, 1);
    CHECK(contains(import_error(p), "(MaxPool): attribute 'pads' = [1, 0, 0, 0]"));
  }
  {
    onnx::ModelProto p = fixture_proto("resnet_eval.onnx");  // an attribute we do not know
    onnx::NodeProto* relu = first_node(p, "Relu");
    onnx::AttributeProto* a = relu->add_attribute();
    a->set_name("alpha");
    a->set_type(onnx::AttributeProto::FLOAT);
    a->set_f(0.1f);
    CHECK(contains(import_error(p), "node '" + relu->name() + "' (Relu): attribute 'alpha' is not supported"));
  }
  {
    onnx::ModelProto p = fixture_proto("resnet_eval.onnx");  // weights in double precision
    onnx::TensorProto* w = p.mutable_graph()->mutable_initializer(0);
    w->set_data_type(onnx::TensorProto::DOUBLE);
    CHECK(contains(import_error(p), "initializer '" + w->name() + "': data type DOUBLE is not supported"));
  }
  {
    onnx::ModelProto p = fixture_proto("resnet_eval.onnx");  // weights in another file
    onnx::TensorProto* w = p.mutable_graph()->mutable_initializer(0);
    w->set_data_location(onnx::TensorProto::EXTERNAL);
    CHECK(contains(import_error(p), "initializer '" + w->name() + "': its data is stored in an external file"));
  }
  {
    onnx::ModelProto p = fixture_proto("resnet_eval.onnx");  // a weight cut short
    onnx::TensorProto* w = p.mutable_graph()->mutable_initializer(0);
    w->mutable_raw_data()->resize(w->raw_data().size() - 4);
    CHECK(contains(import_error(p), "initializer '" + w->name() + "': holds"));
  }
  {
    onnx::ModelProto p = fixture_proto("resnet_eval.onnx");  // 16-bit images
    p.mutable_graph()->mutable_input(0)->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT16);
    CHECK(contains(import_error(p), "graph input 'input' has data type FLOAT16"));
  }
  {
    onnx::ModelProto p = fixture_proto("vgg_bn.onnx");  // a reshape that is not a flatten
    onnx::NodeProto* concat = first_node(p, "Concat");  // (N, -1) -> (N, -1, 0): (N, 64, 2)
    concat->add_input("onnx::Unsqueeze_56");            // a constant [0]
    CHECK(contains(import_error(p), "(Reshape): reshape of (N, 32, 2, 2) to [2, -1, 0] (at batch 2) is not supported"));
  }
  {
    onnx::ModelProto p = fixture_proto("resnet_bn.onnx");  // a training-mode batchnorm
    onnx::NodeProto* bn = first_node(p, "BatchNormalization");
    onnx::AttributeProto* a = bn->add_attribute();
    a->set_name("training_mode");
    a->set_type(onnx::AttributeProto::INT);
    a->set_i(1);
    CHECK(contains(import_error(p), "(BatchNormalization): attribute 'training_mode' = 1"));
  }
}

// The float32 values of an initializer stored as raw data.
std::vector<float> initializer_values(const onnx::ModelProto& p, const std::string& name) {
  for (const auto& t : p.graph().initializer())
    if (t.name() == name) {
      std::vector<float> v(t.raw_data().size() / 4);
      std::memcpy(v.data(), t.raw_data().data(), 4 * v.size());
      return v;
    }
  FAIL("no initializer " << name);
  return {};
}
onnx::TensorProto* add_initializer(onnx::ModelProto& p, const std::string& name, const Shape& dims,
                                   const std::vector<float>& v) {
  onnx::TensorProto* t = p.mutable_graph()->add_initializer();
  t->set_name(name);
  t->set_data_type(onnx::TensorProto::FLOAT);
  for (int64_t d : dims) t->add_dims(d);
  t->set_raw_data(std::string(reinterpret_cast<const char*>(v.data()), 4 * v.size()));
  return t;
}
// Appends a node and moves it to position `at` of the node list.
onnx::NodeProto* insert_node(onnx::ModelProto& p, int at) {
  auto* nodes = p.mutable_graph()->mutable_node();
  nodes->Add();
  for (int k = nodes->size() - 1; k > at; --k) nodes->SwapElements(k, k - 1);
  return nodes->Mutable(at);
}

// The int64 values of an initializer stored as raw data, read and written.
std::vector<int64_t> initializer_ints(const onnx::ModelProto& p, const std::string& name) {
  for (const auto& t : p.graph().initializer())
    if (t.name() == name) {
      std::vector<int64_t> v(t.raw_data().size() / 8);
      std::memcpy(v.data(), t.raw_data().data(), 8 * v.size());
      return v;
    }
  FAIL("no initializer " << name);
  return {};
}
void set_initializer_ints(onnx::ModelProto& p, const std::string& name, const std::vector<int64_t>& v) {
  for (auto& t : *p.mutable_graph()->mutable_initializer())
    if (t.name() == name) t.set_raw_data(std::string(reinterpret_cast<const char*>(v.data()), 8 * v.size()));
}

TEST_CASE("onnx import: a residual join's channel map that is not our Add's is refused by name") {
  // A compact resnet20 export (mapped residual Adds), broken in one place at a time.
  Rng rng(11);
  Model m = build_model("resnet20", 10, {3, 16, 16});
  init_model(m, rng);
  dnns::testing::randomize_batchnorm(m, rng);
  dnns::testing::random_masks(m, rng, 0.3f, 0.3f);
  Model compact = compact_model(m);
  onnx::ModelProto base;
  REQUIRE(base.ParseFromString(onnx_model_bytes(compact)));
  import_onnx_bytes(base.SerializeAsString(), "good.onnx");  // intact, it imports
  int gather_at = -1, pad_at = -1;  // the first Gather reading a Pad's output, and that Pad
  for (int k = 0; k < base.graph().node_size() && gather_at < 0; ++k)
    if (base.graph().node(k).op_type() == "Gather")
      for (int j = 0; j < k; ++j)
        if (base.graph().node(j).op_type() == "Pad" && base.graph().node(j).output(0) == base.graph().node(k).input(0))
          gather_at = k, pad_at = j;
  REQUIRE(gather_at >= 0);
  const onnx::NodeProto& g0 = base.graph().node(gather_at);
  const std::string gname = g0.name(), map_name = g0.input(1);
  const std::vector<int64_t> index = initializer_ints(base, map_name);
  const int64_t zero = *std::max_element(index.begin(), index.end());  // the appended zero channel
  REQUIRE(zero >= 1);
  REQUIRE(std::count(index.begin(), index.end(), zero) >= 1);
  const std::string label = "bad.onnx: node '" + gname + "' (Gather): ";
  {
    // A Gather on a tensor that was not padded: the Pad became an Identity.
    onnx::ModelProto p = base;
    onnx::NodeProto* pad = p.mutable_graph()->mutable_node(pad_at);
    pad->set_op_type("Identity");
    pad->mutable_input()->DeleteSubrange(1, pad->input_size() - 1);
    const std::string e = import_error(p);
    CHECK(contains(e, label + "gathers from the computed tensor '" + g0.input(0) + "', which is not padded by one zero channel"));
    CHECK(contains(e, "supported only as the channel map of a residual join"));
  }
  {
    // Along another axis.
    onnx::ModelProto p = base;
    for (auto& a : *p.mutable_graph()->mutable_node(gather_at)->mutable_attribute())
      if (a.name() == "axis") a.set_i(2);
    CHECK(contains(import_error(p), label + "attribute 'axis' = 2, expected 1 (channels)"));
  }
  {
    // One input channel twice, one dropped, two out of order.
    std::vector<int64_t> twice = index, dropped = index, swapped = index;
    std::vector<size_t> live;
    for (size_t k = 0; k < index.size(); ++k)
      if (index[k] != zero) live.push_back(k);
    REQUIRE(live.size() >= 2);
    twice[live[1]] = index[live[0]];
    dropped[live.back()] = zero;  // the last: an earlier one would read as "out of order" first
    std::swap(swapped[live[0]], swapped[live[1]]);
    const std::pair<std::vector<int64_t>, std::string> cases[] = {
        {twice, "gathers channel " + std::to_string(index[live[0]]) + " twice"},
        {dropped, "drops channel " + std::to_string(index[live.back()]) + " of '" + g0.input(0) + "'"},
        {swapped, "gathers channel " + std::to_string(index[live[1]]) + " before channel " + std::to_string(index[live[0]])}};
    for (const auto& [v, why] : cases) {
      CAPTURE(why);
      onnx::ModelProto p = base;
      set_initializer_ints(p, map_name, v);
      CHECK(contains(import_error(p), label + why));
    }
  }
  {
    // The spread tensor read by something other than the join's Add.
    onnx::ModelProto p = base;
    onnx::NodeProto* relu = insert_node(p, gather_at + 1);
    relu->set_op_type("Relu");
    relu->set_name("reads_spread");
    relu->add_input(g0.output(0));
    relu->add_output("unused");
    CHECK(contains(import_error(p), "node 'reads_spread' (Relu): reads '" + g0.output(0) +
                                        "', a tensor spread over channels by a Gather, which only an Add of two tensors may read"));
  }
  {
    // A Pad of one channel that is not zero.
    onnx::ModelProto p = base;
    onnx::NodeProto* pad = p.mutable_graph()->mutable_node(pad_at);
    add_initializer(p, "one_value", {}, {1.0f});
    pad->add_input("one_value");
    CHECK(contains(import_error(p), "node '" + pad->name() + "' (Pad): pads one channel with mode 'constant' and value 1"));
  }
}

TEST_CASE("onnx import: a linear layer as MatMul + Add, and a constant Add after a bias-free conv") {
  const Tensor x = read_floats(kFixtures + "/input.bin", kInput);
  {
    // vgg_eval's last Gemm (transB = 1, with bias) rewritten as PyTorch writes a linear layer
    // on a rank-3 input: MatMul by the transposed weight, then an Add of the bias.
    onnx::ModelProto p = fixture_proto("vgg_eval.onnx");
    onnx::NodeProto* gemm = nullptr;
    for (auto& n : *p.mutable_graph()->mutable_node())
      if (n.op_type() == "Gemm") gemm = &n;
    REQUIRE(gemm != nullptr);
    const std::vector<float> w = initializer_values(p, gemm->input(1));  // (O, I)
    const std::string bias = gemm->input(2), out = gemm->output(0);
    const int64_t O = 10, I = static_cast<int64_t>(w.size()) / O;
    std::vector<float> wt(w.size());  // (I, O)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t i = 0; i < I; ++i) wt[i * O + o] = w[o * I + i];
    add_initializer(p, "fc_t", {I, O}, wt);
    gemm->set_op_type("MatMul");
    gemm->clear_attribute();
    gemm->set_input(1, "fc_t");
    gemm->mutable_input()->RemoveLast();
    gemm->set_output(0, "fc_mm");
    onnx::NodeProto* add = p.mutable_graph()->add_node();
    add->set_op_type("Add");
    add->set_name("fc_bias");
    add->add_input("fc_mm");
    add->add_input(bias);
    add->add_output(out);
    OnnxImportInfo info;
    Model m = import_onnx_bytes(p.SerializeAsString(), "matmul.onnx", &info);
    const Tensor want = read_floats(kFixtures + "/vgg.logits.bin", kLogits);
    CHECK(max_abs_diff(m.forward(x, false), want) <= kTol * logit_scale(want));
    CHECK(info.folded_adds == 1);
    CHECK(count_kind(m, LayerKind::Linear) == 2);
    CHECK(count_kind(m, LayerKind::Add) == 0);
    // The same as one Gemm with the (I, O) weight (transB = 0) and alpha = 2 on a halved weight.
    for (auto& t : *p.mutable_graph()->mutable_initializer())
      if (t.name() == "fc_t") {
        std::vector<float> half(wt);
        for (float& v : half) v *= 0.5f;
        t.set_raw_data(std::string(reinterpret_cast<const char*>(half.data()), 4 * half.size()));
      }
    gemm->set_op_type("Gemm");
    gemm->add_input(bias);
    gemm->set_output(0, out);
    onnx::AttributeProto* alpha = gemm->add_attribute();
    alpha->set_name("alpha");
    alpha->set_type(onnx::AttributeProto::FLOAT);
    alpha->set_f(2.0f);
    p.mutable_graph()->mutable_node()->RemoveLast();  // the Add
    Model g = import_onnx_bytes(p.SerializeAsString(), "gemm.onnx");
    CHECK(max_abs_diff(g.forward(x, false), want) <= kTol * logit_scale(want));
  }
  {
    // resnet_bn's stem conv has no bias. Add a per-channel constant after it, and the same to
    // the batchnorm's running mean: the logits must not change, and the conv gains the bias.
    onnx::ModelProto p = fixture_proto("resnet_bn.onnx");
    int conv_at = -1;
    for (int k = 0; k < p.graph().node_size(); ++k)
      if (p.graph().node(k).op_type() == "Conv" && conv_at < 0) conv_at = k;
    REQUIRE(conv_at >= 0);
    onnx::NodeProto* conv = p.mutable_graph()->mutable_node(conv_at);
    REQUIRE(conv->input_size() == 2);
    const std::string out = conv->output(0);
    conv->set_output(0, "stem_nobias");
    onnx::NodeProto* bn = nullptr;
    for (auto& n : *p.mutable_graph()->mutable_node())
      if (n.op_type() == "BatchNormalization" && n.input(0) == out) bn = &n;
    REQUIRE(bn != nullptr);
    std::vector<float> mean = initializer_values(p, bn->input(3)), shift(mean.size());
    for (size_t k = 0; k < mean.size(); ++k) shift[k] = 0.25f * float(k % 3) - 0.25f, mean[k] += shift[k];
    add_initializer(p, "stem_shift", {1, int64_t(mean.size()), 1, 1}, shift);
    add_initializer(p, "stem_mean", {int64_t(mean.size())}, mean);
    bn->set_input(3, "stem_mean");
    onnx::NodeProto* add = insert_node(p, conv_at + 1);
    add->set_op_type("Add");
    add->set_name("stem_add");
    add->add_input("stem_shift");  // constant first: either order is an Add of a bias
    add->add_input("stem_nobias");
    add->add_output(out);
    OnnxImportInfo info;
    Model m = import_onnx_bytes(p.SerializeAsString(), "conv_add.onnx", &info);
    const Tensor want = read_floats(kFixtures + "/resnet.logits.bin", kLogits);
    CHECK(max_abs_diff(m.forward(x, false), want) <= kTol * logit_scale(want));
    CHECK(info.folded_adds == 1);
    const auto* stem = dynamic_cast<const Conv2d*>(m.nodes()[1].layer.get());
    REQUIRE(stem != nullptr);
    CHECK(stem->has_bias);
    CHECK(stem->bias.value[1] == doctest::Approx(0.0f));
    CHECK(stem->bias.value[2] == doctest::Approx(0.25f));
    // Read by a second node too, the constant cannot become the conv's bias: refused by name.
    onnx::NodeProto* relu = insert_node(p, conv_at + 1);
    relu->set_op_type("Relu");
    relu->set_name("second_reader");
    relu->add_input("stem_nobias");
    relu->add_output("unused");
    CHECK(contains(import_error(p), "node 'stem_add' (Add): adds a constant of shape (1, 8, 1, 1) to 'stem_nobias'"));
  }
}

TEST_CASE("onnx import: Dropout (opset 12+, with a bool training_mode) is an identity in inference only") {
  const Tensor x = read_floats(kFixtures + "/input.bin", kInput);
  const Tensor want = read_floats(kFixtures + "/resnet.logits.bin", kLogits);
  for (const bool training : {false, true}) {
    CAPTURE(training);
    onnx::ModelProto p = fixture_proto("resnet_eval.onnx");
    int gemm_at = -1;
    for (int k = 0; k < p.graph().node_size(); ++k)
      if (p.graph().node(k).op_type() == "Gemm") gemm_at = k;
    REQUIRE(gemm_at >= 0);
    const std::string features = p.graph().node(gemm_at).input(0);
    onnx::TensorProto* mode = p.mutable_graph()->add_initializer();
    mode->set_name("drop_training");
    mode->set_data_type(onnx::TensorProto::BOOL);
    mode->set_raw_data(std::string(1, training ? '\1' : '\0'));
    add_initializer(p, "drop_ratio", {}, {0.5f});
    onnx::NodeProto* drop = insert_node(p, gemm_at);
    drop->set_op_type("Dropout");
    drop->set_name("drop");
    drop->add_input(features);
    drop->add_input("drop_ratio");
    drop->add_input("drop_training");
    drop->add_output("dropped");
    p.mutable_graph()->mutable_node(gemm_at + 1)->set_input(0, "dropped");
    if (training) {
      CHECK(contains(import_error(p), "node 'drop' (Dropout): training_mode is true"));
    } else {
      Model m = import_onnx_bytes(p.SerializeAsString(), "dropout.onnx");
      CHECK(max_abs_diff(m.forward(x, false), want) <= kTol * logit_scale(want));
    }
  }
}

TEST_CASE("onnx import: damaged files give an Error or a model, never a crash") {
  const std::string good = file_bytes(kFixtures + "/resnet_bn.onnx");
  Rng rng(3);
  int refused = 0, imported = 0;
  for (int t = 0; t < 400; ++t) {
    std::string b = good;
    if (t % 4 == 0) b.resize(rng.below(b.size()));  // cut anywhere
    const int flips = 1 + int(rng.below(3));
    for (int k = 0; k < flips && !b.empty(); ++k) b[rng.below(b.size())] = static_cast<char>(rng.below(256));
    try {
      import_onnx_bytes(b, "damaged.onnx");
      ++imported;
    } catch (const Error& e) {
      ++refused;
      CHECK(contains(e.what(), "damaged.onnx: "));
    }
  }
  MESSAGE("400 damaged copies of resnet_bn.onnx: " << refused << " refused with an Error, " << imported
                                                   << " imported (the damage hit weight values)");
  CHECK(refused >= 100);  // every cut one at least
}

TEST_CASE("onnx import: missing, truncated and corrupt files are refused by name") {
  TempDir tmp("files");
  const std::string good = file_bytes(kFixtures + "/vgg_bn.onnx");
  write_bytes(tmp / "half.onnx", good.substr(0, good.size() / 2));
  write_bytes(tmp / "tail.onnx", good.substr(0, good.size() - 3));
  std::string flipped = good;
  for (size_t i = 0; i < 64; ++i) flipped[i] = static_cast<char>(~flipped[i]);
  write_bytes(tmp / "flipped.onnx", flipped);
  write_bytes(tmp / "text.onnx", "this is not an ONNX file\n");
  write_bytes(tmp / "empty.onnx", "");
  for (const std::string name : {"half.onnx", "tail.onnx", "flipped.onnx", "text.onnx", "empty.onnx", "missing.onnx"}) {
    CAPTURE(name);
    const std::string e = error_of([&] { import_onnx(tmp / name); });
    MESSAGE(e);
    CHECK(contains(e, tmp / name));
  }
  CHECK(contains(error_of([&] { import_onnx(tmp / "half.onnx"); }), "truncated or corrupt"));
  CHECK(contains(error_of([&] { import_onnx(tmp / "missing.onnx"); }), "cannot open"));
}

TEST_CASE("onnx import: the fixture script, re-run where PyTorch is installed") {
  const std::string python = "/usr/bin/python3";
  TempDir tmp("script");
  if (run_command(python + " -c 'import torch'", tmp / "probe.log") != 0) {
    testing::skip_part("re-running make_fixtures.py: PyTorch is not importable by " + python +
                       " (Debian: apt-get install python3-torch); the committed fixtures were checked");
    return;
  }
  const std::string cmd = python + " " + kFixtures + "/make_fixtures.py --out " + tmp.str();
  REQUIRE_MESSAGE(run_command(cmd, tmp / "make.log") == 0, file_bytes(tmp / "make.log"));
  MESSAGE(file_bytes(tmp / "make.log"));
  check_fixtures(tmp.str());
  for (const Fixture& f : kCases)
    if (file_bytes(tmp / f.file) != file_bytes(kFixtures + "/" + f.file))
      MESSAGE(f.file << ": this PyTorch writes other bytes than the committed fixture (another version?)");
}

TEST_CASE("onnx import: cifar_prune import") {
  TempDir tmp("cli");
  const std::string app = std::string(DNNS_BINARY_DIR) + "/bin/cifar_prune";
  REQUIRE_MESSAGE(run_command(app + " import " + kFixtures + "/resnet_bn.onnx --out " + (tmp / "r.dnns"), tmp / "ok.log") == 0,
                  file_bytes(tmp / "ok.log"));
  CHECK(contains(file_bytes(tmp / "ok.log"), "20.00% remaining"));
  Model m = Model::load(tmp / "r.dnns");
  Model direct = import_onnx(kFixtures + "/resnet_bn.onnx");
  const Tensor x = read_floats(kFixtures + "/input.bin", kInput);
  CHECK(max_abs_diff(m.forward(x, false), direct.forward(x, false)) == 0.0f);
  CHECK(m.masks.size() == direct.masks.size());
  write_bytes(tmp / "bad.onnx", "garbage");
  CHECK(run_command(app + " import " + (tmp / "bad.onnx") + " --out " + (tmp / "b.dnns"), tmp / "bad.log") == 1);
  CHECK(contains(file_bytes(tmp / "bad.log"), tmp / "bad.onnx"));
  CHECK(!fs::exists(tmp / "b.dnns"));
  CHECK(run_command(app + " import " + kFixtures + "/resnet_bn.onnx", tmp / "noout.log") != 0);
  CHECK(contains(file_bytes(tmp / "noout.log"), "--out is required"));
}

#endif
