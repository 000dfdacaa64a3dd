#include "transport/control/client.hpp"

#include <array>
#include <future>
#include <utility>

#include <sys/epoll.h>

#include "config/log.hpp"

namespace kvferry::transport::control {

namespace {

using steady = std::chrono::steady_clock;
constexpr uint64_t doorbell_key = 0;
/// The client thread wakes at least this often to expire requests.
constexpr auto tick = std::chrono::milliseconds(20);

std::string peer_key(const std::string& host, uint16_t port) {
  return host + ":" + std::to_string(port);
}

} // namespace

struct client::request {
  std::string host;
  uint16_t port = 0;
  message msg;
  steady::time_point deadline;
  std::chrono::milliseconds timeout{0};
  std::function<void(caf::expected<message>)> done;
};

struct client::peer {
  std::string key;
  std::unique_ptr<zmtp::connection> conn;
  uint32_t interest = 0;
  /// Requests sent (or queued) on the connection, by id.
  std::unordered_map<uint64_t, request> pending;
};

/// Reads replies: one frame each, bounded. A frame above the limit is not read into memory: its
/// header is kept (to fail the request it answers) and the rest skipped.
class client::reply_protocol final : public zmtp::protocol {
public:
  reply_protocol(size_t max_reply_frame, std::function<void(caf::expected<message>)> on_reply,
                 std::function<void(uint64_t id, uint64_t size)> on_oversized)
    : max_reply_frame_(max_reply_frame), on_reply_(std::move(on_reply)),
      on_oversized_(std::move(on_oversized)) {}

  zmtp::violation on_frame(zmtp::connection&, const zmtp::frame_header& h, size_t index,
                           zmtp::body_plan& plan) override {
    if (index > 0 || h.more)
      return zmtp::violation::message_shape;
    if (h.size > max_reply_frame_) {
      // max_reply_frame_ >= header_size (client::start checks it).
      oversized_ = h.size;
      plan.how = zmtp::body_plan::mode::scatter;
      const uint64_t rest = h.size - header_.size();
      plan.pieces.push_back({zmtp::sink::kind::host, header_.data(), header_.size(), {}, false});
      plan.pieces.push_back({zmtp::sink::kind::discard, nullptr, rest, {}, false});
      return zmtp::violation::none;
    }
    plan.how = zmtp::body_plan::mode::buffer;
    plan.buffer = &buffer_;
    return zmtp::violation::none;
  }

