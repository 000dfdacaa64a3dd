#pragma once
/// The registry of this process's registered memory regions.
///
/// Writers (register/unregister) are serialized by a mutex; readers take an immutable snapshot
/// (`region_table`) without blocking writers, and answer "is [addr, addr+len) inside one
/// registered region" in O(log n).

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include <caf/expected.hpp>

#include "memory/location.hpp"
#include "memory/range_lookup.hpp"

namespace kvferry::memory {

struct region {
  uint64_t base = 0;
  uint64_t length = 0;
  location where;

  [[nodiscard]] uint64_t end() const noexcept { return base + length; }
  /// True when [addr, addr+len) lies inside this region (len > 0, no wrap-around).
  [[nodiscard]] bool contains(uint64_t addr, uint64_t len) const noexcept {
    return range_contains(base, length, addr, len);
  }
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
  region_registry() : table_(std::make_shared<const region_table>()) {}
  region_registry(const region_registry&) = delete;
  region_registry& operator=(const region_registry&) = delete;

  /// Registers [base, base+length). Rejects a null base, zero length, address wrap-around and any
  /// overlap with a registered region; the error names both ranges.
  [[nodiscard]] caf::expected<region> add(uint64_t base, uint64_t length, location where);

  /// Removes the region that starts at `base`.
  [[nodiscard]] caf::expected<region> remove(uint64_t base);

  /// The current table; stays valid (and unchanged) while the caller holds it.
  [[nodiscard]] std::shared_ptr<const region_table> snapshot() const {
    return table_.load(std::memory_order_acquire);
  }

  /// Copy of the region holding [addr, addr+len), if any.
  [[nodiscard]] std::optional<region> find(uint64_t addr, uint64_t len) const;

  /// Bumped on every change; lets holders of derived data (descriptors) notice staleness.
  [[nodiscard]] uint64_t version() const noexcept {
    return version_.load(std::memory_order_acquire);
  }

private:
  std::mutex write_mutex_;
  std::atomic<std::shared_ptr<const region_table>> table_;
  std::atomic<uint64_t> version_{0};
};

} // namespace kvferry::memory
