// Streaming loops of the CPU kernels (batchnorm's reductions and element passes, the direct
// convolution's padding and transposes), compiled once per instruction set like the direct
// convolution kernels (rows_<isa>.cpp, the generic ones in rows.cpp) so that a baseline build
// still runs them with AVX2 / AVX-512 where the CPU has them. Plain loops in rows_impl.h:
// every ISA computes the same values in the same order (reductions go through a fixed number
// of lanes; no reassociation), so results do not depend on the CPU; except stream_dots, whose
// partial sums run in the build's own vector width (results differ by ISA within rounding).
#pragma once
#include <cstdint>

#include "kernels/cpu/isa.h"

namespace dnns::cpu {

constexpr int kRowLanes = 8;  // lanes of the double accumulators below
// stream_filters: outputs per filter in whole blocks of 16 (one AVX-512 vector); stream_dots:
// exactly 4.
constexpr int kStreamOutputBlock = 16, kStreamDotOutputs = 4;

struct RowKernels {
  // Over the n rows x + i * stride (i < n) of `len` floats each:
  // s[l] += sum of x, ss[l] += sum of x^2, lane l taking the elements j with j % 8 == l.
  void (*sum_sumsq)(const float* x, int64_t stride, int n, int len, double* s, double* ss);
  // s[l] += sum of dy, sx[l] += sum of dy * (x - mean), lanes as above.
  void (*grad_sums)(const float* x, const float* dy, int64_t stride, int n, int len, double mean, double* s,
                    double* sx);
  // y = (x - mean) * scale + shift
  void (*normalise)(const float* x, float* y, int64_t stride, int n, int len, float mean, float scale, float shift);
  // dx = a * dy + b * (x - mean) + d
  void (*bn_backward)(const float* x, const float* dy, float* dx, int64_t stride, int n, int len, float a, float b,
                      float d, float mean);
  // Batchnorm followed by a ReLU, in training (kernels/cpu/batchnorm.cpp): the ReLU's input
  // v = (x - mean) * scale + shift is computed by one inline function in all three, so the
  // backward's mask v > 0 is exactly the forward's.
  // y = max(0, v)
  void (*normalise_relu)(const float* x, float* y, int64_t stride, int n, int len, float mean, float scale,
                         float shift);
  // grad_sums of g = (v > 0 ? dy : 0), dy being the gradient of the ReLU's output
  void (*grad_sums_relu)(const float* x, const float* dy, int64_t stride, int n, int len, float mean, float scale,
                         float shift, double* s, double* sx);
  // dx = a * g + b * (x - mean) + d, g as above
  void (*bn_backward_relu)(const float* x, const float* dy, float* dx, int64_t stride, int n, int len, float a,
                           float b, float d, float mean, float scale, float shift);
  // One image's padded copy (conv_direct.h): x (C, H, W) -> xp, C planes of Hp rows of RP
  // floats (Hp = H + 2*ph; row h holds phase f of the padded columns at f * L), then zeros up
  // to `floats` in all.
  void (*pad_image)(const float* x, int C, int H, int W, int ph, int pw, int st, int L, int RP, int64_t floats,
                    float* xp);
  // n rows of len floats: dst + i * dst_stride = src + i * src_stride (the sparse kernels'
  // grids of rows Wph long to and from (P, Q) planes: short rows, where a memcpy call per row
  // had cost 8% of a sparse training step).
  void (*copy_rows)(const float* src, int64_t src_stride, float* dst, int64_t dst_stride, int n, int len);
  // dyT (PQ, Kp) = dy (K, PQ) transposed, zeros in columns K..Kp-1.
  void (*transpose)(const float* dy, int K, int PQ, int Kp, float* dyT);
  // Sum of a row of n floats, through 16 float lanes.
  float (*row_sum)(const float* x, int n);
  // The sparse convolution's inner loop (kernels/cpu/sparse.cpp): out[t] = bias + sum over
  // j < nnz of val[j] * X[off[j] + t] for t in [0, L), L a multiple of 8, then max(0, .) when
  // relu; X readable up to max(off) + L (+ 64 floats of slack).
  void (*sparse_row)(const float* val, const int32_t* off, int64_t nnz, const float* X, int L, float bias,
                     bool relu, float* out);
  // The same contract as sparse_row, register-blocked over the whole run: balanced passes of
  // at most 12 vectors (one broadcast of a weight feeding up to 12 FMAs over consecutive
  // outputs), so a run that is not a multiple of 64 floats costs no pass whose lone
  // accumulator waits on its own FMAs. Sums in j order per output, as sparse_row.
  void (*sparse_grid)(const float* val, const int32_t* off, int64_t nnz, const float* X, int L, float bias,
                      bool relu, float* out);
  // sparse_grid with each nonzero's run offset looked up through its column: off[j] =
  // tab[col[j]] (the conv's offset of each column (c, r, s), or a linear layer's i * N).
  void (*sparse_grid_cols)(const float* val, const uint16_t* col, const int32_t* tab, int64_t nnz, const float* X,
                           int L, float bias, bool relu, float* out);
  // A convolution with few outputs per filter (a batch of 1 on the last, smallest images), as a
  // product that streams the weights once (kernels/cpu/conv.cpp): for the kn filters at w (rows
  // of n floats, ldw apart) and jn outputs (a multiple of kStreamOutputBlock),
  // out[f * jn + j] = sum over i < n of w[f * ldw + i] * col[i * jn + j], j < jn.
  void (*stream_filters)(const float* w, int64_t ldw, int kn, int n, const float* col, int jn, float* out);
  // The same product for 4 outputs per filter (a batch of 1 on 2x2 images), with the patch
  // matrix transposed, colT (4, n): out[f * 4 + j] = sum over i < n of w[f * ldw + i] *
  // colT[j * n + i], vectorised along i (a vector of 16 outputs would be 3/4 padding).
  void (*stream_dots)(const float* w, int64_t ldw, int kn, int n, const float* colT, float* out);
};

const RowKernels& row_kernels();  // for cpu_isa()

namespace generic { extern const RowKernels rows; }
#if defined(DNNS_HAVE_X86_KERNELS)
namespace avx2 { extern const RowKernels rows; }
namespace avx512 { extern const RowKernels rows; }
#endif

}  // namespace dnns::cpu
