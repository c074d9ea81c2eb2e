// Sparse execution (kernels/sparse.h, nn/execution.h): the sparse kernels against the dense
// reference on odd shapes and masks from 50% to 99.9% sparsity (empty filters, a layer with
// no nonzero at all), and whole models run sparse against the same models run dense.
//
// Tolerance: max|got - want| <= 1e-4 * max(1, max|want|), as for the dense kernels (float
// sums in another order against double-accumulated ground truth).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/threading.h"
#include "kernels/ops.h"
#include "kernels/ref/ref.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/rows.h"
#include "kernels/sparse.h"
#include "tests/test_util.h"

using namespace dnns;
using dnns::testing::check_close;
using dnns::testing::randn;
using dnns::testing::conv;
using dnns::testing::conv_str;

namespace {

// A (rows, cols) standard-normal weight under a random_mask of `density`; rows listed in
// `empty` are all zero.
std::vector<float> masked_weight(Rng& rng, int rows, int cols, double density, const std::vector<int>& empty) {
  std::vector<float> w = testing::random_mask(rng, rows, cols, density, empty);
  for (float& v : w)
    if (v != 0.0f) v = rng.normal();
  return w;
}

// Dense reference conv (+ optional ReLU) of the same weight: what sparse execution must equal.
std::vector<float> dense_conv(const Conv2dParams& p, const std::vector<float>& x, const std::vector<float>& w,
                              const float* b, bool relu) {
  std::vector<float> y((size_t)p.N * p.K * p.P() * p.Q());
  ref::conv2d_forward(p, x.data(), w.data(), b, y.data());
  if (relu)
    for (float& v : y) v = std::max(v, 0.0f);
  return y;
}

void check_sparse_conv(const Conv2dParams& p, double density, const std::vector<int>& empty, bool bias, bool relu,
                       uint64_t seed) {
  Rng rng(seed);
  const std::vector<float> x = randn(rng, (int64_t)p.N * p.C * p.H * p.W);
  const std::vector<float> w = masked_weight(rng, p.K, p.C * p.R * p.S, density, empty);
  const std::vector<float> b = randn(rng, p.K);
  const SparseRows s = sparse_from_dense(w.data(), p.K, p.C * p.R * p.S);
  for (int k : empty) CHECK(s.row_start[k + 1] == s.row_start[k]);
  const std::vector<float> want = dense_conv(p, x, w, bias ? b.data() : nullptr, relu);
  const size_t ny = want.size();
  std::vector<float> got_ref(ny, std::numeric_limits<float>::quiet_NaN()), got_cpu = got_ref;
  ref::sparse_conv2d_forward(p, x.data(), s, bias ? b.data() : nullptr, relu, got_ref.data());
  cpu::sparse_conv2d_forward(p, x.data(), s, bias ? b.data() : nullptr, relu, got_cpu.data());
  const std::string what = conv_str(p) + " density=" + std::to_string(density) + " nnz=" +
                           std::to_string(s.nnz()) + (bias ? " bias" : "") + (relu ? " relu" : "");
  check_close(got_ref, want, "ref sparse " + what);
  check_close(got_cpu, want, "cpu sparse " + what);
}

}  // namespace

TEST_CASE("sparse_from_dense keeps exactly the nonzeros and round-trips") {
  Rng rng(3);
  std::vector<float> w = masked_weight(rng, 9, 13, 0.3, {0, 4});
  w[2 * 13 + 5] = -0.0f;  // a negative zero is a zero
  const SparseRows s = sparse_from_dense(w.data(), 9, 13);
  int64_t nonzero = 0;
  for (float v : w) nonzero += v != 0.0f;
  CHECK(s.nnz() == nonzero);
  CHECK(s.row_start.size() == 10);
  CHECK(sparse_to_dense(s) == w);
  for (int i = 0; i < s.rows; ++i)
    for (int64_t j = s.row_start[i] + 1; j < s.row_start[i + 1]; ++j) CHECK(s.col[j] > s.col[j - 1]);
  CHECK(std::fabs(s.density() - double(nonzero) / (9 * 13)) < 1e-12);
  // The error names the first entry that is not finite, NaN or an infinity.
  w[2 * 13 + 6] = -std::numeric_limits<float>::infinity();
  w[5 * 13 + 1] = std::numeric_limits<float>::quiet_NaN();
  CHECK(testing::contains(testing::error_of([&] { sparse_from_dense(w.data(), 9, 13); }), "entry (2, 6) is not finite"));
  w[7] = std::numeric_limits<float>::quiet_NaN();
  CHECK(testing::contains(testing::error_of([&] { sparse_from_dense(w.data(), 9, 13); }), "entry (0, 7) is not finite"));
}

