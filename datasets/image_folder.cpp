// Image folders (one sub-folder per class) decoded with stb_image, and their decode cache.
#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>

#include <unistd.h>
#include <zlib.h>

#ifndef DNNS_STB_SHARED
// No shared libstb with the decoder compiled in: this file carries the implementation.
#define STB_IMAGE_IMPLEMENTATION
#endif
#include <stb_image.h>

#include "core/error.h"
#include "core/parallel.h"
#include "datasets/dataset.h"
#include "datasets/io.h"

namespace fs = std::filesystem;

namespace dnns {

// ---- resize ----------------------------------------------------------------------------------

namespace {

struct Tap {
  int index;     // source coordinate
  float weight;  // the taps of one output coordinate sum to 1
};

// The source taps of every output coordinate along one axis of length src -> dst.
std::vector<std::vector<Tap>> axis_taps(int src, int dst) {
  std::vector<std::vector<Tap>> taps(dst);
  const double scale = static_cast<double>(src) / dst;
  if (dst <= src) {
    // Shrinking: output o averages the source interval [o*scale, (o+1)*scale), each source
    // pixel weighted by how much of it lies inside. Equal sizes give the identity.
    for (int o = 0; o < dst; ++o) {
      const double lo = o * scale, hi = (o + 1) * scale;
      for (int i = static_cast<int>(std::floor(lo)); i < src && i < hi; ++i) {
        const double overlap = std::min<double>(hi, i + 1) - std::max<double>(lo, i);
        if (overlap > 1e-9) taps[o].push_back({i, static_cast<float>(overlap / scale)});
      }
    }
  } else {
    // Growing: bilinear between the two nearest source centres (half-pixel centres), the
    // edges clamped so the border pixels are repeated rather than faded to black.
    for (int o = 0; o < dst; ++o) {
      const double c = std::clamp((o + 0.5) * scale - 0.5, 0.0, static_cast<double>(src - 1));
      const int i0 = static_cast<int>(std::floor(c));
      const int i1 = std::min(i0 + 1, src - 1);
      const float f = static_cast<float>(c - i0);
      taps[o].push_back({i0, 1.0f - f});
      if (i1 != i0 && f > 0.0f) taps[o].push_back({i1, f});
    }
  }
  return taps;
}

}  // namespace

void resize_image(const uint8_t* src, int channels, int sh, int sw, uint8_t* dst, int dh, int dw) {
  check(channels > 0 && sh > 0 && sw > 0 && dh > 0 && dw > 0,
        "resize_image: sizes must be positive (" + std::to_string(sh) + "x" + std::to_string(sw) +
            " -> " + std::to_string(dh) + "x" + std::to_string(dw) + ")");
  const auto xtaps = axis_taps(sw, dw), ytaps = axis_taps(sh, dh);
  std::vector<float> rows(static_cast<size_t>(sh) * dw);  // (sh, dw): one channel, x resized
  for (int c = 0; c < channels; ++c) {
    const uint8_t* s = src + static_cast<size_t>(c) * sh * sw;  // (sh, sw)
    uint8_t* d = dst + static_cast<size_t>(c) * dh * dw;        // (dh, dw)
    for (int y = 0; y < sh; ++y)
      for (int x = 0; x < dw; ++x) {
        float acc = 0.0f;
        for (const Tap& t : xtaps[x]) acc += t.weight * s[static_cast<size_t>(y) * sw + t.index];
        rows[static_cast<size_t>(y) * dw + x] = acc;
      }
    for (int y = 0; y < dh; ++y)
      for (int x = 0; x < dw; ++x) {
        float acc = 0.0f;
        for (const Tap& t : ytaps[y]) acc += t.weight * rows[static_cast<size_t>(t.index) * dw + x];
        d[static_cast<size_t>(y) * dw + x] =
            static_cast<uint8_t>(std::clamp(std::lround(acc), 0L, 255L));
      }
  }
}

// ---- cache location --------------------------------------------------------------------------

static bool usable_dir(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  return fs::is_directory(dir, ec) && ::access(dir.c_str(), W_OK) == 0;
}

std::string default_cache_dir() {
  if (const char* env = std::getenv("DNNS_CACHE_DIR"); env && *env) return env;
  if (const char* home = std::getenv("HOME"); home && *home) {
    const fs::path dir = fs::path(home) / ".cache" / "dnnshifter";
    if (usable_dir(dir)) return dir.string();
  }
  return "/tmp/dnnshifter-cache";
}

// ---- folder listing and fingerprint --------------------------------------------------------

namespace {

// FNV-1a, 64 bit: enough to tell folders and their states apart (it is no security check).
struct Fnv64 {
  uint64_t h = 0xcbf29ce484222325ull;
  void bytes(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
  }
  void str(const std::string& s) { bytes(s.data(), s.size() + 1); }  // includes the '\0'
  void u64(uint64_t v) { bytes(&v, sizeof v); }
};

bool is_image_name(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  static const char* kExts[] = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tga", ".ppm", ".pgm"};
  return std::any_of(std::begin(kExts), std::end(kExts), [&](const char* e) { return ext == e; });
}

bool is_hidden(const fs::path& p) { return p.filename().string().starts_with("."); }

struct Listing {
  std::vector<std::string> classes;  // (K) sorted folder names
  std::vector<fs::path> files;       // (N) class by class, sorted within each
  std::vector<int32_t> labels;       // (N)
  uint64_t fingerprint = 0;          // of the relative names, sizes and mtimes
};

Listing list_folder(const fs::path& root) {
  std::error_code ec;
  check(fs::exists(root, ec), root.string() + ": image folder not found");
  check(fs::is_directory(root, ec), root.string() + ": not a folder");
  Listing out;
  for (const auto& e : fs::directory_iterator(root))
    if (e.is_directory() && !is_hidden(e.path())) out.classes.push_back(e.path().filename().string());
  std::sort(out.classes.begin(), out.classes.end());
  check(!out.classes.empty(), root.string() + ": no class folders (expected one sub-folder of images per class)");

  Fnv64 fp;
  for (size_t k = 0; k < out.classes.size(); ++k) {
    const fs::path cdir = root / out.classes[k];
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(cdir))
      if (e.is_regular_file() && !is_hidden(e.path()) && is_image_name(e.path())) files.push_back(e.path());
    check(!files.empty(), cdir.string() + ": empty class folder (no .jpg/.jpeg/.png/.bmp/.gif/.tga/.ppm/.pgm files)");
    std::sort(files.begin(), files.end());
    for (const fs::path& f : files) {
      fp.str(out.classes[k] + "/" + f.filename().string());
      fp.u64(fs::file_size(f));
      fp.u64(static_cast<uint64_t>(fs::last_write_time(f).time_since_epoch().count()));
      out.files.push_back(f);
      out.labels.push_back(static_cast<int32_t>(k));
    }
  }
  out.fingerprint = fp.h;
  return out;
}

// ---- cache file ------------------------------------------------------------------------------
//
// Layout (little-endian):
//   "DNNSIMG\0"  u32 version  u32 channels, height, width, num_classes  u64 count
//   u64 fingerprint  u32 len + folder path  num_classes x (u32 len + name)
//   labels: count x i32   pixels: count x C x H x W bytes   u32 CRC-32 of all that precedes

constexpr char kMagic[8] = {'D', 'N', 'N', 'S', 'I', 'M', 'G', '\0'};
constexpr uint32_t kVersion = 1;

void put_u32(std::vector<uint8_t>& b, uint32_t v) {
  for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put_u64(std::vector<uint8_t>& b, uint64_t v) {
  for (int i = 0; i < 8; ++i) b.push_back(static_cast<uint8_t>(v >> (8 * i)));
}
void put_str(std::vector<uint8_t>& b, const std::string& s) {
  put_u32(b, static_cast<uint32_t>(s.size()));
  b.insert(b.end(), s.begin(), s.end());
}

uint32_t crc_update(uint32_t crc, const uint8_t* p, size_t n) {
  while (n > 0) {  // zlib's crc32 takes a 32-bit length
    const uInt chunk = static_cast<uInt>(std::min<size_t>(n, 1u << 30));
    crc = static_cast<uint32_t>(crc32(crc, p, chunk));
    p += chunk;
    n -= chunk;
  }
  return crc;
}

std::vector<uint8_t> labels_le(const std::vector<int32_t>& labels) {
  std::vector<uint8_t> b;
  b.reserve(labels.size() * 4);
  for (int32_t l : labels) put_u32(b, static_cast<uint32_t>(l));
  return b;
}

// Reads the file through a FILE*, keeping the running CRC of everything read.
class CacheReader {
 public:
  explicit CacheReader(const fs::path& p) : f_(std::fopen(p.c_str(), "rb"), &std::fclose) {}
  bool ok() const { return f_ != nullptr; }
  bool read(void* dst, size_t n) {
    if (std::fread(dst, 1, n, f_.get()) != n) return false;
    crc_ = crc_update(crc_, static_cast<const uint8_t*>(dst), n);
    return true;
  }
  bool u32(uint32_t& v) {
    uint8_t b[4];
    if (!read(b, 4)) return false;
    v = uint32_t(b[0]) | uint32_t(b[1]) << 8 | uint32_t(b[2]) << 16 | uint32_t(b[3]) << 24;
    return true;
  }
  bool u64(uint64_t& v) {
    uint32_t lo, hi;
    if (!u32(lo) || !u32(hi)) return false;
    v = uint64_t(lo) | uint64_t(hi) << 32;
    return true;
  }
  bool str(std::string& s, uint32_t max_len) {
    uint32_t n;
    if (!u32(n) || n > max_len) return false;
    s.resize(n);
    return read(s.data(), n);
  }
  uint32_t crc() const { return crc_; }
  bool at_end() { return std::fgetc(f_.get()) == EOF; }

 private:
  std::unique_ptr<FILE, int (*)(FILE*)> f_;
  uint32_t crc_ = 0;
};

// The cached set, or nullopt with `problem` saying why the file was not usable.
std::optional<Dataset> read_cache(const fs::path& path, const std::string& folder, int C, int H,
                                  int W, const Listing& listing, std::string& problem) {
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    problem = "";  // nothing cached yet: not a problem
    return std::nullopt;
  }
  const uint64_t file_size = fs::file_size(path, ec);
  CacheReader r(path);
  auto fail = [&](const std::string& why) {
    problem = path.string() + ": " + why;
    return std::nullopt;
  };
  if (!r.ok()) return fail("cannot open");
  char magic[8];
  uint32_t version, c, h, w, k;
  uint64_t count, fingerprint;
  if (!r.read(magic, 8) || std::memcmp(magic, kMagic, 8) != 0) return fail("bad magic (not a decode cache)");
  if (!r.u32(version) || version != kVersion) return fail("unknown cache version");
  if (!r.u32(c) || !r.u32(h) || !r.u32(w) || !r.u32(k) || !r.u64(count) || !r.u64(fingerprint))
    return fail("truncated header");
  if (c != uint32_t(C) || h != uint32_t(H) || w != uint32_t(W))
    return fail("holds another image size");
  if (fingerprint != listing.fingerprint || count != listing.files.size() || k != listing.classes.size())
    return fail("stale (the folder changed since it was written)");
  std::string cached_folder;
  if (!r.str(cached_folder, 1u << 16) || cached_folder != folder) return fail("written for another folder");
  const uint64_t payload = count * 4 + count * uint64_t(C) * H * W;
  if (file_size < payload + 4) return fail("truncated (too short for its contents)");

  Dataset d;
  d.channels = C;
  d.height = H;
  d.width = W;
  d.num_classes = static_cast<int>(k);
  d.class_names.resize(k);
  for (auto& name : d.class_names)
    if (!r.str(name, 4096)) return fail("truncated class names");
  if (d.class_names != listing.classes) return fail("stale (class folders differ)");
  std::vector<uint8_t> label_bytes(count * 4);
  d.pixels.resize(count * d.image_bytes());
  if (!r.read(label_bytes.data(), label_bytes.size()) || !r.read(d.pixels.data(), d.pixels.size()))
    return fail("truncated data");
  const uint32_t computed = r.crc();
  uint32_t stored;
  if (!r.u32(stored)) return fail("truncated checksum");
  if (stored != computed) return fail("checksum mismatch (file corrupt)");
  if (!r.at_end()) return fail("unexpected bytes after the checksum");
  d.labels.resize(count);
  for (uint64_t i = 0; i < count; ++i) {
    const uint8_t* b = label_bytes.data() + 4 * i;
    d.labels[i] = static_cast<int32_t>(uint32_t(b[0]) | uint32_t(b[1]) << 8 | uint32_t(b[2]) << 16 |
                                       uint32_t(b[3]) << 24);
  }
  if (d.labels != listing.labels) return fail("stale (labels differ from the folder)");
  return d;
}

// Writes to a temporary file beside `path`, then renames it over `path`: a crash or a
// concurrent reader never sees a half-written cache. Returns "" or the problem.
std::string write_cache(const fs::path& path, const std::string& folder, const Dataset& d,
                        uint64_t fingerprint) {
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  if (!fs::is_directory(path.parent_path(), ec))
    return path.parent_path().string() + ": cannot create cache folder";
  static std::atomic<uint64_t> counter{0};
  const fs::path tmp = path.string() + ".tmp." + std::to_string(::getpid()) + "." +
                       std::to_string(counter.fetch_add(1));
  std::vector<uint8_t> head;
  head.insert(head.end(), kMagic, kMagic + 8);
  put_u32(head, kVersion);
  put_u32(head, d.channels);
  put_u32(head, d.height);
  put_u32(head, d.width);
  put_u32(head, d.num_classes);
  put_u64(head, d.labels.size());
  put_u64(head, fingerprint);
  put_str(head, folder);
  for (const auto& name : d.class_names) put_str(head, name);
  const std::vector<uint8_t> labels = labels_le(d.labels);
  uint32_t crc = crc_update(0, head.data(), head.size());
  crc = crc_update(crc, labels.data(), labels.size());
  crc = crc_update(crc, d.pixels.data(), d.pixels.size());
  std::vector<uint8_t> tail;
  put_u32(tail, crc);

  FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) return tmp.string() + ": cannot create (" + std::strerror(errno) + ")";
  bool ok = std::fwrite(head.data(), 1, head.size(), f) == head.size() &&
            std::fwrite(labels.data(), 1, labels.size(), f) == labels.size() &&
            std::fwrite(d.pixels.data(), 1, d.pixels.size(), f) == d.pixels.size() &&
            std::fwrite(tail.data(), 1, tail.size(), f) == tail.size();
  ok = (std::fclose(f) == 0) && ok;
  if (ok) fs::rename(tmp, path, ec);
  if (!ok || ec) {
    fs::remove(tmp, ec);
    return path.string() + ": cannot write the decode cache";
  }
  return "";
}

