#include "transport/http/server.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "config/error.hpp"
#include "config/log.hpp"

namespace kvferry::transport::http {

namespace {

using steady = std::chrono::steady_clock;

constexpr uint64_t listener_key = 0;
constexpr uint64_t doorbell_key = ~uint64_t{0};
constexpr auto accept_pause = std::chrono::milliseconds(100);
constexpr auto sweep_period = std::chrono::milliseconds(50);
/// Bounds of the lingering close after a final response.
constexpr auto drain_time = std::chrono::milliseconds(2000);
constexpr size_t drain_bytes = 256 << 10;

bool should_log(uint64_t count) noexcept {
  return count < 10 || count % 1000 == 0;
}

} // namespace

struct server::entry {
  entry(const session_limits& limits, const handler& h, response_counters& counters)
    : s(limits, h, counters) {}
  zmtp::unique_fd fd;
  uint64_t id = 0;
  std::string host;
  session s;
  steady::time_point created{};
  /// When the current phase began: its deadline is this plus the timeout.
  steady::time_point since{};
  session::phase last_phase = session::phase::fresh;
  uint32_t interest = 0;
  bool timed_out = false;
  bool peer_gone = false;
  /// The last response is out and the write side shut down: what the peer still sends is read
  /// and dropped until it closes (so that closing does not reset the connection before the peer
  /// read the response), for at most drain_time and drain_bytes.
  bool draining = false;
  size_t drained = 0;
};

server::server(server_options options, handler h)
  : options_(std::move(options)), handler_(std::move(h)) {
}

caf::expected<std::unique_ptr<server>> server::start(server_options options, handler h) {
  if (options.limits.request.max_head_bytes < 64 || options.max_connections == 0
      || options.max_connections_per_host == 0 || options.timeout.count() <= 0)
    return make_error(errc::invalid_argument,
                      options.name + ": limits must allow a connection, a 64-byte request head "
                                     "and a positive timeout");
  std::unique_ptr<server> s{new server(std::move(options), std::move(h))};
  auto fd = zmtp::listen_tcp(s->options_.bind_host, s->options_.port, 128);
  if (!fd)
    return fd.error();
  s->listener_ = std::move(*fd);
  s->port_ = zmtp::local_port(s->listener_.get());
  s->options_.name += " on " + s->options_.bind_host + ":" + std::to_string(s->port_);
  s->epoll_ = zmtp::unique_fd(::epoll_create1(EPOLL_CLOEXEC));
  if (!s->epoll_ || !s->wakeup_)
    return make_error(errc::transport_failure, s->options_.name + ": cannot create epoll/eventfd: "
                                                 + std::strerror(errno));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = listener_key;
  ::epoll_ctl(s->epoll_.get(), EPOLL_CTL_ADD, s->listener_.get(), &ev);
  ev.data.u64 = doorbell_key;
  ::epoll_ctl(s->epoll_.get(), EPOLL_CTL_ADD, s->wakeup_.fd(), &ev);
  try {
    s->thread_ = std::thread([raw = s.get()] { raw->run(); });
  } catch (const std::system_error& e) {
    return make_error(errc::transport_failure,
                      s->options_.name + ": cannot start its thread: " + e.what());
  }
  return s;
}

server::~server() {
  stop();
}

void server::stop() {
  if (stopping_.exchange(true))
    return;
  wakeup_.ring();
  if (thread_.joinable())
    thread_.join();
}

server_counters server::counters() const noexcept {
  server_counters c;
  c.accepted = accepted_.load();
  c.evicted = evicted_.load();
  c.timeouts = timeouts_.load();
  c.accept_failures = accept_failures_.load();
  c.open_connections = open_.load();
  c.held_bytes = held_.load();
  c.ok = responses_.ok.load();
  c.bad_request = responses_.bad_request.load();
  c.not_found = responses_.not_found.load();
  c.method_not_allowed = responses_.method_not_allowed.load();
  c.request_timeout = responses_.timeout.load();
  c.head_too_large = responses_.head_too_large.load();
  c.server_error = responses_.server_error.load();
  c.other = responses_.other.load();
  return c;
}

void server::update_held() {
  uint64_t held = 0;
  for (const auto& [id, e] : connections_)
    held += e->s.held_bytes();
  held_.store(held, std::memory_order_relaxed);
}

void server::close_connection(uint64_t id, const char* why) {
  auto it = connections_.find(id);
  if (it == connections_.end())
    return;
  auto& e = *it->second;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, e.fd.get(), nullptr);
  log::debug("{}: connection from {} closed: {}", options_.name, e.host, why);
  if (auto h = per_host_.find(e.host); h != per_host_.end() && --h->second == 0)
    per_host_.erase(h);
  connections_.erase(it);
  open_.store(connections_.size(), std::memory_order_relaxed);
}

