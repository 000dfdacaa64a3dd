#include "actors/store/client.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <random>

#include "actors/store/checksum.hpp"
#include "config/log.hpp"
#include "transport/store/wire.hpp"

namespace kvferry::store {

namespace w = transport::store;
using bytes = std::vector<uint8_t>;

namespace {

constexpr uint64_t staging_alignment = 64;

uint8_t* map_memory(uint64_t size) {
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? nullptr : static_cast<uint8_t*>(p);
}

/// This host's identity: its name and boot id (never an IP address: two hosts may share one).
std::string host_identity() {
  char name[256] = {};
  ::gethostname(name, sizeof(name) - 1);
  std::string boot;
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::getline(in, boot);
  return std::string(name) + "/" + boot;
}

uint64_t clock_token() {
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
  return static_cast<uint64_t>(us) << 12;
}

template <class Item>
uint64_t token_of(const Item& it) {
  return it.slot.replicas.empty() ? 0 : it.slot.replicas.front().token;
}

std::string quoted(std::string_view key) {
  constexpr size_t shown = 64;
  if (key.size() <= shown)
    return "'" + std::string(key) + "'";
  return "'" + std::string(key.substr(0, shown)) + "...' (" + std::to_string(key.size())
         + " bytes)";
}

caf::error error_of(const w::status& s) {
  return s.code == errc::none ? caf::error{} : make_error(s.code, s.reason);
}

milliseconds left(time_point until) {
  auto d = std::chrono::duration_cast<milliseconds>(until - clock::now());
  return d.count() > 0 ? d : milliseconds{0};
}

} // namespace

/// The staging buffer: callers' unregistered values pass through it.
struct client::staging {
  uint8_t* base = nullptr;
  uint64_t size = 0;
  std::mutex mutex;
  std::condition_variable freed;
  segment_allocator free;

