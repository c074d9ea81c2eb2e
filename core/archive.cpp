#include "core/archive.h"
#include "core/fs.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>
#include <vector>

#include "core/error.h"
#include "core/sparse.h"

namespace dnns {

namespace {

constexpr char kMagic[8] = {'D', 'N', 'N', 'S', 'H', 'I', 'F', 'T'};
constexpr char kEndMarker[8] = {'E', 'N', 'D', 'S', 'H', 'I', 'F', 'T'};
constexpr uint64_t kHeaderBytes = 16;                  // magic, version, flags
constexpr uint64_t kTrailerBytes = 4 + 8;              // CRC-32, end marker
constexpr uint32_t kMaxNameBytes = 4096;               // kind, meta keys, tensor names
constexpr uint32_t kMaxDims = 8;
constexpr int64_t kMaxDim = int64_t(1) << 40;          // no real tensor comes near; stops overflow
constexpr size_t kIoChunk = size_t(1) << 20;           // buffered writes, skipped tensor data

// CRC-32 tables for "slicing by 8": table[0][b] is the register after shifting byte b through
// it (the classic byte-at-a-time table); table[k][b] is the same byte followed by k zero bytes.
// Eight lookups then consume eight input bytes at once, ~6x faster than one byte per step,
// which matters when a checkpoint of hundreds of MB is checksummed on every save and load.
using CrcTables = std::array<std::array<uint32_t, 256>, 8>;
constexpr CrcTables make_crc_tables() {
  CrcTables t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
    t[0][i] = c;
  }
  for (int k = 1; k < 8; ++k)
    for (uint32_t i = 0; i < 256; ++i) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xFFu];
  return t;
}
constexpr CrcTables kCrc = make_crc_tables();

void put_le32(unsigned char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
void put_le64(unsigned char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<unsigned char>(v >> (8 * i));
}
uint32_t get_le32(const unsigned char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t(p[i]) << (8 * i);
  return v;
}
uint64_t get_le64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t(p[i]) << (8 * i);
  return v;
}

// Tensor data is stored little-endian; on a big-endian host each float is byte-swapped in place
// (the conversion is its own inverse, so it serves both directions).
void swap_floats_if_big_endian(float* x, size_t n) {
  if constexpr (std::endian::native == std::endian::big) {
    for (size_t i = 0; i < n; ++i) {
      uint32_t bits = std::bit_cast<uint32_t>(x[i]);
      bits = (bits >> 24) | ((bits >> 8) & 0xFF00u) | ((bits << 8) & 0xFF0000u) | (bits << 24);
      x[i] = std::bit_cast<float>(bits);
    }
  } else {
    (void)x;
    (void)n;
  }
}

std::string quote_name(const std::string& name) {
  // Names may hold any byte; keep messages printable and short.
  std::string out = "'";
  for (size_t i = 0; i < name.size() && i < 80; ++i) {
    unsigned char c = static_cast<unsigned char>(name[i]);
    if (c >= 32 && c < 127) out += static_cast<char>(c);
    else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  if (name.size() > 80) out += "...";
  return out + "'";
}

// ---------------------------------------------------------------------------------------------
// Writing

class ArchiveWriter {
 public:
  ArchiveWriter(const std::string& path, const std::string& tmp_path) : path_(path), tmp_(tmp_path) {
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0)
      throw Error(path_ + ": cannot create temporary file '" + tmp_ + "': " + std::strerror(errno));
    buf_.reserve(kIoChunk);
  }
  ~ArchiveWriter() {
    // Reached with the file still open only when writing failed: leave nothing behind.
    if (fd_ >= 0) {
      ::close(fd_);
      ::unlink(tmp_.c_str());
    }
  }

  void bytes(const void* data, size_t n) {
    crc_ = crc32_update(crc_, data, n);
    const unsigned char* p = static_cast<const unsigned char*>(data);
    if (buf_.size() + n > kIoChunk) flush();
    if (n >= kIoChunk) write_all(p, n);  // large tensors go straight to the file
    else buf_.insert(buf_.end(), p, p + n);
  }
  void u32(uint32_t v) {
    unsigned char b[4];
    put_le32(b, v);
    bytes(b, 4);
  }
  void u64(uint64_t v) {
    unsigned char b[8];
    put_le64(b, v);
    bytes(b, 8);
  }
  void floats(const float* x, size_t n) {
    if constexpr (std::endian::native == std::endian::little) {
      bytes(x, n * sizeof(float));
    } else {
      std::vector<float> chunk;
      for (size_t i = 0; i < n; i += kIoChunk / sizeof(float)) {
        size_t m = std::min(n - i, kIoChunk / sizeof(float));
        chunk.assign(x + i, x + i + m);
        swap_floats_if_big_endian(chunk.data(), m);
        bytes(chunk.data(), m * sizeof(float));
      }
    }
  }
  uint32_t crc() const { return crc_; }

  // Flushes, fsyncs and closes; after this the destructor leaves the file alone.
  void finish() {
    flush();
    if (::fsync(fd_) != 0) fail("fsync");
    int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) {
      ::unlink(tmp_.c_str());
      throw Error(path_ + ": closing temporary file '" + tmp_ + "' failed: " + std::strerror(errno));
    }
  }

 private:
  void flush() {
    if (!buf_.empty()) write_all(buf_.data(), buf_.size());
    buf_.clear();
  }
  void write_all(const unsigned char* p, size_t n) {
    while (n > 0) {
      ssize_t w = ::write(fd_, p, n);
      if (w < 0) {
        if (errno == EINTR) continue;
        fail("write");
      }
      p += w;
      n -= static_cast<size_t>(w);
    }
  }
  [[noreturn]] void fail(const char* op) {
    throw Error(path_ + ": " + op + " to temporary file '" + tmp_ + "' failed: " + std::strerror(errno));
  }

  std::string path_, tmp_;
  int fd_ = -1;
  std::vector<unsigned char> buf_;
  uint32_t crc_ = 0;
};

