// The Winograd F(2x2, 3x3) kernels of winograd.h, written once over an ISA's vector type.
// Included only by winograd.cpp (generic) and winograd_<isa>.cpp, each of which first defines,
// inside namespace dnns::cpu::DNNS_WINO_NS, a struct WV of vector operations:
//   W, V, zero, load, store, store_n (first n lanes), bcast, fma, add, sub, max,
//   even(a, b) / odd(a, b): the even / odd floats of the 2W floats a|b, in order,
//   zip_lo(a, b) / zip_hi(a, b): a0 b0 a1 b1 ... of the first / second halves of a and b,
//   transpose(r): the W x W matrix of W vectors r[0..W-1] transposed in place.
// Everything here sits in that per-ISA namespace and uses no library templates, so no
// out-of-line copy compiled with one ISA's instructions can be picked by the linker for code
// that runs on a CPU without them.
#ifndef DNNS_WINO_NS
#error "define DNNS_WINO_NS before including winograd_impl.h"
#endif
#include "kernels/cpu/winograd.h"

namespace dnns::cpu::DNNS_WINO_NS {

inline int imin(int a, int b) { return a < b ? a : b; }

// Stores the first n (1..W) lanes of v at p.
template <class I>
inline void store_lanes(float* p, typename I::V v, int n) {
  if (n >= I::W)
    I::store(p, v);
  else
    I::store_n(p, v, n);
}

// V (16, C, ldv): for every channel and segment, the 4x4 patch d of each tile, read from the
// padded image as even and odd lanes of two vectors per patch row, and B^T d B.
template <class I>
void input(const WinoChunk& ch, const float* xp, float* Vt) {
  using V = typename I::V;
  constexpr int W = I::W;
  const long vplane = winograd_vplane(ch);
  for (int c = 0; c < ch.C; ++c)
    for (int j = 0; j < ch.nseg; ++j) {
      const WinoSegment& sg = ch.seg[j];
      // Patch row r of tile tq is padded row 2 tp + r, columns 2 tq .. 2 tq + 3.
      const float* base = xp + sg.img * ch.padded_image + ch.origin + (long)c * ch.plane + 2L * sg.tp * ch.RP + 2 * sg.tq0;
      V t[4][4];  // B^T d, column by column as it is read
      V d[4][4];
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r) {
        const float* row = base + (long)r * ch.RP;
        const V a0 = I::load(row), a1 = I::load(row + W), b0 = I::load(row + 2), b1 = I::load(row + 2 + W);
        d[r][0] = I::even(a0, a1);
        d[r][1] = I::odd(a0, a1);
        d[r][2] = I::even(b0, b1);
        d[r][3] = I::odd(b0, b1);
      }
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) {
        t[0][q] = I::sub(d[0][q], d[2][q]);
        t[1][q] = I::add(d[1][q], d[2][q]);
        t[2][q] = I::sub(d[2][q], d[1][q]);
        t[3][q] = I::sub(d[1][q], d[3][q]);
      }
      float* out = Vt + (long)c * ch.ldv + sg.tb;
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r) {  // (B^T d) B
        store_lanes<I>(out + (4 * r + 0) * vplane, I::sub(t[r][0], t[r][2]), sg.len);
        store_lanes<I>(out + (4 * r + 1) * vplane, I::add(t[r][1], t[r][2]), sg.len);
        store_lanes<I>(out + (4 * r + 2) * vplane, I::sub(t[r][2], t[r][1]), sg.len);
        store_lanes<I>(out + (4 * r + 3) * vplane, I::sub(t[r][1], t[r][3]), sg.len);
      }
    }
}

// m (KB rows of ldv) = u (C, KB) ^T * v (C rows of ldv), NV vectors of columns; rows past
// kvalid not stored. The KB x NV accumulators stay in registers over the whole C reduction.
template <class I, int KB, int NV>
void multiply_tile(const float* u, const float* v, int C, int ldv, float* m, int kvalid) {
  using V = typename I::V;
  constexpr int W = I::W;
  V acc[KB][NV];
#pragma GCC unroll 8
  for (int kb = 0; kb < KB; ++kb)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) acc[kb][j] = I::zero();
  for (int c = 0; c < C; ++c, u += KB, v += ldv) {
    V xv[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) xv[j] = I::load(v + j * W);
#pragma GCC unroll 8
    for (int kb = 0; kb < KB; ++kb) {
      const V ub = I::bcast(u[kb]);
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[kb][j] = I::fma(ub, xv[j], acc[kb][j]);
    }
  }
  for (int kb = 0; kb < kvalid; ++kb)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) I::store(m + (long)kb * ldv + j * W, acc[kb][j]);
}

