// Optimized pooling: the (N*C) planes are independent, so they are spread over oneTBB threads
// and each plane is computed by one task, comparing and summing in the reference's order.
// Inner loops run along an output row, where the compiler can vectorise them.

#include <algorithm>

#include "core/parallel.h"
#include "kernels/cpu/cpu.h"

namespace dnns::cpu {
namespace {

// f(plane) for each of `planes` planes of `plane_size` values; planes are grouped so each
// task touches at least ~16K values and tiny tensors stay on the calling thread.
template <class F>
void for_planes(int64_t planes, int64_t plane_size, F&& f) {
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(1, plane_size));
  if (planes <= grain) {
    for (int64_t i = 0; i < planes; i++) f(i);
    return;
  }
  parallel_for(int64_t(0), planes, grain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) f(i);
  });
}

}  // namespace

// k = stride = 2 (every VGG pool) gets its own loops: windows do not overlap, so each window's
// four inputs are read once, compared with selects, and the backward pass writes every dx
// value exactly once instead of zero-filling and scattering. These loops vectorise; the general
// ones below are kept simple because other window shapes are rare.

void maxpool_forward(const Pool2dParams& p, const float* x, float* y) {
  // x: (N, C, H, W) -> y: (N, C, P, Q)
  const int P = p.P(), Q = p.Q(), W = p.W, k = p.k, st = p.stride;
  for_planes(int64_t(p.N) * p.C, int64_t(p.H) * W, [=](int64_t nc) {
    const float* xp = x + nc * p.H * W;  // (H, W)
    float* yp = y + nc * P * Q;          // (P, Q)
    for (int i = 0; i < P; i++) {
      float* yrow = yp + i * Q;  // (Q)
      const float* x0 = xp + (i * st) * W;
      if (k == 2 && st == 2) {
        const float* x1 = x0 + W;
        for (int j = 0; j < Q; j++) {
          const float a = x0[2 * j], b = x0[2 * j + 1], c = x1[2 * j], d = x1[2 * j + 1];
          const float m1 = b > a ? b : a, m2 = c > m1 ? c : m1;
          yrow[j] = d > m2 ? d : m2;
        }
        continue;
      }
      // Window offsets in row-major order with a strict '>', exactly as the reference.
      for (int j = 0; j < Q; j++) yrow[j] = x0[j * st];
      for (int r = 0; r < k; r++)
        for (int s = 0; s < k; s++) {
          const float* xr = x0 + r * W + s;
          for (int j = 0; j < Q; j++) yrow[j] = xr[j * st] > yrow[j] ? xr[j * st] : yrow[j];
        }
    }
  });
}

void maxpool_backward(const Pool2dParams& p, const float* x, const float* dy, float* dx) {
  // x, dx: (N, C, H, W)   dy: (N, C, P, Q)
  // The first maximum in row-major window order takes the gradient (see backend_api.inc).
  const int P = p.P(), Q = p.Q(), W = p.W, k = p.k, st = p.stride;
  const bool fast = k == 2 && st == 2;
  for_planes(int64_t(p.N) * p.C, int64_t(p.H) * W, [=](int64_t nc) {
    const float* xp = x + nc * p.H * W;  // (H, W)
    const float* dyp = dy + nc * P * Q;  // (P, Q)
    float* dxp = dx + nc * p.H * W;      // (H, W)
    // The fast path writes every covered input; only an odd last row/column needs zeros first.
    if (!fast || (p.H % 2) || (W % 2)) std::fill(dxp, dxp + int64_t(p.H) * W, 0.0f);
    for (int i = 0; i < P; i++) {
      if (fast) {
        const float* x0 = xp + 2 * i * W;  // the window's two input rows
        const float* x1 = x0 + W;
        float* d0 = dxp + 2 * i * W;
        float* d1 = d0 + W;
        for (int j = 0; j < Q; j++) {
          const float a = x0[2 * j], b = x0[2 * j + 1], c = x1[2 * j], d = x1[2 * j + 1];
          const bool b_wins = b > a;
          const float m1 = b_wins ? b : a;
          const bool c_wins = c > m1;
          const bool d_wins = d > (c_wins ? c : m1);
          // hand the gradient back from the last candidate to the first; a later one takes it
          // only when it is strictly greater than everything before it
          const float g = dyp[i * Q + j];
          d1[2 * j + 1] = d_wins ? g : 0.0f;
          const float left_c = d_wins ? 0.0f : g;
          d1[2 * j] = c_wins ? left_c : 0.0f;
          const float left_b = c_wins ? 0.0f : left_c;
          d0[2 * j + 1] = b_wins ? left_b : 0.0f;
          d0[2 * j] = b_wins ? 0.0f : left_b;
        }
        continue;
      }
      for (int j = 0; j < Q; j++) {
        // Selects rather than branches: on real data a branch here mispredicts constantly.
        const float* win = xp + (i * st) * W + j * st;  // window's top-left corner
        float best = win[0];
        int arg = 0;
        for (int r = 0; r < k; r++)
          for (int s = 0; s < k; s++) {
            const float v = win[r * W + s];
            const bool greater = v > best;
            best = greater ? v : best;
            arg = greater ? r * W + s : arg;
          }
        dxp[(i * st) * W + j * st + arg] += dyp[i * Q + j];  // overlapping windows accumulate
      }
    }
  });
}

