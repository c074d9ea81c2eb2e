// Reference pooling: square window k, stride s, no padding.
#include "kernels/ref/ref.h"

namespace dnns::ref {

void maxpool_forward(const Pool2dParams& p, const float* x, float* y) {
  // x: (N, C, H, W) -> y: (N, C, P, Q)
  const int P = p.P(), Q = p.Q();
  for (int64_t nc = 0; nc < int64_t(p.N) * p.C; nc++) {
    const float* xp = x + nc * p.H * p.W;  // (H, W)
    float* yp = y + nc * P * Q;            // (P, Q)
    for (int i = 0; i < P; i++)
      for (int j = 0; j < Q; j++) {
        float best = xp[(i * p.stride) * p.W + j * p.stride];
        for (int r = 0; r < p.k; r++)
          for (int s = 0; s < p.k; s++) {
            const float v = xp[(i * p.stride + r) * p.W + j * p.stride + s];
            if (v > best) best = v;
          }
        yp[i * Q + j] = best;
      }
  }
}

void maxpool_backward(const Pool2dParams& p, const float* x, const float* dy, float* dx) {
  // x, dx: (N, C, H, W)   dy: (N, C, P, Q)
  const int P = p.P(), Q = p.Q();
  for (int64_t i = 0; i < int64_t(p.N) * p.C * p.H * p.W; i++) dx[i] = 0.0f;
  for (int64_t nc = 0; nc < int64_t(p.N) * p.C; nc++) {
    const float* xp = x + nc * p.H * p.W;  // (H, W)
    const float* dyp = dy + nc * P * Q;    // (P, Q)
    float* dxp = dx + nc * p.H * p.W;      // (H, W)
    for (int i = 0; i < P; i++)
      for (int j = 0; j < Q; j++) {
        // The first maximum in row-major window order wins (strict '>'), so ties are routed
        // the same way by every backend. Overlapping windows (stride < k) accumulate.
        int arg = (i * p.stride) * p.W + j * p.stride;
        for (int r = 0; r < p.k; r++)
          for (int s = 0; s < p.k; s++) {
            const int at = (i * p.stride + r) * p.W + j * p.stride + s;
            if (xp[at] > xp[arg]) arg = at;
          }
        dxp[arg] += dyp[i * Q + j];
      }
  }
}

void avgpool_forward(const Pool2dParams& p, const float* x, float* y) {
  // x: (N, C, H, W) -> y: (N, C, P, Q); every window holds k*k inputs (no padding)
  const int P = p.P(), Q = p.Q();
  for (int64_t nc = 0; nc < int64_t(p.N) * p.C; nc++) {
    const float* xp = x + nc * p.H * p.W;  // (H, W)
    float* yp = y + nc * P * Q;            // (P, Q)
    for (int i = 0; i < P; i++)
      for (int j = 0; j < Q; j++) {
        double sum = 0.0;
        for (int r = 0; r < p.k; r++)
          for (int s = 0; s < p.k; s++) sum += xp[(i * p.stride + r) * p.W + j * p.stride + s];
        yp[i * Q + j] = float(sum / (p.k * p.k));
      }
  }
}

void avgpool_backward(const Pool2dParams& p, const float* dy, float* dx) {
  // dy: (N, C, P, Q) -> dx: (N, C, H, W)
  const int P = p.P(), Q = p.Q();
  for (int64_t i = 0; i < int64_t(p.N) * p.C * p.H * p.W; i++) dx[i] = 0.0f;
  for (int64_t nc = 0; nc < int64_t(p.N) * p.C; nc++) {
    const float* dyp = dy + nc * P * Q;  // (P, Q)
    float* dxp = dx + nc * p.H * p.W;    // (H, W)
    for (int i = 0; i < P; i++)
      for (int j = 0; j < Q; j++) {
        const float g = dyp[i * Q + j] / float(p.k * p.k);
        for (int r = 0; r < p.k; r++)
          for (int s = 0; s < p.k; s++) dxp[(i * p.stride + r) * p.W + j * p.stride + s] += g;
      }
  }
}

void global_avgpool_forward(int N, int C, int HW, const float* x, float* y) {
  // x: (N, C, HW) -> y: (N, C)
  for (int64_t nc = 0; nc < int64_t(N) * C; nc++) {
    double sum = 0.0;
    for (int i = 0; i < HW; i++) sum += x[nc * HW + i];
    y[nc] = float(sum / HW);
  }
}

void global_avgpool_backward(int N, int C, int HW, const float* dy, float* dx) {
  // dy: (N, C) -> dx: (N, C, HW)
  for (int64_t nc = 0; nc < int64_t(N) * C; nc++)
    for (int i = 0; i < HW; i++) dx[nc * HW + i] = dy[nc] / float(HW);
}

}  // namespace dnns::ref
