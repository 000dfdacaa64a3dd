#include "transport/control/server.hpp"

#include <atomic>

#include "config/log.hpp"
#include "transport/control/wire.hpp"

namespace kvferry::transport::control {

struct server::shared_state {
  server_options options;
  handlers answer;
  std::atomic<uint64_t> requests{0}, malformed{0};
};

namespace {

constexpr size_t keep_buffer_capacity = 4096;

bool should_log(uint64_t count) noexcept {
  return count < 10 || count % 1000 == 0;
}

class control_protocol final : public zmtp::protocol {
public:
  control_protocol(zmtp::server& server, std::shared_ptr<server::shared_state> shared,
                   uint64_t id)
    : server_(server.weak_from_this()), budget_(server.replies()), shared_(std::move(shared)),
      id_(id) {}

  bool may_start_message(zmtp::connection& c) override {
    return pending_ < shared_->options.max_pending_per_connection && c.queued_messages() < 64
           && budget_.allows(max_reply_frame + max_request_frame);
  }

  bool busy() const override { return pending_ > 0; }

  zmtp::violation on_frame(zmtp::connection&, const zmtp::frame_header& h, size_t index,
                           zmtp::body_plan& plan) override {
    if (index > 0 || h.more)
      return zmtp::violation::message_shape;
    if (h.size > max_request_frame)
      return zmtp::violation::frame_size;
    plan.how = zmtp::body_plan::mode::buffer;
    plan.buffer = &buffer_;
    return zmtp::violation::none;
  }

  zmtp::violation on_frame_done(zmtp::connection& c, const zmtp::frame_header&, size_t,
                                zmtp::body_plan&) override {
    auto decoded = decode(buffer_);
    if (decoded && decoded->what != kind::request)
      decoded = make_error(errc::malformed_frame, "control message: a reply where a request belongs");
    if (!decoded) {
      auto n = shared_->malformed.fetch_add(1, std::memory_order_relaxed);
      if (should_log(n))
        log::warn("segment '{}': refused a malformed control request: {} ({} so far)",
                  shared_->options.segment_name, context_of(decoded.error()), n + 1);
      if (auto id = readable_id(buffer_); id != 0) {
        message reply;
        reply.what = kind::reply;
        reply.id = id;
        reply.status = errc::malformed_frame;
        reply.reason = context_of(decoded.error());
        send(c, reply);
      }
      trim();
      return zmtp::violation::none;
    }
    trim();
    shared_->requests.fetch_add(1, std::memory_order_relaxed);
    ++pending_;
    // What the request holds until it is answered counts against the budget, like a reply.
    const size_t held = sizeof(message) + decoded->from.size() + decoded->text.size();
    budget_.charge(held);
    auto weak = server_;
    auto conn = id_;
    auto op_id = decoded->id;
    if (decoded->operation == op::describe) {
      shared_->answer.describe([weak, conn, op_id, held](caf::expected<memory::segment_descriptor> d) {
        message reply;
        reply.what = kind::reply;
        reply.operation = op::describe;
        reply.id = op_id;
        if (d) {
          reply.descriptor = std::move(*d);
        } else {
          reply.status = code_of(d.error()) == errc::none ? errc::transport_failure
                                                          : code_of(d.error());
          reply.reason = context_of(d.error());
        }
        deliver(weak, conn, held, std::move(reply));
      });
    } else {
      shared_->answer.notify(std::move(decoded->from), std::move(decoded->text),
                             [weak, conn, op_id, held](caf::error err) {
                               message reply;
                               reply.what = kind::reply;
                               reply.operation = op::notify;
                               reply.id = op_id;
                               if (err) {
                                 reply.status = code_of(err) == errc::none ? errc::transport_failure
                                                                           : code_of(err);
                                 reply.reason = context_of(err);
                               }
                               deliver(weak, conn, held, std::move(reply));
                             });
    }
    return zmtp::violation::none;
  }

private:
  /// Runs on any thread: hands the reply to the server thread, which sends it if the
  /// connection is still open.
  static void deliver(const std::weak_ptr<zmtp::server>& weak, uint64_t conn, size_t held,
                      message reply) {
    auto srv = weak.lock();
    if (!srv)
      return;
    srv->post([raw = srv.get(), conn, held, reply = std::move(reply)]() mutable {
      raw->replies().release(held);
      auto* c = raw->find(conn);
      if (c == nullptr)
        return;
      auto& self = static_cast<control_protocol&>(c->proto());
      if (self.pending_ > 0)
        --self.pending_;
      if (auto out = self.build(reply))
        raw->send(conn, std::move(out)); // also watches the socket for writability
    });
  }

  /// Encodes a reply and charges it to the reply budget (null if even an error cannot be
  /// encoded).
  std::unique_ptr<zmtp::outbound> build(const message& m) {
    auto bytes = encode(m);
    if (!bytes) {
      message error;
      error.what = kind::reply;
      error.operation = m.operation;
      error.id = m.id;
      error.status = errc::not_supported;
      error.reason = context_of(bytes.error());
      bytes = encode(error);
      if (!bytes)
        return nullptr;
    }
    auto out = std::make_unique<zmtp::outbound>();
    out->append_frame_header(bytes->size(), false);
    out->append_owned(*bytes);
    out->charged = out->footprint();
    budget_.charge(out->charged);
    return out;
  }

  /// Sends on the connection being read (its owner writes it after the read).
  void send(zmtp::connection& c, const message& m) {
    if (auto out = build(m))
      c.send(std::move(out));
  }

  void trim() {
    if (buffer_.capacity() > keep_buffer_capacity)
      std::vector<uint8_t>().swap(buffer_);
  }

  std::weak_ptr<zmtp::server> server_;
  zmtp::budget& budget_;
  std::shared_ptr<server::shared_state> shared_;
  uint64_t id_;
  std::vector<uint8_t> buffer_;
  size_t pending_ = 0;
};

} // namespace

caf::expected<std::unique_ptr<server>> server::start(server_options options, handlers h) {
  std::unique_ptr<server> out{new server()};
  out->shared_ = std::make_shared<shared_state>();
  out->shared_->options = options;
  out->shared_->answer = std::move(h);
  zmtp::server_options so;
  so.bind_host = options.bind_host;
  so.port = options.port;
  so.name = "control plane";
  so.max_connections = options.limits.max_connections;
  so.max_connections_per_host = options.limits.max_connections_per_host;
  so.handshake_timeout = options.limits.handshake_timeout;
  so.reply_budget = options.reply_budget;
  auto shared = out->shared_;
  auto started = zmtp::server::start(so, [shared](zmtp::server& s, uint64_t id) {
    return std::make_unique<control_protocol>(s, shared, id);
  });
  if (!started)
    return make_error(errc::transport_failure, "segment '" + options.segment_name
                                                 + "': cannot serve the control plane: "
                                                 + context_of(started.error()));
  out->server_ = std::move(*started);
  return out;
}

server::~server() {
  stop();
}

void server::stop() {
  if (server_)
    server_->stop();
}

uint16_t server::port() const noexcept {
  return server_->port();
}

server_counters server::counters() const noexcept {
  return server_counters{shared_->requests.load(), shared_->malformed.load(),
                         server_->counters()};
}

} // namespace kvferry::transport::control