TEST_CASE("sparse conv equals dense conv on odd shapes and sparsities from 50% to 99.9%") {
  const testing::ScopedThreads threads(2);
  // N C H W K R S stride pad
  const Conv2dParams shapes[] = {
      conv(2, 37, 7, 7, 54, 3, 3, 2, 1),  // odd channels, strided, padded
      conv(3, 37, 7, 7, 54, 1, 1, 1, 0),  // 1x1
      conv(1, 16, 32, 32, 16, 3, 3, 1, 1),  // a ResNet-20 stage-1 conv at batch 1
      conv(5, 8, 9, 11, 12, 3, 3, 1, 1),  // non-square
      conv(2, 6, 8, 8, 10, 1, 1, 2, 0),   // 1x1 strided (a ResNet shortcut)
      conv(2, 5, 10, 9, 7, 5, 3, 3, 2),   // R != S, stride 3, pad 2
      conv(1, 3, 4, 4, 9, 3, 3, 1, 0),    // no padding, tiny output
      conv(17, 4, 3, 3, 5, 3, 3, 1, 1),   // many tiny images
  };
  const double densities[] = {0.5, 0.2, 0.1, 0.05, 0.01, 0.001};
  uint64_t seed = 100;
  for (const Conv2dParams& p : shapes)
    for (double d : densities) {
      const bool bias = seed % 2 == 0, relu = seed % 3 != 0;
      check_sparse_conv(p, d, {0, p.K - 1, p.K / 2}, bias, relu, seed++);
    }
}

// The inner loop alone (kernels/cpu/rows.h sparse_grid, and sparse_grid_cols reading the same
// offsets through 16-bit columns and a table), on every ISA path this CPU has: every run length
// from 1 to 40 vectors, so every pass size (1 to 12 vectors) and every split of a run into
// balanced passes is taken, against the sum written out.
TEST_CASE("sparse_grid on every ISA path: every run length and pass split") {
  const testing::ScopedKernelChoice restore;
  Rng rng(41);
  const int nnz = 13, span = 700, columns = 40;
  const std::vector<float> X = randn(rng, span + 40 * 8 + 64);
  std::vector<float> val = randn(rng, nnz);
  std::vector<int32_t> tab(columns), off(nnz);  // tab (columns) a column's offset; off (nnz) a nonzero's
  std::vector<uint16_t> col(nnz);
  for (int c = 0; c < columns; ++c) tab[size_t(c)] = int32_t(rng.uniform() * span);
  for (int j = 0; j < nnz; ++j) {
    col[size_t(j)] = uint16_t((j * 7 + 3) % columns);
    off[size_t(j)] = tab[col[size_t(j)]];
  }
  for (int isa = (int)cpu::best_cpu_isa(); isa >= 0; --isa) {
    cpu::set_cpu_isa((cpu::Isa)isa);
    const auto& rk = cpu::row_kernels();
    for (int L = 8; L <= 40 * 8; L += 8)
      for (bool relu : {false, true}) {
        std::vector<float> want(static_cast<size_t>(L));
        for (int t = 0; t < L; ++t) {
          double acc = 0.25;
          for (int j = 0; j < nnz; ++j) acc += double(val[size_t(j)]) * X[size_t(off[size_t(j)] + t)];
          want[size_t(t)] = relu ? std::max(float(acc), 0.0f) : float(acc);
        }
        for (bool through_columns : {false, true}) {
          std::vector<float> got(static_cast<size_t>(L) + 8, NAN);
          if (through_columns)
            rk.sparse_grid_cols(val.data(), col.data(), tab.data(), nnz, X.data(), L, 0.25f, relu, got.data());
          else
            rk.sparse_grid(val.data(), off.data(), nnz, X.data(), L, 0.25f, relu, got.data());
          INFO("isa " << cpu::isa_name((cpu::Isa)isa) << " L=" << L << (relu ? " relu" : "")
                      << (through_columns ? " sparse_grid_cols" : " sparse_grid"));
          CHECK(std::isnan(got[size_t(L)]));  // nothing written past the run
          got.resize(size_t(L));
          check_close(got, want, "sparse_grid");
        }
      }
  }
}

