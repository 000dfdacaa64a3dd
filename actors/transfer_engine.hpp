#pragma once
/// kvferry's public API: the transfer engine a serving engine embeds (prefill or decode side).
///
/// Thread-safe: any number of threads may call any method concurrently. Every fallible call
/// returns an error value (caf::error / caf::expected) whose code is a kvferry::errc and whose text
/// says what was wrong; nothing throws, asserts or aborts on bad arguments.
///
/// Model (as Mooncake's transfer engine): register local memory, open a segment by name, allocate
/// a batch of capacity N, submit requests into it, read task states, wait, free the batch. Freeing
/// a batch is allowed at any time: its unresolved tasks end CANCELED. Once a task is terminal,
/// nothing is written into its local memory (over RDMA, where the NIC writes without the CPU, a
/// READ already handed to the NIC may still land until free_batch returns, which waits for the
/// NIC to let go of it); once free_batch returns, no byte of the batch moves
/// any more, locally or at a target, unless it returns errc::unconfirmed: then the batch is freed
/// locally all the same, and the error names the segments that may still receive bytes of its
/// WRITEs (a target that did not answer within withdraw_timeout).
///
/// Memory: unregister_memory is atomic: either it fails and the region stays registered, or it
/// succeeds and no data path touches the region afterwards (transfers still using it fail).
/// After shutdown, or after the engine that owns a segment shut down, nothing reaches its memory:
/// tasks naming that segment fail with a clear error.
///
/// READ semantics: a READ returns, for each byte, a value the target memory held at some moment
/// between the request's arrival at the target and its reply's departure. A READ and a WRITE of
/// overlapping ranges that are in flight at the same time are not ordered with each other (as with
/// RDMA): to read what you wrote, wait for the WRITE to complete before submitting the READ, and
/// the other way round.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <thread>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "actors/batch_board.hpp"
#include "actors/runtime.hpp"
#include "actors/segment_owner.hpp"
#include "actors/task_state.hpp"
#include "actors/transfer_coordinator.hpp"
#include "actors/worker.hpp"
#include "config/settings.hpp"
#include "memory/region_registry.hpp"
#include "transport/control/client.hpp"
#include "transport/control/server.hpp"
#include "transport/data_path.hpp"
#include "transport/metadata/http_client.hpp"
#include "transport/rdma/path.hpp"
#include "transport/tcp/server.hpp"

namespace zmq {
class context_t;
} // namespace zmq

namespace kvferry {

using batch_id = uint64_t;
using transport::opcode;

/// One transfer: `length` bytes between local memory at `source` and the target segment's memory
/// at address `target_offset` (an address inside a region the target registered, as in Mooncake's
/// TransferRequest; the segment descriptor lists the regions' bases).
struct transfer_request {
  opcode op = opcode::read;
  void* source = nullptr;
  segment_id target_id = 0;
  uint64_t target_offset = 0;
  uint64_t length = 0;
  /// Fence token of the access: 0 = none; required by fenced regions (see register_memory), which
  /// admit the request only when the token is above the fence floor of its whole remote range;
  /// otherwise the task FAILS with errc::fenced, without a retry. Unfenced regions ignore it.
  uint64_t fence_token = 0;
};

struct submit_options {
  /// Per-task deadline; zero means the configured task_deadline.
  std::chrono::milliseconds deadline{0};
  /// "Submit with notify": sent to the target segment (of the first request) once every task of
  /// this submission is COMPLETED; never sent when any of them ends otherwise. All requests of the
  /// submission must then name the same segment.
  std::optional<std::string> notify;
};

struct engine_options {
  /// This engine's segment name; empty means "local_hostname:rpc_port" from the settings.
  std::string segment_name;
  /// The engine belongs to a store client (which uses master_server_address and
  /// local_buffer_size): those fields are not reported as unused.
  bool store_client = false;
  /// Reject remote ranges outside the target's descriptor at submit (errc::out_of_range). With
  /// false they go to the target, which refuses them and the tasks end FAILED; benchmarks use this
  /// to probe a segment's edges.
  bool check_remote_bounds = true;
  /// Data paths to use instead of the ones the settings choose (tests and benchmarks inject the
  /// fault-injecting path here). One worker actor is spawned per data path.
  std::vector<std::shared_ptr<transport::data_path>> data_paths;
};

class transfer_engine {
public:
  /// Creates an engine (one segment) on `rt`.
  [[nodiscard]] static caf::expected<std::unique_ptr<transfer_engine>>
  create(std::shared_ptr<runtime> rt, const config::settings& settings, engine_options options = {});

  ~transfer_engine();
  transfer_engine(const transfer_engine&) = delete;
  transfer_engine& operator=(const transfer_engine&) = delete;

