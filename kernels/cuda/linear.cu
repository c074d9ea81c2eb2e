// Fully connected layer via cuBLAS (row-major GEMMs, see gemm_rm in context.cpp):
//   forward        y (N,O)  = x (N,I) w^T (I,O) + b
//   backward data  dx (N,I) = dy (N,O) w (O,I)
//   backward wts   dw (O,I) = dy^T (O,N) x (N,I),   db (O) = column sums of dy
#include "kernels/cuda/device.cuh"

namespace dnns::cuda {
namespace {

// y (rows, cols) += b (cols) broadcast over the rows.
__global__ void add_bias_rows_kernel(int64_t rows, int cols, const float* __restrict__ b,
                                     float* __restrict__ y) {
  DNNS_GRID_STRIDE_LOOP(i, rows * cols) y[i] += b[i % cols];
}

// db (cols) = sum over the rows of dy (rows, cols): one thread per column, rows summed in
// order in double (deterministic; consecutive threads read consecutive addresses).
__global__ void column_sums_kernel(int rows, int cols, const float* __restrict__ dy,
                                   float* __restrict__ db) {
  DNNS_GRID_STRIDE_LOOP(o, cols) {
    double acc = 0.0;
    for (int n = 0; n < rows; n++) acc += dy[int64_t(n) * cols + o];
    db[o] = float(acc);
  }
}

}  // namespace

void linear_forward(int N, int I, int O, const float* x, const float* w, const float* b, float* y) {
  const char* op = "linear_forward";
  check(N >= 0 && I >= 0 && O >= 0, "CUDA op linear_forward: negative size");
  if (int64_t(N) * O == 0) return;
  if (I == 0) {  // empty sum: y = b (or 0)
    fill_device(y, int64_t(N) * O, 0.0f, op);
  } else {
    // y (N,O) = x (N,I) * w^T, with w stored (O,I) row-major: op(B) = transpose.
    gemm_rm(op, false, true, N, O, I, 1.0f, x, I, 0, w, I, 0, 0.0f, y, O, 0, 1);
  }
  if (b) {
    const int64_t n = int64_t(N) * O;
    add_bias_rows_kernel<<<grid_for(n, kThreads), kThreads, 0, stream()>>>(N, O, b, y);
    check_launch("add_bias_rows_kernel", op);
  }
}

void linear_backward_data(int N, int I, int O, const float* dy, const float* w, float* dx) {
  const char* op = "linear_backward_data";
  check(N >= 0 && I >= 0 && O >= 0, "CUDA op linear_backward_data: negative size");
  if (int64_t(N) * I == 0) return;
  if (O == 0) {
    fill_device(dx, int64_t(N) * I, 0.0f, op);
    return;
  }
  // dx (N,I) = dy (N,O) * w (O,I)
  gemm_rm(op, false, false, N, I, O, 1.0f, dy, O, 0, w, I, 0, 0.0f, dx, I, 0, 1);
}

void linear_backward_weights(int N, int I, int O, const float* x, const float* dy, float* dw,
                             float* db) {
  const char* op = "linear_backward_weights";
  check(N >= 0 && I >= 0 && O >= 0, "CUDA op linear_backward_weights: negative size");
  if (O == 0) return;
  if (N == 0) {  // empty sums
    fill_device(dw, int64_t(O) * I, 0.0f, op);
    if (db) fill_device(db, O, 0.0f, op);
    return;
  }
  // dw (O,I) = dy^T (O,N) * x (N,I), with dy stored (N,O) row-major: op(A) = transpose.
  if (I > 0) gemm_rm(op, true, false, O, I, N, 1.0f, dy, O, 0, x, I, 0, 0.0f, dw, I, 0, 1);
  if (db) {
    column_sums_kernel<<<grid_for(O, kThreads), kThreads, 0, stream()>>>(N, O, dy, db);
    check_launch("column_sums_kernel", op);
  }
}

}  // namespace dnns::cuda
