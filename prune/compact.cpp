#include "prune/compact.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DNNS_COMPACT_X86 1
#include <immintrin.h>
#endif

#include "core/error.h"
#include "core/parallel.h"
#include "kernels/cpu/isa.h"
#include "kernels/ops.h"

namespace dnns {
namespace {

int find_root(std::vector<int>& parent, int x) {
  while (parent[x] != x) x = parent[x] = parent[parent[x]];
  return x;
}

// For a weight viewed as (K, C, slice): per (k, c), whether any value is nonzero (any bit but
// the sign set, so -0.0 counts as zero). For a conv slice = R*S; for a linear after a flatten
// slice = H*W. Computing these is the one full pass over the weights (slice_stats below).
struct SliceStats {
  int K = 0, C = 0;
  std::vector<uint8_t> nonzero;  // (K, C)
  std::vector<uint8_t> row_any;  // (K) filter k has a nonzero weight
};

// The bit buffer is read back as 64-bit words whose first byte holds the lowest bits.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "slice_flags assumes a little-endian machine");

// Bit i of `bits` = whether p[i] is nonzero, for i < n, from element `from` on (earlier bits
// already written). `bits` holds n / 8 + 1 bytes.
void nonzero_bits_tail(const float* p, int64_t from, int64_t n, uint8_t* bits) {
  for (int64_t i = from; i < n; i += 8) {
    uint8_t b = 0;
    for (int q = 0; q < 8 && i + q < n; ++q) {
      uint32_t u;
      std::memcpy(&u, p + i + q, sizeof u);
      b |= uint8_t((u & 0x7fffffffu) != 0) << q;
    }
    bits[i / 8] = b;
  }
}

// The vector versions, compiled for their instruction sets and called only when the CPU has
// them (kernels/cpu/isa.h decides, once for the whole library).
#if defined(DNNS_COMPACT_X86)
__attribute__((target("avx512f"))) void nonzero_bits_avx512(const float* p, int64_t n, uint8_t* bits) {
  int64_t i = 0;
  const __m512i no_sign = _mm512_set1_epi32(0x7fffffff);
  for (; i + 16 <= n; i += 16) {
    const __mmask16 m = _mm512_test_epi32_mask(_mm512_loadu_si512(p + i), no_sign);
    std::memcpy(bits + i / 8, &m, 2);
  }
  nonzero_bits_tail(p, i, n, bits);
}

__attribute__((target("avx2"))) void nonzero_bits_avx2(const float* p, int64_t n, uint8_t* bits) {
  int64_t i = 0;
  const __m256i no_sign = _mm256_set1_epi32(0x7fffffff), zero = _mm256_setzero_si256();
  for (; i + 8 <= n; i += 8) {
    const __m256i v = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)), no_sign);
    bits[i / 8] = static_cast<uint8_t>(~_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(v, zero))));
  }
  nonzero_bits_tail(p, i, n, bits);
}
#endif

void nonzero_bits(const float* p, int64_t n, uint8_t* bits) {
#if defined(DNNS_COMPACT_X86)
  switch (cpu::cpu_isa()) {
    case cpu::Isa::Avx512: return nonzero_bits_avx512(p, n, bits);
    case cpu::Isa::Avx2: return nonzero_bits_avx2(p, n, bits);
    case cpu::Isa::Generic: break;
  }
#endif
  nonzero_bits_tail(p, 0, n, bits);
}

inline bool any_nonzero(const float* p, int64_t n) {
  uint32_t any = 0;
  for (int64_t j = 0; j < n; ++j) {
    uint32_t bits;
    std::memcpy(&bits, p + j, sizeof bits);
    any |= bits & 0x7fffffffu;
  }
  return any != 0;
}

// out[t] = 1 when slice t of the n consecutive slices of `slice` floats at p has a nonzero
// value. The floats stream through once into a bit buffer (1/32 of their size, n * slice /
// 8 + 16 bytes at `bits`); slices are then read from the bits. For 3x3 kernels, 8 slices span
// 9 bytes: slice c of the group starts at bit c of byte c and ends at bit c of byte c + 1, so
// two masked 64-bit words give all 8 answers at once.
void slice_flags(const float* p, int64_t n, int64_t slice, uint8_t* bits, uint8_t* o) {
  if (slice == 1) {
    for (int64_t t = 0; t < n; ++t) {
      uint32_t u;
      std::memcpy(&u, p + t, sizeof u);
      o[t] = (u & 0x7fffffffu) != 0;
    }
    return;
  }
  if (slice > 57) {  // a slice's bits would not fit one 64-bit load
    for (int64_t t = 0; t < n; ++t) o[t] = any_nonzero(p + t * slice, slice);
    return;
  }
  nonzero_bits(p, n * slice, bits);
  int64_t t = 0;
  if (slice == 9) {
    constexpr uint64_t kFrom = 0x80c0e0f0f8fcfeffull;  // byte c: bits c..7
    constexpr uint64_t kTo = 0xff7f3f1f0f070301ull;    // byte c: bits 0..c
    constexpr uint64_t kLow7 = 0x7f7f7f7f7f7f7f7full, kHigh = 0x8080808080808080ull;
    for (; t + 8 <= n; t += 8) {
      uint64_t x, y;
      std::memcpy(&x, bits + t / 8 * 9, 8);
      std::memcpy(&y, bits + t / 8 * 9 + 1, 8);
      const uint64_t z = (x & kFrom) | (y & kTo);               // byte c nonzero iff slice c is
      const uint64_t nz = (((z & kLow7) + kLow7) | z) & kHigh;  // 0x80 in each nonzero byte
      const uint64_t flags = nz >> 7;
      std::memcpy(o + t, &flags, 8);
    }
  }
  const uint64_t low = (uint64_t(1) << slice) - 1;
  for (; t < n; ++t) {
    const int64_t bit = t * slice;
    uint64_t word;
    std::memcpy(&word, bits + bit / 8, sizeof word);
    o[t] = ((word >> (bit % 8)) & low) != 0;
  }
}

// Byte-flag helpers (restrict-qualified so the compiler vectorises them).
inline void or_into(uint8_t* __restrict dst, const uint8_t* __restrict src, int n) {
  for (int c = 0; c < n; ++c) dst[c] |= src[c];
}
// dst |= src & !fixed
inline void or_unfixed_into(uint8_t* __restrict dst, const uint8_t* __restrict src, const uint8_t* __restrict fixed,
                            int n) {
  for (int c = 0; c < n; ++c) dst[c] |= src[c] & (fixed[c] ^ 1);
}
inline uint8_t any_set(const uint8_t* __restrict p, int n) {
  uint8_t any = 0;
  for (int c = 0; c < n; ++c) any |= p[c];
  return any;
}

// A weight to scan, viewed as (K, C, slice).
struct WeightView {
  const float* w = nullptr;
  int K = 0, C = 0;
  int64_t slice = 0;
};