  zmtp::violation on_frame_done(zmtp::connection&, const zmtp::frame_header&, size_t,
                                zmtp::body_plan&) override {
    if (oversized_ != 0) {
      on_oversized_(readable_id(header_), std::exchange(oversized_, 0));
      return zmtp::violation::none;
    }
    auto m = decode(buffer_, max_reply_frame_);
    if (buffer_.capacity() > 4096)
      std::vector<uint8_t>().swap(buffer_);
    if (m && m->what != kind::reply)
      return zmtp::violation::message_shape;
    on_reply_(std::move(m));
    return zmtp::violation::none;
  }

private:
  size_t max_reply_frame_;
  std::function<void(caf::expected<message>)> on_reply_;
  std::function<void(uint64_t id, uint64_t size)> on_oversized_;
  std::vector<uint8_t> buffer_;
  /// The header of a frame being skipped, and its size (0 when none is).
  std::array<uint8_t, header_size> header_{};
  uint64_t oversized_ = 0;
};

client::client(std::string name, client_options options)
  : name_(std::move(name)), options_(options) {}

caf::expected<std::unique_ptr<client>> client::start(std::string name, client_options options) {
  const size_t smallest_reply = header_size + 2 + max_reason;
  if (options.max_reply_frame < smallest_reply)
    return make_error(errc::invalid_argument,
                      name + ": control client max_reply_frame "
                        + std::to_string(options.max_reply_frame) + " cannot carry an error reply ("
                        + std::to_string(smallest_reply) + " bytes)");
  if (options.max_request_frame < header_size)
    return make_error(errc::invalid_argument,
                      name + ": control client max_request_frame "
                        + std::to_string(options.max_request_frame) + " is smaller than the "
                        + std::to_string(header_size) + "-byte header");
  std::unique_ptr<client> c{new client(std::move(name), options)};
  c->epoll_ = zmtp::unique_fd(::epoll_create1(EPOLL_CLOEXEC));
  if (!c->epoll_ || !c->wakeup_)
    return make_error(errc::transport_failure,
                      c->name_ + ": control client cannot create epoll/eventfd (out of file "
                                 "descriptors?)");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = doorbell_key;
  ::epoll_ctl(c->epoll_.get(), EPOLL_CTL_ADD, c->wakeup_.fd(), &ev);
  try {
    c->thread_ = std::thread([raw = c.get()] { raw->run(); });
  } catch (const std::system_error& e) {
    return make_error(errc::transport_failure, c->name_ + ": cannot start the control client: "
                                                 + e.what());
  }
  return c;
}

client::~client() {
  stop();
}

void client::stop() {
  if (stopping_.exchange(true))
    return;
  wakeup_.ring();
  if (thread_.joinable())
    thread_.join();
}

client_counters client::counters() const noexcept {
  return client_counters{requests_.load(), timeouts_.load(), malformed_.load(), unmatched_.load(),
                         connects_.load()};
}

void client::submit(std::string host, uint16_t port, message m, std::chrono::milliseconds timeout,
                    std::function<void(caf::expected<message>)> done) {
  request r;
  r.host = std::move(host);
  r.port = port;
  r.msg = std::move(m);
  r.msg.id = next_id_.fetch_add(1, std::memory_order_relaxed);
  r.timeout = timeout;
  r.deadline = steady::now() + timeout;
  r.done = std::move(done);
  {
    std::lock_guard<std::mutex> guard(inbox_mutex_);
    if (!stopping_.load()) {
      inbox_.push_back(std::move(r));
      r.done = nullptr;
    }
  }
  if (r.done) {
    r.done(make_error(errc::shutting_down, name_ + ": the control client is stopped"));
    return;
  }
  wakeup_.ring();
}

void client::describe(const std::string& host, uint16_t port, std::chrono::milliseconds timeout,
                      describe_done done) {
  message m;
  m.what = kind::request;
  m.operation = op::describe;
  submit(host, port, std::move(m), timeout,
         [done = std::move(done)](caf::expected<message> reply) {
           if (!reply)
             done(std::move(reply.error()));
           else
             done(std::move(reply->descriptor));
         });
}

void client::notify(const std::string& host, uint16_t port, std::string from, std::string text,
                    std::chrono::milliseconds timeout, notify_done done) {
  message m;
  m.what = kind::request;
  m.operation = op::notify;
  m.from = std::move(from);
  m.text = std::move(text);
  submit(host, port, std::move(m), timeout, [done = std::move(done)](caf::expected<message> reply) {
    done(reply ? caf::error{} : std::move(reply.error()));
  });
}

void client::call(const std::string& host, uint16_t port, uint16_t method,
                  std::vector<uint8_t> payload, std::chrono::milliseconds timeout, call_done done) {
  message m;
  m.what = kind::request;
  m.operation = op::call;
  m.method = method;
  m.payload = std::move(payload);
  submit(host, port, std::move(m), timeout, [done = std::move(done)](caf::expected<message> reply) {
    if (!reply)
      done(std::move(reply.error()));
    else
      done(std::move(reply->payload));
  });
}

caf::expected<memory::segment_descriptor>
client::describe(const std::string& host, uint16_t port, std::chrono::milliseconds timeout) {
  std::promise<caf::expected<memory::segment_descriptor>> result;
  auto future = result.get_future();
  describe(host, port, timeout,
           [&result](caf::expected<memory::segment_descriptor> d) { result.set_value(std::move(d)); });
  return future.get();
}

caf::error client::notify(const std::string& host, uint16_t port, std::string from,
                          std::string text, std::chrono::milliseconds timeout) {
  std::promise<caf::error> result;
  auto future = result.get_future();
  notify(host, port, std::move(from), std::move(text), timeout,
         [&result](caf::error err) { result.set_value(std::move(err)); });
  return future.get();
}

caf::expected<std::vector<uint8_t>> client::call(const std::string& host, uint16_t port,
                                                 uint16_t method, std::vector<uint8_t> payload,
                                                 std::chrono::milliseconds timeout) {
  std::promise<caf::expected<std::vector<uint8_t>>> result;
  auto future = result.get_future();
  call(host, port, method, std::move(payload), timeout,
       [&result](caf::expected<std::vector<uint8_t>> r) { result.set_value(std::move(r)); });
  return future.get();
}

client::peer* client::open_peer(const std::string& host, uint16_t port, caf::error& why) {
  auto key = peer_key(host, port);
  if (auto it = peers_.find(key); it != peers_.end())
    return it->second.get();
  auto fd = zmtp::connect_tcp(host, port);
  if (!fd) {
    why = fd.error();
    return nullptr;
  }
  auto id = next_conn_++;
  auto p = std::make_unique<peer>();
  p->key = key;
  auto* raw = p.get();
  p->conn = std::make_unique<zmtp::connection>(
    std::move(*fd), id, "DEALER",
    std::make_unique<reply_protocol>(
      options_.max_reply_frame,
      [this, raw](caf::expected<message> m) { on_reply(*raw, std::move(m)); },
      [this, raw](uint64_t id, uint64_t size) { on_oversized_reply(*raw, id, size); }));
  p->interest = EPOLLIN | EPOLLOUT;
  epoll_event ev{};
  ev.events = p->interest;
  ev.data.u64 = id;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, p->conn->fd(), &ev) != 0) {
    why = make_error(errc::transport_failure, "control client: cannot watch a socket");
    return nullptr;
  }
  connects_.fetch_add(1, std::memory_order_relaxed);
  by_conn_[id] = key;
  return peers_.emplace(key, std::move(p)).first->second.get();
}

