// The readers: every format on small fixture files written here, their error messages on
// damaged inputs, the image-folder decode cache, and the real data sets where installed.
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include <zlib.h>

#include "tests/stb_write.h"

#include "core/error.h"
#include "datasets/dataset.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using namespace dnns;
using dnns::testing::contains;
using dnns::testing::error_of;
using dnns::testing::TempDir;

namespace {

void write_bytes(const fs::path& p, const std::vector<uint8_t>& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(f.good());
}

std::vector<uint8_t> read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// ---- CIFAR fixtures ----------------------------------------------------------------------

uint8_t cifar_pixel(int file, int record, int p) { return static_cast<uint8_t>((file * 31 + record * 7 + p) % 256); }

// `labels` records of one file, each prefixed by its label bytes.
std::vector<uint8_t> cifar_file(int file, const std::vector<std::vector<uint8_t>>& labels) {
  std::vector<uint8_t> out;
  for (size_t r = 0; r < labels.size(); ++r) {
    out.insert(out.end(), labels[r].begin(), labels[r].end());
    for (int p = 0; p < 3072; ++p) out.push_back(cifar_pixel(file, static_cast<int>(r), p));
  }
  return out;
}

// data_batch_1..5 with 3 records each (labels (b + r) % 10), test_batch with 4.
void write_cifar10(const fs::path& dir) {
  for (int b = 1; b <= 5; ++b) {
    std::vector<std::vector<uint8_t>> labels;
    for (int r = 0; r < 3; ++r) labels.push_back({static_cast<uint8_t>((b + r) % 10)});
    write_bytes(dir / ("data_batch_" + std::to_string(b) + ".bin"), cifar_file(b, labels));
  }
  write_bytes(dir / "test_batch.bin", cifar_file(0, {{9}, {0}, {3}, {3}}));
}

// ---- IDX fixtures ------------------------------------------------------------------------

void put_be32(std::vector<uint8_t>& b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(v >> s));
}

std::vector<uint8_t> idx_images(uint32_t n, uint32_t rows, uint32_t cols) {
  std::vector<uint8_t> b;
  put_be32(b, 0x00000803);
  put_be32(b, n);
  put_be32(b, rows);
  put_be32(b, cols);
  for (uint32_t i = 0; i < n * rows * cols; ++i) b.push_back(static_cast<uint8_t>(i * 13 % 256));
  return b;
}

std::vector<uint8_t> idx_labels(const std::vector<uint8_t>& labels) {
  std::vector<uint8_t> b;
  put_be32(b, 0x00000801);
  put_be32(b, static_cast<uint32_t>(labels.size()));
  b.insert(b.end(), labels.begin(), labels.end());
  return b;
}

void write_gzip(const fs::path& p, const std::vector<uint8_t>& bytes) {
  fs::create_directories(p.parent_path());
  gzFile gz = gzopen(p.c_str(), "wb");
  REQUIRE(gz != nullptr);
  REQUIRE(gzwrite(gz, bytes.data(), static_cast<unsigned>(bytes.size())) == static_cast<int>(bytes.size()));
  REQUIRE(gzclose(gz) == Z_OK);
}

// ---- image fixtures ----------------------------------------------------------------------

// An (h, w, comp) interleaved image whose pixel (y, x, c) is f(y, x, c).
std::vector<uint8_t> make_hwc(int h, int w, int comp, const std::function<int(int, int, int)>& f) {
  std::vector<uint8_t> img(size_t(h) * w * comp);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < comp; ++c) img[(size_t(y) * w + x) * comp + c] = static_cast<uint8_t>(f(y, x, c));
  return img;
}

void write_png(const fs::path& p, int h, int w, int comp, const std::vector<uint8_t>& hwc) {
  fs::create_directories(p.parent_path());
  REQUIRE(stbi_write_png(p.c_str(), w, h, comp, hwc.data(), w * comp) != 0);
}

int pattern(int y, int x, int c, int seed) { return (seed * 40 + y * 17 + x * 5 + c * 60) % 256; }

// Pixel (c, y, x) of image i of a data set.
int px(const Dataset& d, int64_t i, int c, int y, int x) {
  return d.image(i)[(size_t(c) * d.height + y) * d.width + x];
}

// root/{ant,bee}/: ant holds two 8x8 RGB PNGs, bee a 16x16 RGB PNG (resized), a grey PNG
// and an RGBA PNG, plus files that must be ignored.
void write_image_folder(const fs::path& root) {
  write_png(root / "ant" / "a0.png", 8, 8, 3, make_hwc(8, 8, 3, [](int y, int x, int c) { return pattern(y, x, c, 0); }));
  write_png(root / "ant" / "a1.png", 8, 8, 3, make_hwc(8, 8, 3, [](int y, int x, int c) { return pattern(y, x, c, 1); }));
  // 16x16 made of 2x2 blocks whose values average exactly to pattern(y/2, x/2, c, 2).
  write_png(root / "bee" / "b0_big.png", 16, 16, 3, make_hwc(16, 16, 3, [](int y, int x, int c) {
              return pattern(y / 2, x / 2, c, 2) + (((y + x) % 2) ? 1 : -1) * (pattern(y / 2, x / 2, c, 2) > 0 ? 1 : 0) *
                                                       (pattern(y / 2, x / 2, c, 2) < 255 ? 1 : 0);
            }));
  write_png(root / "bee" / "b1_grey.png", 8, 8, 1, make_hwc(8, 8, 1, [](int y, int x, int) { return 10 * y + x; }));
  write_png(root / "bee" / "b2_rgba.png", 8, 8, 4, make_hwc(8, 8, 4, [](int y, int x, int c) {
              return c == 3 ? 7 : pattern(y, x, c, 3);
            }));
  write_bytes(root / "bee" / "notes.txt", {'h', 'i'});
  write_bytes(root / "bee" / ".hidden.png", {0, 1, 2});
  fs::create_directories(root / ".cache-like-hidden-dir");
}

}  // namespace

