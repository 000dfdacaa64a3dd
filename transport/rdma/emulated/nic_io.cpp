// The emulated NIC's fabric: its thread, its listening socket, the connections of its queue pairs
// and the frames on them (wire.hpp). The thread is the remote end's "hardware": it serves READs
// and WRITEs into registered memory while the application's threads do nothing.

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstring>

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "config/error.hpp"
#include "config/log.hpp"
#include "transport/rdma/emulated/nic.hpp"

namespace kvferry::transport::rdma::emulated::detail {

namespace {

constexpr uint64_t wake_id = 1;
constexpr uint64_t listen_id = 2;
/// How long connecting is retried while the remote's listen backlog is full.
constexpr auto connect_patience = std::chrono::seconds(5);
/// Bytes read from one connection per event, so that one busy peer does not starve the others.
constexpr size_t read_budget = 2 * size_t{max_message};
constexpr size_t read_chunk = 1u << 20;
constexpr int socket_buffer = 4 << 20;

void* pointer(uint64_t addr) {
  return reinterpret_cast<void*>(static_cast<uintptr_t>(addr));
}

std::string os_error(const char* call) {
  return std::string(call) + ": " + std::strerror(errno);
}

void close_fd(int& fd) {
  if (fd >= 0)
    ::close(fd);
  fd = -1;
}

/// Whether the peer of `fd` runs as our user (only our own processes reach our memory).
bool same_user(int fd) {
  ucred cred{};
  socklen_t length = sizeof cred;
  return ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &length) == 0 && cred.uid == ::getuid();
}

} // namespace

