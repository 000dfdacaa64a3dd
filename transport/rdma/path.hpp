#pragma once
/// The RDMA data path of one NIC: its device context, protection domain, completion queue, memory
/// registrations and queue pairs (transport/rdma/verbs.hpp), driven by one worker actor.
///
/// Initiator side:
///   - connect(descriptor) picks the peer's NIC for this one (this NIC's ordinal modulo the peer's
///     NIC count, so NIC i of each node pairs with NIC i of the other) and remembers the regions'
///     keys for it. Queue pairs are made lazily: the first slice to a peer NIC starts a handshake
///     over the control plane (transport/rdma/handshake.hpp); slices wait for it until their
///     deadline.
///   - An endpoint (to one peer NIC) has `qp_per_endpoint` RC queue pairs; slices are posted round
///     robin as signalled RDMA READ/WRITE work requests, at most `max_wr` outstanding per queue
///     pair (more wait in order). Completions are polled on the path's own thread.
///   - Endpoints are cached per peer NIC, at most `max_endpoints`; evicting one destroys its queue
///     pairs (counted).
/// Target side: accept() answers a peer's handshake: it makes as many queue pairs, connects them
/// (INIT -> RTR -> RTS) and keeps them, keyed by the peer's node and NIC (a new handshake from the
/// same NIC replaces the old queue pairs), at most `max_endpoints` (the oldest is destroyed).
///
/// Failure:
///   - A failed completion fails its slice as retryable (the coordinator retries it on another
///     worker, i.e. another NIC pair, within the task's deadline). Its queue pair is then in ERROR:
///     the endpoint is retired (its other work requests flush and are retried the same way), its
///     queue pairs are destroyed once drained, and the next slice to that peer NIC handshakes anew.
///   - A work request unanswered for `completion_timeout` (or past its slice's deadline) moves its
///     queue pair to ERROR, which flushes it: a live but mute peer cannot hold a slice.
///   - `nic_error_limit` failed completions in a row pause the NIC: slices posted to it fail at
///     once (retryable) so they move to the other NICs; after `probe_first` (doubling up to
///     `probe_max`) the port is probed and the NIC resumes when it is active.
///
/// Local memory: a slice's local bytes must lie in a region registered with this NIC
/// (register_region, called by the engine's register_memory); the NIC reads and writes them
/// without the CPU, so a READ handed to the NIC may land after its task resolved, until the
/// withdrawal settles (free_batch waits for it).
///
/// GPU memory: with GPUDirect RDMA (detected at open: real verbs, a GPU, and the NVIDIA peer
/// memory module loaded) the engine registers cuda:N regions with the NIC like host memory.
/// Without it, a slice of local GPU memory is staged through a registered host buffer (16 chunks
/// of 1 MiB, allocated on first use): a WRITE's bytes are copied to it before the work request,
/// a READ's after its completion (inside the slice's gate); a slice finding no free chunk fails
/// as busy (retried). One log line says which it is.
///
/// Fencing: a fenced region (memory/fence_map.hpp) has no RDMA keys (one-sided access cannot check
/// a token); slices to it are refused with errc::not_supported, and such segments are reached over
/// TCP.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "memory/region_registry.hpp"
#include "transport/data_path.hpp"
#include "transport/rdma/handshake.hpp"
#include "transport/rdma/verbs.hpp"

