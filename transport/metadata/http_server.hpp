#pragma once
/// A server of Mooncake's HTTP metadata protocol (`kvferry metadata`), on Boost.Beast, one thread:
///   GET    <path>?key=<url-encoded>   200 with the value, or 404
///   PUT    <path>?key=...             the body is the value; 200
///   PUT    <path>?key=...&ttl_ms=T    kvferry's extension: the entry expires T ms after this PUT
///                                     (nodes refresh it by putting again); a plain PUT persists
///   DELETE <path>?key=...             200, or 404 when absent
/// A request without `key` (or with an empty one) gets 400, another path 404, another method 405.
///
/// Every port is open to hostile peers (docs/ARCHITECTURE.md, "Network surface"), so what peers
/// can make the server hold is bounded, and refusals leave it serving everyone else:
///   - keys: at most max_key_bytes decoded (else 414), max_keys of them (else 507);
///   - values: at most max_value_bytes each (else 413, decided from Content-Length before any
///     body byte is read); all keys and values, with max_entry_overhead bytes per entry, within
///     max_stored_bytes (else 507). A value still being sent to a reader after it was replaced
///     or removed counts until the response is out, so a reader that stalls cannot pile copies up;
///   - request bodies being received, over all connections: within max_receiving_bytes (else
///     503 with Retry-After);
///   - a request head of at most max_head_bytes (else 431);
///   - max_connections at once: beyond it the connection quiet the longest is closed;
///   - a request must arrive whole (head and body), and a response be taken, within `timeout`;
///     an idle kept-alive connection is closed after it too.
/// After a refusal the connection is closed; before closing, what the peer still sends is read
/// into one shared scratch buffer and dropped, for at most `timeout` (so that a client that is
/// still writing its body reads the refusal instead of a reset).
/// memory_bound() is the sum: what peers can make it hold, whatever they send.

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include <caf/expected.hpp>

namespace kvferry::transport::metadata {

struct http_server_options {
  /// Address to bind ("127.0.0.1", "0.0.0.0", "::").
  std::string bind_host = "127.0.0.1";
  /// 0 picks a free port (port() tells which).
  uint16_t port = 0;
  /// The one path served (Mooncake's users write `http://host:port/metadata`).
  std::string path = "/metadata";
  size_t max_key_bytes = 4096;
  size_t max_value_bytes = 4ULL << 20;
  size_t max_keys = 1ULL << 20;
  /// Keys, values and per-entry overhead together.
  uint64_t max_stored_bytes = 1ULL << 30;
  /// Counted per entry into max_stored_bytes (the map's node, the expiry index).
  size_t max_entry_overhead = 128;
  /// Request bodies being received at once, over all connections.
  uint64_t max_receiving_bytes = 64ULL << 20;
  /// Request line and fields.
  size_t max_head_bytes = 16 << 10;
  size_t max_connections = 256;
  /// Longest TTL a PUT may ask for.
  std::chrono::milliseconds max_ttl{std::chrono::hours(24 * 7)};
  /// A request must arrive whole, and a response be taken, within this; an idle connection is
  /// closed after it.
  std::chrono::milliseconds timeout{10000};
};

/// What the server did; any thread may read them (counters()).
struct http_server_counters {
  uint64_t keys = 0;
  /// Entries that expire (put with ttl_ms).
  uint64_t expiring_keys = 0;
  /// Bytes counted against max_stored_bytes now (values still being sent included).
  uint64_t stored_bytes = 0;
  /// Entries removed because their TTL ran out.
  uint64_t expired = 0;
  uint64_t gets = 0, puts = 0, deletes = 0;
  /// Responses by status.
  uint64_t ok = 0, bad_request = 0, not_found = 0, method_not_allowed = 0, request_timeout = 0,
           too_large = 0, uri_too_long = 0, head_too_large = 0, unavailable = 0,
           insufficient_storage = 0;
  uint64_t accepted = 0, open_connections = 0;
  /// Connections closed to stay within max_connections.
  uint64_t evicted = 0;
  /// Connections closed because a request or the taking of a response ran past the timeout.
  uint64_t timeouts = 0;
  /// Requests that were not HTTP/1.x (closed with 400).
  uint64_t malformed = 0;
};

class http_server {
public:
  /// Binds, listens and starts the server's thread.
  [[nodiscard]] static caf::expected<std::unique_ptr<http_server>>
  start(http_server_options options);
  ~http_server();
  http_server(const http_server&) = delete;
  http_server& operator=(const http_server&) = delete;

  /// The bound port (the chosen one when options.port was 0).
  [[nodiscard]] uint16_t port() const noexcept;
  [[nodiscard]] http_server_counters counters() const noexcept;
  [[nodiscard]] const http_server_options& options() const noexcept;
  /// Bytes peers can make the server hold at most: max_stored_bytes + max_receiving_bytes +
  /// max_connections x (max_head_bytes + per-connection buffers).
  [[nodiscard]] uint64_t memory_bound() const noexcept;
  /// Closes the listener and every connection, and joins the thread. Idempotent.
  void stop();

  struct impl;

private:
  explicit http_server(std::unique_ptr<impl> i);
  std::unique_ptr<impl> impl_;
};

} // namespace kvferry::transport::metadata