caf::expected<std::shared_ptr<nic>> nic::open(device_state& device) {
  static std::atomic<uint32_t> serials{0};
  std::shared_ptr<nic> n(new nic(device, ++serials));
  auto fail = [&](const char* call) {
    return make_error(errc::transport_failure,
                      "opening emulated device " + device.name + ": " + os_error(call));
  };
  n->epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  if (n->epoll_fd_ < 0)
    return fail("epoll_create1");
  n->wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (n->wake_fd_ < 0)
    return fail("eventfd");
  n->listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (n->listen_fd_ < 0)
    return fail("socket");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::string name = socket_name(n->gid_);
  std::memcpy(addr.sun_path, name.data(), name.size());
  auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
  if (::bind(n->listen_fd_, reinterpret_cast<sockaddr*>(&addr), length) != 0)
    return fail("bind");
  if (::listen(n->listen_fd_, SOMAXCONN) != 0)
    return fail("listen");
  for (auto [fd, id] : {std::pair{n->wake_fd_, wake_id}, std::pair{n->listen_fd_, listen_id}}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = id;
    if (::epoll_ctl(n->epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0)
      return fail("epoll_ctl");
  }
  n->thread_ = std::thread([raw = n.get()] { raw->run(); });
  {
    std::lock_guard guard(device.nics_mutex);
    device.nics.push_back(n.get());
  }
  ++device.contexts_opened;
  log::debug("emulated RDMA (software NIC, no RDMA hardware): opened {} as context {}, LID {}",
             device.name, n->serial_, n->lid_);
  return n;
}

nic::~nic() {
  shutdown();
}

void nic::shutdown() {
  {
    std::lock_guard guard(device_.nics_mutex);
    std::erase(device_.nics, this);
  }
  {
    std::lock_guard guard(mutex_);
    if (closed_)
      return;
    closed_ = true;
    stopping_ = true;
  }
  if (thread_.joinable()) {
    wake();
    thread_.join();
  }
  std::lock_guard guard(mutex_);
  for (auto& [id, c] : connections_)
    close_fd(c->fd);
  connections_.clear();
  for (auto& [qpn, qp] : qps_)
    qp.link = 0;
  timers_.clear();
  close_fd(listen_fd_);
  close_fd(wake_fd_);
  close_fd(epoll_fd_);
}

void nic::wake() {
  uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
}

void nic::run() {
  std::array<epoll_event, 64> events;
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    int timeout = -1;
    if (!timers_.empty()) {
      auto wait = std::chrono::ceil<std::chrono::milliseconds>(timers_.begin()->first - clock::now());
      timeout = static_cast<int>(std::clamp<int64_t>(wait.count(), 0, 60'000));
    }
    lock.unlock();
    int n = ::epoll_wait(epoll_fd_, events.data(), static_cast<int>(events.size()), timeout);
    int wait_errno = errno;
    lock.lock();
    if (stopping_)
      break;
    if (n < 0 && wait_errno != EINTR) {
      log::error("emulated RDMA {}: epoll_wait failed: {}; the NIC thread stops", device_.name,
                 std::strerror(wait_errno));
      break;
    }
    for (int i = 0; i < n; ++i) {
      uint64_t id = events[static_cast<size_t>(i)].data.u64;
      if (id == wake_id) {
        uint64_t count = 0;
        [[maybe_unused]] auto r = ::read(wake_fd_, &count, sizeof count);
      } else if (id == listen_id) {
        accept_all();
      } else {
        on_event(id, events[static_cast<size_t>(i)].events);
      }
    }
    auto now = clock::now();
    while (!timers_.empty() && timers_.begin()->first <= now) {
      uint32_t qpn = timers_.begin()->second;
      timers_.erase(timers_.begin());
      if (qp_entry* qp = find_qp(qpn)) {
        qp->timer_at = {};
        pump(qpn, *qp); // a connection retried
        deliver(qpn, *qp); // a slow completion due
      }
    }
  }
}

nic::connect_result nic::connect_link(uint32_t qpn, qp_entry& qp) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    log::warn("emulated RDMA {}: {} for queue pair {}", device_.name, os_error("socket"), hex(qpn));
    return connect_result::refused;
  }
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &socket_buffer, sizeof socket_buffer);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::string name = socket_name(qp.remote.gid);
  std::memcpy(addr.sun_path, name.data(), name.size());
  auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), length) != 0) {
    int error = errno;
    ::close(fd);
    auto now = clock::now();
    if (error == EAGAIN || error == EINTR) { // the remote's backlog is full: try again shortly
      if (!qp.connect_deadline)
        qp.connect_deadline = now + connect_patience;
      if (now < *qp.connect_deadline) {
        add_timer(now + std::chrono::milliseconds(1), qpn);
        return connect_result::retry;
      }
    }
    qp.connect_deadline.reset();
    // No such context (its process is gone, or the GID is wrong): retries exceeded, as in RC.
    log::debug("emulated RDMA {}: queue pair {} cannot reach remote queue pair {}: {}",
               device_.name, hex(qpn), hex(qp.remote.qp_num), std::strerror(error));
    return connect_result::refused;
  }
  qp.connect_deadline.reset();
  if (!same_user(fd)) {
    ::close(fd);
    log::warn("emulated RDMA {}: the socket of remote queue pair {} belongs to another user",
              device_.name, hex(qp.remote.qp_num));
    return connect_result::refused;
  }
  auto c = std::make_shared<connection>();
  c->id = next_connection_++;
  c->fd = fd;
  c->side = role::requester;
  c->qpn = qpn;
  greeting g;
  g.gid = gid_;
  g.source_qpn = qpn;
  g.target_qpn = qp.remote.qp_num;
  c->out.append(&g, sizeof g);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = c->id;
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
    log::warn("emulated RDMA {}: {}", device_.name, os_error("epoll_ctl"));
    ::close(fd);
    return connect_result::refused;
  }
  c->events = EPOLLIN;
  connections_[c->id] = c;
  qp.link = c->id;
  return connect_result::connected;
}

void nic::accept_all() {
  while (true) {
    int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR)
        continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK)
        log::warn("emulated RDMA {}: {}", device_.name, os_error("accept4"));
      return;
    }
    if (!same_user(fd)) {
      ++device_.peer_connections_refused;
      log::warn("emulated RDMA {}: refused a connection from another user", device_.name);
      ::close(fd);
      continue;
    }
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &socket_buffer, sizeof socket_buffer);
    auto c = std::make_shared<connection>();
    c->id = next_connection_++;
    c->fd = fd;
    c->side = role::greeted;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = c->id;
    if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
      log::warn("emulated RDMA {}: {}", device_.name, os_error("epoll_ctl"));
      ::close(fd);
      continue;
    }
    c->events = EPOLLIN;
    connections_[c->id] = c;
  }
}

