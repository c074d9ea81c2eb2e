// 2-D convolution: own im2col / col2im kernels + cuBLAS GEMMs (gemm_rm, context.cpp).
//
// Per image n, with CRS = C*R*S rows of columns and PQ = P*Q output positions:
//   col_n (CRS, PQ)   = im2col(x_n)                  col_n[(c,r,s), (p,q)] = x[n, c, p*st-pad+r, q*st-pad+s]
//   forward           y_n (K, PQ)    = w (K, CRS) col_n (CRS, PQ) + b
//   backward data     col_n (CRS,PQ) = w^T (CRS, K) dy_n (K, PQ);   dx_n = col2im(col_n)
//   backward weights  dw (K, CRS)    = sum_n dy_n (K, PQ) col_n^T (PQ, CRS);  db = sum_{n,pq} dy
//
// Images are processed in chunks whose columns fit the workspace limit. Forward and backward
// data run one strided-batched GEMM per chunk, with w shared by every image (batch stride 0).
// Backward weights must also sum over images, so its chunk is laid out "wide": columns as one
// (CRS, chunk*PQ) matrix and dy transposed to (K, chunk*PQ); one GEMM then reduces over both
// the images and the positions, and later chunks accumulate into dw (beta = 1) in a fixed order.
//
// A 1x1 convolution with stride 1 and no padding needs no im2col: col_n is x_n itself, so
// forward and backward data are a single batched GEMM on x, y, dy, dx directly.
#include <atomic>
#include <climits>

#include "kernels/cuda/device.cuh"

namespace dnns::cuda {
namespace {

std::atomic<size_t> g_workspace_limit{size_t(256) << 20};

// x holds `count` images (C, H, W). Writes their columns: value (j, crs, pq) goes to
// col[j * img_stride + crs * row_stride + pq], zero where the window reads padding.
//   per-image layout (count, CRS, PQ): img_stride = CRS*PQ, row_stride = PQ
//   wide layout      (CRS, count, PQ): img_stride = PQ,     row_stride = count*PQ
__global__ void im2col_kernel(int count, int C, int H, int W, int R, int S, int P, int Q, int stride,
                              int pad, const float* __restrict__ x, int64_t img_stride,
                              int64_t row_stride, float* __restrict__ col) {
  const int64_t total = int64_t(count) * C * R * S * P * Q;
  DNNS_GRID_STRIDE_LOOP(i, total) {
    int64_t t = i;
    const int q = int(t % Q); t /= Q;
    const int p = int(t % P); t /= P;
    const int s = int(t % S); t /= S;
    const int r = int(t % R); t /= R;
    const int c = int(t % C);
    const int64_t j = t / C;
    const int h = p * stride - pad + r, w = q * stride - pad + s;
    const bool inside = h >= 0 && h < H && w >= 0 && w < W;
    const float v = inside ? x[((j * C + c) * H + h) * W + w] : 0.0f;
    const int64_t crs = (int64_t(c) * R + r) * S + s;
    col[j * img_stride + crs * row_stride + int64_t(p) * Q + q] = v;
  }
}

// col (count, CRS, PQ) -> dx `count` images (C, H, W). A gather: each thread owns one dx value
// and sums the column entries that were copied from it, so no two threads write one address.
__global__ void col2im_kernel(int count, int C, int H, int W, int R, int S, int P, int Q, int stride,
                              int pad, const float* __restrict__ col, float* __restrict__ dx) {
  const int64_t total = int64_t(count) * C * H * W;
  const int64_t PQ = int64_t(P) * Q, CRS = int64_t(C) * R * S;
  DNNS_GRID_STRIDE_LOOP(i, total) {
    int64_t t = i;
    const int w = int(t % W); t /= W;
    const int h = int(t % H); t /= H;
    const int c = int(t % C);
    const int64_t j = t / C;
    const float* colj = col + j * CRS * PQ;  // (CRS, PQ)
    float acc = 0.0f;
    for (int r = 0; r < R; r++) {
      const int th = h + pad - r;  // = p * stride for the output row that read h
      if (th < 0 || th % stride != 0) continue;
      const int p = th / stride;
      if (p >= P) continue;
      for (int s = 0; s < S; s++) {
        const int tw = w + pad - s;
        if (tw < 0 || tw % stride != 0) continue;
        const int q = tw / stride;
        if (q >= Q) continue;
        acc += colj[((int64_t(c) * R + r) * S + s) * PQ + int64_t(p) * Q + q];
      }
    }
    dx[i] = acc;
  }
}

// y (N, K, PQ) += b (K)
__global__ void add_bias_channels_kernel(int64_t total, int K, int64_t PQ, const float* __restrict__ b,
                                         float* __restrict__ y) {
  DNNS_GRID_STRIDE_LOOP(i, total) y[i] += b[(i / PQ) % K];
}

// dy (count, K, PQ) -> dyT (K, count, PQ)
__global__ void transpose_nk_kernel(int count, int K, int64_t PQ, const float* __restrict__ dy,
                                    float* __restrict__ dyT) {
  const int64_t total = int64_t(count) * K * PQ;
  DNNS_GRID_STRIDE_LOOP(i, total) {
    const int64_t pq = i % PQ;
    const int64_t j = (i / PQ) % count;
    const int64_t k = i / (PQ * count);
    dyT[i] = dy[(j * K + k) * PQ + pq];
  }
}

// grid: (K). db[k] = sum over n, pq of dy (N, K, PQ), in double, fixed reduction tree.
__global__ void bias_grad_kernel(int N, int K, int64_t PQ, const float* __restrict__ dy,
                                 float* __restrict__ db) {
  __shared__ double scratch[32];
  const int k = blockIdx.x;
  const int64_t M = int64_t(N) * PQ;
  double acc = 0.0;
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    const int64_t n = j / PQ, pq = j % PQ;
    acc += dy[(n * K + k) * PQ + pq];
  }
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) db[k] = float(acc);
}

