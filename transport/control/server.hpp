#pragma once
/// The control plane's server side: kvferry's ZMTP server (transport/zmtp) on a node's rpc port,
/// answering the two requests peers may make of a segment (control/wire.hpp): describe, and
/// notify. What the answers are is decided above (the actors layer installs the handlers); this
/// layer decodes, bounds and replies. A malformed request is answered with errc::malformed_frame
/// when its id is readable; a request that is not one message of one frame closes the connection.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "memory/segment_descriptor.hpp"
#include "transport/control/wire.hpp"
#include "transport/tcp/server.hpp"
#include "transport/zmtp/server.hpp"

namespace kvferry::transport::control {

/// How requests are answered. Each handler runs on the server thread and must call its `done`
/// exactly once, from any thread, soon (the requester waits with a timeout).
struct handlers {
  std::function<void(std::function<void(caf::expected<memory::segment_descriptor>)> done)> describe;
  std::function<void(std::string from, std::string text, std::function<void(caf::error)> done)>
    notify;
};

struct server_options {
  std::string bind_host = "127.0.0.1";
  /// 0 picks a free port.
  uint16_t port = 0;
  /// For log lines.
  std::string segment_name;
  /// Connection bounds (the per-peer reply bounds of server_limits are not used here).
  server_limits limits;
  /// Requests of one connection being answered at once before the server stops reading it.
  size_t max_pending_per_connection = 16;
  /// Bytes of replies queued over all connections.
  size_t reply_budget = 32ULL << 20;
};

struct server_counters {
  uint64_t requests = 0;
  uint64_t malformed = 0;
  zmtp::server_counters connections;
};

/// What one control connection can hold at most besides its replies: the input buffer, the
/// connection objects and a request of the largest size being read.
inline constexpr uint64_t control_connection_bytes = (32ULL << 10) + max_request_frame;

/// The most memory a control-plane server's peers can make it hold (requests being answered
/// and replies are charged to its reply budget).
[[nodiscard]] inline uint64_t memory_bound(const server_options& o) {
  return o.limits.max_connections * control_connection_bytes + o.reply_budget;
}

class server {
public:
  [[nodiscard]] static caf::expected<std::unique_ptr<server>> start(server_options options,
                                                                    handlers h);
  ~server();
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  [[nodiscard]] uint16_t port() const noexcept;
  [[nodiscard]] server_counters counters() const noexcept;
  /// Stops the thread and closes every connection. Idempotent.
  void stop();

  struct shared_state;

private:
  server() = default;
  std::shared_ptr<shared_state> shared_;
  std::shared_ptr<zmtp::server> server_;
};

} // namespace kvferry::transport::control
