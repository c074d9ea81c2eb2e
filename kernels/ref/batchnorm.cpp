// Reference batchnorm: per-channel statistics over the N*HW values of each channel, in double,
// so these kernels are the ground truth the optimized ones are tested against.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/ref/ref.h"

namespace dnns::ref {

void batchnorm_forward_train(const BatchNormParams& p, const float* x, const float* gamma,
                             const float* beta, float* running_mean, float* running_var, float* y,
                             float* save_mean, float* save_invstd) {
  // x, y: (N, C, HW)   gamma, beta, running_*, save_*: (C)
  const int64_t M = int64_t(p.N) * p.HW;  // values per channel
  check(M > 1, "batchnorm_forward_train: need more than 1 value per channel to train, got N*HW = " +
                   std::to_string(M));
  for (int c = 0; c < p.C; c++) {
    // Two passes (mean, then squared deviations): exact enough to be the reference.
    double sum = 0.0;
    for (int n = 0; n < p.N; n++) {
      const float* xc = x + (int64_t(n) * p.C + c) * p.HW;  // (HW)
      for (int i = 0; i < p.HW; i++) sum += xc[i];
    }
    const double mean = sum / double(M);
    double ssd = 0.0;
    for (int n = 0; n < p.N; n++) {
      const float* xc = x + (int64_t(n) * p.C + c) * p.HW;  // (HW)
      for (int i = 0; i < p.HW; i++) ssd += (xc[i] - mean) * (xc[i] - mean);
    }
    const double var = ssd / double(M);  // biased: what the batch is normalised with
    const double invstd = 1.0 / std::sqrt(var + double(p.eps));
    for (int n = 0; n < p.N; n++) {
      const float* xc = x + (int64_t(n) * p.C + c) * p.HW;  // (HW)
      float* yc = y + (int64_t(n) * p.C + c) * p.HW;        // (HW)
      for (int i = 0; i < p.HW; i++) yc[i] = float(gamma[c] * ((xc[i] - mean) * invstd) + beta[c]);
    }
    // The running estimate uses the unbiased variance, as PyTorch does.
    const double m = p.momentum;
    running_mean[c] = float((1.0 - m) * running_mean[c] + m * mean);
    running_var[c] = float((1.0 - m) * running_var[c] + m * (ssd / double(M - 1)));
    save_mean[c] = float(mean);
    save_invstd[c] = float(invstd);
  }
}

void batchnorm_forward_eval(const BatchNormParams& p, const float* x, const float* gamma,
                            const float* beta, const float* running_mean, const float* running_var,
                            float* y) {
  // x, y: (N, C, HW)   gamma, beta, running_*: (C)
  for (int n = 0; n < p.N; n++)
    for (int c = 0; c < p.C; c++) {
      const double invstd = 1.0 / std::sqrt(double(running_var[c]) + double(p.eps));
      const float* xc = x + (int64_t(n) * p.C + c) * p.HW;  // (HW)
      float* yc = y + (int64_t(n) * p.C + c) * p.HW;        // (HW)
      for (int i = 0; i < p.HW; i++)
        yc[i] = float(gamma[c] * ((xc[i] - double(running_mean[c])) * invstd) + beta[c]);
    }
}

void batchnorm_backward(const BatchNormParams& p, const float* x, const float* dy, const float* gamma,
                        const float* save_mean, const float* save_invstd, float* dx, float* dgamma,
                        float* dbeta) {
  // x, dy, dx: (N, C, HW)   gamma, save_*, dgamma, dbeta: (C)
  // With xhat = (x - mean) * invstd and y = gamma * xhat + beta, over the M values of a channel:
  //   dbeta  = sum(dy)
  //   dgamma = sum(dy * xhat)
  //   dx     = gamma * invstd * (dy - dbeta / M - xhat * dgamma / M)
  // (the last two terms are the gradient flowing through the batch mean and variance).
  const int64_t M = int64_t(p.N) * p.HW;
  for (int c = 0; c < p.C; c++) {
    const double mean = save_mean[c], invstd = save_invstd[c];
    double sum_dy = 0.0, sum_dy_xhat = 0.0;
    for (int n = 0; n < p.N; n++) {
      const float* xc = x + (int64_t(n) * p.C + c) * p.HW;    // (HW)
      const float* dyc = dy + (int64_t(n) * p.C + c) * p.HW;  // (HW)
      for (int i = 0; i < p.HW; i++) {
        sum_dy += dyc[i];
        sum_dy_xhat += dyc[i] * ((xc[i] - mean) * invstd);
      }
    }
    for (int n = 0; n < p.N; n++) {
      const float* xc = x + (int64_t(n) * p.C + c) * p.HW;    // (HW)
      const float* dyc = dy + (int64_t(n) * p.C + c) * p.HW;  // (HW)
      float* dxc = dx + (int64_t(n) * p.C + c) * p.HW;        // (HW)
      for (int i = 0; i < p.HW; i++) {
        const double xhat = (xc[i] - mean) * invstd;
        dxc[i] = float(gamma[c] * invstd * (dyc[i] - sum_dy / double(M) - xhat * sum_dy_xhat / double(M)));
      }
    }
    dgamma[c] = float(sum_dy_xhat);
    dbeta[c] = float(sum_dy);
  }
}

namespace {

// Whether the ReLU after the batchnorm passes element `at` (channel c): its input recomputed
// from the saved statistics, the one rule the fused forward and backward below share, so the
// reference agrees with itself even for inputs within rounding of zero.
bool relu_passes(const float* x, int64_t at, int c, const float* gamma, const float* beta, const float* save_mean,
                 const float* save_invstd) {
  return gamma[c] * ((x[at] - double(save_mean[c])) * save_invstd[c]) + beta[c] > 0.0;
}

}  // namespace

// The batchnorm, then the ReLU (zero where relu_passes says the ReLU's input is not positive).
void batchnorm_forward_train_relu(const BatchNormParams& p, const float* x, const float* gamma, const float* beta,
                                  float* running_mean, float* running_var, float* y, float* save_mean,
                                  float* save_invstd) {
  batchnorm_forward_train(p, x, gamma, beta, running_mean, running_var, y, save_mean, save_invstd);
  for (int n = 0; n < p.N; n++)
    for (int c = 0; c < p.C; c++)
      for (int i = 0; i < p.HW; i++) {
        const int64_t at = (int64_t(n) * p.C + c) * p.HW + i;
        y[at] = relu_passes(x, at, c, gamma, beta, save_mean, save_invstd) ? std::max(y[at], 0.0f) : 0.0f;
      }
}

// The ReLU's backward (the same relu_passes), then the batchnorm's.
void batchnorm_backward_relu(const BatchNormParams& p, const float* x, const float* dy, const float* gamma,
                             const float* beta, const float* save_mean, const float* save_invstd, float* dx,
                             float* dgamma, float* dbeta) {
  std::vector<float> g(size_t(p.N) * p.C * p.HW);  // (N, C, HW): dy where the ReLU passes
  for (int n = 0; n < p.N; n++)
    for (int c = 0; c < p.C; c++)
      for (int i = 0; i < p.HW; i++) {
        const int64_t at = (int64_t(n) * p.C + c) * p.HW + i;
        g[size_t(at)] = relu_passes(x, at, c, gamma, beta, save_mean, save_invstd) ? dy[at] : 0.0f;
      }
  batchnorm_backward(p, x, g.data(), gamma, save_mean, save_invstd, dx, dgamma, dbeta);
}

}  // namespace dnns::ref