void client::start_request(request r) {
  requests_.fetch_add(1, std::memory_order_relaxed);
  // Encoded first: a request this client cannot send opens no connection.
  auto bytes = encode(r.msg, options_.max_request_frame);
  if (!bytes) {
    r.done(make_error(code_of(bytes.error()),
                      "request to " + peer_key(r.host, r.port) + " not sent: "
                        + context_of(bytes.error())));
    return;
  }
  caf::error why;
  auto* p = open_peer(r.host, r.port, why);
  if (p == nullptr) {
    r.done(make_error(code_of(why) == errc::none ? errc::peer_unreachable : code_of(why),
                      "cannot reach " + peer_key(r.host, r.port) + ": " + context_of(why)));
    return;
  }
  auto out = std::make_unique<zmtp::outbound>();
  out->append_frame_header(bytes->size(), false);
  out->append_owned(*bytes);
  p->conn->send(std::move(out));
  // Only the id and the op are needed to match the reply.
  std::vector<uint8_t>().swap(r.msg.payload);
  std::string().swap(r.msg.text);
  auto id = r.msg.id;
  p->pending.emplace(id, std::move(r));
  drive(*p, EPOLLOUT);
}

void client::on_reply(peer& p, caf::expected<message> reply) {
  if (!reply) {
    // Not decodable: the peer is broken or hostile; everything on this connection fails.
    malformed_.fetch_add(1, std::memory_order_relaxed);
    p.conn->fail("malformed reply: " + context_of(reply.error()));
    return;
  }
  auto it = p.pending.find(reply->id);
  if (it == p.pending.end() || it->second.msg.operation != reply->operation) {
    unmatched_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  auto done = std::move(it->second.done);
  p.pending.erase(it);
  if (reply->status != errc::none)
    done(make_error(reply->status, p.key + " answered: " + reply->reason));
  else
    done(std::move(*reply));
}

void client::on_oversized_reply(peer& p, uint64_t id, uint64_t size) {
  malformed_.fetch_add(1, std::memory_order_relaxed);
  auto it = p.pending.find(id);
  if (it == p.pending.end()) {
    unmatched_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  auto done = std::move(it->second.done);
  p.pending.erase(it);
  done(make_error(errc::malformed_frame,
                  p.key + " answered with a frame of " + std::to_string(size)
                    + " bytes, above this client's limit of "
                    + std::to_string(options_.max_reply_frame)));
}

void client::update_interest(peer& p) {
  uint32_t want = EPOLLIN | (p.conn->wants_write() ? uint32_t{EPOLLOUT} : 0u);
  if (want == p.interest)
    return;
  epoll_event ev{};
  ev.events = want;
  ev.data.u64 = p.conn->id();
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, p.conn->fd(), &ev);
  p.interest = want;
}

void client::drive(peer& p, uint32_t events) {
  auto r = zmtp::io_result::open;
  if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
    r = p.conn->on_readable();
  if (r == zmtp::io_result::open && p.conn->wants_write())
    r = p.conn->on_writable();
  if (r == zmtp::io_result::closed) {
    auto key = p.key;
    auto reason = p.conn->close_reason();
    close_peer(key, make_error(errc::peer_unreachable, key + ": " + reason));
    return;
  }
  update_interest(p);
}

void client::close_peer(const std::string& key, const caf::error& why) {
  auto it = peers_.find(key);
  if (it == peers_.end())
    return;
  auto p = std::move(it->second);
  peers_.erase(it);
  by_conn_.erase(p->conn->id());
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, p->conn->fd(), nullptr);
  for (auto& [id, r] : p->pending)
    r.done(why);
  p->pending.clear();
}

