#include "actors/transfer_engine.hpp"

#include <cstdio>
#include <mutex>

#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include "config/log.hpp"
#include <caf/io/middleman.hpp>

#include "transport/local_path.hpp"
#include "transport/tcp_path.hpp"
#include "transport/zmq_support.hpp"

namespace kvferry {

namespace {

/// Upper bound for one batch's capacity (Mooncake users allocate a few hundred to a few thousand).
constexpr size_t max_batch_capacity = 1u << 20;
/// How long a blocking call waits for an actor's answer.
constexpr auto call_timeout = std::chrono::seconds(30);


/// Sends a request and blocks for the answer.
template <class Result, class Handle, class... Ts>
caf::expected<Result> ask(caf::actor_system& sys, const Handle& dest, caf::timespan timeout,
                          Ts&&... xs) {
  caf::expected<Result> out{caf::error{}};
  caf::scoped_actor self{sys};
  self->request(dest, timeout, std::forward<Ts>(xs)...)
    .receive([&](Result& r) { out = std::move(r); }, [&](caf::error& err) { out = std::move(err); });
  return out;
}

caf::error no_such_batch(const char* call, batch_id batch) {
  return make_error(errc::unknown_batch, std::string(call) + " batch " + std::to_string(batch)
                                           + ": no such batch (never allocated or already freed)");
}

caf::error stopped_error() {
  return make_error(errc::shutting_down, "the engine was shut down");
}

uint64_t new_incarnation() {
  return static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count());
}

} // namespace

transfer_engine::transfer_engine(std::shared_ptr<runtime> rt, config::settings settings,
                                 engine_options options)
  : runtime_(std::move(rt)),
    settings_(std::move(settings)),
    options_(std::move(options)),
    registry_(std::make_shared<memory::region_registry>()) {
  name_ = options_.segment_name.empty()
            ? settings_.local_hostname + ":" + std::to_string(settings_.rpc_port)
            : options_.segment_name;
}

caf::expected<std::unique_ptr<transfer_engine>>
transfer_engine::create(std::shared_ptr<runtime> rt, const config::settings& settings,
                        engine_options options) {
  if (!rt)
    return make_error(errc::invalid_argument, "create engine: runtime is null");
  std::unique_ptr<transfer_engine> engine{new transfer_engine(std::move(rt), settings,
                                                              std::move(options))};
  if (auto err = engine->start())
    return err;
  return engine;
}