void nic::on_event(uint64_t id, uint32_t events) {
  auto it = connections_.find(id);
  if (it == connections_.end())
    return; // closed earlier in this round
  connection_ptr c = it->second;
  bool open = true;
  if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && (c->events & EPOLLIN))
    open = read_some(*c);
  // Answer, send, answer what backpressure held back, until nothing more moves (requests
  // already read must not wait for more bytes to arrive once the answers drained).
  while (true) {
    size_t unread = c->in.size();
    if (!process_input(*c)) {
      close_connection(id, true);
      return;
    }
    if (c->fd < 0)
      return; // its queue pair went to ERROR meanwhile
    size_t unsent = c->out.size();
    if (!flush(*c)) {
      close_connection(id, true);
      return;
    }
    if (c->in.size() == unread && c->out.size() == unsent)
      break;
  }
  if (!open) {
    close_connection(id, true);
    return;
  }
  if (c->side == role::requester && c->out.size() < output_limit)
    if (qp_entry* qp = find_qp(c->qpn); qp != nullptr && qp->link == id)
      pump(c->qpn, *qp);
  update_interest(*c);
}

bool nic::read_some(connection& c) {
  size_t budget = read_budget;
  while (budget > 0) {
    ssize_t n = ::recv(c.fd, c.in.prepare(read_chunk), read_chunk, 0);
    if (n > 0) {
      c.in.commit(static_cast<size_t>(n));
      budget -= std::min(budget, static_cast<size_t>(n));
    } else if (n == 0) {
      return false;
    } else if (errno != EINTR) {
      return errno == EAGAIN || errno == EWOULDBLOCK;
    }
  }
  return true;
}

bool nic::flush(connection& c) {
  while (!c.out.empty()) {
    ssize_t n = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
    if (n > 0)
      c.out.consume(static_cast<size_t>(n));
    else if (n < 0 && errno != EINTR)
      return errno == EAGAIN || errno == EWOULDBLOCK;
  }
  return true;
}

bool nic::process_input(connection& c) {
  while (c.fd >= 0) {
    if (c.side == role::greeted) {
      if (c.in.size() < sizeof(greeting))
        return true;
      auto g = read_header<greeting>(c.in.data());
      c.in.consume(sizeof g);
      if (!on_greeting(c, g))
        return false;
    } else if (c.side == role::responder) {
      if (c.out.size() >= output_limit || c.in.size() < sizeof(request_header))
        return true;
      auto h = read_header<request_header>(c.in.data());
      if (!well_formed(h)) {
        log::warn("emulated RDMA {}: malformed request on queue pair {}: kind {}, length {}",
                  device_.name, hex(c.qpn), h.kind, h.length);
        return false;
      }
      size_t payload = h.kind == static_cast<uint32_t>(frame_kind::write_request) ? h.length : 0;
      if (c.in.size() < sizeof h + payload)
        return true;
      on_request(c, h, c.in.data() + sizeof h);
      c.in.consume(sizeof h + payload);
    } else {
      if (c.in.size() < sizeof(response_header))
        return true;
      auto h = read_header<response_header>(c.in.data());
      if (!well_formed(h) || c.in.size() < sizeof h + h.length) {
        if (!well_formed(h))
          log::warn("emulated RDMA {}: malformed response on queue pair {}", device_.name,
                    hex(c.qpn));
        return well_formed(h);
      }
      bool ok = on_response(c, h, c.in.data() + sizeof h);
      c.in.consume(sizeof h + h.length);
      if (!ok)
        return false;
    }
  }
  return true;
}

bool nic::on_greeting(connection& c, const greeting& g) {
  auto refuse = [&](const std::string& why) {
    ++device_.peer_connections_refused;
    log::warn("emulated RDMA {}: refused a connection for queue pair {} from queue pair {}: {}",
              device_.name, hex(g.target_qpn), hex(g.source_qpn), why);
    return false;
  };
  if (!well_formed(g))
    return refuse("malformed greeting");
  qp_entry* qp = find_qp(g.target_qpn);
  if (qp == nullptr)
    return refuse("no such queue pair");
  if (qp->state != IBV_QPS_RTR && qp->state != IBV_QPS_RTS)
    return refuse(std::string("it is in ") + describe_state(qp->state) + ", expected RTR or RTS");
  if (qp->remote.qp_num != g.source_qpn || qp->remote.gid != g.gid)
    return refuse("it is connected to remote queue pair " + hex(qp->remote.qp_num)
                  + " (or to another GID)");
  c.side = role::responder;
  c.qpn = g.target_qpn;
  return true;
}

