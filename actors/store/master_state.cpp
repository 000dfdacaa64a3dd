#include "actors/store/master_state.hpp"

#include <algorithm>

#include <boost/json.hpp>

namespace kvferry::store {

namespace {

uint64_t round_up(uint64_t v, uint64_t a) {
  return a <= 1 ? v : (v + a - 1) / a * a;
}

msg::status ok() {
  return {};
}

msg::status fail(errc code, std::string reason) {
  return msg::status{code, std::move(reason)};
}

std::string quoted(const std::string& key) {
  constexpr size_t shown = 64;
  if (key.size() <= shown)
    return "'" + key + "'";
  return "'" + key.substr(0, shown) + "...' (" + std::to_string(key.size()) + " bytes)";
}

} // namespace

// -- segment_allocator ------------------------------------------------------------------------

segment_allocator::segment_allocator(uint64_t size) {
  if (size > 0)
    insert(0, size);
}

void segment_allocator::insert(uint64_t offset, uint64_t size) {
  by_offset_.emplace(offset, size);
  by_size_.emplace(size, offset);
  free_bytes_ += size;
}

void segment_allocator::erase(std::map<uint64_t, uint64_t>::iterator it) {
  by_size_.erase({it->second, it->first});
  free_bytes_ -= it->second;
  by_offset_.erase(it);
}

std::optional<uint64_t> segment_allocator::allocate(uint64_t size) {
  if (size == 0)
    return std::nullopt;
  auto best = by_size_.lower_bound({size, 0});
  if (best == by_size_.end())
    return std::nullopt;
  const uint64_t offset = best->second;
  const uint64_t block = best->first;
  erase(by_offset_.find(offset));
  if (block > size)
    insert(offset + size, block - size);
  return offset;
}

bool segment_allocator::allocate_at(uint64_t offset, uint64_t size) {
  if (size == 0)
    return false;
  auto it = by_offset_.upper_bound(offset);
  if (it == by_offset_.begin())
    return false;
  --it;
  const uint64_t start = it->first, length = it->second;
  if (offset - start > length || size > length - (offset - start))
    return false;
  erase(it);
  if (offset > start)
    insert(start, offset - start);
  if (offset + size < start + length)
    insert(offset + size, start + length - (offset + size));
  return true;
}

void segment_allocator::release(uint64_t offset, uint64_t size) {
  uint64_t start = offset, end = offset + size;
  auto next = by_offset_.lower_bound(offset);
  if (next != by_offset_.end() && next->first == end) {
    end += next->second;
    erase(next);
  }
  auto after = by_offset_.lower_bound(offset);
  if (after != by_offset_.begin()) {
    auto prev = std::prev(after);
    if (prev->first + prev->second == start) {
      start = prev->first;
      erase(prev);
    }
  }
  insert(start, end - start);
}

uint64_t segment_allocator::largest_free() const noexcept {
  return by_size_.empty() ? 0 : by_size_.rbegin()->first;
}

// -- master_state ------------------------------------------------------------------------------

master_state::master_state(master_config config, uint64_t master_id, uint64_t first_token)
  : config_(config), master_id_(master_id), next_token_(std::max<uint64_t>(first_token, 1)) {}

master_state::client* master_state::find_client(uint64_t id) {
  auto it = clients_.find(id);
  return it == clients_.end() ? nullptr : &it->second;
}

caf::error master_state::unknown_client(uint64_t id) const {
  return make_error(errc::not_mounted, "the master does not know client " + hex(id)
                                         + " (it restarted, or the client missed its heartbeat "
                                           "for longer than "
                                         + std::to_string(config_.ttl.count())
                                         + " ms): mount again");
}

msg::status master_state::check_key(const std::string& key) const {
  if (key.empty())
    return fail(errc::invalid_argument, "an empty key; keys are 1 to "
                                          + std::to_string(msg::max_key) + " bytes");
  if (key.size() > msg::max_key)
    return fail(errc::invalid_argument, "a key of " + std::to_string(key.size())
                                          + " bytes; keys are 1 to "
                                          + std::to_string(msg::max_key) + " bytes");
  return ok();
}

std::vector<msg::replica> master_state::replicas_of(const std::vector<allocation>& list,
                                                    uint64_t token) const {
  std::vector<msg::replica> out;
  out.reserve(list.size());
  for (const auto& a : list) {
    if (a.gone)
      continue;
    const auto& s = segments_[a.segment];
    out.push_back(msg::replica{s.name, s.host, s.base + a.offset, token});
  }
  return out;
}

void master_state::queue(uint64_t client_id, pending_instruction p) {
  auto* c = find_client(client_id);
  if (c == nullptr)
    return;
  p.what.id = next_instruction_++;
  const auto id = p.what.id;
  c->work.emplace(id, std::move(p));
  if (!c->new_work) {
    c->new_work = true;
    clients_with_work_.push_back(client_id);
  }
}

void master_state::free_space(const allocation& a, uint64_t token) {
  if (a.gone || a.segment >= segments_.size())
    return;
  auto& s = segments_[a.segment];
  if (!s.mounted)
    return;
  s.fencing += a.size;
  fencing_ += a.size;
  ++counters_.fences_sent;
  pending_instruction p;
  p.what.kind = msg::instruction_kind::fence;
  p.what.segment = s.name;
  p.what.addr = s.base + a.offset;
  p.what.size = a.size;
  p.what.token = token;
  p.space = a;
  queue(s.client, std::move(p));
}

void master_state::add_object(const std::string& key, uint64_t size, uint64_t token,
                              std::vector<allocation> replicas, bool has_checksum,
                              uint32_t checksum, bool pinned) {
  object o;
  o.key = key;
  o.size = size;
  o.token = token;
  o.replicas = std::move(replicas);
  o.has_checksum = has_checksum;
  o.checksum = checksum;
  o.pinned = pinned;
  lru_.push_back(key); // most recently used
  o.lru = std::prev(lru_.end());
  objects_.emplace(key, std::move(o));
}

void master_state::touch(object& o) {
  lru_.splice(lru_.end(), lru_, o.lru);
}

void master_state::drop_object(std::unordered_map<std::string, object>::iterator it) {
  for (const auto& a : it->second.replicas)
    free_space(a, it->second.token);
  lru_.erase(it->second.lru);
  key_bytes_ -= it->first.size();
  objects_.erase(it);
}

void master_state::revoke_put(std::unordered_map<uint64_t, put>::iterator it, bool timed_out) {
  auto& p = it->second;
  for (const auto& a : p.replicas)
    free_space(a, p.token);
  // Commits already handed to holders are overtaken by the fences just queued (same holder,
  // later instruction): the holder forgets the object again.
  if (auto c = committing_.find(p.key); c != committing_.end() && c->second == p.id)
    committing_.erase(c);
  ++(timed_out ? counters_.puts_timed_out : counters_.puts_revoked);
  key_bytes_ -= p.key.size();
  puts_.erase(it);
}

void master_state::finish_commit(std::unordered_map<uint64_t, put>::iterator it, time_point now) {
  auto& p = it->second;
  std::vector<allocation> kept, lost;
  for (size_t i = 0; i < p.replicas.size(); ++i) {
    if (p.replicas[i].gone)
      continue;
    (p.committed[i] ? kept : lost).push_back(p.replicas[i]);
  }
  const uint64_t put_id = p.id;
  if (kept.empty()) {
    finished_.push_back({put_id, fail(errc::timeout, "no holder of " + quoted(p.key)
                                                      + " confirmed the object within "
                                                      + std::to_string(config_.commit_timeout.count())
                                                      + " ms; the put was revoked")});
    revoke_put(it, true);
    return;
  }
  if (!lost.empty())
    ++counters_.commits_timed_out;
  for (const auto& a : lost)
    free_space(a, p.token);
  if (auto old = objects_.find(p.key); old != objects_.end()) {
    // Upsert (or an object adopted from a holder meanwhile): the old one leaves now; its space
    // is freed once its lease ended.
    if (old->second.lease_until > now) {
      zombies_.push_back({old->second.lease_until, old->second.token, old->second.replicas});
      lru_.erase(old->second.lru);
      key_bytes_ -= old->first.size();
      objects_.erase(old);
    } else {
      drop_object(old);
    }
  }
  add_object(p.key, p.size, p.token, std::move(kept), p.has_checksum, p.checksum, p.pin);
  if (auto c = committing_.find(p.key); c != committing_.end() && c->second == p.id)
    committing_.erase(c);
  ++counters_.puts_ended;
  puts_.erase(it);
  finished_.push_back({put_id, ok()});
}

void master_state::unmount_segment(uint32_t index) {
  auto& s = segments_[index];
  if (!s.mounted)
    return;
  s.mounted = false;
  capacity_ -= s.size;
  used_ -= s.size - s.free.free_bytes();
  fencing_ -= s.fencing;
  s.fencing = 0;
  // Objects lose their replicas there; an object without replicas is gone.
  for (auto it = objects_.begin(); it != objects_.end();) {
    auto& reps = it->second.replicas;
    reps.erase(std::remove_if(reps.begin(), reps.end(),
                              [&](const allocation& a) { return a.segment == index; }),
               reps.end());
    if (reps.empty()) {
      lru_.erase(it->second.lru);
      key_bytes_ -= it->first.size();
      it = objects_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& z : zombies_)
    for (auto& a : z.replicas)
      if (a.segment == index)
        a.gone = true;
  // Puts lose their replicas there; a committing put may now be complete.
  std::vector<uint64_t> recheck;
  for (auto& [id, p] : puts_) {
    for (size_t i = 0; i < p.replicas.size(); ++i) {
      if (p.replicas[i].segment != index || p.replicas[i].gone)
        continue;
      p.replicas[i].gone = true;
      for (auto c = p.commits.begin(); c != p.commits.end();)
        c = c->second == i ? p.commits.erase(c) : std::next(c);
    }
    if (p.phase == put_phase::committing && p.commits.empty())
      recheck.push_back(id);
  }
  for (auto id : recheck)
    if (auto it = puts_.find(id); it != puts_.end())
      finish_commit(it, time_point{});
  s.free = segment_allocator{};
}

void master_state::declare_dead(uint64_t client_id, time_point now) {
  auto it = clients_.find(client_id);
  if (it == clients_.end())
    return;
  auto segments = it->second.segments;
  clients_.erase(it);
  for (auto index : segments)
    unmount_segment(index);
  for (auto p = puts_.begin(); p != puts_.end();) {
    if (p->second.client == client_id && p->second.phase == put_phase::writing) {
      auto next = std::next(p);
      revoke_put(p, false);
      p = next;
    } else {
      ++p;
    }
  }
  (void) now;
}

caf::expected<msg::mount_reply> master_state::mount(const msg::mount_request& r, time_point now) {
  if (r.client_id == 0)
    return make_error(errc::invalid_argument, "mount: client id 0 is reserved");
  if (auto* c = find_client(r.client_id); c != nullptr) {
    c->last_seen = now;
    return msg::mount_reply{master_id_, static_cast<uint32_t>(config_.ttl.count()),
                            static_cast<uint32_t>(config_.watch_interval.count()),
                            {}};
  }
  // A restarted client (same name, new id): its predecessor is gone.
  std::vector<uint64_t> predecessors;
  for (const auto& [id, c] : clients_)
    if (c.name == r.client_name)
      predecessors.push_back(id);
  for (auto id : predecessors)
    declare_dead(id, now);
  for (const auto& sm : r.segments) {
    if (sm.size == 0 || sm.base == 0 || sm.base + sm.size < sm.base)
      return make_error(errc::invalid_argument, "mount of segment '" + sm.name + "': base "
                                                  + hex(sm.base) + ", size "
                                                  + std::to_string(sm.size)
                                                  + "; expected a non-null range without wrap-around");
    if (auto s = segment_by_name_.find(sm.name);
        s != segment_by_name_.end() && segments_[s->second].mounted)
      return make_error(errc::invalid_argument, "mount of segment '" + sm.name
                                                  + "': already mounted by client "
                                                  + hex(segments_[s->second].client));
  }
  if (clients_.size() >= config_.max_clients)
    return make_error(errc::invalid_argument, "mount: " + std::to_string(clients_.size())
                                                + " clients are mounted, the most this master "
                                                  "accepts (max_clients)");
  next_token_ = std::max(next_token_, r.fence_floor + 1);
  client c;
  c.id = r.client_id;
  c.name = r.client_name;
  c.host = r.host;
  c.last_seen = now;
  clients_.emplace(c.id, c);
  msg::mount_reply reply{master_id_, static_cast<uint32_t>(config_.ttl.count()),
                         static_cast<uint32_t>(config_.watch_interval.count()),
                         {}};
  for (const auto& sm : r.segments) {
    uint32_t index;
    if (auto s = segment_by_name_.find(sm.name); s != segment_by_name_.end()) {
      index = s->second;
    } else {
      index = static_cast<uint32_t>(segments_.size());
      segments_.emplace_back();
      segment_by_name_.emplace(sm.name, index);
    }
    auto& s = segments_[index];
    s.name = sm.name;
    s.client = r.client_id;
    s.host = r.host;
    s.base = sm.base;
    s.size = sm.size;
    s.free = segment_allocator{sm.size};
    s.mounted = true;
    s.fencing = 0;
    capacity_ += sm.size;
    clients_[r.client_id].segments.push_back(index);
    // Rebuild: adopt what the holder holds unless a newer object of that key exists.
    for (const auto& h : sm.objects) {
      next_token_ = std::max(next_token_, h.token + 1);
      const uint64_t size = round_up(h.size, config_.alignment);
      const bool in_range = h.size > 0 && h.addr >= sm.base && h.addr - sm.base <= sm.size
                            && size <= sm.size - (h.addr - sm.base);
      if (!in_range || check_key(h.key).code != errc::none
          || !s.free.allocate_at(h.addr - sm.base, size)) {
        reply.dropped.push_back({sm.name, h.addr, h.size});
        continue;
      }
      used_ += size;
      allocation a{index, h.addr - sm.base, size, false};
      auto existing = objects_.find(h.key);
      if (existing != objects_.end() && existing->second.token > h.token) {
        reply.dropped.push_back({sm.name, h.addr, h.size});
        free_space(a, h.token);
        continue;
      }
      if (existing != objects_.end() && existing->second.token == h.token) {
        existing->second.replicas.push_back(a);
        continue;
      }
      if (existing != objects_.end())
        drop_object(existing);
      if (objects_.size() + puts_.size() >= config_.max_objects
          || key_bytes_ + h.key.size() > config_.max_key_bytes) {
        reply.dropped.push_back({sm.name, h.addr, h.size});
        free_space(a, h.token);
        continue;
      }
      key_bytes_ += h.key.size();
      add_object(h.key, h.size, h.token, {a}, h.has_checksum, h.checksum, h.pinned);
    }
  }
  return reply;
}

msg::status master_state::unmount(uint64_t client_id, time_point now) {
  if (find_client(client_id) == nullptr)
    return fail(errc::not_mounted, "unmount: the master does not know client " + hex(client_id));
  declare_dead(client_id, now);
  return ok();
}

caf::expected<msg::watch_reply> master_state::watch(const msg::watch_request& r, time_point now) {
  auto* c = find_client(r.client_id);
  if (c == nullptr)
    return unknown_client(r.client_id);
  c->last_seen = now;
  std::vector<uint64_t> commits_done;
  for (auto id : r.done) {
    auto it = c->work.find(id);
    if (it == c->work.end()) {
      ++counters_.late_acks_ignored;
      continue;
    }
    auto& p = it->second;
    if (p.what.kind == msg::instruction_kind::fence && p.space) {
      auto& s = segments_[p.space->segment];
      if (s.mounted && s.client == c->id) {
        s.free.release(p.space->offset, p.space->size);
        s.fencing -= p.space->size;
        fencing_ -= p.space->size;
        used_ -= p.space->size;
      }
      ++counters_.fences_done;
    } else if (p.what.kind == msg::instruction_kind::commit) {
      auto put_it = puts_.find(p.put_id);
      if (put_it != puts_.end() && put_it->second.phase == put_phase::committing) {
        auto& pt = put_it->second;
        if (auto ci = pt.commits.find(id); ci != pt.commits.end()) {
          pt.committed[ci->second] = true;
          pt.commits.erase(ci);
          if (pt.commits.empty())
            commits_done.push_back(pt.id);
        }
      } else {
        ++counters_.late_acks_ignored;
      }
    }
    c->work.erase(it);
  }
  for (auto id : commits_done)
    if (auto it = puts_.find(id); it != puts_.end())
      finish_commit(it, now);
  c = find_client(r.client_id);
  msg::watch_reply reply;
  if (c == nullptr)
    return reply;
  c->new_work = false;
  for (const auto& [id, p] : c->work) {
    if (reply.work.size() >= msg::max_batch)
      break;
    reply.work.push_back(p.what);
  }
  return reply;
}

bool master_state::has_new_work(uint64_t client_id) const {
  auto it = clients_.find(client_id);
  return it != clients_.end() && it->second.new_work;
}

caf::expected<msg::put_start_reply> master_state::put_start(const msg::put_start_request& r,
                                                            time_point now) {
  if (find_client(r.client_id) == nullptr)
    return unknown_client(r.client_id);
  msg::put_start_reply reply;
  reply.slots.reserve(r.entries.size());
  for (const auto& e : r.entries) {
    msg::put_slot slot;
    slot.result = check_key(e.key);
    if (slot.result.code != errc::none) {
      reply.slots.push_back(std::move(slot));
      continue;
    }
    uint64_t largest = 0;
    size_t mounted = 0;
    for (const auto& s : segments_)
      if (s.mounted) {
        largest = std::max(largest, s.size);
        ++mounted;
      }
    const uint64_t size = round_up(e.size, config_.alignment);
    if (e.size == 0) {
      slot.result = fail(errc::invalid_argument, "put " + quoted(e.key) + ": a value of 0 bytes");
    } else if (e.replicas == 0 || e.replicas > msg::max_replicas) {
      slot.result = fail(errc::invalid_argument,
                         "put " + quoted(e.key) + ": replication factor "
                           + std::to_string(e.replicas) + "; expected 1 to "
                           + std::to_string(msg::max_replicas));
    } else if (size < e.size || size > largest) {
      slot.result = fail(errc::invalid_argument,
                         "put " + quoted(e.key) + ": a value of " + std::to_string(e.size)
                           + " bytes is larger than any mounted segment (the largest has "
                           + std::to_string(largest) + " bytes)");
    } else if (e.replicas > mounted) {
      slot.result = fail(errc::store_full,
                         "put " + quoted(e.key) + ": replication factor "
                           + std::to_string(e.replicas) + " needs as many segments; "
                           + std::to_string(mounted) + " are mounted");
    } else if (!e.upsert && objects_.count(e.key) > 0) {
      slot.result = fail(errc::object_exists, "put " + quoted(e.key) + ": the key exists");
    } else if (objects_.size() + puts_.size() >= config_.max_objects
               || key_bytes_ + e.key.size() > config_.max_key_bytes) {
      slot.result = fail(errc::store_full,
                         "put " + quoted(e.key) + ": the master holds "
                           + std::to_string(objects_.size() + puts_.size()) + " objects with "
                           + std::to_string(key_bytes_)
                           + " bytes of keys, its limit (max_objects, max_key_bytes)");
    }
    if (slot.result.code != errc::none) {
      reply.slots.push_back(std::move(slot));
      continue;
    }
    // Replicas on distinct segments, those with the most free space first; ties rotate.
    std::vector<uint32_t> order;
    for (uint32_t i = 0; i < segments_.size(); ++i)
      if (segments_[i].mounted && segments_[i].free.largest_free() >= size)
        order.push_back(i);
    if (!order.empty())
      std::rotate(order.begin(), order.begin() + (rotate_++ % order.size()), order.end());
    std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
      return segments_[a].free.free_bytes() > segments_[b].free.free_bytes();
    });
    if (order.size() < e.replicas) {
      evict(now, size * e.replicas);
      slot.result = fail(errc::store_full,
                         "put " + quoted(e.key) + ": " + std::to_string(order.size())
                           + " of the " + std::to_string(e.replicas)
                           + " segments needed have " + std::to_string(size)
                           + " contiguous free bytes (capacity " + std::to_string(capacity_)
                           + ", in use " + std::to_string(used_)
                           + "); evicting what may be evicted, try again");
      reply.slots.push_back(std::move(slot));
      continue;
    }
    put p;
    p.id = next_put_++;
    p.client = r.client_id;
    p.key = e.key;
    p.size = e.size;
    p.token = next_token_++;
    p.pin = e.pin;
    p.upsert = e.upsert;
    p.deadline = now + config_.put_timeout;
    key_bytes_ += p.key.size();
    for (uint8_t k = 0; k < e.replicas; ++k) {
      auto& s = segments_[order[k]];
      auto offset = s.free.allocate(size);
      p.replicas.push_back(allocation{order[k], *offset, size, false});
      used_ += size;
    }
    p.committed.assign(p.replicas.size(), false);
    slot.put_id = p.id;
    slot.replicas = replicas_of(p.replicas, p.token);
    ++counters_.puts_started;
    puts_.emplace(p.id, std::move(p));
    reply.slots.push_back(std::move(slot));
  }
  if (capacity_ > 0 && used_ - fencing_ > static_cast<uint64_t>(config_.high_watermark * capacity_))
    evict(now, 0);
  return reply;
}

