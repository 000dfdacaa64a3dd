#include "memory/fence_map.hpp"

#include <algorithm>
#include <iterator>
#include <limits>

namespace kvferry::memory {

namespace {

constexpr uint64_t max_u64 = std::numeric_limits<uint64_t>::max();

/// The last byte of [addr, addr+len) in `last`; false for an empty range or one that wraps (a range
/// may end exactly at 2^64).
bool last_byte(uint64_t addr, uint64_t len, uint64_t& last) noexcept {
  if (len == 0 || len - 1 > max_u64 - addr)
    return false;
  last = addr + (len - 1);
  return true;
}

} // namespace

uint64_t fence_map::max_floor_locked(uint64_t addr, uint64_t last) const {
  auto it = std::prev(floors_.upper_bound(addr)); // a piece starts at 0: never begin()
  uint64_t highest = it->second;
  for (++it; it != floors_.end() && it->first <= last; ++it)
    highest = std::max(highest, it->second);
  return highest;
}

bool fence_map::admits(uint64_t addr, uint64_t len, uint64_t token) const {
  uint64_t last = 0;
  if (token == 0 || !last_byte(addr, len, last))
    return false;
  std::shared_lock<std::shared_mutex> guard(mutex_);
  auto it = std::prev(floors_.upper_bound(addr));
  if (it->second >= token)
    return false;
  for (++it; it != floors_.end() && it->first <= last; ++it)
    if (it->second >= token)
      return false;
  return true;
}

uint64_t fence_map::max_floor(uint64_t addr, uint64_t len) const {
  uint64_t last = 0;
  if (!last_byte(addr, len, last))
    return 0;
  std::shared_lock<std::shared_mutex> guard(mutex_);
  return max_floor_locked(addr, last);
}

void fence_map::raise(uint64_t addr, uint64_t len, uint64_t floor) {
  uint64_t last = 0;
  if (!last_byte(addr, len, last))
    return;
  std::unique_lock<std::shared_mutex> guard(mutex_);
  // A piece boundary at `at`: the piece holding it is cut in two (same floor) unless one starts there.
  auto cut = [this](uint64_t at) {
    auto holder = std::prev(floors_.upper_bound(at));
    if (holder->first == at)
      return holder;
    return floors_.emplace_hint(std::next(holder), at, holder->second);
  };
  auto first = cut(addr);
  auto end = last == max_u64 ? floors_.end() : cut(last + 1);
  for (auto it = first; it != end; ++it)
    it->second = std::max(it->second, floor);
  // Merge equal neighbours from the piece before the range up to the piece after it.
  auto it = first == floors_.begin() ? first : std::prev(first);
  for (;;) {
    auto next = std::next(it);
    if (next == floors_.end())
      break;
    const bool at_end = next == end;
    if (next->second == it->second)
      floors_.erase(next); // `it` now covers `next`'s piece too
    else
      it = next;
    if (at_end)
      break;
  }
}

size_t fence_map::size() const {
  std::shared_lock<std::shared_mutex> guard(mutex_);
  return floors_.size();
}

fence_map::access::access(const fence_map& map, uint64_t addr, uint64_t len, uint64_t token)
  : lock_(map.mutex_) {
  uint64_t last = 0;
  if (token == 0 || !last_byte(addr, len, last) || map.max_floor_locked(addr, last) >= token)
    lock_.unlock();
}

} // namespace kvferry::memory
