#pragma once
/// The one interface every data path implements (same-process memcpy, ZeroMQ TCP, RDMA verbs,
/// the fault-injecting test path). A worker actor owns exactly one data path and is the only
/// caller of post/withdraw/connect; completions flow back through the sink it installed.
///
/// The interface is shaped for one-sided RDMA (a slice names a remote address and a remote key
/// and moves without the remote CPU) and equally for two-sided TCP (the remote node's server
/// checks and serves each slice).
///
/// This header includes nothing from actors/: transports know nothing about actors.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <caf/expected.hpp>
#include <caf/meta/type_name.hpp>

#include "config/error.hpp"
#include "memory/location.hpp"
#include "memory/segment_descriptor.hpp"

namespace kvferry::transport {

enum class opcode : uint8_t {
  /// Remote memory -> local memory.
  read = 0,
  /// Local memory -> remote memory.
  write = 1,
};

/// One slice to move. `id` is opaque to the data path and echoed in the completion.
struct slice_op {
  uint64_t id = 0;
  opcode op = opcode::read;
  /// Peer index returned by `data_path::connect`.
  uint32_t peer = 0;
  /// RDMA remote key of the remote region (0 for transports that need none).
  uint32_t remote_key = 0;
  uint64_t local_addr = 0;
  uint64_t remote_addr = 0;
  uint64_t length = 0;
  memory::location local_where;
  /// The task's deadline (steady clock, nanoseconds since its epoch): a slice still waiting for a
  /// connection, or sent and unanswered, is given up at this time and its window slot freed.
  int64_t deadline_ns = 0;
  /// Fence token of the access (memory/fence_map.hpp): 0 = none. A fenced target region admits the
  /// slice only when the token is above the fence floor of its whole remote range (else
  /// errc::fenced, which is not retried); unfenced regions ignore it.
  uint64_t fence_token = 0;

  [[nodiscard]] std::chrono::steady_clock::time_point deadline() const noexcept {
    return std::chrono::steady_clock::time_point(std::chrono::nanoseconds(deadline_ns));
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, slice_op& x) {
  return f(caf::meta::type_name("kvferry::slice_op"), x.id, x.op, x.peer, x.remote_key,
           x.local_addr, x.remote_addr, x.length, x.local_where, x.deadline_ns, x.fence_token);
}

/// What became of one slice.
struct slice_completion {
  uint64_t id = 0;
  /// errc::none when the bytes are in place (for a WRITE: confirmed by the target).
  errc code = errc::none;
  /// A retry on another worker may succeed (connection loss), as opposed to a refusal by the
  /// target (out of range) that would fail again.
  bool retryable = false;
  uint64_t bytes = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, slice_completion& x) {
  return f(caf::meta::type_name("kvferry::slice_completion"), x.id, x.code, x.retryable, x.bytes);
}

/// What a data path can do; declared before anything is called.
struct capabilities {
  /// "local", "tcp", "rdma", "fault".
  std::string name;
  /// Moves bytes without the remote CPU (RDMA READ/WRITE).
  bool one_sided = false;
  /// Slices must carry the remote region's key.
  bool needs_remote_key = false;
  /// Can read and write cuda:N memory directly (else the caller gets errc::not_supported).
  bool device_memory = false;
  /// Which descriptor endpoint kind it connects to ("local", "tcp", "rdma").
  std::string endpoint_kind;
};

/// Receives completions, in batches, on the data path's own thread (or inline from post()).
using completion_sink = std::function<void(std::vector<slice_completion>&&)>;

/// Lets a data path touch a slice's local memory only while the slice's owner still wants it.
/// The owner (the transfer coordinator) opens a slice's gate when it posts the slice and closes
/// it when the slice is done with (completed, retried under a new id, or its task resolved); a
/// data path enters the gate around every access to the slice's local memory that happens after
/// post() returned (copying a READ reply into place, staging a WRITE's bytes). Closing waits while
/// a data path is inside, so once a task is terminal nothing writes into its local buffer.
///
/// Slice ids are (generation << 32 | slot); a gate belongs to one slot and opens for one
/// generation at a time. Gates are allocated in chunks as slots appear and never freed while the
/// table lives.
class slice_gates {
public:
  slice_gates();
  ~slice_gates();
  slice_gates(const slice_gates&) = delete;
  slice_gates& operator=(const slice_gates&) = delete;

