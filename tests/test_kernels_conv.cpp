// Convolution and fully-connected kernels: the reference against hand-computed values and
// against its own adjoints, and the optimized CPU backend against the reference.
//
// Tolerances: cpu vs ref, max|cpu - ref| <= 1e-4 * max(1, max|ref|) (float sums of a few
// thousand terms against double-accumulated ground truth). Adjoint identities in double:
// |<A x, y> - <x, A^T y>| <= 1e-5 * ||A x|| ||y|| (Cauchy-Schwarz scale; the float rounding of
// the kernels' outputs is ~1e-7 relative).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/rng.h"
#include "core/threading.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/winograd.h"
#include "kernels/params.h"
#include "kernels/ref/ref.h"
#include "tests/test_util.h"

using namespace dnns;
using dnns::testing::check_close;
using dnns::testing::randn;
using dnns::testing::conv;
using dnns::testing::conv_str;

namespace {

// Outputs start as NaN so a kernel that forgets to write (or accumulates into) one shows.
std::vector<float> poisoned(int64_t n) {
  return std::vector<float>((size_t)n, std::numeric_limits<float>::quiet_NaN());
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += (double)a[i] * b[i];
  return s;
}
double norm(const std::vector<float>& a) { return std::sqrt(dot(a, a)); }

// Runs forward, backward-data and backward-weights (with and without bias) on both backends.
void compare_conv(const Conv2dParams& p, Rng& rng) {
  const int64_t nx = (int64_t)p.N * p.C * p.H * p.W, nw = (int64_t)p.K * p.C * p.R * p.S;
  const int64_t ny = (int64_t)p.N * p.K * p.P() * p.Q();
  const std::string name = conv_str(p);
  const auto x = randn(rng, nx), w = randn(rng, nw), b = randn(rng, p.K), dy = randn(rng, ny);

  for (bool bias : {true, false}) {
    auto y_ref = poisoned(ny), y_cpu = poisoned(ny);
    ref::conv2d_forward(p, x.data(), w.data(), bias ? b.data() : nullptr, y_ref.data());
    cpu::conv2d_forward(p, x.data(), w.data(), bias ? b.data() : nullptr, y_cpu.data());
    check_close(y_cpu, y_ref, "forward" + std::string(bias ? "+bias " : " ") + name);

    auto dw_ref = poisoned(nw), dw_cpu = poisoned(nw), db_ref = poisoned(p.K), db_cpu = poisoned(p.K);
    ref::conv2d_backward_weights(p, x.data(), dy.data(), dw_ref.data(), bias ? db_ref.data() : nullptr);
    cpu::conv2d_backward_weights(p, x.data(), dy.data(), dw_cpu.data(), bias ? db_cpu.data() : nullptr);
    check_close(dw_cpu, dw_ref, "backward_weights dw " + name);
    if (bias) check_close(db_cpu, db_ref, "backward_weights db " + name);
    else CHECK(std::isnan(db_cpu[0]));  // db == nullptr: nothing written
  }
  auto dx_ref = poisoned(nx), dx_cpu = poisoned(nx);
  ref::conv2d_backward_data(p, dy.data(), w.data(), dx_ref.data());
  cpu::conv2d_backward_data(p, dy.data(), w.data(), dx_cpu.data());
  check_close(dx_cpu, dx_ref, "backward_data " + name);
}

// A random valid shape: odd sizes, kernels 1..5 (not always square), stride 1..3, pad 0..2.
Conv2dParams random_conv(Rng& rng) {
  const int sizes[] = {1, 2, 3, 5};
  Conv2dParams p = conv(1 + (int)rng.below(5), 1 + (int)rng.below(7), 1 + (int)rng.below(12),
                        1 + (int)rng.below(12), 1 + (int)rng.below(7), sizes[rng.below(4)],
                        sizes[rng.below(4)], 1 + (int)rng.below(3), (int)rng.below(3));
  p.H = std::max(p.H, p.R - 2 * p.pad);  // at least one output row and column
  p.W = std::max(p.W, p.S - 2 * p.pad);
  return p;
}

// <A x, y> == <x, A^T y> for the three conv kernels of one backend, in double.
template <class Fwd, class BwdData, class BwdWeights>
void check_conv_adjoints(const Conv2dParams& p, Rng& rng, Fwd fwd, BwdData bwd_data, BwdWeights bwd_w) {
  const int64_t nx = (int64_t)p.N * p.C * p.H * p.W, nw = (int64_t)p.K * p.C * p.R * p.S;
  const int64_t ny = (int64_t)p.N * p.K * p.P() * p.Q();
  const auto x = randn(rng, nx), w = randn(rng, nw), dy = randn(rng, ny);
  INFO(conv_str(p));
  std::vector<float> y(ny), dx(nx), dw(nw), db(p.K);
  fwd(p, x.data(), w.data(), nullptr, y.data());
  bwd_data(p, dy.data(), w.data(), dx.data());
  bwd_w(p, x.data(), dy.data(), dw.data(), db.data());
  const double lhs = dot(y, dy), scale = norm(y) * norm(dy);
  CHECK(std::fabs(lhs - dot(x, dx)) <= 1e-5 * scale);  // x -> conv(x; w) is linear in x
  CHECK(std::fabs(lhs - dot(w, dw)) <= 1e-5 * scale);  // ... and in w
  // The bias adds b[k] at every output position of channel k: its adjoint sums dy.
  const int64_t PQ = (int64_t)p.P() * p.Q();
  for (int k = 0; k < p.K; ++k) {
    double s = 0.0, mag = 0.0;
    for (int n = 0; n < p.N; ++n)
      for (int64_t i = 0; i < PQ; ++i) {
        s += dy[((int64_t)n * p.K + k) * PQ + i];
        mag += std::fabs(dy[((int64_t)n * p.K + k) * PQ + i]);
      }
    CHECK(std::fabs(db[k] - s) <= 1e-5 * std::max(1.0, mag));
  }
}

}  // namespace

TEST_CASE("ref conv2d_forward matches hand-computed examples") {
  SUBCASE("3x3 image, 2x2 kernel, stride 1, no padding, bias") {
    // x = [[1,2,3],[4,5,6],[7,8,9]], w = [[1,2],[3,4]], b = 1:
    // y[p,q] = x[p,q] + 2 x[p,q+1] + 3 x[p+1,q] + 4 x[p+1,q+1] + 1
    const Conv2dParams p = conv(1, 1, 3, 3, 1, 2, 2, 1, 0);
    const std::vector<float> x = {1, 2, 3, 4, 5, 6, 7, 8, 9}, w = {1, 2, 3, 4}, b = {1};
    std::vector<float> y(4);
    ref::conv2d_forward(p, x.data(), w.data(), b.data(), y.data());
    CHECK(y == std::vector<float>{38, 48, 68, 78});
  }
  SUBCASE("two channels, 3x3 ones kernel, stride 2, padding 1") {
    // Channel 0 is x, channel 1 is 10 x with weight -0.5 everywhere: each output is
    // (1 - 5) * (sum of the 2x2 window the padded 3x3 kernel covers inside the image).
    const Conv2dParams p = conv(1, 2, 3, 3, 1, 3, 3, 2, 1);
    std::vector<float> x = {1, 2, 3, 4, 5, 6, 7, 8, 9}, w(18, 1.0f);
    for (int i = 0; i < 9; ++i) x.push_back(10 * x[i]), w[9 + i] = -0.5f;
    std::vector<float> y(4);
    ref::conv2d_forward(p, x.data(), w.data(), nullptr, y.data());
    // windows: rows/cols {0,1}x{0,1} = 12, {0,1}x{1,2} = 16, {1,2}x{0,1} = 24, {1,2}x{1,2} = 28
    CHECK(y == std::vector<float>{-48, -64, -96, -112});
  }
}

