#include "transport/tcp/path.hpp"

#include <algorithm>
#include <set>

#include "config/log.hpp"
#include "memory/device.hpp"

namespace kvferry::transport {

namespace {

using steady = std::chrono::steady_clock;

/// WRITE payloads up to this size are copied into the frame instead of lent by reference, and
/// slices up to this size travel several to a frame.
constexpr uint64_t small_copy_bytes = 16 << 10;
/// Most slices, and most payload bytes, in one frame of small slices.
constexpr size_t batch_entries = 64;
constexpr uint64_t batch_bytes = 256 << 10;
/// After a socket could not be created (out of file descriptors), try again this much later.
constexpr auto reopen_delay = std::chrono::milliseconds(500);
/// How long stop() waits for ZeroMQ to release lent WRITE payloads.
constexpr auto release_wait = std::chrono::seconds(5);
/// Longest the I/O thread sleeps in zmq_poll.
constexpr auto max_poll = std::chrono::milliseconds(500);

bool retryable_status(errc code) noexcept {
  switch (code) {
    case errc::transport_failure:
    case errc::peer_unreachable:
    case errc::shutting_down:
    case errc::busy:
      return true;
    default:
      return false;
  }
}

bool should_log(uint64_t count) noexcept {
  return count < 10 || count % 1000 == 0;
}

/// A WRITE payload lent to ZeroMQ: keeps its region leased until ZeroMQ releases it.
struct lent_token {
  std::atomic<bool> released{false};
  memory::region_lease lease;
  uint32_t peer = 0;
  /// The path's count of payloads ZeroMQ still holds.
  std::shared_ptr<std::atomic<int64_t>> outstanding;
};

void release_payload(void*, void* hint) {
  auto* holder = static_cast<std::shared_ptr<lent_token>*>(hint);
  auto& token = **holder;
  token.lease.reset();
  token.outstanding->fetch_sub(1, std::memory_order_acq_rel);
  token.released.store(true, std::memory_order_release);
  delete holder;
}

} // namespace

caf::expected<std::shared_ptr<zmq::context_t>> make_zmq_context(int io_threads) {
  try {
    auto ctx = std::make_shared<zmq::context_t>(io_threads);
    ctx->set(zmq::ctxopt::blocky, false); // closing a context never waits for unsent messages
    return ctx;
  } catch (const zmq::error_t& e) {
    return make_error(errc::transport_failure,
                      std::string("cannot create a ZeroMQ context: ") + e.what());
  }
}

struct tcp_path::peer_state {
  enum class link : uint8_t { connecting, up, down, broken };
  std::string name;
  std::string endpoint;
  uint64_t incarnation = 0;
  std::unique_ptr<zmq::socket_t> socket;
  std::unique_ptr<zmq::socket_t> monitor;
  link state = link::connecting;
  /// Why the peer cannot be used at all (its endpoint), for link::broken.
  std::string broken_reason;
  steady::time_point since;
  /// When to try creating the socket again after it could not be created.
  steady::time_point reopen_at{};
  bool socket_missing = false;
  /// ZeroMQ's send queue is full: wait until the socket is writable.
  bool congested = false;
  std::deque<uint64_t> waiting;
  uint32_t in_flight = 0;
  uint64_t bytes_in_flight = 0;
  /// Sent slices past their deadline, still unanswered.
  uint32_t expired = 0;
};

struct tcp_path::entry {
  slice_op op;
  bool sent = false;
  bool withdrawn = false;
  /// Given up at its deadline (reported, window slot freed); a WRITE stays until answered.
  bool expired = false;
  /// The withdrawal waiting for this WRITE's reply (0: none).
  uint64_t withdrawal = 0;
  std::shared_ptr<lent_token> token;
};

struct tcp_path::withdrawal {
  std::vector<uint64_t> ids;
  size_t awaiting = 0;
  std::set<std::string> unsettled;
  std::vector<std::shared_ptr<lent_token>> tokens;
  steady::time_point deadline;
  std::function<void(unsettled_segments)> done;
  bool forced = false;
};

struct tcp_path::command {
  enum class kind : uint8_t { post, connect, withdraw, fence };
  kind what = kind::post;
  std::vector<slice_op> ops;
  uint32_t peer = 0;
  std::string name;
  std::string endpoint;
  uint64_t incarnation = 0;
  std::vector<uint64_t> ids;
  steady::time_point deadline;
  std::function<void(unsettled_segments)> done;
  std::shared_ptr<memory::region_state> region;
};

tcp_path::tcp_path(std::shared_ptr<zmq::context_t> context,
                   std::shared_ptr<memory::region_registry> local, tcp_path_options options)
  : context_(std::move(context)), local_(std::move(local)), options_(options) {
  caps_.name = "tcp";
  caps_.endpoint_kind = "tcp";
  caps_.device_memory = memory::built_with_cuda(); // staged through host memory
  outstanding_ = std::make_shared<std::atomic<int64_t>>(0);
  if (local_) {
    // Unregistering a region resets the connections whose queued WRITE payloads lend its memory.
    fence_listener_ = local_->add_fence_listener([this](const memory::region& r) {
      command cmd;
      cmd.what = command::kind::fence;
      cmd.region = r.state;
      {
        std::lock_guard<std::mutex> guard(mutex_);
        if (stopping_)
          return;
        inbox_.push_back(std::move(cmd));
      }
      wakeup_.ring();
    });
  }
  try {
    thread_ = std::thread([this] { run(); });
  } catch (const std::system_error& e) {
    log::error("tcp data path: cannot start its I/O thread: {}", e.what());
    stopping_ = true;
  }
}

tcp_path::~tcp_path() {
  stop();
}

void tcp_path::set_sink(completion_sink sink) {
  std::lock_guard<std::mutex> guard(mutex_);
  sink_ = std::move(sink);
}

void tcp_path::set_gates(std::shared_ptr<slice_gates> gates) {
  std::lock_guard<std::mutex> guard(mutex_);
  gates_ = std::move(gates);
}

tcp_path_counters tcp_path::counters() const {
  return tcp_path_counters{sent_.load(),        replies_.load(), unmatched_replies_.load(),
                           malformed_replies_.load(), disconnects_.load(), expired_.load(),
                           gated_.load()};
}

caf::error tcp_path::check_endpoint(const memory::segment_descriptor& peer) {
  const auto* ep = peer.endpoint("tcp");
  if (ep == nullptr)
    return make_error(errc::not_supported, "segment '" + peer.name + "' offers no tcp endpoint");
  std::string host;
  uint16_t port = 0;
  if (!zmtp::parse_tcp_endpoint(ep->address, host, port))
    return make_error(errc::malformed_frame,
                      "segment '" + peer.name + "': tcp endpoint '" + ep->address.substr(0, 128)
                        + "' is not tcp://host:port (host: letters, digits, '.', '-', '_', ':' "
                          "or [v6]; port 1-65535)");
  return {};
}

caf::expected<uint32_t> tcp_path::connect(const memory::segment_descriptor& peer) {
  if (auto err = check_endpoint(peer))
    return err;
  command cmd;
  cmd.what = command::kind::connect;
  cmd.name = peer.name;
  cmd.endpoint = peer.endpoint("tcp")->address;
  cmd.incarnation = peer.incarnation;
  uint32_t index;
  {
    std::lock_guard<std::mutex> guard(mutex_);
    if (stopping_)
      return make_error(errc::shutting_down, "tcp data path is stopped");
    auto it = peer_index_.find(peer.name);
    if (it == peer_index_.end())
      it = peer_index_.emplace(peer.name, peer_count_++).first;
    index = it->second;
    cmd.peer = index;
    inbox_.push_back(std::move(cmd));
  }
  wakeup_.ring();
  return index;
}

void tcp_path::post(std::span<const slice_op> ops) {
  bool stopped = false;
  {
    std::lock_guard<std::mutex> guard(mutex_);
    if (stopping_) {
      stopped = true;
    } else if (!inbox_.empty() && inbox_.back().what == command::kind::post) {
      inbox_.back().ops.insert(inbox_.back().ops.end(), ops.begin(), ops.end());
    } else {
      command cmd;
      cmd.what = command::kind::post;
      cmd.ops.assign(ops.begin(), ops.end());
      inbox_.push_back(std::move(cmd));
    }
  }
  if (stopped) {
    std::vector<slice_completion> done;
    for (const auto& op : ops)
      done.push_back(slice_completion{op.id, errc::shutting_down, false, 0});
    completion_sink sink;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      sink = sink_;
    }
    if (sink)
      sink(std::move(done));
    return;
  }
  // Ring only a sleeping I/O thread: an awake one takes the inbox before it polls again.
  if (io_idle_.load(std::memory_order_seq_cst))
    wakeup_.ring();
}

