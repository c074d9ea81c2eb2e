// The inner loop of the sparse weight gradient (sparse_train.h), compiled once per
// instruction set: included by sparse_train.cpp (generic) and sparse_train_<isa>.cpp after
// defining DNNS_ST_NS. Every build sums in the same order (8 lanes, then the lanes in order),
// so results do not depend on the CPU.
#ifndef DNNS_ST_NS
#error "define DNNS_ST_NS before including sparse_train_impl.h"
#endif
#include "kernels/cpu/sparse_train.h"

namespace dnns::cpu::DNNS_ST_NS {
namespace {

using f8 = float __attribute__((vector_size(32)));
inline void load8(f8* v, const float* p) { __builtin_memcpy(v, p, sizeof *v); }

inline float lane_sum(const f8* v) {
  float s = 0.0f;
  for (int l = 0; l < 8; ++l) s += (*v)[l];
  return s;
}

// Four nonzeros at a time share each load of g (one filter's dy grid, kept in L1).
void row_dots(const float* g, int L, const float* X, const int32_t* off, int64_t nnz, float* acc) {
  int64_t j = 0;
  for (; j + 4 <= nnz; j += 4) {
    const float *x0 = X + off[j], *x1 = X + off[j + 1], *x2 = X + off[j + 2], *x3 = X + off[j + 3];
    f8 a0{}, a1{}, a2{}, a3{}, gv, xv;
    for (int t = 0; t < L; t += 8) {
      load8(&gv, g + t);
      load8(&xv, x0 + t), a0 += gv * xv;
      load8(&xv, x1 + t), a1 += gv * xv;
      load8(&xv, x2 + t), a2 += gv * xv;
      load8(&xv, x3 + t), a3 += gv * xv;
    }
    acc[j] += lane_sum(&a0), acc[j + 1] += lane_sum(&a1), acc[j + 2] += lane_sum(&a2), acc[j + 3] += lane_sum(&a3);
  }
  for (; j < nnz; ++j) {
    const float* x0 = X + off[j];
    f8 a0{}, gv, xv;
    for (int t = 0; t < L; t += 8) {
      load8(&gv, g + t);
      load8(&xv, x0 + t), a0 += gv * xv;
    }
    acc[j] += lane_sum(&a0);
  }
}

}  // namespace

const SparseTrainKernels sparse_train{&row_dots};

}  // namespace dnns::cpu::DNNS_ST_NS