TEST_CASE("ref and cpu conv kernels are the adjoints of their forward") {
  Rng rng(7);
  const Conv2dParams fixed[] = {conv(2, 3, 7, 5, 5, 3, 3, 1, 1), conv(3, 4, 9, 8, 2, 5, 3, 2, 2),
                                conv(5, 6, 4, 4, 7, 1, 1, 1, 0), conv(2, 2, 24, 24, 3, 3, 3, 1, 1)};
  for (const Conv2dParams& p : fixed) {
    check_conv_adjoints(p, rng, ref::conv2d_forward, ref::conv2d_backward_data, ref::conv2d_backward_weights);
    check_conv_adjoints(p, rng, cpu::conv2d_forward, cpu::conv2d_backward_data, cpu::conv2d_backward_weights);
  }
  for (int i = 0; i < 10; ++i) {
    const Conv2dParams p = random_conv(rng);
    check_conv_adjoints(p, rng, ref::conv2d_forward, ref::conv2d_backward_data, ref::conv2d_backward_weights);
  }
}

TEST_CASE("cpu conv matches ref on chosen shapes") {
  Rng rng(11);
  // Each line exercises one path of the cpu tiling (kTargetCols = 512 columns per GEMM;
  // output rows narrower than kMinRun = 16 go through offset tables).
  const Conv2dParams shapes[] = {
      conv(2, 3, 7, 5, 5, 3, 3, 1, 1),     // odd sizes, one image per task
      conv(1, 4, 9, 9, 3, 5, 3, 2, 2),     // non-square kernel, stride 2, batch 1
      conv(20, 5, 8, 8, 6, 3, 3, 1, 1),    // several images per GEMM, last chunk partial
      conv(40, 16, 4, 4, 16, 3, 3, 1, 1),  // late-VGG-like: many small images per GEMM
      conv(9, 8, 2, 2, 8, 3, 3, 1, 1),     // 2x2 images, padding wider than the image
      conv(2, 3, 24, 24, 4, 3, 3, 1, 1),   // large images walked in row blocks (21 + 3 rows)
      conv(2, 3, 50, 49, 4, 3, 3, 2, 1),   // row blocks with stride 2
      conv(6, 3, 16, 17, 4, 3, 3, 1, 1),   // wide rows (copied as runs), 2 images per GEMM
      conv(5, 2, 33, 40, 3, 3, 5, 2, 2),   // the same with stride 2 and a 3x5 kernel
      conv(2, 3, 100, 10, 2, 3, 3, 1, 1),  // narrow rows (offset tables) in row blocks
      conv(1, 2, 250, 9, 3, 5, 3, 2, 1),   // the same with stride 2 and a 5x3 kernel
      conv(2, 6, 24, 24, 5, 1, 1, 1, 0),   // 1x1 fast path (image is its own column matrix)
      conv(10, 6, 4, 4, 5, 1, 1, 1, 0),    // 1x1 on small images: batched copy path
      conv(3, 4, 6, 6, 3, 1, 1, 2, 0),     // 1x1 with stride 2: not the fast path
      conv(2, 3, 5, 5, 2, 1, 1, 1, 2),     // 1x1 with padding larger than the kernel
  };
  for (const Conv2dParams& p : shapes) compare_conv(p, rng);
}

// Every instruction-set path this CPU has (avx512, avx2, generic), each with the direct kernels
// where they apply and with im2col + sgemm forced, against the reference. The shapes are the
// direct kernels' cases: odd channel counts (compaction leaves 37, 54, 113), rows that are not
// a whole number of vectors (the masked tail), rows of exactly 8 and of 9 (the two AVX-512
// vector widths), a filter count that is not a multiple of the filter block, no padding,
// non-square kernels, strides 2 and 3, filter counts that are not whole vectors (the weight
// gradient is vectorised over filters), batch 1 split into filter groups, and dead (all-zero)
// filters.
TEST_CASE("every ISA path and convolution algorithm matches ref") {
  // (Winograd is forced on every 3x3 stride-1 pad-1 shape below, odd sizes included: F(4x4,
  // 3x3) from 8x8 images, F(2x2, 3x3) below, partial tiles at the bottom and right edges.)
  const testing::ScopedKernelChoice restore;
  const Conv2dParams direct_shapes[] = {
      conv(3, 37, 11, 13, 54, 3, 3, 1, 1),  // odd channels, 13 = 8 + 5 columns (masked tail)
      conv(2, 5, 8, 8, 7, 3, 3, 1, 1),      // rows of exactly 8; K = 7, not a multiple of 4
      conv(3, 6, 5, 9, 4, 3, 3, 1, 1),      // odd height and width: partial Winograd tiles
      conv(2, 4, 9, 9, 9, 3, 3, 1, 1),      // rows of 9: 16-wide vectors on AVX-512, 7 lanes masked
      conv(1, 113, 16, 16, 6, 3, 3, 1, 1),  // batch 1: filter groups split the image
      conv(2, 3, 32, 32, 16, 3, 3, 1, 1),   // a ResNet-20 stage-1 shape (first layer)
      conv(2, 6, 12, 20, 5, 3, 3, 1, 0),    // no padding
      conv(2, 4, 10, 17, 3, 3, 5, 1, 2),    // 3x5 kernel, pad 2
      conv(2, 3, 9, 12, 4, 5, 5, 1, 1),     // 5x5 kernel, pad 1 < 2 (25 taps: 9 + 9 + 7)
      conv(2, 3, 8, 10, 4, 1, 3, 1, 0),     // 1x3 kernel
      conv(2, 3, 9, 16, 4, 2, 1, 2, 1),     // 2x1 kernel, stride 2, padding 1 (over the kernel width)
      conv(2, 5, 17, 19, 6, 3, 3, 2, 1),    // stride 2: phase-split rows (forward, weights)
      conv(2, 4, 23, 25, 5, 5, 3, 3, 2),    // stride 3, 5x3 kernel
      conv(3, 16, 8, 8, 40, 3, 3, 1, 1),    // K = 40: 2.5 vectors of filters for the weight gradient
      conv(14, 16, 24, 24, 16, 3, 3, 1, 1), // weight gradient over several L2-sized image blocks
      conv(3, 4, 9, 9, 9, 3, 3, 1, 1),      // K = 9: 8-float filter vectors with one lane used
  };
  Rng rng(29);
  for (int isa = (int)cpu::best_cpu_isa(); isa >= 0; --isa) {
    cpu::set_cpu_isa((cpu::Isa)isa);
    for (cpu::ConvAlgo algo : {cpu::ConvAlgo::Auto, cpu::ConvAlgo::Direct, cpu::ConvAlgo::Gemm, cpu::ConvAlgo::Winograd}) {
      cpu::set_conv_algo(algo);
      INFO("isa " << std::string(cpu::isa_name((cpu::Isa)isa)) << ", algorithm " << std::string(cpu::conv_algo_name(algo)));
      for (const Conv2dParams& p : direct_shapes) {
        // The shape must take the path under test, or the comparison says nothing about it.
        const std::string path = cpu::conv_path(p);
        INFO(conv_str(p) << " took " << path);
        const bool direct = path.find("direct") != std::string::npos, wino = path.find("winograd") != std::string::npos;
        const bool vector_isa = isa != (int)cpu::Isa::Generic;
        if (algo == cpu::ConvAlgo::Winograd)
          CHECK(wino == (p.R == 3 && p.S == 3 && p.stride == 1 && p.pad == 1));
        else if (algo == cpu::ConvAlgo::Auto)  // direct or Winograd where measured faster
          CHECK((direct || wino) == vector_isa);
        else
          CHECK(direct == (vector_isa && algo == cpu::ConvAlgo::Direct));
        compare_conv(p, rng);
      }
      // Dead filters: whole filters of w zero (what pruning leaves before compaction).
      const Conv2dParams p = conv(2, 6, 10, 10, 9, 3, 3, 1, 1);
      auto x = randn(rng, (int64_t)p.N * p.C * p.H * p.W), w = randn(rng, (int64_t)p.K * p.C * 9);
      for (int k : {0, 4, 8}) std::fill(w.begin() + k * p.C * 9, w.begin() + (k + 1) * p.C * 9, 0.0f);
      const int64_t ny = (int64_t)p.N * p.K * p.P() * p.Q();
      auto y_ref = poisoned(ny), y_cpu = poisoned(ny);
      ref::conv2d_forward(p, x.data(), w.data(), nullptr, y_ref.data());
      cpu::conv2d_forward(p, x.data(), w.data(), nullptr, y_cpu.data());
      check_close(y_cpu, y_ref, "forward with dead filters");
    }
  }
}

