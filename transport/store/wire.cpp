#include "transport/store/wire.hpp"

#include <string>
#include <string_view>
#include <utility>

#include "transport/bytes_io.hpp"

namespace kvferry::transport::store {

namespace {

// Smallest encoding of each list entry (every string at its shortest): what a count is checked
// against before anything is reserved for it.
constexpr size_t min_status = 1 + 2;
constexpr size_t min_replica = (2 + 1) + (2 + 1) + 8 + 8;
constexpr size_t min_held_object = (2 + 1) + 8 + 8 + 8 + 1 + 4 + 1;
constexpr size_t min_segment_mount = (2 + 1) + 8 + 8 + 4;
constexpr size_t min_dropped_object = (2 + 1) + 8 + 8;
constexpr size_t min_instruction = 8 + 1 + (2 + 1) + 8 + 8 + 8 + 2 + 1 + 4 + 1;
constexpr size_t min_put_entry = (2 + 1) + 8 + 1 + 1 + 1;
constexpr size_t min_put_slot = min_status + 8 + 1;
constexpr size_t min_put_end_entry = (2 + 1) + 8 + 8 + 1 + 4;
constexpr size_t min_key = 2 + 1;
constexpr size_t min_object_location = min_status + 8 + 1 + 4 + 4 + 1;

/// Writes one message; keeps the first field found beyond its limit, with the entry it is in.
class encoder {
public:
  explicit encoder(const char* message) : message_(message) {}

  byte_writer out;

  void key(const std::string& k, bool allow_empty = false) {
    if ((k.empty() && !allow_empty) || k.size() > max_key)
      return refuse("key of " + std::to_string(k.size()) + " bytes; expected "
                    + (allow_empty ? "0" : "1") + " to " + std::to_string(max_key));
    out.str16(k);
  }
  void name(const std::string& s, const char* what) {
    if (s.empty() || s.size() > max_name)
      return refuse(std::string(what) + " of " + std::to_string(s.size()) + " bytes; expected 1 to "
                    + std::to_string(max_name));
    out.str16(s);
  }
  void result(const status& s) {
    if (s.code > errc_last)
      return refuse("status code " + std::to_string(static_cast<unsigned>(s.code))
                    + " is not a kvferry errc");
    out.u8(static_cast<uint8_t>(s.code));
    out.str16(std::string_view(s.reason).substr(0, max_reason));
  }
  void replica_of(const replica& r) {
    name(r.segment, "replica segment");
    name(r.host, "replica host");
    out.u64(r.addr);
    out.u64(r.token);
  }
  void replicas(const std::vector<replica>& rs) {
    list(1, max_replicas, rs, "replica list", "replica", [&](const replica& r) { replica_of(r); });
  }

  /// A count of `width` bytes (at most `limit`), then each entry.
  template <class T, class F>
  void list(size_t width, size_t limit, const std::vector<T>& entries, const char* what,
            const char* entry, F&& each) {
    if (entries.size() > limit)
      return refuse(std::string(what) + " of " + std::to_string(entries.size())
                    + " entries; expected at most " + std::to_string(limit));
    if (width == 1)
      out.u8(static_cast<uint8_t>(entries.size()));
    else if (width == 2)
      out.u16(static_cast<uint16_t>(entries.size()));
    else
      out.u32(static_cast<uint32_t>(entries.size()));
    for (size_t i = 0; i < entries.size() && ok(); ++i) {
      path_.emplace_back(entry, i);
      each(entries[i]);
      path_.pop_back();
    }
  }

  void refuse(std::string why) {
    if (!ok())
      return;
    problem_ = std::move(why);
    for (auto it = path_.rbegin(); it != path_.rend(); ++it)
      problem_ += std::string(it == path_.rbegin() ? " in " : " of ") + it->first + " "
                  + std::to_string(it->second);
  }
  [[nodiscard]] bool ok() const noexcept { return problem_.empty(); }

