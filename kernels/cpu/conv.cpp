// Optimized CPU convolution, parallel over images with oneTBB, by one of two algorithms:
//   direct  stride-1 convolutions with a kernel of at least 2 taps, rows of 8 or more output
//           columns and padding below the kernel size (every 3x3 conv of VGG and ResNet but the
//           strided ones and the 4x4 / 2x2 late VGG layers) on a CPU with AVX2 or AVX-512:
//           register-blocked direct kernels (conv_direct.h) on a zero-padded copy of each image,
//           for forward, backward-data (a direct conv of the padded output gradient with the
//           flipped, transposed filters) and backward-weights.
//   gemm    everything else, and every conv on a CPU without them: im2col + OpenBLAS sgemm,
//           described below.
// set_conv_algo / DNNS_CONV=gemm|direct|auto force one (direct only where it applies);
// conv_algo_name says which one a shape takes.
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

// The direct kernels for this shape, or nullptr when it takes the GEMM path.
const DirectKernels* direct_for(const Conv2dParams& p) {
  if ((ConvAlgo)algo_setting().load(std::memory_order_relaxed) == ConvAlgo::Gemm) return nullptr;
  if (p.stride != 1 || p.R * p.S < 2 || p.pad > p.R - 1 || p.pad > p.S - 1 || p.Q() < 8) return nullptr;
  return direct_kernels(cpu_isa(), p.Q());
}