caf::expected<std::vector<end_outcome>> master_state::put_end(const msg::put_finish_request& r,
                                                              time_point now) {
  if (find_client(r.client_id) == nullptr)
    return unknown_client(r.client_id);
  std::vector<end_outcome> out;
  out.reserve(r.entries.size());
  for (const auto& e : r.entries) {
    auto it = puts_.find(e.put_id);
    if (it == puts_.end() || it->second.client != r.client_id || it->second.key != e.key) {
      out.push_back({false, fail(errc::object_not_found,
                                 "put_end " + quoted(e.key) + ": no unfinished put "
                                   + std::to_string(e.put_id)
                                   + " of this key by this client (revoked after "
                                   + std::to_string(config_.put_timeout.count())
                                   + " ms, or never started)")});
      continue;
    }
    auto& p = it->second;
    if (p.phase != put_phase::writing) {
      out.push_back({false, fail(errc::invalid_argument, "put_end " + quoted(e.key)
                                                           + ": put already ending")});
      continue;
    }
    const bool taken = objects_.count(e.key) > 0 || committing_.count(e.key) > 0;
    if (taken && !p.upsert) {
      out.push_back({false, fail(errc::object_exists,
                                 "put_end " + quoted(e.key)
                                   + ": another put of this key ended first; this put's space "
                                     "was returned")});
      revoke_put(it, false);
      continue;
    }
    p.has_checksum = e.has_checksum;
    p.checksum = e.checksum;
    p.phase = put_phase::committing;
    p.deadline = now + config_.commit_timeout;
    committing_[p.key] = p.id;
    for (size_t i = 0; i < p.replicas.size(); ++i) {
      const auto& a = p.replicas[i];
      if (a.gone)
        continue;
      const auto& s = segments_[a.segment];
      pending_instruction pi;
      pi.what.kind = msg::instruction_kind::commit;
      pi.what.segment = s.name;
      pi.what.addr = s.base + a.offset;
      pi.what.size = p.size;
      pi.what.token = p.token;
      pi.what.key = p.key;
      pi.what.has_checksum = p.has_checksum;
      pi.what.checksum = p.checksum;
      pi.what.pinned = p.pin;
      pi.put_id = p.id;
      const auto id = next_instruction_;
      queue(s.client, std::move(pi));
      p.commits.emplace(id, i);
    }
    if (p.commits.empty()) {
      const auto put_id = p.id;
      finish_commit(it, now);
      // Answer now: take this put's outcome back out of finished_.
      auto f = std::find_if(finished_.begin(), finished_.end(),
                            [&](const finished_end& x) { return x.put_id == put_id; });
      out.push_back({false, f->result});
      finished_.erase(f);
      continue;
    }
    out.push_back({true, ok()});
  }
  return out;
}