void avgpool_forward(const Pool2dParams& p, const float* x, float* y) {
  // x: (N, C, H, W) -> y: (N, C, P, Q)
  const int P = p.P(), Q = p.Q(), W = p.W, k = p.k, st = p.stride;
  const float inv = 1.0f / float(k * k);
  for_planes(int64_t(p.N) * p.C, int64_t(p.H) * W, [=](int64_t nc) {
    const float* xp = x + nc * p.H * W;  // (H, W)
    float* yp = y + nc * P * Q;          // (P, Q)
    for (int i = 0; i < P; i++) {
      float* yrow = yp + i * Q;  // (Q)
      std::fill(yrow, yrow + Q, 0.0f);
      for (int r = 0; r < k; r++)
        for (int s = 0; s < k; s++) {
          const float* xr = xp + (i * st + r) * W + s;
          for (int j = 0; j < Q; j++) yrow[j] += xr[j * st];
        }
      for (int j = 0; j < Q; j++) yrow[j] *= inv;
    }
  });
}

void avgpool_backward(const Pool2dParams& p, const float* dy, float* dx) {
  // dy: (N, C, P, Q) -> dx: (N, C, H, W)
  const int P = p.P(), Q = p.Q(), W = p.W, k = p.k, st = p.stride;
  const float inv = 1.0f / float(k * k);
  for_planes(int64_t(p.N) * p.C, int64_t(p.H) * W, [=](int64_t nc) {
    const float* dyp = dy + nc * P * Q;  // (P, Q)
    float* dxp = dx + nc * p.H * W;      // (H, W)
    std::fill(dxp, dxp + int64_t(p.H) * W, 0.0f);
    for (int i = 0; i < P; i++)
      for (int r = 0; r < k; r++)
        for (int s = 0; s < k; s++) {
          float* dxr = dxp + (i * st + r) * W + s;
          for (int j = 0; j < Q; j++) dxr[j * st] += dyp[i * Q + j] * inv;
        }
  });
}

void global_avgpool_forward(int N, int C, int HW, const float* x, float* y) {
  // x: (N, C, HW) -> y: (N, C); each plane summed in double over fixed lanes (vectorises,
  // same result on every run)
  constexpr int kLanes = 8;
  for_planes(int64_t(N) * C, HW, [=](int64_t nc) {
    const float* xp = x + nc * HW;  // (HW)
    double acc[kLanes] = {};
    int i = 0;
    for (; i + kLanes <= HW; i += kLanes)
      for (int l = 0; l < kLanes; l++) acc[l] += xp[i + l];
    for (; i < HW; i++) acc[i % kLanes] += xp[i];
    double sum = 0.0;
    for (int l = 0; l < kLanes; l++) sum += acc[l];
    y[nc] = float(sum / HW);
  });
}

void global_avgpool_backward(int N, int C, int HW, const float* dy, float* dx) {
  // dy: (N, C) -> dx: (N, C, HW)
  for_planes(int64_t(N) * C, HW, [=](int64_t nc) {
    const float g = dy[nc] / float(HW);
    std::fill(dx + nc * HW, dx + (nc + 1) * HW, g);
  });
}

}  // namespace dnns::cpu
