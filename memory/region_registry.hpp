#pragma once
/// The registry of one segment's registered memory regions.
///
/// Writers (register/unregister) are serialized by a mutex; readers take an immutable snapshot
/// (`region_table`) without blocking writers, and answer "is [addr, addr+len) inside one
/// registered region" in O(log n).
///
/// Code that touches a region's memory (a copy, a socket read into it, a reply that still points
/// into it) holds a `region_lease` for as long as it does. Unregistering is atomic: the region
/// leaves the table at once (no new lease can be taken), the fence listeners tell every data path
/// to let go of the region (a path that cannot finish a use soon abandons it: it fails the slice or
/// closes the connection that holds it), and `remove` returns only when no lease is held any more.
/// If leases are still held after the timeout, the region is put back and `remove` fails: either
/// the region stays registered, or nothing touches it after `remove` returned.
///
/// A region registered as fenced has a `fence_map` (memory/fence_map.hpp): every access to it
/// carries a token that the data paths check against the floors of its range. `fence` raises the
/// floors of a range and returns once the range fence listeners confirmed that no access with an
/// older token is still in progress on any data path. Floors live as long as the registration.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include <caf/expected.hpp>

#include "memory/fence_map.hpp"
#include "memory/location.hpp"
#include "memory/range_lookup.hpp"

namespace kvferry::memory {

/// Shared by a region and its leases: counts the users of the region's memory.
class region_state {
public:
  /// Takes a use; false once the region is being removed.
  [[nodiscard]] bool try_acquire() noexcept;
  /// Returns a use taken by try_acquire.
  void release() noexcept;
  [[nodiscard]] uint32_t users() const noexcept { return users_.load(std::memory_order_acquire); }
  [[nodiscard]] bool removing() const noexcept { return removing_.load(std::memory_order_acquire); }

private:
  friend class region_registry;
  /// Waits until no use is held; false after `until`.
  bool wait_unused(std::chrono::steady_clock::time_point until);

  std::atomic<uint32_t> users_{0};
  std::atomic<bool> removing_{false};
  std::mutex mutex_;
  std::condition_variable unused_;
};

struct region {
  uint64_t base = 0;
  uint64_t length = 0;
  location where;
  /// Never null for a region in a registry's table.
  std::shared_ptr<region_state> state;
  /// The fence floors of a fenced region; null for an unfenced one (accesses carry no token).
  std::shared_ptr<fence_map> fences;
  /// Its RDMA remote keys, one per NIC of the engine in the order of its "rdma" endpoints; empty
  /// when the region is not registered with RDMA NICs (no RDMA, a fenced region, device memory).
  std::vector<uint32_t> rdma_keys;

  [[nodiscard]] uint64_t end() const noexcept { return base + length; }
  /// True when [addr, addr+len) lies inside this region (len > 0, no wrap-around).
  [[nodiscard]] bool contains(uint64_t addr, uint64_t len) const noexcept {
    return range_contains(base, length, addr, len);
  }
};

/// A held use of a region's memory (RAII). Empty when the region was being removed.
class region_lease {
public:
  region_lease() = default;
  /// Tries to take a use of `r`.
  explicit region_lease(const region& r);
  ~region_lease() { reset(); }
  region_lease(region_lease&& other) noexcept : state_(std::move(other.state_)) {}
  region_lease& operator=(region_lease&& other) noexcept;
  region_lease(const region_lease&) = delete;
  region_lease& operator=(const region_lease&) = delete;

  explicit operator bool() const noexcept { return state_ != nullptr; }
  [[nodiscard]] const region_state* state() const noexcept { return state_.get(); }
  void reset() noexcept;

private:
  std::shared_ptr<region_state> state_;
};

/// An immutable, sorted, non-overlapping set of regions.
class region_table {
public:
  region_table() = default;
  explicit region_table(std::vector<region> sorted) : regions_(std::move(sorted)) {}

  /// The region that holds all of [addr, addr+len), or nullptr.
  [[nodiscard]] const region* find(uint64_t addr, uint64_t len) const noexcept;
  /// The region starting exactly at `base`, or nullptr.
  [[nodiscard]] const region* find_base(uint64_t base) const noexcept;
  /// The first region that overlaps [addr, addr+len), or nullptr.
  [[nodiscard]] const region* find_overlap(uint64_t addr, uint64_t len) const noexcept;

