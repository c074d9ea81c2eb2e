// Sparse storage (archive format 2, core/sparse.h): pruned models round-trip bit for bit at
// every density, weights and masks (a kept weight that is exactly 0.0 included); files written
// in the old all-dense layout (format 1) still load identically; damaged sparse sections are
// refused with a message naming the tensor; file bytes, the shifter's packed residency and the
// portable runtime's weights follow the surviving weights.
#include <doctest/doctest.h>

#include "tests/test_util.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "core/archive.h"
#include "core/error.h"
#include "core/rng.h"
#include "core/sparse.h"
#include "kernels/portable/dnns_runtime.h"
#include "nn/models/zoo.h"
#include "prune/infer.h"
#include "prune/magnitude.h"
#include "prune/mask.h"
#include "prune/shifter.h"

using namespace dnns;
using dnns::testing::contains;
using dnns::testing::error_of;
using dnns::testing::logit_scale;
using dnns::testing::random_images;
using dnns::testing::randomize_batchnorm;
using dnns::testing::same_bits;
using dnns::testing::TempDir;
namespace fs = std::filesystem;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}
void write_file(const std::string& path, const std::string& bytes) {
  fs::remove(path);
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}
std::string with_fixed_crc(std::string b) {
  const uint32_t crc = crc32_update(0, b.data(), b.size() - 12);
  for (int k = 0; k < 4; ++k) b[b.size() - 12 + size_t(k)] = static_cast<char>((crc >> (8 * k)) & 0xFF);
  return b;
}

// ResNet-20 (trained-looking batchnorm) with IMP-like masks at `density`, installed.
Model resnet20_at(double density, const Shape& chw = {3, 32, 32}, uint64_t seed = 1) {
  Model m = build_model("resnet20", 10, chw);
  Rng rng(seed);
  init_model(m, rng);
  randomize_batchnorm(m, rng);
  set_masks(m, imp_like_masks(m, density, rng));
  return m;
}

int64_t surviving_weights(const Model& m) {
  int64_t n = 0;
  for (const auto& [name, mask] : m.masks) n += mask_count(mask);
  return n;
}

void check_same_model(Model& got, Model& want) {
  auto a = got.state(), b = want.state();
  REQUIRE(a.size() == b.size());
  for (size_t k = 0; k < a.size(); ++k) {
    CAPTURE(a[k].first);
    CHECK(a[k].first == b[k].first);
    CHECK(same_bits(*a[k].second, *b[k].second));
  }
  REQUIRE(got.masks.size() == want.masks.size());
  for (const auto& [name, mask] : want.masks) {
    CAPTURE(name);
    REQUIRE(got.masks.count(name));
    CHECK(same_bits(got.masks.at(name), mask));
  }
}

// Bytes of an archive holding one tensor, "w", in the given format version.
std::string one_tensor_file(const std::string& path, const Tensor& t, uint32_t version = kArchiveFormatVersion) {
  Archive a;
  a.kind = "model";
  a.tensors["w"] = t;
  save_archive(path, a, ArchiveWriteOptions{version});
  return read_file(path);
}

}  // namespace

