// The C API's shared parts: versions, error codes and messages, configuration.
#include <cstdlib>
#include <string_view>

#include "actors/capi/handles.hpp"
#include "config/log.hpp"

namespace kvferry::capi {

namespace {

thread_local std::string last_error_message;

// The C enum mirrors kvferry::errc value by value.
static_assert(KVFERRY_ERR_INVALID_CONFIG == static_cast<int>(errc::invalid_config));
static_assert(KVFERRY_ERR_INVALID_ARGUMENT == static_cast<int>(errc::invalid_argument));
static_assert(KVFERRY_ERR_UNKNOWN_BATCH == static_cast<int>(errc::unknown_batch));
static_assert(KVFERRY_ERR_BATCH_FULL == static_cast<int>(errc::batch_full));
static_assert(KVFERRY_ERR_UNREGISTERED_MEMORY == static_cast<int>(errc::unregistered_memory));
static_assert(KVFERRY_ERR_OVERLAPPING_REGION == static_cast<int>(errc::overlapping_region));
static_assert(KVFERRY_ERR_UNKNOWN_REGION == static_cast<int>(errc::unknown_region));
static_assert(KVFERRY_ERR_UNKNOWN_SEGMENT == static_cast<int>(errc::unknown_segment));
static_assert(KVFERRY_ERR_OUT_OF_RANGE == static_cast<int>(errc::out_of_range));
static_assert(KVFERRY_ERR_UNKNOWN_TASK == static_cast<int>(errc::unknown_task));
static_assert(KVFERRY_ERR_TIMEOUT == static_cast<int>(errc::timeout));
static_assert(KVFERRY_ERR_TRANSPORT_FAILURE == static_cast<int>(errc::transport_failure));
static_assert(KVFERRY_ERR_PEER_UNREACHABLE == static_cast<int>(errc::peer_unreachable));
static_assert(KVFERRY_ERR_MALFORMED_FRAME == static_cast<int>(errc::malformed_frame));
static_assert(KVFERRY_ERR_NOT_SUPPORTED == static_cast<int>(errc::not_supported));
static_assert(KVFERRY_ERR_SHUTTING_DOWN == static_cast<int>(errc::shutting_down));
static_assert(KVFERRY_ERR_BUSY == static_cast<int>(errc::busy));
static_assert(KVFERRY_ERR_STALE_INCARNATION == static_cast<int>(errc::stale_incarnation));
static_assert(KVFERRY_ERR_UNCONFIRMED == static_cast<int>(errc::unconfirmed));
static_assert(KVFERRY_ERR_OBJECT_NOT_FOUND == static_cast<int>(errc::object_not_found));
static_assert(KVFERRY_ERR_OBJECT_EXISTS == static_cast<int>(errc::object_exists));
static_assert(KVFERRY_ERR_OBJECT_HAS_LEASE == static_cast<int>(errc::object_has_lease));
static_assert(KVFERRY_ERR_LEASE_EXPIRED == static_cast<int>(errc::lease_expired));
static_assert(KVFERRY_ERR_STORE_FULL == static_cast<int>(errc::store_full));
static_assert(KVFERRY_ERR_CHECKSUM_MISMATCH == static_cast<int>(errc::checksum_mismatch));
static_assert(KVFERRY_ERR_NOT_MOUNTED == static_cast<int>(errc::not_mounted));
static_assert(KVFERRY_ERR_FENCED == static_cast<int>(errc::fenced));
// A new errc value needs its C constant (and a minor version step) before this builds again.
static_assert(errc_last == errc::fenced);

} // namespace

int code_of_error(const caf::error& err) noexcept {
  if (!err)
    return KVFERRY_OK;
  auto code = kvferry::code_of(err);
  return code == errc::none ? KVFERRY_ERR_OTHER : static_cast<int>(code);
}

int fail(const caf::error& err) {
  int code = code_of_error(err);
  if (code != KVFERRY_OK)
    last_error_message = describe(err);
  return code;
}

int fail(errc code, std::string message) {
  return fail(make_error(code, std::move(message)));
}

int fail_other(std::string message) {
  last_error_message = std::move(message);
  return KVFERRY_ERR_OTHER;
}

caf::expected<config::settings> load_settings(const char* config) {
  caf::expected<config::settings> s{caf::error{}};
  if (config == nullptr) {
    s = config::load(std::nullopt);
  } else {
    std::string_view text(config);
    auto first = text.find_first_not_of(" \t\r\n");
    if (first != std::string_view::npos && text[first] == '{')
      s = config::parse(text, "<configuration text>");
    else if (text.empty())
      return make_error(errc::invalid_config, "the configuration path is empty");
    else
      s = config::load_file(std::string(text));
  }
  if (!s)
    return s;
  log::set_level(s->log_level);
  for (const auto& w : s->warnings)
    log::warn("{}", w);
  return s;
}

} // namespace kvferry::capi

using namespace kvferry;

extern "C" {

int kvferry_c_api_version(void) {
  return KVFERRY_C_API_VERSION;
}

const char* kvferry_version(void) {
  return KVFERRY_VERSION_STRING;
}

const char* kvferry_last_error(void) {
  return capi::last_error_message.c_str();
}

const char* kvferry_error_name(int code) {
  if (code == KVFERRY_ERR_OTHER)
    return "other";
  if (code < 0 || code > static_cast<int>(errc_last))
    return "unknown";
  return code == 0 ? "ok" : to_string(static_cast<errc>(code));
}

void kvferry_free(void* p) {
  std::free(p);
}

} // extern "C"
