// AVX2 + FMA direct convolution kernels (8-float vectors, 16 registers); compiled with
// -mavx2 -mfma (and without AVX-512) and called only when the CPU has them (kernels/cpu/isa.h).
#include <immintrin.h>

#define DNNS_DIRECT_NS avx2
namespace dnns::cpu::avx2 {

constexpr int kRegisters = 16;  // ymm0-15

#include "kernels/cpu/conv_direct_ymm.inc"

}  // namespace dnns::cpu::avx2

#include "kernels/cpu/conv_direct_impl.h"

namespace dnns::cpu {

const DirectKernels* direct_kernels_avx2() {
  // 6 filters x 2 vectors: 12 accumulators, 2 inputs and a broadcast in the 16 registers.
  static const DirectKernels k{"avx2/8", 8, 6, &avx2::forward<avx2::V8, 6, 2>,
                               &avx2::backward_weights<avx2::V8, 2, 6>};
  return &k;
}

}  // namespace dnns::cpu