caf::error transfer_engine::start() {
  auto& sys = runtime_->system();
  incarnation_ = new_incarnation();
  owner_ = spawn_segment_owner(sys, name_, incarnation_, registry_);
  face_ = spawn_segment_public_face(sys, owner_);
  // A failed start undoes only what it did (never another engine's directory entries) and
  // leaves the engine stopped, so the destructor has nothing to stop.
  auto fail = [&](caf::error err) {
    if (runtime_->networked() && rpc_port_ != 0)
      (void) sys.middleman().unpublish(face_, rpc_port_);
    caf::anon_send_exit(face_, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(owner_, caf::exit_reason::user_shutdown);
    stopped_ = true;
    return err;
  };
  if (runtime_->networked()) {
    // Control plane: peers reach this segment's public face (describe, notify) on the rpc port.
    auto port = sys.middleman().publish(face_, settings_.rpc_port, settings_.local_hostname.c_str(),
                                        true);
    if (!port)
      return fail(make_error(errc::transport_failure,
                             "cannot listen for peers on " + settings_.local_hostname + ":"
                               + std::to_string(settings_.rpc_port) + " (rpc port): "
                               + sys.render(port.error())));
    rpc_port_ = *port;
    if (options_.segment_name.empty())
      name_ = settings_.local_hostname + ":" + std::to_string(rpc_port_);
    caf::anon_send(owner_, attach_atom::value, name_);
  }
  if (!runtime_->directory()->add(name_, registry_))
    return fail(make_error(errc::invalid_argument,
                           "segment name '" + name_ + "' is already used in this process"));
  runtime_->add_face(name_, face_);
  if (runtime_->networked() && settings_.transport == config::protocol::tcp) {
    // Data plane: one ROUTER that serves this segment's memory to peers.
    zmq_context_ = transport::make_zmq_context(1);
    transport::tcp_server_options so;
    so.bind_host = settings_.local_hostname;
    so.advertised_host = settings_.local_hostname;
    so.port = settings_.data_port;
    so.incarnation = incarnation_;
    so.segment_name = name_;
    auto server = transport::tcp_server::start(zmq_context_, registry_, so);
    if (!server) {
      runtime_->directory()->remove(name_);
      runtime_->remove_face(name_);
      return fail(server.error());
    }
    server_ = std::move(*server);
    caf::anon_send(owner_, attach_atom::value,
                   memory::transport_endpoint{"tcp", server_->endpoint()});
  } else if (runtime_->networked()) {
    runtime_->directory()->remove(name_);
    runtime_->remove_face(name_);
    return fail(make_error(errc::not_supported,
                           std::string("protocol '") + config::to_string(settings_.transport)
                             + "': this build drives RDMA through libibverbs, but this machine "
                               "has no RDMA device; use \"protocol\": \"tcp\""));
  }
  coordinator_settings cs;
  cs.slice_size = settings_.slice_size;
  cs.endpoint_slice_size["tcp"] = settings_.tcp_slice_size;
  cs.retry_limit = settings_.retry_limit;
  coordinator_ = spawn_coordinator(sys, cs);
  auto paths = options_.data_paths;
  if (paths.empty()) {
    // Same-process segments: memcpy workers. Peers in other processes: TCP workers.
    for (uint32_t i = 0; i < settings_.worker_count; ++i)
      paths.push_back(std::make_shared<transport::local_path>(runtime_->directory(), registry_));
    if (zmq_context_)
      for (uint32_t i = 0; i < settings_.tcp_worker_count; ++i)
        paths.push_back(std::make_shared<transport::tcp_path>(zmq_context_));
  }
  for (auto& path : paths) {
    auto index = static_cast<uint32_t>(workers_.size());
    auto kind = path->caps().endpoint_kind;
    auto worker = spawn_worker(sys, index, coordinator_, path);
    workers_.push_back(worker);
    caf::anon_send(coordinator_, attach_atom::value, worker, kind);
  }
  log::debug("engine '{}' started with {} worker(s)", name_, workers_.size());
  return {};
}

transfer_engine::~transfer_engine() {
  shutdown();
}

void transfer_engine::shutdown() {
  std::unique_lock<std::shared_mutex> guard(lifecycle_mutex_);
  if (stopped_)
    return;
  stopped_ = true;
  auto& sys = runtime_->system();
  auto stopped = ask<bool>(sys, coordinator_, call_timeout, stop_atom::value);
  if (!stopped)
    log::warn("engine '{}': coordinator did not confirm stop: {}", name_,
              describe(stopped.error()));
  for (auto& w : workers_)
    caf::anon_send_exit(w, caf::exit_reason::user_shutdown);
  if (server_)
    server_->stop();
  if (runtime_->networked() && rpc_port_ != 0)
    (void) sys.middleman().unpublish(face_, rpc_port_);
  caf::anon_send_exit(face_, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(owner_, caf::exit_reason::user_shutdown);
  runtime_->directory()->remove(name_);
  runtime_->remove_face(name_);
  {
    std::unique_lock<std::shared_mutex> batches(batches_mutex_);
    for (auto& [id, board] : batches_)
      board->mark_freed();
    batches_.clear();
  }
}

caf::error transfer_engine::register_memory(void* addr, size_t length, std::string_view location) {
  std::shared_lock<std::shared_mutex> guard(lifecycle_mutex_);
  if (stopped_)
    return stopped_error();
  auto r = ask<bool>(runtime_->system(), owner_, call_timeout, register_atom::value,
                     reinterpret_cast<uint64_t>(addr), uint64_t{length}, std::string(location));
  return r ? caf::error{} : std::move(r.error());
}

caf::error transfer_engine::unregister_memory(void* addr) {
  std::shared_lock<std::shared_mutex> guard(lifecycle_mutex_);
  if (stopped_)
    return stopped_error();
  auto r = ask<bool>(runtime_->system(), owner_, call_timeout, unregister_atom::value,
                     reinterpret_cast<uint64_t>(addr));
  if (!r)
    return std::move(r.error());
  // Peers' READ replies are sent from registered memory without copying: wait until none
  // still points into it, so the caller may free the memory when this returns.
  if (server_ && !server_->wait_unreferenced(std::chrono::seconds(5)))
    return make_error(errc::busy, "unregister memory at " + hex(reinterpret_cast<uint64_t>(addr))
                                    + ": replies to peers still reference registered memory after 5 s");
  return {};
}

caf::expected<std::pair<memory::segment_descriptor, segment_public_actor>>
transfer_engine::resolve_segment(const std::string& name) {
  if (auto local = runtime_->directory()->find(name)) {
    // Hosted in this very process (same runtime): the same-process data path serves it. A peer is
    // never treated as local because its host name or address matches ours.
    memory::segment_descriptor desc;
    desc.name = name;
    desc.endpoints.push_back(memory::transport_endpoint{"local", ""});
    for (const auto& r : local->snapshot()->regions())
      desc.regions.push_back(memory::region_descriptor{r.base, r.length, to_string(r.where), 0});
    return std::make_pair(std::move(desc), runtime_->find_face(name));
  }
  if (!runtime_->networked())
    return make_error(errc::unknown_segment, "open segment '" + name
                                               + "': no segment of that name in this process, and "
                                                 "this engine does not reach other nodes");
  if (settings_.metadata.kind != config::metadata_kind::p2p_handshake)
    return make_error(errc::not_supported,
                      "open segment '" + name + "': metadata server '" + settings_.metadata.text
                        + "' (" + config::to_string(settings_.metadata.kind)
                        + ") is not supported yet; use \"metadata_server\": \"P2PHANDSHAKE\"");
  // P2PHANDSHAKE: the name is the peer's "host:rpc_port"; ask that node directly.
  auto colon = name.rfind(':');
  unsigned port = 0;
  if (colon == std::string::npos || colon == 0
      || std::sscanf(name.c_str() + colon + 1, "%u", &port) != 1 || port == 0 || port > 65535)
    return make_error(errc::invalid_argument, "open segment '" + name
                                                + "': under P2PHANDSHAKE a segment name is "
                                                  "host:port (the peer's rpc port)");
  auto& sys = runtime_->system();
  auto face = sys.middleman().remote_actor<segment_public_actor>(name.substr(0, colon),
                                                                 static_cast<uint16_t>(port));
  if (!face)
    return make_error(errc::peer_unreachable, "open segment '" + name
                                                + "': cannot reach its node: "
                                                + sys.render(face.error()));
  auto desc = ask<memory::segment_descriptor>(sys, *face, std::chrono::seconds(10),
                                              describe_atom::value);
  if (!desc)
    return make_error(errc::peer_unreachable, "open segment '" + name
                                                + "': its node did not describe it: "
                                                + describe(desc.error()));
  if (auto err = desc->validate())
    return make_error(errc::malformed_frame, "open segment '" + name + "': " + context_of(err));
  // Only data paths of other nodes: never "local", whatever the peer claims.
  std::erase_if(desc->endpoints, [](const auto& ep) { return ep.kind == "local"; });
  return std::make_pair(std::move(*desc), *face);
}

caf::expected<segment_id> transfer_engine::open_segment(const std::string& name) {
  std::shared_lock<std::shared_mutex> life(lifecycle_mutex_);
  if (stopped_)
    return stopped_error();
  if (name.empty())
    return make_error(errc::invalid_argument, "open segment: name is empty");
  auto resolved = resolve_segment(name);
  if (!resolved)
    return resolved.error();
  auto shared = std::make_shared<const memory::segment_descriptor>(std::move(resolved->first));
  segment_id id = 0;
  {
    std::unique_lock<std::shared_mutex> guard(segments_mutex_);
    bool found = false;
    for (size_t i = 0; i < segments_.size(); ++i) {
      if (segments_[i].name == name) {
        id = static_cast<segment_id>(i);
        found = true;
        break;
      }
    }
    if (!found) {
      id = static_cast<segment_id>(segments_.size());
      segments_.push_back(segment_entry{name, nullptr, nullptr, {}});
    }
    segments_[id].descriptor = shared;
    segments_[id].face = resolved->second;
    segments_[id].local = runtime_->directory()->find(name);
    // Sent under the lock so connects for one segment reach the coordinator in order.
    caf::anon_send(coordinator_, connect_atom::value, id, *shared);
  }
  return id;
}

caf::expected<memory::segment_descriptor> transfer_engine::segment_descriptor(segment_id id) const {
  std::shared_lock<std::shared_mutex> guard(segments_mutex_);
  if (id >= segments_.size())
    return make_error(errc::unknown_segment, "segment id " + std::to_string(id) + " is not open");
  return *segments_[id].descriptor;
}

caf::expected<batch_id> transfer_engine::allocate_batch(size_t capacity) {
  std::shared_lock<std::shared_mutex> life(lifecycle_mutex_);
  if (stopped_)
    return stopped_error();
  if (capacity == 0 || capacity > max_batch_capacity)
    return make_error(errc::invalid_argument,
                      "allocate batch: capacity " + std::to_string(capacity)
                        + " is out of range; expected 1 to " + std::to_string(max_batch_capacity));
  std::unique_lock<std::shared_mutex> guard(batches_mutex_);
  auto id = next_batch_++;
  batches_.emplace(id, std::make_shared<batch_board>(id, static_cast<uint32_t>(capacity)));
  return id;
}

std::shared_ptr<batch_board> transfer_engine::find_batch(batch_id batch) const {
  std::shared_lock<std::shared_mutex> guard(batches_mutex_);
  auto it = batches_.find(batch);
  return it == batches_.end() ? nullptr : it->second;
}

caf::error transfer_engine::free_batch(batch_id batch) {
  if (stopped_)
    return stopped_error();
  std::shared_ptr<batch_board> board;
  {
    std::unique_lock<std::shared_mutex> guard(batches_mutex_);
    auto it = batches_.find(batch);
    if (it == batches_.end())
      return no_such_batch("free", batch);
    board = std::move(it->second);
    batches_.erase(it);
  }
  board->mark_freed();
  std::shared_lock<std::shared_mutex> life(lifecycle_mutex_);
  if (stopped_)
    return {}; // shutdown already canceled everything
  auto r = ask<bool>(runtime_->system(), coordinator_, call_timeout, free_atom::value,
                     batch_ref{board});
  return r ? caf::error{} : std::move(r.error());
}

caf::expected<uint32_t> transfer_engine::submit(batch_id batch,
                                                std::span<const transfer_request> requests,
                                                submit_options options) {
  if (stopped_)
    return stopped_error();
  if (requests.empty())
    return make_error(errc::invalid_argument, "submit to batch " + std::to_string(batch)
                                                + ": no requests");
  auto board = find_batch(batch);
  if (!board)
    return no_such_batch("submit to", batch);
  if (requests.size() > board->capacity())
    return make_error(errc::batch_full, "submit " + std::to_string(requests.size())
                                          + " requests to batch " + std::to_string(batch)
                                          + " of capacity " + std::to_string(board->capacity()));
  submission sub;
  sub.board = board;
  sub.deadline = options.deadline.count() > 0 ? caf::timespan{options.deadline}
                                              : caf::timespan{settings_.task_deadline};
  sub.tasks.reserve(requests.size());
  auto own = registry_->snapshot();
  {
    std::shared_lock<std::shared_mutex> guard(segments_mutex_);
    // Live tables of same-process targets, taken once per call.
    std::vector<std::shared_ptr<const memory::region_table>> local_tables(segments_.size());
    for (size_t i = 0; i < requests.size(); ++i) {
      const auto& rq = requests[i];
      auto where = [&] { return "submit to batch " + std::to_string(batch) + ", request " + std::to_string(i) + ": "; };
      if (rq.op != opcode::read && rq.op != opcode::write)
        return make_error(errc::invalid_argument, where() + "opcode " + std::to_string(static_cast<int>(rq.op))
                                                    + " is neither READ (0) nor WRITE (1)");
      if (rq.length == 0)
        return make_error(errc::invalid_argument, where() + "length is 0; expected at least 1 byte");
      auto local_addr = reinterpret_cast<uint64_t>(rq.source);
      const auto* local = own->find(local_addr, rq.length);
      if (local == nullptr)
        return make_error(errc::unregistered_memory,
                          where() + "local range [" + hex(local_addr) + ", +" + std::to_string(rq.length)
                            + ") is not inside one registered region of segment '" + name_ + "'");
      if (rq.target_id >= segments_.size())
        return make_error(errc::unknown_segment,
                          where() + "segment id " + std::to_string(rq.target_id) + " is not open");
      const auto& seg = segments_[rq.target_id];
      task_spec spec;
      spec.op = rq.op;
      spec.segment = rq.target_id;
      spec.local_addr = local_addr;
      spec.local_where = local->where;
      spec.remote_addr = rq.target_offset;
      spec.length = rq.length;
      bool inside = true;
      if (seg.local) {
        auto& table = local_tables[rq.target_id];
        if (!table)
          table = seg.local->snapshot();
        inside = table->find(rq.target_offset, rq.length) != nullptr;
      } else if (const auto* region = seg.descriptor->find(rq.target_offset, rq.length)) {
        spec.remote_key = region->remote_key;
      } else {
        inside = false;
      }
      if (!inside && options_.check_remote_bounds)
        return make_error(errc::out_of_range,
                          where() + "remote range [" + hex(rq.target_offset) + ", +"
                            + std::to_string(rq.length) + ") is not inside one registered region of segment '"
                            + seg.name + "'");
      sub.tasks.push_back(spec);
    }
  }
  if (options.notify) {
    if (options.notify->size() > max_notification_bytes)
      return make_error(errc::invalid_argument, "submit with notify: message of "
                                                  + std::to_string(options.notify->size())
                                                  + " bytes exceeds the 64 KiB limit");
    std::shared_lock<std::shared_mutex> guard(segments_mutex_);
    auto target = requests.front().target_id;
    for (const auto& rq : requests)
      if (rq.target_id != target)
        return make_error(errc::invalid_argument,
                          "submit with notify: every request must name the same segment");
    if (!segments_[target].face)
      return make_error(errc::unknown_segment, "submit with notify: segment '"
                                                 + segments_[target].name
                                                 + "' accepts no notifications");
    sub.notify = notify_spec{segments_[target].face, name_, *options.notify};
  }
  std::shared_lock<std::shared_mutex> life(lifecycle_mutex_);
  if (stopped_)
    return stopped_error();
  auto first = board->reserve(static_cast<uint32_t>(requests.size()));
  if (!first)
    return first.error();
  sub.first_index = *first;
  caf::anon_send(coordinator_, submit_atom::value, std::move(sub));
  return *first;
}

caf::expected<transfer_status> transfer_engine::status(batch_id batch, uint32_t task) const {
  if (stopped_)
    return stopped_error();
  auto board = find_batch(batch);
  if (!board)
    return no_such_batch("status of", batch);
  if (task >= board->reserved())
    return make_error(errc::unknown_task, "status of batch " + std::to_string(batch) + ": task "
                                            + std::to_string(task) + " does not exist ("
                                            + std::to_string(board->reserved()) + " submitted)");
  return board->status(task);
}

caf::expected<batch_summary> transfer_engine::batch_status(batch_id batch) const {
  if (stopped_)
    return stopped_error();
  auto board = find_batch(batch);
  if (!board)
    return no_such_batch("status of", batch);
  return board->summary();
}

caf::expected<batch_summary> transfer_engine::wait(batch_id batch,
                                                   std::chrono::milliseconds timeout) {
  if (stopped_)
    return stopped_error();
  auto board = find_batch(batch);
  if (!board)
    return no_such_batch("wait for", batch);
  if (!board->wait_until(std::chrono::steady_clock::now() + timeout)) {
    auto s = board->summary();
    return make_error(errc::timeout, "wait for batch " + std::to_string(batch) + ": "
                                       + std::to_string(s.tasks - s.terminal()) + " of "
                                       + std::to_string(s.tasks) + " tasks still unresolved after "
                                       + std::to_string(timeout.count()) + " ms");
  }
  return board->summary();
}

caf::error transfer_engine::notify(segment_id target, std::string message) {
  if (message.size() > max_notification_bytes)
    return make_error(errc::invalid_argument, "notify: message of " + std::to_string(message.size())
                                                + " bytes exceeds the 64 KiB limit");
  segment_public_actor face;
  {
    std::shared_lock<std::shared_mutex> guard(segments_mutex_);
    if (target >= segments_.size())
      return make_error(errc::unknown_segment,
                        "notify: segment id " + std::to_string(target) + " is not open");
    face = segments_[target].face;
  }
  if (!face)
    return make_error(errc::unknown_segment, "notify: the segment accepts no notifications");
  caf::anon_send(face, notify_atom::value, name_, std::move(message));
  return {};
}

caf::expected<std::vector<notification>> transfer_engine::get_notifies() {
  std::shared_lock<std::shared_mutex> life(lifecycle_mutex_);
  if (stopped_)
    return stopped_error();
  return ask<std::vector<notification>>(runtime_->system(), owner_, call_timeout,
                                        drain_atom::value);
}

transport::tcp_server_counters transfer_engine::server_counters() const {
  return server_ ? server_->counters() : transport::tcp_server_counters{};
}

caf::expected<coordinator_stats> transfer_engine::stats() const {
  std::shared_lock<std::shared_mutex> life(lifecycle_mutex_);
  if (stopped_)
    return stopped_error();
  return ask<coordinator_stats>(runtime_->system(), coordinator_, call_timeout, stats_atom::value);
}

} // namespace kvferry
