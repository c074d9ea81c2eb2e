// Reference SGD step and mask application. w, g, buf, mask: (n)
#include "kernels/ref/ref.h"

namespace dnns::ref {

void sgd_update(const SgdParams& p, int64_t n, float* w, const float* g, float* buf) {
  for (int64_t i = 0; i < n; i++) {
    const float gi = g[i] + p.weight_decay * w[i];  // L2 penalty folded into the gradient
    const float b = p.momentum * buf[i] + gi;
    buf[i] = b;
    const float step = p.nesterov ? gi + p.momentum * b : b;
    w[i] -= p.lr * step;
  }
}

// Pruned weights become +0.0, not w * 0 (-0.0 for a negative w): a pruned model then stores as
// its surviving weights (core/archive.h), and the sign of a pruned zero carries nothing.
void mask_apply(int64_t n, float* w, const float* mask) {
  for (int64_t i = 0; i < n; i++) w[i] = mask[i] != 0.0f ? w[i] : 0.0f;
}

}  // namespace dnns::ref
