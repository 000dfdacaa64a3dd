#pragma once
// Whether a thread of this process is blocked on a lock, for tests that show a call waits without
// guessing how long it takes: poll in_futex_wait() with test::eventually.

#include <fstream>
#include <string>

#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

namespace kvferry::test {

/// The kernel's id of the calling thread, as /proc/self/task names it.
inline pid_t current_thread_id() {
  return static_cast<pid_t>(::syscall(SYS_gettid));
}

/// True while thread `tid` of this process is blocked in a futex wait (a mutex, a shared mutex, a
/// condition variable): /proc/self/task/TID/syscall starts with the number of the system call the
/// thread is blocked in ("running" or -1 otherwise).
inline bool in_futex_wait(pid_t tid) {
  std::ifstream f("/proc/self/task/" + std::to_string(tid) + "/syscall");
  long number = -1;
  return (f >> number) && number == SYS_futex;
}

} // namespace kvferry::test
