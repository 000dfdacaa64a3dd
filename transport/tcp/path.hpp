#pragma once
/// The initiator side of the TCP data plane (kvferry's fallback where there is no RDMA): ZeroMQ
/// DEALER sockets (libzmq) talking to kvferry's data-plane servers (tcp/server.hpp).
///
/// One I/O thread per data path owns one persistent DEALER connection per peer (no connection per
/// request) and keeps many slices in flight per connection, bounded by a window of slices and
/// bytes. Small slices travel up to 64 to a frame (their WRITE bytes copied into it); a large
/// WRITE is sent from registered memory without a copy. READ replies are copied into place.
/// Device (cuda:N) memory is staged through host memory: a device pointer never reaches a socket.
///
/// Failures and time:
///   - A WRITE completes only when the target replies that the bytes are in place.
///   - A lost connection fails the slices sent on it (retryable); ZeroMQ reconnects, and slices
///     posted meanwhile wait for the connection until their deadline (a short outage is ridden
///     out; the coordinator retries the failed ones with backoff).
///   - At a slice's deadline its window slot is freed whether or not the peer answered, so a live
///     but mute peer cannot wedge later slices.
///   - A descriptor whose endpoint cannot be used, or a socket that cannot be created, fails the
///     slices with a reason; nothing thrown by ZeroMQ escapes the I/O thread.
///
/// Local memory: every copy into or out of a slice's local memory after post() happens inside the
/// slice's gate (slice_gates) and under a lease on the local region; a WRITE payload lent to
/// ZeroMQ holds a lease until ZeroMQ releases it (unregistering the region resets the connection
/// that holds it).
///
/// Withdrawal (data_path::withdraw) settles a sent WRITE only when its reply arrives; at the
/// withdrawal's deadline the connections still holding withdrawn local memory are reset, and the
/// peers that may still apply a withdrawn WRITE are named.
///
/// Bounds: ZeroMQ's queues are capped (send and receive high-water marks) and a reply frame is
/// limited to the largest slice; libzmq buffers a whole multipart reply before it is read, so a
/// target is trusted not to send endless multipart replies (docs/ARCHITECTURE.md).
///
/// Threads: post/connect/withdraw/stop are called by the owning worker actor and hand commands to
/// the I/O thread through a queue and a doorbell; completions go to the sink from the I/O thread.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <queue>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <zmq.hpp>

#include "memory/region_registry.hpp"
#include "transport/data_path.hpp"
#include "transport/tcp/wire.hpp"
#include "transport/zmtp/net.hpp"

namespace kvferry::transport {

/// One ZeroMQ context, shared by an engine's TCP data paths.
[[nodiscard]] caf::expected<std::shared_ptr<zmq::context_t>> make_zmq_context(int io_threads = 1);

struct tcp_path_options {
  /// Slices in flight per peer connection.
  uint32_t window_slices = 1024;
  /// Bytes in flight per peer connection.
  uint64_t window_bytes = 64ULL << 20;
  /// Sent slices past their deadline and still unanswered, per peer, before the connection is
  /// reset (the fate of such WRITEs is then unknown; withdrawals name the peer).
  uint32_t max_expired = 4096;
};

struct tcp_path_counters {
  uint64_t sent = 0;
  uint64_t replies = 0;
  /// Replies that matched no slice in flight (late after withdrawal or deadline, or unknown).
  uint64_t unmatched_replies = 0;
  uint64_t malformed_replies = 0;
  uint64_t disconnects = 0;
  /// Slices given up at their deadline (window slot freed).
  uint64_t expired = 0;
  /// READ replies not copied because the slice's gate was closed (its task already terminal).
  uint64_t gated_replies = 0;
};

class tcp_path final : public data_path {
public:
  /// `local` is the registry of the segment that owns this data path (leases on its memory).
  tcp_path(std::shared_ptr<zmq::context_t> context, std::shared_ptr<memory::region_registry> local,
           tcp_path_options options = {});
  ~tcp_path() override;

