#pragma once
/// A listening ZMTP endpoint served by one thread (epoll): accepts connections, drives each
/// connection's I/O, and bounds what peers can cost:
///   - at most `max_connections` connections (and `max_connections_per_host` from one address):
///     beyond that one is closed to admit the new one: first one that never finished its
///     handshake, then one that never sent a whole message (oldest first), then one without work
///     in progress (idle the longest), a busy one only as a last resort;
///   - a connection that does not finish the ZMTP handshake within `handshake_timeout` is closed;
///   - bytes the protocols copy into replies are charged to one `reply_budget` for the whole
///     server; a protocol holds off reading its peer while the budget (or its own per-peer
///     bound) is spent, and the server resumes it when bytes are written out;
///   - running out of file descriptors pauses accepting briefly instead of spinning.
/// Protocol objects (one per connection) live on the server thread; other threads reach them only
/// through post().

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

#include <caf/expected.hpp>

#include "transport/zmtp/budget.hpp"
#include "transport/zmtp/connection.hpp"

namespace kvferry::transport::zmtp {

struct server_options {
  /// Address to bind ("127.0.0.1", "0.0.0.0", "::").
  std::string bind_host = "127.0.0.1";
  /// 0 picks a free port.
  uint16_t port = 0;
  /// For log lines, e.g. "segment 'a' data plane".
  std::string name = "kvferry";
  size_t max_connections = 1024;
  size_t max_connections_per_host = 1024;
  std::chrono::milliseconds handshake_timeout{10000};
  /// Bytes protocols may copy into queued replies, over all connections.
  size_t reply_budget = 256ULL << 20;
  connection_limits limits;
};

struct server_counters {
  uint64_t accepted = 0;
  /// Connections closed to stay within max_connections / max_connections_per_host.
  uint64_t evicted = 0;
  /// Connections closed for a protocol violation (greeting, frame, command, message shape).
  uint64_t violations = 0;
  uint64_t handshake_timeouts = 0;
  /// accept() failures for want of file descriptors.
  uint64_t accept_failures = 0;
  uint64_t open_connections = 0;
  /// Bytes of reply_budget in use.
  uint64_t budget_in_use = 0;
  uint64_t budget_peak = 0;
};

class server : public std::enable_shared_from_this<server> {
public:
  using protocol_factory = std::function<std::unique_ptr<protocol>(server&, uint64_t id)>;

  /// Binds and starts the thread. Protocol objects may keep weak_from_this() to post later.
  [[nodiscard]] static caf::expected<std::shared_ptr<server>> start(server_options options,
                                                                    protocol_factory factory);
  ~server();
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  [[nodiscard]] uint16_t port() const noexcept { return port_; }
  [[nodiscard]] const server_options& options() const noexcept { return options_; }
  [[nodiscard]] server_counters counters() const noexcept;

  /// Runs `fn` on the server thread (dropped once the server stopped).
  void post(std::function<void()> fn);
  /// Stops the thread and closes every connection. Idempotent.
  void stop();

  // -- on the server thread only ----------------------------------------------------------------

  /// The open connection with this id, or nullptr.
  [[nodiscard]] connection* find(uint64_t id) noexcept;
  /// Queues `message` on connection `id` (dropped, and its charge released, if it is gone).
  void send(uint64_t id, std::unique_ptr<outbound> message);
  /// The budget of what queued replies hold, over all connections.
  [[nodiscard]] budget& replies() noexcept { return budget_; }
  /// Closes every connection for which `pred` is true (e.g. those holding a region's memory).
  void close_if(const std::function<bool(connection&)>& pred, const char* why);

private:
  struct entry;
  explicit server(server_options options, protocol_factory factory);
  void run();
  void accept_ready();
  void admit(unique_fd fd, const std::string& host);
  void handle(uint64_t id, uint32_t events);
  void update_interest(entry& e);
  void close_connection(uint64_t id, const std::string& why, bool violation);
  void release_charges(connection& c);
  void resume_held();
  void sweep(std::chrono::steady_clock::time_point now);
  bool evict_for(const std::string& host);

  server_options options_;
  protocol_factory factory_;
  unique_fd listener_;
  unique_fd epoll_;
  doorbell wakeup_;
  uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::thread thread_;

  std::mutex posted_mutex_;
  std::vector<std::function<void()>> posted_;

  // Server thread only.
  std::unordered_map<uint64_t, std::unique_ptr<entry>> connections_;
  std::unordered_map<std::string, size_t> per_host_;
  uint64_t next_id_ = 1;
  budget budget_;
  std::chrono::steady_clock::time_point accept_paused_until_{};
  bool accept_paused_ = false;

  // Counters (read by other threads).
  std::atomic<uint64_t> accepted_{0}, evicted_{0}, violations_{0}, handshake_timeouts_{0},
    accept_failures_{0}, open_{0};
};

} // namespace kvferry::transport::zmtp
