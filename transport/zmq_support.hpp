#pragma once
/// Small ZeroMQ helpers shared by the TCP data path and the TCP server: a shared context, an
/// eventfd doorbell that wakes a zmq_poll loop, and rate-limited logging of peer misbehaviour.

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include <zmq.hpp>

namespace kvferry::transport {

/// One ZeroMQ context, shared by the data paths and the server of an engine.
[[nodiscard]] std::shared_ptr<zmq::context_t> make_zmq_context(int io_threads = 1);

/// An eventfd that other threads ring to wake a thread blocked in zmq_poll.
class doorbell {
public:
  doorbell();
  ~doorbell();
  doorbell(const doorbell&) = delete;
  doorbell& operator=(const doorbell&) = delete;

  [[nodiscard]] int fd() const noexcept { return fd_; }
  void ring() noexcept;
  /// Clears pending rings (called by the polling thread).
  void drain() noexcept;

private:
  int fd_;
};

/// Counts an event and says whether to log it: the first 10, then every 1000th.
class log_limiter {
public:
  bool should_log() noexcept {
    auto n = count_.fetch_add(1, std::memory_order_relaxed);
    return n < 10 || n % 1000 == 0;
  }
  [[nodiscard]] uint64_t count() const noexcept { return count_.load(std::memory_order_relaxed); }

private:
  std::atomic<uint64_t> count_{0};
};

/// Parses "tcp://host:port"; false when it is not of that shape.
[[nodiscard]] bool parse_tcp_endpoint(const std::string& endpoint, std::string& host,
                                      uint16_t& port);

} // namespace kvferry::transport
