#pragma once
/// A small GET-only HTTP/1.1 server on one thread (epoll), for what operators scrape: Prometheus
/// metrics (`metrics_server`). Every port is open to any peer, so what one can cost is bounded:
///   - at most `max_connections` connections (`max_connections_per_host` from one address);
///     beyond that one is closed to admit the new one: first one that sent nothing, then one with
///     a request not complete (oldest first), then an idle kept-alive one, one being answered last;
///   - a request head of at most `max_head_bytes` (else 431) and `max_fields` fields; a request
///     with a body is refused (400), as is anything that is not HTTP/1.x;
///   - a request must arrive whole, and a response must be taken, within `timeout` (a slow or
///     silent peer gets 408 and is closed); an idle kept-alive connection is closed after it too;
///   - one response at a time per connection: nothing more is read from a peer until it took its
///     response, so a peer that never reads holds one response and its input buffer, no more;
///   - after a final response (an error, Connection: close) the write side is shut down and what
///     the peer still sends is read and dropped for at most 2 s and 256 KiB (a lingering close, so
///     the response is not destroyed by a reset), then the connection is closed.
/// At most max_connections x (max_head_bytes + one response) bytes, whatever peers send.
/// A malformed request gets its error response (400, 405, 431, 505) and its connection is closed;
/// the server goes on serving everyone else.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>

#include <caf/expected.hpp>

#include "transport/http/session.hpp"
#include "transport/zmtp/net.hpp"

namespace kvferry::transport::http {

struct server_options {
  /// Address to bind ("127.0.0.1", "0.0.0.0", "::").
  std::string bind_host = "127.0.0.1";
  /// 0 picks a free port.
  uint16_t port = 0;
  /// For log lines, e.g. "metrics".
  std::string name = "http";
  size_t max_connections = 64;
  size_t max_connections_per_host = 16;
  /// A request must arrive, and a response be taken, within this; an idle connection is closed
  /// after it.
  std::chrono::milliseconds timeout{10000};
  session_limits limits;
};

struct server_counters {
  uint64_t accepted = 0;
  /// Connections closed to stay within max_connections / max_connections_per_host.
  uint64_t evicted = 0;
  /// Connections closed because a request or the taking of a response ran past the timeout.
  uint64_t timeouts = 0;
  uint64_t accept_failures = 0;
  uint64_t open_connections = 0;
  /// Bytes the connections hold (input buffers and queued responses).
  uint64_t held_bytes = 0;
  /// Responses by status.
  uint64_t ok = 0, bad_request = 0, not_found = 0, method_not_allowed = 0, request_timeout = 0,
           head_too_large = 0, server_error = 0, other = 0;
};

class server {
public:
  /// Binds and starts the thread; `h` answers every well-formed GET and HEAD, on that thread.
  [[nodiscard]] static caf::expected<std::unique_ptr<server>> start(server_options options,
                                                                    handler h);
  ~server();
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  [[nodiscard]] uint16_t port() const noexcept { return port_; }
  [[nodiscard]] server_counters counters() const noexcept;
  /// Stops the thread and closes every connection. Idempotent.
  void stop();

private:
  struct entry;
  explicit server(server_options options, handler h);
  void run();
  void accept_ready();
  void admit(zmtp::unique_fd fd, const std::string& host);
  void handle(uint64_t id, uint32_t events);
  /// Reads, writes, and sets the epoll interest and deadline of one connection; false when it
  /// should be closed.
  bool drive(entry& e, uint32_t events);
  void close_connection(uint64_t id, const char* why);
  bool evict_for(const std::string& host);
  void sweep(std::chrono::steady_clock::time_point now);
  void update_held();

  server_options options_;
  handler handler_;
  zmtp::unique_fd listener_;
  zmtp::unique_fd epoll_;
  zmtp::doorbell wakeup_;
  uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread thread_;

  // Server thread only.
  std::unordered_map<uint64_t, std::unique_ptr<entry>> connections_;
  std::unordered_map<std::string, size_t> per_host_;
  uint64_t next_id_ = 1;
  std::chrono::steady_clock::time_point accept_paused_until_{};
  bool accept_paused_ = false;

  // Counters (read by other threads).
  response_counters responses_;
  std::atomic<uint64_t> accepted_{0}, evicted_{0}, timeouts_{0}, accept_failures_{0}, open_{0},
    held_{0};
};

/// The content type of Prometheus' text exposition format 0.0.4.
inline constexpr const char* prometheus_content_type = "text/plain; version=0.0.4; charset=utf-8";

/// A server that answers `GET /metrics` (and HEAD) with what `render` returns, as Prometheus'
/// text format 0.0.4; any other path gets 404. `render` runs on the server's thread, once per
/// scrape.
[[nodiscard]] caf::expected<std::unique_ptr<server>>
start_metrics_server(server_options options, std::function<std::string()> render);

} // namespace kvferry::transport::http