// The direct kernels compute the last filters of a call that are fewer than a full tile (8
// on AVX-512, 6 on AVX2) as a partial tile of just those filters, with more output vectors
// (conv_direct_impl.h forward_partial): every filter count 1..17 reaches each partial size of
// both ISAs, as forward outputs (K) and as backward-data outputs (C), on 16-float and 8-float
// vectors (rows of 19 or 9, and 8 columns), images whose vector count is no multiple of the tile's,
// with bias and ReLU, and at batch 1, where filter groups split the filters between tasks.
TEST_CASE("direct kernels: every partial block of filters matches ref") {
  const testing::ScopedKernelChoice restore;
  cpu::set_conv_algo(cpu::ConvAlgo::Direct);
  Rng rng(41);
  for (int isa = (int)cpu::best_cpu_isa(); isa > (int)cpu::Isa::Generic; --isa) {
    cpu::set_cpu_isa((cpu::Isa)isa);
    for (int n : {1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 17})
      for (const Conv2dParams& p : {conv(2, 3, 11, 19, n, 3, 3, 1, 1), conv(2, 4, 6, 8, n, 3, 3, 1, 1),
                                    conv(1, 5, 13, 9, n, 3, 3, 1, 1), conv(2, n, 7, 19, 3, 3, 3, 1, 1),
                                    conv(1, n, 5, 8, 2, 3, 3, 1, 1)}) {
        const std::string path = cpu::conv_path(p);
        INFO("isa " << std::string(cpu::isa_name((cpu::Isa)isa)) << ", " << conv_str(p) << " took " << path);
        // forward | backward data | backward weights, or one name for all three
        const size_t bar = path.find(" | ");
        REQUIRE(path.find("direct") == 0);
        REQUIRE((bar == std::string::npos || path.find("direct", bar) == bar + 3));
        compare_conv(p, rng);
        const int64_t ny = (int64_t)p.N * p.K * p.P() * p.Q();
        const auto x = randn(rng, (int64_t)p.N * p.C * p.H * p.W), w = randn(rng, (int64_t)p.K * p.C * 9),
                   b = randn(rng, p.K);
        auto y_ref = poisoned(ny), y = poisoned(ny);
        ref::conv2d_forward(p, x.data(), w.data(), b.data(), y_ref.data());
        for (float& v : y_ref) v = std::max(v, 0.0f);
        cpu::conv2d_forward_relu(p, x.data(), w.data(), b.data(), y.data());
        check_close(y, y_ref, "forward_relu " + conv_str(p));
      }
  }
}

TEST_CASE("conv2d_forward_relu is relu(conv) on every path") {
  const testing::ScopedKernelChoice restore;
  Rng rng(31);
  // A direct shape (ReLU in the kernel's output pass), a GEMM one (separate pass) and a
  // Winograd one (forced).
  for (cpu::ConvAlgo algo : {cpu::ConvAlgo::Auto, cpu::ConvAlgo::Gemm, cpu::ConvAlgo::Winograd}) {
    cpu::set_conv_algo(algo);
    for (const Conv2dParams& p : {conv(2, 5, 9, 13, 11, 3, 3, 1, 1), conv(3, 4, 4, 4, 6, 3, 3, 1, 1)}) {
      INFO(conv_str(p) << ", " << std::string(cpu::conv_algo_name(algo)) << ": " << cpu::conv_path(p));
      const int64_t ny = (int64_t)p.N * p.K * p.P() * p.Q();
      const auto x = randn(rng, (int64_t)p.N * p.C * p.H * p.W), w = randn(rng, (int64_t)p.K * p.C * p.R * p.S),
                 b = randn(rng, p.K);
      auto y_ref = poisoned(ny), y = poisoned(ny);
      ref::conv2d_forward(p, x.data(), w.data(), b.data(), y_ref.data());
      int negative = 0;
      for (float& v : y_ref) negative += v < 0, v = std::max(v, 0.0f);
      REQUIRE(negative > ny / 4);  // the ReLU has work to do
      cpu::conv2d_forward_relu(p, x.data(), w.data(), b.data(), y.data());
      check_close(y, y_ref, "forward_relu " + conv_str(p));
    }
  }
}

