// libFuzzer target: the IDX reader (load_idx, datasets/idx.cpp) with its gzip path
// (datasets/io.cpp). Input layout:
//   byte 0       flags: bit 0 = gzip the images part before writing it, bit 1 = the labels part
//   bytes 1..4   u32 little-endian length of the images part (clamped to what follows)
//   then         the images part, then the labels part
// gzip ends with a CRC-32 of the data, so raw mutations of a compressed file mostly stop at the
// checksum: with a flag set the target compresses the (mutated) plain bytes itself and the IDX
// parser behind the decompressor is reached; with the flags clear, damaged gzip streams are fed
// as they are. Seeds: tests/fuzz/idx/.
#include <zlib.h>

#include <vector>

#include "core/error.h"
#include "datasets/dataset.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

std::vector<uint8_t> gzip(const uint8_t* data, size_t n) {
  z_stream z{};
  // A 512-byte window and the least memory: a valid gzip stream, made fast (the inputs are small).
  if (deflateInit2(&z, Z_BEST_SPEED, Z_DEFLATED, 9 + 16, 1, Z_DEFAULT_STRATEGY) != Z_OK) std::abort();
  std::vector<uint8_t> out(deflateBound(&z, n));
  z.next_in = const_cast<uint8_t*>(data);
  z.avail_in = static_cast<uInt>(n);
  z.next_out = out.data();
  z.avail_out = static_cast<uInt>(out.size());
  if (deflate(&z, Z_FINISH) != Z_STREAM_END) std::abort();
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

void write_part(const std::string& path, const uint8_t* data, size_t n, bool compress) {
  if (!compress) return dnns::fuzz::write_file(path, data, n);
  std::vector<uint8_t> z = gzip(data, n);
  dnns::fuzz::write_file(path, z.data(), z.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 5) return 0;
  const uint8_t flags = data[0];
  size_t images_len = size_t(data[1]) | size_t(data[2]) << 8 | size_t(data[3]) << 16 | size_t(data[4]) << 24;
  const uint8_t* rest = data + 5;
  const size_t rest_len = size - 5;
  if (images_len > rest_len) images_len = rest_len;
  static const std::string images = dnns::fuzz::scratch_dir() + "/images-idx3-ubyte";
  static const std::string labels = dnns::fuzz::scratch_dir() + "/labels-idx1-ubyte";
  write_part(images, rest, images_len, flags & 1);
  write_part(labels, rest + images_len, rest_len - images_len, flags & 2);
  try {
    dnns::Dataset d = dnns::load_idx(images, labels);
    d.validate();  // what the reader returns must be a consistent data set
  } catch (const dnns::Error&) {
  }
  return 0;
}
