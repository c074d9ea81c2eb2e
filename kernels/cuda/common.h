// Internals shared by the CUDA backend's .cpp and .cu files: error checks that name the call
// and the op, the stream and cuBLAS handle, device scratch buffers, the row-major GEMM helper.
// Not part of the public interface (that is cuda.h).
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "kernels/cuda/cuda.h"

namespace dnns::cuda {

// ---- error checks ----
// Throws dnns::Error "CUDA op <op>: <call> failed: <error name>: <error text>" unless ok.
void check_cuda(cudaError_t err, const char* call, const char* op);
void check_cublas(cublasStatus_t st, const char* call, const char* op);
// After a kernel launch: reports a bad launch configuration at once. With the environment
// variable DNNS_CUDA_SYNC=1 it also waits for the kernel, so a fault inside it is reported
// against this op rather than against a later call.
void check_launch(const char* kernel, const char* op);

#define DNNS_CUDA_CHECK(op, call) ::dnns::cuda::check_cuda((call), #call, (op))
#define DNNS_CUBLAS_CHECK(op, call) ::dnns::cuda::check_cublas((call), #call, (op))

// ---- context ----
// The stream every op runs on. The first call selects device 0, creates the stream and the
// cuBLAS handle; it throws dnns::Error when no device is present.
cudaStream_t stream();
int sm_count();

// ---- device memory ----
// From the caching allocator (allocator.cpp). A freed block may still be read or written by
// work queued before the free; that is safe because whoever gets the block next queues its
// own work on the same stream, after that work.
void* device_alloc(size_t bytes, const char* op);
void device_free(void* p) noexcept;

// Scratch memory for the duration of one op (im2col columns, per-row partial results):
// `count` values of T from the caching allocator, returned to it on destruction.
template <typename T>
class DeviceArray {
 public:
  DeviceArray(size_t count, const char* op)
      : p_(static_cast<T*>(device_alloc(count * sizeof(T), op))) {}
  ~DeviceArray() { device_free(p_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  T* get() const { return p_; }

 private:
  T* p_;
};

// Fills n floats with `value` on the stream (elementwise.cu).
void fill_device(float* dst, int64_t n, float value, const char* op);

// ---- GEMM ----
// Row-major, strided-batched: for b in [0, batch)
//   C_b (M, N) = alpha * op(A_b) (M, K) * op(B_b) (K, N) + beta * C_b
// where X_b = X + b * strideX (a stride of 0 reuses one matrix for the whole batch) and
// lda/ldb/ldc are the row strides of the matrices as stored. beta == 0 never reads C.
void gemm_rm(const char* op, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
             const float* A, int lda, long long stride_a, const float* B, int ldb, long long stride_b,
             float beta, float* C, int ldc, long long stride_c, int batch);

// Blocks for a grid-stride loop over n items with `threads` per block (at least 1 block).
inline unsigned grid_for(int64_t n, int threads) {
  int64_t blocks = (n + threads - 1) / threads;
  const int64_t cap = int64_t(sm_count()) * 32;  // enough to fill the device; loops do the rest
  if (blocks > cap) blocks = cap;
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned>(blocks);
}

}  // namespace dnns::cuda
