// Sparse training kernels (contract in kernels/cpu/sparse_train.h; tested against the dense
// kernels in tests/test_sparse_train.cpp).
//
// The weight gradient reads the input in the layout the sparse forward uses, the phase planes
// of kernels/cpu/sparse_phases.h, where each nonzero (c, r, s) reads one run of an image's
// planes. With dy laid out as a grid of rows of length Wph (zeros in columns q >= Q), each
// nonzero's gradient is one dot product of the filter's dy grid with that run:
//
//   dw[k, c, r, s] += sum over t < L of G[k, t] * X[offset(c, r, s) + t]
//
// A filter's dy grid stays in L1 while its nonzeros' runs stream past, four at a time.
#define DNNS_ST_NS generic
#include "kernels/cpu/sparse_train_impl.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/error.h"
#include "core/parallel.h"
#include "core/threading.h"
#include "kernels/cpu/gemm_util.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/rows.h"
#include "kernels/cpu/sparse_phases.h"

namespace dnns {

SparseTrainPattern sparse_train_pattern(const float* mask, int K, int C, int R, int S) {
  check(K >= 0 && C >= 0 && R > 0 && S > 0, "sparse_train_pattern: invalid weight shape");
  SparseTrainPattern pat;
  pat.K = K, pat.C = C, pat.R = R, pat.S = S;
  const int RS = R * S, CRS = C * RS;
  // w: row k, the columns of the mask's ones in ascending order
  pat.w.rows = K, pat.w.cols = CRS;
  pat.w.row_start.assign(size_t(K) + 1, 0);
  std::vector<int64_t> per_channel(size_t(C) + 1, 0);  // (C + 1) nonzeros of each input channel, then starts
  for (int k = 0; k < K; ++k) {
    for (int col = 0; col < CRS; ++col)
      if (mask[int64_t(k) * CRS + col] != 0.0f) pat.w.col.push_back(col), ++per_channel[size_t(col / RS) + 1];
    pat.w.row_start[size_t(k) + 1] = int64_t(pat.w.col.size());
  }
  pat.w.col.shrink_to_fit();
  const int64_t nnz = pat.w.nnz();
  pat.w.value.assign(size_t(nnz), 0.0f);
  // wt: row c holds the columns (k*R + R-1-r)*S + S-1-s ascending: k ascending, then the taps
  // of filter k in channel c flipped, which is w's order of them reversed.
  pat.wt.rows = C, pat.wt.cols = K * RS;
  for (int c = 0; c < C; ++c) per_channel[size_t(c) + 1] += per_channel[size_t(c)];
  pat.wt.row_start = per_channel;
  pat.wt.col.resize(nnz);
  pat.wt.value.assign(size_t(nnz), 0.0f);
  pat.wt_from.resize(size_t(nnz));
  std::vector<int64_t> next(per_channel.begin(), per_channel.end() - 1);  // (C) the next free place per row
  for (int k = 0; k < K; ++k)
    for (int64_t j = pat.w.row_start[size_t(k) + 1] - 1; j >= pat.w.row_start[k]; --j) {
      const int col = pat.w.col[size_t(j)], c = col / RS, r = col % RS / S, s = col % S;
      const int64_t at = next[size_t(c)]++;
      pat.wt.col.set(at, (k * R + (R - 1 - r)) * S + (S - 1 - s));
      pat.wt_from[size_t(at)] = j;
    }
  return pat;
}

void sparse_train_gather(SparseTrainPattern& pat, const float* w, int64_t numel, const char* layer) {
  const int CRS = pat.w.cols;
  check(numel == int64_t(pat.w.rows) * CRS, [&] {
    return std::string(layer) + ": the weight holds " + std::to_string(numel) + " values but its sparse-training pattern " +
           std::to_string(int64_t(pat.w.rows) * CRS) + " (plan the training execution again)";
  });
  for (int k = 0; k < pat.w.rows; ++k) {
    const float* wk = w + int64_t(k) * CRS;  // (C*R*S)
    int64_t j = pat.w.row_start[k];
    const int64_t end = pat.w.row_start[size_t(k) + 1];
    for (int col = 0; col < CRS; ++col) {
      if (j < end && pat.w.col[j] == col) {
        check(std::isfinite(wk[col]), [&] {
          return std::string(layer) + ": weight [" + std::to_string(k) + ", column " + std::to_string(col) +
                 "] is not finite";
        });
        pat.w.value[j++] = wk[col];
      } else {
        check(wk[col] == 0.0f, [&] {
          return std::string(layer) + ": weight [" + std::to_string(k) + ", column " + std::to_string(col) +
                 "] lies outside the sparse-training mask pattern but is not 0 (the mask changed since the "
                 "pattern was made: plan the training execution again)";
        });
      }
    }
  }
  for (size_t j = 0; j < pat.wt_from.size(); ++j) pat.wt.value[j] = pat.w.value[size_t(pat.wt_from[j])];
}

namespace cpu {

const SparseTrainKernels& sparse_train_kernels() {
#if defined(DNNS_HAVE_X86_KERNELS)
  switch (cpu_isa()) {
    case Isa::Avx512: return avx512::sparse_train;
    case Isa::Avx2: return avx2::sparse_train;
    case Isa::Generic: break;
  }
#endif
  return generic::sparse_train;
}

namespace {
int round_up(int n, int m) { return (n + m - 1) / m * m; }

// Filters' sums of dy: db[k] = sum over n, p, q of dy[n, k, p, q] (double accumulation).
void bias_grad(int N, int K, int64_t plane, const float* dy, float* db) {
  for (int k = 0; k < K; ++k) {
    double s = 0;
    for (int n = 0; n < N; ++n) {
      const float* d = dy + (int64_t(n) * K + k) * plane;  // (P*Q)
      for (int64_t i = 0; i < plane; ++i) s += d[i];
    }
    db[k] = float(s);
  }
}

// Writes the nonzeros' gradients into the dense dw (rows x cols), zeros elsewhere.
void scatter(const SparseRows& w, const float* g, float* dw) {
  std::fill(dw, dw + int64_t(w.rows) * w.cols, 0.0f);
  for (int k = 0; k < w.rows; ++k)
    for (int64_t j = w.row_start[k]; j < w.row_start[size_t(k) + 1]; ++j) dw[int64_t(k) * w.cols + w.col[j]] = g[j];
}
}  // namespace

void sparse_conv2d_backward_data(const Conv2dParams& p, const float* dy, const SparseTrainPattern& pat, float* dx) {
  // dy (N, K, P, Q)   pat.wt: C rows of K*R*S columns   dx (N, C, H, W)
  check_conv_params(p, "sparse_conv2d_backward_data");
  check(pat.K == p.K && pat.C == p.C && pat.R == p.R && pat.S == p.S,
        "sparse_conv2d_backward_data: the pattern's weight shape differs from the convolution's");
  const int K = p.K, R = p.R, S = p.S, P = p.P(), Q = p.Q(), st = p.stride;
  // dx = a stride-1 convolution of dy with the transposed, flipped filters: dx[h, w] reads
  // dy[(h + pad - r) / st, (w + pad - s) / st] where that divides exactly.
  Conv2dParams t;
  t.N = p.N, t.C = K, t.K = p.C, t.R = R, t.S = S, t.stride = 1;
  if (st == 1 && R == S && p.pad <= R - 1) {  // dy padded by R-1-pad on every side: no copy
    t.H = P, t.W = Q, t.pad = R - 1 - p.pad;
    sparse_conv2d_forward(t, dy, pat.wt, nullptr, false, dx);
    return;
  }
  // Otherwise by output phases: the pixels (st*i + a, st*j + b) of dx receive only the taps
  // with r = a + pad (mod st) and s = b + pad (mod st), each reading dy[i + dr, j + ds] with
  // dr = (a + pad - r) / st, ds = (b + pad - s) / st (exact): per phase a stride-1 sparse
  // correlation over dy, so every nonzero is used once per image, as in the forward. dy is
  // laid out zero-padded, (K, Hd, Wd), T rows above and Tl columns left, so each tap reads one
  // run of it: offset (k*Hd + dr + T)*Wd + ds + Tl, grid position i*Wd + j.
  const int H = p.H, W = p.W, C = p.C, pad = p.pad;
  auto phase = [&](int r) { return ((r - pad) % st + st) % st; };  // the output phase a tap feeds
  auto shift = [&](int r) { return (phase(r) + pad - r) / st; };   // dr of tap r
  int T = 0, Tl = 0, down = 0, right = 0;
  for (int r = 0; r < R; ++r) T = std::max(T, -shift(r)), down = std::max(down, shift(r));
  for (int c = 0; c < S; ++c) Tl = std::max(Tl, -shift(c)), right = std::max(right, shift(c));
  const int Hmax = (H + st - 1) / st, Wmax = (W + st - 1) / st;  // the largest phase
  const int Hd = T + std::max(P, Hmax + down), Wd = Tl + std::max(Q, Wmax + right);
  const int64_t plane = int64_t(Hd) * Wd, image = int64_t(K) * plane;
  const int Lmax = round_up((Hmax - 1) * Wd + Wmax, 8);
  const int64_t slack = Lmax + 64;
  check(image + slack < INT32_MAX, "sparse_conv2d_backward_data: gradient too large for the kernel");
  // Per phase, per input channel c: its taps' values and run offsets (CSR over (phase, c)).
  const SparseRows& w = pat.w;
  const int phases = st * st;
  std::vector<int64_t> start(size_t(phases) * C + 1, 0);  // (phases*C + 1)
  auto slot_of = [&](int col) {
    const int c = col / (R * S), r = col / S % R, sc = col % S;
    return (phase(r) * st + phase(sc)) * C + c;
  };
  for (int64_t j = 0; j < w.nnz(); ++j) ++start[size_t(slot_of(w.col[j])) + 1];
  for (size_t i = 1; i < start.size(); ++i) start[i] += start[i - 1];
  std::vector<float> val(size_t(std::max<int64_t>(1, w.nnz())));    // (nnz) grouped by (phase, c)
  std::vector<int32_t> off(size_t(std::max<int64_t>(1, w.nnz())));  // (nnz)
  {
    std::vector<int64_t> next(start.begin(), start.end() - 1);
    for (int k = 0; k < K; ++k)
      for (int64_t j = w.row_start[k]; j < w.row_start[size_t(k) + 1]; ++j) {
        const int col = w.col[j], r = col / S % R, sc = col % S;
        const int64_t at = next[size_t(slot_of(col))]++;
        val[size_t(at)] = w.value[j];
        off[size_t(at)] = int32_t((int64_t(k) * Hd + shift(r) + T) * Wd + shift(sc) + Tl);
      }
  }
  // A (phase, channel) with no tap leaves zeros: then each image's dx is cleared first (a
  // strided 1x1 conv feeds one phase of st*st).
  bool some_empty = false;
  for (size_t i = 0; i + 1 < start.size(); ++i) some_empty |= start[i + 1] == start[i];
  const RowKernels& rows = row_kernels();
  const auto sparse_row = rows.sparse_row;
  parallel_for(0, p.N, 1, [&](int n0, int n1) {
    // The thread's scratch, not fresh allocations: new pages on every call had cost page faults
    // (3% of a sparse training step).
    float* D = thread_scratch<float>(0, size_t(image + slack));  // (K, Hd, Wd) + slack; the padding stays 0
    float* grid = thread_scratch<float>(1, size_t(Lmax));        // (Lmax) one channel of one phase, rows of Wd
    std::fill(D, D + image + slack, 0.0f);
    for (int n = n0; n < n1; ++n) {
      for (int k = 0; k < K; ++k)
        rows.copy_rows(dy + (int64_t(n) * K + k) * P * Q, Q, D + (int64_t(k) * Hd + T) * Wd + Tl, Wd, P, Q);
      if (some_empty) std::fill(dx + int64_t(n) * C * H * W, dx + int64_t(n + 1) * C * H * W, 0.0f);
      for (int a = 0; a < st; ++a)
        for (int b = 0; b < st; ++b) {
          const int Hi = (H - a + st - 1) / st, Wi = (W - b + st - 1) / st;
          if (Hi <= 0 || Wi <= 0) continue;
          const int L = round_up((Hi - 1) * Wd + Wi, 8);
          for (int c = 0; c < C; ++c) {
            const int64_t j0 = start[size_t((a * st + b) * C + c)], j1 = start[size_t((a * st + b) * C + c) + 1];
            float* out = dx + (int64_t(n) * C + c) * H * W;  // (H, W)
            if (j1 == j0) continue;  // zeros, written above
            sparse_row(val.data() + j0, off.data() + j0, j1 - j0, D, L, 0.0f, false, grid);
            for (int i = 0; i < Hi; ++i)
              for (int j = 0; j < Wi; ++j) out[int64_t(st * i + a) * W + st * j + b] = grid[size_t(i) * Wd + j];
          }
        }
    }
  });
}

void sparse_conv2d_backward_weights(const Conv2dParams& p, const float* x, const float* dy,
                                    const SparseTrainPattern& pat, float* dw, float* db) {
  // x (N, C, H, W)   dy (N, K, P, Q)   dw (K, C, R, S)   db (K) or nullptr
  check_conv_params(p, "sparse_conv2d_backward_weights");
  check(pat.K == p.K && pat.C == p.C && pat.R == p.R && pat.S == p.S,
        "sparse_conv2d_backward_weights: the pattern's weight shape differs from the convolution's");
  const SparseRows& w = pat.w;
  const int N = p.N, C = p.C, K = p.K, H = p.H, W = p.W, P = p.P(), Q = p.Q();
  // The input as the sparse forward reads it: only the phases some nonzero reads are built.
  const PhaseLayout g = phase_layout(p, w, "sparse_conv2d_backward_weights");
  std::vector<int32_t> tab(size_t(std::max(1, C * p.R * p.S)));  // (C*R*S) where each column's run starts
  column_offsets(p, g, tab.data());
  std::vector<int32_t> off(size_t(std::max<int64_t>(1, w.nnz())));  // (nnz) where each nonzero's run starts
  for (int64_t j = 0; j < w.nnz(); ++j) off[size_t(j)] = tab[size_t(w.col[j])];
  const int L = g.L;
  const auto row_dots = sparse_train_kernels().row_dots;
  const RowKernels& rows = row_kernels();
  // Images in T fixed parts, each summed into its own accumulators, then the parts in order:
  // the result does not depend on which thread ran what.
  const int T = std::max(1, std::min(N, num_threads()));
  std::vector<float> acc(size_t(T) * std::max<int64_t>(1, w.nnz()), 0.0f);  // (T, nnz)
  parallel_for(0, T, 1, [&](int t0, int t1) {
    float* X = thread_scratch<float>(0, size_t(g.image + g.slack));  // (C, phases, Hph, Wph) + a zero slack
    float* G = thread_scratch<float>(1, size_t(K) * L);               // (K, L) dy of one image, rows of length Wph
    std::fill(X + g.image, X + g.image + g.slack, 0.0f);  // phase_planes writes the rest
    std::fill(G, G + int64_t(K) * L, 0.0f);                // the columns past Q stay 0
    for (int part = t0; part < t1; ++part) {
      float* a = acc.data() + size_t(part) * std::max<int64_t>(1, w.nnz());
      for (int n = int(int64_t(N) * part / T); n < int(int64_t(N) * (part + 1) / T); ++n) {
        phase_planes(p, g, x + int64_t(n) * C * H * W, 0, C, X);
        for (int k = 0; k < K; ++k) {
          const float* d = dy + (int64_t(n) * K + k) * P * Q;  // (P, Q)
          float* gk = G + int64_t(k) * L;                     // (L)
          rows.copy_rows(d, Q, gk, g.Wph, P, Q);
        }
        for (int k = 0; k < K; ++k) {
          const int64_t j0 = w.row_start[k];
          row_dots(G + int64_t(k) * L, L, X, off.data() + j0, w.row_start[size_t(k) + 1] - j0, a + j0);
        }
      }
    }
  });
  for (int part = 1; part < T; ++part)
    for (int64_t j = 0; j < w.nnz(); ++j) acc[size_t(j)] += acc[size_t(part * w.nnz() + j)];
  scatter(w, acc.data(), dw);
  if (db) bias_grad(N, K, int64_t(P) * Q, dy, db);
}

void sparse_linear_backward_weights(int N, const float* x, const float* dy, const SparseTrainPattern& pat,
                                    float* dw, float* db) {
  // x (N, I)   dy (N, O)   dw (O, I)   db (O) or nullptr
  const SparseRows& w = pat.w;
  const int I = w.cols, O = w.rows, Lp = round_up(std::max(N, 1), 8);
  // xt (I, Lp), dyt (O, Lp): the batch along rows, zeros past N
  std::vector<float> xt(size_t(I) * Lp + Lp, 0.0f), dyt(size_t(O) * Lp, 0.0f);
  for (int n = 0; n < N; ++n) {
    for (int i = 0; i < I; ++i) xt[size_t(i) * Lp + n] = x[int64_t(n) * I + i];
    for (int o = 0; o < O; ++o) dyt[size_t(o) * Lp + n] = dy[int64_t(n) * O + o];
  }
  check(int64_t(I) * Lp + Lp < INT32_MAX, "sparse_linear_backward_weights: input too large for the kernel");
  std::vector<int32_t> off(size_t(std::max<int64_t>(1, w.nnz())));
  for (int64_t j = 0; j < w.nnz(); ++j) off[size_t(j)] = w.col[j] * Lp;
  std::vector<float> g(size_t(std::max<int64_t>(1, w.nnz())), 0.0f);
  const auto row_dots = sparse_train_kernels().row_dots;
  for (int o = 0; o < O; ++o) {
    const int64_t j0 = w.row_start[o];
    row_dots(dyt.data() + size_t(o) * Lp, Lp, xt.data(), off.data() + j0, w.row_start[size_t(o) + 1] - j0, g.data() + j0);
  }
  scatter(w, g.data(), dw);
  if (db) bias_grad(N, O, 1, dy, db);
}

}  // namespace cpu
}  // namespace dnns
