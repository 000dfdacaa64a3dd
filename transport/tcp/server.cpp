#include "transport/tcp/server.hpp"

#include <algorithm>
#include <vector>

#include "config/error.hpp"
#include "config/log.hpp"
#include "memory/device.hpp"

namespace kvferry::transport {

namespace {

/// Owned bytes a message's reply needs at most besides device staging: its headers.
constexpr size_t max_reply_header_bytes = wire::max_entries * wire::reply_header_size + 32;
/// A header frame buffer larger than this is released after use (legitimate frames are small).
constexpr size_t keep_header_capacity = 4096;

/// Says whether to log the count-th refusal: the first 20 (each reason once, typically), then every
/// 1000th.
bool should_log(uint64_t count) noexcept {
  return count < 20 || count % 1000 == 0;
}

} // namespace

namespace {

using shared_state = data_plane;

/// The data protocol on one connection: [request headers][WRITE data?] -> [reply headers][READ data?]
class data_protocol final : public zmtp::protocol {
public:
  data_protocol(zmtp::budget& budget, std::shared_ptr<shared_state> shared)
    : budget_(budget), shared_(std::move(shared)) {}

  bool may_start_message(zmtp::connection& c) override {
    const auto& limits = shared_->limits;
    return c.queued_messages() < limits.peer_max_queued_messages
           && c.queued_bytes() < limits.peer_max_queued_bytes
           && budget_.allows(max_reply_header_bytes);
  }

  zmtp::violation on_frame(zmtp::connection&, const zmtp::frame_header& h, size_t index,
                           zmtp::body_plan& plan) override {
    if (index == 0) {
      reset();
      if (h.size == 0 || h.size > wire::max_entries * wire::request_header_size) {
        // Nothing in it can be trusted, not even where entries start: drop it unread.
        refuse(wire::to_string(wire::decode_error::size), h.size);
        plan.how = zmtp::body_plan::mode::scatter;
        plan.pieces.push_back(zmtp::sink{zmtp::sink::kind::discard, nullptr, h.size, {}});
        return zmtp::violation::none;
      }
      plan.how = zmtp::body_plan::mode::buffer;
      plan.buffer = &header_;
      return zmtp::violation::none;
    }
    plan.how = zmtp::body_plan::mode::scatter;
    // A request is one or two frames. Anything more is dropped unread (it costs no memory) and
    // the request is refused; a data frame that is not the last one never reaches memory.
    if (malformed_ || index > 1 || h.more || h.size != write_total_) {
      if (!malformed_)
        refuse(index > 1 || h.more ? "more than two frames in a request"
                                   : "data frame missing, unexpected or of the wrong size",
               h.size);
      plan.pieces.push_back(zmtp::sink{zmtp::sink::kind::discard, nullptr, h.size, {}});
      return zmtp::violation::none;
    }
    for (size_t i = 0; i < entries_.size(); ++i) {
      const auto& e = entries_[i];
      if (e.op != wire::frame_op::write)
        continue;
      if (status_[i] != errc::none) {
        plan.pieces.push_back(zmtp::sink{zmtp::sink::kind::discard, nullptr, e.length, {}});
        continue;
      }
      auto kind = where_[i].is_device() ? zmtp::sink::kind::device : zmtp::sink::kind::host;
      plan.pieces.push_back(
        zmtp::sink{kind, reinterpret_cast<uint8_t*>(e.remote_addr), e.length, where_[i]});
    }
    return zmtp::violation::none;
  }

  zmtp::violation on_frame_done(zmtp::connection& c, const zmtp::frame_header& h, size_t index,
                                zmtp::body_plan& plan) override {
    if (index == 0) {
      if (!malformed_)
        decode();
      if (h.more) {
        if (!malformed_ && write_total_ == 0)
          refuse("data frame missing, unexpected or of the wrong size", header_.size());
        return zmtp::violation::none; // the data frame comes next
      }
      if (!malformed_ && write_total_ > 0)
        refuse("data frame missing, unexpected or of the wrong size", header_.size());
    } else {
      if (h.more)
        return zmtp::violation::none; // more frames follow: the request ends with the last one
      for (size_t i = 0, p = 0; i < entries_.size(); ++i) {
        if (entries_[i].op != wire::frame_op::write || malformed_)
          continue;
        if (status_[i] == errc::none && p < plan.pieces.size() && plan.pieces[p].failed)
          status_[i] = errc::transport_failure;
        ++p;
      }
    }
    finish(c);
    return zmtp::violation::none;
  }

  // A request cut off by its peer gives back what it took of the budget (device staging).
  void on_close(zmtp::connection&) override {
    release_device_charge();
    reset();
  }
  ~data_protocol() override { release_device_charge(); }

  bool busy() const override { return !entries_.empty(); }

