# Compiler flags shared by every kvferry target.
add_library(kvferry_flags INTERFACE)
target_compile_options(kvferry_flags INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic -Wno-unused-parameter>)
target_include_directories(kvferry_flags INTERFACE ${PROJECT_SOURCE_DIR})
if(KVFERRY_SANITIZE)
  target_compile_options(kvferry_flags INTERFACE
    -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  target_link_options(kvferry_flags INTERFACE -fsanitize=address,undefined)
endif()
