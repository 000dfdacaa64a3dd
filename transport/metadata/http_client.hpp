#pragma once
/// A blocking client of Mooncake's HTTP metadata protocol (`metadata_server:
/// http://host:port/path`, as served by `kvferry metadata` or by the servers Mooncake's users
/// run): GET, PUT (with kvferry's optional TTL) and DELETE of `<path>?key=<url-encoded key>`.
///
/// Every call ends within options.timeout (resolve, connect, request and response together). One
/// connection is kept alive and reused; when the server closed it in the meantime, the call is
/// made once more on a fresh one (every call is idempotent). A response larger than
/// options.max_response_bytes is refused. Calls are serialized (one at a time per client).
/// A host name is resolved with getaddrinfo, which cannot be cancelled: a slow resolver can make
/// a call outlast the timeout (an IP address, as metadata_server usually names, never does).
/// Errors name the URL, the key and what happened.

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "transport/metadata/url.hpp"

namespace kvferry::transport::metadata {

struct http_client_options {
  /// Bound on each call.
  std::chrono::milliseconds timeout{5000};
  /// A response body (a value) larger than this is refused.
  size_t max_response_bytes = 64ULL << 20;
};

class http_client {
public:
  /// Parses `url` (http://host:port/path); connects at the first call.
  [[nodiscard]] static caf::expected<std::unique_ptr<http_client>>
  create(std::string_view url, http_client_options options = {});
  ~http_client();
  http_client(const http_client&) = delete;
  http_client& operator=(const http_client&) = delete;

  /// The value of `key`; nullopt when the server has none (404).
  /// Errors: peer_unreachable (cannot connect), timeout, transport_failure (the connection broke,
  /// or the server answered something else than 200/404: the status and its text are named).
  [[nodiscard]] caf::expected<std::optional<std::string>> get(std::string_view key);

  /// Stores `value` under `key`; with `ttl` the entry expires that long after this call unless
  /// put again (kvferry's extension: `&ttl_ms=`; a server without it keeps the entry).
  /// Errors as get, and busy when the server asks to retry later (503).
  [[nodiscard]] caf::error put(std::string_view key, std::string_view value,
                               std::optional<std::chrono::milliseconds> ttl = std::nullopt);

  /// Removes `key`: true when it was there, false when the server had none (404).
  [[nodiscard]] caf::expected<bool> remove(std::string_view key);

  [[nodiscard]] const http_url& url() const noexcept;

  struct impl;

private:
  explicit http_client(std::unique_ptr<impl> i);
  std::unique_ptr<impl> impl_;
};

} // namespace kvferry::transport::metadata
