#pragma once
// Small helpers shared by the Boost.Test programs.

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <string_view>
#include <thread>

#include <caf/expected.hpp>

#include "config/error.hpp"

namespace kvferry::test {

/// The error of `r` as text, or "ok" (Boost.Test evaluates a message even when the check passes).
template <class T>
std::string why(const caf::expected<T>& r) {
  return r ? std::string("ok") : describe(r.error());
}

inline bool contains(const std::string& haystack, std::string_view needle) {
  return haystack.find(needle) != std::string::npos;
}

/// Polls `pred` until it holds or `timeout` passes (a bound on a wait for a condition, never a
/// guess at how long something takes); returns the last answer.
inline bool eventually(const std::function<bool()>& pred,
                       std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until)
      return pred();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

/// Page-aligned zeroed memory, so "+1" and "+4095" offsets are really unaligned.
struct aligned_buffer {
  size_t size;
  uint8_t* data;
  explicit aligned_buffer(size_t n)
    : size(n), data(static_cast<uint8_t*>(std::aligned_alloc(4096, (n + 4095) / 4096 * 4096))) {
    std::memset(data, 0, n);
  }
  ~aligned_buffer() { std::free(data); }
  aligned_buffer(const aligned_buffer&) = delete;
  aligned_buffer& operator=(const aligned_buffer&) = delete;
  uint64_t addr(size_t offset = 0) const { return reinterpret_cast<uint64_t>(data + offset); }
};

} // namespace kvferry::test
