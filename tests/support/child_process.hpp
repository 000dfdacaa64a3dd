#pragma once
/// Test support: a child process started with posix_spawn whose stdout and stderr are collected by
/// two reader threads (so a chatty child never blocks on a full pipe), with waits on its output
/// and its exit. RAII: the destructor kills (SIGKILL) and reaps a child that is still running, so a
/// failed check never leaves a process behind.
///
/// Also: a free TCP port on 127.0.0.1 (bind port 0, read it back, close) for tests that need a
/// fixed port, and a temporary directory removed on destruction.

#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <regex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace kvferry::test {

class child_process {
public:
  /// Starts `argv[0]` with the arguments `argv` (argv[0] included) and the caller's environment.
  /// Throws std::runtime_error when the process cannot be started.
  explicit child_process(std::vector<std::string> argv) : argv_(std::move(argv)) {
    int out[2];
    int err[2];
    if (::pipe2(out, O_CLOEXEC) != 0)
      throw std::runtime_error("pipe2: " + std::string(std::strerror(errno)));
    if (::pipe2(err, O_CLOEXEC) != 0) {
      ::close(out[0]);
      ::close(out[1]);
      throw std::runtime_error("pipe2: " + std::string(std::strerror(errno)));
    }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    // dup2 clears close-on-exec on the target descriptor; every other pipe end stays closed in
    // the child (several children may be started concurrently).
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&actions, err[1], STDERR_FILENO);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none;
    sigemptyset(&none);
    sigset_t defaults;
    sigemptyset(&defaults);
    sigaddset(&defaults, SIGINT);
    sigaddset(&defaults, SIGTERM);
    sigaddset(&defaults, SIGPIPE);
    sigaddset(&defaults, SIGCHLD);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    std::vector<char*> args;
    for (auto& a : argv_)
      args.push_back(a.data());
    args.push_back(nullptr);
    int rc = ::posix_spawn(&pid_, args[0], &actions, &attr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    ::close(out[1]);
    ::close(err[1]);
    if (rc != 0) {
      ::close(out[0]);
      ::close(err[0]);
      throw std::runtime_error("posix_spawn " + argv_[0] + ": " + std::strerror(rc));
    }
    out_reader_ = std::thread([this, fd = out[0]] { collect(fd, out_); });
    err_reader_ = std::thread([this, fd = err[0]] { collect(fd, err_); });
  }

  ~child_process() {
    if (!exited_) {
      ::kill(pid_, SIGCONT); // a stopped child dies of SIGKILL too, but be explicit
      ::kill(pid_, SIGKILL);
      int status = 0;
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
      exited_ = true;
    }
    if (out_reader_.joinable())
      out_reader_.join();
    if (err_reader_.joinable())
      err_reader_.join();
  }

  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;

  [[nodiscard]] pid_t pid() const noexcept { return pid_; }

  /// The command line, for messages.
  [[nodiscard]] std::string command_line() const {
    std::string s;
    for (const auto& a : argv_)
      s += (s.empty() ? "" : " ") + a;
    return s;
  }

  bool signal(int sig) { return !exited_ && ::kill(pid_, sig) == 0; }

  /// True while the child has not exited (reaps it when it has).
  bool running() {
    if (exited_)
      return false;
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      exited_ = true;
      status_ = status;
      return false;
    }
    return true;
  }

  /// Waits for the child to exit; its wait status, or nullopt after `timeout`.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout) {
    auto until = std::chrono::steady_clock::now() + timeout;
    while (running()) {
      if (std::chrono::steady_clock::now() > until)
        return std::nullopt;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    // Let the readers take the last output (the pipes reach EOF once the child is gone).
    if (out_reader_.joinable())
      out_reader_.join();
    if (err_reader_.joinable())
      err_reader_.join();
    return status_;
  }

  /// Exit code of a child that exited normally; -signal when a signal ended it; nullopt on timeout.
  std::optional<int> wait_exit_code(std::chrono::milliseconds timeout) {
    auto st = wait_exit(timeout);
    if (!st)
      return std::nullopt;
    if (WIFEXITED(*st))
      return WEXITSTATUS(*st);
    if (WIFSIGNALED(*st))
      return -WTERMSIG(*st);
    return -1000;
  }

  [[nodiscard]] std::string out() const {
    std::lock_guard<std::mutex> guard(mutex_);
    return out_;
  }
  [[nodiscard]] std::string err() const {
    std::lock_guard<std::mutex> guard(mutex_);
    return err_;
  }

  /// Waits until stdout matches `pattern`; returns the first sub-match (or the whole match).
  /// nullopt on timeout or when the child's stdout ended without a match.
  std::optional<std::string> wait_for_stdout(const std::regex& pattern,
                                             std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> guard(mutex_);
    auto until = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      std::smatch m;
      if (std::regex_search(out_, m, pattern))
        return m.size() > 1 ? m[1].str() : m[0].str();
      if (out_closed_)
        return std::nullopt;
      if (changed_.wait_until(guard, until) == std::cv_status::timeout) {
        if (std::regex_search(out_, m, pattern))
          return m.size() > 1 ? m[1].str() : m[0].str();
        return std::nullopt;
      }
    }
  }

  /// Both streams, for failure messages.
  [[nodiscard]] std::string transcript() const {
    std::lock_guard<std::mutex> guard(mutex_);
    return "--- " + command_line() + "\n--- stdout:\n" + out_ + "--- stderr:\n" + err_;
  }

