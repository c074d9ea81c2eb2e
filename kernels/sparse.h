// Sparse execution of pruned layers: a conv or linear weight kept as its nonzeros only
// (compressed sparse rows, one row per output channel), run against dense activations.
// Compaction removes the filters and channels that died whole; these kernels skip the zeros
// that remain inside the surviving filters. Inference only (no backward), CPU only.
//
//   conv:   y[n,k,p,q] = b[k] + sum over the nonzeros (c, r, s) of row k of
//                        w[k,c,r,s] * x[n, c, p*stride - pad + r, q*stride - pad + s]
//           (x read as zero in the padding), then max(0, .) when `relu`
//   linear: y[n,o]     = b[o] + sum over the nonzeros i of row o of w[o,i] * x[n,i], then relu
//
// Two backends with one contract, as for the dense ops: ref:: (plain loop nests, double
// accumulation: the ground truth) and cpu:: (vectorised over output pixels, oneTBB tasks).
// The ops:: entry points check shapes and pick ref or cpu by set_cpu_backend.
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"
#include "kernels/params.h"

namespace dnns {

struct SparseTrainPattern;  // kernels/cpu/sparse_train.h

// The column of each nonzero of a SparseRows, in 16 bits while every column stored is below
// 65536 (any conv of up to 7281 input channels at 3x3, a linear layer of up to 65536 inputs),
// else 32: a sparse form's memory is then 6 bytes a nonzero with its value, not 8. Storing a
// column of 65536 or more widens all of them once (the values are unchanged).
class SparseColumns {
 public:
  int64_t size() const { return wide_ ? int64_t(w32_.size()) : int64_t(w16_.size()); }
  int32_t operator[](int64_t j) const { return wide_ ? w32_[size_t(j)] : int32_t(w16_[size_t(j)]); }
  bool wide() const { return wide_; }
  const uint16_t* narrow_data() const { return wide_ ? nullptr : w16_.data(); }  // (size) or nullptr when wide
  const int32_t* wide_data() const { return wide_ ? w32_.data() : nullptr; }     // (size) or nullptr when narrow
  const void* data() const { return wide_ ? static_cast<const void*>(w32_.data()) : w16_.data(); }
  int64_t bytes() const { return size() * (wide_ ? 4 : 2); }
  void push_back(int32_t c) {
    if (!wide_ && uint32_t(c) > 0xffff) widen(c);
    if (wide_) w32_.push_back(c);
    else w16_.push_back(uint16_t(c));
  }
  void resize(int64_t n) {  // new entries 0
    if (wide_) w32_.resize(size_t(n));
    else w16_.resize(size_t(n));
  }
  void reserve(int64_t n) {
    if (wide_) w32_.reserve(size_t(n));
    else w16_.reserve(size_t(n));
  }
  void shrink_to_fit() {  // capacity = size, so that bytes() is what is held
    w16_.shrink_to_fit();
    w32_.shrink_to_fit();
  }
  void set(int64_t j, int32_t c) {
    if (!wide_ && uint32_t(c) > 0xffff) widen(c);
    if (wide_) w32_[size_t(j)] = c;
    else w16_[size_t(j)] = uint16_t(c);
  }