  /// `n` bytes within `until`, or an error naming the buffer.
  caf::expected<uint8_t*> acquire(uint64_t n, time_point until) {
    n = (n + staging_alignment - 1) / staging_alignment * staging_alignment;
    if (n > size)
      return make_error(errc::invalid_argument,
                        "a value of " + std::to_string(n) + " bytes does not fit the staging buffer ("
                          + std::to_string(size)
                          + " bytes, local_buffer_size): register the memory and use put_from / "
                            "get_into");
    std::unique_lock<std::mutex> guard(mutex);
    for (;;) {
      if (auto at = free.allocate(n))
        return base + *at;
      if (freed.wait_until(guard, until) == std::cv_status::timeout) {
        if (auto at = free.allocate(n))
          return base + *at;
        return make_error(errc::timeout, "the staging buffer (local_buffer_size, "
                                           + std::to_string(size)
                                           + " bytes) had no room within the deadline");
      }
    }
  }
  void release(uint8_t* p, uint64_t n) {
    n = (n + staging_alignment - 1) / staging_alignment * staging_alignment;
    {
      std::lock_guard<std::mutex> guard(mutex);
      free.release(static_cast<uint64_t>(p - base), n);
    }
    freed.notify_all();
  }
};

struct client::put_item {
  std::string key;
  const void* source = nullptr;
  uint64_t size = 0;
  bool done = false;
  caf::error result;
  uint32_t checksum = 0;
  w::put_slot slot;
  bool written = false;
};

struct client::get_item {
  std::string key;
  void* target = nullptr;
  uint64_t capacity = 0;
  bool done = false;
  caf::error result;
  uint64_t size = 0;
  w::object_location where;
  std::vector<size_t> order;
  size_t next = 0;
  caf::error last_failure;
};

caf::expected<std::unique_ptr<client>> client::create(const config::settings& s,
                                                       client_options o) {
  std::unique_ptr<client> c{new client()};
  if (auto err = c->start(s, std::move(o))) {
    c->close();
    return err;
  }
  return c;
}

client::~client() {
  close();
}

caf::error client::start(const config::settings& s, client_options o) {
  settings_ = s;
  const auto& address = s.master_server_address;
  if (address.empty())
    return make_error(errc::invalid_config, s.source + ": master_server_address is not set; a "
                                                       "store client needs the master's "
                                                       "\"host:port\"");
  auto colon = address.rfind(':');
  unsigned port = 0;
  if (address.starts_with("etcd://") || colon == std::string::npos || colon == 0
      || std::sscanf(address.c_str() + colon + 1, "%u", &port) != 1 || port == 0 || port > 65535)
    return make_error(errc::invalid_config,
                      s.source + ": master_server_address \"" + address
                        + "\": expected \"host:port\" of a kvferry master (etcd-elected masters "
                          "are not supported by this version)");
  master_host_ = address.substr(0, colon);
  master_port_ = static_cast<uint16_t>(port);
  std::random_device rd;
  do
    client_id_ = (static_cast<uint64_t>(rd()) << 32) | rd();
  while (client_id_ == 0);
  host_id_ = host_identity();

  auto rt = runtime::create({.network = true});
  if (!rt)
    return rt.error();
  runtime_ = *rt;
  o.engine.store_client = true;
  auto engine = transfer_engine::create(runtime_, s, o.engine);
  if (!engine)
    return engine.error();
  engine_ = std::move(*engine);
  name_ = engine_->segment_name();

  segment_size_ = s.global_segment_size;
  if (segment_size_ > 0) {
    segment_ = map_memory(segment_size_);
    if (segment_ == nullptr)
      return make_error(errc::invalid_config, "cannot map global_segment_size ("
                                                + std::to_string(segment_size_) + " bytes)");
    if (auto err = engine_->register_memory(segment_, segment_size_, "cpu:0", true))
      return err;
  }
  staging_ = std::make_unique<staging>();
  staging_->size = s.local_buffer_size;
  if (staging_->size > 0) {
    staging_->base = map_memory(staging_->size);
    if (staging_->base == nullptr)
      return make_error(errc::invalid_config, "cannot map local_buffer_size ("
                                                + std::to_string(staging_->size) + " bytes)");
    staging_->free = segment_allocator{staging_->size};
    if (auto err = engine_->register_memory(staging_->base, staging_->size, "cpu:0"))
      return err;
  }
  transport::control::client_options co;
  co.max_reply_frame = 16ULL << 20;
  co.max_request_frame = 4ULL << 20;
  auto master = transport::control::client::start("store client '" + name_ + "'", co);
  if (!master)
    return master.error();
  master_ = std::move(*master);
  if (auto err = mount())
    return err;
  watcher_ = std::thread([this] { watch_loop(); });
  return {};
}

time_point client::deadline_of(milliseconds d) const {
  return clock::now() + (d.count() > 0 ? d : settings_.store_deadline);
}

caf::error client::stopped() const {
  return make_error(errc::shutting_down, "the store client was closed");
}

caf::expected<bytes> client::call_once(w::method m, const bytes& payload, time_point until) {
  auto timeout = left(until);
  if (timeout.count() == 0)
    return make_error(errc::timeout, "the store call's deadline passed before the master was asked");
  return master_->call(master_host_, master_port_, static_cast<uint16_t>(m), payload, timeout);
}

caf::expected<bytes> client::call(w::method m, const bytes& payload, time_point until) {
  uint64_t generation;
  {
    std::lock_guard<std::mutex> guard(mutex_);
    if (closed_)
      return stopped();
    generation = mount_generation_;
  }
  auto r = call_once(m, payload, until);
  if (r || code_of(r.error()) != errc::not_mounted)
    return r;
  // The master restarted or declared this client dead: the watch thread mounts again.
  std::unique_lock<std::mutex> guard(mutex_);
  if (mount_generation_ == generation)
    mounted_ = false;
  mounted_changed_.notify_all();
  if (!mounted_changed_.wait_until(guard, until, [&] {
        return stopping_ || (mounted_ && mount_generation_ != generation);
      }))
    return make_error(errc::not_mounted, "the master does not know this client, and mounting "
                                         "again did not succeed within the deadline: "
                                           + context_of(r.error()));
  if (stopping_)
    return stopped();
  guard.unlock();
  return call_once(m, payload, until);
}

caf::error client::mount() {
  w::mount_request req;
  req.client_id = client_id_;
  req.client_name = name_;
  req.host = host_id_;
  std::vector<std::pair<uint64_t, uint64_t>> gaps;
  {
    std::lock_guard<std::mutex> guard(mutex_);
    req.fence_floor = std::max(clock_token(), newest_token_);
    newest_token_ = req.fence_floor;
    if (segment_ != nullptr) {
      w::segment_mount sm;
      sm.name = name_;
      sm.base = reinterpret_cast<uint64_t>(segment_);
      sm.size = segment_size_;
      uint64_t at = sm.base;
      for (const auto& [addr, h] : held_) {
        sm.objects.push_back(h);
        if (addr > at)
          gaps.emplace_back(at, addr - at);
        at = std::max(at, addr + h.size);
      }
      if (at < sm.base + sm.size)
        gaps.emplace_back(at, sm.base + sm.size - at);
      req.segments.push_back(std::move(sm));
    }
  }
  // Before the master may hand out this space again, every access with an older token is
  // refused there: allocations of a master that is gone can no longer land.
  for (auto [addr, size] : gaps)
    if (auto err = engine_->fence(segment_, addr, size, req.fence_floor))
      return err;
  auto payload = w::encode(req);
  if (!payload)
    return payload.error();
  auto reply_bytes = call_once(w::method::mount, *payload, deadline_of(milliseconds{0}));
  if (!reply_bytes)
    return make_error(code_of(reply_bytes.error()) == errc::none ? errc::peer_unreachable
                                                                  : code_of(reply_bytes.error()),
                      "cannot mount at the store master " + master_host_ + ":"
                        + std::to_string(master_port_) + ": " + describe(reply_bytes.error()));
  auto reply = w::decode_mount_reply(*reply_bytes);
  if (!reply)
    return reply.error();
  for (const auto& d : reply->dropped) {
    if (auto err = engine_->fence(segment_, d.addr, std::max<uint64_t>(d.size, 1), req.fence_floor))
      log::warn("store client '{}': cannot fence a dropped object: {}", name_, describe(err));
    std::lock_guard<std::mutex> guard(mutex_);
    held_.erase(d.addr);
  }
  std::lock_guard<std::mutex> guard(mutex_);
  if (master_id_ != 0 && master_id_ != reply->master_id)
    log::info("store client '{}': the master restarted; mounted again with {} objects", name_,
              held_.size());
  master_id_ = reply->master_id;
  watch_interval_ = milliseconds{reply->watch_ms};
  mounted_ = true;
  ++mount_generation_;
  ++counters_.mounts;
  mounted_changed_.notify_all();
  return {};
}

bool client::carry_out(const w::instruction& work) {
  if (segment_ == nullptr || work.segment != name_)
    return true; // not ours: nothing to do
  if (work.kind == w::instruction_kind::commit) {
    std::lock_guard<std::mutex> guard(mutex_);
    held_[work.addr] = w::held_object{work.key,          work.addr,     work.size, work.token,
                                      work.has_checksum, work.checksum, work.pinned};
    newest_token_ = std::max(newest_token_, work.token);
    ++counters_.commits;
    return true;
  }
  if (auto err = engine_->fence(segment_, work.addr, std::max<uint64_t>(work.size, 1), work.token)) {
    log::warn("store client '{}': fence of [{}, +{}) not done yet: {}", name_, hex(work.addr),
              work.size, describe(err));
    return false;
  }
  std::lock_guard<std::mutex> guard(mutex_);
  newest_token_ = std::max(newest_token_, work.token);
  for (auto it = held_.lower_bound(work.addr); it != held_.end() && it->first < work.addr + work.size;)
    it = held_.erase(it);
  if (auto it = held_.lower_bound(work.addr); it != held_.begin()) {
    --it;
    if (it->first + it->second.size > work.addr)
      held_.erase(it);
  }
  ++counters_.fences;
  return true;
}

void client::watch_loop() {
  std::vector<uint64_t> done;
  auto pause = [&](milliseconds d) {
    std::unique_lock<std::mutex> guard(mutex_);
    mounted_changed_.wait_for(guard, d, [&] { return stopping_; });
  };
  for (;;) {
    bool mounted;
    milliseconds interval;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      if (stopping_)
        return;
      mounted = mounted_;
      interval = watch_interval_;
    }
    if (!mounted) {
      if (auto err = mount()) {
        log::debug("store client '{}': mount: {}", name_, describe(err));
        pause(milliseconds{200});
      }
      done.clear();
      continue;
    }
    send_pending_revokes();
    w::watch_request req{client_id_, done};
    auto payload = w::encode(req);
    auto reply_bytes = payload ? call_once(w::method::watch, *payload,
                                           clock::now() + interval + settings_.store_deadline)
                               : caf::expected<bytes>(payload.error());
    if (!reply_bytes) {
      {
        std::lock_guard<std::mutex> guard(mutex_);
        ++counters_.watch_errors;
        if (stopping_)
          return;
        if (code_of(reply_bytes.error()) == errc::not_mounted) {
          mounted_ = false;
          mounted_changed_.notify_all();
        }
      }
      if (code_of(reply_bytes.error()) != errc::not_mounted)
        pause(milliseconds{100});
      continue;
    }
    done.clear();
    auto reply = w::decode_watch_reply(*reply_bytes);
    if (!reply) {
      log::warn("store client '{}': {}", name_, describe(reply.error()));
      pause(milliseconds{100});
      continue;
    }
    for (const auto& work : reply->work)
      if (carry_out(work))
        done.push_back(work.id);
  }
}

