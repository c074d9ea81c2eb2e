// Winograd F(2x2, 3x3) (winograd.h): the generic build of the kernels (8-lane arrays the
// compiler vectorises for the baseline), the choice among the ISA builds, the filter transform
// and the driver that cuts a batch into tasks and chunks.
#include "kernels/cpu/winograd.h"

#include <algorithm>
#include <memory>

#include "core/parallel.h"
#include "core/threading.h"
#include "kernels/cpu/gemm_util.h"
#include "kernels/cpu/rows.h"

#define DNNS_WINO_NS wino_generic
namespace dnns::cpu::wino_generic {

struct WV {
  static constexpr int W = 8;
  struct V {
    float v[W];
  };
  static V zero() { return V{}; }
  static V load(const float* p) {
    V r;
    for (int i = 0; i < W; ++i) r.v[i] = p[i];
    return r;
  }
  static void store(float* p, V a) {
    for (int i = 0; i < W; ++i) p[i] = a.v[i];
  }
  static void store_n(float* p, V a, int n) {
    for (int i = 0; i < n; ++i) p[i] = a.v[i];
  }
  static V bcast(float x) {
    V r;
    for (int i = 0; i < W; ++i) r.v[i] = x;
    return r;
  }
  static V fma(V a, V b, V c) {
    for (int i = 0; i < W; ++i) c.v[i] += a.v[i] * b.v[i];
    return c;
  }
  static V add(V a, V b) {
    for (int i = 0; i < W; ++i) a.v[i] += b.v[i];
    return a;
  }
  static V sub(V a, V b) {
    for (int i = 0; i < W; ++i) a.v[i] -= b.v[i];
    return a;
  }
  static V max(V a, V b) {
    for (int i = 0; i < W; ++i) a.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i];
    return a;
  }
  static V even(V a, V b) {
    V r;
    for (int i = 0; i < W / 2; ++i) r.v[i] = a.v[2 * i], r.v[W / 2 + i] = b.v[2 * i];
    return r;
  }
  static V odd(V a, V b) {
    V r;
    for (int i = 0; i < W / 2; ++i) r.v[i] = a.v[2 * i + 1], r.v[W / 2 + i] = b.v[2 * i + 1];
    return r;
  }
  template <int s>
  static V sel4(V a, V b, V c, V d) {
    V r;
    for (int i = 0; i < W / 4; ++i)
      r.v[i] = a.v[s + 4 * i], r.v[W / 4 + i] = b.v[s + 4 * i], r.v[W / 2 + i] = c.v[s + 4 * i],
      r.v[3 * W / 4 + i] = d.v[s + 4 * i];
    return r;
  }
  static void transpose(V* r) {
    for (int i = 0; i < W; ++i)
      for (int j = i + 1; j < W; ++j) {
        const float t = r[i].v[j];
        r[i].v[j] = r[j].v[i], r[j].v[i] = t;
      }
  }
  static V zip_lo(V a, V b) {
    V r;
    for (int i = 0; i < W / 2; ++i) r.v[2 * i] = a.v[i], r.v[2 * i + 1] = b.v[i];
    return r;
  }
  static V zip_hi(V a, V b) {
    V r;
    for (int i = 0; i < W / 2; ++i) r.v[2 * i] = a.v[W / 2 + i], r.v[2 * i + 1] = b.v[W / 2 + i];
    return r;
  }
};

}  // namespace dnns::cpu::wino_generic

#include "kernels/cpu/winograd_impl.h"

