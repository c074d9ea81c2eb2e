// AVX2 + FMA Winograd kernels (winograd_impl.h) on 8-float vectors, 16 registers; compiled with
// -mavx2 -mfma (and without AVX-512) and called only when the CPU has them (kernels/cpu/isa.h).
#include <immintrin.h>

#define DNNS_WINO_NS wino_avx2
namespace dnns::cpu::wino_avx2 {

struct WV {
  static constexpr int W = 8;
  using V = __m256;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static void store_n(float* p, V v, int n) {
    _mm256_maskstore_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)), v);
  }
  static V bcast(float x) { return _mm256_set1_ps(x); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  // shuffle_ps picks within 128-bit lanes (a0 a2 b0 b2 | a4 a6 b4 b6); the 64-bit permute
  // puts the halves in order.
  static V even(V a, V b) {
    const V t = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(t), _MM_SHUFFLE(3, 1, 2, 0)));
  }
  static V odd(V a, V b) {
    const V t = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(t), _MM_SHUFFLE(3, 1, 2, 0)));
  }
  // Floats s, s + 4, ..., s + 28 of the 32 floats a|b|c|d: each vector's two (s, s + 4) moved
  // to lanes 0-1 (and repeated), then blended into place.
  template <int s>
  static V sel4(V a, V b, V c, V d) {
    const __m256i idx = _mm256_setr_epi32(s, s + 4, s, s + 4, s, s + 4, s, s + 4);
    const V ab = _mm256_blend_ps(_mm256_permutevar8x32_ps(a, idx), _mm256_permutevar8x32_ps(b, idx), 0x0C);
    const V cd = _mm256_blend_ps(_mm256_permutevar8x32_ps(c, idx), _mm256_permutevar8x32_ps(d, idx), 0xC0);
    return _mm256_blend_ps(ab, cd, 0xF0);
  }
  // r[i] lane j <-> r[j] lane i (8 x 8): pairs and quads within 128-bit lanes, then the halves.
  static void transpose(V* r) {
    V t[8], q[8];
    for (int i = 0; i < 4; ++i)
      t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]), t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    for (int i = 0; i < 2; ++i) {  // q[4 i + j], lane L: rows 4 i .. 4 i + 3 of column 4 L + j
      q[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
      q[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
      q[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
      q[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int j = 0; j < 4; ++j) {
      r[j] = _mm256_permute2f128_ps(q[j], q[4 + j], 0x20);
      r[4 + j] = _mm256_permute2f128_ps(q[j], q[4 + j], 0x31);
    }
  }
  // unpacklo/hi interleave within 128-bit lanes (a0 b0 a1 b1 | a4 b4 a5 b5, a2 b2 a3 b3 | ...).
  static V zip_lo(V a, V b) {
    return _mm256_permute2f128_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b), 0x20);
  }
  static V zip_hi(V a, V b) {
    return _mm256_permute2f128_ps(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b), 0x31);
  }
};

}  // namespace dnns::cpu::wino_avx2

#include "kernels/cpu/winograd_impl.h"

namespace dnns::cpu {

const WinogradKernels* winograd_kernels_avx2() {
  // 6 filters x 2 vectors of tiles: 12 accumulators, 2 inputs and a broadcast in 16 registers.
  // Few tiles: 6 tiles x 2 vectors of filters, 12 accumulators, 2 filter vectors and a
  // broadcast.
  using namespace wino_avx2;
  static const WinogradKernels k{"avx2/8",    8,
                                 6,           2,
                                 &input<WV>,  &multiply<WV, 6, 2, 16>,
                                 &output<WV>, &output_grad<WV>,
                                 &input4<WV>, &multiply<WV, 6, 2, 36>,
                                 &output4<WV>,     6,
                                 2,                &few_filters<WV>,
                                 &few_multiply<WV, 6, 2>, &few_output<WV>};
  return &k;
}

}  // namespace dnns::cpu
