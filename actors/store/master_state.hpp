#pragma once
/// The store master's state and policies, without I/O or actors: the object map, the allocation
/// of mounted segments, leases, pins, eviction, client liveness and the work handed to segment
/// holders. The master actor (master.hpp) owns one and feeds it requests and the clock; tests
/// drive it directly with a fake clock, so every policy is deterministic.
///
/// Life of an allocation (the space of one replica):
///
///   put_start ──> writing ──put_end──> committing ──holders ack──> visible object
///                    │                     │                              │
///                    └─revoke/timeout──────┴─lost race/holder gone───> fencing ──holder ack──> free
///                                                                         ^
///                     remove / eviction / upsert (after the old lease) ───┘
///
/// Space is reused only after its holder acknowledged the fence: from then on the holder refuses
/// every access whose token is not newer than the freed allocation's, so a late WRITE aimed at an
/// old object can never land in a new one.
///
/// Concurrent puts of one key: the first put_end wins; a later put_end of that key gets
/// errc::object_exists and its space back, unless the put asked for upsert (then the last one to
/// finish committing replaces the object; the replaced object's space is freed once its lease
/// expired).

#include <chrono>
#include <cstdint>
#include <deque>
#include <list>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "transport/store/messages.hpp"

namespace kvferry::store {

namespace msg = transport::store;
using clock = std::chrono::steady_clock;
using time_point = clock::time_point;
using std::chrono::milliseconds;

struct master_config {
  /// How long a get's lease protects an object from remove (without force) and eviction.
  milliseconds lease{10000};
  /// A client whose watch the master did not hear for this long is declared dead.
  milliseconds ttl{10000};
  /// How long the master holds an idle watch before answering it empty.
  milliseconds watch_interval{1000};
  /// An unfinished put is revoked this long after put_start.
  milliseconds put_timeout{30000};
  /// How long put_end waits for the replicas' holders to commit the object.
  milliseconds commit_timeout{5000};
  /// Eviction starts above this fraction of the mounted capacity in use...
  double high_watermark = 0.9;
  /// ...and stops at high_watermark minus this fraction.
  double evict_ratio = 0.05;
  /// Allocations are rounded up to this many bytes.
  uint64_t alignment = 64;
  /// What clients can make the master hold: objects and unfinished puts together, and their
  /// keys' bytes; clients mounted at once. Beyond them put_start answers store_full and mount
  /// invalid_argument.
  uint64_t max_objects = 16ULL << 20;
  uint64_t max_key_bytes = 1ULL << 30;
  uint32_t max_clients = 4096;
};

/// Free space of one segment: best fit, coalescing.
class segment_allocator {
public:
  explicit segment_allocator(uint64_t size = 0);
  /// Offset of `size` free bytes, or nothing.
  [[nodiscard]] std::optional<uint64_t> allocate(uint64_t size);
  /// Takes [offset, offset+size) if all of it is free (rebuilding from a holder's report).
  [[nodiscard]] bool allocate_at(uint64_t offset, uint64_t size);
  void release(uint64_t offset, uint64_t size);
  [[nodiscard]] uint64_t free_bytes() const noexcept { return free_bytes_; }
  [[nodiscard]] uint64_t largest_free() const noexcept;
  [[nodiscard]] size_t free_blocks() const noexcept { return by_offset_.size(); }

private:
  void insert(uint64_t offset, uint64_t size);
  void erase(std::map<uint64_t, uint64_t>::iterator it);
  std::map<uint64_t, uint64_t> by_offset_;
  std::set<std::pair<uint64_t, uint64_t>> by_size_; // (size, offset)
  uint64_t free_bytes_ = 0;
};

/// What a put_end entry got: an answer now, or an answer once its holders committed.
struct end_outcome {
  bool pending = false;
  msg::status result;
};

/// A put_end that finished committing (or failed to) after the call that asked for it.
struct finished_end {
  uint64_t put_id = 0;
  msg::status result;
};

struct master_counters {
  uint64_t puts_started = 0, puts_ended = 0, puts_revoked = 0, puts_timed_out = 0;
  uint64_t gets = 0, removes = 0, evictions = 0, leases_granted = 0;
  uint64_t clients_declared_dead = 0, fences_sent = 0, fences_done = 0;
  uint64_t late_acks_ignored = 0, commits_timed_out = 0;
};

class master_state {
public:
  /// `first_token`: tokens are issued from here up (the actor passes a clock-derived value, so a
  /// restarted master issues tokens newer than any of its predecessor's).
  master_state(master_config config, uint64_t master_id, uint64_t first_token);

