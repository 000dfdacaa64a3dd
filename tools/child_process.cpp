#include "tools/child_process.hpp"

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <thread>

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace kvferry::tools {

child_process::child_process(const std::vector<std::string>& argv) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0)
    return;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  // The child must not inherit blocked SIGINT/SIGTERM from a parent that blocks them.
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  std::vector<char*> args;
  for (const auto& a : argv)
    args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  if (posix_spawn(&pid_, args[0], &actions, &attr, args.data(), environ) != 0)
    pid_ = -1;
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  ::close(fds[1]);
  out_fd_ = fds[0];
}

child_process::~child_process() {
  if (pid_ > 0 && !reaped_) {
    signal(SIGTERM);
    if (wait(std::chrono::milliseconds(5000)) == -1) {
      signal(SIGKILL);
      wait(std::chrono::milliseconds(5000));
    }
  }
  if (out_fd_ >= 0)
    ::close(out_fd_);
}

std::optional<std::string> child_process::read_line(std::chrono::milliseconds timeout) {
  auto until = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto nl = buffer_.find('\n');
    if (nl != std::string::npos) {
      auto line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      return line;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      until - std::chrono::steady_clock::now());
    if (left.count() <= 0 || out_fd_ < 0)
      return std::nullopt;
    pollfd p{out_fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0)
      continue;
    char chunk[4096];
    auto n = ::read(out_fd_, chunk, sizeof(chunk));
    if (n <= 0) {
      if (n < 0 && errno == EINTR)
        continue;
      if (!buffer_.empty()) {
        auto line = std::move(buffer_);
        buffer_.clear();
        return line;
      }
      return std::nullopt;
    }
    buffer_.append(chunk, static_cast<size_t>(n));
  }
}

std::optional<std::string> child_process::wait_for_line(const std::string& prefix,
                                                        std::chrono::milliseconds timeout,
                                                        bool echo) {
  auto until = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      until - std::chrono::steady_clock::now());
    if (left.count() <= 0)
      return std::nullopt;
    auto line = read_line(left);
    if (!line)
      return std::nullopt;
    if (echo)
      std::printf("%s\n", line->c_str());
    if (line->compare(0, prefix.size(), prefix) == 0)
      return line->substr(prefix.size());
  }
}

void child_process::signal(int sig) {
  if (pid_ > 0 && !reaped_)
    ::kill(pid_, sig);
}

int child_process::wait(std::chrono::milliseconds timeout) {
  if (pid_ <= 0)
    return -1;
  auto until = std::chrono::steady_clock::now() + timeout;
  while (!reaped_) {
    int status = 0;
    auto rc = ::waitpid(pid_, &status, WNOHANG);
    if (rc == pid_) {
      reaped_ = true;
      status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      break;
    }
    if (rc < 0 && errno != EINTR)
      return -1;
    if (std::chrono::steady_clock::now() > until)
      return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return status_;
}

} // namespace kvferry::tools
