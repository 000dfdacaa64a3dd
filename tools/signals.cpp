#include "tools/signals.hpp"

#include <cerrno>
#include <ctime>

#include <pthread.h>

namespace kvferry::tools {

namespace {

sigset_t stop_set() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

} // namespace

void block_stop_signals() {
  auto set = stop_set();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

int wait_for_stop_signal(std::chrono::milliseconds timeout) {
  auto set = stop_set();
  for (;;) {
    int rc;
    if (timeout.count() < 0) {
      rc = sigwaitinfo(&set, nullptr);
    } else {
      timespec ts{static_cast<time_t>(timeout.count() / 1000),
                  static_cast<long>(timeout.count() % 1000) * 1000000L};
      rc = sigtimedwait(&set, nullptr, &ts);
      if (rc < 0 && errno == EAGAIN)
        return 0;
    }
    if (rc > 0)
      return rc;
    if (errno != EINTR)
      return 0;
  }
}

} // namespace kvferry::tools
