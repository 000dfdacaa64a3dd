#pragma once
/// Deterministic byte patterns for verifying transfers: every byte depends on a seed and its
/// offset, so a misplaced, torn or stale byte is detected.

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace kvferry::tools {

inline uint64_t mix(uint64_t x) noexcept {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/// The pattern byte at absolute position `pos` of stream `seed`.
inline uint8_t pattern_byte(uint64_t seed, uint64_t pos) noexcept {
  return static_cast<uint8_t>(mix(seed ^ (pos >> 3) * 0x100000001b3ULL) >> ((pos & 7) * 8));
}

/// Fills `len` bytes with the pattern of stream `seed` starting at position `pos`.
inline void fill_pattern(void* dst, size_t len, uint64_t seed, uint64_t pos = 0) noexcept {
  auto* out = static_cast<uint8_t*>(dst);
  size_t i = 0;
  while (i < len && ((pos + i) & 7) != 0) {
    out[i] = pattern_byte(seed, pos + i);
    ++i;
  }
  for (; i + 8 <= len; i += 8) {
    uint64_t word = mix(seed ^ ((pos + i) >> 3) * 0x100000001b3ULL);
    std::memcpy(out + i, &word, 8);
  }
  for (; i < len; ++i)
    out[i] = pattern_byte(seed, pos + i);
}

/// Index of the first byte that differs from the pattern, or `len` when all match.
inline size_t check_pattern(const void* src, size_t len, uint64_t seed, uint64_t pos = 0) noexcept {
  const auto* in = static_cast<const uint8_t*>(src);
  size_t i = 0;
  while (i < len && ((pos + i) & 7) != 0) {
    if (in[i] != pattern_byte(seed, pos + i))
      return i;
    ++i;
  }
  for (; i + 8 <= len; i += 8) {
    uint64_t word = mix(seed ^ ((pos + i) >> 3) * 0x100000001b3ULL);
    if (std::memcmp(in + i, &word, 8) != 0)
      break;
  }
  for (; i < len; ++i)
    if (in[i] != pattern_byte(seed, pos + i))
      return i;
  return len;
}

} // namespace kvferry::tools