  caf::expected<std::vector<uint8_t>> finish() {
    if (!ok())
      return make_error(errc::invalid_argument, std::string("store ") + message_ + ": " + problem_);
    return std::move(out.bytes());
  }

private:
  const char* message_;
  std::string problem_;
  /// The list entries being written, outermost first.
  std::vector<std::pair<const char*, size_t>> path_;
};

/// Reads one message; keeps the first problem, with the entry it is in.
class decoder {
public:
  decoder(std::span<const uint8_t> bytes, const char* message) : in(bytes), message_(message) {}

  byte_reader in;

  std::string key(bool allow_empty = false) { return in.str(2, max_key, "key", allow_empty); }
  std::string name(const char* what) { return in.str(2, max_name, what); }
  status result() {
    status s;
    auto code = in.num<uint8_t>("status code");
    if (in.ok() && code > static_cast<uint8_t>(errc_last))
      in.fail("status code " + std::to_string(code) + " is not a kvferry errc; expected 0 to "
              + std::to_string(static_cast<unsigned>(errc_last)));
    s.code = static_cast<errc>(code);
    s.reason = in.str(2, max_reason, "reason", true);
    return s;
  }
  replica replica_of() {
    replica r;
    r.segment = name("replica segment");
    r.host = name("replica host");
    r.addr = in.num<uint64_t>("replica addr");
    r.token = in.num<uint64_t>("replica token");
    return r;
  }
  void replicas(std::vector<replica>& out) {
    list(1, max_replicas, min_replica, "replica count", "replica", out,
         [&] { return replica_of(); });
  }

  /// A count of `width` bytes (at most `limit`, entries of at least `min_bytes` each), then each
  /// entry as `read_one` reads it.
  template <class T, class F>
  void list(size_t width, size_t limit, size_t min_bytes, const char* what, const char* entry,
            std::vector<T>& out, F&& read_one) {
    auto n = in.count(width, limit, min_bytes, what);
    if (!in.ok())
      return;
    out.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      out.push_back(read_one());
      if (!in.ok()) {
        where_ += std::string(where_.empty() ? " in " : " of ") + entry + " " + std::to_string(i);
        return;
      }
    }
  }

  template <class T>
  caf::expected<T> finish(T value) {
    if (in.ok() && in.left() != 0)
      in.fail_at(in.offset(), std::to_string(in.left())
                                + " unexpected bytes after the message; expected its end");
    if (!in.ok())
      return make_error(errc::malformed_frame,
                        std::string("store ") + message_ + ": " + in.problem() + where_);
    return value;
  }

private:
  const char* message_;
  /// The list entries the problem is in, innermost first.
  std::string where_;
};

} // namespace

// -- encode -------------------------------------------------------------------------------------

caf::expected<std::vector<uint8_t>> encode(const mount_request& m) {
  encoder e("mount_request");
  e.out.u64(m.client_id);
  e.name(m.client_name, "client name");
  e.name(m.host, "host");
  e.out.u64(m.fence_floor);
  size_t objects = 0;
  for (const auto& s : m.segments)
    objects += s.objects.size();
  if (objects > max_held_objects)
    e.refuse("mount of " + std::to_string(objects) + " held objects; expected at most "
             + std::to_string(max_held_objects));
  e.list(2, max_segments, m.segments, "segment list", "segment", [&](const segment_mount& s) {
    e.name(s.name, "segment name");
    e.out.u64(s.base);
    e.out.u64(s.size);
    e.list(4, max_held_objects, s.objects, "held object list", "held object",
           [&](const held_object& o) {
             e.key(o.key);
             e.out.u64(o.addr);
             e.out.u64(o.size);
             e.out.u64(o.token);
             e.out.boolean(o.has_checksum);
             e.out.u32(o.checksum);
             e.out.boolean(o.pinned);
           });
  });
  return e.finish();
}

caf::expected<std::vector<uint8_t>> encode(const mount_reply& m) {
  encoder e("mount_reply");
  e.out.u64(m.master_id);
  e.out.u32(m.ttl_ms);
  e.out.u32(m.watch_ms);
  e.list(4, max_held_objects, m.dropped, "dropped object list", "dropped object",
         [&](const dropped_object& d) {
           e.name(d.segment, "segment name");
           e.out.u64(d.addr);
           e.out.u64(d.size);
         });
  return e.finish();
}