// The same shape contract as the ref and cpu kernels (kernels/ops.cpp): a kernel larger than
// the padded input is refused there, and must be here too.
void check_conv(const Conv2dParams& p, const char* op) { check_conv_params(p, op); }

bool is_pointwise(const Conv2dParams& p) { return p.R == 1 && p.S == 1 && p.stride == 1 && p.pad == 0; }

// Images per chunk: as many as fit the workspace limit with `floats_per_image` scratch floats
// each (at least 1), and few enough that `int_bound_per_image * chunk` stays an int (a cuBLAS
// dimension).
int chunk_images(int N, int64_t floats_per_image, int64_t int_bound_per_image) {
  int64_t chunk = int64_t(g_workspace_limit.load() / sizeof(float)) / (floats_per_image > 0 ? floats_per_image : 1);
  if (int_bound_per_image > 0 && chunk > INT_MAX / int_bound_per_image) chunk = INT_MAX / int_bound_per_image;
  if (chunk > N) chunk = N;
  if (chunk < 1) chunk = 1;
  return int(chunk);
}

void launch_im2col(const Conv2dParams& p, int count, const float* x, int64_t img_stride,
                   int64_t row_stride, float* col, const char* op) {
  const int64_t total = int64_t(count) * p.C * p.R * p.S * p.P() * p.Q();
  if (total == 0) return;
  im2col_kernel<<<grid_for(total, kThreads), kThreads, 0, stream()>>>(
      count, p.C, p.H, p.W, p.R, p.S, p.P(), p.Q(), p.stride, p.pad, x, img_stride, row_stride, col);
  check_launch("im2col_kernel", op);
}

}  // namespace

void set_conv_workspace_limit(size_t bytes) { g_workspace_limit = bytes; }
size_t conv_workspace_limit() { return g_workspace_limit.load(); }

void conv2d_forward(const Conv2dParams& p, const float* x, const float* w, const float* b, float* y) {
  const char* op = "conv2d_forward";
  check_conv(p, op);
  const int P = p.P(), Q = p.Q(), K = p.K;
  const int64_t PQ = int64_t(P) * Q, CRS = int64_t(p.C) * p.R * p.S, CHW = int64_t(p.C) * p.H * p.W;
  const int64_t y_total = int64_t(p.N) * K * PQ;
  if (y_total == 0) return;

  if (CRS == 0) {  // no input channels: the sum is empty
    fill_device(y, y_total, 0.0f, op);
  } else if (is_pointwise(p)) {
    // y_n (K, HW) = w (K, C) x_n (C, HW), all images in one batched GEMM
    gemm_rm(op, false, false, K, int(PQ), p.C, 1.0f, w, p.C, 0, x, int(PQ), CHW, 0.0f, y, int(PQ),
            K * PQ, p.N);
  } else {
    const int chunk = chunk_images(p.N, CRS * PQ, 0);
    DeviceArray<float> col(size_t(chunk) * CRS * PQ, op);  // (chunk, CRS, PQ)
    for (int n0 = 0; n0 < p.N; n0 += chunk) {
      const int count = p.N - n0 < chunk ? p.N - n0 : chunk;
      launch_im2col(p, count, x + int64_t(n0) * CHW, CRS * PQ, PQ, col.get(), op);
      // y_n (K, PQ) = w (K, CRS) col_n (CRS, PQ) for the chunk's images
      gemm_rm(op, false, false, K, int(PQ), int(CRS), 1.0f, w, int(CRS), 0, col.get(), int(PQ),
              CRS * PQ, 0.0f, y + int64_t(n0) * K * PQ, int(PQ), K * PQ, count);
    }
  }
  if (b) {
    add_bias_channels_kernel<<<grid_for(y_total, kThreads), kThreads, 0, stream()>>>(y_total, K, PQ, b, y);
    check_launch("add_bias_channels_kernel", op);
  }
}

