// The portable runtime's planner, kernels and graph interpreter (see dnns_runtime.h). Plain
// loop nests in float, written to be checked against the maths and to auto-vectorise where
// the inner loop is contiguous; nothing here allocates, throws or touches a file.
#include "dnns_runtime.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

namespace dnns::rt {

namespace {

void set_error(char* err, size_t len, const char* fmt, ...) {
  if (!err || len == 0) return;
  va_list args;
  va_start(args, fmt);
  vsnprintf(err, len, fmt, args);
  va_end(args);
}

struct CrcTable {
  uint32_t v[256];
};
constexpr CrcTable make_crc_table() {
  CrcTable t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
    t.v[i] = c;
  }
  return t;
}
constexpr CrcTable kCrc = make_crc_table();

// Buffers are rounded to 4 floats (16 bytes) so every offset keeps the arena's alignment.
int64_t round_up4(int64_t n) { return (n + 3) / 4 * 4; }

int64_t plan_numel(const NodePlan& p) { return int64_t(p.c) * p.h * p.w; }

// ---------------------------------------------------------------- kernels

// Output indices o in [*lo, *hi) whose input coordinate o*stride - pad + r lies in [0, size):
// the rest read zero padding and add nothing.
void valid_range(int pad, int r, int stride, int size, int out, int* lo, int* hi) {
  const int first = pad - r;             // o*stride must be >= first
  const int last = size - 1 + pad - r;   // o*stride must be <= last
  *lo = first > 0 ? (first + stride - 1) / stride : 0;
  *hi = last < 0 ? 0 : last / stride + 1;
  if (*hi > out) *hi = out;
  if (*lo > *hi) *lo = *hi;
}

// A conv's border table and fused ReLU over output plane k, yk (P, Q).
void conv_epilogue(const Node& nd, int k, int P, int Q, float* yk) {
  if (nd.pos_bias) {
    const int TR = nd.pos_row_class ? nd.pos_rows : P, TC = nd.pos_col_class ? nd.pos_cols : Q;
    const float* tk = nd.pos_bias + int64_t(k) * TR * TC;  // (TR, TC)
    for (int p = 0; p < P; ++p) {
      const float* trow = tk + int64_t(nd.pos_row_class ? nd.pos_row_class[p] : p) * TC;  // (TC)
      float* yrow = yk + int64_t(p) * Q;                                                  // (Q)
      if (nd.pos_col_class)
        for (int q = 0; q < Q; ++q) yrow[q] += trow[nd.pos_col_class[q]];
      else
        for (int q = 0; q < Q; ++q) yrow[q] += trow[q];
    }
  }
  if (nd.fused_relu)
    for (int64_t i = 0; i < int64_t(P) * Q; ++i) yk[i] = yk[i] > 0.0f ? yk[i] : 0.0f;
}

// y[n,k,p,q] = b[k] + sum_{c,r,s} w[k,c,r,s] * x[n, c, p*stride - pad + r, q*stride - pad + s]
//              (+ pos_bias[k, row class of p, column class of q]), then ReLU when fused;
//              x reads zero outside the image.
// Two loop orders, by output width. Wide maps: one output plane at a time, one weight at a
// time, so the inner loop runs along an output row (contiguous, vectorisable at stride 1) and
// pruned (zero) weights are skipped. Narrow maps (rows of fewer than 8 values, the deep layers
// of a VGG): one dot product per output value, since there row loops of 1 to 4 iterations would
// spend their time on bookkeeping.
void conv2d(const Node& nd, int N, int C, int H, int W, int P, int Q, const float* x, float* y) {
  // x (N, C, H, W)   w (K, C, R, S)   y (N, K, P, Q)
  const int K = nd.out_ch, R = nd.kernel_h, S = nd.kernel_w, stride = nd.stride, pad = nd.pad;
  const int64_t plane = int64_t(P) * Q;
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < K; ++k) {
      float* yk = y + (int64_t(n) * K + k) * plane;              // (P, Q)
      const float* wk = nd.weight + int64_t(k) * C * R * S;      // (C, R, S)
      const float* xn = x + int64_t(n) * C * H * W;              // (C, H, W)
      const float b = nd.bias ? nd.bias[k] : 0.0f;
      if (Q >= 8) {
        for (int64_t i = 0; i < plane; ++i) yk[i] = b;
        for (int c = 0; c < C; ++c) {
          const float* xc = xn + int64_t(c) * H * W;  // (H, W)
          const float* wkc = wk + int64_t(c) * R * S;  // (R, S)
          for (int r = 0; r < R; ++r) {
            int p0, p1;
            valid_range(pad, r, stride, H, P, &p0, &p1);
            for (int s = 0; s < S; ++s) {
              const float wv = wkc[r * S + s];
              if (wv == 0.0f) continue;
              int q0, q1;
              valid_range(pad, s, stride, W, Q, &q0, &q1);
              for (int p = p0; p < p1; ++p) {
                const float* xrow = xc + int64_t(p * stride - pad + r) * W;  // (W)
                float* yrow = yk + int64_t(p) * Q;                            // (Q)
                if (stride == 1) {
                  const int shift = s - pad;
                  for (int q = q0; q < q1; ++q) yrow[q] += wv * xrow[q + shift];
                } else {
                  for (int q = q0; q < q1; ++q) yrow[q] += wv * xrow[q * stride - pad + s];
                }
              }
            }
          }
        }
      } else {
        for (int p = 0; p < P; ++p) {
          const int h0 = p * stride - pad;  // input row of kernel row 0
          const int r0 = h0 < 0 ? -h0 : 0, r1 = H - h0 < R ? H - h0 : R;
          for (int q = 0; q < Q; ++q) {
            const int w0 = q * stride - pad;
            const int s0 = w0 < 0 ? -w0 : 0, s1 = W - w0 < S ? W - w0 : S;
            float acc = 0.0f;
            for (int c = 0; c < C; ++c) {
              const float* xc = xn + int64_t(c) * H * W;   // (H, W)
              const float* wkc = wk + int64_t(c) * R * S;  // (R, S)
              for (int r = r0; r < r1; ++r) {
                const float* xrow = xc + int64_t(h0 + r) * W;  // (W)
                const float* wrow = wkc + r * S;                // (S)
                for (int s = s0; s < s1; ++s) acc += wrow[s] * xrow[w0 + s];
              }
            }
            yk[int64_t(p) * Q + q] = b + acc;
          }
        }
      }
      conv_epilogue(nd, k, P, Q, yk);
    }
}