caf::expected<std::vector<uint8_t>> encode(const unmount_request& m) {
  encoder e("unmount_request");
  e.out.u64(m.client_id);
  return e.finish();
}

caf::expected<std::vector<uint8_t>> encode(const watch_request& m) {
  encoder e("watch_request");
  e.out.u64(m.client_id);
  e.list(4, max_batch, m.done, "done list", "done id", [&](uint64_t id) { e.out.u64(id); });
  return e.finish();
}

caf::expected<std::vector<uint8_t>> encode(const watch_reply& m) {
  encoder e("watch_reply");
  e.list(4, max_batch, m.work, "instruction list", "instruction", [&](const instruction& w) {
    if (w.kind != instruction_kind::commit && w.kind != instruction_kind::fence)
      return e.refuse("instruction kind " + std::to_string(static_cast<unsigned>(w.kind))
                      + " is neither commit (0) nor fence (1)");
    e.out.u64(w.id);
    e.out.u8(static_cast<uint8_t>(w.kind));
    e.name(w.segment, "segment name");
    e.out.u64(w.addr);
    e.out.u64(w.size);
    e.out.u64(w.token);
    e.key(w.key, w.kind == instruction_kind::fence);
    e.out.boolean(w.has_checksum);
    e.out.u32(w.checksum);
    e.out.boolean(w.pinned);
  });
  return e.finish();
}

caf::expected<std::vector<uint8_t>> encode(const put_start_request& m) {
  encoder e("put_start_request");
  e.out.u64(m.client_id);
  e.list(4, max_batch, m.entries, "entry list", "entry", [&](const put_entry& p) {
    e.key(p.key);
    e.out.u64(p.size);
    if (p.replicas < 1 || p.replicas > max_replicas)
      return e.refuse("replica count " + std::to_string(p.replicas) + "; expected 1 to "
                      + std::to_string(max_replicas));
    e.out.u8(p.replicas);
    e.out.boolean(p.pin);
    e.out.boolean(p.upsert);
  });
  return e.finish();
}

caf::expected<std::vector<uint8_t>> encode(const put_start_reply& m) {
  encoder e("put_start_reply");
  e.list(4, max_batch, m.slots, "slot list", "slot", [&](const put_slot& s) {
    e.result(s.result);
    e.out.u64(s.put_id);
    e.replicas(s.replicas);
  });
  return e.finish();
}

caf::expected<std::vector<uint8_t>> encode(const put_finish_request& m) {
  encoder e("put_finish_request");
  e.out.u64(m.client_id);
  e.list(4, max_batch, m.entries, "entry list", "entry", [&](const put_end_entry& p) {
    e.key(p.key);
    e.out.u64(p.put_id);
    e.out.u64(p.token);
    e.out.boolean(p.has_checksum);
    e.out.u32(p.checksum);
  });
  return e.finish();
}

caf::expected<std::vector<uint8_t>> encode(const keys_request& m) {
  encoder e("keys_request");
  e.out.u64(m.client_id);
  e.out.boolean(m.force);
  e.list(4, max_batch, m.keys, "key list", "key", [&](const std::string& k) { e.key(k); });
  return e.finish();
}

caf::expected<std::vector<uint8_t>> encode(const statuses_reply& m) {
  encoder e("statuses_reply");
  e.list(4, max_batch, m.results, "status list", "status", [&](const status& s) { e.result(s); });
  return e.finish();
}

caf::expected<std::vector<uint8_t>> encode(const get_replicas_reply& m) {
  encoder e("get_replicas_reply");
  e.list(4, max_batch, m.objects, "object list", "object", [&](const object_location& o) {
    e.result(o.result);
    e.out.u64(o.size);
    e.out.boolean(o.has_checksum);
    e.out.u32(o.checksum);
    e.out.u32(o.lease_ms);
    e.replicas(o.replicas);
  });
  return e.finish();
}

caf::expected<std::vector<uint8_t>> encode(const stats_request& m) {
  encoder e("stats_request");
  e.out.u64(m.client_id);
  return e.finish();
}

