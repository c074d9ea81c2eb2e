// The loops of rows.h, compiled once per instruction set: included by rows.cpp (generic) and
// rows_<isa>.cpp after defining DNNS_ROWS_NS, the namespace they go in (see
// conv_direct_impl.h for why each ISA's copy must stay in its own namespace).
#ifndef DNNS_ROWS_NS
#error "define DNNS_ROWS_NS before including rows_impl.h"
#endif
#include "kernels/cpu/rows.h"

namespace dnns::cpu::DNNS_ROWS_NS {
namespace {

constexpr int L = kRowLanes;

void normalise(const float* x, float* y, int64_t stride, int n, int len, float mean, float scale, float shift) {
  for (int r = 0; r < n; r++) {
    const float* xr = x + r * stride;
    float* yr = y + r * stride;
    for (int i = 0; i < len; i++) yr[i] = (xr[i] - mean) * scale + shift;
  }
}

void bn_backward(const float* x, const float* dy, float* dx, int64_t stride, int n, int len, float a, float b,
                 float d, float mean) {
  for (int r = 0; r < n; r++) {
    const float* xr = x + r * stride;
    const float* dr = dy + r * stride;
    float* out = dx + r * stride;
    for (int i = 0; i < len; i++) out[i] = a * dr[i] + b * (xr[i] - mean) + d;
  }
}

// 8 floats: one AVX register, or two SSE ones in the generic build. Loads and stores through
// pointers (no vector passed or returned by value, whose ABI would differ between builds).
// The ReLU's input after a batchnorm, v = (x - mean) * scale + shift, and its mask: one
// definition for 8 floats at a time and one for the tail, applied to the same elements by the
// forward and both backward loops (which walk rows identically), so the backward's mask is
// bit-identical to the forward's whatever the compiler contracts into FMAs.
using f8 = float __attribute__((vector_size(32)));
using i8 = int32_t __attribute__((vector_size(32)));
using d8 = double __attribute__((vector_size(64)));
inline void load8(f8* v, const float* p) { __builtin_memcpy(v, p, sizeof *v); }
inline void store8(float* p, const f8* v) { __builtin_memcpy(p, v, sizeof *v); }
inline void bn_value8(f8* v, const float* x, float mean, float scale, float shift) {
  f8 xv;
  load8(&xv, x);
  *v = (xv - mean) * scale + shift;
}
inline float bn_value(float x, float mean, float scale, float shift) { return (x - mean) * scale + shift; }
// dy where v > 0, else +0 (8 lanes)
inline void relu_grad8(f8* g, const float* x, const float* dy, float mean, float scale, float shift) {
  f8 v, d;
  bn_value8(&v, x, mean, scale, shift);
  load8(&d, dy);
  *g = (f8)((i8)d & (v > 0.0f));
}

// The double accumulators here and in grad_sums_of are whole 8-lane vectors held in registers
// (d8): written as arrays through pointers, s and ss might alias, and the compiler kept every
// lane in memory, one scalar load and store per element. Lane l sums the elements i % 8 == l
// of every row.
void sum_sumsq(const float* x, int64_t stride, int n, int len, double* s, double* ss) {
  static_assert(L == 8, "the lanes below are 8 wide");
  d8 as, ass;
  __builtin_memcpy(&as, s, sizeof as);
  __builtin_memcpy(&ass, ss, sizeof ass);
  for (int r = 0; r < n; r++) {
    const float* xr = x + r * stride;
    int i = 0;
    for (; i + 8 <= len; i += 8) {
      f8 xv;
      load8(&xv, xr + i);
      const d8 v = __builtin_convertvector(xv, d8);
      as += v;
      ass += v * v;
    }
    for (; i < len; i++) as[i % L] += xr[i], ass[i % L] += double(xr[i]) * xr[i];
  }
  __builtin_memcpy(s, &as, sizeof as);
  __builtin_memcpy(ss, &ass, sizeof ass);
}

void normalise_relu(const float* x, float* y, int64_t stride, int n, int len, float mean, float scale, float shift) {
  for (int r = 0; r < n; r++) {
    const float* xr = x + r * stride;
    float* yr = y + r * stride;
    int i = 0;
    for (; i + 8 <= len; i += 8) {
      f8 v;
      bn_value8(&v, xr + i, mean, scale, shift);
      v = (f8)((i8)v & (v > 0.0f));
      store8(yr + i, &v);
    }
    for (; i < len; i++) {
      const float v = bn_value(xr[i], mean, scale, shift);
      yr[i] = v > 0.0f ? v : 0.0f;
    }
  }
}

// Sums of g and g * (x - mean) over n rows, lane i % 8: g = dy, or through the ReLU that
// followed the batchnorm (Relu), dy where (x - mean) * scale + shift > 0, else 0.
template <bool Relu>
void grad_sums_of(const float* x, const float* dy, int64_t stride, int n, int len, double dmean, float mean,
                  float scale, float shift, double* s, double* sx) {
  static_assert(L == 8, "the lanes below are 8 wide");
  d8 as, asx;
  __builtin_memcpy(&as, s, sizeof as);
  __builtin_memcpy(&asx, sx, sizeof asx);
  for (int r = 0; r < n; r++) {
    const float* xr = x + r * stride;
    const float* dr = dy + r * stride;
    int i = 0;
    for (; i + 8 <= len; i += 8) {
      f8 g, xv;
      if constexpr (Relu) relu_grad8(&g, xr + i, dr + i, mean, scale, shift);
      else load8(&g, dr + i);
      load8(&xv, xr + i);
      const d8 gd = __builtin_convertvector(g, d8), xd = __builtin_convertvector(xv, d8);
      as += gd;
      asx += gd * (xd - dmean);
    }
    for (; i < len; i++) {
      const float g = !Relu || bn_value(xr[i], mean, scale, shift) > 0.0f ? dr[i] : 0.0f;
      as[i % L] += g, asx[i % L] += double(g) * (double(xr[i]) - dmean);
    }
  }
  __builtin_memcpy(s, &as, sizeof as);
  __builtin_memcpy(sx, &asx, sizeof asx);
}

void grad_sums(const float* x, const float* dy, int64_t stride, int n, int len, double mean, double* s, double* sx) {
  grad_sums_of<false>(x, dy, stride, n, len, mean, 0.0f, 0.0f, 0.0f, s, sx);
}

void grad_sums_relu(const float* x, const float* dy, int64_t stride, int n, int len, float mean, float scale,
                    float shift, double* s, double* sx) {
  grad_sums_of<true>(x, dy, stride, n, len, mean, mean, scale, shift, s, sx);
}

void bn_backward_relu(const float* x, const float* dy, float* dx, int64_t stride, int n, int len, float a, float b,
                      float d, float mean, float scale, float shift) {
  for (int r = 0; r < n; r++) {
    const float* xr = x + r * stride;
    const float* dr = dy + r * stride;
    float* out = dx + r * stride;
    int i = 0;
    for (; i + 8 <= len; i += 8) {
      f8 g, xv;
      relu_grad8(&g, xr + i, dr + i, mean, scale, shift);
      load8(&xv, xr + i);
      const f8 o = a * g + b * (xv - mean) + d;
      store8(out + i, &o);
    }
    for (; i < len; i++) {
      const float g = bn_value(xr[i], mean, scale, shift) > 0.0f ? dr[i] : 0.0f;
      out[i] = a * g + b * (xr[i] - mean) + d;
    }
  }
}

// n zeros at out, in 8-float stores where n allows.
inline void zero_run(float* out, int64_t n) {
  const f8 z = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) store8(out + i, &z);
  for (; i < n; ++i) out[i] = 0.0f;
}

// One padded row of a stride-1 layout: pw zeros, the W values of row, zeros up to RP, in
// whole 8-float stores (no per-row memset and memcpy calls: at CIFAR's rows of 32 to 40
// floats those calls were most of the time). The first store puts zeros over the first data
// slots and the last may run up to 8 floats past the row; the data and the rows written after
// it overwrite them, so the caller must leave at least RP + 8 writable floats from out.
inline void pad_row_wide(const float* row, int W, int pw, int RP, float* out) {
  const f8 z = {};
  store8(out, &z);  // pw <= 8 zeros, and the slots the data overwrites next
  int i = 0;
  for (; i + 8 <= W; i += 8) {
    f8 v;
    load8(&v, row + i);
    store8(out + pw + i, &v);
  }
  if (i < W) {  // the last 8 values, overlapping ones already written (W >= 8)
    f8 v;
    load8(&v, row + W - 8);
    store8(out + pw + W - 8, &v);
  }
  for (i = pw + W; i < RP; i += 8) store8(out + i, &z);
}

void pad_image(const float* x, int C, int H, int W, int ph, int pw, int st, int Lp, int RP, int64_t floats,
               float* xp) {
  const int Hp = H + 2 * ph;
  float* out = xp;
  float* const end = xp + floats;
  const bool wide = st == 1 && W >= 8 && pw <= 8;
  for (int c = 0; c < C; ++c, x += (int64_t)H * W)
    for (int h = 0; h < Hp; ++h, out += RP) {
      const int ih = h - ph;
      if (ih < 0 || ih >= H) {
        zero_run(out, RP);
        continue;
      }
      const float* row = x + (int64_t)ih * W;
      if (wide && end - out >= RP + 8) {
        pad_row_wide(row, W, pw, RP, out);
        continue;
      }
      if (st == 1) {
        for (int i = 0; i < pw; ++i) out[i] = 0.0f;
        for (int i = 0; i < W; ++i) out[pw + i] = row[i];
        for (int i = pw + W; i < RP; ++i) out[i] = 0.0f;
        continue;
      }
      for (int f = 0; f < st; ++f)
        for (int i = 0; i < Lp; ++i) {
          const int iw = i * st + f - pw;
          out[f * Lp + i] = iw >= 0 && iw < W ? row[iw] : 0.0f;
        }
    }
  zero_run(out, end - out);
}

void copy_rows(const float* src, int64_t src_stride, float* dst, int64_t dst_stride, int n, int len) {
  for (int r = 0; r < n; ++r, src += src_stride, dst += dst_stride) {
    int i = 0;
    for (; i + 8 <= len; i += 8) {
      f8 v;
      load8(&v, src + i);
      store8(dst + i, &v);
    }
    for (; i < len; ++i) dst[i] = src[i];
  }
}

void transpose(const float* dy, int K, int PQ, int Kp, float* dyT) {
  for (int j0 = 0; j0 < PQ; j0 += 32) {  // blocks of 32 pixels stay in L1
    const int j1 = j0 + 32 < PQ ? j0 + 32 : PQ;
    for (int k = 0; k < K; ++k)
      for (int j = j0; j < j1; ++j) dyT[(int64_t)j * Kp + k] = dy[(int64_t)k * PQ + j];
    for (int j = j0; j < j1; ++j)
      for (int k = K; k < Kp; ++k) dyT[(int64_t)j * Kp + k] = 0.0f;
  }
}

float row_sum(const float* x, int n) {
  float lanes[16] = {};
  int i = 0;
  for (; i + 16 <= n; i += 16)
    for (int l = 0; l < 16; l++) lanes[l] += x[i + l];
  for (; i < n; i++) lanes[i % 16] += x[i];
  float s = 0.0f;
  for (int l = 0; l < 16; l++) s += lanes[l];
  return s;
}


void sparse_row(const float* val, const int32_t* off, int64_t nnz, const float* X, int L, float bias, bool relu,
                float* out) {
  constexpr int kChunk = 64;  // 8 accumulators of 8
  int t = 0;
  for (; t + kChunk <= L; t += kChunk) {
    f8 a[8];
    for (int v = 0; v < 8; ++v) a[v] = f8{} + bias;
    for (int64_t j = 0; j < nnz; ++j) {
      const f8 w = f8{} + val[j];
      const float* x = X + off[j] + t;
      f8 xv[8];
      for (int v = 0; v < 8; ++v) load8(&xv[v], x + 8 * v);
      for (int v = 0; v < 8; ++v) a[v] += w * xv[v];
    }
    for (int v = 0; v < 8; ++v) store8(out + t + 8 * v, &a[v]);
  }
  for (; t < L; t += 8) {
    f8 a = f8{} + bias, xv;
    for (int64_t j = 0; j < nnz; ++j) {
      load8(&xv, X + off[j] + t);
      a += (f8{} + val[j]) * xv;
    }
    store8(out + t, &a);
  }
  if (relu)
    for (int i = 0; i < L; ++i) out[i] = out[i] > 0.0f ? out[i] : 0.0f;
}

// Where nonzero j's run starts in X: off[j] (sparse_grid) or the table entry of its column,
// tab[col[j]] (sparse_grid_cols: 2 bytes a nonzero held instead of 4, one more load from a
// small table per nonzero and pass).
struct RunAt {
  const int32_t* off;
  int32_t operator()(int64_t j) const { return off[j]; }
};
struct RunAtColumn {
  const uint16_t* col;
  const int32_t* tab;
  int32_t operator()(int64_t j) const { return tab[col[j]]; }
};

// V vectors of outputs out[0, 8V) over all nonzeros: V independent accumulators, so the FMAs
// of one nonzero do not wait on each other.
template <int V, class At>
void sparse_pass(const float* val, At at, int64_t nnz, const float* X, float bias, float* out) {
  f8 a[V];
  for (int v = 0; v < V; ++v) a[v] = f8{} + bias;
  for (int64_t j = 0; j < nnz; ++j) {
    const f8 w = f8{} + val[j];
    const float* x = X + at(j);
    for (int v = 0; v < V; ++v) {
      f8 xv;
      load8(&xv, x + 8 * v);
      a[v] += w * xv;
    }
  }
  for (int v = 0; v < V; ++v) store8(out + 8 * v, &a[v]);
}

template <class At>
void sparse_grid_at(const float* val, At at, int64_t nnz, const float* X, int L, float bias, bool relu,
                    float* out) {
  // The n vectors of the run in as few passes of at most 12 as cover them, balanced (a run of
  // 10 vectors is one pass of 10, not 8 and then 2 whose FMAs wait on each other).
  const int n = L / 8, passes = (n + 11) / 12;
  for (int i = 0, t = 0; i < passes; ++i) {
    const int v = n / passes + (i < n % passes);
    switch (v) {
      case 1: sparse_pass<1>(val, at, nnz, X + t, bias, out + t); break;
      case 2: sparse_pass<2>(val, at, nnz, X + t, bias, out + t); break;
      case 3: sparse_pass<3>(val, at, nnz, X + t, bias, out + t); break;
      case 4: sparse_pass<4>(val, at, nnz, X + t, bias, out + t); break;
      case 5: sparse_pass<5>(val, at, nnz, X + t, bias, out + t); break;
      case 6: sparse_pass<6>(val, at, nnz, X + t, bias, out + t); break;
      case 7: sparse_pass<7>(val, at, nnz, X + t, bias, out + t); break;
      case 8: sparse_pass<8>(val, at, nnz, X + t, bias, out + t); break;
      case 9: sparse_pass<9>(val, at, nnz, X + t, bias, out + t); break;
      case 10: sparse_pass<10>(val, at, nnz, X + t, bias, out + t); break;
      case 11: sparse_pass<11>(val, at, nnz, X + t, bias, out + t); break;
      default: sparse_pass<12>(val, at, nnz, X + t, bias, out + t); break;
    }
    t += 8 * v;
  }
  if (relu)
    for (int i = 0; i < L; ++i) out[i] = out[i] > 0.0f ? out[i] : 0.0f;
}

void sparse_grid(const float* val, const int32_t* off, int64_t nnz, const float* X, int L, float bias, bool relu,
                 float* out) {
  sparse_grid_at(val, RunAt{off}, nnz, X, L, bias, relu, out);
}

void sparse_grid_cols(const float* val, const uint16_t* col, const int32_t* tab, int64_t nnz, const float* X, int L,
                      float bias, bool relu, float* out) {
  sparse_grid_at(val, RunAtColumn{col, tab}, nnz, X, L, bias, relu, out);
}

// The weight-streaming product (stream_filters) in this build's own vector width, tiled so the
// accumulators, the patch vectors and a broadcast weight fit the registers: kStreamFilters
// filters x kStreamVectors vectors of kStreamWidth outputs per tile.
//   AVX-512  16 floats, 32 registers: 8 filters x 2 vectors (16 accumulators)
//   AVX2      8 floats, 16 registers: 6 filters x 2 vectors (12 accumulators, 2 patch vectors,
//             1 broadcast; 4 x 2 was 12-17% slower at 64 outputs)
//   generic   4 floats (SSE, NEON):   4 filters x 2 vectors
// (A 16-float generic vector with 8 filters, as AVX-512 takes, spills on AVX2: 16 accumulators
// of two registers each; it ran 9x slower than on AVX-512.)
#if defined(__AVX512F__)
constexpr int kStreamWidth = 16, kStreamFilters = 8;
#elif defined(__AVX2__)
constexpr int kStreamWidth = 8, kStreamFilters = 6;
#else
constexpr int kStreamWidth = 4, kStreamFilters = 4;
#endif
constexpr int kStreamVectors = 2;
static_assert(kStreamOutputBlock % kStreamWidth == 0, "rows.h: outputs come in whole vectors");
using sv = float __attribute__((vector_size(4 * kStreamWidth)));

// out[f * jn + v * W + l] (+)= sum over i < n of w[f * ldw + i] * col[i * jn + v * W + l], for
// f < KN, v < NV, l < W (W = kStreamWidth), adding to out's values when `add`: the sums in i
// order, as the reference.
template <int KN, int NV>
void stream_tile(const float* w, int64_t ldw, int n, const float* col, int jn, bool add, float* out) {
  sv acc[KN][NV];
#pragma GCC unroll 8
  for (int f = 0; f < KN; ++f)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      acc[f][v] = sv{};
      if (add) __builtin_memcpy(&acc[f][v], out + f * jn + v * kStreamWidth, sizeof acc[f][v]);
    }
  for (int i = 0; i < n; ++i) {
    sv c[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) __builtin_memcpy(&c[v], col + (int64_t)i * jn + v * kStreamWidth, sizeof c[v]);
#pragma GCC unroll 8
    for (int f = 0; f < KN; ++f) {
      const float wf = w[f * ldw + i];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[f][v] += wf * c[v];
    }
  }
#pragma GCC unroll 8
  for (int f = 0; f < KN; ++f)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) __builtin_memcpy(out + f * jn + v * kStreamWidth, &acc[f][v], sizeof acc[f][v]);
}

