# MPI (Debian: libopenmpi-dev + openmpi-bin) for data-parallel training (nn/distributed.h):
# compiled when find_package(MPI) finds it (DNNS_MPI=AUTO), required with ON, skipped with OFF.
# Without it nn/distributed.cpp is a single-rank build (every call a no-op).
set(DNNS_HAVE_MPI OFF)
add_library(dnns_mpi INTERFACE)
if(NOT DNNS_MPI STREQUAL "OFF")
  find_package(MPI COMPONENTS C QUIET)
  if(MPI_C_FOUND)
    target_link_libraries(dnns_mpi INTERFACE MPI::MPI_C)
    # The C API only: no C++ bindings (Open MPI and MPICH would otherwise pull them in).
    target_compile_definitions(dnns_mpi INTERFACE DNNS_HAVE_MPI=1 OMPI_SKIP_MPICXX=1 MPICH_SKIP_MPICXX=1)
    set(DNNS_HAVE_MPI ON)
    find_program(DNNS_MPIEXEC NAMES mpiexec mpirun HINTS ${MPI_HOME} PATH_SUFFIXES bin)
    message(STATUS "dnnshifter: MPI ON (${MPI_C_LIBRARIES}; launcher ${DNNS_MPIEXEC})")
  elseif(DNNS_MPI STREQUAL "ON")
    message(FATAL_ERROR "DNNS_MPI=ON but no MPI was found (install libopenmpi-dev openmpi-bin)")
  else()
    message(STATUS "dnnshifter: MPI not found, building single-process (no data-parallel training)")
  endif()
endif()
add_library(dnns::mpi ALIAS dnns_mpi)
