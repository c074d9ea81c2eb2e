// Optimized CPU kernels: OpenBLAS sgemm (single-threaded inside) + oneTBB parallel loops.
// Each is tested against its reference in kernels/ref.
#pragma once
#include "kernels/params.h"
#include <cstdint>

namespace dnns::cpu {
#include "kernels/backend_api.inc"
#include "kernels/host_api.inc"

// y = relu(conv(x) + b), the ReLU applied in the direct kernels' output pass where they run
// (a separate pass otherwise). Same shapes as conv2d_forward.
void conv2d_forward_relu(const Conv2dParams& p, const float* x, const float* w, const float* b, float* y);

// The floats of the two thread-local scratch buffers a conv2d_forward of this shape grows in
// each worker thread (they stay allocated), and of its own buffer, on the path it takes now.
struct ConvScratch {
  int64_t slot0 = 0, slot1 = 0;
  int64_t call = 0;  // floats the call allocates for itself (freed when it returns)
};
ConvScratch conv_forward_scratch(const Conv2dParams& p);
}  // namespace dnns::cpu