// stream_tile with exactly kn (1..KN) filters and nv (1..NV) vectors.
template <int KN, int NV>
void stream_tile_n(int kn, int nv, const float* w, int64_t ldw, int n, const float* col, int jn, bool add,
                   float* out) {
  if constexpr (KN > 1)
    if (kn < KN) return stream_tile_n<KN - 1, NV>(kn, nv, w, ldw, n, col, jn, add, out);
  if constexpr (NV > 1)
    if (nv < NV) return stream_tile_n<KN, NV - 1>(kn, nv, w, ldw, n, col, jn, add, out);
  stream_tile<KN, NV>(w, ldw, n, col, jn, add, out);
}

// The patch matrix in chunks of rows of 256 KB (L2) at most, each chunk against every filter
// before the next: the call reads the weights once and the patch matrix once from memory or
// L3, whatever its size, the partial sums staying in out between chunks.
void stream_filters(const float* w, int64_t ldw, int kn, int n, const float* col, int jn, float* out) {
  constexpr int kChunkFloats = 65536;
  const int nvec = jn / kStreamWidth, chunk = kChunkFloats / jn > 1 ? kChunkFloats / jn : 1;
  for (int i0 = 0; i0 < n; i0 += chunk) {
    const int ni = n - i0 < chunk ? n - i0 : chunk;
    for (int f0 = 0; f0 < kn; f0 += kStreamFilters) {
      const int fk = kn - f0 < kStreamFilters ? kn - f0 : kStreamFilters;
      for (int v0 = 0; v0 < nvec; v0 += kStreamVectors) {
        const int nv = nvec - v0 < kStreamVectors ? nvec - v0 : kStreamVectors;
        stream_tile_n<kStreamFilters, kStreamVectors>(fk, nv, w + f0 * ldw + i0, ldw, ni,
                                                      col + (int64_t)i0 * jn + v0 * kStreamWidth, jn, i0 > 0,
                                                      out + f0 * jn + v0 * kStreamWidth);
      }
    }
  }
}

