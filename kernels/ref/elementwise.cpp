// Reference elementwise kernels. All buffers hold n values.
#include "kernels/ref/ref.h"

namespace dnns::ref {

void relu_forward(int64_t n, const float* x, float* y) {
  for (int64_t i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

// Gated on the forward output: y > 0 exactly where x > 0, and y is what the layer keeps.
void relu_backward(int64_t n, const float* y, const float* dy, float* dx) {
  for (int64_t i = 0; i < n; i++) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

void add_forward(int64_t n, const float* a, const float* b, float* y) {
  for (int64_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

void accumulate(int64_t n, const float* a, float* y) {
  for (int64_t i = 0; i < n; i++) y[i] += a[i];
}

void add_relu_forward(int64_t n, const float* a, const float* b, float* y) {
  for (int64_t i = 0; i < n; i++) {
    const float s = a[i] + b[i];
    y[i] = s > 0.0f ? s : 0.0f;
  }
}

void relu_backward_sum(int64_t n, const float* y, const float* dy1, const float* dy2, float* dx) {
  for (int64_t i = 0; i < n; i++) dx[i] = y[i] > 0.0f ? dy1[i] + dy2[i] : 0.0f;
}

}  // namespace dnns::ref