// ---- what stb_image is given --------------------------------------------------------------
//
// stb_image decodes whatever format it recognises in the bytes, whatever the extension says,
// and Debian's stb_image (2.27, packaged 2022-09) has decoders that trust what a file claims.
// Image files come from strangers, so before stb sees one it must: be one of the formats the
// folder reader documents (JPEG, PNG, BMP, GIF, TGA, PPM/PGM; PSD, PIC and HDR content is refused
// even in a file named .png), claim at most kMaxImagePixels pixels (stb would allocate whatever a
// 30-byte header asks for), and pass the JPEG check below. Each check was found by the fuzz
// target tests/fuzz/fuzz_image.cpp; its inputs are kept in tests/fuzz/image/.

constexpr int64_t kMaxImagePixels = int64_t(1) << 25;  // 32 Mpx, e.g. 8192 x 4096

// stb takes a file for JPEG when it starts with the SOI marker, FF D8, any number of FF fill
// bytes between the two included. Returns the offset after the marker, or 0 when it is not there.
size_t jpeg_soi_end(const std::vector<uint8_t>& b) {
  if (b.empty() || b[0] != 0xFF) return 0;
  size_t i = 1;
  while (i < b.size() && b[i] == 0xFF) ++i;
  return i < b.size() && b[i] == 0xD8 ? i + 1 : 0;
}

