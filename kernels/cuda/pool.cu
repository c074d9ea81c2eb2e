// Pooling: square window k, stride s, no padding.
//
// Forward passes use one thread per output. Backward passes are written as gathers, one thread
// per input position summing over the windows that contain it, in the reference kernels'
// window order: no atomics, no races where windows overlap (stride < k), and results equal to
// the reference bit for bit.
#include "kernels/cuda/device.cuh"

namespace dnns::cuda {
namespace {

// The windows (along one axis) that contain input coordinate h: p in [lo, hi] with
// p*stride <= h <= p*stride + k - 1 and 0 <= p < P. Empty (lo > hi) past the last window.
__device__ __forceinline__ void windows_containing(int h, int k, int stride, int P, int& lo, int& hi) {
  const int first = h - k + 1;
  lo = first <= 0 ? 0 : (first + stride - 1) / stride;
  hi = h / stride;
  if (hi > P - 1) hi = P - 1;
}

// x (N*C, H, W) -> y (N*C, P, Q). The first value of the window starts the scan, so a window
// of NaNs or -inf behaves as in the reference.
__global__ void maxpool_forward_kernel(int64_t NC, int H, int W, int P, int Q, int k, int stride,
                                       const float* __restrict__ x, float* __restrict__ y) {
  DNNS_GRID_STRIDE_LOOP(i, NC * P * Q) {
    const int q = int(i % Q), p = int((i / Q) % P);
    const int64_t nc = i / (int64_t(P) * Q);
    const float* xp = x + nc * H * W;  // (H, W)
    float best = xp[(p * stride) * W + q * stride];
    for (int r = 0; r < k; r++)
      for (int s = 0; s < k; s++) {
        const float v = xp[(p * stride + r) * W + q * stride + s];
        if (v > best) best = v;
      }
    y[i] = best;
  }
}

// x, dx (N*C, H, W), dy (N*C, P, Q). Each window's gradient goes to the first position (in
// row-major window order) holding the window's maximum; a thread owns one dx value and adds
// the gradients of the windows that chose it, in window order.
__global__ void maxpool_backward_kernel(int64_t NC, int H, int W, int P, int Q, int k, int stride,
                                        const float* __restrict__ x, const float* __restrict__ dy,
                                        float* __restrict__ dx) {
  DNNS_GRID_STRIDE_LOOP(i, NC * H * W) {
    const int w = int(i % W), h = int((i / W) % H);
    const int64_t nc = i / (int64_t(H) * W);
    const float* xp = x + nc * H * W;     // (H, W)
    const float* dyp = dy + nc * P * Q;   // (P, Q)
    const int here = h * W + w;
    int p_lo, p_hi, q_lo, q_hi;
    windows_containing(h, k, stride, P, p_lo, p_hi);
    windows_containing(w, k, stride, Q, q_lo, q_hi);
    float acc = 0.0f;
    for (int p = p_lo; p <= p_hi; p++)
      for (int q = q_lo; q <= q_hi; q++) {
        int arg = (p * stride) * W + q * stride;
        for (int r = 0; r < k; r++)
          for (int s = 0; s < k; s++) {
            const int at = (p * stride + r) * W + q * stride + s;
            if (xp[at] > xp[arg]) arg = at;
          }
        if (arg == here) acc += dyp[p * Q + q];
      }
    dx[i] = acc;
  }
}

// x (N*C, H, W) -> y (N*C, P, Q): window mean, summed in double as the reference does.
__global__ void avgpool_forward_kernel(int64_t NC, int H, int W, int P, int Q, int k, int stride,
                                       const float* __restrict__ x, float* __restrict__ y) {
  DNNS_GRID_STRIDE_LOOP(i, NC * P * Q) {
    const int q = int(i % Q), p = int((i / Q) % P);
    const int64_t nc = i / (int64_t(P) * Q);
    const float* xp = x + nc * H * W;  // (H, W)
    double sum = 0.0;
    for (int r = 0; r < k; r++)
      for (int s = 0; s < k; s++) sum += xp[(p * stride + r) * W + q * stride + s];
    y[i] = float(sum / (k * k));
  }
}

// dy (N*C, P, Q) -> dx (N*C, H, W): each window spreads dy / k^2 over its k*k inputs.
__global__ void avgpool_backward_kernel(int64_t NC, int H, int W, int P, int Q, int k, int stride,
                                        const float* __restrict__ dy, float* __restrict__ dx) {
  DNNS_GRID_STRIDE_LOOP(i, NC * H * W) {
    const int w = int(i % W), h = int((i / W) % H);
    const int64_t nc = i / (int64_t(H) * W);
    const float* dyp = dy + nc * P * Q;  // (P, Q)
    int p_lo, p_hi, q_lo, q_hi;
    windows_containing(h, k, stride, P, p_lo, p_hi);
    windows_containing(w, k, stride, Q, q_lo, q_hi);
    const float area = float(k * k);
    float acc = 0.0f;
    for (int p = p_lo; p <= p_hi; p++)
      for (int q = q_lo; q <= q_hi; q++) acc += dyp[p * Q + q] / area;
    dx[i] = acc;
  }
}

// x (rows, HW) -> y (rows): one warp per row, double sum in a fixed lane order.
__global__ void global_avgpool_forward_kernel(int64_t rows, int HW, const float* __restrict__ x,
                                              float* __restrict__ y) {
  const int lane = threadIdx.x % 32;
  const int64_t warps_total = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; row < rows;
       row += warps_total) {
    const float* xr = x + row * HW;  // (HW)
    double sum = 0.0;
    for (int j = lane; j < HW; j += 32) sum += xr[j];
    sum = warp_sum(sum);
    if (lane == 0) y[row] = float(sum / HW);
  }
}

// dy (rows) -> dx (rows, HW) = dy / HW at every position.
__global__ void global_avgpool_backward_kernel(int64_t rows, int HW, const float* __restrict__ dy,
                                               float* __restrict__ dx) {
  DNNS_GRID_STRIDE_LOOP(i, rows * HW) dx[i] = dy[i / HW] / float(HW);
}

void check_pool(const Pool2dParams& p, const char* op) {
  check(p.N >= 0 && p.C >= 0 && p.k > 0 && p.stride > 0 && p.H >= p.k && p.W >= p.k,
        std::string("CUDA op ") + op + ": invalid pooling: N=" + std::to_string(p.N) +
            " C=" + std::to_string(p.C) + " H=" + std::to_string(p.H) + " W=" + std::to_string(p.W) +
            " k=" + std::to_string(p.k) + " stride=" + std::to_string(p.stride));
}

}  // namespace

