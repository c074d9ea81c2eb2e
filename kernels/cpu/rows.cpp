// The generic build of rows_impl.h and the choice among the ISA builds.
#define DNNS_ROWS_NS generic
#include "kernels/cpu/rows_impl.h"

namespace dnns::cpu {

const RowKernels& row_kernels() {
#if defined(DNNS_HAVE_X86_KERNELS)
  switch (cpu_isa()) {
    case Isa::Avx512: return avx512::rows;
    case Isa::Avx2: return avx2::rows;
    case Isa::Generic: break;
  }
#endif
  return generic::rows;
}

}  // namespace dnns::cpu