namespace kvferry::transport::rdma {

/// Sends a handshake request to the control port of a node and hands its reply (or an error) to
/// `done`, on any thread, never inline.
using handshake_sender =
  std::function<void(const std::string& host, uint16_t port, std::vector<uint8_t> request,
                     std::function<void(caf::expected<std::vector<uint8_t>>)> done)>;

struct path_options {
  /// This node's segment name (sent in handshakes) and incarnation (set_identity).
  std::string self_name;
  uint64_t incarnation = 0;
  /// This NIC's position among the node's RDMA NICs (pairs NIC i with the peer's NIC i).
  uint32_t ordinal = 0;
  uint8_t port = 1;
  int gid_index = 0;
  uint32_t qp_per_endpoint = 2;
  uint32_t max_endpoints = 256;
  uint32_t max_wr = 256;
  int cq_depth = 4096;
  ibv_mtu max_mtu = IBV_MTU_4096;
  std::chrono::milliseconds completion_timeout{2000};
  uint32_t nic_error_limit = 3;
  std::chrono::milliseconds probe_first{100};
  std::chrono::milliseconds probe_max{5000};
  handshake_sender send_handshake;
};

struct path_counters {
  uint64_t handshakes_sent = 0;
  uint64_t handshakes_failed = 0;
  uint64_t handshakes_accepted = 0;
  uint64_t handshakes_refused = 0;
  uint64_t endpoints_created = 0;
  uint64_t endpoints_evicted = 0;
  uint64_t endpoints_retired = 0;
  uint64_t qps_created = 0;
  uint64_t qps_destroyed = 0;
  uint64_t wrs_posted = 0;
  uint64_t wrs_failed = 0;
  uint64_t completion_timeouts = 0;
  uint64_t nic_pauses = 0;
  uint64_t late_completions = 0;
};

class rdma_path final : public data_path, public std::enable_shared_from_this<rdma_path> {
public:
  /// Opens `nic` through `verbs`, allocates its protection domain and completion queue and
  /// starts the completion thread. Errors name the NIC and the verbs call that failed.
  [[nodiscard]] static caf::expected<std::shared_ptr<rdma_path>>
  open(std::shared_ptr<provider> verbs, const std::string& nic,
       std::shared_ptr<memory::region_registry> registry, path_options options);

  ~rdma_path() override;

  [[nodiscard]] const capabilities& caps() const noexcept override { return caps_; }
  void set_sink(completion_sink sink) override;
  [[nodiscard]] caf::expected<uint32_t> connect(const memory::segment_descriptor& peer) override;
  void post(std::span<const slice_op> ops) override;
  void withdraw(std::span<const uint64_t> ids, std::chrono::steady_clock::time_point deadline,
                std::function<void(unsettled_segments)> done) override;
  void stop() override;

  /// Registers local memory with this NIC (local write, remote read and write); returns its
  /// remote key.
  [[nodiscard]] caf::expected<uint32_t> register_region(uint64_t base, uint64_t length);
  /// Drops the registration of the region starting at `base` (no-op when absent).
  void deregister_region(uint64_t base);

  /// Target side of a handshake addressed to this NIC.
  [[nodiscard]] caf::expected<handshake_reply> accept(const handshake_request& request);

  /// This node's segment name, sent in handshakes (known once the control port is bound), and
  /// its incarnation, which handshakes addressed to it must name.
  void set_identity(std::string name, uint64_t incarnation);

  void set_gates(std::shared_ptr<slice_gates> gates) override;

  /// True when this NIC reads and writes GPU memory directly (GPUDirect RDMA).
  [[nodiscard]] bool gpudirect() const noexcept { return gpudirect_; }

  [[nodiscard]] const std::string& nic() const noexcept { return nic_; }
  [[nodiscard]] bool emulated() const noexcept { return emulated_; }
  [[nodiscard]] path_counters counters() const;
  /// Queue pairs alive now (initiator and target side).
  [[nodiscard]] size_t live_qps() const;

private:
  struct endpoint;
  struct peer_entry;
  struct inflight;
  struct withdrawal;
  using clock = std::chrono::steady_clock;