caf::expected<std::vector<uint8_t>> encode(const stats_reply& m) {
  encoder e("stats_reply");
  if (m.report.size() > max_report)
    e.refuse("report of " + std::to_string(m.report.size()) + " bytes; expected at most "
             + std::to_string(max_report));
  e.out.str32(m.report);
  return e.finish();
}

// -- decode -------------------------------------------------------------------------------------

caf::expected<mount_request> decode_mount_request(std::span<const uint8_t> bytes) {
  decoder d(bytes, "mount_request");
  mount_request m;
  m.client_id = d.in.num<uint64_t>("client id");
  m.client_name = d.name("client name");
  m.host = d.name("host");
  m.fence_floor = d.in.num<uint64_t>("fence floor");
  size_t objects = 0;
  d.list(2, max_segments, min_segment_mount, "segment count", "segment", m.segments, [&] {
    segment_mount s;
    s.name = d.name("segment name");
    s.base = d.in.num<uint64_t>("segment base");
    s.size = d.in.num<uint64_t>("segment size");
    // The objects of all segments together stay within max_held_objects.
    d.list(4, max_held_objects - objects, min_held_object, "held object count", "held object",
           s.objects, [&] {
             held_object o;
             o.key = d.key();
             o.addr = d.in.num<uint64_t>("object addr");
             o.size = d.in.num<uint64_t>("object size");
             o.token = d.in.num<uint64_t>("object token");
             o.has_checksum = d.in.boolean("has_checksum");
             o.checksum = d.in.num<uint32_t>("checksum");
             o.pinned = d.in.boolean("pinned");
             return o;
           });
    objects += s.objects.size();
    return s;
  });
  return d.finish(std::move(m));
}

caf::expected<mount_reply> decode_mount_reply(std::span<const uint8_t> bytes) {
  decoder d(bytes, "mount_reply");
  mount_reply m;
  m.master_id = d.in.num<uint64_t>("master id");
  m.ttl_ms = d.in.num<uint32_t>("ttl_ms");
  m.watch_ms = d.in.num<uint32_t>("watch_ms");
  d.list(4, max_held_objects, min_dropped_object, "dropped object count", "dropped object",
         m.dropped, [&] {
           dropped_object o;
           o.segment = d.name("segment name");
           o.addr = d.in.num<uint64_t>("object addr");
           o.size = d.in.num<uint64_t>("object size");
           return o;
         });
  return d.finish(std::move(m));
}

caf::expected<unmount_request> decode_unmount_request(std::span<const uint8_t> bytes) {
  decoder d(bytes, "unmount_request");
  unmount_request m;
  m.client_id = d.in.num<uint64_t>("client id");
  return d.finish(std::move(m));
}

caf::expected<watch_request> decode_watch_request(std::span<const uint8_t> bytes) {
  decoder d(bytes, "watch_request");
  watch_request m;
  m.client_id = d.in.num<uint64_t>("client id");
  d.list(4, max_batch, 8, "done count", "done id", m.done,
         [&] { return d.in.num<uint64_t>("done id"); });
  return d.finish(std::move(m));
}

caf::expected<watch_reply> decode_watch_reply(std::span<const uint8_t> bytes) {
  decoder d(bytes, "watch_reply");
  watch_reply m;
  d.list(4, max_batch, min_instruction, "instruction count", "instruction", m.work, [&] {
    instruction w;
    w.id = d.in.num<uint64_t>("instruction id");
    auto kind = d.in.num<uint8_t>("instruction kind");
    if (d.in.ok() && kind > static_cast<uint8_t>(instruction_kind::fence))
      d.in.fail("instruction kind " + std::to_string(kind)
                + " is neither commit (0) nor fence (1)");
    w.kind = static_cast<instruction_kind>(kind);
    w.segment = d.name("segment name");
    w.addr = d.in.num<uint64_t>("instruction addr");
    w.size = d.in.num<uint64_t>("instruction size");
    w.token = d.in.num<uint64_t>("instruction token");
    // A fence names a range, not an object: its key may be empty.
    w.key = d.key(w.kind == instruction_kind::fence);
    w.has_checksum = d.in.boolean("has_checksum");
    w.checksum = d.in.num<uint32_t>("checksum");
    w.pinned = d.in.boolean("pinned");
    return w;
  });
  return d.finish(std::move(m));
}

