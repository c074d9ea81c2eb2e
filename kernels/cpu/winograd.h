// Winograd convolutions F(2x2, 3x3) and F(4x4, 3x3) for 3x3 stride-1 pad-1 convolutions on
// NCHW tensors: forward, backward data (a forward with the filters flipped and transposed) and
// backward weights (F(2x2) only). conv.cpp takes them where they measure faster than the direct
// kernels (winograd_applies there).
//
// Each m x m block of outputs ("tile") of one filter is A^T [ (G g G^T) .* (B^T d B) ] A summed
// over input channels, d being the (m+2) x (m+2) input patch around the tile: (m+2)^2
// multiplies per tile and channel instead of 9 m^2 (16 instead of 36 for m = 2, 36 instead of
// 144 for m = 4). The sum over channels is (m+2)^2 small matrix products, one per position xi
// of the transformed tile ("plane"): M[xi] (K, T) = U[xi] (K, C) * V[xi] (C, T).
//   m = 2: B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]   G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]
//          A^T = [1 1 1 0; 0 1 -1 -1]
//   m = 4: the matrices in winograd_impl.h and winograd.cpp (g_axis); its transforms multiply
//          by up to 8 and 1/24, so its rounding error is larger (tests/test_kernels_conv.cpp).
//
// The work is cut into chunks of at most a few vectors' worth of tiles (up to `ldv`), each run
// start to end while its data stays in L2: `input` transforms the chunk's patches (read from a
// zero-padded copy of the images, vectors across tiles: strided loads split into every second
// or fourth lane) into V, `multiply` runs the products for a block of filters with a
// register-blocked micro-kernel (kb filters x nv vectors of tiles), `output` applies A^T . A,
// adds the bias, optionally the ReLU, and writes the outputs straight into y. The per-ISA
// builds live in winograd_<isa>.cpp over one template (winograd_impl.h); the generic one in
// winograd.cpp.
#pragma once
#include <cstdint>

#include "kernels/cpu/isa.h"

