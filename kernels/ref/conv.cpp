// Reference 2-D convolution: the definition, written as loop nests. Each output element is one
// sum, accumulated in double, so these kernels are the ground truth the optimized backends
// are tested against (and the portable backend: no BLAS, no threads).
//
//   y[n,k,p,q] = b[k] + sum_{c,r,s} w[k,c,r,s] * x[n, c, p*stride - pad + r, q*stride - pad + s]
//
// with x read as zero outside the image (zero padding).
#include <cstdint>
#include <string>

#include "core/error.h"
#include "kernels/ref/ref.h"

namespace dnns::ref {

void conv2d_forward(const Conv2dParams& p, const float* x, const float* w, const float* b, float* y) {
  // x (N, C, H, W)   w (K, C, R, S)   b (K) or nullptr   y (N, K, P, Q)
  check_conv_params(p, "conv2d_forward");
  const int N = p.N, C = p.C, H = p.H, W = p.W, K = p.K, R = p.R, S = p.S;
  const int P = p.P(), Q = p.Q();
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < K; ++k)
      for (int oh = 0; oh < P; ++oh)
        for (int ow = 0; ow < Q; ++ow) {
          double acc = b ? b[k] : 0.0;
          for (int c = 0; c < C; ++c)
            for (int r = 0; r < R; ++r) {
              const int h = oh * p.stride - p.pad + r;
              if (h < 0 || h >= H) continue;
              for (int s = 0; s < S; ++s) {
                const int wi = ow * p.stride - p.pad + s;
                if (wi < 0 || wi >= W) continue;
                acc += (double)w[((int64_t)(k * C + c) * R + r) * S + s] *
                       x[((int64_t)(n * C + c) * H + h) * W + wi];
              }
            }
          y[((int64_t)(n * K + k) * P + oh) * Q + ow] = (float)acc;
        }
}

// dx[n,c,h,w] = sum over every (k, r, s) and output position (p, q) that read x[n,c,h,w],
// i.e. p*stride - pad + r == h and q*stride - pad + s == w. Written as a gather so that each
// dx element is one double sum, like the forward.
void conv2d_backward_data(const Conv2dParams& p, const float* dy, const float* w, float* dx) {
  // dy (N, K, P, Q)   w (K, C, R, S)   dx (N, C, H, W)
  check_conv_params(p, "conv2d_backward_data");
  const int N = p.N, C = p.C, H = p.H, W = p.W, K = p.K, R = p.R, S = p.S;
  const int P = p.P(), Q = p.Q();
  for (int n = 0; n < N; ++n)
    for (int c = 0; c < C; ++c)
      for (int h = 0; h < H; ++h)
        for (int wi = 0; wi < W; ++wi) {
          double acc = 0.0;
          for (int k = 0; k < K; ++k)
            for (int r = 0; r < R; ++r) {
              const int th = h + p.pad - r;  // = oh * stride for the output row that used h
              if (th < 0 || th % p.stride != 0) continue;
              const int oh = th / p.stride;
              if (oh >= P) continue;
              for (int s = 0; s < S; ++s) {
                const int tw = wi + p.pad - s;
                if (tw < 0 || tw % p.stride != 0) continue;
                const int ow = tw / p.stride;
                if (ow >= Q) continue;
                acc += (double)w[((int64_t)(k * C + c) * R + r) * S + s] *
                       dy[((int64_t)(n * K + k) * P + oh) * Q + ow];
              }
            }
          dx[((int64_t)(n * C + c) * H + h) * W + wi] = (float)acc;
        }
}

// dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * x[n, c, p*stride - pad + r, q*stride - pad + s]
// db[k]       = sum_{n,p,q} dy[n,k,p,q]
void conv2d_backward_weights(const Conv2dParams& p, const float* x, const float* dy, float* dw,
                             float* db) {
  // x (N, C, H, W)   dy (N, K, P, Q)   dw (K, C, R, S)   db (K) or nullptr
  check_conv_params(p, "conv2d_backward_weights");
  const int N = p.N, C = p.C, H = p.H, W = p.W, K = p.K, R = p.R, S = p.S;
  const int P = p.P(), Q = p.Q();
  for (int k = 0; k < K; ++k)
    for (int c = 0; c < C; ++c)
      for (int r = 0; r < R; ++r)
        for (int s = 0; s < S; ++s) {
          double acc = 0.0;
          for (int n = 0; n < N; ++n)
            for (int oh = 0; oh < P; ++oh) {
              const int h = oh * p.stride - p.pad + r;
              if (h < 0 || h >= H) continue;
              for (int ow = 0; ow < Q; ++ow) {
                const int wi = ow * p.stride - p.pad + s;
                if (wi < 0 || wi >= W) continue;
                acc += (double)dy[((int64_t)(n * K + k) * P + oh) * Q + ow] *
                       x[((int64_t)(n * C + c) * H + h) * W + wi];
              }
            }
          dw[((int64_t)(k * C + c) * R + r) * S + s] = (float)acc;
        }
  if (db) {
    for (int k = 0; k < K; ++k) {
      double acc = 0.0;
      for (int n = 0; n < N; ++n)
        for (int i = 0; i < P * Q; ++i) acc += dy[(int64_t)(n * K + k) * P * Q + i];
      db[k] = (float)acc;
    }
  }
}

}  // namespace dnns::ref