TEST_CASE("pruned models round-trip bit for bit at every density, masks derived from the weights' support") {
  TempDir tmp("sparse_rt");
  for (double density : {1.0, 0.5, 0.1, 0.01, 0.0}) {
    CAPTURE(density);
    Model m = resnet20_at(density);
    // A kept weight that is exactly 0.0 (and one that is -0.0): the mask must still say kept.
    int zeros_kept = 0;
    for (auto& p : m.params()) {
      auto it = m.masks.find(p.name);
      if (it == m.masks.end()) continue;
      for (int64_t i = 0; i < it->second.numel() && zeros_kept < 2; ++i)
        if (it->second[i] == 1.0f) p.param->value[i] = zeros_kept++ == 0 ? 0.0f : -0.0f;
      if (zeros_kept == 2) break;
    }
    CHECK(zeros_kept == (density > 0 ? 2 : 0));
    const std::string path = tmp / "m.dnns";
    m.save(path);
    Model back = Model::load(path);
    check_same_model(back, m);
    // The masks were stored as the support of their weights: the file with masks is barely
    // larger than the same model without them (a mask record is its name, shape and the
    // weight's name: under 128 bytes, not 4 per weight).
    Model no_masks = m.clone();
    no_masks.masks.clear();
    no_masks.save(tmp / "nomask.dnns");
    const int64_t with = static_cast<int64_t>(fs::file_size(path)), without = static_cast<int64_t>(fs::file_size(tmp / "nomask.dnns"));
    MESSAGE("density " << density << ": " << with << " bytes with masks, " << without << " without");
    if (density < 0.9) CHECK(with - without < 128 * static_cast<int64_t>(m.masks.size()));
    else CHECK(with - without < surviving_weights(m) / 8 + 128 * static_cast<int64_t>(m.masks.size()));
  }
}

TEST_CASE("an old-layout (format 1) file still loads identically, and format 1 is still written on request") {
  // tests/fixtures/archive_v1/model_cnn_masked_v1.dnns: a small masked CNN written by the format-1
  // writer before format 2 existed (commit 352a23a, as tests/fuzz/archive/seed-model-cnn.dnns);
  // its pruned weights hold -0.0, as masking by multiplication left them.
  const std::string fixture = std::string(DNNS_SOURCE_DIR) + "/tests/fixtures/archive_v1/model_cnn_masked_v1.dnns";
  const std::string old_bytes = read_file(fixture);
  REQUIRE(old_bytes.size() > 100);
  CHECK(old_bytes[8] == 1);  // u32 version 1
  Model m = Model::load(fixture);
  REQUIRE(m.masks.size() == 1);
  const Tensor& mask = m.masks.begin()->second;
  const Tensor& w = m.params()[0].param->value;
  int negative_zeros = 0;
  for (int64_t i = 0; i < w.numel(); ++i) negative_zeros += mask[i] == 0.0f && std::signbit(w[i]);
  CHECK(negative_zeros > 0);

  TempDir tmp("sparse_v1");
  // The format-1 writer is byte for byte the old one.
  save_archive(tmp / "v1.dnns", m.to_archive(), ArchiveWriteOptions{kArchiveFormatVersionDense});
  CHECK(read_file(tmp / "v1.dnns") == old_bytes);
  // Format 2 keeps every bit, the -0.0s under the mask included (they are stored, not dropped).
  m.save(tmp / "v2.dnns");
  CHECK(read_file(tmp / "v2.dnns")[8] == 2);
  Model v2 = Model::load(tmp / "v2.dnns");
  check_same_model(v2, m);
  // Loading the old file and the new one gives the same archive, tensor for tensor.
  Archive a = load_archive(fixture), b = load_archive(tmp / "v2.dnns");
  CHECK(a.format_version == 1);
  CHECK(b.format_version == 2);
  CHECK(a.meta == b.meta);
  REQUIRE(a.tensors.size() == b.tensors.size());
  for (const auto& [name, t] : a.tensors) CHECK_MESSAGE(same_bits(b.tensors.at(name), t), name);
  // The portable runtime reads both, with the same outputs.
  for (const std::string& file : {fixture, tmp / "v2.dnns"}) {
    rt::LoadedModel lm;
    CHECK_MESSAGE(rt::load_model_file(file.c_str(), &lm) == rt::kOk, lm.error);
    rt::free_model(&lm);
  }
  CHECK(contains(error_of([&] { save_archive(tmp / "v3.dnns", m.to_archive(), ArchiveWriteOptions{3}); }),
                 "archive format version 3"));
  CHECK(!fs::exists(tmp / "v3.dnns"));
}

