// The direct convolution kernels of conv_direct.h, written once over an ISA's vector type.
// Included only by conv_direct_<isa>.cpp, each of which first defines, inside
// namespace dnns::cpu::DNNS_DIRECT_NS, the struct(s) of vector operations it instantiates the
// kernels with, and kRegisters, the vector registers it has. Everything here sits in that
// per-ISA namespace and uses no library templates, so no out-of-line copy compiled with one
// ISA's instructions can be picked by the linker for code that runs on a CPU without them.
#ifndef DNNS_DIRECT_NS
#error "define DNNS_DIRECT_NS before including conv_direct_impl.h"
#endif
#include "kernels/cpu/conv_direct.h"

namespace dnns::cpu::DNNS_DIRECT_NS {

inline int imin(int a, int b) { return a < b ? a : b; }

// ---- forward: y (K, P, Q) = bias + conv(xp, w) for filters [k, k + KB) and NV output vectors
// Output vector v reads input offset xoff[v] + toff[tap] in each channel, writes output
// offset yoff[v], and holds lanes[v] valid columns. w: this filter block's packed weights
// (C, R, S, PK), of which the first KB filters are computed (PK > KB: the last, partial block).
template <class I, int KB, int NV, int PK = KB>
void forward_tile(const DirectShape& s, const float* xp, const float* w, const int* xoff,
                  const int* yoff, const int* lanes, const float* bias, bool relu, float* y) {
  using V = typename I::V;
  V acc[KB][NV];
#pragma GCC unroll 16
  for (int kb = 0; kb < KB; ++kb)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[kb][v] = I::zero();
  const int RS = s.R * s.S;
  for (int c = 0; c < s.C; ++c, xp += s.plane, w += RS * PK)
    for (int t = 0; t < RS; ++t) {
      const float* xt = xp + s.toff[t];
      V xv[NV];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) xv[v] = I::load(xt + xoff[v]);
#pragma GCC unroll 16
      for (int kb = 0; kb < KB; ++kb) {
        const V wb = I::bcast(w[t * PK + kb]);
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) acc[kb][v] = I::fma(wb, xv[v], acc[kb][v]);
      }
    }
  const int PQ = s.P * s.Q;
#pragma GCC unroll 16
  for (int kb = 0; kb < KB; ++kb) {
    const V b = I::bcast(bias ? bias[kb] : 0.0f);
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      V o = I::add(acc[kb][v], b);
      if (relu) o = I::max(o, I::zero());
      float* out = y + (long)kb * PQ + yoff[v];
      if (lanes[v] == I::W)
        I::store(out, o);
      else
        I::store_n(out, o, lanes[v]);
    }
  }
}

// Runs forward_tile with exactly nv (1..NV) vectors.
template <class I, int KB, int NV, int PK = KB>
void forward_tile_n(int nv, const DirectShape& s, const float* xp, const float* w, const int* xoff,
                    const int* yoff, const int* lanes, const float* bias, bool relu, float* y) {
  if constexpr (NV > 1)
    if (nv < NV) return forward_tile_n<I, KB, NV - 1, PK>(nv, s, xp, w, xoff, yoff, lanes, bias, relu, y);
  forward_tile<I, KB, NV, PK>(s, xp, w, xoff, yoff, lanes, bias, relu, y);
}

// Filters [k0, k1) over every output vector, in tiles of KB filters x NV vectors; k1 - k0 a
// multiple of KB, k0 of PK, the weights packed in blocks of PK filters (wpk as in
// conv_direct.h). With PK > KB: one partial block, its first KB filters (k1 = k0 + KB).
// Vector v of the image is output row v / per_row, columns (v % per_row) * W on.
template <class I, int KB, int NV, int PK = KB>
void forward_filters(const DirectShape& s, const float* xp, const float* wpk, const float* bias, bool relu,
                     float* y, int k0, int k1) {
  constexpr int W = I::W;
  const int per_row = (s.Q + W - 1) / W, nvec = s.P * per_row;
  const long PQ = (long)s.P * s.Q, CRS = (long)s.C * s.R * s.S;
  int xoff[NV], yoff[NV], lanes[NV];
  for (int j0 = 0; j0 < nvec; j0 += NV) {
    const int nv = imin(NV, nvec - j0);
    for (int v = 0; v < nv; ++v) {
      const int j = j0 + v, p = j / per_row, q0 = (j % per_row) * W;
      xoff[v] = p * s.stride * s.RP + q0;
      yoff[v] = p * s.Q + q0;
      lanes[v] = imin(W, s.Q - q0);
    }
    for (int k = k0; k < k1; k += KB)
      forward_tile_n<I, KB, NV, PK>(nv, s, xp, wpk + (k / PK) * CRS * PK, xoff, yoff, lanes,
                                    bias ? bias + k : nullptr, relu, y + k * PQ);
  }
}