void conv2d_backward_data(const Conv2dParams& p, const float* dy, const float* w, float* dx) {
  const char* op = "conv2d_backward_data";
  check_conv(p, op);
  const int P = p.P(), Q = p.Q(), K = p.K;
  const int64_t PQ = int64_t(P) * Q, CRS = int64_t(p.C) * p.R * p.S, CHW = int64_t(p.C) * p.H * p.W;
  const int64_t dx_total = int64_t(p.N) * CHW;
  if (dx_total == 0) return;
  if (K == 0) {  // no outputs read x
    fill_device(dx, dx_total, 0.0f, op);
    return;
  }
  if (is_pointwise(p)) {
    // dx_n (C, HW) = w^T (C, K) dy_n (K, HW), all images in one batched GEMM
    gemm_rm(op, true, false, p.C, int(PQ), K, 1.0f, w, p.C, 0, dy, int(PQ), K * PQ, 0.0f, dx,
            int(PQ), CHW, p.N);
    return;
  }
  const int chunk = chunk_images(p.N, CRS * PQ, 0);
  DeviceArray<float> col(size_t(chunk) * CRS * PQ, op);  // (chunk, CRS, PQ)
  for (int n0 = 0; n0 < p.N; n0 += chunk) {
    const int count = p.N - n0 < chunk ? p.N - n0 : chunk;
    // col_n (CRS, PQ) = w^T (CRS, K) dy_n (K, PQ), w stored (K, CRS)
    gemm_rm(op, true, false, int(CRS), int(PQ), K, 1.0f, w, int(CRS), 0, dy + int64_t(n0) * K * PQ, int(PQ),
            K * PQ, 0.0f, col.get(), int(PQ), CRS * PQ, count);
    const int64_t total = int64_t(count) * CHW;
    col2im_kernel<<<grid_for(total, kThreads), kThreads, 0, stream()>>>(
        count, p.C, p.H, p.W, p.R, p.S, P, Q, p.stride, p.pad, col.get(), dx + int64_t(n0) * CHW);
    check_launch("col2im_kernel", op);
  }
}

void conv2d_backward_weights(const Conv2dParams& p, const float* x, const float* dy, float* dw, float* db) {
  const char* op = "conv2d_backward_weights";
  check_conv(p, op);
  const int P = p.P(), Q = p.Q(), K = p.K;
  const int64_t PQ = int64_t(P) * Q, CRS = int64_t(p.C) * p.R * p.S, CHW = int64_t(p.C) * p.H * p.W;
  if (K == 0) return;
  if (db) {
    if (p.N == 0) {
      fill_device(db, K, 0.0f, op);
    } else {
      bias_grad_kernel<<<K, kThreads, 0, stream()>>>(p.N, K, PQ, dy, db);
      check_launch("bias_grad_kernel", op);
    }
  }
  if (CRS == 0) return;
  if (p.N == 0) {
    fill_device(dw, K * CRS, 0.0f, op);
    return;
  }
  const int chunk = chunk_images(p.N, (CRS + K) * PQ, PQ);
  DeviceArray<float> col(size_t(chunk) * CRS * PQ, op);  // (CRS, chunk, PQ), wide layout
  DeviceArray<float> dyT(size_t(chunk) * K * PQ, op);    // (K, chunk, PQ)
  for (int n0 = 0; n0 < p.N; n0 += chunk) {
    const int count = p.N - n0 < chunk ? p.N - n0 : chunk;
    const int64_t wide = int64_t(count) * PQ;  // the reduction length of this chunk's GEMM
    launch_im2col(p, count, x + int64_t(n0) * CHW, PQ, wide, col.get(), op);
    const int64_t total = int64_t(count) * K * PQ;
    transpose_nk_kernel<<<grid_for(total, kThreads), kThreads, 0, stream()>>>(
        count, K, PQ, dy + int64_t(n0) * K * PQ, dyT.get());
    check_launch("transpose_nk_kernel", op);
    // dw (K, CRS) (+)= dyT (K, wide) col^T (wide, CRS), col stored (CRS, wide)
    gemm_rm(op, false, true, K, int(CRS), int(wide), 1.0f, dyT.get(), int(wide), 0, col.get(),
            int(wide), 0, n0 == 0 ? 0.0f : 1.0f, dw, int(CRS), 0, 1);
  }
}

}  // namespace dnns::cuda
