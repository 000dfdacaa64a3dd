#pragma once
/// FUZZ_CHECK: an invariant of a fuzz target. Unlike assert() it stays on in every build type, and
/// it aborts, so libFuzzer records the input that broke the invariant as a crash.

#include <cstdio>
#include <cstdlib>

#define FUZZ_CHECK(cond, ...)                                                                    \
  do {                                                                                           \
    if (!(cond)) {                                                                               \
      std::fprintf(stderr, "FUZZ_CHECK failed at %s:%d: %s\n  ", __FILE__, __LINE__, #cond);    \
      std::fprintf(stderr, __VA_ARGS__);                                                         \
      std::fprintf(stderr, "\n");                                                                \
      std::abort();                                                                              \
    }                                                                                            \
  } while (false)