// Vectors per tile of a partial block of F filters, for an ISA whose full tiles are KB x NV
// in `regs` vector registers: as many as keep F * NV accumulators (the full tile's count at
// most), their input vectors and a broadcast in the registers, at most 12. A block of 1 to
// KB - 1 filters computed as a full tile (zero filters past K, as before) cost as much as
// KB of them: a compacted layer of 9 filters ran 2 tiles of 8 and took as long as one of 16.
constexpr int partial_vectors(int F, int KB, int NV, int regs) {
  int v = KB * NV / F;
  while (v > 1 && F * v + v + 1 > regs) --v;
  return v < 12 ? v : 12;
}

// The last F (1 .. KB - 1) filters of a call: tiles of F filters x partial_vectors vectors.
template <class I, int KB, int NV, int F = KB - 1>
void forward_partial(int f, const DirectShape& s, const float* xp, const float* wpk, const float* bias, bool relu,
                     float* y, int k0) {
  if constexpr (F > 1)
    if (f < F) return forward_partial<I, KB, NV, F - 1>(f, s, xp, wpk, bias, relu, y, k0);
  forward_filters<I, F, partial_vectors(F, KB, NV, kRegisters), KB>(s, xp, wpk, bias, relu, y, k0, k0 + F);
}

template <class I, int KB, int NV>
void forward(const DirectShape& s, const float* xp, const float* wpk, const float* bias, bool relu,
             float* y, int k0, int k1) {
  const int kfull = k0 + (k1 - k0) / KB * KB;
  forward_filters<I, KB, NV>(s, xp, wpk, bias, relu, y, k0, kfull);
  if constexpr (KB > 1)
    if (kfull < k1) forward_partial<I, KB, NV>(k1 - kfull, s, xp, wpk, bias, relu, y, kfull);
}

// ---- backward weights: dwT (C*R*S, Kp) += sum over images and output pixels of the input
//      values each pixel read through each (c, r, s) (x) dyT (P*Q, Kp)
// Vectorised over filters: a tile is KV vectors of filters (KV * W of them) x TC of the C*R*S
// weight columns, accumulated in registers over every pixel of every image of the block, so
// nothing is reduced across lanes. The weight column j = (c, r, s) of output pixel (p, q)
// reads xp at c * plane + p * stride * RP + q + toff[r * S + s].
template <class I, int KV, int TC>
void backward_weights_tile(const DirectShape& s, int nimg, const float* const* xp, const float* const* dyT,
                           int Kp, int k0, const int* xoff, int cols, float* dwT) {
  using V = typename I::V;
  constexpr int W = I::W;
  V acc[KV][TC];
#pragma GCC unroll 32
  for (int kv = 0; kv < KV; ++kv)
#pragma GCC unroll 32
    for (int t = 0; t < TC; ++t) acc[kv][t] = I::zero();
  for (int n = 0; n < nimg; ++n) {
    const float* d = dyT[n] + k0;
    for (int p = 0; p < s.P; ++p) {
      const float* xrow = xp[n] + p * s.stride * s.RP;
      for (int q = 0; q < s.Q; ++q, d += Kp) {
        V dv[KV];
#pragma GCC unroll 32
        for (int kv = 0; kv < KV; ++kv) dv[kv] = I::load(d + kv * W);
        const float* x = xrow + q;
#pragma GCC unroll 32
        for (int t = 0; t < TC; ++t) {
          const V xb = I::bcast(x[xoff[t]]);
#pragma GCC unroll 32
          for (int kv = 0; kv < KV; ++kv) acc[kv][t] = I::fma(dv[kv], xb, acc[kv][t]);
        }
      }
    }
  }
  // Lane l of acc[kv][t] is filter k0 + kv * W + l of column t: dwT is (columns, Kp).
  for (int t = 0; t < cols; ++t)
#pragma GCC unroll 32
    for (int kv = 0; kv < KV; ++kv) {
      float* out = dwT + (long)t * Kp + k0 + kv * W;
      I::store(out, I::add(I::load(out), acc[kv][t]));
    }
}

// nimg images: xp[n] their padded inputs, dyT[n] their output gradients transposed to
// (P*Q, Kp) with Kp = K rounded up to whole vectors and zeros past K.
template <class I, int KV, int TC>
void backward_weights(const DirectShape& s, int nimg, const float* const* xp, const float* const* dyT, int Kp,
                      float* dwT) {
  constexpr int W = I::W;
  const int RS = s.R * s.S, CRS = s.C * RS;
  int xoff[TC];
  for (int j0 = 0; j0 < CRS; j0 += TC) {
    const int cols = imin(TC, CRS - j0);
    for (int t = 0; t < TC; ++t) {
      const int j = t < cols ? j0 + t : j0;  // surplus columns repeat the first; never stored
      xoff[t] = j / RS * s.plane + s.toff[j % RS];
    }
    int k0 = 0;
    for (; k0 + KV * W <= Kp; k0 += KV * W)
      backward_weights_tile<I, KV, TC>(s, nimg, xp, dyT, Kp, k0, xoff, cols, dwT + (long)j0 * Kp);
    for (; k0 < Kp; k0 += W)  // the last vectors, one at a time
      backward_weights_tile<I, 1, TC>(s, nimg, xp, dyT, Kp, k0, xoff, cols, dwT + (long)j0 * Kp);
  }
}

}  // namespace dnns::cpu::DNNS_DIRECT_NS
