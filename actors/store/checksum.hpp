#pragma once
/// CRC-32C (Castagnoli) of an object's bytes: recorded at put_end when the put asks for it,
/// checked by every get of that object.

#include <array>
#include <cstddef>
#include <cstdint>

namespace kvferry::store {

namespace detail {
constexpr std::array<std::array<uint32_t, 256>, 8> crc32c_tables() {
  std::array<std::array<uint32_t, 256>, 8> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k)
      c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; ++i)
    for (size_t k = 1; k < 8; ++k)
      t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xff];
  return t;
}
inline constexpr auto crc32c_table = crc32c_tables();
} // namespace detail

/// Continues `crc` (0 to start) over [data, data+size).
[[nodiscard]] inline uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0) noexcept {
  const auto& t = detail::crc32c_table;
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  while (size >= 8) {
    uint32_t lo = (uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24)
                  ^ crc;
    crc = t[7][lo & 0xff] ^ t[6][(lo >> 8) & 0xff] ^ t[5][(lo >> 16) & 0xff] ^ t[4][lo >> 24]
          ^ t[3][p[4]] ^ t[2][p[5]] ^ t[1][p[6]] ^ t[0][p[7]];
    p += 8;
    size -= 8;
  }
  while (size-- > 0)
    crc = (crc >> 8) ^ t[0][(crc ^ *p++) & 0xff];
  return ~crc;
}

} // namespace kvferry::store
