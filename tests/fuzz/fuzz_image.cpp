// libFuzzer target: the image-folder path (load_image_folder, datasets/image_folder.cpp): the
// folder listing, stb_image's decoders (compiled into the fuzz build, so they are instrumented)
// and the resize to the requested size. Input: byte 0 picks the channels (bits 0-1: 1..4) and
// the size (bits 2-3: native, 8x8, 5x13, 40x40), the rest is one image file of class "a"
// (any format stb reads: it goes by the content, not the extension). Seeds: tests/fuzz/image/.
//
// Images claiming between 2^16 pixels and the reader's limit (2^25) are skipped: decoding them
// is legitimate work that takes seconds under ASan (a 115-byte RLE TGA of 65535 x 127 pixels)
// and would only slow the search down; those above the limit are still fed (they are refused
// before decoding). The size comes from the JPEG frame header (not from stb: stb's JPEG header
// parser is what the reader guards) or from stbi_info for the other formats.
#include <stb_image.h>

#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "datasets/dataset.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

int64_t claimed_pixels(const uint8_t* p, size_t n) {
  if (n >= 2 && p[0] == 0xFF && (p[1] == 0xD8 || p[1] == 0xFF)) {  // the first SOFn: FF Cx len(2) bits(1) h(2) w(2)
    for (size_t i = 2; i + 9 <= n; ++i)
      if (p[i] == 0xFF && p[i + 1] >= 0xC0 && p[i + 1] <= 0xCF && p[i + 1] != 0xC4 && p[i + 1] != 0xC8 && p[i + 1] != 0xCC)
        return int64_t(p[i + 5] << 8 | p[i + 6]) * (p[i + 7] << 8 | p[i + 8]);
    return 0;
  }
  // stb_image itself only for formats whose header the reader hands to stb unchecked (not PNM,
  // which the reader checks first, nor PSD, PIC and HDR, which it refuses).
  auto starts = [&](const char* sig, size_t len) { return n >= len && std::memcmp(p, sig, len) == 0; };
  if (starts("P5", 2) || starts("P6", 2) || starts("8BPS", 4) || starts("\x53\x80\xF6\x34", 4) || starts("#?", 2))
    return 0;
  int w = 0, h = 0, c = 0;
  if (n == 0 || !stbi_info_from_memory(p, static_cast<int>(n), &w, &h, &c)) return 0;
  return int64_t(w) * h;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const std::string root = [] {
    std::string r = dnns::fuzz::scratch_dir() + "/images";
    std::filesystem::create_directories(r + "/a");
    return r;
  }();
  const int channels = 1 + (data[0] & 3);
  static const int sizes[4][2] = {{0, 0}, {8, 8}, {5, 13}, {40, 40}};
  const int* hw = sizes[(data[0] >> 2) & 3];
  const int64_t pixels = claimed_pixels(data + 1, size - 1);
  if (pixels > (int64_t(1) << 16) && pixels <= (int64_t(1) << 25)) return 0;
  dnns::fuzz::write_file(root + "/a/0.png", data + 1, size - 1);
  dnns::ImageFolderOptions options;
  options.use_cache = false;
  try {
    dnns::Dataset d = dnns::load_image_folder(root, hw[0], hw[1], channels, options);
    d.validate();
  } catch (const dnns::Error&) {
  }
  return 0;
}
