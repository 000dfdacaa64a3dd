#pragma once
/// Where a memory region lives: host memory on a NUMA node ("cpu:N") or a GPU ("cuda:N").

#include <cstdint>
#include <string>
#include <string_view>

#include <caf/expected.hpp>
#include <caf/meta/type_name.hpp>

namespace kvferry::memory {

enum class location_kind : uint8_t { cpu, cuda };

struct location {
  location_kind kind = location_kind::cpu;
  uint32_t index = 0;

  [[nodiscard]] bool is_device() const noexcept { return kind == location_kind::cuda; }
  friend bool operator==(const location&, const location&) = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, location& x) {
  return f(caf::meta::type_name("kvferry::location"), x.kind, x.index);
}

/// Parses "cpu:N", "cuda:N", or "*" / "" (host memory, node 0), as Mooncake's location strings.
[[nodiscard]] caf::expected<location> parse_location(std::string_view text);

/// "cpu:0", "cuda:1".
[[nodiscard]] std::string to_string(const location& loc);

} // namespace kvferry::memory