// The one full pass over the weights: slice statistics of every view, in one parallel loop
// over blocks of whole rows of all of them (one hand-out of work instead of one per layer).
std::vector<SliceStats> slice_stats(const std::vector<WeightView>& views) {
  struct Task {
    int v, r0, r1;
  };
  std::vector<SliceStats> out(views.size());
  std::vector<Task> tasks;
  int64_t max_block = 0;
  for (size_t v = 0; v < views.size(); ++v) {
    const WeightView& x = views[v];
    SliceStats& s = out[v];
    s.K = x.K, s.C = x.C;
    s.nonzero.assign(size_t(x.K) * x.C, 0);
    s.row_any.assign(x.K, 0);
    if (x.C == 0) continue;
    const int rows = static_cast<int>(std::max<int64_t>(1, 4096 / x.C));  // ~4096 slices per task
    for (int r0 = 0; r0 < x.K; r0 += rows) tasks.push_back({int(v), r0, std::min(x.K, r0 + rows)});
    if (x.slice > 1 && x.slice <= 57)  // the bit-buffer paths of slice_flags
      max_block = std::max(max_block, int64_t(std::min(rows, x.K)) * x.C * x.slice);
  }
  parallel_for(size_t(0), tasks.size(), size_t(1), [&](size_t t0, size_t t1) {
    std::vector<uint8_t> bits(max_block > 0 ? max_block / 8 + 16 : 0);  // + room for 8-byte loads
    for (size_t t = t0; t < t1; ++t) {
      const WeightView& x = views[tasks[t].v];
      SliceStats& s = out[tasks[t].v];
      const int r0 = tasks[t].r0, r1 = tasks[t].r1;
      const int64_t row_len = int64_t(x.C) * x.slice;
      slice_flags(x.w + r0 * row_len, int64_t(r1 - r0) * x.C, x.slice, bits.data(), s.nonzero.data() + size_t(r0) * x.C);
      for (int k = r0; k < r1; ++k) s.row_any[k] = any_set(s.nonzero.data() + size_t(k) * x.C, x.C);
    }
  });
  return out;
}

// One pass over chosen rows of a weight src (., C, slice): it copies the kept input slices
// and folds removed constant ones. In output row r (source row rows[r]):
//   kept run (c, q, len): dst[r, q + i, :] = scale[r] * src[rows[r], c + i, :] for i < len
//       (scale when given); in short runs a slice flagged all-zero in `nonzero` is written as
//       zeros unread, long runs are copied straight; dst2[r, q + i, :] = src2[rows[r], c + i,
//       :] when src2 is given (the pruning mask, copied in full: its zero slices may still
//       hold ones);
//   folded (c, v): wr[r, 0, :] += v * src[rows[r], c, :] in list order (all-zero slices add
//       nothing), the collapsed kernel of the removed channels of constant value;
//   own_plane (c, p): wr[r, p, :] = src[rows[r], c, :], a removed channel with its own map.
// The reads are scattered: the next row is prefetched while this one is copied.
struct KeptRun {
  int c = 0, q = 0, len = 0;
};

struct Gather {
  const float* src = nullptr;
  int C = 0;
  int64_t slice = 0;
  const std::vector<int>* rows = nullptr;
  std::vector<KeptRun> kept;
  int kept_count = 0;  // output channels: the runs' total length
  std::vector<std::pair<int, float>> folded;
  std::vector<std::pair<int, int>> own_plane;
  float* dst = nullptr;
  const float* scale = nullptr;
  const uint8_t* nonzero = nullptr;
  const float* src2 = nullptr;
  float* dst2 = nullptr;
  float* wr = nullptr;
  int planes = 0;
};

// Keeps `cols` (ascending), in runs of consecutive channels.
void keep_all(Gather& g, const std::vector<int>& cols) {
  g.kept.clear();
  for (size_t q = 0; q < cols.size(); ++q) {
    if (!g.kept.empty() && g.kept.back().c + g.kept.back().len == cols[q]) ++g.kept.back().len;
    else g.kept.push_back({cols[q], static_cast<int>(q), 1});
  }
  g.kept_count = static_cast<int>(cols.size());
}

constexpr int kLongRun = 4;  // runs this long are copied straight, zero slices included

template <int S>
void gather_rows(const Gather& g, int r0, int r1) {
  const int64_t n = S > 0 ? S : g.slice;
  const std::vector<int>& rows = *g.rows;
  const int Cn = g.kept_count;
  for (int r = r0; r < r1; ++r) {
    const float s = g.scale ? g.scale[r] : 1.0f;
    const int64_t in = int64_t(rows[r]) * g.C;  // first slice of the source row
    const uint8_t* nz = g.nonzero ? g.nonzero + in : nullptr;
    const int64_t next = r + 1 < r1 ? int64_t(rows[r + 1]) * g.C : -1;
    float* out = g.dst + int64_t(r) * Cn * n;
    for (const KeptRun& run : g.kept) {
      if (run.len >= kLongRun) {
        const float* p = g.src + (in + run.c) * n;
        float* o = out + run.q * n;
        const int64_t count = run.len * n;
        if (g.scale)
          for (int64_t e = 0; e < count; ++e) o[e] = p[e] * s;
        else
          std::copy_n(p, count, o);
        continue;
      }
      for (int i = 0; i < run.len; ++i) {
        const int c = run.c + i;
        if (next >= 0 && (!g.nonzero || g.nonzero[next + c])) __builtin_prefetch(g.src + (next + c) * n);
        float* o = out + (run.q + i) * n;
        if (nz && !nz[c]) {  // all zero: not read
          for (int64_t e = 0; e < n; ++e) o[e] = 0.0f;
          continue;
        }
        const float* p = g.src + (in + c) * n;
        if (g.scale)
          for (int64_t e = 0; e < n; ++e) o[e] = p[e] * s;
        else
          for (int64_t e = 0; e < n; ++e) o[e] = p[e];
      }
    }
    if (g.dst2) {
      float* out2 = g.dst2 + int64_t(r) * Cn * n;
      for (const KeptRun& run : g.kept) {
        if (next >= 0 && run.len < kLongRun)
          for (int i = 0; i < run.len; ++i) __builtin_prefetch(g.src2 + (next + run.c + i) * n);
        std::copy_n(g.src2 + (in + run.c) * n, run.len * n, out2 + run.q * n);
      }
    }
    if (!g.wr) continue;
    float* w = g.wr + int64_t(r) * g.planes * n;
    for (const auto& [c, v] : g.folded) {
      if (next >= 0 && (!g.nonzero || g.nonzero[next + c])) __builtin_prefetch(g.src + (next + c) * n);
      if (nz && !nz[c]) continue;  // adds nothing
      const float* p = g.src + (in + c) * n;
      for (int64_t e = 0; e < n; ++e) w[e] += v * p[e];
    }
    for (const auto& [c, plane] : g.own_plane) {
      const float* p = g.src + (in + c) * n;
      for (int64_t e = 0; e < n; ++e) w[plane * n + e] = p[e];
    }
  }
}

void gather_slices(const Gather& g) {
  const int K = static_cast<int>(g.rows->size());
  const int64_t per_row =
      std::max<int64_t>(1, int64_t(g.kept_count * (g.src2 ? 2 : 1) + g.folded.size() + g.own_plane.size()) * g.slice);
  const int grain = static_cast<int>(std::max<int64_t>(1, 16384 / per_row));
  auto run = [&](int r0, int r1) {
    if (g.slice == 9) gather_rows<9>(g, r0, r1);
    else if (g.slice == 1) gather_rows<1>(g, r0, r1);
    else gather_rows<0>(g, r0, r1);
  };
  if (K <= grain) return run(0, K);  // too little to share out
  parallel_for(0, K, grain, run);
}

