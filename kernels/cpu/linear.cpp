// Optimized CPU fully-connected layer: one OpenBLAS sgemm per op, cut into row blocks that
// oneTBB runs in parallel when the product is large enough to pay for the tasks.
#include <algorithm>
#include <cstdint>

#include "core/parallel.h"
#include "core/threading.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/gemm_util.h"

namespace dnns::cpu {
namespace {

// Below this many multiply-adds a single sgemm call beats splitting it (task overhead).
constexpr int64_t kParallelMacs = int64_t(1) << 20;
// Rows of C per task at least: wide enough that each sgemm still runs its fast kernels.
constexpr int kRowsPerTask = 32;

// Runs gemm_rows(m0, m1) over row blocks of an (M, ...) output, in parallel if worthwhile: one
// block per thread (each sgemm packs the whole other operand, so fewer, taller blocks pack it
// fewer times; 32-row blocks cost half of sgemm's speed on a 2048^3 product).
template <class F>
void for_row_blocks(int M, int64_t macs, F&& gemm_rows) {
  const int blocks = std::min(num_threads(), M / kRowsPerTask);
  if (macs < kParallelMacs || blocks < 2) {
    gemm_rows(0, M);
    return;
  }
  parallel_for(0, blocks, 1, [&](int b0, int b1) {
    for (int b = b0; b < b1; ++b)
      gemm_rows((int)((int64_t)M * b / blocks), (int)((int64_t)M * (b + 1) / blocks));
  });
}

}  // namespace

void linear_forward(int N, int I, int O, const float* x, const float* w, const float* b, float* y) {
  // x (N, I)   w (O, I)   b (O) or nullptr   y (N, O) = x w^T + b
  for_row_blocks(N, (int64_t)N * I * O, [&](int n0, int n1) {
    float* yb = y + (int64_t)n0 * O;  // (n1 - n0, O)
    if (b)
      for (int n = n0; n < n1; ++n) std::copy(b, b + O, y + (int64_t)n * O);
    sgemm(false, true, n1 - n0, O, I, 1.0f, x + (int64_t)n0 * I, I, w, I, b ? 1.0f : 0.0f, yb, O);
  });
}

void linear_backward_data(int N, int I, int O, const float* dy, const float* w, float* dx) {
  // dy (N, O)   w (O, I)   dx (N, I) = dy w
  for_row_blocks(N, (int64_t)N * I * O, [&](int n0, int n1) {
    sgemm(false, false, n1 - n0, I, O, 1.0f, dy + (int64_t)n0 * O, O, w, I, 0.0f,
          dx + (int64_t)n0 * I, I);
  });
}

void linear_backward_weights(int N, int I, int O, const float* x, const float* dy, float* dw,
                             float* db) {
  // x (N, I)   dy (N, O)   dw (O, I) = dy^T x   db (O) = sum over n of dy
  // Split over rows of dw (output features): each block reads columns [o0, o1) of dy.
  for_row_blocks(O, (int64_t)N * I * O, [&](int o0, int o1) {
    sgemm(true, false, o1 - o0, I, N, 1.0f, dy + o0, O, x, I, 0.0f, dw + (int64_t)o0 * I, I);
  });
  if (db) {
    std::fill(db, db + O, 0.0f);
    for (int n = 0; n < N; ++n)
      for (int o = 0; o < O; ++o) db[o] += dy[(int64_t)n * O + o];
  }
}

}  // namespace dnns::cpu
