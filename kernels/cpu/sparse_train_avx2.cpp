// sparse_train_impl.h compiled for AVX2 + FMA (kernels/CMakeLists.txt sets the flags).
#define DNNS_ST_NS avx2
#include "kernels/cpu/sparse_train_impl.h"
