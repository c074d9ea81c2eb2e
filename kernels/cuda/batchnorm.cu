// Batchnorm over (N, C, HW): statistics per channel over its M = N*HW values.
//
// Training forward and backward use one block per channel. Its threads stride over the
// channel's M values (flat index j = n*HW + hw, so consecutive threads read consecutive
// addresses) and accumulate in double; the block then reduces in a fixed tree (device.cuh),
// which keeps the statistics deterministic and, like the double-precision reference, free of
// the cancellation a float running sum suffers over 10^5 values. The mean and the squared
// deviations are two passes over the data, as in the reference.
#include "kernels/cuda/device.cuh"

namespace dnns::cuda {
namespace {

constexpr int kBnThreads = 512;

// Offset of value j (in [0, M)) of channel c in an (N, C, HW) tensor.
__device__ __forceinline__ int64_t bn_offset(int64_t j, int c, int C, int HW) {
  const int64_t n = j / HW, hw = j % HW;
  return (n * C + c) * HW + hw;
}

// grid: (C). x, y (N, C, HW); gamma, beta, running_mean, running_var, save_mean, save_invstd (C).
__global__ void bn_forward_train_kernel(int N, int C, int HW, double eps, double momentum,
                                        const float* __restrict__ x, const float* __restrict__ gamma,
                                        const float* __restrict__ beta, float* __restrict__ running_mean,
                                        float* __restrict__ running_var, float* __restrict__ y,
                                        float* __restrict__ save_mean, float* __restrict__ save_invstd) {
  __shared__ double scratch[32];
  const int c = blockIdx.x;
  const int64_t M = int64_t(N) * HW;

  double sum = 0.0;
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) sum += x[bn_offset(j, c, C, HW)];
  const double mean = block_sum(sum, scratch) / double(M);

  double ssd = 0.0;
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    const double d = x[bn_offset(j, c, C, HW)] - mean;
    ssd += d * d;
  }
  ssd = block_sum(ssd, scratch);
  const double var = ssd / double(M);  // biased: what the batch is normalised with
  const double invstd = 1.0 / sqrt(var + eps);

  const double g = gamma[c], b = beta[c];
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    const int64_t at = bn_offset(j, c, C, HW);
    y[at] = float(g * ((x[at] - mean) * invstd) + b);
  }
  if (threadIdx.x == 0) {
    // The running estimate uses the unbiased variance (PyTorch convention); M > 1 is checked
    // on the host.
    running_mean[c] = float((1.0 - momentum) * running_mean[c] + momentum * mean);
    running_var[c] = float((1.0 - momentum) * running_var[c] + momentum * (ssd / double(M - 1)));
    save_mean[c] = float(mean);
    save_invstd[c] = float(invstd);
  }
}

// Elementwise over (N, C, HW) with the running statistics.
__global__ void bn_forward_eval_kernel(int64_t total, int C, int HW, double eps,
                                       const float* __restrict__ x, const float* __restrict__ gamma,
                                       const float* __restrict__ beta,
                                       const float* __restrict__ running_mean,
                                       const float* __restrict__ running_var, float* __restrict__ y) {
  DNNS_GRID_STRIDE_LOOP(i, total) {
    const int c = int((i / HW) % C);
    const double invstd = 1.0 / sqrt(double(running_var[c]) + eps);
    y[i] = float(double(gamma[c]) * ((x[i] - double(running_mean[c])) * invstd) + double(beta[c]));
  }
}

