#include "transport/tcp_path.hpp"

#include <algorithm>

#include "config/log.hpp"
#include "memory/device.hpp"
#include "transport/tcp_wire.hpp"

namespace kvferry::transport {

namespace {

using steady = std::chrono::steady_clock;

/// WRITE payloads up to this size are copied into the frame instead of lent by reference, and
/// slices up to this size travel several to a frame.
constexpr uint64_t small_copy_bytes = 16 << 10;
/// Most slices, and most payload bytes, in one frame of small slices.
constexpr size_t batch_entries = 64;
constexpr uint64_t batch_bytes = 256 << 10;

bool retryable_status(errc code) noexcept {
  switch (code) {
    case errc::transport_failure:
    case errc::peer_unreachable:
    case errc::shutting_down:
    case errc::busy:
    case errc::timeout:
      return true;
    default:
      return false;
  }
}

} // namespace

/// Released by zmq once it no longer needs a zero-copy WRITE payload.
struct tcp_path::zc_token {
  std::atomic<bool> released{false};
};

struct tcp_path::peer_state {
  enum class link : uint8_t { connecting, up, down };
  std::string name;
  std::string endpoint;
  uint64_t incarnation = 0;
  std::unique_ptr<zmq::socket_t> socket;
  std::unique_ptr<zmq::socket_t> monitor;
  link state = link::connecting;
  bool ever_up = false;
  steady::time_point since;
  std::deque<uint64_t> waiting;
  uint32_t in_flight = 0;
  uint64_t bytes_in_flight = 0;
};

struct tcp_path::entry {
  slice_op op;
  bool sent = false;
  bool withdrawn = false;
  std::shared_ptr<zc_token> token;
};

struct tcp_path::withdrawal {
  std::vector<std::shared_ptr<zc_token>> tokens;
  std::vector<uint32_t> peers;
  std::function<void()> done;
  steady::time_point started;
  bool reset_done = false;
};

struct tcp_path::command {
  enum class kind : uint8_t { post, connect, withdraw };
  kind what = kind::post;
  std::vector<slice_op> ops;
  uint32_t peer = 0;
  std::string name;
  std::string endpoint;
  uint64_t incarnation = 0;
  std::vector<uint64_t> ids;
  std::function<void()> done;
};

namespace {

void release_payload(void*, void* hint) {
  auto* token = static_cast<std::shared_ptr<std::atomic<bool>>*>(hint);
  (*token)->store(true, std::memory_order_release);
  delete token;
}

} // namespace

tcp_path::tcp_path(std::shared_ptr<zmq::context_t> context, tcp_path_options options)
  : context_(std::move(context)), options_(options) {
  caps_.name = "tcp";
  caps_.endpoint_kind = "tcp";
  caps_.device_memory = memory::built_with_cuda(); // staged through host memory
  thread_ = std::thread([this] { run(); });
}

tcp_path::~tcp_path() {
  stop();
}

void tcp_path::set_sink(completion_sink sink) {
  std::lock_guard<std::mutex> guard(mutex_);
  sink_ = std::move(sink);
}

tcp_path_counters tcp_path::counters() const {
  return tcp_path_counters{sent_.load(), replies_.load(), unmatched_replies_.load(),
                           malformed_replies_.load(), disconnects_.load()};
}

caf::expected<uint32_t> tcp_path::connect(const memory::segment_descriptor& peer) {
  const auto* ep = peer.endpoint("tcp");
  if (ep == nullptr)
    return make_error(errc::not_supported,
                      "segment '" + peer.name + "' offers no tcp endpoint");
  std::string host;
  uint16_t port = 0;
  if (!parse_tcp_endpoint(ep->address, host, port))
    return make_error(errc::malformed_frame, "segment '" + peer.name + "': tcp endpoint '"
                                               + ep->address + "' is not tcp://host:port");
  command cmd;
  cmd.what = command::kind::connect;
  cmd.name = peer.name;
  cmd.endpoint = ep->address;
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
  {
    std::lock_guard<std::mutex> guard(mutex_);
    if (!inbox_.empty() && inbox_.back().what == command::kind::post) {
      inbox_.back().ops.insert(inbox_.back().ops.end(), ops.begin(), ops.end());
    } else {
      command cmd;
      cmd.what = command::kind::post;
      cmd.ops.assign(ops.begin(), ops.end());
      inbox_.push_back(std::move(cmd));
    }
  }
  // Ring only a sleeping I/O thread: an awake one takes the inbox before it polls again.
  if (io_idle_.load(std::memory_order_seq_cst))
    wakeup_.ring();
}

void tcp_path::withdraw(std::span<const uint64_t> ids, std::function<void()> done) {
  {
    std::lock_guard<std::mutex> guard(mutex_);
    if (!stopping_) {
      command cmd;
      cmd.what = command::kind::withdraw;
      cmd.ids.assign(ids.begin(), ids.end());
      cmd.done = std::move(done);
      inbox_.push_back(std::move(cmd));
      done = nullptr;
    }
  }
  if (done) { // stopped: nothing moves any more
    done();
    return;
  }
  wakeup_.ring();
}

void tcp_path::stop() {
  if (stopping_.exchange(true))
    return;
  wakeup_.ring();
  if (thread_.joinable())
    thread_.join();
}

void tcp_path::open_socket(peer_state& peer) {
  peer.socket = std::make_unique<zmq::socket_t>(*context_, zmq::socket_type::dealer);
  auto& s = *peer.socket;
  s.set(zmq::sockopt::linger, 0);
  s.set(zmq::sockopt::sndhwm, 0); // the window bounds what is queued
  s.set(zmq::sockopt::rcvhwm, 0);
  s.set(zmq::sockopt::sndbuf, 4 << 20);
  s.set(zmq::sockopt::rcvbuf, 4 << 20);
  s.set(zmq::sockopt::reconnect_ivl, 100);
  s.set(zmq::sockopt::reconnect_ivl_max, 1000);
  s.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(wire::max_frame_payload + 4096));
  // A peer that stops answering ZMTP heartbeats for 30 s is dropped (a safety net: task
  // deadlines normally resolve a stalled peer's tasks long before).
  s.set(zmq::sockopt::heartbeat_ivl, 5000);
  s.set(zmq::sockopt::heartbeat_timeout, 30000);
  auto address = "inproc://kvferry-tcp-monitor-" + std::to_string(reinterpret_cast<uintptr_t>(this))
                 + "-" + std::to_string(next_monitor_++);
  zmq_socket_monitor(s.handle(), address.c_str(), ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED);
  peer.monitor = std::make_unique<zmq::socket_t>(*context_, zmq::socket_type::pair);
  peer.monitor->set(zmq::sockopt::linger, 0);
  peer.monitor->connect(address);
  s.connect(peer.endpoint);
  peer.state = peer_state::link::connecting;
  peer.ever_up = false;
  peer.since = steady::now();
}