caf::expected<msg::statuses_reply> master_state::put_revoke(const msg::put_finish_request& r,
                                                            time_point) {
  if (find_client(r.client_id) == nullptr)
    return unknown_client(r.client_id);
  msg::statuses_reply reply;
  for (const auto& e : r.entries) {
    auto it = puts_.find(e.put_id);
    if (it != puts_.end() && it->second.client == r.client_id && it->second.key == e.key) {
      if (it->second.phase == put_phase::committing)
        finished_.push_back({e.put_id, fail(errc::object_not_found,
                                            "put " + quoted(e.key)
                                              + ": revoked by its client while committing")});
      revoke_put(it, false);
      reply.results.push_back(ok());
      continue;
    }
    // A put that ended although its client saw put_end fail (the answer was lost or late, or
    // the master restarted and adopted the object from its holders): the object it made goes,
    // unless another put replaced it since (tokens are unique to a put).
    auto obj = objects_.find(e.key);
    if (e.token != 0 && obj != objects_.end() && obj->second.token == e.token) {
      drop_object(obj);
      ++counters_.puts_revoked;
      reply.results.push_back(ok());
      continue;
    }
    reply.results.push_back(fail(errc::object_not_found,
                                 "put_revoke " + quoted(e.key) + ": no put "
                                   + std::to_string(e.put_id) + " of this key by this client"));
  }
  return reply;
}

