# The CTest test `package_consumer`: installs the build tree into a scratch prefix (copies only:
# the libraries are already built), then builds tests/package_consumer against it twice, with
# find_package(dnnshifter CONFIG REQUIRED) and with pkg-config, and runs both programs.
#   cmake -DBUILD_DIR=build -DSOURCE_DIR=. -DWORK=build/package_test -DCXX=c++ [-DLAUNCHER=ccache] -P run.cmake
foreach(v BUILD_DIR SOURCE_DIR WORK CXX)
  if(NOT ${v})
    message(FATAL_ERROR "run.cmake: -D${v}=... is required")
  endif()
endforeach()
set(prefix ${WORK}/prefix)
file(REMOVE_RECURSE ${WORK})

function(step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "package_consumer: ${what} failed (${rc}):\n${out}")
  endif()
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

step("cmake --install" ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix})
foreach(f include/dnnshifter/core/tensor.h include/dnnshifter/prune/compact.h bin/cifar_prune
        lib/cmake/dnnshifter/dnnshifterConfig.cmake lib/cmake/dnnshifter/dnnshifterConfigVersion.cmake
        lib/pkgconfig/dnnshifter.pc)
  if(NOT EXISTS ${prefix}/${f})
    message(FATAL_ERROR "package_consumer: the install lacks ${f}")
  endif()
endforeach()

# 1. CMake: find_package(dnnshifter CONFIG REQUIRED), link dnnshifter::dnnshifter.
set(launcher)
if(LAUNCHER)
  set(launcher -DCMAKE_CXX_COMPILER_LAUNCHER=${LAUNCHER})
endif()
step("configuring the consumer" ${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/package_consumer -B ${WORK}/cmake
     -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=${CXX} -DCMAKE_PREFIX_PATH=${prefix} ${launcher})
step("building the consumer" ${CMAKE_COMMAND} --build ${WORK}/cmake)
step("running the consumer (CMake build)" ${WORK}/cmake/consumer)
message(STATUS "find_package build: ${step_output}")
if(NOT step_output MATCHES "package consumer: OK")
  message(FATAL_ERROR "package_consumer: no OK line from the CMake-built consumer")
endif()

# 2. pkg-config, where installed: the same program compiled by hand with the .pc file's flags.
find_program(PKG_CONFIG pkg-config)
if(NOT PKG_CONFIG)
  message(STATUS "pkg-config not installed: the dnnshifter.pc check is skipped")
  return()
endif()
set(ENV{PKG_CONFIG_PATH} ${prefix}/lib/pkgconfig)
step("pkg-config --cflags --libs dnnshifter" ${PKG_CONFIG} --cflags --libs dnnshifter)
string(STRIP "${step_output}" flags)
separate_arguments(flags UNIX_COMMAND "${flags}")
step("compiling the consumer with pkg-config's flags" ${LAUNCHER} ${CXX} -O1
     ${SOURCE_DIR}/tests/package_consumer/main.cpp -o ${WORK}/consumer_pc ${flags})
step("running the consumer (pkg-config build)" ${WORK}/consumer_pc)
message(STATUS "pkg-config build: ${step_output}")
if(NOT step_output MATCHES "package consumer: OK")
  message(FATAL_ERROR "package_consumer: no OK line from the pkg-config-built consumer")
endif()