// ==== Dataset ==================================================================================

TEST_CASE("Dataset: validate, subsets and class counts") {
  SyntheticSpec spec;
  spec.num_examples = 50;
  spec.num_classes = 5;
  spec.height = spec.width = 6;
  const Dataset d = make_synthetic(spec);
  CHECK_NOTHROW(d.validate());
  CHECK(d.class_counts() == std::vector<int64_t>(5, 10));

  const Dataset first = d.first_per_class(3);
  CHECK(first.size() == 15);
  CHECK(first.class_counts() == std::vector<int64_t>(5, 3));
  // The first three of each class, in data set order: labels cycle 0..4, so the first 15.
  for (int64_t i = 0; i < 15; ++i) {
    CHECK(first.labels[i] == d.labels[i]);
    CHECK(std::equal(first.image(i), first.image(i) + d.image_bytes(), d.image(i)));
  }

  const Dataset s1 = d.sample(20, 7), s2 = d.sample(20, 7), s3 = d.sample(20, 8);
  CHECK(s1.size() == 20);
  CHECK(s1.pixels == s2.pixels);
  CHECK(s1.labels == s2.labels);
  CHECK(s1.pixels != s3.pixels);
  // A sample is 20 distinct examples of d, in data set order, each with its own label (the
  // noise images are all different, so each is found once).
  std::vector<int64_t> from;
  for (int64_t k = 0; k < s1.size(); ++k) {
    int64_t at = -1;
    for (int64_t i = 0; i < d.size() && at < 0; ++i)
      if (std::equal(s1.image(k), s1.image(k) + d.image_bytes(), d.image(i))) at = i;
    REQUIRE(at >= 0);
    CHECK(s1.labels[k] == d.labels[at]);
    from.push_back(at);
  }
  CHECK(std::adjacent_find(from.begin(), from.end(), std::greater_equal<int64_t>()) == from.end());
  CHECK(contains(error_of([&] { (void)d.sample(51, 1); }), "cannot sample 51 of 50"));
  CHECK(contains(error_of([&] { (void)d.take({0, 50}); }), "subset index 50"));

  Dataset bad = d;
  bad.labels[3] = 5;
  CHECK(contains(error_of([&] { bad.validate(); }), "label 5 of example 3"));
  bad = d;
  bad.pixels.pop_back();
  CHECK(contains(error_of([&] { bad.validate(); }), "pixel bytes"));
}

TEST_CASE("make_synthetic: deterministic, balanced, learnable") {
  SyntheticSpec spec;
  spec.num_examples = 400;
  spec.num_classes = 4;
  spec.height = spec.width = 12;
  spec.seed = 3;
  const Dataset a = make_synthetic(spec), b = make_synthetic(spec);
  CHECK(a.pixels == b.pixels);
  CHECK(a.labels == b.labels);
  CHECK(a.class_counts() == std::vector<int64_t>(4, 100));
  spec.seed = 4;
  CHECK(make_synthetic(spec).pixels != a.pixels);

  // Learnable: a nearest-class-mean classifier fitted on split 0 does far better than
  // chance (25%) on split 1 (same classes, other examples).
  spec.seed = 3;
  spec.split = 1;
  const Dataset test = make_synthetic(spec);
  CHECK(test.pixels != a.pixels);
  const int64_t ib = a.image_bytes();
  std::vector<double> means(4 * ib, 0.0);
  for (int64_t i = 0; i < a.size(); ++i)
    for (int64_t p = 0; p < ib; ++p) means[a.labels[i] * ib + p] += a.image(i)[p] / 100.0;
  int correct = 0;
  for (int64_t i = 0; i < test.size(); ++i) {
    int best = 0;
    double best_d = 1e300;
    for (int k = 0; k < 4; ++k) {
      double dist = 0;
      for (int64_t p = 0; p < ib; ++p) dist += std::pow(test.image(i)[p] - means[k * ib + p], 2);
      if (dist < best_d) best_d = dist, best = k;
    }
    correct += best == test.labels[i];
  }
  MESSAGE("nearest-class-mean accuracy on synthetic split 1: " << correct / 4.0 << "%");
  CHECK(correct >= 240);  // >= 60%
}

// ==== CIFAR binary =============================================================================