// Columns are kept in 16 bits until one of 65536 or more arrives; then all of them widen, and
// the kernels (which then read offsets made per call) still equal the reference: a linear layer
// of 70,000 inputs and a conv of 7,300 channels (65,700 columns).
TEST_CASE("sparse columns widen past 65535, and the wide form runs") {
  SparseColumns c;
  for (int v : {0, 7, 65535}) c.push_back(v);
  CHECK(!c.wide());
  CHECK(c.bytes() == 3 * 2);
  c.push_back(65536);
  CHECK(c.wide());
  CHECK(c.bytes() == 4 * 4);
  CHECK((c[0] == 0 && c[1] == 7 && c[2] == 65535 && c[3] == 65536));
  SparseColumns d;
  d.resize(2);
  d.set(1, 65535);
  CHECK(!d.wide());
  d.set(1, 70000);
  CHECK((d.wide() && d[0] == 0 && d[1] == 70000));
  d.resize(3);
  CHECK((d.wide() && d.size() == 3 && d[2] == 0 && d.bytes() == 3 * 4));
  CHECK(testing::contains(testing::error_of([&] { SparseColumns().push_back(-1); }), "negative column"));

  const testing::ScopedThreads threads(2);
  Rng rng(77);
  {
    const int N = 3, I = 70000, O = 5;
    const std::vector<float> w = masked_weight(rng, O, I, 0.002, {2});
    const SparseRows s = sparse_from_dense(w.data(), O, I);
    REQUIRE(s.col.wide());
    CHECK(sparse_to_dense(s) == w);  // the wide form holds the right columns
    const std::vector<float> x = randn(rng, size_t(N) * I), b = randn(rng, O);
    std::vector<float> want(size_t(N) * O), got(size_t(N) * O);
    ref::sparse_linear_forward(N, x.data(), s, b.data(), false, want.data());
    cpu::sparse_linear_forward(N, x.data(), s, b.data(), false, got.data());
    check_close(got, want, "wide sparse linear");
    // the call's buffers: x transposed (I x N + a run of 8), the I column offsets, and the
    // wide form's offsets of its nonzeros
    CHECK(cpu::sparse_linear_forward_scratch(N, s).call_bytes == (int64_t(I) * N + 8) * 4 + int64_t(I) * 4 + s.nnz() * 4);
  }
  {
    const Conv2dParams p = conv(2, 7300, 3, 3, 4, 3, 3, 1, 1);
    const std::vector<float> w = masked_weight(rng, p.K, p.C * 9, 0.05, {1});
    const SparseRows s = sparse_from_dense(w.data(), p.K, p.C * 9);
    REQUIRE(s.col.wide());
    CHECK(sparse_to_dense(s) == w);
    const std::vector<float> x = randn(rng, size_t(p.N) * p.C * p.H * p.W), b = randn(rng, p.K);
    const size_t out = size_t(p.N) * p.K * p.P() * p.Q();
    std::vector<float> want(out), got(out), prepared(out);
    ref::sparse_conv2d_forward(p, x.data(), s, b.data(), true, want.data());
    cpu::sparse_conv2d_forward(p, x.data(), s, b.data(), true, got.data());
    const auto runs = cpu::prepare_sparse_conv2d(p, s);
    cpu::sparse_conv2d_forward(p, x.data(), s, runs.get(), b.data(), true, prepared.data());
    check_close(got, want, "wide sparse conv");
    check_close(prepared, want, "wide sparse conv, prepared");
    // C*R*S offsets on the heap (above 4096 columns), the nonzeros' offsets, the column marks,
    // and (2 images, fewer than 2 per thread) both images' planes, 7300 of 5 x 5, plus a run
    // of 16 and 64 floats of slack
    const int64_t CRS = int64_t(p.C) * 9;
    CHECK(cpu::sparse_conv2d_forward_scratch(p, s).call_bytes ==
          CRS * 4 + s.nnz() * 4 + CRS + (2 * 7300 * 25 + 16 + 64) * 4);
  }
  // Narrow columns past 4096 (the column offsets on the heap) and past 32767 (the top bit of
  // a 16-bit column): 4000 channels, 36,000 columns.
  {
    const Conv2dParams p = conv(1, 4000, 4, 4, 6, 3, 3, 1, 1);
    const std::vector<float> w = masked_weight(rng, p.K, p.C * 9, 0.05, {2});
    const SparseRows s = sparse_from_dense(w.data(), p.K, p.C * 9);
    REQUIRE(!s.col.wide());
    bool high = false;
    for (int64_t j = 0; j < s.nnz(); ++j) high |= s.col[j] >= 32768;
    REQUIRE(high);
    const std::vector<float> x = randn(rng, size_t(p.C) * p.H * p.W), b = randn(rng, p.K);
    std::vector<float> want(size_t(p.K) * p.P() * p.Q()), got(want.size());
    ref::sparse_conv2d_forward(p, x.data(), s, b.data(), false, want.data());
    cpu::sparse_conv2d_forward(p, x.data(), s, b.data(), false, got.data());
    check_close(got, want, "narrow sparse conv of 36,000 columns");
  }
  {  // a narrow conv of few columns: the offsets on the stack, only the column marks counted
    const Conv2dParams p = conv(1, 5, 6, 6, 3, 3, 3, 1, 1);
    const std::vector<float> w = masked_weight(rng, p.K, p.C * 9, 0.5, {});
    const cpu::SparseScratch sc = cpu::sparse_conv2d_forward_scratch(p, sparse_from_dense(w.data(), p.K, p.C * 9));
    CHECK(sc.slot1 > 0);  // one image on the calling thread: the planes in its scratch
    CHECK(sc.call_bytes == 45);
  }
}

