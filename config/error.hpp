#pragma once
/// kvferry's one error enum. Every fallible call returns `caf::expected<T>` or `caf::error`;
/// an error carries one of these codes plus a context string that names what was wrong, where,
/// and what was expected. Errors cross node boundaries unchanged (CAF serializes them).

#include <cstdint>
#include <string>

#include <caf/error.hpp>
#include <caf/expected.hpp>
#include <caf/make_message.hpp>

namespace kvferry {

enum class errc : uint8_t {
  /// Not an error; never returned.
  none = 0,
  /// A configuration file or value is malformed, mistyped or out of range.
  invalid_config,
  /// An API or command-line argument is invalid (zero length, null address, bad name).
  invalid_argument,
  /// The batch id names no live batch: never allocated, or already freed.
  unknown_batch,
  /// A submit would put more tasks into a batch than its capacity.
  batch_full,
  /// A local address range is not inside one registered memory region.
  unregistered_memory,
  /// A registration overlaps a region that is already registered.
  overlapping_region,
  /// An unregister names an address that starts no registered region.
  unknown_region,
  /// A segment handle or segment name is unknown or cannot be resolved.
  unknown_segment,
  /// A remote range is not inside one region the target segment registered.
  out_of_range,
  /// A task index is outside the tasks submitted to its batch.
  unknown_task,
  /// A wait or a request ran past its deadline.
  timeout,
  /// A data path failed to move a slice (socket error, peer error status, verbs completion error).
  transport_failure,
  /// The peer cannot be reached (connection refused, peer gone).
  peer_unreachable,
  /// A frame from a peer failed validation.
  malformed_frame,
  /// The operation needs something this build or machine lacks (GPU, RDMA device).
  not_supported,
  /// The engine or node is stopping and accepts no new work.
  shutting_down,
  /// A region is still used by transfers in flight.
  busy,
  /// The request addressed an earlier incarnation of the target (it restarted): open the segment
  /// again to learn its new memory layout.
  stale_incarnation,
  /// A target did not confirm in time that withdrawn WRITEs move no more bytes: the local side
  /// is released (the batch is freed), but the named segment may still receive some of them.
  unconfirmed,
  /// Store: no object has this key (or it is not visible yet: its put has not ended).
  object_not_found,
  /// Store: a put of a key that already exists (or lost a race with another put of that key).
  object_exists,
  /// Store: the object is leased (being read) or its put is unfinished; remove it with force.
  object_has_lease,
  /// Store: the object's lease expired while it was being read; its space may have been reused.
  lease_expired,
  /// Store: no mounted segment has room for the value (after eviction of what may be evicted).
  store_full,
  /// Store: the bytes read do not match the checksum recorded when the object was put.
  checksum_mismatch,
  /// Store: the master does not know this client (it restarted, or declared the client dead):
  /// the client mounts its segments again.
  not_mounted,
  /// Store: the access carried a fence token older than the allocation it addressed (a late
  /// WRITE or READ aimed at an object whose space was freed).
  fenced,
};

/// The highest errc value (frames from peers carry errc values; larger ones are malformed).
inline constexpr errc errc_last = errc::fenced;

/// Short stable name of a code, e.g. "out_of_range".
[[nodiscard]] const char* to_string(errc code) noexcept;

/// Builds an error with a human-readable context.
[[nodiscard]] caf::error make_error(errc code, std::string context);

/// "0x7f00..." for addresses in error messages.
[[nodiscard]] std::string hex(uint64_t value);

/// Renders any error, kvferry's or CAF's, as "code: context".
[[nodiscard]] std::string describe(const caf::error& err);

/// The context text of `err` alone (no code name); empty when it has none.
[[nodiscard]] std::string context_of(const caf::error& err);

/// The kvferry code inside `err`, or errc::none when `err` is empty or from another category.
[[nodiscard]] errc code_of(const caf::error& err) noexcept;

} // namespace kvferry

CAF_ERROR_CODE_ENUM(kvferry::errc, "kvferry")
