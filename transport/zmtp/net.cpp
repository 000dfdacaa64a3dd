#include "transport/zmtp/net.hpp"

#include <cerrno>
#include <charconv>
#include <cstring>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config/error.hpp"

namespace kvferry::transport::zmtp {

namespace {

std::string strip_brackets(const std::string& host) {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    return host.substr(1, host.size() - 2);
  return host;
}

struct addrinfo_list {
  addrinfo* list = nullptr;
  ~addrinfo_list() {
    if (list)
      ::freeaddrinfo(list);
  }
};

/// Resolves host:port and returns the first non-blocking socket for which `use` (bind+listen or
/// connect) succeeds; errors name `what` and why.
template <class Use>
caf::expected<unique_fd> open_socket(const std::string& host, uint16_t port, bool passive,
                                     const std::string& what, errc resolve_error, Use use) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo_list res;
  auto service = std::to_string(port);
  auto h = strip_brackets(host);
  int rc = ::getaddrinfo(passive && h == "*" ? nullptr : h.c_str(), service.c_str(), &hints,
                         &res.list);
  if (rc != 0)
    return make_error(resolve_error, what + ": cannot resolve the host: " + ::gai_strerror(rc));
  std::string last = "no address";
  for (auto* ai = res.list; ai != nullptr; ai = ai->ai_next) {
    unique_fd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                          ai->ai_protocol));
    if (fd && use(fd.get(), *ai))
      return fd;
    last = std::strerror(errno);
  }
  return make_error(passive ? errc::transport_failure : errc::peer_unreachable, what + ": " + last);
}

} // namespace

void unique_fd::reset() noexcept {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
}

bool valid_host(const std::string& host) noexcept {
  if (host.empty() || host.size() > 255)
    return false;
  for (char c : host) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.'
              || c == '-' || c == '_' || c == ':' || c == '[' || c == ']' || c == '%';
    if (!ok)
      return false;
  }
  return true;
}

bool parse_tcp_endpoint(const std::string& endpoint, std::string& host, uint16_t& port) {
  constexpr std::string_view scheme = "tcp://";
  if (endpoint.size() > 512 || endpoint.compare(0, scheme.size(), scheme) != 0)
    return false;
  auto rest = std::string_view(endpoint).substr(scheme.size());
  auto colon = rest.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 >= rest.size())
    return false;
  unsigned value = 0;
  auto digits = rest.substr(colon + 1);
  auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (ec != std::errc{} || p != digits.data() + digits.size() || value == 0 || value > 65535)
    return false;
  std::string h(rest.substr(0, colon));
  if (!valid_host(h))
    return false;
  // A bare IPv6 address needs brackets ("tcp://[::1]:5"); "tcp://::1:5" is ambiguous.
  if (h.find(':') != std::string::npos && h.front() != '[')
    return false;
  host = std::move(h);
  port = static_cast<uint16_t>(value);
  return true;
}

caf::expected<unique_fd> listen_tcp(const std::string& host, uint16_t port, int backlog) {
  auto where = host + ":" + std::to_string(port);
  if (!valid_host(host))
    return make_error(errc::invalid_argument, "listen on '" + host + "': not a host name or address");
  return open_socket(host, port, true, "listen on " + where, errc::invalid_argument,
                     [backlog](int fd, const addrinfo& ai) {
                       int one = 1;
                       ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
                       return ::bind(fd, ai.ai_addr, ai.ai_addrlen) == 0
                              && ::listen(fd, backlog) == 0;
                     });
}

uint16_t local_port(int fd) noexcept {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0)
    return 0;
  if (ss.ss_family == AF_INET)
    return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  if (ss.ss_family == AF_INET6)
    return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return 0;
}

caf::expected<unique_fd> connect_tcp(const std::string& host, uint16_t port) {
  auto where = host + ":" + std::to_string(port);
  if (!valid_host(host) || port == 0)
    return make_error(errc::invalid_argument,
                      "connect to '" + where + "': not a host name or address and port");
  return open_socket(host, port, false, "connect to " + where, errc::peer_unreachable,
                     [](int fd, const addrinfo& ai) {
                       int one = 1;
                       ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                       return ::connect(fd, ai.ai_addr, ai.ai_addrlen) == 0 || errno == EINPROGRESS;
                     });
}

std::string peer_host(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0)
    return "?";
  char text[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET)
    ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr, text, sizeof(text));
  else if (ss.ss_family == AF_INET6)
    ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr, text, sizeof(text));
  else
    return "?";
  return text;
}

doorbell::doorbell() : fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}

void doorbell::ring() noexcept {
  uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(fd_.get(), &one, sizeof(one));
}

void doorbell::drain() noexcept {
  uint64_t value;
  while (::read(fd_.get(), &value, sizeof(value)) > 0) {
  }
}

} // namespace kvferry::transport::zmtp
