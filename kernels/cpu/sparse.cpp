// Optimized sparse kernels (contract in kernels/sparse.h; tested against kernels/ref/sparse.cpp).
//
// Direct sparse convolution, vectorised over output pixels, on the input's phase planes
// (kernels/cpu/sparse_phases.h): for one nonzero weight the whole output plane, read row after
// row with row length Wph, is a single run of the phase planes starting at a fixed offset:
//
//   grid[p*Wph + q] += w * X[offset(c, r, s) + p*Wph + q]
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
#include <string>
#include <vector>

#include "core/error.h"

#include "core/parallel.h"
#include "core/threading.h"
#include "kernels/cpu/gemm_util.h"
#include "kernels/cpu/rows.h"
#include "kernels/cpu/sparse_phases.h"
#include "kernels/sparse.h"

namespace dnns::cpu {

// A conv's layout made once (prepare_sparse_conv2d) for the weight whose columns live at `col`.
struct SparseConvRuns {
  Conv2dParams p;  // (N unused)
  const void* col = nullptr;
  int64_t nnz = 0;
  PhaseLayout g;
};

namespace {

constexpr int kLanes = 8;   // the grid is padded to whole vectors of 8 (rows.h sparse_grid)
constexpr int kChunk = 64;  // grid positions of slack after a run (rows.h sparse_row)
int round_up(int n, int m) { return (n + m - 1) / m * m; }

// Row k's nonzeros and where each one's run starts, for the inner loop (rows.h sparse_grid_cols /
// sparse_grid, built per instruction set, chosen once per call): through their 16-bit columns
// and the table of column offsets; or, when the columns are stored in 32 bits, through offsets
// made for the call (tab[col[j]], 4 bytes a nonzero while it runs).
class FilterRuns {
 public:
  FilterRuns(const SparseRows& w, const int32_t* tab) : w_(w), col_(w.col.narrow_data()), tab_(tab) {
    if (!w.col.wide()) return;
    const int32_t* col = w.col.wide_data();
    off_.reset(new int32_t[size_t(std::max<int64_t>(1, w.nnz()))]);
    for (int64_t j = 0; j < w.nnz(); ++j) off_[size_t(j)] = tab[col[j]];
  }
  // out (L) = rows.h sparse_grid of row k over the planes X
  void grid(const RowKernels& rk, int k, const float* X, int L, float bias, bool relu, float* out) const {
    const int64_t j0 = w_.row_start[size_t(k)], n = w_.row_start[size_t(k) + 1] - j0;
    if (off_) rk.sparse_grid(w_.value.data() + j0, off_.get() + j0, n, X, L, bias, relu, out);
    else rk.sparse_grid_cols(w_.value.data() + j0, col_ + j0, tab_, n, X, L, bias, relu, out);
  }
  static int64_t call_bytes(const SparseRows& w) {  // what the constructor allocates
    return w.col.wide() ? std::max<int64_t>(1, w.nnz()) * int64_t(sizeof(int32_t)) : 0;
  }

