// Optimized sparse kernels (contract in kernels/sparse.h; tested against kernels/ref/sparse.cpp).
//
// Direct sparse convolution, vectorised over output pixels. The input is first rewritten, per
// image, as zero-padded "phase planes": for stride st, phase (a, b) of channel c holds the
// padded pixels at rows st*i + a and columns st*j + b, a (Hph, Wph) plane. In that layout the
// tap (r, s) of output pixel (p, q) is the phase (r % st, s % st) pixel (p + r/st, q + s/st),
// so for one nonzero weight the whole output plane, read row after row with row length Wph,
// is a single run of the phase plane starting at a fixed offset:
//
//   grid[p*Wph + q] += w * X[offset(c, r, s) + p*Wph + q]     offset = ((c*st*st + (r%st)*st
//                                                              + s%st) * Hph + r/st) * Wph + s/st
//
// One filter's output is then a sparse row times a dense matrix whose "rows" are shifted
// windows of X: per chunk of 64 grid positions the accumulators stay in registers while the
// filter's nonzeros stream past (one broadcast, eight loads and eight FMAs each). Grid
// columns q >= Q (and grid rows past the last output row) hold values that are thrown away
// when the grid is copied into y. A linear layer is the same kernel on x transposed: the grid
// runs over the batch.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>

#include "core/parallel.h"
#include "core/threading.h"
#include "kernels/cpu/gemm_util.h"
#include "kernels/sparse.h"