namespace dnns::cpu {

// A run of `len` (1..vec) consecutive tiles of one tile row: image `img` of the chunk's image
// group, tile row tp, tiles tq0 .. tq0 + len - 1; its transformed values sit at columns
// [tb, tb + len) of V and M.
struct WinoSegment {
  int img, tp, tq0, len, tb;
};

// One chunk of tiles. The padded copy of image i of the group starts at xp + i * padded_image:
// C planes of `plane` floats, each H + 2 pad rows of RP = W + 2 pad floats (pad rows and columns
// of zeros around the image: 1 for F(2x2), 3 for F(4x4)), then zeros (at least 2 * RP +
// 4 * vec + 16 floats: the patches of the last tile row and the vector loads read past the
// plane). Patch row r of tile (tp, tq) starts at origin + (m tp + r) * RP + m tq in its plane.
struct WinoChunk {
  int C, K;               // input and output channels
  int H, W;               // image height, width (output = input size)
  int RP, plane;          // padded row and plane, in floats
  int origin;             // offset in a padded plane of tile (0, 0)'s patch (top-left float)
  int64_t padded_image;   // floats per padded image
  int ldv;                // floats per row of V and M (a multiple of the vector width)
  int64_t uplane;         // floats from one xi plane of U to the next
  const WinoSegment* seg;
  int nseg;
};

// The 16 planes of U, V and M lie a multiple of 4 KiB plus 64 bytes apart, not a multiple of
// 4 KiB: 16 streams at such distances would all map to the same L1 set.
constexpr int kWinoPlaneSkew = 16;  // floats
// Floats from one xi plane of V (16, C, ldv) to the next, and of M (16, kn, ldv).
inline int64_t winograd_vplane(const WinoChunk& ch) { return (int64_t)ch.C * ch.ldv + kWinoPlaneSkew; }
inline int64_t winograd_mplane(const WinoChunk& ch, int kn) { return (int64_t)kn * ch.ldv + kWinoPlaneSkew; }

// F(4x4, 3x3) for few tiles (winograd_conv_few): the products vectorised across filters, the
// filters transformed per call in blocks of Kb filters x a few channels.
//   V: 36 planes (vplane apart) of (C, ldv): B^T d B of every tile of the batch (ldv >= T),
//      tile t = (image, tile row, tile column) in that order;
//   U: 36 planes (uplane apart) of (cb, Kb): G g G^T of a block of filters and channels;
//   M: 36 planes (mplane apart) of (tiles of the task, Kb): the products summed over channels.
struct WinoFew {
  int C, K, H, W;        // input channels, filters, image height and width (output = input)
  int TP, TQ;            // tile rows and columns of an image
  int ldv, Kb;           // floats per row of V; filters per block (whole vectors)
  int64_t vplane, uplane, mplane;
};

struct WinogradKernels {
  const char* name;  // e.g. "avx512/16"
  int vec;           // floats per vector (tiles per segment at most)
  int kb;            // filters per micro-kernel tile: U is packed in blocks of kb filters
  int nv;            // vectors of tiles per micro-kernel tile
  // F(2x2, 3x3). V (16 planes of (C, ldv), winograd_vplane apart) columns of the chunk's
  // segments = B^T d B of each tile's 4x4 patch.
  void (*input)(const WinoChunk& ch, const float* xp, float* V);
  // M (16 planes of (kc1 - kc0, ldv), winograd_mplane apart) = U[xi] rows [kc0, kc1) * V[xi],
  // columns up to the chunk's last segment rounded up to whole vectors. kc0 a multiple of kb.
  // U: 16 planes (uplane apart) of (ceil(K / kb), C, kb), filters past K zero.
  void (*multiply)(const WinoChunk& ch, const float* U, const float* V, int kc0, int kc1, float* M);
  // y (images of the group, K, H, W), filters [kc0, kc1): A^T m A + bias (ReLU when relu) of
  // every tile of the chunk, from M as `multiply` wrote it; outputs past H or W not written.
  void (*output)(const WinoChunk& ch, const float* M, int kc0, int kc1, const float* bias, bool relu, float* y);
  // For the weight gradient: dM (16 planes of (K, ldv), winograd_mplane(ch, K) apart) = A dy A^T
  // of each tile's 2x2 output gradient (the adjoint of `output`), dy padded like the input
  // (K planes per image, dy_image floats apart).
  void (*output_grad)(const WinoChunk& ch, const float* dyp, int64_t dy_image, float* dM);
  // F(4x4, 3x3): the same three steps on 4x4 output tiles, 6x6 patches and 36 planes.
  void (*input4)(const WinoChunk& ch, const float* xp, float* V);
  void (*multiply4)(const WinoChunk& ch, const float* U, const float* V, int kc0, int kc1, float* M);
  void (*output4)(const WinoChunk& ch, const float* M, int kc0, int kc1, const float* bias, bool relu, float* y);
  // F(4x4, 3x3) for few tiles (WinoFew), register tiles of ftb tiles x fkv vectors of filters;
  // a block is Kb = fkv * vec filters.
  int ftb, fkv;
  // U of filters [k0, min(K, k0 + Kb)) in whole vectors (lanes past K zero, vectors past K not
  // written) and channels [c0, c0 + cb); stage: cb * 9 * vec floats.
  void (*few_filters)(const WinoFew& f, const float* w, int c0, int cb, int k0, float* stage, float* U);
  // M (+)= V (its first cb channels, tiles [t0, t1)) * U (the first nkv vectors of filters);
  // M starts from zero when `first`.
  void (*few_multiply)(const WinoFew& f, const float* V, const float* U, int cb, int t0, int t1, int nkv,
                       bool first, float* M);
  // y (N, K, H, W): A^T m A + bias (ReLU when relu) of tiles [t0, t1), filters [k0, k0 + Kb) below K.
  void (*few_output)(const WinoFew& f, const float* M, int k0, int t0, int t1, const float* bias, bool relu,
                     float* y);
};

// The kernels of `isa` (the generic build for Isa::Generic or a build without x86 kernels).
const WinogradKernels& winograd_kernels(Isa isa);

// The output tile m of winograd_conv for images of H x W: 4 (F(4x4, 3x3)) or 2.
int winograd_tile(int H, int W);

// y (N, K, H, W) = bias + the 3x3 stride-1 pad-1 convolution of x (N, C, H, W), then max(0, .)
// when relu; bias may be nullptr. The filters: w (K, C, 3, 3), or with `flipped` w (C, K, 3, 3)
// read as filter (k, c) = w[c][k] rotated by 180 degrees (the backward-data of a convolution
// with C outputs from K inputs). Runs the kernels of cpu_isa(). Thread scratch: slot 0 holds
// the padded images of a group, slot 1 V and M of a chunk (winograd_scratch says how much).
void winograd_conv(int N, int C, int H, int W, int K, const float* x, const float* w, bool flipped,
                   const float* bias, bool relu, float* y);

// The same forward (filters w (K, C, 3, 3), not flipped) in F(4x4, 3x3) for few tiles
// (N * ceil(H/4) * ceil(W/4) small, images of 8x8 and more): the input transformed once per
// call (V, allocated per call), then per task (a block of Kb filters and a range of at most 64
// tiles) the filters transformed on the fly, 32 input channels at a time, and multiplied into
// M with register tiles of tiles x vectors of filters (6 x 4 on AVX-512: 10 loads per 24
// FMAs), then A^T . A. No transformed filters are kept between calls. Thread scratch: slot 0
// the padded images (before the tasks), slot 1 a task's staged taps, U and M
// (winograd_few_scratch says how much; `call`: V).
void winograd_conv_few(int N, int C, int H, int W, int K, const float* x, const float* w, const float* bias,
                       bool relu, float* y);
void winograd_few_scratch(int N, int C, int H, int W, int K, int64_t* slot0, int64_t* slot1, int64_t* call);

// The weight gradient of the same convolution: dw (K, C, 3, 3) = G^T dU G with
// dU[xi] (K, C) = sum over tiles of (A dy A^T)[xi] (B^T d B)[xi], the sum over tiles being 16
// sgemm calls per chunk; db (K) = the sum of dy (db may be nullptr). The images are split into
// contiguous groups (one per thread), each summing into its own dU, added in a fixed order:
// the result depends on the thread count only.
void winograd_backward_weights(int N, int C, int H, int W, int K, const float* x, const float* dy, float* dw,
                               float* db);

// The floats winograd_conv grows in thread scratch slots 0 and 1 for this shape.
// `call`: the floats of the transformed filters it allocates per call (36 or 16 planes of
// about K x C: four times the weights for F(4x4)).
void winograd_scratch(int N, int C, int H, int W, int K, int64_t* slot0, int64_t* slot1, int64_t* call);

#if defined(DNNS_HAVE_X86_KERNELS)
const WinogradKernels* winograd_kernels_avx2();
const WinogradKernels* winograd_kernels_avx512();
#endif

}  // namespace dnns::cpu