private:
  void collect(int fd, std::string& into) {
    char buf[4096];
    for (;;) {
      ssize_t n = ::read(fd, buf, sizeof(buf));
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        break;
      std::lock_guard<std::mutex> guard(mutex_);
      into.append(buf, static_cast<size_t>(n));
      changed_.notify_all();
    }
    ::close(fd);
    std::lock_guard<std::mutex> guard(mutex_);
    if (&into == &out_)
      out_closed_ = true;
    changed_.notify_all();
  }

  std::vector<std::string> argv_;
  pid_t pid_ = -1;
  bool exited_ = false;
  int status_ = 0;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::string out_;
  std::string err_;
  bool out_closed_ = false;
  std::thread out_reader_;
  std::thread err_reader_;
};

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, read back, closed).
/// A blocking TCP connection to 127.0.0.1:port, switched to non-blocking when asked; -1 when it
/// could not be made.
inline int connect_loopback(uint16_t port, bool nonblocking = false) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  if (nonblocking)
    ::fcntl(fd, F_SETFL, O_NONBLOCK);
  return fd;
}

inline uint16_t free_tcp_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    throw std::runtime_error("socket: " + std::string(std::strerror(errno)));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0
      || ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ::close(fd);
    throw std::runtime_error("bind 127.0.0.1:0: " + std::string(std::strerror(errno)));
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

/// A fresh directory under the system's temporary directory, removed with its contents.
class temp_dir {
public:
  explicit temp_dir(const std::string& prefix) {
    auto templ = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
    if (::mkdtemp(templ.data()) == nullptr)
      throw std::runtime_error("mkdtemp: " + std::string(std::strerror(errno)));
    path_ = templ;
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  [[nodiscard]] const std::filesystem::path& path() const noexcept { return path_; }

  /// Writes `text` to a file in the directory and returns its path.
  std::string write(const std::string& name, const std::string& text) const {
    auto p = path_ / name;
    std::ofstream f(p);
    f << text;
    return p.string();
  }

private:
  std::filesystem::path path_;
};

/// A node configuration file's text (P2PHANDSHAKE, tcp, loopback).
inline std::string node_config(uint16_t rpc_port, uint16_t data_port, unsigned deadline_ms,
                               unsigned worker_count = 2, const std::string& log_level = "warn") {
#ifdef KVFERRY_CONFORMANCE_RDMA
  // The conformance suite over RDMA: the node's NICs are the emulated provider's.
  const std::string transport = "\"rdma\",\"kvferry\":{\"rdma_provider\":\"emulated\",\"rpc_port\":";
#else
  const std::string transport = "\"tcp\",\"kvferry\":{\"rpc_port\":";
#endif
  return "{\"local_hostname\":\"127.0.0.1\",\"metadata_server\":\"P2PHANDSHAKE\",\"protocol\":"
         + transport
         + std::to_string(rpc_port) + ",\"data_port\":" + std::to_string(data_port)
         + ",\"task_deadline_ms\":" + std::to_string(deadline_ms)
         + ",\"worker_count\":" + std::to_string(worker_count) + ",\"log_level\":\"" + log_level
         + "\"}}";
}

} // namespace kvferry::test