TEST_CASE("load_cifar10_binary: reads records, labels and class names") {
  TempDir tmp;
  write_cifar10(tmp.path);
  const Dataset train = load_cifar10_binary(tmp.str(), true);
  REQUIRE(train.size() == 15);
  CHECK(train.channels == 3);
  CHECK(train.height == 32);
  CHECK(train.width == 32);
  CHECK(train.num_classes == 10);
  CHECK(train.class_names.front() == "airplane");
  CHECK(train.class_names.back() == "truck");
  CHECK_NOTHROW(train.validate());
  for (int b = 1; b <= 5; ++b)
    for (int r = 0; r < 3; ++r) {
      const int64_t i = (b - 1) * 3 + r;
      CHECK(train.labels[i] == (b + r) % 10);
      // Channel-major planes: pixel p of the record is (c, y, x) = (p / 1024, ...).
      CHECK(px(train, i, 0, 0, 0) == cifar_pixel(b, r, 0));
      CHECK(px(train, i, 1, 2, 5) == cifar_pixel(b, r, 1024 + 2 * 32 + 5));
      CHECK(px(train, i, 2, 31, 31) == cifar_pixel(b, r, 3071));
    }
  const Dataset test = load_cifar10_binary(tmp.str(), false);
  CHECK(test.labels == std::vector<int32_t>{9, 0, 3, 3});
  CHECK(px(test, 3, 2, 10, 10) == cifar_pixel(0, 3, 2048 + 330));
}

TEST_CASE("load_cifar10_binary: damaged inputs name the file and the problem") {
  TempDir tmp;
  write_cifar10(tmp.path);
  const std::string dir = tmp.str();

  std::vector<uint8_t> bytes = read_bytes(tmp / "test_batch.bin");
  bytes.pop_back();  // truncated
  write_bytes(tmp / "test_batch.bin", bytes);
  std::string msg = error_of([&] { load_cifar10_binary(dir, false); });
  CHECK(contains(msg, "test_batch.bin"));
  CHECK(contains(msg, "not a multiple of the 3073-byte record"));

  write_bytes(tmp / "test_batch.bin", cifar_file(0, {{1}, {10}}));
  msg = error_of([&] { load_cifar10_binary(dir, false); });
  CHECK(contains(msg, "test_batch.bin"));
  CHECK(contains(msg, "record 1 has label 10, expected < 10"));

  write_bytes(tmp / "test_batch.bin", {});
  msg = error_of([&] { load_cifar10_binary(dir, false); });
  CHECK(contains(msg, "test_batch.bin: empty file"));

  fs::remove(tmp / "data_batch_3.bin");
  msg = error_of([&] { load_cifar10_binary(dir, true); });
  CHECK(contains(msg, "data_batch_3.bin: missing"));

  msg = error_of([&] { load_cifar10_binary((tmp / "nope"), true); });
  CHECK(contains(msg, "nope: CIFAR-10 folder not found"));
}

TEST_CASE("load_cifar100_binary: fine and coarse labels, range checks") {
  TempDir tmp;
  write_bytes(tmp / "train.bin", cifar_file(1, {{0, 99}, {19, 4}, {7, 58}}));
  write_bytes(tmp / "test.bin", cifar_file(2, {{3, 30}}));
  const Dataset fine = load_cifar100_binary(tmp.str(), true, false);
  CHECK(fine.labels == std::vector<int32_t>{99, 4, 58});
  CHECK(fine.num_classes == 100);
  CHECK(fine.class_names.size() == 100);
  CHECK(fine.class_names[99] == "worm");
  CHECK(px(fine, 2, 0, 0, 1) == cifar_pixel(1, 2, 1));
  const Dataset coarse = load_cifar100_binary(tmp.str(), true, true);
  CHECK(coarse.labels == std::vector<int32_t>{0, 19, 7});
  CHECK(coarse.num_classes == 20);
  CHECK(coarse.class_names[19] == "vehicles_2");
  CHECK(load_cifar100_binary(tmp.str(), false).labels == std::vector<int32_t>{30});

  write_bytes(tmp / "train.bin", cifar_file(1, {{0, 100}}));
  std::string msg = error_of([&] { load_cifar100_binary(tmp.str(), true, true); });
  CHECK(contains(msg, "train.bin: record 0 has fine label 100, expected < 100"));
  write_bytes(tmp / "train.bin", cifar_file(1, {{20, 1}}));
  msg = error_of([&] { load_cifar100_binary(tmp.str(), true, false); });
  CHECK(contains(msg, "train.bin: record 0 has coarse label 20, expected < 20"));
  // A CIFAR-10 file (3073-byte records) is the wrong size for CIFAR-100 (3074).
  write_bytes(tmp / "test.bin", cifar_file(1, {{1}, {2}}));
  msg = error_of([&] { load_cifar100_binary(tmp.str(), false); });
  CHECK(contains(msg, "test.bin: size 6146 bytes is not a multiple of the 3074-byte record"));
}

// ==== IDX ======================================================================================

TEST_CASE("load_idx: plain and gzip files") {
  TempDir tmp;
  const std::vector<uint8_t> images = idx_images(5, 4, 3);
  const std::vector<uint8_t> labels = idx_labels({2, 0, 7, 2, 1});
  write_bytes(tmp / "img", images);
  write_bytes(tmp / "lab", labels);
  write_gzip(tmp / "img.gz", images);
  write_gzip(tmp / "lab.gz", labels);
  for (const auto& [ip, lp] : std::vector<std::pair<std::string, std::string>>{
           {"img", "lab"}, {"img.gz", "lab.gz"}, {"img", "lab.gz"}, {"img.gz", "lab"}}) {
    CAPTURE(ip);
    CAPTURE(lp);
    const Dataset d = load_idx(tmp / ip, tmp / lp);
    CHECK(d.size() == 5);
    CHECK(d.channels == 1);
    CHECK(d.height == 4);
    CHECK(d.width == 3);
    CHECK(d.num_classes == 8);  // max label + 1
    CHECK(d.class_names.size() == 8);
    CHECK(d.labels == std::vector<int32_t>{2, 0, 7, 2, 1});
    CHECK(std::equal(d.pixels.begin(), d.pixels.end(), images.begin() + 16));
    CHECK_NOTHROW(d.validate());
  }
}

