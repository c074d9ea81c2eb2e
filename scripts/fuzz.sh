#!/usr/bin/env bash
# Builds and runs the libFuzzer targets of tests/fuzz (clang-14, ASan + UBSan, in build-fuzz/).
#
#   scripts/fuzz.sh TARGET SECONDS [libFuzzer flags]   fuzz one target for SECONDS
#   scripts/fuzz.sh all SECONDS [libFuzzer flags]      every target in turn, SECONDS each
#   scripts/fuzz.sh list                               the targets
#   scripts/fuzz.sh seeds                              rewrite the seeds (tests/fuzz/<target>/seed-*)
#
# TARGET: archive, spec, model_file, json, idx, cifar, image, trace (tests/fuzz/fuzz_TARGET.cpp).
# A run first executes every input of the committed corpus tests/fuzz/TARGET/ (seeds and the
# crash inputs of past fixes: a regression there fails at once), then mutates for the rest of
# the time. New interesting inputs go to build-fuzz/corpus/TARGET/ (kept between runs, not
# committed); a crash, leak, hang (> 10 s) or out-of-memory input is written to
# build-fuzz/crashes/TARGET/ and the script exits non-zero. Keep such an input: commit it to
# tests/fuzz/TARGET/ as crash-<what> together with its fix.
# Extra flags go to libFuzzer, e.g. -runs=1000000 (then SECONDS is only an upper bound) or
# -jobs=1. Environment: FUZZ_BUILD_DIR (default build-fuzz), JOBS (build jobs, default nproc).
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(archive spec model_file json idx cifar image trace)
build_dir=${FUZZ_BUILD_DIR:-build-fuzz}

usage() { sed -n '2,18p' "$0"; }
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  list) printf '%s\n' "${targets[@]}"; exit 0 ;;
  "") usage >&2; exit 2 ;;
esac

configure() {
  for tool in clang-14 clang++-14; do
    command -v "$tool" >/dev/null || { echo "fuzz.sh: $tool not found (scripts/setup.sh installs clang-14, libfuzzer-14-dev, libclang-rt-14-dev)" >&2; exit 2; }
  done
  if [ ! -f "$build_dir/CMakeCache.txt" ]; then
    CC=clang-14 CXX=clang++-14 cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDNNS_FUZZ=ON \
      -DDNNS_CUDA=OFF -DDNNS_BUILD_TESTS=OFF ${DNNS_CCACHE_FLAGS:-} >/dev/null
  fi
}

build() {  # build TARGET... (fuzz_<name>)
  configure
  cmake --build "$build_dir" -j "${JOBS:-$(nproc)}" --target "$@" >/dev/null
}

if [ "$1" = seeds ]; then
  build make_fuzz_seeds
  "$build_dir/bin/fuzz/make_fuzz_seeds" tests/fuzz
  echo "fuzz.sh: seeds written to tests/fuzz/<target>/seed-*"
  exit 0
fi

[ $# -ge 2 ] || { echo "fuzz.sh: SECONDS missing (see --help)" >&2; exit 2; }
which=$1 seconds=$2
shift 2
[[ "$seconds" =~ ^[0-9]+$ ]] && [ "$seconds" -gt 0 ] || { echo "fuzz.sh: SECONDS must be a positive integer, got '$seconds'" >&2; exit 2; }
if [ "$which" = all ]; then
  run=("${targets[@]}")
else
  [[ " ${targets[*]} " == *" $which "* ]] || { echo "fuzz.sh: unknown target '$which' (one of: ${targets[*]}, all)" >&2; exit 2; }
  run=("$which")
fi

build "${run[@]/#/fuzz_}"

# Leaks are checked at exit of each input's process run by libFuzzer (-detect_leaks=1 default).
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
status=0
for t in "${run[@]}"; do
  mkdir -p "$build_dir/corpus/$t" "$build_dir/crashes/$t"
  echo "fuzz.sh: $t for ${seconds}s (corpus tests/fuzz/$t + $build_dir/corpus/$t)"
  start=$(date +%s)
  if ! "$build_dir/bin/fuzz/fuzz_$t" "$build_dir/corpus/$t" "tests/fuzz/$t" -max_total_time="$seconds" \
      -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$build_dir/crashes/$t/" "$@" \
      >"$build_dir/fuzz_$t.log" 2>&1; then
    echo "fuzz.sh: $t FAILED: see $build_dir/fuzz_$t.log; inputs in $build_dir/crashes/$t/" >&2
    tail -n 40 "$build_dir/fuzz_$t.log" >&2
    status=1
    continue
  fi
  # libFuzzer's final statistics: executions and coverage.
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$build_dir/fuzz_$t.log" | tail -1)
  cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$build_dir/fuzz_$t.log" | tail -1)
  echo "fuzz.sh: $t ok: ${execs:-?} executions in $(( $(date +%s) - start ))s, $cov"
done
exit $status