// multiply_tile with exactly nv (1..NV) vectors.
template <class I, int KB, int NV>
void multiply_tile_n(int nv, const float* u, const float* v, int C, int ldv, float* m, int kvalid) {
  if constexpr (NV > 1)
    if (nv < NV) return multiply_tile_n<I, KB, NV - 1>(nv, u, v, C, ldv, m, kvalid);
  multiply_tile<I, KB, NV>(u, v, C, ldv, m, kvalid);
}

template <class I, int KB, int NV, int NX>
void multiply(const WinoChunk& ch, const float* U, const float* Vt, int kc0, int kc1, float* M) {
  constexpr int W = I::W;
  const WinoSegment& last = ch.seg[ch.nseg - 1];
  const int nvec = (last.tb + last.len + W - 1) / W;
  const int kn = kc1 - kc0;
  for (int xi = 0; xi < NX; ++xi) {
    const float* vx = Vt + xi * winograd_vplane(ch);
    for (int k = kc0; k < kc1; k += KB) {
      const float* u = U + xi * ch.uplane + (long)(k / KB) * ch.C * KB;
      float* m = M + xi * winograd_mplane(ch, kn) + (long)(k - kc0) * ch.ldv;
      for (int j0 = 0; j0 < nvec; j0 += NV)
        multiply_tile_n<I, KB, NV>(imin(NV, nvec - j0), u, vx + j0 * W, ch.C, ch.ldv, m + j0 * W,
                                   imin(KB, kc1 - k));
    }
  }
}

// y: A^T m A (+ bias, ReLU) of each tile, the two output rows of a segment's tiles written as
// interleaved vectors (even columns from the tile's first output column, odd from its second).
template <class I>
void output(const WinoChunk& ch, const float* M, int kc0, int kc1, const float* bias, bool relu, float* y) {
  using V = typename I::V;
  constexpr int W = I::W;
  const int kn = kc1 - kc0;
  const long HW = (long)ch.H * ch.W, mplane = winograd_mplane(ch, kn);
  for (int k = kc0; k < kc1; ++k) {
    const V bk = I::bcast(bias ? bias[k] : 0.0f);
    const float* mk = M + (long)(k - kc0) * ch.ldv;
    for (int j = 0; j < ch.nseg; ++j) {
      const WinoSegment& sg = ch.seg[j];
      V m[4][4];
#pragma GCC unroll 16
      for (int xi = 0; xi < 16; ++xi) m[xi / 4][xi % 4] = I::load(mk + xi * mplane + sg.tb);
      V t[2][4];  // A^T m
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) {
        t[0][q] = I::add(I::add(m[0][q], m[1][q]), m[2][q]);
        t[1][q] = I::sub(I::sub(m[1][q], m[2][q]), m[3][q]);
      }
      float* yk = y + ((long)sg.img * ch.K + k) * HW + 2 * sg.tq0;
      const int ncols = imin(2 * sg.len, ch.W - 2 * sg.tq0);
#pragma GCC unroll 2
      for (int i = 0; i < 2; ++i) {
        const int h = 2 * sg.tp + i;
        if (h >= ch.H) break;
        V o0 = I::add(I::add(I::add(t[i][0], t[i][1]), t[i][2]), bk);
        V o1 = I::add(I::sub(I::sub(t[i][1], t[i][2]), t[i][3]), bk);
        if (relu) {
          o0 = I::max(o0, I::zero());
          o1 = I::max(o1, I::zero());
        }
        float* row = yk + (long)h * ch.W;
        store_lanes<I>(row, I::zip_lo(o0, o1), ncols);
        if (ncols > W) store_lanes<I>(row + W, I::zip_hi(o0, o1), ncols - W);
      }
    }
  }
}

