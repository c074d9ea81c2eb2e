// doctest's main for every test executable: fixes the thread count so runs are repeatable, and
// turns parts skipped for lack of a device or tool (testing::skip_part) into exit code 77.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <mutex>
#include <string>
#include <vector>

#include "core/threading.h"

namespace dnns::testing {
namespace {
std::mutex g_skipped_mutex;
std::vector<std::string> g_skipped;  // what could not be checked here, in call order
}  // namespace

void skip_part(const std::string& what) {
  std::lock_guard<std::mutex> lock(g_skipped_mutex);
  std::fprintf(stderr, "SKIPPED: %s\n", what.c_str());
  g_skipped.push_back(what);
}

}  // namespace dnns::testing

int main(int argc, char** argv) {
  dnns::set_num_threads(2);
  doctest::Context ctx;
  ctx.applyCommandLine(argc, argv);
  const int rc = ctx.run();
  if (ctx.shouldExit() || rc != 0) return rc;
  std::lock_guard<std::mutex> lock(dnns::testing::g_skipped_mutex);
  if (dnns::testing::g_skipped.empty()) return 0;
  // Everything that ran passed, but not everything ran: CTest reports exit code 77 as
  // "skipped" (SKIP_RETURN_CODE in tests/CMakeLists.txt), not as a pass.
  std::fprintf(stderr, "\nNot everything could be checked on this machine (exit 77, skipped):\n");
  for (const std::string& w : dnns::testing::g_skipped) std::fprintf(stderr, "  - %s\n", w.c_str());
  return 77;
}
