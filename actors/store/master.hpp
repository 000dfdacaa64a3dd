#pragma once
/// Role: store master. One actor owns the store's state (master_state.hpp: objects, allocations,
/// leases, eviction, client liveness) and answers every client request; nothing else touches that
/// state, so requests are applied one at a time, in arrival order.
///
/// Protocol (local: the master node's control server forwards each client call here):
///   call(method, payload) -> payload   one store request, encoded as transport/store/wire.hpp
///                                      says; errors (bad input, unknown client) come back as
///                                      error values that name what was wrong
///   tick                               (sent to itself every tick_interval) applies deadlines
///
/// Requests answered later than they arrive:
///   watch    held until the client has work, or for watch_interval (the long poll that is the
///            client's heartbeat); a newer watch of the same client answers the held one
///   put_end  answered when every entry's holders committed it (or commit_timeout passed)
///
///   client --call--> [control server thread] --call--> master actor --reply/promise--> client

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include "actors/atoms.hpp"
#include "actors/runtime.hpp"
#include "actors/store/master_state.hpp"
#include "transport/control/server.hpp"

namespace kvferry::store {

using master_actor = caf::typed_actor<
  caf::replies_to<call_atom, uint16_t, std::vector<uint8_t>>::with<std::vector<uint8_t>>,
  caf::reacts_to<tick_atom>>;

struct master_options {
  master_config policy;
  /// How often deadlines are applied.
  milliseconds tick_interval{50};
};

[[nodiscard]] master_actor spawn_master(caf::actor_system& sys, master_options options,
                                        uint64_t master_id);

/// A master node: the actor plus the port clients call it on (`kvferry master`, and tests that
/// run a master in process).
class master_node {
public:
  struct options {
    master_options master;
    std::string bind_host = "0.0.0.0";
    uint16_t port = 0;
    transport::server_limits limits;
    /// Largest request frame a client may send (batched requests with long keys), and largest
    /// reply the master sends (replica lists of a large batch, a watch with much work).
    size_t max_request_frame = 4ULL << 20;
    size_t max_reply_frame = 16ULL << 20;
    /// Bytes of replies (and requests being answered) held over all connections.
    size_t reply_budget = 64ULL << 20;
  };

  [[nodiscard]] static caf::expected<std::unique_ptr<master_node>> start(options o);
  ~master_node();
  master_node(const master_node&) = delete;
  master_node& operator=(const master_node&) = delete;

  [[nodiscard]] uint16_t port() const noexcept { return port_; }
  [[nodiscard]] uint64_t master_id() const noexcept { return master_id_; }
  [[nodiscard]] transport::control::server_counters counters() const noexcept;
  /// The store's report (JSON, as client::master_stats returns it; docs/ARCHITECTURE.md, "The
  /// report"), asked of the master actor; errc::timeout when it does not answer within `timeout`.
  [[nodiscard]] caf::expected<std::string> report(milliseconds timeout = milliseconds{5000}) const;
  /// The options it was started with.
  [[nodiscard]] const options& started_with() const noexcept { return options_; }
  /// The most memory clients can make the master's port hold.
  [[nodiscard]] uint64_t network_memory_bound() const noexcept { return bound_; }
  /// Stops the port and the actor. Idempotent.
  void stop();

private:
  master_node() = default;
  std::shared_ptr<runtime> runtime_;
  master_actor actor_;
  std::unique_ptr<transport::control::server> server_;
  uint16_t port_ = 0;
  uint64_t master_id_ = 0;
  uint64_t bound_ = 0;
  options options_;
};

} // namespace kvferry::store