// A JPEG Huffman table (DHT segment) declaring more than 256 codes makes stb 2.27 write past its
// 257-entry size list and 256-entry value table (stbi__build_huffman; later stb releases check).
// Walks the segments as stb reads them (a DHT is read table by table, 17 bytes + its codes,
// while its length lasts; entropy-coded data runs to the next marker) and returns "" or the
// problem. A scan that decodes with a Huffman table no DHT segment defined makes stb read far
// outside its tables (stbi__jpeg_huff_decode on a zeroed table); refused as well. Progressive
// scans use the DC table only in a first DC scan and the AC table only in AC scans.
std::string jpeg_problem(const std::vector<uint8_t>& b) {
  const size_t n = b.size();
  size_t i = jpeg_soi_end(b);
  if (i == 0) return "";
  bool defined[2][4] = {};  // [DC, AC][table]: Huffman tables seen so far
  bool progressive = false;
  while (i + 1 < n) {
    if (b[i] != 0xFF || b[i + 1] == 0xFF) {  // entropy-coded data or a fill byte
      ++i;
      continue;
    }
    const uint8_t m = b[i + 1];
    if (m == 0x00 || m == 0x01 || (m >= 0xD0 && m <= 0xD8)) {  // stuffed 0xFF, TEM, RSTn, SOI
      i += 2;
      continue;
    }
    if (m == 0xD9 || i + 4 > n) break;  // end of image
    const size_t length = size_t(b[i + 2]) << 8 | b[i + 3];
    if (m == 0xC0 || m == 0xC1 || m == 0xC2) progressive = m == 0xC2;
    if (m == 0xDA && i + 5 <= n) {  // start of scan: Ls, Ns, Ns x (Cs, Td:Ta), Ss, Se, Ah:Al
      const size_t ns = b[i + 4];
      if (i + 8 + 2 * ns > n) break;
      const int ss = b[i + 5 + 2 * ns], ah = b[i + 7 + 2 * ns] >> 4;
      for (size_t c = 0; c < ns; ++c) {
        const int td = b[i + 6 + 2 * c] >> 4, ta = b[i + 6 + 2 * c] & 15;
        const bool uses_dc = progressive ? ss == 0 && ah == 0 : true, uses_ac = progressive ? ss > 0 : true;
        if (uses_dc && td < 4 && !defined[0][td]) return "corrupt JPEG: a scan uses DC Huffman table " + std::to_string(td) + ", which is not defined";
        if (uses_ac && ta < 4 && !defined[1][ta]) return "corrupt JPEG: a scan uses AC Huffman table " + std::to_string(ta) + ", which is not defined";
      }
    }
    if (m != 0xC4) {
      i += 2 + length;
      continue;
    }
    int64_t left = int64_t(length) - 2;
    size_t j = i + 4;
    while (left > 0 && j < n) {
      int codes = 0;  // stb reads zeros past the end of the file
      for (size_t k = j + 1; k <= j + 16 && k < n; ++k) codes += b[k];
      if (codes > 256)
        return "corrupt JPEG: a Huffman table declares " + std::to_string(codes) + " codes (at most 256)";
      const int tc = b[j] >> 4, th = b[j] & 15;
      if (tc <= 1 && th <= 3) defined[tc][th] = true;
      j += 17 + size_t(codes);
      left -= 17 + codes;
    }
    i = j;
  }
  return "";
}