  bool holds_region(const memory::region_state* state) const override {
    for (const auto& lease : leases_)
      if (lease.state() == state)
        return true;
    return false;
  }

  // Entries decoded and admitted whose bytes are not all moved yet: a WRITE whose data is arriving,
  // a READ answered once the request's data frame is in.
  bool holds_range(uint64_t addr, uint64_t len) const override {
    if (malformed_)
      return false; // refused whole: no entry touches memory
    for (size_t i = 0; i < entries_.size() && i < status_.size(); ++i) {
      const auto& e = entries_[i];
      if (status_[i] == errc::none && e.remote_addr < addr + len && addr < e.remote_addr + e.length)
        return true;
    }
    return false;
  }

private:
  void reset() {
    // Buffers grown by an unusually large request are given back, so an idle connection costs
    // little whatever its peer sent before.
    if (header_.capacity() > keep_header_capacity) {
      std::vector<uint8_t>().swap(header_);
      std::vector<wire::request_header>().swap(entries_);
      std::vector<errc>().swap(status_);
      std::vector<memory::location>().swap(where_);
      std::vector<memory::region_lease>().swap(leases_);
    }
    entries_.clear();
    status_.clear();
    where_.clear();
    leases_.clear();
    write_total_ = 0;
    device_charge_ = 0;
    malformed_ = false;
    readable_ids_ = 0;
  }

  void refuse(const char* why, uint64_t size) {
    malformed_ = true;
    auto n = shared_->malformed.fetch_add(1, std::memory_order_relaxed);
    if (should_log(n))
      log::warn("segment '{}': refused a malformed data-plane request ({}; header frame {} bytes); "
                "{} refused so far",
                shared_->segment_name, why, size, n + 1);
  }

  /// Decodes and checks every entry, before any memory is touched.
  void decode() {
    const size_t n = header_.size() / wire::request_header_size;
    readable_ids_ = n;
    entries_.resize(n);
    if (header_.size() % wire::request_header_size != 0) {
      for (size_t i = 0; i < n; ++i) {
        wire::decode_error ignored{};
        (void) wire::decode(header_.data() + i * wire::request_header_size,
                            wire::request_header_size, entries_[i], ignored);
      }
      refuse(wire::to_string(wire::decode_error::size), header_.size());
      return;
    }
    uint64_t read_total = 0;
    for (size_t i = 0; i < n; ++i) {
      wire::decode_error err{};
      if (!wire::decode(header_.data() + i * wire::request_header_size, wire::request_header_size,
                        entries_[i], err)) {
        // Ids of the remaining entries are readable too: refuse them all by id.
        for (size_t j = i + 1; j < n; ++j) {
          wire::decode_error ignored{};
          (void) wire::decode(header_.data() + j * wire::request_header_size,
                              wire::request_header_size, entries_[j], ignored);
        }
        refuse(wire::to_string(err), header_.size());
        return;
      }
      (entries_[i].op == wire::frame_op::write ? write_total_ : read_total) += entries_[i].length;
    }
    if (n > 1 && (read_total > wire::max_frame_payload || write_total_ > wire::max_frame_payload)) {
      refuse("the entries' data would exceed the 64 MiB frame limit", header_.size());
      return;
    }
    shared_->requests.fetch_add(n, std::memory_order_relaxed);
    status_.assign(n, errc::none);
    where_.assign(n, memory::location{});
    leases_.resize(n);
    const auto table = shared_->registry->snapshot();
    const auto incarnation = shared_->incarnation;
    for (size_t i = 0; i < n; ++i) {
      const auto& req = entries_[i];
      auto& status = status_[i];
      const memory::region* r = nullptr;
      if (req.incarnation != 0 && req.incarnation != incarnation) {
        status = errc::stale_incarnation;
      } else if ((r = table->find(req.remote_addr, req.length)) == nullptr) {
        status = errc::out_of_range;
      } else {
        leases_[i] = memory::region_lease(*r);
        if (!leases_[i])
          status = errc::out_of_range; // being unregistered
        else if (r->fences && !r->fences->admits(req.remote_addr, req.length, req.token))
          status = errc::fenced; // its allocation was freed (or it carries no token)
        else
          where_[i] = r->where;
      }
      if (status == errc::none && req.op == wire::frame_op::read && where_[i].is_device()) {
        // Staged through the host: charged to the reply budget now, refused when it is spent.
        if (budget_.try_charge(req.length))
          device_charge_ += req.length;
        else
          status = errc::busy;
      }
      if (status != errc::none) {
        leases_[i].reset();
        (status == errc::stale_incarnation ? shared_->refused_stale_incarnation
         : status == errc::fenced          ? shared_->refused_fenced
         : status == errc::busy            ? shared_->refused_busy
                                           : shared_->refused_out_of_range)
          .fetch_add(1, std::memory_order_relaxed);
        auto refused = shared_->refused.fetch_add(1, std::memory_order_relaxed);
        if (should_log(refused))
          log::info("segment '{}': refused {} of [{}, +{}) (token {}): {}", shared_->segment_name,
                    req.op == wire::frame_op::write ? "WRITE" : "READ", hex(req.remote_addr),
                    req.length, req.token, to_string(status));
      }
    }
  }