bool server::evict_for(const std::string& host) {
  // The victim among the connections that count against the exceeded limit: one that sent
  // nothing, then one with a request not complete (oldest first in each), then an idle one (idle
  // the longest), one being answered only as a last resort.
  const bool host_limit = per_host_.count(host) != 0
                          && per_host_[host] >= options_.max_connections_per_host;
  auto rank = [](const entry& x) {
    int tier = 0;
    switch (x.s.current()) {
      case session::phase::fresh: tier = 1; break;
      case session::phase::reading: tier = 2; break;
      case session::phase::idle: tier = 3; break;
      case session::phase::writing: tier = 4; break;
    }
    if (x.draining)
      tier = 0;
    return std::make_pair(tier, tier == 1 || tier == 2 ? x.created : x.since);
  };
  entry* victim = nullptr;
  for (auto& [id, e] : connections_) {
    if (host_limit && e->host != host)
      continue;
    if (victim == nullptr || rank(*e) < rank(*victim))
      victim = e.get();
  }
  if (victim == nullptr)
    return false;
  auto n = evicted_.fetch_add(1, std::memory_order_relaxed);
  if (should_log(n))
    log::warn("{}: at its connection limit ({} in all, {} per host): closing the least useful "
              "connection, from {} ({} evicted so far)",
              options_.name, options_.max_connections, options_.max_connections_per_host,
              victim->host, n + 1);
  close_connection(victim->id, "evicted at the connection limit");
  return true;
}

void server::admit(zmtp::unique_fd fd, const std::string& host) {
  while (connections_.size() >= options_.max_connections
         || (per_host_.count(host) != 0 && per_host_[host] >= options_.max_connections_per_host)) {
    if (!evict_for(host))
      return;
  }
  int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  std::unique_ptr<entry> e;
  try {
    e = std::make_unique<entry>(options_.limits, handler_, responses_);
  } catch (const std::bad_alloc&) {
    log::warn("{}: out of memory for a connection from {}", options_.name, host);
    return;
  }
  e->fd = std::move(fd);
  e->id = next_id_++;
  e->host = host;
  e->created = e->since = steady::now();
  e->interest = EPOLLIN;
  epoll_event ev{};
  ev.events = e->interest;
  ev.data.u64 = e->id;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, e->fd.get(), &ev) != 0) {
    log::warn("{}: cannot watch a connection from {}: {}", options_.name, host,
              std::strerror(errno));
    return;
  }
  auto id = e->id;
  ++per_host_[host];
  connections_.emplace(id, std::move(e));
  accepted_.fetch_add(1, std::memory_order_relaxed);
  open_.store(connections_.size(), std::memory_order_relaxed);
  // A scraper's request usually came with its connection: read it now, which lifts it above
  // connections that sent nothing before the next admission has to choose whom to close.
  handle(id, EPOLLIN);
}

void server::accept_ready() {
  for (int i = 0; i < 64; ++i) {
    int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return;
      if (errno == EINTR || errno == ECONNABORTED)
        continue;
      auto n = accept_failures_.fetch_add(1, std::memory_order_relaxed);
      if (should_log(n))
        log::warn("{}: accept failed: {}; pausing accepts for {} ms ({} failures so far)",
                  options_.name, std::strerror(errno), accept_pause.count(), n + 1);
      accept_paused_ = true;
      accept_paused_until_ = steady::now() + accept_pause;
      epoll_event ev{};
      ev.events = 0;
      ev.data.u64 = listener_key;
      ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, listener_.get(), &ev);
      return;
    }
    zmtp::unique_fd owned(fd);
    admit(std::move(owned), zmtp::peer_host(fd));
  }
}

