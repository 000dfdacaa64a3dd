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

message reply_to(op operation, uint64_t id) {
  message reply;
  reply.what = kind::reply;
  reply.operation = operation;
  reply.id = id;
  return reply;
}

/// The reply that carries `err` to the requester: its errc (transport_failure for an error of
/// another category, with the whole error as text) and its context.
message error_reply(op operation, uint64_t id, const caf::error& err) {
  auto reply = reply_to(operation, id);
  auto code = code_of(err);
  reply.status = code == errc::none ? errc::transport_failure : code;
  reply.reason = code == errc::none ? describe(err) : context_of(err);
  return reply;
}

const char* name_of(op operation) noexcept {
  switch (operation) {
    case op::describe: return "describe";
    case op::notify: return "notify";
    case op::call: return "call";
  }
  return "unknown";
}

void deliver(const std::weak_ptr<zmtp::server>& weak, uint64_t conn, size_t held, message reply);

/// The answer to one request: sent once, by the first call of any copy of the handler's `done`
/// (later calls are ignored). When every copy is destroyed unanswered, an error is sent instead,
/// so neither the requester nor the reply budget waits for it forever.
class responder {
public:
  responder(std::weak_ptr<zmtp::server> server, uint64_t conn, op operation, uint64_t id,
            size_t held)
    : server_(std::move(server)), conn_(conn), operation_(operation), id_(id), held_(held) {}
  responder(const responder&) = delete;
  responder& operator=(const responder&) = delete;
  ~responder() {
    if (!answered_.exchange(true))
      deliver(server_, conn_, held_,
              error_reply(operation_, id_,
                          make_error(errc::transport_failure,
                                     "the node dropped the request without answering it")));
  }

  [[nodiscard]] message reply() const { return reply_to(operation_, id_); }
  /// Sends `reply` unless this request was answered already.
  void answer(message reply) {
    if (!answered_.exchange(true))
      deliver(server_, conn_, held_, std::move(reply));
  }
  void fail(const caf::error& err) { answer(error_reply(operation_, id_, err)); }

private:
  std::weak_ptr<zmtp::server> server_;
  uint64_t conn_;
  op operation_;
  uint64_t id_;
  size_t held_;
  std::atomic<bool> answered_{false};
};

class control_protocol final : public zmtp::protocol {
public:
  control_protocol(zmtp::server& server, std::shared_ptr<server::shared_state> shared,
                   uint64_t id)
    : server_(server.weak_from_this()), budget_(server.replies()), shared_(std::move(shared)),
      id_(id) {}

  bool may_start_message(zmtp::connection& c) override {
    const auto& o = shared_->options;
    return pending_ < o.max_pending_per_connection && c.queued_messages() < 64
           && budget_.allows(o.max_reply_frame + o.max_request_frame);
  }

  bool busy() const override { return pending_ > 0; }

  zmtp::violation on_frame(zmtp::connection& c, const zmtp::frame_header& h, size_t index,
                           zmtp::body_plan& plan) override {
    if (index > 0 || h.more)
      return zmtp::violation::message_shape;
    if (h.size > shared_->options.max_request_frame) {
      c.fail("a request frame of " + std::to_string(h.size) + " bytes exceeds this node's limit of "
             + std::to_string(shared_->options.max_request_frame));
      return zmtp::violation::frame_size;
    }
    plan.how = zmtp::body_plan::mode::buffer;
    plan.buffer = &buffer_;
    return zmtp::violation::none;
  }

  zmtp::violation on_frame_done(zmtp::connection& c, const zmtp::frame_header&, size_t,
                                zmtp::body_plan&) override {
    auto decoded = decode(buffer_, shared_->options.max_request_frame);
    if (decoded && decoded->what != kind::request)
      decoded = make_error(errc::malformed_frame, "control message: a reply where a request belongs");
    if (!decoded) {
      refuse(c, decoded.error());
      trim();
      return zmtp::violation::none;
    }
    trim();
    shared_->requests.fetch_add(1, std::memory_order_relaxed);
    dispatch(c, std::move(*decoded));
    return zmtp::violation::none;
  }

  /// On the server thread: a request of this connection was answered.
  void answered(zmtp::server& srv, message reply) {
    if (pending_ > 0)
      --pending_;
    if (auto out = build(reply))
      srv.send(id_, std::move(out)); // also watches the socket for writability
  }

private:
  /// Answers a request that did not decode, by id when its id is readable.
  void refuse(zmtp::connection& c, const caf::error& why) {
    auto n = shared_->malformed.fetch_add(1, std::memory_order_relaxed);
    if (should_log(n))
      log::warn("segment '{}': refused a malformed control request: {} ({} so far)",
                shared_->options.segment_name, context_of(why), n + 1);
    if (auto id = readable_id(buffer_); id != 0) {
      auto reply = reply_to(readable_op(buffer_), id);
      reply.status = errc::malformed_frame;
      reply.reason = context_of(why);
      send(c, reply);
    }
  }