void tcp_path::close_socket(peer_state& peer) {
  if (peer.socket) {
    zmq_socket_monitor(peer.socket->handle(), nullptr, 0);
    peer.socket->close();
    peer.socket.reset();
  }
  if (peer.monitor) {
    peer.monitor->close();
    peer.monitor.reset();
  }
}

void tcp_path::complete(uint64_t id, errc code, bool retryable, uint64_t bytes) {
  completions_.push_back(slice_completion{id, code, retryable, bytes});
}

void tcp_path::fail_peer_entries(uint32_t index, errc code, bool sent_only) {
  auto& peer = *peers_[index];
  for (auto it = pending_.begin(); it != pending_.end();) {
    auto& e = it->second;
    if (e.op.peer != index || (sent_only && !e.sent)) {
      ++it;
      continue;
    }
    if (!e.withdrawn)
      complete(it->first, code, true, 0);
    it = pending_.erase(it);
  }
  if (!sent_only)
    peer.waiting.clear();
  peer.in_flight = 0;
  peer.bytes_in_flight = 0;
}

void tcp_path::reset_peer(uint32_t index, errc code) {
  auto& peer = *peers_[index];
  fail_peer_entries(index, code, true);
  close_socket(peer); // drops zmq's queued messages: their payloads are released
  open_socket(peer);
  peer.state = peer_state::link::down; // until the new connection is up
}