TEST_CASE("damaged sparse sections are refused, naming the tensor and the problem") {
  TempDir tmp("sparse_bad");
  const std::string path = tmp / "bad.dnns";
  // 4000 values, 5% kept: a gap8 record. Layout after the 16-byte header: kind (4 + 5),
  // 0 meta (8), 1 tensor (8), name (4 + 1), ndim (4), dim (8), then encoding at 58, coding 59,
  // count 60, index length 68, index from 76.
  Tensor t(Shape{4000});
  Rng rng(3);
  for (int64_t i = 0; i < t.numel(); ++i)
    if (rng.uniform() < 0.05f) t[i] = rng.normal();
  const std::string good = one_tensor_file(path, t);
  REQUIRE(good[58] == 1);  // sparse
  REQUIRE(good[59] == 2);  // gap8
  CHECK(same_bits(load_archive(path).tensors.at("w"), t));
  auto u64_at = [&](const std::string& b, size_t at) {
    uint64_t v = 0;
    for (int k = 0; k < 8; ++k) v |= uint64_t(static_cast<unsigned char>(b[at + size_t(k)])) << (8 * k);
    return v;
  };
  auto set_u64 = [](std::string& b, size_t at, uint64_t v) {
    for (int k = 0; k < 8; ++k) b[at + size_t(k)] = static_cast<char>((v >> (8 * k)) & 0xFF);
  };
  const uint64_t count = u64_at(good, 60), len = u64_at(good, 68);
  REQUIRE(count > 100);
  REQUIRE(len >= count);
  REQUIRE(good.size() == 76 + len + 4 * count + 12);

  struct Damage {
    const char* what;
    std::string bytes;
    const char* expect;
  };
  std::vector<Damage> damages;
  auto damaged = [&](const char* what, const std::function<void(std::string&)>& f, const char* expect) {
    std::string b = good;
    f(b);
    damages.push_back({what, with_fixed_crc(b), expect});
  };
  damaged("an index byte turned into a skip", [&](std::string& b) { b[76 + 5] = static_cast<char>(255); },
          "tensor 'w': gap8 index");
  damaged("an index byte larger", [&](std::string& b) { b[76 + 3] = static_cast<char>(b[76 + 3] + 7); },
          "tensor 'w': gap8 index");
  damaged("the count one more", [&](std::string& b) { set_u64(b, 60, count + 1); }, "tensor 'w'");
  damaged("the count one less", [&](std::string& b) { set_u64(b, 60, count - 1); }, "tensor 'w'");
  damaged("an unknown coding", [&](std::string& b) { b[59] = 7; }, "tensor 'w' has index coding 7");
  damaged("an unknown encoding", [&](std::string& b) { b[58] = 9; }, "tensor 'w' has encoding 9");
  damaged("the index length past the end", [&](std::string& b) { set_u64(b, 68, uint64_t(1) << 40); },
          "truncated: tensor 'w' index");
  damaged("a bitmap coding of a gap8 stream", [&](std::string& b) { b[59] = 1; }, "bitmap index of");
  damaged("a dimension far beyond what the index covers", [&](std::string& b) { set_u64(b, 50, uint64_t(1) << 39); },
          "cannot describe its 549755813888 values");
  for (const Damage& d : damages) {
    CAPTURE(d.what);
    write_file(path, d.bytes);
    const std::string msg = error_of([&] { load_archive(path); });
    CHECK_MESSAGE(contains(msg, path + ": "), msg);
    CHECK_MESSAGE(contains(msg, d.expect), msg);
    CHECK_MESSAGE(contains(error_of([&] { load_archive_meta(path); }), d.expect), "meta reader");
    // Left with its stale checksum, the file is named corrupt.
    std::string stale = d.bytes;
    std::memcpy(stale.data() + stale.size() - 12, good.data() + good.size() - 12, 4);
    write_file(path, stale);
    CHECK_MESSAGE(contains(error_of([&] { load_archive(path); }), "checksum mismatch (file corrupt"), "stale CRC");
  }

  // Records that lend or take a support: a mask stored as its weight's support.
  Archive pair;
  pair.kind = "model";
  Tensor w(Shape{2000}), m(Shape{2000});
  for (int64_t i = 0; i < 2000; i += 40) m[i] = 1.0f, w[i] = i == 0 ? 0.0f : 0.5f * float(i);  // w[0] kept, 0.0
  pair.tensors["a.weight"] = w;
  pair.tensors["mask:a.weight"] = m;
  save_archive(path, pair);
  Archive back = load_archive(path);
  CHECK(same_bits(back.tensors.at("a.weight"), w));
  CHECK(same_bits(back.tensors.at("mask:a.weight"), m));  // position 0 kept although w[0] == 0.0
  {  // a mask of a mask: each record lends or takes one support at most, and all come back
    Archive chain;  // sorted: "mask:mask:z.weight" comes before "mask:z.weight", then "z.weight"
    chain.kind = "model";
    chain.tensors["z.weight"] = w;
    chain.tensors["mask:z.weight"] = m;
    chain.tensors["mask:mask:z.weight"] = m.clone();
    save_archive(tmp / "chain.dnns", chain);
    Archive c = load_archive(tmp / "chain.dnns");
    for (const auto& [name, t] : chain.tensors) CHECK_MESSAGE(same_bits(c.tensors.at(name), t), name);
  }
  std::string bytes = read_file(path);
  const size_t ref = bytes.find("a.weight", bytes.find("mask:a.weight") + 13);  // the support's name
  REQUIRE(ref != std::string::npos);
  REQUIRE(bytes[ref - 5] == 3);  // encoding: ones at the support of 'a.weight'
  std::string other = bytes;
  other[ref] = 'b';  // 'b.weight': no such tensor
  write_file(path, with_fixed_crc(other));
  CHECK(contains(error_of([&] { load_archive(path); }),
                 "tensor 'mask:a.weight' takes the support of 'b.weight', which is not a sparse tensor of the file"));
}

