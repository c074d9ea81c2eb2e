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

void mask_apply(int64_t n, float* w, const float* mask) {
  for (int64_t i = 0; i < n; i++) w[i] *= mask[i];
}

}  // namespace dnns::ref
