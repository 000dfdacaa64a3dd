# Compiler flags shared by every kvferry target.
add_library(kvferry_flags INTERFACE)
# Warnings are for kvferry's own sources; a project using the installed package gets only the
# include root (headers as "actors/...", "transport/...") and C++20.
target_compile_options(kvferry_flags INTERFACE
  $<BUILD_INTERFACE:$<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wno-unused-parameter>>)
target_include_directories(kvferry_flags INTERFACE
  $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}>
  $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}/kvferry>)
target_compile_features(kvferry_flags INTERFACE cxx_std_20)
if(KVFERRY_SANITIZE)
  target_compile_options(kvferry_flags INTERFACE
    -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  target_link_options(kvferry_flags INTERFACE -fsanitize=address,undefined)
endif()
