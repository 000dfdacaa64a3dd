#pragma once
/// Task states, as serving engines know them from Mooncake's transfer engine.
///
///   WAITING --dispatch--> PENDING --last slice ok----------------> COMPLETED
///      |                     |------slice failed, retries spent--> FAILED
///      |                     |------deadline passed--------------> TIMEOUT
///      +---------------------+------batch freed / engine stops---> CANCELED
///
/// The four states on the right are terminal. Only the transfer coordinator that owns a task moves
/// it, and it moves it into a terminal state exactly once. INVALID is never given to an accepted
/// task; it exists for compatibility (a status query for an index that names no task returns the
/// error errc::unknown_task instead).

#include <cstdint>
#include <string>

#include "config/error.hpp"

namespace kvferry {

enum class task_state : uint8_t {
  waiting = 0,
  pending = 1,
  invalid = 2,
  canceled = 3,
  completed = 4,
  timeout = 5,
  failed = 6,
};

[[nodiscard]] constexpr bool is_terminal(task_state s) noexcept {
  return s == task_state::canceled || s == task_state::completed || s == task_state::timeout
         || s == task_state::failed;
}

/// "WAITING", "COMPLETED", ...
[[nodiscard]] const char* to_string(task_state s) noexcept;

/// One task's status.
struct transfer_status {
  task_state state = task_state::waiting;
  /// Bytes of the task that are in place (all of them when COMPLETED).
  uint64_t transferred_bytes = 0;
  /// Why a task ended FAILED, TIMEOUT or CANCELED (errc::none otherwise).
  errc code = errc::none;
  std::string reason;
};

/// A batch's tasks counted by state.
struct batch_summary {
  uint32_t tasks = 0;
  uint32_t waiting = 0;
  uint32_t pending = 0;
  uint32_t completed = 0;
  uint32_t failed = 0;
  uint32_t timeout = 0;
  uint32_t canceled = 0;
  uint64_t transferred_bytes = 0;

  [[nodiscard]] uint32_t terminal() const noexcept { return completed + failed + timeout + canceled; }
  [[nodiscard]] bool all_terminal() const noexcept { return terminal() == tasks; }
};

} // namespace kvferry
