// AVX2 + FMA direct convolution kernels (8-float vectors, 16 registers); compiled with
// -mavx2 -mfma (and without AVX-512) and called only when the CPU has them (kernels/cpu/isa.h).
#include <immintrin.h>

#define DNNS_DIRECT_NS avx2
namespace dnns::cpu::avx2 {

struct V8 {
  static constexpr int W = 8;
  using V = __m256;
  static __m256i mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static V bcast(float x) { return _mm256_set1_ps(x); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static void store_n(float* p, V v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
};

}  // namespace dnns::cpu::avx2

#include "kernels/cpu/conv_direct_impl.h"

namespace dnns::cpu {

const DirectKernels* direct_kernels_avx2() {
  // 4 filters x 3 vectors: 12 accumulators, 3 inputs and a broadcast in the 16 registers.
  static const DirectKernels k{"avx2/8", 8, 6, &avx2::forward<avx2::V8, 6, 2>,
                               &avx2::backward_weights<avx2::V8, 2, 6>};
  return &k;
}

}  // namespace dnns::cpu
