// CUDA backend: the op set on device memory (own kernels + cuBLAS), plus the device context
// and the caching allocator behind Tensor(..., Device::CUDA).
//
// A plain C++ header (no CUDA types), so host code compiled by g++ can include it.
//
// Execution model: every op is queued on one CUDA stream that the backend owns, and cuBLAS is
// bound to that stream, so ops return as soon as their work is queued and host work overlaps
// the GPU. Ops that hand a value back to the host (softmax_cross_entropy's loss and `correct`)
// and copies to host memory wait for the stream. Results are deterministic run to run: no
// reduction depends on the order in which threads or atomics happen to run.
//
// Ops may be called from any host thread, but the backend assumes one device (device 0).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/params.h"

namespace dnns::cuda {

// Every pointer below is device memory; labels of softmax_cross_entropy are a device float
// array; the returned loss and *correct are host values.
#include "kernels/backend_api.inc"

// ---- device and context ----
// Number of CUDA devices; 0 when there is no driver or no device. Never throws.
int device_count();
// "NVIDIA H200 (compute 9.0, 132 SMs, 139.8 GiB)", or "no CUDA device".
std::string device_name();
// Waits until every op queued so far has finished; reports an asynchronous kernel error.
void synchronize();
// TF32 tensor-core math for the cuBLAS GEMMs of conv and linear: faster, ~1e-3 relative error.
// Off by default (plain FP32).
void set_tf32(bool on);
bool tf32();
// Registers the caching allocator with core for Device::CUDA. Idempotent, touches no driver
// state, so it is safe without a GPU (allocating then fails with a clear error). It runs by
// itself at program start-up; calling it again is harmless.
void init();

// ---- caching allocator ----
// Freed device blocks go to free lists by size class and are handed out again, so a training
// step does no cudaMalloc once the first step has run.
struct AllocatorStats {
  uint64_t device_mallocs = 0;   // cudaMalloc calls made so far
  uint64_t cache_hits = 0;       // allocations served from the free lists
  uint64_t bytes_in_use = 0;     // bytes (rounded to size classes) held by live allocations
  uint64_t bytes_cached = 0;     // bytes sitting in the free lists
  uint64_t blocks_in_use = 0;
  uint64_t blocks_cached = 0;
};
AllocatorStats allocator_stats();
// Returns every cached (free) block to the driver. Live allocations are untouched.
void empty_cache();

// ---- convolution workspace ----
// Upper bound on the scratch memory conv ops use for im2col (images are processed in chunks
// that fit). Default 256 MiB; at least one image is always processed, whatever the bound.
void set_conv_workspace_limit(size_t bytes);
size_t conv_workspace_limit();

}  // namespace dnns::cuda
