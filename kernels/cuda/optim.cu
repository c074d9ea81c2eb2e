// SGD step and mask application, one thread per weight.
//
// The SGD update is written with __fmul_rn/__fadd_rn so that nvcc cannot fuse a multiply and
// an add into one FMA: each step is rounded exactly as the plain C++ expression in the
// reference kernel, and the update equals it bit for bit (when the host compiler does not
// contract either).
#include "kernels/cuda/device.cuh"

namespace dnns::cuda {
namespace {

// w, g, buf: (n). See SgdParams: g' = g + wd w; buf = m buf + g'; step = nesterov ? g' + m buf : buf;
// w -= lr step.
__global__ void sgd_update_kernel(int64_t n, float lr, float momentum, float weight_decay,
                                  bool nesterov, float* __restrict__ w, const float* __restrict__ g,
                                  float* __restrict__ buf) {
  DNNS_GRID_STRIDE_LOOP(i, n) {
    const float wi = w[i];
    const float gi = __fadd_rn(g[i], __fmul_rn(weight_decay, wi));
    const float b = __fadd_rn(__fmul_rn(momentum, buf[i]), gi);
    buf[i] = b;
    const float step = nesterov ? __fadd_rn(gi, __fmul_rn(momentum, b)) : b;
    w[i] = __fsub_rn(wi, __fmul_rn(lr, step));
  }
}

// w, mask: (n); mask holds 0 or 1. Pruned weights become +0.0 (not w * 0, which is -0.0 for a
// negative w), so a pruned model stores as its surviving weights (core/archive.h).
__global__ void mask_apply_kernel(int64_t n, float* __restrict__ w, const float* __restrict__ mask) {
  DNNS_GRID_STRIDE_LOOP(i, n) w[i] = mask[i] != 0.0f ? w[i] : 0.0f;
}

}  // namespace

void sgd_update(const SgdParams& p, int64_t n, float* w, const float* g, float* buf) {
  if (n <= 0) return;
  sgd_update_kernel<<<grid_for(n, kThreads), kThreads, 0, stream()>>>(
      n, p.lr, p.momentum, p.weight_decay, p.nesterov, w, g, buf);
  check_launch("sgd_update_kernel", "sgd_update");
}

void mask_apply(int64_t n, float* w, const float* mask) {
  if (n <= 0) return;
  mask_apply_kernel<<<grid_for(n, kThreads), kThreads, 0, stream()>>>(n, w, mask);
  check_launch("mask_apply_kernel", "mask_apply");
}

}  // namespace dnns::cuda
