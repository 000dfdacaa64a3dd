#include "actors/store/master.hpp"

#include <random>
#include <unordered_map>

#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "config/log.hpp"
#include "transport/store/wire.hpp"

namespace kvferry::store {

namespace {

using bytes = std::vector<uint8_t>;
using promise = caf::typed_response_promise<bytes>;

/// A put_end call waiting for its entries' commits.
struct pending_end {
  promise answer;
  msg::statuses_reply reply;
  size_t missing = 0;
};

struct held_watch {
  promise answer;
  time_point since{};
};

struct master_actor_state {
  static inline const char* name = "kvferry.store.master";
  std::unique_ptr<master_state> store;
  master_options options;
  std::unordered_map<uint64_t, held_watch> watches;        // by client id
  std::unordered_map<uint64_t, pending_end> ends;          // by call number
  std::unordered_map<uint64_t, std::pair<uint64_t, size_t>> end_of_put; // put -> (call, index)
  uint64_t next_call = 1;
};

using self_pointer = master_actor::stateful_pointer<master_actor_state>;

template <class T>
caf::result<bytes> reply_with(caf::expected<T> r) {
  if (!r)
    return std::move(r.error());
  auto out = transport::store::encode(*r);
  if (!out)
    return std::move(out.error());
  return std::move(*out);
}

/// Answers the client's held watch with its current work (possibly none).
void answer_watch(self_pointer self, uint64_t client, time_point now) {
  auto& st = self->state;
  auto it = st.watches.find(client);
  if (it == st.watches.end())
    return;
  auto answer = std::move(it->second.answer);
  st.watches.erase(it);
  auto work = st.store->watch(msg::watch_request{client, {}}, now);
  if (!work) {
    answer.deliver(std::move(work.error()));
    return;
  }
  auto out = transport::store::encode(*work);
  if (out)
    answer.deliver(std::move(*out));
  else
    answer.deliver(std::move(out.error()));
}

/// Delivers what the state finished since the last request: commits, and clients' new work.
void flush(self_pointer self, time_point now) {
  auto& st = self->state;
  for (auto& f : st.store->take_finished_ends()) {
    auto where = st.end_of_put.find(f.put_id);
    if (where == st.end_of_put.end())
      continue;
    auto [call, index] = where->second;
    st.end_of_put.erase(where);
    auto c = st.ends.find(call);
    if (c == st.ends.end())
      continue;
    c->second.reply.results[index] = std::move(f.result);
    if (--c->second.missing == 0) {
      auto out = transport::store::encode(c->second.reply);
      if (out)
        c->second.answer.deliver(std::move(*out));
      else
        c->second.answer.deliver(std::move(out.error()));
      st.ends.erase(c);
    }
  }
  for (auto client : st.store->take_clients_with_work())
    if (st.store->has_new_work(client))
      answer_watch(self, client, now);
}

caf::result<bytes> handle(self_pointer self, uint16_t method, const bytes& payload) {
  namespace w = transport::store;
  auto& st = self->state;
  auto& store = *st.store;
  // The actor system's clock: virtual time under CAF's test coordinator.
  const auto now = self->clock().now();
  switch (static_cast<w::method>(method)) {
    case w::method::mount: {
      auto r = w::decode_mount_request(payload);
      if (!r)
        return std::move(r.error());
      auto reply = store.mount(*r, now);
      if (reply)
        log::info("store master: client {} ('{}' on host '{}') mounted {} segment(s)",
                  hex(r->client_id), r->client_name, r->host, r->segments.size());
      return reply_with(std::move(reply));
    }
    case w::method::unmount: {
      auto r = w::decode_unmount_request(payload);
      if (!r)
        return std::move(r.error());
      auto status = store.unmount(r->client_id, now);
      answer_watch(self, r->client_id, now);
      return reply_with(caf::expected<msg::statuses_reply>(msg::statuses_reply{{status}}));
    }
    case w::method::watch: {
      auto r = w::decode_watch_request(payload);
      if (!r)
        return std::move(r.error());
      // A newer watch replaces a held one (the client gave up on it).
      answer_watch(self, r->client_id, now);
      auto reply = store.watch(*r, now);
      if (!reply)
        return std::move(reply.error());
      if (!reply->work.empty())
        return reply_with(std::move(reply));
      auto answer = self->make_response_promise<bytes>();
      st.watches[r->client_id] = held_watch{answer, now};
      return answer;
    }
    case w::method::put_start: {
      auto r = w::decode_put_start_request(payload);
      if (!r)
        return std::move(r.error());
      return reply_with(store.put_start(*r, now));
    }
    case w::method::put_end: {
      auto r = w::decode_put_finish_request(payload);
      if (!r)
        return std::move(r.error());
      auto outcomes = store.put_end(*r, now);
      if (!outcomes)
        return std::move(outcomes.error());
      pending_end pe;
      pe.reply.results.resize(outcomes->size());
      const uint64_t call = st.next_call++;
      for (size_t i = 0; i < outcomes->size(); ++i) {
        auto& o = (*outcomes)[i];
        if (o.pending) {
          ++pe.missing;
          st.end_of_put[r->entries[i].put_id] = {call, i};
        } else {
          pe.reply.results[i] = std::move(o.result);
        }
      }
      if (pe.missing == 0)
        return reply_with(caf::expected<msg::statuses_reply>(std::move(pe.reply)));
      pe.answer = self->make_response_promise<bytes>();
      auto answer = pe.answer;
      st.ends.emplace(call, std::move(pe));
      return answer;
    }
    case w::method::put_revoke: {
      auto r = w::decode_put_finish_request(payload);
      if (!r)
        return std::move(r.error());
      return reply_with(store.put_revoke(*r, now));
    }
    case w::method::get_replicas: {
      auto r = w::decode_keys_request(payload);
      if (!r)
        return std::move(r.error());
      return reply_with(store.get_replicas(*r, now));
    }
    case w::method::exists: {
      auto r = w::decode_keys_request(payload);
      if (!r)
        return std::move(r.error());
      return reply_with(store.exists(*r, now));
    }
    case w::method::remove: {
      auto r = w::decode_keys_request(payload);
      if (!r)
        return std::move(r.error());
      return reply_with(store.remove(*r, now));
    }
    case w::method::stats: {
      auto r = w::decode_stats_request(payload);
      if (!r)
        return std::move(r.error());
      return reply_with(caf::expected<msg::stats_reply>(msg::stats_reply{store.report(now)}));
    }
  }
  return make_error(errc::malformed_frame, "store request: unknown method "
                                             + std::to_string(method) + "; expected 1 to "
                                             + std::to_string(w::method_last));
}

master_actor::behavior_type master_behavior(self_pointer self, master_options options,
                                            uint64_t master_id) {
  auto& st = self->state;
  st.options = options;
  // Tokens continue above any a predecessor issued: derived from the wall clock (4096 per
  // microsecond of uptime before a successor could start lower), and raised by every mount.
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
  st.store = std::make_unique<master_state>(options.policy, master_id,
                                            static_cast<uint64_t>(us) << 12);
  self->delayed_send(self, options.tick_interval, tick_atom::value);
  return {
    [self](call_atom, uint16_t method, const bytes& payload) -> caf::result<bytes> {
      auto result = handle(self, method, payload);
      flush(self, self->clock().now());
      return result;
    },
    [self](tick_atom) {
      auto& st = self->state;
      const auto now = self->clock().now();
      st.store->tick(now);
      flush(self, now);
      std::vector<uint64_t> idle;
      for (const auto& [client, held] : st.watches)
        if (now - held.since >= st.options.policy.watch_interval)
          idle.push_back(client);
      for (auto client : idle)
        answer_watch(self, client, now);
      self->delayed_send(self, st.options.tick_interval, tick_atom::value);
    },
  };
}

/// Forwards one call to the actor and hands its answer to `done` (a short-lived actor per call,
/// whose arguments travel through spawn).
void forward(caf::actor_system& sys, const master_actor& master, uint16_t method, bytes payload,
             std::function<void(caf::expected<bytes>)> done) {
  auto body = [](caf::event_based_actor* self, master_actor to, uint16_t m, bytes p,
                 std::function<void(caf::expected<bytes>)> answer) {
    self->request(to, caf::infinite, call_atom::value, m, std::move(p))
      .then([answer](bytes& r) { answer(std::move(r)); },
            [answer](caf::error& err) { answer(std::move(err)); });
  };
  sys.spawn(body, master, method, std::move(payload), std::move(done));
}

} // namespace

master_actor spawn_master(caf::actor_system& sys, master_options options, uint64_t master_id) {
  return sys.spawn(master_behavior, options, master_id);
}

caf::expected<std::unique_ptr<master_node>> master_node::start(options o) {
  std::unique_ptr<master_node> node{new master_node()};
  auto rt = runtime::create({});
  if (!rt)
    return rt.error();
  node->runtime_ = *rt;
  std::random_device rd;
  node->master_id_ = (static_cast<uint64_t>(rd()) << 32) | rd();
  node->actor_ = spawn_master(node->runtime_->system(), o.master, node->master_id_);
  transport::control::server_options so;
  so.bind_host = o.bind_host;
  so.port = o.port;
  so.segment_name = "store master";
  so.limits = o.limits;
  so.max_request_frame = o.max_request_frame;
  so.max_reply_frame = o.max_reply_frame;
  so.reply_budget = o.reply_budget;
  transport::control::handlers h;
  auto* sys = &node->runtime_->system();
  auto actor = node->actor_;
  h.call = [sys, actor](uint16_t method, bytes payload, auto done) {
    forward(*sys, actor, method, std::move(payload), std::move(done));
  };
  auto server = transport::control::server::start(so, std::move(h));
  if (!server) {
    node->stop();
    return make_error(errc::transport_failure, "store master: cannot listen on " + o.bind_host
                                                 + ":" + std::to_string(o.port) + ": "
                                                 + context_of(server.error()));
  }
  node->server_ = std::move(*server);
  node->port_ = node->server_->port();
  node->bound_ = transport::control::memory_bound(so);
  node->options_ = std::move(o);
  return node;
}

master_node::~master_node() {
  stop();
}

transport::control::server_counters master_node::counters() const noexcept {
  return server_ ? server_->counters() : transport::control::server_counters{};
}

caf::expected<std::string> master_node::report(milliseconds timeout) const {
  namespace w = transport::store;
  if (!actor_)
    return make_error(errc::shutting_down, "store master: stopped");
  auto payload = w::encode(w::stats_request{0});
  if (!payload)
    return payload.error();
  caf::expected<bytes> answer{caf::error{}};
  {
    caf::scoped_actor self{runtime_->system()};
    self->request(actor_, caf::timespan{timeout}, call_atom::value,
                  static_cast<uint16_t>(w::method::stats), std::move(*payload))
      .receive([&](bytes& r) { answer = std::move(r); },
               [&](caf::error& err) { answer = std::move(err); });
  }
  if (!answer)
    return answer.error();
  auto reply = w::decode_stats_reply(*answer);
  if (!reply)
    return reply.error();
  return std::move(reply->report);
}

void master_node::stop() {
  if (server_)
    server_->stop();
  if (actor_) {
    caf::anon_send_exit(actor_, caf::exit_reason::user_shutdown);
    actor_ = nullptr;
  }
}

} // namespace kvferry::store