// The dot-product form for at most 4 outputs per filter (kStreamDotOutputs): vectors along the
// reduction, KD filters x 4 outputs of accumulators, each reduced across its lanes at the end
// (so the sums run in W interleaved partial sums, then the tail in i order).
//   AVX-512  16 floats: 4 filters (16 accumulators, 4 patch vectors)
//   AVX2, generic:       2 filters (8 accumulators, 4 patch vectors)
#if defined(__AVX512F__)
constexpr int kDotFilters = 4;
#else
constexpr int kDotFilters = 2;
#endif
constexpr int kDotJ = kStreamDotOutputs;
// Weights are read once, from memory, at 1/4 the multiply-adds per float of stream_filters:
// each row is prefetched this many floats (2 KB) ahead. bench conv --model vgg16 --batch 1
// --threads 1, AMD EPYC (Zen 4, loaded machine), the 512-channel 2x2 layers: 0.47-0.57 ms
// without, 0.35-0.43 with on AVX-512; 0.59-0.76 and 0.46-0.55 on AVX2. (The same prefetch in
// stream_filters, compute-bound, changed nothing.)
constexpr int kDotPrefetch = 512;

template <int KD>
void dot_tile(const float* w, int64_t ldw, int n, const float* colT, float* out) {
  constexpr int W = kStreamWidth;
  sv acc[KD][kDotJ];
#pragma GCC unroll 8
  for (int f = 0; f < KD; ++f)
#pragma GCC unroll 8
    for (int j = 0; j < kDotJ; ++j) acc[f][j] = sv{};
  int i = 0;
  for (; i + W <= n; i += W) {
    sv c[kDotJ];
#pragma GCC unroll 8
    for (int j = 0; j < kDotJ; ++j) __builtin_memcpy(&c[j], colT + (int64_t)j * n + i, sizeof c[j]);
#pragma GCC unroll 8
    for (int f = 0; f < KD; ++f) {
      sv wv;
      __builtin_memcpy(&wv, w + f * ldw + i, sizeof wv);
      __builtin_prefetch(w + f * ldw + i + kDotPrefetch);
#pragma GCC unroll 8
      for (int j = 0; j < kDotJ; ++j) acc[f][j] += wv * c[j];
    }
  }
  for (int f = 0; f < KD; ++f)
    for (int j = 0; j < kDotJ; ++j) {
      float sum = 0.0f;
      for (int l = 0; l < W; ++l) sum += acc[f][j][l];
      for (int t = i; t < n; ++t) sum += w[f * ldw + t] * colT[(int64_t)j * n + t];
      out[f * kDotJ + j] = sum;
    }
}

void stream_dots(const float* w, int64_t ldw, int kn, int n, const float* colT, float* out) {
  int f0 = 0;
  for (; f0 + kDotFilters <= kn; f0 += kDotFilters) dot_tile<kDotFilters>(w + f0 * ldw, ldw, n, colT, out + f0 * kDotJ);
  for (; f0 < kn; ++f0) dot_tile<1>(w + f0 * ldw, ldw, n, colT, out + f0 * kDotJ);
}

}  // namespace

const RowKernels rows{&sum_sumsq,      &grad_sums,        &normalise, &bn_backward, &normalise_relu,
                      &grad_sums_relu, &bn_backward_relu, &pad_image, &copy_rows, &transpose, &row_sum,
                      &sparse_row,     &sparse_grid,      &sparse_grid_cols, &stream_filters, &stream_dots};

}  // namespace dnns::cpu::DNNS_ROWS_NS
