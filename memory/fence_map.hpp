#pragma once
/// Fence floors of one registered region ("allocation fencing", as an RDMA rkey that a holder can
/// revoke for part of a region).
///
/// A holder registers a region as fenced; every access to it (a READ or a WRITE from any data path)
/// carries a 64-bit token, and is admitted only when the token is non-zero and greater than the
/// floor everywhere in the accessed range. Floors start at 0 and only rise: whoever allocates space
/// in the region gives each allocation a token larger than any floor its space had, and raises the
/// floor of that space to the token when the allocation is freed, so that a late access aimed at
/// the freed allocation can never land in (or read) an allocation that reuses the space.
///
/// The map is an interval map over [0, 2^64) (absolute addresses): sorted pieces, each with one
/// floor, adjacent pieces of equal floor merged, so its size is the number of distinct runs of
/// floors (one per freed allocation that was not reused and fenced again). Thread-safe: checks
/// take a shared lock, raise() the exclusive one. A same-process copy keeps its check's shared lock
/// (an `access`) until its bytes have moved, so raise() returns only once no admitted copy of the
/// range is still running.
///
/// Costs: admits() is O(log n + k), n the pieces of the map, k those overlapping the range; k is 1
/// when the range lies in one run of floors (an access to one live allocation whose space was fenced
/// whole), else the number of freed allocations the range overlaps. raise() is O(log n + k).

#include <cstdint>
#include <map>
#include <mutex>
#include <shared_mutex>

namespace kvferry::memory {

class fence_map {
public:
  fence_map() = default;
  fence_map(const fence_map&) = delete;
  fence_map& operator=(const fence_map&) = delete;

  /// True when `token` is non-zero and greater than the floor everywhere in [addr, addr+len).
  /// False for an empty range or one that wraps past the end of the address space.
  [[nodiscard]] bool admits(uint64_t addr, uint64_t len, uint64_t token) const;

  /// Sets the floor of every byte of [addr, addr+len) to max(its floor, `floor`): floors never go
  /// down. Waits while an `access` is held. An empty or wrapping range changes nothing.
  void raise(uint64_t addr, uint64_t len, uint64_t floor);

  /// The highest floor in [addr, addr+len) (0 for an empty or wrapping range); for messages.
  [[nodiscard]] uint64_t max_floor(uint64_t addr, uint64_t len) const;

  /// Pieces in the map (1 while every floor is equal, e.g. 0 before any raise).
  [[nodiscard]] size_t size() const;

  /// A check that stays valid while held (RAII): admitted or not, as admits() says; while an
  /// admitted access is held, raise() of any range waits. Held by a copy from its check until its
  /// last byte moved; must not be held across anything that waits for another thread.
  class access {
  public:
    access(const fence_map& map, uint64_t addr, uint64_t len, uint64_t token);
    access(access&&) noexcept = default;
    access& operator=(access&&) noexcept = default;
    access(const access&) = delete;
    access& operator=(const access&) = delete;

    /// True when the access was admitted (and the shared lock is held).
    explicit operator bool() const noexcept { return lock_.owns_lock(); }

  private:
    std::shared_lock<std::shared_mutex> lock_;
  };

private:
  /// max floor over [addr, last], inclusive; the caller holds the lock.
  [[nodiscard]] uint64_t max_floor_locked(uint64_t addr, uint64_t last) const;

  mutable std::shared_mutex mutex_;
  /// Piece start -> floor of [start, next start); always holds a piece starting at 0.
  std::map<uint64_t, uint64_t> floors_{{0, 0}};
};

} // namespace kvferry::memory
