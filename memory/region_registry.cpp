#include "memory/region_registry.hpp"

#include <algorithm>
#include <cstdio>

#include "config/error.hpp"

namespace kvferry::memory {

namespace {


std::string range_text(uint64_t base, uint64_t len) {
  return "[" + hex(base) + ", " + hex(base + len) + ")";
}

} // namespace

const region* region_table::find(uint64_t addr, uint64_t len) const noexcept {
  return find_containing<region>(regions_, addr, len);
}

const region* region_table::find_base(uint64_t base) const noexcept {
  auto it = std::lower_bound(regions_.begin(), regions_.end(), base,
                             [](const region& r, uint64_t b) { return r.base < b; });
  return it != regions_.end() && it->base == base ? &*it : nullptr;
}

const region* region_table::find_overlap(uint64_t addr, uint64_t len) const noexcept {
  auto it = std::upper_bound(regions_.begin(), regions_.end(), addr,
                             [](uint64_t a, const region& r) { return a < r.base; });
  if (it != regions_.begin()) {
    auto prev = std::prev(it);
    if (prev->end() > addr)
      return &*prev;
  }
  if (it != regions_.end() && it->base < addr + len)
    return &*it;
  return nullptr;
}

caf::expected<region> region_registry::add(uint64_t base, uint64_t length, location where) {
  if (base == 0)
    return make_error(errc::invalid_argument, "register memory: address is null");
  if (length == 0)
    return make_error(errc::invalid_argument,
                      "register memory at " + hex(base) + ": length is 0; expected at least 1 byte");
  if (base + length < base)
    return make_error(errc::invalid_argument, "register memory at " + hex(base) + ": length "
                                                + std::to_string(length)
                                                + " wraps around the address space");
  std::lock_guard<std::mutex> guard(write_mutex_);
  auto current = table_.load(std::memory_order_acquire);
  if (auto* other = current->find_overlap(base, length))
    return make_error(errc::overlapping_region,
                      "register memory " + range_text(base, length) + " overlaps registered region "
                        + range_text(other->base, other->length));
  std::vector<region> next = current->regions();
  region added{base, length, where};
  next.insert(std::upper_bound(next.begin(), next.end(), base,
                               [](uint64_t b, const region& r) { return b < r.base; }),
              added);
  table_.store(std::make_shared<const region_table>(std::move(next)), std::memory_order_release);
  version_.fetch_add(1, std::memory_order_acq_rel);
  return added;
}

caf::expected<region> region_registry::remove(uint64_t base) {
  std::lock_guard<std::mutex> guard(write_mutex_);
  auto current = table_.load(std::memory_order_acquire);
  auto* found = current->find_base(base);
  if (found == nullptr)
    return make_error(errc::unknown_region,
                      "unregister memory: no registered region starts at " + hex(base));
  region removed = *found;
  std::vector<region> next;
  next.reserve(current->size() - 1);
  for (const auto& r : current->regions())
    if (r.base != base)
      next.push_back(r);
  table_.store(std::make_shared<const region_table>(std::move(next)), std::memory_order_release);
  version_.fetch_add(1, std::memory_order_acq_rel);
  return removed;
}

std::optional<region> region_registry::find(uint64_t addr, uint64_t len) const {
  auto table = snapshot();
  if (auto* r = table->find(addr, len))
    return *r;
  return std::nullopt;
}

} // namespace kvferry::memory
