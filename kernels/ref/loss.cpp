// Reference softmax cross-entropy with label smoothing, in double.
#include <cmath>
#include <string>

#include "core/error.h"
#include "kernels/ref/ref.h"

namespace dnns::ref {

float softmax_cross_entropy(int N, int K, const float* logits, const float* labels, float smoothing,
                            float* dlogits, int* correct) {
  // logits, dlogits: (N, K)   labels: (N)
  check(N > 0 && K > 0, "softmax_cross_entropy: expected a non-empty batch of logits, got N=" +
                            std::to_string(N) + " K=" + std::to_string(K));
  double total = 0.0;
  int hits = 0;
  for (int n = 0; n < N; n++) {
    const float* z = logits + int64_t(n) * K;  // (K)
    const float label = labels[n];
    check(label >= 0.0f && label < float(K) && label == std::floor(label),
          "softmax_cross_entropy: label of row " + std::to_string(n) + " is " + std::to_string(label) +
              ", expected a class index in [0, " + std::to_string(K) + ")");
    const int y = int(label);
    // log-sum-exp around the row maximum so no exp overflows; the first maximum is the argmax.
    int argmax = 0;
    for (int k = 1; k < K; k++)
      if (z[k] > z[argmax]) argmax = k;
    const double zmax = z[argmax];
    double sumexp = 0.0;
    for (int k = 0; k < K; k++) sumexp += std::exp(z[k] - zmax);
    const double lse = zmax + std::log(sumexp);
    // loss = -sum_k t_k log p_k = lse - sum_k t_k z_k with t = (1-s) onehot(y) + s/K
    const double s = smoothing, uniform = s / K;
    double tz = 0.0;
    for (int k = 0; k < K; k++) tz += (uniform + (k == y ? 1.0 - s : 0.0)) * z[k];
    total += lse - tz;
    if (argmax == y) hits++;
    if (dlogits) {
      float* dz = dlogits + int64_t(n) * K;  // (K)
      for (int k = 0; k < K; k++) {
        const double prob = std::exp(z[k] - lse);
        const double target = uniform + (k == y ? 1.0 - s : 0.0);
        dz[k] = float((prob - target) / N);
      }
    }
  }
  if (correct) *correct = hits;
  return float(total / N);
}

}  // namespace dnns::ref