// The conv or linear layer L restricted to output rows `rows` and input channels `cols`
// (weights gathered; bias and per-position bias follow the rows).
std::unique_ptr<Layer> sub_layer(const Layer& L, const SliceStats& st, int64_t fpc, const std::vector<int>& rows,
                                 const std::vector<int>& cols) {
  const int Kf = static_cast<int>(rows.size()), Cf = static_cast<int>(cols.size());
  if (auto* cv = dynamic_cast<const Conv2d*>(&L)) {
    auto sc = std::make_unique<Conv2d>(Cf, Kf, cv->kernel_h, cv->kernel_w, cv->stride, cv->pad, cv->has_bias,
                                       cv->fused_relu, 0, 0, /*zero_weight=*/false);
    if (cv->pos_h > 0) sc->set_border_table(cv->pos_rows, cv->pos_cols);
    const int64_t op = cv->table_rows() * cv->table_cols();  // (row classes, column classes) per filter
    for (int r = 0; r < Kf; ++r) {
      if (cv->has_bias) sc->bias.value[r] = cv->bias.value[rows[r]];
      if (op) std::copy_n(cv->pos_bias.value.data() + rows[r] * op, op, sc->pos_bias.value.data() + r * op);
    }
    Gather g;
    g.src = cv->weight.value.data(), g.C = st.C, g.slice = int64_t(cv->kernel_h) * cv->kernel_w;
    g.rows = &rows, g.dst = sc->weight.value.data();
    keep_all(g, cols);
    g.nonzero = st.nonzero.data();
    gather_slices(g);
    return sc;
  }
  const auto& ln = static_cast<const Linear&>(L);
  auto sl = std::make_unique<Linear>(int(Cf * fpc), Kf, ln.has_bias, /*zero_weight=*/false);
  if (ln.has_bias)
    for (int r = 0; r < Kf; ++r) sl->bias.value[r] = ln.bias.value[rows[r]];
  Gather g;
  g.src = ln.weight.value.data(), g.C = st.C, g.slice = fpc;
  g.rows = &rows, g.dst = sl->weight.value.data();
  keep_all(g, cols);
  g.nonzero = st.nonzero.data();
  gather_slices(g);
  return sl;
}

// Eval-mode forward of one layer on batch-1 inputs.
Tensor run_layer(Layer& L, const std::vector<Tensor>& in) {
  std::vector<Shape> shapes;
  std::vector<const Tensor*> ptrs;
  for (const Tensor& t : in) shapes.push_back(t.shape()), ptrs.push_back(&t);
  Tensor out = Tensor::uninit(L.output_shape(shapes));
  L.forward(ptrs, out, false);
  return out;
}

bool is(const Node& n, LayerKind k) { return n.layer && n.layer->kind() == k; }

// ---------------------------------------------------------------- border classes
// A fixed map that is constant away from the zero-padded border depends on the position only
// through which kernel taps (of this conv and of every padded conv or pool before it) fell into
// padding. The class of an output row is found from the classes of the input rows its window
// reads ("signature"); rows of one signature see the same values. Columns likewise. Classes are
// numbered in order of first appearance, so class c's first position is a representative.

// Classes of `out` positions of a window of `kernel` taps at `stride`, `pad` over positions of
// class in[.] (padding reads as class -1).
std::vector<int32_t> window_classes(const std::vector<int32_t>& in, int64_t out, int kernel, int stride, int pad) {
  std::map<std::vector<int32_t>, int32_t> id;
  std::vector<int32_t> sig(kernel), cls(out);
  const int64_t size = static_cast<int64_t>(in.size());
  for (int64_t o = 0; o < out; ++o) {
    for (int r = 0; r < kernel; ++r) {
      const int64_t at = o * stride - pad + r;
      sig[r] = at < 0 || at >= size ? -1 : in[at];
    }
    cls[o] = id.emplace(sig, static_cast<int32_t>(id.size())).first->second;
  }
  return cls;
}

// The common refinement of two class lists of one length: a class per pair that occurs.
std::vector<int32_t> join_classes(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  std::map<std::pair<int32_t, int32_t>, int32_t> id;
  std::vector<int32_t> cls(a.size());
  for (size_t i = 0; i < a.size(); ++i) cls[i] = id.emplace(std::pair{a[i], b[i]}, static_cast<int32_t>(id.size())).first->second;
  return cls;
}

// Everything the analysis computes, kept for the builder.
struct Analysis {
  ChannelAnalysis pub;
  // (nodes) for 4-D outputs: every fixed channel of the node is a function of (row class of
  // the position's row, column class of its column).
  std::vector<std::vector<int32_t>> row_class, col_class;
  std::vector<Shape> shapes;               // (nodes) output shape for a batch of 1
  std::vector<SliceStats> stats;           // (nodes) for conv and linear nodes
  std::vector<std::vector<int>> consumers;
};

int channels_of(const Shape& s, int fpc) { return s.size() == 4 ? int(s[1]) : int(s[1] / fpc); }

