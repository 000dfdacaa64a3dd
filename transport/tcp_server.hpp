#pragma once
/// The target side of the ZeroMQ TCP data plane: one ROUTER socket on the node's data port, served
/// by one thread. Every request is decoded and checked before memory is touched: the whole range
/// must lie inside one region of the segment's registry (the live snapshot the segment owner
/// publishes) and must address this incarnation of the segment. Each request gets an explicit
/// status; a WRITE is acknowledged only after its bytes are in place. A malformed or hostile frame
/// is refused and logged (rate-limited) and the server keeps serving.
///
/// READ replies send registered host memory without copying; unregistering a region therefore
/// waits, through wait_unreferenced(), until no reply still points into it.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <caf/expected.hpp>
#include <zmq.hpp>

#include "memory/region_registry.hpp"
#include "transport/tcp_wire.hpp"
#include "transport/zmq_support.hpp"

namespace kvferry::transport {

struct tcp_server_options {
  /// Address to bind, e.g. "127.0.0.1" or "0.0.0.0".
  std::string bind_host = "127.0.0.1";
  /// Address peers use to reach this server (goes into the descriptor's endpoint).
  std::string advertised_host = "127.0.0.1";
  /// 0 picks a free port.
  uint16_t port = 0;
  /// This segment's incarnation; requests addressed to another one are refused.
  uint64_t incarnation = 0;
  /// Name of the segment, for log messages.
  std::string segment_name;
};

struct tcp_server_counters {
  uint64_t requests = 0;
  uint64_t reads = 0;
  uint64_t writes = 0;
  uint64_t bytes = 0;
  /// Well-formed requests refused (out of range, stale incarnation).
  uint64_t refused = 0;
  /// Frames that failed validation.
  uint64_t malformed = 0;
};

class tcp_server {
public:
  [[nodiscard]] static caf::expected<std::unique_ptr<tcp_server>>
  start(std::shared_ptr<zmq::context_t> context, std::shared_ptr<memory::region_registry> registry,
        tcp_server_options options);

  ~tcp_server();
  tcp_server(const tcp_server&) = delete;
  tcp_server& operator=(const tcp_server&) = delete;

  /// "tcp://advertised_host:port", for the segment descriptor.
  [[nodiscard]] const std::string& endpoint() const noexcept { return endpoint_; }
  [[nodiscard]] uint16_t port() const noexcept { return port_; }

  /// Blocks until the server has seen the registry's current snapshot and no READ reply still
  /// references registered memory; false after `timeout`.
  bool wait_unreferenced(std::chrono::milliseconds timeout);

  [[nodiscard]] tcp_server_counters counters() const noexcept;

  /// Stops the thread and closes the socket. Idempotent.
  void stop();

private:
  tcp_server(std::shared_ptr<zmq::context_t> context,
             std::shared_ptr<memory::region_registry> registry, tcp_server_options options);
  void run();
  void serve_one(zmq::socket_t& socket, const memory::region_table& regions);
  void refuse_frame(const char* why, size_t frames, size_t size);

  std::shared_ptr<zmq::context_t> context_;
  std::shared_ptr<memory::region_registry> registry_;
  tcp_server_options options_;
  zmq::socket_t socket_;
  std::string endpoint_;
  uint16_t port_ = 0;
  doorbell wakeup_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> iterations_{0};
  /// Zero-copy READ replies zmq has not released yet; shared with zmq's free callback.
  std::shared_ptr<std::atomic<int64_t>> outstanding_;
  std::atomic<uint64_t> requests_{0}, reads_{0}, writes_{0}, bytes_{0}, refused_{0};
  log_limiter malformed_;
  // Scratch space of the serving thread, reused across messages.
  std::vector<wire::request_header> entries_;
  std::vector<wire::reply_header> replies_;
  std::vector<const memory::region*> regions_;
  std::thread thread_;
};

} // namespace kvferry::transport