// The same sum over the kept weights of a sparse conv weight only, walked once per image in
// position order (k, c, r, s), each accumulated over its output plane as the dense kernel's
// wide loop does: the filter's taps in the same order, so the same sums within float rounding.
void conv2d_sparse(const Node& nd, int N, int C, int H, int W, int P, int Q, const float* x, float* y) {
  // x (N, C, H, W)   w: weight_count values at coded positions of (K, C, R, S)   y (N, K, P, Q)
  const int K = nd.out_ch, R = nd.kernel_h, S = nd.kernel_w, stride = nd.stride, pad = nd.pad;
  const int64_t plane = int64_t(P) * Q, taps = int64_t(C) * R * S;
  for (int n = 0; n < N; ++n) {
    const float* xn = x + int64_t(n) * C * H * W;  // (C, H, W)
    float* yn = y + int64_t(n) * K * plane;        // (K, P, Q)
    for (int k = 0; k < K; ++k)
      for (int64_t i = 0; i < plane; ++i) yn[int64_t(k) * plane + i] = nd.bias ? nd.bias[k] : 0.0f;
    IndexWalk walk = index_walk(nd.weight_coding, nd.weight_index, nd.weight_index_bytes);
    int64_t e = 0;
    for (int64_t pos; (pos = index_next(&walk)) >= 0;) {
      const float wv = nd.weight[e++];
      if (wv == 0.0f) continue;
      const int k = int(pos / taps);
      int64_t t = pos - int64_t(k) * taps;
      const int c = int(t / (R * S));
      t -= int64_t(c) * R * S;
      const int r = int(t / S), s = int(t - int64_t(r) * S);
      const float* xc = xn + int64_t(c) * H * W;  // (H, W)
      float* yk = yn + int64_t(k) * plane;        // (P, Q)
      int p0, p1, q0, q1;
      valid_range(pad, r, stride, H, P, &p0, &p1);
      valid_range(pad, s, stride, W, Q, &q0, &q1);
      for (int p = p0; p < p1; ++p) {
        const float* xrow = xc + int64_t(p * stride - pad + r) * W;  // (W)
        float* yrow = yk + int64_t(p) * Q;                            // (Q)
        if (stride == 1) {
          const int shift = s - pad;
          for (int q = q0; q < q1; ++q) yrow[q] += wv * xrow[q + shift];
        } else {
          for (int q = q0; q < q1; ++q) yrow[q] += wv * xrow[q * stride - pad + s];
        }
      }
    }
    for (int k = 0; k < K; ++k) conv_epilogue(nd, k, P, Q, yn + int64_t(k) * plane);
  }
}

