#pragma once
/// The control plane's client side: asks other nodes' rpc ports to describe a segment, to take a
/// notification, or to answer a call (control/wire.hpp), over kvferry's ZMTP connections, one
/// persistent connection per peer (no connection per request; requests to one peer are pipelined
/// on it and answered in any order). One thread (epoll) serves every peer; each request has a
/// deadline and gets exactly one answer: the peer's reply, or an error naming the peer and what
/// failed (refused, unreachable, timed out, malformed reply; a peer's error keeps its errc). A
/// peer's reply is bounded (client_options::max_reply_frame: a larger one is skipped and fails its
/// request alone) and decoded strictly; a peer that breaks the protocol is disconnected.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "memory/segment_descriptor.hpp"
#include "transport/control/wire.hpp"
#include "transport/zmtp/connection.hpp"
#include "transport/zmtp/net.hpp"

namespace kvferry::transport::control {

struct client_counters {
  uint64_t requests = 0;
  uint64_t timeouts = 0;
  uint64_t malformed_replies = 0;
  uint64_t unmatched_replies = 0;
  uint64_t connects = 0;
};

struct client_options {
  /// Largest reply frame accepted (the peers' server_options::max_reply_frame); at least
  /// header_size + 2 + max_reason, so that an error reply always fits.
  size_t max_reply_frame = control::max_reply_frame;
  /// Largest request frame sent (the peers' server_options::max_request_frame): a larger request
  /// is refused here, before it could make the peer close the connection.
  size_t max_request_frame = control::max_request_frame;
};

class client {
public:
  using describe_done = std::function<void(caf::expected<memory::segment_descriptor>)>;
  using notify_done = std::function<void(caf::error)>;
  using call_done = std::function<void(caf::expected<std::vector<uint8_t>>)>;

  /// Starts the client's thread. Refuses (errc::invalid_argument) frame limits that cannot carry
  /// an error reply or a request header.
  [[nodiscard]] static caf::expected<std::unique_ptr<client>> start(std::string name,
                                                                    client_options options = {});
  ~client();
  client(const client&) = delete;
  client& operator=(const client&) = delete;

  /// Asks host:port to describe its segment; `done` runs once, on the client's thread.
  void describe(const std::string& host, uint16_t port, std::chrono::milliseconds timeout,
                describe_done done);
  /// Delivers a notification to host:port's segment; `done` runs once, on the client's thread.
  void notify(const std::string& host, uint16_t port, std::string from, std::string text,
              std::chrono::milliseconds timeout, notify_done done);

  /// Calls `method` at host:port with `payload`; `done` runs once, on the client's thread, with
  /// the reply's payload or an error (the peer's errc and reason when the peer refused: e.g.
  /// errc::not_supported when it answers no calls).
  void call(const std::string& host, uint16_t port, uint16_t method, std::vector<uint8_t> payload,
            std::chrono::milliseconds timeout, call_done done);

  /// Blocking forms (never call them from the client's own callbacks).
  [[nodiscard]] caf::expected<memory::segment_descriptor>
  describe(const std::string& host, uint16_t port, std::chrono::milliseconds timeout);
  [[nodiscard]] caf::error notify(const std::string& host, uint16_t port, std::string from,
                                  std::string text, std::chrono::milliseconds timeout);
  [[nodiscard]] caf::expected<std::vector<uint8_t>> call(const std::string& host, uint16_t port,
                                                         uint16_t method,
                                                         std::vector<uint8_t> payload,
                                                         std::chrono::milliseconds timeout);

  [[nodiscard]] client_counters counters() const noexcept;

  /// Fails every pending request with shutting_down and stops the thread. Idempotent.
  void stop();

private:
  struct request;
  struct peer;
  class reply_protocol;

  client(std::string name, client_options options);
  void submit(std::string host, uint16_t port, message m, std::chrono::milliseconds timeout,
              std::function<void(caf::expected<message>)> done);
  void run();
  void start_request(request r);
  peer* open_peer(const std::string& host, uint16_t port, caf::error& why);
  void drive(peer& p, uint32_t events);
  void close_peer(const std::string& key, const caf::error& why);
  void on_reply(peer& p, caf::expected<message> reply);
  void on_oversized_reply(peer& p, uint64_t id, uint64_t size);
  void expire(std::chrono::steady_clock::time_point now);
  void update_interest(peer& p);

  std::string name_;
  client_options options_;
  zmtp::unique_fd epoll_;
  zmtp::doorbell wakeup_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> next_id_{1};
  std::mutex inbox_mutex_;
  std::vector<request> inbox_;
  std::thread thread_;

  // Client thread only.
  std::unordered_map<std::string, std::unique_ptr<peer>> peers_;
  std::unordered_map<uint64_t, std::string> by_conn_; // connection id -> peer key
  uint64_t next_conn_ = 1;

  std::atomic<uint64_t> requests_{0}, timeouts_{0}, malformed_{0}, unmatched_{0}, connects_{0};
};

} // namespace kvferry::transport::control
