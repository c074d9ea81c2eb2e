// Sparse storage of a tensor: the positions it keeps (its "support") coded compactly, and the
// kept values in position order; every other value is +0.0. One format for the bytes on disk
// (archives, format version 2), the shifter's packed residency and the C-array export; the
// portable runtime (kernels/portable) reads the same codings with its own C-only code.
//
// Two codings of a support of `count` positions among a tensor's n values (flat, row-major):
//   Bitmap (1): ceil(n / 8) bytes; position i is kept when bit i % 8 (least significant first)
//               of byte i / 8 is set; the bits past n are zero. n / 8 bytes whatever the count.
//   Gap8   (2): a byte stream walked from position 0: a byte b < 255 skips b positions and keeps
//               the next one; b = 255 skips 255 positions and keeps none. After the last byte
//               fewer than 255 positions are left (trailing 255s cover the rest), so the stream
//               spans the whole tensor. count + (skipped positions) / 255 bytes: about one
//               byte a kept value down to a density of ~1/255.
// The encoder takes the smaller (Bitmap on a tie). Either coding bounds the tensor by its bytes
// (n <= 8 x bytes, n < 255 x (bytes + 1)), so a reader never allocates more than ~1000 times the
// bytes it was given.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace dnns {

enum class IndexCoding : uint8_t { Bitmap = 1, Gap8 = 2 };
const char* coding_name(IndexCoding c);  // "bitmap", "gap8"

struct SparseIndex {
  IndexCoding coding = IndexCoding::Bitmap;
  int64_t numel = 0;            // n, the tensor's values
  int64_t count = 0;            // kept positions
  std::vector<uint8_t> bytes;   // the coded positions
};

// The Bitmap coding's bytes for a tensor of n values.
inline int64_t bitmap_bytes(int64_t n) { return (n + 7) / 8; }

// Codes the positions i in [0, n) where kept(i) holds, in the smaller coding.
template <class Kept>
SparseIndex encode_support(int64_t n, Kept kept) {
  SparseIndex s;
  s.numel = n;
  int64_t gap8 = 0, pos = 0;  // the Gap8 stream's length; the next position it has not covered
  for (int64_t i = 0; i < n; ++i)
    if (kept(i)) {
      gap8 += (i - pos) / 255 + 1;
      pos = i + 1;
      ++s.count;
    }
  gap8 += (n - pos) / 255;
  if (bitmap_bytes(n) <= gap8) {
    s.coding = IndexCoding::Bitmap;
    s.bytes.assign(static_cast<size_t>(bitmap_bytes(n)), 0);
    for (int64_t i = 0; i < n; ++i)
      if (kept(i)) s.bytes[static_cast<size_t>(i >> 3)] |= static_cast<uint8_t>(1u << (i & 7));
  } else {
    s.coding = IndexCoding::Gap8;
    s.bytes.reserve(static_cast<size_t>(gap8));
    pos = 0;
    for (int64_t i = 0; i < n; ++i)
      if (kept(i)) {
        for (; i - pos >= 255; pos += 255) s.bytes.push_back(255);
        s.bytes.push_back(static_cast<uint8_t>(i - pos));
        pos = i + 1;
      }
    for (; n - pos >= 255; pos += 255) s.bytes.push_back(255);
  }
  return s;
}

// Whether `len` bytes of `coding` can describe a tensor of n values (the check a reader makes
// before allocating n values).
bool coding_fits(IndexCoding coding, uint64_t len, uint64_t n);

// Calls f(position) for every kept position, ascending. Returns "" when `bytes` is a valid coding
// of exactly `count` positions among n, else what is wrong (f may have been called for some).
template <class F>
std::string for_each_position(IndexCoding coding, const uint8_t* bytes, uint64_t len, uint64_t n, uint64_t count,
                              F f) {
  if (!coding_fits(coding, len, n))
    return std::string(coding_name(coding)) + " index of " + std::to_string(len) + " bytes cannot cover " +
           std::to_string(n) + " values";
  uint64_t seen = 0;
  if (coding == IndexCoding::Bitmap) {
    for (uint64_t b = 0; b < len; ++b) {
      unsigned bits = bytes[b];
      if (b == len - 1 && (n & 7) != 0 && (bits >> (n & 7)) != 0) return "bitmap index has bits set past the tensor's end";
      for (; bits != 0; bits &= bits - 1) {
        if (++seen > count) return "bitmap index holds more than the " + std::to_string(count) + " positions stated";
        f(static_cast<int64_t>(8 * b + static_cast<uint64_t>(__builtin_ctz(bits))));
      }
    }
  } else {
    uint64_t pos = 0;
    for (uint64_t b = 0; b < len; ++b) {
      pos += bytes[b];
      if (bytes[b] == 255) {
        if (pos > n) return "gap8 index runs past the tensor's end";
        continue;
      }
      if (pos >= n) return "gap8 index runs past the tensor's end";
      if (++seen > count) return "gap8 index holds more than the " + std::to_string(count) + " positions stated";
      f(static_cast<int64_t>(pos));
      ++pos;
    }
    if (n - pos >= 255) return "gap8 index ends " + std::to_string(n - pos) + " positions before the tensor's end";
  }
  if (seen != count)
    return std::string(coding_name(coding)) + " index holds " + std::to_string(seen) + " positions, " +
           std::to_string(count) + " stated";
  return "";
}

// A tensor as its support and kept values.
struct SparseTensor {
  Shape shape;
  SparseIndex index;
  std::vector<float> values;  // (index.count) the kept values, ascending position
  int64_t bytes() const { return static_cast<int64_t>(index.bytes.size() + values.size() * sizeof(float)); }
};

// Which zeros a sparse form may drop. Exact: only +0.0 (a -0.0 is kept, so the tensor comes back
// bit for bit); AnySign: +0.0 and -0.0 (both come back as +0.0; for inference, where the sign of
// a zero weight changes no sum).
enum class ZeroSign { Exact, AnySign };
SparseTensor to_sparse(const float* x, const Shape& shape, ZeroSign zeros);  // x: (numel of shape)
// Writes every value: the kept ones and +0.0 elsewhere. out: (numel of shape).
void to_dense(const SparseTensor& s, float* out);

// Bytes the smallest sparse form of x takes against 4 x numel dense: whether storing it sparse pays.
bool sparse_pays(const SparseTensor& s);

}  // namespace dnns