 private:
  const SparseRows& w_;
  const uint16_t* col_;
  const int32_t* tab_;
  std::unique_ptr<int32_t[]> off_;
};

// A conv call's column offsets (C*R*S) are made on its stack up to this many columns (16 KB: a
// 455-channel 3x3 conv), on the heap beyond.
constexpr int kStackColumns = 4096;

// Rows [k0, k1) as one task's share: rows per task such that a task holds about kTaskWork
// multiply-adds (an average row's nonzeros times the grid), at least one row.
constexpr int64_t kTaskWork = int64_t(1) << 15;
int rows_per_task(int64_t nnz, int rows, int L) {
  const double per_row = (double(nnz) / std::max(1, rows) + 1.0) * L;
  return (int)std::clamp<double>(double(kTaskWork) / per_row, 1.0, double(std::max(1, rows)));
}

// Below this many multiply-adds (about 5 us) a call runs on the calling thread alone, and
// phase planes of fewer floats than kSerialPlanes are copied by it.
constexpr int64_t kSerialWork = int64_t(1) << 17;
constexpr int64_t kSerialPlanes = int64_t(1) << 14;

// Input memory of one call is bounded: a small batch is processed in groups of images whose
// phase planes together take at most this many floats (at least one image per group).
constexpr int64_t kGroupFloats = int64_t(2) << 20;  // 8 MiB


// How a call shares out its work:
//   Serial        a small call (about 5 us of multiply-adds) runs on the calling thread:
//                 handing it to the pool costs more than it saves;
//   PerImage      enough images for every thread: one task per image builds its phase planes
//                 in the thread's scratch (slot 1) and runs every filter on them;
//   SharedPlanes  few images: their phase planes are built first into one buffer of the call,
//                 then tasks of (image, block of filters) share them.
enum class Schedule { Serial, PerImage, SharedPlanes };
Schedule schedule(const Conv2dParams& p, int64_t nnz, const PhaseLayout& g) {
  if (nnz * g.L * int64_t(p.N) < kSerialWork) return Schedule::Serial;
  return p.N >= 2 * num_threads() ? Schedule::PerImage : Schedule::SharedPlanes;
}
int images_per_group(const Conv2dParams& p, const PhaseLayout& g) {  // SharedPlanes: images per buffer
  return (int)std::clamp<int64_t>(kGroupFloats / std::max<int64_t>(1, g.image), 1, std::max(1, p.N));
}

// Filters [k0, k1) of one image from its phase planes Xi -> y_n (K, P, Q).
void filters_of_image(const RowKernels& rk, const Conv2dParams& p, const PhaseLayout& g, const FilterRuns& fr,
                      const float* b, bool relu, const float* Xi, int k0, int k1, float* grid, float* y_n) {
  const int P = p.P(), Q = p.Q();
  for (int k = k0; k < k1; ++k) {
    fr.grid(rk, k, Xi, g.L, b ? b[k] : 0.0f, relu, grid);
    float* yk = y_n + int64_t(k) * P * Q;  // (P, Q)
    rk.copy_rows(grid, g.Wph, yk, Q, P, Q);
  }
}

// The layout of conv p reading the taps (r, s) marked in tap_used (R*S).
PhaseLayout layout_of_taps(const Conv2dParams& p, const std::vector<char>& tap_used, const char* op) {
  PhaseLayout g;
  g.st = p.stride;
  g.slot.assign(size_t(g.st) * g.st, -1);
  for (int r = 0; r < p.R; ++r)
    for (int s = 0; s < p.S; ++s)
      if (tap_used[size_t(r * p.S + s)]) g.slot[size_t((r % g.st) * g.st + s % g.st)] = 0;
  for (int& sl : g.slot)
    if (sl == 0) sl = g.phases++;
  g.Hph = (p.H + 2 * p.pad + g.st - 1) / g.st;
  g.Wph = (p.W + 2 * p.pad + g.st - 1) / g.st;
  g.plane = g.Hph * g.Wph;
  g.image = int64_t(p.C) * g.phases * g.plane;
  g.L = round_up((p.P() - 1) * g.Wph + p.Q(), kLanes);
  g.slack = g.L + kChunk;
  check(g.image + g.slack < INT32_MAX, [&] { return std::string(op) + ": input too large for the kernel"; });
  return g;
}

// conv p on the phase planes of layout g: y (N, K, P, Q) = the rows of w (through fr) over x,
// + b, then the ReLU when `relu`.
void conv_on_planes(const Conv2dParams& p, const PhaseLayout& g, const SparseRows& w, const FilterRuns& fr,
                    const float* x, const float* b, bool relu, float* y) {
  const int C = p.C, K = p.K;
  const int64_t in_image = int64_t(C) * p.H * p.W, out_image = int64_t(K) * p.P() * p.Q();
  const RowKernels& rk = row_kernels();
  // Images [n0, n1), each from its phase planes in the thread's scratch (they stay in cache)
  // through every filter.
  auto images = [&](int n0, int n1) {
    float* Xi = thread_scratch<float>(1, size_t(g.image + g.slack));  // (C, phases, Hph, Wph) + slack
    float* grid = thread_scratch<float>(0, size_t(g.L));              // (L) one filter's output
    std::fill(Xi + g.image, Xi + g.image + g.slack, 0.0f);
    for (int n = n0; n < n1; ++n) {
      phase_planes(p, g, x + n * in_image, 0, C, Xi);
      filters_of_image(rk, p, g, fr, b, relu, Xi, 0, K, grid, y + n * out_image);
    }
  };
  switch (schedule(p, w.nnz(), g)) {
    case Schedule::Serial: images(0, p.N); return;
    case Schedule::PerImage: parallel_for(0, p.N, 1, images); return;
    case Schedule::SharedPlanes: break;
  }
  // Few images: their phase planes are built first (in parallel over channels), then tasks
  // of (image, block of filters) share them.
  const int group = images_per_group(p, g);
  std::unique_ptr<float[]> X(new float[size_t(group * g.image + g.slack)]);  // (group, C, phases, Hph, Wph) + slack
  std::fill(X.get() + group * g.image, X.get() + group * g.image + g.slack, 0.0f);
  const int per_task = rows_per_task(w.nnz(), K, g.L), blocks = (K + per_task - 1) / per_task;
  for (int n0 = 0; n0 < p.N; n0 += group) {
    const int nb = std::min(group, p.N - n0);
    auto planes = [&](int t0, int t1) {
      for (int t = t0; t < t1;) {  // runs of channels of one image
        const int i = t / C, c0 = t % C, c1 = std::min(C, c0 + (t1 - t));
        phase_planes(p, g, x + (n0 + i) * in_image, c0, c1, X.get() + i * g.image);
        t += c1 - c0;
      }
    };
    if (nb * g.image < kSerialPlanes) planes(0, nb * C);  // a copy of a few microseconds
    else parallel_for(0, nb * C, 8, planes);
    parallel_for(0, nb * blocks, 1, [&](int t0, int t1) {
      float* grid = thread_scratch<float>(0, size_t(g.L));  // (L) one filter's output, row length Wph
      for (int t = t0; t < t1; ++t) {
        const int i = t / blocks, k0 = t % blocks * per_task, k1 = std::min(K, k0 + per_task);
        filters_of_image(rk, p, g, fr, b, relu, X.get() + i * g.image, k0, k1, grid, y + (n0 + i) * out_image);
      }
    });
  }
}

}  // namespace

// Called on every forward that was not prepared, so no division per column or nonzero.
PhaseLayout phase_layout(const Conv2dParams& p, const SparseRows& w, const char* op) {
  const int RS = p.R * p.S, CRS = p.C * RS;
  std::vector<char> col_used(size_t(CRS), 0), tap_used(size_t(RS), 0);
  for (int64_t j = 0; j < w.nnz(); ++j) col_used[size_t(w.col[j])] = 1;
  for (int c = 0, col = 0; c < p.C; ++c)
    for (int t = 0; t < RS; ++t) tap_used[size_t(t)] |= col_used[size_t(col++)];
  return layout_of_taps(p, tap_used, op);
}

void column_offsets(const Conv2dParams& p, const PhaseLayout& g, int32_t* tab) {
  // Where tap (r, s) starts within its channel's phase planes (unused phases: 0, never read),
  // channel 0's columns; channel c's planes start c * phases * plane.
  const int R = p.R, S = p.S, RS = R * S;
  for (int r = 0; r < R; ++r)
    for (int s = 0; s < S; ++s) {
      const int ph = g.slot[size_t((r % g.st) * g.st + s % g.st)];
      tab[r * S + s] = ph < 0 ? 0 : (ph * g.Hph + r / g.st) * g.Wph + s / g.st;
    }
  const int32_t channel = int32_t(int64_t(g.phases) * g.plane);
  for (int c = 1; c < p.C; ++c)
    for (int t = 0; t < RS; ++t) tab[int64_t(c) * RS + t] = tab[int64_t(c - 1) * RS + t] + channel;
}

void phase_planes(const Conv2dParams& p, const PhaseLayout& g, const float* x, int c0, int c1, float* dst) {
  const int H = p.H, W = p.W, st = g.st, pad = p.pad, Wph = g.Wph;
  if (st == 1 && g.phases == 1) {  // the zero-padded image: the direct kernels' padded copy
    row_kernels().pad_image(x + int64_t(c0) * H * W, c1 - c0, H, W, pad, pad, 1, Wph, Wph,
                            int64_t(c1 - c0) * g.plane, dst + int64_t(c0) * g.plane);
    return;
  }
  for (int c = c0; c < c1; ++c) {
    const float* xc = x + int64_t(c) * H * W;  // (H, W)
    for (int a = 0; a < st; ++a)
      for (int bcol = 0; bcol < st; ++bcol) {
        const int ph = g.slot[size_t(a * st + bcol)];
        if (ph < 0) continue;
        // Columns jw reading input column v = jw*st + bcol - pad inside [0, W): [lo, hi).
        const int lo = std::min(Wph, std::max(0, (pad - bcol + st - 1) / st));
        const int hi = std::max(lo, std::min(Wph, (W + pad - bcol + st - 1) / st));
        for (int ih = 0; ih < g.Hph; ++ih) {
          float* row = dst + ((int64_t(c) * g.phases + ph) * g.Hph + ih) * Wph;  // (Wph)
          const int h = ih * st + a - pad;
          if (h < 0 || h >= H) {
            std::fill(row, row + Wph, 0.0f);
            continue;
          }
          const float* xrow = xc + int64_t(h) * W;  // (W)
          std::fill(row, row + lo, 0.0f);
          if (st == 1) std::memcpy(row + lo, xrow + lo + bcol - pad, sizeof(float) * (hi - lo));
          else
            for (int jw = lo; jw < hi; ++jw) row[jw] = xrow[jw * st + bcol - pad];
          std::fill(row + hi, row + Wph, 0.0f);
        }
      }
  }
}

std::shared_ptr<const SparseConvRuns> prepare_sparse_conv2d(const Conv2dParams& p, const SparseRows& w) {
  check_conv_params(p, "prepare_sparse_conv2d");
  auto r = std::make_shared<SparseConvRuns>();
  r->p = p;
  r->col = w.col.data();
  r->nnz = w.nnz();
  r->g = phase_layout(p, w, "prepare_sparse_conv2d");
  return r;
}

int64_t sparse_conv_runs_bytes(const SparseConvRuns& r) {
  return int64_t(sizeof(SparseConvRuns) + r.g.slot.size() * sizeof(int));
}

void sparse_conv2d_forward(const Conv2dParams& p, const float* x, const SparseRows& w, const float* b, bool relu,
                           float* y) {
  sparse_conv2d_forward(p, x, w, nullptr, b, relu, y);
}

void sparse_conv2d_forward(const Conv2dParams& p, const float* x, const SparseRows& w, const SparseConvRuns* runs,
                           const float* b, bool relu, float* y) {
  // x (N, C, H, W)   w: K rows of C*R*S columns   b (K) or nullptr   y (N, K, P, Q)
  check_conv_params(p, "sparse_conv2d_forward");
  // The prepared layout when it was made for this weight and this input size, else made here.
  const bool prepared = runs && runs->col == w.col.data() && runs->nnz == w.nnz() && runs->p.C == p.C &&
                        runs->p.H == p.H && runs->p.W == p.W && runs->p.K == p.K && runs->p.R == p.R &&
                        runs->p.S == p.S && runs->p.stride == p.stride && runs->p.pad == p.pad;
  PhaseLayout own_g;
  if (!prepared) own_g = phase_layout(p, w, "sparse_conv2d_forward");
  const PhaseLayout& g = prepared ? runs->g : own_g;
  // The column offsets (C*R*S): made per call, not kept beside the nonzeros.
  const int CRS = p.C * p.R * p.S;
  int32_t on_stack[kStackColumns];
  std::unique_ptr<int32_t[]> on_heap;
  if (CRS > kStackColumns) on_heap.reset(new int32_t[size_t(CRS)]);
  int32_t* tab = on_heap ? on_heap.get() : on_stack;
  column_offsets(p, g, tab);
  conv_on_planes(p, g, w, FilterRuns(w, tab), x, b, relu, y);
}

SparseScratch sparse_conv2d_forward_scratch(const Conv2dParams& p, const SparseRows& w) {
  check_conv_params(p, "sparse_conv2d_forward_scratch");
  const PhaseLayout g = phase_layout(p, w, "sparse_conv2d_forward_scratch");
  SparseScratch s;
  s.slot0 = g.L;
  // the column offsets when on the heap, a wide form's offsets for the call, and the column marks
  // of a layout made by the call (unprepared)
  const int64_t CRS = int64_t(p.C) * p.R * p.S;
  s.call_bytes = (CRS > kStackColumns ? CRS * int64_t(sizeof(int32_t)) : 0) + FilterRuns::call_bytes(w) + CRS;
  if (schedule(p, w.nnz(), g) == Schedule::SharedPlanes)
    s.call_bytes += (images_per_group(p, g) * g.image + g.slack) * int64_t(sizeof(float));
  else
    s.slot1 = g.image + g.slack;
  return s;
}

SparseScratch sparse_linear_forward_scratch(int N, const SparseRows& w) {
  SparseScratch s;
  if (N <= 0 || w.rows <= 0) return s;
  const int L = round_up(N, kLanes);
  s.slot0 = L;
  s.call_bytes = (int64_t(w.cols) * N + L) * int64_t(sizeof(float)) + std::max(1, w.cols) * int64_t(sizeof(int32_t)) +
                 FilterRuns::call_bytes(w);
  return s;
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
  check(int64_t(I) * N + L < INT32_MAX, "sparse_linear_forward: input too large for the kernel");
  std::unique_ptr<int32_t[]> tab(new int32_t[size_t(std::max(1, I))]);  // (I) column i's run: row i of xt
  for (int i = 0; i < I; ++i) tab[size_t(i)] = int32_t(int64_t(i) * N);
  const FilterRuns fr(w, tab.get());
  const int per_task = rows_per_task(w.nnz(), O, L), blocks = (O + per_task - 1) / per_task;
  const RowKernels& rk = row_kernels();
  parallel_for(0, blocks, 1, [&](int t0, int t1) {
    float* grid = thread_scratch<float>(0, size_t(L));  // (L) one output feature over the batch
    for (int t = t0; t < t1; ++t)
      for (int o = t * per_task; o < std::min(O, (t + 1) * per_task); ++o) {
        fr.grid(rk, o, xt.get(), L, b ? b[o] : 0.0f, relu, grid);
        for (int n = 0; n < N; ++n) y[int64_t(n) * O + o] = grid[n];
      }
  });
}

}  // namespace dnns::cpu
