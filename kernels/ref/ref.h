// Reference kernels: plain loop nests that a reader can check against the maths. They are
// the ground truth in tests and the portable backend (no BLAS, no threads).
#pragma once
#include "kernels/params.h"
#include <cstdint>

namespace dnns::ref {
#include "kernels/backend_api.inc"
#include "kernels/host_api.inc"
}  // namespace dnns::ref
