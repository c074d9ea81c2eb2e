// AVX-512 (F + VL) Winograd kernels (winograd_impl.h) on 16-float vectors; compiled with
// -mavx512f -mavx512vl -mfma and called only when the CPU has them (kernels/cpu/isa.h).
#include <immintrin.h>

#define DNNS_WINO_NS wino_avx512
namespace dnns::cpu::wino_avx512 {

struct WV {
  static constexpr int W = 16;
  using V = __m512;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void store_n(float* p, V v, int n) { _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), v); }
  static V bcast(float x) { return _mm512_set1_ps(x); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V even(V a, V b) {
    return _mm512_permutex2var_ps(a, _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30), b);
  }
  static V odd(V a, V b) {
    return _mm512_permutex2var_ps(a, _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31), b);
  }
  // Floats s, s + 4, ..., s + 60 of the 64 floats a|b|c|d: every fourth of each pair into
  // the low half, the two halves joined.
  template <int s>
  static V sel4(V a, V b, V c, V d) {
    const __m512i idx = _mm512_setr_epi32(s, s + 4, s + 8, s + 12, s + 16, s + 20, s + 24, s + 28, 0, 0, 0, 0, 0, 0,
                                          0, 0);
    return _mm512_shuffle_f32x4(_mm512_permutex2var_ps(a, idx, b), _mm512_permutex2var_ps(c, idx, d), 0x44);
  }
  // r[i] lane j <-> r[j] lane i (16 x 16): pairs and quads within 128-bit lanes, then the
  // 128-bit lanes of four vectors as a 4 x 4 transpose.
  static void transpose(V* r) {
    V t[16];
    for (int i = 0; i < 8; ++i)
      t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]), t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    for (int i = 0; i < 4; ++i) {  // r[4 i + j], lane L: rows 4 i .. 4 i + 3 of column 4 L + j
      r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
      r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
      r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
      r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int j = 0; j < 4; ++j) {
      const V u0 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88), u1 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xDD),
              u2 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88), u3 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xDD);
      t[j] = _mm512_shuffle_f32x4(u0, u2, 0x88);
      t[8 + j] = _mm512_shuffle_f32x4(u0, u2, 0xDD);
      t[4 + j] = _mm512_shuffle_f32x4(u1, u3, 0x88);
      t[12 + j] = _mm512_shuffle_f32x4(u1, u3, 0xDD);
    }
    for (int i = 0; i < 16; ++i) r[i] = t[i];
  }
  static V zip_lo(V a, V b) {
    return _mm512_permutex2var_ps(a, _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23), b);
  }
  static V zip_hi(V a, V b) {
    return _mm512_permutex2var_ps(a, _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31),
                                  b);
  }
};

#include "kernels/cpu/winograd_ymm.inc"

}  // namespace dnns::cpu::wino_avx512

#include "kernels/cpu/winograd_impl.h"

namespace dnns::cpu::wino_avx512 {

// The transforms vectorise a segment (the tiles of one tile row, at most 16) across its tiles,
// so on CIFAR's images a 16-float vector leaves lanes idle: half at 32x32 with F(4x4) (8 tiles a
// row), three quarters at 16x16. A chunk whose segments all fit 8 floats runs them on 8-float
// vectors (ymm, which Zen 4 executes at the same rate per float as zmm): the products
// (multiply, vectorised across the chunk's ldv tiles) are unchanged, and so is every value.
int widest_segment(const WinoChunk& ch) {
  int w = 0;
  for (int j = 0; j < ch.nseg; ++j) w = w > ch.seg[j].len ? w : ch.seg[j].len;
  return w;
}
bool fits8(const WinoChunk& ch) { return widest_segment(ch) <= WV8::W; }
void input_fit(const WinoChunk& ch, const float* xp, float* Vt) {
  return fits8(ch) ? input<WV8>(ch, xp, Vt) : input<WV>(ch, xp, Vt);
}
void input4_fit(const WinoChunk& ch, const float* xp, float* Vt) {
  return fits8(ch) ? input4<WV8>(ch, xp, Vt) : input4<WV>(ch, xp, Vt);
}
void output_fit(const WinoChunk& ch, const float* M, int kc0, int kc1, const float* bias, bool relu, float* y) {
  return fits8(ch) ? output<WV8>(ch, M, kc0, kc1, bias, relu, y) : output<WV>(ch, M, kc0, kc1, bias, relu, y);
}
void output4_fit(const WinoChunk& ch, const float* M, int kc0, int kc1, const float* bias, bool relu, float* y) {
  return fits8(ch) ? output4<WV8>(ch, M, kc0, kc1, bias, relu, y) : output4<WV>(ch, M, kc0, kc1, bias, relu, y);
}
void output_grad_fit(const WinoChunk& ch, const float* dyp, int64_t dy_image, float* dM) {
  return fits8(ch) ? output_grad<WV8>(ch, dyp, dy_image, dM) : output_grad<WV>(ch, dyp, dy_image, dM);
}

}  // namespace dnns::cpu::wino_avx512

namespace dnns::cpu {

const WinogradKernels* winograd_kernels_avx512() {
  // 8 filters x 3 vectors of tiles: 24 accumulators, 3 inputs and a broadcast in 32 registers.
  // Few tiles: 6 tiles x 4 vectors of filters, 24 accumulators, 4 filter vectors and a
  // broadcast.
  using namespace wino_avx512;
  static const WinogradKernels k{"avx512/16",      16,
                                 8,                3,
                                 &input_fit,       &multiply<WV, 8, 3, 16>,
                                 &output_fit,      &output_grad_fit,
                                 &input4_fit,      &multiply<WV, 8, 3, 36>,
                                 &output4_fit,     6,
                                 4,                &few_filters<WV>,
                                 &few_multiply<WV, 6, 4>, &few_output<WV>};
  return &k;
}

}  // namespace dnns::cpu