  /// Sends the reply: every entry's status, then the successful READs' bytes.
  void finish(zmtp::connection& c) {
    auto message = std::make_unique<zmtp::outbound>();
    if (malformed_) {
      // Refused whole: each entry whose id is readable learns why at once.
      if (readable_ids_ > 0) {
        message->append_frame_header(readable_ids_ * wire::reply_header_size, false);
        for (size_t i = 0; i < readable_ids_; ++i)
          append_reply(*message, wire::reply_header{errc::malformed_frame, entries_[i].id, 0, false});
        send(c, std::move(message));
      }
      release_device_charge();
      reset();
      return;
    }
    const size_t n = entries_.size();
    uint64_t read_bytes = 0;
    for (size_t i = 0; i < n; ++i)
      if (entries_[i].op == wire::frame_op::read && status_[i] == errc::none)
        read_bytes += entries_[i].length;
    message->append_frame_header(n * wire::reply_header_size, read_bytes > 0);
    for (size_t i = 0; i < n; ++i) {
      const auto& req = entries_[i];
      wire::reply_header reply{status_[i], req.id, 0, false};
      if (status_[i] == errc::none) {
        reply.bytes = req.length;
        if (req.op == wire::frame_op::read)
          reply.payload = true;
      }
      append_reply(*message, reply);
    }
    if (read_bytes > 0) {
      message->append_frame_header(read_bytes, false);
      for (size_t i = 0; i < n; ++i) {
        const auto& req = entries_[i];
        if (req.op != wire::frame_op::read || status_[i] != errc::none)
          continue;
        if (where_[i].is_device()) {
          auto at = message->owned.size();
          message->owned.resize(at + req.length);
          if (memory::copy_bytes(message->owned.data() + at, memory::location{},
                                 reinterpret_cast<const void*>(req.remote_addr), where_[i],
                                 req.length)) {
            // The entry keeps its place in the data frame, flagged, with an error status.
            set_status(*message, i, errc::transport_failure);
          }
          message->ranges.push_back(zmtp::outbound::range{nullptr, at, req.length});
        } else {
          message->append_external(reinterpret_cast<const uint8_t*>(req.remote_addr), req.length);
          message->leases.push_back(std::move(leases_[i]));
        }
        shared_->reads.fetch_add(1, std::memory_order_relaxed);
        shared_->bytes.fetch_add(req.length, std::memory_order_relaxed);
        shared_->read_bytes.fetch_add(req.length, std::memory_order_relaxed);
      }
    }
    for (size_t i = 0; i < n; ++i) {
      if (entries_[i].op == wire::frame_op::write && status_[i] == errc::none) {
        shared_->writes.fetch_add(1, std::memory_order_relaxed);
        shared_->bytes.fetch_add(entries_[i].length, std::memory_order_relaxed);
        shared_->write_bytes.fetch_add(entries_[i].length, std::memory_order_relaxed);
      }
    }
    // The staged device bytes were charged at decode; the rest of the message now.
    auto footprint = std::max(message->footprint(), static_cast<size_t>(device_charge_));
    budget_.charge(footprint - device_charge_);
    message->charged = footprint;
    device_charge_ = 0;
    c.send(std::move(message));
    reset();
  }

  void send(zmtp::connection& c, std::unique_ptr<zmtp::outbound> message) {
    message->charged = message->footprint();
    budget_.charge(message->charged);
    c.send(std::move(message));
  }

  void release_device_charge() {
    if (device_charge_ > 0)
      budget_.release(device_charge_);
    device_charge_ = 0;
  }

  static void append_reply(zmtp::outbound& m, const wire::reply_header& r) {
    uint8_t bytes[wire::reply_header_size];
    wire::encode(r, bytes);
    m.append_owned(bytes);
  }

  /// Rewrites entry i's status in an already encoded reply (its header is the (i+1)-th after the
  /// first frame header).
  void set_status(zmtp::outbound& m, size_t i, errc status) {
    const size_t first = m.owned.size() > 0 ? frame_header_bytes(entries_.size()) : 0;
    m.owned[first + i * wire::reply_header_size + 6] = static_cast<uint8_t>(status);
  }

  static size_t frame_header_bytes(size_t entries) {
    return entries * wire::reply_header_size <= 255 ? 2 : 9;
  }