// stb 2.27 reads a PNM with a maximum value above 255 as 16-bit and then converts it to 8 bits
// reading past its buffer (stbi__convert_16_to_8), sums header digits into an int without an
// overflow check, and ignores a short read of the pixels. Reads the header as stb does (whitespace, '#' comments to the end of the
// line, a byte past the end reads as 0) and returns "" or the problem.
std::string pnm_problem(const std::vector<uint8_t>& b) {
  const size_t n = b.size();
  if (n < 2 || b[0] != 'P' || (b[1] != '5' && b[1] != '6')) return "";
  size_t pos = 2;
  auto eof = [&] { return pos >= n; };
  auto next = [&] { return pos < n ? char(b[pos++]) : '\0'; };
  char c = next();
  auto skip_space = [&] {
    for (;;) {
      while (!eof() && (c == ' ' || (c >= '\t' && c <= '\r'))) c = next();
      if (eof() || c != '#') break;
      while (!eof() && c != '\n' && c != '\r') c = next();
    }
  };
  auto number = [&]() -> int64_t {  // -1: more than 2^31 - 1
    int64_t v = 0;
    while (!eof() && c >= '0' && c <= '9') {
      v = v * 10 + (c - '0');
      if (v > INT32_MAX) return -1;
      c = next();
    }
    return v;
  };
  int64_t fields[3];  // width, height, maximum value
  for (int64_t& f : fields) {
    skip_space();
    f = number();
    if (f < 0) return "PNM header holds a number above 2^31 - 1";
  }
  if (fields[2] > 255)
    return "16-bit PNM (maximum value " + std::to_string(fields[2]) + "): only 8-bit PPM and PGM images are read";
  // stb does not check that the pixels are there: a truncated file would decode to whatever
  // memory its buffer held. The pixels start right after the one byte that ends the header.
  const int64_t need = fields[0] * fields[1] * (b[1] == '6' ? 3 : 1);
  if (int64_t(n - pos) < need)
    return "truncated PNM: the header promises " + std::to_string(need) + " bytes of pixels, the file holds " +
           std::to_string(n - pos);
  return "";
}

