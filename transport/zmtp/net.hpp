#pragma once
/// Sockets for kvferry's ZMTP endpoints: an owned file descriptor, endpoint parsing, a listening
/// socket and a non-blocking connect. Errors are values that name the host, the port and why.

#include <cstdint>
#include <string>

#include <caf/expected.hpp>

namespace kvferry::transport::zmtp {

/// Owns a file descriptor.
class unique_fd {
public:
  unique_fd() = default;
  explicit unique_fd(int fd) noexcept : fd_(fd) {}
  ~unique_fd() { reset(); }
  unique_fd(unique_fd&& other) noexcept : fd_(other.release()) {}
  unique_fd& operator=(unique_fd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = other.release();
    }
    return *this;
  }
  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;
  [[nodiscard]] int get() const noexcept { return fd_; }
  int release() noexcept {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset() noexcept;
  explicit operator bool() const noexcept { return fd_ >= 0; }

private:
  int fd_ = -1;
};

/// Parses "tcp://host:port" (host may be "[v6]"); false when it is not of that shape, the host is
/// empty, longer than 255 bytes or holds whitespace or control characters, or the port is not
/// 1-65535.
[[nodiscard]] bool parse_tcp_endpoint(const std::string& endpoint, std::string& host,
                                      uint16_t& port);

/// True when `host` is a plausible host name or address: 1-255 bytes of letters, digits and
/// ".-_:[]%" (no whitespace, no control characters).
[[nodiscard]] bool valid_host(const std::string& host) noexcept;

/// A non-blocking listening TCP socket bound to host:port (0 picks a free port).
[[nodiscard]] caf::expected<unique_fd> listen_tcp(const std::string& host, uint16_t port,
                                                  int backlog = 1024);

/// The local port of a bound socket.
[[nodiscard]] uint16_t local_port(int fd) noexcept;

/// Resolves `host` and starts a non-blocking TCP connect (completes asynchronously: wait for the
/// socket to become writable, then check SO_ERROR).
[[nodiscard]] caf::expected<unique_fd> connect_tcp(const std::string& host, uint16_t port);

/// The numeric address of a connected socket's peer ("127.0.0.1", "::1"), or "?".
[[nodiscard]] std::string peer_host(int fd);

/// An eventfd for waking a thread blocked in epoll/poll. Check it: creating one fails when the
/// process is out of file descriptors.
class doorbell {
public:
  doorbell();
  explicit operator bool() const noexcept { return static_cast<bool>(fd_); }
  [[nodiscard]] int fd() const noexcept { return fd_.get(); }
  void ring() noexcept;
  void drain() noexcept;

private:
  unique_fd fd_;
};

} // namespace kvferry::transport::zmtp
