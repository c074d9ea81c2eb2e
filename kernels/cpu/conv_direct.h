// Direct convolution kernels for stride-1 convolutions on NCHW tensors, vectorised over the
// output row (one vector = up to `vec` consecutive output columns of one row) and register-
// blocked over filters: a tile of KB filters x NV vectors stays in registers for the whole
// C*R*S reduction, so no column matrix is built and nothing is packed per call but the weights.
//
// The kernels read a zero-padded copy of each image's input (layout below, with at least
// RP + vec floats of slack after it: vector loads of a row's last vector may run past the
// row's end; those lanes are never stored). Output columns beyond Q are computed on whatever
// lies there and discarded.
//
// backward_data of a stride-1 convolution is itself a stride-1 convolution of the padded
// output gradient with the filters flipped and transposed (C outputs from K inputs), so it
// runs through `forward` (see conv.cpp). The ISA variants live in conv_direct_<isa>.cpp, each
// compiled with its own instruction-set flags and called only when the CPU has them (isa.h).
#pragma once
#include "kernels/cpu/isa.h"

namespace dnns::cpu {

// The padded input of one image, for stride st: row h of the padded image (Hp rows) starts
// at h * RP; within it, the columns w of phase w % st lie in order at (w % st) * L + w / st,
// L = ceil(Wp / st), RP = st * L. So the st-strided columns an output row reads through one
// kernel tap are consecutive floats (for stride 1, L = RP = Wp: the plain padded image).
// Tap (r, s) of output pixel (p, q) is at p * st * RP + q + toff[r * S + s], with
// toff[r * S + s] = r * RP + (s % st) * L + s / st.
struct DirectShape {
  int C = 0, K = 0;     // input, output channels
  int R = 0, S = 0;     // kernel height, width
  int stride = 1;       // st
  int RP = 0;           // floats per padded row (all phases)
  int plane = 0;        // floats per channel: Hp * RP
  int P = 0, Q = 0;     // output (K, P, Q)
  const int* toff = nullptr;  // (R * S) tap offsets, as above
};

struct DirectKernels {
  const char* name;  // e.g. "avx512/16" (ISA / floats per vector)
  int vec;           // floats per vector
  int kb;            // filters per forward tile: weights are packed in blocks of kb filters
  // y (K, P, Q) rows [k0, k1) = bias + conv(xp, w) (ReLU applied when relu), k0 a multiple of kb.
  // wpk: (ceil(K / kb), C, R, S, kb), filters past K zero.
  void (*forward)(const DirectShape& s, const float* xp, const float* wpk, const float* bias, bool relu,
                  float* y, int k0, int k1);
  // dwT (C*R*S, Kp) += for each of the nimg images, the sum over its output pixels of the
  // input values the pixel read times the output gradient: the weight gradient transposed.
  // xp[n]: padded input of image n; dyT[n]: its output gradient transposed, (P*Q, Kp),
  // Kp = K rounded up to a multiple of vec, zeros past K.
  void (*backward_weights)(const DirectShape& s, int nimg, const float* const* xp, const float* const* dyT,
                           int Kp, float* dwT);
};

// The kernels of `isa` for output rows of width Q (a narrower vector where Q is small), or
// nullptr when there are none (Isa::Generic, or no x86 kernels in this build).
const DirectKernels* direct_kernels(Isa isa, int Q);

#if defined(DNNS_HAVE_X86_KERNELS)
const DirectKernels* direct_kernels_avx2();
const DirectKernels* direct_kernels_avx512();     // 16-float vectors
const DirectKernels* direct_kernels_avx512_256(); // 8-float vectors with AVX-512VL (32 registers)
#endif

}  // namespace dnns::cpu