// Eval-mode batchnorm: y = gamma * (x - mean) / sqrt(var + eps) + beta, per channel.
void batchnorm(const Node& nd, int N, int C, int64_t HW, const float* x, float* y) {
  // x, y (N, C, HW)
  for (int c = 0; c < C; ++c) {
    const float scale = nd.weight[c] / sqrtf(nd.var[c] + nd.eps);
    const float mean = nd.mean[c], beta = nd.bias[c];
    for (int n = 0; n < N; ++n) {
      const float* xc = x + (int64_t(n) * C + c) * HW;  // (HW)
      float* yc = y + (int64_t(n) * C + c) * HW;        // (HW)
      for (int64_t i = 0; i < HW; ++i) yc[i] = (xc[i] - mean) * scale + beta;
    }
  }
}

// Square window k, stride s, no padding: y[n,c,i,j] = max or mean of x[n,c,i*s+r,j*s+t], r,t < k.
void pool2d(bool is_max, int k, int stride, int NC, int H, int W, int P, int Q, const float* x, float* y) {
  // x (N*C, H, W)   y (N*C, P, Q)
  const float inv_area = 1.0f / float(k * k);
  for (int64_t nc = 0; nc < NC; ++nc) {
    const float* xp = x + nc * H * W;  // (H, W)
    float* yp = y + nc * P * Q;        // (P, Q)
    for (int i = 0; i < P; ++i)
      for (int j = 0; j < Q; ++j) {
        const float* win = xp + int64_t(i * stride) * W + j * stride;  // window origin
        float acc = is_max ? win[0] : 0.0f;
        for (int r = 0; r < k; ++r)
          for (int t = 0; t < k; ++t) {
            const float v = win[r * W + t];
            if (is_max) acc = v > acc ? v : acc;
            else acc += v;
          }
        yp[i * Q + j] = is_max ? acc : acc * inv_area;
      }
  }
}

// y[n,c] = mean over the HW positions of x[n,c].
void global_avgpool(int64_t NC, int64_t HW, const float* x, float* y) {
  // x (N*C, HW)   y (N*C)
  for (int64_t nc = 0; nc < NC; ++nc) {
    float acc = 0.0f;
    for (int64_t i = 0; i < HW; ++i) acc += x[nc * HW + i];
    y[nc] = acc / float(HW);
  }
}

// y[n,o] = b[o] + sum_i w[o,i] * x[n,i]; with no input features (all removed by compaction)
// every row is the bias.
void linear(const Node& nd, int N, const float* x, float* y) {
  // x (N, I)   w (O, I)   y (N, O)
  const int I = nd.in_ch, O = nd.out_ch;
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < O; ++o) {
      const float* xn = x + int64_t(n) * I;  // (I)
      const float* wo = nd.weight ? nd.weight + int64_t(o) * I : nullptr;  // (I)
      float acc = 0.0f;
      for (int i = 0; i < I; ++i) acc += wo[i] * xn[i];
      y[int64_t(n) * O + o] = acc + (nd.bias ? nd.bias[o] : 0.0f);
    }
}

// The same over the kept weights of a sparse linear weight only: y[n,o] = b[o] + sum over the
// kept (o, i) of w[o,i] * x[n,i], accumulated in ascending i as the dense kernel does.
void linear_sparse(const Node& nd, int N, const float* x, float* y) {
  // x (N, I)   w: weight_count values at coded positions of (O, I)   y (N, O)
  const int I = nd.in_ch, O = nd.out_ch;
  for (int64_t j = 0; j < int64_t(N) * O; ++j) y[j] = 0.0f;
  IndexWalk walk = index_walk(nd.weight_coding, nd.weight_index, nd.weight_index_bytes);
  int64_t e = 0;
  for (int64_t pos; (pos = index_next(&walk)) >= 0;) {
    const float wv = nd.weight[e++];
    const int o = int(pos / I), i = int(pos - int64_t(o) * I);
    for (int n = 0; n < N; ++n) y[int64_t(n) * O + o] += wv * x[int64_t(n) * I + i];
  }
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < O; ++o) y[int64_t(n) * O + o] += nd.bias ? nd.bias[o] : 0.0f;
}

// ---------------------------------------------------------------- planning

Status fail(char* err, size_t len, Status s, const Node& nd, const char* fmt, ...) {
  char detail[200];
  va_list args;
  va_start(args, fmt);
  vsnprintf(detail, sizeof detail, fmt, args);
  va_end(args);
  set_error(err, len, "node '%s' (%s): %s", nd.name ? nd.name : "?", op_name(nd.op), detail);
  return s;
}

