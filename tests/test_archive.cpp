// Checkpoint archives: exact round trips, and refusal (with a message naming the file and the
// problem) of every missing, foreign, newer, truncated, corrupt or padded file.
#include <doctest/doctest.h>
#include <unistd.h>

#include <atomic>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <new>
#include <string>
#include <vector>

#include "core/archive.h"
#include "core/error.h"
#include "core/rng.h"
#include "tests/test_util.h"

// The largest single operator-new request since the last reset: proves that a corrupt length
// field cannot make the loader allocate more than the file could hold.
static std::atomic<size_t> g_largest_new{0};
static void note_new(size_t n) {
  size_t seen = g_largest_new.load(std::memory_order_relaxed);
  while (n > seen && !g_largest_new.compare_exchange_weak(seen, n, std::memory_order_relaxed)) {
  }
}
void* operator new(size_t n) {
  note_new(n);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t n) {
  note_new(n);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
// GCC, seeing operator new inlined as malloc's partner, would warn that free() is called on a
// pointer from operator new; with both replaced as a pair that is exactly right.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

namespace fs = std::filesystem;
using namespace dnns;
using dnns::testing::contains;
using dnns::testing::error_of;
using dnns::testing::same_bits;
using dnns::testing::TempDir;

namespace {

std::vector<unsigned char> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<unsigned char>(std::istreambuf_iterator<char>(f), {});
}
void write_bytes(const std::string& path, const std::vector<unsigned char>& b) {
  // A fresh file rather than a truncated one: ext4 flushes a file that is truncated and
  // rewritten on close, which made the thousands of small writes below wait on the disk.
  fs::remove(path);
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

// "<prefix><i>" (built by appending: GCC 12 warns falsely on `"literal" + std::string`).
std::string numbered(const char* prefix, size_t i) {
  std::string key = prefix;
  key += std::to_string(i);
  return key;
}

float float_from_bits(uint32_t bits) { return std::bit_cast<float>(bits); }

// An archive with every awkward case: bytes that are not text, tensors of rank 0 to 8, empty
// tensors, and float bit patterns that arithmetic would not preserve.
Archive sample_archive(int64_t large_numel) {
  Archive a;
  a.kind = "checkpoint";
  a.meta["graph"] = "{\"model\": \"resnet20\",\n \"width\": 16}\n";
  a.meta[std::string("bin\0key", 7)] = std::string("a\0b\nc\r\n\xff\x01", 9);
  a.meta[""] = "empty key";
  a.meta["empty value"] = "";
  a.meta["long"] = std::string(100000, 'x');
  a.tensors["scalar"] = Tensor::from({}, {-0.0f});
  a.tensors["no elements"] = Tensor(Shape{0});
  a.tensors["no elements 3d"] = Tensor(Shape{3, 0, 2});
  a.tensors["specials"] = Tensor::from(
      {2, 4}, {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(), -0.0f,
               float_from_bits(0x7fc00001u),   // quiet NaN with a payload
               float_from_bits(0xffa54321u),   // negative signalling NaN
               float_from_bits(0x00000001u),   // smallest denormal
               std::numeric_limits<float>::max(), 1.0f / 3.0f});
  a.tensors["rank8"] = Tensor(Shape{1, 2, 1, 2, 1, 2, 1, 2});
  for (int64_t i = 0; i < 16; ++i) a.tensors["rank8"][i] = static_cast<float>(i) - 7.5f;
  a.tensors[std::string("conv1.weight\0odd", 16)] = Tensor(Shape{4, 3, 3, 3});
  Rng rng(42);
  for (int64_t i = 0; i < 108; ++i) a.tensors[std::string("conv1.weight\0odd", 16)][i] = rng.normal();
  if (large_numel > 0) {
    Tensor big(Shape{large_numel / 1024, 1024});
    uint32_t* bits = reinterpret_cast<uint32_t*>(big.data());
    for (int64_t i = 0; i < big.numel(); ++i) bits[i] = static_cast<uint32_t>(rng.next_u64());  // every pattern
    a.tensors["large"] = big;
  }
  return a;
}

void check_same(const Archive& got, const Archive& want) {
  CHECK(got.kind == want.kind);
  CHECK(got.meta == want.meta);
  REQUIRE(got.tensors.size() == want.tensors.size());
  for (const auto& [name, t] : want.tensors) {
    auto it = got.tensors.find(name);
    REQUIRE_MESSAGE(it != got.tensors.end(), "tensor missing after load: " << name);
    CHECK_MESSAGE(it->second.is_cpu(), name);
    CHECK_MESSAGE(same_bits(it->second, t), "tensor differs after load: " << name);
  }
}

// CRC-32 one bit at a time, straight from the definition, to check the table-driven one.
uint32_t crc32_bitwise(const unsigned char* p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return ~c;
}

// Builds archive bytes by hand, independently of save_archive, so tests can state exactly what
// a crafted file claims. finish() appends a correct checksum and end marker, so the loader's
// structural checks (not the checksum) must catch the problem.
struct RawArchive {
  std::vector<unsigned char> b;
  explicit RawArchive(uint32_t version = 1) {
    bytes("DNNSHIFT", 8);
    u32(version);
    u32(0);
  }
  void bytes(const void* p, size_t n) {
    const unsigned char* c = static_cast<const unsigned char*>(p);
    b.insert(b.end(), c, c + n);
  }
  void u32(uint32_t v) {
    for (int i = 0; i < 4; ++i) b.push_back(static_cast<unsigned char>(v >> (8 * i)));
  }
  void u64(uint64_t v) {
    for (int i = 0; i < 8; ++i) b.push_back(static_cast<unsigned char>(v >> (8 * i)));
  }
  void str(const std::string& s) {
    u32(static_cast<uint32_t>(s.size()));
    bytes(s.data(), s.size());
  }
  std::vector<unsigned char> finish() {
    std::vector<unsigned char> out = b;
    uint32_t crc = crc32_bitwise(out.data(), out.size());
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<unsigned char>(crc >> (8 * i)));
    out.insert(out.end(), {'E', 'N', 'D', 'S', 'H', 'I', 'F', 'T'});
    return out;
  }
};

// Loads `bytes` written to `path` and returns the refusal message; also checks that the
// message starts with the path and that nothing larger than `alloc_limit` was requested.
std::string refusal(const std::string& path, const std::vector<unsigned char>& bytes,
                    size_t alloc_limit = size_t(4) << 20) {
  write_bytes(path, bytes);
  g_largest_new = 0;
  std::string msg = error_of([&] { load_archive(path); });
  CHECK_MESSAGE(g_largest_new.load() <= alloc_limit, "allocated " << g_largest_new.load() << " bytes");
  CHECK_MESSAGE(starts_with(msg, path + ": "), "message: '" << msg << "'");
  return msg;
}

}  // namespace

