// The one place that sizes the thread pool. oneTBB runs our parallel loops; OpenBLAS is kept
// single-threaded inside them so the two never oversubscribe the cores. Call
// `set_num_threads` once at start-up (`--threads`); 0 means "all hardware threads".
#pragma once

namespace dnns {

void set_num_threads(int n);
int num_threads();          // the size the arena was set to (hardware threads by default)
int hardware_threads();

}  // namespace dnns