// A sparse conv or linear weight of `numel` values: a known coding whose index lists exactly
// weight_count positions inside the weight.
Status check_sparse_weight(const Node& nd, int64_t numel, char* err, size_t len) {
  if (nd.weight_coding == kDenseWeights) return kOk;
  if (nd.weight_coding != kBitmapIndex && nd.weight_coding != kGap8Index)
    return fail(err, len, kErrGraph, nd, "unknown weight coding %d (0 dense, 1 bitmap, 2 gap8)", nd.weight_coding);
  if (nd.weight_count < 0 || nd.weight_index_bytes < 0 || (nd.weight_index_bytes > 0 && !nd.weight_index) ||
      !sparse_index_valid(nd.weight_coding, nd.weight_index, uint64_t(nd.weight_index_bytes), uint64_t(numel),
                          uint64_t(nd.weight_count)))
    return fail(err, len, kErrGraph, nd, "sparse weights: the index does not list %lld positions within the %lld weights",
                (long long)nd.weight_count, (long long)numel);
  return kOk;
}

// Output shape of node i from its inputs' plans; validates attributes and weights.
Status infer_node(const Graph& g, int i, NodePlan* plan, char* err, size_t len) {
  const Node& nd = g.nodes[i];
  NodePlan& y = plan[i];
  const int needed = nd.op == Op::Add ? 2 : 1;
  if (nd.op == Op::Input) return fail(err, len, kErrGraph, nd, "only node 0 may be the input");
  if (nd.in0 < 0 || nd.in0 >= i || (needed == 2 && (nd.in1 < 0 || nd.in1 >= i)))
    return fail(err, len, kErrGraph, nd, "reads node %d/%d; inputs must come before node %d", nd.in0, nd.in1, i);
  const NodePlan& x = plan[nd.in0];
  y = x;
  switch (nd.op) {
    case Op::Conv: {
      if (x.rank != 4) return fail(err, len, kErrGraph, nd, "expected a (C, H, W) input, got %d features", x.c);
      if (nd.in_ch < 0 || nd.out_ch < 0 || nd.kernel_h < 1 || nd.kernel_w < 1 || nd.stride < 1 || nd.pad < 0 ||
          nd.pos_h < 0 || nd.pos_w < 0 || (nd.pos_h > 0) != (nd.pos_w > 0))
        return fail(err, len, kErrGraph, nd, "invalid configuration in=%d out=%d kernel=%dx%d stride=%d pad=%d",
                    nd.in_ch, nd.out_ch, nd.kernel_h, nd.kernel_w, nd.stride, nd.pad);
      if (x.c != nd.in_ch)
        return fail(err, len, kErrGraph, nd, "expected %d input channels, got (%d, %d, %d)", nd.in_ch, x.c, x.h, x.w);
      if (x.h + 2 * nd.pad < nd.kernel_h || x.w + 2 * nd.pad < nd.kernel_w)
        return fail(err, len, kErrGraph, nd, "input (%d, %d, %d) smaller than its %dx%d kernel", x.c, x.h, x.w,
                    nd.kernel_h, nd.kernel_w);
      y.c = nd.out_ch;
      y.h = (x.h + 2 * nd.pad - nd.kernel_h) / nd.stride + 1;
      y.w = (x.w + 2 * nd.pad - nd.kernel_w) / nd.stride + 1;
      if (nd.pos_h > 0 && (nd.pos_h != y.h || nd.pos_w != y.w))
        return fail(err, len, kErrGraph, nd, "its per-position bias is %dx%d but the output is %dx%d", nd.pos_h,
                    nd.pos_w, y.h, y.w);
      if ((!nd.weight && int64_t(nd.out_ch) * nd.in_ch > 0 && !(nd.weight_coding && nd.weight_count == 0)) ||
          (!nd.pos_bias && nd.pos_h > 0 && nd.out_ch > 0))
        return fail(err, len, kErrGraph, nd, "missing weights");
      if (Status s = check_sparse_weight(nd, int64_t(nd.out_ch) * nd.in_ch * nd.kernel_h * nd.kernel_w, err, len);
          s != kOk)
        return s;
      if (nd.pos_h > 0 && (!nd.pos_row_class) != (!nd.pos_col_class))
        return fail(err, len, kErrGraph, nd, "border table: row classes and column classes come together");
      if (nd.pos_h > 0 && nd.pos_row_class) {
        if (nd.pos_rows < 1 || nd.pos_cols < 1)
          return fail(err, len, kErrGraph, nd, "border table of %dx%d classes", nd.pos_rows, nd.pos_cols);
        for (int p = 0; p < nd.pos_h; ++p)
          if (nd.pos_row_class[p] < 0 || nd.pos_row_class[p] >= nd.pos_rows)
            return fail(err, len, kErrGraph, nd, "border table: row %d has class %d, not in [0, %d)", p,
                        nd.pos_row_class[p], nd.pos_rows);
        for (int q = 0; q < nd.pos_w; ++q)
          if (nd.pos_col_class[q] < 0 || nd.pos_col_class[q] >= nd.pos_cols)
            return fail(err, len, kErrGraph, nd, "border table: column %d has class %d, not in [0, %d)", q,
                        nd.pos_col_class[q], nd.pos_cols);
      }
      return kOk;
    }
    case Op::BatchNorm:
      if (x.c != nd.in_ch)
        return fail(err, len, kErrGraph, nd, "expected %d channels, got %d", nd.in_ch, x.c);
      if (nd.in_ch > 0 && (!nd.weight || !nd.bias || !nd.mean || !nd.var))
        return fail(err, len, kErrGraph, nd, "missing parameters");
      return kOk;
    case Op::ReLU: return kOk;
    case Op::MaxPool:
    case Op::AvgPool:
      if (x.rank != 4) return fail(err, len, kErrGraph, nd, "expected a (C, H, W) input, got %d features", x.c);
      if (nd.kernel_h < 1 || nd.stride < 1 || x.h < nd.kernel_h || x.w < nd.kernel_h)
        return fail(err, len, kErrGraph, nd, "input (%d, %d, %d) smaller than the %dx%d window (stride %d)", x.c, x.h,
                    x.w, nd.kernel_h, nd.kernel_h, nd.stride);
      y.h = (x.h - nd.kernel_h) / nd.stride + 1;
      y.w = (x.w - nd.kernel_h) / nd.stride + 1;
      return kOk;
    case Op::GlobalAvgPool:
      if (x.rank != 4) return fail(err, len, kErrGraph, nd, "expected a (C, H, W) input, got %d features", x.c);
      y.rank = 2, y.h = 1, y.w = 1;
      return kOk;
    case Op::Flatten: {
      const int64_t n = plan_numel(x);
      if (n > 0x7fffffff) return fail(err, len, kErrGraph, nd, "too many features");
      y.rank = 2, y.c = int32_t(n), y.h = 1, y.w = 1;
      return kOk;
    }
    case Op::Linear:
      if (x.rank != 2 || x.c != nd.in_ch)
        return fail(err, len, kErrGraph, nd, "expected input (N, %d), got %s(%d, %d, %d)", nd.in_ch,
                    x.rank == 2 ? "features " : "", x.c, x.h, x.w);
      if (nd.out_ch < 0) return fail(err, len, kErrGraph, nd, "invalid configuration out=%d", nd.out_ch);
      if (!nd.weight && int64_t(nd.in_ch) * nd.out_ch > 0 && !(nd.weight_coding && nd.weight_count == 0))
        return fail(err, len, kErrGraph, nd, "missing weights");
      if (Status s = check_sparse_weight(nd, int64_t(nd.out_ch) * nd.in_ch, err, len); s != kOk) return s;
      y.c = nd.out_ch;
      return kOk;
    case Op::Add: {
      const NodePlan& b = plan[nd.in1];
      if (nd.out_ch == 0) {
        if (b.rank != x.rank || b.c != x.c || b.h != x.h || b.w != x.w)
          return fail(err, len, kErrGraph, nd, "operand shapes differ: (%d, %d, %d) vs (%d, %d, %d)", x.c, x.h, x.w,
                      b.c, b.h, b.w);
        return kOk;
      }
      if (nd.out_ch < 0 || b.rank != x.rank || b.h != x.h || b.w != x.w)
        return fail(err, len, kErrGraph, nd, "operands (%d, %d, %d) and (%d, %d, %d) do not join into %d channels", x.c,
                    x.h, x.w, b.c, b.h, b.w, nd.out_ch);
      const NodePlan* ins[2] = {&x, &b};
      const int32_t* maps[2] = {nd.map0, nd.map1};
      for (int s = 0; s < 2; ++s) {
        if (!maps[s]) {
          if (ins[s]->c != nd.out_ch)
            return fail(err, len, kErrGraph, nd, "input %d has %d channels; without a channel map it needs %d", s,
                        ins[s]->c, nd.out_ch);
          continue;
        }
        for (int c = 0; c < ins[s]->c; ++c)
          if (maps[s][c] < 0 || maps[s][c] >= nd.out_ch || (c > 0 && maps[s][c] <= maps[s][c - 1]))
            return fail(err, len, kErrGraph, nd, "channel map %d: entry %d is %d; it must ascend within [0, %d)", s, c,
                        maps[s][c], nd.out_ch);
      }
      y.c = nd.out_ch;
      return kOk;
    }
    case Op::Input: break;
  }
  return fail(err, len, kErrGraph, nd, "unknown node kind %d", int(nd.op));
}

}  // namespace

