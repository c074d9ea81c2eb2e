// Optimized pooling: the (N*C) planes are independent, so they are spread over oneTBB threads
// and each plane is computed by one task, in the same order as the reference. Forward loops
// run along an output row innermost (one window offset at a time) so they vectorise.
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <algorithm>

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
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, planes, grain), [&](const tbb::blocked_range<int64_t>& r) {
    for (int64_t i = r.begin(); i < r.end(); i++) f(i);
  });
}

}  // namespace

void maxpool_forward(const Pool2dParams& p, const float* x, float* y) {
  // x: (N, C, H, W) -> y: (N, C, P, Q)
  const int P = p.P(), Q = p.Q(), W = p.W, k = p.k, st = p.stride;
  for_planes(int64_t(p.N) * p.C, int64_t(p.H) * W, [=](int64_t nc) {
    const float* xp = x + nc * p.H * W;  // (H, W)
    float* yp = y + nc * P * Q;          // (P, Q)
    for (int i = 0; i < P; i++) {
      float* yrow = yp + i * Q;  // (Q)
      const float* x0 = xp + (i * st) * W;
      for (int j = 0; j < Q; j++) yrow[j] = x0[j * st];
      // Window offsets in row-major order with a strict '>', exactly as the reference.
      for (int r = 0; r < k; r++)
        for (int s = 0; s < k; s++) {
          const float* xr = xp + (i * st + r) * W + s;
          for (int j = 0; j < Q; j++) yrow[j] = xr[j * st] > yrow[j] ? xr[j * st] : yrow[j];
        }
    }
  });
}

void maxpool_backward(const Pool2dParams& p, const float* x, const float* dy, float* dx) {
  // x, dx: (N, C, H, W)   dy: (N, C, P, Q)
  const int P = p.P(), Q = p.Q(), W = p.W, k = p.k, st = p.stride;
  for_planes(int64_t(p.N) * p.C, int64_t(p.H) * W, [=](int64_t nc) {
    const float* xp = x + nc * p.H * W;  // (H, W)
    const float* dyp = dy + nc * P * Q;  // (P, Q)
    float* dxp = dx + nc * p.H * W;      // (H, W)
    std::fill(dxp, dxp + int64_t(p.H) * W, 0.0f);
    for (int i = 0; i < P; i++)
      for (int j = 0; j < Q; j++) {
        // The first maximum in row-major window order takes the gradient (see backend_api.inc).
        int arg = (i * st) * W + j * st;
        for (int r = 0; r < k; r++)
          for (int s = 0; s < k; s++) {
            const int at = (i * st + r) * W + j * st + s;
            if (xp[at] > xp[arg]) arg = at;
          }
        dxp[arg] += dyp[i * Q + j];
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
    for (; i < HW; i++) acc[0] += xp[i];
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
