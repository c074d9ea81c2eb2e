// Optimized elementwise kernels: the reference loops, split into blocks across oneTBB threads.
// No reductions here, so any partitioning gives bit-identical results.

#include "core/parallel.h"
#include "kernels/cpu/cpu.h"

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

}  // namespace dnns::cpu