void maxpool_forward(const Pool2dParams& p, const float* x, float* y) {
  check_pool(p, "maxpool_forward");
  const int64_t NC = int64_t(p.N) * p.C, n = NC * p.P() * p.Q();
  if (n == 0) return;
  maxpool_forward_kernel<<<grid_for(n, kThreads), kThreads, 0, stream()>>>(
      NC, p.H, p.W, p.P(), p.Q(), p.k, p.stride, x, y);
  check_launch("maxpool_forward_kernel", "maxpool_forward");
}

void maxpool_backward(const Pool2dParams& p, const float* x, const float* dy, float* dx) {
  check_pool(p, "maxpool_backward");
  const int64_t NC = int64_t(p.N) * p.C, n = NC * p.H * p.W;
  if (n == 0) return;
  maxpool_backward_kernel<<<grid_for(n, kThreads), kThreads, 0, stream()>>>(
      NC, p.H, p.W, p.P(), p.Q(), p.k, p.stride, x, dy, dx);
  check_launch("maxpool_backward_kernel", "maxpool_backward");
}

void avgpool_forward(const Pool2dParams& p, const float* x, float* y) {
  check_pool(p, "avgpool_forward");
  const int64_t NC = int64_t(p.N) * p.C, n = NC * p.P() * p.Q();
  if (n == 0) return;
  avgpool_forward_kernel<<<grid_for(n, kThreads), kThreads, 0, stream()>>>(
      NC, p.H, p.W, p.P(), p.Q(), p.k, p.stride, x, y);
  check_launch("avgpool_forward_kernel", "avgpool_forward");
}

void avgpool_backward(const Pool2dParams& p, const float* dy, float* dx) {
  check_pool(p, "avgpool_backward");
  const int64_t NC = int64_t(p.N) * p.C, n = NC * p.H * p.W;
  if (n == 0) return;
  avgpool_backward_kernel<<<grid_for(n, kThreads), kThreads, 0, stream()>>>(
      NC, p.H, p.W, p.P(), p.Q(), p.k, p.stride, dy, dx);
  check_launch("avgpool_backward_kernel", "avgpool_backward");
}

void global_avgpool_forward(int N, int C, int HW, const float* x, float* y) {
  const int64_t rows = int64_t(N) * C;
  if (rows <= 0) return;
  check(HW > 0, "CUDA op global_avgpool_forward: empty spatial size (HW = " + std::to_string(HW) + ")");
  const int warps_per_block = kThreads / 32;
  global_avgpool_forward_kernel<<<grid_for(rows, warps_per_block), kThreads, 0, stream()>>>(
      rows, HW, x, y);
  check_launch("global_avgpool_forward_kernel", "global_avgpool_forward");
}

void global_avgpool_backward(int N, int C, int HW, const float* dy, float* dx) {
  const int64_t n = int64_t(N) * C * HW;
  if (n <= 0) return;
  global_avgpool_backward_kernel<<<grid_for(n, kThreads), kThreads, 0, stream()>>>(
      int64_t(N) * C, HW, dy, dx);
  check_launch("global_avgpool_backward_kernel", "global_avgpool_backward");
}

}  // namespace dnns::cuda