bool client::suspect(const std::string& segment) {
  std::lock_guard<std::mutex> guard(segments_mutex_);
  auto it = suspects_.find(segment);
  if (it == suspects_.end())
    return false;
  if (clock::now() - it->second > suspect_for) {
    suspects_.erase(it);
    return false;
  }
  return true;
}

void client::mark_suspect(const std::string& segment) {
  std::lock_guard<std::mutex> guard(segments_mutex_);
  if (suspects_.size() < 4096)
    suspects_[segment] = clock::now();
}

void client::send_pending_revokes() {
  std::vector<w::put_end_entry> revokes;
  {
    std::lock_guard<std::mutex> guard(mutex_);
    revokes.swap(pending_revokes_);
  }
  if (revokes.empty())
    return;
  auto payload = w::encode(w::put_finish_request{client_id_, revokes});
  if (!payload)
    return;
  auto r = call_once(w::method::put_revoke, *payload, clock::now() + settings_.store_deadline);
  const bool unanswered = !r
                          && (code_of(r.error()) == errc::peer_unreachable
                              || code_of(r.error()) == errc::timeout
                              || code_of(r.error()) == errc::transport_failure);
  if (!unanswered) {
    std::lock_guard<std::mutex> guard(mutex_);
    counters_.background_revokes += revokes.size();
    return;
  }
  std::lock_guard<std::mutex> guard(mutex_);
  revokes.insert(revokes.end(), pending_revokes_.begin(), pending_revokes_.end());
  pending_revokes_ = std::move(revokes);
}