const char* status_name(Status s) {
  switch (s) {
    case kOk: return "ok";
    case kErrArgument: return "invalid argument";
    case kErrIo: return "i/o error";
    case kErrFormat: return "bad model file";
    case kErrChecksum: return "checksum mismatch";
    case kErrGraph: return "graph not runnable";
    case kErrMemory: return "out of memory";
  }
  return "unknown status";
}

const char* op_name(Op op) {
  switch (op) {
    case Op::Input: return "input";
    case Op::Conv: return "conv";
    case Op::BatchNorm: return "batchnorm";
    case Op::ReLU: return "relu";
    case Op::MaxPool: return "maxpool";
    case Op::AvgPool: return "avgpool";
    case Op::GlobalAvgPool: return "global_avgpool";
    case Op::Flatten: return "flatten";
    case Op::Linear: return "linear";
    case Op::Add: return "add";
  }
  return "?";
}

bool sparse_index_valid(int32_t coding, const uint8_t* bytes, uint64_t len, uint64_t numel, uint64_t count) {
  uint64_t seen = 0;
  if (coding == kBitmapIndex) {
    if (len != numel / 8 + (numel % 8 != 0)) return false;
    for (uint64_t b = 0; b < len; ++b) {
      const unsigned v = bytes[b];
      if (b == len - 1 && (numel & 7) != 0 && (v >> (numel & 7)) != 0) return false;
      for (unsigned bits = v; bits != 0; bits &= bits - 1) ++seen;
    }
    return seen == count;
  }
  if (coding != kGap8Index || len >= (uint64_t(1) << 56) || numel >= 255 * (len + 1)) return false;
  uint64_t pos = 0;
  for (uint64_t b = 0; b < len; ++b) {
    pos += bytes[b];
    if (bytes[b] == 255) {
      if (pos > numel) return false;
      continue;
    }
    if (pos >= numel || ++seen > count) return false;
    ++pos;
  }
  return seen == count && numel - pos < 255;
}