TEST_CASE("load_idx: damaged inputs name the file and the problem") {
  TempDir tmp;
  const std::vector<uint8_t> images = idx_images(5, 4, 3);
  const std::vector<uint8_t> labels = idx_labels({2, 0, 7, 2, 1});
  write_bytes(tmp / "img", images);
  write_bytes(tmp / "lab", labels);
  const std::string img = (tmp / "img"), lab = (tmp / "lab");

  std::string msg = error_of([&] { load_idx(lab, img); });  // swapped
  CHECK(contains(msg, lab + ": bad magic 0x00000801, expected 0x00000803"));

  std::vector<uint8_t> cut(images.begin(), images.end() - 1);
  write_bytes(tmp / "img_cut", cut);
  msg = error_of([&] { load_idx((tmp / "img_cut"), lab); });
  CHECK(contains(msg, "img_cut: truncated: header promises 60 data bytes, file holds 59"));

  std::vector<uint8_t> extra = images;
  extra.push_back(0);
  write_bytes(tmp / "img_extra", extra);
  msg = error_of([&] { load_idx((tmp / "img_extra"), lab); });
  CHECK(contains(msg, "img_extra: 1 unexpected bytes after the 60 data bytes"));

  write_bytes(tmp / "lab4", idx_labels({1, 2, 3, 4}));
  msg = error_of([&] { load_idx(img, (tmp / "lab4")); });
  CHECK(contains(msg, "lab4: holds 4 labels but " + img + " holds 5 images"));

  write_bytes(tmp / "short", {0, 0, 8, 3, 0, 0});
  msg = error_of([&] { load_idx((tmp / "short"), lab); });
  CHECK(contains(msg, "short: 6 bytes is too short for an IDX images header"));

  msg = error_of([&] { load_idx((tmp / "absent"), lab); });
  CHECK(contains(msg, "absent: cannot open"));

  // A gzip stream cut in half, and one with a damaged body.
  write_gzip(tmp / "img.gz", images);
  std::vector<uint8_t> gz = read_bytes(tmp / "img.gz");
  write_bytes(tmp / "half.gz", std::vector<uint8_t>(gz.begin(), gz.begin() + gz.size() / 2));
  msg = error_of([&] { load_idx((tmp / "half.gz"), lab); });
  CHECK(contains(msg, "half.gz: corrupt or truncated gzip data"));
  std::vector<uint8_t> damaged = gz;
  for (size_t i = 12; i < damaged.size() - 8; ++i) damaged[i] ^= 0x5a;
  write_bytes(tmp / "damaged.gz", damaged);
  msg = error_of([&] { load_idx((tmp / "damaged.gz"), lab); });
  CHECK(contains(msg, "damaged.gz: corrupt or truncated gzip data"));
}

TEST_CASE("Fashion-MNIST from Debian's dataset-fashion-mnist") {
  std::error_code ec;
  if (!fs::is_directory(kFashionMnistDir, ec)) {
    testing::skip_part(std::string("the Fashion-MNIST reader on the real files: ") + kFashionMnistDir +
                       " not present (install dataset-fashion-mnist; scripts/setup.sh does)");
    return;
  }
  for (bool train : {true, false}) {
    const Dataset d = load_fashion_mnist(kFashionMnistDir, train);
    CHECK(d.size() == (train ? 60000 : 10000));
    CHECK(d.channels == 1);
    CHECK(d.height == 28);
    CHECK(d.width == 28);
    CHECK(d.num_classes == 10);
    CHECK(d.class_names[0] == "T-shirt/top");
    CHECK(d.class_names[9] == "Ankle boot");
    CHECK(d.class_counts() == std::vector<int64_t>(10, train ? 6000 : 1000));
  }
}

// ==== image folders ============================================================================

TEST_CASE("resize_image: identity, exact block averages, smooth growth") {
  std::vector<uint8_t> src(2 * 4 * 6);  // (2, 4, 6)
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i * 5);
  std::vector<uint8_t> same(src.size());
  resize_image(src.data(), 2, 4, 6, same.data(), 4, 6);
  CHECK(same == src);

  std::vector<uint8_t> half(2 * 2 * 3);  // (2, 2, 3): every output averages a 2x2 block
  resize_image(src.data(), 2, 4, 6, half.data(), 2, 3);
  for (int c = 0; c < 2; ++c)
    for (int y = 0; y < 2; ++y)
      for (int x = 0; x < 3; ++x) {
        auto s = [&](int yy, int xx) { return src[(c * 4 + yy) * 6 + xx]; };
        const double avg = (s(2 * y, 2 * x) + s(2 * y, 2 * x + 1) + s(2 * y + 1, 2 * x) + s(2 * y + 1, 2 * x + 1)) / 4.0;
        CHECK(std::abs(half[(c * 2 + y) * 3 + x] - avg) <= 0.5);
      }

  // Growing a horizontal ramp keeps it a ramp: monotone, end values kept, rows equal.
  std::vector<uint8_t> ramp(1 * 2 * 4);
  for (int y = 0; y < 2; ++y)
    for (int x = 0; x < 4; ++x) ramp[y * 4 + x] = static_cast<uint8_t>(40 * x);
  std::vector<uint8_t> big(1 * 5 * 9);
  resize_image(ramp.data(), 1, 2, 4, big.data(), 5, 9);
  for (int y = 0; y < 5; ++y) {
    CHECK(big[y * 9] == 0);
    CHECK(big[y * 9 + 8] == 120);
    for (int x = 1; x < 9; ++x) CHECK(big[y * 9 + x] >= big[y * 9 + x - 1]);
    CHECK(std::equal(big.begin() + y * 9, big.begin() + y * 9 + 9, big.begin()));
  }
}