TEST_CASE("crc32_update matches the IEEE CRC-32 definition") {
  const char* check = "123456789";
  CHECK(crc32_update(0, check, 9) == 0xCBF43926u);  // the standard check value
  CHECK(crc32_update(0, nullptr, 0) == 0u);
  std::vector<unsigned char> data(1000);
  Rng rng(7);
  for (auto& c : data) c = static_cast<unsigned char>(rng.next_u64());
  uint32_t whole = crc32_update(0, data.data(), data.size());
  CHECK(whole == crc32_bitwise(data.data(), data.size()));
  uint32_t pieces = crc32_update(crc32_update(0, data.data(), 333), data.data() + 333, 667);
  CHECK(pieces == whole);  // incremental use, as the streaming reader and writer do
  // Every start alignment and every length up to 40 (the 8-byte loop, its tail, and both).
  for (size_t start = 0; start < 8; ++start)
    for (size_t len = 0; len <= 40; ++len)
      CHECK_MESSAGE(crc32_update(0, data.data() + start, len) == crc32_bitwise(data.data() + start, len),
                    "start " << start << ", length " << len);
}

TEST_CASE("round trip keeps kind, meta bytes and tensor bits exactly") {
  TempDir tmp;
  std::string path = (tmp / "model.dnns");
  Archive a = sample_archive(int64_t(1) << 20);  // ~1M floats of random bit patterns
  save_archive(path, a);
  Archive b = load_archive(path);
  check_same(b, a);

  {  // the 0-d tensor holds one value, the empty ones none
    CHECK(b.tensors.at("scalar").shape() == Shape{});
    CHECK(b.tensors.at("scalar").numel() == 1);
    CHECK(std::signbit(b.tensors.at("scalar")[0]));
    CHECK(b.tensors.at("no elements").shape() == Shape{0});
    CHECK(b.tensors.at("no elements 3d").shape() == Shape{3, 0, 2});
    CHECK(b.tensors.at("no elements 3d").numel() == 0);
  }
  {  // load_archive_meta reads kind and meta only
    Archive m = load_archive_meta(path);
    CHECK(m.kind == a.kind);
    CHECK(m.meta == a.meta);
    CHECK(m.tensors.empty());
  }
  {  // an empty archive round-trips too
    std::string p2 = (tmp / "empty.dnns");
    save_archive(p2, Archive{});
    Archive e = load_archive(p2);
    CHECK(e.kind.empty());
    CHECK(e.meta.empty());
    CHECK(e.tensors.empty());
    CHECK(fs::file_size(p2) == 16 + 4 + 8 + 8 + 4 + 8);  // header, kind, 2 counts, crc, marker
  }
}

