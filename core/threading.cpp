#include "core/threading.h"

#include <memory>
#include <mutex>
#include <thread>

#include <tbb/global_control.h>

#include "core/error.h"

// OpenBLAS's own control; declared here so core does not need cblas.h. Linked through
// dnns::blas. Kept at 1: our kernels parallelise over images/tiles with oneTBB.
extern "C" void openblas_set_num_threads(int);

namespace dnns {

static std::mutex g_mu;
static std::unique_ptr<tbb::global_control> g_control;
static int g_threads = 0;

// Before anyone calls set_num_threads, OpenBLAS must already be single-threaded: its own
// pool would otherwise fight oneTBB's for the cores.
static const bool g_blas_single = [] {
  openblas_set_num_threads(1);
  return true;
}();

int hardware_threads() {
  unsigned h = std::thread::hardware_concurrency();
  return h ? static_cast<int>(h) : 1;
}

void set_num_threads(int n) {
  check(n >= 0, "--threads must be >= 0 (0 = all hardware threads), got " + std::to_string(n));
  std::lock_guard<std::mutex> lock(g_mu);
  if (n == 0) n = hardware_threads();
  g_control.reset();
  g_control = std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism,
                                                    static_cast<size_t>(n));
  openblas_set_num_threads(1);
  g_threads = n;
}

int num_threads() {
  std::lock_guard<std::mutex> lock(g_mu);
  return g_threads ? g_threads : hardware_threads();
}

}  // namespace dnns