TEST_CASE("load_image_folder: classes, conversions, resizing, ignored files") {
  TempDir tmp;
  write_image_folder(tmp / "set");
  ImageFolderOptions opt;
  opt.use_cache = false;
  ImageFolderReport rep;
  const Dataset d = load_image_folder((tmp / "set"), 8, 8, 3, opt, &rep);
  CHECK(rep.images_decoded == 5);
  CHECK_FALSE(rep.cache_hit);
  CHECK(rep.cache_path.empty());
  REQUIRE(d.size() == 5);
  CHECK(d.class_names == std::vector<std::string>{"ant", "bee"});
  CHECK(d.labels == std::vector<int32_t>{0, 0, 1, 1, 1});
  CHECK(d.name == tmp.path.filename().string() + ":set");
  CHECK_NOTHROW(d.validate());
  for (int y = 0; y < 8; ++y)
    for (int x = 0; x < 8; ++x)
      for (int c = 0; c < 3; ++c) {
        CHECK(px(d, 0, c, y, x) == pattern(y, x, c, 0));
        CHECK(px(d, 1, c, y, x) == pattern(y, x, c, 1));
        CHECK(std::abs(px(d, 2, c, y, x) - pattern(y, x, c, 2)) <= 1);  // 16x16 -> 8x8
        CHECK(px(d, 3, c, y, x) == 10 * y + x);                          // grey -> RGB
        CHECK(px(d, 4, c, y, x) == pattern(y, x, c, 3));                 // alpha dropped
      }

  // One channel: luminance of the RGB images, the grey image unchanged.
  const Dataset grey = load_image_folder((tmp / "set"), 8, 8, 1, opt);
  CHECK(grey.channels == 1);
  CHECK(px(grey, 3, 0, 5, 6) == 56);
  const int r = pattern(2, 3, 0, 0), g = pattern(2, 3, 1, 0), b = pattern(2, 3, 2, 0);
  CHECK(std::abs(px(grey, 0, 0, 2, 3) - (0.299 * r + 0.587 * g + 0.114 * b)) <= 2.0);

  // Size 0x0: the first image's size (ant/a0.png, 8x8); another size resizes everything.
  const Dataset native = load_image_folder((tmp / "set"), 0, 0, 3, opt);
  CHECK(native.height == 8);
  CHECK(native.pixels == d.pixels);
  const Dataset small = load_image_folder((tmp / "set"), 4, 2, 3, opt);
  CHECK(small.height == 4);
  CHECK(small.width == 2);
  CHECK(small.pixels.size() == 5 * 3 * 4 * 2);
}

TEST_CASE("load_image_folder: JPEG files decode close to their source") {
  TempDir tmp;
  const auto img = make_hwc(16, 16, 3, [](int y, int, int c) { return 60 + 8 * y + 20 * c; });
  fs::create_directories(tmp.path / "set" / "only");
  REQUIRE(stbi_write_jpg((tmp.path / "set" / "only" / "x.jpg").c_str(), 16, 16, 3, img.data(), 100) != 0);
  ImageFolderOptions opt;
  opt.use_cache = false;
  const Dataset d = load_image_folder((tmp / "set"), 16, 16, 3, opt);
  REQUIRE(d.size() == 1);
  int worst = 0;
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < 16; ++y)
      for (int x = 0; x < 16; ++x) worst = std::max(worst, std::abs(px(d, 0, c, y, x) - (60 + 8 * y + 20 * c)));
  CHECK(worst <= 6);  // quality-100 JPEG of a smooth gradient
}

TEST_CASE("load_image_folder: errors name the folder or file") {
  TempDir tmp;
  ImageFolderOptions opt;
  opt.use_cache = false;
  std::string msg = error_of([&] { load_image_folder((tmp / "missing"), 8, 8, 3, opt); });
  CHECK(contains(msg, "missing: image folder not found"));

  write_bytes(tmp.path / "flat" / "a.png", {1, 2, 3});
  msg = error_of([&] { load_image_folder((tmp / "flat"), 8, 8, 3, opt); });
  CHECK(contains(msg, "flat: no class folders"));

  write_image_folder(tmp / "set");
  fs::create_directories(tmp.path / "set" / "cat");
  write_bytes(tmp.path / "set" / "cat" / "readme.txt", {'x'});
  msg = error_of([&] { load_image_folder((tmp / "set"), 8, 8, 3, opt); });
  CHECK(contains(msg, (tmp.path / "set" / "cat").string() + ": empty class folder"));

  write_bytes(tmp.path / "set" / "cat" / "bad.png", {'n', 'o', 't', ' ', 'p', 'n', 'g'});
  msg = error_of([&] { load_image_folder((tmp / "set"), 8, 8, 3, opt); });
  CHECK(contains(msg, (tmp.path / "set" / "cat" / "bad.png").string() + ": cannot decode image"));

  msg = error_of([&] { load_image_folder((tmp / "set"), 8, 0, 3, opt); });
  CHECK(contains(msg, "both positive or both 0"));
  msg = error_of([&] { load_image_folder((tmp / "set"), 8, 8, 5, opt); });
  CHECK(contains(msg, "channels must be 1..4"));
}