  // -- clients and holders ------------------------------------------------------------------

  [[nodiscard]] caf::expected<msg::mount_reply> mount(const msg::mount_request& r, time_point now);
  /// A clean stop: the client's segments are unmounted (their objects' replicas dropped) and its
  /// unfinished puts revoked.
  [[nodiscard]] msg::status unmount(uint64_t client_id, time_point now);
  /// Records the client's acknowledgements and returns the work it should do now (every
  /// instruction not yet acknowledged). errc::not_mounted for an unknown client.
  [[nodiscard]] caf::expected<msg::watch_reply> watch(const msg::watch_request& r, time_point now);
  /// True when `client_id` has instructions it has not been handed by watch since they were queued.
  [[nodiscard]] bool has_new_work(uint64_t client_id) const;

  // -- objects --------------------------------------------------------------------------------

  [[nodiscard]] caf::expected<msg::put_start_reply> put_start(const msg::put_start_request& r,
                                                              time_point now);
  [[nodiscard]] caf::expected<std::vector<end_outcome>> put_end(const msg::put_finish_request& r,
                                                                time_point now);
  /// Revokes unfinished puts; also a put that ended although its client saw put_end fail (it
  /// never learnt that the object appeared): the object of that key and token goes, unless
  /// another put replaced it.
  [[nodiscard]] caf::expected<msg::statuses_reply> put_revoke(const msg::put_finish_request& r,
                                                              time_point now);
  [[nodiscard]] caf::expected<msg::get_replicas_reply> get_replicas(const msg::keys_request& r,
                                                                    time_point now);
  [[nodiscard]] caf::expected<msg::statuses_reply> exists(const msg::keys_request& r,
                                                          time_point now);
  [[nodiscard]] caf::expected<msg::statuses_reply> remove(const msg::keys_request& r,
                                                          time_point now);
  /// The JSON report of stats_reply.
  [[nodiscard]] std::string report(time_point now) const;

  // -- time -----------------------------------------------------------------------------------

  /// Applies every deadline up to `now`: dead clients, put and commit timeouts, expired leases of
  /// replaced objects, eviction above the watermark.
  void tick(time_point now);
  /// put_end entries that finished since the last call (from watch or tick).
  [[nodiscard]] std::vector<finished_end> take_finished_ends();
  /// Clients that got new instructions since the last call.
  [[nodiscard]] std::vector<uint64_t> take_clients_with_work();

