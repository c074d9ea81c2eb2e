#include "kernels/cpu/isa.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/error.h"

namespace dnns::cpu {
namespace {

Isa detect() {
#if defined(DNNS_HAVE_X86_KERNELS)
  __builtin_cpu_init();
  const bool fma = __builtin_cpu_supports("fma");
  if (fma && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")) return Isa::Avx512;
  if (fma && __builtin_cpu_supports("avx2")) return Isa::Avx2;
#endif
  return Isa::Generic;
}

Isa initial() {
  const Isa best = best_cpu_isa();
  const char* env = std::getenv("DNNS_ISA");
  if (!env || !*env) return best;
  const Isa want = parse_isa(env);
  if ((int)want > (int)best)
    throw Error(std::string("DNNS_ISA=") + env + ": this CPU (or build) supports at most " + isa_name(best));
  return want;
}

std::atomic<int>& current() {
  static std::atomic<int> isa{(int)initial()};
  return isa;
}

}  // namespace

Isa best_cpu_isa() {
  static const Isa best = detect();
  return best;
}

Isa cpu_isa() { return (Isa)current().load(std::memory_order_relaxed); }

void set_cpu_isa(Isa isa) {
  if ((int)isa > (int)best_cpu_isa())
    throw Error(std::string("instruction set ") + isa_name(isa) + " requested, but this CPU (or build) supports at most " +
                isa_name(best_cpu_isa()));
  current().store((int)isa, std::memory_order_relaxed);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    case Isa::Generic: return "generic";
  }
  return "?";
}

Isa parse_isa(const char* name) {
  for (Isa i : {Isa::Generic, Isa::Avx2, Isa::Avx512})
    if (std::strcmp(name, isa_name(i)) == 0) return i;
  throw Error(std::string("unknown instruction set '") + name + "' (expected avx512, avx2 or generic)");
}

}  // namespace dnns::cpu
