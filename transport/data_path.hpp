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

#include <cstdint>
#include <functional>
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
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, slice_op& x) {
  return f(caf::meta::type_name("kvferry::slice_op"), x.id, x.op, x.peer, x.remote_key,
           x.local_addr, x.remote_addr, x.length, x.local_where);
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

class data_path {
public:
  virtual ~data_path() = default;

  [[nodiscard]] virtual const capabilities& caps() const noexcept = 0;

  /// Installs the sink; called once before the first post.
  virtual void set_sink(completion_sink sink) = 0;

  /// Makes the peer described by `peer` reachable and returns its index for slice_op::peer.
  /// Idempotent per segment name; a changed descriptor (restarted peer) updates the entry.
  [[nodiscard]] virtual caf::expected<uint32_t> connect(const memory::segment_descriptor& peer) = 0;

  /// Starts moving the slices. Never blocks on the network; every slice gets exactly one
  /// completion unless it is withdrawn first.
  virtual void post(std::span<const slice_op> ops) = 0;

  /// Stops the listed slices: once `done` runs, no byte of them moves any more and they get no
  /// completion (a completion already queued may still arrive; the coordinator ignores it).
  /// `done` may run inline or on the data path's thread.
  virtual void withdraw(std::span<const uint64_t> ids, std::function<void()> done) = 0;

  /// Ends all activity: in-flight slices complete with errc::shutting_down, threads stop,
  /// sockets close. Idempotent; the destructor calls it.
  virtual void stop() = 0;
};

} // namespace kvferry::transport
