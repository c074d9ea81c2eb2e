// AVX2 + FMA Winograd kernels (winograd_impl.h) on 8-float vectors, 16 registers; compiled with
// -mavx2 -mfma (and without AVX-512) and called only when the CPU has them (kernels/cpu/isa.h).
#include <immintrin.h>

#define DNNS_WINO_NS wino_avx2
namespace dnns::cpu::wino_avx2 {

#include "kernels/cpu/winograd_ymm.inc"
using WV = WV8;

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
