#include "actors/store/metrics.hpp"

#include <optional>
#include <utility>

#include <boost/json.hpp>

namespace kvferry::store {

namespace {

using kind = metrics_text::kind;

/// An unsigned integer of a report (integers come back as int64 or uint64).
std::optional<uint64_t> integer(const boost::json::value* v) {
  if (v == nullptr)
    return std::nullopt;
  if (v->is_uint64())
    return v->as_uint64();
  if (v->is_int64() && v->as_int64() >= 0)
    return static_cast<uint64_t>(v->as_int64());
  return std::nullopt;
}

std::optional<double> real(const boost::json::value* v) {
  if (v == nullptr)
    return std::nullopt;
  if (v->is_double())
    return v->as_double();
  if (auto i = integer(v))
    return static_cast<double>(*i);
  return std::nullopt;
}

struct gauge_field {
  const char* key;
  const char* name;
  const char* help;
};

constexpr gauge_field store_gauges[] = {
  {"objects", "kvferry_store_objects", "Objects in the store (visible: their put ended)."},
  {"object_bytes", "kvferry_store_object_bytes", "Bytes of the objects, every replica counted."},
  {"capacity", "kvferry_store_capacity_bytes", "Bytes of the mounted segments."},
  {"used", "kvferry_store_used_bytes",
   "Bytes allocated in the mounted segments (objects, unfinished puts, space being fenced)."},
  {"fencing", "kvferry_store_fencing_bytes",
   "Bytes freed but not yet fenced by their holder (not reusable yet)."},
  {"puts_in_progress", "kvferry_store_puts_in_progress", "Puts started and not yet ended."},
  {"key_bytes", "kvferry_store_key_bytes", "Bytes of the keys of objects and unfinished puts."},
  {"clients", "kvferry_store_clients", "Clients mounted at the master."},
  {"leased_objects", "kvferry_store_leased_objects", "Objects a get holds a lease on now."},
};

struct counter_field {
  const char* key;
  const char* help;
};

/// Help texts of the report's counters; a counter not listed here is exported all the same.
constexpr counter_field store_counters[] = {
  {"puts_started", "Puts started (put_start entries that got space)."},
  {"puts_ended", "Puts ended: the object became visible."},
  {"puts_revoked", "Puts revoked by their client (a WRITE failed, or put_end got no answer)."},
  {"puts_timed_out", "Unfinished puts revoked at the put timeout."},
  {"gets", "Objects asked for by get (get_replicas entries)."},
  {"removes", "Objects removed."},
  {"evictions", "Objects evicted above the high watermark."},
  {"leases_granted", "Leases granted to gets."},
  {"clients_declared_dead", "Clients declared dead (silent for the ttl)."},
  {"fences_sent", "Fence instructions handed to holders (space being freed)."},
  {"fences_done", "Fences acknowledged by holders (space reusable)."},
  {"late_acks_ignored", "Acknowledgements for unknown work, counted and ignored."},
  {"commits_timed_out", "Replicas dropped because their holder did not commit in time."},
};

} // namespace

bool add_store_report_metrics(metrics_text& out, std::string_view report_json) {
  boost::system::error_code ec;
  auto parsed = boost::json::parse(report_json, ec);
  if (ec || !parsed.is_object())
    return false;
  const auto& r = parsed.as_object();
  for (const auto& g : store_gauges)
    if (auto v = integer(r.if_contains(g.key)))
      out.add(g.name, kind::gauge, g.help, {}, *v);
  if (const auto* segs = r.if_contains("segments"); segs != nullptr && segs->is_array()) {
    out.add("kvferry_store_segments", kind::gauge, "Segments mounted.", {},
            static_cast<uint64_t>(segs->as_array().size()));
    for (const auto& s : segs->as_array()) {
      if (!s.is_object())
        continue;
      const auto& o = s.as_object();
      const auto* name = o.if_contains("name");
      if (name == nullptr || !name->is_string())
        continue;
      std::string_view seg(name->as_string().data(), name->as_string().size());
      if (auto v = integer(o.if_contains("size")))
        out.add("kvferry_store_segment_size_bytes", kind::gauge, "Bytes of a mounted segment.",
                {{"segment", seg}}, *v);
      if (auto v = integer(o.if_contains("free")))
        out.add("kvferry_store_segment_free_bytes", kind::gauge,
                "Free bytes of a mounted segment.", {{"segment", seg}}, *v);
      if (auto v = real(o.if_contains("fragmentation")))
        out.add("kvferry_store_segment_fragmentation", kind::gauge,
                "1 - largest free block / free bytes of a mounted segment.", {{"segment", seg}},
                *v);
    }
  }
  if (const auto* c = r.if_contains("counters"); c != nullptr && c->is_object()) {
    const auto& counters = c->as_object();
    auto help_of = [](std::string_view key) -> const char* {
      for (const auto& f : store_counters)
        if (key == f.key)
          return f.help;
      return "A counter of the store master's report.";
    };
    for (const auto& [key, value] : counters) {
      auto v = integer(&value);
      if (!v)
        continue;
      // Report keys are [a-z_]; anything else would not make a metric name.
      bool plain = !key.empty();
      for (char ch : key)
        plain = plain && ((ch >= 'a' && ch <= 'z') || ch == '_' || (ch >= '0' && ch <= '9'));
      if (!plain)
        continue;
      std::string name = "kvferry_store_" + std::string(key) + "_total";
      out.add(name, kind::counter, help_of(key), {}, *v);
    }
  }
  return true;
}

void add_master_metrics(metrics_text& out, const master_node& node) {
  auto report = node.report();
  const bool up = report && add_store_report_metrics(out, *report);
  out.add("kvferry_store_report_up", kind::gauge,
          "1 when the master actor answered this scrape with its report.", {},
          uint64_t{up ? 1u : 0u});
  const auto c = node.counters();
  out.add("kvferry_served_requests_total", kind::counter,
          "Requests served by a port (data: request entries; control and master: requests).",
          {{"port", "master"}}, c.requests);
  out.add("kvferry_requests_refused_total", kind::counter,
          "Requests a port refused, by reason (data: entries out of range, for an earlier "
          "incarnation, fenced, over the reply budget; malformed: messages that failed "
          "validation).",
          {{"port", "master"}, {"reason", "malformed"}}, c.malformed);
  add_port_metrics(out, {}, "master", c.connections, node.started_with().reply_budget);
  out.add("kvferry_network_memory_bound_bytes", kind::gauge,
          "The most memory peers can make this node hold through its ports.", {},
          node.network_memory_bound());
}

std::string render_metrics(const master_node& node) {
  metrics_text out;
  add_master_metrics(out, node);
  return out.render();
}

void add_client_metrics(metrics_text& out, client& c) {
  add_engine_metrics(out, c.engine());
  const auto k = c.counters();
  const std::string& seg = c.segment_name();
  out.add("kvferry_store_client_mounts_total", kind::counter,
          "Times this client mounted its segment at the master.", {{"segment", seg}}, k.mounts);
  out.add("kvferry_store_client_commits_total", kind::counter,
          "Objects this holder committed (master's instruction).", {{"segment", seg}}, k.commits);
  out.add("kvferry_store_client_fences_total", kind::counter,
          "Ranges this holder fenced (master's instruction).", {{"segment", seg}}, k.fences);
  out.add("kvferry_store_client_watch_errors_total", kind::counter,
          "Watch requests that failed (master gone, slow or restarted).", {{"segment", seg}},
          k.watch_errors);
  out.add("kvferry_store_client_replica_failovers_total", kind::counter,
          "Gets that read another replica after one failed.", {{"segment", seg}},
          k.replica_failovers);
  out.add("kvferry_store_client_lease_expiries_total", kind::counter,
          "Gets whose read ended after the object's lease expired (errc::lease_expired).",
          {{"segment", seg}}, k.lease_expiries);
  out.add("kvferry_store_client_held_objects", kind::gauge,
          "Objects this holder holds (committed, not fenced since).", {{"segment", seg}},
          static_cast<uint64_t>(c.held_objects()));
}

std::string render_metrics(client& c) {
  metrics_text out;
  add_client_metrics(out, c);
  return out.render();
}

} // namespace kvferry::store