 private:
  void widen(int32_t c) {
    check(c >= 0, [&] { return "SparseColumns: negative column " + std::to_string(c); });
    std::vector<int32_t> w;
    w.reserve(std::max(w16_.capacity(), w16_.size() + 1));
    w.assign(w16_.begin(), w16_.end());
    w32_.swap(w);
    std::vector<uint16_t>().swap(w16_);
    wide_ = true;
  }
  bool wide_ = false;
  std::vector<uint16_t> w16_;
  std::vector<int32_t> w32_;
};

// A (rows, cols) matrix as compressed sparse rows. For a conv weight (K, C, R, S): rows = K,
// cols = C*R*S, the column of w[k,c,r,s] is (c*R + r)*S + s. Within a row the columns ascend.
struct SparseRows {
  int rows = 0, cols = 0;
  std::vector<int64_t> row_start;  // (rows + 1) row i's nonzeros are [row_start[i], row_start[i+1])
  SparseColumns col;               // (nnz) column of each nonzero
  std::vector<float> value;        // (nnz)
  int64_t nnz() const { return row_start.empty() ? 0 : row_start.back(); }
  double density() const { return rows && cols ? double(nnz()) / (double(rows) * cols) : 0.0; }
  int64_t bytes() const {  // what the form occupies: values, columns and row starts
    return nnz() * int64_t(sizeof(float)) + col.bytes() + int64_t(row_start.size() * sizeof(int64_t));
  }
};

// The nonzeros of a dense (rows, cols) row-major matrix (a masked weight: what the mask zeroed
// is exactly 0). -0.0 counts as zero. Throws Error on negative sizes or a NaN/Inf entry (a
// weight that is not finite would poison every output it reaches, dense or sparse).
SparseRows sparse_from_dense(const float* w, int rows, int cols);
SparseRows sparse_from_dense(const Tensor& w);  // (K, C, R, S) or (O, I), on the CPU
// The dense (rows, cols) matrix back (for tests and checks).
std::vector<float> sparse_to_dense(const SparseRows& s);

namespace ref {
// x (N,C,H,W), weights (K, C*R*S), b (K) or nullptr -> y (N,K,P,Q)
void sparse_conv2d_forward(const Conv2dParams& p, const float* x, const SparseRows& w, const float* b,
                           bool relu, float* y);
// x (N,I), weights (O, I), b (O) or nullptr -> y (N,O)
void sparse_linear_forward(int N, const float* x, const SparseRows& w, const float* b, bool relu, float* y);
}  // namespace ref

namespace cpu {
void sparse_conv2d_forward(const Conv2dParams& p, const float* x, const SparseRows& w, const float* b,
                           bool relu, float* y);
// A conv's sparse weight prepared for one input size (C, H, W; any batch): the kernel's layout
// of an image (which phase planes the nonzeros read), computed once instead of on every call
// (the offsets of the C*R*S columns, through which the kernel finds each nonzero's run, are
// made per call: a few KB, not kept beside the nonzeros). Made
// for the weight object `w` (its columns' storage) and read by any number of concurrent calls;
// a call given runs made for another weight or input size ignores them and makes its own.
struct SparseConvRuns;
std::shared_ptr<const SparseConvRuns> prepare_sparse_conv2d(const Conv2dParams& p, const SparseRows& w);
int64_t sparse_conv_runs_bytes(const SparseConvRuns& r);  // what they hold
void sparse_conv2d_forward(const Conv2dParams& p, const float* x, const SparseRows& w, const SparseConvRuns* runs,
                           const float* b, bool relu, float* y);
void sparse_linear_forward(int N, const float* x, const SparseRows& w, const float* b, bool relu, float* y);
// What one call of the kernels above allocates (on the paths it takes now, with the current
// thread count): floats of the calling worker's scratch slots 0 and 1 (kernels/cpu/gemm_util.h
// thread_scratch, shared with the dense convs) and bytes allocated for the call alone.
struct SparseScratch {
  int64_t slot0 = 0, slot1 = 0, call_bytes = 0;
};
SparseScratch sparse_conv2d_forward_scratch(const Conv2dParams& p, const SparseRows& w);
SparseScratch sparse_linear_forward_scratch(int N, const SparseRows& w);
}  // namespace cpu

namespace ops {
// Shape-checked entry points (CPU tensors only): x (N,C,H,W) and w of p.K rows and
// p.C*p.R*p.S columns; b (K) or empty; y (N,K,P,Q) allocated by the caller.
// `runs` (or nullptr): cpu::prepare_sparse_conv2d's, used by the cpu backend when they match.
void sparse_conv2d_forward(const Conv2dParams& p, const Tensor& x, const SparseRows& w, const Tensor& b,
                           bool relu, Tensor& y, const cpu::SparseConvRuns* runs = nullptr);
// x (N,I), w (O rows, I columns), b (O) or empty -> y (N,O)
void sparse_linear_forward(const Tensor& x, const SparseRows& w, const Tensor& b, bool relu, Tensor& y);

// The gradients of a layer that trains sparse (kernels/cpu/sparse_train.h), at the pattern's
// positions only (0 elsewhere); db (K or O) or empty. CPU tensors and the optimized backend
// only: there is no reference version (the tests compare them with the dense reference ops),
// so plan_training_execution trains every layer dense under the reference backend.
// (The input gradient of a sparse linear layer is sparse_linear_forward with pattern.wt.)
void sparse_conv2d_backward_weights(const Conv2dParams& p, const Tensor& x, const Tensor& dy,
                                    const SparseTrainPattern& w, Tensor& dw, Tensor& db);
void sparse_conv2d_backward_data(const Conv2dParams& p, const Tensor& dy, const SparseTrainPattern& w, Tensor& dx);
void sparse_linear_backward_weights(const Tensor& x, const Tensor& dy, const SparseTrainPattern& w, Tensor& dw,
                                    Tensor& db);
}  // namespace ops

}  // namespace dnns