// Winograd F(2x2, 3x3) (kernels/cpu/winograd.h), forced, on every ISA path this CPU has:
// forward with and without bias, forward + ReLU, backward data and backward weights against ref. The shapes
// reach each part of the kernels: odd channel counts (compaction's 37, 54, 113), images that
// are not whole 2x2 tiles (7x7, 5x9) or smaller than one (1x1), 2x2 images (one tile), batch 1,
// filter counts that are not whole micro-kernel blocks (8 on AVX-512, 6 on AVX2, 4 generic)
// or exceed one multiply call (64 or 66 filters), tile rows longer than one vector (20 tiles:
// 16 + 4 on AVX-512, 8 + 8 + 4 on AVX2; the second half of the interleaved output row), several
// chunks per image, image groups with a shorter last group, and dead filters and channels.
// Error bound as elsewhere in this file, max|cpu - ref| <= 1e-4 * max(1, max|ref|), and
// relative to max|ref|: F(2x2) within 2e-6 (measured 6e-7: its transforms only add, subtract
// and halve), F(4x4) within 1e-4 (measured 2.3e-5 on the 512-channel shape; its transforms
// scale by up to 8 and 1/24; the direct kernels measure 2.3e-6 there).
TEST_CASE("Winograd matches ref on every ISA path, odd shapes included") {
  const testing::ScopedKernelChoice restore;
  const Conv2dParams shapes[] = {
      conv(2, 37, 7, 7, 54, 3, 3, 1, 1),    // odd channels, 7x7: half tiles at both edges
      conv(3, 54, 5, 9, 37, 3, 3, 1, 1),    // 5x9
      conv(1, 113, 2, 2, 13, 3, 3, 1, 1),   // batch 1, one tile per image
      conv(4, 13, 1, 1, 9, 3, 3, 1, 1),     // 1x1 images: one output of the tile's four
      conv(6, 9, 20, 40, 70, 3, 3, 1, 1),   // 70 filters: two multiply calls, a partial block (300 tiles)
      conv(13, 24, 6, 10, 19, 3, 3, 1, 1),  // 13 images of 15 tiles: groups, a short last one
      conv(3, 6, 50, 46, 5, 3, 3, 1, 1),    // 575 tiles per image: weight-gradient chunks add up
      conv(2, 37, 9, 11, 54, 3, 3, 1, 1),   // F(4x4) from 8x8 up: 9 = 4 + 4 + 1, 11 = 4 + 4 + 3
      conv(1, 113, 10, 8, 37, 3, 3, 1, 1),  // F(4x4), batch 1, 10 = 4 + 4 + 2
      conv(2, 512, 8, 8, 16, 3, 3, 1, 1),   // F(4x4) summing VGG-16's 512 channels
      // (the three above run F(4x4) for few tiles when forced; the tile-vectorised forward
      // takes 256 tiles and more: edges of 1 and 3, and 512 channels, there too)
      conv(29, 21, 9, 11, 20, 3, 3, 1, 1),  // 261 tiles, 9 = 4 + 4 + 1, 11 = 4 + 4 + 3
      conv(16, 512, 8, 8, 16, 3, 3, 1, 1),  // 256 tiles of 512 channels
  };
  Rng rng(41);
  // max|cpu - ref| / max|ref| of F(2x2) (images below 8x8, and every weight gradient) and of
  // F(4x4) (forward and backward data of images of 8x8 and more), and of the direct kernels
  // on the same F(4x4) shapes, for comparison.
  double worst2 = 0.0, worst4 = 0.0, worst_direct = 0.0;
  auto relative = [](const std::vector<float>& got, const std::vector<float>& want) {
    double err = 0.0, mag = 0.0;
    for (size_t i = 0; i < got.size(); ++i)
      err = std::max(err, (double)std::fabs(got[i] - want[i])), mag = std::max(mag, (double)std::fabs(want[i]));
    return err / std::max(mag, 1e-30);
  };
  double* worst = &worst2;
  auto compare = [&](const std::vector<float>& got, const std::vector<float>& want, const std::string& what) {
    check_close(got, want, what);
    *worst = std::max(*worst, relative(got, want));
  };
  cpu::set_conv_algo(cpu::ConvAlgo::Winograd);
  for (int isa = (int)cpu::best_cpu_isa(); isa >= 0; --isa) {
    cpu::set_cpu_isa((cpu::Isa)isa);
    INFO("isa " << std::string(cpu::isa_name((cpu::Isa)isa)));
    for (Conv2dParams p : shapes) {
      for (bool dead : {false, true}) {
        const std::string name = conv_str(p) + (dead ? " with dead filters and channels" : "");
        INFO(name << " took " << cpu::conv_path(p));
        REQUIRE(cpu::conv_path(p).find("winograd") == 0);
        const int64_t nx = (int64_t)p.N * p.C * p.H * p.W, ny = (int64_t)p.N * p.K * p.H * p.W;
        auto x = randn(rng, nx), w = randn(rng, (int64_t)p.K * p.C * 9), b = randn(rng, p.K), dy = randn(rng, ny);
        if (dead) {  // what pruning leaves before compaction: whole filters and input channels zero
          for (int k = 0; k < p.K; k += 3) std::fill(w.begin() + k * p.C * 9, w.begin() + (k + 1) * p.C * 9, 0.0f);
          for (int k = 0; k < p.K; ++k)
            for (int c = 1; c < p.C; c += 4) std::fill_n(w.begin() + (k * p.C + c) * 9, 9, 0.0f);
        }
        const bool f4 = p.H >= 8 && p.W >= 8;
        worst = f4 ? &worst4 : &worst2;
        for (bool bias : {true, false}) {
          auto y_ref = poisoned(ny), y = poisoned(ny);
          ref::conv2d_forward(p, x.data(), w.data(), bias ? b.data() : nullptr, y_ref.data());
          cpu::conv2d_forward(p, x.data(), w.data(), bias ? b.data() : nullptr, y.data());
          compare(y, y_ref, "forward" + std::string(bias ? "+bias " : " ") + name);
          if (f4 && isa != (int)cpu::Isa::Generic) {
            cpu::set_conv_algo(cpu::ConvAlgo::Direct);
            cpu::conv2d_forward(p, x.data(), w.data(), bias ? b.data() : nullptr, y.data());
            cpu::set_conv_algo(cpu::ConvAlgo::Winograd);
            worst_direct = std::max(worst_direct, relative(y, y_ref));
          }
          for (float& v : y_ref) v = std::max(v, 0.0f);
          y = poisoned(ny);
          cpu::conv2d_forward_relu(p, x.data(), w.data(), bias ? b.data() : nullptr, y.data());
          compare(y, y_ref, "forward_relu" + std::string(bias ? "+bias " : " ") + name);
        }
        auto dx_ref = poisoned(nx), dx = poisoned(nx);
        ref::conv2d_backward_data(p, dy.data(), w.data(), dx_ref.data());
        cpu::conv2d_backward_data(p, dy.data(), w.data(), dx.data());
        compare(dx, dx_ref, "backward_data " + name);
        worst = &worst2;
        const int64_t nw = (int64_t)p.K * p.C * 9;
        auto dw_ref = poisoned(nw), dw = poisoned(nw), db_ref = poisoned(p.K), db = poisoned(p.K);
        ref::conv2d_backward_weights(p, x.data(), dy.data(), dw_ref.data(), db_ref.data());
        cpu::conv2d_backward_weights(p, x.data(), dy.data(), dw.data(), db.data());
        compare(dw, dw_ref, "backward_weights dw " + name);
        compare(db, db_ref, "backward_weights db " + name);
      }
    }
  }
  // The weight gradient's image groups (one per thread) and their fixed-order sum; no db.
  const Conv2dParams p = conv(5, 11, 6, 7, 10, 3, 3, 1, 1);
  const auto x = randn(rng, (int64_t)p.N * p.C * p.H * p.W), dy = randn(rng, (int64_t)p.N * p.K * p.H * p.W);
  const int64_t nw = (int64_t)p.K * p.C * 9;
  auto dw_ref = poisoned(nw), db = poisoned(p.K);
  ref::conv2d_backward_weights(p, x.data(), dy.data(), dw_ref.data(), nullptr);
  const int saved_threads = num_threads();
  for (int threads : {1, 3}) {
    set_num_threads(threads);
    auto dw = poisoned(nw), again = poisoned(nw);
    cpu::conv2d_backward_weights(p, x.data(), dy.data(), dw.data(), nullptr);
    compare(dw, dw_ref, "backward_weights with " + std::to_string(threads) + " threads");
    cpu::conv2d_backward_weights(p, x.data(), dy.data(), again.data(), nullptr);
    CHECK(again == dw);  // the groups are summed in a fixed order: same bits at a fixed thread count
  }
  set_num_threads(saved_threads);
  MESSAGE("max|cpu - ref| / max|ref|: Winograd F(2x2) " << worst2 << ", F(4x4) " << worst4
                                                       << ", direct kernels on the F(4x4) shapes " << worst_direct);
  CHECK(worst2 < 2e-6);
  CHECK(worst4 < 1e-4);
}