// dM (16 planes of (K, ldv), winograd_mplane(ch, K) apart) = A dy A^T of each tile's 2x2
// output gradient, the adjoint of `output`'s A^T m A: read from dyp, the output gradient
// padded like the input (the tile's rows 2 tp + 1, 2 tp + 2 and columns 2 tq + 1, 2 tq + 2;
// zeros past H and W), image i at dyp + i * dy_image.
template <class I>
void output_grad(const WinoChunk& ch, const float* dyp, int64_t dy_image, float* dM) {
  using V = typename I::V;
  constexpr int W = I::W;
  const long mplane = winograd_mplane(ch, ch.K);
  for (int k = 0; k < ch.K; ++k)
    for (int j = 0; j < ch.nseg; ++j) {
      const WinoSegment& sg = ch.seg[j];
      const float* base = dyp + sg.img * dy_image + (long)k * ch.plane + (2L * sg.tp + 1) * ch.RP + 2 * sg.tq0 + 1;
      V g[2][2];
#pragma GCC unroll 2
      for (int a = 0; a < 2; ++a) {
        const V v0 = I::load(base + (long)a * ch.RP), v1 = I::load(base + (long)a * ch.RP + W);
        g[a][0] = I::even(v0, v1);
        g[a][1] = I::odd(v0, v1);
      }
      V u[4][2];  // A g: rows g0, g0 + g1, g0 - g1, -g1
#pragma GCC unroll 2
      for (int b = 0; b < 2; ++b) {
        u[0][b] = g[0][b];
        u[1][b] = I::add(g[0][b], g[1][b]);
        u[2][b] = I::sub(g[0][b], g[1][b]);
        u[3][b] = I::sub(I::zero(), g[1][b]);
      }
      float* out = dM + (long)k * ch.ldv + sg.tb;
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {  // (A g) A^T
        store_lanes<I>(out + (4 * i + 0) * mplane, u[i][0], sg.len);
        store_lanes<I>(out + (4 * i + 1) * mplane, I::add(u[i][0], u[i][1]), sg.len);
        store_lanes<I>(out + (4 * i + 2) * mplane, I::sub(u[i][0], u[i][1]), sg.len);
        store_lanes<I>(out + (4 * i + 3) * mplane, I::sub(I::zero(), u[i][1]), sg.len);
      }
    }
}

// ---- F(4x4, 3x3): 6x6 patches, 36 products per tile and channel for 16 outputs
//   B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1]
//   A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]

// t = B^T d along one axis: t0 = 4 d0 - 5 d2 + d4, t1,2 = (d4 - 4 d2) -+ (4 d1 - d3),
// t3,4 = (d4 - d2) -+ 2 (d1 - d3), t5 = 4 d1 - 5 d3 + d5.
template <class I>
inline void b4(const typename I::V* d, typename I::V* t) {
  using V = typename I::V;
  const V four = I::bcast(4.0f), mfour = I::bcast(-4.0f), mfive = I::bcast(-5.0f);
  t[0] = I::fma(four, d[0], I::fma(mfive, d[2], d[4]));
  const V a = I::fma(mfour, d[2], d[4]), b = I::fma(four, d[1], I::sub(I::zero(), d[3]));
  t[1] = I::sub(a, b);
  t[2] = I::add(a, b);
  const V c = I::sub(d[4], d[2]), e = I::sub(d[1], d[3]), e2 = I::add(e, e);
  t[3] = I::sub(c, e2);
  t[4] = I::add(c, e2);
  t[5] = I::fma(four, d[1], I::fma(mfive, d[3], d[5]));
}

// o = A^T m along one axis: with p = m1 + m2, q = m1 - m2, r = m3 + m4, s = m3 - m4:
// o0 = m0 + p + r, o1 = q + 2 s, o2 = p + 4 r, o3 = q + 8 s + m5.
template <class I>
inline void a4(const typename I::V* m, typename I::V* o) {
  using V = typename I::V;
  const V p = I::add(m[1], m[2]), q = I::sub(m[1], m[2]), r = I::add(m[3], m[4]), s = I::sub(m[3], m[4]);
  o[0] = I::add(I::add(m[0], p), r);
  o[1] = I::fma(I::bcast(2.0f), s, q);
  o[2] = I::fma(I::bcast(4.0f), r, p);
  o[3] = I::add(I::fma(I::bcast(8.0f), s, q), m[5]);
}