caf::expected<put_start_request> decode_put_start_request(std::span<const uint8_t> bytes) {
  decoder d(bytes, "put_start_request");
  put_start_request m;
  m.client_id = d.in.num<uint64_t>("client id");
  d.list(4, max_batch, min_put_entry, "entry count", "entry", m.entries, [&] {
    put_entry p;
    p.key = d.key();
    p.size = d.in.num<uint64_t>("size");
    p.replicas = d.in.num<uint8_t>("replica count");
    if (d.in.ok() && (p.replicas < 1 || p.replicas > max_replicas))
      d.in.fail("replica count " + std::to_string(p.replicas) + "; expected 1 to "
                + std::to_string(max_replicas));
    p.pin = d.in.boolean("pin");
    p.upsert = d.in.boolean("upsert");
    return p;
  });
  return d.finish(std::move(m));
}

caf::expected<put_start_reply> decode_put_start_reply(std::span<const uint8_t> bytes) {
  decoder d(bytes, "put_start_reply");
  put_start_reply m;
  d.list(4, max_batch, min_put_slot, "slot count", "slot", m.slots, [&] {
    put_slot s;
    s.result = d.result();
    s.put_id = d.in.num<uint64_t>("put id");
    d.replicas(s.replicas);
    return s;
  });
  return d.finish(std::move(m));
}

caf::expected<put_finish_request> decode_put_finish_request(std::span<const uint8_t> bytes) {
  decoder d(bytes, "put_finish_request");
  put_finish_request m;
  m.client_id = d.in.num<uint64_t>("client id");
  d.list(4, max_batch, min_put_end_entry, "entry count", "entry", m.entries, [&] {
    put_end_entry p;
    p.key = d.key();
    p.put_id = d.in.num<uint64_t>("put id");
    p.token = d.in.num<uint64_t>("token");
    p.has_checksum = d.in.boolean("has_checksum");
    p.checksum = d.in.num<uint32_t>("checksum");
    return p;
  });
  return d.finish(std::move(m));
}

caf::expected<keys_request> decode_keys_request(std::span<const uint8_t> bytes) {
  decoder d(bytes, "keys_request");
  keys_request m;
  m.client_id = d.in.num<uint64_t>("client id");
  m.force = d.in.boolean("force");
  d.list(4, max_batch, min_key, "key count", "key", m.keys, [&] { return d.key(); });
  return d.finish(std::move(m));
}

caf::expected<statuses_reply> decode_statuses_reply(std::span<const uint8_t> bytes) {
  decoder d(bytes, "statuses_reply");
  statuses_reply m;
  d.list(4, max_batch, min_status, "status count", "status", m.results, [&] { return d.result(); });
  return d.finish(std::move(m));
}

caf::expected<get_replicas_reply> decode_get_replicas_reply(std::span<const uint8_t> bytes) {
  decoder d(bytes, "get_replicas_reply");
  get_replicas_reply m;
  d.list(4, max_batch, min_object_location, "object count", "object", m.objects, [&] {
    object_location o;
    o.result = d.result();
    o.size = d.in.num<uint64_t>("size");
    o.has_checksum = d.in.boolean("has_checksum");
    o.checksum = d.in.num<uint32_t>("checksum");
    o.lease_ms = d.in.num<uint32_t>("lease_ms");
    d.replicas(o.replicas);
    return o;
  });
  return d.finish(std::move(m));
}

caf::expected<stats_request> decode_stats_request(std::span<const uint8_t> bytes) {
  decoder d(bytes, "stats_request");
  stats_request m;
  m.client_id = d.in.num<uint64_t>("client id");
  return d.finish(std::move(m));
}

caf::expected<stats_reply> decode_stats_reply(std::span<const uint8_t> bytes) {
  decoder d(bytes, "stats_reply");
  stats_reply m;
  m.report = d.in.str(4, max_report, "report", true);
  return d.finish(std::move(m));
}

} // namespace kvferry::transport::store