// The convolution on every ISA path and through each of its schedules: one call on the calling
// thread (small), one task per image (many images), and few images sharing their phase planes
// (built by the calling thread when small, by tasks when not); grids of 8x8, 16x16 and 32x32
// (10, 36 and 136 vectors a run), strides 1 and 2, 1x1, masks from 50% to 99.9% sparsity with
// empty filters.
TEST_CASE("sparse conv on every ISA path and schedule equals dense conv") {
  const testing::ScopedKernelChoice restore;
  const testing::ScopedThreads threads(2);
  const Conv2dParams shapes[] = {
      conv(1, 47, 8, 8, 17, 3, 3, 1, 1),    // batch 1, 8x8: planes by the caller
      conv(6, 22, 8, 8, 19, 3, 3, 1, 1),    // many images, 8x8
      conv(1, 29, 16, 16, 24, 3, 3, 1, 1),  // batch 1, 16x16
      conv(5, 16, 16, 16, 16, 3, 3, 1, 1),  // one task per image
      conv(1, 16, 32, 32, 13, 3, 3, 1, 1),  // batch 1, 32x32: planes by tasks
      conv(3, 16, 32, 32, 11, 3, 3, 1, 1),  // few images sharing planes
      conv(2, 16, 32, 32, 29, 3, 3, 2, 1),  // stride 2 (a ResNet downsampling conv)
      conv(3, 29, 16, 16, 47, 1, 1, 2, 0),  // 1x1 stride 2 (a shortcut)
      conv(1, 9, 13, 11, 7, 3, 3, 1, 1),    // odd sizes, batch 1
  };
  uint64_t seed = 500;
  for (int isa = (int)cpu::best_cpu_isa(); isa >= 0; --isa) {
    cpu::set_cpu_isa((cpu::Isa)isa);
    INFO("isa " << cpu::isa_name((cpu::Isa)isa));
    for (const Conv2dParams& p : shapes)
      for (double d : {0.5, 0.3, 0.05, 0.001}) {
        const bool bias = seed % 2 == 0, relu = seed % 3 != 0;
        check_sparse_conv(p, d, {0, p.K / 3}, bias, relu, seed++);
      }
  }
}