// V (36 planes of (C, ldv), winograd_vplane apart) = B^T d B of each tile's 6x6 patch: patch
// row r of tile (tp, tq) is padded row 4 tp + r from the origin, columns 4 tq .. 4 tq + 5,
// read as every fourth float of four vectors (I::sel4).
template <class I>
void input4(const WinoChunk& ch, const float* xp, float* Vt) {
  using V = typename I::V;
  constexpr int W = I::W;
  const long vplane = winograd_vplane(ch);
  for (int c = 0; c < ch.C; ++c)
    for (int j = 0; j < ch.nseg; ++j) {
      const WinoSegment& sg = ch.seg[j];
      const float* base = xp + sg.img * ch.padded_image + ch.origin + (long)c * ch.plane + 4L * sg.tp * ch.RP + 4 * sg.tq0;
      V t[6][6];  // B^T applied to the columns of each row: t[r][q]
#pragma GCC unroll 6
      for (int r = 0; r < 6; ++r) {
        const float* row = base + (long)r * ch.RP;
        V d[6];
        {
          const V v0 = I::load(row), v1 = I::load(row + W), v2 = I::load(row + 2 * W), v3 = I::load(row + 3 * W);
          d[0] = I::template sel4<0>(v0, v1, v2, v3);
          d[1] = I::template sel4<1>(v0, v1, v2, v3);
          d[2] = I::template sel4<2>(v0, v1, v2, v3);
          d[3] = I::template sel4<3>(v0, v1, v2, v3);
        }
        {
          const V v0 = I::load(row + 4), v1 = I::load(row + 4 + W), v2 = I::load(row + 4 + 2 * W),
                  v3 = I::load(row + 4 + 3 * W);
          d[4] = I::template sel4<0>(v0, v1, v2, v3);
          d[5] = I::template sel4<1>(v0, v1, v2, v3);
        }
        b4<I>(d, t[r]);  // d B along the row
      }
      float* out = Vt + (long)c * ch.ldv + sg.tb;
#pragma GCC unroll 6
      for (int q = 0; q < 6; ++q) {  // B^T along the columns
        V col[6], o[6];
#pragma GCC unroll 6
        for (int r = 0; r < 6; ++r) col[r] = t[r][q];
        b4<I>(col, o);
#pragma GCC unroll 6
        for (int r = 0; r < 6; ++r) store_lanes<I>(out + (6 * r + q) * vplane, o[r], sg.len);
      }
    }
}

// y: A^T m A (+ bias, ReLU) of each tile, the four output rows of a segment's tiles written as
// four-way interleaved vectors.
template <class I>
void output4(const WinoChunk& ch, const float* M, int kc0, int kc1, const float* bias, bool relu, float* y) {
  using V = typename I::V;
  constexpr int W = I::W;
  const int kn = kc1 - kc0;
  const long HW = (long)ch.H * ch.W, mplane = winograd_mplane(ch, kn);
  for (int k = kc0; k < kc1; ++k) {
    const V bk = I::bcast(bias ? bias[k] : 0.0f);
    const float* mk = M + (long)(k - kc0) * ch.ldv;
    for (int j = 0; j < ch.nseg; ++j) {
      const WinoSegment& sg = ch.seg[j];
      V t[4][6];  // A^T m: t[i][q]
#pragma GCC unroll 6
      for (int q = 0; q < 6; ++q) {
        V col[6];
#pragma GCC unroll 6
        for (int r = 0; r < 6; ++r) col[r] = I::load(mk + (6 * r + q) * mplane + sg.tb);
        V o[4];
        a4<I>(col, o);
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) t[i][q] = o[i];
      }
      float* yk = y + ((long)sg.img * ch.K + k) * HW + 4 * sg.tq0;
      const int ncols = imin(4 * sg.len, ch.W - 4 * sg.tq0);
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        const int h = 4 * sg.tp + i;
        if (h >= ch.H) break;
        V o[4];
        a4<I>(t[i], o);
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) {
          o[q] = I::add(o[q], bk);
          if (relu) o[q] = I::max(o[q], I::zero());
        }
        // Lane l of o[q] is output column 4 (tq0 + l) + q: interleave four ways.
        const V z0 = I::zip_lo(o[0], o[2]), z1 = I::zip_hi(o[0], o[2]), z2 = I::zip_lo(o[1], o[3]),
                z3 = I::zip_hi(o[1], o[3]);
        const V out[4] = {I::zip_lo(z0, z2), I::zip_hi(z0, z2), I::zip_lo(z1, z3), I::zip_hi(z1, z3)};
        float* row = yk + (long)h * ch.W;
#pragma GCC unroll 4
        for (int v = 0; v < 4; ++v)
          if (ncols > v * W) store_lanes<I>(row + v * W, out[v], ncols - v * W);
      }
    }
  }
}

// ---- F(4x4, 3x3) for few tiles (winograd.h WinoFew): vectors across filters

