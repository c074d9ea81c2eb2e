#!/usr/bin/env bash
# Cross-compiles the portable runtime (kernels/portable) for ARM and checks it under qemu-user
# against logits computed by the native full build.
#
#   scripts/cross_test.sh [--native-test PATH] [--work DIR] [--no-install]
#
#   --native-test PATH  the full build's test_export (default: build/tests/test_export); it writes
#                       the reference cases (compacted VGG-11 and ResNet-20 with random masks, a
#                       dense ResNet-20, a VGG-11 whose compact form is all constants: model
#                       files, input images, the full build's logits)
#   --work DIR          where build-portable/, build-arm64/, build-armhf/ and build-edge-refs/ go
#                       (default: the repository root)
#   --no-install        do not apt-get install missing tools (skip instead)
#
# Steps: install crossbuild-essential-arm64, crossbuild-essential-armhf and qemu-user when
# missing (apt-get, as root); write the references; then for x86-64 (a native DNNS_PORTABLE=ON
# build: it configures without OpenBLAS, oneTBB, zlib, stb or CUDA), aarch64 and armhf:
# configure with the toolchain files in third_party/toolchains/, build, run ctest (the runtime's
# own test and the reference cases, through qemu for ARM) and dnns_infer --expect on one case.
# Ends with the stripped sizes of the runtime (and of a Cortex-M4 build of it where
# arm-none-eabi-gcc is installed). Where the cross tools are missing and cannot be installed
# (no root, no apt) it prints SKIP and exits 0.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
native_test=$repo/build/tests/test_export
work=$repo
install=1
while [ $# -gt 0 ]; do
  case "$1" in
    --native-test) native_test=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --no-install) install=0; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "cross_test.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$work"
work=$(cd "$work" && pwd)
start=$SECONDS
log() { echo "cross_test.sh [$((SECONDS - start))s]: $*"; }

# ---- tools
tools=(aarch64-linux-gnu-g++ arm-linux-gnueabihf-g++ qemu-aarch64 qemu-arm cmake)
missing_tools() { for t in "${tools[@]}"; do command -v "$t" >/dev/null || echo "$t"; done; }
if [ -n "$(missing_tools)" ]; then
  packages=(crossbuild-essential-arm64 crossbuild-essential-armhf qemu-user)
  if [ "$install" = 1 ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    log "installing ${packages[*]} (missing: $(missing_tools | tr '\n' ' '))"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
             "${packages[@]}" >/dev/null; }; then
      log "apt-get install failed"
    fi
  fi
  if [ -n "$(missing_tools)" ]; then
    echo "SKIP: cross_test.sh: $(missing_tools | tr '\n' ' ')not available and not installable here" \
         "(needs root and apt-get for ${packages[*]}): the ARM builds were not tested"
    exit 0
  fi
  log "tools installed"
fi

# ---- reference cases from the native full build
[ -x "$native_test" ] || { echo "cross_test.sh: $native_test not found: build the native tree first (scripts/setup.sh)" >&2; exit 1; }
refs=$work/build-edge-refs
rm -rf "$refs"
mkdir -p "$refs"
DNNS_EDGE_REFS=$refs "$native_test" --test-case='the portable runtime gives*' >"$refs/generate.log" 2>&1 ||
  { cat "$refs/generate.log"; echo "cross_test.sh: writing the reference cases failed" >&2; exit 1; }
log "reference cases: $(wc -l <"$refs/manifest.txt") in $refs"

# ---- build and test each target
first_case=$(awk 'NR==1 {print $1}' "$refs/manifest.txt")
sizes=""
for target in x86_64 aarch64 armhf; do
  case $target in
    x86_64) dir=$work/build-portable; toolchain=(); run=(); prefix="" ;;
    aarch64) dir=$work/build-arm64; toolchain=(-DCMAKE_TOOLCHAIN_FILE="$repo/third_party/toolchains/aarch64.cmake")
             run=(qemu-aarch64 -L /usr/aarch64-linux-gnu); prefix=aarch64-linux-gnu- ;;
    armhf) dir=$work/build-armhf; toolchain=(-DCMAKE_TOOLCHAIN_FILE="$repo/third_party/toolchains/armhf.cmake")
           run=(qemu-arm -L /usr/arm-linux-gnueabihf); prefix=arm-linux-gnueabihf- ;;
  esac
  mkdir -p "$dir"
  cmake -S "$repo" -B "$dir" -DDNNS_PORTABLE=ON -DCMAKE_BUILD_TYPE=Release -DDNNS_EDGE_REFS="$refs" \
        "${toolchain[@]}" >"$dir/configure.log" 2>&1 || { cat "$dir/configure.log"; exit 1; }
  cmake --build "$dir" -j "${JOBS:-2}" >"$dir/build.log" 2>&1 || { cat "$dir/build.log"; exit 1; }
  ctest --test-dir "$dir" --output-on-failure -V >"$dir/ctest.log" 2>&1 ||
    { cat "$dir/ctest.log"; echo "cross_test.sh: $target: tests failed" >&2; exit 1; }
  grep -E "logit diff|passed, [0-9]+ failed" "$dir/ctest.log" | sed "s/^[0-9]*: /  $target: /"
  "${run[@]}" "$dir/bin/dnns_infer" "$refs/$first_case.dnns" "$refs/$first_case.input.bin" "$dir/out.bin" \
      --expect "$refs/$first_case.expected.bin" | sed "s/^/  $target: /"
  "${prefix}strip" -o "$dir/dnns_infer.stripped" "$dir/bin/dnns_infer"
  runtime_bytes=$("${prefix}size" -B "$dir/kernels/portable/CMakeFiles/dnns_portable.dir/dnns_runtime.cpp.o" | awk 'NR==2 {print $1 + $2 + $3}')
  loader_bytes=$("${prefix}size" -B "$dir/kernels/portable/CMakeFiles/dnns_portable.dir/model_file.cpp.o" | awk 'NR==2 {print $1 + $2 + $3}')
  sizes+=$(printf '  %-8s dnns_infer stripped %7d bytes; runtime code+data %6d bytes (+ model-file reader %6d)' \
    "$target" "$(stat -c %s "$dir/dnns_infer.stripped")" "$runtime_bytes" "$loader_bytes")$'\n'
  log "$target: built and tested in $dir"
done
# Bare metal, where a toolchain is installed (not installed here: gcc-arm-none-eabi and
# libnewlib-arm-none-eabi are large): the runtime needs no C++ library, only a C library.
if command -v arm-none-eabi-gcc >/dev/null; then
  arm-none-eabi-gcc -x c++ -std=c++17 -O2 -Wall -Wextra -Werror -fno-exceptions -fno-rtti -mcpu=cortex-m4 -mthumb \
    -mfloat-abi=hard -mfpu=fpv4-sp-d16 -c "$repo/kernels/portable/dnns_runtime.cpp" -o "$work/build-portable/dnns_runtime.cortex-m4.o"
  sizes+=$(printf '  %-8s runtime code+data %6d bytes (arm-none-eabi, newlib, no C++ library)' cortex-m4 \
    "$(arm-none-eabi-size -B "$work/build-portable/dnns_runtime.cortex-m4.o" | awk 'NR==2 {print $1 + $2 + $3}')")$'\n'
fi
echo "sizes:"
printf '%s' "$sizes"
log "passed: the portable runtime matches the full build on x86-64, aarch64 and armhf"