// Runs prepared once (what a plan keeps) give the same bits as runs made per call; runs made
// for another input size or another weight object are ignored, not misread.
TEST_CASE("prepared sparse conv runs: same result, ignored when made for another shape or weight") {
  const testing::ScopedThreads threads(2);
  Rng rng(77);
  for (const Conv2dParams& p : {conv(2, 11, 9, 9, 7, 3, 3, 1, 1), conv(1, 6, 12, 10, 5, 3, 3, 2, 1)}) {
    CAPTURE(conv_str(p));
    const std::vector<float> x = randn(rng, int64_t(p.N) * p.C * p.H * p.W), b = randn(rng, p.K);
    const std::vector<float> w = masked_weight(rng, p.K, p.C * p.R * p.S, 0.3, {1});
    const SparseRows s = sparse_from_dense(w.data(), p.K, p.C * p.R * p.S);
    const size_t ny = size_t(p.N) * p.K * p.P() * p.Q();
    std::vector<float> plain(ny), prepared(ny), other(ny);
    cpu::sparse_conv2d_forward(p, x.data(), s, b.data(), true, plain.data());
    const auto runs = cpu::prepare_sparse_conv2d(p, s);
    cpu::sparse_conv2d_forward(p, x.data(), s, runs.get(), b.data(), true, prepared.data());
    CHECK(prepared == plain);
    check_close(prepared, dense_conv(p, x, w, b.data(), true), "prepared runs");
    Conv2dParams wider = p;  // runs of another input size: every offset would be off
    wider.W += 3;
    const auto wrong_size = cpu::prepare_sparse_conv2d(wider, s);
    cpu::sparse_conv2d_forward(p, x.data(), s, wrong_size.get(), b.data(), true, other.data());
    CHECK(other == plain);
    const SparseRows copy = s;  // the same nonzeros in another object: runs of `s` are not its
    const std::vector<float> w2 = masked_weight(rng, p.K, p.C * p.R * p.S, 0.3, {});
    const SparseRows s2 = sparse_from_dense(w2.data(), p.K, p.C * p.R * p.S);
    std::fill(other.begin(), other.end(), NAN);
    cpu::sparse_conv2d_forward(p, x.data(), s2, runs.get(), b.data(), true, other.data());
    check_close(other, dense_conv(p, x, w2, b.data(), true), "another weight given the runs of the first");
    cpu::sparse_conv2d_forward(p, x.data(), copy, runs.get(), b.data(), true, other.data());
    CHECK(other == plain);
  }
  // The layout depends on which taps the nonzeros use: a stride-2 weight on even taps only
  // builds one phase of four. Runs made for it, given another weight object with as many
  // nonzeros on odd taps too, must be ignored (the identity check), not read with that layout.
  const Conv2dParams p = conv(1, 6, 12, 10, 5, 3, 3, 2, 1);
  const std::vector<float> x = randn(rng, int64_t(p.C) * p.H * p.W), b = randn(rng, p.K);
  std::vector<float> even = masked_weight(rng, p.K, p.C * 9, 0.5, {});
  for (int64_t i = 0; i < int64_t(even.size()); ++i)
    if (i % 9 % 2 == 1 || i % 9 / 3 % 2 == 1) even[size_t(i)] = 0.0f;  // r or s odd
  std::vector<float> odd = even;  // the (0, 0) taps moved to (1, 1): the same nonzero count
  int moved = 0;
  for (int64_t i = 0; i < int64_t(odd.size()); i += 9)
    if (odd[size_t(i)] != 0.0f) std::swap(odd[size_t(i)], odd[size_t(i + 4)]), ++moved;
  REQUIRE(moved > 0);
  const SparseRows se = sparse_from_dense(even.data(), p.K, p.C * 9), so = sparse_from_dense(odd.data(), p.K, p.C * 9);
  REQUIRE(se.nnz() == so.nnz());
  const auto runs = cpu::prepare_sparse_conv2d(p, se);
  std::vector<float> got(size_t(p.K) * p.P() * p.Q(), NAN);
  cpu::sparse_conv2d_forward(p, x.data(), so, runs.get(), b.data(), false, got.data());
  check_close(got, dense_conv(p, x, odd, b.data(), false), "odd taps given the runs of an even-tap weight");
}

TEST_CASE("sparse conv of a layer with no nonzero is its bias (then ReLU)") {
  const testing::ScopedThreads threads(2);
  const Conv2dParams p = conv(2, 37, 7, 7, 54, 3, 3, 2, 1);
  check_sparse_conv(p, 0.0, {}, true, false, 7);
  check_sparse_conv(p, 0.0, {}, true, true, 8);
  check_sparse_conv(p, 0.0, {}, false, false, 9);
}

TEST_CASE("sparse linear equals dense linear, batch 1 to 37") {
  const testing::ScopedThreads threads(2);
  uint64_t seed = 200;
  for (int N : {1, 3, 37})
    for (double d : {0.5, 0.1, 0.01, 0.0}) {
      const int I = 61, O = 23;
      Rng rng(seed++);
      const std::vector<float> x = randn(rng, (int64_t)N * I);
      const std::vector<float> w = masked_weight(rng, O, I, d, {1, O - 1});
      const std::vector<float> b = randn(rng, O);
      const SparseRows s = sparse_from_dense(w.data(), O, I);
      for (bool relu : {false, true}) {
        std::vector<float> want((size_t)N * O), got_ref(want.size(), NAN), got_cpu(want.size(), NAN);
        ref::linear_forward(N, I, O, x.data(), w.data(), b.data(), want.data());
        if (relu)
          for (float& v : want) v = std::max(v, 0.0f);
        ref::sparse_linear_forward(N, x.data(), s, b.data(), relu, got_ref.data());
        cpu::sparse_linear_forward(N, x.data(), s, b.data(), relu, got_cpu.data());
        const std::string what = "linear N=" + std::to_string(N) + " density=" + std::to_string(d);
        check_close(got_ref, want, "ref " + what);
        check_close(got_cpu, want, "cpu " + what);
      }
    }
}

