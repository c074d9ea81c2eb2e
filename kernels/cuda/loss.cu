// Softmax cross-entropy with label smoothing.
//
// Two kernels: one warp per row computes the row's loss (a stable log-sum-exp around the row
// maximum, in double like the reference), its argmax hit and its logit gradient; then one
// block reduces the per-row results in a fixed order (deterministic) into the batch totals,
// which are the only values copied back to the host.
#include <cmath>

#include "kernels/cuda/device.cuh"

namespace dnns::cuda {
namespace {

constexpr int kLossThreads = 256;  // 8 rows per block

// What the reduction kernel hands back to the host.
struct LossTotals {
  double loss_sum;  // sum of the valid rows' losses
  int hits;         // rows whose (first) argmax equals the label
  int first_bad;    // first row with an invalid label, or N when every label is valid
};

__device__ __forceinline__ double warp_sum_all(double v) {
  return __shfl_sync(0xffffffffu, warp_sum(v), 0);  // every lane gets lane 0's total
}

// logits, dlogits (N, K); labels (N) -> row_loss (N), row_hit (N), row_bad (N).
// dlogits may be null. Target of row n: t_k = s/K + (k == label ? 1 - s : 0).
__global__ void softmax_xent_rows_kernel(int N, int K, double smoothing,
                                         const float* __restrict__ logits,
                                         const float* __restrict__ labels,
                                         float* __restrict__ dlogits, double* __restrict__ row_loss,
                                         int* __restrict__ row_hit, int* __restrict__ row_bad) {
  const int lane = threadIdx.x % 32;
  const int64_t warps_total = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t n = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; n < N;
       n += warps_total) {
    const float* z = logits + n * K;  // (K)
    const float label = labels[n];
    const bool valid = label >= 0.0f && label < float(K) && label == floorf(label);
    const int y = valid ? int(label) : -1;

    // Argmax: each lane finds the first maximum of its strided subset, then the warp keeps the
    // larger value, or on a tie the smaller index: the first maximum of the whole row.
    float best = lane < K ? z[lane] : 0.0f;
    int arg = lane < K ? lane : K;  // K marks "no value"
    for (int k = lane + 32; k < K; k += 32)
      if (z[k] > best) best = z[k], arg = k;
    for (int offset = 16; offset > 0; offset /= 2) {
      const float other = __shfl_down_sync(0xffffffffu, best, offset);
      const int other_arg = __shfl_down_sync(0xffffffffu, arg, offset);
      const bool take = other_arg < K && (arg == K || other > best || (other == best && other_arg < arg));
      if (take) best = other, arg = other_arg;
    }
    arg = __shfl_sync(0xffffffffu, arg, 0);
    const double zmax = z[arg];

    // loss = lse - sum_k t_k z_k,  lse = zmax + log(sum_k exp(z_k - zmax))
    const double uniform = smoothing / K;
    double sumexp = 0.0, tz = 0.0;
    for (int k = lane; k < K; k += 32) {
      sumexp += exp(double(z[k]) - zmax);
      tz += (uniform + (k == y ? 1.0 - smoothing : 0.0)) * double(z[k]);
    }
    const double lse = zmax + log(warp_sum_all(sumexp));
    tz = warp_sum_all(tz);

    if (dlogits) {
      float* dz = dlogits + n * K;  // (K)
      for (int k = lane; k < K; k += 32) {
        const double target = uniform + (k == y ? 1.0 - smoothing : 0.0);
        dz[k] = float((exp(double(z[k]) - lse) - target) / N);
      }
    }
    if (lane == 0) {
      row_loss[n] = valid ? lse - tz : 0.0;
      row_hit[n] = (valid && arg == y) ? 1 : 0;
      row_bad[n] = valid ? 0 : 1;
    }
  }
}

// One block: totals over the N rows in a fixed order.
__global__ void softmax_xent_reduce_kernel(int N, const double* __restrict__ row_loss,
                                           const int* __restrict__ row_hit,
                                           const int* __restrict__ row_bad,
                                           LossTotals* __restrict__ totals) {
  __shared__ double scratch[32];
  __shared__ int first_bad;
  if (threadIdx.x == 0) first_bad = N;
  double loss = 0.0, hits = 0.0;
  int bad = N;
  for (int n = threadIdx.x; n < N; n += blockDim.x) {
    loss += row_loss[n];
    hits += row_hit[n];
    if (row_bad[n] && n < bad) bad = n;
  }
  __syncthreads();
  atomicMin(&first_bad, bad);  // a minimum does not depend on the order of the updates
  loss = block_sum(loss, scratch);  // its barriers also order the atomicMin before the read
  hits = block_sum(hits, scratch);
  if (threadIdx.x == 0) {
    totals->loss_sum = loss;
    totals->hits = int(hits);
    totals->first_bad = first_bad;
  }
}

}  // namespace

float softmax_cross_entropy(int N, int K, const float* logits, const float* labels, float smoothing,
                            float* dlogits, int* correct) {
  const char* op = "softmax_cross_entropy";
  check(K > 0 && N >= 0, "CUDA op softmax_cross_entropy: invalid shape N=" + std::to_string(N) +
                             " K=" + std::to_string(K));
  if (N == 0) {  // the mean over an empty batch is undefined, as in the reference
    if (correct) *correct = 0;
    return NAN;
  }
  DeviceArray<double> row_loss(N, op);   // (N)
  DeviceArray<int> row_hit(N, op);       // (N)
  DeviceArray<int> row_bad(N, op);       // (N)
  DeviceArray<LossTotals> totals(1, op);

  const int rows_per_block = kLossThreads / 32;
  softmax_xent_rows_kernel<<<grid_for(N, rows_per_block), kLossThreads, 0, stream()>>>(
      N, K, double(smoothing), logits, labels, dlogits, row_loss.get(), row_hit.get(), row_bad.get());
  check_launch("softmax_xent_rows_kernel", op);
  softmax_xent_reduce_kernel<<<1, 1024, 0, stream()>>>(N, row_loss.get(), row_hit.get(),
                                                       row_bad.get(), totals.get());
  check_launch("softmax_xent_reduce_kernel", op);

  LossTotals host{};
  DNNS_CUDA_CHECK(op, cudaMemcpyAsync(&host, totals.get(), sizeof(LossTotals),
                                      cudaMemcpyDeviceToHost, stream()));
  DNNS_CUDA_CHECK(op, cudaStreamSynchronize(stream()));
  if (host.first_bad < N) {
    float label = 0.0f;
    DNNS_CUDA_CHECK(op, cudaMemcpyAsync(&label, labels + host.first_bad, sizeof(float),
                                        cudaMemcpyDeviceToHost, stream()));
    DNNS_CUDA_CHECK(op, cudaStreamSynchronize(stream()));
    throw Error("softmax_cross_entropy: label of row " + std::to_string(host.first_bad) + " is " +
                std::to_string(label) + ", expected a class index in [0, " + std::to_string(K) + ")");
  }
  if (correct) *correct = host.hits;
  return float(host.loss_sum / N);
}

}  // namespace dnns::cuda
