#pragma once
// A TCP proxy on loopback that a test can use as a link: it forwards between clients and an
// upstream port, and on command holds every byte (a frozen link), cuts every connection and
// refuses new ones (a link that is down), or comes back up on the same port.

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tests/support/child_process.hpp"

namespace kvferry::test {

class tcp_proxy {
public:
  explicit tcp_proxy(uint16_t upstream) : upstream_(upstream) {
    wake_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    listen_on(0);
    thread_ = std::thread([this] { run(); });
  }
  ~tcp_proxy() {
    stop_ = true;
    ring();
    thread_.join();
    for (auto& p : pairs_) {
      ::close(p.client);
      ::close(p.server);
    }
    if (listener_ >= 0)
      ::close(listener_);
    ::close(wake_);
  }
  tcp_proxy(const tcp_proxy&) = delete;
  tcp_proxy& operator=(const tcp_proxy&) = delete;

  [[nodiscard]] uint16_t port() const { return port_; }

  /// From now on nothing is forwarded (connections stay open; what clients send is swallowed):
  /// requests are in flight and never answered. Use cut() next (a frozen link loses its bytes).
  void freeze() {
    command(cmd_freeze);
  }
  /// The link goes down: every connection is closed and new ones are refused.
  void cut() {
    command(cmd_cut);
  }
  /// The link comes back on the same port, forwarding again.
  void restore() {
    frozen_ = false;
    command(cmd_restore);
  }
  /// Bytes clients sent that the proxy took (forwarded or held).
  [[nodiscard]] uint64_t client_bytes() const { return client_bytes_.load(); }
  [[nodiscard]] uint64_t accepted() const { return accepted_.load(); }

private:
  struct pair {
    int client;
    int server;
  };
  static constexpr int cmd_none = 0, cmd_cut = 1, cmd_restore = 2, cmd_freeze = 3;

  void ring() {
    uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_, &one, sizeof(one));
  }

  void command(int c) {
    {
      std::lock_guard<std::mutex> g(mutex_);
      pending_ = c;
      done_ = false;
    }
    ring();
    for (;;) { // wait until the proxy thread carried it out
      std::lock_guard<std::mutex> g(mutex_);
      if (done_)
        return;
      std::this_thread::yield();
    }
  }

  void listen_on(uint16_t port) {
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    ::setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    if (::bind(listener_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0
        || ::listen(listener_, 128) != 0)
      throw std::runtime_error("tcp_proxy: cannot listen");
    socklen_t len = sizeof(a);
    ::getsockname(listener_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
  }

  int connect_upstream() {
    int fd = connect_loopback(upstream_, true);
    if (fd < 0)
      return -1;
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
  }

  /// Moves what is readable from `from` to `to` (blocking writes: loopback drains fast).
  bool pump(int from, int to, bool count) {
    char buf[65536];
    for (;;) {
      auto n = ::recv(from, buf, sizeof(buf), MSG_DONTWAIT);
      if (n == 0)
        return false;
      if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK;
      if (count)
        client_bytes_ += static_cast<uint64_t>(n);
      size_t sent = 0;
      while (sent < static_cast<size_t>(n)) {
        auto w = ::send(to, buf + sent, static_cast<size_t>(n) - sent, MSG_NOSIGNAL);
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
          pollfd p{to, POLLOUT, 0};
          ::poll(&p, 1, 100);
          continue;
        }
        if (w <= 0)
          return false;
        sent += static_cast<size_t>(w);
      }
    }
  }

  void run() {
    while (!stop_) {
      std::vector<pollfd> fds;
      fds.push_back({wake_, POLLIN, 0});
      if (listener_ >= 0)
        fds.push_back({listener_, POLLIN, 0});
      const size_t first_pair = fds.size();
      for (auto& p : pairs_) {
        fds.push_back({p.client, POLLIN, 0});
        fds.push_back({p.server, static_cast<short>(frozen_ ? 0 : POLLIN), 0});
      }
      ::poll(fds.data(), fds.size(), 100);
      if (fds[0].revents & POLLIN) {
        uint64_t v;
        [[maybe_unused]] auto n = ::read(wake_, &v, sizeof(v));
      }
      int cmd;
      {
        std::lock_guard<std::mutex> g(mutex_);
        cmd = pending_;
        pending_ = cmd_none;
      }
      if (cmd == cmd_freeze) {
        frozen_ = true;
      } else if (cmd == cmd_cut) {
        for (auto& p : pairs_) {
          ::close(p.client);
          ::close(p.server);
        }
        pairs_.clear();
        if (listener_ >= 0)
          ::close(listener_);
        listener_ = -1;
      } else if (cmd == cmd_restore && listener_ < 0) {
        listen_on(port_);
      }
      if (cmd != cmd_none) {
        std::lock_guard<std::mutex> g(mutex_);
        done_ = true;
        continue;
      }
      if (listener_ >= 0 && fds.size() > 1 && (fds[1].revents & POLLIN)) {
        int c = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (c >= 0) {
          int s = connect_upstream();
          if (s < 0) {
            ::close(c);
          } else {
            int one = 1;
            ::setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            pairs_.push_back({c, s});
            ++accepted_;
          }
        }
      }
      if (frozen_) {
        // Held: take what clients send (counted, so a test sees requests went out) and drop it
        // when the link is cut; nothing reaches the upstream, nothing comes back.
        char buf[65536];
        for (size_t i = 0; i < pairs_.size(); ++i)
          if (fds[first_pair + 2 * i].revents & POLLIN)
            if (auto n = ::recv(pairs_[i].client, buf, sizeof(buf), MSG_DONTWAIT); n > 0)
              client_bytes_ += static_cast<uint64_t>(n);
        continue;
      }
      for (size_t i = 0; i < pairs_.size(); ++i) {
        auto& p = pairs_[i];
        bool ok = true;
        if (first_pair + 2 * i + 1 < fds.size()) {
          if (fds[first_pair + 2 * i].revents & (POLLIN | POLLHUP | POLLERR))
            ok = pump(p.client, p.server, true);
          if (ok && (fds[first_pair + 2 * i + 1].revents & (POLLIN | POLLHUP | POLLERR)))
            ok = pump(p.server, p.client, false);
        }
        if (!ok) {
          ::close(p.client);
          ::close(p.server);
          p.client = p.server = -1;
        }
      }
      std::erase_if(pairs_, [](const pair& p) { return p.client < 0; });
    }
  }

  uint16_t upstream_;
  uint16_t port_ = 0;
  int listener_ = -1;
  int wake_ = -1;
  std::vector<pair> pairs_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> frozen_{false};
  std::atomic<uint64_t> client_bytes_{0};
  std::atomic<uint64_t> accepted_{0};
  std::mutex mutex_;
  int pending_ = cmd_none;
  bool done_ = false;
  std::thread thread_;
};

} // namespace kvferry::test
