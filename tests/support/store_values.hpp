#pragma once
// The value a store test puts under a key: tools/pattern.hpp's pattern with a seed derived from the
// key alone, so that any process (the test, the store_putter child) can check any key it finds
// byte for byte without being told what was put there. A torn, stale or misplaced byte differs.

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "tools/pattern.hpp"

namespace kvferry::test {

/// FNV-1a of the key: the pattern's seed.
inline uint64_t value_seed(std::string_view key) noexcept {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : key) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

/// The `size` bytes put under `key`.
inline std::vector<uint8_t> value_for(std::string_view key, size_t size) {
  std::vector<uint8_t> v(size);
  tools::fill_pattern(v.data(), size, value_seed(key));
  return v;
}

/// Index of the first byte of `value` that is not `key`'s pattern; value.size() when all match.
inline size_t first_wrong_byte(std::string_view key, const std::vector<uint8_t>& value) noexcept {
  return tools::check_pattern(value.data(), value.size(), value_seed(key));
}

} // namespace kvferry::test