caf::expected<segment_id> client::open(const std::string& segment, bool refresh) {
  {
    std::lock_guard<std::mutex> guard(segments_mutex_);
    auto it = segments_.find(segment);
    if (it != segments_.end() && !refresh)
      return it->second;
  }
  auto id = engine_->open_segment(segment);
  if (id) {
    std::lock_guard<std::mutex> guard(segments_mutex_);
    segments_[segment] = *id;
  }
  return id;
}

// -- put -------------------------------------------------------------------------------------

void client::run_puts(std::vector<put_item>& items, const put_options& o, time_point until) {
  auto fail_all = [&](const caf::error& err) {
    for (auto& it : items)
      if (!it.done) {
        it.result = err;
        it.done = true;
      }
  };
  w::put_start_request start{client_id_, {}};
  std::vector<size_t> asked;
  for (size_t i = 0; i < items.size(); ++i) {
    auto& it = items[i];
    if (it.done)
      continue;
    if (o.checksum)
      it.checksum = crc32c(it.source, it.size);
    start.entries.push_back(w::put_entry{it.key, it.size, o.replicas, o.pin, o.upsert});
    asked.push_back(i);
  }
  if (asked.empty())
    return;
  auto payload = w::encode(start);
  if (!payload)
    return fail_all(payload.error());
  auto reply_bytes = call(w::method::put_start, *payload, until);
  if (!reply_bytes)
    return fail_all(reply_bytes.error());
  auto reply = w::decode_put_start_reply(*reply_bytes);
  if (!reply || reply->slots.size() != asked.size())
    return fail_all(reply ? make_error(errc::malformed_frame, "put_start: the master answered "
                                                                "a different number of entries")
                          : reply.error());
  // WRITE every replica of every allocated entry, in one batch, each with its token.
  std::vector<std::pair<size_t, size_t>> task_of; // task -> (item, replica)
  size_t total = 0;
  for (size_t k = 0; k < asked.size(); ++k) {
    auto& it = items[asked[k]];
    it.slot = std::move(reply->slots[k]);
    if (it.slot.result.code != errc::none) {
      it.result = error_of(it.slot.result);
      it.done = true;
      continue;
    }
    total += it.slot.replicas.size();
  }
  std::vector<size_t> to_end, to_revoke;
  if (total > 0) {
    const auto now = clock::now();
    // Keep a quarter of what is left (at most a second) for put_end / put_revoke.
    auto budget = std::chrono::duration_cast<milliseconds>(until - now);
    auto reserve = std::min(budget / 4, milliseconds{1000});
    auto transfer_deadline = std::max(budget - reserve, milliseconds{1});
    auto batch = engine_->allocate_batch(total);
    std::vector<bool> submitted(items.size(), false);
    if (!batch)
      return fail_all(batch.error());
    for (size_t k = 0; k < asked.size(); ++k) {
      auto& it = items[asked[k]];
      if (it.done)
        continue;
      std::vector<transfer_request> requests;
      caf::error problem;
      for (const auto& r : it.slot.replicas) {
        auto id = open(r.segment, false);
        if (!id) {
          problem = id.error();
          break;
        }
        requests.push_back(transfer_request{opcode::write, const_cast<void*>(it.source), *id,
                                            r.addr, it.size, r.token});
      }
      caf::expected<uint32_t> first = problem ? caf::expected<uint32_t>(problem)
                                              : engine_->submit(*batch, requests,
                                                                {transfer_deadline, {}});
      if (!first) {
        it.result = make_error(code_of(first.error()) == errc::none ? errc::transport_failure
                                                                    : code_of(first.error()),
                               "put " + quoted(it.key) + ": " + describe(first.error()));
        to_revoke.push_back(asked[k]);
        continue;
      }
      for (size_t r = 0; r < requests.size(); ++r)
        task_of.emplace_back(asked[k], r);
      submitted[asked[k]] = true;
    }
    if (!task_of.empty())
      (void) engine_->wait(*batch, transfer_deadline + milliseconds{200});
    std::vector<bool> failed(items.size(), false);
    for (size_t t = 0; t < task_of.size(); ++t) {
      auto [index, replica] = task_of[t];
      auto st = engine_->status(*batch, static_cast<uint32_t>(t));
      if (st && st->state == task_state::completed)
        continue;
      auto& it = items[index];
      if (!failed[index]) {
        failed[index] = true;
        const auto& seg = it.slot.replicas[replica].segment;
        std::string why = st ? std::string(to_string(st->state)) + ": " + st->reason
                             : describe(st.error());
        it.result = make_error(errc::transport_failure, "put " + quoted(it.key) + ": WRITE to the replica on segment '" + seg + "' failed (" + why + "); the put was revoked");
        if (st && (st->code == errc::stale_incarnation || st->code == errc::peer_unreachable
                   || st->code == errc::unknown_segment))
          (void) open(seg, true);
      }
    }
    if (auto err = engine_->free_batch(*batch))
      log::warn("store client '{}': {}", name_, describe(err));
    for (size_t k = 0; k < asked.size(); ++k) {
      auto index = asked[k];
      if (!submitted[index])
        continue;
      (failed[index] ? to_revoke : to_end).push_back(index);
    }
  }
  if (!to_revoke.empty()) {
    w::put_finish_request revoke{client_id_, {}};
    for (auto index : to_revoke) {
      revoke.entries.push_back(w::put_end_entry{items[index].key, items[index].slot.put_id, false,
                                                0, token_of(items[index])});
      items[index].done = true;
    }
    // Best effort: a put the master does not hear about is revoked at its put timeout.
    if (auto p = w::encode(revoke))
      (void) call(w::method::put_revoke, *p, until);
  }
  if (to_end.empty())
    return;
  w::put_finish_request end{client_id_, {}};
  for (auto index : to_end)
    end.entries.push_back(w::put_end_entry{items[index].key, items[index].slot.put_id, o.checksum,
                                           items[index].checksum, token_of(items[index])});
  auto end_payload = w::encode(end);
  caf::expected<bytes> end_bytes = end_payload ? call(w::method::put_end, *end_payload, until)
                                               : caf::expected<bytes>(end_payload.error());
  auto end_reply = end_bytes ? w::decode_statuses_reply(*end_bytes)
                             : caf::expected<w::statuses_reply>(end_bytes.error());
  if (!end_reply) {
    // The master did not answer: the puts may still end there (or have ended). Revoke them in
    // the background until the master answers, so an object whose put failed never stays.
    std::lock_guard<std::mutex> guard(mutex_);
    for (const auto& entry : end.entries)
      if (pending_revokes_.size() < max_pending_revokes)
        pending_revokes_.push_back(entry);
    mounted_changed_.notify_all();
  }
  for (size_t k = 0; k < to_end.size(); ++k) {
    auto& it = items[to_end[k]];
    it.done = true;
    if (!end_reply)
      it.result = make_error(code_of(end_reply.error()) == errc::none ? errc::timeout
                                                                      : code_of(end_reply.error()),
                             "put " + quoted(it.key) + ": put_end: " + describe(end_reply.error()));
    else if (k < end_reply->results.size())
      it.result = error_of(end_reply->results[k]);
    else
      it.result = make_error(errc::malformed_frame, "put_end: the master answered fewer entries");
  }
}

