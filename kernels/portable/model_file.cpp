// Reads a model file saved by the full build (the archive format of core/archive.h, versions 1
// and 2) into a runnable graph, with nothing but the C library: the whole file is read once, checked
// (magic, version, flags, end marker, CRC-32, every length against the bytes that remain),
// its graph spec parsed into a node table and the tensors the graph uses copied to one aligned
// weight buffer. It accepts exactly the files the full build's Model::load accepts (checked on a
// corpus of valid and damaged files by tests/test_model_readers.cpp), refusing the others with
// a message naming the file and the problem: unknown or repeated attributes, junk after a
// number, bad node names, duplicate meta keys or tensors, masks that are not 0/1 tensors of a
// parameter's shape. Masks ("mask:<param>") are checked but not applied, since the full build's
// forward does not apply them either (training leaves the weights masked). A sparse conv or
// linear weight stays sparse (its kept values and index; the kernels run it so); any other
// sparse tensor is expanded to dense.
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "dnns_runtime.h"

namespace dnns::rt {

namespace {

constexpr size_t kHeaderBytes = 16;        // magic, version, flags
constexpr size_t kTrailerBytes = 4 + 8;    // CRC-32, end marker
constexpr uint32_t kMaxNameBytes = 4096;
constexpr uint32_t kMaxDims = 8;
constexpr uint64_t kMaxDim = uint64_t(1) << 40;

uint32_t get_le32(const unsigned char* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
uint64_t get_le64(const unsigned char* p) { return uint64_t(get_le32(p)) | uint64_t(get_le32(p + 4)) << 32; }

// Bounded reads over the body of the file.
struct Reader {
  const unsigned char* data;
  size_t end;  // the body ends where the trailer starts
  size_t off;
  size_t remaining() const { return end - off; }
  const unsigned char* take(uint64_t n) {
    if (n > remaining()) return nullptr;
    const unsigned char* p = data + off;
    off += size_t(n);
    return p;
  }
};

// A byte string inside the file (a meta key, a tensor name).
struct Span {
  const unsigned char* p;
  uint64_t len;
  uint64_t index;  // of its entry
};

// Tensor records of format version 2 (version 1: every record dense).
enum : uint8_t { kDense = 0, kSparse = 1, kOnes = 2, kOnesAtSupportOf = 3 };

struct TensorEntry {
  const char* name;  // not terminated: name_len bytes
  uint32_t name_len;
  uint32_t ndim;
  const unsigned char* dims;  // ndim x i64 little-endian
  const unsigned char* data;  // dense: numel x f32; sparse: count x f32 (little-endian, unaligned); else null
  uint64_t numel;
  uint8_t encoding;
  uint8_t coding;               // sparse, ones: the index coding (WeightCoding)
  uint64_t count;               // sparse, ones: kept positions
  const unsigned char* index;   // sparse, ones: index_len bytes
  uint64_t index_len;
  const char* support_name;     // ones at the support of: the lending record's name
  uint32_t support_name_len;
  const TensorEntry* support;   // ... resolved
  bool lent;                    // a sparse record whose support another record took
  bool used;
  bool param;  // a parameter of its node (a mask may name it), not a buffer (running statistics)
};

// The record whose positions `t` keeps (itself, or the sparse record lending its support).
const TensorEntry& support_of(const TensorEntry& t) { return t.encoding == kOnesAtSupportOf ? *t.support : t; }
// Float i of the record's stored values (little-endian), 1.0 for ones.
float stored_value(const TensorEntry& t, uint64_t i) {
  if (t.encoding == kOnes || t.encoding == kOnesAtSupportOf) return 1.0f;
  const uint32_t bits = get_le32(t.data + 4 * i);
  float v;
  std::memcpy(&v, &bits, 4);
  return v;
}

// Everything the loader allocates, released together on failure.
struct Loading {
  const char* where;
  char* err;
  size_t err_len;
  TensorEntry* tensors = nullptr;
  uint64_t num_tensors = 0;
  Span* spans = nullptr;  // names, sorted to find duplicates
  char* text = nullptr;
  Node* nodes = nullptr;
  unsigned char* has_bias = nullptr;  // (nodes) conv/linear "bias=1"
  int num_nodes = 0;
  float* weights = nullptr;
  uint8_t* indices = nullptr;
  NodePlan* plan = nullptr;
  int32_t* classes = nullptr;  // border-table classes of every conv, one after another
  int64_t num_classes = 0;
  ~Loading() {
    std::free(classes);
    std::free(tensors);
    std::free(spans);
    std::free(text);
    std::free(nodes);
    std::free(has_bias);
    std::free(weights);
    std::free(indices);
    std::free(plan);
  }
  Status fail(Status s, const char* fmt, ...) {
    char detail[400];
    va_list args;
    va_start(args, fmt);
    std::vsnprintf(detail, sizeof detail, fmt, args);
    va_end(args);
    std::snprintf(err, err_len, "%s: %s", where, detail);
    return s;
  }
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

// Parses a whole decimal integer that fits in int32 (the full build's std::stoi check).
bool parse_int(const char* s, int32_t* out) {
  if (!s || !*s) return false;
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(s, &end, 10);
  if (errno != 0 || *end != '\0' || v < -2147483647LL - 1 || v > 2147483647LL) return false;
  *out = int32_t(v);
  return true;
}

// Parses a border table's classes "0,1,1,2" (exactly `want` of them, each in [0, want)) into
// out; *count = the largest class + 1. False on anything else.
bool parse_classes(const char* s, int32_t want, int32_t* out, int32_t* count, int32_t bound = -1) {
  if (bound < 0) bound = want;
  int32_t n = 0, top = -1;
  for (const char* p = s;; ++p) {
    const char* start = p;
    long long v = 0;
    while (*p >= '0' && *p <= '9' && v <= 2147483647LL) v = v * 10 + (*p++ - '0');
    if (p == start || v >= bound || n == want || (*p != ',' && *p != '\0')) return false;
    out[n++] = int32_t(v);
    if (v > top) top = int32_t(v);
    if (*p == '\0') break;
  }
  *count = top + 1;
  return n == want;
}

// key=value attributes of one spec line (pointers into the line, terminated in place).
struct Attrs {
  static constexpr int kMax = 24;
  const char* keys[kMax];
  const char* values[kMax];
  int count = 0;
  const char* find(const char* key) const {
    for (int i = 0; i < count; ++i)
      if (std::strcmp(keys[i], key) == 0) return values[i];
    return nullptr;
  }
};

// Whether two of the n byte strings are equal (*dup: one of them). Sorted in place, so a crafted
// file with many entries costs n log n, not n^2.
int compare_spans(const void* a, const void* b) {
  const Span& x = *static_cast<const Span*>(a);
  const Span& y = *static_cast<const Span*>(b);
  const uint64_t n = x.len < y.len ? x.len : y.len;
  const int c = n ? std::memcmp(x.p, y.p, size_t(n)) : 0;
  if (c != 0) return c;
  return x.len < y.len ? -1 : x.len > y.len ? 1 : 0;
}
bool find_duplicate(Span* spans, uint64_t n, Span* dup) {
  if (n < 2) return false;
  std::qsort(spans, size_t(n), sizeof(Span), compare_spans);
  for (uint64_t i = 1; i < n; ++i)
    if (compare_spans(&spans[i - 1], &spans[i]) == 0) {
      *dup = spans[i];
      return true;
    }
  return false;
}

// A whole decimal or hexadecimal float as std::stof reads it (strtof; no junk after it; not out
// of float's range), the full build's attr_float.
bool parse_float(const char* s, float* out) {
  if (!s || !*s) return false;
  char* end = nullptr;
  errno = 0;
  const float v = std::strtof(s, &end);
  if (end == s || *end != '\0' || errno == ERANGE) return false;
  *out = v;
  return true;
}

// Node names as the full build allows them (nn/model.cpp: check_name): printable ASCII without
// space, ',', '=' or ':'.
bool valid_node_name(const char* name) {
  if (!*name) return false;
  for (const char* c = name; *c; ++c) {
    const unsigned char u = static_cast<unsigned char>(*c);
    if (u <= ' ' || u >= 127 || u == ',' || u == '=' || u == ':') return false;
  }
  return true;
}

Status parse_header(Loading& L, const unsigned char* data, size_t size) {
  static const char kMagic[8] = {'D', 'N', 'N', 'S', 'H', 'I', 'F', 'T'};
  static const char kEnd[8] = {'E', 'N', 'D', 'S', 'H', 'I', 'F', 'T'};
  if (size == 0) return L.fail(kErrFormat, "empty file (0 bytes), not a dnnshifter model");
  if (std::memcmp(data, kMagic, size < 8 ? size : 8) != 0)
    return L.fail(kErrFormat, "not a dnnshifter archive (bad magic: the file does not start with \"DNNSHIFT\")");
  if (size < kHeaderBytes + kTrailerBytes)
    return L.fail(kErrFormat, "truncated: %zu bytes, shorter than a header and a trailer", size);
  const uint32_t version = get_le32(data + 8), flags = get_le32(data + 12);
  if (version != 1 && version != 2)
    return L.fail(kErrFormat, "unsupported archive format version %u (this runtime reads 1 and 2)", version);
  if (flags != 0) return L.fail(kErrFormat, "unsupported archive flags 0x%08x (this runtime reads only 0)", flags);
  if (std::memcmp(data + size - 8, kEnd, 8) != 0)
    return L.fail(kErrFormat, "truncated or followed by extra bytes: no \"ENDSHIFT\" end marker at its last 8 bytes");
  const uint32_t stored = get_le32(data + size - kTrailerBytes);
  const uint32_t computed = crc32_update(0, data, size - kTrailerBytes);
  if (stored != computed)
    return L.fail(kErrChecksum, "checksum mismatch (file corrupt): stored CRC-32 %08x, computed %08x", stored, computed);
  return kOk;
}

// Kind, meta and tensor directory. *graph / *graph_len: the spec text inside `data`.
Status parse_body(Loading& L, const unsigned char* data, size_t size, const char** graph, uint64_t* graph_len) {
  Reader r{data, size - kTrailerBytes, kHeaderBytes};
  const uint32_t version = get_le32(data + 8);
  const unsigned char* p = r.take(4);
  if (!p) return L.fail(kErrFormat, "truncated: no kind");
  const uint32_t kind_len = get_le32(p);
  const unsigned char* kind = kind_len <= kMaxNameBytes ? r.take(kind_len) : nullptr;
  if (!kind) return L.fail(kErrFormat, "malformed archive: kind of %u bytes", kind_len);
  if (kind_len != 5 || std::memcmp(kind, "model", 5) != 0)
    return L.fail(kErrFormat, "holds a '%.*s', not a model", int(kind_len < 64 ? kind_len : 64), (const char*)kind);

  if (!(p = r.take(8))) return L.fail(kErrFormat, "truncated: no meta entry count");
  const uint64_t n_meta = get_le64(p);
  if (n_meta > r.remaining() / 12) return L.fail(kErrFormat, "truncated: %llu meta entries cannot fit", (unsigned long long)n_meta);
  *graph = nullptr;
  L.spans = static_cast<Span*>(std::calloc(size_t(n_meta) + 1, sizeof(Span)));
  if (!L.spans) return L.fail(kErrMemory, "cannot allocate the meta directory");
  Span* meta_keys = L.spans;
  for (uint64_t i = 0; i < n_meta; ++i) {
    const unsigned char* kl = r.take(4);
    const uint32_t klen = kl ? get_le32(kl) : 0;
    const unsigned char* key = kl && klen <= kMaxNameBytes ? r.take(klen) : nullptr;
    const unsigned char* vl = key ? r.take(8) : nullptr;
    const uint64_t vlen = vl ? get_le64(vl) : 0;
    const unsigned char* value = vl ? r.take(vlen) : nullptr;
    if (!value) return L.fail(kErrFormat, "truncated or malformed meta entry %llu", (unsigned long long)i);
    if (klen == 5 && std::memcmp(key, "graph", 5) == 0) *graph = reinterpret_cast<const char*>(value), *graph_len = vlen;
    meta_keys[i] = {key, klen, i};
  }
  Span dup{};
  if (find_duplicate(meta_keys, n_meta, &dup))
    return L.fail(kErrFormat, "malformed archive: duplicate meta key '%.*s'", int(dup.len < 64 ? dup.len : 64),
                  (const char*)dup.p);
  if (!*graph) return L.fail(kErrFormat, "holds no graph spec (not a model file?)");

  if (!(p = r.take(8))) return L.fail(kErrFormat, "truncated: no tensor count");
  const uint64_t n_tensors = get_le64(p);
  if (n_tensors > r.remaining() / 8)
    return L.fail(kErrFormat, "truncated: %llu tensors cannot fit", (unsigned long long)n_tensors);
  L.tensors = static_cast<TensorEntry*>(std::calloc(size_t(n_tensors) + 1, sizeof(TensorEntry)));
  if (!L.tensors) return L.fail(kErrMemory, "cannot allocate the tensor directory");
  L.num_tensors = n_tensors;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorEntry& t = L.tensors[i];
    const unsigned char* nl = r.take(4);
    t.name_len = nl ? get_le32(nl) : 0;
    t.name = nl && t.name_len <= kMaxNameBytes ? reinterpret_cast<const char*>(r.take(t.name_len)) : nullptr;
    const unsigned char* nd = t.name ? r.take(4) : nullptr;
    t.ndim = nd ? get_le32(nd) : 0;
    t.dims = nd && t.ndim <= kMaxDims ? r.take(8ull * t.ndim) : nullptr;
    if (!t.dims) return L.fail(kErrFormat, "truncated or malformed entry of tensor %llu", (unsigned long long)i);
    // numel without overflow: saturated past 2^62 (every dimension is at most 2^40).
    const uint64_t kHuge = uint64_t(1) << 62;
    uint64_t numel = 1;
    bool zero = false;
    for (uint32_t d = 0; d < t.ndim; ++d) {
      const uint64_t dim = get_le64(t.dims + 8 * d);
      if (dim > kMaxDim)
        return L.fail(kErrFormat, "malformed archive: tensor '%.*s' dimension %u is %llu", int(t.name_len), t.name, d,
                      (unsigned long long)dim);
      if (dim == 0) zero = true;
      else numel = numel > kHuge / dim ? kHuge + 1 : numel * dim;
    }
    t.numel = zero ? 0 : numel;
    t.encoding = kDense;
    if (version >= 2) {
      const unsigned char* e = r.take(1);
      if (!e) return L.fail(kErrFormat, "truncated: no encoding of tensor '%.*s'", int(t.name_len), t.name);
      t.encoding = *e;
    }
    if (t.encoding == kDense) {
      t.data = t.numel <= r.remaining() / 4 ? r.take(4 * t.numel) : nullptr;
      if (!t.data) return L.fail(kErrFormat, "truncated: data of tensor '%.*s' runs past the end", int(t.name_len), t.name);
    } else if (t.encoding == kSparse || t.encoding == kOnes) {
      const unsigned char* c = r.take(1);
      const unsigned char* cnt = c ? r.take(8) : nullptr;
      const unsigned char* ln = cnt ? r.take(8) : nullptr;
      if (!ln) return L.fail(kErrFormat, "truncated: sparse record of tensor '%.*s'", int(t.name_len), t.name);
      t.coding = *c, t.count = get_le64(cnt), t.index_len = get_le64(ln);
      t.index = r.take(t.index_len);
      if (!t.index) return L.fail(kErrFormat, "truncated: index of tensor '%.*s' runs past the end", int(t.name_len), t.name);
      if (!sparse_index_valid(t.coding, t.index, t.index_len, t.numel, t.count))
        return L.fail(kErrFormat, "malformed archive: the sparse index of tensor '%.*s' does not list %llu positions within it",
                      int(t.name_len), t.name, (unsigned long long)t.count);
      if (t.encoding == kSparse) {
        t.data = t.count <= r.remaining() / 4 ? r.take(4 * t.count) : nullptr;
        if (!t.data)
          return L.fail(kErrFormat, "truncated: values of tensor '%.*s' run past the end", int(t.name_len), t.name);
      }
    } else if (t.encoding == kOnesAtSupportOf) {
      const unsigned char* nl = r.take(4);
      t.support_name_len = nl ? get_le32(nl) : 0;
      t.support_name = nl && t.support_name_len <= kMaxNameBytes
                           ? reinterpret_cast<const char*>(r.take(t.support_name_len)) : nullptr;
      if (!t.support_name) return L.fail(kErrFormat, "truncated or malformed record of tensor '%.*s'", int(t.name_len), t.name);
    } else {
      return L.fail(kErrFormat, "malformed archive: tensor '%.*s' has encoding %u", int(t.name_len), t.name, t.encoding);
    }
  }
  if (r.remaining() != 0)
    return L.fail(kErrFormat, "malformed archive: %zu unexplained bytes after the last tensor", r.remaining());
  // L.spans: the tensor names, sorted (attach_tensors looks masks' weights up there).
  std::free(L.spans);
  L.spans = static_cast<Span*>(std::calloc(size_t(n_tensors) + 1, sizeof(Span)));
  if (!L.spans) return L.fail(kErrMemory, "cannot allocate the tensor directory");
  for (uint64_t i = 0; i < n_tensors; ++i)
    L.spans[i] = {reinterpret_cast<const unsigned char*>(L.tensors[i].name), L.tensors[i].name_len, i};
  if (find_duplicate(L.spans, n_tensors, &dup))
    return L.fail(kErrFormat, "malformed archive: duplicate tensor '%.*s'", int(dup.len < 200 ? dup.len : 200),
                  (const char*)dup.p);
  // "Ones at the support of" records: a sparse record of the same shape, lent at most once.
  for (uint64_t i = 0; i < n_tensors; ++i) {
    TensorEntry& t = L.tensors[i];
    if (t.encoding != kOnesAtSupportOf) continue;
    const Span key{reinterpret_cast<const unsigned char*>(t.support_name), t.support_name_len, 0};
    const Span* hit = static_cast<const Span*>(std::bsearch(&key, L.spans, size_t(n_tensors), sizeof(Span), compare_spans));
    TensorEntry* s = hit ? &L.tensors[hit->index] : nullptr;
    if (!s || s->encoding != kSparse || s->ndim != t.ndim || std::memcmp(s->dims, t.dims, 8 * size_t(t.ndim)) != 0 || s->lent)
      return L.fail(kErrFormat, "malformed archive: tensor '%.*s' takes the support of '%.*s', not a sparse tensor of its shape lent once",
                    int(t.name_len), t.name, int(t.support_name_len < 200 ? t.support_name_len : 200), t.support_name);
    s->lent = true;
    t.support = s;
  }
  return kOk;
}

// The tensor "<node>.<param>" with exactly the given shape; marks it used.
Status find_tensor(Loading& L, const char* node, const char* param, int ndim, const int64_t* shape,
                   const TensorEntry** out) {
  char name[kMaxNameBytes + 64];
  const int len = std::snprintf(name, sizeof name, "%s.%s", node, param);
  if (len < 0 || size_t(len) >= sizeof name) return L.fail(kErrFormat, "node name '%.60s...' too long", node);
  for (uint64_t i = 0; i < L.num_tensors; ++i) {
    TensorEntry& t = L.tensors[i];
    if (t.name_len != uint32_t(len) || std::memcmp(t.name, name, size_t(len)) != 0) continue;
    bool same = t.ndim == uint32_t(ndim);
    for (int d = 0; same && d < ndim; ++d) same = get_le64(t.dims + 8 * d) == uint64_t(shape[d]);
    if (!same) {
      char got[160] = "(", want[160] = "(";
      for (uint32_t d = 0; d < t.ndim; ++d)
        std::snprintf(got + std::strlen(got), sizeof got - std::strlen(got), "%s%llu", d ? ", " : "",
                      (unsigned long long)get_le64(t.dims + 8 * d));
      for (int d = 0; d < ndim; ++d)
        std::snprintf(want + std::strlen(want), sizeof want - std::strlen(want), "%s%lld", d ? ", " : "",
                      (long long)shape[d]);
      return L.fail(kErrFormat, "tensor '%s' has shape %s), the graph expects %s)", name, got, want);
    }
    t.used = true;
    *out = &t;
    return kOk;
  }
  return L.fail(kErrFormat, "tensor '%s' is missing", name);
}

// Room for `count` more integers of the spec's lists (border-table classes, channel maps) in
// L.classes, allocated on first use: every entry takes at least two characters ("0,").
Status class_room(Loading& L, uint64_t spec_len, int64_t count, int lineno, const char* name) {
  const int64_t capacity = int64_t(spec_len) / 2 + 2;
  if (!L.classes) {
    L.classes = static_cast<int32_t*>(std::malloc(size_t(capacity) * sizeof(int32_t)));
    if (!L.classes) return L.fail(kErrMemory, "cannot allocate the graph's integer lists");
  }
  if (count < 0 || L.num_classes + count > capacity)
    return L.fail(kErrGraph, "graph spec line %d: '%s': its sizes do not match its integer lists", lineno, name);
  return kOk;
}

// Parses the graph spec (nn/model.cpp: Model::spec) into L.nodes. Names point into L.text.
Status parse_spec(Loading& L, const char* spec, uint64_t spec_len, Graph* g) {
  if (std::memchr(spec, '\0', size_t(spec_len))) return L.fail(kErrGraph, "graph spec: holds a NUL byte");
  L.text = static_cast<char*>(std::malloc(size_t(spec_len) + 1));
  if (!L.text) return L.fail(kErrMemory, "cannot allocate the graph spec");
  std::memcpy(L.text, spec, size_t(spec_len));
  L.text[spec_len] = '\0';
  int lines = 1;
  for (uint64_t i = 0; i < spec_len; ++i) lines += L.text[i] == '\n';
  L.nodes = static_cast<Node*>(std::calloc(size_t(lines), sizeof(Node)));
  L.has_bias = static_cast<unsigned char*>(std::calloc(size_t(lines), 1));
  if (!L.nodes || !L.has_bias) return L.fail(kErrMemory, "cannot allocate %d graph nodes", lines);

  bool header = false, have_output = false;
  int lineno = 0;
  char* line = L.text;
  while (line) {
    char* next = std::strchr(line, '\n');
    if (next) *next++ = '\0';
    ++lineno;
    // Split the line into whitespace-separated tokens, terminated in place.
    char* tok[Attrs::kMax + 2];
    int ntok = 0;
    const bool empty = *line == '\0';  // only an empty line is skipped (a blank one is refused, as in the full build)
    for (char* c = line; *c;) {
      while (is_space(*c)) *c++ = '\0';
      if (!*c) break;
      if (ntok == Attrs::kMax + 2) return L.fail(kErrGraph, "graph spec line %d: too many attributes", lineno);
      tok[ntok++] = c;
      while (*c && !is_space(*c)) ++c;
    }
    line = next;
    if (empty) continue;
    if (!header) {
      if (ntok != 2 || std::strcmp(tok[0], "dnnshifter-graph") != 0 || std::strcmp(tok[1], "1") != 0)
        return L.fail(kErrGraph, "graph spec line %d: not a dnnshifter graph spec (version 1)", lineno);
      header = true;
      continue;
    }
    if (ntok < 2) return L.fail(kErrGraph, "graph spec line %d: missing node name", lineno);
    const char* kind = tok[0];
    const char* name = tok[1];
    auto find_node = [&](const char* n) {
      for (int i = 0; i < L.num_nodes; ++i)
        if (std::strcmp(L.nodes[i].name, n) == 0) return i;
      return -1;
    };
    if (std::strcmp(kind, "output") == 0) {
      if (ntok != 2) return L.fail(kErrGraph, "graph spec line %d: unexpected '%s' after the output node", lineno, tok[2]);
      g->output = find_node(name);
      if (g->output < 1) return L.fail(kErrGraph, "graph spec line %d: output node '%s' does not exist", lineno, name);
      have_output = true;
      continue;
    }
    if (!valid_node_name(name))
      return L.fail(kErrGraph, "graph spec line %d: node name '%s' contains a space, ',', '=' or ':'", lineno, name);
    if (find_node(name) >= 0) return L.fail(kErrGraph, "graph spec line %d: duplicate node name '%s'", lineno, name);
    // The attributes each kind takes (nn/layers.cpp: make_layer): any other would change the
    // layer's meaning, so it is refused, as is an attribute given twice.
    static const char* const kKnown[][14] = {
        {"input", "shape"},
        {"conv", "inputs", "in", "out", "kh", "kw", "stride", "pad", "bias", "relu", "pos_h", "pos_w", "pos_rows", "pos_cols"},
        {"batchnorm", "inputs", "channels", "eps", "momentum"},
        {"maxpool", "inputs", "kernel", "stride"},
        {"avgpool", "inputs", "kernel", "stride"},
        {"linear", "inputs", "in", "out", "bias"},
        {"relu", "inputs"},
        {"global_avgpool", "inputs"},
        {"flatten", "inputs"},
        {"add", "inputs", "channels", "map0", "map1", "bias"}};
    const char* const* known = nullptr;
    for (const auto& k : kKnown)
      if (std::strcmp(k[0], kind) == 0) known = k;
    if (!known) return L.fail(kErrGraph, "graph spec line %d: unknown layer kind '%s'", lineno, kind);
    Attrs a;
    for (int t = 2; t < ntok; ++t) {
      char* eq = std::strchr(tok[t], '=');
      if (!eq) return L.fail(kErrGraph, "graph spec line %d: expected key=value, got '%s'", lineno, tok[t]);
      *eq = '\0';
      if (a.find(tok[t])) return L.fail(kErrGraph, "graph spec line %d: %s '%s': attribute '%s' given twice", lineno, kind, name, tok[t]);
      bool ok = false;
      for (int k = 1; k < 14 && known[k]; ++k) ok = ok || std::strcmp(known[k], tok[t]) == 0;
      if (!ok) return L.fail(kErrGraph, "graph spec line %d: %s '%s': unknown attribute '%s'", lineno, kind, name, tok[t]);
      a.keys[a.count] = tok[t];
      a.values[a.count++] = eq + 1;
    }
    Node nd{};
    nd.name = name;
    nd.in0 = nd.in1 = -1;
    // Reads a required integer attribute (or an optional one with a default).
    Status st = kOk;
    auto attr = [&](const char* key, bool required, int32_t def) -> int32_t {
      const char* v = a.find(key);
      int32_t out = def;
      if (!v && required && st == kOk)
        st = L.fail(kErrGraph, "graph spec line %d: %s '%s': missing attribute '%s'", lineno, kind, name, key);
      else if (v && !parse_int(v, &out) && st == kOk)
        st = L.fail(kErrGraph, "graph spec line %d: %s '%s': attribute '%s' is not an integer: '%s'", lineno, kind,
                    name, key, v);
      return out;
    };
    if (std::strcmp(kind, "input") == 0) {
      if (L.num_nodes != 0) return L.fail(kErrGraph, "graph spec line %d: the input must be the first node", lineno);
      const char* shape = a.find("shape");
      int32_t dims[3] = {0, 0, 0};
      int nd_read = 0;
      if (shape) {
        char* s = const_cast<char*>(shape);
        for (char* part = s; part && nd_read < 4; ++nd_read) {
          char* comma = std::strchr(part, ',');
          if (comma) *comma++ = '\0';
          if (nd_read < 3 && !parse_int(part, &dims[nd_read])) nd_read = 9;
          part = comma;
        }
      }
      if (nd_read != 3 || dims[0] < 1 || dims[1] < 1 || dims[2] < 1)
        return L.fail(kErrGraph, "graph spec line %d: input shape must be C,H,W with positive sizes", lineno);
      nd.op = Op::Input;
      g->in_c = dims[0], g->in_h = dims[1], g->in_w = dims[2];
      L.nodes[L.num_nodes++] = nd;
      continue;
    }
    if (L.num_nodes == 0) return L.fail(kErrGraph, "graph spec line %d: add the input node before '%s'", lineno, name);
    if (std::strcmp(kind, "conv") == 0) {
      nd.op = Op::Conv;
      nd.in_ch = attr("in", true, 0), nd.out_ch = attr("out", true, 0);
      nd.kernel_h = attr("kh", true, 0), nd.kernel_w = attr("kw", true, 0);
      nd.stride = attr("stride", true, 0), nd.pad = attr("pad", true, 0);
      L.has_bias[L.num_nodes] = attr("bias", true, 0) != 0;
      nd.fused_relu = attr("relu", false, 0) != 0;
      nd.pos_h = attr("pos_h", false, 0), nd.pos_w = attr("pos_w", false, 0);
      // A border table's classes; without them the table is a full (K, pos_h, pos_w) map.
      const char* rows = a.find("pos_rows");
      const char* cols = a.find("pos_cols");
      if (st == kOk && (rows || cols)) {
        if (!rows || !cols || nd.pos_h < 1 || nd.pos_w < 1)
          return L.fail(kErrGraph, "graph spec line %d: conv '%s': pos_rows and pos_cols come together, with pos_h and pos_w",
                        lineno, name);
        if (Status cs = class_room(L, spec_len, int64_t(nd.pos_h) + nd.pos_w, lineno, name); cs != kOk) return cs;
        int32_t* r = L.classes + L.num_classes;
        int32_t* c = r + nd.pos_h;
        if (!parse_classes(rows, nd.pos_h, r, &nd.pos_rows) || !parse_classes(cols, nd.pos_w, c, &nd.pos_cols))
          return L.fail(kErrGraph,
                        "graph spec line %d: conv '%s': pos_rows/pos_cols must list pos_h/pos_w classes, each in [0, pos_h/pos_w)",
                        lineno, name);
        nd.pos_row_class = r, nd.pos_col_class = c;
        L.num_classes += nd.pos_h + nd.pos_w;
      }
    } else if (std::strcmp(kind, "batchnorm") == 0) {
      nd.op = Op::BatchNorm;
      nd.in_ch = nd.out_ch = attr("channels", true, 0);
      nd.eps = 1e-5f;
      float momentum = 0.1f;  // training only: checked, not used
      if (const char* e = a.find("eps"); e && !parse_float(e, &nd.eps))
        return L.fail(kErrGraph, "graph spec line %d: batchnorm '%s': eps is not a number: '%s'", lineno, name, e);
      if (const char* mo = a.find("momentum"); mo && !parse_float(mo, &momentum))
        return L.fail(kErrGraph, "graph spec line %d: batchnorm '%s': momentum is not a number: '%s'", lineno, name, mo);
    } else if (std::strcmp(kind, "relu") == 0) {
      nd.op = Op::ReLU;
    } else if (std::strcmp(kind, "maxpool") == 0 || std::strcmp(kind, "avgpool") == 0) {
      nd.op = kind[0] == 'm' ? Op::MaxPool : Op::AvgPool;
      nd.kernel_h = nd.kernel_w = attr("kernel", true, 0);
      nd.stride = attr("stride", true, 0);
    } else if (std::strcmp(kind, "global_avgpool") == 0) {
      nd.op = Op::GlobalAvgPool;
    } else if (std::strcmp(kind, "flatten") == 0) {
      nd.op = Op::Flatten;
    } else if (std::strcmp(kind, "add") == 0) {
      nd.op = Op::Add;
      // A compacted residual join: channels, channel maps (ascending output channels, one per
      // input channel) and a bias.
      if (a.find("channels")) {
        nd.out_ch = attr("channels", true, 0);
        L.has_bias[L.num_nodes] = attr("bias", false, 0) != 0;
        const char* lists[2] = {a.find("map0"), a.find("map1")};
        const int32_t** slots[2] = {&nd.map0, &nd.map1};
        for (int s = 0; s < 2 && st == kOk; ++s) {
          if (!lists[s]) continue;
          int32_t count = 1;
          for (const char* p = lists[s]; *p; ++p) count += *p == ',';
          if (Status cs = class_room(L, spec_len, count, lineno, name); cs != kOk) return cs;
          int32_t* out = L.classes + L.num_classes;
          int32_t top = 0;
          // Entries in [0, count * big): the planner checks them against the channel count.
          if (nd.out_ch < 1 || !parse_classes(lists[s], count, out, &top, nd.out_ch))
            return L.fail(kErrGraph, "graph spec line %d: add '%s': map%d must list channels in [0, %d)", lineno, name, s,
                          nd.out_ch);
          *slots[s] = out;
          L.num_classes += count;
        }
      }
    } else if (std::strcmp(kind, "linear") == 0) {
      nd.op = Op::Linear;
      nd.in_ch = attr("in", true, 0), nd.out_ch = attr("out", true, 0);
      L.has_bias[L.num_nodes] = attr("bias", true, 0) != 0;
    } else {
      return L.fail(kErrGraph, "graph spec line %d: unknown layer kind '%s'", lineno, kind);
    }
    if (st != kOk) return st;
    // inputs=a[,b]: producers by name, all defined on earlier lines.
    const char* ins = a.find("inputs");
    int nin = 0;
    if (ins) {
      char* s = const_cast<char*>(ins);
      for (char* part = s; part; ++nin) {
        char* comma = std::strchr(part, ',');
        if (comma) *comma++ = '\0';
        const int j = find_node(part);
        if (j < 0) return L.fail(kErrGraph, "graph spec line %d: node '%s' reads unknown node '%s'", lineno, name, part);
        if (nin == 0) nd.in0 = j;
        else if (nin == 1) nd.in1 = j;
        part = comma;
      }
    }
    const int needed = nd.op == Op::Add ? 2 : 1;
    if (nin != needed)
      return L.fail(kErrGraph, "graph spec line %d: node '%s' (%s) takes %d input(s), got %d", lineno, name, kind,
                    needed, nin);
    L.nodes[L.num_nodes++] = nd;
  }
  if (!header) return L.fail(kErrGraph, "graph spec: empty");
  if (L.num_nodes < 2) return L.fail(kErrGraph, "graph spec: no layers");
  if (!have_output) return L.fail(kErrGraph, "graph spec: missing 'output' line");
  return kOk;
}

// Attaches every parameter tensor to its node, copied into one aligned buffer in host order.
Status attach_tensors(Loading& L, int64_t* num_weights) {
  struct Want {
    Node* node;
    const char* param;
    int ndim;
    int64_t shape[4];
    const float** slot;
    bool is_param;  // a parameter (may have a mask), not a buffer
    bool sparse_ok;  // a conv or linear weight: a sparse record stays sparse (the kernels run it)
  };
  // Two passes over the same list: first find and size, then copy.
  int64_t total = 0, index_total = 0;
  for (int pass = 0; pass < 2; ++pass) {
    int64_t at = 0, index_at = 0;
    for (int i = 1; i < L.num_nodes; ++i) {
      Node& nd = L.nodes[i];
      Want w[4];
      int nw = 0;
      const int64_t K = nd.out_ch, C = nd.in_ch;
      if (nd.op == Op::Conv) {
        w[nw++] = {&nd, "weight", 4, {K, C, nd.kernel_h, nd.kernel_w}, &nd.weight, true, true};
        if (L.has_bias[i]) w[nw++] = {&nd, "bias", 1, {K}, &nd.bias, true, false};
        if (nd.pos_h > 0)
          w[nw++] = {&nd, "pos_bias", 3,
                     {K, nd.pos_row_class ? nd.pos_rows : nd.pos_h, nd.pos_col_class ? nd.pos_cols : nd.pos_w},
                     &nd.pos_bias, true, false};
      } else if (nd.op == Op::Linear) {
        w[nw++] = {&nd, "weight", 2, {K, C}, &nd.weight, true, true};
        if (L.has_bias[i]) w[nw++] = {&nd, "bias", 1, {K}, &nd.bias, true, false};
      } else if (nd.op == Op::Add) {
        if (L.has_bias[i]) w[nw++] = {&nd, "bias", 1, {K}, &nd.bias, true, false};
      } else if (nd.op == Op::BatchNorm) {
        w[nw++] = {&nd, "weight", 1, {C}, &nd.weight, true, false};
        w[nw++] = {&nd, "bias", 1, {C}, &nd.bias, true, false};
        w[nw++] = {&nd, "running_mean", 1, {C}, &nd.mean, false, false};
        w[nw++] = {&nd, "running_var", 1, {C}, &nd.var, false, false};
      }
      if (K < 0 || C < 0) return L.fail(kErrGraph, "node '%s': negative channel count", nd.name);
      for (int k = 0; k < nw; ++k) {
        const TensorEntry* t = nullptr;
        Status s = find_tensor(L, nd.name, w[k].param, w[k].ndim, w[k].shape, &t);
        if (s != kOk) return s;
        const TensorEntry& sup = support_of(*t);
        const bool keep_sparse = w[k].sparse_ok && t->encoding != kDense;
        const int64_t floats = int64_t(((keep_sparse ? sup.count : t->numel) + 3) / 4 * 4);  // 16-byte aligned
        if (pass == 0) {
          L.tensors[t - L.tensors].param = w[k].is_param;
          total += floats;
          if (keep_sparse) index_total += int64_t(sup.index_len);
          continue;
        }
        float* dst = L.weights + at;
        if (t->encoding == kDense) {
          // Little-endian bytes to host floats, without unaligned float reads.
          for (uint64_t e = 0; e < t->numel; ++e) dst[e] = stored_value(*t, e);
        } else if (keep_sparse) {
          // The kept values and their index, as the sparse kernels read them.
          for (uint64_t e = 0; e < sup.count; ++e) dst[e] = stored_value(*t, e);
          if (sup.index_len) std::memcpy(L.indices + index_at, sup.index, size_t(sup.index_len));
          w[k].node->weight_coding = sup.coding;
          w[k].node->weight_count = int64_t(sup.count);
          w[k].node->weight_index = L.indices + index_at;
          w[k].node->weight_index_bytes = int64_t(sup.index_len);
          index_at += int64_t(sup.index_len);
        } else {
          // Any other parameter dense: the kept values at their positions, +0.0 elsewhere.
          for (uint64_t e = 0; e < t->numel; ++e) dst[e] = 0.0f;
          IndexWalk walk = index_walk(sup.coding, sup.index, int64_t(sup.index_len));
          uint64_t e = 0;
          for (int64_t pos; (pos = index_next(&walk)) >= 0;) dst[pos] = stored_value(*t, e++);
        }
        *w[k].slot = dst;
        at += floats;
      }
    }
    if (pass == 0) {
      L.weights = static_cast<float*>(std::malloc(size_t(total > 0 ? total : 1) * sizeof(float)));
      if (!L.weights) return L.fail(kErrMemory, "cannot allocate %lld weights", (long long)total);
      L.indices = static_cast<uint8_t*>(std::malloc(size_t(index_total > 0 ? index_total : 1)));
      if (!L.indices) return L.fail(kErrMemory, "cannot allocate %lld index bytes", (long long)index_total);
    }
  }
  // Every other tensor is the mask of a parameter ("mask:<param>"): of its shape, 0 and 1 only.
  for (uint64_t i = 0; i < L.num_tensors; ++i) {
    const TensorEntry& t = L.tensors[i];
    if (t.used) continue;
    const TensorEntry* of = nullptr;
    if (t.name_len > 5 && std::memcmp(t.name, "mask:", 5) == 0) {
      const Span key{reinterpret_cast<const unsigned char*>(t.name) + 5, t.name_len - 5, 0};
      const Span* hit = static_cast<const Span*>(
          std::bsearch(&key, L.spans, size_t(L.num_tensors), sizeof(Span), compare_spans));
      if (hit && L.tensors[hit->index].used && L.tensors[hit->index].param) of = &L.tensors[hit->index];
    }
    if (!of) return L.fail(kErrFormat, "tensor '%.*s' does not belong to the graph", int(t.name_len), t.name);
    if (t.ndim != of->ndim || std::memcmp(t.dims, of->dims, 8 * size_t(t.ndim)) != 0)
      return L.fail(kErrFormat, "mask of '%.*s' does not have the shape of its parameter", int(of->name_len), of->name);
    const uint64_t stored = t.encoding == kDense ? t.numel : t.encoding == kSparse ? t.count : 0;  // ones: all 1.0
    for (uint64_t e = 0; e < stored; ++e) {
      const uint32_t bits = get_le32(t.data + 4 * e);
      if (bits != 0u && bits != 0x80000000u && bits != 0x3F800000u)  // 0, -0 and 1
        return L.fail(kErrFormat, "mask of '%.*s' holds a value other than 0 and 1", int(of->name_len), of->name);
    }
  }
  *num_weights = total;
  return kOk;
}

}  // namespace

Status load_model_memory(const unsigned char* data, size_t size, const char* where, LoadedModel* m) {
  if (!m) return kErrArgument;
  *m = LoadedModel{};
  if (!where) where = "model";
  Loading L{where, m->error, sizeof m->error};
  if (!data && size > 0) return L.fail(kErrArgument, "no data");
  Status s = parse_header(L, data, size);
  if (s != kOk) return s;
  const char* spec = nullptr;
  uint64_t spec_len = 0;
  if ((s = parse_body(L, data, size, &spec, &spec_len)) != kOk) return s;
  Graph g{nullptr, 0, 0, 0, 0, 0};
  if ((s = parse_spec(L, spec, spec_len, &g)) != kOk) return s;
  int64_t num_weights = 0;
  if ((s = attach_tensors(L, &num_weights)) != kOk) return s;
  g.nodes = L.nodes;
  g.num_nodes = L.num_nodes;
  // Validate every shape now, so a model that loads also runs.
  L.plan = static_cast<NodePlan*>(std::malloc(size_t(L.num_nodes) * sizeof(NodePlan)));
  if (!L.plan) return L.fail(kErrMemory, "cannot allocate the plan");
  int64_t per_image = 0;
  char detail[256];
  if ((s = plan_graph(g, L.plan, &per_image, detail, sizeof detail)) != kOk) return L.fail(s, "%s", detail);
  // Success: hand the allocations over to the model.
  m->graph = g;
  m->nodes = L.nodes, L.nodes = nullptr;
  m->text = L.text, L.text = nullptr;
  m->weights = L.weights, L.weights = nullptr;
  m->indices = L.indices, L.indices = nullptr;
  m->classes = L.classes, L.classes = nullptr;
  m->num_weights = num_weights;
  m->error[0] = '\0';
  return kOk;
}

Status load_model_file(const char* path, LoadedModel* m) {
  if (!m) return kErrArgument;
  *m = LoadedModel{};
  if (!path) return kErrArgument;
  std::FILE* f = std::fopen(path, "rb");
  if (!f) {
    std::snprintf(m->error, sizeof m->error, "%s: cannot open for reading: %s", path, std::strerror(errno));
    return kErrIo;
  }
  long size = -1;
  if (std::fseek(f, 0, SEEK_END) == 0) size = std::ftell(f);
  unsigned char* data = size >= 0 ? static_cast<unsigned char*>(std::malloc(size_t(size) + 1)) : nullptr;
  bool ok = data && std::fseek(f, 0, SEEK_SET) == 0 && std::fread(data, 1, size_t(size), f) == size_t(size);
  std::fclose(f);
  if (!ok) {
    std::free(data);
    std::snprintf(m->error, sizeof m->error, "%s: cannot read the file (%s)", path,
                  size < 0 ? "not a regular file?" : data ? "read error" : "out of memory");
    return size >= 0 && !data ? kErrMemory : kErrIo;
  }
  Status s = load_model_memory(data, size_t(size), path, m);
  std::free(data);
  return s;
}

void free_model(LoadedModel* m) {
  if (!m) return;
  std::free(m->nodes);
  std::free(m->text);
  std::free(m->weights);
  std::free(m->indices);
  std::free(m->classes);
  *m = LoadedModel{};
}

}  // namespace dnns::rt
