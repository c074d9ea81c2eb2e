// Optimized batchnorm. Each channel's statistics are independent, so channels are spread over
// oneTBB threads and every reduction runs inside one task in a fixed order: results are
// bit-identical from run to run, whatever the thread count. Reductions accumulate in double
// over a fixed number of lanes, which lets the compiler vectorise them without reordering
// anything at run time. The loops themselves are rows.h's, built for each instruction set.

#include <algorithm>
#include <cmath>
#include <string>

#include "core/error.h"
#include "core/parallel.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/rows.h"

namespace dnns::cpu {
namespace {

// Sums of x and x^2 over one channel of x (N, C, HW), in double.
void channel_sum_sumsq(const BatchNormParams& p, const float* x, int c, double& sum, double& sumsq) {
  double s[kRowLanes] = {}, ss[kRowLanes] = {};
  row_kernels().sum_sumsq(x + int64_t(c) * p.HW, int64_t(p.C) * p.HW, p.N, p.HW, s, ss);
  sum = sumsq = 0.0;
  for (int l = 0; l < kRowLanes; l++) sum += s[l], sumsq += ss[l];
}

// Sums of dy and dy * (x - mean) over one channel, in double.
void channel_grad_sums(const BatchNormParams& p, const float* x, const float* dy, int c, double mean,
                       double& sum_dy, double& sum_dy_xc) {
  double s[kRowLanes] = {}, sx[kRowLanes] = {};
  const int64_t at = int64_t(c) * p.HW;
  row_kernels().grad_sums(x + at, dy + at, int64_t(p.C) * p.HW, p.N, p.HW, mean, s, sx);
  sum_dy = sum_dy_xc = 0.0;
  for (int l = 0; l < kRowLanes; l++) sum_dy += s[l], sum_dy_xc += sx[l];
}

// y = (x - mean) * scale + shift over one channel. Centring before scaling (rather than
// folding everything into one a * x + b) keeps the result accurate when |mean| >> std.
void channel_normalise(const BatchNormParams& p, const float* x, int c, float mean, float scale,
                       float shift, float* y) {
  const int64_t at = int64_t(c) * p.HW;
  row_kernels().normalise(x + at, y + at, int64_t(p.C) * p.HW, p.N, p.HW, mean, scale, shift);
}

// The scale of the fused batchnorm + ReLU, from the saved (float) invstd, in forward and backward.
float relu_scale(float gamma, float save_invstd) { return float(double(gamma) * double(save_invstd)); }

// f(c) for every channel; channels are grouped so each task touches at least ~32K values.
template <class F>
void for_channels(const BatchNormParams& p, F&& f) {
  const int64_t per_channel = std::max<int64_t>(1, int64_t(p.N) * p.HW);
  const int grain = int(std::max<int64_t>(1, (int64_t(1) << 15) / per_channel));
  parallel_for(0, p.C, grain, [&](int c0, int c1) {
    for (int c = c0; c < c1; c++) f(c);
  });
}

}  // namespace

namespace {

// The training forward, followed by a ReLU when `relu` (see batchnorm_forward_train_relu).
void forward_train(const BatchNormParams& p, const float* x, const float* gamma, const float* beta,
                   float* running_mean, float* running_var, float* y, float* save_mean, float* save_invstd,
                   bool relu) {
  // x, y: (N, C, HW)   gamma, beta, running_*, save_*: (C)
  const int64_t M = int64_t(p.N) * p.HW;
  check(M > 1, std::string(relu ? "batchnorm_forward_train_relu" : "batchnorm_forward_train") +
                   ": need more than 1 value per channel to train, got N*HW = " + std::to_string(M));
  for_channels(p, [&](int c) {
    // One pass for sum and sum of squares (double keeps E[x^2] - E[x]^2 accurate for
    // activations), one pass to normalise.
    double sum, sumsq;
    channel_sum_sumsq(p, x, c, sum, sumsq);
    const double mean = sum / double(M);
    const double var = std::max(0.0, sumsq / double(M) - mean * mean);  // biased
    const double invstd = 1.0 / std::sqrt(var + double(p.eps));
    save_mean[c] = float(mean);
    save_invstd[c] = float(invstd);
    if (relu) {
      // The backward recomputes the ReLU's mask from x, save_mean and save_invstd: the same
      // floats here (the saved invstd, not the double one) give it exactly the forward's.
      const int64_t at = int64_t(c) * p.HW;
      row_kernels().normalise_relu(x + at, y + at, int64_t(p.C) * p.HW, p.N, p.HW, save_mean[c],
                                   relu_scale(gamma[c], save_invstd[c]), beta[c]);
    } else {
      const double scale = double(gamma[c]) * invstd;
      channel_normalise(p, x, c, float(mean), float(scale), beta[c], y);
    }
    const double m = p.momentum;
    running_mean[c] = float((1.0 - m) * running_mean[c] + m * mean);
    running_var[c] = float((1.0 - m) * running_var[c] + m * var * double(M) / double(M - 1));
  });
}

}  // namespace

void batchnorm_forward_train(const BatchNormParams& p, const float* x, const float* gamma,
                             const float* beta, float* running_mean, float* running_var, float* y,
                             float* save_mean, float* save_invstd) {
  forward_train(p, x, gamma, beta, running_mean, running_var, y, save_mean, save_invstd, false);
}

void batchnorm_forward_train_relu(const BatchNormParams& p, const float* x, const float* gamma, const float* beta,
                                  float* running_mean, float* running_var, float* y, float* save_mean,
                                  float* save_invstd) {
  forward_train(p, x, gamma, beta, running_mean, running_var, y, save_mean, save_invstd, true);
}

void batchnorm_forward_eval(const BatchNormParams& p, const float* x, const float* gamma,
                            const float* beta, const float* running_mean, const float* running_var,
                            float* y) {
  // x, y: (N, C, HW)   gamma, beta, running_*: (C)
  for_channels(p, [&](int c) {
    const double scale = double(gamma[c]) / std::sqrt(double(running_var[c]) + double(p.eps));
    channel_normalise(p, x, c, running_mean[c], float(scale), beta[c], y);
  });
}

namespace {

// The backward; with `beta`, through the ReLU that followed (see batchnorm_backward_relu).
void backward(const BatchNormParams& p, const float* x, const float* dy, const float* gamma, const float* beta,
              const float* save_mean, const float* save_invstd, float* dx, float* dgamma, float* dbeta) {
  // x, dy, dx: (N, C, HW)   gamma, save_*, dgamma, dbeta: (C)
  // dx = gamma * invstd * (dy - sum(dy) / M - xhat * sum(dy * xhat) / M), xhat = (x - mean) * invstd,
  // rearranged as dx = k_dy * dy + k_x * (x - mean) + k_0 so the second pass is one short
  // multiply-add chain per element. Through a ReLU, dy is first zeroed where its input was not
  // positive (recomputed from x, never stored).
  const int64_t M = int64_t(p.N) * p.HW;
  const RowKernels& rk = row_kernels();
  for_channels(p, [&](int c) {
    const double mean = save_mean[c], invstd = save_invstd[c];
    const int64_t at = int64_t(c) * p.HW, stride = int64_t(p.C) * p.HW;
    const float scale = beta ? relu_scale(gamma[c], save_invstd[c]) : 0.0f;
    double sum_dy, sum_dy_xc;
    if (beta) {
      double s[kRowLanes] = {}, sx[kRowLanes] = {};
      rk.grad_sums_relu(x + at, dy + at, stride, p.N, p.HW, save_mean[c], scale, beta[c], s, sx);
      sum_dy = sum_dy_xc = 0.0;
      for (int l = 0; l < kRowLanes; l++) sum_dy += s[l], sum_dy_xc += sx[l];
    } else {
      channel_grad_sums(p, x, dy, c, mean, sum_dy, sum_dy_xc);
    }
    const double sum_dy_xhat = sum_dy_xc * invstd;
    const double k_dy = double(gamma[c]) * invstd;
    const double k_x = -k_dy * invstd * sum_dy_xhat / double(M);
    const double k_0 = -k_dy * sum_dy / double(M);
    if (beta)
      rk.bn_backward_relu(x + at, dy + at, dx + at, stride, p.N, p.HW, float(k_dy), float(k_x), float(k_0),
                          save_mean[c], scale, beta[c]);
    else
      rk.bn_backward(x + at, dy + at, dx + at, stride, p.N, p.HW, float(k_dy), float(k_x), float(k_0), save_mean[c]);
    dgamma[c] = float(sum_dy_xhat);
    dbeta[c] = float(sum_dy);
  });
}

}  // namespace

void batchnorm_backward(const BatchNormParams& p, const float* x, const float* dy, const float* gamma,
                        const float* save_mean, const float* save_invstd, float* dx, float* dgamma,
                        float* dbeta) {
  backward(p, x, dy, gamma, nullptr, save_mean, save_invstd, dx, dgamma, dbeta);
}

void batchnorm_backward_relu(const BatchNormParams& p, const float* x, const float* dy, const float* gamma,
                             const float* beta, const float* save_mean, const float* save_invstd, float* dx,
                             float* dgamma, float* dbeta) {
  backward(p, x, dy, gamma, beta, save_mean, save_invstd, dx, dgamma, dbeta);
}

}  // namespace dnns::cpu