TEST_CASE("the file layout is the documented one") {
  TempDir tmp;
  std::string path = (tmp / "layout.dnns");
  Archive a;
  a.kind = "mask";
  a.meta["k"] = "vv";
  a.tensors["w"] = Tensor::from({2}, {1.0f, -2.0f});
  // Version 1 (on request): every tensor dense, no encoding byte.
  save_archive(path, a, ArchiveWriteOptions{kArchiveFormatVersionDense});
  RawArchive want;
  want.str("mask");
  want.u64(1);
  want.str("k");
  want.u64(2);
  want.bytes("vv", 2);
  want.u64(1);
  want.str("w");
  want.u32(1);
  want.u64(2);
  want.bytes("\x00\x00\x80\x3f\x00\x00\x00\xc0", 8);  // 1.0f, -2.0f little-endian
  CHECK(read_bytes(path) == want.finish());

  // Version 2 (the default): an encoding byte per tensor; two values are smaller dense.
  save_archive(path, a);
  RawArchive want2(2);
  want2.str("mask");
  want2.u64(1);
  want2.str("k");
  want2.u64(2);
  want2.bytes("vv", 2);
  want2.u64(1);
  want2.str("w");
  want2.u32(1);
  want2.u64(2);
  want2.bytes("\x00", 1);  // dense
  want2.bytes("\x00\x00\x80\x3f\x00\x00\x00\xc0", 8);
  CHECK(read_bytes(path) == want2.finish());

  // A sparse tensor: 1000 values, three kept (one of them -0.0, kept to come back exactly).
  Archive s;
  s.kind = "model";
  Tensor t(Shape{1000});
  t[3] = 2.5f, t[300] = -0.0f, t[999] = 1.0f;
  s.tensors["s"] = t;
  save_archive(path, s);
  RawArchive want3(2);
  want3.str("model");
  want3.u64(0);
  want3.u64(1);
  want3.str("s");
  want3.u32(1);
  want3.u64(1000);
  want3.bytes("\x01\x02", 2);  // sparse, gap8
  want3.u64(3);            // kept values
  want3.u64(6);  // index bytes: skip 3, keep (3); skip 255, skip 41, keep (300); 255, 255, skip 188, keep (999)
  want3.bytes("\x03\xff\x29\xff\xff\xbc", 6);
  want3.bytes("\x00\x00\x20\x40" "\x00\x00\x00\x80" "\x00\x00\x80\x3f", 12);  // 2.5, -0.0, 1.0
  CHECK(read_bytes(path) == want3.finish());
  CHECK(same_bits(load_archive(path).tensors.at("s"), t));
}

