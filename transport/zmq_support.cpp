#include "transport/zmq_support.hpp"

#include <cerrno>
#include <charconv>
#include <stdexcept>
#include <string>

#include <sys/eventfd.h>
#include <unistd.h>

namespace kvferry::transport {

std::shared_ptr<zmq::context_t> make_zmq_context(int io_threads) {
  auto ctx = std::make_shared<zmq::context_t>(io_threads);
  ctx->set(zmq::ctxopt::blocky, false); // closing a context never waits for unsent messages
  return ctx;
}

doorbell::doorbell() : fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
  if (fd_ < 0)
    throw std::runtime_error("eventfd failed: errno " + std::to_string(errno));
}

doorbell::~doorbell() {
  if (fd_ >= 0)
    ::close(fd_);
}

void doorbell::ring() noexcept {
  uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(fd_, &one, sizeof(one));
}

void doorbell::drain() noexcept {
  uint64_t value;
  while (::read(fd_, &value, sizeof(value)) > 0) {
  }
}

bool parse_tcp_endpoint(const std::string& endpoint, std::string& host, uint16_t& port) {
  constexpr std::string_view scheme = "tcp://";
  if (endpoint.compare(0, scheme.size(), scheme) != 0)
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
  host = std::string(rest.substr(0, colon));
  port = static_cast<uint16_t>(value);
  return true;
}

} // namespace kvferry::transport