  /// Checks a descriptor's tcp endpoint (what connect() will accept), with a clear error.
  [[nodiscard]] static caf::error check_endpoint(const memory::segment_descriptor& peer);

  [[nodiscard]] const capabilities& caps() const noexcept override { return caps_; }
  void set_sink(completion_sink sink) override;
  void set_gates(std::shared_ptr<slice_gates> gates) override;
  [[nodiscard]] caf::expected<uint32_t> connect(const memory::segment_descriptor& peer) override;
  void post(std::span<const slice_op> ops) override;
  void withdraw(std::span<const uint64_t> ids, std::chrono::steady_clock::time_point deadline,
                std::function<void(unsettled_segments)> done) override;
  void stop() override;

  [[nodiscard]] tcp_path_counters counters() const;

private:
  struct peer_state;
  struct entry;
  struct withdrawal;
  struct command;

  void run();
  void handle_commands(std::vector<command>& commands);
  bool open_socket(peer_state& peer);
  void close_socket(peer_state& peer);
  void reset_peer(uint32_t index, errc code, const char* why);
  void pump(uint32_t index);
  /// Sends the slices in batch_ids_ (one or more) to peer `index` as one request; false when
  /// ZeroMQ's queue is full (the slices go back to the front of the queue).
  bool send_batch(uint32_t index);
  void receive(uint32_t index);
  void handle_reply(uint32_t index, const wire::reply_header& reply, const uint8_t* data);
  void handle_monitor(uint32_t index);
  void check_timers();
  void fence_region(const memory::region_state* state);
  void complete(uint64_t id, errc code, bool retryable, uint64_t bytes);
  /// Forgets a sent entry (after its reply, its peer's reset, or its withdrawal): settles or
  /// unsettles the withdrawal waiting on it.
  void forget(uint64_t id, bool settled);
  void fail_sent(uint32_t index, errc code);
  void finish_withdrawals(bool force);
  void flush_completions();

  capabilities caps_;
  std::shared_ptr<zmq::context_t> context_;
  std::shared_ptr<memory::region_registry> local_;
  tcp_path_options options_;
  zmtp::doorbell wakeup_;
  uint64_t fence_listener_ = 0;
  /// WRITE payloads lent to ZeroMQ and not yet released (shared with ZeroMQ's free callback).
  std::shared_ptr<std::atomic<int64_t>> outstanding_;

  // Shared with callers (worker actor thread) and the fence listener.
  mutable std::mutex mutex_;
  std::vector<command> inbox_;
  std::unordered_map<std::string, uint32_t> peer_index_; // segment name -> index
  uint32_t peer_count_ = 0;
  completion_sink sink_;
  std::shared_ptr<slice_gates> gates_;
  std::atomic<bool> stopping_{false};
  /// True while the I/O thread is (about to be) blocked in zmq_poll.
  std::atomic<bool> io_idle_{false};
  // Counters, written by the I/O thread only (relaxed atomics: no lock on the hot path).
  std::atomic<uint64_t> sent_{0}, replies_{0}, unmatched_replies_{0}, malformed_replies_{0},
    disconnects_{0}, expired_{0}, gated_{0};

  // I/O thread only.
  std::vector<std::unique_ptr<peer_state>> peers_;
  std::unordered_map<uint64_t, entry> pending_;
  /// (deadline, id) of every slice posted; stale entries are skipped when popped.
  std::priority_queue<std::pair<std::chrono::steady_clock::time_point, uint64_t>,
                      std::vector<std::pair<std::chrono::steady_clock::time_point, uint64_t>>,
                      std::greater<>>
    deadlines_;
  std::map<uint64_t, withdrawal> withdrawals_;
  uint64_t next_withdrawal_ = 1;
  std::vector<slice_completion> completions_;
  std::vector<uint64_t> batch_ids_;            // slices of the frame being built
  std::vector<wire::reply_header> replies_in_; // entries of the reply being read
  uint64_t next_monitor_ = 0;
  std::thread thread_;
};

} // namespace kvferry::transport
