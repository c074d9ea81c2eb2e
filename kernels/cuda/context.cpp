// The CUDA device context: device discovery, the one stream, the cuBLAS handle bound to it,
// error reporting, and the row-major GEMM wrapper every op uses.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>

#include "core/error.h"
#include "kernels/cuda/common.h"

namespace dnns::cuda {

// ---- error checks ----

void check_cuda(cudaError_t err, const char* call, const char* op) {
  if (err == cudaSuccess) return;
  std::ostringstream os;
  os << "CUDA op " << op << ": " << call << " failed: " << cudaGetErrorName(err) << ": "
     << cudaGetErrorString(err)
     << " (an error from an earlier kernel can surface here; run with DNNS_CUDA_SYNC=1 to "
        "report each kernel's errors at its launch)";
  throw Error(os.str());
}

void check_cublas(cublasStatus_t st, const char* call, const char* op) {
  if (st == CUBLAS_STATUS_SUCCESS) return;
  std::ostringstream os;
  os << "CUDA op " << op << ": " << call << " failed: " << cublasGetStatusName(st) << ": "
     << cublasGetStatusString(st);
  throw Error(os.str());
}

static bool sync_after_launch() {
  static const bool on = [] {
    const char* v = std::getenv("DNNS_CUDA_SYNC");
    return v && v[0] && std::string(v) != "0";
  }();
  return on;
}

void check_launch(const char* kernel, const char* op) {
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess && sync_after_launch()) err = cudaStreamSynchronize(stream());
  if (err == cudaSuccess) return;
  std::ostringstream os;
  os << "CUDA op " << op << ": kernel " << kernel << " failed: " << cudaGetErrorName(err) << ": "
     << cudaGetErrorString(err);
  throw Error(os.str());
}

// ---- device discovery ----

int device_count() {
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();  // no driver or no device: clear the error, report none
      n = 0;
    }
    return n;
  }();
  if (count > 0) init();
  return count;
}

std::string device_name() {
  if (device_count() == 0) return "no CUDA device";
  cudaDeviceProp prop{};
  DNNS_CUDA_CHECK("device_name", cudaGetDeviceProperties(&prop, 0));
  std::ostringstream os;
  os.precision(1);
  os << prop.name << " (compute " << prop.major << "." << prop.minor << ", "
     << prop.multiProcessorCount << " SMs, " << std::fixed
     << double(prop.totalGlobalMem) / double(1ull << 30) << " GiB)";
  return os.str();
}

// ---- the context: stream + cuBLAS handle ----
//
// Created on first use and deliberately never destroyed: tensors with static storage duration
// may be freed after any destructor of ours would have run, and the driver releases
// everything at process exit anyway.
namespace {

struct Context {
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  int sms = 1;
  std::mutex blas_mutex;  // the handle's math mode is shared state; GEMM calls take this lock
  bool tf32 = false;
};

std::once_flag g_context_once;
Context* g_context = nullptr;
bool g_tf32_requested = false;  // what set_tf32 asked for before the context existed
std::mutex g_tf32_mutex;

Context& context() {
  std::call_once(g_context_once, [] {
    if (device_count() == 0)
      throw Error("CUDA backend: no CUDA device is present (no driver or no GPU); use the cpu device");
    auto ctx = std::make_unique<Context>();
    const char* op = "context initialisation";
    DNNS_CUDA_CHECK(op, cudaSetDevice(0));
    cudaDeviceProp prop{};
    DNNS_CUDA_CHECK(op, cudaGetDeviceProperties(&prop, 0));
    ctx->sms = prop.multiProcessorCount > 0 ? prop.multiProcessorCount : 1;
    // Non-blocking: our stream never waits on the legacy default stream, which we never use.
    DNNS_CUDA_CHECK(op, cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking));
    DNNS_CUBLAS_CHECK(op, cublasCreate(&ctx->blas));
    DNNS_CUBLAS_CHECK(op, cublasSetStream(ctx->blas, ctx->stream));
    // Default math is plain FP32 (no TF32); atomics stay disallowed (cuBLAS default), which
    // keeps the GEMMs bitwise reproducible on one GPU model.
    {
      std::lock_guard<std::mutex> lock(g_tf32_mutex);
      ctx->tf32 = g_tf32_requested;
    }
    DNNS_CUBLAS_CHECK(op, cublasSetMathMode(ctx->blas, ctx->tf32 ? CUBLAS_TF32_TENSOR_OP_MATH
                                                                 : CUBLAS_DEFAULT_MATH));
    g_context = ctx.release();
  });
  return *g_context;
}

}  // namespace

cudaStream_t stream() { return context().stream; }
int sm_count() { return context().sms; }

void synchronize() {
  if (device_count() == 0) return;
  DNNS_CUDA_CHECK("synchronize", cudaStreamSynchronize(stream()));
}

void set_tf32(bool on) {
  {
    std::lock_guard<std::mutex> lock(g_tf32_mutex);
    g_tf32_requested = on;
  }
  if (device_count() == 0) return;
  Context& ctx = context();
  std::lock_guard<std::mutex> lock(ctx.blas_mutex);
  DNNS_CUBLAS_CHECK("set_tf32", cublasSetMathMode(ctx.blas, on ? CUBLAS_TF32_TENSOR_OP_MATH
                                                               : CUBLAS_DEFAULT_MATH));
  ctx.tf32 = on;
}

bool tf32() {
  std::lock_guard<std::mutex> lock(g_tf32_mutex);
  return g_tf32_requested;
}

// ---- GEMM ----
//
// cuBLAS is column-major. A row-major (r, c) matrix with row stride ld is, byte for byte, the
// column-major (c, r) matrix with leading dimension ld: its transpose. So the row-major
// product C = op(A) op(B) is computed as the column-major product C^T = op(B)^T op(A)^T:
// swap the operands (B first), swap M and N, keep each operand's transpose flag and ld.
void gemm_rm(const char* op, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
             const float* A, int lda, long long stride_a, const float* B, int ldb, long long stride_b,
             float beta, float* C, int ldc, long long stride_c, int batch) {
  if (M <= 0 || N <= 0 || batch <= 0) return;
  check(K > 0, std::string("CUDA op ") + op + ": GEMM with an empty reduction (K = 0); the caller "
                                              "must fill the output itself");
  Context& ctx = context();
  const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  std::lock_guard<std::mutex> lock(ctx.blas_mutex);
  if (batch == 1) {
    DNNS_CUBLAS_CHECK(op, cublasSgemm(ctx.blas, op_b, op_a, N, M, K, &alpha, B, ldb, A, lda, &beta,
                                      C, ldc));
    return;
  }
  // Batches go in pieces of at most 65535 matrices (the CUDA grid's y/z limit), in case a
  // cuBLAS kernel maps the batch to one of those grid dimensions.
  const int max_batch = 65535;
  for (int b0 = 0; b0 < batch; b0 += max_batch) {
    const int count = batch - b0 < max_batch ? batch - b0 : max_batch;
    DNNS_CUBLAS_CHECK(op, cublasSgemmStridedBatched(ctx.blas, op_b, op_a, N, M, K, &alpha,
                                                    B + b0 * stride_b, ldb, stride_b,
                                                    A + b0 * stride_a, lda, stride_a, &beta,
                                                    C + b0 * stride_c, ldc, stride_c, count));
  }
}

}  // namespace dnns::cuda