// The inputs tests/fuzz/fuzz_image.cpp found (byte 0 of each is the target's mode byte): stb_image
// 2.27 writes or reads out of bounds on them, so the reader must refuse them before stb decodes.
TEST_CASE("load_image_folder: refuses the files that break stb_image (fuzz corpus)") {
  TempDir tmp;
  ImageFolderOptions opt;
  opt.use_cache = false;
  const fs::path corpus = fs::path(DNNS_SOURCE_DIR) / "tests" / "fuzz" / "image";
  auto refusal = [&](const std::string& file, int h, int w) {
    std::vector<uint8_t> bytes = read_bytes(corpus / file);
    REQUIRE(bytes.size() > 1);
    const fs::path root = tmp.path / file;
    write_bytes(root / "a" / "0.png", std::vector<uint8_t>(bytes.begin() + 1, bytes.end()));
    return error_of([&] { load_image_folder(root.string(), h, w, 3, opt); });
  };
  for (const char* jpeg : {"crash-jpeg-huffman-codes", "crash-jpeg-huffman-codes-truncated", "crash-jpeg-fill-before-soi"}) {
    CAPTURE(jpeg);
    CHECK(contains(refusal(jpeg, 8, 8), "cannot decode image (corrupt JPEG: a Huffman table declares"));
    CHECK(contains(refusal(jpeg, 0, 0), "Huffman table declares"));  // the size probe is guarded too
  }
  CHECK(contains(refusal("crash-jpeg-undefined-huffman-table", 8, 8), "DC Huffman table 3, which is not defined"));
  CHECK(contains(refusal("crash-png-huge-idat", 8, 8), "truncated PNG: chunk of"));
  CHECK(contains(refusal("crash-pnm-16bit", 8, 8), "16-bit PNM (maximum value 525)"));
  CHECK(contains(refusal("crash-pnm-truncated", 8, 8), "truncated PNM"));
  CHECK(contains(refusal("seed.hdr", 8, 8), "HDR content"));

  // The same checks let the valid files of those formats through.
  for (const char* ok : {"seed.ppm", "seed.pgm", "seed.jpg", "seed.png", "seed.bmp", "seed.tga"}) {
    CAPTURE(ok);
    std::vector<uint8_t> bytes = read_bytes(corpus / ok);
    const fs::path root = tmp.path / (std::string("ok-") + ok);
    write_bytes(root / "a" / "0.png", std::vector<uint8_t>(bytes.begin() + 1, bytes.end()));
    Dataset d = load_image_folder(root.string(), 0, 0, 3, opt);
    CHECK(d.size() == 1);
    CHECK(d.height == 4);
    CHECK(d.width == 6);
  }
  {  // a progressive JPEG (libjpeg): its DC scans name an AC table not yet defined, as they may
    std::vector<uint8_t> bytes = read_bytes(corpus / "seed-progressive.jpg");
    write_bytes(tmp.path / "prog" / "a" / "0.jpg", std::vector<uint8_t>(bytes.begin() + 1, bytes.end()));
    Dataset d = load_image_folder((tmp.path / "prog").string(), 0, 0, 3, opt);
    CHECK(d.height == 16);
    CHECK(d.width == 24);
  }
  // A PPM one byte short of its pixels is refused; the same PPM whole is read.
  std::string ppm = "P6\n2 1\n255\n";
  ppm += std::string("\x01\x02\x03\x04\x05", 5);
  write_bytes(tmp.path / "short" / "a" / "0.ppm", std::vector<uint8_t>(ppm.begin(), ppm.end()));
  CHECK(contains(error_of([&] { load_image_folder((tmp.path / "short").string(), 0, 0, 3, opt); }),
                 "the header promises 6 bytes of pixels, the file holds 5"));
  ppm += '\x06';
  write_bytes(tmp.path / "whole" / "a" / "0.ppm", std::vector<uint8_t>(ppm.begin(), ppm.end()));
  Dataset d = load_image_folder((tmp.path / "whole").string(), 0, 0, 3, opt);
  CHECK(d.pixels == std::vector<uint8_t>{1, 4, 2, 5, 3, 6});  // (C, H, W)
}

