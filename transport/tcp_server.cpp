#include "transport/tcp_server.hpp"

#include <cstdio>
#include <vector>

#include "config/error.hpp"
#include "config/log.hpp"
#include "memory/device.hpp"
#include "transport/tcp_wire.hpp"

namespace kvferry::transport {

namespace {

/// Frees a zero-copy reply: drops the server's outstanding count. The hint owns a reference to
/// the counter, so a reply released after the server is gone touches no freed memory.
void release_reply(void*, void* hint) {
  auto* counter = static_cast<std::shared_ptr<std::atomic<int64_t>>*>(hint);
  (*counter)->fetch_sub(1, std::memory_order_acq_rel);
  delete counter;
}

/// READ replies up to this size are copied into the reply instead of sent by reference.
constexpr uint64_t small_copy_bytes = 16 << 10;


} // namespace

tcp_server::tcp_server(std::shared_ptr<zmq::context_t> context,
                       std::shared_ptr<memory::region_registry> registry,
                       tcp_server_options options)
  : context_(std::move(context)),
    registry_(std::move(registry)),
    options_(std::move(options)),
    socket_(*context_, zmq::socket_type::router),
    outstanding_(std::make_shared<std::atomic<int64_t>>(0)) {
}

caf::expected<std::unique_ptr<tcp_server>>
tcp_server::start(std::shared_ptr<zmq::context_t> context,
                  std::shared_ptr<memory::region_registry> registry, tcp_server_options options) {
  std::unique_ptr<tcp_server> server{
    new tcp_server(std::move(context), std::move(registry), std::move(options))};
  auto& s = server->socket_;
  try {
    s.set(zmq::sockopt::linger, 0);
    s.set(zmq::sockopt::sndhwm, 0); // initiators window their requests; never drop a reply
    s.set(zmq::sockopt::rcvhwm, 0);
    s.set(zmq::sockopt::router_mandatory, 1);
    s.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(wire::max_frame_payload + 4096));
    s.set(zmq::sockopt::sndbuf, 4 << 20);
    s.set(zmq::sockopt::rcvbuf, 4 << 20);
    auto port = server->options_.port;
    s.bind("tcp://" + server->options_.bind_host + ":" + (port == 0 ? std::string("*") : std::to_string(port)));
    auto last = s.get(zmq::sockopt::last_endpoint);
    std::string host;
    if (!parse_tcp_endpoint(last, host, server->port_))
      return make_error(errc::transport_failure, "tcp server: cannot read bound endpoint '" + last + "'");
  } catch (const zmq::error_t& e) {
    return make_error(errc::transport_failure,
                      "tcp server: cannot bind " + server->options_.bind_host + ":"
                        + std::to_string(server->options_.port) + ": " + e.what());
  }
  server->endpoint_ = "tcp://" + server->options_.advertised_host + ":" + std::to_string(server->port_);
  server->thread_ = std::thread([raw = server.get()] { raw->run(); });
  log::debug("segment '{}': tcp data plane listening on {}", server->options_.segment_name,
             server->endpoint_);
  return server;
}

tcp_server::~tcp_server() {
  stop();
}

void tcp_server::stop() {
  if (stopping_.exchange(true))
    return;
  wakeup_.ring();
  if (thread_.joinable())
    thread_.join();
  socket_.close();
}

tcp_server_counters tcp_server::counters() const noexcept {
  return tcp_server_counters{requests_.load(), reads_.load(), writes_.load(),
                             bytes_.load(),    refused_.load(), malformed_.count()};
}

