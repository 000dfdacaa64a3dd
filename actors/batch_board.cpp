#include "actors/batch_board.hpp"

namespace kvferry {

batch_board::batch_board(uint64_t id, uint32_t capacity)
  : id_(id), capacity_(capacity), slots_(std::make_unique<slot[]>(capacity)) {
}

caf::expected<uint32_t> batch_board::reserve(uint32_t count) {
  std::lock_guard<std::mutex> guard(reserve_mutex_);
  if (freed())
    return make_error(errc::unknown_batch,
                      "batch " + std::to_string(id_) + " was freed; allocate a new batch");
  auto used = reserved_.load(std::memory_order_relaxed);
  if (count > capacity_ - used)
    return make_error(errc::batch_full, "batch " + std::to_string(id_) + " has capacity "
                                          + std::to_string(capacity_) + ", "
                                          + std::to_string(used) + " tasks already submitted; "
                                          + std::to_string(count) + " more do not fit");
  reserved_.store(used + count, std::memory_order_release);
  return used;
}

bool batch_board::mark_freed() noexcept {
  std::lock_guard<std::mutex> guard(reserve_mutex_);
  return !freed_.exchange(true, std::memory_order_acq_rel);
}

transfer_status batch_board::status(uint32_t index) const {
  transfer_status out;
  const auto& s = slots_[index];
  out.state = static_cast<task_state>(s.state.load(std::memory_order_acquire));
  out.transferred_bytes = s.bytes.load(std::memory_order_acquire);
  if (is_terminal(out.state)) {
    // Written once, before the terminal state was published.
    out.code = s.code;
    out.reason = s.reason;
  }
  return out;
}

batch_summary batch_board::summary() const {
  batch_summary out;
  out.tasks = reserved();
  for (uint32_t i = 0; i < out.tasks; ++i) {
    const auto& s = slots_[i];
    auto state = static_cast<task_state>(s.state.load(std::memory_order_acquire));
    out.transferred_bytes += s.bytes.load(std::memory_order_acquire);
    switch (state) {
      case task_state::waiting:
      case task_state::invalid: ++out.waiting; break;
      case task_state::pending: ++out.pending; break;
      case task_state::completed: ++out.completed; break;
      case task_state::failed: ++out.failed; break;
      case task_state::timeout: ++out.timeout; break;
      case task_state::canceled: ++out.canceled; break;
    }
  }
  return out;
}

bool batch_board::wait_until(std::chrono::steady_clock::time_point until) {
  auto done = [this] {
    return terminal_.load(std::memory_order_seq_cst) >= reserved_.load(std::memory_order_seq_cst);
  };
  if (done())
    return true;
  waiters_.fetch_add(1, std::memory_order_seq_cst);
  bool result;
  {
    std::unique_lock<std::mutex> guard(wait_mutex_);
    result = wait_cv_.wait_until(guard, until, done);
  }
  waiters_.fetch_sub(1, std::memory_order_seq_cst);
  return result;
}

uint32_t batch_board::resolutions(uint32_t index) const noexcept {
  return slots_[index].resolutions.load(std::memory_order_acquire);
}

void batch_board::set_pending(uint32_t index) noexcept {
  auto& s = slots_[index];
  auto expected = static_cast<uint8_t>(task_state::waiting);
  s.state.compare_exchange_strong(expected, static_cast<uint8_t>(task_state::pending),
                                  std::memory_order_acq_rel);
}

bool batch_board::resolve(uint32_t index, task_state state, uint64_t bytes, errc code,
                          std::string reason) {
  auto& s = slots_[index];
  if (is_terminal(static_cast<task_state>(s.state.load(std::memory_order_acquire)))) {
    repeated_.fetch_add(1, std::memory_order_acq_rel);
    return false;
  }
  s.code = code;
  s.reason = std::move(reason);
  s.bytes.store(bytes, std::memory_order_release);
  s.resolutions.fetch_add(1, std::memory_order_acq_rel);
  s.state.store(static_cast<uint8_t>(state), std::memory_order_release);
  terminal_.fetch_add(1, std::memory_order_seq_cst);
  if (waiters_.load(std::memory_order_seq_cst) > 0) {
    std::lock_guard<std::mutex> guard(wait_mutex_);
    wait_cv_.notify_all();
  }
  return true;
}

} // namespace kvferry