caf::expected<msg::get_replicas_reply> master_state::get_replicas(const msg::keys_request& r,
                                                                  time_point now) {
  if (find_client(r.client_id) == nullptr)
    return unknown_client(r.client_id);
  msg::get_replicas_reply reply;
  reply.objects.reserve(r.keys.size());
  for (const auto& key : r.keys) {
    msg::object_location loc;
    loc.result = check_key(key);
    if (loc.result.code == errc::none) {
      auto it = objects_.find(key);
      if (it == objects_.end()) {
        loc.result = fail(errc::object_not_found, "get " + quoted(key) + ": no such object");
      } else {
        auto& o = it->second;
        o.lease_until = std::max(o.lease_until, now + config_.lease);
        touch(o);
        ++counters_.gets;
        ++counters_.leases_granted;
        loc.size = o.size;
        loc.has_checksum = o.has_checksum;
        loc.checksum = o.checksum;
        loc.lease_ms = static_cast<uint32_t>(config_.lease.count());
        loc.replicas = replicas_of(o.replicas, o.token);
      }
    }
    reply.objects.push_back(std::move(loc));
  }
  return reply;
}

caf::expected<msg::statuses_reply> master_state::exists(const msg::keys_request& r, time_point) {
  if (find_client(r.client_id) == nullptr)
    return unknown_client(r.client_id);
  msg::statuses_reply reply;
  reply.results.reserve(r.keys.size());
  for (const auto& key : r.keys) {
    auto st = check_key(key);
    if (st.code == errc::none && objects_.count(key) == 0)
      st = fail(errc::object_not_found, "exists " + quoted(key) + ": no such object");
    reply.results.push_back(std::move(st));
  }
  return reply;
}

