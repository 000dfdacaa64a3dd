#include "memory/region_registry.hpp"

#include <algorithm>

#include "config/error.hpp"

namespace kvferry::memory {

namespace {

std::string range_text(uint64_t base, uint64_t len) {
  return "[" + hex(base) + ", " + hex(base + len) + ")";
}

} // namespace

bool region_state::try_acquire() noexcept {
  // Dekker-style with remove(): users_ is raised before removing_ is read, and remove() sets
  // removing_ before it reads users_ (both sequentially consistent), so either this use sees the
  // removal and backs off, or the removal sees this use and waits for it.
  users_.fetch_add(1, std::memory_order_seq_cst);
  if (removing_.load(std::memory_order_seq_cst)) {
    release();
    return false;
  }
  return true;
}

void region_state::release() noexcept {
  if (users_.fetch_sub(1, std::memory_order_seq_cst) == 1
      && removing_.load(std::memory_order_seq_cst)) {
    std::lock_guard<std::mutex> guard(mutex_);
    unused_.notify_all();
  }
}

bool region_state::wait_unused(std::chrono::steady_clock::time_point until) {
  std::unique_lock<std::mutex> lock(mutex_);
  return unused_.wait_until(lock, until,
                            [this] { return users_.load(std::memory_order_seq_cst) == 0; });
}

region_lease::region_lease(const region& r) {
  if (r.state && r.state->try_acquire())
    state_ = r.state;
}

region_lease& region_lease::operator=(region_lease&& other) noexcept {
  if (this != &other) {
    reset();
    state_ = std::move(other.state_);
  }
  return *this;
}

void region_lease::reset() noexcept {
  if (state_) {
    state_->release();
    state_.reset();
  }
}

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

void region_registry::publish(std::vector<region> next) {
  table_.store(std::make_shared<const region_table>(std::move(next)), std::memory_order_release);
  version_.fetch_add(1, std::memory_order_acq_rel);
}

caf::expected<region> region_registry::add(uint64_t base, uint64_t length, location where,
                                           bool fenced, std::vector<uint32_t> rdma_keys) {
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
  if (closed())
    return make_error(errc::shutting_down, "register memory " + range_text(base, length)
                                             + ": the segment was shut down");
  auto current = table_.load(std::memory_order_acquire);
  if (auto* other = current->find_overlap(base, length))
    return make_error(errc::overlapping_region,
                      "register memory " + range_text(base, length) + " overlaps registered region "
                        + range_text(other->base, other->length));
  for (const auto& r : removing_)
    if (base < r.end() && r.base < base + length)
      return make_error(errc::overlapping_region,
                        "register memory " + range_text(base, length) + " overlaps region "
                          + range_text(r.base, r.length) + ", which is being unregistered");
  std::vector<region> next = current->regions();
  region added{base, length, where, std::make_shared<region_state>(),
                fenced ? std::make_shared<fence_map>() : nullptr, std::move(rdma_keys)};
  next.insert(std::upper_bound(next.begin(), next.end(), base,
                               [](uint64_t b, const region& r) { return b < r.base; }),
              added);
  publish(std::move(next));
  return added;
}

caf::expected<region> region_registry::remove(uint64_t base, std::chrono::milliseconds timeout) {
  region removed;
  {
    std::lock_guard<std::mutex> guard(write_mutex_);
    auto current = table_.load(std::memory_order_acquire);
    auto* found = current->find_base(base);
    if (found == nullptr)
      return make_error(errc::unknown_region,
                        "unregister memory: no registered region starts at " + hex(base));
    removed = *found;
    removed.state->removing_.store(true, std::memory_order_seq_cst);
    std::vector<region> next;
    next.reserve(current->size() - 1);
    for (const auto& r : current->regions())
      if (r.base != base)
        next.push_back(r);
    publish(std::move(next));
    removing_.push_back(removed);
  }
  notify_fence(removed);
  bool unused = removed.state->wait_unused(std::chrono::steady_clock::now() + timeout);
  std::lock_guard<std::mutex> guard(write_mutex_);
  std::erase_if(removing_, [&](const region& r) { return r.base == base; });
  if (unused)
    return removed;
  // Still in use: put it back, so the caller's memory stays registered and usable.
  removed.state->removing_.store(false, std::memory_order_seq_cst);
  auto current = table_.load(std::memory_order_acquire);
  std::vector<region> next = current->regions();
  next.insert(std::upper_bound(next.begin(), next.end(), base,
                               [](uint64_t b, const region& r) { return b < r.base; }),
              removed);
  publish(std::move(next));
  return make_error(errc::busy, "unregister memory " + range_text(removed.base, removed.length)
                                  + ": still in use by " + std::to_string(removed.state->users())
                                  + " transfer(s) after " + std::to_string(timeout.count())
                                  + " ms; the region stays registered");
}

caf::error region_registry::fence(uint64_t region_base, uint64_t addr, uint64_t len,
                                  uint64_t floor, std::chrono::milliseconds timeout) {
  auto what = [&] {
    return "fence " + range_text(addr, len) + " of region at " + hex(region_base) + " to floor "
           + std::to_string(floor);
  };
  region fenced;
  {
    auto table = snapshot();
    const auto* r = table->find_base(region_base);
    if (r == nullptr)
      return make_error(errc::unknown_region,
                        what() + ": no registered region starts at " + hex(region_base));
    if (!r->fences)
      return make_error(errc::invalid_argument,
                        what() + ": the region " + range_text(r->base, r->length)
                          + " was not registered as fenced");
    if (!r->contains(addr, len))
      return make_error(errc::invalid_argument,
                        what() + ": the range is empty or not inside the region "
                          + range_text(r->base, r->length));
    fenced = *r;
  }
  // From here no check admits an older token for the range; raise() waited for the same-process
  // copies admitted before. The listeners end what other data paths admitted before.
  fenced.fences->raise(addr, len, floor);
  struct waiter {
    std::mutex mutex;
    std::condition_variable all_done;
    size_t pending = 0;
  };
  auto wait = std::make_shared<waiter>();
  {
    std::lock_guard<std::mutex> guard(listeners_mutex_);
    wait->pending = range_listeners_.size();
    for (auto& [id, listener] : range_listeners_) {
      auto once = std::make_shared<std::atomic<bool>>(false);
      listener(fenced, addr, len, [wait, once] {
        if (once->exchange(true))
          return;
        std::lock_guard<std::mutex> g(wait->mutex);
        if (--wait->pending == 0)
          wait->all_done.notify_all();
      });
    }
  }
  std::unique_lock<std::mutex> lock(wait->mutex);
  if (!wait->all_done.wait_for(lock, timeout, [&] { return wait->pending == 0; }))
    return make_error(errc::busy, what() + ": " + std::to_string(wait->pending)
                                    + " data path(s) did not confirm within "
                                    + std::to_string(timeout.count())
                                    + " ms that older accesses ended; the floor is raised, so no "
                                      "new one starts");
  return {};
}

size_t region_registry::close(std::chrono::milliseconds timeout) {
  std::vector<region> all;
  {
    std::lock_guard<std::mutex> guard(write_mutex_);
    if (closed_.exchange(true))
      return 0;
    all = table_.load(std::memory_order_acquire)->regions();
    for (auto& r : all)
      r.state->removing_.store(true, std::memory_order_seq_cst);
    publish({});
  }
  for (const auto& r : all)
    notify_fence(r);
  auto until = std::chrono::steady_clock::now() + timeout;
  size_t busy = 0;
  for (const auto& r : all)
    if (!r.state->wait_unused(until))
      ++busy;
  return busy;
}

std::optional<region> region_registry::find(uint64_t addr, uint64_t len) const {
  auto table = snapshot();
  if (auto* r = table->find(addr, len))
    return *r;
  return std::nullopt;
}

region_lease region_registry::lease(uint64_t addr, uint64_t len, location* where) const {
  auto table = snapshot();
  const auto* r = table->find(addr, len);
  if (r == nullptr)
    return {};
  region_lease out(*r);
  if (out && where != nullptr)
    *where = r->where;
  return out;
}

uint64_t region_registry::add_fence_listener(fence_listener listener) {
  std::lock_guard<std::mutex> guard(listeners_mutex_);
  auto id = next_listener_++;
  listeners_.emplace_back(id, std::move(listener));
  return id;
}

void region_registry::remove_fence_listener(uint64_t id) {
  std::lock_guard<std::mutex> guard(listeners_mutex_);
  std::erase_if(listeners_, [id](const auto& entry) { return entry.first == id; });
}

uint64_t region_registry::add_range_fence_listener(range_fence_listener listener) {
  std::lock_guard<std::mutex> guard(listeners_mutex_);
  auto id = next_listener_++;
  range_listeners_.emplace_back(id, std::move(listener));
  return id;
}

void region_registry::remove_range_fence_listener(uint64_t id) {
  std::lock_guard<std::mutex> guard(listeners_mutex_);
  std::erase_if(range_listeners_, [id](const auto& entry) { return entry.first == id; });
}

void region_registry::notify_fence(const region& r) {
  std::lock_guard<std::mutex> guard(listeners_mutex_);
  for (auto& [id, listener] : listeners_)
    listener(r);
}

} // namespace kvferry::memory
