#include "actors/task_state.hpp"

namespace kvferry {

const char* to_string(task_state s) noexcept {
  switch (s) {
    case task_state::waiting: return "WAITING";
    case task_state::pending: return "PENDING";
    case task_state::invalid: return "INVALID";
    case task_state::canceled: return "CANCELED";
    case task_state::completed: return "COMPLETED";
    case task_state::timeout: return "TIMEOUT";
    case task_state::failed: return "FAILED";
  }
  return "UNKNOWN";
}

} // namespace kvferry
