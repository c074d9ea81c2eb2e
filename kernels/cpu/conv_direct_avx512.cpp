// AVX-512 (F + VL) direct convolution kernels; compiled with -mavx512f -mavx512vl -mfma and
// called only when the CPU has them (kernels/cpu/isa.h). Two vector widths: 16 floats for
// rows of 9 or more output columns, 8 floats (ymm registers, 32 of them) below.
#include <immintrin.h>

#define DNNS_DIRECT_NS avx512
namespace dnns::cpu::avx512 {

constexpr int kRegisters = 32;  // zmm0-31 (ymm0-31 with AVX-512VL)

struct V16 {
  static constexpr int W = 16;
  using V = __m512;
  static __mmask16 mask(int n) { return (__mmask16)((1u << n) - 1); }
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static V bcast(float x) { return _mm512_set1_ps(x); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void store_n(float* p, V v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
};

#include "kernels/cpu/conv_direct_ymm.inc"

}  // namespace dnns::cpu::avx512

#include "kernels/cpu/conv_direct_impl.h"

namespace dnns::cpu {

const DirectKernels* direct_kernels_avx512() {
  // 8 filters x 3 vectors: 24 accumulators, 3 inputs and a broadcast in the 32 registers.
  static const DirectKernels k{"avx512/16", 16, 8, &avx512::forward<avx512::V16, 8, 3>,
                               &avx512::backward_weights<avx512::V16, 2, 12>};
  return &k;
}

const DirectKernels* direct_kernels_avx512_256() {
  static const DirectKernels k{"avx512/8", 8, 8, &avx512::forward<avx512::V8, 8, 3>,
                               &avx512::backward_weights<avx512::V8, 2, 12>};
  return &k;
}

}  // namespace dnns::cpu