Analysis analyze(const Model& m) {
  m.require_dense_weights("compaction");
  const auto& nodes = m.nodes();
  const int n = static_cast<int>(nodes.size());
  Analysis a;
  ChannelAnalysis& ca = a.pub;
  a.shapes = m.infer_shapes(1);
  a.consumers = m.consumers();
  ca.features_per_channel.assign(n, 1);

  // Channel spaces: union a node with its inputs when it keeps their channel index.
  std::vector<int> parent(n);
  for (int i = 0; i < n; ++i) parent[i] = i;
  for (int i = 1; i < n; ++i) {
    LayerKind k = nodes[i].layer->kind();
    if (k == LayerKind::Conv || k == LayerKind::Linear) continue;
    const auto* add = dynamic_cast<const Add*>(nodes[i].layer.get());
    for (int s = 0; s < static_cast<int>(nodes[i].inputs.size()); ++s)
      if (!add || add->map[s].empty())  // a channel-mapped input has channels of its own
        parent[find_root(parent, i)] = find_root(parent, nodes[i].inputs[s]);
    int j = nodes[i].inputs[0];
    if (k == LayerKind::Flatten && a.shapes[j].size() == 4)
      ca.features_per_channel[i] = int(a.shapes[j][2] * a.shapes[j][3]);
    else if (k != LayerKind::GlobalAvgPool)
      ca.features_per_channel[i] = ca.features_per_channel[j];
  }
  std::vector<int> space_id(n, -1);
  ca.space.assign(n, -1);
  int spaces = 0;
  for (int i = 0; i < n; ++i) {
    int r = find_root(parent, i);
    if (space_id[r] < 0) space_id[r] = spaces++;
    ca.space[i] = space_id[r];
  }
  ca.space_channels.assign(spaces, -1);
  for (int i = 0; i < n; ++i) {
    int c = channels_of(a.shapes[i], ca.features_per_channel[i]);
    int& sc = ca.space_channels[ca.space[i]];
    check(sc < 0 || sc == c, "compaction: node '" + nodes[i].name + "' has " + std::to_string(c) +
                                 " channels but is joined to tensors of " + std::to_string(sc));
    sc = c;
  }

  // Slice statistics of every conv and linear weight.
  {
    std::vector<WeightView> views;
    std::vector<int> owner;
    for (int i = 1; i < n; ++i) {
      if (auto* c = dynamic_cast<const Conv2d*>(nodes[i].layer.get())) {
        check(c->weight.value.is_cpu(), "compaction runs on CPU models; move the model with to(Device::CPU)");
        views.push_back({c->weight.value.data(), c->out_channels, c->in_channels, int64_t(c->kernel_h) * c->kernel_w});
      } else if (auto* l = dynamic_cast<const Linear*>(nodes[i].layer.get())) {
        check(l->weight.value.is_cpu(), "compaction runs on CPU models; move the model with to(Device::CPU)");
        const int fpc = ca.features_per_channel[nodes[i].inputs[0]];
        views.push_back({l->weight.value.data(), l->out_features, l->in_features / fpc, fpc});
      } else {
        continue;
      }
      owner.push_back(i);
    }
    std::vector<SliceStats> stats = slice_stats(views);
    a.stats.resize(n);
    for (size_t v = 0; v < owner.size(); ++v) a.stats[owner[v]] = std::move(stats[v]);
  }
  // Input-independent channels, in eval mode and topological order. A filter with all-zero
  // weights emits its bias; batchnorm, ReLU, pooling and adds of such channels stay
  // input-independent; a conv or linear output is input-independent when every channel it
  // reads is. Each node's batch-1 map holds only those channels' exact values, computed with
  // the layers themselves on the sub-network of fixed channels, so the work follows the
  // number of fixed channels, not the width of the network. While every fixed channel of a
  // map holds one value at every position (dead filters, then batchnorm, ReLU, pooling) the
  // map stores one value per channel and the layers run on 1x1 maps (pooling on one window);
  // positions are spelled out where they can differ (a conv reading fixed channels through
  // its zero padding) or are needed (flatten, global pooling).
  ca.fixed.assign(n, {});
  ca.slot.assign(n, {});
  ca.maps.assign(n, Tensor());
  ca.map_plane.assign(n, 0);
  ca.map_uniform.assign(n, 0);
  // Node j's fixed values of the listed channels: (1, F, 1, 1) when j stores one value per
  // channel and `planes` is false, else (1, F, H, W) or (1, F * features).
  auto gather_map = [&](int j, const std::vector<int>& list, bool planes) {
    const Shape& s = a.shapes[j];
    const int F = static_cast<int>(list.size());
    const bool expand = planes && ca.map_uniform[j];
    const int64_t stored = ca.map_plane[j];  // floats per channel in maps[j]
    if (!expand && ca.maps[j].defined() && F == ca.maps[j].numel() / stored)
      return ca.maps[j];  // every fixed channel, in the same order
    Shape shape = s.size() != 4                       ? Shape{1, F * stored}
                  : ca.map_uniform[j] && !expand ? Shape{1, F, 1, 1}
                                                 : Shape{1, F, s[2], s[3]};
    Tensor t = Tensor::uninit(shape);
    const int64_t plane = F > 0 ? t.numel() / F : 0;
    for (int q = 0; q < F; ++q) {
      const float* src = ca.map_of(j, list[q]);
      if (expand) std::fill_n(t.data() + q * plane, plane, src[0]);
      else std::copy_n(src, plane, t.data() + q * plane);
    }
    return t;
  };
  // Border classes of node i's maps (valid for every fixed channel; one class when they hold
  // one value per channel).
  a.row_class.assign(n, {});
  a.col_class.assign(n, {});
  auto set_classes = [&](int i, bool one_value) {
    const Shape& s = a.shapes[i];
    if (s.size() != 4) return;
    std::vector<int32_t>& rows = a.row_class[i];
    std::vector<int32_t>& cols = a.col_class[i];
    if (i == 0 || one_value) {
      rows.assign(s[2], 0), cols.assign(s[3], 0);
      return;
    }
    const Layer& L = *nodes[i].layer;
    const int j = nodes[i].inputs[0];
    if (auto* cv = dynamic_cast<const Conv2d*>(&L)) {
      rows = window_classes(a.row_class[j], s[2], cv->kernel_h, cv->stride, cv->pad);
      cols = window_classes(a.col_class[j], s[3], cv->kernel_w, cv->stride, cv->pad);
      if (cv->pos_h > 0) rows = join_classes(rows, cv->pos_rows), cols = join_classes(cols, cv->pos_cols);
    } else if (auto* pool = dynamic_cast<const Pool2d*>(&L)) {
      rows = window_classes(a.row_class[j], s[2], pool->kernel, pool->stride, 0);
      cols = window_classes(a.col_class[j], s[3], pool->kernel, pool->stride, 0);
    } else if (L.kind() == LayerKind::Add) {
      const int j2 = nodes[i].inputs[1];
      rows = join_classes(a.row_class[j], a.row_class[j2]), cols = join_classes(a.col_class[j], a.col_class[j2]);
    } else {  // batchnorm, ReLU: position by position
      rows = a.row_class[j], cols = a.col_class[j];
    }
  };
  for (int i = 0; i < n; ++i) {
    const int C = channels_of(a.shapes[i], ca.features_per_channel[i]);
    ca.fixed[i].assign(C, 0);
    ca.slot[i].assign(C, -1);
    if (i == 0) {  // the images
      set_classes(0, true);
      continue;
    }
    Layer& L = const_cast<Layer&>(*nodes[i].layer);
    const int j = nodes[i].inputs[0];
    const auto& fin = ca.fixed[j];
    const Shape& os = a.shapes[i];
    std::vector<int> list;  // the fixed channels of node i, ascending
    Tensor out;             // their values
    bool uniform = false;   // out holds one value per channel
    if (L.kind() == LayerKind::Conv || L.kind() == LayerKind::Linear) {
      const SliceStats& st = a.stats[i];
      const int K = st.K, Cin = st.C;
      const bool any_fixed_input = std::find(fin.begin(), fin.end(), 1) != fin.end();
      std::vector<int> dead, live;        // fixed rows: all-zero filters / filters reading fixed inputs only
      std::vector<uint8_t> read(Cin, 0);  // input channels the live fixed rows read
      for (int k = 0; k < K; ++k) {
        if (!st.row_any[k]) {  // a dead filter emits its bias
          dead.push_back(k), list.push_back(k);
          continue;
        }
        if (!any_fixed_input) continue;
        const uint8_t* nz = st.nonzero.data() + size_t(k) * Cin;  // (C)
        bool ok = true;
        for (int c = 0; c < Cin && ok; ++c) ok = !nz[c] || fin[c];
        if (ok) live.push_back(k), list.push_back(k), or_into(read.data(), nz, Cin);
      }
      ca.dead_filters += static_cast<int64_t>(dead.size());
      if (list.empty()) {  // nothing fixed: any classes will do
        set_classes(i, true);
        continue;
      }
      // Sub-layers of the fixed rows, run on the nonzero fixed inputs they read: the dead rows
      // read nothing (a layer with no inputs yields its bias, one value per channel unless a
      // per-position bias says otherwise); the live ones read `cols` through the padding.
      std::vector<int> cols;
      for (int c = 0; c < Cin; ++c)
        if (read[c] && ca.map_nonzero(j, c)) cols.push_back(c);
      const auto* cv = dynamic_cast<const Conv2d*>(&L);
      uniform = cv && live.empty() && cv->pos_h == 0;
      const int Kf = static_cast<int>(list.size());
      out = Tensor::uninit(os.size() != 4 ? Shape{1, Kf} : uniform ? Shape{1, Kf, 1, 1} : Shape{1, Kf, os[2], os[3]});
      const int64_t oplane = out.numel() / Kf;
      for (const std::vector<int>* rows : {&dead, &live}) {
        if (rows->empty()) continue;
        const std::vector<int> none;
        const bool dead_rows = rows == &dead;
        const std::vector<int>& in = dead_rows ? none : cols;
        auto sl = sub_layer(L, st, ca.features_per_channel[j], *rows, in);
        Tensor in_map = gather_map(j, in, true);
        // Dead rows without a per-position bias give their bias everywhere: run the no-input
        // sub-layer on a 1x1 map (padded so that the kernel fits) and spread its one value.
        const bool one_value = dead_rows && cv && cv->pos_h == 0;
        if (one_value) {
          auto* sc = static_cast<Conv2d*>(sl.get());
          sc->pad = std::max({sc->pad, sc->kernel_h / 2, sc->kernel_w / 2});
          in_map = Tensor::uninit({1, 0, 1, 1});
        }
        Tensor sub_out = run_layer(*sl, {in_map});
        const int64_t sub_plane = sub_out.numel() / static_cast<int64_t>(rows->size());
        // Both row lists ascend, so each row's place in `list` is found by one forward walk.
        size_t at = 0;
        for (size_t r = 0; r < rows->size(); ++r) {
          while (list[at] != (*rows)[r]) ++at;
          if (one_value) std::fill_n(out.data() + at * oplane, oplane, sub_out[r * sub_plane]);
          else std::copy_n(sub_out.data() + r * sub_plane, oplane, out.data() + at * oplane);
        }
      }
    } else if (auto* add = dynamic_cast<const Add*>(&L); add && add->mapped()) {
      // A channel-mapped add (a compacted residual join): output channel k is bias[k] plus the
      // input channels mapped to it; fixed when all of those are.
      std::vector<int> from[2];  // (C) input channel feeding output channel k, or -1
      for (int s = 0; s < 2; ++s) {
        from[s].assign(C, -1);
        const int Cs = static_cast<int>(ca.fixed[nodes[i].inputs[s]].size());
        for (int c = 0; c < Cs; ++c) from[s][add->map[s].empty() ? c : add->map[s][c]] = c;
      }
      bool in_uniform = true;
      for (int k = 0; k < C; ++k) {
        bool f = true;
        for (int s = 0; s < 2; ++s)
          if (from[s][k] >= 0) {
            f = f && ca.fixed[nodes[i].inputs[s]][from[s][k]];
            in_uniform = in_uniform && ca.map_uniform[nodes[i].inputs[s]];
          }
        if (f) list.push_back(k);
      }
      if (list.empty()) {
        set_classes(i, true);
        continue;
      }
      uniform = in_uniform && os.size() == 4;
      const int F = static_cast<int>(list.size());
      const int64_t plane = uniform ? 1 : os.size() == 4 ? os[2] * os[3] : 1;
      out = uniform || os.size() != 4 ? Tensor({1, F * plane}) : Tensor({1, F, os[2], os[3]});
      if (uniform) out = out.reshape({1, F, 1, 1});
      for (int q = 0; q < F; ++q) {
        const int k = list[q];
        float* o = out.data() + q * plane;
        std::fill_n(o, plane, add->has_bias ? add->bias.value[k] : 0.0f);
        for (int s = 0; s < 2; ++s) {
          if (from[s][k] < 0) continue;
          const int j2 = nodes[i].inputs[s];
          const float* v = ca.map_of(j2, from[s][k]);
          const bool one = ca.map_plane[j2] == 1 && plane > 1;
          for (int64_t e = 0; e < plane; ++e) o[e] += one ? v[0] : v[e];
        }
      }
    } else {
      for (int c = 0; c < C; ++c) {
        bool f = fin[c];
        if (L.kind() == LayerKind::Add) f = f && ca.fixed[nodes[i].inputs[1]][c];
        if (f) list.push_back(c);
      }
      if (list.empty()) {  // nothing fixed: any classes will do
        set_classes(i, true);
        continue;
      }
      const LayerKind kind = L.kind();
      bool in_uniform = true;
      for (int q : nodes[i].inputs) in_uniform = in_uniform && ca.map_uniform[q];
      // Flatten and global pooling need every position; the others keep one value per channel.
      uniform = in_uniform && kind != LayerKind::Flatten && kind != LayerKind::GlobalAvgPool;
      std::vector<Tensor> ins;
      for (int q : nodes[i].inputs) ins.push_back(gather_map(q, list, !uniform));
      if (uniform && (kind == LayerKind::MaxPool || kind == LayerKind::AvgPool)) {
        // Every window of a map of one value sees the same numbers: pool one window.
        const auto& pool = static_cast<const Pool2d&>(L);
        Tensor window = Tensor::uninit({1, static_cast<int64_t>(list.size()), pool.kernel, pool.kernel});
        const int64_t area = int64_t(pool.kernel) * pool.kernel;
        for (size_t q = 0; q < list.size(); ++q) std::fill_n(window.data() + q * area, area, ins[0][q]);
        ins[0] = window;
      }
      if (kind == LayerKind::BatchNorm) {  // the statistics of the fixed channels
        const auto& bn = static_cast<const BatchNorm2d&>(L);
        BatchNorm2d sb(static_cast<int>(list.size()), bn.eps, bn.momentum);
        for (size_t q = 0; q < list.size(); ++q) {
          sb.gamma.value[q] = bn.gamma.value[list[q]];
          sb.beta.value[q] = bn.beta.value[list[q]];
          sb.running_mean[q] = bn.running_mean[list[q]];
          sb.running_var[q] = bn.running_var[list[q]];
        }
        out = run_layer(sb, ins);
      } else {
        out = run_layer(L, ins);  // ReLU, pooling, flatten and add work on any number of channels
      }
    }
    set_classes(i, uniform);
    for (size_t q = 0; q < list.size(); ++q) ca.fixed[i][list[q]] = 1, ca.slot[i][list[q]] = static_cast<int>(q);
    ca.map_plane[i] = out.numel() / static_cast<int64_t>(list.size());
    ca.map_uniform[i] = uniform;
    ca.maps[i] = std::move(out);
  }

  // Keep decisions per space: a channel goes when no consumer needs it live. A consumer's
  // removed output rows read nothing, so removals propagate backwards: iterate to a fixpoint
  // (keep only ever shrinks, so this ends within the graph's depth).
  ca.keep.assign(spaces, {});
  std::vector<uint8_t> pinned(spaces, 0);
  pinned[ca.space[0]] = 1;                // the input images
  pinned[ca.space[m.output_node()]] = 1;  // the logits
  for (int s = 0; s < spaces; ++s) ca.keep[s].assign(ca.space_channels[s], 1);
  for (bool changed = true; changed;) {
    changed = false;
    std::vector<std::vector<uint8_t>> next(spaces);
    for (int s = 0; s < spaces; ++s) next[s].assign(ca.space_channels[s], pinned[s]);
    for (int i = 1; i < n; ++i) {
      LayerKind k = nodes[i].layer->kind();
      if (auto* add = dynamic_cast<const Add*>(nodes[i].layer.get())) {
        // A channel-mapped input channel is needed when its output channel is kept, unless
        // it is fixed at one value (which goes into the add's bias).
        const auto& out_kept = ca.keep[ca.space[i]];
        for (int s = 0; s < 2; ++s) {
          if (add->map[s].empty()) continue;
          const int j = nodes[i].inputs[s];
          auto& keep = next[ca.space[j]];
          int needed = -1, any = 0;  // an input of no channels would read as the identity: keep one
          for (size_t c = 0; c < add->map[s].size(); ++c) {
            if (!out_kept[add->map[s][c]]) continue;
            if (needed < 0) needed = static_cast<int>(c);
            if (!ca.map_one_value(j, int(c))) keep[c] = 1, any = 1;
          }
          if (!any && needed >= 0) keep[needed] = 1;
        }
        continue;
      }
      if (k != LayerKind::Conv && k != LayerKind::Linear) continue;
      const int j = nodes[i].inputs[0];
      const SliceStats& st = a.stats[i];
      const auto& rows_kept = ca.keep[ca.space[i]];
      auto& keep = next[ca.space[j]];
      const int K = st.K, Cin = st.C;
      for (int r = 0; r < K; ++r)
        if (rows_kept[r]) or_unfixed_into(keep.data(), st.nonzero.data() + size_t(r) * Cin, ca.fixed[j].data(), Cin);
    }
    if (next != ca.keep) ca.keep = std::move(next), changed = true;
  }
  return a;
}

