#pragma once
/// A batch's status board: where the owning transfer coordinator publishes each task's state, and
/// where API callers read it and wait for it.
///
/// Ownership: API callers reserve task indices (reserve) and mark the batch freed (mark_freed);
/// the coordinator is the board's only writer of task states (set_pending, resolve). resolve() is
/// the single place a task becomes terminal; a second call for the same task changes nothing and is
/// counted (it is structurally unreachable: the coordinator forgets a task when it resolves it).

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include <caf/expected.hpp>

#include "actors/task_state.hpp"

namespace kvferry {

class batch_board {
public:
  batch_board(uint64_t id, uint32_t capacity);
  batch_board(const batch_board&) = delete;
  batch_board& operator=(const batch_board&) = delete;

  [[nodiscard]] uint64_t id() const noexcept { return id_; }
  [[nodiscard]] uint32_t capacity() const noexcept { return capacity_; }

  // -- API side --------------------------------------------------------------------------------

  /// Reserves `count` task indices; returns the first. Fails with errc::batch_full when the batch
  /// has fewer free indices, and with errc::unknown_batch once the batch is freed.
  [[nodiscard]] caf::expected<uint32_t> reserve(uint32_t count);

  /// Marks the batch freed; false if it already was (double free).
  bool mark_freed() noexcept;
  [[nodiscard]] bool freed() const noexcept { return freed_.load(std::memory_order_acquire); }

  /// Task indices handed out so far.
  [[nodiscard]] uint32_t reserved() const noexcept {
    return reserved_.load(std::memory_order_acquire);
  }

  [[nodiscard]] transfer_status status(uint32_t index) const;
  [[nodiscard]] batch_summary summary() const;

  /// Blocks until every reserved task is terminal or `until` passes; true when all are terminal.
  bool wait_until(std::chrono::steady_clock::time_point until);

  /// How many times `index` was resolved (exactly 1 for a terminal task, 0 before).
  [[nodiscard]] uint32_t resolutions(uint32_t index) const noexcept;
  /// resolve() calls that found the task already terminal (always 0; checked by tests).
  [[nodiscard]] uint64_t repeated_resolutions() const noexcept {
    return repeated_.load(std::memory_order_acquire);
  }

  // -- coordinator side (single writer) ----------------------------------------------------------

  void set_pending(uint32_t index) noexcept;
  /// Publishes the terminal state. Returns false, and changes nothing, if already terminal.
  bool resolve(uint32_t index, task_state state, uint64_t bytes, errc code, std::string reason);

private:
  struct slot {
    std::atomic<uint8_t> state{static_cast<uint8_t>(task_state::waiting)};
    std::atomic<uint8_t> resolutions{0};
    std::atomic<uint64_t> bytes{0};
    errc code = errc::none;
    std::string reason;
  };

  const uint64_t id_;
  const uint32_t capacity_;
  std::unique_ptr<slot[]> slots_;
  std::mutex reserve_mutex_;
  std::atomic<uint32_t> reserved_{0};
  std::atomic<uint32_t> terminal_{0};
  std::atomic<bool> freed_{false};
  std::atomic<uint64_t> repeated_{0};
  std::atomic<uint32_t> waiters_{0};
  std::mutex wait_mutex_;
  std::condition_variable wait_cv_;
};

} // namespace kvferry
