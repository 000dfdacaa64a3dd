#pragma once
/// The target side of the TCP data plane: kvferry's ZMTP server (transport/zmtp) on the node's
/// data port, one thread. Initiators are ZeroMQ DEALERs (kvferry's tcp data path uses libzmq).
///
/// Every request is decoded and checked before memory is touched: each entry's whole range must
/// lie inside one region of the segment's registry and address this incarnation of the segment,
/// and the data frame's size must match the WRITE entries. Each entry gets an explicit status; a
/// request whose entries cannot all be decoded gets errc::malformed_frame for every entry whose id
/// is readable. A WRITE's bytes go from the socket straight into the checked registered memory and
/// are acknowledged once all of them are in place.
///
/// Fenced regions (memory/fence_map.hpp): an entry addressed to a fenced region is admitted only
/// when its token is above the fence floor of its whole range (else errc::fenced). Fencing a range
/// closes every connection with an admitted access to it still in progress.
///
/// READ guarantee: a READ reply is sent from registered memory without a copy (device memory is
/// staged through the host); its bytes are read from memory as the reply leaves, so each byte holds
/// a value the target memory had at some moment between the request's arrival and the reply's
/// departure. Operations in flight at the same time on overlapping ranges (a READ and a WRITE, from
/// any initiators) are not ordered with each other, as with RDMA: wait for one to complete before
/// submitting the other when the order matters.
///
/// Bounds (server_limits): connections (in all and per host), reply messages and reply bytes
/// queued per connection (the server stops reading a peer that does not read its replies), bytes
/// copied into replies over all connections, the handshake time. docs/ARCHITECTURE.md gives the
/// resulting memory bound.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include <caf/expected.hpp>

#include "memory/region_registry.hpp"
#include "transport/tcp/wire.hpp"
#include "transport/zmtp/server.hpp"

namespace kvferry::transport {

/// Bounds on what peers of one server may cost.
struct server_limits {
  size_t max_connections = 1024;
  size_t max_connections_per_host = 1024;
  std::chrono::milliseconds handshake_timeout{10000};
  /// Reply messages queued for one peer before the server stops reading its requests.
  size_t peer_max_queued_messages = 256;
  /// Reply bytes (lent or copied) queued for one peer before the server stops reading it.
  size_t peer_max_queued_bytes = 64ULL << 20;
  /// Bytes copied into queued replies (headers, device memory staged to the host), all peers.
  size_t reply_budget = 256ULL << 20;
};

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
  server_limits limits;
};

struct tcp_server_counters {
  uint64_t requests = 0;
  uint64_t reads = 0;
  uint64_t writes = 0;
  uint64_t bytes = 0;
  /// Of `bytes`: sent in READ replies, and received by WRITEs.
  uint64_t read_bytes = 0;
  uint64_t write_bytes = 0;
  /// Well-formed requests refused (out of range, stale incarnation, budget).
  uint64_t refused = 0;
  /// Of `refused`, by reason: outside every registered region (or being unregistered), addressed
  /// to an earlier incarnation, fenced, reply budget spent (device memory staging).
  uint64_t refused_out_of_range = 0;
  uint64_t refused_stale_incarnation = 0;
  uint64_t refused_fenced = 0;
  uint64_t refused_busy = 0;
  /// Requests (messages) that failed validation.
  uint64_t malformed = 0;
  zmtp::server_counters connections;
};

/// What the data protocol of every connection of one server shares.
struct data_plane {
  std::shared_ptr<memory::region_registry> registry;
  std::string segment_name;
  uint64_t incarnation = 0;
  server_limits limits;
  std::atomic<uint64_t> requests{0}, reads{0}, writes{0}, bytes{0}, refused{0}, malformed{0};
  std::atomic<uint64_t> read_bytes{0}, write_bytes{0};
  std::atomic<uint64_t> refused_out_of_range{0}, refused_stale_incarnation{0}, refused_fenced{0},
    refused_busy{0};
};

/// What one connection of a data-plane server can hold at most besides its queued replies: the
/// input buffer, the connection and protocol objects, and a request of the most entries being
/// read. (Queued replies are charged to reply_budget.)
inline constexpr uint64_t data_connection_bytes = 192ULL << 10;

/// The most memory a data-plane server's peers can make it hold: every connection at its worst
/// plus the whole reply budget.
[[nodiscard]] inline uint64_t memory_bound(const server_limits& l) {
  return l.max_connections * data_connection_bytes + l.reply_budget;
}

/// The data protocol for one connection (what tcp_server runs; the fuzz target drives it over a
/// socket pair): decodes requests, checks them against `plane`'s registry, moves the bytes,
/// queues the replies, charging `replies`.
[[nodiscard]] std::unique_ptr<zmtp::protocol> make_data_protocol(zmtp::budget& replies,
                                                                 std::shared_ptr<data_plane> plane);

class tcp_server {
public:
  [[nodiscard]] static caf::expected<std::unique_ptr<tcp_server>>
  start(std::shared_ptr<memory::region_registry> registry, tcp_server_options options);

  ~tcp_server();
  tcp_server(const tcp_server&) = delete;
  tcp_server& operator=(const tcp_server&) = delete;

  /// "tcp://advertised_host:port", for the segment descriptor.
  [[nodiscard]] const std::string& endpoint() const noexcept { return endpoint_; }
  [[nodiscard]] uint16_t port() const noexcept { return server_->port(); }

  [[nodiscard]] tcp_server_counters counters() const noexcept;

  /// Stops the thread and closes every connection. Idempotent.
  void stop();

private:
  tcp_server() = default;

  std::shared_ptr<memory::region_registry> registry_;
  std::shared_ptr<data_plane> shared_;
  std::shared_ptr<zmtp::server> server_;
  std::string endpoint_;
  uint64_t fence_listener_ = 0;
  uint64_t range_fence_listener_ = 0;
};

} // namespace kvferry::transport