  zmtp::budget& budget_;
  std::shared_ptr<shared_state> shared_;
  std::vector<uint8_t> header_;
  std::vector<wire::request_header> entries_;
  std::vector<errc> status_;
  std::vector<memory::location> where_;
  std::vector<memory::region_lease> leases_;
  uint64_t write_total_ = 0;
  uint64_t device_charge_ = 0;
  size_t readable_ids_ = 0;
  bool malformed_ = false;
};

} // namespace

std::unique_ptr<zmtp::protocol> make_data_protocol(zmtp::budget& replies,
                                                   std::shared_ptr<data_plane> plane) {
  return std::make_unique<data_protocol>(replies, std::move(plane));
}

caf::expected<std::unique_ptr<tcp_server>>
tcp_server::start(std::shared_ptr<memory::region_registry> registry, tcp_server_options options) {
  std::unique_ptr<tcp_server> out{new tcp_server()};
  out->registry_ = registry;
  out->shared_ = std::make_shared<data_plane>();
  out->shared_->registry = registry;
  out->shared_->segment_name = options.segment_name;
  out->shared_->incarnation = options.incarnation;
  out->shared_->limits = options.limits;
  zmtp::server_options so;
  so.bind_host = options.bind_host;
  so.port = options.port;
  so.name = "segment '" + options.segment_name + "' data plane";
  so.max_connections = options.limits.max_connections;
  so.max_connections_per_host = options.limits.max_connections_per_host;
  so.handshake_timeout = options.limits.handshake_timeout;
  so.reply_budget = options.limits.reply_budget;
  auto shared = out->shared_;
  auto server = zmtp::server::start(so, [shared](zmtp::server& s, uint64_t) {
    return make_data_protocol(s.replies(), shared);
  });
  if (!server)
    return make_error(errc::transport_failure, "segment '" + options.segment_name
                                                 + "': cannot serve the data plane: "
                                                 + context_of(server.error()));
  out->server_ = std::move(*server);
  out->endpoint_ = "tcp://" + options.advertised_host + ":" + std::to_string(out->server_->port());
  // Unregistering a region closes the connections whose replies or in-progress WRITE still hold
  // its memory, so the unregister never waits on a peer that does not read.
  auto* srv = out->server_.get();
  out->fence_listener_ = registry->add_fence_listener([srv](const memory::region& r) {
    srv->post([srv, state = r.state] {
      srv->close_if(
        [&](zmtp::connection& c) {
          return c.holds_lease_on(state.get()) || c.proto().holds_region(state.get());
        },
        "its replies or WRITE held memory that is being unregistered");
    });
  });
  // Fencing a range of a fenced region closes the connections with an access to it in progress
  // (admitted before the floor rose): a WRITE whose bytes are arriving, a READ not yet answered, a
  // READ reply still to be read from the range. Their remaining bytes never move. `done` runs once
  // that happened, or when the job is dropped because the server stopped (no connection is left).
  out->range_fence_listener_ = registry->add_range_fence_listener(
    [srv](const memory::region&, uint64_t addr, uint64_t len, std::function<void()> done) {
      struct done_on_destroy {
        std::function<void()> done;
        ~done_on_destroy() {
          if (done)
            done();
        }
      };
      auto finish = std::make_shared<done_on_destroy>();
      finish->done = std::move(done);
      srv->post([srv, addr, len, finish]() mutable {
        srv->close_if(
          [&](zmtp::connection& c) { return c.holds_range(addr, len) || c.proto().holds_range(addr, len); },
          "it had an access in progress to a range that was fenced");
        finish.reset();
      });
    });
  log::debug("segment '{}': tcp data plane listening on {}", options.segment_name, out->endpoint_);
  return out;
}

tcp_server::~tcp_server() {
  stop();
}

void tcp_server::stop() {
  if (!server_)
    return;
  if (fence_listener_ != 0) {
    registry_->remove_fence_listener(fence_listener_);
    fence_listener_ = 0;
  }
  if (range_fence_listener_ != 0) {
    registry_->remove_range_fence_listener(range_fence_listener_);
    range_fence_listener_ = 0;
  }
  server_->stop();
}

tcp_server_counters tcp_server::counters() const noexcept {
  tcp_server_counters c;
  c.requests = shared_->requests.load();
  c.reads = shared_->reads.load();
  c.writes = shared_->writes.load();
  c.bytes = shared_->bytes.load();
  c.refused = shared_->refused.load();
  c.malformed = shared_->malformed.load();
  c.read_bytes = shared_->read_bytes.load();
  c.write_bytes = shared_->write_bytes.load();
  c.refused_out_of_range = shared_->refused_out_of_range.load();
  c.refused_stale_incarnation = shared_->refused_stale_incarnation.load();
  c.refused_fenced = shared_->refused_fenced.load();
  c.refused_busy = shared_->refused_busy.load();
  if (server_)
    c.connections = server_->counters();
  return c;
}

} // namespace kvferry::transport
