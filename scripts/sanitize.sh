#!/usr/bin/env bash
# Builds the suite with sanitizers and runs it; the first finding fails the run (non-zero exit).
#
#   scripts/sanitize.sh [asan|tsan|all] [--full]     (default: all)
#
#   asan  AddressSanitizer + UndefinedBehaviorSanitizer (LeakSanitizer included), build-asan/:
#         the whole CTest suite except the long end-to-end tests (test_e2e_cifar, test_train_app,
#         test_imp, test_chains, cross_arm), which run in the normal build (--full runs them too),
#         and the tests that build other trees or run under mpirun (gpu_bundle, package_consumer,
#         test_mpi, test_chains_mpi).
#   tsan  ThreadSanitizer, build-tsan/: the tests whose code runs threads of ours (the shifter's
#         hot swap and serving clients, the loader's prefetch, the parallel kernels, compaction
#         and image decoding). Parallel loops run on std::threads there (DNNS_LOOPS=threads, see
#         core/parallel.h): Debian's oneTBB is not built with TSan and would hide its hand-offs.
#
# Both builds: RelWithDebInfo (-O2 -g), no CUDA, the compiler cache when ccache is installed.
# Environment: JOBS (default: number of cores).
set -euo pipefail
cd "$(dirname "$0")/.."

what=all
full=0
for arg in "$@"; do
  case "$arg" in
    asan|tsan|all) what=$arg ;;
    --full) full=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "sanitize.sh: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

jobs=${JOBS:-$(nproc)}
launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
fi

# configure_build DIR SANITIZERS [TARGETS...]: configure DIR with the sanitizers and build.
configure_build() {
  local dir=$1 sanitizers=$2
  shift 2
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDNNS_CUDA=OFF \
        -DDNNS_SANITIZE="$sanitizers" "${launcher[@]}" >/dev/null
  if [ "$#" -gt 0 ]; then
    cmake --build "$dir" -j "$jobs" --target "$@"
  else
    cmake --build "$dir" -j "$jobs"
  fi
}

run_asan() {
  echo "sanitize.sh: AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/)"
  configure_build build-asan address,undefined
  local exclude=()
  # Always left out: gpu_bundle and package_consumer build other trees from this one (a CUDA
  # bundle; a consumer linking the installed, here instrumented, libraries without the sanitizer
  # runtime); test_mpi and test_chains_mpi run under mpirun, whose Open MPI is not instrumented.
  local always='gpu_bundle|package_consumer|test_mpi|test_chains_mpi'
  if [ "$full" = 1 ]; then
    exclude=(-E "^($always)\$")
  else
    exclude=(-E "^($always|test_e2e_cifar|test_train_app|test_imp|test_chains|cross_arm)\$")
  fi
  # Every finding is fatal: ASan stops at its first error, UBSan is compiled without recovery
  # (and halts here too should a check be recoverable), leaks fail the program at exit.
  ASAN_OPTIONS=halt_on_error=1:detect_leaks=1:detect_stack_use_after_return=1:strict_init_order=1:check_initialization_order=1 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    ctest --test-dir build-asan --output-on-failure --no-tests=error "${exclude[@]}"
}

# The tests whose code runs threads of ours (see the header).
tsan_tests=(test_shifter test_loader test_kernels_conv test_kernels_misc test_compact test_datasets)

run_tsan() {
  echo "sanitize.sh: ThreadSanitizer (build-tsan/): ${tsan_tests[*]}"
  configure_build build-tsan thread "${tsan_tests[@]}"
  local regex
  regex="^($(IFS='|'; echo "${tsan_tests[*]}"))\$"
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
    ctest --test-dir build-tsan --output-on-failure --no-tests=error -R "$regex"
}

case "$what" in
  asan) run_asan ;;
  tsan) run_tsan ;;
  all) run_asan; run_tsan ;;
esac
echo "sanitize.sh: $what: no findings"