std::vector<caf::error> client::batch_put_from(std::span<const std::string> keys,
                                               std::span<const void* const> addrs,
                                               std::span<const size_t> sizes, put_options o) {
  const auto until = deadline_of(o.deadline);
  if (keys.size() != addrs.size() || keys.size() != sizes.size())
    return std::vector<caf::error>(keys.size(),
                                   make_error(errc::invalid_argument,
                                              "batch_put_from: keys, addresses and sizes differ "
                                              "in number"));
  std::vector<put_item> items(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    items[i].key = keys[i];
    items[i].source = addrs[i];
    items[i].size = sizes[i];
    if (addrs[i] == nullptr && sizes[i] > 0) {
      items[i].result = make_error(errc::invalid_argument, "put " + quoted(keys[i])
                                                             + ": null address");
      items[i].done = true;
    }
  }
  run_puts(items, o, until);
  std::vector<caf::error> out;
  out.reserve(items.size());
  for (auto& it : items)
    out.push_back(std::move(it.result));
  return out;
}

caf::error client::put_from(std::string_view key, const void* addr, size_t size, put_options o) {
  std::string k(key);
  const void* a = addr;
  return std::move(batch_put_from({&k, 1}, {&a, 1}, {&size, 1}, o)[0]);
}

std::vector<caf::error> client::batch_put(std::span<const std::string> keys,
                                          std::span<const std::span<const uint8_t>> values,
                                          put_options o) {
  const auto until = deadline_of(o.deadline);
  std::vector<caf::error> out(keys.size());
  if (keys.size() != values.size()) {
    for (auto& e : out)
      e = make_error(errc::invalid_argument, "batch_put: keys and values differ in number");
    return out;
  }
  // Through the staging buffer, as many values at a time as fit in it.
  size_t i = 0;
  while (i < keys.size()) {
    uint64_t bytes_needed = 0;
    size_t j = i;
    while (j < keys.size()) {
      auto n = (values[j].size() + staging_alignment - 1) / staging_alignment * staging_alignment;
      if (j > i && bytes_needed + n > staging_->size)
        break;
      bytes_needed += n;
      ++j;
    }
    auto area = staging_->acquire(std::max<uint64_t>(bytes_needed, 1), until);
    if (!area) {
      for (size_t k = i; k < j; ++k)
        out[k] = make_error(code_of(area.error()), "put " + quoted(keys[k]) + ": "
                                                     + context_of(area.error()));
      i = j;
      continue;
    }
    std::vector<put_item> items(j - i);
    uint64_t at = 0;
    for (size_t k = i; k < j; ++k) {
      auto& it = items[k - i];
      it.key = keys[k];
      it.size = values[k].size();
      it.source = *area + at;
      if (!values[k].empty())
        std::memcpy(*area + at, values[k].data(), values[k].size());
      at += (values[k].size() + staging_alignment - 1) / staging_alignment * staging_alignment;
    }
    run_puts(items, o, until);
    staging_->release(*area, std::max<uint64_t>(bytes_needed, 1));
    for (size_t k = i; k < j; ++k)
      out[k] = std::move(items[k - i].result);
    i = j;
  }
  return out;
}

