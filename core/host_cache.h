// A test hook of the host tensor cache (core/tensor.h: freed host blocks are kept for reuse by
// the next tensor of the same size; release_host_cache, host_cache_bytes).
#pragma once

namespace dnns {

// Writes `byte` over every block the cache keeps: what a later Tensor::uninit of that size
// starts with. Tests fill it with 0xFF (every float a NaN) so that a read of memory nobody wrote
// since shows in the results (tests/test_stale_state.cpp).
void fill_host_cache(unsigned char byte);

}  // namespace dnns
