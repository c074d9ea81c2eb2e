// Optimized elementwise kernels: the reference loops, split into blocks across oneTBB threads.
// No reductions here, so any partitioning gives bit-identical results.

#include <bit>
#include <cstdint>

#include "core/parallel.h"
#include "kernels/cpu/cpu.h"

// No loop-carried dependence: the loop vectorises without run-time overlap checks (a write
// only ever aliases the same element's reads).
#if defined(__clang__)
#define DNNS_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#else
#define DNNS_IVDEP _Pragma("GCC ivdep")
#endif

namespace dnns::cpu {
namespace {

// f(begin, end) over [0, n) in blocks of at least kGrain values; a tensor smaller than one
// block runs on the calling thread, where a task would cost more than it saves.
template <class F>
void for_blocks(int64_t n, F&& f) {
  constexpr int64_t kGrain = int64_t(1) << 15;
  if (n <= kGrain) return f(int64_t(0), n);
  parallel_for(int64_t(0), n, kGrain, f);
}

}  // namespace

void relu_forward(int64_t n, const float* x, float* y) {
  for_blocks(n, [=](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
  });
}

// dx may alias dy (in-place backward): each element is read before it is written. dy is
// loaded unconditionally so the select compiles to a vector blend, not a branch.
void relu_backward(int64_t n, const float* y, const float* dy, float* dx) {
  for_blocks(n, [=](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) {
      const float g = dy[i];
      dx[i] = y[i] > 0.0f ? g : 0.0f;
    }
  });
}

// y may alias a or b.
void add_forward(int64_t n, const float* a, const float* b, float* y) {
  for_blocks(n, [=](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) y[i] = a[i] + b[i];
  });
}

void accumulate(int64_t n, const float* a, float* y) {
  for_blocks(n, [=](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; i++) y[i] += a[i];
  });
}

// y may alias a or b. (DNNS_IVDEP: the loop vectorises without the run-time overlap checks -O2
// will not emit; a branch on the sign would mispredict on half the elements.)
void add_relu_forward(int64_t n, const float* a, const float* b, float* y) {
  for_blocks(n, [=](int64_t lo, int64_t hi) {
DNNS_IVDEP
    for (int64_t i = lo; i < hi; i++) {
      const float s = a[i] + b[i];
      y[i] = s > 0.0f ? s : 0.0f;
    }
  });
}

// dx may alias dy1 or dy2 (DNNS_IVDEP as in add_relu_forward). Each part is masked before the sum,
// so the add is unconditional and the loop vectorises (GCC does not speculate a floating-point
// add out of a branch; a select is folded back into one): where y > 0 the sum is dy1 + dy2,
// elsewhere +0 + +0 = +0, as the ref.
void relu_backward_sum(int64_t n, const float* y, const float* dy1, const float* dy2, float* dx) {
  for_blocks(n, [=](int64_t b, int64_t e) {
DNNS_IVDEP
    for (int64_t i = b; i < e; i++) {
      const uint32_t on = y[i] > 0.0f ? ~0u : 0u;
      const float g1 = std::bit_cast<float>(std::bit_cast<uint32_t>(dy1[i]) & on);
      const float g2 = std::bit_cast<float>(std::bit_cast<uint32_t>(dy2[i]) & on);
      dx[i] = g1 + g2;
    }
  });
}

}  // namespace dnns::cpu
