// Sparse training of masked conv and linear layers: the kernels behind the training path of
// nn/layers.cpp when a layer's mask is sparse enough (nn/train_execution.h decides).
//
// A masked weight keeps a fixed pattern during an IMP level: the mask's ones. The optimizer
// keeps updating the dense weight tensor (masked entries stay exactly zero), so each step
// gathers the current values at the pattern's positions (sparse_train_gather) and runs
//
//   forward   y  = conv(x, w)                   cpu::sparse_conv2d_forward over the nonzeros
//   dx        dx = conv_transposed(dy, w)       stride 1: the same kernel on dy with the
//                                               transposed, flipped filters (C rows of K*R*S
//                                               columns); strided: per output phase (the
//                                               pixels h = a, w = b mod stride), the taps that
//                                               feed it, as one sparse correlation over dy
//   dw        dw[k,c,r,s] = sum over n, p, q of dy[n,k,p,q] * x[n,c,p*st-pad+r,q*st-pad+s]
//                                               at the pattern's positions only; every other
//                                               entry of dw is 0, as apply_masks_to_grads
//                                               would make it
//
// A linear layer is the 1x1 case: weight (O, I) as K = O rows of C = I columns.
// CPU only. Results equal the dense kernels' within float rounding (tests/test_sparse_train.cpp).
#pragma once
#include <cstdint>
#include <vector>

#include "kernels/params.h"
#include "kernels/sparse.h"

namespace dnns {

// The pattern of a masked (K, C, R, S) weight (linear: (O, I, 1, 1)).
struct SparseTrainPattern {
  int K = 0, C = 0, R = 1, S = 1;
  SparseRows w;                   // (K rows, C*R*S columns): the mask's ones; values set by gather
  SparseRows wt;                  // (C rows, K*R*S columns): w transposed, each filter flipped:
                                  //   wt[c, (k*R + R-1-r)*S + S-1-s] = w[k, c, r, s]
  std::vector<int64_t> wt_from;   // (nnz) wt.value[j] = w.value[wt_from[j]]
  double density() const { return w.density(); }
};

// The pattern of mask (K, C, R, S): an entry is in it when it is not 0. Throws Error on a
// negative size.
SparseTrainPattern sparse_train_pattern(const float* mask, int K, int C, int R, int S);

// Copies the values of the dense weight w (K, C*R*S), numel of them, at the pattern's positions into pat.w and
// pat.wt. Throws Error naming `layer` when a weight outside the pattern is not 0 (the mask
// changed since the pattern was made: plan the training execution again) or a value is not
// finite.
void sparse_train_gather(SparseTrainPattern& pat, const float* w, int64_t numel, const char* layer);

namespace cpu {
// dy (N, K, P, Q), pat.wt (C rows) -> dx (N, C, H, W)
void sparse_conv2d_backward_data(const Conv2dParams& p, const float* dy, const SparseTrainPattern& pat, float* dx);
// x (N, C, H, W), dy (N, K, P, Q) -> dw (K, C, R, S): the gradient at the pattern's positions,
// 0 elsewhere; db (K) the sum of dy per filter, or nullptr
void sparse_conv2d_backward_weights(const Conv2dParams& p, const float* x, const float* dy,
                                    const SparseTrainPattern& pat, float* dw, float* db);
// x (N, I), dy (N, O) -> dw (O, I) at the pattern's positions, 0 elsewhere; db (O) or nullptr
void sparse_linear_backward_weights(int N, const float* x, const float* dy, const SparseTrainPattern& pat,
                                    float* dw, float* db);

// The inner loop, built per instruction set (sparse_train_impl.h):
// acc[j] += sum over t < L of g[t] * X[off[j] + t], for j < nnz; L a multiple of 8.
struct SparseTrainKernels {
  void (*row_dots)(const float* g, int L, const float* X, const int32_t* off, int64_t nnz, float* acc);
};
const SparseTrainKernels& sparse_train_kernels();  // for cpu_isa()
namespace generic { extern const SparseTrainKernels sparse_train; }
#if defined(DNNS_HAVE_X86_KERNELS)
namespace avx2 { extern const SparseTrainKernels sparse_train; }
namespace avx512 { extern const SparseTrainKernels sparse_train; }
#endif
}  // namespace cpu

}  // namespace dnns
