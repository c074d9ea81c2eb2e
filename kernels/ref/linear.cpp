// Reference fully-connected layer: y = x w^T + b, as loop nests with double accumulators
// (the ground truth for the optimized backends).
#include <cstdint>

#include "kernels/ref/ref.h"

namespace dnns::ref {

// y[n,o] = b[o] + sum_i x[n,i] * w[o,i]
void linear_forward(int N, int I, int O, const float* x, const float* w, const float* b, float* y) {
  // x (N, I)   w (O, I)   b (O) or nullptr   y (N, O)
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < O; ++o) {
      double acc = b ? b[o] : 0.0;
      for (int i = 0; i < I; ++i) acc += (double)x[(int64_t)n * I + i] * w[(int64_t)o * I + i];
      y[(int64_t)n * O + o] = (float)acc;
    }
}

// dx[n,i] = sum_o dy[n,o] * w[o,i]
void linear_backward_data(int N, int I, int O, const float* dy, const float* w, float* dx) {
  // dy (N, O)   w (O, I)   dx (N, I)
  for (int n = 0; n < N; ++n)
    for (int i = 0; i < I; ++i) {
      double acc = 0.0;
      for (int o = 0; o < O; ++o) acc += (double)dy[(int64_t)n * O + o] * w[(int64_t)o * I + i];
      dx[(int64_t)n * I + i] = (float)acc;
    }
}

// dw[o,i] = sum_n dy[n,o] * x[n,i]    db[o] = sum_n dy[n,o]
void linear_backward_weights(int N, int I, int O, const float* x, const float* dy, float* dw,
                             float* db) {
  // x (N, I)   dy (N, O)   dw (O, I)   db (O) or nullptr
  for (int o = 0; o < O; ++o)
    for (int i = 0; i < I; ++i) {
      double acc = 0.0;
      for (int n = 0; n < N; ++n) acc += (double)dy[(int64_t)n * O + o] * x[(int64_t)n * I + i];
      dw[(int64_t)o * I + i] = (float)acc;
    }
  if (db) {
    for (int o = 0; o < O; ++o) {
      double acc = 0.0;
      for (int n = 0; n < N; ++n) acc += dy[(int64_t)n * O + o];
      db[o] = (float)acc;
    }
  }
}

}  // namespace dnns::ref