void check_name_length(const std::string& path, const char* what, const std::string& name) {
  if (name.size() > kMaxNameBytes)
    throw Error(path + ": cannot save: " + what + " " + quote_name(name) + " is " +
                std::to_string(name.size()) + " bytes long (the format allows at most " +
                std::to_string(kMaxNameBytes) + ")");
}

// ---------------------------------------------------------------------------------------------
// Reading

// A structural problem found while parsing: the caller decides whether to report it as such or
// as corruption (when the checksum says the file was damaged).
struct StructureError {
  std::string what;
};

class ArchiveReader {
 public:
  explicit ArchiveReader(const std::string& path) : path_(path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    fs::file_status st = fs::status(path, ec);
    if (st.type() == fs::file_type::not_found) throw Error(path + ": file not found");
    if (ec) throw Error(path + ": cannot access: " + ec.message());
    if (fs::is_directory(st)) throw Error(path + ": is a directory, not an archive file");
    file_ = std::fopen(path.c_str(), "rb");
    if (!file_) throw Error(path + ": cannot open for reading: " + std::strerror(errno));
    struct stat sb;
    if (::fstat(::fileno(file_), &sb) != 0) {
      int err = errno;
      std::fclose(file_);
      throw Error(path + ": cannot read file size: " + std::strerror(err));
    }
    size_ = static_cast<uint64_t>(sb.st_size);
  }
  ~ArchiveReader() { std::fclose(file_); }
  ArchiveReader(const ArchiveReader&) = delete;
  ArchiveReader& operator=(const ArchiveReader&) = delete;

  uint64_t size() const { return size_; }
  uint64_t offset() const { return offset_; }
  uint64_t remaining() const { return size_ - offset_; }
  uint32_t crc() const { return crc_; }
  const std::string& path() const { return path_; }

  [[noreturn]] void malformed(const std::string& what) const {
    throw StructureError{"malformed archive: " + what};
  }

  // A count of `count` entries of at least `min_bytes` each that the rest of the file cannot
  // hold: the file was cut short (or, as the caller finds out, corrupted).
  [[noreturn]] void too_short(const std::string& what, uint64_t count, uint64_t min_bytes) const {
    throw StructureError{"truncated: " + what + " at offset " + std::to_string(offset_ - 8) +
                         " needs at least " + std::to_string(count) + " x " + std::to_string(min_bytes) +
                         " bytes, but only " + std::to_string(remaining()) + " are left in the file (" +
                         std::to_string(size_) + " bytes)"};
  }