TEST_CASE("CUDA tensors are copied to host to be written") {
  // With no CUDA backend in this build, a host-memory allocator stands in for the device, so
  // the device path of save_archive is exercised everywhere.
  struct HostAsDevice : DeviceAllocator {
    void* allocate(size_t bytes) override { return std::malloc(bytes); }
    void deallocate(void* p, size_t) override { std::free(p); }
    void copy(void* dst, const void* src, size_t bytes, bool) override { std::memcpy(dst, src, bytes); }
    void copy_on_device(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
    void fill(float* dst, size_t n, float v) override { std::fill(dst, dst + n, v); }
  };
  static HostAsDevice fake;
  DeviceAllocator* real = device_allocator(Device::CUDA);
  if (!real) register_device_allocator(Device::CUDA, &fake);
  {
    TempDir tmp;
    std::string path = (tmp / "cuda.dnns");
    Tensor host = Tensor::from({2, 3}, {1, 2, 3, 4, 5, float_from_bits(0x7fc0beefu)});
    Archive a;
    a.tensors["w"] = host.to(Device::CUDA);
    save_archive(path, a);
    Archive b = load_archive(path);
    CHECK(b.tensors.at("w").is_cpu());
    CHECK(same_bits(b.tensors.at("w"), host));
  }
  if (!real) register_device_allocator(Device::CUDA, nullptr);
}

TEST_CASE("missing, empty, foreign and newer files are refused with the reason") {
  TempDir tmp;
  std::string path = (tmp / "x.dnns");
  std::string msg = error_of([&] { load_archive(path); });
  CHECK(starts_with(msg, path + ": "));
  CHECK(contains(msg, "not found"));
  CHECK(contains(error_of([&] { load_archive_meta(path); }), "not found"));

  CHECK(contains(error_of([&] { load_archive(tmp.str()); }), "is a directory"));

  msg = refusal(path, {});
  CHECK(contains(msg, "empty file"));

  std::string text = "checkpoint written by something else, entirely";
  msg = refusal(path, std::vector<unsigned char>(text.begin(), text.end()));
  CHECK(contains(msg, "not a dnnshifter archive (bad magic"));
  msg = refusal(path, {'D', 'N', 'X'});
  CHECK(contains(msg, "bad magic"));

  Archive a = sample_archive(0);
  save_archive(path, a);
  std::vector<unsigned char> good = read_bytes(path);

  std::vector<unsigned char> v99 = good;
  v99[8] = 99;  // u32 version at offset 8, little-endian
  msg = refusal(path, v99);
  CHECK(contains(msg, "unsupported archive format version 99"));
  CHECK(contains(msg, "this build reads versions 1 and 2"));
  CHECK(contains(error_of([&] { load_archive_meta(path); }), "version 99"));

  // A version 99 file with its own valid checksum: still refused for the version.
  RawArchive future(99);
  future.str("model");
  future.u64(0);
  future.u64(0);
  CHECK(contains(refusal(path, future.finish()), "unsupported archive format version 99"));

  std::vector<unsigned char> flagged = good;
  flagged[12] = 1;
  CHECK(contains(refusal(path, flagged), "unsupported archive flags 0x00000001"));
}

TEST_CASE("a file truncated at any point is refused as truncated") {
  TempDir tmp;
  std::string src = (tmp / "full.dnns");
  std::string path = (tmp / "cut.dnns");
  Archive a = sample_archive(0);
  a.meta["long"] = "short";  // keeps the file small enough to cut at every offset
  save_archive(src, a);
  std::vector<unsigned char> good = read_bytes(src);
  REQUIRE(good.size() > 800);
  int refused = 0;
  for (size_t n = 1; n < good.size(); ++n) {
    std::vector<unsigned char> cut(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n));
    std::string msg = refusal(path, cut);
    bool ok = contains(msg, ": truncated: ");
    CHECK_MESSAGE(ok, "cut at " << n << ": '" << msg << "'");
    refused += ok;
    // load_archive_meta reads the same structure and must refuse the same way.
    if (n % 37 == 0) CHECK(contains(error_of([&] { load_archive_meta(path); }), ": truncated: "));
  }
  CHECK(refused == static_cast<int>(good.size()) - 1);

  // The message locates the cut: inside the data of a named tensor, with the offset.
  std::vector<unsigned char> cut(good.begin(), good.end() - 20);
  std::string msg = refusal(path, cut);
  CHECK(contains(msg, "truncated"));
  CHECK(contains(msg, "offset"));

  // A large archive cut at sampled points, tensor data included.
  Archive big = sample_archive(int64_t(1) << 18);
  save_archive(src, big);
  good = read_bytes(src);
  for (size_t n : {size_t(17), size_t(100), good.size() / 3, good.size() / 2, good.size() - 13, good.size() - 1}) {
    std::vector<unsigned char> c(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(n));
    std::string m = refusal(path, c);
    CHECK_MESSAGE(contains(m, ": truncated: "), "cut at " << n << ": '" << m << "'");
  }
  msg = refusal(path, std::vector<unsigned char>(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(good.size() / 2)));
  CHECK_MESSAGE(contains(msg, "truncated: tensor 'large' of shape (256, 1024)"), msg);
}

