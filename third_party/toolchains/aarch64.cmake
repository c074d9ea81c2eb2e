# Cross-compiling for 64-bit ARMv8 (Raspberry Pi 3/4/5 with a 64-bit OS) with Debian's
# crossbuild-essential-arm64 (aarch64-linux-gnu-g++). Tests run under qemu-user:
#   cmake -S . -B build-arm64 -DDNNS_PORTABLE=ON -DCMAKE_TOOLCHAIN_FILE=third_party/toolchains/aarch64.cmake
#   cmake --build build-arm64 && ctest --test-dir build-arm64
# Only the portable runtime (DNNS_PORTABLE=ON) cross-compiles: the full build needs OpenBLAS
# and oneTBB for the target, which these toolchains do not provide.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(DNNS_TARGET_SYSROOT /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH ${DNNS_TARGET_SYSROOT})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
# ctest runs the target's executables through qemu-user, with the target's libc and libstdc++.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L ${DNNS_TARGET_SYSROOT})
