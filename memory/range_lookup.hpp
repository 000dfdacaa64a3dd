#pragma once
/// The one bounds check and the one lookup used for every registered range, local or remote.

#include <algorithm>
#include <cstdint>

namespace kvferry::memory {

/// True when [addr, addr+len) lies inside [base, base+length): len > 0, no wrap-around.
[[nodiscard]] constexpr bool range_contains(uint64_t base, uint64_t length, uint64_t addr,
                                            uint64_t len) noexcept {
  return len > 0 && addr >= base && addr - base <= length && len <= length - (addr - base);
}

/// In `sorted` (ranges with `base` and `contains`, sorted by base, non-overlapping), the range
/// holding all of [addr, addr+len), or nullptr. O(log n).
template <class Range, class Container>
[[nodiscard]] const Range* find_containing(const Container& sorted, uint64_t addr,
                                           uint64_t len) noexcept {
  auto it = std::upper_bound(sorted.begin(), sorted.end(), addr,
                             [](uint64_t a, const Range& r) { return a < r.base; });
  if (it == sorted.begin())
    return nullptr;
  --it;
  return it->contains(addr, len) ? &*it : nullptr;
}

} // namespace kvferry::memory
