// Optimized CPU convolution, parallel over images with oneTBB. 3x3 stride-1 pad-1 convolutions
// take Winograd F(4x4, 3x3) or F(2x2, 3x3) (winograd.h) where it measured faster, per op
// (winograd_applies: forward and backward data from 16 channels summed, 128 output tiles per
// call and, where the direct kernels apply, enough outputs (winograd_min_outputs), backward
// weights on larger shapes; winograd_few_applies: a forward of fewer than 256 F(4x4) tiles,
// vectorised across filters, which takes precedence); a forward with few
// outputs per filter (N*P*Q up to 16, or up to 64 from 128 filters: a batch of 1 on the last,
// smallest images) streams the weights once (stream_applies, every ISA); the rest one of two
// algorithms, chosen per op
// (direct_applies):
//   direct  register-blocked direct kernels (conv_direct.h) on a zero-padded copy of each image,
//           on a CPU with AVX2 or AVX-512: forward for rows of 8+ output columns (any stride:
//           strided columns are stored phase by phase so they load as vectors), backward-data
//           for stride 1 (a direct conv of the padded output gradient with the flipped,
//           transposed filters), backward-weights for rows of 8+ columns and 4+ channels
//           (vectorised over filters); none of them for 1x1 kernels.
//   gemm    everything else, and every conv on a CPU without them: im2col + OpenBLAS sgemm,
//           described below.
// set_conv_algo / DNNS_CONV=auto|gemm|direct|winograd force one (each only where it applies;
// isa.h; gemm also turns weight streaming off); conv_path says which one each op of a shape
// takes, conv_forward_scratch what working memory its forward grows.
//
// Per image the convolution is one GEMM: y_n (K, PQ) = w (K, CRS) * col_n (CRS, PQ), where
// column (p, q) of col_n holds the R*S*C input values output (p, q) reads (im2col). The
// shapes decide how the batch is cut into tasks (see plan_tiles):
//   - large images (PQ >= kTargetCols): one image per task, walked in blocks of output rows
//     so the column buffer of one GEMM stays near the cache;
//   - small images (late VGG layers, 4x4 or 2x2): several images share one column buffer
//     (CRS, images * PQ) so the GEMM is wide enough to run at speed, and the result is
//     scattered back to NCHW.
// A 1x1 stride-1 unpadded convolution needs no im2col: the image (C, HW) is its own column
// matrix. backward_data is the transposed GEMM followed by col2im; backward_weights sums
// dy_block * col_block^T over the batch (see there for how the sum stays deterministic).
// OpenBLAS runs single-threaded inside our tasks (core/threading.cpp).
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "core/threading.h"
#include "kernels/cpu/conv_direct.h"
#include "kernels/cpu/cpu.h"
#include "kernels/cpu/gemm_util.h"
#include "kernels/cpu/rows.h"
#include "kernels/cpu/winograd.h"

