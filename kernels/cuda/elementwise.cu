// Elementwise kernels: one thread per value (grid-stride). Each output is a single IEEE
// operation, so the results equal the reference kernels bit for bit.
#include "kernels/cuda/device.cuh"

namespace dnns::cuda {
namespace {

__global__ void fill_kernel(int64_t n, float value, float* __restrict__ y) {
  DNNS_GRID_STRIDE_LOOP(i, n) y[i] = value;
}

// Called in place (y == x) by the fused and in-place ReLUs, so no __restrict__ on x and y.
__global__ void relu_forward_kernel(int64_t n, const float* x, float* y) {
  DNNS_GRID_STRIDE_LOOP(i, n) {
    const float v = x[i];
    y[i] = v > 0.0f ? v : 0.0f;
  }
}

// dx may alias dy, so no __restrict__ on them.
__global__ void relu_backward_kernel(int64_t n, const float* __restrict__ y, const float* dy,
                                     float* dx) {
  DNNS_GRID_STRIDE_LOOP(i, n) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

// y may alias a or b.
__global__ void add_kernel(int64_t n, const float* a, const float* b, float* y) {
  DNNS_GRID_STRIDE_LOOP(i, n) y[i] = a[i] + b[i];
}

__global__ void accumulate_kernel(int64_t n, const float* a, float* y) {
  DNNS_GRID_STRIDE_LOOP(i, n) y[i] += a[i];
}

}  // namespace

void fill_device(float* dst, int64_t n, float value, const char* op) {
  if (n <= 0) return;
  fill_kernel<<<grid_for(n, kThreads), kThreads, 0, stream()>>>(n, value, dst);
  check_launch("fill_kernel", op);
}

void relu_forward(int64_t n, const float* x, float* y) {
  if (n <= 0) return;
  relu_forward_kernel<<<grid_for(n, kThreads), kThreads, 0, stream()>>>(n, x, y);
  check_launch("relu_forward_kernel", "relu_forward");
}

void relu_backward(int64_t n, const float* y, const float* dy, float* dx) {
  if (n <= 0) return;
  relu_backward_kernel<<<grid_for(n, kThreads), kThreads, 0, stream()>>>(n, y, dy, dx);
  check_launch("relu_backward_kernel", "relu_backward");
}

void add_forward(int64_t n, const float* a, const float* b, float* y) {
  if (n <= 0) return;
  add_kernel<<<grid_for(n, kThreads), kThreads, 0, stream()>>>(n, a, b, y);
  check_launch("add_kernel", "add_forward");
}

void accumulate(int64_t n, const float* a, float* y) {
  if (n <= 0) return;
  accumulate_kernel<<<grid_for(n, kThreads), kThreads, 0, stream()>>>(n, a, y);
  check_launch("accumulate_kernel", "accumulate");
}

}  // namespace dnns::cuda