// Winograd F(4x4, 3x3) for few tiles (kernels/cpu/winograd.h winograd_conv_few: vectors across
// filters, the filters transformed per call), on every ISA path this CPU has, against ref:
// forward with and without bias, and + ReLU. The shapes reach each part: odd channel counts
// (17, 37, 54: a last filter block that is not whole vectors, a last channel block of fewer than
// 32), images that are not whole 4x4 tiles (9x9, 13x11: clipped output tiles), 16x16 and 32x32
// (16 and 64 tiles: several register tiles, ranges of tiles split between threads), batch 1
// to 3 (192 tiles: ranges of at most 64 that start inside an image), more filters than one
// block (130: 3 blocks on AVX-512, 9 on AVX2, 9 generic), and the channel sums of VGG-16's
// deep layers (256 channels: 8 channel blocks). Same error bound
// as F(4x4) above (relative to max|ref|, within 1e-4).
TEST_CASE("Winograd for few tiles matches ref on every ISA path, odd shapes included") {
  const testing::ScopedKernelChoice restore;
  const Conv2dParams shapes[] = {
      conv(1, 17, 8, 8, 37, 3, 3, 1, 1),     // 4 tiles, odd channels and filters
      conv(2, 37, 9, 9, 54, 3, 3, 1, 1),     // 9 tiles per image, clipped at both edges
      conv(1, 54, 13, 11, 17, 3, 3, 1, 1),   // 13x11: 4 x 3 tiles, clipped rows and columns
      conv(1, 37, 16, 16, 130, 3, 3, 1, 1),  // 16 tiles, 130 filters: several blocks
      conv(1, 20, 32, 32, 17, 3, 3, 1, 1),   // 64 tiles
      conv(2, 16, 13, 11, 5, 3, 3, 1, 1),    // batch 2: tiles of two images in one task
      conv(3, 16, 30, 31, 20, 3, 3, 1, 1),   // 192 tiles: three ranges of 64, one per image
      conv(3, 16, 20, 31, 20, 3, 3, 1, 1),   // 120 tiles: two ranges of 60, the first ending inside image 1
      conv(1, 256, 8, 8, 40, 3, 3, 1, 1),    // 8 channel blocks
  };
  Rng rng(43);
  double worst = 0.0;
  cpu::set_conv_algo(cpu::ConvAlgo::Winograd);
  const testing::ScopedThreads restore_threads(num_threads());
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    for (int isa = (int)cpu::best_cpu_isa(); isa >= 0; --isa) {
      cpu::set_cpu_isa((cpu::Isa)isa);
      INFO("isa " << std::string(cpu::isa_name((cpu::Isa)isa)) << ", " << threads << " threads");
      for (Conv2dParams p : shapes) {
        const std::string name = conv_str(p);
        INFO(name << " took " << cpu::conv_path(p));
        REQUIRE(cpu::conv_path(p).find("winograd-few") == 0);
        const int64_t nx = (int64_t)p.N * p.C * p.H * p.W, ny = (int64_t)p.N * p.K * p.H * p.W;
        const auto x = randn(rng, nx), w = randn(rng, (int64_t)p.K * p.C * 9), b = randn(rng, p.K);
        for (bool bias : {true, false}) {
          auto y_ref = poisoned(ny), y = poisoned(ny);
          ref::conv2d_forward(p, x.data(), w.data(), bias ? b.data() : nullptr, y_ref.data());
          cpu::conv2d_forward(p, x.data(), w.data(), bias ? b.data() : nullptr, y.data());
          check_close(y, y_ref, "forward" + std::string(bias ? "+bias " : " ") + name);
          double err = 0.0, mag = 0.0;
          for (size_t i = 0; i < y.size(); ++i)
            err = std::max(err, (double)std::fabs(y[i] - y_ref[i])), mag = std::max(mag, (double)std::fabs(y_ref[i]));
          worst = std::max(worst, err / mag);
          for (float& v : y_ref) v = std::max(v, 0.0f);
          y = poisoned(ny);
          cpu::conv2d_forward_relu(p, x.data(), w.data(), bias ? b.data() : nullptr, y.data());
          check_close(y, y_ref, "forward_relu" + std::string(bias ? "+bias " : " ") + name);
        }
      }
    }
  }
  MESSAGE("max|cpu - ref| / max|ref|: Winograd F(4x4) for few tiles " << worst);
  CHECK(worst < 1e-4);
}