caf::error client::put(std::string_view key, std::span<const uint8_t> value, put_options o) {
  std::string k(key);
  return std::move(batch_put({&k, 1}, {&value, 1}, o)[0]);
}

// -- get -------------------------------------------------------------------------------------

void client::run_gets(std::vector<get_item>& items, time_point until) {
  auto fail_all = [&](const caf::error& err) {
    for (auto& it : items)
      if (!it.done) {
        it.result = err;
        it.done = true;
      }
  };
  // Locations first (the caller may need the sizes before it has buffers).
  bool located = true;
  for (auto& it : items)
    located = located && (it.done || !it.where.replicas.empty());
  const auto asked_at = clock::now();
  if (!located) {
    w::keys_request req{client_id_, {}, false};
    std::vector<size_t> asked;
    for (size_t i = 0; i < items.size(); ++i)
      if (!items[i].done) {
        req.keys.push_back(items[i].key);
        asked.push_back(i);
      }
    if (asked.empty())
      return;
    auto payload = w::encode(req);
    if (!payload)
      return fail_all(payload.error());
    auto reply_bytes = call(w::method::get_replicas, *payload, until);
    if (!reply_bytes)
      return fail_all(reply_bytes.error());
    auto reply = w::decode_get_replicas_reply(*reply_bytes);
    if (!reply || reply->objects.size() != asked.size())
      return fail_all(reply ? make_error(errc::malformed_frame,
                                         "get_replicas: the master answered a different number "
                                         "of entries")
                            : reply.error());
    for (size_t k = 0; k < asked.size(); ++k) {
      auto& it = items[asked[k]];
      it.where = std::move(reply->objects[k]);
      if (it.where.result.code != errc::none) {
        it.result = error_of(it.where.result);
        it.done = true;
      }
    }
    return; // the caller sizes its buffers, then calls again
  }
  const auto lease_end = asked_at; // replaced below per item
  (void) lease_end;
  for (auto& it : items) {
    if (it.done)
      continue;
    it.size = it.where.size;
    if (it.size > it.capacity) {
      it.result = make_error(errc::invalid_argument,
                             "get " + quoted(it.key) + ": the object has " + std::to_string(it.size)
                               + " bytes; the buffer has " + std::to_string(it.capacity));
      it.done = true;
      continue;
    }
    // Best replica first: this process, then this host, then any; a holder that failed a read
    // recently goes after the others.
    auto rank = [&](const w::replica& r) {
      int where = r.segment == name_ ? 0 : r.host == host_id_ ? 1 : 2;
      return suspect(r.segment) ? where + 3 : where;
    };
    it.order.resize(it.where.replicas.size());
    for (size_t r = 0; r < it.order.size(); ++r)
      it.order[r] = r;
    std::stable_sort(it.order.begin(), it.order.end(), [&](size_t a, size_t b) {
      return rank(it.where.replicas[a]) < rank(it.where.replicas[b]);
    });
  }
  for (;;) {
    std::vector<size_t> round;
    for (size_t i = 0; i < items.size(); ++i) {
      auto& it = items[i];
      if (it.done)
        continue;
      if (it.next >= it.order.size()) {
        it.result = it.last_failure ? it.last_failure
                                    : make_error(errc::object_not_found,
                                                 "get " + quoted(it.key) + ": no replica left");
        it.done = true;
        continue;
      }
      round.push_back(i);
    }
    if (round.empty())
      return;
    auto budget = left(until);
    if (budget.count() == 0) {
      for (auto i : round) {
        items[i].result = make_error(errc::timeout, "get " + quoted(items[i].key)
                                                      + ": the deadline passed");
        items[i].done = true;
      }
      return;
    }
    auto batch = engine_->allocate_batch(round.size());
    if (!batch)
      return fail_all(batch.error());
    std::vector<size_t> task_item;
    for (auto i : round) {
      auto& it = items[i];
      const auto& r = it.where.replicas[it.order[it.next]];
      auto id = open(r.segment, false);
      // Each replica still untried gets an equal share of what is left: a holder that does not
      // answer (killed, frozen, cut off) cannot use up the time the next replica needs.
      const auto untried = static_cast<int64_t>(it.order.size() - it.next);
      const auto share = std::max(budget / untried, milliseconds{1});
      caf::expected<uint32_t> first = id ? engine_->submit(*batch,
                                                           std::vector<transfer_request>{
                                                             {opcode::read, it.target, *id, r.addr,
                                                              it.size, r.token}},
                                                           {share, {}})
                                         : caf::expected<uint32_t>(id.error());
      if (!first) {
        it.last_failure = make_error(errc::transport_failure,
                                     "get " + quoted(it.key) + ": replica on segment '" + r.segment
                                       + "': " + describe(first.error()));
        ++it.next;
        continue;
      }
      task_item.push_back(i);
    }
    if (!task_item.empty())
      (void) engine_->wait(*batch, budget + milliseconds{200});
    for (size_t t = 0; t < task_item.size(); ++t) {
      auto& it = items[task_item[t]];
      const auto& r = it.where.replicas[it.order[it.next]];
      auto st = engine_->status(*batch, static_cast<uint32_t>(t));
      if (st && st->state == task_state::completed) {
        if (it.where.has_checksum && crc32c(it.target, it.size) != it.where.checksum) {
          it.last_failure = make_error(errc::checksum_mismatch,
                                       "get " + quoted(it.key) + ": the bytes of the replica on '"
                                         + r.segment + "' do not match the checksum recorded at put");
          ++it.next;
          std::lock_guard<std::mutex> guard(mutex_);
          ++counters_.replica_failovers;
          continue;
        }
        it.done = true;
        const auto lease_until = asked_at + milliseconds{it.where.lease_ms};
        if (clock::now() > lease_until) {
          {
            std::lock_guard<std::mutex> guard(mutex_);
            ++counters_.lease_expiries;
          }
          it.result = make_error(errc::lease_expired,
                                 "get " + quoted(it.key) + ": the read ended after the object's "
                                   + std::to_string(it.where.lease_ms)
                                   + " ms lease expired; the object may have been removed or "
                                     "evicted meanwhile");
        }
        continue;
      }
      const errc code = st ? st->code : code_of(st.error());
      std::string why = st ? std::string(to_string(st->state)) + ": " + st->reason
                           : describe(st.error());
      it.last_failure = code == errc::fenced
                          ? make_error(errc::object_not_found,
                                       "get " + quoted(it.key) + ": the object was removed or "
                                         "evicted while it was being read")
                          : make_error(errc::transport_failure,
                                       "get " + quoted(it.key) + ": READ from the replica on '"
                                         + r.segment + "' failed (" + why + ")");
      if (code == errc::stale_incarnation || code == errc::peer_unreachable
          || code == errc::unknown_segment)
        (void) open(r.segment, true);
      if (code != errc::fenced)
        mark_suspect(r.segment);
      ++it.next;
      std::lock_guard<std::mutex> guard(mutex_);
      ++counters_.replica_failovers;
    }
    if (auto err = engine_->free_batch(*batch))
      log::warn("store client '{}': {}", name_, describe(err));
  }
}

