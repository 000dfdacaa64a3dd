#pragma once
/// The initiator side of the ZeroMQ TCP data plane (kvferry's fallback where there is no RDMA).
///
/// One I/O thread per data path owns one persistent DEALER connection per peer (no connection per
/// request), keeps many slices in flight per connection (bounded by a window), sends WRITE data
/// straight from registered memory (zero-copy), and copies READ replies into place. Device (cuda:N)
/// memory is staged through host memory: a device pointer never reaches a socket call.
///
/// A WRITE completes only when the target replies that the bytes are in place. A lost connection
/// fails the slices sent on it (retryable); a peer that stays down fails new slices at once; the
/// coordinator's deadline bounds everything else (a stalled peer).
///
/// Threads: post/connect/withdraw/stop are called by the owning worker actor and hand commands to
/// the I/O thread through a queue and a doorbell; completions go to the sink from the I/O thread.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <zmq.hpp>

#include "transport/data_path.hpp"
#include "transport/tcp_wire.hpp"
#include "transport/zmq_support.hpp"

namespace kvferry::transport {

struct tcp_path_options {
  /// Slices in flight per peer connection.
  uint32_t window_slices = 1024;
  /// Bytes in flight per peer connection.
  uint64_t window_bytes = 64ULL << 20;
  /// A first connection that is not up by then fails its queued slices.
  std::chrono::milliseconds connect_timeout{3000};
  /// A withdrawal still waiting for zmq to release WRITE data after this long resets the peer's
  /// connection, which releases it.
  std::chrono::milliseconds withdraw_reset_after{200};
};

struct tcp_path_counters {
  uint64_t sent = 0;
  uint64_t replies = 0;
  /// Replies that matched no slice in flight (late after withdrawal, or unknown).
  uint64_t unmatched_replies = 0;
  uint64_t malformed_replies = 0;
  uint64_t disconnects = 0;
};

class tcp_path final : public data_path {
public:
  tcp_path(std::shared_ptr<zmq::context_t> context, tcp_path_options options = {});
  ~tcp_path() override;

  [[nodiscard]] const capabilities& caps() const noexcept override { return caps_; }
  void set_sink(completion_sink sink) override;
  [[nodiscard]] caf::expected<uint32_t> connect(const memory::segment_descriptor& peer) override;
  void post(std::span<const slice_op> ops) override;
  void withdraw(std::span<const uint64_t> ids, std::function<void()> done) override;
  void stop() override;

  [[nodiscard]] tcp_path_counters counters() const;

private:
  struct zc_token;
  struct peer_state;
  struct entry;
  struct withdrawal;
  struct command;

  void run();
  void handle_commands(std::vector<command>& commands);
  void open_socket(peer_state& peer);
  void close_socket(peer_state& peer);
  void reset_peer(uint32_t index, errc code);
  void pump(uint32_t index);
  /// Sends the slices in batch_ids_ (one or more) to peer `index` as one request.
  void send_batch(uint32_t index);
  void receive(uint32_t index);
  void handle_reply(uint32_t index, const wire::reply_header& reply, const uint8_t* data);
  void handle_monitor(uint32_t index);
  void check_timers();
  void complete(uint64_t id, errc code, bool retryable, uint64_t bytes);
  void fail_peer_entries(uint32_t index, errc code, bool sent_only);
  void flush_completions();

  capabilities caps_;
  std::shared_ptr<zmq::context_t> context_;
  tcp_path_options options_;
  doorbell wakeup_;

  // Shared with callers (worker actor thread).
  mutable std::mutex mutex_;
  std::vector<command> inbox_;
  std::unordered_map<std::string, uint32_t> peer_index_; // segment name -> index
  uint32_t peer_count_ = 0;
  completion_sink sink_;
  std::atomic<bool> stopping_{false};
  /// True while the I/O thread is (about to be) blocked in zmq_poll.
  std::atomic<bool> io_idle_{false};
  // Counters, written by the I/O thread only (relaxed atomics: no lock on the hot path).
  std::atomic<uint64_t> sent_{0}, replies_{0}, unmatched_replies_{0}, malformed_replies_{0},
    disconnects_{0};

  // I/O thread only.
  std::vector<std::unique_ptr<peer_state>> peers_;
  std::unordered_map<uint64_t, entry> pending_;
  std::vector<withdrawal> withdrawals_;
  std::vector<slice_completion> completions_;
  std::vector<uint64_t> batch_ids_;           // slices of the frame being built
  std::vector<wire::reply_header> replies_in_; // entries of the reply being read
  uint64_t next_monitor_ = 0;
  std::thread thread_;
};

} // namespace kvferry::transport