// Under auto, Winograd runs where it measured faster (kernels/cpu/conv.cpp: forward and backward
// data from 16 summed channels and 128 tiles per call, the weight gradient on larger shapes,
// only on a vector ISA), and conv_forward_scratch reports its buffers.
TEST_CASE("auto takes Winograd only where it pays, and reports its scratch") {
  const testing::ScopedKernelChoice restore;
  cpu::set_conv_algo(cpu::ConvAlgo::Auto);
  if (cpu::best_cpu_isa() != cpu::Isa::Generic) {
    const std::string all = std::string("winograd ") + cpu::isa_name(cpu::best_cpu_isa());
    CHECK(cpu::conv_path(conv(128, 64, 32, 32, 64, 3, 3, 1, 1)).find(all) == 0);  // all three ops
    CHECK(cpu::conv_path(conv(128, 64, 32, 32, 64, 3, 3, 1, 1)).find("|") == std::string::npos);
    // 2x2 images: forward and backward data (128 tiles), not the weight gradient.
    const std::string small = cpu::conv_path(conv(128, 512, 2, 2, 512, 3, 3, 1, 1));
    CHECK(small.find("winograd") == 0);
    CHECK(small.find("| gemm") != std::string::npos);
    CHECK(cpu::conv_path(conv(1, 512, 4, 4, 512, 3, 3, 1, 1)).find("winograd") == std::string::npos);  // 4 tiles
    // Batch 1 at 32x32: 64 F(4x4) tiles, too few for the tile-vectorised forward, which runs
    // F(4x4) for few tiles instead; 256 F(2x2) ones for the weights.
    const std::string one = cpu::conv_path(conv(1, 16, 32, 32, 16, 3, 3, 1, 1));
    CHECK(one.find("winograd-few") == 0);
    CHECK(one.find("| winograd") != std::string::npos);
    // F(4x4) for few tiles: images of 8x8 and more, fewer than 256 tiles, 16 channels and more.
    CHECK(cpu::conv_path(conv(1, 256, 8, 8, 256, 3, 3, 1, 1)).find("winograd-few") == 0);
    CHECK(cpu::conv_path(conv(1, 64, 16, 16, 128, 3, 3, 1, 1)).find("winograd-few") == 0);
    CHECK(cpu::conv_path(conv(1, 15, 16, 16, 128, 3, 3, 1, 1)).find("winograd") != 0);   // 15 channels
    CHECK(cpu::conv_path(conv(1, 512, 4, 4, 512, 3, 3, 1, 1)).find("winograd") != 0);     // 4x4 images
    CHECK(cpu::conv_path(conv(3, 64, 32, 32, 64, 3, 3, 1, 1)).find("winograd-few") == 0); // 192 tiles
    CHECK(cpu::conv_path(conv(4, 64, 32, 32, 64, 3, 3, 1, 1)).find("winograd avx") == 0); // 256 tiles
    CHECK(cpu::conv_path(conv(1, 64, 16, 4, 64, 3, 3, 1, 1)).find("winograd-few") != 0);  // 4 columns
    CHECK(cpu::conv_path(conv(1, 64, 4, 16, 64, 3, 3, 1, 1)).find("winograd-few") != 0);  // 4 rows
    // The first layer (3 channels) runs its forward and its backward data (3 outputs) elsewhere,
    // its weight gradient in Winograd.
    const std::string best = std::string(cpu::isa_name(cpu::best_cpu_isa())) +
                             (cpu::best_cpu_isa() == cpu::Isa::Avx512 ? "/16" : "/8");
    CHECK(cpu::conv_path(conv(128, 3, 32, 32, 64, 3, 3, 1, 1)) ==
          "direct " + best + " | direct " + best + " | winograd " + best);
    CHECK(cpu::conv_path(conv(128, 64, 32, 32, 64, 3, 3, 2, 1)).find("winograd") == std::string::npos);  // stride 2
    CHECK(cpu::conv_path(conv(128, 64, 32, 32, 64, 3, 3, 1, 0)).find("winograd") == std::string::npos);  // pad 0
  }
  // Few outputs (filters forward, input channels for the data gradient) do not repay
  // Winograd's input transform: the direct kernels run them, the more so on small images
  // (conv.cpp winograd_min_outputs; thresholds that hold on both vector ISAs).
  for (int isa = (int)cpu::best_cpu_isa(); isa > (int)cpu::Isa::Generic; --isa) {
    cpu::set_cpu_isa((cpu::Isa)isa);
    INFO("isa " << std::string(cpu::isa_name((cpu::Isa)isa)));
    CHECK(cpu::conv_path(conv(32, 29, 16, 16, 12, 3, 3, 1, 1)).find("direct") == 0);  // a compacted layer
    CHECK(cpu::conv_path(conv(32, 29, 16, 16, 32, 3, 3, 1, 1)).find("winograd") == 0);
    CHECK(cpu::conv_path(conv(128, 48, 8, 8, 24, 3, 3, 1, 1)).find("direct") == 0);
    CHECK(cpu::conv_path(conv(128, 64, 8, 8, 64, 3, 3, 1, 1)).find("winograd") == 0);
    CHECK(cpu::conv_path(conv(1, 16, 32, 32, 8, 3, 3, 1, 1)).find("direct") == 0);         // few tiles too
    CHECK(cpu::conv_path(conv(1, 16, 32, 32, 12, 3, 3, 1, 1)).find("winograd-few") == 0);
    CHECK(cpu::conv_path(conv(32, 48, 8, 8, 16, 3, 3, 1, 1)).find("direct") == 0);
    const std::string data = cpu::conv_path(conv(32, 16, 8, 8, 64, 3, 3, 1, 1));  // 16 data-gradient outputs
    CHECK(data.find("winograd") == 0);
    CHECK(data.find("| direct") == data.find(" | ") + 1);
    // Between the two ISAs' thresholds: 16 filters on 16x16 and 32 on 8x8 take Winograd on
    // AVX-512 only.
    const bool avx512 = isa == (int)cpu::Isa::Avx512;
    CHECK((cpu::conv_path(conv(32, 29, 16, 16, 16, 3, 3, 1, 1)).find("winograd") == 0) == avx512);
    CHECK((cpu::conv_path(conv(128, 48, 8, 8, 32, 3, 3, 1, 1)).find("winograd") == 0) == avx512);
    // Images under 8 columns, where the direct kernels do not run: Winograd, whatever the outputs.
    CHECK(cpu::conv_path(conv(128, 64, 4, 4, 8, 3, 3, 1, 1)).find("winograd") == 0);
  }
  cpu::set_cpu_isa(cpu::Isa::Generic);
  CHECK(cpu::conv_path(conv(128, 64, 32, 32, 64, 3, 3, 1, 1)).find("winograd") == std::string::npos);
  cpu::set_cpu_isa(cpu::best_cpu_isa());
  // conv_forward_scratch reports the Winograd buffers (none on the direct path's slot 1).
  cpu::set_conv_algo(cpu::ConvAlgo::Winograd);
  const Conv2dParams p = conv(5, 24, 6, 10, 70, 3, 3, 1, 1);
  const cpu::ConvScratch s = cpu::conv_forward_scratch(p);
  CHECK(s.slot0 >= (int64_t)p.C * (p.H + 2) * (p.W + 2));  // at least one padded image
  CHECK(s.slot1 >= (int64_t)16 * p.C * ((p.H + 1) / 2) * ((p.W + 1) / 2));  // V of all tiles
  CHECK(s.call >= (int64_t)16 * p.K * p.C);  // the transformed filters U, 16 planes for F(2x2)
  CHECK(cpu::conv_forward_scratch(conv(16, 24, 16, 16, 70, 3, 3, 1, 1)).call >= (int64_t)36 * 70 * 24);  // F(4x4)
  // The image groups are evened over the threads, but the scratch reported is the most a group
  // takes, whatever the thread count.
  {
    const Conv2dParams wp = conv(32, 29, 16, 16, 32, 3, 3, 1, 1);
    REQUIRE(cpu::conv_path(wp).find("winograd avx") == 0);
    int64_t slot0 = 0;
    for (int threads : {1, 2, 5}) {
      const testing::ScopedThreads t(threads);
      if (threads == 1) slot0 = cpu::conv_forward_scratch(wp).slot0;
      CHECK(cpu::conv_forward_scratch(wp).slot0 == slot0);
    }
  }
  // F(4x4) for few tiles: the padded images in slot 0, a task's staged taps, U and M in slot 1,
  // V of every tile (36 planes of C x tiles) for the call; no transformed filters for the layer.
  const Conv2dParams q = conv(2, 24, 9, 8, 70, 3, 3, 1, 1);  // 3 x 2 tiles per image
  REQUIRE(cpu::conv_path(q).find("winograd-few") == 0);
  const cpu::ConvScratch f = cpu::conv_forward_scratch(q);
  CHECK(f.slot0 >= (int64_t)q.N * q.C * (q.H + 2) * (q.W + 2));
  CHECK(f.call >= (int64_t)36 * q.C * 12);
  CHECK(f.call < (int64_t)36 * q.C * 12 + 36 * 64);
  // A task's staged taps (24 channels x 9 x a vector), U (36 planes of 24 x Kb filters) and M
  // (36 planes of 12 tiles x Kb), each plane 16 floats apart; whatever the thread count.
  const cpu::WinogradKernels& wk = cpu::winograd_kernels(cpu::cpu_isa());
  const int64_t Kb = std::min<int64_t>((int64_t)wk.fkv * wk.vec, (70 + wk.vec - 1) / wk.vec * wk.vec);
  const int64_t slot1 = 24 * 9 * wk.vec + 36 * (24 * Kb + 16) + 36 * (12 * Kb + 16);
  for (int threads : {1, 2, 5}) {
    const testing::ScopedThreads t(threads);
    CHECK(cpu::conv_forward_scratch(q).slot1 == slot1);
  }
  // Ten times the filters: no more memory (the filters are transformed block by block).
  const cpu::ConvScratch f10 = cpu::conv_forward_scratch(conv(2, 24, 9, 8, 700, 3, 3, 1, 1));
  CHECK(f10.slot0 == f.slot0);
  CHECK(f10.slot1 == f.slot1);
  CHECK(f10.call == f.call);
  // Fewer filters than a block: U and M sized by them (whole vectors), not by the block.
  const int64_t Kb5 = wk.vec;  // 5 filters: one vector
  CHECK(cpu::conv_forward_scratch(conv(2, 24, 9, 8, 5, 3, 3, 1, 1)).slot1 ==
        24 * 9 * wk.vec + 36 * (24 * Kb5 + 16) + 36 * (12 * Kb5 + 16));
}