void tcp_path::pump(uint32_t index) {
  auto& peer = *peers_[index];
  if (peer.state == peer_state::link::down) {
    // The peer is gone: fail what waits, at once, so the coordinator can retry or resolve.
    while (!peer.waiting.empty()) {
      auto id = peer.waiting.front();
      peer.waiting.pop_front();
      auto it = pending_.find(id);
      if (it == pending_.end())
        continue;
      if (!it->second.withdrawn)
        complete(id, errc::peer_unreachable, true, 0);
      pending_.erase(it);
    }
    return;
  }
  if (peer.state != peer_state::link::up)
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
      send_batch(index);
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
    if (!batch_ids_.empty())
      send_batch(index);
  }
}

void tcp_path::send_batch(uint32_t index) {
  auto& peer = *peers_[index];
  zmq::message_t payload;
  uint64_t at = 0;
  auto& first = pending_.find(batch_ids_.front())->second;
  if (batch_ids_.size() == 1 && first.op.op == opcode::write && !first.op.local_where.is_device()
      && first.op.length > small_copy_bytes) {
    // One large WRITE: lend registered memory to zmq; withdraw waits until zmq releases it.
    first.token = std::make_shared<zc_token>();
    auto* hint = new std::shared_ptr<std::atomic<bool>>(first.token, &first.token->released);
    payload.rebuild(reinterpret_cast<void*>(first.op.local_addr), first.op.length,
                    release_payload, hint);
    at = first.op.length;
  } else {
    // Otherwise the WRITE payloads are copied back to back (device memory staged to the host).
    uint64_t write_total = 0;
    for (auto id : batch_ids_) {
      const auto& op = pending_.find(id)->second.op;
      if (op.op == opcode::write)
        write_total += op.length;
    }
    payload.rebuild(write_total);
    auto* out = static_cast<uint8_t*>(payload.data());
    size_t kept = 0;
    for (auto id : batch_ids_) {
      auto& e = pending_.find(id)->second;
      if (e.op.op == opcode::write) {
        if (memory::copy_bytes(out + at, memory::location{},
                               reinterpret_cast<const void*>(e.op.local_addr), e.op.local_where,
                               e.op.length)) {
          complete(id, errc::transport_failure, false, 0);
          pending_.erase(id);
          continue;
        }
        at += e.op.length;
      }
      batch_ids_[kept++] = id;
    }
    batch_ids_.resize(kept);
    if (batch_ids_.empty())
      return;
    if (at != write_total) { // a staging copy failed: send only the bytes gathered
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
    wire::encode(r, h + i * wire::request_header_size);
  }
  try {
    if (at > 0) {
      peer.socket->send(header, zmq::send_flags::sndmore | zmq::send_flags::dontwait);
      peer.socket->send(payload, zmq::send_flags::dontwait);
    } else {
      peer.socket->send(header, zmq::send_flags::dontwait);
    }
  } catch (const zmq::error_t& err) {
    log::warn("tcp data path: send to '{}' failed: {}", peer.name, err.what());
    for (auto id : batch_ids_) {
      complete(id, errc::transport_failure, true, 0);
      pending_.erase(id);
    }
    return;
  }
  for (auto id : batch_ids_) {
    auto& e = pending_.find(id)->second;
    e.sent = true;
    ++peer.in_flight;
    peer.bytes_in_flight += e.op.length;
  }
  sent_.fetch_add(batch_ids_.size(), std::memory_order_relaxed);
}

void tcp_path::receive(uint32_t index) {
  auto& peer = *peers_[index];
  for (int budget = 0; budget < 4096; ++budget) {
    zmq::message_t header;
    if (!peer.socket->recv(header, zmq::recv_flags::dontwait))
      break;
    zmq::message_t data;
    bool has_data = false;
    const char* problem = nullptr;
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
      if (malformed_replies_.fetch_add(1, std::memory_order_relaxed) % 1000 == 0)
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
  --peer.in_flight;
  peer.bytes_in_flight -= e.op.length;
  replies_.fetch_add(1, std::memory_order_relaxed);
  if (e.withdrawn) {
    // Withdrawn: no byte moves; the report is late and the coordinator counts it.
    complete(reply.id, reply.status, false, 0);
  } else if (reply.status != errc::none) {
    complete(reply.id, reply.status, retryable_status(reply.status), 0);
  } else if (e.op.op == opcode::read) {
    if (data == nullptr || reply.bytes != e.op.length) {
      complete(reply.id, errc::malformed_frame, true, 0);
    } else if (memory::copy_bytes(reinterpret_cast<void*>(e.op.local_addr), e.op.local_where,
                                  data, memory::location{}, e.op.length)) {
      complete(reply.id, errc::transport_failure, false, 0);
    } else {
      complete(reply.id, errc::none, false, e.op.length);
    }
  } else if (reply.bytes != e.op.length || data != nullptr) {
    complete(reply.id, errc::malformed_frame, true, 0);
  } else {
    complete(reply.id, errc::none, false, e.op.length);
  }
  pending_.erase(it);
}

void tcp_path::handle_monitor(uint32_t index) {
  auto& peer = *peers_[index];
  for (;;) {
    zmq::message_t event;
    if (!peer.monitor->recv(event, zmq::recv_flags::dontwait))
      return;
    zmq::message_t address;
    if (event.more())
      (void) peer.monitor->recv(address, zmq::recv_flags::dontwait);
    if (event.size() < 6)
      continue;
    uint16_t kind;
    std::memcpy(&kind, event.data(), sizeof(kind));
    if (kind == ZMQ_EVENT_CONNECTED) {
      peer.state = peer_state::link::up;
      peer.ever_up = true;
      peer.since = steady::now();
      pump(index);
    } else if (kind == ZMQ_EVENT_DISCONNECTED && peer.state == peer_state::link::up) {
      log::warn("tcp data path: connection to '{}' ({}) lost; failing {} slice(s) in flight",
                peer.name, peer.endpoint, peer.in_flight);
      disconnects_.fetch_add(1, std::memory_order_relaxed);
      reset_peer(index, errc::peer_unreachable);
      pump(index);
      return; // the monitor socket was replaced
    }
  }
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
        } else if (slot->endpoint != cmd.endpoint) {
          // Restarted elsewhere: the old connection's slices cannot complete.
          fail_peer_entries(cmd.peer, errc::peer_unreachable, true);
          close_socket(*slot);
          slot->endpoint = cmd.endpoint;
          slot->incarnation = cmd.incarnation;
          open_socket(*slot);
        } else {
          slot->incarnation = cmd.incarnation;
          if (slot->state == peer_state::link::down) {
            // Re-opened while down (typically: the peer restarted on the same endpoint). zmq's
            // own reconnect may still be backing off, and a down peer fails new slices at once:
            // connect afresh so that slices wait for the connection (up to connect_timeout).
            fail_peer_entries(cmd.peer, errc::peer_unreachable, true);
            close_socket(*slot);
            open_socket(*slot);
          }
        }
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
        }
        for (uint32_t i = 0; i < peers_.size(); ++i)
          if (peers_[i] && !peers_[i]->waiting.empty())
            pump(i);
        break;
      case command::kind::withdraw: {
        withdrawal w;
        w.done = std::move(cmd.done);
        w.started = steady::now();
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
          if (e.token && !e.token->released.load(std::memory_order_acquire)) {
            w.tokens.push_back(e.token);
            if (std::find(w.peers.begin(), w.peers.end(), e.op.peer) == w.peers.end())
              w.peers.push_back(e.op.peer);
          }
        }
        if (w.tokens.empty()) {
          if (w.done)
            w.done();
        } else {
          withdrawals_.push_back(std::move(w));
        }
        break;
      }
    }
  }
}