bool tcp_server::wait_unreferenced(std::chrono::milliseconds timeout) {
  auto until = std::chrono::steady_clock::now() + timeout;
  // Two loop iterations: the one in progress may still use the old snapshot; the next one
  // loads the current snapshot.
  auto target = iterations_.load(std::memory_order_acquire) + 2;
  while (iterations_.load(std::memory_order_acquire) < target) {
    if (stopping_.load() || std::chrono::steady_clock::now() > until)
      return stopping_.load();
    wakeup_.ring();
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  while (outstanding_->load(std::memory_order_acquire) > 0) {
    if (std::chrono::steady_clock::now() > until)
      return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return true;
}

void tcp_server::refuse_frame(const char* why, size_t frames, size_t size) {
  if (malformed_.should_log())
    log::warn("segment '{}': refused a malformed data-plane frame ({}; {} frames, header {} "
              "bytes); {} refused so far",
              options_.segment_name, why, frames, size, malformed_.count());
}

void tcp_server::run() {
  zmq_pollitem_t items[2] = {{socket_.handle(), 0, ZMQ_POLLIN, 0},
                             {nullptr, wakeup_.fd(), ZMQ_POLLIN, 0}};
  while (!stopping_.load(std::memory_order_acquire)) {
    iterations_.fetch_add(1, std::memory_order_acq_rel);
    int rc = zmq_poll(items, 2, 100);
    if (rc < 0) {
      if (zmq_errno() == ETERM)
        return;
      continue;
    }
    if (items[1].revents & ZMQ_POLLIN)
      wakeup_.drain();
    if (!(items[0].revents & ZMQ_POLLIN))
      continue;
    auto regions = registry_->snapshot();
    // Drain what is readable, bounded so that wakeups stay timely.
    for (int i = 0; i < 256 && !stopping_.load(std::memory_order_relaxed); ++i) {
      if (!(socket_.get(zmq::sockopt::events) & ZMQ_POLLIN))
        break;
      serve_one(socket_, *regions);
    }
  }
}

void tcp_server::serve_one(zmq::socket_t& socket, const memory::region_table& regions) {
  // Read the whole multipart message: [identity][headers][data?]; anything else is malformed.
  zmq::message_t parts[3];
  size_t count = 0;
  bool more = true;
  while (more) {
    zmq::message_t scratch;
    auto& dst = count < 3 ? parts[count] : scratch;
    if (!socket.recv(dst, zmq::recv_flags::dontwait))
      break; // nothing (more) to read
    ++count;
    more = dst.more();
  }
  if (count == 0)
    return;
  if (count < 2 || count > 3) {
    refuse_frame("expected a header and at most one data frame", count - 1, count > 1 ? parts[1].size() : 0);
    return;
  }
  // Decode and check every entry before touching memory; one bad entry refuses the message.
  const auto header_bytes = parts[1].size();
  if (header_bytes == 0 || header_bytes % wire::request_header_size != 0
      || header_bytes / wire::request_header_size > wire::max_entries) {
    refuse_frame(wire::to_string(wire::decode_error::size), count - 1, header_bytes);
    return;
  }
  const size_t n = header_bytes / wire::request_header_size;
  entries_.resize(n);
  uint64_t write_total = 0, read_total = 0;
  const auto* raw = static_cast<const uint8_t*>(parts[1].data());
  for (size_t i = 0; i < n; ++i) {
    wire::decode_error derr{};
    if (!wire::decode(raw + i * wire::request_header_size, wire::request_header_size, entries_[i],
                      derr)) {
      refuse_frame(wire::to_string(derr), count - 1, header_bytes);
      return;
    }
    (entries_[i].op == wire::frame_op::write ? write_total : read_total) += entries_[i].length;
  }
  const bool has_data = count == 3;
  if ((write_total > 0) != has_data || (has_data && parts[2].size() != write_total)) {
    refuse_frame("data frame missing, unexpected or of the wrong size", count - 1, header_bytes);
    return;
  }
  if (n > 1 && read_total > wire::max_frame_payload) {
    refuse_frame("the READ entries' reply would exceed the 64 MiB frame limit", count - 1,
                 header_bytes);
    return;
  }
  requests_.fetch_add(n, std::memory_order_relaxed);
  // Statuses first (so the reply's data frame can be sized), then the copies.
  replies_.resize(n);
  regions_.resize(n);
  uint64_t reply_bytes = 0;
  for (size_t i = 0; i < n; ++i) {
    const auto& req = entries_[i];
    auto& reply = replies_[i];
    reply = wire::reply_header{errc::none, req.id, 0, false};
    regions_[i] = nullptr;
    if (req.incarnation != 0 && req.incarnation != options_.incarnation)
      reply.status = errc::stale_incarnation;
    else if ((regions_[i] = regions.find(req.remote_addr, req.length)) == nullptr)
      reply.status = errc::out_of_range;
    if (reply.status != errc::none) {
      auto refused = refused_.fetch_add(1, std::memory_order_relaxed);
      if (refused < 10 || refused % 1000 == 0)
        log::info("segment '{}': refused {} of [{}, +{}): {}", options_.segment_name,
                  req.op == wire::frame_op::write ? "WRITE" : "READ", hex(req.remote_addr),
                  req.length, to_string(reply.status));
    } else if (req.op == wire::frame_op::read) {
      // Its bytes take a place in the data frame, whatever the copy below does.
      reply.payload = true;
      reply.bytes = req.length;
      reply_bytes += req.length;
    }
  }
  zmq::message_t payload;
  const auto& only = entries_[0];
  bool lend = n == 1 && replies_[0].payload && !regions_[0]->where.is_device()
              && only.length > small_copy_bytes;
  if (lend) {
    // One large READ: send straight from registered memory.
    outstanding_->fetch_add(1, std::memory_order_acq_rel);
    payload.rebuild(reinterpret_cast<void*>(only.remote_addr), only.length, release_reply,
                    new std::shared_ptr<std::atomic<int64_t>>(outstanding_));
  } else if (reply_bytes > 0) {
    payload.rebuild(reply_bytes);
  }
  const auto* write_data = has_data ? static_cast<const uint8_t*>(parts[2].data()) : nullptr;
  auto* read_data = static_cast<uint8_t*>(payload.data());
  uint64_t write_at = 0, read_at = 0;
  for (size_t i = 0; i < n; ++i) {
    const auto& req = entries_[i];
    auto& reply = replies_[i];
    bool write = req.op == wire::frame_op::write;
    if (write) {
      if (reply.status == errc::none) {
        if (memory::copy_bytes(reinterpret_cast<void*>(req.remote_addr), regions_[i]->where,
                               write_data + write_at, memory::location{}, req.length)) {
          reply.status = errc::transport_failure;
        } else {
          reply.bytes = req.length;
          writes_.fetch_add(1, std::memory_order_relaxed);
          bytes_.fetch_add(req.length, std::memory_order_relaxed);
        }
      }
      write_at += req.length;
    } else if (reply.payload) {
      // A failed copy keeps its place in the data frame (flagged, with an error status), so the
      // entries after it stay where the initiator expects them.
      if (!lend
          && memory::copy_bytes(read_data + read_at, memory::location{},
                                reinterpret_cast<const void*>(req.remote_addr),
                                regions_[i]->where, req.length)) {
        reply.status = errc::transport_failure;
      } else {
        reads_.fetch_add(1, std::memory_order_relaxed);
        bytes_.fetch_add(req.length, std::memory_order_relaxed);
      }
      read_at += req.length;
    }
  }
  zmq::message_t header(n * wire::reply_header_size);
  for (size_t i = 0; i < n; ++i)
    wire::encode(replies_[i], static_cast<uint8_t*>(header.data()) + i * wire::reply_header_size);
  bool send_payload = payload.size() > 0;
  try {
    if (!socket.send(parts[0], zmq::send_flags::sndmore | zmq::send_flags::dontwait))
      return;
    socket.send(header, send_payload ? zmq::send_flags::sndmore | zmq::send_flags::dontwait
                                     : zmq::send_flags::dontwait);
    if (send_payload)
      socket.send(payload, zmq::send_flags::dontwait);
  } catch (const zmq::error_t& e) {
    // EHOSTUNREACH: the initiator is gone; its tasks resolve on its side by deadline.
    log::debug("segment '{}': reply not sent: {}", options_.segment_name, e.what());
  }
}

} // namespace kvferry::transport