  [[nodiscard]] const std::string& segment_name() const noexcept { return name_; }
  [[nodiscard]] const config::settings& settings() const noexcept { return settings_; }

  // -- memory ---------------------------------------------------------------------------------

  /// Registers [addr, addr+length) at `location` ("cpu:N", "cuda:N", "*"). A `fenced` region (a
  /// store's segment) admits an access, from any data path and any node, only when the request's
  /// fence_token is non-zero and above the fence floor of every byte it names (every floor starts
  /// at 0 and is raised by fence()); others fail with errc::fenced. Floors last as long as the
  /// registration. An unfenced region ignores tokens.
  [[nodiscard]] caf::error register_memory(void* addr, size_t length,
                                           std::string_view location = "cpu:0",
                                           bool fenced = false);
  /// Raises the fence floor of [addr, addr+length) of the fenced region that starts at
  /// `region_base` to `floor` (a floor never goes down): typically when the allocation whose token
  /// is `floor` is freed, so that a late READ or WRITE aimed at it cannot reach whatever reuses
  /// the space. Returns once no access with a token <= `floor` to the range is in progress or can
  /// start on any data path: connections of other nodes with such an access in progress are
  /// closed (their remaining bytes never land), same-process copies are waited for. Errors:
  /// unknown_region (no region starts at `region_base`), invalid_argument (the region is not
  /// fenced, or the range is empty or not inside it), busy (a data path did not confirm within
  /// withdraw_timeout; the floor is raised all the same).
  [[nodiscard]] caf::error fence(void* region_base, uint64_t addr, uint64_t length, uint64_t floor);
  /// Unregisters the region that starts at `addr` (see "Memory" above): transfers still using it
  /// are made to let go (they fail); errc::busy, with the region still registered, if they do not
  /// within withdraw_timeout.
  [[nodiscard]] caf::error unregister_memory(void* addr);

  // -- segments -------------------------------------------------------------------------------

  /// Opens a segment by name and returns its id; opening it again refreshes its descriptor (after
  /// the peer registered more memory or restarted) and returns the same id. A peer's descriptor is
  /// validated (name, endpoints, regions) before use. Fails within open_timeout when the peer's
  /// node does not answer.
  [[nodiscard]] caf::expected<segment_id> open_segment(const std::string& name);
  /// The descriptor fetched by the last open_segment.
  [[nodiscard]] caf::expected<memory::segment_descriptor> segment_descriptor(segment_id id) const;

  // -- batches --------------------------------------------------------------------------------

  [[nodiscard]] caf::expected<batch_id> allocate_batch(size_t capacity);
  /// Frees the batch; unresolved tasks end CANCELED. Fails with unknown_batch on a double free, and
  /// with errc::unconfirmed (the batch is freed all the same) when a target did not confirm in
  /// time that withdrawn WRITEs move no more bytes; the error names those segments.
  [[nodiscard]] caf::error free_batch(batch_id batch);

  /// Submits requests as tasks [first, first + requests.size()) of the batch; returns `first`.
  /// All or nothing: one bad request rejects the call and creates no task.
  [[nodiscard]] caf::expected<uint32_t> submit(batch_id batch,
                                               std::span<const transfer_request> requests,
                                               submit_options options = {});

  [[nodiscard]] caf::expected<transfer_status> status(batch_id batch, uint32_t task) const;
  [[nodiscard]] caf::expected<batch_summary> batch_status(batch_id batch) const;
  /// Waits until every submitted task of the batch is terminal; errc::timeout after `timeout`.
  [[nodiscard]] caf::expected<batch_summary> wait(batch_id batch, std::chrono::milliseconds timeout);

  // -- notifications --------------------------------------------------------------------------

  /// Sends a short message (at most 64 KiB) to the engine that owns segment `target` and waits
  /// for it to be queued there: errc::busy when the target's inbox is full (bounded by
  /// notify_inbox_messages and notify_inbox_bytes), a timeout after open_timeout.
  [[nodiscard]] caf::error notify(segment_id target, std::string message);
  /// Takes the notifications this engine received so far, oldest first.
  [[nodiscard]] caf::expected<std::vector<notification>> get_notifies();

  // -- introspection --------------------------------------------------------------------------

  [[nodiscard]] caf::expected<coordinator_stats> stats() const;
  /// Counters of this node's TCP data-plane server (zero without one).
  [[nodiscard]] transport::tcp_server_counters server_counters() const;
  /// Notifications waiting for get_notifies, and those refused because the inbox was full.
  [[nodiscard]] caf::expected<std::pair<uint64_t, uint64_t>> notification_counters() const;
  /// Counters of this node's control-plane server (zero without one).
  [[nodiscard]] transport::control::server_counters control_counters() const;
  /// The most memory other nodes can make this engine hold through its ports (control and data
  /// servers at their worst, plus the notification inbox); 0 when it does not listen.
  /// docs/ARCHITECTURE.md, "Network surface", explains each term.
  [[nodiscard]] uint64_t network_memory_bound() const noexcept;

