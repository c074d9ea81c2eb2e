#!/usr/bin/env bash
# Builds the GPU bundle here, on a CPU machine, for the bare GPU machine (an H200 with CUDA 13,
# CMake and PyTorch but none of our Debian packages and no package registry).
#
#   scripts/gpu_bundle.sh [--out DIR] [--train N] [--test N] [--data DIR]
#
# Packs into DIR (default gpu_bundle/, git-ignored) everything scripts/gpu_check.sh needs there:
#   bin/   cifar_prune, bench, test_cuda_ops: Release, CUDA backend for sm_90 + compute_90 PTX,
#          x86-64-v3 (AVX2) code instead of -march=native, so they run on whichever x86-64 CPU
#          hosts the GPU; DT_RPATH $ORIGIN/../lib first, then the CUDA toolkit's folders
#   lib.tar.xz   every shared library they load that is not the C/C++ runtime, the CUDA driver
#          or the CUDA toolkit's own (cudart, cuBLAS: the GPU machine's toolkit has them, and they
#          are too large to carry): OpenBLAS and libgfortran/libquadmath, oneTBB, stb, zlib; xz
#          takes Debian's 36 MB OpenBLAS (kernels for every CPU) to ~4 MB; gpu_check.sh unpacks
#          it into lib/
#   data/cifar10-jpeg/{train,test}/CLASS/*.jpg   a class-balanced subset of the CIFAR-10 JPEG copy
#          (default 10,000 training and 2,000 test images, ~11 MB): our image-folder reader
#          takes it as it is
#   MANIFEST.txt   commit, build flags, sizes and checksums
# It refuses a bundle over 60 MiB, then prints the device call to make.
set -euo pipefail
cd "$(dirname "$0")/.."

out=gpu_bundle
ntrain=10000
ntest=2000
data=../shared/data/cifar10-jpeg
build=${BUNDLE_BUILD_DIR:-build-bundle}
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    --train) ntrain=${2:?--train needs a count}; shift 2 ;;
    --test) ntest=${2:?--test needs a count}; shift 2 ;;
    --data) data=${2:?--data needs a folder}; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "gpu_bundle.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$ntrain$ntest" in *[!0-9]*) echo "gpu_bundle.sh: --train and --test take whole numbers" >&2; exit 2 ;; esac
[ -d "$data/train" ] && [ -d "$data/test" ] ||
  { echo "gpu_bundle.sh: $data: no train/ and test/ class folders (the CIFAR-10 JPEG copy; --data DIR)" >&2; exit 1; }
if ! command -v nvcc >/dev/null; then
  [ -x /usr/local/cuda/bin/nvcc ] || { echo "gpu_bundle.sh: nvcc not found: the bundle needs the CUDA toolkit here" >&2; exit 1; }
  export PATH=/usr/local/cuda/bin:$PATH
fi

echo "gpu_bundle.sh: building $build/ (CUDA sm_90 + PTX, x86-64-v3)"
launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi
# DT_RPATH (not RUNPATH): it also applies to the libraries' own dependencies (libopenblas ->
# libgfortran), which RUNPATH would leave to the system.
# Without MPI and the ONNX importer: the check uses neither, and Open MPI (RUNPATH, plugins
# loaded at run time) and protobuf would only make the bundle larger and harder to carry.
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DDNNS_CUDA=ON -DDNNS_NATIVE=OFF -DDNNS_MPI=OFF \
  -DCMAKE_DISABLE_FIND_PACKAGE_ONNX=ON -DCMAKE_DISABLE_FIND_PACKAGE_Protobuf=ON \
  -DCMAKE_CUDA_ARCHITECTURES="90-real;90-virtual" -DCMAKE_CXX_FLAGS="-march=x86-64-v3" \
  -DCMAKE_SKIP_BUILD_RPATH=ON \
  "-DCMAKE_EXE_LINKER_FLAGS=-Wl,--disable-new-dtags -Wl,-rpath,\$ORIGIN/../lib:/usr/local/cuda/lib64:/usr/local/cuda/lib" \
  "${launcher[@]}" >/dev/null