TEST_CASE("ops::sparse_* refuse a sparse weight of the wrong shape, naming it") {
  Rng rng(5);
  const Conv2dParams p = conv(1, 4, 5, 5, 6, 3, 3, 1, 1);
  std::vector<float> w = masked_weight(rng, 6, 4 * 9, 0.5, {});
  const SparseRows s = sparse_from_dense(w.data(), 6, 4 * 9);
  Tensor x({1, 4, 5, 5}), y({1, 6, 5, 5}), b;
  ops::sparse_conv2d_forward(p, x, s, b, false, y);  // the right shape runs
  Conv2dParams wrong = p;
  wrong.C = 5;
  Tensor x5({1, 5, 5, 5});
  CHECK(testing::contains(testing::error_of([&] { ops::sparse_conv2d_forward(wrong, x5, s, b, false, y); }),
                          "sparse weight has 6 rows of 36 columns"));
  Tensor xl({2, 7}), yl({2, 6});
  CHECK(testing::contains(testing::error_of([&] { ops::sparse_linear_forward(xl, s, b, false, yl); }),
                          "does not match a sparse weight"));
  // The op profile (bench --profile) counts the sparse ops like the dense ones.
  Tensor xg({2, 36}), yg({2, 6});
  ops::take_profile();
  ops::set_profiling(true);
  ops::sparse_conv2d_forward(p, x, s, b, false, y);
  ops::sparse_linear_forward(xg, s, b, false, yg);
  ops::sparse_linear_forward(xg, s, b, false, yg);
  ops::set_profiling(false);
  std::map<std::string, int64_t> calls;
  for (const ops::OpTime& t : ops::take_profile()) calls[t.op] = t.calls;
  CHECK(calls["sparse_conv2d_forward"] == 1);
  CHECK(calls["sparse_linear_forward"] == 2);
}

// ---- whole models: sparse execution after compaction ----------------------------------------

#include "nn/execution.h"
#include "nn/models/zoo.h"
#include "prune/compact.h"
#include "prune/infer.h"

namespace {

// A compact ResNet-20 from random masks (dead filters and 10% unstructured density) with
// batchnorm statistics that give dead filters nonzero constants: border tables appear.
Model compact_resnet(Rng& rng) {
  Model m = build_model("resnet20");
  init_model(m, rng);
  testing::randomize_batchnorm(m, rng);
  testing::random_masks(m, rng, 0.3f, 0.1f);
  return compact_model(m);
}

void check_logits_close(const Tensor& got, const Tensor& want, const std::string& what) {
  check_close(got.to_vector(), want.to_vector(), what);
}

}  // namespace

TEST_CASE("a compact ResNet-20 run sparse, dense and auto gives the same logits") {
  const testing::ScopedThreads threads(2);
  Rng rng(11);
  Model c = compact_resnet(rng);
  int tables = 0, convs = 0;
  for (const Node& n : c.nodes())
    if (auto* conv = dynamic_cast<const Conv2d*>(n.layer.get())) tables += conv->pos_h > 0, ++convs;
  REQUIRE(tables > 0);  // the border-table path of the sparse branch is exercised
  const Tensor x = testing::random_images(3, c.input_shape(), rng);
  plan_execution(c, Execution::Dense, {3});
  const Tensor dense = infer(c, x);

  const ExecutionPlan sp = plan_execution(c, Execution::Sparse, {1, 3});
  CHECK(sp.sparse_layers(3) == convs + 1);  // every conv and the linear
  for (const LayerExecution& l : sp.layers) CHECK(l.density < 0.2);
  const Tensor sparse = infer(c, x);
  CHECK(!testing::same_bits(sparse, dense));  // another summation order: it really ran sparse
  check_logits_close(sparse, dense, "sparse vs dense logits");
  check_logits_close(c.forward(x, false), dense, "Model::forward sparse vs dense logits");

  const ExecutionPlan au = plan_execution(c, Execution::Auto, {3}, 1);
  REQUIRE(au.layers.size() == sp.layers.size() / 2);
  for (const LayerExecution& l : au.layers) {
    CHECK(l.dense_ms >= 0);
    CHECK(l.sparse_ms >= 0);
    CHECK(l.sparse == (l.sparse_ms < l.dense_ms));
    CHECK_FALSE(l.cached);
  }
  check_logits_close(infer(c, x), dense, "auto vs dense logits");
  // Planned again at the same batch: the measurements are reused, not redone.
  const ExecutionPlan again = plan_execution(c, Execution::Auto, {3}, 1);
  REQUIRE(again.layers.size() == au.layers.size());
  for (size_t i = 0; i < au.layers.size(); ++i) {
    CHECK(again.layers[i].cached);
    CHECK(again.layers[i].dense_ms == au.layers[i].dense_ms);
    CHECK(again.layers[i].sparse == au.layers[i].sparse);
  }
  const std::string table = execution_plan_table(au);
  CHECK(testing::contains(table, "dense ms"));
  CHECK(testing::contains(table, au.layers[0].node));

  // Back to dense: bit for bit the dense result again.
  plan_execution(c, Execution::Dense, {3});
  CHECK(testing::same_bits(infer(c, x), dense));
}