TEST_CASE("every single flipped bit is refused") {
  TempDir tmp;
  std::string src = (tmp / "full.dnns");
  std::string path = (tmp / "flipped.dnns");
  Archive a = sample_archive(0);
  a.meta["long"] = "short";
  save_archive(src, a);
  std::vector<unsigned char> good = read_bytes(src);
  size_t crc_at = good.size() - 12, marker_at = good.size() - 8;

  // Expected diagnosis by the region the bit lies in. Inside the body a flip may first break
  // the structure (a length, a count), but the checksum is what names it.
  auto expected = [&](size_t pos) -> std::string {
    if (pos < 8) return "bad magic";
    if (pos < 12) return "unsupported archive format version";
    if (pos < 16) return "unsupported archive flags";
    if (pos < crc_at) return "checksum mismatch (file corrupt";
    if (pos < marker_at) return "checksum mismatch (file corrupt";
    return "bad end marker";
  };
  int checked = 0;
  for (size_t pos = 0; pos < good.size(); ++pos) {
    // Every byte of the header, trailer and the first 300 bytes; every 7th byte after that.
    if (pos >= 300 && pos < crc_at && pos % 7 != 0) continue;
    for (int bit = 0; bit < 8; ++bit) {
      std::vector<unsigned char> bad = good;
      bad[pos] ^= static_cast<unsigned char>(1u << bit);
      std::string msg = refusal(path, bad);
      CHECK_MESSAGE(contains(msg, expected(pos)), "bit " << bit << " of byte " << pos << ": '" << msg << "'");
      ++checked;
    }
  }
  CHECK(checked > 2000);

  // A flip in tensor data is caught by the checksum alone (the structure is intact).
  Archive big = sample_archive(int64_t(1) << 16);
  save_archive(src, big);
  good = read_bytes(src);
  for (size_t pos : {good.size() / 2, good.size() - 100}) {
    std::vector<unsigned char> bad = good;
    bad[pos] ^= 0x10;
    std::string msg = refusal(path, bad);
    CHECK(contains(msg, "checksum mismatch (file corrupt): stored 0x"));
    CHECK(contains(error_of([&] { load_archive_meta(path); }), "checksum mismatch"));
  }
}

TEST_CASE("trailing bytes after the end marker are refused") {
  TempDir tmp;
  std::string path = (tmp / "padded.dnns");
  save_archive(path, sample_archive(0));
  std::vector<unsigned char> good = read_bytes(path);
  std::vector<unsigned char> padded = good;
  padded.push_back(0);
  std::string msg = refusal(path, padded);
  CHECK(contains(msg, "1 trailing bytes after the end marker"));
  std::vector<unsigned char> twice = good;
  twice.insert(twice.end(), good.begin(), good.end());  // e.g. appended to instead of replaced
  msg = refusal(path, twice);
  CHECK(contains(msg, std::to_string(good.size()) + " trailing bytes"));
}

