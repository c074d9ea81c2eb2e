// IDX files (the MNIST family), plain or gzip-compressed.
#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "core/error.h"
#include "datasets/dataset.h"
#include "datasets/io.h"

namespace fs = std::filesystem;

namespace dnns {

static constexpr uint32_t kIdxImagesMagic = 0x00000803;  // unsigned bytes, 3 dimensions
static constexpr uint32_t kIdxLabelsMagic = 0x00000801;  // unsigned bytes, 1 dimension

static uint32_t big_endian_u32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

static std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

// Parses the header of an IDX file of unsigned bytes with `ndims` dimensions and checks that
// exactly the payload they promise follows. Returns the dimensions.
static std::vector<uint32_t> parse_idx(const std::string& path, const std::vector<uint8_t>& bytes,
                                       uint32_t magic, size_t ndims, const char* what) {
  const size_t header = 4 + 4 * ndims;
  auto too_short = [&] {
    return path + ": " + std::to_string(bytes.size()) + " bytes is too short for an IDX " + what + " header";
  };
  check(bytes.size() >= 4, too_short());
  const uint32_t got = big_endian_u32(bytes.data());
  check(got == magic, path + ": bad magic " + hex32(got) + ", expected " + hex32(magic) +
                          " (IDX " + what + " file)");
  check(bytes.size() >= header, too_short());
  std::vector<uint32_t> dims(ndims);
  uint64_t payload = 1;
  for (size_t i = 0; i < ndims; ++i) {
    dims[i] = big_endian_u32(bytes.data() + 4 + 4 * i);
    payload *= dims[i];
  }
  check(payload > 0, path + ": IDX " + what + " file has a zero dimension");
  const uint64_t have = bytes.size() - header;
  check(have >= payload, path + ": truncated: header promises " + std::to_string(payload) +
                             " data bytes, file holds " + std::to_string(have));
  check(have == payload, path + ": " + std::to_string(have - payload) +
                             " unexpected bytes after the " + std::to_string(payload) +
                             " data bytes the header promises");
  return dims;
}

Dataset load_idx(const std::string& images_path, const std::string& labels_path) {
  const std::vector<uint8_t> image_bytes = detail::read_maybe_gzip(images_path);
  const std::vector<uint32_t> idims = parse_idx(images_path, image_bytes, kIdxImagesMagic, 3, "images");
  const std::vector<uint8_t> label_bytes = detail::read_maybe_gzip(labels_path);
  const std::vector<uint32_t> ldims = parse_idx(labels_path, label_bytes, kIdxLabelsMagic, 1, "labels");
  check(idims[0] == ldims[0], labels_path + ": holds " + std::to_string(ldims[0]) + " labels but " +
                                  images_path + " holds " + std::to_string(idims[0]) + " images");
  check(idims[1] <= 65536 && idims[2] <= 65536,
        images_path + ": implausible image size " + std::to_string(idims[1]) + "x" +
            std::to_string(idims[2]));

  Dataset d;
  d.name = fs::path(images_path).filename().string();
  d.channels = 1;
  d.height = static_cast<int>(idims[1]);
  d.width = static_cast<int>(idims[2]);
  d.pixels.assign(image_bytes.begin() + 16, image_bytes.end());  // (N, rows, cols) = (N, 1, H, W)
  d.labels.assign(label_bytes.begin() + 8, label_bytes.end());
  const int32_t max_label = *std::max_element(d.labels.begin(), d.labels.end());
  // Labels are single bytes, so this bound always holds; it states the contract.
  check(max_label < 256, labels_path + ": label " + std::to_string(max_label) + " is not < 256");
  d.num_classes = max_label + 1;
  for (int k = 0; k < d.num_classes; ++k) d.class_names.push_back(std::to_string(k));
  return d;
}

const std::vector<std::string>& fashion_mnist_class_names() {
  static const std::vector<std::string> names = {"T-shirt/top", "Trouser", "Pullover", "Dress",
                                                 "Coat",        "Sandal",  "Shirt",    "Sneaker",
                                                 "Bag",         "Ankle boot"};
  return names;
}

Dataset load_fashion_mnist(const std::string& dir, bool train) {
  std::error_code ec;
  check(fs::is_directory(dir, ec), dir + ": Fashion-MNIST folder not found (Debian package "
                                         "dataset-fashion-mnist installs it at " +
                                         std::string(kFashionMnistDir) + ")");
  const std::string prefix = train ? "train" : "t10k";
  auto find = [&](const std::string& stem) {
    const fs::path plain = fs::path(dir) / stem, gz = fs::path(dir) / (stem + ".gz");
    if (fs::is_regular_file(gz, ec)) return gz.string();
    if (fs::is_regular_file(plain, ec)) return plain.string();
    throw Error(gz.string() + ": missing (nor is there an uncompressed " + stem + ")");
  };
  Dataset d = load_idx(find(prefix + "-images-idx3-ubyte"), find(prefix + "-labels-idx1-ubyte"));
  check(d.num_classes <= 10, dir + ": Fashion-MNIST labels go up to " +
                                 std::to_string(d.num_classes - 1) + ", expected 0..9");
  d.num_classes = 10;
  d.class_names = fashion_mnist_class_names();
  d.name = std::string("fashion-mnist:") + (train ? "train" : "test");
  return d;
}

}  // namespace dnns