  // Reads `n` bytes of `what` into `dst`; a file too short for them is truncated.
  void read(void* dst, uint64_t n, const std::string& what) {
    if (n > remaining())
      throw StructureError{"truncated: " + what + " needs " + std::to_string(n) + " bytes at offset " +
                           std::to_string(offset_) + ", but the file ends at byte " +
                           std::to_string(size_)};
    read_raw(dst, n);
    crc_ = crc32_update(crc_, dst, n);
  }
  // Reads `n` bytes that are checksummed but not kept (tensor data for load_archive_meta).
  void skip(uint64_t n, const std::string& what) {
    if (n > remaining()) read(nullptr, n, what);  // throws the truncation message
    std::vector<unsigned char> chunk(std::min<uint64_t>(n, kIoChunk));
    while (n > 0) {
      uint64_t m = std::min<uint64_t>(n, chunk.size());
      read(chunk.data(), m, what);
      n -= m;
    }
  }
  uint32_t u32(const std::string& what) {
    unsigned char b[4];
    read(b, 4, what);
    return get_le32(b);
  }
  uint64_t u64(const std::string& what) {
    unsigned char b[8];
    read(b, 8, what);
    return get_le64(b);
  }
  std::string string(const std::string& what, uint64_t max_bytes) {
    uint32_t n = u32(what + " length");
    if (n > max_bytes)
      malformed(what + " length " + std::to_string(n) + " at offset " + std::to_string(offset_ - 4) +
                " exceeds the limit of " + std::to_string(max_bytes) + " bytes");
    std::string s(n, '\0');
    read(s.data(), n, what);
    return s;
  }
  std::string long_string(const std::string& what) {  // u64 length, bounded by the file
    uint64_t n = u64(what + " length");
    if (n > remaining())
      throw StructureError{"truncated: " + what + " of " + std::to_string(n) + " bytes at offset " +
                           std::to_string(offset_) + " runs past the end of the file (" +
                           std::to_string(size_) + " bytes)"};
    std::string s(n, '\0');
    read(s.data(), n, what);
    return s;
  }

  // The stored CRC at the end of the file against one computed over everything before it,
  // independent of the structure: tells a damaged file from a truncated or malformed one.
  enum class Integrity { NoTrailer, ChecksumMatches, ChecksumMismatch };
  Integrity integrity_by_trailer() {
    if (size_ < kHeaderBytes + kTrailerBytes) return Integrity::NoTrailer;
    uint64_t body = size_ - kTrailerBytes;
    unsigned char trailer[kTrailerBytes];
    if (::fseeko(file_, static_cast<off_t>(body), SEEK_SET) != 0 ||
        std::fread(trailer, 1, kTrailerBytes, file_) != kTrailerBytes ||
        std::memcmp(trailer + 4, kEndMarker, 8) != 0 || ::fseeko(file_, 0, SEEK_SET) != 0)
      return Integrity::NoTrailer;
    std::vector<unsigned char> chunk(static_cast<size_t>(std::min<uint64_t>(body, kIoChunk)));
    uint32_t crc = 0;
    for (uint64_t done = 0; done < body;) {
      size_t m = static_cast<size_t>(std::min<uint64_t>(body - done, chunk.size()));
      if (std::fread(chunk.data(), 1, m, file_) != m) return Integrity::NoTrailer;
      crc = crc32_update(crc, chunk.data(), m);
      done += m;
    }
    return get_le32(trailer) == crc ? Integrity::ChecksumMatches : Integrity::ChecksumMismatch;
  }

 private:
  void read_raw(void* dst, uint64_t n) {
    if (n == 0) return;
    if (std::fread(dst, 1, static_cast<size_t>(n), file_) != n)
      throw Error(path_ + ": read error at offset " + std::to_string(offset_) + ": " +
                  (std::ferror(file_) ? std::strerror(errno) : "file shrank while reading"));
    offset_ += n;
  }

  std::string path_;
  std::FILE* file_ = nullptr;
  uint64_t size_ = 0;
  uint64_t offset_ = 0;
  uint32_t crc_ = 0;
};

// Magic, version and flags. Problems here are reported as they are, never as corruption: a
// file of another kind or of a newer format is not a damaged archive.
uint32_t read_header(ArchiveReader& r) {
  const std::string& path = r.path();
  if (r.size() == 0) throw Error(path + ": empty file (0 bytes), not a dnnshifter archive");
  unsigned char head[kHeaderBytes];
  uint64_t have = std::min<uint64_t>(r.size(), kHeaderBytes);
  r.read(head, have, "header");  // cannot run short: `have` is what the file holds
  if (std::memcmp(head, kMagic, std::min<uint64_t>(have, 8)) != 0)
    throw Error(path + ": not a dnnshifter archive (bad magic: the file does not start with \"DNNSHIFT\")");
  if (have < kHeaderBytes)
    throw Error(path + ": truncated: the header needs " + std::to_string(kHeaderBytes) +
                " bytes, but the file has only " + std::to_string(r.size()));
  uint32_t version = get_le32(head + 8);
  if (version != kArchiveFormatVersion && version != kArchiveFormatVersionDense)
    throw Error(path + ": unsupported archive format version " + std::to_string(version) +
                " (this build reads versions " + std::to_string(kArchiveFormatVersionDense) + " and " +
                std::to_string(kArchiveFormatVersion) + ")");
  uint32_t flags = get_le32(head + 12);
  if (flags != 0)
    throw Error(path + ": unsupported archive flags 0x" + [&] {
      char buf[16];
      std::snprintf(buf, sizeof buf, "%08x", flags);
      return std::string(buf);
    }() + " (this build reads only flags 0)");
  return version;
}

