// Edge deployment: the portable runtime (in-process and from model files), the ONNX export
// checked with a real ONNX consumer (onnxruntime), and the C-array export compiled with the
// host compiler, all against the full build's eval-mode logits on dense and compacted models.
//
// With DNNS_EDGE_REFS=DIR in the environment, the reference cases (model files, input images,
// the full build's logits, manifest.txt) are also written to DIR, for the cross-compiled
// runtime to be checked against under qemu (scripts/cross_test.sh).
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
#include <map>

#include "core/archive.h"
#include "core/error.h"
#include "core/fs.h"
#include "core/rng.h"
#include "nn/export/export.h"
#include "nn/models/zoo.h"
#include "prune/compact.h"
#include "prune/magnitude.h"
#include "prune/mask.h"

using namespace dnns;
using dnns::testing::logit_scale;
using dnns::testing::every_kind_model;
using dnns::testing::random_masks;
using dnns::testing::randomize_batchnorm;
using dnns::testing::TempDir;
namespace fs = std::filesystem;

static_assert(std::endian::native == std::endian::little, "the raw .bin files below are written in host order");

namespace {

constexpr float kTol = 1e-4f;  // relative to the logit scale max(1, max |logit|)

Model zoo_model(const std::string& name, uint64_t seed) {
  Rng rng(seed);
  Model m = build_model(name);
  init_model(m, rng);
  randomize_batchnorm(m, rng);
  return m;
}

Tensor random_images(int n, const Shape& chw, uint64_t seed) {
  Rng rng(seed);
  return dnns::testing::random_images(n, chw, rng);
}

struct Case {
  std::string name;
  Model model;
  Tensor images;
};

// The deployment cases: compacted VGG-11 and ResNet-20 with random masks (constants folded
// into biases and per-position biases), a dense masked ResNet-20 (batchnorm and ReLU nodes),
// and a VGG-11 whose third conv layer is dead: its compact form is constants all the way
// (convs with no input channels, empty tensors, a linear layer with no input features).
std::vector<Case> deployment_cases() {
  std::vector<Case> cases;
  {
    Model m = zoo_model("vgg11", 21);
    Rng rng(22);
    random_masks(m, rng, 0.4f, 0.5f);
    cases.push_back({"vgg11_compact", compact_model(m), random_images(2, m.input_shape(), 23)});
  }
  {
    Model m = zoo_model("resnet20", 31);
    Rng rng(32);
    random_masks(m, rng, 0.4f, 0.5f);
    cases.push_back({"resnet20_compact", compact_model(m), random_images(3, m.input_shape(), 33)});
    cases.push_back({"resnet20_dense", std::move(m), random_images(2, {3, 32, 32}, 34)});
  }
  {
    Model m = zoo_model("vgg11", 41);
    auto& c3 = dynamic_cast<Conv2d&>(*m.nodes()[m.find("conv3")].layer);
    m.masks["conv3.weight"] = Tensor::full(c3.weight.value.shape(), 0.0f);
    m.apply_masks();
    auto& bn = dynamic_cast<BatchNorm2d&>(*m.nodes()[m.find("conv3.bn")].layer);
    for (int c = 0; c < bn.channels; ++c) bn.beta.value[c] = 1.0f + 0.01f * c;  // constants reach padded convs
    cases.push_back({"vgg11_dead_layer", compact_model(m), random_images(2, m.input_shape(), 43)});
  }
  return cases;
}

void write_floats(const std::string& path, const Tensor& t) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(t.data()), static_cast<std::streamsize>(t.bytes()));
  REQUIRE(f.good());
}

std::vector<float> read_floats(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) return {};
  std::vector<float> v(static_cast<size_t>(f.tellg()) / 4);
  f.seekg(0);
  f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * 4));
  return v;
}

