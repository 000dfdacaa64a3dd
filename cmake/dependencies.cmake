# One place that finds every external package and gives it a target name.
find_package(Threads REQUIRED)
find_package(Boost 1.81.0 EXACT REQUIRED CONFIG COMPONENTS json unit_test_framework)
find_package(cppzmq 4.9 REQUIRED CONFIG)
find_package(spdlog REQUIRED CONFIG)
find_package(CLI11 REQUIRED CONFIG)
find_package(PkgConfig REQUIRED)
# libibverbs: the RDMA data path (transport/rdma) links it; the library loads on machines without
# RDMA devices too (it then lists none). tools/bootstrap.sh installs libibverbs-dev.
pkg_check_modules(IBVERBS REQUIRED IMPORTED_TARGET libibverbs)
message(STATUS "kvferry: libibverbs ${IBVERBS_VERSION}")

# CAF 0.17 ships neither a CMake config nor a pkg-config file (installed with kvferry's package).
include(${CMAKE_CURRENT_LIST_DIR}/kvferryCAF.cmake)

# CUDA is optional: detected, never required. Without it, cuda:N memory reports not_supported.
# kvferry calls only the CUDA runtime API from C++, so no CUDA language support is needed.
set(KVFERRY_HAVE_CUDA OFF)
if(KVFERRY_ENABLE_CUDA)
  if(NOT DEFINED CUDAToolkit_ROOT AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CUDAToolkit_ROOT /usr/local/cuda)
  endif()
  find_package(CUDAToolkit QUIET)
  if(CUDAToolkit_FOUND AND TARGET CUDA::cudart)
    set(KVFERRY_HAVE_CUDA ON)
  endif()
endif()
message(STATUS "kvferry: CUDA support ${KVFERRY_HAVE_CUDA}")

# The Python module (tools/python): built when Python 3's development files and pybind11 are
# found (tools/bootstrap.sh installs python3-dev and pybind11-dev). The interpreter is Debian's
# /usr/bin/python3 unless Python3_EXECUTABLE names another: the first python3 on PATH may be a
# pyenv or venv interpreter without headers, or of another ABI. Sanitized builds leave it out (a
# sanitized extension cannot load into an interpreter built without the sanitizer runtime).
option(KVFERRY_BUILD_PYTHON "Build the kvferry Python module when Python 3 and pybind11 are found" ON)
set(KVFERRY_HAVE_PYTHON OFF)
if(KVFERRY_BUILD_PYTHON AND NOT KVFERRY_SANITIZE)
  if(NOT DEFINED Python3_EXECUTABLE AND EXISTS /usr/bin/python3)
    set(Python3_EXECUTABLE /usr/bin/python3)
  endif()
  find_package(Python3 3.9 QUIET COMPONENTS Interpreter Development.Module)
  if(Python3_FOUND)
    find_package(pybind11 2.6 QUIET CONFIG)
  endif()
  if(Python3_FOUND AND pybind11_FOUND)
    set(KVFERRY_HAVE_PYTHON ON)
  endif()
endif()
message(STATUS "kvferry: Python module ${KVFERRY_HAVE_PYTHON} (python ${Python3_VERSION} at "
               "${Python3_EXECUTABLE}, pybind11 ${pybind11_VERSION})")