// Tensor records of format version 2 (see archive.h): how a tensor's values are stored.
constexpr uint8_t kDense = 0, kSparse = 1, kOnes = 2, kOnesAtSupportOf = 3;

struct SparseRecord {
  Shape shape;
  SparseIndex index;
  bool ones = false;  // values all 1.0 (no values stored)
};

// A sparse or ones record's support: coding, count, index bytes, checked to describe exactly
// `count` positions among the tensor's `numel` values.
SparseRecord read_support(ArchiveReader& r, const std::string& label, uint64_t numel) {
  SparseRecord rec;
  uint8_t coding = 0;
  r.read(&coding, 1, label + " index coding");
  if (coding != static_cast<uint8_t>(IndexCoding::Bitmap) && coding != static_cast<uint8_t>(IndexCoding::Gap8))
    r.malformed(label + " has index coding " + std::to_string(coding) + " (known: 1 bitmap, 2 gap8)");
  rec.index.coding = static_cast<IndexCoding>(coding);
  const uint64_t count = r.u64(label + " count");
  const uint64_t len = r.u64(label + " index length");
  if (len > r.remaining())
    throw StructureError{"truncated: " + label + " index of " + std::to_string(len) + " bytes at offset " +
                         std::to_string(r.offset()) + " runs past the end of the file (" + std::to_string(r.size()) +
                         " bytes)"};
  if (!coding_fits(rec.index.coding, len, numel))
    r.malformed(label + ": a " + coding_name(rec.index.coding) + " index of " + std::to_string(len) +
                " bytes cannot describe its " + std::to_string(numel) + " values");
  if (count > numel)
    r.malformed(label + " keeps " + std::to_string(count) + " of its " + std::to_string(numel) + " values");
  rec.index.numel = static_cast<int64_t>(numel);
  rec.index.count = static_cast<int64_t>(count);
  rec.index.bytes.resize(static_cast<size_t>(len));
  r.read(rec.index.bytes.data(), len, label + " index");
  const std::string bad = for_each_position(rec.index.coding, rec.index.bytes.data(), len, numel, count, [](int64_t) {});
  if (!bad.empty()) r.malformed(label + ": " + bad);
  return rec;
}

// dst (numel) = the values at the index's positions (1.0 when values is null), +0.0 elsewhere.
void scatter(const SparseIndex& index, const float* values, float* dst) {
  std::memset(dst, 0, static_cast<size_t>(index.numel) * sizeof(float));
  int64_t e = 0;
  for_each_position(index.coding, index.bytes.data(), index.bytes.size(), static_cast<uint64_t>(index.numel),
                    static_cast<uint64_t>(index.count), [&](int64_t i) { dst[i] = values ? values[e++] : 1.0f; });
}