std::vector<int> kept_indices(const std::vector<uint8_t>& keep) {
  std::vector<int> out;
  for (int c = 0; c < static_cast<int>(keep.size()); ++c)
    if (keep[c]) out.push_back(c);
  return out;
}


}  // namespace

const float* ChannelAnalysis::map_of(int i, int c) const {
  const int q = slot[i][c];
  return q < 0 ? nullptr : maps[i].data() + q * map_plane[i];
}

bool ChannelAnalysis::map_nonzero(int i, int c) const {
  const float* p = map_of(i, c);
  if (!p) return false;
  for (int64_t q = 0; q < map_plane[i]; ++q)
    if (p[q] != 0.0f) return true;
  return false;
}

bool ChannelAnalysis::map_one_value(int i, int c) const {
  const float* p = map_of(i, c);
  if (!p) return false;
  for (int64_t q = 1; q < map_plane[i]; ++q)
    if (p[q] != p[0]) return false;
  return true;
}

ChannelAnalysis analyze_channels(const Model& masked) { return analyze(masked).pub; }

Model compact_model(const Model& masked_in, CompactReport* report) {
  auto t0 = std::chrono::steady_clock::now();
  check(masked_in.device() == Device::CPU, "compaction runs on CPU models; move the model with to(Device::CPU)");
  const Model& m = masked_in;
  Analysis a = analyze(m);
  const ChannelAnalysis& ca = a.pub;
  const auto& nodes = m.nodes();
  const int n = static_cast<int>(nodes.size());
  const int out_node = m.output_node();
  CompactReport rep;
  rep.constants_folded = 0;

  // Which batchnorms fold into the conv before them, and which ReLUs fuse into it.
  std::vector<int> bn_of(n, -1), relu_of(n, -1);
  std::vector<uint8_t> absorbed(n, 0);
  for (int i = 1; i < n; ++i) {
    auto* conv = dynamic_cast<const Conv2d*>(nodes[i].layer.get());
    if (!conv || conv->fused_relu || i == out_node) continue;
    int t = i;
    if (a.consumers[i].size() == 1 && is(nodes[a.consumers[i][0]], LayerKind::BatchNorm)) {
      bn_of[i] = t = a.consumers[i][0];
      absorbed[t] = 1;
    }
    if (t != out_node && a.consumers[t].size() == 1 && is(nodes[a.consumers[t][0]], LayerKind::ReLU)) {
      relu_of[i] = a.consumers[t][0];
      absorbed[relu_of[i]] = 1;
    }
  }

  std::vector<std::vector<int>> kept(ca.keep.size());
  for (size_t s = 0; s < ca.keep.size(); ++s) kept[s] = kept_indices(ca.keep[s]);
  for (size_t s = 0; s < ca.keep.size(); ++s) rep.channels_removed += ca.space_channels[s] - int64_t(kept[s].size());

  // The channels each node's compact tensor holds (indices of the node's own channels): its
  // space's kept channels, except for a conv (or its folded batchnorm, fused ReLU) read only
  // by an add: there a kept channel that is fixed at one value is not computed (a dead filter
  // whose residual-stream channel lives); the add puts it into its bias and the computed
  // channels into their stream channels (a channel map).
  std::vector<const std::vector<int>*> holds(n);
  for (int i = 0; i < n; ++i) holds[i] = &kept[ca.space[i]];
  std::vector<std::vector<int>> branch_rows(n);  // for such convs: the rows computed
  int64_t branch_rows_dropped = 0;
  for (int i = 1; i < n; ++i) {
    if (absorbed[i] || !is(nodes[i], LayerKind::Conv)) continue;
    const int t = relu_of[i] >= 0 ? relu_of[i] : bn_of[i] >= 0 ? bn_of[i] : i;  // the conv's compact output
    if (t == out_node || a.consumers[t].size() != 1 || !is(nodes[a.consumers[t][0]], LayerKind::Add)) continue;
    const std::vector<int>& all = kept[ca.space[t]];
    std::vector<int> rows;
    for (int k : all)
      if (!ca.map_one_value(t, k)) rows.push_back(k);
    if (rows.empty() && !all.empty()) rows.push_back(all[0]);  // an input of no channels reads as identity
    if (rows.size() == all.size()) continue;
    branch_rows_dropped += int64_t(all.size() - rows.size());
    branch_rows[i] = std::move(rows);
    holds[i] = holds[t] = &branch_rows[i];
  }
  rep.branch_rows_dropped = branch_rows_dropped;

  // Each conv and linear layer is built on its own (in parallel: the work is per layer), then
  // the graph is assembled in order.
  struct Built {
    std::unique_ptr<Layer> layer;
    Tensor mask;
    LayerChannels channels;
    int64_t constants_folded = 0;
    int position_bias_layers = 0;
  };
  auto build_layer = [&](int i) {
    Built b;
    const Node& node = nodes[i];
    const Layer& L = *node.layer;
    const auto* conv = dynamic_cast<const Conv2d*>(&L);
    const auto* lin = dynamic_cast<const Linear*>(&L);
    const int j = node.inputs[0];
    const std::vector<int>& in_keep = kept[ca.space[j]];
    const std::vector<int>& out_keep = *holds[i];
    const SliceStats& st = a.stats[i];
    const int Cold = st.C, Kn = static_cast<int>(out_keep.size()), Cn = static_cast<int>(in_keep.size());
    const int64_t slice = conv ? int64_t(conv->kernel_h) * conv->kernel_w : ca.features_per_channel[j];
    const Tensor& W = conv ? conv->weight.value : lin->weight.value;  // (K, Cold, slice)
    const Tensor& B = conv ? conv->bias.value : lin->bias.value;
    bool had_bias = conv ? conv->has_bias : lin->has_bias;

    // Bias in double, and a per-position part when a padded conv folds a nonzero constant.
    std::vector<double> bias(Kn, 0.0);
    if (had_bias)
      for (int k = 0; k < Kn; ++k) bias[k] = B[out_keep[k]];
    std::vector<int> removed_const;  // removed input channels a kept row reads, with a nonzero fixed map
    const std::vector<uint8_t>& in_kept = ca.keep[ca.space[j]];
    std::vector<uint8_t> read(Cold, 0);  // (Cold) read by a kept row
    for (int k : out_keep) or_into(read.data(), st.nonzero.data() + size_t(k) * Cold, Cold);
    for (int ch = 0; ch < Cold; ++ch)
      if (!in_kept[ch] && read[ch] && ca.map_nonzero(j, ch)) {
        if (!ca.fixed[j][ch]) throw Error("internal: a removed channel that is read depends on the input");
        removed_const.push_back(ch);
      }
    b.constants_folded = static_cast<int64_t>(removed_const.size());
    const Shape& os = a.shapes[i];
    const int Cr = static_cast<int>(removed_const.size());
    if (Cr > 0 && lin) {
      // bias[o] += sum over removed channels and their features of W * value
      for (int k = 0; k < Kn; ++k)
        for (int ch : removed_const) {
          const float* wr = W.data() + (int64_t(out_keep[k]) * Cold + ch) * slice;
          const float* mp = ca.map_of(j, ch);  // (slice)
          for (int64_t q = 0; q < slice; ++q) bias[k] += double(wr[q]) * mp[q];
        }
    }

    // Batchnorm folded in: W' = scale * W, b' = scale * b + shift, pos' = scale * pos.
    std::vector<double> scale(Kn, 1.0), shift(Kn, 0.0);
    std::vector<float> fscale;
    if (bn_of[i] >= 0) {
      std::vector<double> sc, sh;
      static_cast<const BatchNorm2d&>(*nodes[bn_of[i]].layer).eval_affine(sc, sh);
      fscale.resize(Kn);
      for (int k = 0; k < Kn; ++k) scale[k] = sc[out_keep[k]], shift[k] = sh[out_keep[k]], fscale[k] = float(scale[k]);
    }

    // One pass over the kept rows: the kept slices (scaled) and their mask, and for a conv
    // the removed constant channels' slices. Their exact contribution is the convolution of
    // their fixed maps (zero padded): channels of constant value v share one input plane of
    // ones with the collapsed kernel sum_r v_r W[k, r] (cheap even when hundreds of channels
    // are removed); other fixed maps get a plane each.
    const bool fold = Cr > 0 && conv;
    Gather g;
    g.src = W.data(), g.C = Cold, g.slice = slice, g.rows = &out_keep;
    keep_all(g, in_keep);
    g.scale = fscale.empty() ? nullptr : fscale.data(), g.nonzero = st.nonzero.data();
    std::vector<int> map_ch;  // removed channels with a fixed map that is not one value
    if (fold)
      for (int ch : removed_const) {
        const float* mp = ca.map_of(j, ch);
        if (std::all_of(mp, mp + ca.map_plane[j], [&](float v) { return v == mp[0]; })) {
          g.folded.push_back({ch, mp[0]});
        } else {
          map_ch.push_back(ch);
          g.own_plane.push_back({ch, static_cast<int>(map_ch.size())});
        }
      }
    const Shape& is = a.shapes[j];
    const int64_t iplane = fold ? is[2] * is[3] : 0;
    const Shape wshape = conv ? Shape{Kn, Cn, conv->kernel_h, conv->kernel_w} : Shape{Kn, Cn * slice};
    Tensor new_w = Tensor::uninit(wshape);
    g.dst = new_w.data();
    auto mit = m.masks.find(node.name + ".weight");
    Tensor new_mask;
    if (mit != m.masks.end()) {
      new_mask = Tensor::uninit(wshape);
      g.src2 = mit->second.data(), g.dst2 = new_mask.data();
    }
    Tensor wr;  // (Kn, planes, R, S)
    if (fold) {
      g.planes = 1 + static_cast<int>(map_ch.size());
      wr = Tensor({Kn, g.planes, conv->kernel_h, conv->kernel_w});
      g.wr = wr.data();
    }
    gather_slices(g);
    // The border table: the folded constants' contribution where it differs by position, plus
    // the table the conv already had (compacting a compact model). Both depend on the output
    // position only through its border classes; each class is evaluated at its first position.
    const bool old_table = conv && conv->pos_h > 0;
    std::vector<int32_t> trows, tcols;  // (P), (Q) classes of the table built below
    std::vector<double> table;          // (Kn, row classes, column classes), before batchnorm
    if (fold || old_table) {
      const int64_t P = os[2], Q = os[3];
      Tensor corr;  // (1, Kn, P, Q): the folded constants' contribution
      if (fold) {
        Tensor img({1, g.planes, is[2], is[3]});  // (1, planes, H, W)
        std::fill_n(img.data(), iplane, 1.0f);
        for (size_t r = 0; r < map_ch.size(); ++r)
          std::copy_n(ca.map_of(j, map_ch[r]), iplane, img.data() + (r + 1) * iplane);
        Conv2dParams p{1, g.planes, int(is[2]), int(is[3]), Kn, conv->kernel_h, conv->kernel_w, conv->stride, conv->pad};
        corr = Tensor({1, Kn, P, Q});
        if (Kn > 0) ops::conv2d_forward(p, img, wr, Tensor(), corr);
        trows = window_classes(a.row_class[j], P, conv->kernel_h, conv->stride, conv->pad);
        tcols = window_classes(a.col_class[j], Q, conv->kernel_w, conv->stride, conv->pad);
      } else {
        trows.assign(P, 0), tcols.assign(Q, 0);
      }
      if (old_table) trows = join_classes(trows, conv->pos_rows), tcols = join_classes(tcols, conv->pos_cols);
      const int TR = class_count(trows), TC = class_count(tcols);
      std::vector<int64_t> rep_r(TR, -1), rep_c(TC, -1);  // first position of each class
      for (int64_t p = P - 1; p >= 0; --p) rep_r[trows[p]] = p;
      for (int64_t q = Q - 1; q >= 0; --q) rep_c[tcols[q]] = q;
      table.assign(size_t(Kn) * TR * TC, 0.0);
      const int64_t OTR = conv->table_rows(), OTC = conv->table_cols();
      for (int k = 0; k < Kn; ++k)
        for (int r = 0; r < TR; ++r)
          for (int c = 0; c < TC; ++c) {
            const int64_t p = rep_r[r], q = rep_c[c];
            double v = fold ? corr[(k * P + p) * Q + q] : 0.0;
            if (old_table)
              v += conv->pos_bias.value[(out_keep[k] * OTR + conv->pos_rows[p]) * OTC + conv->pos_cols[q]];
            table[(int64_t(k) * TR + r) * TC + c] = v;
          }
      table = merge_equal_classes(std::move(table), Kn, trows, tcols, 0);
      table = merge_equal_classes(std::move(table), Kn, trows, tcols, 1);
      if (class_count(trows) == 1 && class_count(tcols) == 1) {  // the same everywhere: a bias
        for (int k = 0; k < Kn; ++k) bias[k] += table[k];
        table.clear(), trows.clear(), tcols.clear();
      } else {
        ++b.position_bias_layers;
      }
    }
    bool need_bias = had_bias || bn_of[i] >= 0 || !removed_const.empty();

    std::unique_ptr<Layer> layer;
    Tensor* Bn = nullptr;
    if (conv) {
      auto nc = std::make_unique<Conv2d>(Cn, Kn, conv->kernel_h, conv->kernel_w, conv->stride, conv->pad, need_bias,
                                         conv->fused_relu || relu_of[i] >= 0, 0, 0, /*zero_weight=*/false);
      if (!trows.empty()) {  // batchnorm scales the table as it scales the bias
        nc->set_border_table(trows, tcols);
        const int64_t cells = nc->table_rows() * nc->table_cols();
        for (int k = 0; k < Kn; ++k)
          for (int64_t q = 0; q < cells; ++q)
            nc->pos_bias.value[k * cells + q] = static_cast<float>(table[k * cells + q] * scale[k]);
      }
      nc->weight.value = new_w;
      Bn = need_bias ? &nc->bias.value : nullptr;
      layer = std::move(nc);
    } else {
      auto nl = std::make_unique<Linear>(Cn * int(slice), Kn, need_bias, /*zero_weight=*/false);
      nl->weight.value = new_w;
      Bn = need_bias ? &nl->bias.value : nullptr;
      layer = std::move(nl);
    }
    if (Bn)
      for (int k = 0; k < Kn; ++k) (*Bn)[k] = static_cast<float>(bias[k] * scale[k] + shift[k]);
    b.channels.name = node.name;
    b.channels.in_before = Cold, b.channels.in_after = Cn, b.channels.out_before = st.K, b.channels.out_after = Kn;
    b.layer = std::move(layer);
    b.mask = new_mask;
    return b;
  };
  std::vector<int> todo;
  for (int i = 1; i < n; ++i)
    if (!absorbed[i] && (is(nodes[i], LayerKind::Conv) || is(nodes[i], LayerKind::Linear))) todo.push_back(i);
  std::vector<Built> built(n);
  parallel_for(size_t(0), todo.size(), size_t(1), [&](size_t t0, size_t t1) {
    for (size_t t = t0; t < t1; ++t) built[todo[t]] = build_layer(todo[t]);
  });

  // The compact add of node i: output channels kept[space], each input's held channels
  // mapped into them (no map where an input holds exactly those), the input channels it does
  // not hold (fixed at one value) and any bias it had folded into its bias.
  auto build_add = [&](int i) -> std::unique_ptr<Layer> {
    const auto& add = static_cast<const Add&>(*nodes[i].layer);
    const std::vector<int>& out = kept[ca.space[i]];
    const int C = static_cast<int>(out.size());
    const int Cold = ca.space_channels[ca.space[i]];
    std::vector<int> out_index(Cold, -1);  // original output channel -> compact one
    for (int q = 0; q < C; ++q) out_index[out[q]] = q;
    std::vector<double> bias(C, 0.0);
    bool need_bias = false;
    if (add.has_bias)
      for (int q = 0; q < C; ++q) bias[q] = add.bias.value[out[q]], need_bias = true;
    std::vector<int32_t> maps[2];
    bool identity[2] = {true, true};
    for (int s = 0; s < 2; ++s) {
      const int j = nodes[i].inputs[s];
      const std::vector<int>& held = *holds[j];
      const int Cj = static_cast<int>(ca.fixed[j].size());
      auto to_out = [&](int c) { return add.map[s].empty() ? c : add.map[s][c]; };
      std::vector<uint8_t> is_held(Cj, 0);
      for (int c : held) is_held[c] = 1;
      for (int c = 0; c < Cj; ++c) {
        const int k = out_index[to_out(c)];
        if (is_held[c]) {
          if (k < 0) throw Error("internal: add '" + nodes[i].name + "' input holds a channel its output drops");
          maps[s].push_back(k);
        } else if (k >= 0 && ca.map_nonzero(j, c)) {
          if (!ca.map_one_value(j, c))
            throw Error("internal: add '" + nodes[i].name + "' loses an input channel that is not one constant");
          bias[k] += ca.map_of(j, c)[0];
          need_bias = true;
        }
      }
      identity[s] = static_cast<int>(maps[s].size()) == C;
      if (identity[s]) maps[s].clear();
    }
    if (identity[0] && identity[1] && !need_bias) return std::make_unique<Add>();
    auto na = std::make_unique<Add>(std::max(C, 1), std::move(maps[0]), std::move(maps[1]), need_bias);
    for (int q = 0; q < C && need_bias; ++q) na->bias.value[q] = static_cast<float>(bias[q]);
    return na;
  };

  Model c;
  c.arch = m.arch.empty() ? "compact" : m.arch + "-compact";
  c.data_info = m.data_info;  // same input and classes: a compact model still labels its outputs
  std::vector<int> map(n, -1);
  map[0] = c.add_input(m.input_shape(), nodes[0].name);
  for (int i = 1; i < n; ++i) {
    if (absorbed[i]) continue;
    const Node& node = nodes[i];
    std::vector<int> ins;
    for (int j : node.inputs) ins.push_back(map[j]);
    const Layer& L = *node.layer;

    if (L.kind() == LayerKind::Conv || L.kind() == LayerKind::Linear) {
      Built& b = built[i];
      rep.constants_folded += b.constants_folded;
      rep.position_bias_layers += b.position_bias_layers;
      rep.layers.push_back(b.channels);
      int id = c.add(node.name, std::move(b.layer), ins);
      if (b.mask.defined()) c.masks[node.name + ".weight"] = b.mask;
      map[i] = id;
      if (bn_of[i] >= 0) map[bn_of[i]] = id;
      if (relu_of[i] >= 0) map[relu_of[i]] = id;
      continue;
    }

    if (L.kind() == LayerKind::BatchNorm) {  // not folded: keep its channels' statistics
      const auto& bn = static_cast<const BatchNorm2d&>(L);
      const std::vector<int>& keep = kept[ca.space[i]];
      auto nb = std::make_unique<BatchNorm2d>(static_cast<int>(keep.size()), bn.eps, bn.momentum);
      for (size_t q = 0; q < keep.size(); ++q) {
        nb->gamma.value[q] = bn.gamma.value[keep[q]];
        nb->beta.value[q] = bn.beta.value[keep[q]];
        nb->running_mean[q] = bn.running_mean[keep[q]];
        nb->running_var[q] = bn.running_var[keep[q]];
      }
      map[i] = c.add(node.name, std::move(nb), ins);
      continue;
    }
    if (L.kind() == LayerKind::Add) {
      map[i] = c.add(node.name, build_add(i), ins);
      continue;
    }
    // Pooling, flatten, ReLU: no parameters, the channel count follows the inputs.
    map[i] = c.add(node.name, L.clone(), ins);
  }
  c.set_output(map[out_node]);
  rep.milliseconds = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  c.infer_shapes(1);

  if (report) {
    rep.params_before = m.num_params();
    rep.params_after = c.num_params();
    rep.split_before = param_split(m);
    rep.split_after = param_split(c);
    rep.macs_before = m.forward_macs();
    rep.macs_after = c.forward_macs();
    for (int i = 1; i < n; ++i)
      for (Param* p : const_cast<Layer&>(*nodes[i].layer).params()) {
        if (!p->prunable) {
          rep.nonzero_before += p->value.numel();
          continue;
        }
        const float* v = p->value.data();
        for (int64_t q = 0; q < p->value.numel(); ++q) rep.nonzero_before += v[q] != 0.0f;
      }
  }
  if (report) *report = std::move(rep);
  return c;
}

ParamSplit param_split(const Model& m) {
  ParamSplit s;
  for (const Node& node : m.nodes()) {
    if (!node.layer) continue;
    for (Param* p : const_cast<Layer&>(*node.layer).params()) {
      if (p->prunable) s.weights += p->value.numel();
      else if (p->name == "pos_bias") s.tables += p->value.numel();
      else s.biases += p->value.numel();
    }
  }
  return s;
}

float max_logit_difference(Model& a, Model& b, const Tensor& x) {
  Tensor ya = a.forward(x.device() == a.device() ? x : x.to(a.device()), false);
  Tensor yb = b.forward(x.device() == b.device() ? x : x.to(b.device()), false);
  return max_abs_diff(ya, yb);
}

}  // namespace dnns