std::vector<caf::expected<size_t>> client::batch_get_into(std::span<const std::string> keys,
                                                          std::span<void* const> addrs,
                                                          std::span<const size_t> capacities,
                                                          get_options o) {
  const auto until = deadline_of(o.deadline);
  std::vector<caf::expected<size_t>> out;
  if (keys.size() != addrs.size() || keys.size() != capacities.size()) {
    for (size_t i = 0; i < keys.size(); ++i)
      out.emplace_back(make_error(errc::invalid_argument,
                                  "batch_get_into: keys, addresses and capacities differ in number"));
    return out;
  }
  std::vector<get_item> items(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    items[i].key = keys[i];
    items[i].target = addrs[i];
    items[i].capacity = capacities[i];
  }
  run_gets(items, until); // locations
  run_gets(items, until); // bytes
  for (auto& it : items)
    out.push_back(it.result ? caf::expected<size_t>(it.result) : caf::expected<size_t>(it.size));
  return out;
}

caf::expected<size_t> client::get_into(std::string_view key, void* addr, size_t capacity,
                                       get_options o) {
  std::string k(key);
  return std::move(batch_get_into({&k, 1}, {&addr, 1}, {&capacity, 1}, o)[0]);
}

std::vector<caf::expected<bytes>> client::batch_get(std::span<const std::string> keys,
                                                    get_options o) {
  const auto until = deadline_of(o.deadline);
  std::vector<get_item> items(keys.size());
  for (size_t i = 0; i < keys.size(); ++i)
    items[i].key = keys[i];
  run_gets(items, until); // locations and sizes
  std::vector<caf::expected<bytes>> out(keys.size(), caf::expected<bytes>(bytes{}));
  size_t i = 0;
  while (i < items.size()) {
    // As many objects at a time as fit in the staging buffer.
    uint64_t needed = 0;
    size_t j = i;
    while (j < items.size()) {
      auto n = items[j].done ? 0
                             : (items[j].where.size + staging_alignment - 1) / staging_alignment
                                 * staging_alignment;
      if (j > i && needed + n > staging_->size)
        break;
      needed += n;
      ++j;
    }
    std::vector<get_item> part(std::make_move_iterator(items.begin() + i),
                               std::make_move_iterator(items.begin() + j));
    auto area = staging_->acquire(std::max<uint64_t>(needed, 1), until);
    if (!area) {
      for (auto& it : part)
        if (!it.done) {
          it.result = area.error();
          it.done = true;
        }
    } else {
      uint64_t at = 0;
      for (auto& it : part) {
        if (it.done)
          continue;
        it.target = *area + at;
        it.capacity = it.where.size;
        at += (it.where.size + staging_alignment - 1) / staging_alignment * staging_alignment;
      }
      run_gets(part, until);
      for (size_t k = 0; k < part.size(); ++k) {
        auto& it = part[k];
        if (!it.result && it.target != nullptr) {
          auto* p = static_cast<const uint8_t*>(it.target);
          out[i + k] = bytes(p, p + it.size);
        }
      }
      staging_->release(*area, std::max<uint64_t>(needed, 1));
    }
    for (size_t k = 0; k < part.size(); ++k)
      if (part[k].result)
        out[i + k] = part[k].result;
    i = j;
  }
  return out;
}