  [[nodiscard]] const master_counters& counters() const noexcept { return counters_; }
  [[nodiscard]] uint64_t capacity() const noexcept { return capacity_; }
  [[nodiscard]] uint64_t used() const noexcept { return used_; }
  [[nodiscard]] size_t object_count() const noexcept { return objects_.size(); }
  [[nodiscard]] uint64_t master_id() const noexcept { return master_id_; }
  [[nodiscard]] const master_config& config() const noexcept { return config_; }

private:
  struct allocation {
    uint32_t segment = 0;
    uint64_t offset = 0;
    /// Rounded up to the alignment.
    uint64_t size = 0;
    /// Its segment was unmounted: the space is gone with it.
    bool gone = false;
  };
  struct object {
    std::string key;
    uint64_t size = 0;
    uint64_t token = 0;
    std::vector<allocation> replicas;
    bool has_checksum = false;
    uint32_t checksum = 0;
    bool pinned = false;
    time_point lease_until{};
    std::list<std::string>::iterator lru;
  };
  enum class put_phase : uint8_t { writing, committing };
  struct put {
    uint64_t id = 0;
    uint64_t client = 0;
    std::string key;
    uint64_t size = 0;
    uint64_t token = 0;
    std::vector<allocation> replicas;
    bool pin = false;
    bool upsert = false;
    put_phase phase = put_phase::writing;
    time_point deadline{};
    bool has_checksum = false;
    uint32_t checksum = 0;
    /// committing: instruction ids not acknowledged yet, and which replica each commits.
    std::map<uint64_t, size_t> commits;
    std::vector<bool> committed;
  };
  struct segment {
    std::string name;
    uint64_t client = 0;
    std::string host;
    uint64_t base = 0;
    uint64_t size = 0;
    segment_allocator free;
    bool mounted = false;
    /// Bytes whose fence is not acknowledged yet.
    uint64_t fencing = 0;
  };
  struct pending_instruction {
    msg::instruction what;
    /// fence: the space returns to the allocator when acknowledged.
    std::optional<allocation> space;
    /// commit: the put it belongs to.
    uint64_t put_id = 0;
  };
  struct client {
    uint64_t id = 0;
    std::string name;
    std::string host;
    time_point last_seen{};
    std::vector<uint32_t> segments;
    std::map<uint64_t, pending_instruction> work; // by instruction id
    bool new_work = false;
  };
  /// A replaced object whose space is freed when its last lease ends.
  struct zombie {
    time_point until{};
    uint64_t token = 0;
    std::vector<allocation> replicas;
  };

  [[nodiscard]] client* find_client(uint64_t id);
  [[nodiscard]] caf::error unknown_client(uint64_t id) const;
  [[nodiscard]] msg::status check_key(const std::string& key) const;
  [[nodiscard]] std::vector<msg::replica> replicas_of(const std::vector<allocation>& a,
                                                      uint64_t token) const;
  /// Frees space: fenced at its holder first, or released at once when its segment is gone.
  void free_space(const allocation& a, uint64_t token);
  void queue(uint64_t client_id, pending_instruction p);
  void drop_object(std::unordered_map<std::string, object>::iterator it);
  void revoke_put(std::unordered_map<uint64_t, put>::iterator it, bool timed_out);
  void finish_commit(std::unordered_map<uint64_t, put>::iterator it, time_point now);
  void declare_dead(uint64_t client_id, time_point now);
  void unmount_segment(uint32_t index);
  void evict(time_point now, uint64_t want_free);
  [[nodiscard]] uint64_t evict_target() const;
  void touch(object& o);
  /// A visible object, most recently used.
  void add_object(const std::string& key, uint64_t size, uint64_t token,
                  std::vector<allocation> replicas, bool has_checksum, uint32_t checksum,
                  bool pinned);

  master_config config_;
  uint64_t master_id_;
  uint64_t next_token_;
  uint64_t next_put_ = 1;
  uint64_t next_instruction_ = 1;
  uint64_t capacity_ = 0;
  uint64_t used_ = 0;     // allocated or fencing, over mounted segments
  uint64_t fencing_ = 0;  // of used_, freed but not yet fenced by its holder
  uint64_t key_bytes_ = 0; // keys of objects and unfinished puts
  std::unordered_map<uint64_t, client> clients_;
  std::vector<segment> segments_; // index = segment number; unmounted entries stay (mounted=false)
  std::unordered_map<std::string, uint32_t> segment_by_name_;
  std::unordered_map<std::string, object> objects_;
  std::list<std::string> lru_; // front = least recently used
  std::unordered_map<uint64_t, put> puts_;
  /// Keys with a put committing (first put_end wins).
  std::unordered_map<std::string, uint64_t> committing_;
  std::vector<zombie> zombies_;
  std::vector<finished_end> finished_;
  std::vector<uint64_t> clients_with_work_;
  size_t rotate_ = 0;
  master_counters counters_;
};

} // namespace kvferry::store
