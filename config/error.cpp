#include "config/error.hpp"

#include <cstdio>

#include <caf/atom.hpp>
#include <caf/message.hpp>
#include <caf/sec.hpp>

namespace kvferry {

const char* to_string(errc code) noexcept {
  switch (code) {
    case errc::none: return "none";
    case errc::invalid_config: return "invalid_config";
    case errc::invalid_argument: return "invalid_argument";
    case errc::unknown_batch: return "unknown_batch";
    case errc::batch_full: return "batch_full";
    case errc::unregistered_memory: return "unregistered_memory";
    case errc::overlapping_region: return "overlapping_region";
    case errc::unknown_region: return "unknown_region";
    case errc::unknown_segment: return "unknown_segment";
    case errc::out_of_range: return "out_of_range";
    case errc::unknown_task: return "unknown_task";
    case errc::timeout: return "timeout";
    case errc::transport_failure: return "transport_failure";
    case errc::peer_unreachable: return "peer_unreachable";
    case errc::malformed_frame: return "malformed_frame";
    case errc::not_supported: return "not_supported";
    case errc::shutting_down: return "shutting_down";
    case errc::busy: return "busy";
    case errc::stale_incarnation: return "stale_incarnation";
    case errc::unconfirmed: return "unconfirmed";
    case errc::object_not_found: return "object_not_found";
    case errc::object_exists: return "object_exists";
    case errc::object_has_lease: return "object_has_lease";
    case errc::lease_expired: return "lease_expired";
    case errc::store_full: return "store_full";
    case errc::checksum_mismatch: return "checksum_mismatch";
    case errc::not_mounted: return "not_mounted";
    case errc::fenced: return "fenced";
  }
  return "unknown_error_code";
}

std::string hex(uint64_t value) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(value));
  return buf;
}

caf::error make_error(errc code, std::string context) {
  return caf::error{static_cast<uint8_t>(code), caf::atom("kvferry"),
                    caf::make_message(std::move(context))};
}

errc code_of(const caf::error& err) noexcept {
  if (!err || err.category() != caf::atom("kvferry"))
    return errc::none;
  return static_cast<errc>(err.code());
}

std::string context_of(const caf::error& err) {
  if (err && err.context().match_elements<std::string>())
    return err.context().get_as<std::string>(0);
  return {};
}

std::string describe(const caf::error& err) {
  if (!err)
    return "no error";
  std::string out;
  if (err.category() == caf::atom("kvferry"))
    out = to_string(static_cast<errc>(err.code()));
  else if (err.category() == caf::atom("system"))
    out = caf::to_string(static_cast<caf::sec>(err.code()));
  else
    out = caf::to_string(err.category()) + "#" + std::to_string(err.code());
  const auto& ctx = err.context();
  if (ctx.match_elements<std::string>()) {
    out += ": ";
    out += ctx.get_as<std::string>(0);
  } else if (!ctx.empty()) {
    out += ": ";
    out += caf::to_string(ctx);
  }
  return out;
}

} // namespace kvferry