TEST_CASE("load_image_folder: decode cache hits, invalidation and corruption") {
  TempDir tmp;
  write_image_folder(tmp / "set");
  const std::string dir = (tmp / "set");
  ImageFolderOptions opt;
  opt.cache_dir = (tmp / "cache");
  ImageFolderReport rep;

  const Dataset fresh = load_image_folder(dir, 8, 8, 3, opt, &rep);
  CHECK_FALSE(rep.cache_hit);
  CHECK(rep.cache_written);
  CHECK(rep.images_decoded == 5);
  CHECK(rep.cache_problem.empty());
  REQUIRE(fs::exists(rep.cache_path));
  CHECK(fs::path(rep.cache_path).parent_path() == tmp / "cache");
  CHECK(fs::path(rep.cache_path).extension() == ".dnnsimg");
  const std::string cache_file = rep.cache_path;
  // Nothing but the cache file is left behind (the temporary was renamed).
  CHECK(std::distance(fs::directory_iterator(tmp / "cache"), fs::directory_iterator()) == 1);

  auto expect_same = [&](const Dataset& d) {
    CHECK(d.pixels == fresh.pixels);
    CHECK(d.labels == fresh.labels);
    CHECK(d.class_names == fresh.class_names);
    CHECK(d.name == fresh.name);
    CHECK(d.height == 8);
  };

  SUBCASE("second load hits the cache") {
    const Dataset again = load_image_folder(dir, 8, 8, 3, opt, &rep);
    CHECK(rep.cache_hit);
    CHECK(rep.images_decoded == 0);
    CHECK(rep.cache_path == cache_file);
    expect_same(again);
    // Another size or channel count is another cache entry.
    load_image_folder(dir, 4, 4, 3, opt, &rep);
    CHECK_FALSE(rep.cache_hit);
    CHECK(rep.cache_path != cache_file);
    load_image_folder(dir, 8, 8, 1, opt, &rep);
    CHECK_FALSE(rep.cache_hit);
  }
  SUBCASE("touching a file invalidates the cache") {
    const fs::path f = tmp.path / "set" / "ant" / "a1.png";
    fs::last_write_time(f, fs::last_write_time(f) + std::chrono::seconds(10));
    const Dataset again = load_image_folder(dir, 8, 8, 3, opt, &rep);
    CHECK_FALSE(rep.cache_hit);
    CHECK(contains(rep.cache_problem, "stale"));
    CHECK(rep.images_decoded == 5);
    CHECK(rep.cache_written);
    expect_same(again);
    load_image_folder(dir, 8, 8, 3, opt, &rep);
    CHECK(rep.cache_hit);
  }
  SUBCASE("adding a file invalidates the cache") {
    write_png(tmp.path / "set" / "ant" / "a2.png", 8, 8, 3, make_hwc(8, 8, 3, [](int, int, int) { return 99; }));
    const Dataset again = load_image_folder(dir, 8, 8, 3, opt, &rep);
    CHECK_FALSE(rep.cache_hit);
    CHECK(again.size() == 6);
    CHECK(again.labels == std::vector<int32_t>{0, 0, 0, 1, 1, 1});
    CHECK(px(again, 2, 1, 4, 4) == 99);
  }
  SUBCASE("a corrupt cache file falls back to decoding and is rewritten") {
    std::vector<uint8_t> bytes = read_bytes(cache_file);
    bytes[bytes.size() - 100] ^= 0xff;  // a pixel byte
    write_bytes(cache_file, bytes);
    Dataset again = load_image_folder(dir, 8, 8, 3, opt, &rep);
    CHECK_FALSE(rep.cache_hit);
    CHECK(contains(rep.cache_problem, "checksum mismatch"));
    CHECK(rep.images_decoded == 5);
    expect_same(again);
    again = load_image_folder(dir, 8, 8, 3, opt, &rep);
    CHECK(rep.cache_hit);
    expect_same(again);
  }
  SUBCASE("a truncated or foreign cache file falls back to decoding") {
    std::vector<uint8_t> bytes = read_bytes(cache_file);
    write_bytes(cache_file, std::vector<uint8_t>(bytes.begin(), bytes.begin() + bytes.size() / 2));
    expect_same(load_image_folder(dir, 8, 8, 3, opt, &rep));
    CHECK_FALSE(rep.cache_hit);
    CHECK(contains(rep.cache_problem, "truncated"));
    write_bytes(cache_file, {'J', 'U', 'N', 'K'});
    expect_same(load_image_folder(dir, 8, 8, 3, opt, &rep));
    CHECK_FALSE(rep.cache_hit);
    CHECK(contains(rep.cache_problem, "bad magic"));
  }
  SUBCASE("an unwritable cache folder is reported, not an error") {
    write_bytes(tmp / "not-a-dir", {1});
    ImageFolderOptions bad = opt;
    bad.cache_dir = (tmp.path / "not-a-dir" / "sub").string();
    expect_same(load_image_folder(dir, 8, 8, 3, bad, &rep));
    CHECK_FALSE(rep.cache_written);
    CHECK(contains(rep.cache_problem, "cannot create cache folder"));
  }
}

TEST_CASE("default_cache_dir: environment, home, fallback") {
  TempDir tmp;
  const testing::ScopedEnv cache("DNNS_CACHE_DIR", tmp / "c"), home("HOME", std::nullopt);
  CHECK(default_cache_dir() == (tmp / "c"));
  cache.set(std::nullopt);
  home.set(tmp.path.string());
  CHECK(default_cache_dir() == (tmp.path / ".cache" / "dnnshifter").string());
  CHECK(fs::is_directory(tmp.path / ".cache" / "dnnshifter"));
  home.set("/proc/no-such-home");
  CHECK(default_cache_dir() == "/tmp/dnnshifter-cache");
  home.set(std::nullopt);
  CHECK(default_cache_dir() == "/tmp/dnnshifter-cache");
}