namespace dnns::cpu {
namespace {

// Columns per GEMM we aim for: fewer and OpenBLAS runs skinny, slow kernels; many more and
// the column buffer (CRS x cols) no longer stays in L2 between im2col and GEMM.
constexpr int kTargetCols = 512;

bool is_pointwise(const Conv2dParams& p) {
  return p.R == 1 && p.S == 1 && p.stride == 1 && p.pad == 0;
}

// How the batch is cut into tasks: task t covers images [t * images, t * images + images),
// and runs one GEMM per block of `rows` output rows (rows == P when images > 1).
struct Tiling {
  int images;
  int rows;
  int tasks;
};

Tiling plan_tiles(const Conv2dParams& p) {
  const int P = p.P(), Q = p.Q(), PQ = P * Q;
  Tiling t{1, P, 0};
  if (PQ >= kTargetCols) {
    t.rows = std::max(1, kTargetCols / Q);
  } else {
    const int want = (kTargetCols + PQ - 1) / PQ;
    const int fair = (p.N + num_threads() - 1) / num_threads();  // leave every thread a task
    t.images = std::max(1, std::min(want, fair));
  }
  t.tasks = (p.N + t.images - 1) / t.images;
  return t;
}

// One GEMM's worth of work: images [n0, n0 + nb), output rows [p0, p1) of each. Its column
// matrix has one column per (image, output row, output column), in that order.
struct Block {
  int n0, nb, p0, p1;
  int cols(const Conv2dParams& p) const { return nb * (p1 - p0) * p.Q(); }
};

// im2col and col2im walk the column matrix in one of two ways:
//  - wide output rows (Q >= kMinRun): per output row, the valid part of the kernel tap's
//    input row is one contiguous run (a memcpy for stride 1);
//  - narrow ones (late layers, 4x4 or 2x2 images): runs of 2-4 values would cost a
//    mispredicted branch each, so the block's input offsets for one tap (r, s) go into a
//    table once, and every channel's row is a branch-free gather through it.
constexpr int kMinRun = 16;

bool use_tap_table(const Conv2dParams& p, const Block& bl) {
  return p.Q() < kMinRun && (int64_t)bl.nb * p.C * p.H * p.W < INT32_MAX;  // offsets fit in int
}

// table[j] = offset, from channel 0 of the block's first image, of the input pixel that
// column j reads through tap (r, s); -1 where that pixel is zero padding.
void tap_table(const Conv2dParams& p, const Block& bl, int r, int s, int* table) {
  const int image = p.C * p.H * p.W;
  for (int i = 0; i < bl.nb; ++i)
    for (int oh = bl.p0; oh < bl.p1; ++oh) {
      const int h = oh * p.stride - p.pad + r;
      for (int q = 0; q < p.Q(); ++q) {
        const int w = q * p.stride - p.pad + s;
        *table++ = (h >= 0 && h < p.H && w >= 0 && w < p.W) ? i * image + h * p.W + w : -1;
      }
    }
}

// Output columns q whose input column q*stride - pad + s lies inside [0, W): [q_lo, q_hi).
struct ColRange {
  int lo, hi;
};
ColRange valid_cols(const Conv2dParams& p, int s) {
  const int Q = p.Q();
  const int before = p.pad - s;      // input columns left of 0 for q = 0
  const int lo = before <= 0 ? 0 : std::min(Q, (before + p.stride - 1) / p.stride);
  const int end = p.W + p.pad - s;   // q*stride < end  <=>  input column < W
  const int hi = end <= 0 ? 0 : std::min(Q, (end + p.stride - 1) / p.stride);
  return {lo, std::max(lo, hi)};
}

// x (N, C, H, W) -> col (C*R*S, ldcol): row (c, r, s), column (i, oh, q) of the block holds
// x[n0 + i, c, oh*stride - pad + r, q*stride - pad + s], or 0 in the padding.
void im2col(const Conv2dParams& p, const Block& bl, const float* x, float* col, int ldcol) {
  const int H = p.H, W = p.W, Q = p.Q(), HW = H * W, cols = bl.cols(p);
  const int64_t image = (int64_t)p.C * HW;
  x += bl.n0 * image;  // (nb, C, H, W)
  if (use_tap_table(p, bl)) {
    int* table = thread_scratch<int>(0, cols);
    for (int r = 0; r < p.R; ++r)
      for (int s = 0; s < p.S; ++s) {
        tap_table(p, bl, r, s, table);
        for (int c = 0; c < p.C; ++c) {
          float* out = col + (int64_t)((c * p.R + r) * p.S + s) * ldcol;
          const float* xc = x + (int64_t)c * HW;
          for (int j = 0; j < cols; ++j) out[j] = table[j] >= 0 ? xc[table[j]] : 0.0f;
        }
      }
    return;
  }
  for (int c = 0; c < p.C; ++c)
    for (int r = 0; r < p.R; ++r)
      for (int s = 0; s < p.S; ++s) {
        const ColRange qr = valid_cols(p, s);
        const int off = s - p.pad;  // input column of output q is q*stride + off
        float* out = col + (int64_t)((c * p.R + r) * p.S + s) * ldcol;
        for (int i = 0; i < bl.nb; ++i)
          for (int oh = bl.p0; oh < bl.p1; ++oh, out += Q) {
            const int h = oh * p.stride - p.pad + r;
            if (h < 0 || h >= H) {
              std::fill(out, out + Q, 0.0f);
              continue;
            }
            const float* xrow = x + i * image + ((int64_t)c * H + h) * W;
            std::fill(out, out + qr.lo, 0.0f);
            if (p.stride == 1) {
              std::memcpy(out + qr.lo, xrow + qr.lo + off, sizeof(float) * (qr.hi - qr.lo));
            } else {
              for (int q = qr.lo; q < qr.hi; ++q) out[q] = xrow[q * p.stride + off];
            }
            std::fill(out + qr.hi, out + Q, 0.0f);
          }
      }
}

// The adjoint of im2col: dx (N, C, H, W) += the block's col. Several (r, s) rows land on
// the same input pixel, hence the accumulation. Within one row every column reads a
// different pixel, so the table path may add in any order.
void col2im(const Conv2dParams& p, const Block& bl, const float* col, int ldcol, float* dx) {
  const int H = p.H, W = p.W, Q = p.Q(), HW = H * W, cols = bl.cols(p);
  const int64_t image = (int64_t)p.C * HW;
  dx += bl.n0 * image;  // (nb, C, H, W)
  if (use_tap_table(p, bl)) {
    int* table = thread_scratch<int>(0, cols);
    for (int r = 0; r < p.R; ++r)
      for (int s = 0; s < p.S; ++s) {
        tap_table(p, bl, r, s, table);
        for (int c = 0; c < p.C; ++c) {
          const float* in = col + (int64_t)((c * p.R + r) * p.S + s) * ldcol;
          float* dxc = dx + (int64_t)c * HW;
          // Padding columns add 0 to pixel 0 rather than take a branch.
          for (int j = 0; j < cols; ++j) dxc[std::max(table[j], 0)] += table[j] >= 0 ? in[j] : 0.0f;
        }
      }
    return;
  }
  for (int c = 0; c < p.C; ++c)
    for (int r = 0; r < p.R; ++r)
      for (int s = 0; s < p.S; ++s) {
        const ColRange qr = valid_cols(p, s);
        const int off = s - p.pad;
        const float* in = col + (int64_t)((c * p.R + r) * p.S + s) * ldcol;
        for (int i = 0; i < bl.nb; ++i)
          for (int oh = bl.p0; oh < bl.p1; ++oh, in += Q) {
            const int h = oh * p.stride - p.pad + r;
            if (h < 0 || h >= H) continue;
            float* dxrow = dx + i * image + ((int64_t)c * H + h) * W;
            if (p.stride == 1) {
              float* d = dxrow + off;
              for (int q = qr.lo; q < qr.hi; ++q) d[q] += in[q];
            } else {
              for (int q = qr.lo; q < qr.hi; ++q) dxrow[q * p.stride + off] += in[q];
            }
          }
      }
}

// Calls f(block) for every block of task `t`, in order.
template <class F>
void for_each_block(const Conv2dParams& p, const Tiling& t, int task, F&& f) {
  const int n0 = task * t.images, nb = std::min(t.images, p.N - n0), P = p.P();
  for (int p0 = 0; p0 < P; p0 += t.rows) f(Block{n0, nb, p0, std::min(P, p0 + t.rows)});
}

// The column matrix of a block: (CRS, cols) with row stride *ld. Points into x itself for a
// 1x1 stride-1 unpadded conv on one image, else into the thread's scratch slot 0.
const float* columns_of(const Conv2dParams& p, const Block& bl, const float* x, int* ld) {
  const int64_t image = (int64_t)p.C * p.H * p.W;
  const int Q = p.Q();
  if (is_pointwise(p) && bl.nb == 1) {
    *ld = p.H * p.W;
    return x + bl.n0 * image + bl.p0 * Q;
  }
  const int cols = bl.cols(p);
  float* col = thread_scratch<float>(0, (size_t)p.C * p.R * p.S * cols);
  im2col(p, bl, x, col, cols);
  *ld = cols;
  return col;
}

// dy of a block as a (K, cols) matrix with row stride *ld: in place for one image, else
// gathered from the nb images into the thread's scratch slot 1.
const float* output_grad_of(const Conv2dParams& p, const Block& bl, const float* dy, int* ld) {
  const int PQ = p.P() * p.Q();
  if (bl.nb == 1) {
    *ld = PQ;
    return dy + (int64_t)bl.n0 * p.K * PQ + bl.p0 * p.Q();
  }
  const int cols = bl.cols(p);  // == nb * PQ (whole images)
  float* g = thread_scratch<float>(1, (size_t)p.K * cols);
  for (int i = 0; i < bl.nb; ++i)
    for (int k = 0; k < p.K; ++k)
      std::memcpy(g + (int64_t)k * cols + i * PQ, dy + ((int64_t)(bl.n0 + i) * p.K + k) * PQ,
                  sizeof(float) * PQ);
  *ld = cols;
  return g;
}

void run_tasks(int tasks, const std::function<void(int)>& body) {
  parallel_for(0, tasks, 1, [&](int t0, int t1) {
    for (int t = t0; t != t1; ++t) body(t);
  });
}

// ---- direct path

std::atomic<int>& algo_setting() {
  static std::atomic<int> a{[] {
    const char* env = std::getenv("DNNS_CONV");
    return (int)(env && *env ? parse_conv_algo(env) : ConvAlgo::Auto);
  }()};
  return a;
}

enum class Op { Forward, BackwardData, BackwardWeights };

// Where auto takes Winograd (winograd.h), measured with bench conv --model vgg16|resnet20
// --algo winograd --against direct --clock cpu --threads 1 (AMD EPYC, Zen 4), batch 128 and 1:
//   - forward and backward data, from 16 channels summed over (C for forward, K for backward
//     data): at batch 128, 1.1-2.7x on AVX-512 and 0.9-3.2x on AVX2 for every VGG-16 and
//     ResNet-20 layer of 16 channels and more, images of 32x32 down to 2x2 (F(4x4) from 8x8,
//     F(2x2) below); 0.7-1.0x for the 3-channel first layers' forward;
//   - a call of at least 128 tiles of the tile size it runs (N * ceil(H/m) * ceil(W/m)): the
//     filter transform is paid per call and a chunk is computed in whole vectors of tiles; at
//     batch 1 (64 F(4x4) tiles at 32x32 and less), 0.1-1.1x (forwards under 256 F(4x4) tiles
//     on images of 8x8 and more from 16 input channels, on a vector ISA, run F(4x4) for few
//     tiles instead: winograd_few_applies);
//   - not on the generic path (0.6-0.8x of im2col + OpenBLAS there).
// The weight gradient (F(2x2)): 1.3-1.8x on AVX-512, 1.1-1.9x on AVX2 for VGG-16's layers of
// 4x4 images and more, 1.2-1.5x for ResNet-20's 32x32 and 16x16 ones, first layers included;
// but 0.8-1.0x on 2x2 images, 0.7-1.1x for ResNet-20's 64 channels on 8x8, and at batch 1
// 0.5-0.9x below 32x32 (256 tiles). So: images of 4x4 and more, 256+ F(2x2) tiles, and
// images of 16x16 and more or 128+ input channels.
constexpr int kWinogradMinChannels = 16;
constexpr int64_t kWinogradMinTiles = 128;
constexpr int64_t kWinogradMinTilesWeights = 256;

// The fewest outputs (filters of a forward, input channels of a data gradient) for which auto
// takes Winograd over the direct kernels, by ISA and F(4x4) tiles per image. Winograd pays an
// input transform per tile and channel whatever the outputs, so few outputs do not repay it,
// and less so on small images, where the direct kernels run best (bench conv at batch 1-128 on
// 1 thread, 2026-11-30, AMD EPYC Zen 4, after the partial filter tiles of the direct kernels;
// Winograd / direct time at 16 and 48 channels, tile-vectorised and for few tiles alike):
//   32x32 and more (64+ tiles)  AVX-512: 8 outputs 0.87-1.35, 12 0.83-0.97, 16 0.63-0.78
//                               AVX2:    8 0.70-1.18, 12 0.40-0.93
//   16x16 (16-63 tiles)         AVX-512: 12 1.10-1.27, 16 0.79-1.03, 24 0.73-1.00
//                               AVX2:    16 0.93-1.45, 24 1.04-1.19, 32 0.89-1.20 (batch 128,
//                                        ResNet-20's 32 filters: 0.94)
//   8x8 and less                AVX-512: 24 1.17-1.37, 32 0.95-1.23, 48 0.87-1.09
//                               AVX2:    48 1.13-1.26, 64 at batch 128 0.93-0.95
// Compacted layers keep odd, small filter counts (4-28 in ResNet-20 at 90% sparsity), where
// Winograd had been taken from 16 summed channels and ran at up to half the direct speed.
// Only where the direct kernels apply (they were the alternative measured). (Unmeasured: a
// CPU that runs 512-bit FMAs at twice the 256-bit rate; the direct kernels of 8x8 images use
// 8-float vectors, and would favour Winograd sooner there.)
int winograd_min_outputs(int H, int W) {
  const int tiles = ((H + 3) / 4) * ((W + 3) / 4);
  const bool avx512 = cpu_isa() == Isa::Avx512;
  if (tiles >= 64) return 12;
  if (tiles >= 16) return avx512 ? 16 : 32;
  return avx512 ? 32 : 64;
}

bool is_gemm_forced() { return (ConvAlgo)algo_setting().load(std::memory_order_relaxed) == ConvAlgo::Gemm; }

// Whether `op` of this shape runs on the direct kernels (the ISA has them and they pay):
//   forward          rows of at least 8 output columns (vectors along the row); any stride
//                    and padding
//   backward data    stride 1 and padding below the kernel size (it is a stride-1 conv of the
//                    output gradient), input rows of at least 8 columns
//   backward weights rows of at least 8 output columns and at least 4 input channels
//                    (vectors along filters)
// and never for 1x1 kernels. Where they do not apply, the GEMM path measured as fast or
// faster (bench conv --clock cpu, AMD EPYC, AVX-512): 0.85-0.93x for the direct forward and
// weight gradient of ResNet-20's 1x1 stride-2 shortcuts, 0.53-0.87x for the weight gradient
// of VGG-16's 4x4 and 2x2 layers, 0.74-0.84x for that of the 3-channel first layers.
bool direct_applies(const Conv2dParams& p, Op op) {
  if (is_gemm_forced() || cpu_isa() == Isa::Generic || p.R * p.S == 1) return false;
  switch (op) {
    case Op::Forward: return p.Q() >= 8;
    case Op::BackwardData: return p.stride == 1 && p.pad <= p.R - 1 && p.pad <= p.S - 1 && p.W >= 8 && p.R * p.S > 1;
    case Op::BackwardWeights: return p.Q() >= 8 && p.C >= 4;
  }
  return false;
}

// Whether `op` of this shape runs Winograd (forward, backward data: a 3x3 stride-1
// pad-1 conv too, with the filters flipped and transposed, and backward weights): any such
// shape when forced, under auto where it measured faster (above).
bool winograd_applies(const Conv2dParams& p, Op op) {
  const ConvAlgo algo = (ConvAlgo)algo_setting().load(std::memory_order_relaxed);
  if (algo == ConvAlgo::Gemm || algo == ConvAlgo::Direct) return false;
  if (p.R != 3 || p.S != 3 || p.stride != 1 || p.pad != 1) return false;
  if (algo == ConvAlgo::Winograd) return true;
  if (cpu_isa() == Isa::Generic) return false;
  auto tiles = [&](int m) { return (int64_t)p.N * ((p.H + m - 1) / m) * ((p.W + m - 1) / m); };
  if (op == Op::BackwardWeights)  // F(2x2)
    return tiles(2) >= kWinogradMinTilesWeights && p.H >= 4 && p.W >= 4 && (p.H * p.W >= 256 || p.C >= 128);
  // The outputs threshold was measured against the direct kernels: where they do not apply
  // (images under 8 columns), Winograd stays the choice.
  const int summed = op == Op::Forward ? p.C : p.K, outputs = op == Op::Forward ? p.K : p.C;
  return summed >= kWinogradMinChannels &&
         (outputs >= winograd_min_outputs(p.H, p.W) || !direct_applies(p, op)) &&
         tiles(winograd_tile(p.H, p.W)) >= kWinogradMinTiles;
}

// Whether the forward of this shape runs F(4x4, 3x3) for few tiles (winograd_conv_few, vectors
// across filters, the filters transformed per call): 3x3 stride-1 pad-1 convolutions on images
// of 8x8 and more with fewer than 256 tiles (N * ceil(H/4) * ceil(W/4): a batch of 1-3 at
// 32x32, up to 15 at 16x16, up to 63 at 8x8); under auto from 16 input channels and on a
// vector ISA; any such shape when forced (the tile-vectorised Winograd takes the rest).
// bench conv --model vgg16 --clock cpu --threads 1, AMD EPYC (Zen 4), loaded machine, against
// the direct kernels: batch 1 2.1x at 32x32 and 16x16, 1.3-1.4x at 8x8 (where weight streaming
// or the direct kernels ran before, about 1.0x) on AVX-512, 2.2-2.7x and 1.3x on AVX2; batch 2
// 1.9-2.1x and 1.7x (the tile-vectorised Winograd 1.5x on the 128 tiles of 32x32); batch 4
// 2.1-2.2x at 16x16 and 8x8 but 1.8x at 32x32 (256 tiles) where the tile-vectorised one gives
// 1.9x; batch 16 at 16x16 (256 tiles) 1.9-2.0x against 1.7-2.2x. Below 16 channels (the first
// layers) the direct kernels run.
constexpr int64_t kWinogradFewMaxTiles = 256;
bool winograd_few_applies(const Conv2dParams& p) {
  const ConvAlgo algo = (ConvAlgo)algo_setting().load(std::memory_order_relaxed);
  if (algo == ConvAlgo::Gemm || algo == ConvAlgo::Direct) return false;
  if (p.R != 3 || p.S != 3 || p.stride != 1 || p.pad != 1 || p.H < 8 || p.W < 8) return false;
  if ((int64_t)p.N * ((p.H + 3) / 4) * ((p.W + 3) / 4) >= kWinogradFewMaxTiles) return false;
  if (algo == ConvAlgo::Winograd) return true;
  return cpu_isa() != Isa::Generic && p.C >= kWinogradMinChannels && p.K >= winograd_min_outputs(p.H, p.W);
}

// The padded copy of one image (conv_direct.h): Hp = H + 2*ph rows of RP = st * L floats,
// L = ceil(Wp / st), Wp = W + 2*pw, and the tap offsets of an R x S kernel over it.
struct PaddedLayout {
  int C, H, W, ph, pw, st, Hp, Wp, L, RP, plane;
  std::vector<int> toff;  // (R * S)
  size_t floats;          // C * plane + slack
};

PaddedLayout padded_layout(int C, int H, int W, int ph, int pw, int st, int R, int S, int vec) {
  PaddedLayout g;
  g.C = C, g.H = H, g.W = W, g.ph = ph, g.pw = pw, g.st = st;
  g.Hp = H + 2 * ph, g.Wp = W + 2 * pw;
  g.L = (g.Wp + st - 1) / st;
  g.RP = st * g.L;
  g.plane = g.Hp * g.RP;
  g.toff.resize((size_t)R * S);
  for (int r = 0; r < R; ++r)
    for (int s = 0; s < S; ++s) g.toff[(size_t)r * S + s] = r * g.RP + (s % st) * g.L + s / st;
  g.floats = (size_t)C * g.plane + g.RP + vec;
  return g;
}

DirectShape direct_shape(const PaddedLayout& g, int K, int R, int S, int P, int Q) {
  DirectShape s;
  s.C = g.C, s.K = K, s.R = R, s.S = S, s.stride = g.st, s.RP = g.RP, s.plane = g.plane, s.P = P, s.Q = Q;
  s.toff = g.toff.data();
  return s;
}

// xp = x (C, H, W) laid out as g says, zero in the padding, the phase tails and the slack.
void pad_image(const PaddedLayout& g, const float* x, float* xp) {
  row_kernels().pad_image(x, g.C, g.H, g.W, g.ph, g.pw, g.st, g.L, g.RP, (int64_t)g.floats, xp);
}

// Packs filters for the forward kernel: src(k, c, t) for k < K, c < C, t < T (T = R*S) ->
// (ceil(K / kb), C, T, kb), zero past K.
template <class Src>
std::vector<float> pack_filters(int K, int C, int T, int kb, Src src) {
  const int blocks = (K + kb - 1) / kb;
  std::vector<float> out((size_t)blocks * C * T * kb, 0.0f);
  for (int k = 0; k < K; ++k) {
    float* dst = out.data() + (size_t)(k / kb) * C * T * kb + k % kb;
    for (int c = 0; c < C; ++c)
      for (int t = 0; t < T; ++t) dst[((size_t)c * T + t) * kb] = src(k, c, t);
  }
  return out;
}

// Filter groups per image of direct_batch: enough tasks for every thread on a small batch.
int direct_groups(int K, int kb, int N) {
  const int blocks = (K + kb - 1) / kb;
  return std::max(1, std::min(blocks, (4 * num_threads() + N - 1) / N));
}

// Runs `forward` of the direct kernels over a batch: task (n, g) computes filter group g of
// image n, so a small batch still gives every thread work. x_image: the input of image n is
// x + n * x_image, padded as g says; the output of image n is y + n * K * P * Q.

void direct_batch(const DirectKernels& dk, const PaddedLayout& g, const DirectShape& s, int N, const float* x,
                  int64_t x_image, const float* wpk, const float* bias, bool relu, float* y) {
  const int blocks = (s.K + dk.kb - 1) / dk.kb;
  const int groups = direct_groups(s.K, dk.kb, N);
  const int64_t out_image = (int64_t)s.K * s.P * s.Q;
  if (groups > 1) {
    // A small batch split into filter groups: each image padded once for all its groups (into
    // a buffer of this call, conv_forward_scratch's `call`), not once per group.
    std::unique_ptr<float[]> padded(new float[(size_t)N * g.floats]);
    parallel_for(0, N, 1, [&](int n0, int n1) {
      for (int n = n0; n != n1; ++n) pad_image(g, x + n * x_image, padded.get() + (size_t)n * g.floats);
    });
    parallel_for(0, N * groups, 1, [&](int t0, int t1) {
      for (int t = t0; t != t1; ++t) {
        const int n = t / groups, grp = t % groups;
        const int k0 = std::min(s.K, blocks * grp / groups * dk.kb),
                  k1 = std::min(s.K, blocks * (grp + 1) / groups * dk.kb);
        if (k0 < k1) dk.forward(s, padded.get() + (size_t)n * g.floats, wpk, bias, relu, y + n * out_image, k0, k1);
      }
    });
    return;
  }
  parallel_for(0, N * groups, 1, [&](int t0, int t1) {
    for (int t = t0; t != t1; ++t) {
      const int n = t / groups, grp = t % groups;
      const int k0 = std::min(s.K, blocks * grp / groups * dk.kb), k1 = std::min(s.K, blocks * (grp + 1) / groups * dk.kb);
      if (k0 >= k1) continue;
      float* xp = thread_scratch<float>(0, g.floats);
      pad_image(g, x + n * x_image, xp);
      dk.forward(s, xp, wpk, bias, relu, y + n * out_image, k0, k1);
    }
  });
}

void direct_forward(const Conv2dParams& p, const float* x, const float* w, const float* b, float* y, bool relu) {
  const DirectKernels& dk = *direct_kernels(cpu_isa(), p.Q());
  const int CRS = p.C * p.R * p.S, RS = p.R * p.S;
  const PaddedLayout g = padded_layout(p.C, p.H, p.W, p.pad, p.pad, p.stride, p.R, p.S, dk.vec);
  const DirectShape s = direct_shape(g, p.K, p.R, p.S, p.P(), p.Q());
  const std::vector<float> wpk =
      pack_filters(p.K, p.C, RS, dk.kb, [&](int k, int c, int t) { return w[(int64_t)k * CRS + c * RS + t]; });
  direct_batch(dk, g, s, p.N, x, (int64_t)p.C * p.H * p.W, wpk.data(), b, relu, y);
}

// dx = the stride-1 convolution of dy, padded by R-1-pad rows and S-1-pad columns, with the
// filters flipped in both axes and transposed (K inputs, C outputs).
void direct_backward_data(const Conv2dParams& p, const float* dy, const float* w, float* dx) {
  const DirectKernels& dk = *direct_kernels(cpu_isa(), p.W);
  const int CRS = p.C * p.R * p.S, RS = p.R * p.S, P = p.P(), Q = p.Q();
  const PaddedLayout g = padded_layout(p.K, P, Q, p.R - 1 - p.pad, p.S - 1 - p.pad, 1, p.R, p.S, dk.vec);
  const DirectShape s = direct_shape(g, p.C, p.R, p.S, p.H, p.W);
  const std::vector<float> wpk = pack_filters(p.C, p.K, RS, dk.kb, [&](int c, int k, int t) {
    return w[(int64_t)k * CRS + c * RS + (RS - 1 - t)];  // tap (r, s) <- (R-1-r, S-1-s)
  });
  direct_batch(dk, g, s, p.N, dy, (int64_t)p.K * P * Q, wpk.data(), nullptr, false, dx);
}

// The images are split into G contiguous groups (G = threads); each group sums its images'
// gradients into its own transposed buffer (C*R*S, Kp), and dw is their sum in group order,
// transposed back: the result depends on the thread count only, not on scheduling. Within a
// group, images go through the kernel in blocks sized to stay in L2, each image's input
// padded and its output gradient transposed to (P*Q, Kp) first. The kernels vectorise over
// filters, so they are chosen by K.
void direct_backward_weights(const Conv2dParams& p, const float* x, const float* dy, float* dw, float* db) {
  // Two vectors of filters per tile: 16-float vectors from 32 filters up, 8-float ones below.
  const DirectKernels& dk = *direct_kernels(cpu_isa(), p.K >= 32 ? 16 : 8);
  const int K = p.K, P = p.P(), Q = p.Q(), PQ = P * Q, CRS = p.C * p.R * p.S;
  const int Kp = (K + dk.vec - 1) / dk.vec * dk.vec;
  const int64_t image = (int64_t)p.C * p.H * p.W, out_image = (int64_t)K * PQ, tsize = (int64_t)CRS * Kp;
  const PaddedLayout lay = padded_layout(p.C, p.H, p.W, p.pad, p.pad, p.stride, p.R, p.S, dk.vec);
  const DirectShape s = direct_shape(lay, K, p.R, p.S, P, Q);
  const size_t padded = lay.floats, transposed = (size_t)PQ * Kp;
  constexpr int kMaxBlock = 16;
  const int block = (int)std::max<size_t>(1, std::min<size_t>(kMaxBlock, (size_t(512) << 10) / (4 * (padded + transposed))));
  const int G = std::max(1, std::min(p.N, num_threads()));
  std::unique_ptr<float[]> partial(new float[(size_t)G * tsize]);  // (G, CRS, Kp), each zeroed by its group
  std::vector<double> partial_db((size_t)G * K, 0.0);          // (G, K)
  const RowKernels& rows = row_kernels();
  parallel_for(0, G, [&](int g) {
    float* acc = partial.get() + g * tsize;
    std::fill(acc, acc + tsize, 0.0f);
    double* acc_db = partial_db.data() + (int64_t)g * K;
    const int n0 = (int)((int64_t)p.N * g / G), n1 = (int)((int64_t)p.N * (g + 1) / G);
    float* xp = thread_scratch<float>(0, block * padded);
    float* dyT = thread_scratch<float>(1, block * transposed);
    const float* xps[kMaxBlock];
    const float* dyTs[kMaxBlock];
    for (int b0 = n0; b0 < n1; b0 += block) {
      const int nb = std::min(block, n1 - b0);
      for (int i = 0; i < nb; ++i) {
        const int n = b0 + i;
        float* xpi = xp + i * padded;
        float* dyTi = dyT + i * transposed;
        pad_image(lay, x + n * image, xpi);
        const float* dyn = dy + n * out_image;
        rows.transpose(dyn, K, PQ, Kp, dyTi);
        if (db)
          for (int k = 0; k < K; ++k) acc_db[k] += rows.row_sum(dyn + (int64_t)k * PQ, PQ);
        xps[i] = xpi;
        dyTs[i] = dyTi;
      }
      dk.backward_weights(s, nb, xps, dyTs, Kp, acc);
    }
  });
  // dw (K, CRS) = sum over groups of partial (CRS, Kp), transposed, in blocks of filters.
  parallel_for(0, K, 16, [&](int k0, int k1) {
    for (int j = 0; j < CRS; ++j)
      for (int k = k0; k < k1; ++k) {
        float sum = partial[(int64_t)j * Kp + k];
        for (int g = 1; g < G; ++g) sum += partial[g * tsize + (int64_t)j * Kp + k];
        dw[(int64_t)k * CRS + j] = sum;
      }
  });
  if (db)
    for (int k = 0; k < K; ++k) {
      double sum = 0.0;
      for (int g = 0; g < G; ++g) sum += partial_db[(size_t)g * K + k];
      db[k] = (float)sum;
    }
}

}  // namespace

const DirectKernels* direct_kernels(Isa isa, int Q) {
#if defined(DNNS_HAVE_X86_KERNELS)
  if (isa == Isa::Avx512) return Q > 8 ? direct_kernels_avx512() : direct_kernels_avx512_256();
  if (isa == Isa::Avx2) return direct_kernels_avx2();
#endif
  (void)isa;
  (void)Q;
  return nullptr;
}

void set_conv_algo(ConvAlgo algo) { algo_setting().store((int)algo, std::memory_order_relaxed); }
ConvAlgo conv_algo() { return (ConvAlgo)algo_setting().load(std::memory_order_relaxed); }

const char* conv_algo_name(ConvAlgo algo) {
  switch (algo) {
    case ConvAlgo::Auto: return "auto";
    case ConvAlgo::Gemm: return "gemm";
    case ConvAlgo::Direct: return "direct";
    case ConvAlgo::Winograd: return "winograd";
  }
  return "?";
}

ConvAlgo parse_conv_algo(const char* name) {
  for (ConvAlgo a : {ConvAlgo::Auto, ConvAlgo::Gemm, ConvAlgo::Direct, ConvAlgo::Winograd})
    if (std::strcmp(name, conv_algo_name(a)) == 0) return a;
  throw Error(std::string("unknown convolution algorithm '") + name + "' (expected auto, gemm, direct or winograd)");
}

// ---- Few outputs per filter: stream the weights once
// A forward with at most 64 outputs per filter (N*P*Q: a batch of 1 on VGG's 4x4 and 2x2
// layers; its 8x8 3x3 layers of 16+ channels run F(4x4) for few tiles first) is bound by
// reading the weights (9.4 MB for a 512 x 512 x 3 x 3 layer against 9-38 M
// multiply-adds). im2col + sgemm packs the weights again on every call and the direct kernels
// pack them too; here every filter's row is read once, in place, against the (C*R*S, J) patch
// matrix (J = the outputs rounded up to 16), walked in chunks that stay in cache: register tiles
// of filters x vectors of outputs in each ISA's width (rows.h stream_filters); for up to 4
// outputs (2x2 images), dot products along the rows against the patch matrix transposed
// (rows.h stream_dots), where 16-float vectors of outputs would be 3/4 padding.
// bench conv --model vgg16 --clock cpu --threads 1, AMD EPYC (Zen 4), loaded machine, before
// the few-tiles Winograd took them: the 256-channel 8x8 layers at batch 1 (64 outputs) 1.05 ->
// 0.83 ms against the direct kernels on
// AVX-512, 1.05 -> 0.98 on AVX2; the 512-channel 4x4 layers at batch 4 (64 outputs) 1.2x the
// speed of im2col + sgemm on AVX-512, 0.9-1.1x on AVX2; more in the README.
// Past 16 outputs, only from 128 filters: the patch matrix, built per call, costs about 1/K of
// the product (ResNet-20's 64 filters on 8x8 at batch 1: 0.09 ms streamed, 0.07 ms direct).
constexpr int kStreamOutputs = 64, kStreamNarrowOutputs = 16, kStreamMinFiltersWide = 128;
constexpr int64_t kStreamMinWeights = 4096;  // smaller layers: whichever path, it hardly matters

bool stream_applies(const Conv2dParams& p) {
  const int64_t outputs = (int64_t)p.N * p.P() * p.Q();
  return !is_gemm_forced() && outputs >= 1 && outputs <= kStreamOutputs &&
         (outputs <= kStreamNarrowOutputs || p.K >= kStreamMinFiltersWide) &&
         (int64_t)p.K * p.C * p.R * p.S >= kStreamMinWeights;
}

// Outputs per filter as the kernels take them: N*P*Q up to 4 as 4 (stream_dots), more rounded
// up to whole blocks of 16 (stream_filters).
int stream_width(const Conv2dParams& p) {
  const int J = p.N * p.P() * p.Q();
  if (J <= kStreamDotOutputs) return kStreamDotOutputs;
  return (J + kStreamOutputBlock - 1) / kStreamOutputBlock * kStreamOutputBlock;
}

void stream_forward(const Conv2dParams& p, const float* x, const float* w, const float* b, bool relu, float* y) {
  const int K = p.K, CRS = p.C * p.R * p.S, P = p.P(), Q = p.Q(), PQ = P * Q, J = p.N * PQ, jn = stream_width(p);
  const bool dots = jn == kStreamDotOutputs;
  // The patch matrix: entry (i, j) = input value i = (c, r, s) of output j = (n, p, q), 0 past J;
  // col (CRS, jn) for stream_filters, transposed, colT (jn, CRS), for stream_dots.
  // Zero first, then only the entries inside the image are written: per kernel column s, the
  // output columns [lo, hi) that read inside it (valid_cols), no test per entry.
  const int64_t si = dots ? 1 : jn, sj = dots ? CRS : 1;
  std::vector<float> col((size_t)CRS * jn, 0.0f);
  for (int n = 0; n < p.N; ++n)
    for (int c = 0; c < p.C; ++c) {
      const float* xc = x + ((int64_t)n * p.C + c) * p.H * p.W;
      for (int r = 0; r < p.R; ++r)
        for (int s = 0; s < p.S; ++s) {
          float* row = col.data() + ((int64_t)(c * p.R + r) * p.S + s) * si + n * PQ * sj;
          const ColRange qr = valid_cols(p, s);
          for (int pp = 0; pp < P; ++pp) {
            const int h = pp * p.stride - p.pad + r;
            if (h < 0 || h >= p.H) continue;
            const int base = h * p.W + s - p.pad;  // output column q reads xc[base + q * stride]
            float* out = row + (int64_t)pp * Q * sj;
            for (int q = qr.lo; q < qr.hi; ++q) out[q * sj] = xc[base + q * p.stride];
          }
        }
    }
  // Tasks of whole blocks of 8 filters, about 4 per thread: each streams its filters' weights
  // once and reads the patch matrix once (stream_filters walks it in chunks).
  constexpr int kb = 8;
  const int blocks = (K + kb - 1) / kb, tasks = std::min(blocks, 4 * num_threads());
  const RowKernels& rk = row_kernels();
  parallel_for(0, tasks, 1, [&](int t0, int t1) {
    for (int t = t0; t < t1; ++t) {
      const int k0 = std::min(K, blocks * t / tasks * kb), k1 = std::min(K, blocks * (t + 1) / tasks * kb);
      std::vector<float> out((size_t)(k1 - k0) * jn);  // (k1 - k0, jn)
      if (dots) rk.stream_dots(w + (int64_t)k0 * CRS, CRS, k1 - k0, CRS, col.data(), out.data());
      else rk.stream_filters(w + (int64_t)k0 * CRS, CRS, k1 - k0, CRS, col.data(), jn, out.data());
      for (int k = k0; k < k1; ++k) {
        const float bias = b ? b[k] : 0.0f;
        const float* o = out.data() + (int64_t)(k - k0) * jn;
        for (int j = 0; j < J; ++j) {
          const float v = o[j] + bias;
          y[((int64_t)(j / PQ) * K + k) * PQ + j % PQ] = relu && !(v > 0.0f) ? 0.0f : v;
        }
      }
    }
  });
}

std::string conv_path(const Conv2dParams& p) {
  auto one = [&](Op op, int width) {
    if (op == Op::Forward && stream_applies(p) && !winograd_applies(p, op)) return std::string("stream");
    return direct_applies(p, op) ? std::string("direct ") + direct_kernels(cpu_isa(), width)->name : std::string("gemm");
  };
  auto or_winograd = [&](Op op, std::string path) {
    return winograd_applies(p, op) ? std::string("winograd ") + winograd_kernels(cpu_isa()).name : path;
  };
  const std::string f = winograd_few_applies(p) ? std::string("winograd-few ") + winograd_kernels(cpu_isa()).name
                                                 : or_winograd(Op::Forward, one(Op::Forward, p.Q())),
                    d = or_winograd(Op::BackwardData, one(Op::BackwardData, p.W)),
                    w = or_winograd(Op::BackwardWeights, one(Op::BackwardWeights, p.K >= 32 ? 16 : 8));
  return f == d && d == w ? f : f + " | " + d + " | " + w;
}

void conv2d_forward(const Conv2dParams& p, const float* x, const float* w, const float* b, float* y) {
  // x (N, C, H, W)   w (K, C*R*S)   b (K) or nullptr   y (N, K, P, Q)
  check_conv_params(p, "conv2d_forward");
  if (winograd_few_applies(p)) return winograd_conv_few(p.N, p.C, p.H, p.W, p.K, x, w, b, false, y);
  if (winograd_applies(p, Op::Forward)) return winograd_conv(p.N, p.C, p.H, p.W, p.K, x, w, false, b, false, y);
  if (stream_applies(p)) return stream_forward(p, x, w, b, false, y);
  if (direct_applies(p, Op::Forward)) return direct_forward(p, x, w, b, y, false);
  const int K = p.K, CRS = p.C * p.R * p.S, Q = p.Q(), PQ = p.P() * Q;
  const Tiling t = plan_tiles(p);
  run_tasks(t.tasks, [&](int task) {
    for_each_block(p, t, task, [&](const Block& bl) {
      int ldcol;
      const float* col = columns_of(p, bl, x, &ldcol);  // (CRS, cols)
      const int cols = bl.cols(p);
      if (bl.nb == 1) {
        // The GEMM writes straight into y_n's rows [p0, p1): (K, cols) with row stride PQ.
        float* out = y + (int64_t)bl.n0 * K * PQ + bl.p0 * Q;
        sgemm(false, false, K, cols, CRS, 1.0f, w, CRS, col, ldcol, 0.0f, out, PQ);
        if (b)
          for (int k = 0; k < K; ++k)
            for (int j = 0; j < cols; ++j) out[(int64_t)k * PQ + j] += b[k];
        return;
      }
      float* out = thread_scratch<float>(1, (size_t)K * cols);  // (K, nb * PQ)
      sgemm(false, false, K, cols, CRS, 1.0f, w, CRS, col, ldcol, 0.0f, out, cols);
      for (int i = 0; i < bl.nb; ++i)
        for (int k = 0; k < K; ++k) {
          const float* src = out + (int64_t)k * cols + i * PQ;
          float* dst = y + ((int64_t)(bl.n0 + i) * K + k) * PQ;
          const float bias = b ? b[k] : 0.0f;
          for (int j = 0; j < PQ; ++j) dst[j] = src[j] + bias;
        }
    });
  });
}

ConvScratch conv_forward_scratch(const Conv2dParams& p) {
  ConvScratch r;
  if (winograd_few_applies(p)) {
    winograd_few_scratch(p.N, p.C, p.H, p.W, p.K, &r.slot0, &r.slot1, &r.call);
  } else if (winograd_applies(p, Op::Forward)) {
    winograd_scratch(p.N, p.C, p.H, p.W, p.K, &r.slot0, &r.slot1, &r.call);
  } else if (stream_applies(p)) {
    r.call = ((int64_t)p.C * p.R * p.S + p.K) * stream_width(p);  // the patch matrix, the tasks' outputs
  } else if (direct_applies(p, Op::Forward)) {
    const DirectKernels& dk = *direct_kernels(cpu_isa(), p.Q());
    const int64_t floats = (int64_t)padded_layout(p.C, p.H, p.W, p.pad, p.pad, p.stride, p.R, p.S, dk.vec).floats;
    if (direct_groups(p.K, dk.kb, p.N) > 1) r.call = p.N * floats;  // direct_batch pads each image once
    else r.slot0 = floats;
  } else {
    const Tiling t = plan_tiles(p);
    const int64_t cols = (int64_t)t.images * (t.images > 1 ? p.P() : std::min(p.P(), t.rows)) * p.Q();
    if (!(is_pointwise(p) && t.images == 1)) r.slot0 = (int64_t)p.C * p.R * p.S * cols;
    if (t.images > 1) r.slot1 = (int64_t)p.K * cols;
  }
  return r;
}

void conv2d_forward_relu(const Conv2dParams& p, const float* x, const float* w, const float* b, float* y) {
  check_conv_params(p, "conv2d_forward_relu");
  if (winograd_few_applies(p)) return winograd_conv_few(p.N, p.C, p.H, p.W, p.K, x, w, b, true, y);
  if (winograd_applies(p, Op::Forward)) return winograd_conv(p.N, p.C, p.H, p.W, p.K, x, w, false, b, true, y);
  if (stream_applies(p)) return stream_forward(p, x, w, b, true, y);
  if (direct_applies(p, Op::Forward)) return direct_forward(p, x, w, b, y, true);
  conv2d_forward(p, x, w, b, y);
  relu_forward((int64_t)p.N * p.K * p.P() * p.Q(), y, y);
}

void conv2d_backward_data(const Conv2dParams& p, const float* dy, const float* w, float* dx) {
  // dy (N, K, P, Q)   w (K, C*R*S)   dx (N, C, H, W)
  // dcol (CRS, cols) = w^T dy_block, then col2im adds each column back onto the pixels it
  // was read from. All blocks of one image run in one task, so col2im never races.
  check_conv_params(p, "conv2d_backward_data");
  if (winograd_applies(p, Op::BackwardData))  // filters flipped and transposed: C from K
    return winograd_conv(p.N, p.K, p.H, p.W, p.C, dy, w, true, nullptr, false, dx);
  if (direct_applies(p, Op::BackwardData)) return direct_backward_data(p, dy, w, dx);
  const int K = p.K, CRS = p.C * p.R * p.S, PQ = p.P() * p.Q();
  const int64_t image = (int64_t)p.C * p.H * p.W;
  const Tiling t = plan_tiles(p);
  const bool pointwise = is_pointwise(p);
  run_tasks(t.tasks, [&](int task) {
    const int n0 = task * t.images, nb = std::min(t.images, p.N - n0);
    if (!(pointwise && nb == 1)) std::fill(dx + n0 * image, dx + (n0 + nb) * image, 0.0f);
    for_each_block(p, t, task, [&](const Block& bl) {
      int lddy;
      const float* g = output_grad_of(p, bl, dy, &lddy);  // (K, cols)
      const int cols = bl.cols(p);
      if (pointwise && bl.nb == 1) {
        // dx_n rows [p0, p1) are the column matrix itself: (C, cols) with row stride HW.
        sgemm(true, false, CRS, cols, K, 1.0f, w, CRS, g, lddy, 0.0f,
              dx + bl.n0 * image + bl.p0 * p.Q(), PQ);
        return;
      }
      float* dcol = thread_scratch<float>(0, (size_t)CRS * cols);  // (CRS, cols)
      sgemm(true, false, CRS, cols, K, 1.0f, w, CRS, g, lddy, 0.0f, dcol, cols);
      col2im(p, bl, dcol, cols, dx);
    });
  });
}

void conv2d_backward_weights(const Conv2dParams& p, const float* x, const float* dy, float* dw,
                             float* db) {
  // x (N, C, H, W)   dy (N, K, P, Q)   dw (K, C*R*S)   db (K) or nullptr
  // dw = sum over blocks of dy_block (K, cols) * col_block^T (cols, CRS). The tasks are split
  // into G contiguous groups (G = threads); each group sums into its own dw (group 0 into dw
  // itself) and the partials are added at the end in a fixed order, so the result does not
  // depend on scheduling (only on the thread count).
  check_conv_params(p, "conv2d_backward_weights");
  if (winograd_applies(p, Op::BackwardWeights))
    return winograd_backward_weights(p.N, p.C, p.H, p.W, p.K, x, dy, dw, db);
  if (p.N > 0)
    if (direct_applies(p, Op::BackwardWeights)) return direct_backward_weights(p, x, dy, dw, db);
  const int K = p.K, CRS = p.C * p.R * p.S;
  const int64_t wsize = (int64_t)K * CRS;
  const Tiling t = plan_tiles(p);
  if (t.tasks == 0) {  // empty batch: no gradient
    std::fill(dw, dw + wsize, 0.0f);
    if (db) std::fill(db, db + K, 0.0f);
    return;
  }
  const int G = std::max(1, std::min(t.tasks, num_threads()));
  // Allocated per call (not thread scratch): it lives across the parallel_for below.
  std::unique_ptr<float[]> partial_dw(new float[(size_t)(G - 1) * wsize]);  // (G-1, K, CRS)
  std::vector<double> partial_db((size_t)G * K, 0.0);                        // (G, K)
  parallel_for(0, G, [&](int g) {
    float* acc = g == 0 ? dw : partial_dw.get() + (g - 1) * wsize;  // (K, CRS)
    double* acc_db = partial_db.data() + (int64_t)g * K;             // (K)
    const int first = (int)((int64_t)t.tasks * g / G), last = (int)((int64_t)t.tasks * (g + 1) / G);
    float beta = 0.0f;  // the group's first GEMM overwrites acc, the others add to it
    for (int task = first; task < last; ++task)
      for_each_block(p, t, task, [&](const Block& bl) {
        int ldcol, lddy;
        const float* col = columns_of(p, bl, x, &ldcol);        // (CRS, cols)
        const float* g_out = output_grad_of(p, bl, dy, &lddy);  // (K, cols)
        const int cols = bl.cols(p);
        sgemm(false, true, K, CRS, cols, 1.0f, g_out, lddy, col, ldcol, beta, acc, CRS);
        beta = 1.0f;
        if (db)
          for (int k = 0; k < K; ++k) {
            const float* row = g_out + (int64_t)k * lddy;
            float s = 0.0f;
            for (int j = 0; j < cols; ++j) s += row[j];
            acc_db[k] += s;
          }
      });
  });
  if (G > 1)
    parallel_for(int64_t(0), wsize, int64_t(16384), [&](int64_t i0, int64_t i1) {
      for (int g = 1; g < G; ++g) {
        const float* src = partial_dw.get() + (g - 1) * wsize;
        for (int64_t i = i0; i < i1; ++i) dw[i] += src[i];
      }
    });
  if (db)
    for (int k = 0; k < K; ++k) {
      double s = 0.0;
      for (int g = 0; g < G; ++g) s += partial_db[(size_t)g * K + k];
      db[k] = (float)s;
    }
}

}  // namespace dnns::cpu