void nic::on_request(connection& c, const request_header& h, const uint8_t* payload) {
  const qp_entry& qp = qps_.at(c.qpn); // its connections close with it
  bool is_read = h.kind == static_cast<uint32_t>(frame_kind::read_request);
  int right = is_read ? IBV_ACCESS_REMOTE_READ : IBV_ACCESS_REMOTE_WRITE;
  bool allowed = (qp.access & right) != 0
                 && (h.length == 0 || covers(h.rkey, qp.pd, h.remote_addr, h.length, right));
  response_header r;
  r.seq = h.seq;
  if (!allowed) {
    r.status = IBV_WC_REM_ACCESS_ERR;
    c.out.append(&r, sizeof r);
    return;
  }
  if (is_read) {
    r.length = h.length;
    c.out.append(&r, sizeof r);
    c.out.append(pointer(h.remote_addr), h.length);
  } else {
    if (h.length > 0)
      std::memcpy(pointer(h.remote_addr), payload, h.length);
    c.out.append(&r, sizeof r);
  }
}

bool nic::on_response(connection& c, const response_header& h, const uint8_t* payload) {
  qp_entry* qp = find_qp(c.qpn);
  if (qp == nullptr || qp->state == IBV_QPS_ERR || qp->link != c.id)
    return true; // nothing waits for it any more; its bytes are not copied
  auto it = std::find_if(qp->send_queue.begin(), qp->send_queue.end(),
                         [](const wr_entry& e) { return e.at == phase::sent; });
  bool is_read = it != qp->send_queue.end() && it->wr.opcode == IBV_WR_RDMA_READ;
  uint32_t expected = h.status == IBV_WC_SUCCESS && is_read ? it->wr.length : 0;
  if (it == qp->send_queue.end() || it->seq != h.seq || h.length != expected) {
    log::warn("emulated RDMA {}: queue pair {} got an answer it did not ask for (seq {}, {} bytes)",
              device_.name, hex(c.qpn), h.seq, h.length);
    return false;
  }
  auto status = static_cast<ibv_wc_status>(h.status);
  if (status == IBV_WC_SUCCESS && is_read && h.length > 0) {
    // The region may have been deregistered since the post: check again before writing to it.
    if (covers(it->wr.lkey, qp->pd, it->wr.local_addr, h.length, IBV_ACCESS_LOCAL_WRITE))
      std::memcpy(pointer(it->wr.local_addr), payload, h.length);
    else
      status = IBV_WC_LOC_PROT_ERR;
  }
  it->at = phase::done;
  it->status = status;
  it->ready = clock::now() + it->delay;
  deliver(c.qpn, *qp);
  return true;
}

void nic::update_interest(connection& c) {
  if (c.fd < 0)
    return;
  uint32_t want = 0;
  if (c.side != role::responder || c.out.size() < output_limit)
    want |= EPOLLIN;
  if (!c.out.empty())
    want |= EPOLLOUT;
  if (want == c.events)
    return;
  epoll_event ev{};
  ev.events = want;
  ev.data.u64 = c.id;
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c.fd, &ev) == 0)
    c.events = want;
}

void nic::close_connection(uint64_t id, bool fail_requests) {
  auto it = connections_.find(id);
  if (it == connections_.end())
    return;
  connection_ptr c = it->second;
  connections_.erase(it);
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c->fd, nullptr);
  close_fd(c->fd);
  if (c->side != role::requester)
    return;
  qp_entry* qp = find_qp(c->qpn);
  if (qp == nullptr || qp->link != id)
    return;
  qp->link = 0;
  if (fail_requests)
    link_lost(c->qpn);
}

void nic::close_connections_of(uint32_t qpn) {
  std::vector<uint64_t> ids;
  for (const auto& [id, c] : connections_)
    if (c->qpn == qpn && c->side != role::greeted)
      ids.push_back(id);
  for (uint64_t id : ids)
    close_connection(id, false);
}

} // namespace kvferry::transport::rdma::emulated::detail