// out = G' v along one axis of the 3 taps a, b, d (vectors across filters), G' being G without
// its row scales: G = diag(1/4, -1/6, -1/6, 1/24, 1/24, 1) G', G' = [1 0 0; 1 1 1; 1 -1 1;
// 1 2 4; 1 -2 4; 0 0 1]. The scales of U[6 i + j] (D_i D_j) are applied to V instead
// (winograd_conv_few), once per call rather than once per filter.
template <class I>
inline void g4(typename I::V a, typename I::V b, typename I::V d, typename I::V* o) {
  using V = typename I::V;
  const V s = I::add(a, d), e = I::fma(I::bcast(4.0f), d, a), b2 = I::add(b, b);
  o[0] = a;
  o[1] = I::add(s, b);
  o[2] = I::sub(s, b);
  o[3] = I::add(e, b2);
  o[4] = I::sub(e, b2);
  o[5] = d;
}

// U (36 planes, f.uplane apart, of (cb, Kb)) = G' g G'^T of filters [k0, min(K, k0 + Kb)) in
// whole vectors (lanes past K zero) and channels [c0, c0 + cb), w (K, C, 3, 3). Per vector of
// W filters, their taps are first copied into `stage` (cb * 9 rows of W floats, contiguous:
// 18 KiB for 32 channels on AVX-512, in L1) so that each tap of the W filters loads as one
// vector.
template <class I>
void few_filters(const WinoFew& f, const float* w, int c0, int cb, int k0, float* stage, float* U) {
  using V = typename I::V;
  constexpr int W = I::W;
  const int Kb = f.Kb, kn = imin(Kb, f.K - k0), taps = cb * 9;
  const long uplane = f.uplane;
  for (int kv = 0; kv < kn; kv += W) {  // vectors past K are not read (few_multiply: nkv)
    const int lanes = imin(W, kn - kv);
    // W taps of each of the W filters (zero past K) as W vectors, transposed in registers; the
    // last taps % W one by one (a vector would read past w's end on the last filter).
    const float* src[W];
    for (int l = 0; l < W; ++l) src[l] = w + ((long)(k0 + kv + imin(l, lanes - 1)) * f.C + c0) * 9;
    int j = 0;
    for (; j + W <= taps; j += W) {
      V r[W];
#pragma GCC unroll 16
      for (int l = 0; l < W; ++l) r[l] = l < lanes ? I::load(src[l] + j) : I::zero();
      I::transpose(r);
#pragma GCC unroll 16
      for (int i = 0; i < W; ++i) I::store(stage + (j + i) * W, r[i]);
    }
    for (; j < taps; ++j)
      for (int l = 0; l < W; ++l) stage[j * W + l] = l < lanes ? src[l][j] : 0.0f;
    for (int c = 0; c < cb; ++c) {
      const float* g = stage + c * 9 * W;
      V gg[6][3];  // G' g
#pragma GCC unroll 3
      for (int j = 0; j < 3; ++j) {
        V o[6];
        g4<I>(I::load(g + j * W), I::load(g + (3 + j) * W), I::load(g + (6 + j) * W), o);
#pragma GCC unroll 6
        for (int i = 0; i < 6; ++i) gg[i][j] = o[i];
      }
      float* out = U + (long)c * Kb + kv;
#pragma GCC unroll 6
      for (int i = 0; i < 6; ++i) {  // (G' g) G'^T
        V o[6];
        g4<I>(gg[i][0], gg[i][1], gg[i][2], o);
#pragma GCC unroll 6
        for (int j = 0; j < 6; ++j) I::store(out + (6 * i + j) * uplane, o[j]);
      }
    }
  }
}