// Everything after the header. Throws StructureError for truncation and malformed entries,
// Error for a bad checksum, end marker or trailing bytes.
void read_body(ArchiveReader& r, Archive& a, bool with_tensors, uint32_t version) {
  const std::string& path = r.path();
  std::map<std::string, SparseRecord> records;                          // sparse and ones records
  std::map<std::string, std::pair<Shape, std::string>> refs;           // ones at another's support
  a.kind = r.string("kind", kMaxNameBytes);

  uint64_t n_meta = r.u64("meta entry count");
  if (n_meta > r.remaining() / 12)  // each entry has at least its two length fields
    r.too_short("meta entry count " + std::to_string(n_meta), n_meta, 12);
  for (uint64_t i = 0; i < n_meta; ++i) {
    std::string entry = "meta entry " + std::to_string(i);
    std::string key = r.string(entry + " key", kMaxNameBytes);
    std::string value = r.long_string("meta entry " + quote_name(key) + " value");
    if (!a.meta.emplace(std::move(key), std::move(value)).second)
      r.malformed("duplicate meta key in " + entry);
  }

  uint64_t n_tensors = r.u64("tensor count");
  if (n_tensors > r.remaining() / 8)  // each tensor has at least its name length and ndim
    r.too_short("tensor count " + std::to_string(n_tensors), n_tensors, 8);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    std::string name = r.string("tensor " + std::to_string(i) + " name", kMaxNameBytes);
    std::string label = "tensor " + quote_name(name);
    uint32_t ndim = r.u32(label + " ndim");
    if (ndim > kMaxDims)
      r.malformed(label + " has ndim " + std::to_string(ndim) + " (at most " +
                  std::to_string(kMaxDims) + " allowed)");
    Shape shape(ndim);
    bool has_zero = false;
    for (uint32_t d = 0; d < ndim; ++d) {
      shape[d] = static_cast<int64_t>(r.u64(label + " dimension " + std::to_string(d)));
      if (shape[d] < 0 || shape[d] > kMaxDim)
        r.malformed(label + " dimension " + std::to_string(d) + " is " + std::to_string(shape[d]) +
                    " (must be in [0, 2^40])");
      has_zero = has_zero || shape[d] == 0;
    }
    // numel without overflow (every factor is at most 2^40; the product saturates past 2^62).
    // A dense record must fit in the rest of the file, a sparse one in what its index can cover,
    // so nothing is allocated that the file cannot describe.
    const uint64_t max_numel = r.remaining() / sizeof(float);
    uint64_t numel = has_zero ? 0 : 1;
    for (uint32_t d = 0; d < ndim && numel != 0; ++d) {
      uint64_t dim = static_cast<uint64_t>(shape[d]);
      numel = numel > (uint64_t(1) << 62) / dim ? (uint64_t(1) << 62) + 1 : numel * dim;
    }
    std::string data_label = label + " data " + shape_str(shape);
    uint8_t encoding = kDense;
    if (version >= 2) r.read(&encoding, 1, label + " encoding");
    if (encoding == kDense) {
      if (numel > max_numel)
        throw StructureError{"truncated: " + label + " of shape " + shape_str(shape) + " needs more than the " +
                             std::to_string(r.remaining()) + " bytes left after offset " +
                             std::to_string(r.offset()) + " (file has " + std::to_string(r.size()) + " bytes)"};
      if (with_tensors) {
        Tensor t = Tensor::uninit(shape);  // filled completely by the read, or discarded
        r.read(t.data(), numel * sizeof(float), data_label);
        swap_floats_if_big_endian(t.data(), numel);
        if (!a.tensors.emplace(name, std::move(t)).second) r.malformed("duplicate " + label);
      } else {
        r.skip(numel * sizeof(float), data_label);
      }
    } else if (encoding == kSparse || encoding == kOnes) {
      SparseRecord rec = read_support(r, label, numel);
      Tensor t;
      if (with_tensors) t = Tensor::uninit(shape);
      if (encoding == kSparse) {
        if (static_cast<uint64_t>(rec.index.count) > r.remaining() / sizeof(float))
          r.too_short(label + " values", static_cast<uint64_t>(rec.index.count), sizeof(float));
        std::vector<float> values(static_cast<size_t>(rec.index.count));  // at most the file's bytes
        r.read(values.data(), values.size() * sizeof(float), label + " values");
        swap_floats_if_big_endian(values.data(), values.size());
        if (with_tensors) scatter(rec.index, values.data(), t.data());
      } else if (with_tensors) {
        scatter(rec.index, nullptr, t.data());
      }
      if (with_tensors && !a.tensors.emplace(name, std::move(t)).second) r.malformed("duplicate " + label);
      rec.shape = shape;
      rec.ones = encoding == kOnes;
      if (!records.emplace(name, std::move(rec)).second) r.malformed("duplicate " + label);
    } else if (encoding == kOnesAtSupportOf) {
      std::string target = r.string(label + " support name", kMaxNameBytes);
      if (!refs.emplace(name, std::make_pair(shape, target)).second) r.malformed("duplicate " + label);
      if (a.tensors.count(name)) r.malformed("duplicate " + label);
    } else {
      r.malformed(label + " has encoding " + std::to_string(encoding) + " (known: 0 dense, 1 sparse, 2 ones, 3 ones at the support of another tensor)");
    }
  }
  // Each "ones at the support of" record takes the support of a sparse record of its shape; a
  // record lends its support at most once (so no file makes the reader allocate a tensor's
  // values twice for one index).
  std::set<std::string> lent;
  for (auto& [name, ref] : refs) {
    const auto& [shape, target] = ref;
    std::string label = "tensor " + quote_name(name);
    auto it = records.find(target);
    if (it == records.end() || it->second.ones)
      r.malformed(label + " takes the support of " + quote_name(target) + ", which is not a sparse tensor of the file");
    if (it->second.shape != shape)
      r.malformed(label + " of shape " + shape_str(shape) + " takes the support of " + quote_name(target) +
                  " of shape " + shape_str(it->second.shape));
    if (!lent.insert(target).second)
      r.malformed(label + " takes the support of " + quote_name(target) + ", which another tensor took already");
    if (records.count(name) || a.tensors.count(name)) r.malformed("duplicate " + label);
    if (with_tensors) {
      Tensor t = Tensor::uninit(shape);
      scatter(it->second.index, nullptr, t.data());
      a.tensors.emplace(name, std::move(t));
    }
  }

  uint32_t computed = r.crc();
  uint32_t stored = r.u32("checksum");
  if (stored != computed) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "stored 0x%08x, computed 0x%08x", stored, computed);
    throw Error(path + ": checksum mismatch (file corrupt): " + buf);
  }
  char marker[8];
  r.read(marker, 8, "end marker");
  if (std::memcmp(marker, kEndMarker, 8) != 0)
    throw Error(path + ": bad end marker at offset " + std::to_string(r.offset() - 8) + " (file corrupt)");
  if (r.remaining() != 0)
    throw Error(path + ": " + std::to_string(r.remaining()) + " trailing bytes after the end marker (archive ends at offset " +
                std::to_string(r.offset()) + ", file has " + std::to_string(r.size()) + " bytes)");
}