  /// Counters of this node's RDMA NICs, one per NIC in endpoint order (empty without RDMA).
  [[nodiscard]] std::vector<std::pair<std::string, transport::rdma::path_counters>>
  rdma_counters() const;
  /// Queue pairs alive on this node's RDMA NICs (initiator and target side).
  [[nodiscard]] size_t rdma_live_qps() const;

  /// This engine's control (rpc) port; 0 when the runtime is not networked.
  [[nodiscard]] uint16_t rpc_port() const noexcept { return rpc_port_; }

  /// Stops the engine: unresolved tasks end CANCELED, workers stop. Idempotent.
  void shutdown();

private:
  struct segment_entry {
    std::string name;
    std::shared_ptr<const memory::segment_descriptor> descriptor;
    /// Set for segments hosted in this process: their live registry (closed once their engine
    /// shut down) and their public face.
    std::weak_ptr<memory::region_registry> local;
    segment_public_actor face;
    /// Set for segments of other nodes: their node's rpc address.
    std::string host;
    uint16_t port = 0;
  };

  transfer_engine(std::shared_ptr<runtime> rt, config::settings settings, engine_options options);
  [[nodiscard]] caf::error start();
  [[nodiscard]] caf::error start_network(caf::actor_system& sys);
  /// Opens the RDMA provider and one data path per selected NIC ("protocol": "rdma").
  [[nodiscard]] caf::error start_rdma();
  /// With an http:// metadata_server: publishes this node's entry (with the metadata TTL) and
  /// starts the thread that refreshes it and watches the entries of the segments opened.
  [[nodiscard]] caf::error start_metadata();
  void metadata_loop();
  void stop_metadata();
  /// The rpc address a metadata entry names for `name`.
  [[nodiscard]] caf::expected<std::pair<std::string, uint16_t>> lookup_segment(const std::string& name);
  /// Location -> indices of the RDMA workers preferred for it (NIC priority matrix, configured or
  /// discovered); RDMA worker k has index first_rdma_worker + k.
  [[nodiscard]] std::map<std::string, std::vector<uint32_t>>
  nic_preferences(uint32_t first_rdma_worker) const;
  [[nodiscard]] std::shared_ptr<batch_board> find_batch(batch_id batch) const;
  [[nodiscard]] caf::expected<segment_entry> resolve_segment(const std::string& name);
  /// How a notification reaches segment `entry` without blocking (submit with notify).
  [[nodiscard]] std::function<void(std::string, std::string)>
  notifier(const segment_entry& entry) const;

  std::shared_ptr<runtime> runtime_;
  config::settings settings_;
  engine_options options_;
  std::string name_;
  std::shared_ptr<memory::region_registry> registry_;
  segment_owner_actor owner_;
  segment_public_actor face_;
  uint16_t rpc_port_ = 0;
  uint64_t incarnation_ = 0;
  std::unique_ptr<transport::control::server> control_server_;
  std::shared_ptr<transport::control::client> control_client_;
  std::shared_ptr<zmq::context_t> zmq_context_;
  std::unique_ptr<transport::tcp_server> server_;
  std::shared_ptr<transport::slice_gates> gates_;
  coordinator_actor coordinator_;
  std::vector<worker_actor> workers_;
  std::vector<std::shared_ptr<transport::data_path>> paths_;
  /// "protocol": "rdma": the provider and one path per NIC (also in paths_); fixed after start.
  std::shared_ptr<transport::rdma::provider> verbs_;
  std::vector<std::shared_ptr<transport::rdma::rdma_path>> rdma_paths_;
  /// http:// metadata: the client, the refresher/watcher thread and its stop flag.
  std::unique_ptr<transport::metadata::http_client> metadata_;
  std::thread metadata_thread_;
  std::mutex metadata_mutex_;
  std::condition_variable metadata_wake_;
  bool metadata_stop_ = false;

  /// Held shared by calls that send work to the coordinator, exclusively by shutdown().
  mutable std::shared_mutex lifecycle_mutex_;
  /// Set by shutdown() (and by a failed start, which leaves nothing to stop).
  std::atomic<bool> stopped_{false};

  mutable std::shared_mutex batches_mutex_;
  std::unordered_map<batch_id, std::shared_ptr<batch_board>> batches_;
  batch_id next_batch_ = 1;

  mutable std::shared_mutex segments_mutex_;
  std::vector<segment_entry> segments_;
};

} // namespace kvferry