TEST_CASE("malformed entries with a valid checksum are refused without huge allocations") {
  TempDir tmp;
  std::string path = (tmp / "crafted.dnns");
  auto with_tensor_header = [](const std::string& name, uint32_t ndim, std::vector<uint64_t> dims) {
    RawArchive r;
    r.str("model");
    r.u64(0);
    r.u64(1);
    r.str(name);
    r.u32(ndim);
    for (uint64_t d : dims) r.u64(d);
    r.bytes("\0\0\0\0\0\0\0\0", 8);  // a little data, far less than claimed
    return r.finish();
  };

  std::string msg = refusal(path, with_tensor_header("w", 9, {1, 1, 1, 1, 1, 1, 1, 1, 1}));
  CHECK(contains(msg, "malformed archive: tensor 'w' has ndim 9"));
  msg = refusal(path, with_tensor_header("w", 0xFFFFFFFFu, {}));
  CHECK(contains(msg, "has ndim 4294967295"));
  msg = refusal(path, with_tensor_header("w", 2, {3, uint64_t(-5)}));
  CHECK(contains(msg, "tensor 'w' dimension 1 is -5"));
  msg = refusal(path, with_tensor_header("w", 1, {uint64_t(1) << 41}));
  CHECK(contains(msg, "dimension 0 is 2199023255552"));
  // Each dimension plausible, the product absurd (2^120 floats): no overflow, no allocation.
  msg = refusal(path, with_tensor_header("w", 3, {uint64_t(1) << 40, uint64_t(1) << 40, uint64_t(1) << 40}));
  CHECK(contains(msg, "truncated: tensor 'w' of shape (1099511627776, 1099511627776, 1099511627776)"));
  // A shape whose size does not match the bytes that follow: 1M floats claimed, 8 bytes there.
  msg = refusal(path, with_tensor_header("w", 2, {1024, 1024}));
  CHECK(contains(msg, "truncated: tensor 'w' of shape (1024, 1024)"));
  // Zero dimensions make the product zero whatever the others say.
  {
    RawArchive r;
    r.str("model");
    r.u64(0);
    r.u64(1);
    r.str("z");
    r.u32(3);
    r.u64(uint64_t(1) << 40);
    r.u64(0);
    r.u64(uint64_t(1) << 40);
    write_bytes(path, r.finish());
    Archive z = load_archive(path);
    CHECK(z.tensors.at("z").shape() == Shape{int64_t(1) << 40, 0, int64_t(1) << 40});
    CHECK(z.tensors.at("z").numel() == 0);
  }

  {
    RawArchive r;
    r.u32(5000);  // kind length over the 4096-byte limit
    r.bytes(std::string(5000, 'k').data(), 5000);
    r.u64(0);
    r.u64(0);
    msg = refusal(path, r.finish());
    CHECK(contains(msg, "malformed archive: kind length 5000 at offset 16 exceeds the limit of 4096 bytes"));
  }
  {
    RawArchive r;
    r.str("model");
    r.u64(1);
    r.u32(0xFFFFFFF0u);  // meta key length
    msg = refusal(path, r.finish());
    CHECK(contains(msg, "malformed archive: meta entry 0 key length 4294967280"));
  }
  {
    RawArchive r;
    r.str("model");
    r.u64(1);
    r.str("key");
    r.u64(uint64_t(1) << 62);  // meta value length
    msg = refusal(path, r.finish());
    CHECK(contains(msg, "truncated: meta entry 'key' value of 4611686018427387904 bytes"));
  }
  {
    RawArchive r;
    r.str("model");
    r.u64(uint64_t(1) << 60);  // meta count
    msg = refusal(path, r.finish());
    CHECK(contains(msg, "truncated: meta entry count 1152921504606846976 at offset 25 needs at least"));
  }
  {
    RawArchive r;
    r.str("model");
    r.u64(0);
    r.u64(uint64_t(1) << 60);  // tensor count
    msg = refusal(path, r.finish());
    CHECK(contains(msg, "truncated: tensor count 1152921504606846976 at offset 33 needs at least"));
  }
  {
    RawArchive r;
    r.str("model");
    r.u64(2);
    r.str("same");
    r.u64(1);
    r.bytes("a", 1);
    r.str("same");
    r.u64(1);
    r.bytes("b", 1);
    r.u64(0);
    msg = refusal(path, r.finish());
    CHECK(contains(msg, "malformed archive: duplicate meta key"));
  }
  {
    RawArchive r;
    r.str("model");
    r.u64(0);
    r.u64(2);
    for (int i = 0; i < 2; ++i) {
      r.str("w");
      r.u32(0);
      r.bytes("\0\0\0\0", 4);
    }
    msg = refusal(path, r.finish());
    CHECK(contains(msg, "malformed archive: duplicate tensor 'w'"));
  }
}

TEST_CASE("malformed sparse records are refused without huge allocations") {
  TempDir tmp;
  std::string path = (tmp / "sparse.dnns");
  // One tensor "w" of shape `dims` in format 2 with the given encoding bytes after the dims.
  auto sparse_file = [](std::vector<uint64_t> dims, const std::vector<unsigned char>& record) {
    RawArchive r(2);
    r.str("model");
    r.u64(0);
    r.u64(1);
    r.str("w");
    r.u32(static_cast<uint32_t>(dims.size()));
    for (uint64_t d : dims) r.u64(d);
    r.bytes(record.data(), record.size());
    return r.finish();
  };
  auto record = [](unsigned char encoding, unsigned char coding, uint64_t count, const std::vector<unsigned char>& index,
                   size_t values) {
    std::vector<unsigned char> b = {encoding, coding};
    for (int i = 0; i < 8; ++i) b.push_back(static_cast<unsigned char>(count >> (8 * i)));
    for (int i = 0; i < 8; ++i) b.push_back(static_cast<unsigned char>(uint64_t(index.size()) >> (8 * i)));
    b.insert(b.end(), index.begin(), index.end());
    b.insert(b.end(), 4 * values, 0);
    return b;
  };
  // A valid one first: 10 values, 2 kept at 3 and 9 (gap8: skip 3 keep, skip 5 keep).
  write_bytes(path, sparse_file({10}, record(1, 2, 2, {3, 5}, 2)));
  CHECK(load_archive(path).tensors.at("w").numel() == 10);
  // 2^39 values claimed, a 6-byte index: it cannot cover them; nothing of that size allocated.
  std::string msg = refusal(path, sparse_file({uint64_t(1) << 39}, record(1, 2, 1, {0, 255, 255, 255, 255, 255}, 1)));
  CHECK(contains(msg, "malformed archive: tensor 'w': a gap8 index of 6 bytes cannot describe its 549755813888 values"));
  // The same as a bitmap: 2^39 values need a 2^36-byte bitmap the file does not have.
  msg = refusal(path, sparse_file({uint64_t(1) << 39}, record(2, 1, 1, {1}, 0)));
  CHECK(contains(msg, "bitmap index of 1 bytes cannot describe"));
  // A count of 2^60 values: more than the tensor holds; 8 stated but one value present: truncated.
  msg = refusal(path, sparse_file({8}, record(1, 1, uint64_t(1) << 60, {0xff}, 0)));
  CHECK_MESSAGE(contains(msg, "tensor 'w' keeps 1152921504606846976 of its 8 values"), msg);
  msg = refusal(path, sparse_file({8}, record(1, 1, 8, {0xff}, 1)));
  CHECK(contains(msg, "truncated: tensor 'w' values"));
  // A gap8 stream that ends 255 or more positions before the tensor's end.
  msg = refusal(path, sparse_file({300}, record(1, 2, 1, {0, 0}, 1)));
  CHECK_MESSAGE(contains(msg, "gap8 index holds more than the 1 positions stated"), msg);
  msg = refusal(path, sparse_file({300}, record(1, 2, 1, {0}, 1)));
  CHECK(contains(msg, "gap8 index ends 299 positions before the tensor's end"));
  // Two masks taking the support of one weight: a second allocation of its size is refused.
  {
    RawArchive r(2);
    r.str("model");
    r.u64(0);
    r.u64(3);
    for (const char* name : {"m1", "m2"}) {
      r.str(name);
      r.u32(1);
      r.u64(10);
      r.bytes("\x03", 1);
      r.str("w");
    }
    r.str("w");
    r.u32(1);
    r.u64(10);
    std::vector<unsigned char> rec = record(1, 2, 2, {3, 5}, 2);
    r.bytes(rec.data(), rec.size());
    msg = refusal(path, r.finish());
    CHECK(contains(msg, "tensor 'm2' takes the support of 'w', which another tensor took already"));
  }
}

