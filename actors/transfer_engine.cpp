#include "actors/transfer_engine.hpp"

#include <algorithm>
#include <boost/json.hpp>
#include <cstdio>
#include <mutex>
#include <optional>
#include <set>

#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include "config/log.hpp"
#include "memory/device.hpp"
#include "transport/local/path.hpp"
#include "transport/rdma/topology.hpp"
#include "transport/tcp/path.hpp"

namespace kvferry {

namespace {

/// Upper bound for one batch's capacity (Mooncake users allocate a few hundred to a few thousand).
constexpr size_t max_batch_capacity = 1u << 20;
/// How long a blocking call waits for an actor's answer.
constexpr auto call_timeout = std::chrono::seconds(30);
/// How long the control plane waits for the segment's actors to answer a peer.
constexpr auto answer_timeout = std::chrono::seconds(10);

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

/// Sends a request from a short-lived actor and hands the answer to `done` (on an actor thread):
/// for callers that must not block (the control plane's server thread).
template <class Result, class Handle, class Done, class... Ts>
void ask_then(caf::actor_system& sys, const Handle& dest, caf::timespan timeout, Done done,
              Ts... xs) {
  // The arguments travel through spawn, not lambda captures: CAF 0.17 dereferences a null
  // argument tuple for a spawned function without arguments (UBSan reports it).
  auto body = [](caf::event_based_actor* self, Handle to, caf::timespan limit, Done answer,
                 Ts... args) {
    self->request(to, limit, std::move(args)...)
      .then([answer](Result& r) mutable { answer(caf::expected<Result>(std::move(r))); },
            [answer](caf::error& err) mutable { answer(caf::expected<Result>(std::move(err))); });
  };
  sys.spawn(body, dest, timeout, std::move(done), std::move(xs)...);
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

transport::server_limits limits_of(const config::settings& s) {
  transport::server_limits l;
  l.max_connections = s.max_connections;
  l.max_connections_per_host = s.max_connections_per_host;
  l.handshake_timeout = s.handshake_timeout;
  l.peer_max_queued_messages = s.peer_max_queued_messages;
  l.peer_max_queued_bytes = s.peer_max_queued_bytes;
  l.reply_budget = s.reply_budget;
  return l;
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

caf::error transfer_engine::start_rdma() {
  namespace rdma = transport::rdma;
  const auto& rs = settings_.rdma;
  bool emulated = rs.provider == config::rdma_provider_kind::emulated;
  if (emulated) {
    auto loaded = rdma::load_emulated_provider(rs.emulated_devices);
    if (!loaded)
      return loaded.error();
    verbs_ = std::move(*loaded);
  } else {
    verbs_ = rdma::make_verbs_provider();
  }
  auto present = verbs_->devices();
  if (!present)
    return present.error();
  auto nics = rdma::select_nics(*present, settings_.device_names);
  if (!nics)
    return make_error(errc::not_supported,
                      std::string("\"protocol\": \"rdma\"") + (emulated ? " (emulated)" : "")
                        + ": " + context_of(nics.error()));
  uint32_t ordinal = 0;
  for (const auto& nic : *nics) {
    rdma::path_options po;
    po.ordinal = ordinal++;
    po.port = rs.port;
    po.gid_index = rs.gid_index;
    po.qp_per_endpoint = rs.qp_per_endpoint;
    po.max_endpoints = rs.max_endpoints;
    po.max_wr = rs.max_wr;
    po.cq_depth = static_cast<int>(rs.cq_depth);
    po.max_mtu = rs.mtu >= 4096 ? IBV_MTU_4096
                 : rs.mtu >= 2048 ? IBV_MTU_2048
                 : rs.mtu >= 1024 ? IBV_MTU_1024
                 : rs.mtu >= 512  ? IBV_MTU_512
                                  : IBV_MTU_256;
    po.completion_timeout = rs.completion_timeout;
    po.nic_error_limit = rs.nic_error_limit;
    po.probe_first = rs.nic_probe;
    auto timeout = settings_.open_timeout;
    po.send_handshake = [this, timeout](const std::string& host, uint16_t port,
                                        std::vector<uint8_t> request, auto done) {
      auto client = control_client_;
      if (!client) {
        done(make_error(errc::shutting_down, "the engine's control client is stopped"));
        return;
      }
      client->call(host, port, rdma::handshake_method, std::move(request), timeout,
                   std::move(done));
    };
    auto path = rdma::rdma_path::open(verbs_, nic, registry_, std::move(po));
    if (!path)
      return path.error();
    rdma_paths_.push_back(std::move(*path));
  }
  return {};
}

namespace {

/// Mooncake's key for a node's rpc address, and its value.
std::string rpc_meta_key(const std::string& name) {
  return "mooncake/rpc_meta/" + name;
}

std::string rpc_meta_value(const std::string& host, uint16_t port) {
  boost::json::object o;
  o["ip_or_host_name"] = host;
  o["rpc_port"] = port;
  return boost::json::serialize(o);
}

} // namespace

caf::expected<std::pair<std::string, uint16_t>>
transfer_engine::lookup_segment(const std::string& name) {
  const auto& url = settings_.metadata.text;
  auto value = metadata_->get(rpc_meta_key(name));
  if (!value)
    return make_error(code_of(value.error()) == errc::none ? errc::peer_unreachable
                                                            : code_of(value.error()),
                      "open segment '" + name + "': metadata server " + url + ": "
                        + context_of(value.error()));
  if (!*value)
    return make_error(errc::unknown_segment,
                      "open segment '" + name + "': metadata server " + url + " has no entry "
                        + rpc_meta_key(name) + " (its node is not running, or its entry expired)");
  // {"ip_or_host_name": "10.0.0.2", "rpc_port": 12345}
  boost::system::error_code ec;
  auto parsed = boost::json::parse(**value, ec);
  const auto* obj = ec ? nullptr : parsed.if_object();
  const auto* host = obj ? obj->if_contains("ip_or_host_name") : nullptr;
  const auto* port = obj ? obj->if_contains("rpc_port") : nullptr;
  if (host == nullptr || !host->is_string() || port == nullptr || !port->is_int64()
      || port->as_int64() <= 0 || port->as_int64() > 65535 || host->as_string().empty()
      || !transport::zmtp::valid_host(std::string(host->as_string())))
    return make_error(errc::malformed_frame,
                      "open segment '" + name + "': metadata entry " + rpc_meta_key(name) + " at "
                        + url + " is '" + value->value().substr(0, 200)
                        + "'; expected {\"ip_or_host_name\": host, \"rpc_port\": 1..65535}");
  return std::pair{std::string(host->as_string()), static_cast<uint16_t>(port->as_int64())};
}

caf::error transfer_engine::start_metadata() {
  transport::metadata::http_client_options mo;
  mo.timeout = settings_.open_timeout;
  mo.max_response_bytes = 64 << 10;
  auto client = transport::metadata::http_client::create(settings_.metadata.endpoints.front(), mo);
  if (!client)
    return client.error();
  metadata_ = std::move(*client);
  // Published before the engine is usable, so a peer that finds the entry finds the node.
  if (auto err = metadata_->put(rpc_meta_key(name_), rpc_meta_value(settings_.local_hostname,
                                                                     rpc_port_),
                                settings_.metadata_ttl))
    return make_error(code_of(err) == errc::none ? errc::peer_unreachable : code_of(err),
                      "cannot publish segment '" + name_ + "' to metadata server "
                        + settings_.metadata.text + ": " + context_of(err));
  metadata_thread_ = std::thread([this] { metadata_loop(); });
  return {};
}

void transfer_engine::metadata_loop() {
  // Entries of opened segments seen gone: their tasks fail at once until the entry returns.
  std::set<std::string> gone;
  for (;;) {
    {
      std::unique_lock<std::mutex> guard(metadata_mutex_);
      if (metadata_wake_.wait_for(guard, settings_.metadata_ttl / 3,
                                  [this] { return metadata_stop_; }))
        return;
    }
    if (auto err = metadata_->put(rpc_meta_key(name_),
                                  rpc_meta_value(settings_.local_hostname, rpc_port_),
                                  settings_.metadata_ttl))
      log::warn("segment '{}': refreshing its metadata entry failed (retried in {} ms): {}",
                name_, (settings_.metadata_ttl / 3).count(), describe(err));
    std::vector<std::pair<segment_id, std::string>> remote;
    {
      std::shared_lock<std::shared_mutex> guard(segments_mutex_);
      for (size_t i = 0; i < segments_.size(); ++i)
        if (!segments_[i].host.empty())
          remote.emplace_back(static_cast<segment_id>(i), segments_[i].name);
    }
    for (const auto& [id, name] : remote) {
      auto value = metadata_->get(rpc_meta_key(name));
      if (!value)
        continue; // the service is unreachable: keep transferring to peers already opened
      if (!*value && gone.insert(name).second) {
        // The node's entry expired or was removed: it stopped or crashed. Its tasks fail now
        // instead of timing out; open_segment again once it is back.
        log::warn("segment '{}' vanished from metadata server {}: its transfers fail until it "
                  "returns",
                  name, settings_.metadata.text);
        memory::segment_descriptor none;
        none.name = name;
        std::shared_lock<std::shared_mutex> life(lifecycle_mutex_, std::try_to_lock);
        if (life.owns_lock() && !stopped_)
          caf::anon_send(coordinator_, connect_atom::value, id, none);
      } else if (*value && gone.count(name) > 0) {
        // Back (restarted under the same name): described again, transfers resume.
        std::shared_lock<std::shared_mutex> life(lifecycle_mutex_, std::try_to_lock);
        if (!life.owns_lock() || stopped_)
          continue;
        auto resolved = resolve_segment(name);
        if (!resolved)
          continue;
        gone.erase(name);
        log::info("segment '{}' is back in metadata server {}", name, settings_.metadata.text);
        std::unique_lock<std::shared_mutex> guard(segments_mutex_);
        segments_[id] = std::move(*resolved);
        caf::anon_send(coordinator_, connect_atom::value, id, *segments_[id].descriptor);
      }
    }
  }
}

void transfer_engine::stop_metadata() {
  if (!metadata_thread_.joinable())
    return;
  {
    std::lock_guard<std::mutex> guard(metadata_mutex_);
    metadata_stop_ = true;
  }
  metadata_wake_.notify_all();
  metadata_thread_.join();
  // A clean stop removes the entry at once (a crash leaves it to expire).
  if (auto gone = metadata_->remove(rpc_meta_key(name_)); !gone)
    log::warn("segment '{}': removing its metadata entry failed: {}", name_,
              describe(gone.error()));
}

std::map<std::string, std::vector<uint32_t>>
transfer_engine::nic_preferences(uint32_t first_rdma_worker) const {
  namespace rdma = transport::rdma;
  auto matrix = settings_.rdma.nic_priority_matrix;
  std::vector<std::string> open;
  for (const auto& nic : rdma_paths_)
    open.push_back(nic->nic());
  const char* source = "nic_priority_matrix";
  if (matrix.empty()) {
    // Discovered from sysfs: NICs on a location's NUMA node (or PCIe switch, for GPUs) first.
    std::vector<rdma::device_info> devices;
    if (auto present = verbs_->devices())
      for (const auto& d : *present)
        if (std::find(open.begin(), open.end(), d.name) != open.end())
          devices.push_back(d);
    matrix = rdma::discover_matrix("/sys", rdma::with_sysfs_facts(devices, "/sys"));
    source = "discovered from sysfs";
  }
  std::map<std::string, std::vector<uint32_t>> out;
  for (const auto& [location, row] : matrix) {
    std::vector<uint32_t> workers;
    std::string names;
    for (const auto* list : {&row.preferred, &row.fallback}) {
      for (const auto& nic : *list) {
        auto it = std::find(open.begin(), open.end(), nic);
        if (it == open.end())
          continue;
        workers.push_back(first_rdma_worker + static_cast<uint32_t>(it - open.begin()));
        names += (names.empty() ? "" : ", ") + nic;
      }
      if (!workers.empty())
        break;
    }
    if (workers.empty())
      continue;
    log::info("RDMA NIC priority ({}): memory at {} goes through {}", source, location, names);
    out[location] = std::move(workers);
  }
  return out;
}

caf::error transfer_engine::start_network(caf::actor_system& sys) {
  if (settings_.transport == config::protocol::rdma)
    if (auto err = start_rdma())
      return err;
  // Control plane: peers ask this segment's public face (describe, notify) on the rpc port,
  // through kvferry's own bounded ZMTP server (docs/ARCHITECTURE.md, "Network surface").
  transport::control::server_options co;
  co.bind_host = settings_.local_hostname;
  co.port = settings_.rpc_port;
  co.segment_name = name_;
  co.limits = limits_of(settings_);
  co.reply_budget = std::min<uint64_t>(settings_.reply_budget, 32ULL << 20);
  transport::control::handlers answer;
  auto face = face_;
  answer.describe = [&sys, face](auto done) {
    ask_then<memory::segment_descriptor>(sys, face, answer_timeout, std::move(done),
                                         describe_atom::value);
  };
  answer.notify = [&sys, face](std::string from, std::string text, auto done) {
    ask_then<bool>(sys, face, answer_timeout,
                   [done = std::move(done)](caf::expected<bool> r) {
                     done(r ? caf::error{} : std::move(r.error()));
                   },
                   notify_atom::value, std::move(from), std::move(text));
  };
  // RDMA handshakes from peers' NICs, to the NIC they name.
  answer.call = [nics = rdma_paths_](uint16_t method, std::vector<uint8_t> payload, auto done) {
    if (method != transport::rdma::handshake_method) {
      done(make_error(errc::not_supported,
                      "this node answers no call of method " + std::to_string(method)));
      return;
    }
    auto req = transport::rdma::decode_request(payload);
    if (!req) {
      log::warn("refused an RDMA handshake: {}", describe(req.error()));
      done(req.error());
      return;
    }
    for (const auto& nic : nics)
      if (nic->nic() == req->target_nic) {
        auto reply = nic->accept(*req);
        done(reply ? caf::expected<std::vector<uint8_t>>(transport::rdma::encode(*reply))
                   : caf::expected<std::vector<uint8_t>>(reply.error()));
        return;
      }
    done(make_error(nics.empty() ? errc::not_supported : errc::invalid_argument,
                    nics.empty() ? std::string("this node does not use RDMA")
                                 : "this node has no RDMA NIC '" + req->target_nic + "'"));
  };
  auto control = transport::control::server::start(co, std::move(answer));
  if (!control)
    return make_error(errc::transport_failure,
                      "cannot listen for peers on " + settings_.local_hostname + ":"
                        + std::to_string(settings_.rpc_port) + " (rpc port): "
                        + context_of(control.error()));
  control_server_ = std::move(*control);
  rpc_port_ = control_server_->port();
  if (options_.segment_name.empty())
    name_ = settings_.local_hostname + ":" + std::to_string(rpc_port_);
  caf::anon_send(owner_, attach_atom::value, name_);
  auto client = transport::control::client::start("segment '" + name_ + "'");
  if (!client)
    return client.error();
  control_client_ = std::move(*client);
  for (const auto& nic : rdma_paths_) {
    nic->set_identity(name_, incarnation_);
    caf::anon_send(owner_, attach_atom::value,
                   memory::transport_endpoint{"rdma", settings_.local_hostname + ":"
                                                        + std::to_string(rpc_port_) + "/"
                                                        + nic->nic()});
  }
  // Data plane: kvferry's ZMTP server serves this segment's memory to peers.
  auto context = transport::make_zmq_context(1);
  if (!context)
    return context.error();
  zmq_context_ = std::move(*context);
  transport::tcp_server_options so;
  so.bind_host = settings_.local_hostname;
  so.advertised_host = settings_.local_hostname;
  so.port = settings_.data_port;
  so.incarnation = incarnation_;
  so.segment_name = name_;
  so.limits = limits_of(settings_);
  auto server = transport::tcp_server::start(registry_, so);
  if (!server)
    return server.error();
  server_ = std::move(*server);
  caf::anon_send(owner_, attach_atom::value,
                 memory::transport_endpoint{"tcp", server_->endpoint()});
  if (settings_.metadata.kind == config::metadata_kind::http)
    if (auto err = start_metadata())
      return err;
  return {};
}

caf::error transfer_engine::start() {
  auto& sys = runtime_->system();
  incarnation_ = new_incarnation();
  inbox_limits inbox{settings_.notify_inbox_messages, settings_.notify_inbox_bytes};
  owner_ = spawn_segment_owner(sys, name_, incarnation_, registry_, inbox);
  face_ = spawn_segment_public_face(sys, owner_);
  bool listed = false;
  // A failed start undoes only what it did (never another engine's directory entries) and
  // leaves the engine stopped, so the destructor has nothing to stop.
  auto fail = [&](caf::error err) {
    stop_metadata();
    for (auto& nic : rdma_paths_)
      nic->stop();
    rdma_paths_.clear();
    if (server_)
      server_->stop();
    if (control_server_)
      control_server_->stop();
    if (control_client_)
      control_client_->stop();
    if (listed) {
      runtime_->directory()->remove(name_);
      runtime_->remove_face(name_);
    }
    caf::anon_send_exit(face_, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(owner_, caf::exit_reason::user_shutdown);
    stopped_ = true;
    return err;
  };
  if (runtime_->networked())
    if (auto err = start_network(sys))
      return fail(std::move(err));
  if (!runtime_->directory()->add(name_, registry_))
    return fail(make_error(errc::invalid_argument,
                           "segment name '" + name_ + "' is already used in this process"));
  listed = true;
  runtime_->add_face(name_, face_);
  gates_ = std::make_shared<transport::slice_gates>();
  coordinator_settings cs;
  cs.slice_size = settings_.slice_size;
  cs.endpoint_slice_size["tcp"] = settings_.tcp_slice_size;
  cs.endpoint_preference = {"local", "rdma", "tcp"};
  if (options_.data_paths.empty() && !rdma_paths_.empty())
    cs.location_workers = nic_preferences(settings_.worker_count);
  cs.retry_limit = settings_.retry_limit;
  cs.retry_backoff = settings_.retry_backoff;
  cs.retry_backoff_max = settings_.retry_backoff_max;
  cs.withdraw_timeout = settings_.withdraw_timeout;
  cs.gates = gates_;
  cs.seed = incarnation_;
  coordinator_ = spawn_coordinator(sys, cs);
  paths_ = options_.data_paths;
  if (paths_.empty()) {
    // Same-process segments: memcpy workers. Peers in other processes: TCP workers.
    for (uint32_t i = 0; i < settings_.worker_count; ++i)
      paths_.push_back(std::make_shared<transport::local_path>(runtime_->directory(), registry_));
    // One worker per RDMA NIC; TCP workers stay for peers (or regions) without RDMA.
    for (auto& nic : rdma_paths_)
      paths_.push_back(nic);
    if (zmq_context_)
      for (uint32_t i = 0; i < settings_.tcp_worker_count; ++i)
        paths_.push_back(std::make_shared<transport::tcp_path>(zmq_context_, registry_));
  }
  for (auto& path : paths_) {
    auto index = static_cast<uint32_t>(workers_.size());
    auto kind = path->caps().endpoint_kind;
    auto worker = spawn_worker(sys, index, coordinator_, path, gates_);
    workers_.push_back(worker);
    caf::anon_send(coordinator_, attach_atom::value, worker, kind);
  }
  for (const auto& line : config::unused_fields(settings_, options_.store_client))
    log::warn("{}", line);
  log::debug("engine '{}' started with {} worker(s)", name_, workers_.size());
  return {};
}

std::vector<std::pair<std::string, transport::rdma::path_counters>>
transfer_engine::rdma_counters() const {
  std::vector<std::pair<std::string, transport::rdma::path_counters>> out;
  for (const auto& nic : rdma_paths_)
    out.emplace_back(nic->nic(), nic->counters());
  return out;
}

size_t transfer_engine::rdma_live_qps() const {
  size_t n = 0;
  for (const auto& nic : rdma_paths_)
    n += nic->live_qps();
  return n;
}

transfer_engine::~transfer_engine() {
  shutdown();
}

void transfer_engine::shutdown() {
  std::unique_lock<std::shared_mutex> guard(lifecycle_mutex_);
  if (stopped_)
    return;
  stopped_ = true;
  stop_metadata();
  auto& sys = runtime_->system();
  // Tasks end CANCELED and their withdrawals settle (bounded by withdraw_timeout); then the data
  // paths stop, here and now, so nothing of the caller's memory is used after shutdown returns.
  auto stopped = ask<bool>(sys, coordinator_, settings_.withdraw_timeout + call_timeout,
                           stop_atom::value);
  if (!stopped)
    log::warn("engine '{}': coordinator did not confirm stop: {}", name_,
              describe(stopped.error()));
  for (auto& w : workers_)
    caf::anon_send_exit(w, caf::exit_reason::user_shutdown);
  for (auto& path : paths_)
    path->stop();
  if (server_)
    server_->stop();
  if (control_server_)
    control_server_->stop();
  // The segment is gone: in-process peers that still hold its registry find it closed.
  runtime_->directory()->remove(name_);
  runtime_->remove_face(name_);
  if (auto busy = registry_->close(settings_.withdraw_timeout); busy > 0)
    log::error("engine '{}': {} region(s) still in use at shutdown", name_, busy);
  if (control_client_)
    control_client_->stop();
  caf::anon_send_exit(face_, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(owner_, caf::exit_reason::user_shutdown);
  {
    std::unique_lock<std::shared_mutex> batches(batches_mutex_);
    for (auto& [id, board] : batches_)
      board->mark_freed();
    batches_.clear();
  }
}

caf::error transfer_engine::register_memory(void* addr, size_t length, std::string_view location,
                                            bool fenced) {
  std::shared_lock<std::shared_mutex> guard(lifecycle_mutex_);
  if (stopped_)
    return stopped_error();
  auto loc = memory::parse_location(location);
  if (!loc)
    return loc.error();
  if (auto err = memory::check_location_usable(*loc))
    return err;
  // Registered with every RDMA NIC (their keys go into the descriptor), except fenced regions
  // (a one-sided access cannot check a fence token: they are served over TCP) and device memory
  // unless every NIC has GPUDirect RDMA (else peers reach it over TCP, and this node's own
  // slices of it are staged through host memory by the RDMA path).
  auto base = reinterpret_cast<uint64_t>(addr);
  std::vector<uint32_t> keys;
  auto undo = [&] {
    for (size_t i = 0; i < keys.size(); ++i)
      rdma_paths_[i]->deregister_region(base);
  };
  bool direct = std::all_of(rdma_paths_.begin(), rdma_paths_.end(),
                            [](const auto& nic) { return nic->gpudirect(); });
  if (!fenced && (!loc->is_device() || direct) && base != 0 && length != 0)
    for (auto& nic : rdma_paths_) {
      auto key = nic->register_region(base, length);
      if (!key) {
        undo();
        return key.error();
      }
      keys.push_back(*key);
    }
  auto added = registry_->add(base, uint64_t{length}, *loc, fenced, keys);
  if (!added)
    undo();
  return added ? caf::error{} : std::move(added.error());
}

caf::error transfer_engine::fence(void* region_base, uint64_t addr, uint64_t length,
                                  uint64_t floor) {
  std::shared_lock<std::shared_mutex> guard(lifecycle_mutex_);
  if (stopped_)
    return stopped_error();
  return registry_->fence(reinterpret_cast<uint64_t>(region_base), addr, length, floor,
                          settings_.withdraw_timeout);
}

caf::error transfer_engine::unregister_memory(void* addr) {
  std::shared_lock<std::shared_mutex> guard(lifecycle_mutex_);
  if (stopped_)
    return stopped_error();
  auto removed = registry_->remove(reinterpret_cast<uint64_t>(addr), settings_.withdraw_timeout);
  if (removed)
    for (auto& nic : rdma_paths_)
      nic->deregister_region(reinterpret_cast<uint64_t>(addr));
  return removed ? caf::error{} : std::move(removed.error());
}

caf::expected<transfer_engine::segment_entry>
transfer_engine::resolve_segment(const std::string& name) {
  segment_entry entry;
  entry.name = name;
  if (auto local = runtime_->directory()->find(name)) {
    // Hosted in this very process (same runtime): the same-process data path serves it. A peer is
    // never treated as local because its host name or address matches ours.
    auto desc = std::make_shared<memory::segment_descriptor>();
    desc->name = name;
    desc->endpoints.push_back(memory::transport_endpoint{"local", ""});
    for (const auto& r : local->snapshot()->regions())
      desc->regions.push_back(memory::region_descriptor{r.base, r.length, to_string(r.where), 0});
    entry.descriptor = std::move(desc);
    entry.local = local;
    entry.face = runtime_->find_face(name);
    return entry;
  }
  if (!runtime_->networked())
    return make_error(errc::unknown_segment, "open segment '" + name
                                               + "': no segment of that name in this process, and "
                                                 "this engine does not reach other nodes");
  if (settings_.metadata.kind == config::metadata_kind::http && metadata_) {
    // The node's entry names its rpc address; the node itself then describes the segment.
    auto where = lookup_segment(name);
    if (!where)
      return where.error();
    entry.host = where->first;
    entry.port = where->second;
  } else if (settings_.metadata.kind != config::metadata_kind::p2p_handshake) {
    return make_error(errc::not_supported,
                      "open segment '" + name + "': metadata server '" + settings_.metadata.text
                        + "' (" + config::to_string(settings_.metadata.kind)
                        + ") is not supported yet; use \"P2PHANDSHAKE\" or http://host:port/path");
  } else {
    // P2PHANDSHAKE: the name is the peer's "host:rpc_port"; ask that node directly.
    auto colon = name.rfind(':');
    unsigned port = 0;
    if (colon == std::string::npos || colon == 0
        || std::sscanf(name.c_str() + colon + 1, "%u", &port) != 1 || port == 0 || port > 65535
        || !transport::zmtp::valid_host(name.substr(0, colon)))
      return make_error(errc::invalid_argument, "open segment '" + name.substr(0, 300)
                                                  + "': under P2PHANDSHAKE a segment name is "
                                                    "host:port (the peer's rpc port)");
    entry.host = name.substr(0, colon);
    entry.port = static_cast<uint16_t>(port);
  }
  auto desc = control_client_->describe(entry.host, entry.port, settings_.open_timeout);
  if (!desc)
    return make_error(code_of(desc.error()) == errc::timeout ? errc::timeout
                                                              : errc::peer_unreachable,
                      "open segment '" + name + "': its node did not describe it: "
                        + context_of(desc.error()));
  if (auto err = desc->validate())
    return make_error(errc::malformed_frame, "open segment '" + name + "': " + context_of(err));
  // Only data paths of other nodes: never "local", whatever the peer claims.
  std::erase_if(desc->endpoints, [](const auto& ep) { return ep.kind == "local"; });
  if (desc->endpoint("rdma") != nullptr && rdma_paths_.empty())
    std::erase_if(desc->endpoints, [](const auto& ep) { return ep.kind == "rdma"; });
  if (desc->endpoint("tcp") != nullptr)
    if (auto err = transport::tcp_path::check_endpoint(*desc))
      return make_error(errc::malformed_frame, "open segment '" + name + "': " + context_of(err));
  entry.descriptor = std::make_shared<const memory::segment_descriptor>(std::move(*desc));
  return entry;
}

std::function<void(std::string, std::string)>
transfer_engine::notifier(const segment_entry& entry) const {
  if (entry.face) {
    auto face = entry.face;
    return [face](std::string from, std::string message) {
      caf::anon_send(face, notify_atom::value, std::move(from), std::move(message));
    };
  }
  std::weak_ptr<transport::control::client> weak = control_client_;
  auto host = entry.host;
  auto port = entry.port;
  auto timeout = settings_.open_timeout;
  auto target = entry.name;
  return [weak, host, port, timeout, target](std::string from, std::string message) {
    if (auto client = weak.lock())
      client->notify(host, port, std::move(from), std::move(message), timeout,
                     [target](caf::error err) {
                       if (err)
                         log::warn("notification to segment '{}' after its batch was not "
                                   "delivered: {}",
                                   target, describe(err));
                     });
  };
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
      segments_.push_back(segment_entry{});
    }
    segments_[id] = std::move(*resolved);
    // Sent under the lock so connects for one segment reach the coordinator in order.
    caf::anon_send(coordinator_, connect_atom::value, id, *segments_[id].descriptor);
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
  auto r = ask<std::vector<std::string>>(runtime_->system(), coordinator_,
                                         settings_.withdraw_timeout + call_timeout,
                                         free_atom::value, batch_ref{board});
  if (!r)
    return std::move(r.error());
  if (r->empty())
    return {};
  std::string names;
  for (const auto& n : *r)
    names += (names.empty() ? "'" : ", '") + n + "'";
  return make_error(errc::unconfirmed,
                    "free batch " + std::to_string(batch) + ": the batch is freed locally, but "
                      + names + " did not confirm within "
                      + std::to_string(settings_.withdraw_timeout.count())
                      + " ms that no more bytes of its WRITEs will arrive there");
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
    std::vector<char> local_gone(segments_.size(), 0);
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
      spec.fence_token = rq.fence_token;
      bool inside = true;
      if (!seg.local.expired() || seg.face) {
        auto& table = local_tables[rq.target_id];
        if (!table && !local_gone[rq.target_id]) {
          auto registry = seg.local.lock();
          if (registry && !registry->closed())
            table = registry->snapshot();
          else
            local_gone[rq.target_id] = 1;
        }
        if (local_gone[rq.target_id])
          return make_error(errc::peer_unreachable,
                            where() + "segment '" + seg.name
                              + "' was shut down (its engine in this process stopped)");
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
    sub.notify = notify_spec{notifier(segments_[target]), name_, *options.notify};
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
  std::shared_lock<std::shared_mutex> life(lifecycle_mutex_);
  if (stopped_)
    return stopped_error();
  segment_entry entry;
  {
    std::shared_lock<std::shared_mutex> guard(segments_mutex_);
    if (target >= segments_.size())
      return make_error(errc::unknown_segment,
                        "notify: segment id " + std::to_string(target) + " is not open");
    entry = segments_[target];
  }
  if (entry.face) {
    auto r = ask<bool>(runtime_->system(), entry.face, settings_.open_timeout, notify_atom::value,
                       name_, std::move(message));
    if (!r)
      return make_error(code_of(r.error()) == errc::none ? errc::peer_unreachable
                                                         : code_of(r.error()),
                        "notify segment '" + entry.name + "': " + describe(r.error()));
    return {};
  }
  if (!control_client_)
    return make_error(errc::unknown_segment, "notify: segment '" + entry.name
                                               + "' is not reachable from this engine");
  if (auto err = control_client_->notify(entry.host, entry.port, name_, std::move(message),
                                         settings_.open_timeout))
    return make_error(code_of(err) == errc::none ? errc::peer_unreachable : code_of(err),
                      "notify segment '" + entry.name + "': " + context_of(err));
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

caf::expected<std::pair<uint64_t, uint64_t>> transfer_engine::notification_counters() const {
  std::shared_lock<std::shared_mutex> life(lifecycle_mutex_);
  if (stopped_)
    return stopped_error();
  std::optional<caf::expected<std::pair<uint64_t, uint64_t>>> out;
  caf::scoped_actor self{runtime_->system()};
  self->request(owner_, call_timeout, stats_atom::value)
    .receive([&](uint64_t queued, uint64_t refused) { out = std::make_pair(queued, refused); },
             [&](caf::error& err) { out = std::move(err); });
  return std::move(*out);
}

uint64_t transfer_engine::network_memory_bound() const noexcept {
  if (!control_server_)
    return 0;
  transport::control::server_options co;
  co.limits = limits_of(settings_);
  co.reply_budget = std::min<uint64_t>(settings_.reply_budget, 32ULL << 20);
  // Each queued notification also costs its two strings' and its queue slot's bookkeeping.
  const uint64_t inbox = settings_.notify_inbox_bytes + settings_.notify_inbox_messages * 128ULL;
  return transport::control::memory_bound(co)
         + (server_ ? transport::memory_bound(limits_of(settings_)) : 0) + inbox;
}

transport::control::server_counters transfer_engine::control_counters() const {
  return control_server_ ? control_server_->counters() : transport::control::server_counters{};
}

caf::expected<coordinator_stats> transfer_engine::stats() const {
  std::shared_lock<std::shared_mutex> life(lifecycle_mutex_);
  if (stopped_)
    return stopped_error();
  return ask<coordinator_stats>(runtime_->system(), coordinator_, call_timeout, stats_atom::value);
}

} // namespace kvferry
