#pragma once
/// The store's messages between clients and the master (kvferry master), as plain structs. They
/// travel as the body of a control-plane `call` (control/wire.hpp), encoded by store/wire.hpp.
///
/// Roles (docs/ARCHITECTURE.md, "Store"):
/// - A client mounts the memory it contributes (its segment) and keeps one `watch` request
///   outstanding at the master. The watch is its heartbeat and the master's way to hand it work
///   as a segment holder: commit (remember an object you hold) and fence (refuse accesses with
///   older tokens to a range, forget the objects there).
/// - put = put_start (the master allocates replicas, each with a fence token) -> the client WRITEs
///   each replica with its token -> put_end (the object becomes visible once its holders
///   committed it) or put_revoke.
/// - get = get_replicas (replicas, tokens and a lease) -> READ one replica with its token.

#include <cstdint>
#include <string>
#include <vector>

#include "config/error.hpp"

namespace kvferry::transport::store {

/// Longest key, in bytes.
inline constexpr size_t max_key = 4096;
/// Most entries in one batch call, and most instructions in one watch reply.
inline constexpr size_t max_batch = 4096;
/// Most replicas of one object.
inline constexpr size_t max_replicas = 8;
/// Most segments one client mounts, and objects one mount reports.
inline constexpr size_t max_segments = 64;
inline constexpr size_t max_held_objects = 1 << 22;
/// Longest segment name, host identity, client name, error reason.
inline constexpr size_t max_name = 256;
inline constexpr size_t max_reason = 1024;
/// Longest stats report (JSON text).
inline constexpr size_t max_report = 4 << 20;

enum class method : uint16_t {
  mount = 1,
  unmount = 2,
  watch = 3,
  put_start = 4,
  put_end = 5,
  put_revoke = 6,
  get_replicas = 7,
  exists = 8,
  remove = 9,
  stats = 10,
};
inline constexpr uint16_t method_last = 10;

/// An error (or errc::none) for one entry of a batch.
struct status {
  errc code = errc::none;
  std::string reason;
  friend bool operator==(const status&, const status&) = default;
};

/// Where one replica of an object lives.
struct replica {
  /// The holder's segment name (the transfer engine opens it).
  std::string segment;
  /// The holder's host identity (same_host decisions; never an IP address).
  std::string host;
  uint64_t addr = 0;
  /// Every access to this replica carries it; the holder refuses older tokens once fenced.
  uint64_t token = 0;
  friend bool operator==(const replica&, const replica&) = default;
};

/// An object a holder holds (reported at mount, so a restarted master can rebuild its map).
struct held_object {
  std::string key;
  uint64_t addr = 0;
  uint64_t size = 0;
  uint64_t token = 0;
  bool has_checksum = false;
  uint32_t checksum = 0;
  bool pinned = false;
  friend bool operator==(const held_object&, const held_object&) = default;
};

struct segment_mount {
  std::string name;
  uint64_t base = 0;
  uint64_t size = 0;
  std::vector<held_object> objects;
  friend bool operator==(const segment_mount&, const segment_mount&) = default;
};

// -- requests and replies, per method ----------------------------------------------------------

struct mount_request {
  /// Random per client process; a restarted client has a new one.
  uint64_t client_id = 0;
  /// For messages and "same process" decisions: the client's transfer-engine segment name.
  std::string client_name;
  std::string host;
  /// The holder already refuses tokens up to this one on every range it holds no object in; the
  /// master issues larger tokens from now on.
  uint64_t fence_floor = 0;
  std::vector<segment_mount> segments;
  friend bool operator==(const mount_request&, const mount_request&) = default;
};

/// An object of a mount that the master did not keep (another object of that key is newer): the
/// holder fences it.
struct dropped_object {
  std::string segment;
  uint64_t addr = 0;
  uint64_t size = 0;
  friend bool operator==(const dropped_object&, const dropped_object&) = default;
};

struct mount_reply {
  /// Random per master process: a client that sees it change knows the master restarted.
  uint64_t master_id = 0;
  /// The client is declared dead when the master hears no watch for this long.
  uint32_t ttl_ms = 0;
  /// The master answers an idle watch after this long (so clients re-poll well within the TTL).
  uint32_t watch_ms = 0;
  std::vector<dropped_object> dropped;
  friend bool operator==(const mount_reply&, const mount_reply&) = default;
};

struct unmount_request {
  uint64_t client_id = 0;
  friend bool operator==(const unmount_request&, const unmount_request&) = default;
};

enum class instruction_kind : uint8_t { commit = 0, fence = 1 };

/// Work for a segment holder.
struct instruction {
  uint64_t id = 0;
  instruction_kind kind = instruction_kind::commit;
  std::string segment;
  uint64_t addr = 0;
  uint64_t size = 0;
  /// commit: the object's token; fence: refuse tokens up to and including this one.
  uint64_t token = 0;
  /// commit only.
  std::string key;
  bool has_checksum = false;
  uint32_t checksum = 0;
  bool pinned = false;
  friend bool operator==(const instruction&, const instruction&) = default;
};

struct watch_request {
  uint64_t client_id = 0;
  /// Ids of instructions carried out since the last watch.
  std::vector<uint64_t> done;
  friend bool operator==(const watch_request&, const watch_request&) = default;
};

struct watch_reply {
  std::vector<instruction> work;
  friend bool operator==(const watch_reply&, const watch_reply&) = default;
};

struct put_entry {
  std::string key;
  uint64_t size = 0;
  uint8_t replicas = 1;
  bool pin = false;
  /// Replace an existing object of this key at put_end (instead of object_exists).
  bool upsert = false;
  friend bool operator==(const put_entry&, const put_entry&) = default;
};

struct put_start_request {
  uint64_t client_id = 0;
  std::vector<put_entry> entries;
  friend bool operator==(const put_start_request&, const put_start_request&) = default;
};

struct put_slot {
  status result;
  uint64_t put_id = 0;
  std::vector<replica> replicas;
  friend bool operator==(const put_slot&, const put_slot&) = default;
};

struct put_start_reply {
  std::vector<put_slot> slots;
  friend bool operator==(const put_start_reply&, const put_start_reply&) = default;
};

struct put_end_entry {
  std::string key;
  uint64_t put_id = 0;
  bool has_checksum = false;
  uint32_t checksum = 0;
  /// The put's token (from put_start): put_revoke also removes the object a put made when its
  /// client never learnt that put_end succeeded (the answer was lost, or the master restarted).
  uint64_t token = 0;
  friend bool operator==(const put_end_entry&, const put_end_entry&) = default;
};

/// put_end and put_revoke.
struct put_finish_request {
  uint64_t client_id = 0;
  std::vector<put_end_entry> entries;
  friend bool operator==(const put_finish_request&, const put_finish_request&) = default;
};

/// get_replicas, exists, remove.
struct keys_request {
  uint64_t client_id = 0;
  std::vector<std::string> keys;
  /// remove only: also objects that are leased.
  bool force = false;
  friend bool operator==(const keys_request&, const keys_request&) = default;
};

/// Replies of put_end, put_revoke, exists, remove, unmount: one status per entry.
struct statuses_reply {
  std::vector<status> results;
  friend bool operator==(const statuses_reply&, const statuses_reply&) = default;
};

struct object_location {
  status result;
  uint64_t size = 0;
  bool has_checksum = false;
  uint32_t checksum = 0;
  /// The lease the get holds, from the master's answer on.
  uint32_t lease_ms = 0;
  std::vector<replica> replicas;
  friend bool operator==(const object_location&, const object_location&) = default;
};

struct get_replicas_reply {
  std::vector<object_location> objects;
  friend bool operator==(const get_replicas_reply&, const get_replicas_reply&) = default;
};

struct stats_request {
  uint64_t client_id = 0;
  friend bool operator==(const stats_request&, const stats_request&) = default;
};

struct stats_reply {
  /// JSON text (docs/ARCHITECTURE.md, "Store", lists its fields).
  std::string report;
  friend bool operator==(const stats_reply&, const stats_reply&) = default;
};

} // namespace kvferry::transport::store