// grid: (C). With xhat = (x - mean) * invstd over the M values of channel c:
//   dbeta = sum(dy), dgamma = sum(dy * xhat),
//   dx = gamma * invstd * (dy - dbeta / M - xhat * dgamma / M)
__global__ void bn_backward_kernel(int N, int C, int HW, const float* __restrict__ x,
                                   const float* __restrict__ dy, const float* __restrict__ gamma,
                                   const float* __restrict__ save_mean,
                                   const float* __restrict__ save_invstd, float* __restrict__ dx,
                                   float* __restrict__ dgamma, float* __restrict__ dbeta) {
  __shared__ double scratch[32];
  const int c = blockIdx.x;
  const int64_t M = int64_t(N) * HW;
  const double mean = save_mean[c], invstd = save_invstd[c];

  double s_dy = 0.0, s_dy_xhat = 0.0;
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    const int64_t at = bn_offset(j, c, C, HW);
    const double g = dy[at];
    s_dy += g;
    s_dy_xhat += g * ((x[at] - mean) * invstd);
  }
  const double sum_dy = block_sum(s_dy, scratch);
  const double sum_dy_xhat = block_sum(s_dy_xhat, scratch);

  const double scale = double(gamma[c]) * invstd;
  const double mean_dy = sum_dy / double(M), mean_dy_xhat = sum_dy_xhat / double(M);
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    const int64_t at = bn_offset(j, c, C, HW);
    const double xhat = (x[at] - mean) * invstd;
    dx[at] = float(scale * (dy[at] - mean_dy - xhat * mean_dy_xhat));
  }
  if (threadIdx.x == 0) {
    dgamma[c] = float(sum_dy_xhat);
    dbeta[c] = float(sum_dy);
  }
}

void check_bn_params(const BatchNormParams& p, const char* op) {
  check(p.N >= 0 && p.C >= 0 && p.HW >= 0,
        std::string("CUDA op ") + op + ": negative size N=" + std::to_string(p.N) +
            " C=" + std::to_string(p.C) + " HW=" + std::to_string(p.HW));
}

}  // namespace

void batchnorm_forward_train(const BatchNormParams& p, const float* x, const float* gamma,
                             const float* beta, float* running_mean, float* running_var, float* y,
                             float* save_mean, float* save_invstd) {
  check_bn_params(p, "batchnorm_forward_train");
  const int64_t M = int64_t(p.N) * p.HW;
  check(M > 1, "CUDA op batchnorm_forward_train: need more than 1 value per channel to train, got "
               "N*HW = " + std::to_string(M));
  if (p.C == 0) return;
  bn_forward_train_kernel<<<p.C, kBnThreads, 0, stream()>>>(
      p.N, p.C, p.HW, double(p.eps), double(p.momentum), x, gamma, beta, running_mean, running_var,
      y, save_mean, save_invstd);
  check_launch("bn_forward_train_kernel", "batchnorm_forward_train");
}

void batchnorm_forward_eval(const BatchNormParams& p, const float* x, const float* gamma,
                            const float* beta, const float* running_mean, const float* running_var,
                            float* y) {
  check_bn_params(p, "batchnorm_forward_eval");
  const int64_t total = int64_t(p.N) * p.C * p.HW;
  if (total == 0) return;
  bn_forward_eval_kernel<<<grid_for(total, kThreads), kThreads, 0, stream()>>>(
      total, p.C, p.HW, double(p.eps), x, gamma, beta, running_mean, running_var, y);
  check_launch("bn_forward_eval_kernel", "batchnorm_forward_eval");
}

void batchnorm_backward(const BatchNormParams& p, const float* x, const float* dy, const float* gamma,
                        const float* save_mean, const float* save_invstd, float* dx, float* dgamma,
                        float* dbeta) {
  check_bn_params(p, "batchnorm_backward");
  if (p.C == 0) return;
  if (int64_t(p.N) * p.HW == 0) {  // no values: the sums are empty
    fill_device(dgamma, p.C, 0.0f, "batchnorm_backward");
    fill_device(dbeta, p.C, 0.0f, "batchnorm_backward");
    return;
  }
  bn_backward_kernel<<<p.C, kBnThreads, 0, stream()>>>(p.N, p.C, p.HW, x, dy, gamma, save_mean,
                                                        save_invstd, dx, dgamma, dbeta);
  check_launch("bn_backward_kernel", "batchnorm_backward");
}

}  // namespace dnns::cuda
