// rows_impl.h compiled for AVX2 + FMA (kernels/CMakeLists.txt sets the flags).
#define DNNS_ROWS_NS avx2
#include "kernels/cpu/rows_impl.h"
