#include "transport/zmtp/server.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "config/error.hpp"
#include "config/log.hpp"

namespace kvferry::transport::zmtp {

namespace {

using steady = std::chrono::steady_clock;

/// epoll user data for the listener and the doorbell (connection ids start at 1).
constexpr uint64_t listener_key = 0;
constexpr uint64_t doorbell_key = ~uint64_t{0};
/// How long accepting pauses after running out of file descriptors.
constexpr auto accept_pause = std::chrono::milliseconds(100);
/// How often handshake deadlines are checked.
constexpr auto sweep_period = std::chrono::milliseconds(100);

/// Says whether to log the count-th event of a kind: the first 10, then every 1000th.
bool should_log(uint64_t count) noexcept {
  return count < 10 || count % 1000 == 0;
}

} // namespace

struct server::entry {
  std::unique_ptr<connection> conn;
  std::string host;
  uint32_t interest = 0;
};

server::server(server_options options, protocol_factory factory)
  : options_(std::move(options)), factory_(std::move(factory)), budget_(options_.reply_budget) {
}

caf::expected<std::shared_ptr<server>> server::start(server_options options,
                                                     protocol_factory factory) {
  std::shared_ptr<server> s{new server(std::move(options), std::move(factory))};
  auto fd = listen_tcp(s->options_.bind_host, s->options_.port);
  if (!fd)
    return fd.error();
  s->listener_ = std::move(*fd);
  s->port_ = local_port(s->listener_.get());
  s->options_.name += " on " + s->options_.bind_host + ":" + std::to_string(s->port_);
  s->epoll_ = unique_fd(::epoll_create1(EPOLL_CLOEXEC));
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
  return server_counters{accepted_.load(),        evicted_.load(),        violations_.load(),
                         handshake_timeouts_.load(), accept_failures_.load(), open_.load(),
                         budget_.used(),           budget_.peak()};
}

void server::post(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> guard(posted_mutex_);
    if (stopping_.load())
      return;
    posted_.push_back(std::move(fn));
  }
  wakeup_.ring();
}

connection* server::find(uint64_t id) noexcept {
  auto it = connections_.find(id);
  return it == connections_.end() ? nullptr : it->second->conn.get();
}

void server::send(uint64_t id, std::unique_ptr<outbound> message) {
  auto it = connections_.find(id);
  if (it == connections_.end()) {
    budget_.release(message->charged);
    return;
  }
  it->second->conn->send(std::move(message));
  update_interest(*it->second);
}

void server::release_charges(connection& c) {
  budget_.release(c.take_released_charge());
}

void server::update_interest(entry& e) {
  uint32_t want = 0;
  if (!e.conn->held())
    want |= EPOLLIN;
  if (e.conn->wants_write())
    want |= EPOLLOUT;
  if (want == e.interest)
    return;
  epoll_event ev{};
  ev.events = want;
  ev.data.u64 = e.conn->id();
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, e.conn->fd(), &ev);
  e.interest = want;
}

void server::close_connection(uint64_t id, const std::string& why, bool violation) {
  auto it = connections_.find(id);
  if (it == connections_.end())
    return;
  auto& e = *it->second;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, e.conn->fd(), nullptr);
  e.conn->proto().on_close(*e.conn);
  release_charges(*e.conn);
  budget_.release(e.conn->queued_charge());
  if (violation) {
    auto n = violations_.fetch_add(1, std::memory_order_relaxed);
    if (should_log(n))
      log::warn("{}: closed a connection from {}: {} ({} protocol violations so far)",
                options_.name, e.host, why, n + 1);
  } else {
    log::debug("{}: connection from {} closed: {}", options_.name, e.host, why);
  }
  if (auto h = per_host_.find(e.host); h != per_host_.end() && --h->second == 0)
    per_host_.erase(h);
  connections_.erase(it);
  open_.store(connections_.size(), std::memory_order_relaxed);
}

void server::close_if(const std::function<bool(connection&)>& pred, const char* why) {
  std::vector<uint64_t> victims;
  for (auto& [id, e] : connections_)
    if (pred(*e->conn))
      victims.push_back(id);
  for (auto id : victims)
    close_connection(id, why, false);
}

