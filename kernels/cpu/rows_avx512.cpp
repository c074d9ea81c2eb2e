// rows_impl.h compiled for AVX-512 (kernels/CMakeLists.txt sets the flags).
#define DNNS_ROWS_NS avx512
#include "kernels/cpu/rows_impl.h"
