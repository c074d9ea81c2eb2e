// Device-side helpers for the CUDA kernels: grid-stride loops and deterministic reductions.
//
// The reductions combine values in a fixed tree (warp shuffles, then one warp over the
// per-warp partials), so the result depends only on the block size and the data, never on
// scheduling: the same inputs give the same bits on every run.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/common.h"

namespace dnns::cuda {

// Threads per block for the elementwise kernels and the block reductions (a multiple of 32).
constexpr int kThreads = 256;

// for (int64_t i = first; i < n; i += stride) over the whole grid.
#define DNNS_GRID_STRIDE_LOOP(i, n)                                                    \
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n);            \
       i += int64_t(blockDim.x) * gridDim.x)

__device__ __forceinline__ double warp_sum(double v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;  // the full sum is in lane 0
}

// Sum over the block; every thread must call it. The result is returned to every thread.
// `scratch` holds 32 doubles of shared memory; blockDim.x must be a multiple of 32.
__device__ __forceinline__ double block_sum(double v, double* scratch) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    double w = lane < warps ? scratch[lane] : 0.0;
    w = warp_sum(w);
    if (lane == 0) scratch[0] = w;
  }
  __syncthreads();
  return scratch[0];
}

}  // namespace dnns::cuda
