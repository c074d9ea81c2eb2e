#include "core/sparse.h"

#include <bit>
#include <cstring>

#include "core/error.h"

namespace dnns {

const char* coding_name(IndexCoding c) {
  switch (c) {
    case IndexCoding::Bitmap: return "bitmap";
    case IndexCoding::Gap8: return "gap8";
  }
  return "unknown";
}

bool coding_fits(IndexCoding coding, uint64_t len, uint64_t n) {
  if (coding == IndexCoding::Bitmap) return len == n / 8 + (n % 8 != 0);
  if (coding == IndexCoding::Gap8) return len < (uint64_t(1) << 56) && n < 255 * (len + 1);
  return false;
}

SparseTensor to_sparse(const float* x, const Shape& shape, ZeroSign zeros) {
  SparseTensor s;
  s.shape = shape;
  const int64_t n = shape_numel(shape);
  if (zeros == ZeroSign::Exact)
    s.index = encode_support(n, [&](int64_t i) { return std::bit_cast<uint32_t>(x[i]) != 0u; });
  else
    s.index = encode_support(n, [&](int64_t i) { return x[i] != 0.0f; });
  s.values.reserve(static_cast<size_t>(s.index.count));
  const std::string bad = for_each_position(s.index.coding, s.index.bytes.data(), s.index.bytes.size(), n,
                                            s.index.count, [&](int64_t i) { s.values.push_back(x[i]); });
  check(bad.empty(), "to_sparse: " + bad);  // the encoder's own output: a bug if it fails
  return s;
}

void to_dense(const SparseTensor& s, float* out) {
  const int64_t n = shape_numel(s.shape);
  std::memset(out, 0, static_cast<size_t>(n) * sizeof(float));
  size_t e = 0;
  const std::string bad = for_each_position(s.index.coding, s.index.bytes.data(), s.index.bytes.size(), n,
                                            s.index.count, [&](int64_t i) { out[i] = s.values[e++]; });
  check(bad.empty() && e == s.values.size(), "to_dense: " + bad);
}

bool sparse_pays(const SparseTensor& s) { return s.bytes() < static_cast<int64_t>(shape_numel(s.shape)) * 4; }

}  // namespace dnns
