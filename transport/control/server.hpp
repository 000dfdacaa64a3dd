#pragma once
/// The control plane's server side: kvferry's ZMTP server (transport/zmtp) on a node's rpc port,
/// answering the requests peers may make of it (control/wire.hpp): describe and notify (of a
/// segment), and call (a subsystem's own request, e.g. a store client's at the store master).
/// What the answers are is decided above (the layer that starts the server installs the
/// handlers); this layer decodes, bounds and replies. A malformed request is answered with
/// errc::malformed_frame when its id is readable; a request that is not one message of one frame,
/// or whose frame exceeds max_request_frame, closes the connection.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "memory/segment_descriptor.hpp"
#include "transport/control/wire.hpp"
#include "transport/tcp/server.hpp"
#include "transport/zmtp/server.hpp"

namespace kvferry::transport::control {

/// How requests are answered. Each handler runs on the server thread and calls its `done` once,
/// from any thread, when the answer is known: soon for describe and notify; a call may be held
/// for long (a long poll), while the requester's deadline allows. Until it is answered a request's
/// bytes count against the reply budget. A second call of `done` is ignored; a request whose every
/// copy of `done` is destroyed unanswered is answered with errc::transport_failure. A request
/// whose handler is empty is answered with errc::not_supported (a store master installs only
/// `call`). An error passed to `done` reaches the requester with its errc and its context text.
struct handlers {
  std::function<void(std::function<void(caf::expected<memory::segment_descriptor>)> done)> describe;
  std::function<void(std::string from, std::string text, std::function<void(caf::error)> done)>
    notify;
  /// `method` and `payload` as the requester sent them; `done` takes the reply's payload.
  std::function<void(uint16_t method, std::vector<uint8_t> payload,
                     std::function<void(caf::expected<std::vector<uint8_t>>)> done)>
    call;
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
  /// Bytes of replies queued (and of requests being answered) over all connections; at least
  /// max_request_frame + max_reply_frame.
  size_t reply_budget = 32ULL << 20;
  /// Largest request frame read; a larger one closes its connection. The default fits describe
  /// and notify; a server of larger calls (the store master) raises it.
  size_t max_request_frame = control::max_request_frame;
  /// Largest reply frame sent (an answer that does not fit is replaced by an error reply); the
  /// peers' clients must accept it (client_options::max_reply_frame).
  size_t max_reply_frame = control::max_reply_frame;
};

struct server_counters {
  uint64_t requests = 0;
  uint64_t malformed = 0;
  zmtp::server_counters connections;
};

/// What one control connection can hold besides its request and its replies: the input buffer
/// and the connection objects.
inline constexpr uint64_t control_connection_overhead = 32ULL << 10;

/// What one control connection of a server with these options can hold at most besides its
/// replies: its overhead and a request of the largest size being read.
[[nodiscard]] inline uint64_t connection_bound(const server_options& o) {
  return control_connection_overhead + o.max_request_frame;
}

/// The most memory a control-plane server's peers can make it hold (requests being answered
/// and replies are charged to its reply budget).
[[nodiscard]] inline uint64_t memory_bound(const server_options& o) {
  return o.limits.max_connections * connection_bound(o) + o.reply_budget;
}

class server {
public:
  /// Binds and starts the thread. Refuses (errc::invalid_argument) frame limits that cannot
  /// carry a header or an error reply, and a reply budget smaller than one request and one reply.
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