Archive load_impl(const std::string& path, bool with_tensors) {
  ArchiveReader r(path);
  const uint32_t version = read_header(r);
  Archive a;
  a.format_version = version;
  try {
    read_body(r, a, with_tensors, version);
  } catch (const StructureError& e) {
    // A flipped bit in a length field shows up as a structural problem; when the trailer is
    // intact but the checksum disagrees, the honest diagnosis is corruption.
    if (r.integrity_by_trailer() == ArchiveReader::Integrity::ChecksumMismatch)
      throw Error(path + ": checksum mismatch (file corrupt; the first inconsistency: " + e.what + ")");
    throw Error(path + ": " + e.what);
  }
  return a;
}

}  // namespace

uint32_t crc32_update(uint32_t crc, const void* data, size_t n) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  uint32_t c = ~crc;
  for (; n >= 8; p += 8, n -= 8) {
    uint32_t lo = get_le32(p) ^ c, hi = get_le32(p + 4);
    c = kCrc[7][lo & 0xFFu] ^ kCrc[6][(lo >> 8) & 0xFFu] ^ kCrc[5][(lo >> 16) & 0xFFu] ^ kCrc[4][lo >> 24] ^
        kCrc[3][hi & 0xFFu] ^ kCrc[2][(hi >> 8) & 0xFFu] ^ kCrc[1][(hi >> 16) & 0xFFu] ^ kCrc[0][hi >> 24];
  }
  for (; n > 0; ++p, --n) c = kCrc[0][(c ^ *p) & 0xFFu] ^ (c >> 8);
  return ~c;
}

namespace {

// How save_archive stores one tensor in format version 2.
struct RecordPlan {
  uint8_t encoding = kDense;
  SparseIndex index;       // kSparse, kOnes
  std::string support_of;  // kOnesAtSupportOf
};

// Record bytes after the encoding byte: coding, count, index length, index (+ values).
int64_t support_record_bytes(const SparseIndex& idx) { return 1 + 8 + 8 + static_cast<int64_t>(idx.bytes.size()); }

// The smallest record of every tensor. A mask "mask:<w>" (0.0 and 1.0 only) whose weight <w> is
// +0.0 wherever the mask is 0 lends its support to the weight: <w> is stored sparse at the
// mask's positions (a kept weight that is exactly 0.0 is stored there too), and the mask as "ones
// at the support of <w>", a dozen bytes, so the pruning state comes back exact. Any other tensor:
// sparse over its values that are not +0.0 (all 1.0: ones, without values) when that is smaller
// than dense.
std::map<std::string, RecordPlan> plan_records(const Archive& a, const std::map<std::string, const float*>& host) {
  std::map<std::string, RecordPlan> plans;
  auto bits = [](const float* x, int64_t i) { return std::bit_cast<uint32_t>(x[i]); };
  constexpr uint32_t kOne = 0x3F800000u;
  for (const auto& [name, t] : a.tensors) {
    if (name.rfind(kMaskPrefix, 0) != 0) continue;
    auto w = a.tensors.find(name.substr(std::strlen(kMaskPrefix)));
    // (Neither record may be planned already: "mask:mask:x" may have claimed "mask:x" as its weight.)
    if (w == a.tensors.end() || w->second.shape() != t.shape() || plans.count(w->first) || plans.count(name)) continue;
    const float* m = host.at(name);
    const float* x = host.at(w->first);
    const int64_t n = t.numel();
    bool canonical = true;
    for (int64_t i = 0; i < n && canonical; ++i)
      canonical = bits(m, i) == kOne || (bits(m, i) == 0u && bits(x, i) == 0u);
    if (!canonical) continue;
    RecordPlan weight, mask;
    weight.index = encode_support(n, [&](int64_t i) { return bits(m, i) != 0u; });
    if (support_record_bytes(weight.index) + 4 * weight.index.count < 4 * n) {
      weight.encoding = kSparse;
      mask.encoding = kOnesAtSupportOf;
      mask.support_of = w->first;
      plans[w->first] = std::move(weight);
    } else if (support_record_bytes(weight.index) < 4 * n) {
      mask.encoding = kOnes;
      mask.index = std::move(weight.index);
    } else {
      continue;  // a tiny mask: dense, as any other tensor below
    }
    plans[name] = std::move(mask);
  }
  for (const auto& [name, t] : a.tensors) {
    if (plans.count(name)) continue;
    const float* x = host.at(name);
    const int64_t n = t.numel();
    RecordPlan p;
    p.index = encode_support(n, [&](int64_t i) { return bits(x, i) != 0u; });
    bool ones = true;
    for (int64_t i = 0; i < n && ones; ++i) ones = bits(x, i) == 0u || bits(x, i) == kOne;
    const int64_t sparse = support_record_bytes(p.index) + (ones ? 0 : 4 * p.index.count);
    if (sparse < 4 * n) p.encoding = ones ? kOnes : kSparse;
    else p.index = SparseIndex{};
    plans[name] = std::move(p);
  }
  return plans;
}

}  // namespace