float max_diff(const Tensor& a, const std::vector<float>& b) {
  if (static_cast<int64_t>(b.size()) != a.numel()) return INFINITY;
  float d = 0.0f;
  for (int64_t i = 0; i < a.numel(); ++i) d = std::max(d, std::fabs(a[i] - b[i]));
  return d;
}

// Runs a shell command; its output goes to `log`.
int run_command(const std::string& cmd, const std::string& log) {
  const int rc = std::system((cmd + " >" + log + " 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

std::string file_text(const std::string& path) {
  std::ifstream f(path);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Compiles the C export in `dir` (model `name`) with the host compiler as a user would, runs it
// on `images` and returns its outputs (a REQUIRE fails on a compile or run error).
std::vector<float> compile_and_run_c(const std::string& dir, const std::string& name, const Tensor& images) {
  const std::string exe = dir + "/" + name;
  const std::string compile = std::string(DNNS_HOST_CXX) + " -std=c++17 -O1 -Wall -Wextra -Werror -fno-exceptions " +
                              "-fno-rtti -o " + exe + " " + dir + "/" + name + "_main.cpp " + dir + "/dnns_runtime.cpp";
  REQUIRE_MESSAGE(run_command(compile, dir + "/compile.log") == 0, file_text(dir + "/compile.log"));
  write_floats(dir + "/in.bin", images);
  REQUIRE_MESSAGE(run_command(exe + " " + dir + "/in.bin " + dir + "/out.bin", dir + "/run.log") == 0,
                  file_text(dir + "/run.log"));
  return read_floats(dir + "/out.bin");
}

// The outputs onnxruntime computes for the ONNX file `onnx` on `images` (scripts/onnx_check.py,
// files next to `onnx`); false, with a message, where onnxruntime cannot be imported.
bool onnxruntime_logits(const std::string& onnx, const Tensor& images, std::vector<float>* out) {
  const char* py_env = std::getenv("DNNS_PYTHON");
  const std::string python = py_env ? py_env : "python3";
  const std::string script = std::string(DNNS_SOURCE_DIR) + "/scripts/onnx_check.py";
  write_floats(onnx + ".in.bin", images);
  const Shape& s = images.shape();
  const std::string cmd = python + " " + script + " " + onnx + " " + onnx + ".in.bin " + std::to_string(s[0]) + "," +
                          std::to_string(s[1]) + "," + std::to_string(s[2]) + "," + std::to_string(s[3]) + " " + onnx +
                          ".out.bin";
  const int rc = run_command(cmd, onnx + ".log");
  if (rc == 3 || rc == 127) {  // onnxruntime not importable, or no such python
    testing::skip_part("the onnxruntime comparison of the ONNX exports (checked structurally only): " +
                       file_text(onnx + ".log") + "(install it with: python3 -m pip install onnxruntime numpy)");
    return false;
  }
  REQUIRE_MESSAGE(rc == 0, "onnx_check.py failed: " << file_text(onnx + ".log"));
  *out = read_floats(onnx + ".out.bin");
  return true;
}

// ---------------------------------------------------------------- a minimal protobuf reader

// Enough of the wire format to check the structure the ONNX writer produced without a
// protobuf library: the fields of one message, by number.
struct Field {
  int number, wire;
  uint64_t varint;
  std::string bytes;
};
std::vector<Field> parse_message(const std::string& buf) {
  std::vector<Field> out;
  size_t i = 0;
  auto read_varint = [&](uint64_t* v) {
    *v = 0;
    for (int shift = 0; i < buf.size() && shift < 64; shift += 7) {
      const unsigned char b = static_cast<unsigned char>(buf[i++]);
      *v |= uint64_t(b & 0x7F) << shift;
      if (!(b & 0x80)) return true;
    }
    return false;
  };
  while (i < buf.size()) {
    uint64_t key = 0;
    REQUIRE(read_varint(&key));
    Field fld{int(key >> 3), int(key & 7), 0, {}};
    if (fld.wire == 0) {
      REQUIRE(read_varint(&fld.varint));
    } else if (fld.wire == 2) {
      uint64_t n = 0;
      REQUIRE(read_varint(&n));
      REQUIRE(i + n <= buf.size());
      fld.bytes = buf.substr(i, n);
      i += n;
    } else if (fld.wire == 5) {
      REQUIRE(i + 4 <= buf.size());
      fld.bytes = buf.substr(i, 4);
      i += 4;
    } else {
      FAIL("unexpected wire type " << fld.wire);
    }
    out.push_back(fld);
  }
  return out;
}

}  // namespace

TEST_CASE("the portable runtime gives the full build's logits, in-process and from model files") {
  std::vector<Case> cases = deployment_cases();
  // The cases cover what compaction produces: border tables (with fewer classes than
  // positions), convs with no input or no output channels, a linear layer with no input
  // features, residual joins with channel maps and a bias.
  int pos_bias = 0, small_tables = 0, no_input = 0, no_output = 0, linear_no_input = 0, mapped_adds = 0;
  for (const Case& c : cases)
    for (const Node& n : c.model.nodes()) {
      if (auto* cv = dynamic_cast<const Conv2d*>(n.layer.get()))
        pos_bias += cv->pos_h > 0, no_input += cv->in_channels == 0, no_output += cv->out_channels == 0,
            small_tables += cv->pos_h > 0 && cv->table_rows() < cv->pos_h;
      if (auto* add = dynamic_cast<const Add*>(n.layer.get())) mapped_adds += add->mapped() && add->has_bias;
      if (auto* fc = dynamic_cast<const Linear*>(n.layer.get())) linear_no_input += fc->in_features == 0;
    }
  CHECK(pos_bias > 0);
  CHECK(small_tables > 0);
  CHECK(mapped_adds > 0);
  CHECK(no_input > 0);
  CHECK(no_output > 0);
  CHECK(linear_no_input > 0);

  const char* refs_env = std::getenv("DNNS_EDGE_REFS");
  const std::string refs = refs_env ? refs_env : "";
  std::string manifest;
  TempDir tmp("runtime");
  for (Case& c : cases) {
    CAPTURE(c.name);
    Tensor want = c.model.forward(c.images, false);
    const float scale = logit_scale(want);
    int64_t arena = 0;
    Tensor got = run_portable(c.model, c.images, &arena);
    CHECK(got.shape() == want.shape());
    const float diff = max_abs_diff(want, got);
    MESSAGE(c.name << ": in-process max |logit diff| " << diff << " at logit scale " << scale << ", arena "
                   << arena / 1024 << " KiB for " << c.images.dim(0) << " images");
    CHECK(diff <= kTol * scale);

    // The same through a model file saved by the full build and read by the runtime's reader:
    // format 2 (sparse weights stay sparse: the runtime's sparse kernels run them) and the old
    // all-dense format 1.
    for (uint32_t version : {kArchiveFormatVersion, kArchiveFormatVersionDense}) {
      CAPTURE(version);
      const std::string file = tmp / (c.name + ".v" + std::to_string(version) + ".dnns");
      save_archive(file, c.model.to_archive(), ArchiveWriteOptions{version});
      rt::LoadedModel lm;
      REQUIRE_MESSAGE(rt::load_model_file(file.c_str(), &lm) == rt::kOk, lm.error);
      std::vector<rt::NodePlan> plan(static_cast<size_t>(lm.graph.num_nodes));
      int64_t per_image = 0;
      char err[256];
      REQUIRE(rt::plan_graph(lm.graph, plan.data(), &per_image, err, sizeof err) == rt::kOk);
      const int32_t n = static_cast<int32_t>(c.images.dim(0));
      std::vector<float> mem(static_cast<size_t>(per_image * n) + 1), out(static_cast<size_t>(want.numel()));
      rt::Engine e;
      REQUIRE(rt::engine_init(&e, &lm.graph, plan.data(), mem.data(), per_image * n, n) == rt::kOk);
      REQUIRE(rt::engine_output_size(&e) * n == want.numel());
      REQUIRE(rt::engine_run(&e, c.images.data(), n, out.data()) == rt::kOk);
      CHECK(max_diff(want, out) <= kTol * scale);
      int sparse_layers = 0;
      for (int32_t i = 0; i < lm.graph.num_nodes; ++i) sparse_layers += lm.graph.nodes[i].weight_coding != 0;
      if (version == kArchiveFormatVersionDense) {
        CHECK(sparse_layers == 0);
        CHECK(max_diff(got, out) == 0.0f);  // the same runtime on the same dense weights: bit for bit
      } else if (c.name == "resnet20_compact" || c.name == "vgg11_compact") {
        CHECK(sparse_layers > 0);  // the masked, compacted cases keep zeros that sparse storage drops
      }
      rt::free_model(&lm);
    }

    if (!refs.empty()) {
      fs::create_directories(refs);
      c.model.save(refs + "/" + c.name + ".dnns");
      write_floats(refs + "/" + c.name + ".input.bin", c.images);
      write_floats(refs + "/" + c.name + ".expected.bin", want);
      manifest += c.name + " " + c.name + ".dnns " + c.name + ".input.bin " + c.name + ".expected.bin 1e-4\n";
    }
  }
  if (!refs.empty()) {
    write_text_atomic(refs + "/manifest.txt", manifest);
    MESSAGE("reference cases written to " << refs);
  }
}

TEST_CASE("the portable reader refuses damaged model files and agrees with the archive CRC") {
  Rng rng(9);
  std::string bytes(1000, '\0');
  for (char& b : bytes) b = static_cast<char>(rng.below(256));
  CHECK(rt::crc32_update(0, bytes.data(), bytes.size()) == crc32_update(0, bytes.data(), bytes.size()));

  Model m = every_kind_model();
  TempDir tmp("reader");
  const std::string file = tmp / "m.dnns";
  m.save(file);
  std::string data = file_text(file);
  data[data.size() / 2] = static_cast<char>(data[data.size() / 2] ^ 0x01);
  rt::LoadedModel lm;
  CHECK(rt::load_model_memory(reinterpret_cast<const unsigned char*>(data.data()), data.size(), file.c_str(), &lm) ==
        rt::kErrChecksum);
  CHECK(std::string(lm.error).find(file) != std::string::npos);
  // A checkpoint is an archive, but not a model.
  Archive a = m.to_archive();
  a.kind = "checkpoint";
  save_archive(tmp / "ckpt.dnns", a);
  CHECK(rt::load_model_file((tmp / "ckpt.dnns").c_str(), &lm) == rt::kErrFormat);
  CHECK(std::string(lm.error).find("'checkpoint', not a model") != std::string::npos);
}

TEST_CASE("ONNX export: structure, and logits from onnxruntime") {
  std::vector<Case> cases = deployment_cases();
  cases.push_back({"every_kind", every_kind_model(), random_images(2, {3, 12, 12}, 51)});
  TempDir tmp("onnx");
  bool skipped = false;
  for (Case& c : cases) {
    CAPTURE(c.name);
    OnnxExportInfo info;
    const std::string onnx = tmp / (c.name + ".onnx");
    export_onnx(c.model, onnx, &info);
    const std::string bytes = file_text(onnx);
    CHECK(static_cast<int64_t>(bytes.size()) == info.bytes);

    // ModelProto: ir_version 7, opset 13, a graph whose nodes are the ops we wrote.
    std::vector<Field> model = parse_message(bytes);
    int ir = 0, opset = 0;
    std::string graph;
    for (const Field& fld : model) {
      if (fld.number == 1) ir = static_cast<int>(fld.varint);
      if (fld.number == 7) graph = fld.bytes;
      if (fld.number == 8)
        for (const Field& o : parse_message(fld.bytes))
          if (o.number == 2) opset = static_cast<int>(o.varint);
    }
    CHECK(ir == 7);
    CHECK(opset == 13);
    int nodes = 0, inits = 0, inputs = 0, outputs = 0;
    std::map<std::string, int> ops;
    for (const Field& fld : parse_message(graph)) {
      if (fld.number == 1) {
        ++nodes;
        for (const Field& nf : parse_message(fld.bytes))
          if (nf.number == 4) ops[nf.bytes]++;
      }
      inits += fld.number == 5, inputs += fld.number == 11, outputs += fld.number == 12;
    }
    CHECK(nodes == info.nodes);
    CHECK(inits == info.initializers);
    CHECK(inputs == 1);
    CHECK(outputs == 1);
    CHECK(ops.count("BatchNormalization") == (c.name == "every_kind" ? 1u : 0u));  // the rest fold
    if (c.name == "resnet20_dense") CHECK(info.folded_batchnorms == 21);
    if (c.name == "vgg11_dead_layer") CHECK(info.constant_layers > 0);

    // Logits from a real ONNX consumer.
    if (skipped) continue;
    std::vector<float> got;
    if (!onnxruntime_logits(onnx, c.images, &got)) {
      skipped = true;
      continue;
    }
    Tensor want = c.model.forward(c.images, false);
    const float scale = logit_scale(want), diff = max_diff(want, got);
    MESSAGE(c.name << ": onnxruntime max |logit diff| " << diff << " at logit scale " << scale << " ("
                   << info.nodes << " ONNX nodes, " << info.bytes / 1024 << " KiB)");
    CHECK(diff <= kTol * scale);
  }
}

TEST_CASE("C-array export compiles with the host compiler and gives the full build's logits") {
  TempDir tmp("c");
  std::vector<Case> cases;
  {
    Model m = zoo_model("resnet20", 61);
    Rng rng(62);
    random_masks(m, rng, 0.5f, 0.3f);
    cases.push_back({"r20", compact_model(m), random_images(3, m.input_shape(), 63)});
  }
  cases.push_back({"every_kind", every_kind_model(), random_images(2, {3, 12, 12}, 64)});
  {  // IMP-like masks at 5% of the weights: sparse conv and linear weights in flash
    Model m = zoo_model("resnet20", 65);
    Rng rng(67);
    set_masks(m, imp_like_masks(m, 0.05, rng));
    cases.push_back({"r20_sparse", compact_model(m), random_images(3, m.input_shape(), 66)});
  }
  for (Case& c : cases) {
    CAPTURE(c.name);
    const std::string dir = tmp / c.name;
    CExportInfo info = export_c(c.model, dir, c.name);
    CHECK(info.files.size() == 4);
    const std::string header = file_text(dir + "/" + c.name + ".h");
    for (const char* macro : {"_NUM_NODES ", "_INPUT_C 3", "_OUTPUT_SIZE ", "_ARENA_FLOATS_PER_IMAGE "})
      CHECK(header.find(std::string(c.name == "r20" ? "R20" : c.name == "r20_sparse" ? "R20_SPARSE" : "EVERY_KIND") + macro) !=
            std::string::npos);
    CHECK(file_text(dir + "/dnns_runtime.cpp").find("engine_run") != std::string::npos);

    Tensor want = c.model.forward(c.images, false);
    const float scale = logit_scale(want), diff = max_diff(want, compile_and_run_c(dir, c.name, c.images));
    MESSAGE(c.name << ": compiled C export, max |logit diff| " << diff << " at logit scale " << scale << "; "
                   << info.weight_floats << " weights, arena " << info.arena_floats_per_image * 4 / 1024.0
                   << " KiB per image, header " << header.size() / 1024 << " KiB");
    CHECK(diff <= kTol * scale);
    if (c.name == "r20_sparse") {
      // Only the surviving weights are in the arrays: values plus a byte index, not dense.
      // conv and linear weights (the 2-D and 4-D ".weight"s): their nonzeros; the rest is dense.
      int64_t nonzero = 0, weights = 0, others = 0;
      for (auto& [n, t] : c.model.state()) {
        if (t->ndim() < 2 || n.size() < 7 || n.compare(n.size() - 7, 7, ".weight") != 0) {
          others += t->numel();
          continue;
        }
        weights += t->numel();
        for (int64_t e = 0; e < t->numel(); ++e) nonzero += (*t)[e] != 0.0f;
      }
      CHECK(header.find("_index[") != std::string::npos);
      CHECK(info.weight_floats == nonzero + others);  // exactly the surviving weights, and the rest
      CHECK(info.index_bytes > 0);
      CHECK(nonzero * 4 + info.index_bytes < weights * 4 * 2 / 5);  // 27% of the compact weights survive
      MESSAGE("r20_sparse: " << nonzero << " nonzero conv/linear weights of " << weights << "; C export holds "
                             << info.weight_floats << " floats + " << info.index_bytes << " index bytes");
    }
  }
  CHECK_THROWS_WITH_AS(export_c(cases[1].model, tmp / "bad", "9lives"), doctest::Contains("not a C identifier"),
                       dnns::Error);
}

TEST_CASE("cifar_prune export writes ONNX and C exports of a masked model, compacted") {
  const std::string app = std::string(DNNS_BINARY_DIR) + "/bin/cifar_prune";
  REQUIRE_MESSAGE(fs::exists(app), app << " is not built (test_export depends on it: a broken build)");
  TempDir tmp("cli");
  Model m = zoo_model("resnet20", 71);
  Rng rng(72);
  random_masks(m, rng, 0.5f, 0.3f);
  m.save(tmp / "masked.dnns");
  REQUIRE_MESSAGE(run_command(app + " export " + (tmp / "masked.dnns") + " --compact --format onnx --out " +
                                  (tmp / "m.onnx"),
                              tmp / "onnx.log") == 0,
                  file_text(tmp / "onnx.log"));
  CHECK(file_text(tmp / "onnx.log").find("batchnorms folded") != std::string::npos);
  // What the files hold: the ONNX file is the in-process export of the compacted masked model,
  // byte for byte (the ONNX test above checks that export against onnxruntime), and it runs.
  Model loaded = Model::load(tmp / "masked.dnns");
  loaded.apply_masks();
  Model compact = compact_model(loaded);
  export_onnx(compact, tmp / "expected.onnx");
  CHECK(file_text(tmp / "m.onnx") == file_text(tmp / "expected.onnx"));
  const Tensor images = random_images(2, m.input_shape(), 73);
  const Tensor want = m.forward(images, false);  // the masked model's logits
  const float scale = logit_scale(want);
  std::vector<float> got;
  if (onnxruntime_logits(tmp / "m.onnx", images, &got)) CHECK(max_diff(want, got) <= kTol * scale);
  REQUIRE_MESSAGE(run_command(app + " export " + (tmp / "masked.dnns") + " --compact --format c --name r20 --out " +
                                  (tmp / "c"),
                              tmp / "c.log") == 0,
                  file_text(tmp / "c.log"));
  // The C export: the header of the compact model (weights and node table) as the in-process
  // export writes it, and the program compiled from the folder, as a user would, gives the
  // masked model's logits.
  CHECK(compact.num_params() < m.num_params());  // compaction had work to do
  export_c(compact, tmp / "c_expected", "r20");
  CHECK(file_text(tmp / "c/r20.h") == file_text(tmp / "c_expected/r20.h"));
  CHECK(max_diff(want, compile_and_run_c(tmp / "c", "r20", images)) <= kTol * scale);
  CHECK(run_command(app + " export " + (tmp / "masked.dnns") + " --format tflite --out x", tmp / "bad.log") != 0);
  CHECK(file_text(tmp / "bad.log").find("--format must be onnx or c") != std::string::npos);
}