// stb 2.27 grows its buffer to the length an IDAT chunk claims before reading it: a 148-byte
// file asked for 2 GB. Every chunk up to IEND must fit in the file. Returns "" or the problem.
std::string png_problem(const std::vector<uint8_t>& b) {
  size_t pos = 8;  // after the signature
  while (pos + 8 <= b.size()) {  // length (4, big-endian), type (4), data, CRC (4)
    const uint64_t length = uint64_t(b[pos]) << 24 | uint64_t(b[pos + 1]) << 16 | uint64_t(b[pos + 2]) << 8 | b[pos + 3];
    const std::string type(reinterpret_cast<const char*>(b.data() + pos + 4), 4);
    if (pos + 12 + length > b.size())
      return "truncated PNG: chunk of " + std::to_string(length) + " bytes at offset " + std::to_string(pos) +
             " runs past the end of the file (" + std::to_string(b.size()) + " bytes)";
    if (type == "IEND") break;
    pos += 12 + size_t(length);
  }
  return "";
}

// The format stb_image would decode `b` as (its own order of tests), or "" when none of the
// signatured formats matches (stb then tries TGA, which has no signature).
const char* stb_format(const std::vector<uint8_t>& b) {
  auto starts = [&](const char* sig, size_t len) { return b.size() >= len && std::memcmp(b.data(), sig, len) == 0; };
  if (jpeg_soi_end(b) != 0) return "JPEG";
  if (starts("\x89PNG\r\n\x1A\n", 8)) return "PNG";
  if (starts("BM", 2)) return "BMP";
  if (starts("GIF87a", 6) || starts("GIF89a", 6)) return "GIF";
  if (starts("8BPS", 4)) return "PSD";
  if (starts("\x53\x80\xF6\x34", 4)) return "PIC";
  if (starts("P5", 2) || starts("P6", 2)) return "PNM";
  if (starts("#?RADIANCE\n", 11) || starts("#?RGBE\n", 7)) return "HDR";
  return "";
}

