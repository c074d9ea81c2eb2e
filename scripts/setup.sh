#!/usr/bin/env bash
# Installs the Debian packages dnnshifter builds against and builds a Release tree in build/.
#
#   scripts/setup.sh              packages + build (CUDA backend compiled when nvcc is found)
#   scripts/setup.sh --with-torch also installs python3-torch, the peer of bench/run.sh (and the
#                                 maker of the ONNX import fixtures, re-run by test_onnx_import),
#                                 and python3-pil, which bench/torch_train_epoch.py decodes with
#
# Environment: BUILD_DIR (default build), DNNS_CUDA (AUTO|ON|OFF, default AUTO),
# JOBS (default: number of cores).
set -euo pipefail
cd "$(dirname "$0")/.."

with_torch=0
for arg in "$@"; do
  case "$arg" in
    --with-torch) with_torch=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

packages=(build-essential cmake pkg-config curl libopenblas-dev libtbb-dev libstb-dev doctest-dev zlib1g-dev
          dataset-fashion-mnist libonnx-dev libprotobuf-dev libopenmpi-dev openmpi-bin)
# onnx + protobuf: ONNX import; curl: data fetch; OpenMPI: data-parallel training (tests/test_mpi)
# clang + libFuzzer for the fuzz targets (scripts/fuzz.sh, run by .ci/run); the default build stays GCC.
packages+=(clang-14 libfuzzer-14-dev libclang-rt-14-dev)
[ "$with_torch" = 1 ] && packages+=(python3-torch python3-pil)  # PIL: bench/torch_train_epoch.py decodes the JPEGs

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# onnxruntime for the ONNX export test (tests/test_export.cpp skips that check without it; offline: no harm).
python3 -m pip install -q --retries 1 --timeout 30 onnxruntime numpy >/dev/null 2>&1 || true

# nvcc lives outside PATH on the CUDA images; AUTO picks it up from there.
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi

build_dir=${BUILD_DIR:-build}
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DDNNS_CUDA="${DNNS_CUDA:-AUTO}" >/dev/null
cmake --build "$build_dir" -j "${JOBS:-$(nproc)}"
echo "setup.sh: built into $build_dir/ (programs in $build_dir/bin, tests: ctest --test-dir $build_dir)"