// Auto's rule: the faster one, except that a sparse form bigger than the dense weight must be
// faster by its size ratio, and at least kBulkySparseMargin times.
TEST_CASE("auto runs a layer sparse when it measured faster, by a margin when its form is bigger") {
  CHECK(auto_runs_sparse(1.0, 0.9, 100, 400));    // small form: any gain
  CHECK_FALSE(auto_runs_sparse(1.0, 1.1, 100, 400));
  CHECK_FALSE(auto_runs_sparse(1.0, 1.0, 100, 400));  // a tie stays dense
  CHECK_FALSE(auto_runs_sparse(1.0, 0.9, 410, 400));  // bigger form: 1.11x is not enough
  CHECK_FALSE(auto_runs_sparse(1.0, 1.0 / kBulkySparseMargin, 410, 400));
  CHECK(auto_runs_sparse(1.0, 0.99 / kBulkySparseMargin, 410, 400));
  CHECK(auto_runs_sparse(1.0, 0.9, 400, 400));    // the same size counts as small
  CHECK(kBulkySparseMargin > 1.1);
  // a form 1.6x the weight (values and 32-bit columns at 80% density) must be 1.6x faster
  CHECK_FALSE(auto_runs_sparse(1.0, 1.0 / 1.55, 640, 400));
  CHECK(auto_runs_sparse(1.0, 1.0 / 1.65, 640, 400));
}

TEST_CASE("the nearest planned batch decides; backward drops the sparse form") {
  SparseExecution e;
  e.choices = {{1, true, 1, 0.5}, {32, false, 1, 2}};
  CHECK(e.runs_sparse(1));
  CHECK(e.runs_sparse(4));       // log-nearer to 1 than to 32
  CHECK_FALSE(e.runs_sparse(8)); // log-nearer to 32
  CHECK_FALSE(e.runs_sparse(128));
  e.always = true;
  CHECK(e.runs_sparse(128));

  const testing::ScopedThreads threads(2);
  Model m = testing::every_kind_model();
  Rng rng(4);
  testing::random_masks(m, rng, 0.0f, 0.3f);
  const Tensor x = testing::random_images(2, m.input_shape(), rng);
  const Tensor dense = m.forward(x, false);
  plan_execution(m, Execution::Sparse, {2});
  check_logits_close(m.forward(x, false), dense, "every-kind model sparse vs dense");
  auto* c2 = dynamic_cast<Conv2d*>(m.nodes()[m.find("c2")].layer.get());
  REQUIRE(c2->sparse_exec);
  Tensor y = m.forward(x, true);
  m.backward(Tensor::full(y.shape(), 1.0f));
  CHECK_FALSE(c2->sparse_exec);
  plan_execution(m, Execution::Sparse, {2});
  REQUIRE(c2->sparse_exec);
  m.apply_masks();  // weights edited in place: the sparse form is dropped with them
  CHECK_FALSE(c2->sparse_exec);
  CHECK(testing::contains(testing::error_of([] { parse_execution("fast"); }), "--execution: expected dense, sparse or auto"));
}

// ---- the plan in memory figures and in the shifter's packed residency ------------------------

#include "prune/shifter.h"

TEST_CASE("inference_memory counts the plan's sparse copies and the sparse kernels' scratch") {
  const testing::ScopedThreads threads(2);
  // input (1, 3, 8, 8) -> conv 3->4 3x3 pad 1 -> relu -> flatten -> linear 256->10, all weights
  // nonzero (as initialised)
  Model m;
  int x = m.add_input({3, 8, 8});
  x = m.add("conv", std::make_unique<Conv2d>(3, 4, 3, 3, 1, 1, true), {x});
  x = m.add("relu", std::make_unique<ReLU>(), {x});
  x = m.add("flat", std::make_unique<Flatten>(), {x});
  m.add("fc", std::make_unique<Linear>(256, 10, true), {x});
  Rng rng(8);
  init_model(m, rng);
  const InferenceMemory dense = inference_memory(m, 1);
  CHECK(dense.sparse_weight_bytes == 0);
  plan_execution(m, Execution::Sparse, {1});
  const InferenceMemory sp = inference_memory(m, 1);
  // 108 conv and 2560 linear nonzeros: a value (4 bytes) and a 16-bit column each, and the row
  // starts (and the conv's prepared layout: no offset per nonzero or column is kept)
  const auto* conv = dynamic_cast<const Conv2d*>(m.nodes()[size_t(m.find("conv"))].layer.get());
  REQUIRE(conv->sparse_exec->runs);
  CHECK(!conv->sparse_exec->weight.col.wide());
  const int64_t runs = cpu::sparse_conv_runs_bytes(*conv->sparse_exec->runs);
  {  // the same bytes for a weight of one nonzero: nothing per nonzero or column
    std::vector<float> one(108, 0.0f);
    one[40] = 1.0f;
    const SparseRows s1 = sparse_from_dense(one.data(), 4, 27);
    CHECK(runs == cpu::sparse_conv_runs_bytes(*cpu::prepare_sparse_conv2d(conv->conv_params({1, 3, 8, 8}), s1)));
  }
  const int64_t copies = (108 + 2560) * 6 + (4 + 1) * 8 + (10 + 1) * 8 + runs;
  CHECK(sparse_execution_bytes(m) == copies);
  CHECK(sp.sparse_weight_bytes == copies);
  CHECK(sp.parameter_bytes == dense.parameter_bytes);  // the dense tensors stay
  CHECK(sp.activation_bytes == dense.activation_bytes);
  // The sparse conv runs on the calling thread: slot 0 one filter's grid (7 rows of 10 + 8,
  // rounded up to 80 floats), slot 1 the padded image (3 planes of 10 x 10) and a run plus 64
  // floats of slack; the largest buffer of one call is the linear layer's transposed input
  // (256 x 1, a run of 8 floats of slack) and the run offsets of its 256 columns (the conv's call
  // makes those of its 27 columns).
  CHECK(sp.workspace_bytes == (80 + 3 * 100 + 80 + 64) * 4 + (256 + 8) * 4 + 256 * 4);
  CHECK(sp.total() == sp.parameter_bytes + sp.buffer_bytes + sp.activation_bytes + sp.workspace_bytes + copies);
  plan_execution(m, Execution::Dense, {1});
  CHECK(inference_memory(m, 1).total() == dense.total());
}