  /// Owner: opens the gate of `slot` for `generation`.
  void open(uint32_t slot, uint32_t generation);
  /// Owner: closes the gate of `slot`, waiting while a data path is inside.
  void close(uint32_t slot) noexcept;
  /// Data path: enters the gate of slice `id`; false when it is closed or belongs to another
  /// generation (then the slice's memory must not be touched).
  [[nodiscard]] bool enter(uint64_t id) noexcept;
  /// Data path: leaves a gate entered with enter().
  void leave(uint64_t id) noexcept;

  /// enter()/leave() as a scope.
  class pass {
  public:
    pass(slice_gates* gates, uint64_t id) noexcept
      : gates_(gates), id_(id), open_(gates == nullptr || gates->enter(id)) {}
    ~pass() {
      if (gates_ != nullptr && open_)
        gates_->leave(id_);
    }
    pass(const pass&) = delete;
    pass& operator=(const pass&) = delete;
    explicit operator bool() const noexcept { return open_; }

  private:
    slice_gates* gates_;
    uint64_t id_;
    bool open_;
  };

private:
  static constexpr uint32_t chunk_bits = 12;
  static constexpr uint32_t chunk_size = 1u << chunk_bits;
  static constexpr uint32_t max_chunks = 1u << 14;
  std::atomic<uint64_t>* word(uint32_t slot, bool create);

  std::unique_ptr<std::atomic<std::atomic<uint64_t>*>[]> chunks_;
};

/// What a withdrawal could not settle: the names of the segments that may still receive bytes of
/// the withdrawn slices (a WRITE sent and neither acknowledged nor refused by its deadline).
using unsettled_segments = std::vector<std::string>;

class data_path {
public:
  virtual ~data_path() = default;

  [[nodiscard]] virtual const capabilities& caps() const noexcept = 0;

  /// Installs the sink; called once before the first post.
  virtual void set_sink(completion_sink sink) = 0;

  /// Installs the owner's gates (see slice_gates); called once before the first post. A data path
  /// that touches local memory after post() returned enters them; others may ignore them.
  virtual void set_gates(std::shared_ptr<slice_gates> gates) { (void) gates; }

  /// Makes the peer described by `peer` reachable and returns its index for slice_op::peer.
  /// Idempotent per segment name; a changed descriptor (restarted peer) updates the entry.
  [[nodiscard]] virtual caf::expected<uint32_t> connect(const memory::segment_descriptor& peer) = 0;

  /// Starts moving the slices. Never blocks on the network; every slice gets exactly one
  /// completion unless it is withdrawn first.
  virtual void post(std::span<const slice_op> ops) = 0;

  /// Stops the listed slices. `done` runs once (inline or on the data path's thread) when no byte
  /// of them can move any more, locally or at the target (a sent WRITE was acknowledged or
  /// refused), or at `deadline`: then the local side is released all the same (nothing of the
  /// caller's memory is used afterwards) and `done` names the segments that may still receive
  /// bytes. A completion already queued may still arrive; the coordinator ignores it.
  virtual void withdraw(std::span<const uint64_t> ids,
                        std::chrono::steady_clock::time_point deadline,
                        std::function<void(unsettled_segments)> done) = 0;

  /// Ends all activity: in-flight slices complete with errc::shutting_down, threads stop,
  /// sockets close. Idempotent; the destructor calls it.
  virtual void stop() = 0;
};

} // namespace kvferry::transport