void tcp_path::check_timers() {
  auto now = steady::now();
  for (uint32_t i = 0; i < peers_.size(); ++i) {
    auto& peer = peers_[i];
    if (peer && peer->state == peer_state::link::connecting && !peer->waiting.empty()
        && now - peer->since > options_.connect_timeout) {
      log::warn("tcp data path: cannot connect to '{}' ({}) within {} ms", peer->name,
                peer->endpoint, options_.connect_timeout.count());
      peer->state = peer_state::link::down;
      pump(i);
    }
  }
  for (auto it = withdrawals_.begin(); it != withdrawals_.end();) {
    auto& w = *it;
    bool released = std::all_of(w.tokens.begin(), w.tokens.end(), [](const auto& t) {
      return t->released.load(std::memory_order_acquire);
    });
    if (released) {
      if (w.done)
        w.done();
      it = withdrawals_.erase(it);
      continue;
    }
    if (!w.reset_done && now - w.started > options_.withdraw_reset_after) {
      // zmq still holds WRITE data (the peer does not read): drop the connection to release it.
      for (auto p : w.peers) {
        log::warn("tcp data path: resetting connection to '{}' to release withdrawn slices",
                  peers_[p]->name);
        reset_peer(p, errc::peer_unreachable);
      }
      w.reset_done = true;
    }
    ++it;
  }
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
        items.push_back({peer->socket->handle(), 0, ZMQ_POLLIN, 0});
        items.push_back({peer->monitor->handle(), 0, ZMQ_POLLIN, 0});
      } else {
        items.push_back({nullptr, -1, 0, 0});
        items.push_back({nullptr, -1, 0, 0});
      }
    }
    bool timers = !withdrawals_.empty();
    for (auto& peer : peers_)
      timers = timers || (peer && peer->state == peer_state::link::connecting && !peer->waiting.empty());
    io_idle_.store(true, std::memory_order_seq_cst);
    bool queued;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      queued = !inbox_.empty();
    }
    int rc = zmq_poll(items.data(), static_cast<int>(items.size()), queued ? 0 : timers ? 10 : 500);
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
      if (1 + 2 * i + 1 < items.size() && (items[1 + 2 * i + 1].revents & ZMQ_POLLIN))
        handle_monitor(i);
      if (peers_[i]->socket && (peers_[i]->socket->get(zmq::sockopt::events) & ZMQ_POLLIN)) {
        receive(i);
        pump(i);
      }
    }
    check_timers();
    flush_completions();
  }
  // Stopping: whatever is still in flight ends with shutting_down; sockets close.
  for (auto& [id, e] : pending_)
    if (!e.withdrawn)
      complete(id, errc::shutting_down, false, 0);
  pending_.clear();
  for (auto& w : withdrawals_)
    if (w.done)
      w.done();
  withdrawals_.clear();
  {
    std::lock_guard<std::mutex> guard(mutex_);
    for (auto& cmd : inbox_) {
      for (const auto& op : cmd.ops)
        complete(op.id, errc::shutting_down, false, 0);
      if (cmd.done)
        cmd.done();
    }
    inbox_.clear();
  }
  flush_completions();
  for (auto& peer : peers_)
    if (peer)
      close_socket(*peer);
}

} // namespace kvferry::transport
