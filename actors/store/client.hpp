#pragma once
/// The store client a serving engine embeds (prefill puts KV cache, decode gets it), as Mooncake
/// Store's client: one object per process, thread-safe, every fallible call returns an error value
/// (caf::error / caf::expected with a kvferry::errc and a sentence naming what failed). Every call
/// returns within its deadline (put_options/get_options, default `store_deadline_ms`).
///
/// What a client is:
///   - a transfer engine (transfer_engine.hpp) that moves the bytes;
///   - a segment holder: it contributes `global_segment_size` bytes of memory that the master
///     allocates replicas in. The region is fenced: every access carries the allocation's token,
///     and the holder refuses older tokens once the master freed the space (a late WRITE never
///     lands in another object). It remembers the objects it holds, so a restarted master can
///     rebuild its map from the holders;
///   - a staging buffer of `local_buffer_size` bytes for values in memory the caller did not
///     register (put, get);
///   - a watch thread: one long-poll request always outstanding at the master. It is the
///     client's heartbeat, and brings the holder its work (commit, fence). When the master
///     restarted or declared the client dead, the client mounts again (reporting what it holds).
///
/// put:  put_start (master allocates replicas on distinct segments) -> WRITE each replica ->
///       put_end (visible once the holders committed it), or put_revoke on any failure: the
///       object never appears and its space returns. When put_end gets no answer (the master is
///       frozen, gone or slow), the put fails and the watch thread revokes it in the background
///       until the master answers: an object whose put reported failure does not stay.
/// get:  get_replicas (with a lease) -> READ from the best replica (this process, then this host,
///       then any) -> on failure the next replica. A READ that ended after the lease expired is
///       reported as errc::lease_expired.
/// Concurrent puts of one key: the first put_end wins; the others get errc::object_exists (their
/// space returns), unless they asked for upsert.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <map>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "actors/runtime.hpp"
#include "actors/store/master_state.hpp"
#include "actors/transfer_engine.hpp"
#include "config/settings.hpp"
#include "transport/control/client.hpp"
#include "transport/store/messages.hpp"

namespace kvferry::store {

struct put_options {
  /// Replicas, each on a different segment.
  uint8_t replicas = 1;
  /// Soft pin: evicted only when nothing unpinned can be.
  bool pin = false;
  /// Replace an existing object of this key (instead of errc::object_exists).
  bool upsert = false;
  /// Record a CRC-32C of the value; every get checks it.
  bool checksum = false;
  /// 0: the configured store_deadline.
  milliseconds deadline{0};
};

struct get_options {
  /// 0: the configured store_deadline.
  milliseconds deadline{0};
};

struct client_options {
  /// The transfer engine's options (segment name, data paths for tests).
  engine_options engine;
};

struct client_counters {
  /// Gets whose read ended after the object's lease expired (answered errc::lease_expired).
  uint64_t lease_expiries = 0;
  uint64_t mounts = 0;
  uint64_t commits = 0;
  uint64_t fences = 0;
  uint64_t watch_errors = 0;
  uint64_t replica_failovers = 0;
  /// Puts revoked in the background after put_end got no answer.
  uint64_t background_revokes = 0;
};

class client {
public:
  /// Sets up from the settings Mooncake users write (local_hostname, metadata_server, protocol,
  /// master_server_address "host:port", global_segment_size, local_buffer_size) and mounts the
  /// segment at the master. Fails when the master does not answer within store_deadline.
  [[nodiscard]] static caf::expected<std::unique_ptr<client>> create(const config::settings& s,
                                                                     client_options o = {});
  /// close().
  ~client();
  client(const client&) = delete;
  client& operator=(const client&) = delete;

  // -- put ------------------------------------------------------------------------------------

  /// Puts a copy of `value` (any memory: it goes through the staging buffer).
  [[nodiscard]] caf::error put(std::string_view key, std::span<const uint8_t> value,
                               put_options o = {});
  /// Puts `size` bytes at `addr`, which must lie in memory registered with register_buffer (no
  /// copy).
  [[nodiscard]] caf::error put_from(std::string_view key, const void* addr, size_t size,
                                    put_options o = {});
  /// One result per key (all under one deadline).
  [[nodiscard]] std::vector<caf::error> batch_put(std::span<const std::string> keys,
                                                  std::span<const std::span<const uint8_t>> values,
                                                  put_options o = {});
  [[nodiscard]] std::vector<caf::error> batch_put_from(std::span<const std::string> keys,
                                                       std::span<const void* const> addrs,
                                                       std::span<const size_t> sizes,
                                                       put_options o = {});

  // -- get ------------------------------------------------------------------------------------

