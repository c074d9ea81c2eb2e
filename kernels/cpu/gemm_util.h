// Private helpers of the optimized CPU kernels: a row-major sgemm wrapper (which also makes
// sure OpenBLAS runs the right kernels for this CPU) and per-thread scratch memory. Not part of
// the public kernel API.
#pragma once
#include <cblas.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <vector>

// Present in DYNAMIC_ARCH builds of OpenBLAS (Debian's); weak so other builds still link.
extern "C" {
__attribute__((weak)) void gotoblas_dynamic_init(void);
__attribute__((weak)) void gotoblas_dynamic_quit(void);
__attribute__((weak)) char* openblas_get_corename(void);
}

namespace dnns::cpu {

// A DYNAMIC_ARCH OpenBLAS picks its kernels from the CPU model number and falls back to
// "Prescott" (SSE3) for models it does not know, such as Xeons newer than the release
// (OpenBLAS 0.3.21 on a family 6 model 207 Xeon): sgemm then runs ~8x slower than it can.
// When the detected core is older than what the CPU supports, switch to the best x86 core we
// can vouch for from the CPU's feature flags. A user's OPENBLAS_CORETYPE is always respected.
inline void upgrade_openblas_core() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (!gotoblas_dynamic_init || !gotoblas_dynamic_quit || !openblas_get_corename) return;
  if (std::getenv("OPENBLAS_CORETYPE")) return;
  // Cores in increasing order of capability; anything else (Zen, SapphireRapids, ...) is
  // left alone because OpenBLAS knew that CPU.
  const char* ladder[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Sandybridge",
                          "Haswell", "SkylakeX", "Cooperlake"};
  auto rank = [&](const char* name) {
    for (int i = 0; i < (int)(sizeof(ladder) / sizeof(ladder[0])); ++i)
      if (std::strcmp(ladder[i], name) == 0) return i;
    return -1;
  };
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  const char* best = avx512 && __builtin_cpu_supports("avx512bf16") ? "Cooperlake"
                     : avx512                                           ? "SkylakeX"
                     : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? "Haswell"
                                                                                        : nullptr;
  const int have = rank(openblas_get_corename());
  if (!best || have < 0 || have >= rank(best)) return;
  setenv("OPENBLAS_CORETYPE", best, 1);  // what gotoblas_dynamic_init reads
  gotoblas_dynamic_quit();
  gotoblas_dynamic_init();
  unsetenv("OPENBLAS_CORETYPE");
#endif
}

// C (M, N) = alpha * op(A) op(B) + beta * C, all row-major. op(A) is (M, Kd), op(B) is (Kd, N);
// lda/ldb/ldc are the row strides of A, B, C as stored (before the transpose).
inline void sgemm(bool trans_a, bool trans_b, int M, int N, int Kd, float alpha, const float* A,
                  int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  // Once, before the first sgemm of the process; concurrent first callers wait here, and
  // every sgemm of the project goes through this wrapper, so no call is in flight meanwhile.
  static const bool core_checked = (upgrade_openblas_core(), true);
  (void)core_checked;
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              M, N, Kd, alpha, A, lda, B, ldb, beta, C, ldc);
}

// A grow-only buffer of at least n elements owned by the calling thread; `slot` tells apart
// the buffers one task needs at the same time (each element type has its own slots). It stays
// valid until the next call with the same type and slot on this thread. Never hold it across
// a oneTBB wait (a parallel_for inside the task): the waiting thread may run another task
// that takes the same slot.
template <class T>
T* thread_scratch(int slot, size_t n) {
  constexpr int kSlots = 2;
  thread_local std::vector<T> buffers[kSlots];
  std::vector<T>& b = buffers[slot];
  if (b.size() < n) b.resize(n);
  return b.data();
}

}  // namespace dnns::cpu
