# Cross-compiling for 32-bit ARMv7 hard-float (Raspberry Pi 2/3/4/5 on a 32-bit OS; not ARMv6 boards
# such as the Pi 1 or Zero) with Debian's
# crossbuild-essential-armhf (arm-linux-gnueabihf-g++). Tests run under qemu-user:
#   cmake -S . -B build-armhf -DDNNS_PORTABLE=ON -DCMAKE_TOOLCHAIN_FILE=third_party/toolchains/armhf.cmake
#   cmake --build build-armhf && ctest --test-dir build-armhf
# Only the portable runtime (DNNS_PORTABLE=ON) cross-compiles: the full build needs OpenBLAS
# and oneTBB for the target, which these toolchains do not provide.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR arm)
set(CMAKE_C_COMPILER arm-linux-gnueabihf-gcc)
set(CMAKE_CXX_COMPILER arm-linux-gnueabihf-g++)
set(DNNS_TARGET_SYSROOT /usr/arm-linux-gnueabihf)
set(CMAKE_FIND_ROOT_PATH ${DNNS_TARGET_SYSROOT})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
# ctest runs the target's executables through qemu-user, with the target's libc and libstdc++.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-arm -L ${DNNS_TARGET_SYSROOT})