TEST_CASE("saving is atomic and leaves no temporary file") {
  TempDir tmp;
  std::string path = (tmp / "ckpt.dnns");
  Archive first = sample_archive(0);
  save_archive(path, first);
  CHECK(tmp.entries() == std::vector<std::string>{"ckpt.dnns"});

  Archive second;
  second.kind = "model";
  second.meta["step"] = "2";
  second.tensors["w"] = Tensor::full({5}, 2.5f);
  save_archive(path, second);  // replaces the existing file
  CHECK(tmp.entries() == std::vector<std::string>{"ckpt.dnns"});
  check_same(load_archive(path), second);

  {  // a missing folder is a clear error, and nothing is created
    std::string nowhere = (tmp / "no/such/folder/ckpt.dnns");
    std::string msg = error_of([&] { save_archive(nowhere, second); });
    CHECK(starts_with(msg, nowhere + ": "));
    CHECK(contains(msg, "does not exist"));
    CHECK(tmp.entries() == std::vector<std::string>{"ckpt.dnns"});
  }
  {  // what the loader would refuse is not written, and the old file survives
    Archive bad = second;
    bad.tensors["undefined"] = Tensor();
    std::string msg = error_of([&] { save_archive(path, bad); });
    CHECK(starts_with(msg, path + ": "));
    CHECK(contains(msg, "tensor 'undefined' is undefined"));

    bad = second;
    bad.meta.emplace(std::string(5000, 'k'), std::string("v"));
    CHECK(contains(error_of([&] { save_archive(path, bad); }), "meta key 'kkkk"));
    bad = second;
    bad.tensors["nine"] = Tensor(Shape{1, 1, 1, 1, 1, 1, 1, 1, 1});
    CHECK(contains(error_of([&] { save_archive(path, bad); }), "more than 8 dimensions"));

    CHECK(tmp.entries() == std::vector<std::string>{"ckpt.dnns"});
    check_same(load_archive(path), second);
  }
  {  // a path without a folder part saves in the current folder
    fs::path cwd = fs::current_path();
    fs::current_path(tmp.path);
    save_archive("plain.dnns", second);
    check_same(load_archive("plain.dnns"), second);
    fs::current_path(cwd);
    CHECK(fs::exists(tmp.path / "plain.dnns"));
  }
}