// "" when stb may decode `b` (then *w, *h are its size), else why not.
std::string undecodable(const std::vector<uint8_t>& b, int* w, int* h) {
  const std::string format = stb_format(b);
  if (format == "PSD" || format == "PIC" || format == "HDR")
    return format + " content (image folders hold JPEG, PNG, BMP, GIF, TGA, PPM or PGM images)";
  if (format == "JPEG" || format == "PNM" || format == "PNG") {
    std::string problem = format == "JPEG" ? jpeg_problem(b) : format == "PNM" ? pnm_problem(b) : png_problem(b);
    if (!problem.empty()) return problem;
  }
  int n = 0;
  if (b.size() > size_t(INT32_MAX) || stbi_info_from_memory(b.data(), static_cast<int>(b.size()), w, h, &n) == 0)
    return stbi_failure_reason() ? stbi_failure_reason() : "unknown reason";
  if (*w <= 0 || *h <= 0 || int64_t(*w) * *h > kMaxImagePixels)
    return "image of " + std::to_string(*w) + "x" + std::to_string(*h) + " pixels, more than the limit of " +
           std::to_string(kMaxImagePixels) + " pixels";
  return "";
}

// Decodes one file to (h, w, C) interleaved pixels; throws Error naming the file.
std::unique_ptr<uint8_t, void (*)(void*)> decode_hwc(const std::string& path, int C, int* w, int* h) {
  const std::vector<uint8_t> bytes = detail::read_file(path);
  const std::string problem = undecodable(bytes, w, h);
  if (!problem.empty()) throw Error(path + ": cannot decode image (" + problem + ")");
  int file_channels = 0;
  std::unique_ptr<uint8_t, void (*)(void*)> hwc(
      stbi_load_from_memory(bytes.data(), static_cast<int>(bytes.size()), w, h, &file_channels, C), &stbi_image_free);
  if (!hwc) {
    const char* why = stbi_failure_reason();
    throw Error(path + ": cannot decode image (" + (why ? why : "unknown reason") + ")");
  }
  return hwc;
}