void client::expire(steady::time_point now) {
  std::vector<std::string> dead;
  for (auto& [key, p] : peers_) {
    std::vector<uint64_t> late;
    for (auto& [id, r] : p->pending)
      if (now >= r.deadline)
        late.push_back(id);
    for (auto id : late) {
      auto r = std::move(p->pending[id]);
      p->pending.erase(id);
      timeouts_.fetch_add(1, std::memory_order_relaxed);
      r.done(make_error(errc::timeout, key + " did not answer within "
                                         + std::to_string(r.timeout.count()) + " ms"
                                         + (p->conn->ready() ? "" : " (no connection)")));
    }
    // A connection that never came up is dropped with its requests' deadlines, so the next
    // request connects afresh.
    if (!late.empty() && !p->conn->ready())
      dead.push_back(key);
  }
  for (const auto& key : dead)
    close_peer(key, make_error(errc::timeout, key + ": no connection"));
}

void client::run() {
  std::vector<epoll_event> events(64);
  std::vector<request> inbox;
  while (!stopping_.load(std::memory_order_acquire)) {
    int n = ::epoll_wait(epoll_.get(), events.data(), static_cast<int>(events.size()),
                         static_cast<int>(tick.count()));
    for (int i = 0; i < n; ++i) {
      auto key = events[i].data.u64;
      if (key == doorbell_key) {
        wakeup_.drain();
        continue;
      }
      auto c = by_conn_.find(key);
      if (c == by_conn_.end())
        continue;
      auto p = peers_.find(c->second);
      if (p != peers_.end())
        drive(*p->second, events[i].events);
    }
    {
      std::lock_guard<std::mutex> guard(inbox_mutex_);
      inbox.swap(inbox_);
    }
    for (auto& r : inbox)
      start_request(std::move(r));
    inbox.clear();
    expire(steady::now());
  }
  std::vector<std::string> keys;
  for (auto& [key, p] : peers_)
    keys.push_back(key);
  for (const auto& key : keys)
    close_peer(key, make_error(errc::shutting_down, name_ + ": the control client is stopping"));
  std::lock_guard<std::mutex> guard(inbox_mutex_);
  for (auto& r : inbox_)
    r.done(make_error(errc::shutting_down, name_ + ": the control client is stopping"));
  inbox_.clear();
}

} // namespace kvferry::transport::control