  rdma_path(std::shared_ptr<provider> verbs, std::string nic,
            std::shared_ptr<memory::region_registry> registry, path_options options);
  caf::error start();
  void run();
  void poll_completions(std::vector<slice_completion>& out);
  void check_timers(clock::time_point now, std::vector<slice_completion>& out);
  void handshake_done(const std::string& key, uint64_t generation,
                      caf::expected<std::vector<uint8_t>> reply);
  std::shared_ptr<endpoint> endpoint_for(peer_entry& peer, std::vector<std::function<void()>>& later);
  [[nodiscard]] bool start_handshake(peer_entry& peer, const std::shared_ptr<endpoint>& ep,
                                     std::vector<std::function<void()>>& later);
  void submit(const std::shared_ptr<endpoint>& ep, const slice_op& op, uint32_t rkey,
              uint32_t lkey, std::vector<slice_completion>& out);
  void pump(const std::shared_ptr<endpoint>& ep, std::vector<slice_completion>& out);
  void retire(const std::shared_ptr<endpoint>& ep, std::vector<slice_completion>& out,
              const std::string& why);
  void fail_waiting(endpoint& ep, errc code, bool retryable, std::vector<slice_completion>& out);
  void note_failure(clock::time_point now);
  void reap_retired();
  void settle_withdrawals(std::vector<std::function<void()>>& later, clock::time_point now);
  void deliver(std::vector<slice_completion>&& out);
  void wake();
  [[nodiscard]] caf::expected<uint32_t> local_key(uint64_t addr, uint64_t len) const;
  [[nodiscard]] ibv_mtu local_mtu() const;
  /// Takes a staging chunk (allocating the pool on first use); -1 when none is free.
  [[nodiscard]] caf::expected<int> take_chunk();
  void release_chunk(int chunk);
  [[nodiscard]] uint64_t chunk_addr(int chunk) const noexcept {
    return reinterpret_cast<uint64_t>(staging_mem_.get()) + uint64_t(chunk) * staging_chunk;
  }

  static constexpr uint64_t staging_chunk = 1ULL << 20;
  static constexpr int staging_chunks = 16;

  std::shared_ptr<provider> verbs_;
  std::string nic_;
  bool emulated_ = false;
  std::shared_ptr<memory::region_registry> registry_;
  path_options options_;
  capabilities caps_;
  completion_sink sink_;
  std::shared_ptr<slice_gates> gates_;
  bool gpudirect_ = false;

  // Verbs objects in creation order (destroyed in reverse): context, PD, CQ; memory regions and
  // queue pairs live in the maps below and are cleared before these in stop().
  std::unique_ptr<device_context> context_;
  std::unique_ptr<protection_domain> pd_;
  std::unique_ptr<completion_queue> cq_;
  uint16_t lid_ = 0;
  gid_bytes gid_{};

  /// The staging pool for GPU memory without GPUDirect (guarded by mutex_), registered with
  /// this NIC; destroyed before the PD.
  std::unique_ptr<uint8_t[]> staging_mem_;
  std::unique_ptr<memory_region> staging_mr_;
  std::vector<int> free_chunks_;
  bool staging_said_ = false;

  mutable std::mutex mr_mutex_;
  /// base -> (length, registration)
  std::map<uint64_t, std::pair<uint64_t, std::unique_ptr<memory_region>>> mrs_;

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  bool stopping_ = false;
  int doorbell_ = -1;
  std::thread thread_;
  std::vector<std::unique_ptr<peer_entry>> peers_;
  std::unordered_map<std::string, uint32_t> peer_index_;
  /// Initiator endpoints by "host:port/nic", most recently used first in lru_.
  std::unordered_map<std::string, std::shared_ptr<endpoint>> endpoints_;
  std::list<std::string> lru_;
  /// Endpoints in ERROR waiting for their outstanding work requests to flush.
  std::vector<std::shared_ptr<endpoint>> retired_;
  /// Target-side queue pairs by "peer/peer_nic", oldest first in passive_order_.
  std::unordered_map<std::string, std::vector<std::unique_ptr<queue_pair>>> passive_;
  std::list<std::string> passive_order_;
  std::unordered_map<uint64_t, std::unique_ptr<inflight>> inflight_;
  std::unordered_map<uint64_t, uint64_t> wr_of_slice_;
  std::vector<std::unique_ptr<withdrawal>> withdrawals_;
  uint64_t next_wr_ = 1;
  uint64_t next_generation_ = 1;
  uint32_t consecutive_failures_ = 0;
  bool paused_ = false;
  clock::time_point paused_until_{};
  std::chrono::milliseconds pause_{0};
  path_counters counters_;
};

} // namespace kvferry::transport::rdma