caf::expected<msg::statuses_reply> master_state::remove(const msg::keys_request& r,
                                                        time_point now) {
  if (find_client(r.client_id) == nullptr)
    return unknown_client(r.client_id);
  msg::statuses_reply reply;
  for (const auto& key : r.keys) {
    auto st = check_key(key);
    if (st.code == errc::none) {
      auto it = objects_.find(key);
      if (it == objects_.end()) {
        st = fail(errc::object_not_found, "remove " + quoted(key) + ": no such object");
      } else if (!r.force && it->second.lease_until > now) {
        st = fail(errc::object_has_lease,
                  "remove " + quoted(key) + ": the object is leased for another "
                    + std::to_string(std::chrono::duration_cast<milliseconds>(
                                       it->second.lease_until - now)
                                       .count())
                    + " ms (a get is reading it); remove with force to override");
      } else {
        drop_object(it);
        ++counters_.removes;
      }
    }
    reply.results.push_back(std::move(st));
  }
  return reply;
}

uint64_t master_state::evict_target() const {
  const double level = std::max(0.0, config_.high_watermark - config_.evict_ratio);
  return static_cast<uint64_t>(level * static_cast<double>(capacity_));
}

void master_state::evict(time_point now, uint64_t want_free) {
  // Evict until live usage is at the target and `want_free` more bytes are on their way back;
  // unpinned objects first, pinned ones (soft pins) only when that is not enough.
  auto live = [&] { return used_ - fencing_; };
  const uint64_t target = evict_target();
  uint64_t freed = 0;
  auto enough = [&] { return live() <= target && freed >= want_free; };
  for (int pass = 0; pass < 2 && !enough(); ++pass) {
    for (auto it = lru_.begin(); it != lru_.end() && !enough();) {
      auto obj = objects_.find(*it);
      ++it;
      auto& o = obj->second;
      if (o.lease_until > now || (pass == 0 && o.pinned))
        continue;
      for (const auto& a : o.replicas)
        freed += a.gone ? 0 : a.size;
      drop_object(obj);
      ++counters_.evictions;
    }
  }
}

