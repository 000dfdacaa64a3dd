# The installable package (cmake/install.cmake), as a serving engine's project uses it:
#   1. `cmake --install` the build into a fresh prefix; the headers keep their layout, the
#      package files, the static libraries and the kvferry tool are there;
#   2. configure examples/ on their own (find_package(kvferry), target kvferry::engine and
#      kvferry::store) against that prefix only, and build embed_engine and pd_disagg (and the C
#      example when the C API was installed);
#   3. run the built embed_engine (every task COMPLETED, data identical) and the installed tool.
# Arguments: BUILD_DIR (the build to install), SOURCE_DIR (the repository), WORK_DIR (scratch),
# GENERATOR (CMake generator of the example build).
cmake_minimum_required(VERSION 3.25)
set(prefix "${WORK_DIR}/prefix")
set(example_build "${WORK_DIR}/examples")
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${out}\n${err}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()

run("cmake --install" "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${prefix}")
foreach(file IN ITEMS
    include/kvferry/actors/transfer_engine.hpp
    include/kvferry/actors/metrics.hpp
    include/kvferry/actors/store/client.hpp
    include/kvferry/transport/http/server.hpp
    include/kvferry/memory/region_registry.hpp
    include/kvferry/config/settings.hpp
    include/kvferry/tools/pattern.hpp
    lib/libkvferry_actors.a
    lib/cmake/kvferry/kvferryConfig.cmake
    lib/cmake/kvferry/kvferryConfigVersion.cmake
    lib/cmake/kvferry/kvferryTargets.cmake
    bin/kvferry)
  if(NOT EXISTS "${prefix}/${file}")
    message(FATAL_ERROR "the install has no ${file}")
  endif()
endforeach()
file(GLOB_RECURSE sources "${prefix}/include/*.cpp")
if(sources)
  message(FATAL_ERROR "sources were installed as headers: ${sources}")
endif()

# Only the install prefix: nothing of the source tree or its build is visible to the examples
# (their includes resolve in include/kvferry).
run("configuring examples/ against the package"
  "${CMAKE_COMMAND}" -S "${SOURCE_DIR}/examples" -B "${example_build}" -G "${GENERATOR}"
  -DCMAKE_BUILD_TYPE=Release "-DCMAKE_PREFIX_PATH=${prefix}"
  -DCMAKE_FIND_PACKAGE_NO_PACKAGE_REGISTRY=ON)
set(targets embed_engine pd_disagg)
if(EXISTS "${prefix}/lib/libkvferry_c.so")
  list(APPEND targets c_store)
endif()
run("building ${targets} against the package"
  "${CMAKE_COMMAND}" --build "${example_build}" --target ${targets})
if(EXISTS "${example_build}/build.ninja")
  file(READ "${example_build}/build.ninja" ninja)
  foreach(flag IN ITEMS "-I${SOURCE_DIR} " "-I${SOURCE_DIR}\n" "-isystem ${SOURCE_DIR} ")
    string(FIND "${ninja}" "${flag}" from_tree)
    if(NOT from_tree EQUAL -1)
      message(FATAL_ERROR "the example build includes from the source tree (${flag})")
    endif()
  endforeach()
endif()

run("the installed embed_engine" "${example_build}/embed_engine")
if(NOT last_output MATCHES "16 tasks COMPLETED, 1048576 bytes, data identical")
  message(FATAL_ERROR "embed_engine did not report every task completed:\n${last_output}")
endif()
message(STATUS "embed_engine: ${last_output}")
if(NOT EXISTS "${example_build}/pd_disagg/pd_disagg")
  message(FATAL_ERROR "pd_disagg was not built")
endif()
run("the installed kvferry --help" "${prefix}/bin/kvferry" --help)
# The Python module, when this build has it, imports from the prefix alone.
if(EXISTS "${BUILD_DIR}/tools/python")
  file(GLOB module "${prefix}/lib/python3/dist-packages/kvferry*.so")
  if(NOT module)
    message(FATAL_ERROR "the install has no Python module under lib/python3/dist-packages")
  endif()
  run("the installed Python module" ${CMAKE_COMMAND} -E env
      "PYTHONPATH=${prefix}/lib/python3/dist-packages" /usr/bin/python3 -c
      "import kvferry\nprint('kvferry module from', kvferry.__file__)")
  message(STATUS "${last_output}")
endif()
message(STATUS "installed into ${prefix}; examples built and run against it")
# The static libraries carry their debug information: do not keep hundreds of MiB around.
file(REMOVE_RECURSE "${WORK_DIR}")