// xp (C, H + 2*ph, W + 2*pw) + slack zeros = x (C, H, W) with ph zero rows above and below and
// pw zero columns left and right of every channel.
void pad_image(const float* x, int C, int H, int W, int ph, int pw, int slack, float* xp) {
  const int Wp = W + 2 * pw, Hp = H + 2 * ph;
  for (int c = 0; c < C; ++c, x += (int64_t)H * W) {
    float* out = xp + (int64_t)c * Hp * Wp;
    std::fill(out, out + (int64_t)ph * Wp + pw, 0.0f);
    out += (int64_t)ph * Wp;
    for (int h = 0; h < H; ++h, out += Wp) {
      std::fill(out, out + pw, 0.0f);
      std::memcpy(out + pw, x + (int64_t)h * W, sizeof(float) * W);
      std::fill(out + pw + W, out + Wp, 0.0f);
    }
    std::fill(out, out + (int64_t)ph * Wp, 0.0f);
  }
  std::fill(xp + (int64_t)C * Hp * Wp, xp + (int64_t)C * Hp * Wp + slack, 0.0f);
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

// Runs `forward` of the direct kernels over a batch: task (n, g) computes filter group g of
// image n, so a small batch still gives every thread work. pad_one(n, xp) fills the padded
// input of image n; the output of image n is y + n * out_image.
template <class PadOne>
void direct_batch(const DirectKernels& dk, const DirectShape& s, int N, const float* wpk, const float* bias,
                  bool relu, float* y, PadOne pad_one) {
  const int blocks = (s.K + dk.kb - 1) / dk.kb;
  const int groups = std::max(1, std::min(blocks, (4 * num_threads() + N - 1) / N));
  const int64_t out_image = (int64_t)s.K * s.P * s.Q;
  const size_t padded = (size_t)s.C * s.Hp * s.Wp + dk.vec;
  parallel_for(0, N * groups, 1, [&](int t0, int t1) {
    for (int t = t0; t != t1; ++t) {
      const int n = t / groups, g = t % groups;
      const int k0 = std::min(s.K, blocks * g / groups * dk.kb), k1 = std::min(s.K, blocks * (g + 1) / groups * dk.kb);
      if (k0 >= k1) continue;
      float* xp = thread_scratch<float>(0, padded);
      pad_one(n, xp);
      dk.forward(s, xp, wpk, bias, relu, y + n * out_image, k0, k1);
    }
  });
}

void direct_forward(const DirectKernels& dk, const Conv2dParams& p, const float* x, const float* w,
                    const float* b, float* y) {
  const int CRS = p.C * p.R * p.S, RS = p.R * p.S;
  const DirectShape s{p.C, p.K, p.R, p.S, p.H + 2 * p.pad, p.W + 2 * p.pad, p.P(), p.Q()};
  const std::vector<float> wpk =
      pack_filters(p.K, p.C, RS, dk.kb, [&](int k, int c, int t) { return w[(int64_t)k * CRS + c * RS + t]; });
  const int64_t image = (int64_t)p.C * p.H * p.W;
  direct_batch(dk, s, p.N, wpk.data(), b, false, y, [&](int n, float* xp) {
    pad_image(x + n * image, p.C, p.H, p.W, p.pad, p.pad, dk.vec, xp);
  });
}

// dx = the stride-1 convolution of dy, padded by R-1-pad rows and S-1-pad columns, with the
// filters flipped in both axes and transposed (K inputs, C outputs).
void direct_backward_data(const DirectKernels& dk, const Conv2dParams& p, const float* dy, const float* w,
                          float* dx) {
  const int CRS = p.C * p.R * p.S, RS = p.R * p.S, P = p.P(), Q = p.Q();
  const int ph = p.R - 1 - p.pad, pw = p.S - 1 - p.pad;
  const DirectShape s{p.K, p.C, p.R, p.S, P + 2 * ph, Q + 2 * pw, p.H, p.W};
  const std::vector<float> wpk = pack_filters(p.C, p.K, RS, dk.kb, [&](int c, int k, int t) {
    return w[(int64_t)k * CRS + c * RS + (RS - 1 - t)];  // tap (r, s) <- (R-1-r, S-1-s)
  });
  const int64_t out_image = (int64_t)p.K * P * Q;
  direct_batch(dk, s, p.N, wpk.data(), nullptr, false, dx, [&](int n, float* dyp) {
    pad_image(dy + n * out_image, p.K, P, Q, ph, pw, dk.vec, dyp);
  });
}

// The images are split into G contiguous groups (G = threads); each group sums its images'
// gradients into its own buffer (group 0 into dw), and the buffers are added in group order:
// the result depends on the thread count only, not on scheduling. Within a group, images go
// through the kernel in blocks sized to stay in L2, each image's input padded and its output
// gradient transposed to (P*Q, Kp) first. The kernels vectorise over filters, so they are
// chosen by K.
void direct_backward_weights(const Conv2dParams& p, const float* x, const float* dy, float* dw, float* db) {
  // Two vectors of filters per tile: 16-float vectors from 32 filters up, 8-float ones below.
  const DirectKernels& dk = *direct_kernels(cpu_isa(), p.K >= 32 ? 16 : 8);
  const int K = p.K, P = p.P(), Q = p.Q(), PQ = P * Q;
  const int Kp = (K + dk.vec - 1) / dk.vec * dk.vec;
  const int64_t wsize = (int64_t)K * p.C * p.R * p.S, image = (int64_t)p.C * p.H * p.W, out_image = (int64_t)K * PQ;
  const DirectShape s{p.C, K, p.R, p.S, p.H + 2 * p.pad, p.W + 2 * p.pad, P, Q};
  const size_t padded = (size_t)p.C * s.Hp * s.Wp + dk.vec, transposed = (size_t)PQ * Kp;
  const int block = (int)std::max<size_t>(1, std::min<size_t>(16, (size_t(512) << 10) / (4 * (padded + transposed))));
  const int G = std::max(1, std::min(p.N, num_threads()));
  std::unique_ptr<float[]> partial_dw(new float[(size_t)(G - 1) * wsize]());  // (G-1, K, CRS)
  std::vector<double> partial_db((size_t)G * K, 0.0);                          // (G, K)
  std::fill(dw, dw + wsize, 0.0f);
  parallel_for(0, G, [&](int g) {
    float* acc = g == 0 ? dw : partial_dw.get() + (g - 1) * wsize;
    double* acc_db = partial_db.data() + (int64_t)g * K;
    const int n0 = (int)((int64_t)p.N * g / G), n1 = (int)((int64_t)p.N * (g + 1) / G);
    float* xp = thread_scratch<float>(0, block * padded);
    float* dyT = thread_scratch<float>(1, block * transposed);
    const float* xps[16];
    const float* dyTs[16];
    for (int b0 = n0; b0 < n1; b0 += block) {
      const int nb = std::min(block, n1 - b0);
      for (int i = 0; i < nb; ++i) {
        const int n = b0 + i;
        float* xpi = xp + i * padded;
        float* dyTi = dyT + i * transposed;
        pad_image(x + n * image, p.C, p.H, p.W, p.pad, p.pad, dk.vec, xpi);
        const float* dyn = dy + n * out_image;
        for (int j0 = 0; j0 < PQ; j0 += 32) {  // in blocks of 32 pixels, which stay in L1
          const int j1 = std::min(PQ, j0 + 32);
          for (int k = 0; k < K; ++k)
            for (int j = j0; j < j1; ++j) dyTi[(int64_t)j * Kp + k] = dyn[(int64_t)k * PQ + j];
          for (int j = j0; j < j1; ++j) std::fill(dyTi + (int64_t)j * Kp + K, dyTi + (int64_t)(j + 1) * Kp, 0.0f);
        }
        if (db)
          for (int k = 0; k < K; ++k) {
            const float* row = dyn + (int64_t)k * PQ;
            float sum = 0.0f;
            for (int j = 0; j < PQ; ++j) sum += row[j];
            acc_db[k] += sum;
          }
        xps[i] = xpi;
        dyTs[i] = dyTi;
      }
      dk.backward_weights(s, nb, xps, dyTs, Kp, acc);
    }
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
  }
  return "?";
}

ConvAlgo parse_conv_algo(const char* name) {
  for (ConvAlgo a : {ConvAlgo::Auto, ConvAlgo::Gemm, ConvAlgo::Direct})
    if (std::strcmp(name, conv_algo_name(a)) == 0) return a;
  throw Error(std::string("unknown convolution algorithm '") + name + "' (expected auto, gemm or direct)");
}

std::string conv_path(const Conv2dParams& p) {
  const DirectKernels* dk = direct_for(p);
  return dk ? std::string("direct ") + dk->name : std::string("gemm");
}

void conv2d_forward(const Conv2dParams& p, const float* x, const float* w, const float* b, float* y) {
  // x (N, C, H, W)   w (K, C*R*S)   b (K) or nullptr   y (N, K, P, Q)
  check_conv_params(p, "conv2d_forward");
  if (const DirectKernels* dk = direct_for(p)) return direct_forward(*dk, p, x, w, b, y);
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

void conv2d_backward_data(const Conv2dParams& p, const float* dy, const float* w, float* dx) {
  // dy (N, K, P, Q)   w (K, C*R*S)   dx (N, C, H, W)
  // dcol (CRS, cols) = w^T dy_block, then col2im adds each column back onto the pixels it
  // was read from. All blocks of one image run in one task, so col2im never races.
  check_conv_params(p, "conv2d_backward_data");
  if (const DirectKernels* dk = direct_for(p)) return direct_backward_data(*dk, p, dy, w, dx);
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
  if (p.N > 0)
    if (direct_for(p)) return direct_backward_weights(p, x, dy, dw, db);
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
