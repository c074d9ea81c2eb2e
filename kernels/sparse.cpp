// The sparse form of a weight and the shape-checked entry points of the sparse kernels.
#include "kernels/sparse.h"

#include <cmath>
#include <limits>
#include <string>

#include "core/error.h"
#include "kernels/cpu/sparse_train.h"
#include "kernels/ops.h"

namespace dnns {

SparseRows sparse_from_dense(const float* w, int rows, int cols) {
  check(rows >= 0 && cols >= 0, [&] {
    return "sparse_from_dense: invalid matrix shape (" + std::to_string(rows) + ", " + std::to_string(cols) + ")";
  });
  SparseRows s;
  s.rows = rows;
  s.cols = cols;
  s.row_start.assign(size_t(rows) + 1, 0);
  // A first pass counts the nonzeros and checks every entry is finite, without branches (it
  // runs on every packed variant's swap in the shifter), so that the form is allocated at its
  // exact size and then written in place.
  const int64_t n = int64_t(rows) * cols;
  int64_t nnz = 0;
  int finite = 1;
  for (int64_t i = 0; i < n; ++i) {
    nnz += w[i] != 0.0f;
    finite &= std::fabs(w[i]) <= std::numeric_limits<float>::max();  // false for NaN and Inf
  }
  if (!finite)
    for (int64_t i = 0; i < n; ++i)
      check(std::isfinite(w[i]), [&] {
        return "sparse_from_dense: entry (" + std::to_string(i / cols) + ", " + std::to_string(i % cols) +
               ") is not finite";
      });
  s.value.resize(size_t(nnz));
  s.col.resize(nnz);
  // Each row's nonzeros gathered without branches (at 30-70% density a branch per entry
  // mispredicts every few entries) into a row of scratch, then copied into place.
  // (cols) a row's nonzero columns and values first (entry m is written at column j >= m)
  std::vector<int32_t> row_cols(static_cast<size_t>(cols));
  std::vector<float> row_vals(static_cast<size_t>(cols));
  int64_t k = 0;
  for (int i = 0; i < rows; ++i) {
    const float* row = w + int64_t(i) * cols;  // (cols)
    int m = 0;
    for (int j = 0; j < cols; ++j) {
      row_cols[size_t(m)] = j;
      row_vals[size_t(m)] = row[j];
      m += row[j] != 0.0f;
    }
    for (int t = 0; t < m; ++t, ++k) {
      s.col.set(k, row_cols[size_t(t)]);  // widens all columns once, at the first past 65535
      s.value[size_t(k)] = row_vals[size_t(t)];
    }
    s.row_start[size_t(i) + 1] = k;
  }
  s.col.shrink_to_fit();  // a widening reserved the wide columns at the narrow count
  return s;
}

SparseRows sparse_from_dense(const Tensor& w) {
  check(w.is_cpu(), "sparse_from_dense: the weight must be on the CPU");
  check(w.ndim() == 2 || w.ndim() == 4,
        [&] { return "sparse_from_dense: expected a (K, C, R, S) or (O, I) weight, got " + shape_str(w.shape()); });
  const int64_t rows = w.dim(0), cols = rows ? w.numel() / rows : 0;
  check(rows < INT32_MAX && cols < INT32_MAX,
        [&] { return "sparse_from_dense: weight " + shape_str(w.shape()) + " is too large"; });
  return sparse_from_dense(w.numel() ? w.data() : nullptr, int(rows), int(cols));
}

std::vector<float> sparse_to_dense(const SparseRows& s) {
  std::vector<float> w(size_t(s.rows) * s.cols, 0.0f);  // (rows, cols)
  for (int i = 0; i < s.rows; ++i)
    for (int64_t j = s.row_start[i]; j < s.row_start[i + 1]; ++j) w[size_t(i) * s.cols + s.col[j]] = s.value[j];
  return w;
}

namespace ops {

void sparse_conv2d_forward(const Conv2dParams& p, const Tensor& x, const SparseRows& w, const Tensor& b,
                           bool relu, Tensor& y, const cpu::SparseConvRuns* runs) {
  check_conv_params(p, "sparse_conv2d_forward");
  check_shape(x.shape(), {p.N, p.C, p.H, p.W}, "sparse_conv2d_forward input");
  check(w.rows == p.K && w.cols == p.C * p.R * p.S && int64_t(w.row_start.size()) == int64_t(w.rows) + 1, [&] {
    return "sparse_conv2d_forward: sparse weight has " + std::to_string(w.rows) + " rows of " +
           std::to_string(w.cols) + " columns, the conv needs " + std::to_string(p.K) + " of " +
           std::to_string(p.C * p.R * p.S);
  });
  const bool has_bias = b.defined() && b.numel();
  if (has_bias) check_shape(b.shape(), {p.K}, "sparse_conv2d_forward bias");
  check_shape(y.shape(), {p.N, p.K, p.P(), p.Q()}, "sparse_conv2d_forward output");
  check(x.is_cpu() && y.is_cpu() && (!has_bias || b.is_cpu()), "sparse_conv2d_forward: CPU tensors only");
  OpTimer op_timer("sparse_conv2d_forward", Device::CPU);
  if (cpu_backend() == CpuBackend::Reference)
    ref::sparse_conv2d_forward(p, x.data(), w, has_bias ? b.data() : nullptr, relu, y.data());
  else
    cpu::sparse_conv2d_forward(p, x.data(), w, runs, has_bias ? b.data() : nullptr, relu, y.data());
}

void sparse_linear_forward(const Tensor& x, const SparseRows& w, const Tensor& b, bool relu, Tensor& y) {
  check(x.ndim() == 2, "sparse_linear_forward: expected input (N, I), got " + shape_str(x.shape()));
  const int64_t N = x.dim(0);
  check(w.rows >= 0 && x.dim(1) == w.cols && int64_t(w.row_start.size()) == int64_t(w.rows) + 1, [&] {
    return "sparse_linear_forward: input " + shape_str(x.shape()) + " does not match a sparse weight of " +
           std::to_string(w.rows) + " rows of " + std::to_string(w.cols) + " columns";
  });
  const bool has_bias = b.defined() && b.numel();
  if (has_bias) check_shape(b.shape(), {w.rows}, "sparse_linear_forward bias");
  check_shape(y.shape(), {N, w.rows}, "sparse_linear_forward output");
  check(x.is_cpu() && y.is_cpu() && (!has_bias || b.is_cpu()), "sparse_linear_forward: CPU tensors only");
  if (N == 0 || w.rows == 0) return;
  OpTimer op_timer("sparse_linear_forward", Device::CPU);
  if (cpu_backend() == CpuBackend::Reference)
    ref::sparse_linear_forward(int(N), x.data(), w, has_bias ? b.data() : nullptr, relu, y.data());
  else
    cpu::sparse_linear_forward(int(N), x.data(), w, has_bias ? b.data() : nullptr, relu, y.data());
}

namespace {

void check_sparse_train(const SparseTrainPattern& w, int K, int C, int R, int S, const char* op) {
  check(w.K == K && w.C == C && w.R == R && w.S == S, [&] {
    return std::string(op) + ": the sparse-training pattern is of a (" + std::to_string(w.K) + ", " +
           std::to_string(w.C) + ", " + std::to_string(w.R) + ", " + std::to_string(w.S) + ") weight, the layer's is (" +
           std::to_string(K) + ", " + std::to_string(C) + ", " + std::to_string(R) + ", " + std::to_string(S) + ")";
  });
  check(cpu_backend() == CpuBackend::Optimized,
        std::string(op) + ": no reference version; train dense under the reference backend");
}

}  // namespace

void sparse_conv2d_backward_weights(const Conv2dParams& p, const Tensor& x, const Tensor& dy,
                                    const SparseTrainPattern& w, Tensor& dw, Tensor& db) {
  const char* op = "sparse_conv2d_backward_weights";
  check_conv_params(p, op);
  check_sparse_train(w, p.K, p.C, p.R, p.S, op);
  check_shape(x.shape(), {p.N, p.C, p.H, p.W}, "sparse_conv2d_backward_weights input");
  check_shape(dy.shape(), {p.N, p.K, p.P(), p.Q()}, "sparse_conv2d_backward_weights output gradient");
  check_shape(dw.shape(), {p.K, p.C, p.R, p.S}, "sparse_conv2d_backward_weights weight gradient");
  const bool has_db = db.defined() && db.numel();
  if (has_db) check_shape(db.shape(), {p.K}, "sparse_conv2d_backward_weights bias gradient");
  check(x.is_cpu() && dy.is_cpu() && dw.is_cpu() && (!has_db || db.is_cpu()), std::string(op) + ": CPU tensors only");
  OpTimer op_timer(op, Device::CPU);
  cpu::sparse_conv2d_backward_weights(p, x.data(), dy.data(), w, dw.data(), has_db ? db.data() : nullptr);
}

void sparse_conv2d_backward_data(const Conv2dParams& p, const Tensor& dy, const SparseTrainPattern& w, Tensor& dx) {
  const char* op = "sparse_conv2d_backward_data";
  check_conv_params(p, op);
  check_sparse_train(w, p.K, p.C, p.R, p.S, op);
  check_shape(dy.shape(), {p.N, p.K, p.P(), p.Q()}, "sparse_conv2d_backward_data output gradient");
  check_shape(dx.shape(), {p.N, p.C, p.H, p.W}, "sparse_conv2d_backward_data input gradient");
  check(dy.is_cpu() && dx.is_cpu(), std::string(op) + ": CPU tensors only");
  OpTimer op_timer(op, Device::CPU);
  cpu::sparse_conv2d_backward_data(p, dy.data(), w, dx.data());
}

void sparse_linear_backward_weights(const Tensor& x, const Tensor& dy, const SparseTrainPattern& w, Tensor& dw,
                                    Tensor& db) {
  const char* op = "sparse_linear_backward_weights";
  check(x.ndim() == 2 && dy.ndim() == 2, std::string(op) + ": expected 2-D input and output gradient");
  const int64_t N = x.dim(0), I = x.dim(1), O = dy.dim(1);
  check_sparse_train(w, int(O), int(I), 1, 1, op);
  check_shape(dy.shape(), {N, O}, "sparse_linear_backward_weights output gradient");
  check_shape(dw.shape(), {O, I}, "sparse_linear_backward_weights weight gradient");
  const bool has_db = db.defined() && db.numel();
  if (has_db) check_shape(db.shape(), {O}, "sparse_linear_backward_weights bias gradient");
  check(x.is_cpu() && dy.is_cpu() && dw.is_cpu() && (!has_db || db.is_cpu()), std::string(op) + ": CPU tensors only");
  OpTimer op_timer(op, Device::CPU);
  cpu::sparse_linear_backward_weights(int(N), x.data(), dy.data(), w, dw.data(), has_db ? db.data() : nullptr);
}

}  // namespace ops
}  // namespace dnns