bool server::evict_for(const std::string& host) {
  // The victim, among the connections that count against the exceeded limit, in this order:
  // one that sent no valid byte, then one that never finished its handshake, then one that never
  // sent a whole message (oldest first in each), then one with no work in progress, idle the
  // longest; one with a request being answered or replies queued only as a last resort.
  const bool host_limit = per_host_.count(host) != 0
                          && per_host_[host] >= options_.max_connections_per_host;
  auto rank = [](const entry& x) {
    const auto& c = *x.conn;
    int tier = !c.greeted()                            ? 0
               : !c.ready()                            ? 1
               : c.messages_received() == 0            ? 2
               : (c.proto().busy() || c.wants_write()) ? 4
                                                       : 3;
    return std::make_pair(tier, tier <= 2 ? c.created() : c.last_activity());
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
  close_connection(victim->conn->id(), "evicted at the connection limit", false);
  return true;
}

void server::admit(unique_fd fd, const std::string& host) {
  while (connections_.size() >= options_.max_connections
         || (per_host_.count(host) != 0 && per_host_[host] >= options_.max_connections_per_host)) {
    if (!evict_for(host))
      return; // nothing to evict (limits of 0): refuse
  }
  int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  auto id = next_id_++;
  std::unique_ptr<protocol> proto;
  try {
    proto = factory_(*this, id);
  } catch (const std::exception& e) {
    log::warn("{}: cannot serve a connection from {}: {}", options_.name, host, e.what());
    return;
  }
  auto e = std::make_unique<entry>();
  try {
    e->conn = std::make_unique<connection>(std::move(fd), id, "ROUTER", std::move(proto),
                                           options_.limits);
  } catch (const std::bad_alloc&) {
    log::warn("{}: out of memory for a connection from {}", options_.name, host);
    return;
  }
  e->host = host;
  e->interest = EPOLLIN | EPOLLOUT;
  epoll_event ev{};
  ev.events = e->interest;
  ev.data.u64 = id;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, e->conn->fd(), &ev) != 0) {
    log::warn("{}: cannot watch a connection from {}: {}", options_.name, host,
              std::strerror(errno));
    return;
  }
  ++per_host_[host];
  connections_.emplace(id, std::move(e));
  accepted_.fetch_add(1, std::memory_order_relaxed);
  open_.store(connections_.size(), std::memory_order_relaxed);
  // Read what the peer sent with its connection right away: a real peer's greeting and first
  // request are usually there, which lifts it above connections that sent nothing before the next
  // admission has to choose whom to close.
  handle(id, EPOLLIN | EPOLLOUT);
}

void server::accept_ready() {
  for (int i = 0; i < 64; ++i) {
    int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return;
      if (errno == EINTR || errno == ECONNABORTED)
        continue;
      // Out of file descriptors (or memory): stop accepting for a moment rather than spin on a
      // listener that stays readable.
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
    unique_fd owned(fd);
    admit(std::move(owned), peer_host(fd));
  }
}

void server::handle(uint64_t id, uint32_t events) {
  auto it = connections_.find(id);
  if (it == connections_.end())
    return;
  auto& e = *it->second;
  auto& c = *e.conn;
  io_result r = io_result::open;
  if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
    r = c.on_readable();
  if (r == io_result::open && (events & EPOLLOUT))
    r = c.on_writable();
  // Replies queued while reading: try to write them at once.
  if (r == io_result::open && c.wants_write() && !(events & EPOLLOUT))
    r = c.on_writable();
  // Held off (its peer's replies were queued past the bound): writing may have made room.
  if (r == io_result::open && c.held() && (events & EPOLLOUT))
    r = c.resume();
  if (r == io_result::open && c.wants_write())
    r = c.on_writable();
  release_charges(c);
  if (r == io_result::closed) {
    close_connection(id, c.close_reason(), c.violated());
    return;
  }
  update_interest(e);
}

void server::resume_held() {
  if (!budget_.take_freed())
    return;
  std::vector<uint64_t> held;
  for (auto& [id, e] : connections_)
    if (e->conn->held())
      held.push_back(id);
  for (auto id : held) {
    auto it = connections_.find(id);
    if (it == connections_.end())
      continue;
    auto& c = *it->second->conn;
    auto r = c.resume();
    if (r == io_result::open && c.wants_write())
      r = c.on_writable();
    release_charges(c);
    if (r == io_result::closed) {
      close_connection(id, c.close_reason(), c.violated());
      continue;
    }
    update_interest(*it->second);
  }
}

void server::sweep(steady::time_point now) {
  std::vector<uint64_t> late;
  for (auto& [id, e] : connections_)
    if (!e->conn->ready() && now - e->conn->created() > options_.handshake_timeout)
      late.push_back(id);
  for (auto id : late) {
    handshake_timeouts_.fetch_add(1, std::memory_order_relaxed);
    close_connection(id, to_string(violation::handshake_timeout), true);
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
  std::vector<epoll_event> events(256);
  auto next_sweep = steady::now() + sweep_period;
  std::vector<std::function<void()>> posted;
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
      if (key == listener_key) {
        accept_ready();
      } else if (key == doorbell_key) {
        wakeup_.drain();
        {
          std::lock_guard<std::mutex> guard(posted_mutex_);
          posted.swap(posted_);
        }
        for (auto& fn : posted)
          fn();
        posted.clear();
      } else {
        handle(key, events[i].events);
      }
    }
    resume_held();
    now = steady::now();
    if (now >= next_sweep) {
      sweep(now);
      next_sweep = now + sweep_period;
    }
  }
  std::vector<uint64_t> ids;
  for (auto& [id, e] : connections_)
    ids.push_back(id);
  for (auto id : ids)
    close_connection(id, "server stopping", false);
  std::lock_guard<std::mutex> guard(posted_mutex_);
  posted_.clear();
}

} // namespace kvferry::transport::zmtp