uint32_t crc32_update(uint32_t crc, const void* data, size_t n) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = (crc >> 8) ^ kCrc.v[(crc ^ p[i]) & 0xFFu];
  return ~crc;
}

Status plan_graph(const Graph& g, NodePlan* plan, int64_t* floats_per_image, char* err, size_t err_len) {
  if (!g.nodes || !plan || !floats_per_image || g.num_nodes < 2) {
    set_error(err, err_len, "plan_graph: need a graph with an input and at least one layer");
    return kErrArgument;
  }
  const int n = g.num_nodes;
  if (g.nodes[0].op != Op::Input || g.in_c < 1 || g.in_h < 1 || g.in_w < 1) {
    set_error(err, err_len, "graph: node 0 must be the input, with a positive shape (got %d, %d, %d)", g.in_c,
              g.in_h, g.in_w);
    return kErrGraph;
  }
  if (g.output < 1 || g.output >= n) {
    set_error(err, err_len, "graph: output node %d is not a layer of the %d-node graph", g.output, n);
    return kErrGraph;
  }
  plan[0] = NodePlan{4, g.in_c, g.in_h, g.in_w, 0, 0, 0};
  for (int i = 1; i < n; ++i) {
    Status s = infer_node(g, i, plan, err, err_len);
    if (s != kOk) return s;
    plan[i].last_use = i;
  }
  // Lifetimes: a buffer lives from its node to its last reader; the output to the end.
  for (int i = 1; i < n; ++i) {
    const Node& nd = g.nodes[i];
    plan[nd.in0].last_use = i;
    if (nd.op == Op::Add) plan[nd.in1].last_use = i;
  }
  plan[g.output].last_use = n;
  // Buffers: an elementwise node (relu, batchnorm, add, flatten) writes over an input that
  // nothing reads later (that halves the memory of the conv-batchnorm-relu chains of a dense
  // graph), so such chains share one buffer, a group named by its first node, alive from that
  // node to the last reader of any member. Groups are placed largest first, each at the lowest
  // offset that overlaps no placed group alive at the same time ("greedy by size"): big maps
  // claim the low offsets and smaller ones fill the gaps between them, so that slimming some
  // layers (a compacted model) never scatters the big maps. The input images stay in the
  // caller's memory.
  for (int i = 1; i < n; ++i) {
    const int64_t size = round_up4(plan_numel(plan[i]));
    plan[i].group = i;
    plan[i].offset = -1;  // not placed yet
    const Node& nd = g.nodes[i];
    const Op op = nd.op;
    if (size > 0 && (op == Op::ReLU || op == Op::BatchNorm || op == Op::Add || op == Op::Flatten)) {
      const int32_t inputs[2] = {nd.in0, op == Op::Add ? nd.in1 : -1};
      for (int32_t in : inputs)
        if (plan[i].group == i && in > 0 && plan[in].last_use == i && plan_numel(plan[in]) == plan_numel(plan[i]))
          plan[i].group = plan[in].group;
    }
  }
  // The last node that reads a member of group L.
  auto group_end = [&](int L) {
    int32_t end = L;
    for (int j = L; j < n; ++j)
      if (plan[j].group == L && plan[j].last_use > end) end = plan[j].last_use;
    return end;
  };
  int64_t total = 0;
  for (;;) {
    int L = -1;  // the largest group not placed yet (the earliest among equals)
    int64_t size = 0;
    for (int i = 1; i < n; ++i) {
      const int64_t s = round_up4(plan_numel(plan[i]));
      if (plan[i].group == i && plan[i].offset < 0 && (L < 0 || s > size)) L = i, size = s;
    }
    if (L < 0) break;
    if (size == 0) {
      plan[L].offset = 0;
      continue;
    }
    const int32_t end = group_end(L);
    // Candidates: 0 and the end of every placed group alive with L; the lowest that fits wins.
    int64_t best = -1;
    for (int cand = 0; cand < n; ++cand) {
      int64_t at = 0;
      if (cand > 0) {
        if (plan[cand].group != cand || plan[cand].offset < 0) continue;
        if (cand > end || group_end(cand) < L) continue;  // never alive with L
        at = plan[cand].offset + round_up4(plan_numel(plan[cand]));
      }
      if (best >= 0 && at >= best) continue;
      bool fits = true;
      for (int j = 1; j < n && fits; ++j) {
        if (plan[j].group != j || plan[j].offset < 0 || j == L) continue;
        if (j > end || group_end(j) < L) continue;
        const int64_t lo = plan[j].offset, hi = lo + round_up4(plan_numel(plan[j]));
        if (at < hi && lo < at + size) fits = false;
      }
      if (fits) best = at;
    }
    plan[L].offset = best;
    if (best + size > total) total = best + size;
  }
  for (int i = 1; i < n; ++i) plan[i].offset = plan[plan[i].group].offset;
  *floats_per_image = total;
  return kOk;
}

