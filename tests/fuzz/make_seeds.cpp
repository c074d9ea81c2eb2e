// Writes the seed corpora of the fuzz targets (tests/fuzz/<target>/) from our own code: tiny
// models saved by Model::save, archives of every entry kind, IDX files, CIFAR records, images
// written with stb_image_write, JSON and trace texts. Each seed is a few KB at most.
//
//   make_fuzz_seeds OUT_DIR      (scripts/fuzz.sh seeds: OUT_DIR = tests/fuzz)
//
// The committed seeds are what this program wrote; crash inputs found later sit beside them
// (named crash-*), each with the fix that made it pass.
#include <zlib.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"  // in the system header
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>
#pragma GCC diagnostic pop

#include "core/archive.h"
#include "core/error.h"
#include "core/rng.h"
#include "nn/model.h"
#include "nn/models/zoo.h"

namespace fs = std::filesystem;
using namespace dnns;

namespace {

std::string out_dir;

void put(const std::string& target, const std::string& name, const std::vector<uint8_t>& bytes) {
  fs::create_directories(out_dir + "/" + target);
  const std::string path = out_dir + "/" + target + "/" + name;
  std::FILE* f = std::fopen(path.c_str(), "wb");
  check(f && std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size() && std::fclose(f) == 0,
        path + ": cannot write");
}
void put(const std::string& target, const std::string& name, const std::string& text) {
  put(target, name, std::vector<uint8_t>(text.begin(), text.end()));
}
std::vector<uint8_t> read_bytes(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  check(f != nullptr, path + ": cannot open");
  std::vector<uint8_t> b;
  for (int c; (c = std::fgetc(f)) != EOF;) b.push_back(static_cast<uint8_t>(c));
  std::fclose(f);
  return b;
}
// An archive as bytes, saved through save_archive in the given format version.
std::vector<uint8_t> archive_bytes(const Archive& a, uint32_t version = kArchiveFormatVersion) {
  const std::string tmp = out_dir + "/.seed.tmp";
  save_archive(tmp, a, ArchiveWriteOptions{version});
  std::vector<uint8_t> b = read_bytes(tmp);
  fs::remove(tmp);
  return b;
}

// Three tiny graphs covering every node kind and attribute: a plain CNN, a residual net, and a
// compacted-style conv with a per-position bias and a fused ReLU.
const char* kCnn =
    "dnnshifter-graph 1\n"
    "input x shape=3,8,8\n"
    "conv c1 inputs=x bias=0 in=3 kh=3 kw=3 out=4 pad=1 stride=1\n"
    "batchnorm b1 inputs=c1 channels=4 eps=1e-05 momentum=0.1\n"
    "relu r1 inputs=b1\n"
    "maxpool p1 inputs=r1 kernel=2 stride=2\n"
    "avgpool p2 inputs=p1 kernel=2 stride=2\n"
    "flatten f inputs=p2\n"
    "linear fc inputs=f bias=1 in=16 out=3\n"
    "output fc\n";
const char* kResnet =
    "dnnshifter-graph 1\n"
    "input x shape=2,6,6\n"
    "conv c1 inputs=x bias=0 in=2 kh=3 kw=3 out=3 pad=1 stride=1\n"
    "batchnorm b1 inputs=c1 channels=3 eps=1e-05 momentum=0.1\n"
    "relu r1 inputs=b1\n"
    "conv c2 inputs=r1 bias=0 in=3 kh=3 kw=3 out=3 pad=1 stride=2\n"
    "conv s inputs=r1 bias=0 in=3 kh=1 kw=1 out=3 pad=0 stride=2\n"
    "add a inputs=c2,s\n"
    "relu r2 inputs=a\n"
    "global_avgpool g inputs=r2\n"
    "flatten f inputs=g\n"
    "linear fc inputs=f bias=0 in=3 out=2\n"
    "output fc\n";
const char* kCompact =
    "dnnshifter-graph 1\n"
    "input x shape=1,5,5\n"
    "conv c1 inputs=x bias=1 in=1 kh=3 kw=3 out=2 pad=1 stride=1 relu=1 pos_h=5 pos_w=5\n"
    "global_avgpool g inputs=c1\n"
    "flatten f inputs=g\n"
    "linear fc inputs=f bias=1 in=2 out=2\n"
    "output fc\n";

// with_mask: the first parameter masked, every third weight pruned, or with keep_every > 0 all
// but every keep_every-th (a gap8 index in format 2).
Model tiny_model(const char* spec, uint64_t seed, bool with_mask, int keep_every = 0) {
  Model m = Model::from_spec(spec);
  Rng rng(seed);
  init_model(m, rng);
  if (with_mask) {
    auto params = m.params();
    Tensor mask = Tensor::full(params[0].param->value.shape(), 1.0f);
    for (int64_t i = 0; i < mask.numel(); ++i)
      if (keep_every > 0 ? i % keep_every != 0 : i % 3 == 0) mask[i] = 0.0f;
    m.masks[params[0].name] = mask;
    m.apply_masks();
  }
  return m;
}

std::vector<uint8_t> gzip(const std::vector<uint8_t>& in) {
  z_stream z{};
  check(deflateInit2(&z, Z_BEST_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK, "deflateInit2");
  std::vector<uint8_t> out(deflateBound(&z, in.size()));
  z.next_in = const_cast<uint8_t*>(in.data());
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = out.data();
  z.avail_out = static_cast<uInt>(out.size());
  check(deflate(&z, Z_FINISH) == Z_STREAM_END, "deflate");
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

void be32(std::vector<uint8_t>& b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(v >> s));
}
// [flags][u32 LE images length][images][labels], the layout of fuzz_idx.cpp.
std::vector<uint8_t> idx_input(uint8_t flags, const std::vector<uint8_t>& images, const std::vector<uint8_t>& labels) {
  std::vector<uint8_t> b{flags};
  for (int s = 0; s < 32; s += 8) b.push_back(static_cast<uint8_t>(images.size() >> s));
  b.insert(b.end(), images.begin(), images.end());
  b.insert(b.end(), labels.begin(), labels.end());
  return b;
}

void stb_to_vector(void* ctx, void* data, int size) {
  auto* v = static_cast<std::vector<uint8_t>*>(ctx);
  v->insert(v->end(), static_cast<uint8_t*>(data), static_cast<uint8_t*>(data) + size);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2 || std::string(argv[1]) == "--help") {
    std::fprintf(argc == 2 ? stdout : stderr, "usage: make_fuzz_seeds OUT_DIR   (writes OUT_DIR/<target>/seed-*)\n");
    return argc == 2 ? 0 : 2;
  }
  out_dir = argv[1];
  try {
    // ---- graph specs
    put("spec", "seed-cnn.txt", kCnn);
    put("spec", "seed-resnet.txt", kResnet);
    put("spec", "seed-compact.txt", kCompact);

    // ---- model archives: for the archive reader and the portable runtime's reader
    // The old all-dense layout (format 1) and the sparse one (format 2: sparse records with
    // bitmap and gap8 indices, a mask stored as its weight's support).
    const std::vector<uint8_t> cnn = archive_bytes(tiny_model(kCnn, 1, true).to_archive(), kArchiveFormatVersionDense);
    const std::vector<uint8_t> resnet = archive_bytes(tiny_model(kResnet, 2, false).to_archive(), kArchiveFormatVersionDense);
    const std::vector<uint8_t> compact = archive_bytes(tiny_model(kCompact, 3, false).to_archive(), kArchiveFormatVersionDense);
    const std::vector<uint8_t> cnn2 = archive_bytes(tiny_model(kCnn, 1, true).to_archive());
    const std::vector<uint8_t> sparse = archive_bytes(tiny_model(kCnn, 4, true, 10).to_archive());
    for (const char* target : {"archive", "model_file"}) {
      put(target, "seed-model-cnn.dnns", cnn);
      put(target, "seed-model-resnet.dnns", resnet);
      put(target, "seed-model-compact.dnns", compact);
      put(target, "seed-model-cnn-v2.dnns", cnn2);
      put(target, "seed-model-sparse-v2.dnns", sparse);
    }
    // Other archive kinds: run-state meta, a 0-d tensor, a tensor with a zero dimension, a
    // name with a NUL byte, an empty archive.
    Archive state;
    state.kind = "checkpoint";
    meta_set_u64(state, "step", 1234);
    meta_set_f64(state, "lr", 0.1);
    meta_set_f64(state, "loss", -0.0);
    state.meta["hparams"] = "{\"epochs\": 3, \"model\": \"vgg11\"}";
    state.meta[std::string("nul\0key", 7)] = std::string("a\0b", 3);
    state.tensors["scalar"] = Tensor::full({}, 2.5f);
    state.tensors["empty"] = Tensor::zeros({0, 3});
    state.tensors["momentum:w"] = Tensor::full({2, 3}, -1.0f);
    put("archive", "seed-checkpoint.dnns", archive_bytes(state));
    Archive empty;
    empty.kind = "mask";
    put("archive", "seed-empty.dnns", archive_bytes(empty));

    // ---- JSON: a portfolio-like manifest and the corners of the grammar
    put("json", "seed-manifest.json",
        "{\n  \"format\": 1,\n  \"variants\": [\n    {\"name\": \"level_3\", \"params\": 123456, \"accuracy\": 0.9123,"
        " \"latency_ms\": {\"p50\": 1.5e-1, \"p99\": 2.25}, \"file\": \"level_3.dnns\", \"crc32\": 4294967295,"
        " \"dense\": true, \"note\": null}\n  ],\n  \"created\": \"2026-11-30T04:00:00Z\"\n}\n");
    put("json", "seed-strings.json",
        "[\"esc \\\" \\\\ \\/ \\b \\f \\n \\r \\t\", \"\\u00e9\\u4e2d\\ud83d\\ude00\", \"\xc3\xa9\xe4\xb8\xad\", \"\"]");
    put("json", "seed-numbers.json",
        "[0, -0, 1, -1, 9223372036854775807, -9223372036854775808, 1e308, 1.5E-3, 0.5, 12345678901234567890, true, false, null, {}, []]");

    // ---- shifter traces: byte 0 even = CSV, odd = JSON (fuzz_trace.cpp)
    put("trace", "seed-trace.csv",
        std::string("\x00", 1) + "# conditions over time\ntime_s,latency_ms,memory_mb,min_accuracy\n0,5,,0.9\n1.5,,20,\n3,2.5,8,0.75\n");
    put("trace", "seed-trace.json",
        "\x01[{\"time_s\": 0, \"latency_ms\": 5, \"min_accuracy\": 0.9}, {\"time_s\": 2, \"memory_mb\": 12.5, \"latency_ms\": null}]");
    put("trace", "seed-phases.json", "\x01{\"phases\": [{\"time_s\": 0}, {\"time_s\": 1e-3, \"memory_mb\": 1}]}");

    // ---- IDX: 3 images of 4x5 with labels, plain, gzipped by the target, gzipped in the file
    std::vector<uint8_t> images, labels;
    be32(images, 0x803);
    be32(images, 3);
    be32(images, 4);
    be32(images, 5);
    for (int i = 0; i < 3 * 4 * 5; ++i) images.push_back(static_cast<uint8_t>(i * 7));
    be32(labels, 0x801);
    be32(labels, 3);
    for (uint8_t l : {2, 0, 9}) labels.push_back(l);
    put("idx", "seed-plain.bin", idx_input(0, images, labels));
    put("idx", "seed-target-gzip.bin", idx_input(3, images, labels));
    put("idx", "seed-file-gzip.bin", idx_input(0, gzip(images), gzip(labels)));

    // ---- CIFAR: byte 0 = reader (0: CIFAR-10, 1: CIFAR-100 fine, 2: coarse), then records
    for (int mode = 0; mode < 3; ++mode) {
      std::vector<uint8_t> b{static_cast<uint8_t>(mode)};
      const int records = mode == 0 ? 2 : 1;
      for (int r = 0; r < records; ++r) {
        b.push_back(static_cast<uint8_t>(mode == 0 ? 7 - r : 19));
        if (mode != 0) b.push_back(99);
        for (int p = 0; p < 3072; ++p) b.push_back(static_cast<uint8_t>((p * 31 + r) & 0xFF));
      }
      put("cifar", "seed-" + std::to_string(mode) + ".bin", b);
    }

    // ---- images: byte 0 = channels and size (fuzz_image.cpp), then the file
    const int w = 6, h = 4;
    std::vector<uint8_t> rgb(w * h * 3), gray(w * h), rgba(w * h * 4);
    for (int i = 0; i < w * h; ++i) {
      gray[i] = static_cast<uint8_t>(i * 10);
      for (int c = 0; c < 3; ++c) rgb[i * 3 + c] = static_cast<uint8_t>(i * 10 + c * 60);
      for (int c = 0; c < 4; ++c) rgba[i * 4 + c] = static_cast<uint8_t>(i * 9 + c * 50);
    }
    std::vector<float> hdr(w * h * 3);
    for (size_t i = 0; i < hdr.size(); ++i) hdr[i] = 0.1f * float(i);
    auto image = [&](uint8_t mode, const std::string& name, auto write) {
      std::vector<uint8_t> b{mode};
      check(write(&b) != 0, name + ": stb_image_write failed");
      put("image", name, b);
    };
    image(2, "seed.png", [&](void* b) { return stbi_write_png_to_func(stb_to_vector, b, w, h, 3, rgb.data(), w * 3); });
    image(7, "seed-rgba.png", [&](void* b) { return stbi_write_png_to_func(stb_to_vector, b, w, h, 4, rgba.data(), w * 4); });
    image(0, "seed-gray.png", [&](void* b) { return stbi_write_png_to_func(stb_to_vector, b, w, h, 1, gray.data(), w); });
    image(6, "seed.bmp", [&](void* b) { return stbi_write_bmp_to_func(stb_to_vector, b, w, h, 3, rgb.data()); });
    image(14, "seed.tga", [&](void* b) { return stbi_write_tga_to_func(stb_to_vector, b, w, h, 4, rgba.data()); });
    image(2, "seed.jpg", [&](void* b) { return stbi_write_jpg_to_func(stb_to_vector, b, w, h, 3, rgb.data(), 60); });
    image(6, "seed.hdr", [&](void* b) { return stbi_write_hdr_to_func(stb_to_vector, b, w, h, 3, hdr.data()); });
    std::string ppm = "\x02P6\n6 4\n255\n";
    ppm.append(reinterpret_cast<const char*>(rgb.data()), rgb.size());
    put("image", "seed.ppm", ppm);
    std::string pgm = "\x04P5 6 4 255\n";
    pgm.append(reinterpret_cast<const char*>(gray.data()), gray.size());
    put("image", "seed.pgm", pgm);
  } catch (const Error& e) {
    std::fprintf(stderr, "make_fuzz_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
