# The installable package: `cmake --install build --prefix P` puts
#   P/lib/libdnns_*.a                          the static libraries
#   P/include/dnnshifter/{core,kernels,nn,prune,datasets}/...   the headers, so that a consumer
#                                              writes #include "core/tensor.h" as the tree does
#   P/bin/cifar_prune, shifter, bench, dnns_infer   the programs
#   P/lib/cmake/dnnshifter/                    dnnshifterConfig.cmake (+ ConfigVersion, targets)
#   P/lib/pkgconfig/dnnshifter.pc              for builds without CMake
# A consumer: find_package(dnnshifter CONFIG REQUIRED) and link dnnshifter::dnnshifter (all of
# it) or one library: dnnshifter::core, ::kernels, ::nn, ::prune, ::datasets, ::portable.
# tests/package_consumer/ is such a consumer, built by the CTest test `package_consumer`.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(DNNS_INSTALL_INCLUDE ${CMAKE_INSTALL_INCLUDEDIR}/dnnshifter)
set(DNNS_INSTALL_CMAKE ${CMAKE_INSTALL_LIBDIR}/cmake/dnnshifter)

# The umbrella target: everything a program of the framework links.
add_library(dnns_all INTERFACE)
target_link_libraries(dnns_all INTERFACE dnns_prune dnns_datasets)
add_library(dnnshifter::dnnshifter ALIAS dnns_all)

# Installed name of each target (dnnshifter::<name>). The wrappers of the system packages
# (third_party/) travel as empty shells that dnnshifterConfig.cmake fills from what it finds.
set(DNNS_EXPORTED dnns_all dnns_core dnns_kernels dnns_nn dnns_prune dnns_datasets dnns_portable
    dnns_portable_sources dnns_blas dnns_tbb dnns_stb dnns_zlib)
if(TARGET dnns_cuda)
  list(APPEND DNNS_EXPORTED dnns_cuda)
endif()
list(APPEND DNNS_EXPORTED dnns_mpi)  # an empty shell without MPI (third_party/mpi.cmake)
foreach(t ${DNNS_EXPORTED})
  string(REGEX REPLACE "^dnns_" "" name ${t})
  if(t STREQUAL "dnns_all")
    set(name dnnshifter)
  endif()
  set_target_properties(${t} PROPERTIES EXPORT_NAME ${name})
endforeach()

# Paths found at configure time (the source tree, this machine's OpenBLAS and stb) hold only in
# the build tree: wrap them in BUILD_INTERFACE. Installed, the headers come from one root.
function(dnns_build_only target property)
  get_target_property(values ${target} ${property})
  if(NOT values)
    return()
  endif()
  set(wrapped)
  foreach(v ${values})
    list(APPEND wrapped "$<BUILD_INTERFACE:${v}>")
  endforeach()
  set_property(TARGET ${target} PROPERTY ${property} "${wrapped}")
endfunction()
foreach(t dnns_blas dnns_stb)
  dnns_build_only(${t} INTERFACE_INCLUDE_DIRECTORIES)
  dnns_build_only(${t} INTERFACE_LINK_LIBRARIES)
endforeach()
foreach(t dnns_portable dnns_portable_sources)
  dnns_build_only(${t} INTERFACE_INCLUDE_DIRECTORIES)
endforeach()
target_include_directories(dnns_core INTERFACE $<INSTALL_INTERFACE:${DNNS_INSTALL_INCLUDE}>)
target_include_directories(dnns_portable INTERFACE
                           $<INSTALL_INTERFACE:${DNNS_INSTALL_INCLUDE}/kernels/portable>)

install(TARGETS ${DNNS_EXPORTED} EXPORT dnnshifterTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
foreach(dir core kernels nn prune datasets)
  install(DIRECTORY ${dir}/ DESTINATION ${DNNS_INSTALL_INCLUDE}/${dir}
          FILES_MATCHING PATTERN "*.h" PATTERN "*.inc")
endforeach()
foreach(app cifar_prune shifter bench dnns_infer)
  if(TARGET ${app})
    install(TARGETS ${app} RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  endif()
endforeach()

install(EXPORT dnnshifterTargets NAMESPACE dnnshifter:: DESTINATION ${DNNS_INSTALL_CMAKE})
set(DNNS_PACKAGE_CUDA ${DNNS_HAVE_CUDA})
set(DNNS_PACKAGE_MPI ${DNNS_HAVE_MPI})
if(DNNS_STB_LIB)
  set(DNNS_PACKAGE_STB_LIB ON)
else()
  set(DNNS_PACKAGE_STB_LIB OFF)
endif()
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/dnnshifterConfig.cmake.in
                              ${CMAKE_CURRENT_BINARY_DIR}/dnnshifterConfig.cmake
                              INSTALL_DESTINATION ${DNNS_INSTALL_CMAKE})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/dnnshifterConfigVersion.cmake
                                 VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/dnnshifterConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/dnnshifterConfigVersion.cmake
        DESTINATION ${DNNS_INSTALL_CMAKE})

# pkg-config: static libraries, so Libs lists them in link order and Requires the packages
# they call into.
set(DNNS_PC_LIBS "-ldnns_prune -ldnns_datasets -ldnns_nn -ldnns_portable_sources -ldnns_portable -ldnns_kernels")
set(DNNS_PC_CFLAGS "")
if(TARGET dnns_cuda)
  string(APPEND DNNS_PC_LIBS " -ldnns_cuda")
  string(APPEND DNNS_PC_CFLAGS " -DDNNS_HAVE_CUDA=1")
endif()
string(APPEND DNNS_PC_LIBS " -ldnns_core")
if(TARGET dnns_cuda)
  string(APPEND DNNS_PC_LIBS " -L${CUDAToolkit_LIBRARY_DIR} -lcublas -lcudart")
endif()
set(DNNS_PC_REQUIRES "openblas tbb zlib")
if(DNNS_HAVE_MPI)
  string(APPEND DNNS_PC_REQUIRES " mpi-c")
  string(APPEND DNNS_PC_CFLAGS " -DDNNS_HAVE_MPI=1 -DOMPI_SKIP_MPICXX=1 -DMPICH_SKIP_MPICXX=1")
endif()
if(DNNS_STB_LIB)
  string(APPEND DNNS_PC_REQUIRES " stb")
endif()
configure_file(${CMAKE_CURRENT_LIST_DIR}/dnnshifter.pc.in ${CMAKE_CURRENT_BINARY_DIR}/dnnshifter.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/dnnshifter.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