void master_state::tick(time_point now) {
  std::vector<uint64_t> dead;
  for (const auto& [id, c] : clients_)
    if (now - c.last_seen > config_.ttl)
      dead.push_back(id);
  for (auto id : dead) {
    ++counters_.clients_declared_dead;
    declare_dead(id, now);
  }
  std::vector<uint64_t> late;
  for (const auto& [id, p] : puts_)
    if (p.deadline <= now)
      late.push_back(id);
  for (auto id : late) {
    auto it = puts_.find(id);
    if (it == puts_.end())
      continue;
    if (it->second.phase == put_phase::writing)
      revoke_put(it, true);
    else
      finish_commit(it, now);
  }
  for (auto z = zombies_.begin(); z != zombies_.end();) {
    if (z->until <= now) {
      for (const auto& a : z->replicas)
        free_space(a, z->token);
      z = zombies_.erase(z);
    } else {
      ++z;
    }
  }
  if (capacity_ > 0
      && used_ - fencing_ > static_cast<uint64_t>(config_.high_watermark * capacity_))
    evict(now, 0);
}

std::vector<finished_end> master_state::take_finished_ends() {
  return std::exchange(finished_, {});
}

std::vector<uint64_t> master_state::take_clients_with_work() {
  return std::exchange(clients_with_work_, {});
}