  [[nodiscard]] caf::expected<std::vector<uint8_t>> get(std::string_view key, get_options o = {});
  /// Reads the object into registered memory; returns its size. errc::invalid_argument when it
  /// is larger than `capacity`.
  [[nodiscard]] caf::expected<size_t> get_into(std::string_view key, void* addr, size_t capacity,
                                               get_options o = {});
  [[nodiscard]] std::vector<caf::expected<std::vector<uint8_t>>>
  batch_get(std::span<const std::string> keys, get_options o = {});
  [[nodiscard]] std::vector<caf::expected<size_t>>
  batch_get_into(std::span<const std::string> keys, std::span<void* const> addrs,
                 std::span<const size_t> capacities, get_options o = {});

  // -- others ---------------------------------------------------------------------------------

  /// errc::object_has_lease when a get holds a lease on it (unless force).
  [[nodiscard]] caf::error remove(std::string_view key, bool force = false);
  [[nodiscard]] std::vector<caf::error> batch_remove(std::span<const std::string> keys,
                                                     bool force = false);
  [[nodiscard]] caf::expected<bool> exists(std::string_view key);
  [[nodiscard]] std::vector<caf::expected<bool>> batch_exists(std::span<const std::string> keys);

  /// Registers caller memory for put_from / get_into (and unregisters it).
  [[nodiscard]] caf::error register_buffer(void* addr, size_t size,
                                           std::string_view location = "cpu:0");
  [[nodiscard]] caf::error unregister_buffer(void* addr);

  /// The master's report (JSON): objects, capacity, use, fragmentation per segment, counters.
  [[nodiscard]] caf::expected<std::string> master_stats();

  [[nodiscard]] const std::string& segment_name() const noexcept { return name_; }
  [[nodiscard]] uint64_t client_id() const noexcept { return client_id_; }
  [[nodiscard]] transfer_engine& engine() noexcept { return *engine_; }
  /// Objects this holder holds (committed, not fenced since).
  [[nodiscard]] size_t held_objects() const;
  [[nodiscard]] client_counters counters() const;

  /// Unmounts (the master drops this client's replicas), stops the engine, releases the memory.
  /// Idempotent; calls after it fail with errc::shutting_down.
  void close();

private:
  struct staging;
  struct put_item;
  struct get_item;

  client() = default;
  [[nodiscard]] caf::error start(const config::settings& s, client_options o);
  [[nodiscard]] time_point deadline_of(milliseconds d) const;
  /// One call to the master within `until`; when the master does not know this client it waits
  /// for the watch thread to mount again and repeats the call once.
  [[nodiscard]] caf::expected<std::vector<uint8_t>>
  call(transport::store::method m, const std::vector<uint8_t>& payload, time_point until);
  [[nodiscard]] caf::expected<std::vector<uint8_t>>
  call_once(transport::store::method m, const std::vector<uint8_t>& payload, time_point until);
  [[nodiscard]] caf::error mount();
  void watch_loop();
  [[nodiscard]] bool carry_out(const transport::store::instruction& work);
  void send_pending_revokes();
  /// Holders that failed a read recently: their replicas are tried after the others.
  [[nodiscard]] bool suspect(const std::string& segment);
  void mark_suspect(const std::string& segment);
  [[nodiscard]] caf::expected<segment_id> open(const std::string& segment, bool refresh);
  void run_puts(std::vector<put_item>& items, const put_options& o, time_point until);
  void run_gets(std::vector<get_item>& items, time_point until);
  [[nodiscard]] caf::error stopped() const;

  config::settings settings_;
  std::string name_;
  std::string host_id_;
  std::string master_host_;
  uint16_t master_port_ = 0;
  uint64_t client_id_ = 0;
  std::shared_ptr<runtime> runtime_;
  std::unique_ptr<transfer_engine> engine_;
  std::unique_ptr<transport::control::client> master_;
  // The segment this client holds, and the staging buffer.
  uint8_t* segment_ = nullptr;
  uint64_t segment_size_ = 0;
  std::unique_ptr<staging> staging_;

  mutable std::mutex mutex_;
  std::condition_variable mounted_changed_;
  bool mounted_ = false;
  uint64_t mount_generation_ = 0;
  uint64_t master_id_ = 0;
  milliseconds watch_interval_{1000};
  bool stopping_ = false;
  bool closed_ = false;
  /// Holder state: committed objects by address, and the newest token seen.
  std::map<uint64_t, transport::store::held_object> held_;
  /// Puts whose put_end got no answer, revoked by the watch thread until the master answers.
  static constexpr size_t max_pending_revokes = 1 << 16;
  std::vector<transport::store::put_end_entry> pending_revokes_;
  uint64_t newest_token_ = 0;
  client_counters counters_;
  std::mutex segments_mutex_;
  std::unordered_map<std::string, segment_id> segments_;
  static constexpr milliseconds suspect_for{10000};
  std::unordered_map<std::string, time_point> suspects_;
  std::thread watcher_;
};

} // namespace kvferry::store