TEST_CASE("the shifter's packed variants run with their plan; residency counts the sparse copies") {
  const testing::ScopedThreads threads(2);
  Rng rng(12);
  LoadedPortfolio lp;
  lp.dir = "(memory)";
  lp.manifest.arch = "resnet20";
  lp.manifest.input_shape = {3, 32, 32};
  lp.manifest.num_classes = 10;
  lp.manifest.latency_batch = 3;
  std::vector<int64_t> tensors, copies, released;
  for (int i = 0; i < 2; ++i) {
    Model c = compact_resnet(rng);
    plan_execution(c, i == 0 ? Execution::Sparse : Execution::Auto, {1, 3}, 1);
    settle_sparse_plans(c);  // as the shifter makes its ready variants: then it changes nothing
    tensors.push_back(model_resident_bytes(c));
    copies.push_back(sparse_execution_bytes(c));
    released.push_back(c.releasable_weight_bytes());  // the shifter holds them lean
    lp.models.push_back(std::make_shared<Model>(std::move(c)));
    VariantInfo v;
    v.name = "v" + std::to_string(i);
    v.file = v.name + ".dnns";
    v.accuracy = 0.5 + 0.1 * i;
    lp.manifest.variants.push_back(v);
  }
  REQUIRE(copies[0] > 0);  // the sparse-planned variant keeps a copy of every weight's nonzeros
  REQUIRE(released[0] > 0);  // and needs none of its dense weights
  const Tensor x = testing::random_images(3, lp.manifest.input_shape, rng);
  const Tensor want0 = infer(*lp.models[0], x), want1 = infer(*lp.models[1], x);
  std::vector<PackedModel> packed;
  for (const auto& m : lp.models) packed.push_back(pack_model(*m));

  Shifter dense(LoadedPortfolio(lp), NoFitPolicy::Closest, Residency::Dense);
  CHECK(dense.resident_bytes() == tensors[0] - released[0] + copies[0] + tensors[1] - released[1] + copies[1]);

  Shifter s(std::move(lp), NoFitPolicy::Closest, Residency::Packed);
  for (int i = 0; i < 2; ++i) {
    CAPTURE(i);
    std::shared_ptr<const Model> u = s.model(i);
    CHECK(sparse_execution_bytes(*u) == copies[size_t(i)]);  // the same layers hold sparse forms
    // The same kernels on the same weights: the same bits as the planned model (a dense run
    // of the sparse-planned variant would sum in another order).
    CHECK(testing::same_bits(infer(*u, x), i == 0 ? want0 : want1));
  }
  CHECK(!testing::same_bits(want0, [&] {
    Model plain = unpack_model(packed[0]);
    plan_execution(plain, Execution::Dense, {3});
    return infer(plain, x);
  }()));
  const int a = s.active();
  const int64_t active_tensors = model_resident_bytes(*s.model(a));  // no masks: packing drops them; lean
  CHECK(s.resident_bytes() == packed[0].bytes() + packed[1].bytes() + active_tensors + copies[size_t(a)]);
  CHECK(packed[0].bytes() < tensors[0]);  // the plan travels without its sparse weights
}