TEST_CASE("ISA and algorithm settings refuse what this CPU cannot run, naming it") {
  CHECK_THROWS_WITH_AS(cpu::parse_isa("sse9"), doctest::Contains("unknown instruction set 'sse9'"), Error);
  CHECK_THROWS_WITH_AS(cpu::parse_conv_algo("fft"), doctest::Contains("unknown convolution algorithm 'fft'"), Error);
  CHECK(cpu::parse_isa(cpu::isa_name(cpu::Isa::Avx2)) == cpu::Isa::Avx2);
  CHECK(cpu::parse_conv_algo("gemm") == cpu::ConvAlgo::Gemm);
  // A path above the best this CPU has is refused and leaves the setting as it was (on an
  // AVX-512 machine there is no real one above: the next value stands in for it).
  const auto above = static_cast<cpu::Isa>(static_cast<int>(cpu::best_cpu_isa()) + 1);
  CHECK_THROWS_WITH_AS(cpu::set_cpu_isa(above), doctest::Contains("supports at most"), Error);
  CHECK(cpu::cpu_isa() == cpu::best_cpu_isa());
  if (cpu::best_cpu_isa() != cpu::Isa::Avx512)
    CHECK_THROWS_WITH_AS(cpu::set_cpu_isa(cpu::Isa::Avx512), doctest::Contains("supports at most"), Error);
}

TEST_CASE("cpu conv matches ref on random shapes") {
  Rng rng(2024);
  for (int i = 0; i < 40; ++i) compare_conv(random_conv(rng), rng);
}

TEST_CASE("cpu conv matches ref with 1 and 3 threads") {
  // The thread count changes the task cut and the number of partial dw sums.
  Rng rng(17);
  const int saved_threads = num_threads();
  for (int threads : {1, 3}) {
    set_num_threads(threads);
    for (const Conv2dParams& p : {conv(20, 5, 8, 8, 6, 3, 3, 1, 1), conv(7, 8, 2, 2, 8, 3, 3, 1, 1),
                                  conv(3, 3, 24, 24, 4, 3, 3, 1, 1)})
      compare_conv(p, rng);
  }
  set_num_threads(saved_threads);
}

TEST_CASE("cpu conv2d_backward_weights is repeatable bit for bit") {
  Rng rng(3);
  const Conv2dParams p = conv(24, 8, 8, 8, 8, 3, 3, 1, 1);
  const auto x = randn(rng, (int64_t)p.N * p.C * p.H * p.W);
  const auto dy = randn(rng, (int64_t)p.N * p.K * p.P() * p.Q());
  std::vector<float> dw1(p.K * p.C * 9), dw2(dw1.size()), db1(p.K), db2(p.K);
  cpu::conv2d_backward_weights(p, x.data(), dy.data(), dw1.data(), db1.data());
  cpu::conv2d_backward_weights(p, x.data(), dy.data(), dw2.data(), db2.data());
  CHECK(dw1 == dw2);
  CHECK(db1 == db2);
}

TEST_CASE("ref linear matches a hand-computed example and its adjoints") {
  // x = [1, 2], w = [[1,0],[0,1],[1,1]], b = [0, 1, 2] -> y = [1, 3, 5]
  const std::vector<float> x = {1, 2}, w = {1, 0, 0, 1, 1, 1}, b = {0, 1, 2};
  std::vector<float> y(3);
  ref::linear_forward(1, 2, 3, x.data(), w.data(), b.data(), y.data());
  CHECK(y == std::vector<float>{1, 3, 5});

  Rng rng(5);
  const int N = 6, I = 9, O = 4;
  const auto xs = randn(rng, N * I), ws = randn(rng, O * I), dy = randn(rng, N * O);
  std::vector<float> ys(N * O), dx(N * I), dw(O * I), db(O);
  ref::linear_forward(N, I, O, xs.data(), ws.data(), nullptr, ys.data());
  ref::linear_backward_data(N, I, O, dy.data(), ws.data(), dx.data());
  ref::linear_backward_weights(N, I, O, xs.data(), dy.data(), dw.data(), db.data());
  const double lhs = dot(ys, dy), scale = norm(ys) * norm(dy);
  CHECK(std::fabs(lhs - dot(xs, dx)) <= 1e-5 * scale);
  CHECK(std::fabs(lhs - dot(ws, dw)) <= 1e-5 * scale);
  for (int o = 0; o < O; ++o) {
    double s = 0.0;
    for (int n = 0; n < N; ++n) s += dy[n * O + o];
    CHECK(db[o] == doctest::Approx(s).epsilon(1e-5));
  }
}

TEST_CASE("cpu linear matches ref") {
  Rng rng(13);
  struct Shape { int N, I, O; };
  // small (one sgemm), and large enough to be split into parallel row blocks (N, O >= 64)
  for (Shape s : {Shape{3, 7, 5}, Shape{1, 64, 10}, Shape{128, 512, 100}, Shape{130, 300, 70}}) {
    const std::string name = "N=" + std::to_string(s.N) + " I=" + std::to_string(s.I) +
                             " O=" + std::to_string(s.O);
    const auto x = randn(rng, (int64_t)s.N * s.I), w = randn(rng, (int64_t)s.O * s.I);
    const auto b = randn(rng, s.O), dy = randn(rng, (int64_t)s.N * s.O);
    for (bool bias : {true, false}) {
      auto y_ref = poisoned(s.N * s.O), y_cpu = poisoned(s.N * s.O);
      ref::linear_forward(s.N, s.I, s.O, x.data(), w.data(), bias ? b.data() : nullptr, y_ref.data());
      cpu::linear_forward(s.N, s.I, s.O, x.data(), w.data(), bias ? b.data() : nullptr, y_cpu.data());
      check_close(y_cpu, y_ref, "linear_forward " + name);

      auto dw_ref = poisoned(s.O * s.I), dw_cpu = poisoned(s.O * s.I);
      auto db_ref = poisoned(s.O), db_cpu = poisoned(s.O);
      ref::linear_backward_weights(s.N, s.I, s.O, x.data(), dy.data(), dw_ref.data(),
                                   bias ? db_ref.data() : nullptr);
      cpu::linear_backward_weights(s.N, s.I, s.O, x.data(), dy.data(), dw_cpu.data(),
                                   bias ? db_cpu.data() : nullptr);
      check_close(dw_cpu, dw_ref, "linear_backward_weights dw " + name);
      if (bias) check_close(db_cpu, db_ref, "linear_backward_weights db " + name);
    }
    auto dx_ref = poisoned(s.N * s.I), dx_cpu = poisoned(s.N * s.I);
    ref::linear_backward_data(s.N, s.I, s.O, dy.data(), w.data(), dx_ref.data());
    cpu::linear_backward_data(s.N, s.I, s.O, dy.data(), w.data(), dx_cpu.data());
    check_close(dx_cpu, dx_ref, "linear_backward_data " + name);
  }
}