bool server::drive(entry& e, uint32_t events) {
  auto& s = e.s;
  if (events & EPOLLERR)
    return false;
  if (e.draining) {
    char sink[4096];
    while (true) {
      ssize_t n = ::recv(e.fd.get(), sink, sizeof(sink), MSG_DONTWAIT);
      if (n > 0) {
        e.drained += static_cast<size_t>(n);
        if (e.drained > drain_bytes)
          return false;
        continue;
      }
      if (n < 0 && errno == EINTR)
        continue;
      return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK); // EOF or error: close
    }
  }
  // Read while the session takes input (it stops while a response waits).
  if (events & (EPOLLIN | EPOLLHUP)) {
    while (s.wants_read()) {
      auto space = s.input_space();
      ssize_t n = ::recv(e.fd.get(), space.data(), space.size(), MSG_DONTWAIT);
      if (n > 0) {
        s.received(static_cast<size_t>(n));
        continue;
      }
      if (n == 0) {
        e.peer_gone = true;
        s.peer_closed();
        break;
      }
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        break;
      return false; // reset by the peer
    }
  }
  // Write what is queued; a written response may let a pipelined request be answered.
  while (s.wants_write()) {
    auto out = s.output();
    iovec iov[2] = {{const_cast<char*>(out[0].data()), out[0].size()},
                    {const_cast<char*>(out[1].data()), out[1].size()}};
    msghdr hdr{};
    hdr.msg_iov = iov;
    hdr.msg_iovlen = out[1].empty() ? 1 : 2;
    ssize_t n = ::sendmsg(e.fd.get(), &hdr, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      s.written(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      break;
    return false; // the peer is gone
  }
  if (s.finished()) {
    if (e.peer_gone)
      return false;
    // Lingering close: the peer may still be sending (a request it pipelined, the rest of an
    // oversized head); closing with unread input would reset the connection and could destroy
    // the response before the peer read it.
    ::shutdown(e.fd.get(), SHUT_WR);
    e.draining = true;
    e.since = steady::now();
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = e.id;
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, e.fd.get(), &ev);
    e.interest = EPOLLIN;
    return drive(e, EPOLLIN);
  }
  // A response was taken, or a new one queued: its deadline starts now.
  auto phase = s.current();
  if (phase != e.last_phase) {
    if (phase == session::phase::writing || e.last_phase == session::phase::writing)
      e.since = steady::now();
    e.last_phase = phase;
  }
  uint32_t want = s.wants_read() ? uint32_t{EPOLLIN} : 0u;
  if (s.wants_write())
    want |= EPOLLOUT;
  if (want != e.interest) {
    epoll_event ev{};
    ev.events = want;
    ev.data.u64 = e.id;
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, e.fd.get(), &ev);
    e.interest = want;
  }
  return true;
}

void server::handle(uint64_t id, uint32_t events) {
  auto it = connections_.find(id);
  if (it == connections_.end())
    return;
  if (!drive(*it->second, events))
    close_connection(id, it->second->timed_out ? "timed out" : "done");
}

void server::sweep(steady::time_point now) {
  std::vector<uint64_t> late;
  for (auto& [id, e] : connections_)
    if (now - e->since > (e->draining ? std::min<steady::duration>(drain_time, options_.timeout)
                                      : steady::duration(options_.timeout)))
      late.push_back(id);
  for (auto id : late) {
    auto it = connections_.find(id);
    if (it == connections_.end())
      continue;
    auto& e = *it->second;
    if (e.draining) {
      close_connection(id, "closed after its last response");
      continue;
    }
    if (e.timed_out) {
      // Its 408 was not taken either.
      close_connection(id, "timed out");
      continue;
    }
    e.timed_out = true;
    timeouts_.fetch_add(1, std::memory_order_relaxed);
    e.s.timed_out();
    e.since = now;
    e.last_phase = e.s.current();
    if (!drive(e, 0))
      close_connection(id, "timed out");
  }
  if (accept_paused_ && now >= accept_paused_until_) {
    accept_paused_ = false;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = listener_key;
    ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, listener_.get(), &ev);
  }
}

void server::run() {
  std::vector<epoll_event> events(64);
  auto next_sweep = steady::now() + sweep_period;
  while (!stopping_.load(std::memory_order_acquire)) {
    auto now = steady::now();
    auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next_sweep - now).count();
    int n = ::epoll_wait(epoll_.get(), events.data(), static_cast<int>(events.size()),
                         static_cast<int>(std::max<int64_t>(0, wait)));
    if (n < 0 && errno != EINTR) {
      log::error("{}: epoll_wait failed: {}", options_.name, std::strerror(errno));
      break;
    }
    for (int i = 0; i < n; ++i) {
      auto key = events[i].data.u64;
      if (key == listener_key)
        accept_ready();
      else if (key == doorbell_key)
        wakeup_.drain();
      else
        handle(key, events[i].events);
    }
    now = steady::now();
    if (now >= next_sweep) {
      sweep(now);
      next_sweep = now + sweep_period;
    }
    update_held();
  }
  connections_.clear();
  per_host_.clear();
  open_.store(0, std::memory_order_relaxed);
}

caf::expected<std::unique_ptr<server>> start_metrics_server(server_options options,
                                                            std::function<std::string()> render) {
  if (!render)
    return make_error(errc::invalid_argument, options.name + ": no metrics to render");
  handler h = [render = std::move(render)](const request& r) {
    if (r.path != "/metrics")
      return response{404, "text/plain; charset=utf-8", "404 Not Found: try /metrics\n"};
    return response{200, prometheus_content_type, render()};
  };
  return server::start(std::move(options), std::move(h));
}

} // namespace kvferry::transport::http