TEST_CASE("run state in meta round-trips exactly") {
  TempDir tmp;
  std::string path = (tmp / "state.dnns");
  Archive a;
  Rng rng(123);
  for (int i = 0; i < 10; ++i) rng.next_u64();
  Rng::State s = rng.state();
  for (int i = 0; i < 4; ++i) meta_set_u64(a, numbered("rng.", i), s[i]);
  meta_set_u64(a, "step", 0);
  meta_set_u64(a, "max", std::numeric_limits<uint64_t>::max());
  const std::vector<double> doubles = {
      0.1, -0.0, 0.0, 1.0 / 3.0, -2.5e-300, std::numeric_limits<double>::denorm_min(),
      std::numeric_limits<double>::max(), std::numeric_limits<double>::infinity(),
      -std::numeric_limits<double>::infinity(), std::bit_cast<double>(uint64_t(0x7ff8000000000001)),
      std::bit_cast<double>(uint64_t(0xfff0000000000123))};  // NaNs with payloads, one signalling
  for (size_t i = 0; i < doubles.size(); ++i) meta_set_f64(a, numbered("f", i), doubles[i]);
  save_archive(path, a);
  Archive b = load_archive_meta(path);

  Rng::State t;
  for (int i = 0; i < 4; ++i) t[i] = meta_get_u64(b, numbered("rng.", i));
  Rng resumed(0);
  resumed.set_state(t);
  for (int i = 0; i < 5; ++i) CHECK(resumed.next_u64() == rng.next_u64());
  CHECK(meta_get_u64(b, "step") == 0);
  CHECK(meta_get_u64(b, "max") == std::numeric_limits<uint64_t>::max());
  for (size_t i = 0; i < doubles.size(); ++i) {
    double got = meta_get_f64(b, numbered("f", i));
    CHECK_MESSAGE(std::bit_cast<uint64_t>(got) == std::bit_cast<uint64_t>(doubles[i]),
                  "f" << i << " stored as '" << b.meta.at(numbered("f", i)) << "'");
  }
  CHECK(b.meta.at("f0") == "0x1.999999999999ap-4");  // hex float: readable and exact
  CHECK(b.meta.at("f1") == "-0x0p+0");

  // Hand-written decimal values (e.g. from a JSON config) are read too.
  a.meta["lr"] = "0.05";
  a.meta["neg"] = "-1e-3";
  a.meta["inf"] = "inf";
  CHECK(meta_get_f64(a, "lr") == 0.05);
  CHECK(meta_get_f64(a, "neg") == -1e-3);
  CHECK(std::isinf(meta_get_f64(a, "inf")));

  SUBCASE("missing keys and non-numbers name the key") {
    std::string msg = error_of([&] { meta_get_u64(a, "epoch"); });
    CHECK(contains(msg, "'epoch'"));
    CHECK(contains(msg, "missing"));
    CHECK(contains(error_of([&] { meta_get_f64(a, "momentum"); }), "'momentum' is missing"));
    for (const char* bad : {"", "12a", "-1", "+1", " 1", "1 ", "18446744073709551616", "0x10", "1.5"}) {
      a.meta["step"] = bad;
      msg = error_of([&] { meta_get_u64(a, "step"); });
      CHECK_MESSAGE(contains(msg, "'step'"), "'" << bad << "': " << msg);
      CHECK_MESSAGE(contains(msg, "not an unsigned 64-bit integer"), "'" << bad << "': " << msg);
    }
    for (const char* bad : {"", "abc", "0x", "--1", "-+1", "1.5x", "nan:0x1", "nan:0xzz", "0x1p+1 "}) {
      a.meta["lr"] = bad;
      msg = error_of([&] { meta_get_f64(a, "lr"); });
      CHECK_MESSAGE(contains(msg, "'lr'"), "'" << bad << "': " << msg);
      CHECK_MESSAGE(contains(msg, "not a number"), "'" << bad << "': " << msg);
    }
  }
}

TEST_CASE("archive_tensor checks presence and shape") {
  Archive a;
  a.tensors["fc.weight"] = Tensor(Shape{10, 64});
  a.tensors["fc.bias"] = Tensor(Shape{10});
  CHECK(archive_tensor(a, "fc.weight", {10, 64}, "run/model.dnns").same_storage(a.tensors["fc.weight"]));
  std::string msg = error_of([&] { archive_tensor(a, "conv1.weight", {16, 3, 3, 3}, "run/model.dnns"); });
  CHECK(starts_with(msg, "run/model.dnns: tensor 'conv1.weight' is missing"));
  CHECK(contains(msg, "'fc.bias'"));
  msg = error_of([&] { archive_tensor(a, "fc.weight", {100, 64}, "run/model.dnns"); });
  CHECK(starts_with(msg, "run/model.dnns: tensor 'fc.weight'"));
  CHECK(contains(msg, "expected shape (100, 64), got (10, 64)"));
}