// m (TB rows of Kb floats: tiles) (+)= v^T u over cb channels: v (cb rows of ldv, TB tiles
// broadcast), u (cb rows of Kb, KV vectors of filters). Starts from zero when `first`.
template <class I, int TB, int KV>
void few_tile(const float* v, long ldv, const float* u, int Kb, int cb, float* m, bool first) {
  using V = typename I::V;
  constexpr int W = I::W;
  V acc[TB][KV];
#pragma GCC unroll 8
  for (int t = 0; t < TB; ++t)
#pragma GCC unroll 8
    for (int j = 0; j < KV; ++j) acc[t][j] = first ? I::zero() : I::load(m + (long)t * Kb + j * W);
  for (int c = 0; c < cb; ++c, v += ldv, u += Kb) {
    V uv[KV];
#pragma GCC unroll 8
    for (int j = 0; j < KV; ++j) uv[j] = I::load(u + j * W);
#pragma GCC unroll 8
    for (int t = 0; t < TB; ++t) {
      const V b = I::bcast(v[t]);
#pragma GCC unroll 8
      for (int j = 0; j < KV; ++j) acc[t][j] = I::fma(b, uv[j], acc[t][j]);
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < TB; ++t)
#pragma GCC unroll 8
    for (int j = 0; j < KV; ++j) I::store(m + (long)t * Kb + j * W, acc[t][j]);
}

// few_tile with exactly tb (1..TB) tiles and kv (1..KV) vectors.
template <class I, int TB, int KV>
void few_tile_n(int tb, int kv, const float* v, long ldv, const float* u, int Kb, int cb, float* m, bool first) {
  if constexpr (TB > 1)
    if (tb < TB) return few_tile_n<I, TB - 1, KV>(tb, kv, v, ldv, u, Kb, cb, m, first);
  if constexpr (KV > 1)
    if (kv < KV) return few_tile_n<I, TB, KV - 1>(tb, kv, v, ldv, u, Kb, cb, m, first);
  few_tile<I, TB, KV>(v, ldv, u, Kb, cb, m, first);
}

// M (36 planes, f.mplane apart, of (t1 - t0, Kb)) (+)= sum over the cb channels of V[xi]
// (column t of channel c, tiles [t0, t1)) times U[xi] (c, the first nkv vectors of filters).
template <class I, int TB, int KV>
void few_multiply(const WinoFew& f, const float* Vt, const float* U, int cb, int t0, int t1, int nkv, bool first,
                  float* M) {
  constexpr int W = I::W;
  for (int xi = 0; xi < 36; ++xi) {
    const float* v = Vt + xi * f.vplane;
    const float* u = U + xi * f.uplane;
    float* m = M + xi * f.mplane;
    for (int t = t0; t < t1; t += TB)
      for (int j = 0; j < nkv; j += KV)
        few_tile_n<I, TB, KV>(imin(TB, t1 - t), imin(KV, nkv - j), v + t, f.ldv, u + j * W, f.Kb, cb,
                              m + (long)(t - t0) * f.Kb + j * W, first);
  }
}

// y (N, K, H, W), filters [k0, k0 + Kb) below K, tiles [t0, t1): A^T m A + bias (ReLU when
// relu) of each tile, computed on vectors of filters and stored output by output (those past
// H or W not written).
template <class I>
void few_output(const WinoFew& f, const float* M, int k0, int t0, int t1, const float* bias, bool relu, float* y) {
  using V = typename I::V;
  constexpr int W = I::W;
  const int kn = imin(f.Kb, f.K - k0), per_image = f.TP * f.TQ;
  const long HW = (long)f.H * f.W;
  float bb[W], out[16][W];
  for (int kv = 0; kv < kn; kv += W) {
    const int lanes = imin(W, kn - kv);
    for (int l = 0; l < W; ++l) bb[l] = bias && l < lanes ? bias[k0 + kv + l] : 0.0f;
    const V bk = I::load(bb);
    for (int t = t0; t < t1; ++t) {
      const float* m = M + (long)(t - t0) * f.Kb + kv;
      V tt[4][6];  // A^T m
#pragma GCC unroll 6
      for (int q = 0; q < 6; ++q) {
        V col[6], o[4];
#pragma GCC unroll 6
        for (int r = 0; r < 6; ++r) col[r] = I::load(m + (6 * r + q) * f.mplane);
        a4<I>(col, o);
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) tt[i][q] = o[i];
      }
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        V o[4];
        a4<I>(tt[i], o);
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) {
          o[q] = I::add(o[q], bk);
          if (relu) o[q] = I::max(o[q], I::zero());
          I::store(out[4 * i + q], o[q]);
        }
      }
      const int img = t / per_image, tp = t % per_image / f.TQ, tq = t % f.TQ;
      const int rows = imin(4, f.H - 4 * tp), cols = imin(4, f.W - 4 * tq);
      float* yt = y + ((long)img * f.K + k0 + kv) * HW + 4L * tp * f.W + 4 * tq;
      for (int l = 0; l < lanes; ++l, yt += HW)
        for (int i = 0; i < rows; ++i)
          for (int q = 0; q < cols; ++q) yt[(long)i * f.W + q] = out[4 * i + q][l];
    }
  }
}

}  // namespace dnns::cpu::DNNS_WINO_NS
