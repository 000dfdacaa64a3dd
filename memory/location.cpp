#include "memory/location.hpp"

#include <charconv>

#include "config/error.hpp"

namespace kvferry::memory {

caf::expected<location> parse_location(std::string_view text) {
  if (text.empty() || text == "*")
    return location{};
  location out;
  std::string_view digits;
  if (text.substr(0, 4) == "cpu:") {
    out.kind = location_kind::cpu;
    digits = text.substr(4);
  } else if (text.substr(0, 5) == "cuda:") {
    out.kind = location_kind::cuda;
    digits = text.substr(5);
  } else {
    return make_error(errc::invalid_argument, "memory location '" + std::string(text)
                                                + "' is unknown; expected cpu:N, cuda:N or *");
  }
  auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), out.index);
  if (digits.empty() || ec != std::errc{} || ptr != digits.data() + digits.size() || out.index > 1023)
    return make_error(errc::invalid_argument, "memory location '" + std::string(text)
                                                + "' has a bad index; expected cpu:N or cuda:N "
                                                  "with N from 0 to 1023");
  return out;
}

std::string to_string(const location& loc) {
  return (loc.kind == location_kind::cuda ? "cuda:" : "cpu:") + std::to_string(loc.index);
}

} // namespace kvferry::memory
