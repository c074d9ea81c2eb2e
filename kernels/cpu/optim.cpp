// Optimized SGD step and mask application: one fused pass over w, g and buf, in blocks
// across oneTBB threads. Elementwise, so results do not depend on the partitioning.

#include "core/parallel.h"
#include "kernels/cpu/cpu.h"

namespace dnns::cpu {
namespace {

// f(begin, end) over [0, n) in blocks of at least kGrain values (small tensors stay serial).
template <class F>
void for_blocks(int64_t n, F&& f) {
  constexpr int64_t kGrain = int64_t(1) << 15;
  if (n <= kGrain) return f(int64_t(0), n);
  parallel_for(int64_t(0), n, kGrain, f);
}

}  // namespace

void sgd_update(const SgdParams& p, int64_t n, float* w, const float* g, float* buf) {
  // w, g, buf: (n). Same arithmetic, in the same order, as ref::sgd_update.
  const float lr = p.lr, mom = p.momentum, wd = p.weight_decay;
  const bool nesterov = p.nesterov;
  for_blocks(n, [=](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) {
      const float gi = g[i] + wd * w[i];
      const float b = mom * buf[i] + gi;
      buf[i] = b;
      w[i] -= lr * (nesterov ? gi + mom * b : b);
    }
  });
}

void mask_apply(int64_t n, float* w, const float* mask) {
  for_blocks(n, [=](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) w[i] = mask[i] != 0.0f ? w[i] : 0.0f;  // +0.0 when pruned (ref)
  });
}

}  // namespace dnns::cpu