cmake --build "$build" -j "${JOBS:-$(nproc)}" --target cifar_prune bench test_cuda_ops

tmp="$out.tmp"
rm -rf "$tmp"
mkdir -p "$tmp/bin" "$tmp/lib" "$tmp/data/cifar10-jpeg"
cp "$build/bin/cifar_prune" "$build/bin/bench" "$build/tests/test_cuda_ops" "$tmp/bin/"
strip --strip-unneeded "$tmp"/bin/* 2>/dev/null || true

# Libraries the GPU machine provides itself: the C/C++ runtime, the CUDA driver and toolkit.
provided='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libcublasLt|libnvidia-[a-z-]*)\.so'
for b in "$tmp"/bin/*; do
  ldd "$b" | awk '/=>/ {print $1, $3}' | while read -r name path; do
    [[ "$name" =~ $provided ]] && continue
    [ "$path" = "not" ] && { echo "gpu_bundle.sh: $b needs $name, which is not found here" >&2; exit 1; }
    [ -e "$tmp/lib/$name" ] || cp -L "$path" "$tmp/lib/$name"
  done
done

tar -C "$tmp" -cf - lib | xz -T0 -6 > "$tmp/lib.tar.xz"
rm -rf "$tmp/lib"

for split in train test; do
  n=$ntrain
  [ "$split" = test ] && n=$ntest
  classes=$(find "$data/$split" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort)
  nclasses=$(echo "$classes" | wc -l)
  per=$(( (n + nclasses - 1) / nclasses ))
  for c in $classes; do
    mkdir -p "$tmp/data/cifar10-jpeg/$split/$c"
    find "$data/$split/$c" -maxdepth 1 -type f -name '*.jpg' -printf '%f\n' | sort | awk -v n="$per" 'NR <= n' |
      while read -r f; do cp "$data/$split/$c/$f" "$tmp/data/cifar10-jpeg/$split/$c/"; done
  done
done

{
  echo "dnnshifter GPU bundle, made $(date -u +%FT%TZ) on $(hostname)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
  echo "build: Release, CUDA sm_90 + compute_90 PTX, -march=x86-64-v3, nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
  echo "data: $(find "$tmp/data/cifar10-jpeg/train" -type f | wc -l) training and $(find "$tmp/data/cifar10-jpeg/test" -type f | wc -l) test images of $data"
  echo "files:"
  (cd "$tmp" && find bin lib.tar.xz -type f -exec sha256sum {} + | sort -k2)
  echo "libraries (in lib.tar.xz):"
  tar -tJf "$tmp/lib.tar.xz" | sed 's/^/  /'
} > "$tmp/MANIFEST.txt"

bytes=$(du -sb "$tmp" | cut -f1)
limit=$((60 * 1024 * 1024))
if [ "$bytes" -gt "$limit" ]; then
  echo "gpu_bundle.sh: the bundle is $bytes bytes, over the 60 MiB limit (fewer images: --train/--test)" >&2
  exit 1
fi
rm -rf "$out"
mv "$tmp" "$out"
echo "gpu_bundle.sh: $out/ is $((bytes / 1024)) KiB: $(ls "$out/bin" | tr '\n' ' ')+ $(tar -tJf "$out/lib.tar.xz" | grep -c '\.so') libraries + data"
cat <<EOF
On the GPU machine (device tool), from the repository root:
  run  command: bash scripts/gpu_check.sh \$OUT
       carry:   ["$out"]
       timeout_s: 480     (the check plans for 6 minutes and stops its steps by then)
What comes back: \$OUT/log.txt, \$OUT/results.jsonl (one JSON line per figure), \$OUT/table.md
(the GPU table with the PyTorch ratios); see README, "GPU".
EOF
