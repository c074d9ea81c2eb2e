// doctest's main for every test executable: fixes the thread count so runs are repeatable.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "core/threading.h"

int main(int argc, char** argv) {
  dnns::set_num_threads(2);
  doctest::Context ctx;
  ctx.applyCommandLine(argc, argv);
  return ctx.run();
}