  /// Hands a decoded request to its handler, or answers not_supported when it has none.
  void dispatch(zmtp::connection& c, message request) {
    const auto& answer = shared_->answer;
    const bool handled = (request.operation == op::describe && answer.describe)
                         || (request.operation == op::notify && answer.notify)
                         || (request.operation == op::call && answer.call);
    if (!handled) {
      auto reply = reply_to(request.operation, request.id);
      reply.status = errc::not_supported;
      reply.reason = "'" + shared_->options.segment_name + "' does not answer "
                     + name_of(request.operation) + " requests";
      send(c, reply);
      return;
    }
    ++pending_;
    // What the request holds until it is answered counts against the budget, like a reply.
    const size_t held =
      sizeof(message) + request.from.size() + request.text.size() + request.payload.size();
    budget_.charge(held);
    auto slot = std::make_shared<responder>(server_, id_, request.operation, request.id, held);
    switch (request.operation) {
      case op::describe:
        answer.describe([slot](caf::expected<memory::segment_descriptor> d) {
          if (!d)
            return slot->fail(d.error());
          auto reply = slot->reply();
          reply.descriptor = std::move(*d);
          slot->answer(std::move(reply));
        });
        break;
      case op::notify:
        answer.notify(std::move(request.from), std::move(request.text),
                      [slot](caf::error err) {
                        if (err)
                          return slot->fail(err);
                        slot->answer(slot->reply());
                      });
        break;
      case op::call:
        answer.call(request.method, std::move(request.payload),
                    [slot](caf::expected<std::vector<uint8_t>> payload) {
                      if (!payload)
                        return slot->fail(payload.error());
                      auto reply = slot->reply();
                      reply.payload = std::move(*payload);
                      slot->answer(std::move(reply));
                    });
        break;
    }
  }

  /// Encodes a reply and charges it to the reply budget (null if even an error cannot be
  /// encoded).
  std::unique_ptr<zmtp::outbound> build(const message& m) {
    const auto limit = shared_->options.max_reply_frame;
    auto bytes = encode(m, limit);
    if (!bytes) {
      log::warn("segment '{}': cannot send the answer to a {} request: {}",
                shared_->options.segment_name, name_of(m.operation), context_of(bytes.error()));
      auto error = reply_to(m.operation, m.id);
      error.status = errc::not_supported;
      error.reason = "the answer cannot be sent: " + context_of(bytes.error());
      bytes = encode(error, limit);
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

/// Runs on any thread: hands the reply to the server thread, which gives back what the request
/// held and sends the reply if the connection is still open.
void deliver(const std::weak_ptr<zmtp::server>& weak, uint64_t conn, size_t held, message reply) {
  auto srv = weak.lock();
  if (!srv)
    return;
  srv->post([raw = srv.get(), conn, held, reply = std::move(reply)]() mutable {
    raw->replies().release(held);
    auto* c = raw->find(conn);
    if (c == nullptr)
      return;
    static_cast<control_protocol&>(c->proto()).answered(*raw, std::move(reply));
  });
}

} // namespace

caf::expected<std::unique_ptr<server>> server::start(server_options options, handlers h) {
  auto refuse = [&](std::string why) {
    return make_error(errc::invalid_argument, "segment '" + options.segment_name
                                                + "': control plane options: " + why);
  };
  // An error reply (header, reason) must always fit, or a request could go unanswered.
  const size_t smallest_reply = header_size + 2 + max_reason;
  if (options.max_request_frame < header_size)
    return refuse("max_request_frame " + std::to_string(options.max_request_frame)
                  + " is smaller than the " + std::to_string(header_size) + "-byte header");
  if (options.max_reply_frame < smallest_reply)
    return refuse("max_reply_frame " + std::to_string(options.max_reply_frame)
                  + " cannot carry an error reply (" + std::to_string(smallest_reply) + " bytes)");
  if (options.reply_budget < options.max_request_frame + options.max_reply_frame)
    return refuse("reply_budget " + std::to_string(options.reply_budget)
                  + " is smaller than one request and one reply ("
                  + std::to_string(options.max_request_frame + options.max_reply_frame)
                  + " bytes): no request would ever be read");
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