caf::expected<bytes> client::get(std::string_view key, get_options o) {
  std::string k(key);
  return std::move(batch_get({&k, 1}, o)[0]);
}

// -- others ----------------------------------------------------------------------------------

std::vector<caf::error> client::batch_remove(std::span<const std::string> keys, bool force) {
  const auto until = deadline_of(milliseconds{0});
  w::keys_request req{client_id_, {keys.begin(), keys.end()}, force};
  std::vector<caf::error> out(keys.size());
  auto payload = w::encode(req);
  auto reply_bytes = payload ? call(w::method::remove, *payload, until)
                             : caf::expected<bytes>(payload.error());
  auto reply = reply_bytes ? w::decode_statuses_reply(*reply_bytes)
                           : caf::expected<w::statuses_reply>(reply_bytes.error());
  for (size_t i = 0; i < keys.size(); ++i)
    out[i] = !reply ? reply.error()
             : i < reply->results.size()
               ? error_of(reply->results[i])
               : make_error(errc::malformed_frame, "remove: the master answered fewer entries");
  return out;
}

caf::error client::remove(std::string_view key, bool force) {
  std::string k(key);
  return std::move(batch_remove({&k, 1}, force)[0]);
}

std::vector<caf::expected<bool>> client::batch_exists(std::span<const std::string> keys) {
  const auto until = deadline_of(milliseconds{0});
  w::keys_request req{client_id_, {keys.begin(), keys.end()}, false};
  std::vector<caf::expected<bool>> out;
  auto payload = w::encode(req);
  auto reply_bytes = payload ? call(w::method::exists, *payload, until)
                             : caf::expected<bytes>(payload.error());
  auto reply = reply_bytes ? w::decode_statuses_reply(*reply_bytes)
                           : caf::expected<w::statuses_reply>(reply_bytes.error());
  for (size_t i = 0; i < keys.size(); ++i) {
    if (!reply)
      out.emplace_back(reply.error());
    else if (i >= reply->results.size())
      out.emplace_back(make_error(errc::malformed_frame, "exists: the master answered fewer entries"));
    else if (reply->results[i].code == errc::none)
      out.emplace_back(true);
    else if (reply->results[i].code == errc::object_not_found)
      out.emplace_back(false);
    else
      out.emplace_back(error_of(reply->results[i]));
  }
  return out;
}

caf::expected<bool> client::exists(std::string_view key) {
  std::string k(key);
  return std::move(batch_exists({&k, 1})[0]);
}

caf::error client::register_buffer(void* addr, size_t size, std::string_view location) {
  return engine_->register_memory(addr, size, location);
}

caf::error client::unregister_buffer(void* addr) {
  return engine_->unregister_memory(addr);
}

caf::expected<std::string> client::master_stats() {
  auto payload = w::encode(w::stats_request{client_id_});
  if (!payload)
    return payload.error();
  auto reply_bytes = call(w::method::stats, *payload, deadline_of(milliseconds{0}));
  if (!reply_bytes)
    return reply_bytes.error();
  auto reply = w::decode_stats_reply(*reply_bytes);
  if (!reply)
    return reply.error();
  return std::move(reply->report);
}

size_t client::held_objects() const {
  std::lock_guard<std::mutex> guard(mutex_);
  return held_.size();
}

client_counters client::counters() const {
  std::lock_guard<std::mutex> guard(mutex_);
  return counters_;
}

void client::close() {
  {
    std::lock_guard<std::mutex> guard(mutex_);
    if (closed_)
      return;
    closed_ = true;
    stopping_ = true;
    mounted_changed_.notify_all();
  }
  if (master_ && watcher_.joinable()) {
    // A clean stop: the master unmounts this client's segment at once (no TTL wait).
    if (auto payload = w::encode(w::unmount_request{client_id_}))
      (void) call_once(w::method::unmount, *payload, clock::now() + milliseconds{1000});
  }
  if (master_)
    master_->stop();
  if (watcher_.joinable())
    watcher_.join();
  if (engine_)
    engine_->shutdown();
  engine_.reset();
  if (segment_ != nullptr)
    ::munmap(segment_, segment_size_);
  segment_ = nullptr;
  if (staging_ && staging_->base != nullptr)
    ::munmap(staging_->base, staging_->size);
  runtime_.reset();
}

} // namespace kvferry::store
