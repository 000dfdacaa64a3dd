#pragma once
/// The text pieces of Mooncake's HTTP metadata protocol, without I/O: percent-encoding of keys,
/// the query of a request target (`/metadata?key=<url-encoded>&ttl_ms=T`), and the metadata
/// server's URL as users write it in `metadata_server` (`http://host:port/path`). Shared by the
/// server (http_server.hpp) and the client (http_client.hpp); tests drive them directly.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <caf/expected.hpp>

namespace kvferry::transport::metadata {

/// Percent-encodes every byte except RFC 3986's unreserved ones (A-Z a-z 0-9 - . _ ~), as
/// curl_easy_escape does: "mooncake/ram/a b" -> "mooncake%2Fram%2Fa%20b".
[[nodiscard]] std::string percent_encode(std::string_view text);

/// Decodes %XX escapes and '+' (a space, as form-encoded queries write it); nullopt when an
/// escape is not two hex digits.
[[nodiscard]] std::optional<std::string> percent_decode(std::string_view text);

/// A request target of the metadata protocol, split and decoded.
struct target {
  /// The path, undecoded ("/metadata").
  std::string path;
  /// The decoded `key` parameter; nullopt when absent.
  std::optional<std::string> key;
  /// The `ttl_ms` parameter, undecoded and unchecked; nullopt when absent.
  std::optional<std::string> ttl_ms;
  /// Empty when the query is well formed; else why not (a bad escape, a parameter given twice).
  std::string error;
};

/// Splits `/path?key=...&ttl_ms=...`; other parameters are ignored.
[[nodiscard]] target parse_target(std::string_view request_target);

/// A parsed `http://host:port/path` (a bracketed IPv6 host is kept without its brackets).
struct http_url {
  std::string host;
  uint16_t port = 80;
  /// "/" when the URL has none (as Mooncake's clients would request it).
  std::string path = "/";
  /// The URL as given, for error messages.
  std::string text;
};

/// Parses the `http://` form of `metadata_server`. Refuses other schemes (https included: not
/// supported), a missing host, a bad port, a query or fragment, user info.
[[nodiscard]] caf::expected<http_url> parse_http_url(std::string_view url);

} // namespace kvferry::transport::metadata