std::string master_state::report(time_point now) const {
  boost::json::object r;
  r["master_id"] = hex(master_id_);
  r["objects"] = objects_.size();
  uint64_t object_bytes = 0;
  for (const auto& [k, o] : objects_)
    object_bytes += o.size * o.replicas.size();
  r["object_bytes"] = object_bytes;
  r["capacity"] = capacity_;
  r["used"] = used_;
  r["fencing"] = fencing_;
  r["puts_in_progress"] = puts_.size();
  r["key_bytes"] = key_bytes_;
  r["clients"] = clients_.size();
  uint64_t leased = 0;
  for (const auto& [k, o] : objects_)
    leased += o.lease_until > now ? 1 : 0;
  r["leased_objects"] = leased;
  boost::json::array segs;
  for (const auto& s : segments_) {
    if (!s.mounted)
      continue;
    boost::json::object j;
    j["name"] = s.name;
    j["size"] = s.size;
    j["free"] = s.free.free_bytes();
    j["fencing"] = s.fencing;
    j["largest_free"] = s.free.largest_free();
    j["free_blocks"] = s.free.free_blocks();
    const auto free = s.free.free_bytes();
    j["fragmentation"] = free == 0 ? 0.0
                                   : 1.0 - static_cast<double>(s.free.largest_free())
                                             / static_cast<double>(free);
    segs.push_back(std::move(j));
  }
  r["segments"] = std::move(segs);
  const auto& c = counters_;
  boost::json::object k;
  k["puts_started"] = c.puts_started;
  k["puts_ended"] = c.puts_ended;
  k["puts_revoked"] = c.puts_revoked;
  k["puts_timed_out"] = c.puts_timed_out;
  k["gets"] = c.gets;
  k["removes"] = c.removes;
  k["evictions"] = c.evictions;
  k["leases_granted"] = c.leases_granted;
  k["clients_declared_dead"] = c.clients_declared_dead;
  k["fences_sent"] = c.fences_sent;
  k["fences_done"] = c.fences_done;
  k["late_acks_ignored"] = c.late_acks_ignored;
  k["commits_timed_out"] = c.commits_timed_out;
  r["counters"] = std::move(k);
  return boost::json::serialize(r);
}

} // namespace kvferry::store