// Decodes `path` into out (C, H, W), resized to H x W when its size differs (resize_image);
// false with *error set when it cannot be read. *native_h, *native_w: the file's own size.
bool decode_image(const std::string& path, int C, int H, int W, uint8_t* out, std::string* error,
                  int* native_h = nullptr, int* native_w = nullptr) {
  int w = 0, h = 0;
  std::unique_ptr<uint8_t, void (*)(void*)> hwc(nullptr, &stbi_image_free);  // (h, w, C)
  try {
    hwc = decode_hwc(path, C, &w, &h);
  } catch (const Error& e) {
    *error = e.what();
    return false;
  }
  if (native_h) *native_h = h;
  if (native_w) *native_w = w;
  if (h == H && w == W) {
    for (int c = 0; c < C; ++c)
      for (int p = 0; p < H * W; ++p) out[size_t(c) * H * W + p] = hwc.get()[size_t(p) * C + c];
  } else {
    std::vector<uint8_t> chw(size_t(C) * h * w);  // (C, h, w)
    for (int c = 0; c < C; ++c)
      for (int p = 0; p < h * w; ++p) chw[size_t(c) * h * w + p] = hwc.get()[size_t(p) * C + c];
    resize_image(chw.data(), C, h, w, out, H, W);
  }
  return true;
}