TEST_CASE("file sizes and packed residency follow the surviving weights") {
  TempDir tmp("sparse_size");
  std::map<double, int64_t> v1, v2, v2_nomask, packed, survivors;
  const std::vector<double> densities = {1.0, 0.2, 0.05, 0.01};
  Model dense = resnet20_at(1.0);
  dense.masks.clear();
  dense.save(tmp / "dense.dnns");
  const int64_t dense_file = static_cast<int64_t>(fs::file_size(tmp / "dense.dnns"));
  for (double d : densities) {
    Model m = resnet20_at(d);
    survivors[d] = surviving_weights(m);
    save_archive(tmp / "v1.dnns", m.to_archive(), ArchiveWriteOptions{kArchiveFormatVersionDense});
    m.save(tmp / "v2.dnns");
    v1[d] = static_cast<int64_t>(fs::file_size(tmp / "v1.dnns"));
    v2[d] = static_cast<int64_t>(fs::file_size(tmp / "v2.dnns"));
    m.masks.clear();
    m.save(tmp / "v2n.dnns");
    v2_nomask[d] = static_cast<int64_t>(fs::file_size(tmp / "v2n.dnns"));
    packed[d] = pack_model(m).bytes();
    MESSAGE("ResNet-20 at " << d * 100 << "% (" << survivors[d] << " weights): file with masks " << v1[d] << " -> "
                            << v2[d] << " bytes, without masks " << v2_nomask[d] << "; packed " << packed[d] << " bytes");
  }
  // 5% of the weights: under 20% of the dense file, and each survivor costs about 5 bytes
  // (its value and a gap8 byte) over the 0%-density floor (batchnorm, biases, the spec).
  CHECK(v2[0.05] < dense_file / 5);
  CHECK(v2[0.05] < v1[0.05] / 10);  // the old layout: weights and masks dense
  Model empty = resnet20_at(0.0);
  empty.save(tmp / "empty.dnns");
  const int64_t floor = static_cast<int64_t>(fs::file_size(tmp / "empty.dnns"));
  for (double d : {0.2, 0.05, 0.01}) {
    CAPTURE(d);
    CHECK(v2[d] - floor <= static_cast<int64_t>(1.15 * 5.0 * double(survivors[d])) + 1024);
    CHECK(v2[d] < v2[d == 0.2 ? 1.0 : d == 0.05 ? 0.2 : 0.05]);  // shrinks level by level
    CHECK(packed[d] < packed[d == 0.2 ? 1.0 : d == 0.05 ? 0.2 : 0.05]);
  }
  CHECK(packed[0.05] < packed[1.0] / 5);
  CHECK(v2[1.0] < v1[1.0] * 55 / 100);  // dense weights, but the all-ones masks as bitmaps

  // The shifter's packed residency holds exactly these packed forms plus the active model.
  LoadedPortfolio lp;
  lp.dir = "(memory)";
  lp.manifest.arch = "resnet20";
  lp.manifest.input_shape = {3, 32, 32};
  lp.manifest.num_classes = 10;
  lp.manifest.latency_batch = 4;
  int64_t sum_packed = 0;
  for (double d : {0.05, 0.01}) {
    Model m = resnet20_at(d);
    m.masks.clear();
    sum_packed += pack_model(m).bytes();
    lp.models.push_back(std::make_shared<Model>(std::move(m)));
    VariantInfo v;
    v.name = "d" + std::to_string(int(d * 100));
    v.file = v.name + ".dnns";
    v.accuracy = d;
    lp.manifest.variants.push_back(v);
  }
  Shifter s(std::move(lp), NoFitPolicy::Closest, Residency::Packed);
  CHECK(s.resident_bytes() == sum_packed + model_resident_bytes(*s.model(s.active())));
}