  [[nodiscard]] const std::vector<region>& regions() const noexcept { return regions_; }
  [[nodiscard]] size_t size() const noexcept { return regions_.size(); }
  [[nodiscard]] bool empty() const noexcept { return regions_.empty(); }

private:
  std::vector<region> regions_;
};

class region_registry {
public:
  /// Called (on the unregistering thread) when a region leaves the table; must return quickly.
  using fence_listener = std::function<void(const region&)>;
  /// Called (on the fencing thread) once the floors of [addr, addr+len) of fenced region `r` were
  /// raised; must return quickly. The data path ends every access to that range still in progress
  /// that was admitted before (it closes the connection that carries it), then calls `done` (once,
  /// from any thread, inline or later).
  using range_fence_listener = std::function<void(const region& r, uint64_t addr, uint64_t len,
                                                  std::function<void()> done)>;

  region_registry() : table_(std::make_shared<const region_table>()) {}
  region_registry(const region_registry&) = delete;
  region_registry& operator=(const region_registry&) = delete;

  /// Registers [base, base+length). Rejects a null base, zero length, address wrap-around, any
  /// overlap with a registered region (or one being unregistered), and a closed registry. A fenced
  /// region gets a fence map with every floor 0 (any non-zero token is admitted until a fence).
  [[nodiscard]] caf::expected<region> add(uint64_t base, uint64_t length, location where,
                                          bool fenced = false,
                                          std::vector<uint32_t> rdma_keys = {});

  /// Unregisters the region that starts at `base` (see the header comment). errc::busy, with the
  /// region still registered, when its memory is still in use after `timeout`.
  [[nodiscard]] caf::expected<region> remove(uint64_t base,
                                              std::chrono::milliseconds timeout = std::chrono::seconds(5));

  /// Raises the fence floor of [addr, addr+len) of the fenced region starting at `region_base` to
  /// `floor` (floors never go down), then has every range fence listener end the accesses to that
  /// range in progress. On success, no access with a token <= `floor` to any byte of the range is in
  /// progress or can start on any data path. Errors: errc::unknown_region (no region starts at
  /// `region_base`), errc::invalid_argument (the region is not fenced, or the range is empty or not
  /// inside it), errc::busy (a listener did not confirm within `timeout`; the floors are raised all
  /// the same, so no new access with an older token starts).
  [[nodiscard]] caf::error fence(uint64_t region_base, uint64_t addr, uint64_t len, uint64_t floor,
                                 std::chrono::milliseconds timeout);

  /// Unregisters every region and refuses new ones: the segment is gone. Returns the number of
  /// regions whose users did not let go within `timeout` (0 normally).
  size_t close(std::chrono::milliseconds timeout);
  [[nodiscard]] bool closed() const noexcept { return closed_.load(std::memory_order_acquire); }

  /// The current table; stays valid (and unchanged) while the caller holds it.
  [[nodiscard]] std::shared_ptr<const region_table> snapshot() const {
    return table_.load(std::memory_order_acquire);
  }

  /// Copy of the region holding [addr, addr+len), if any.
  [[nodiscard]] std::optional<region> find(uint64_t addr, uint64_t len) const;

  /// A lease on the region holding [addr, addr+len), or an empty lease (and `where` untouched).
  [[nodiscard]] region_lease lease(uint64_t addr, uint64_t len, location* where = nullptr) const;

  /// Bumped on every change; lets holders of derived data (descriptors) notice staleness.
  [[nodiscard]] uint64_t version() const noexcept {
    return version_.load(std::memory_order_acquire);
  }

  /// Adds a listener; returns its id for remove_fence_listener.
  uint64_t add_fence_listener(fence_listener listener);
  void remove_fence_listener(uint64_t id);

  /// Adds a range fence listener; returns its id for remove_range_fence_listener. Once that
  /// returned, the listener is not called any more.
  uint64_t add_range_fence_listener(range_fence_listener listener);
  void remove_range_fence_listener(uint64_t id);

private:
  void publish(std::vector<region> next);
  void notify_fence(const region& r);

  std::mutex write_mutex_;
  std::atomic<std::shared_ptr<const region_table>> table_;
  std::atomic<uint64_t> version_{0};
  std::atomic<bool> closed_{false};
  /// Regions being unregistered (out of the table, still reserved against overlapping adds).
  std::vector<region> removing_;
  std::mutex listeners_mutex_;
  std::vector<std::pair<uint64_t, fence_listener>> listeners_;
  std::vector<std::pair<uint64_t, range_fence_listener>> range_listeners_;
  uint64_t next_listener_ = 1;
};

} // namespace kvferry::memory