// The decoded set; throws Error naming the first (in file order) file that fails.
Dataset decode_all(const Listing& listing, int C, int H, int W) {
  Dataset d;
  d.channels = C;
  d.height = H;
  d.width = W;
  d.num_classes = static_cast<int>(listing.classes.size());
  d.class_names = listing.classes;
  d.labels = listing.labels;
  const int64_t n = static_cast<int64_t>(listing.files.size());
  d.pixels.resize(n * d.image_bytes());

  std::mutex mu;
  int64_t first_bad = n;
  std::string first_error;
  parallel_for(int64_t(0), n, [&](int64_t i) {
    const std::string path = listing.files[i].string();
    std::string error;
    if (!decode_image(path, C, H, W, d.pixels.data() + i * d.image_bytes(), &error)) {
      std::lock_guard<std::mutex> lock(mu);
      if (i < first_bad) first_bad = i, first_error = error;
    }
  });
  if (first_bad < n) throw Error(first_error);
  return d;
}

std::string hex64(uint64_t v) {
  char buf[20];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

}  // namespace

Dataset load_image_folder(const std::string& dir, int height, int width, int channels,
                          const ImageFolderOptions& options, ImageFolderReport* report) {
  ImageFolderReport local;
  ImageFolderReport& rep = report ? *report : local;
  rep = ImageFolderReport{};
  check(channels >= 1 && channels <= 4,
        dir + ": channels must be 1..4, got " + std::to_string(channels));
  check(height >= 0 && width >= 0 && (height == 0) == (width == 0),
        dir + ": image size must be both positive or both 0 (native), got " +
            std::to_string(height) + "x" + std::to_string(width));

  Listing listing;
  std::string folder;
  try {
    listing = list_folder(dir);
    folder = fs::canonical(dir).string();
  } catch (const fs::filesystem_error& e) {
    throw Error(dir + ": cannot list the image folder (" + e.what() + ")");
  }
  if (height == 0) {
    const std::string first = listing.files.front().string();
    int w = 0, h = 0;
    const std::string problem = undecodable(detail::read_file(first), &w, &h);
    check(problem.empty(), [&] { return first + ": cannot decode image (" + problem + ")"; });
    height = h;
    width = w;
  }

  // parent:leaf, e.g. "cifar10-jpeg:train".
  const fs::path cpath(folder);
  const std::string name = cpath.parent_path().filename().string() + ":" + cpath.filename().string();

  fs::path cache_path;
  if (options.use_cache) {
    Fnv64 key;
    key.str(folder);
    key.u64(static_cast<uint64_t>(channels));
    key.u64(static_cast<uint64_t>(height));
    key.u64(static_cast<uint64_t>(width));
    key.u64(kVersion);
    const std::string cache_dir = options.cache_dir.empty() ? default_cache_dir() : options.cache_dir;
    cache_path = fs::path(cache_dir) / (hex64(key.h) + ".dnnsimg");
    rep.cache_path = cache_path.string();
    std::optional<Dataset> cached =
        read_cache(cache_path, folder, channels, height, width, listing, rep.cache_problem);
    if (cached) {
      rep.cache_hit = true;
      cached->name = name;
      return std::move(*cached);
    }
  }

  Dataset d = decode_all(listing, channels, height, width);
  d.name = name;
  rep.images_decoded = d.size();
  if (options.use_cache) {
    const std::string problem = write_cache(cache_path, folder, d, listing.fingerprint);
    rep.cache_written = problem.empty();
    if (!problem.empty())
      rep.cache_problem = rep.cache_problem.empty() ? problem : rep.cache_problem + "; " + problem;
  }
  return d;
}

std::vector<uint8_t> load_image_file(const std::string& path, int channels, int height, int width, int* native_h,
                                     int* native_w) {
  check(channels == 1 || channels == 3, path + ": images are read with 1 or 3 channels, not " + std::to_string(channels));
  check(height > 0 && width > 0, path + ": target size must be positive, got " + std::to_string(height) + "x" +
                                     std::to_string(width));
  std::vector<uint8_t> out(size_t(channels) * height * width);  // (C, H, W)
  std::string error;
  if (!decode_image(path, channels, height, width, out.data(), &error, native_h, native_w)) throw Error(error);
  return out;
}

}  // namespace dnns