TEST_CASE("conv kernels refuse invalid shapes and handle an empty batch") {
  std::vector<float> buf(64, 1.0f), dw(9, 5.0f), db(1, 5.0f);
  const Conv2dParams zero_stride = conv(1, 1, 3, 3, 1, 3, 3, 0, 0);
  const Conv2dParams too_big = conv(1, 1, 2, 2, 1, 3, 3, 1, 0);  // 3x3 kernel on a 2x2 image
  for (const Conv2dParams& p : {zero_stride, too_big}) {
    CHECK_THROWS_AS(ref::conv2d_forward(p, buf.data(), buf.data(), nullptr, buf.data()), Error);
    CHECK_THROWS_AS(cpu::conv2d_forward(p, buf.data(), buf.data(), nullptr, buf.data()), Error);
    CHECK_THROWS_AS(cpu::conv2d_backward_data(p, buf.data(), buf.data(), buf.data()), Error);
    CHECK_THROWS_AS(cpu::conv2d_backward_weights(p, buf.data(), buf.data(), dw.data(), db.data()), Error);
  }
  const Conv2dParams empty = conv(0, 1, 3, 3, 1, 3, 3, 1, 1);
  cpu::conv2d_backward_weights(empty, buf.data(), buf.data(), dw.data(), db.data());
  CHECK(dw == std::vector<float>(9, 0.0f));
  CHECK(db[0] == 0.0f);
}

// Few outputs per filter (N*P*Q <= 16, or up to 64 from 128 filters; 4096 weights and more):
// the forward streams each filter's weights once against the patch matrix
// (kernels/cpu/conv.cpp stream_forward), on every ISA path: odd channel and filter counts
// (register tiles of 8, 6 or 4 filters, with remainders), 1 to 64 outputs (whole output vectors
// of 16, 8 or 4 floats and a part of one, one tile of vectors or several; up to 4 outputs as
// dot products along the patch rows), patch matrices of
// one chunk and of several (sums carried over from chunk to chunk), stride 2, a 1x1 kernel on
// a 1x1 image, batches of 1 to 4, bias, ReLU.
TEST_CASE("few outputs per filter: the weight-streaming forward matches ref on every ISA path") {
  const testing::ScopedKernelChoice restore;
  const Conv2dParams shapes[] = {
      conv(1, 37, 4, 4, 13, 3, 3, 1, 1),    // 16 outputs, 13 filters: one block of 8 and one of 5
      conv(1, 64, 2, 2, 9, 3, 3, 1, 1),     // 4 outputs, padding reads half the patch as zero
      conv(2, 40, 2, 2, 17, 3, 3, 1, 1),    // two images: 8 outputs
      conv(1, 30, 7, 7, 20, 3, 3, 2, 1),    // stride 2: 4x4 outputs
      conv(1, 600, 1, 1, 11, 1, 1, 1, 0),   // 1x1 kernel on a 1x1 image: one output
      conv(3, 50, 3, 3, 10, 3, 3, 2, 1),    // three images of 2x2 outputs: 12
      conv(1, 15, 8, 8, 133, 3, 3, 1, 1),   // 8x8: 64 outputs, the most that stream (15 channels:
                                            // from 16 on, F(4x4) for few tiles takes 8x8)
      conv(1, 29, 5, 7, 131, 3, 3, 1, 1),   // 35 outputs: two blocks of 16 and 3 in a third
      conv(2, 40, 4, 4, 129, 3, 3, 1, 1),   // two images of 4x4: 32 outputs
      conv(1, 30, 13, 13, 130, 3, 3, 2, 1), // stride 2: 7x7 outputs, 49
      conv(4, 33, 4, 4, 129, 3, 3, 1, 1),   // four images of 4x4: 64
      conv(1, 460, 3, 3, 9, 3, 3, 1, 1),    // 4140 patch rows: two chunks of the patch matrix
      // Up to 4 outputs: dot products along the patch rows (333 = 20 vectors of 16 + 13, 41 of 8
      // + 5, 83 of 4 + 1), filter tiles of 4 or 2 and the rest one by one.
      conv(1, 37, 2, 2, 13, 3, 3, 1, 1),    // 4 outputs
      conv(1, 45, 3, 1, 11, 3, 3, 1, 1),    // a 3x1 image: 3 outputs
      conv(4, 500, 1, 1, 9, 1, 1, 1, 0),    // four images of one output
  };
  Rng rng(61);
  for (int isa = (int)cpu::best_cpu_isa(); isa >= 0; --isa) {
    cpu::set_cpu_isa((cpu::Isa)isa);
    INFO("isa " << std::string(cpu::isa_name((cpu::Isa)isa)));
    for (const Conv2dParams& p : shapes) {
      INFO(conv_str(p));
      CHECK(cpu::conv_path(p).rfind("stream", 0) == 0);  // the shape takes the path under test
      const int64_t nx = (int64_t)p.N * p.C * p.H * p.W, nw = (int64_t)p.K * p.C * p.R * p.S;
      const int64_t ny = (int64_t)p.N * p.K * p.P() * p.Q();
      const auto x = randn(rng, nx), w = randn(rng, nw), b = randn(rng, p.K);
      for (bool bias : {true, false}) {
        auto y_ref = poisoned(ny), y_cpu = poisoned(ny), y_relu = poisoned(ny);
        ref::conv2d_forward(p, x.data(), w.data(), bias ? b.data() : nullptr, y_ref.data());
        cpu::conv2d_forward(p, x.data(), w.data(), bias ? b.data() : nullptr, y_cpu.data());
        check_close(y_cpu, y_ref, "stream forward" + std::string(bias ? "+bias" : ""));
        cpu::conv2d_forward_relu(p, x.data(), w.data(), bias ? b.data() : nullptr, y_relu.data());
        for (float& v : y_ref) v = v > 0.0f ? v : 0.0f;
        check_close(y_relu, y_ref, "stream forward+relu" + std::string(bias ? "+bias" : ""));
      }
    }
  }
  // Below 4096 weights, past 64 outputs per filter, or past 16 with fewer than 128 filters, the
  // other paths run.
  CHECK(cpu::conv_path(conv(1, 8, 4, 4, 8, 3, 3, 1, 1)).rfind("stream", 0) != 0);
  CHECK(cpu::conv_path(conv(2, 64, 8, 8, 128, 3, 3, 1, 1)).rfind("stream", 0) != 0);
  CHECK(cpu::conv_path(conv(1, 64, 9, 9, 128, 3, 3, 1, 1)).rfind("stream", 0) != 0);
  CHECK(cpu::conv_path(conv(1, 64, 8, 8, 127, 3, 3, 1, 1)).rfind("stream", 0) != 0);
  CHECK(cpu::conv_path(conv(1, 15, 8, 8, 128, 3, 3, 1, 1)).rfind("stream", 0) == 0);
  CHECK(cpu::conv_path(conv(1, 64, 8, 8, 128, 2, 2, 1, 0)).rfind("stream", 0) == 0);  // 7x7, not 3x3
  // Its patch matrix (C*R*S, J) and the tasks' outputs (K, J), J = the outputs rounded up to 16
  // or 4 for up to 4, are the call's own buffers.
  CHECK(cpu::conv_forward_scratch(conv(1, 512, 2, 2, 512, 3, 3, 1, 1)).call == (512 * 9 + 512) * 4);
  CHECK(cpu::conv_forward_scratch(conv(1, 512, 3, 2, 512, 3, 3, 1, 1)).call == (512 * 9 + 512) * 16);
  CHECK(cpu::conv_forward_scratch(conv(1, 64, 5, 7, 128, 3, 3, 1, 1)).call == (64 * 9 + 128) * 48);
}
