#!/usr/bin/env bash
# CPU-side test of the GPU bundle (CTest: gpu_bundle), so that a missing library or a broken
# step is found here before device time is spent on it:
#   1. scripts/gpu_bundle.sh builds a small bundle (200 / 100 images) into WORK/;
#   2. the bundle and the scripts it needs are copied to another folder;
#   3. scripts/gpu_check.sh runs from the copy, with no GPU: its CPU-side steps must pass and
#      every GPU step must say it was skipped;
#   4. every bundled program must resolve each library either inside that copy or as one the
#      GPU machine provides (C/C++ runtime, CUDA driver, CUDA toolkit); nothing else from here.
# Skips (exit 77) where nvcc is absent (no CUDA build possible) or the CIFAR-10 copy is missing.
#
#   scripts/gpu_bundle_test.sh WORK_DIR
set -uo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
work=${1:?usage: gpu_bundle_test.sh WORK_DIR}
if ! command -v nvcc >/dev/null && [ ! -x /usr/local/cuda/bin/nvcc ]; then
  echo "gpu_bundle_test: no nvcc: the bundle needs a CUDA build; skipped"; exit 77
fi
data=${DNNS_SHARED_DATA:-$src/../shared/data}/cifar10-jpeg
[ -d "$data/train" ] || { echo "gpu_bundle_test: no CIFAR-10 JPEG copy at $data; skipped"; exit 77; }
mkdir -p "$work"
work=$(cd "$work" && pwd)
fail() { echo "gpu_bundle_test: FAILED: $*"; exit 1; }

echo "--- 1. build the bundle"
BUNDLE_BUILD_DIR="$work/build-bundle" bash "$src/scripts/gpu_bundle.sh" --out "$work/gpu_bundle" \
  --train 200 --test 100 --data "$data" || fail "gpu_bundle.sh exited $?"
[ "$(find "$work/gpu_bundle/data/cifar10-jpeg/train" -name '*.jpg' | wc -l)" = 200 ] || fail "expected 200 training images"
[ "$(find "$work/gpu_bundle/data/cifar10-jpeg/test" -name '*.jpg' | wc -l)" = 100 ] || fail "expected 100 test images"
for p in cifar_prune bench test_cuda_ops; do [ -x "$work/gpu_bundle/bin/$p" ] || fail "bin/$p missing"; done
libs=$(tar -tJf "$work/gpu_bundle/lib.tar.xz") || fail "lib.tar.xz unreadable"
grep -q '^lib/libopenblas' <<< "$libs" || fail "OpenBLAS not carried"
grep -q '^lib/libtbb' <<< "$libs" || fail "oneTBB not carried"
bytes=$(du -sb "$work/gpu_bundle" | cut -f1)
echo "bundle: $bytes bytes (200 / 100 images)"

echo "--- 2. a copy of the bundle and the scripts it needs"
copy="$work/copy"
rm -rf "$copy"
mkdir -p "$copy/scripts" "$copy/bench"
cp -r "$work/gpu_bundle" "$copy/gpu_bundle"
cp "$src/scripts/gpu_check.sh" "$copy/scripts/"
cp "$src/bench/"*.py "$copy/bench/"
echo "--- 3. scripts/gpu_check.sh from the copy, without a GPU"
env -u LD_LIBRARY_PATH PATH=/usr/bin:/bin bash "$copy/scripts/gpu_check.sh" "$work/check" > "$work/check.log" 2>&1
rc=$?
cat "$work/check.log"
[ "$rc" = 0 ] || fail "gpu_check.sh exited $rc"
grep -q "no NVIDIA GPU here" "$work/check.log" || fail "the check did not say that it skipped the GPU steps"
grep -q '"case":"cpu smoke: train step","side":"ours","result":{"bench": "train"' "$work/check/results.jsonl" ||
  fail "no CPU training step result from the bundled bench"
grep -q '"case":"cpu smoke: short training","side":"ours","result":{"label": "train"' "$work/check/results.jsonl" ||
  fail "no result from the bundled cifar_prune's short training run"
# Without a GPU the bundled test_cuda_ops runs and reports its device cases skipped: exit 77.
grep -q '"case":"cuda tests","side":"ours","result":{"exit_status":77,"gpu":0' "$work/check/results.jsonl" ||
  fail "the bundled test_cuda_ops did not run and skip its device cases (exit 77 without a GPU)"
[ -s "$work/check/table.md" ] || fail "no table.md"
echo "--- 4. libraries of the copy (lib/ unpacked by the check)"
provided='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libcublasLt|libnvidia-[a-z-]*)\.so'
for b in "$copy"/gpu_bundle/bin/*; do
  deps=$(env -u LD_LIBRARY_PATH ldd "$b" | awk '/=>/ {print $1, $3}') || fail "ldd $b failed"
  [ -n "$deps" ] || fail "ldd lists no libraries for $b"
  while read -r name path; do
    [[ "$name" =~ $provided ]] && continue
    case "$(realpath "$path")" in
      "$(realpath "$copy")/gpu_bundle/lib/"*) ;;
      *) fail "$(basename "$b") resolves $name to $path, outside the bundle" ;;
    esac
  done <<< "$deps"
done
echo "every bundled program resolves its libraries inside the copy (or from the CUDA toolkit / C runtime)"

echo "gpu_bundle_test: passed"
