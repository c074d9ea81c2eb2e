// The one place our code runs a loop in parallel: parallel_for(begin, end, grain, body) calls
// body(lo, hi) on disjoint chunks [lo, hi) that cover [begin, end), each at most `grain` long
// (the last may be shorter), concurrently, and returns when all have run. An exception thrown
// by a chunk reaches the caller. Chunks must not depend on each other's order or on which
// thread runs them.
//
// Two builds of it, chosen at configure time by DNNS_LOOPS (see the top-level CMakeLists.txt):
//   tbb      (default) oneTBB's parallel_for on blocked_range: the arena sized by set_num_threads.
//   threads  the chunks shared out among num_threads() std::threads started for the call and
//            joined before it returns (the caller runs chunks too). For ThreadSanitizer: Debian's
//            oneTBB is not built with it, so its task hand-offs (a worker reading what the
//            caller wrote just before the spawn) are invisible to it and show as races on every
//            loop. Thread start and join are seen, so TSan checks our chunks against each other
//            and against our own threads (the shifter's clients, the loader's prefetch) with no
//            false reports. Slower (threads per call): never for a normal build.
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(DNNS_LOOPS_THREADS)
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

#include "core/threading.h"
#else
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>
#endif

namespace dnns {

template <class Index, class Body>
void parallel_for(Index begin, Index end, Index grain, Body&& body) {
  if (end <= begin) return;
  grain = std::max<Index>(grain, 1);
#if defined(DNNS_LOOPS_THREADS)
  const int64_t chunks = (int64_t(end) - int64_t(begin) + int64_t(grain) - 1) / int64_t(grain);
  const int workers = static_cast<int>(std::min<int64_t>(chunks, num_threads()));
  std::atomic<int64_t> next{0};
  std::mutex mu;
  std::exception_ptr first_error;
  auto run = [&] {
    for (int64_t c; (c = next.fetch_add(1)) < chunks;) {
      const Index lo = static_cast<Index>(int64_t(begin) + c * int64_t(grain));
      const Index hi = static_cast<Index>(std::min<int64_t>(int64_t(end), int64_t(lo) + int64_t(grain)));
      try {
        body(lo, hi);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (!first_error) first_error = std::current_exception();
        next.store(chunks);  // the remaining chunks are not started
      }
    }
  };
  std::vector<std::thread> helpers;
  for (int t = 1; t < workers; ++t) helpers.emplace_back(run);
  run();
  for (std::thread& h : helpers) h.join();
  if (first_error) std::rethrow_exception(first_error);
#else
  tbb::parallel_for(tbb::blocked_range<Index>(begin, end, grain),
                    [&](const tbb::blocked_range<Index>& r) { body(r.begin(), r.end()); });
#endif
}

// body(i) for every i in [begin, end), one index at a time (each call a task of its own).
template <class Index, class Body>
void parallel_for(Index begin, Index end, Body&& body) {
#if defined(DNNS_LOOPS_THREADS)
  parallel_for(begin, end, Index(1), [&](Index lo, Index hi) {
    for (Index i = lo; i < hi; ++i) body(i);
  });
#else
  tbb::parallel_for(begin, end, body);
#endif
}

}  // namespace dnns