void tcp_path::withdraw(std::span<const uint64_t> ids, steady::time_point deadline,
                        std::function<void(unsettled_segments)> done) {
  {
    std::lock_guard<std::mutex> guard(mutex_);
    if (!stopping_) {
      command cmd;
      cmd.what = command::kind::withdraw;
      cmd.ids.assign(ids.begin(), ids.end());
      cmd.deadline = deadline;
      cmd.done = std::move(done);
      inbox_.push_back(std::move(cmd));
      done = nullptr;
    }
  }
  if (done) { // stopped: nothing moves any more
    done({});
    return;
  }
  wakeup_.ring();
}

void tcp_path::stop() {
  if (stopping_.exchange(true))
    return;
  if (fence_listener_ != 0 && local_)
    local_->remove_fence_listener(fence_listener_);
  wakeup_.ring();
  if (thread_.joinable())
    thread_.join();
  // Sockets are closed: ZeroMQ drops their queued messages and releases the lent payloads on its
  // own threads, promptly. Wait for that, so the caller may free its memory after stop().
  auto until = steady::now() + release_wait;
  while (outstanding_->load(std::memory_order_acquire) > 0 && steady::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  if (outstanding_->load() > 0)
    log::error("tcp data path: ZeroMQ still holds {} lent WRITE payload(s) after {} s",
               outstanding_->load(), release_wait.count());
}

bool tcp_path::open_socket(peer_state& peer) {
  peer.state = peer_state::link::connecting;
  peer.since = steady::now();
  peer.congested = false;
  try {
    peer.socket = std::make_unique<zmq::socket_t>(*context_, zmq::socket_type::dealer);
    auto& s = *peer.socket;
    s.set(zmq::sockopt::linger, 0);
    // The window bounds what is in flight; the marks bound ZeroMQ's queues all the same (a frame
    // that does not fit waits in this path's queue until the socket is writable).
    s.set(zmq::sockopt::sndhwm, static_cast<int>(options_.window_slices + 64));
    s.set(zmq::sockopt::rcvhwm, static_cast<int>(options_.window_slices + 64));
    s.set(zmq::sockopt::sndbuf, 4 << 20);
    s.set(zmq::sockopt::rcvbuf, 4 << 20);
    s.set(zmq::sockopt::reconnect_ivl, 100);
    s.set(zmq::sockopt::reconnect_ivl_max, 1000);
    s.set(zmq::sockopt::maxmsgsize,
          static_cast<int64_t>(wire::max_frame_payload + wire::max_entries * wire::reply_header_size));
    // A peer that stops answering ZMTP heartbeats for 30 s is dropped (a safety net: task
    // deadlines normally resolve a stalled peer's tasks long before).
    s.set(zmq::sockopt::heartbeat_ivl, 5000);
    s.set(zmq::sockopt::heartbeat_timeout, 30000);
    auto address = "inproc://kvferry-tcp-monitor-"
                   + std::to_string(reinterpret_cast<uintptr_t>(this)) + "-"
                   + std::to_string(next_monitor_++);
    if (zmq_socket_monitor(s.handle(), address.c_str(),
                           ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED) != 0)
      throw zmq::error_t();
    peer.monitor = std::make_unique<zmq::socket_t>(*context_, zmq::socket_type::pair);
    peer.monitor->set(zmq::sockopt::linger, 0);
    peer.monitor->connect(address);
  } catch (const zmq::error_t& e) {
    // Typically out of file descriptors: the slices wait, and the socket is tried again.
    log::warn("tcp data path: cannot create a socket for '{}': {}; retrying in {} ms", peer.name,
              e.what(), reopen_delay.count());
    close_socket(peer);
    peer.state = peer_state::link::down;
    peer.socket_missing = true;
    peer.reopen_at = steady::now() + reopen_delay;
    return false;
  }
  try {
    peer.socket->connect(peer.endpoint);
  } catch (const zmq::error_t& e) {
    // The endpoint itself is unusable (checked at open_segment; this is the last line).
    peer.broken_reason = "segment '" + peer.name + "': cannot connect to '" + peer.endpoint.substr(0, 128)
                         + "': " + e.what();
    log::warn("tcp data path: {}", peer.broken_reason);
    close_socket(peer);
    peer.state = peer_state::link::broken;
    return false;
  }
  peer.socket_missing = false;
  return true;
}

void tcp_path::close_socket(peer_state& peer) {
  try {
    if (peer.socket) {
      zmq_socket_monitor(peer.socket->handle(), nullptr, 0);
      peer.socket->close();
    }
    if (peer.monitor)
      peer.monitor->close();
  } catch (const zmq::error_t& e) {
    log::warn("tcp data path: closing the socket of '{}': {}", peer.name, e.what());
  }
  peer.socket.reset();
  peer.monitor.reset();
}

void tcp_path::complete(uint64_t id, errc code, bool retryable, uint64_t bytes) {
  completions_.push_back(slice_completion{id, code, retryable, bytes});
}

void tcp_path::forget(uint64_t id, bool settled) {
  auto it = pending_.find(id);
  if (it == pending_.end())
    return;
  auto& e = it->second;
  if (e.withdrawal != 0) {
    auto w = withdrawals_.find(e.withdrawal);
    if (w != withdrawals_.end()) {
      if (w->second.awaiting > 0)
        --w->second.awaiting;
      if (!settled && e.op.peer < peers_.size() && peers_[e.op.peer])
        w->second.unsettled.insert(peers_[e.op.peer]->name);
    }
  }
  if (e.expired && e.op.peer < peers_.size() && peers_[e.op.peer] && peers_[e.op.peer]->expired > 0)
    --peers_[e.op.peer]->expired;
  pending_.erase(it);
}

void tcp_path::fail_sent(uint32_t index, errc code) {
  auto& peer = *peers_[index];
  std::vector<uint64_t> lost;
  for (auto& [id, e] : pending_)
    if (e.op.peer == index && e.sent)
      lost.push_back(id);
  for (auto id : lost) {
    auto& e = pending_.find(id)->second;
    if (!e.withdrawn && !e.expired)
      complete(id, code, true, 0);
    // A WRITE that was sent may still be applied by the target: not settled.
    forget(id, e.op.op != opcode::write);
  }
  peer.in_flight = 0;
  peer.bytes_in_flight = 0;
  peer.expired = 0;
}

void tcp_path::reset_peer(uint32_t index, errc code, const char* why) {
  auto& peer = *peers_[index];
  log::warn("tcp data path: resetting the connection to '{}' ({}): {}", peer.name, peer.endpoint,
            why);
  fail_sent(index, code);
  close_socket(peer); // ZeroMQ drops its queued messages: their payloads are released
  open_socket(peer);
  if (peer.state == peer_state::link::connecting)
    peer.state = peer_state::link::down; // until the new connection is up
}

void tcp_path::pump(uint32_t index) {
  auto& peer = *peers_[index];
  if (peer.state == peer_state::link::broken) {
    while (!peer.waiting.empty()) {
      auto id = peer.waiting.front();
      peer.waiting.pop_front();
      auto it = pending_.find(id);
      if (it == pending_.end() || it->second.sent)
        continue;
      if (!it->second.withdrawn)
        complete(id, errc::peer_unreachable, false, 0);
      pending_.erase(it);
    }
    return;
  }
  if (peer.state != peer_state::link::up || peer.congested)
    return;
  while (!peer.waiting.empty() && peer.in_flight < options_.window_slices) {
    auto id = peer.waiting.front();
    auto it = pending_.find(id);
    if (it == pending_.end() || it->second.sent) {
      peer.waiting.pop_front();
      continue;
    }
    if (peer.in_flight > 0 && peer.bytes_in_flight + it->second.op.length > options_.window_bytes)
      break;
    if (it->second.op.length > small_copy_bytes) {
      peer.waiting.pop_front();
      batch_ids_.assign(1, id);
      if (!send_batch(index))
        break;
      continue;
    }
    // Small slices travel together: one frame pair for up to batch_entries of them.
    batch_ids_.clear();
    uint64_t bytes = 0;
    while (!peer.waiting.empty() && batch_ids_.size() < batch_entries
           && peer.in_flight + batch_ids_.size() < options_.window_slices) {
      auto next = peer.waiting.front();
      auto found = pending_.find(next);
      if (found == pending_.end() || found->second.sent) {
        peer.waiting.pop_front();
        continue;
      }
      auto length = found->second.op.length;
      if (length > small_copy_bytes || (!batch_ids_.empty() && bytes + length > batch_bytes))
        break;
      peer.waiting.pop_front();
      batch_ids_.push_back(next);
      bytes += length;
    }
    if (!batch_ids_.empty() && !send_batch(index))
      break;
  }
}

bool tcp_path::send_batch(uint32_t index) {
  auto& peer = *peers_[index];
  auto* gates = gates_.get();
  zmq::message_t payload;
  uint64_t at = 0;
  std::shared_ptr<lent_token> token;
  auto drop = [&](uint64_t id, errc code) {
    complete(id, code, false, 0);
    pending_.erase(id);
  };
  auto& first = pending_.find(batch_ids_.front())->second;
  if (batch_ids_.size() == 1 && first.op.op == opcode::write && !first.op.local_where.is_device()
      && first.op.length > small_copy_bytes) {
    // One large WRITE: lend registered memory to ZeroMQ, leased until ZeroMQ releases it.
    auto id = batch_ids_.front();
    {
      slice_gates::pass gate(gates, id);
      if (!gate) { // its task resolved meanwhile: nothing to send
        drop(id, errc::timeout);
        return true;
      }
    }
    token = std::make_shared<lent_token>();
    token->lease = local_->lease(first.op.local_addr, first.op.length);
    token->peer = index;
    token->outstanding = outstanding_;
    if (!token->lease) {
      drop(id, errc::unregistered_memory);
      return true;
    }
    outstanding_->fetch_add(1, std::memory_order_acq_rel);
    payload.rebuild(reinterpret_cast<void*>(first.op.local_addr), first.op.length,
                    release_payload, new std::shared_ptr<lent_token>(token));
    at = first.op.length;
  } else {
    // Otherwise the WRITE payloads are copied back to back (device memory staged to the host),
    // each inside its gate and under a lease on its region.
    uint64_t write_total = 0;
    for (auto id : batch_ids_) {
      const auto& op = pending_.find(id)->second.op;
      if (op.op == opcode::write)
        write_total += op.length;
    }
    if (write_total > 0)
      payload.rebuild(write_total);
    auto* out = static_cast<uint8_t*>(payload.data());
    size_t kept = 0;
    for (auto id : batch_ids_) {
      auto& e = pending_.find(id)->second;
      if (e.op.op == opcode::write) {
        slice_gates::pass gate(gates, id);
        if (!gate) {
          drop(id, errc::timeout);
          continue;
        }
        auto lease = local_->lease(e.op.local_addr, e.op.length);
        if (!lease) {
          drop(id, errc::unregistered_memory);
          continue;
        }
        if (memory::copy_bytes(out + at, memory::location{},
                               reinterpret_cast<const void*>(e.op.local_addr), e.op.local_where,
                               e.op.length)) {
          drop(id, errc::transport_failure);
          continue;
        }
        at += e.op.length;
      }
      batch_ids_[kept++] = id;
    }
    batch_ids_.resize(kept);
    if (batch_ids_.empty())
      return true;
    if (at != write_total) { // some were dropped: send only the bytes gathered
      zmq::message_t exact(out, at);
      payload.move(exact);
    }
  }
  zmq::message_t header(batch_ids_.size() * wire::request_header_size);
  auto* h = static_cast<uint8_t*>(header.data());
  for (size_t i = 0; i < batch_ids_.size(); ++i) {
    const auto& op = pending_.find(batch_ids_[i])->second.op;
    wire::request_header r;
    r.op = op.op == opcode::write ? wire::frame_op::write : wire::frame_op::read;
    r.id = batch_ids_[i];
    r.incarnation = peer.incarnation;
    r.remote_addr = op.remote_addr;
    r.length = op.length;
    r.token = op.fence_token;
    wire::encode(r, h + i * wire::request_header_size);
  }
  bool queued = false;
  try {
    if (at > 0) {
      queued = peer.socket->send(header, zmq::send_flags::sndmore | zmq::send_flags::dontwait)
                 .has_value();
      if (queued)
        (void) peer.socket->send(payload, zmq::send_flags::dontwait);
    } else {
      queued = peer.socket->send(header, zmq::send_flags::dontwait).has_value();
    }
  } catch (const zmq::error_t& err) {
    log::warn("tcp data path: send to '{}' failed: {}", peer.name, err.what());
    for (auto id : batch_ids_) {
      complete(id, errc::transport_failure, true, 0);
      pending_.erase(id);
    }
    return true;
  }
  if (!queued) {
    // ZeroMQ's queue is full: the slices wait (in order) until the socket is writable. A lent
    // payload not taken by ZeroMQ is released when `payload` goes out of scope.
    for (auto it = batch_ids_.rbegin(); it != batch_ids_.rend(); ++it)
      peer.waiting.push_front(*it);
    peer.congested = true;
    return false;
  }
  for (auto id : batch_ids_) {
    auto& e = pending_.find(id)->second;
    e.sent = true;
    if (id == batch_ids_.front())
      e.token = token;
    ++peer.in_flight;
    peer.bytes_in_flight += e.op.length;
  }
  sent_.fetch_add(batch_ids_.size(), std::memory_order_relaxed);
  return true;
}

void tcp_path::receive(uint32_t index) {
  auto& peer = *peers_[index];
  for (int budget = 0; budget < 4096 && peer.socket; ++budget) {
    zmq::message_t header;
    zmq::message_t data;
    bool has_data = false;
    const char* problem = nullptr;
    try {
      if (!peer.socket->recv(header, zmq::recv_flags::dontwait))
        break;
      if (header.more()) {
        (void) peer.socket->recv(data, zmq::recv_flags::dontwait);
        has_data = true;
        while (data.more()) { // more frames than the protocol has: drain and refuse
          zmq::message_t junk;
          problem = "too many frames";
          if (!peer.socket->recv(junk, zmq::recv_flags::dontwait) || !junk.more())
            break;
        }
      }
    } catch (const zmq::error_t& e) {
      log::warn("tcp data path: receiving from '{}' failed: {}", peer.name, e.what());
      break;
    }
    // Decode every entry and check the data frame's layout before using any of it.
    size_t n = header.size() / wire::reply_header_size;
    if (problem == nullptr
        && (header.size() == 0 || header.size() % wire::reply_header_size != 0
            || n > wire::max_entries))
      problem = wire::to_string(wire::decode_error::size);
    uint64_t flagged = 0;
    replies_in_.resize(problem ? 0 : n);
    for (size_t i = 0; problem == nullptr && i < n; ++i) {
      wire::decode_error derr{};
      if (!wire::decode(static_cast<const uint8_t*>(header.data()) + i * wire::reply_header_size,
                        wire::reply_header_size, replies_in_[i], derr))
        problem = wire::to_string(derr);
      else if (replies_in_[i].payload)
        flagged += replies_in_[i].bytes;
    }
    if (problem == nullptr && flagged != (has_data ? data.size() : 0))
      problem = "data frame does not match the flagged entries";
    if (problem != nullptr) {
      if (should_log(malformed_replies_.fetch_add(1, std::memory_order_relaxed)))
        log::warn("tcp data path: malformed reply from '{}' ({})", peer.name, problem);
      continue;
    }
    const auto* bytes = has_data ? static_cast<const uint8_t*>(data.data()) : nullptr;
    uint64_t at = 0;
    for (const auto& reply : replies_in_) {
      handle_reply(index, reply, reply.payload ? bytes + at : nullptr);
      if (reply.payload)
        at += reply.bytes;
    }
  }
}

void tcp_path::handle_reply(uint32_t index, const wire::reply_header& reply,
                            const uint8_t* data) {
  auto& peer = *peers_[index];
  auto it = pending_.find(reply.id);
  if (it == pending_.end() || it->second.op.peer != index || !it->second.sent) {
    unmatched_replies_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  auto& e = it->second;
  replies_.fetch_add(1, std::memory_order_relaxed);
  if (!e.expired) {
    --peer.in_flight;
    peer.bytes_in_flight -= e.op.length;
  }
  if (e.withdrawn || e.expired) {
    // Its task is resolved: no byte moves locally. The target answered, so the slice is settled;
    // the report goes on, and the coordinator counts it as late.
    complete(reply.id, reply.status, false, 0);
    forget(reply.id, true);
    return;
  }
  if (reply.status != errc::none) {
    complete(reply.id, reply.status, retryable_status(reply.status), 0);
  } else if (e.op.op == opcode::read) {
    if (data == nullptr || reply.bytes != e.op.length) {
      complete(reply.id, errc::malformed_frame, true, 0);
    } else {
      slice_gates::pass gate(gates_.get(), reply.id);
      auto lease = gate ? local_->lease(e.op.local_addr, e.op.length) : memory::region_lease{};
      if (!gate) {
        gated_.fetch_add(1, std::memory_order_relaxed);
        complete(reply.id, errc::timeout, false, 0); // late: its task is already terminal
      } else if (!lease) {
        complete(reply.id, errc::unregistered_memory, false, 0);
      } else if (memory::copy_bytes(reinterpret_cast<void*>(e.op.local_addr), e.op.local_where,
                                    data, memory::location{}, e.op.length)) {
        complete(reply.id, errc::transport_failure, false, 0);
      } else {
        complete(reply.id, errc::none, false, e.op.length);
      }
    }
  } else if (reply.bytes != e.op.length || data != nullptr) {
    complete(reply.id, errc::malformed_frame, true, 0);
  } else {
    complete(reply.id, errc::none, false, e.op.length);
  }
  forget(reply.id, true);
}

void tcp_path::handle_monitor(uint32_t index) {
  auto& peer = *peers_[index];
  for (;;) {
    zmq::message_t event;
    zmq::message_t address;
    try {
      if (!peer.monitor || !peer.monitor->recv(event, zmq::recv_flags::dontwait))
        return;
      if (event.more())
        (void) peer.monitor->recv(address, zmq::recv_flags::dontwait);
    } catch (const zmq::error_t&) {
      return;
    }
    if (event.size() < 6)
      continue;
    uint16_t kind;
    std::memcpy(&kind, event.data(), sizeof(kind));
    if (kind == ZMQ_EVENT_CONNECTED) {
      if (peer.state != peer_state::link::up)
        log::debug("tcp data path: connected to '{}' ({})", peer.name, peer.endpoint);
      peer.state = peer_state::link::up;
      peer.since = steady::now();
      pump(index);
    } else if (kind == ZMQ_EVENT_DISCONNECTED && peer.state == peer_state::link::up) {
      log::warn("tcp data path: connection to '{}' ({}) lost; {} slice(s) in flight fail and are "
                "retried; reconnecting",
                peer.name, peer.endpoint, peer.in_flight);
      disconnects_.fetch_add(1, std::memory_order_relaxed);
      // ZeroMQ reconnects on its own; slices posted meanwhile wait for the new connection.
      fail_sent(index, errc::peer_unreachable);
      peer.state = peer_state::link::down;
      peer.since = steady::now();
    }
  }
}

void tcp_path::fence_region(const memory::region_state* state) {
  std::set<uint32_t> holders;
  for (auto& [id, e] : pending_)
    if (e.token && !e.token->released.load(std::memory_order_acquire)
        && e.token->lease.state() == state)
      holders.insert(e.op.peer);
  for (auto p : holders)
    if (p < peers_.size() && peers_[p])
      reset_peer(p, errc::unregistered_memory, "its queued WRITE lends memory being unregistered");
}

void tcp_path::handle_commands(std::vector<command>& commands) {
  for (auto& cmd : commands) {
    switch (cmd.what) {
      case command::kind::connect: {
        if (cmd.peer >= peers_.size())
          peers_.resize(cmd.peer + 1);
        auto& slot = peers_[cmd.peer];
        if (!slot) {
          slot = std::make_unique<peer_state>();
          slot->name = cmd.name;
          slot->endpoint = cmd.endpoint;
          slot->incarnation = cmd.incarnation;
          open_socket(*slot);
        } else if (slot->endpoint != cmd.endpoint || slot->state == peer_state::link::broken) {
          // Restarted elsewhere: the old connection's slices cannot complete.
          fail_sent(cmd.peer, errc::peer_unreachable);
          close_socket(*slot);
          slot->endpoint = cmd.endpoint;
          slot->incarnation = cmd.incarnation;
          open_socket(*slot);
        } else {
          slot->incarnation = cmd.incarnation;
          if (slot->state == peer_state::link::down && !slot->socket_missing) {
            // Re-opened while down (typically: the peer restarted on the same endpoint). ZeroMQ's
            // own reconnect may still be backing off: connect afresh.
            fail_sent(cmd.peer, errc::peer_unreachable);
            close_socket(*slot);
            open_socket(*slot);
          }
        }
        pump(cmd.peer);
        break;
      }
      case command::kind::post:
        for (const auto& op : cmd.ops) {
          if (op.peer >= peers_.size() || !peers_[op.peer]) {
            complete(op.id, errc::unknown_segment, false, 0);
            continue;
          }
          auto [it, inserted] = pending_.try_emplace(op.id);
          if (!inserted) { // the coordinator never reuses a live id; refuse rather than trust
            complete(op.id, errc::invalid_argument, false, 0);
            continue;
          }
          it->second.op = op;
          peers_[op.peer]->waiting.push_back(op.id);
          if (op.deadline_ns != 0)
            deadlines_.emplace(op.deadline(), op.id);
        }
        for (uint32_t i = 0; i < peers_.size(); ++i)
          if (peers_[i] && !peers_[i]->waiting.empty())
            pump(i);
        break;
      case command::kind::withdraw: {
        auto seq = next_withdrawal_++;
        withdrawal w;
        w.done = std::move(cmd.done);
        w.deadline = cmd.deadline;
        for (auto id : cmd.ids) {
          auto it = pending_.find(id);
          if (it == pending_.end())
            continue;
          auto& e = it->second;
          if (!e.sent) {
            pending_.erase(it); // still queued here: it never moves
            continue;
          }
          e.withdrawn = true;
          if (e.op.op != opcode::write)
            continue; // nothing at the target to settle; the gate guards local memory
          e.withdrawal = seq;
          w.ids.push_back(id);
          ++w.awaiting;
          if (e.token && !e.token->released.load(std::memory_order_acquire))
            w.tokens.push_back(e.token);
        }
        withdrawals_.emplace(seq, std::move(w));
        break;
      }
      case command::kind::fence:
        fence_region(cmd.region.get());
        break;
    }
  }
}

void tcp_path::finish_withdrawals(bool force) {
  auto now = steady::now();
  for (auto it = withdrawals_.begin(); it != withdrawals_.end();) {
    auto& w = it->second;
    if ((force || now >= w.deadline) && !w.forced) {
      // The deadline passed: whatever is still unanswered may yet land at its target (name it);
      // connections still holding withdrawn local memory are reset to release it.
      w.forced = true;
      std::set<uint32_t> holders;
      for (auto id : w.ids) {
        auto e = pending_.find(id);
        if (e == pending_.end() || e->second.withdrawal != it->first)
          continue;
        e->second.withdrawal = 0;
        if (e->second.op.peer < peers_.size() && peers_[e->second.op.peer])
          w.unsettled.insert(peers_[e->second.op.peer]->name);
        if (e->second.token && !e->second.token->released.load(std::memory_order_acquire))
          holders.insert(e->second.op.peer);
      }
      w.awaiting = 0;
      if (!force)
        for (auto p : holders)
          reset_peer(p, errc::peer_unreachable, "withdrawn WRITE data still queued at the deadline");
    }
    bool released = std::all_of(w.tokens.begin(), w.tokens.end(), [](const auto& t) {
      return t->released.load(std::memory_order_acquire);
    });
    if (w.awaiting == 0 && (released || force)) {
      if (w.done)
        w.done(unsettled_segments(w.unsettled.begin(), w.unsettled.end()));
      it = withdrawals_.erase(it);
      continue;
    }
    ++it;
  }
}

void tcp_path::check_timers() {
  auto now = steady::now();
  while (!deadlines_.empty() && deadlines_.top().first <= now) {
    auto id = deadlines_.top().second;
    deadlines_.pop();
    auto it = pending_.find(id);
    if (it == pending_.end() || it->second.expired)
      continue;
    auto& e = it->second;
    auto& peer = *peers_[e.op.peer];
    expired_.fetch_add(1, std::memory_order_relaxed);
    if (!e.sent) {
      // Still waiting for a connection (or for room in the window) at its deadline.
      if (!e.withdrawn)
        complete(id, peer.state == peer_state::link::up ? errc::timeout : errc::peer_unreachable,
                 false, 0);
      pending_.erase(it);
      continue;
    }
    // Sent and unanswered: free its window slot now, so a mute peer cannot wedge later slices.
    e.expired = true;
    --peer.in_flight;
    peer.bytes_in_flight -= e.op.length;
    if (!e.withdrawn)
      complete(id, errc::timeout, false, 0);
    // Kept until the target answers (a late reply is not copied; a WRITE may still be applied),
    // within a bound.
    if (++peer.expired > options_.max_expired)
      reset_peer(e.op.peer, errc::timeout, "too many slices unanswered past their deadline");
  }
  for (uint32_t i = 0; i < peers_.size(); ++i) {
    auto& peer = peers_[i];
    if (peer && peer->socket_missing && now >= peer->reopen_at) {
      open_socket(*peer);
      pump(i);
    }
  }
  finish_withdrawals(false);
}

void tcp_path::flush_completions() {
  if (completions_.empty())
    return;
  completion_sink sink;
  {
    std::lock_guard<std::mutex> guard(mutex_);
    sink = sink_;
  }
  if (sink)
    sink(std::move(completions_));
  completions_ = {};
}

void tcp_path::run() {
  std::vector<zmq_pollitem_t> items;
  std::vector<command> commands;
  while (!stopping_.load(std::memory_order_acquire)) {
    items.clear();
    items.push_back({nullptr, wakeup_.fd(), ZMQ_POLLIN, 0});
    for (auto& peer : peers_) {
      if (peer && peer->socket) {
        short events = ZMQ_POLLIN | (peer->congested ? ZMQ_POLLOUT : 0);
        items.push_back({peer->socket->handle(), 0, events, 0});
        items.push_back({peer->monitor->handle(), 0, ZMQ_POLLIN, 0});
      } else {
        items.push_back({nullptr, -1, 0, 0});
        items.push_back({nullptr, -1, 0, 0});
      }
    }
    auto now = steady::now();
    auto wake = now + max_poll;
    if (!deadlines_.empty())
      wake = std::min(wake, deadlines_.top().first);
    for (auto& [seq, w] : withdrawals_)
      wake = std::min(wake, w.forced ? now + std::chrono::milliseconds(2) : w.deadline);
    for (auto& peer : peers_)
      if (peer && peer->socket_missing)
        wake = std::min(wake, peer->reopen_at);
    io_idle_.store(true, std::memory_order_seq_cst);
    bool queued;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      queued = !inbox_.empty();
    }
    auto wait_ms = std::chrono::duration_cast<std::chrono::milliseconds>(wake - now).count();
    int rc = zmq_poll(items.data(), static_cast<int>(items.size()),
                      queued ? 0 : std::max<long>(0, static_cast<long>(wait_ms) + 1));
    io_idle_.store(false, std::memory_order_seq_cst);
    if (rc < 0 && zmq_errno() == ETERM)
      break;
    if (items[0].revents & ZMQ_POLLIN)
      wakeup_.drain();
    {
      std::lock_guard<std::mutex> guard(mutex_);
      commands.swap(inbox_);
    }
    if (!commands.empty()) {
      handle_commands(commands);
      commands.clear();
    }
    for (uint32_t i = 0; i < peers_.size(); ++i) {
      if (!peers_[i] || !peers_[i]->socket)
        continue;
      size_t at = 1 + 2 * i;
      if (at + 1 < items.size() && (items[at + 1].revents & ZMQ_POLLIN))
        handle_monitor(i);
      if (!peers_[i]->socket)
        continue;
      if (at < items.size() && (items[at].revents & ZMQ_POLLOUT) && peers_[i]->congested) {
        peers_[i]->congested = false;
        pump(i);
      }
      int events = 0;
      try {
        events = peers_[i]->socket->get(zmq::sockopt::events);
      } catch (const zmq::error_t&) {
      }
      if (events & ZMQ_POLLIN) {
        receive(i);
        pump(i);
      }
    }
    check_timers();
    flush_completions();
  }
  // Stopping: whatever is still in flight ends with shutting_down; sockets close.
  for (auto& [id, e] : pending_)
    if (!e.withdrawn && !e.expired)
      complete(id, errc::shutting_down, false, 0);
  for (auto& [seq, w] : withdrawals_)
    for (auto id : w.ids)
      if (auto e = pending_.find(id); e != pending_.end() && e->second.op.peer < peers_.size()
                                      && peers_[e->second.op.peer])
        w.unsettled.insert(peers_[e->second.op.peer]->name);
  pending_.clear();
  for (auto& [seq, w] : withdrawals_) {
    w.awaiting = 0;
    if (w.done)
      w.done(unsettled_segments(w.unsettled.begin(), w.unsettled.end()));
  }
  withdrawals_.clear();
  {
    std::lock_guard<std::mutex> guard(mutex_);
    for (auto& cmd : inbox_) {
      for (const auto& op : cmd.ops)
        complete(op.id, errc::shutting_down, false, 0);
      if (cmd.done)
        cmd.done({});
    }
    inbox_.clear();
  }
  flush_completions();
  for (auto& peer : peers_)
    if (peer)
      close_socket(*peer);
}

} // namespace kvferry::transport
