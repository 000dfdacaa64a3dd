# `cmake --install` and the package (README.md, "Installing"): headers under include/kvferry/
# (the layout the sources include them by: actors/, transport/, memory/, config/, and
# tools/pattern.hpp, the byte pattern the examples verify with), the static libraries, the kvferry
# tool, the C API when it is built, and a CMake package (kvferryConfig.cmake, its version file,
# the exported targets) so that
#   find_package(kvferry) + target_link_libraries(app PRIVATE kvferry::engine)
# works. `cpack -G DEB` in the build folder makes a .deb of the same files.
include(CMakePackageConfigHelpers)

set(KVFERRY_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/kvferry)

set_target_properties(kvferry_flags PROPERTIES EXPORT_NAME flags)
set_target_properties(kvferry_config PROPERTIES EXPORT_NAME config)
set_target_properties(kvferry_memory PROPERTIES EXPORT_NAME memory)
set_target_properties(kvferry_transport PROPERTIES EXPORT_NAME transport)
set_target_properties(kvferry_actors PROPERTIES EXPORT_NAME engine)
set_target_properties(kvferry_store PROPERTIES EXPORT_NAME store)
install(TARGETS kvferry_flags kvferry_config kvferry_memory kvferry_transport kvferry_actors
                kvferry_store
  EXPORT kvferryTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT development
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/kvferry)
install(TARGETS kvferry RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT runtime)

foreach(folder config memory transport actors)
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/${folder}
    DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/kvferry COMPONENT development
    FILES_MATCHING PATTERN "*.hpp"
    PATTERN "capi" EXCLUDE)
endforeach()
install(FILES ${PROJECT_SOURCE_DIR}/tools/pattern.hpp
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/kvferry/tools COMPONENT development)

# The C API (actors/capi), when this tree has it: the shared library and its one header.
if(TARGET kvferry_c)
  install(TARGETS kvferry_c
    LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT runtime NAMELINK_COMPONENT development)
  install(FILES ${PROJECT_SOURCE_DIR}/actors/capi/kvferry.h
    DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/kvferry COMPONENT development)
endif()

# The Python module, when it is built: where Debian's python3 looks under the prefix
# (/usr/lib/python3/dist-packages in the .deb); it finds libkvferry_c in the prefix's libraries.
if(TARGET kvferry_python)
  set(KVFERRY_PYTHON_DIR lib/python3/dist-packages CACHE STRING
      "where cmake --install puts the kvferry Python module, relative to the prefix")
  set_target_properties(kvferry_python PROPERTIES
    INSTALL_RPATH "$ORIGIN/../../../${CMAKE_INSTALL_LIBDIR}")
  install(TARGETS kvferry_python LIBRARY DESTINATION ${KVFERRY_PYTHON_DIR} COMPONENT runtime)
endif()

install(EXPORT kvferryTargets NAMESPACE kvferry:: DESTINATION ${KVFERRY_CMAKE_DIR}
  COMPONENT development)
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/kvferryConfig.cmake.in
  ${PROJECT_BINARY_DIR}/kvferryConfig.cmake
  INSTALL_DESTINATION ${KVFERRY_CMAKE_DIR}
  PATH_VARS CMAKE_INSTALL_INCLUDEDIR CMAKE_INSTALL_LIBDIR)
# 0.x: a minor version may change the API.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/kvferryConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/kvferryConfig.cmake
              ${PROJECT_BINARY_DIR}/kvferryConfigVersion.cmake
              ${PROJECT_SOURCE_DIR}/cmake/kvferryCAF.cmake
  DESTINATION ${KVFERRY_CMAKE_DIR} COMPONENT development)

# A Debian package of everything above (`cpack -G DEB` in the build folder).
set(CPACK_PACKAGE_NAME kvferry)
set(CPACK_PACKAGE_VENDOR "kvferry")
set(CPACK_PACKAGE_CONTACT "kvferry maintainers <kvferry@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
  "KV-cache transfer engine and distributed KV store (library, headers, kvferry tool)")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_GENERATOR DEB)
set(CPACK_DEB_COMPONENT_INSTALL OFF)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION libdevel)
# What a project building against the package needs (the libraries are static: their
# dependencies' development packages); the tool's shared libraries come with them.
set(CPACK_DEBIAN_PACKAGE_DEPENDS
  "libcaf-dev, libboost-json1.81-dev, libzmq3-dev, cppzmq-dev, libspdlog-dev, libfmt-dev")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
include(CPack)
