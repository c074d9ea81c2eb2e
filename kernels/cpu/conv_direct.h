// Direct convolution kernels for stride-1 convolutions on NCHW tensors, vectorised over the
// output row (one vector = up to `vec` consecutive output columns of one row) and register-
// blocked over filters: a tile of KB filters x NV vectors stays in registers for the whole
// C*R*S reduction, so no column matrix is built and nothing is packed per call but the weights.
//
// Every kernel works on one image at a time and reads a zero-padded copy of its input,
// xp (C, Hp, Wp) with Hp = H + 2*pad, Wp = W + 2*pad, followed by at least `vec` floats of
// slack (vector loads of a row's last vector may run past the row's end; those lanes are
// never stored). Output columns beyond Q are computed on whatever lies there and discarded.
//
// backward_data of a stride-1 convolution is itself a stride-1 convolution of the padded
// output gradient with the filters flipped and transposed (C outputs from K inputs), so it
// runs through `forward` (see conv.cpp). The ISA variants live in conv_direct_<isa>.cpp, each
// compiled with its own instruction-set flags and called only when the CPU has them (isa.h).
#pragma once
#include "kernels/cpu/isa.h"

namespace dnns::cpu {

struct DirectShape {
  int C = 0, K = 0;   // input channels, output channels
  int R = 0, S = 0;   // kernel height, width
  int Hp = 0, Wp = 0; // padded input (C, Hp, Wp)
  int P = 0, Q = 0;   // output (K, P, Q): P = Hp - R + 1, Q = Wp - S + 1
};

struct DirectKernels {
  const char* name;  // e.g. "avx512/16" (ISA / floats per vector)
  int vec;           // floats per vector
  int kb;            // filters per forward tile: weights are packed in blocks of kb filters
  // y (K, P, Q) rows [k0, k1) = bias + conv(xp, w) (ReLU applied when relu), k0 a multiple of kb.
  // wpk: (ceil(K / kb), C, R, S, kb), filters past K zero.
  void (*forward)(const DirectShape& s, const float* xp, const float* wpk, const float* bias, bool relu,
                  float* y, int k0, int k1);
  // dw (K, C, R, S) += for each of the nimg images, the sum over its output pixels of the
  // output gradient times the input values the pixel read. xp[n]: padded input of image n;
  // dyT[n]: its output gradient transposed, (P*Q, Kp), Kp = K rounded up to a multiple of
  // vec, zeros past K.
  void (*backward_weights)(const DirectShape& s, int nimg, const float* const* xp, const float* const* dyT,
                           int Kp, float* dw);
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
