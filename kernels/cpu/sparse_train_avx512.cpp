// sparse_train_impl.h compiled for AVX-512 (kernels/CMakeLists.txt sets the flags).
#define DNNS_ST_NS avx512
#include "kernels/cpu/sparse_train_impl.h"
