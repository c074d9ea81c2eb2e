// Reference sparse kernels: the definitions of kernels/sparse.h as loop nests over each row's
// nonzeros, one double-accumulated sum per output. Ground truth for kernels/cpu/sparse.cpp.
#include <algorithm>
#include <cstdint>

#include "core/error.h"
#include "kernels/sparse.h"

namespace dnns::ref {

void sparse_conv2d_forward(const Conv2dParams& p, const float* x, const SparseRows& w, const float* b,
                           bool relu, float* y) {
  // x (N, C, H, W)   w: K rows of C*R*S columns   b (K) or nullptr   y (N, K, P, Q)
  check_conv_params(p, "sparse_conv2d_forward");
  const int N = p.N, C = p.C, H = p.H, W = p.W, K = p.K, R = p.R, S = p.S;
  const int P = p.P(), Q = p.Q();
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < K; ++k)
      for (int oh = 0; oh < P; ++oh)
        for (int ow = 0; ow < Q; ++ow) {
          double acc = b ? b[k] : 0.0;
          for (int64_t j = w.row_start[k]; j < w.row_start[k + 1]; ++j) {
            const int crs = w.col[j], c = crs / (R * S), r = crs / S % R, s = crs % S;
            const int h = oh * p.stride - p.pad + r, v = ow * p.stride - p.pad + s;
            if (h < 0 || h >= H || v < 0 || v >= W) continue;  // zero padding
            acc += double(w.value[j]) * x[((int64_t(n) * C + c) * H + h) * W + v];
          }
          const float out = float(acc);
          y[((int64_t(n) * K + k) * P + oh) * Q + ow] = relu ? std::max(out, 0.0f) : out;
        }
}

void sparse_linear_forward(int N, const float* x, const SparseRows& w, const float* b, bool relu, float* y) {
  // x (N, I)   w: O rows of I columns   b (O) or nullptr   y (N, O)
  const int I = w.cols, O = w.rows;
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < O; ++o) {
      double acc = b ? b[o] : 0.0;
      for (int64_t j = w.row_start[o]; j < w.row_start[o + 1]; ++j)
        acc += double(w.value[j]) * x[int64_t(n) * I + w.col[j]];
      const float out = float(acc);
      y[int64_t(n) * O + o] = relu ? std::max(out, 0.0f) : out;
    }
}

}  // namespace dnns::ref
