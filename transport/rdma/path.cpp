#include "transport/rdma/path.hpp"

#include <algorithm>
#include <filesystem>
#include <random>
#include <set>

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "config/error.hpp"
#include "config/log.hpp"
#include "memory/device.hpp"

namespace kvferry::transport::rdma {

namespace {

constexpr int access_flags =
  IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE;

/// "host:port/nic" -> parts; false when malformed.
bool parse_rdma_address(const std::string& address, std::string& host, uint16_t& port,
                        std::string& nic) {
  auto slash = address.find('/');
  if (slash == std::string::npos)
    return false;
  nic = address.substr(slash + 1);
  auto hp = address.substr(0, slash);
  auto colon = hp.rfind(':');
  if (colon == std::string::npos || colon == 0 || nic.empty() || nic.size() > max_nic_name)
    return false;
  host = hp.substr(0, colon);
  unsigned long p = 0;
  try {
    size_t used = 0;
    p = std::stoul(hp.substr(colon + 1), &used);
    if (used != hp.size() - colon - 1)
      return false;
  } catch (...) {
    return false;
  }
  if (p == 0 || p > 65535)
    return false;
  port = static_cast<uint16_t>(p);
  return true;
}

} // namespace

/// GPUDirect RDMA needs the NVIDIA peer memory module (nvidia_peermem, formerly nv_peer_mem).
bool peer_memory_loaded() {
  std::error_code ec;
  return std::filesystem::exists("/sys/kernel/mm/memory_peers/nv_mem/version", ec)
         || std::filesystem::exists("/sys/module/nvidia_peermem", ec)
         || std::filesystem::exists("/sys/module/nv_peer_mem", ec);
}

struct rdma_path::endpoint {
  enum class phase : uint8_t { handshaking, ready, retired };
  struct pending {
    slice_op op;
    uint32_t rkey = 0;
    uint32_t lkey = 0;
    /// Staged GPU memory: the chunk (-1: none) and the slice's own local address.
    int chunk = -1;
    uint64_t device_addr = 0;
  };
  std::string key;
  uint64_t generation = 0;
  std::string host;
  uint16_t port = 0;
  std::string remote_nic;
  phase state = phase::handshaking;
  std::vector<std::unique_ptr<queue_pair>> qps;
  std::vector<uint32_t> psns;
  std::vector<uint32_t> outstanding;
  size_t total_outstanding = 0;
  uint32_t next_qp = 0;
  std::deque<pending> waiting;
  clock::time_point retired_at{};
};

struct rdma_path::peer_entry {
  std::string segment;
  uint64_t incarnation = 0;
  std::string host;
  uint16_t port = 0;
  std::string nic;
  std::string key;
  /// The peer's regions with this NIC pair's key in remote_key; has_key false when it has none.
  std::vector<memory::region_descriptor> regions;
  std::vector<bool> has_key;
};

struct rdma_path::inflight {
  slice_op op;
  std::shared_ptr<endpoint> ep;
  uint32_t qp = 0;
  int chunk = -1;
  uint64_t device_addr = 0;
  clock::time_point due{};
  bool withdrawn = false;
};

struct rdma_path::withdrawal {
  std::set<uint64_t> wrs;
  clock::time_point deadline{};
  bool forced = false;
  std::set<std::string> write_segments;
  std::function<void(unsettled_segments)> done;
};

rdma_path::rdma_path(std::shared_ptr<provider> verbs, std::string nic,
                     std::shared_ptr<memory::region_registry> registry, path_options options)
  : verbs_(std::move(verbs)), nic_(std::move(nic)), registry_(std::move(registry)),
    options_(std::move(options)) {
  emulated_ = verbs_->emulated();
  caps_.name = "rdma";
  caps_.one_sided = true;
  caps_.needs_remote_key = true;
  caps_.device_memory = true; // directly (GPUDirect) or staged through host memory
  caps_.endpoint_kind = "rdma";
}

caf::expected<std::shared_ptr<rdma_path>>
rdma_path::open(std::shared_ptr<provider> verbs, const std::string& nic,
                std::shared_ptr<memory::region_registry> registry, path_options options) {
  if (!verbs)
    return make_error(errc::invalid_argument, "RDMA path: no verbs provider");
  std::shared_ptr<rdma_path> p(new rdma_path(std::move(verbs), nic, std::move(registry),
                                             std::move(options)));
  if (auto err = p->start())
    return err;
  return p;
}

caf::error rdma_path::start() {
  auto what = [this](const caf::error& err) {
    return make_error(code_of(err) == errc::none ? errc::transport_failure : code_of(err),
                      "RDMA NIC '" + nic_ + "'" + (emulated_ ? " (emulated)" : "") + ": "
                        + context_of(err));
  };
  auto ctx = verbs_->open(nic_);
  if (!ctx)
    return what(ctx.error());
  context_ = std::move(*ctx);
  auto port = context_->query_port(options_.port);
  if (!port)
    return what(port.error());
  if (port->state != IBV_PORT_ACTIVE)
    log::warn("RDMA NIC '{}' port {} is not active yet; handshakes wait for it", nic_,
              options_.port);
  lid_ = port->lid;
  auto gid = context_->query_gid(options_.port, options_.gid_index);
  if (!gid)
    return what(gid.error());
  gid_ = *gid;
  auto pd = context_->alloc_pd();
  if (!pd)
    return what(pd.error());
  pd_ = std::move(*pd);
  auto cq = context_->create_cq(options_.cq_depth);
  if (!cq)
    return what(cq.error());
  cq_ = std::move(*cq);
  if (auto err = cq_->arm())
    return what(err);
  doorbell_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (doorbell_ < 0)
    return make_error(errc::transport_failure, "RDMA NIC '" + nic_ + "': eventfd failed");
  gpudirect_ = !emulated_ && memory::cuda_device_count() > 0 && peer_memory_loaded();
  if (memory::cuda_device_count() > 0)
    log::info("RDMA NIC '{}': {}", nic_,
              gpudirect_ ? "GPUDirect RDMA available (NVIDIA peer memory): GPU memory is "
                           "registered with the NIC"
                         : "no GPUDirect RDMA (no NVIDIA peer memory module, or an emulated NIC): "
                           "GPU memory is staged through host memory");
  thread_ = std::thread([this] { run(); });
  log::info("RDMA NIC '{}' opened through {}{} (port {}, LID {}, GID index {})", nic_,
            verbs_->name(), emulated_ ? " (emulated NIC, no RDMA hardware)" : "", options_.port,
            lid_, options_.gid_index);
  return {};
}

rdma_path::~rdma_path() {
  stop();
  // Verbs order: queue pairs, memory regions, then CQ, PD and context (members, reversed).
  {
    std::lock_guard<std::mutex> guard(mutex_);
    endpoints_.clear();
    retired_.clear();
    passive_.clear();
    inflight_.clear();
  }
  {
    std::lock_guard<std::mutex> guard(mr_mutex_);
    mrs_.clear();
  }
  staging_mr_.reset();
  cq_.reset();
  pd_.reset();
  context_.reset();
  if (doorbell_ >= 0)
    ::close(doorbell_);
}

void rdma_path::set_gates(std::shared_ptr<slice_gates> gates) {
  std::lock_guard<std::mutex> guard(mutex_);
  gates_ = std::move(gates);
}

caf::expected<int> rdma_path::take_chunk() {
  if (!staging_mem_) {
    staging_mem_.reset(new (std::nothrow) uint8_t[staging_chunk * staging_chunks]);
    if (!staging_mem_)
      return make_error(errc::transport_failure, "RDMA NIC '" + nic_
                                                   + "': cannot allocate the GPU staging buffer");
    auto mr = pd_->reg_mr(staging_mem_.get(), staging_chunk * staging_chunks, access_flags);
    if (!mr) {
      staging_mem_.reset();
      return make_error(errc::transport_failure, "RDMA NIC '" + nic_
                                                   + "': cannot register the GPU staging buffer: "
                                                   + context_of(mr.error()));
    }
    staging_mr_ = std::move(*mr);
    for (int c = staging_chunks - 1; c >= 0; --c)
      free_chunks_.push_back(c);
  }
  if (!staging_said_) {
    staging_said_ = true;
    log::info("RDMA NIC '{}': GPU memory goes through a host staging buffer (no GPUDirect)", nic_);
  }
  if (free_chunks_.empty())
    return -1;
  auto c = free_chunks_.back();
  free_chunks_.pop_back();
  return c;
}

void rdma_path::release_chunk(int chunk) {
  if (chunk >= 0)
    free_chunks_.push_back(chunk);
}

void rdma_path::set_sink(completion_sink sink) {
  std::lock_guard<std::mutex> guard(mutex_);
  sink_ = std::move(sink);
}

void rdma_path::set_identity(std::string name, uint64_t incarnation) {
  std::lock_guard<std::mutex> guard(mutex_);
  options_.self_name = std::move(name);
  options_.incarnation = incarnation;
}

void rdma_path::deliver(std::vector<slice_completion>&& out) {
  if (out.empty())
    return;
  completion_sink sink;
  {
    std::lock_guard<std::mutex> guard(mutex_);
    sink = sink_;
  }
  if (sink)
    sink(std::move(out));
}

void rdma_path::wake() {
  uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(doorbell_, &one, sizeof(one));
}

ibv_mtu rdma_path::local_mtu() const {
  auto port = context_->query_port(options_.port);
  auto mtu = port ? port->active_mtu : IBV_MTU_1024;
  return std::min(mtu, options_.max_mtu);
}

caf::expected<uint32_t> rdma_path::register_region(uint64_t base, uint64_t length) {
  std::lock_guard<std::mutex> guard(mr_mutex_);
  if (!pd_)
    return make_error(errc::shutting_down, "RDMA NIC '" + nic_ + "' is closed");
  auto mr = pd_->reg_mr(reinterpret_cast<void*>(base), length, access_flags);
  if (!mr)
    return make_error(errc::transport_failure, "register " + std::to_string(length)
                                                 + " bytes at " + hex(base) + " with RDMA NIC '"
                                                 + nic_ + "': " + context_of(mr.error()));
  auto rkey = (*mr)->rkey();
  mrs_[base] = {length, std::move(*mr)};
  return rkey;
}

void rdma_path::deregister_region(uint64_t base) {
  std::lock_guard<std::mutex> guard(mr_mutex_);
  mrs_.erase(base);
}

caf::expected<uint32_t> rdma_path::local_key(uint64_t addr, uint64_t len) const {
  std::lock_guard<std::mutex> guard(mr_mutex_);
  auto it = mrs_.upper_bound(addr);
  if (it != mrs_.begin()) {
    --it;
    if (memory::range_contains(it->first, it->second.first, addr, len))
      return it->second.second->lkey();
  }
  return make_error(errc::unregistered_memory,
                    "local memory " + hex(addr) + " (+" + std::to_string(len)
                      + ") is not registered with RDMA NIC '" + nic_ + "'");
}

caf::expected<uint32_t> rdma_path::connect(const memory::segment_descriptor& desc) {
  std::vector<const memory::transport_endpoint*> nics;
  for (const auto& ep : desc.endpoints)
    if (ep.kind == "rdma")
      nics.push_back(&ep);
  if (nics.empty())
    return make_error(errc::not_supported,
                      "segment '" + desc.name + "' has no RDMA endpoint (its node runs TCP only)");
  auto j = options_.ordinal % nics.size();
  auto entry = std::make_unique<peer_entry>();
  entry->segment = desc.name;
  entry->incarnation = desc.incarnation;
  if (!parse_rdma_address(nics[j]->address, entry->host, entry->port, entry->nic))
    return make_error(errc::malformed_frame, "segment '" + desc.name + "': RDMA endpoint '"
                                               + nics[j]->address.substr(0, 200)
                                               + "' is not host:port/nic");
  entry->key = entry->host + ":" + std::to_string(entry->port) + "/" + entry->nic;
  for (const auto& r : desc.regions) {
    auto copy = r;
    bool keyed = r.rdma_keys.size() == nics.size();
    copy.remote_key = keyed ? r.rdma_keys[j] : 0;
    copy.rdma_keys.clear();
    entry->regions.push_back(std::move(copy));
    entry->has_key.push_back(keyed);
  }
  std::vector<slice_completion> out;
  uint32_t index = 0;
  {
    std::lock_guard<std::mutex> guard(mutex_);
    auto it = peer_index_.find(desc.name);
    if (it != peer_index_.end()) {
      index = it->second;
      auto& old = *peers_[index];
      // A restarted peer (new incarnation) cannot use the old queue pairs.
      if (old.incarnation != entry->incarnation || old.key != entry->key) {
        auto ep = endpoints_.find(old.key);
        if (ep != endpoints_.end()) {
          auto victim = ep->second; // retire() erases the map's entry
          retire(victim, out, "segment '" + desc.name + "' restarted");
        }
      }
      peers_[index] = std::move(entry);
    } else {
      index = static_cast<uint32_t>(peers_.size());
      peer_index_[desc.name] = index;
      peers_.push_back(std::move(entry));
    }
  }
  deliver(std::move(out));
  return index;
}

std::shared_ptr<rdma_path::endpoint>
rdma_path::endpoint_for(peer_entry& peer, std::vector<std::function<void()>>& later) {
  auto it = endpoints_.find(peer.key);
  if (it != endpoints_.end()) {
    lru_.remove(peer.key);
    lru_.push_front(peer.key);
    return it->second;
  }
  // Bound the cache: evicting the least recently used endpoint destroys its queue pairs (its
  // slices in flight flush and are retried).
  while (endpoints_.size() >= options_.max_endpoints && !lru_.empty()) {
    auto victim = endpoints_.find(lru_.back());
    if (victim != endpoints_.end()) {
      std::vector<slice_completion> lost;
      ++counters_.endpoints_evicted;
      auto ep = victim->second;
      retire(ep, lost, "endpoint cache full (" + std::to_string(options_.max_endpoints) + ")");
      if (!lost.empty())
        later.push_back([this, lost = std::move(lost)]() mutable { deliver(std::move(lost)); });
    } else {
      lru_.pop_back();
    }
  }
  auto ep = std::make_shared<endpoint>();
  ep->key = peer.key;
  ep->generation = next_generation_++;
  ep->host = peer.host;
  ep->port = peer.port;
  ep->remote_nic = peer.nic;
  endpoints_[peer.key] = ep;
  lru_.push_front(peer.key);
  ++counters_.endpoints_created;
  if (!start_handshake(peer, ep, later)) {
    // Not cached: pump() fails its slices (retryable) and the next slice tries again.
    endpoints_.erase(peer.key);
    lru_.remove(peer.key);
    counters_.qps_destroyed += ep->qps.size();
    ep->qps.clear();
    ep->state = endpoint::phase::retired;
    note_failure(clock::now());
  }
  return ep;
}

bool rdma_path::start_handshake(peer_entry& peer, const std::shared_ptr<endpoint>& ep,
                                std::vector<std::function<void()>>& later) {
  handshake_request req;
  req.peer = options_.self_name;
  req.peer_nic = nic_;
  req.target_nic = peer.nic;
  req.target_incarnation = peer.incarnation;
  req.address.lid = lid_;
  req.address.gid = gid_;
  req.address.mtu = local_mtu();
  std::random_device rd;
  for (uint32_t i = 0; i < options_.qp_per_endpoint; ++i) {
    auto qp = pd_->create_qp(*cq_, qp_caps{options_.max_wr, 1, 1});
    caf::error err = qp ? (*qp)->to_init(options_.port, access_flags) : qp.error();
    if (err) {
      log::warn("RDMA NIC '{}': cannot make a queue pair for {}: {}", nic_, peer.key,
                describe(err));
      ++counters_.handshakes_failed;
      return false;
    }
    ++counters_.qps_created;
    auto psn = static_cast<uint32_t>(rd()) & 0xffffff;
    req.address.qps.push_back(qp_endpoint{(*qp)->qp_num(), psn});
    ep->psns.push_back(psn);
    ep->qps.push_back(std::move(*qp));
    ep->outstanding.push_back(0);
  }
  ++counters_.handshakes_sent;
  auto bytes = encode(req);
  std::weak_ptr<rdma_path> weak = shared_from_this();
  auto send = options_.send_handshake;
  if (!send)
    return false;
  later.push_back([send, weak, host = ep->host, port = ep->port, key = ep->key,
                   gen = ep->generation, bytes = std::move(bytes)]() mutable {
    send(host, port, std::move(bytes),
         [weak, key, gen](caf::expected<std::vector<uint8_t>> reply) {
           if (auto self = weak.lock())
             self->handshake_done(key, gen, std::move(reply));
         });
  });
  return true;
}

void rdma_path::handshake_done(const std::string& key, uint64_t generation,
                               caf::expected<std::vector<uint8_t>> reply) {
  std::vector<slice_completion> out;
  {
    std::lock_guard<std::mutex> guard(mutex_);
    auto it = endpoints_.find(key);
    if (stopping_ || it == endpoints_.end() || it->second->generation != generation
        || it->second->state != endpoint::phase::handshaking)
      return;
    auto ep = it->second;
    caf::error err;
    handshake_reply answer;
    if (!reply) {
      err = reply.error();
    } else if (auto decoded = decode_reply(*reply, ep->qps.size()); !decoded) {
      err = decoded.error();
    } else {
      answer = std::move(*decoded);
      if (answer.address.mtu > local_mtu())
        err = make_error(errc::malformed_frame,
                         "RDMA handshake reply: MTU " + std::to_string(mtu_bytes(answer.address.mtu))
                           + " is above the " + std::to_string(mtu_bytes(local_mtu()))
                           + " offered");
    }
    for (size_t i = 0; !err && i < ep->qps.size(); ++i) {
      remote_qp remote{answer.address.qps[i].qp_num, answer.address.lid, answer.address.gid,
                       answer.address.mtu, answer.address.qps[i].psn};
      local_qp_params local;
      local.port = options_.port;
      local.gid_index = options_.gid_index;
      local.psn = ep->psns[i];
      err = ep->qps[i]->to_rtr(remote, local);
      if (!err)
        err = ep->qps[i]->to_rts(local);
    }
    if (err) {
      ++counters_.handshakes_failed;
      log::warn("RDMA NIC '{}'{}: handshake with {} failed: {}", nic_,
                emulated_ ? " (emulated)" : "", key, describe(err));
      // A restarted target: its memory is not the one the descriptor's keys name; the slices
      // fail for good (until the segment is opened again, as over TCP).
      auto code = code_of(err) == errc::malformed_frame     ? errc::malformed_frame
                  : code_of(err) == errc::stale_incarnation ? errc::stale_incarnation
                                                            : errc::peer_unreachable;
      fail_waiting(*ep, code, code != errc::stale_incarnation, out);
      // This NIC pairs with one NIC of that peer: a pair that cannot connect counts against it.
      if (code != errc::stale_incarnation)
        note_failure(clock::now());
      retire(ep, out, "handshake failed");
    } else {
      ep->state = endpoint::phase::ready;
      log::debug("RDMA NIC '{}': endpoint to {} ready ({} queue pairs, MTU {})", nic_, key,
                 ep->qps.size(), mtu_bytes(answer.address.mtu));
      pump(ep, out);
    }
  }
  wake();
  deliver(std::move(out));
}

caf::expected<handshake_reply> rdma_path::accept(const handshake_request& req) {
  std::lock_guard<std::mutex> guard(mutex_);
  auto refuse = [this, &req](const std::string& why) {
    ++counters_.handshakes_refused;
    log::warn("RDMA NIC '{}': refused a handshake from {} ({}): {}", nic_,
              req.peer.substr(0, 100), req.peer_nic.substr(0, 64), why);
    return make_error(errc::invalid_argument, "RDMA NIC '" + nic_ + "' refused the handshake: "
                                                + why);
  };
  if (stopping_)
    return make_error(errc::shutting_down, "RDMA NIC '" + nic_ + "' is stopping");
  if (req.target_nic != nic_)
    return refuse("it names NIC '" + req.target_nic + "'");
  if (req.target_incarnation != options_.incarnation) {
    ++counters_.handshakes_refused;
    return make_error(errc::stale_incarnation,
                      "RDMA NIC '" + nic_ + "': this node restarted (incarnation "
                        + std::to_string(options_.incarnation) + "; the handshake names "
                        + std::to_string(req.target_incarnation) + "): open the segment again");
  }
  auto port = context_->query_port(options_.port);
  if (!port || port->state != IBV_PORT_ACTIVE)
    return refuse("port " + std::to_string(options_.port) + " is not active");
  handshake_reply reply;
  reply.address.lid = lid_;
  reply.address.gid = gid_;
  reply.address.mtu = std::min(req.address.mtu, local_mtu());
  std::vector<std::unique_ptr<queue_pair>> qps;
  std::random_device rd;
  for (const auto& theirs : req.address.qps) {
    auto qp = pd_->create_qp(*cq_, qp_caps{options_.max_wr, 1, 1});
    if (!qp)
      return refuse(context_of(qp.error()));
    ++counters_.qps_created;
    remote_qp remote{theirs.qp_num, req.address.lid, req.address.gid, reply.address.mtu,
                     theirs.psn};
    local_qp_params local;
    local.port = options_.port;
    local.gid_index = options_.gid_index;
    local.psn = static_cast<uint32_t>(rd()) & 0xffffff;
    caf::error err = (*qp)->to_init(options_.port, access_flags);
    if (!err)
      err = (*qp)->to_rtr(remote, local);
    if (!err)
      err = (*qp)->to_rts(local);
    if (err) {
      counters_.qps_destroyed += qps.size() + 1;
      return refuse(context_of(err));
    }
    reply.address.qps.push_back(qp_endpoint{(*qp)->qp_num(), local.psn});
    qps.push_back(std::move(*qp));
  }
  auto key = req.peer + "/" + req.peer_nic;
  if (auto old = passive_.find(key); old != passive_.end()) {
    counters_.qps_destroyed += old->second.size();
    passive_.erase(old);
    passive_order_.remove(key);
  }
  while (passive_.size() >= options_.max_endpoints && !passive_order_.empty()) {
    auto victim = passive_.find(passive_order_.front());
    if (victim != passive_.end()) {
      counters_.qps_destroyed += victim->second.size();
      ++counters_.endpoints_evicted;
      passive_.erase(victim);
    }
    passive_order_.pop_front();
  }
  passive_[key] = std::move(qps);
  passive_order_.push_back(key);
  ++counters_.handshakes_accepted;
  return reply;
}

void rdma_path::post(std::span<const slice_op> ops) {
  std::vector<slice_completion> out;
  std::vector<std::function<void()>> later;
  {
    std::lock_guard<std::mutex> guard(mutex_);
    auto now = clock::now();
    if (paused_ && now >= paused_until_) {
      // Probe: the port must be active again.
      auto port = context_->query_port(options_.port);
      if (port && port->state == IBV_PORT_ACTIVE) {
        paused_ = false;
        consecutive_failures_ = 0;
        log::info("RDMA NIC '{}' resumes after a pause of {} ms", nic_, pause_.count());
      } else {
        pause_ = std::min(pause_ * 2, options_.probe_max);
        paused_until_ = now + pause_;
      }
    }
    std::vector<std::shared_ptr<endpoint>> touched;
    for (const auto& op : ops) {
      auto fail = [&](errc code, bool retryable) {
        out.push_back(slice_completion{op.id, code, retryable, 0});
      };
      if (stopping_) {
        fail(errc::shutting_down, false);
        continue;
      }
      if (paused_) {
        fail(errc::transport_failure, true);
        continue;
      }
      if (op.peer >= peers_.size()) {
        fail(errc::unknown_segment, false);
        continue;
      }
      bool staged = op.local_where.is_device() && !gpudirect_;
      if (staged && op.length > staging_chunk) {
        fail(errc::not_supported, false); // slices of GPU memory are at most one chunk
        continue;
      }
      if (op.length == 0 || op.length > (1ULL << 31)) {
        fail(errc::invalid_argument, false);
        continue;
      }
      auto& peer = *peers_[op.peer];
      const memory::region_descriptor* region = nullptr;
      size_t r = 0;
      for (; r < peer.regions.size(); ++r)
        if (peer.regions[r].contains(op.remote_addr, op.length)) {
          region = &peer.regions[r];
          break;
        }
      if (region == nullptr) {
        fail(errc::out_of_range, false);
        continue;
      }
      if (!peer.has_key[r]) {
        // Fenced or device regions are not registered with the peer's NICs.
        fail(errc::not_supported, false);
        continue;
      }
      auto lkey = local_key(op.local_addr, op.length);
      if (!lkey && !staged) {
        fail(errc::unregistered_memory, false);
        continue;
      }
      endpoint::pending p{op, region->remote_key, lkey ? *lkey : 0};
      if (staged) {
        auto chunk = take_chunk();
        if (!chunk || *chunk < 0) {
          fail(chunk ? errc::busy : errc::transport_failure, true);
          continue;
        }
        p.chunk = *chunk;
        p.device_addr = op.local_addr;
        p.op.local_addr = chunk_addr(*chunk);
        p.lkey = staging_mr_->lkey();
        if (op.op == opcode::write) {
          slice_gates::pass gate(gates_.get(), op.id);
          auto err = gate ? memory::copy_bytes(reinterpret_cast<void*>(p.op.local_addr),
                                               memory::location{}, reinterpret_cast<void*>(op.local_addr),
                                               op.local_where, op.length)
                          : caf::error{};
          if (!gate || err) {
            release_chunk(p.chunk);
            if (err)
              fail(errc::transport_failure, false);
            continue; // a closed gate: the slice is no longer wanted
          }
        }
      }
      auto ep = endpoint_for(peer, later);
      ep->waiting.push_back(p);
      if (std::find(touched.begin(), touched.end(), ep) == touched.end())
        touched.push_back(ep);
    }
    for (auto& ep : touched)
      pump(ep, out);
  }
  for (auto& f : later)
    f();
  wake();
  deliver(std::move(out));
}

void rdma_path::fail_waiting(endpoint& ep, errc code, bool retryable,
                             std::vector<slice_completion>& out) {
  for (auto& p : ep.waiting) {
    release_chunk(p.chunk);
    out.push_back(slice_completion{p.op.id, code, retryable, 0});
  }
  ep.waiting.clear();
}

void rdma_path::pump(const std::shared_ptr<endpoint>& ep, std::vector<slice_completion>& out) {
  if (ep->state == endpoint::phase::retired) {
    fail_waiting(*ep, errc::transport_failure, true, out);
    return;
  }
  if (ep->state != endpoint::phase::ready)
    return;
  auto now = clock::now();
  std::vector<std::vector<work_request>> batches(ep->qps.size());
  std::vector<std::vector<uint64_t>> ids(ep->qps.size());
  while (!ep->waiting.empty()) {
    uint32_t q = 0;
    bool found = false;
    for (uint32_t k = 0; k < ep->qps.size(); ++k) {
      q = (ep->next_qp + k) % static_cast<uint32_t>(ep->qps.size());
      if (ep->outstanding[q] < options_.max_wr) {
        found = true;
        break;
      }
    }
    if (!found)
      break;
    ep->next_qp = q + 1;
    auto p = ep->waiting.front();
    ep->waiting.pop_front();
    if (p.op.deadline_ns != 0 && p.op.deadline() <= now) {
      release_chunk(p.chunk);
      out.push_back(slice_completion{p.op.id, errc::timeout, true, 0});
      continue;
    }
    auto wr = next_wr_++;
    auto entry = std::make_unique<inflight>();
    entry->op = p.op;
    entry->ep = ep;
    entry->qp = q;
    entry->chunk = p.chunk;
    entry->device_addr = p.device_addr;
    entry->due = now + options_.completion_timeout;
    if (p.op.deadline_ns != 0)
      entry->due = std::min(entry->due, p.op.deadline());
    inflight_[wr] = std::move(entry);
    wr_of_slice_[p.op.id] = wr;
    ++ep->outstanding[q];
    ++ep->total_outstanding;
    batches[q].push_back(work_request{wr,
                                      p.op.op == opcode::read ? IBV_WR_RDMA_READ
                                                              : IBV_WR_RDMA_WRITE,
                                      p.op.local_addr, static_cast<uint32_t>(p.op.length), p.lkey,
                                      p.op.remote_addr, p.rkey});
  }
  for (size_t q = 0; q < batches.size(); ++q) {
    if (batches[q].empty())
      continue;
    counters_.wrs_posted += batches[q].size();
    if (auto err = ep->qps[q]->post_send(batches[q])) {
      log::warn("RDMA NIC '{}': posting {} work request(s) to {} failed: {}", nic_,
                batches[q].size(), ep->key, describe(err));
      // Treated as failed now; any that did get posted flush when the endpoint is retired.
      for (const auto& wr : batches[q]) {
        auto it = inflight_.find(wr.wr_id);
        if (it == inflight_.end())
          continue;
        out.push_back(slice_completion{it->second->op.id, errc::transport_failure, true, 0});
        release_chunk(it->second->chunk);
        --ep->outstanding[q];
        --ep->total_outstanding;
        wr_of_slice_.erase(it->second->op.id);
        inflight_.erase(it);
      }
      retire(ep, out, "post failed");
      return;
    }
  }
}

void rdma_path::retire(const std::shared_ptr<endpoint>& ep, std::vector<slice_completion>& out,
                       const std::string& why) {
  if (ep->state == endpoint::phase::retired && ep->retired_at != clock::time_point{})
    return;
  ep->state = endpoint::phase::retired;
  ep->retired_at = clock::now();
  ++counters_.endpoints_retired;
  log::debug("RDMA NIC '{}': endpoint to {} retired: {}", nic_, ep->key, why);
  if (auto it = endpoints_.find(ep->key); it != endpoints_.end() && it->second == ep) {
    endpoints_.erase(it);
    lru_.remove(ep->key);
  }
  // Move its queue pairs to ERROR: outstanding work requests flush (and are retried elsewhere).
  for (auto& qp : ep->qps)
    (void) qp->to_error();
  fail_waiting(*ep, errc::transport_failure, true, out);
  retired_.push_back(ep);
}

void rdma_path::note_failure(clock::time_point now) {
  if (++consecutive_failures_ < options_.nic_error_limit || paused_)
    return;
  pause_ = pause_.count() == 0 ? options_.probe_first
                               : std::min(pause_ * 2, options_.probe_max);
  paused_ = true;
  paused_until_ = now + pause_;
  ++counters_.nic_pauses;
  log::warn("RDMA NIC '{}'{}: {} failed completions in a row; paused for {} ms (its slices go to "
            "the other NICs)",
            nic_, emulated_ ? " (emulated)" : "", consecutive_failures_, pause_.count());
}

void rdma_path::poll_completions(std::vector<slice_completion>& out) {
  work_completion wc[64];
  auto now = clock::now();
  for (;;) {
    auto n = cq_->poll(wc);
    if (!n) {
      log::error("RDMA NIC '{}': polling the completion queue failed: {}", nic_,
                 describe(n.error()));
      return;
    }
    for (size_t i = 0; i < *n; ++i) {
      auto it = inflight_.find(wc[i].wr_id);
      if (it == inflight_.end()) {
        ++counters_.late_completions;
        continue;
      }
      auto entry = std::move(it->second);
      inflight_.erase(it);
      auto& ep = entry->ep;
      --ep->outstanding[entry->qp];
      --ep->total_outstanding;
      if (auto s = wr_of_slice_.find(entry->op.id); s != wr_of_slice_.end() && s->second == wc[i].wr_id)
        wr_of_slice_.erase(s);
      bool ok = wc[i].status == IBV_WC_SUCCESS;
      if (!ok) {
        ++counters_.wrs_failed;
        if (wc[i].status != IBV_WC_WR_FLUSH_ERR) {
          log::warn("RDMA NIC '{}'{}: {} of {} bytes to {} failed: {} (qp {}, vendor error {})",
                    nic_, emulated_ ? " (emulated)" : "",
                    entry->op.op == opcode::read ? "READ" : "WRITE", entry->op.length, ep->key,
                    describe_status(wc[i].status), wc[i].qp_num, wc[i].vendor_err);
          note_failure(now);
        }
        if (ep->state != endpoint::phase::retired)
          retire(ep, out, describe_status(wc[i].status));
      } else {
        consecutive_failures_ = 0;
        if (!paused_)
          pause_ = std::chrono::milliseconds(0);
      }
      if (entry->chunk >= 0) {
        // Staged GPU memory: a READ's bytes go from the chunk to the GPU, inside the gate.
        if (ok && !entry->withdrawn && entry->op.op == opcode::read) {
          slice_gates::pass gate(gates_.get(), entry->op.id);
          if (gate)
            if (auto err = memory::copy_bytes(reinterpret_cast<void*>(entry->device_addr),
                                              entry->op.local_where,
                                              reinterpret_cast<void*>(chunk_addr(entry->chunk)),
                                              memory::location{}, entry->op.length)) {
              log::warn("RDMA NIC '{}': copying a staged READ to GPU memory failed: {}", nic_,
                        describe(err));
              ok = false;
            }
        }
        release_chunk(entry->chunk);
      }
      if (entry->withdrawn)
        continue; // its withdrawal is settled below; the coordinator no longer waits for it
      // A remote access error is the target refusing the range: not retried. Everything else
      // (flush, retry exceeded, timeouts) may succeed on another NIC pair.
      if (ok)
        out.push_back(slice_completion{entry->op.id, errc::none, false, entry->op.length});
      else if (wc[i].status == IBV_WC_SUCCESS) // the staging copy failed
        out.push_back(slice_completion{entry->op.id, errc::transport_failure, false, 0});
      else if (wc[i].status == IBV_WC_REM_ACCESS_ERR)
        out.push_back(slice_completion{entry->op.id, errc::out_of_range, false, 0});
      else
        out.push_back(slice_completion{entry->op.id, errc::transport_failure, true, 0});
      if (ep->state == endpoint::phase::ready)
        pump(ep, out);
    }
    if (*n < std::size(wc))
      return;
  }
}

void rdma_path::check_timers(clock::time_point now, std::vector<slice_completion>& out) {
  // Work requests unanswered too long: their queue pairs go to ERROR and flush them.
  std::vector<std::shared_ptr<endpoint>> stuck;
  for (auto& [wr, entry] : inflight_)
    if (now >= entry->due && entry->ep->state != endpoint::phase::retired
        && std::find(stuck.begin(), stuck.end(), entry->ep) == stuck.end())
      stuck.push_back(entry->ep);
  for (auto& ep : stuck) {
    ++counters_.completion_timeouts;
    log::warn("RDMA NIC '{}': a work request to {} was not answered within {} ms or its "
              "deadline; its queue pairs are reset",
              nic_, ep->key, options_.completion_timeout.count());
    note_failure(now);
    retire(ep, out, "completion timeout");
  }
  // Slices still waiting (handshake or a free work request slot) past their deadline.
  for (auto& [key, ep] : endpoints_) {
    std::deque<endpoint::pending> keep;
    for (auto& p : ep->waiting) {
      if (p.op.deadline_ns != 0 && p.op.deadline() <= now) {
        release_chunk(p.chunk);
        out.push_back(slice_completion{p.op.id, errc::timeout, true, 0});
      } else
        keep.push_back(p);
    }
    ep->waiting.swap(keep);
  }
}

void rdma_path::reap_retired() {
  auto now = clock::now();
  std::vector<std::shared_ptr<endpoint>> keep;
  for (auto& ep : retired_) {
    bool drained = ep->total_outstanding == 0;
    // A provider that never flushes: give up on its work requests after one more timeout.
    bool abandoned = now - ep->retired_at > options_.completion_timeout;
    if (!drained && !abandoned) {
      keep.push_back(ep);
      continue;
    }
    if (!drained) {
      for (auto it = inflight_.begin(); it != inflight_.end();) {
        if (it->second->ep == ep) {
          if (!it->second->withdrawn)
            log::warn("RDMA NIC '{}': a work request to {} never completed", nic_, ep->key);
          release_chunk(it->second->chunk);
          wr_of_slice_.erase(it->second->op.id);
          it = inflight_.erase(it);
        } else {
          ++it;
        }
      }
    }
    counters_.qps_destroyed += ep->qps.size();
    ep->qps.clear();
  }
  retired_.swap(keep);
}

void rdma_path::withdraw(std::span<const uint64_t> ids, clock::time_point deadline,
                         std::function<void(unsettled_segments)> done) {
  auto w = std::make_unique<withdrawal>();
  w->deadline = deadline;
  w->done = std::move(done);
  {
    std::lock_guard<std::mutex> guard(mutex_);
    std::set<uint64_t> wanted(ids.begin(), ids.end());
    for (auto& [key, ep] : endpoints_)
      std::erase_if(ep->waiting, [&](const endpoint::pending& p) {
        if (wanted.count(p.op.id) == 0)
          return false;
        release_chunk(p.chunk);
        return true;
      });
    for (auto id : ids) {
      auto s = wr_of_slice_.find(id);
      if (s == wr_of_slice_.end())
        continue;
      auto it = inflight_.find(s->second);
      if (it == inflight_.end())
        continue;
      it->second->withdrawn = true;
      w->wrs.insert(s->second);
      if (it->second->op.op == opcode::write)
        w->write_segments.insert(peers_[it->second->op.peer]->segment);
    }
    if (!w->wrs.empty()) {
      withdrawals_.push_back(std::move(w));
      wake();
      return;
    }
  }
  w->done({});
}

void rdma_path::settle_withdrawals(std::vector<std::function<void()>>& later,
                                   clock::time_point now) {
  std::vector<std::unique_ptr<withdrawal>> keep;
  std::vector<slice_completion> ignored;
  for (auto& w : withdrawals_) {
    std::erase_if(w->wrs, [&](uint64_t wr) { return inflight_.count(wr) == 0; });
    if (w->wrs.empty()) {
      later.push_back([done = std::move(w->done)] { done({}); });
      continue;
    }
    if (now >= w->deadline && !w->forced) {
      // Reset the queue pairs still holding them: the NIC stops touching their memory.
      w->forced = true;
      for (auto wr : w->wrs)
        if (auto it = inflight_.find(wr); it != inflight_.end()) {
          auto ep = it->second->ep;
          retire(ep, ignored, "withdrawal deadline");
        }
    }
    if (now >= w->deadline + std::chrono::seconds(1)) {
      unsettled_segments names(w->write_segments.begin(), w->write_segments.end());
      later.push_back([done = std::move(w->done), names = std::move(names)]() mutable {
        done(std::move(names));
      });
      continue;
    }
    keep.push_back(std::move(w));
  }
  withdrawals_.swap(keep);
  if (!ignored.empty())
    later.push_back([this, ignored = std::move(ignored)]() mutable { deliver(std::move(ignored)); });
}

void rdma_path::run() {
  int cq_fd = cq_->event_fd();
  for (;;) {
    bool busy = false;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      if (stopping_)
        return;
      busy = !inflight_.empty() || !retired_.empty() || !withdrawals_.empty() || paused_
             || std::any_of(endpoints_.begin(), endpoints_.end(),
                            [](const auto& e) { return !e.second->waiting.empty(); });
    }
    pollfd fds[2] = {{doorbell_, POLLIN, 0}, {cq_fd, POLLIN, 0}};
    int timeout = cq_fd < 0 ? 1 : busy ? 10 : -1;
    ::poll(fds, cq_fd < 0 ? 1 : 2, timeout);
    if (fds[0].revents & POLLIN) {
      uint64_t v = 0;
      [[maybe_unused]] auto n = ::read(doorbell_, &v, sizeof(v));
    }
    if (cq_fd >= 0 && (fds[1].revents & POLLIN))
      cq_->consume_event();
    std::vector<slice_completion> out;
    std::vector<std::function<void()>> later;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      if (stopping_)
        return;
      poll_completions(out);
      if (cq_fd >= 0) {
        if (auto err = cq_->arm())
          log::error("RDMA NIC '{}': arming the completion queue failed: {}", nic_, describe(err));
        poll_completions(out); // what arrived before the arm does not notify
      }
      auto now = clock::now();
      check_timers(now, out);
      reap_retired();
      settle_withdrawals(later, now);
    }
    deliver(std::move(out));
    for (auto& f : later)
      f();
  }
}