TEST_CASE("the portable runtime runs a sparse model file without expanding its weights") {
  Rng rng(9);
  for (double density : {0.3, 0.02}) {  // bitmap and gap8 indices
    CAPTURE(density);
    Model m = resnet20_at(density, {3, 8, 8}, 7);
    TempDir tmp("sparse_rt_portable");
    m.save(tmp / "m.dnns");
    const std::string bytes = read_file(tmp / "m.dnns");
    rt::LoadedModel lm;
    REQUIRE_MESSAGE(rt::load_model_memory(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), "m",
                                          &lm) == rt::kOk,
                    lm.error);
    int sparse_layers = 0, bitmap = 0, gap8 = 0;
    for (int32_t i = 0; i < lm.graph.num_nodes; ++i) {
      sparse_layers += lm.graph.nodes[i].weight_coding != 0;
      bitmap += lm.graph.nodes[i].weight_coding == rt::kBitmapIndex;
      gap8 += lm.graph.nodes[i].weight_coding == rt::kGap8Index;
    }
    CHECK(sparse_layers >= 20);  // every conv and the linear layer of ResNet-20 (fc is kept denser)
    CHECK((density > 0.1 ? bitmap : gap8) > 0);
    // The weights held: survivors and the dense small tensors, far fewer than the parameters.
    CHECK(lm.num_weights < m.num_params() * density * 1.3 + 8000);
    const Tensor x = random_images(3, {3, 8, 8}, rng);
    const Tensor want = m.forward(x, false);
    std::vector<rt::NodePlan> plan(static_cast<size_t>(lm.graph.num_nodes));
    int64_t per_image = 0;
    char err[256];
    REQUIRE(rt::plan_graph(lm.graph, plan.data(), &per_image, err, sizeof err) == rt::kOk);
    std::vector<float> arena(static_cast<size_t>(per_image * 3) + 1), out(static_cast<size_t>(want.numel()));
    rt::Engine e;
    REQUIRE(rt::engine_init(&e, &lm.graph, plan.data(), arena.data(), per_image * 3, 3) == rt::kOk);
    REQUIRE(rt::engine_run(&e, x.data(), 3, out.data()) == rt::kOk);
    float diff = 0.0f;
    for (int64_t i = 0; i < want.numel(); ++i) diff = std::max(diff, std::fabs(want[i] - out[size_t(i)]));
    CHECK(diff <= 1e-4f * logit_scale(want));
    rt::free_model(&lm);
  }
}