namespace dnns::cpu {
namespace {

using f8 = float __attribute__((vector_size(32)));  // 8 floats: AVX, or two SSE registers
inline f8 load8(const float* p) {
  f8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(float* p, f8 v) { std::memcpy(p, &v, sizeof v); }

constexpr int kLanes = 8;
constexpr int kChunk = 64;  // grid positions per register block (8 accumulators of 8)
int round_up(int n, int m) { return (n + m - 1) / m * m; }

// out[t] = bias + sum_j val[j] * X[off[j] + t] for t in [0, L), L a multiple of kLanes, then
// max(0, .) when relu. X must be readable up to max(off) + L.
void sparse_row(const float* val, const int32_t* off, int64_t nnz, const float* X, int L, float bias, bool relu,
                float* out) {
  int t = 0;
  for (; t + kChunk <= L; t += kChunk) {
    f8 a0 = f8{} + bias, a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (int64_t j = 0; j < nnz; ++j) {
      const f8 w = f8{} + val[j];
      const float* x = X + off[j] + t;
      a0 += w * load8(x + 0), a1 += w * load8(x + 8), a2 += w * load8(x + 16), a3 += w * load8(x + 24);
      a4 += w * load8(x + 32), a5 += w * load8(x + 40), a6 += w * load8(x + 48), a7 += w * load8(x + 56);
    }
    store8(out + t, a0), store8(out + t + 8, a1), store8(out + t + 16, a2), store8(out + t + 24, a3);
    store8(out + t + 32, a4), store8(out + t + 40, a5), store8(out + t + 48, a6), store8(out + t + 56, a7);
  }
  for (; t < L; t += kLanes) {
    f8 a = f8{} + bias;
    for (int64_t j = 0; j < nnz; ++j) a += (f8{} + val[j]) * load8(X + off[j] + t);
    store8(out + t, a);
  }
  if (relu)
    for (int i = 0; i < L; ++i) out[i] = std::max(out[i], 0.0f);
}

// Rows [k0, k1) of w as one task's share: rows per task such that a task holds about
// kTaskWork multiply-adds (an average row's nonzeros times the grid), at least one row.
constexpr int64_t kTaskWork = int64_t(1) << 15;
int rows_per_task(const SparseRows& w, int L) {
  const double per_row = (double(w.nnz()) / std::max(1, w.rows) + 1.0) * L;
  return (int)std::clamp<double>(double(kTaskWork) / per_row, 1.0, double(std::max(1, w.rows)));
}

// Input memory of one call is bounded: the batch is processed in groups of images whose phase
// planes together take at most this many floats (at least one image per group).
constexpr int64_t kGroupFloats = int64_t(2) << 20;  // 8 MiB

}  // namespace

void sparse_conv2d_forward(const Conv2dParams& p, const float* x, const SparseRows& w, const float* b, bool relu,
                           float* y) {
  // x (N, C, H, W)   w: K rows of C*R*S columns   b (K) or nullptr   y (N, K, P, Q)
  check_conv_params(p, "sparse_conv2d_forward");
  const int C = p.C, H = p.H, W = p.W, K = p.K, R = p.R, S = p.S, st = p.stride, pad = p.pad;
  const int P = p.P(), Q = p.Q();
  const int phases = st * st;
  const int Hph = (H + 2 * pad + st - 1) / st, Wph = (W + 2 * pad + st - 1) / st, plane = Hph * Wph;
  const int64_t image = int64_t(C) * phases * plane;  // floats of one image's phase planes
  const int L = round_up((P - 1) * Wph + Q, kLanes);  // grid positions computed per filter
  // offset[j]: where nonzero j's run starts in an image's phase planes.
  std::unique_ptr<int32_t[]> offset(new int32_t[size_t(std::max<int64_t>(1, w.nnz()))]);
  for (int64_t j = 0; j < w.nnz(); ++j) {
    const int crs = w.col[j], c = crs / (R * S), r = crs / S % R, s = crs % S;
    offset[j] = int32_t(((int64_t(c) * phases + (r % st) * st + s % st) * Hph + r / st) * Wph + s / st);
  }
  const int group = (int)std::clamp<int64_t>(kGroupFloats / std::max<int64_t>(1, image), 1, std::max(1, p.N));
  // (group, C, phases, Hph, Wph) plus a tail the last image's runs may read past its end.
  const int64_t slack = L + kChunk;
  std::unique_ptr<float[]> X(new float[size_t(group * image + slack)]);
  std::fill(X.get() + group * image, X.get() + group * image + slack, 0.0f);
  const int per_task = rows_per_task(w, L), blocks = (K + per_task - 1) / per_task;

  for (int n0 = 0; n0 < p.N; n0 += group) {
    const int nb = std::min(group, p.N - n0);
    // Phase planes of images [n0, n0 + nb): element (i, j) of phase (a, b) of channel c is
    // the padded input pixel (st*i + a, st*j + b), zero outside the image.
    parallel_for(0, nb * C, 8, [&](int t0, int t1) {
      for (int t = t0; t < t1; ++t) {
        const int i = t / C, c = t % C;
        const float* xc = x + ((int64_t(n0 + i) * C + c) * H) * W;  // (H, W)
        float* dst = X.get() + (int64_t(i) * C + c) * phases * plane;  // (phases, Hph, Wph)
        for (int a = 0; a < st; ++a)
          for (int bcol = 0; bcol < st; ++bcol)
            for (int ih = 0; ih < Hph; ++ih) {
              float* row = dst + (int64_t(a * st + bcol) * Hph + ih) * Wph;  // (Wph)
              const int h = ih * st + a - pad;
              if (h < 0 || h >= H) {
                std::fill(row, row + Wph, 0.0f);
                continue;
              }
              const float* xrow = xc + int64_t(h) * W;
              for (int jw = 0; jw < Wph; ++jw) {
                const int v = jw * st + bcol - pad;
                row[jw] = v >= 0 && v < W ? xrow[v] : 0.0f;
              }
            }
      }
    });
    // One task: image n0 + i, filters [k0, k1).
    parallel_for(0, nb * blocks, 1, [&](int t0, int t1) {
      float* grid = thread_scratch<float>(0, size_t(L));  // (L) one filter's output, row length Wph
      for (int t = t0; t < t1; ++t) {
        const int i = t / blocks, k0 = t % blocks * per_task, k1 = std::min(K, k0 + per_task);
        const float* Xi = X.get() + int64_t(i) * image;
        for (int k = k0; k < k1; ++k) {
          const int64_t j0 = w.row_start[k], nnz = w.row_start[k + 1] - j0;
          sparse_row(w.value.data() + j0, offset.get() + j0, nnz, Xi, L, b ? b[k] : 0.0f, relu, grid);
          float* yk = y + (int64_t(n0 + i) * K + k) * P * Q;  // (P, Q)
          for (int oh = 0; oh < P; ++oh) std::memcpy(yk + int64_t(oh) * Q, grid + int64_t(oh) * Wph, sizeof(float) * Q);
        }
      }
    });
  }
}

void sparse_linear_forward(int N, const float* x, const SparseRows& w, const float* b, bool relu, float* y) {
  // x (N, I)   w: O rows of I columns   b (O) or nullptr   y (N, O)
  const int I = w.cols, O = w.rows;
  if (N <= 0 || O <= 0) return;
  const int L = round_up(N, kLanes);
  // xt (I, N): column i of x as a row, so the grid runs over the batch; a zero tail for the
  // rounded-up run of the last row.
  std::unique_ptr<float[]> xt(new float[size_t(int64_t(I) * N + L)]);
  std::fill(xt.get() + int64_t(I) * N, xt.get() + int64_t(I) * N + L, 0.0f);
  for (int n = 0; n < N; ++n)
    for (int i = 0; i < I; ++i) xt[int64_t(i) * N + n] = x[int64_t(n) * I + i];
  std::unique_ptr<int32_t[]> offset(new int32_t[size_t(std::max<int64_t>(1, w.nnz()))]);
  for (int64_t j = 0; j < w.nnz(); ++j) offset[j] = int32_t(int64_t(w.col[j]) * N);
  const int per_task = rows_per_task(w, L), blocks = (O + per_task - 1) / per_task;
  parallel_for(0, blocks, 1, [&](int t0, int t1) {
    float* grid = thread_scratch<float>(0, size_t(L));  // (L) one output feature over the batch
    for (int t = t0; t < t1; ++t)
      for (int o = t * per_task; o < std::min(O, (t + 1) * per_task); ++o) {
        const int64_t j0 = w.row_start[o];
        sparse_row(w.value.data() + j0, offset.get() + j0, w.row_start[o + 1] - j0, xt.get(), L, b ? b[o] : 0.0f,
                   relu, grid);
        for (int n = 0; n < N; ++n) y[int64_t(n) * O + o] = grid[n];
      }
  });
}

}  // namespace dnns::cpu