void save_archive(const std::string& path, const Archive& a, const ArchiveWriteOptions& options) {
  namespace fs = std::filesystem;
  // Refuse what load_archive would refuse before creating any file.
  check_name_length(path, "kind", a.kind);
  for (const auto& [key, value] : a.meta) check_name_length(path, "meta key", key);
  for (const auto& [name, t] : a.tensors) {
    check_name_length(path, "tensor name", name);
    if (!t.defined())
      throw Error(path + ": cannot save: tensor " + quote_name(name) +
                  " is undefined (default-constructed); leave it out of the archive");
    if (t.ndim() > static_cast<int>(kMaxDims))
      throw Error(path + ": cannot save: tensor " + quote_name(name) + " of shape " + shape_str(t.shape()) +
                  " has more than " + std::to_string(kMaxDims) + " dimensions");
    for (int64_t d : t.shape())
      if (d > kMaxDim)
        throw Error(path + ": cannot save: tensor " + quote_name(name) + " of shape " + shape_str(t.shape()) +
                    " has a dimension above 2^40");
  }
  if (options.format_version != kArchiveFormatVersion && options.format_version != kArchiveFormatVersionDense)
    throw Error(path + ": cannot save: archive format version " + std::to_string(options.format_version) +
                " (this build writes versions " + std::to_string(kArchiveFormatVersionDense) + " and " +
                std::to_string(kArchiveFormatVersion) + ")");
  if (!is_file_writer()) return;  // another rank of a data-parallel run writes it
  fs::path folder = fs::path(path).parent_path();
  std::error_code ec;
  if (!folder.empty() && !fs::is_directory(folder, ec))
    throw Error(path + ": cannot save: folder '" + folder.string() + "' does not exist");

  // Host copies of CUDA tensors, and every tensor's record.
  std::map<std::string, std::vector<float>> copies;
  std::map<std::string, const float*> host;
  for (const auto& [name, t] : a.tensors) {
    if (t.is_cpu()) host[name] = t.data();
    else host[name] = (copies[name] = t.to_vector()).data();
  }
  const bool sparse = options.format_version >= 2;
  std::map<std::string, RecordPlan> plans;
  if (sparse) plans = plan_records(a, host);

  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    ArchiveWriter w(path, tmp);
    w.bytes(kMagic, 8);
    w.u32(options.format_version);
    w.u32(0);  // flags
    w.u32(static_cast<uint32_t>(a.kind.size()));
    w.bytes(a.kind.data(), a.kind.size());
    w.u64(a.meta.size());
    for (const auto& [key, value] : a.meta) {
      w.u32(static_cast<uint32_t>(key.size()));
      w.bytes(key.data(), key.size());
      w.u64(value.size());
      w.bytes(value.data(), value.size());
    }
    w.u64(a.tensors.size());
    for (const auto& [name, t] : a.tensors) {
      w.u32(static_cast<uint32_t>(name.size()));
      w.bytes(name.data(), name.size());
      w.u32(static_cast<uint32_t>(t.ndim()));
      for (int64_t d : t.shape()) w.u64(static_cast<uint64_t>(d));
      const float* x = host.at(name);  // (numel)
      if (!sparse) {
        w.floats(x, static_cast<size_t>(t.numel()));
        continue;
      }
      const RecordPlan& p = plans.at(name);
      w.bytes(&p.encoding, 1);
      if (p.encoding == kDense) {
        w.floats(x, static_cast<size_t>(t.numel()));
      } else if (p.encoding == kOnesAtSupportOf) {
        w.u32(static_cast<uint32_t>(p.support_of.size()));
        w.bytes(p.support_of.data(), p.support_of.size());
      } else {
        const uint8_t coding = static_cast<uint8_t>(p.index.coding);
        w.bytes(&coding, 1);
        w.u64(static_cast<uint64_t>(p.index.count));
        w.u64(p.index.bytes.size());
        w.bytes(p.index.bytes.data(), p.index.bytes.size());
        if (p.encoding == kSparse) {
          std::vector<float> values;
          values.reserve(static_cast<size_t>(p.index.count));
          for_each_position(p.index.coding, p.index.bytes.data(), p.index.bytes.size(),
                            static_cast<uint64_t>(t.numel()), static_cast<uint64_t>(p.index.count),
                            [&](int64_t i) { values.push_back(x[i]); });
          w.floats(values.data(), values.size());
        }
      }
    }
    w.u32(w.crc());
    w.bytes(kEndMarker, 8);
    w.finish();
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    throw Error(path + ": cannot rename temporary file '" + tmp + "' over it: " + std::strerror(err));
  }
  // The rename itself lives in the folder; syncing the folder makes it survive a power cut.
  // Some file systems refuse fsync on folders: the data is already safe then, so a failure
  // here is not an error.
  int dir_fd = ::open(folder.empty() ? "." : folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    (void)::fsync(dir_fd);
    ::close(dir_fd);
  }
}