namespace dnns::cpu {
namespace {

using wino_generic::WV;
const WinogradKernels kGeneric{"generic/8",
                               8,
                               4,
                               2,
                               &wino_generic::input<WV>,
                               &wino_generic::multiply<WV, 4, 2, 16>,
                               &wino_generic::output<WV>,
                               &wino_generic::output_grad<WV>,
                               &wino_generic::input4<WV>,
                               &wino_generic::multiply<WV, 4, 2, 36>,
                               &wino_generic::output4<WV>,
                               4,
                               2,
                               &wino_generic::few_filters<WV>,
                               &wino_generic::few_multiply<WV, 4, 2>,
                               &wino_generic::few_output<WV>};

// Filters per multiply call: M of a chunk (16, kc, ldv) about 200 KiB, in L2 for the output
// transform that follows.
int chunk_filters(const WinogradKernels& wk) { return wk.kb * std::max(1, 64 / wk.kb); }

// Tiles per chunk: V (planes, C, ldv) of about 1 MiB or less, 1 to 4 micro-kernel tiles wide.
int chunk_tiles(const WinogradKernels& wk, int C, int planes) {
  const int tile = wk.nv * wk.vec;
  return tile * std::clamp((1 << 18) / planes / std::max(1, C) / tile, 1, 4);
}

// How winograd_conv cuts a batch: groups of `images` images (whole images; a group's tiles
// fill at most one chunk), and per group `kgroups` ranges of filters, so that a small batch
// still gives every thread tasks. `fit` is the most images a chunk holds (what the scratch is
// sized for, whatever the thread count).
struct Plan {
  int m, planes;         // output tile m x m (2 or 4), 16 or 36 transformed planes
  int TP, TQ;            // tile rows and columns of an image
  int pad;               // zero rows and columns around each padded image (1, or 3 for m = 4)
  int RP, plane, origin; // padded row and plane, tile (0, 0)'s patch (winograd.h)
  int64_t padded_image;  // floats of one padded image
  int ldv, kc;           // tiles per chunk, filters per multiply call
  int fit, images, groups, kblocks, kgroups;
};

// m = 4: the patches of the last tile row and column reach up to 4 rows and columns past the
// image, and F(4x4)'s transforms mix every patch row into every output (exactly cancelling
// only for zeros), so they must read zeros there: 3 zero rows and columns on each side, plus
// the next plane's (or row's) 3 leading ones, with the patches starting 2 rows and columns
// in. m = 2 mixes only the rows each output reads: one zero row and column suffice.
Plan make_plan(const WinogradKernels& wk, int N, int C, int H, int W, int K, int m, int ldv = 0) {
  Plan p;
  p.m = m, p.planes = (m + 2) * (m + 2);
  p.TP = (H + m - 1) / m, p.TQ = (W + m - 1) / m;
  p.pad = m == 2 ? 1 : 3;
  p.RP = W + 2 * p.pad, p.plane = (H + 2 * p.pad) * p.RP, p.origin = (p.pad - 1) * (p.RP + 1);
  p.padded_image = (int64_t)C * p.plane + 2 * p.RP + 4 * wk.vec + 16;
  p.ldv = ldv > 0 ? ldv : chunk_tiles(wk, C, p.planes);
  p.kc = chunk_filters(wk);
  // Image groups of as many images as a chunk holds. For winograd_conv's chunks (no ldv
  // given), fewer where that evens out the threads' rounds by an eighth or more (N = 32 at
  // 16x16 on 2 threads: 4 groups of 8, not 12 + 12 + 8; a chunk of fewer tiles costs a
  // little more per tile); the callers that give ldv take every image of theirs in one group.
  // Filter ranges only where there are fewer groups than threads, as each range pads and
  // transforms its group's input again (they were cut for 4 tasks a thread: on 1 thread at
  // batch 32 the input of a 12-filter layer was transformed twice, at half the direct speed).
  const int per_image = p.TP * p.TQ, threads = num_threads();
  p.fit = p.images = std::max(1, std::min(N, p.ldv / per_image));
  if (ldv <= 0) {
    const int rounds = ((N + p.images - 1) / p.images + threads - 1) / threads;
    const int even = (N + rounds * threads - 1) / (rounds * threads);  // at most p.images
    if (8 * even <= 7 * p.images) p.images = even;
  }
  p.groups = (N + p.images - 1) / p.images;
  p.kblocks = (K + wk.kb - 1) / wk.kb;
  p.kgroups = std::max(1, std::min(p.kblocks, (threads + p.groups - 1) / p.groups));
  return p;
}

// Floats from one xi plane of U to the next.
int64_t u_plane(const WinogradKernels& wk, int K, int C) {
  return (int64_t)(K + wk.kb - 1) / wk.kb * C * wk.kb + kWinoPlaneSkew;
}

// The segments of a full image group, in order (image, tile row, column), cut into chunks of
// at most ldv tiles; chunk j is segments [first[j], first[j + 1]). A last group with fewer
// images takes the prefix of them that belongs to its images.
struct Segments {
  std::vector<WinoSegment> segs;
  std::vector<int> first;
  WinoChunk chunk(int j, int nb, int C, int K, int H, int W, const Plan& p, int64_t uplane) const {
    int s1 = first[j + 1];
    while (s1 > first[j] && segs[s1 - 1].img >= nb) --s1;
    return WinoChunk{C,      K,           H, W, p.RP, p.plane, p.origin, p.padded_image, p.ldv, uplane,
                     segs.data() + first[j], s1 - first[j]};
  }
};

Segments make_segments(const WinogradKernels& wk, const Plan& p) {
  Segments r;
  r.first.push_back(0);
  for (int i = 0, tb = 0; i < p.images; ++i)
    for (int tp = 0; tp < p.TP; ++tp)
      for (int tq = 0; tq < p.TQ; tq += wk.vec) {
        const int len = std::min(wk.vec, p.TQ - tq);
        if (tb + len > p.ldv) r.first.push_back((int)r.segs.size()), tb = 0;
        r.segs.push_back(WinoSegment{i, tp, tq, len, tb});
        tb += len;
      }
  r.first.push_back((int)r.segs.size());
  return r;
}

// Floats of V and M of one chunk (thread scratch slot 1), with a vector of slack: the output
// transform loads whole vectors from M's last columns.
int64_t scratch_vm(const WinogradKernels& wk, const Plan& p, int C) {
  return p.planes * ((int64_t)C * p.ldv + kWinoPlaneSkew + (int64_t)p.kc * p.ldv + kWinoPlaneSkew) + wk.vec;
}

// out = G v of the 3 taps v[0], v[stride], v[2 * stride] along one axis (m + 2 values):
//   m = 2: G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]
//   m = 4: G = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6; 1/24 -1/12 1/6; 0 0 1]
void g_axis(int m, const float* v, int stride, float* out, int ostride) {
  const float a = v[0], b = v[stride], d = v[2 * stride];
  if (m == 2) {
    const float r[4] = {a, 0.5f * (a + b + d), 0.5f * (a - b + d), d};
    for (int i = 0; i < 4; ++i) out[i * ostride] = r[i];
    return;
  }
  const float r[6] = {0.25f * a,
                      -(a + b + d) / 6.0f,
                      -(a - b + d) / 6.0f,
                      a / 24.0f + b / 12.0f + d / 6.0f,
                      a / 24.0f - b / 12.0f + d / 6.0f,
                      d};
  for (int i = 0; i < 6; ++i) out[i * ostride] = r[i];
}

// U (planes, uplane apart, of (kblocks, C, kb)) = G g G^T of every filter, zero past K.
// The kb filters of one (block, channel) are transformed into a small table first, then each
// xi's kb values go to their plane as one contiguous run.
void pack_filters(const WinogradKernels& wk, int m, int K, int C, const float* w, bool flipped, float* U) {
  constexpr int kMaxKb = 32;
  const int kb = wk.kb, kblocks = (K + kb - 1) / kb, n = m + 2, planes = n * n;
  const int64_t uplane = u_plane(wk, K, C);
  parallel_for(0, kblocks, 1, [&](int b0, int b1) {
    float tab[36][kMaxKb];
    for (int b = b0; b != b1; ++b)
      for (int c = 0; c < C; ++c) {
        for (int l = 0; l < kb; ++l) {
          const int k = b * kb + l;
          if (k >= K) {
            for (int xi = 0; xi < planes; ++xi) tab[xi][l] = 0.0f;
            continue;
          }
          float g[9];
          if (flipped)  // w (C, K, 3, 3) of the forward conv; filter (k, c) = w[c][k] rotated
            for (int t = 0; t < 9; ++t) g[t] = w[((int64_t)c * K + k) * 9 + (8 - t)];
          else
            for (int t = 0; t < 9; ++t) g[t] = w[((int64_t)k * C + c) * 9 + t];
          float gg[6][3];  // G g (n x 3)
          for (int j = 0; j < 3; ++j) g_axis(m, g + j, 3, &gg[0][j], 3);
          for (int i = 0; i < n; ++i) {  // (G g) G^T
            float row[6];
            g_axis(m, gg[i], 1, row, 1);
            for (int j = 0; j < n; ++j) tab[n * i + j][l] = row[j];
          }
        }
        float* out = U + ((int64_t)b * C + c) * kb;
        for (int xi = 0; xi < planes; ++xi) std::copy(tab[xi], tab[xi] + kb, out + xi * uplane);
      }
  });
}


}  // namespace

// winograd_conv's output tile: F(4x4, 3x3) on images of 8x8 and more, F(2x2, 3x3) below
// (bench conv --model vgg16, 1 thread, AVX-512: F(4x4) 2.1-2.5x the direct kernels from 32x32
// down to 8x8 where F(2x2) is 1.7-1.9x; on 4x4 images, one tile each, F(4x4) 1.2-1.6x where
// F(2x2) is 1.9-2.0x: its 36 planes of U are 2.25 times the filter bytes streamed per chunk).
int winograd_tile(int H, int W) { return H >= 8 && W >= 8 ? 4 : 2; }

const WinogradKernels& winograd_kernels(Isa isa) {
#if defined(DNNS_HAVE_X86_KERNELS)
  if (isa == Isa::Avx512) return *winograd_kernels_avx512();
  if (isa == Isa::Avx2) return *winograd_kernels_avx2();
#endif
  (void)isa;
  return kGeneric;
}

void winograd_scratch(int N, int C, int H, int W, int K, int64_t* slot0, int64_t* slot1, int64_t* call) {
  const WinogradKernels& wk = winograd_kernels(cpu_isa());
  const Plan p = make_plan(wk, std::max(N, 1), C, H, W, K, winograd_tile(H, W));
  *slot0 = N > 0 ? p.fit * p.padded_image : 0;  // a group's padded images, at most fit
  *slot1 = N > 0 ? scratch_vm(wk, p, C) : 0;
  *call = N > 0 ? p.planes * u_plane(wk, K, C) : 0;  // the transformed filters U
}

void winograd_conv(int N, int C, int H, int W, int K, const float* x, const float* w, bool flipped,
                   const float* bias, bool relu, float* y) {
  if (N <= 0) return;
  const WinogradKernels& wk = winograd_kernels(cpu_isa());
  const Plan p = make_plan(wk, N, C, H, W, K, winograd_tile(H, W));
  // Allocated per call (not thread scratch): it lives across the parallel loops below.
  const int64_t uplane = u_plane(wk, K, C);
  std::unique_ptr<float[]> U(new float[(size_t)p.planes * uplane]);
  pack_filters(wk, p.m, K, C, w, flipped, U.get());
  auto input = p.m == 2 ? wk.input : wk.input4;
  auto multiply = p.m == 2 ? wk.multiply : wk.multiply4;
  auto output = p.m == 2 ? wk.output : wk.output4;

  const Segments sg = make_segments(wk, p);
  const int chunks = (int)sg.first.size() - 1;

  const int64_t in_image = (int64_t)C * H * W, out_image = (int64_t)K * H * W;
  const RowKernels& rows = row_kernels();
  parallel_for(0, p.groups * p.kgroups, 1, [&](int t0, int t1) {
    for (int t = t0; t != t1; ++t) {
      const int g = t / p.kgroups, kg = t % p.kgroups;
      const int k0 = std::min(K, p.kblocks * kg / p.kgroups * wk.kb);
      const int k1 = std::min(K, p.kblocks * (kg + 1) / p.kgroups * wk.kb);
      if (k0 >= k1) continue;
      const int n0 = g * p.images, nb = std::min(p.images, N - n0);
      float* xp = thread_scratch<float>(0, (size_t)nb * p.padded_image);
      for (int i = 0; i < nb; ++i)
        rows.pad_image(x + (n0 + i) * in_image, C, H, W, p.pad, p.pad, 1, p.RP, p.RP, p.padded_image,
                       xp + i * p.padded_image);
      float* Vt = thread_scratch<float>(1, scratch_vm(wk, p, C));  // V, then M
      float* M = Vt + p.planes * ((int64_t)C * p.ldv + kWinoPlaneSkew);
      for (int j = 0; j < chunks; ++j) {
        const WinoChunk ch = sg.chunk(j, nb, C, K, H, W, p, uplane);
        if (ch.nseg == 0) break;
        input(ch, xp, Vt);
        for (int kc0 = k0; kc0 < k1; kc0 += p.kc) {
          const int kc1 = std::min(k1, kc0 + p.kc);
          multiply(ch, U.get(), Vt, kc0, kc1, M);
          output(ch, M, kc0, kc1, bias, relu, y + n0 * out_image);
        }
      }
    }
  });
}

// ---- F(4x4, 3x3) for few tiles (winograd_conv_few)
namespace {

// Input channels per filter-transform block: the staged taps of a vector of filters (32 * 9 *
// 16 floats, 18 KiB on AVX-512) stay in L1, U (36, 32, Kb) is 288 KiB for Kb = 64, and M is
// loaded and stored once per block (2 memory operations per 32 FMAs of an accumulator).
// bench conv --model vgg16 --batch 1 --threads 1 --clock cpu, AVX-512, 2026-11-30 19:38 UTC
// (load about 2 on the 2 vCPUs), against the direct kernels: 32 channels 2.1-2.2x at 16x16 and 1.39-1.49x
// at 8x8; 64 the same; 16 2.0x and 1.32-1.44x; 128 2.1x and 1.26-1.38x; 8 1.8x and 1.1-1.3x.
constexpr int kFewChannels = 32;
// Tiles per task at most: M (36, 64, Kb) 576 KiB for Kb = 64, in L2; more tiles are cut into
// ranges that transform the filters again (about 160 operations per filter and channel
// against 36 x 64 multiply-adds).
// bench conv --model vgg16 --batch 2 --threads 1 --clock cpu, AVX-512, loaded machine: 32x32
// (128 tiles) 1.95x the direct kernels in ranges of 64 tiles, 1.62x in one range.
constexpr int kFewTiles = 64;

// How winograd_conv_few cuts a call: tasks of one block of Kb filters and one of `tgroups`
// ranges of tiles (more than one only where the filter blocks are fewer than the threads: each
// range transforms the block's filters again).
struct FewPlan {
  Plan p;       // the padded images and the one chunk of all tiles for the input transform
  WinoFew f;
  int T, cb, kblocks, tgroups, tmax;  // tiles, channels per block, task counts, tiles per task at most
  int vec;                            // floats per vector
};

FewPlan few_plan(const WinogradKernels& wk, int N, int C, int H, int W, int K) {
  FewPlan r;
  const int TP = (H + 3) / 4, TQ = (W + 3) / 4;
  r.T = N * TP * TQ;
  r.p = make_plan(wk, N, C, H, W, K, 4, r.T);  // ldv = T: every tile in one chunk
  r.cb = std::min(C, kFewChannels);
  r.vec = wk.vec;
  // Filters per block: the micro-kernel's width, or fewer when the layer has fewer (whole
  // vectors): U and M are sized by it (ResNet-20's 16-filter layers: a quarter on AVX-512).
  const int Kb = std::min(wk.fkv * wk.vec, (K + wk.vec - 1) / wk.vec * wk.vec);
  r.kblocks = (K + Kb - 1) / Kb;
  const int ranges = std::max(1, (r.T + kFewTiles - 1) / kFewTiles);  // on one thread
  r.tgroups = std::clamp(std::max((num_threads() + r.kblocks - 1) / r.kblocks, ranges), 1, r.T);
  // M is sized for the widest range on one thread, whatever the thread count (more threads
  // only make the ranges narrower), so the scratch a shape reports does not depend on it.
  r.tmax = (r.T + ranges - 1) / ranges;
  r.f = WinoFew{C, K, H, W, TP, TQ, r.p.ldv, Kb, (int64_t)C * r.p.ldv + kWinoPlaneSkew,
                (int64_t)r.cb * Kb + kWinoPlaneSkew, (int64_t)r.tmax * Kb + kWinoPlaneSkew};
  return r;
}

// Floats of one task's thread scratch: the staged taps (cb, 9, Kb), U and M.
int64_t few_task_floats(const FewPlan& r) {
  return (int64_t)r.cb * 9 * r.vec + 36 * r.f.uplane + 36 * r.f.mplane;
}

}  // namespace

void winograd_few_scratch(int N, int C, int H, int W, int K, int64_t* slot0, int64_t* slot1, int64_t* call) {
  *slot0 = *slot1 = *call = 0;
  if (N <= 0) return;
  const FewPlan r = few_plan(winograd_kernels(cpu_isa()), N, C, H, W, K);
  *slot0 = N * r.p.padded_image;
  *slot1 = few_task_floats(r);
  *call = 36 * r.f.vplane;  // V
}

void winograd_conv_few(int N, int C, int H, int W, int K, const float* x, const float* w, const float* bias,
                       bool relu, float* y) {
  if (N <= 0) return;
  const WinogradKernels& wk = winograd_kernels(cpu_isa());
  const FewPlan r = few_plan(wk, N, C, H, W, K);
  const Plan& p = r.p;
  // V of every tile, allocated per call: the tasks below read it all.
  std::unique_ptr<float[]> V(new float[(size_t)36 * r.f.vplane]);
  {
    float* xp = thread_scratch<float>(0, (size_t)N * p.padded_image);  // released before the tasks
    const RowKernels& rows = row_kernels();
    const int64_t in_image = (int64_t)C * H * W;
    for (int i = 0; i < N; ++i)
      rows.pad_image(x + i * in_image, C, H, W, p.pad, p.pad, 1, p.RP, p.RP, p.padded_image,
                     xp + i * p.padded_image);
    const Segments sg = make_segments(wk, p);
    wk.input4(sg.chunk(0, N, C, K, H, W, p, 0), xp, V.get());
  }
  // The row scales of G (winograd_impl.h g4): U[6 i + j] lacks D_i D_j, V takes it.
  const float D[6] = {0.25f, -1.0f / 6.0f, -1.0f / 6.0f, 1.0f / 24.0f, 1.0f / 24.0f, 1.0f};
  for (int xi = 0; xi < 36; ++xi) {
    const float scale = D[xi / 6] * D[xi % 6];
    float* v = V.get() + xi * r.f.vplane;
    for (int64_t i = 0; i < (int64_t)C * r.T; ++i) v[i] *= scale;
  }
  const WinoFew& f = r.f;
  parallel_for(0, r.kblocks * r.tgroups, 1, [&](int a, int b) {
    float* stage = thread_scratch<float>(1, (size_t)few_task_floats(r));
    float* U = stage + (int64_t)r.cb * 9 * r.vec;
    float* M = U + 36 * f.uplane;
    for (int task = a; task != b; ++task) {
      const int kb = task / r.tgroups, tg = task % r.tgroups;
      const int k0 = kb * f.Kb, t0 = (int)((int64_t)r.T * tg / r.tgroups), t1 = (int)((int64_t)r.T * (tg + 1) / r.tgroups);
      if (t0 >= t1) continue;
      const int nkv = (std::min(f.Kb, K - k0) + wk.vec - 1) / wk.vec;
      for (int c0 = 0; c0 < C; c0 += r.cb) {
        const int n = std::min(r.cb, C - c0);
        wk.few_filters(f, w, c0, n, k0, stage, U);
        wk.few_multiply(f, V.get() + (int64_t)c0 * f.ldv, U, n, t0, t1, nkv, c0 == 0, M);
      }
      wk.few_output(f, M, k0, t0, t1, bias, relu, y);
    }
  });
}

// Tiles per chunk for the weight gradient: V and dM of one chunk (16 (C + K) ldv floats) about
// 4 MiB, 64 to 512 tiles, whole vectors; wider than the forward's, as each chunk's 16 sgemm
// calls read and write all of dU (K x C each).
int grad_chunk_tiles(const WinogradKernels& wk, int C, int K) {
  const int tiles = std::clamp((1 << 16) / std::max(1, C + K), 64, 512);
  return std::max(wk.vec, tiles / wk.vec * wk.vec);
}

void winograd_backward_weights(int N, int C, int H, int W, int K, const float* x, const float* dy, float* dw,
                               float* db) {
  const int64_t KC = (int64_t)K * C;
  if (N <= 0) {  // empty batch: no gradient
    std::fill(dw, dw + KC * 9, 0.0f);
    if (db) std::fill(db, db + K, 0.0f);
    return;
  }
  const WinogradKernels& wk = winograd_kernels(cpu_isa());
  const Plan p = make_plan(wk, N, C, H, W, K, 2, grad_chunk_tiles(wk, C, K));
  const Segments sg = make_segments(wk, p);
  const int chunks = (int)sg.first.size() - 1;
  const int64_t dy_padded = (int64_t)K * p.plane + 2 * p.RP + 2 * wk.vec + 8;  // dy padded like x
  const int64_t in_image = (int64_t)C * H * W, out_image = (int64_t)K * H * W;
  const int G = std::max(1, std::min(N, num_threads()));
  // Allocated per call (not thread scratch): it lives across the parallel loops.
  std::unique_ptr<float[]> dU(new float[(size_t)G * 16 * KC]);  // (G, 16, K, C)
  std::vector<double> partial_db((size_t)G * K, 0.0);           // (G, K)
  const RowKernels& rows = row_kernels();
  parallel_for(0, G, [&](int g) {
    float* acc = dU.get() + g * 16 * KC;
    double* acc_db = partial_db.data() + (int64_t)g * K;
    const int n0 = (int)((int64_t)N * g / G), n1 = (int)((int64_t)N * (g + 1) / G);
    float* xp = thread_scratch<float>(0, (size_t)p.images * (p.padded_image + dy_padded));
    float* dyp = xp + p.images * p.padded_image;
    float* Vt = thread_scratch<float>(1, (size_t)16 * ((int64_t)(C + K) * p.ldv + 2 * kWinoPlaneSkew) + wk.vec);
    float* dM = Vt + 16 * ((int64_t)C * p.ldv + kWinoPlaneSkew);
    float beta = 0.0f;  // the group's first sgemm of each xi overwrites its dU, the others add
    for (int i0 = n0; i0 < n1; i0 += p.images) {
      const int nb = std::min(p.images, n1 - i0);
      for (int i = 0; i < nb; ++i) {
        rows.pad_image(x + (i0 + i) * in_image, C, H, W, 1, 1, 1, p.RP, p.RP, p.padded_image, xp + i * p.padded_image);
        const float* dyn = dy + (i0 + i) * out_image;
        rows.pad_image(dyn, K, H, W, 1, 1, 1, p.RP, p.RP, dy_padded, dyp + i * dy_padded);
        if (db)
          for (int k = 0; k < K; ++k) acc_db[k] += rows.row_sum(dyn + (int64_t)k * H * W, H * W);
      }
      for (int j = 0; j < chunks; ++j) {
        const WinoChunk ch = sg.chunk(j, nb, C, K, H, W, p, 0);
        if (ch.nseg == 0) break;
        wk.input(ch, xp, Vt);
        wk.output_grad(ch, dyp, dy_padded, dM);
        const WinoSegment& last = ch.seg[ch.nseg - 1];
        const int T = last.tb + last.len;
        for (int xi = 0; xi < 16; ++xi)  // dU[xi] (K, C) += dM[xi] (K, T) V[xi]^T (T, C)
          sgemm(false, true, K, C, T, 1.0f, dM + xi * winograd_mplane(ch, K), p.ldv, Vt + xi * winograd_vplane(ch),
                p.ldv, beta, acc + xi * KC, C);
        beta = 1.0f;
      }
    }
  });
  // dw[k][c] = G^T dU G of the groups' dU summed in group order.
  parallel_for(0, K, 8, [&](int k0, int k1) {
    for (int k = k0; k < k1; ++k)
      for (int c = 0; c < C; ++c) {
        float d[4][4];
        for (int xi = 0; xi < 16; ++xi) {
          float sum = dU[xi * KC + (int64_t)k * C + c];
          for (int g = 1; g < G; ++g) sum += dU[(g * 16 + xi) * KC + (int64_t)k * C + c];
          d[xi / 4][xi % 4] = sum;
        }
        float v[3][4];  // G^T d: rows (1, .5, .5, 0), (0, .5, -.5, 0), (0, .5, .5, 1)
        for (int j = 0; j < 4; ++j) {
          v[0][j] = d[0][j] + 0.5f * (d[1][j] + d[2][j]);
          v[1][j] = 0.5f * (d[1][j] - d[2][j]);
          v[2][j] = 0.5f * (d[1][j] + d[2][j]) + d[3][j];
        }
        float* out = dw + ((int64_t)k * C + c) * 9;
        for (int r = 0; r < 3; ++r) {  // (G^T d) G
          out[3 * r + 0] = v[r][0] + 0.5f * (v[r][1] + v[r][2]);
          out[3 * r + 1] = 0.5f * (v[r][1] - v[r][2]);
          out[3 * r + 2] = 0.5f * (v[r][1] + v[r][2]) + v[r][3];
        }
      }
  });
  if (db)
    for (int k = 0; k < K; ++k) {
      double sum = 0.0;
      for (int g = 0; g < G; ++g) sum += partial_db[(size_t)g * K + k];
      db[k] = (float)sum;
    }
}

}  // namespace dnns::cpu