TEST_CASE("real data: the CIFAR-10 JPEG test split") {
  const std::string root = std::string(DNNS_SHARED_DATA) + "/cifar10-jpeg";
  std::error_code ec;
  if (!fs::is_directory(root + "/test", ec)) {  // its own CTest test: test_datasets_cifar10_jpeg
    testing::skip_part("the CIFAR-10 JPEG test split: " + root + "/test not present");
    return;
  }
  TempDir tmp;
  ImageFolderOptions opt;
  opt.cache_dir = (tmp / "cache");
  ImageFolderReport rep;
  const Dataset d = load_image_folder(root + "/test", 32, 32, 3, opt, &rep);
  CHECK(rep.images_decoded == 10000);
  CHECK(d.size() == 10000);
  CHECK(d.channels == 3);
  CHECK(d.height == 32);
  CHECK(d.width == 32);
  CHECK(d.name == "cifar10-jpeg:test");
  CHECK(d.class_names == cifar10_class_names());
  CHECK(d.class_counts() == std::vector<int64_t>(10, 1000));
  // Real photographs: neither blank nor saturated on average.
  const double mean = std::accumulate(d.pixels.begin(), d.pixels.end(), 0.0) / d.pixels.size();
  CHECK(mean > 80.0);
  CHECK(mean < 170.0);

  const Dataset cached = load_dataset(root, false, [&] {
    DatasetOptions o;
    o.image_folder = opt;
    return o;
  }());
  CHECK(cached.pixels == d.pixels);
  CHECK(cached.labels == d.labels);
  const Dataset again = load_image_folder(root + "/test", 32, 32, 3, opt, &rep);
  CHECK(rep.cache_hit);
}

// ==== load_dataset =============================================================================

TEST_CASE("load_dataset: recognises each kind of --data") {
  TempDir tmp;
  write_cifar10(tmp / "c10");
  write_cifar10(tmp.path / "parent" / "cifar-10-batches-bin");
  write_bytes(tmp.path / "c100" / "train.bin", cifar_file(1, {{0, 99}, {19, 4}}));
  write_bytes(tmp.path / "c100" / "test.bin", cifar_file(2, {{3, 30}}));
  write_image_folder(tmp.path / "imgs" / "train");
  write_image_folder(tmp.path / "imgs" / "test");
  fs::remove(tmp.path / "imgs" / "test" / "bee" / "b2_rgba.png");  // the splits differ: 5 and 4 images
  write_gzip(tmp.path / "idx" / "train-images-idx3-ubyte.gz", idx_images(3, 2, 2));
  write_gzip(tmp.path / "idx" / "train-labels-idx1-ubyte.gz", idx_labels({0, 1, 1}));
  write_bytes(tmp.path / "idx" / "t10k-images-idx3-ubyte", idx_images(2, 2, 2));
  write_bytes(tmp.path / "idx" / "t10k-labels-idx1-ubyte", idx_labels({1, 0}));

  DatasetOptions o;
  o.image_folder.cache_dir = (tmp / "cache");
  CHECK(load_dataset((tmp / "c10"), true, o).size() == 15);
  CHECK(load_dataset((tmp / "c10"), false, o).size() == 4);
  CHECK(load_dataset((tmp / "parent"), true, o).size() == 15);
  CHECK(load_dataset((tmp / "c100"), true, o).num_classes == 100);
  o.cifar100_coarse = true;
  CHECK(load_dataset((tmp / "c100"), true, o).num_classes == 20);
  const Dataset imgs = load_dataset((tmp / "imgs"), true, o);
  CHECK(imgs.size() == 5);
  CHECK(imgs.height == 8);  // native size
  CHECK(imgs.name == "imgs:train");
  o.height = o.width = 4;
  const Dataset imgs_test = load_dataset((tmp / "imgs"), false, o);
  CHECK(imgs_test.width == 4);
  CHECK(imgs_test.size() == 4);  // the test/ folder, not train/ again
  CHECK(imgs_test.name == "imgs:test");
  const Dataset idx_train = load_dataset((tmp / "idx"), true, o), idx_test = load_dataset((tmp / "idx"), false, o);
  CHECK(idx_train.size() == 3);
  CHECK(idx_test.size() == 2);
  CHECK(idx_train.labels == std::vector<int32_t>{0, 1, 1});  // the labels of each split's own file
  CHECK(idx_test.labels == std::vector<int32_t>{1, 0});

  o.synthetic.num_examples = 30;
  o.synthetic.height = o.synthetic.width = 5;
  o.synthetic_test_examples = 20;
  const Dataset syn_train = load_dataset("synthetic", true, o), syn_test = load_dataset("synthetic", false, o);
  CHECK(syn_train.size() == 30);
  CHECK(syn_test.size() == 20);
  CHECK(syn_train.name == "synthetic(seed 1):train");
  CHECK_FALSE(std::equal(syn_test.pixels.begin(), syn_test.pixels.end(), syn_train.pixels.begin()));

  std::string msg = error_of([&] { load_dataset((tmp / "nothing-here"), true, o); });
  CHECK(contains(msg, "nothing-here: no such folder"));
  fs::create_directories(tmp / "empty");
  msg = error_of([&] { load_dataset((tmp / "empty"), true, o); });
  CHECK(contains(msg, "empty: not a recognised data set folder"));
  fs::remove(tmp.path / "idx" / "t10k-labels-idx1-ubyte");
  msg = error_of([&] { load_dataset((tmp / "idx"), false, o); });
  CHECK(contains(msg, "no t10k-labels-idx1-ubyte[.gz]"));

  std::error_code ec;
  if (fs::is_directory(kFashionMnistDir, ec)) {
    const Dataset f = load_dataset("fashion-mnist", false, o);
    CHECK(f.size() == 10000);
    CHECK(f.class_names == fashion_mnist_class_names());
  } else {
    testing::skip_part(std::string("--data fashion-mnist: ") + kFashionMnistDir + " not present");
  }
}