Archive load_archive(const std::string& path) { return load_impl(path, true); }

Archive load_archive_meta(const std::string& path) { return load_impl(path, false); }

// ---------------------------------------------------------------------------------------------
// Run state in meta

void meta_set_u64(Archive& a, const std::string& key, uint64_t v) { a.meta[key] = std::to_string(v); }

uint64_t meta_get_u64(const Archive& a, const std::string& key) {
  auto it = a.meta.find(key);
  if (it == a.meta.end()) throw Error("archive meta " + quote_name(key) + " is missing");
  const std::string& s = it->second;
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v, 10);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size())
    throw Error("archive meta " + quote_name(key) + " holds " + quote_name(s) +
                ", which is not an unsigned 64-bit integer");
  return v;
}

void meta_set_f64(Archive& a, const std::string& key, double v) {
  if (std::isnan(v)) {
    // Hex float text has no room for a NaN payload; keep the bits themselves.
    char buf[32];
    std::snprintf(buf, sizeof buf, "nan:0x%016llx",
                  static_cast<unsigned long long>(std::bit_cast<uint64_t>(v)));
    a.meta[key] = buf;
    return;
  }
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, std::fabs(v), std::chars_format::hex);
  (void)ec;  // 64 chars always hold a hex double
  std::string digits(buf, end);
  std::string sign = std::signbit(v) ? "-" : "";
  a.meta[key] = std::isinf(v) ? sign + digits : sign + "0x" + digits;
}

double meta_get_f64(const Archive& a, const std::string& key) {
  auto it = a.meta.find(key);
  if (it == a.meta.end()) throw Error("archive meta " + quote_name(key) + " is missing");
  const std::string& s = it->second;
  auto bad = [&] {
    return Error("archive meta " + quote_name(key) + " holds " + quote_name(s) + ", which is not a number");
  };
  if (s.rfind("nan:0x", 0) == 0) {
    uint64_t bits = 0;
    const char* first = s.data() + 6;
    const char* last = s.data() + s.size();
    auto [end, ec] = std::from_chars(first, last, bits, 16);
    double v = std::bit_cast<double>(bits);
    if (first == last || ec != std::errc() || end != last || !std::isnan(v)) throw bad();
    return v;
  }
  size_t pos = 0;
  bool negative = false;
  if (pos < s.size() && (s[pos] == '-' || s[pos] == '+')) negative = s[pos++] == '-';
  std::chars_format fmt = std::chars_format::general;
  if (s.size() - pos > 2 && s[pos] == '0' && (s[pos + 1] == 'x' || s[pos + 1] == 'X')) {
    pos += 2;
    fmt = std::chars_format::hex;
  }
  // A second sign after the one taken above would be accepted by from_chars; refuse it.
  if (pos >= s.size() || s[pos] == '-' || s[pos] == '+') throw bad();
  double v = 0.0;
  const char* last = s.data() + s.size();
  auto [end, ec] = std::from_chars(s.data() + pos, last, v, fmt);
  if (ec != std::errc() || end != last) throw bad();
  return negative ? -v : v;
}

const Tensor& archive_tensor(const Archive& a, const std::string& name, const Shape& expected_shape,
                             const std::string& path_for_errors) {
  auto it = a.tensors.find(name);
  if (it == a.tensors.end()) {
    std::string held;
    size_t shown = 0;
    for (const auto& [n, t] : a.tensors) {
      if (shown == 8) {
        held += ", ...";
        break;
      }
      held += (shown++ ? ", " : "") + quote_name(n);
    }
    throw Error(path_for_errors + ": tensor " + quote_name(name) + " is missing (the archive holds " +
                std::to_string(a.tensors.size()) + " tensors" + (held.empty() ? "" : ": " + held) + ")");
  }
  check_shape(it->second.shape(), expected_shape, path_for_errors + ": tensor " + quote_name(name));
  return it->second;
}

}  // namespace dnns
