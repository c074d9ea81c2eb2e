// Optimized softmax cross-entropy: rows are independent, so blocks of rows run on oneTBB
// threads, each row's loss goes to its own slot and the slots are summed in row order on the
// calling thread, which makes the result independent of the thread count. One exp per logit
// (the reference computes it twice when it also writes the gradient).

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "kernels/cpu/cpu.h"

namespace dnns::cpu {

float softmax_cross_entropy(int N, int K, const float* logits, const float* labels, float smoothing,
                            float* dlogits, int* correct) {
  // logits, dlogits: (N, K)   labels: (N)
  check(N > 0 && K > 0, "softmax_cross_entropy: expected a non-empty batch of logits, got N=" +
                            std::to_string(N) + " K=" + std::to_string(K));
  // Labels are checked up front so no exception has to cross the thread pool.
  for (int n = 0; n < N; n++)
    check(labels[n] >= 0.0f && labels[n] < float(K) && labels[n] == std::floor(labels[n]),
          "softmax_cross_entropy: label of row " + std::to_string(n) + " is " + std::to_string(labels[n]) +
              ", expected a class index in [0, " + std::to_string(K) + ")");
  std::vector<double> row_loss(N);  // (N)
  std::vector<char> row_hit(N);     // (N)
  const double s = smoothing, uniform = s / K;
  auto rows = [&](int begin, int end) {
    std::vector<double> e(K);  // (K) exp(z - max) of the current row
    for (int n = begin; n < end; n++) {
      const float* z = logits + int64_t(n) * K;  // (K)
      const int y = int(labels[n]);
      int argmax = 0;
      for (int k = 1; k < K; k++)
        if (z[k] > z[argmax]) argmax = k;
      const double zmax = z[argmax];
      double sumexp = 0.0, tz = 0.0;
      for (int k = 0; k < K; k++) {
        e[k] = std::exp(double(z[k]) - zmax);
        sumexp += e[k];
        tz += uniform * z[k];
      }
      tz += (1.0 - s) * z[y];
      // loss = logsumexp(z) - sum_k t_k z_k, t = (1-s) onehot(y) + s/K
      row_loss[n] = zmax + std::log(sumexp) - tz;
      row_hit[n] = argmax == y;
      if (dlogits) {
        float* dz = dlogits + int64_t(n) * K;  // (K)
        const double inv_sum = 1.0 / sumexp;
        for (int k = 0; k < K; k++) dz[k] = float((e[k] * inv_sum - uniform - (k == y ? 1.0 - s : 0.0)) / N);
      }
    }
  };
  const int grain = int(std::max<int64_t>(1, (int64_t(1) << 14) / std::max(1, K)));
  if (N <= grain) {
    rows(0, N);
  } else {
    parallel_for(0, N, grain, rows);
  }
  double total = 0.0;
  int hits = 0;
  for (int n = 0; n < N; n++) total += row_loss[n], hits += row_hit[n];
  if (correct) *correct = hits;
  return float(total / N);
}

}  // namespace dnns::cpu
