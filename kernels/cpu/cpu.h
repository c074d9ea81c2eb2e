// Optimized CPU kernels: OpenBLAS sgemm (single-threaded inside) + oneTBB parallel loops.
// Each is tested against its reference in kernels/ref.
#pragma once
#include "kernels/params.h"
#include <cstdint>

namespace dnns::cpu {
#include "kernels/backend_api.inc"
}  // namespace dnns::cpu