Status engine_init(Engine* e, const Graph* g, NodePlan* plan, float* arena, int64_t arena_floats, int32_t max_batch) {
  if (!e) return kErrArgument;
  e->graph = nullptr;
  e->error[0] = '\0';
  if (!g || !plan || max_batch < 1 || arena_floats < 0 || (arena_floats > 0 && !arena)) {
    set_error(e->error, sizeof e->error, "engine_init: need a graph, a plan array, an arena and max_batch >= 1");
    return kErrArgument;
  }
  int64_t per_image = 0;
  Status s = plan_graph(*g, plan, &per_image, e->error, sizeof e->error);
  if (s != kOk) return s;
  if (per_image * max_batch > arena_floats) {
    set_error(e->error, sizeof e->error, "engine_init: the arena holds %lld floats; %d image(s) need %lld",
              (long long)arena_floats, max_batch, (long long)(per_image * max_batch));
    return kErrMemory;
  }
  e->graph = g;
  e->plan = plan;
  e->arena = arena;
  e->floats_per_image = per_image;
  e->max_batch = max_batch;
  return kOk;
}

int64_t engine_output_size(const Engine* e) {
  if (!e || !e->graph) return 0;
  return plan_numel(e->plan[e->graph->output]);
}

Status engine_run(Engine* e, const float* input, int32_t batch, float* output) {
  if (!e || !e->graph) return kErrArgument;
  if (!input || !output || batch < 1 || batch > e->max_batch) {
    set_error(e->error, sizeof e->error, "engine_run: need input and output buffers and 1 <= batch <= %d, got %d",
              e->max_batch, batch);
    return kErrArgument;
  }
  const Graph& g = *e->graph;
  const NodePlan* plan = e->plan;
  // Node i's output: the caller's images for the input, else its slot in the arena (offsets
  // are per image; a batch of N scales them all by N, which keeps them disjoint).
  auto buffer = [&](int i) -> float* {
    return i == 0 ? const_cast<float*>(input) : e->arena + plan[i].offset * batch;
  };
  const int N = batch;
  for (int i = 1; i < g.num_nodes; ++i) {
    const Node& nd = g.nodes[i];
    const NodePlan& xp = plan[nd.in0];
    const NodePlan& yp = plan[i];
    const float* x = buffer(nd.in0);
    float* y = buffer(i);
    const int64_t x_numel = int64_t(N) * plan_numel(xp), y_numel = int64_t(N) * plan_numel(yp);
    switch (nd.op) {
      case Op::Conv:
        if (yp.c == 0) break;  // every output channel was removed
        if (nd.weight_coding != kDenseWeights) conv2d_sparse(nd, N, xp.c, xp.h, xp.w, yp.h, yp.w, x, y);
        else conv2d(nd, N, xp.c, xp.h, xp.w, yp.h, yp.w, x, y);
        break;
      case Op::BatchNorm: batchnorm(nd, N, xp.c, int64_t(xp.h) * xp.w, x, y); break;
      case Op::ReLU:
        for (int64_t k = 0; k < y_numel; ++k) y[k] = x[k] > 0.0f ? x[k] : 0.0f;
        break;
      case Op::MaxPool:
      case Op::AvgPool:
        pool2d(nd.op == Op::MaxPool, nd.kernel_h, nd.stride, N * xp.c, xp.h, xp.w, yp.h, yp.w, x, y);
        break;
      case Op::GlobalAvgPool: global_avgpool(int64_t(N) * xp.c, int64_t(xp.h) * xp.w, x, y); break;
      case Op::Flatten:
        if (x_numel > 0 && x != y) memcpy(y, x, size_t(x_numel) * sizeof(float));
        break;
      case Op::Linear:
        if (nd.weight_coding != kDenseWeights) linear_sparse(nd, N, x, y);
        else linear(nd, N, x, y);
        break;
      case Op::Add: {
        const float* b = buffer(nd.in1);
        if (nd.out_ch == 0) {
          for (int64_t k = 0; k < y_numel; ++k) y[k] = x[k] + b[k];
          break;
        }
        // y = base + bias, base the input without a map (the one y may share memory with);
        // then each mapped input added into its channels.
        const float* xs[2] = {x, b};
        const int32_t* maps[2] = {nd.map0, nd.map1};
        const int32_t chans[2] = {plan[nd.in0].c, plan[nd.in1].c};
        const int C = nd.out_ch;
        const int64_t plane = C > 0 ? y_numel / (int64_t(N) * C) : 0;
        int base = !maps[0] ? 0 : !maps[1] ? 1 : -1;
        if (base == 0 && !maps[1] && xs[1] == y) base = 1;
        for (int n = 0; n < N; ++n)
          for (int k = 0; k < C; ++k) {
            float* yk = y + (int64_t(n) * C + k) * plane;                                   // (plane)
            const float bk = nd.bias ? nd.bias[k] : 0.0f;
            if (base < 0) {
              for (int64_t q = 0; q < plane; ++q) yk[q] = bk;
            } else {
              const float* xk = xs[base] + (int64_t(n) * C + k) * plane;
              for (int64_t q = 0; q < plane; ++q) yk[q] = xk[q] + bk;
            }
          }
        for (int s = 0; s < 2; ++s) {
          if (s == base) continue;
          for (int n = 0; n < N; ++n)
            for (int c = 0; c < chans[s]; ++c) {
              const float* xc = xs[s] + (int64_t(n) * chans[s] + c) * plane;                       // (plane)
              float* yk = y + (int64_t(n) * C + (maps[s] ? maps[s][c] : c)) * plane;              // (plane)
              for (int64_t q = 0; q < plane; ++q) yk[q] += xc[q];
            }
        }
        break;
      }
      case Op::Input: break;
    }
  }
  const int64_t out_numel = int64_t(N) * plan_numel(plan[g.output]);
  if (out_numel > 0) memcpy(output, buffer(g.output), size_t(out_numel) * sizeof(float));
  return kOk;
}

}  // namespace dnns::rt
