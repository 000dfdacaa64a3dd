#pragma once
/// A child process started with posix_spawn whose stdout is read line by line. The destructor
/// terminates (SIGTERM, then SIGKILL) and reaps it, so no process outlives its owner.

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include <sys/types.h>

namespace kvferry::tools {

class child_process {
public:
  /// Starts `argv[0]` with `argv`; stderr is inherited, stdout is captured.
  explicit child_process(const std::vector<std::string>& argv);
  ~child_process();
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;

  [[nodiscard]] bool started() const noexcept { return pid_ > 0; }
  [[nodiscard]] pid_t pid() const noexcept { return pid_; }

  /// Next stdout line, or nothing at end of output or after `timeout`.
  std::optional<std::string> read_line(std::chrono::milliseconds timeout);
  /// Reads lines until one starts with `prefix`; returns the rest of that line.
  std::optional<std::string> wait_for_line(const std::string& prefix,
                                           std::chrono::milliseconds timeout,
                                           bool echo = false);

  /// Sends `sig`.
  void signal(int sig);
  /// Waits for exit; returns the exit code, 128+signal when killed, or -1 after `timeout`.
  int wait(std::chrono::milliseconds timeout);

private:
  pid_t pid_ = -1;
  int out_fd_ = -1;
  std::string buffer_;
  bool reaped_ = false;
  int status_ = -1;
};

} // namespace kvferry::tools