void rdma_path::stop() {
  std::vector<slice_completion> out;
  std::vector<std::unique_ptr<withdrawal>> pending;
  {
    std::lock_guard<std::mutex> guard(mutex_);
    if (stopping_)
      return;
    stopping_ = true;
    for (auto& [wr, entry] : inflight_)
      if (!entry->withdrawn)
        out.push_back(slice_completion{entry->op.id, errc::shutting_down, false, 0});
    for (auto& [key, ep] : endpoints_)
      fail_waiting(*ep, errc::shutting_down, false, out);
    pending.swap(withdrawals_);
    // Queue pairs to ERROR: the NIC touches none of the callers' memory any more.
    for (auto& [key, ep] : endpoints_)
      for (auto& qp : ep->qps)
        (void) qp->to_error();
  }
  if (doorbell_ >= 0)
    wake();
  if (thread_.joinable())
    thread_.join();
  deliver(std::move(out));
  for (auto& w : pending)
    w->done({});
}

path_counters rdma_path::counters() const {
  std::lock_guard<std::mutex> guard(mutex_);
  return counters_;
}

size_t rdma_path::live_qps() const {
  std::lock_guard<std::mutex> guard(mutex_);
  size_t n = 0;
  for (const auto& [k, ep] : endpoints_)
    n += ep->qps.size();
  for (const auto& ep : retired_)
    n += ep->qps.size();
  for (const auto& [k, qps] : passive_)
    n += qps.size();
  return n;
}

} // namespace kvferry::transport::rdma
