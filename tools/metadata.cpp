// `kvferry metadata`: a server of Mooncake's HTTP metadata protocol (transport/metadata).
#include <algorithm>
#include <cstdio>

#include "actors/metrics.hpp"
#include "config/error.hpp"
#include "config/log.hpp"
#include "tools/commands.hpp"
#include "tools/metrics_port.hpp"
#include "tools/signals.hpp"
#include "transport/metadata/http_server.hpp"

namespace kvferry::tools {

namespace {

void add_metadata_metrics(metrics_text& out, const transport::metadata::http_server& server) {
  using kind = metrics_text::kind;
  auto c = server.counters();
  const auto& o = server.options();
  out.add("kvferry_metadata_keys", kind::gauge, "Keys the metadata service holds", {}, c.keys);
  out.add("kvferry_metadata_expiring_keys", kind::gauge, "Keys put with a TTL", {},
          c.expiring_keys);
  out.add("kvferry_metadata_stored_bytes", kind::gauge,
          "Bytes of keys and values counted against the limit", {}, c.stored_bytes);
  out.add("kvferry_metadata_stored_bytes_limit", kind::gauge, "The limit on stored bytes", {},
          static_cast<uint64_t>(o.max_stored_bytes));
  out.add("kvferry_metadata_expired_total", kind::counter, "Entries removed as their TTL ran out",
          {}, c.expired);
  const char* requests = "Requests by method";
  out.add("kvferry_metadata_requests_total", kind::counter, requests, {{"method", "GET"}}, c.gets);
  out.add("kvferry_metadata_requests_total", kind::counter, requests, {{"method", "PUT"}}, c.puts);
  out.add("kvferry_metadata_requests_total", kind::counter, requests, {{"method", "DELETE"}},
          c.deletes);
  const char* responses = "Responses by status";
  const std::pair<const char*, uint64_t> by_status[] = {
    {"200", c.ok},          {"400", c.bad_request},          {"404", c.not_found},
    {"405", c.method_not_allowed}, {"408", c.request_timeout}, {"413", c.too_large},
    {"414", c.uri_too_long}, {"431", c.head_too_large},      {"503", c.unavailable},
    {"507", c.insufficient_storage}};
  for (const auto& [status, n] : by_status)
    out.add("kvferry_metadata_responses_total", kind::counter, responses, {{"status", status}}, n);
  out.add("kvferry_metadata_connections_accepted_total", kind::counter, "Connections accepted",
          {}, c.accepted);
  out.add("kvferry_metadata_connections_open", kind::gauge, "Connections open", {},
          c.open_connections);
  out.add("kvferry_metadata_connections_evicted_total", kind::counter,
          "Connections closed to stay within max_connections", {}, c.evicted);
  out.add("kvferry_metadata_timeouts_total", kind::counter,
          "Connections closed as a request or a response ran past the timeout", {}, c.timeouts);
  out.add("kvferry_metadata_network_memory_bound_bytes", kind::gauge,
          "What peers can make the service hold at most", {}, server.memory_bound());
}

} // namespace

int run_metadata(const metadata_options& options) {
  transport::metadata::http_server_options o;
  o.bind_host = options.host;
  o.port = options.port;
  o.max_keys = options.max_keys;
  o.max_value_bytes = options.max_value_bytes;
  o.max_stored_bytes = options.max_stored_bytes;
  o.max_connections = options.max_connections;
  o.timeout = std::chrono::milliseconds{options.timeout_ms};
  // Bodies arriving at once: 64 MiB (many small values, or 16 of the largest by default), and
  // always room for one of the largest.
  o.max_receiving_bytes = std::max<uint64_t>(64ULL << 20, options.max_value_bytes);
  auto server = transport::metadata::http_server::start(o);
  if (!server) {
    std::fprintf(stderr, "kvferry metadata: %s\n", describe(server.error()).c_str());
    return 1;
  }
  auto& s = **server;
  std::printf("kvferry metadata: listening on %s:%u (http://%s:%u%s)\n", o.bind_host.c_str(),
              static_cast<unsigned>(s.port()), o.bind_host.c_str(),
              static_cast<unsigned>(s.port()), o.path.c_str());
  std::printf("kvferry metadata: at most %llu keys, values up to %llu bytes, %llu bytes stored; "
              "peers can make it hold at most %llu bytes (network memory bound)\n",
              static_cast<unsigned long long>(o.max_keys),
              static_cast<unsigned long long>(o.max_value_bytes),
              static_cast<unsigned long long>(o.max_stored_bytes),
              static_cast<unsigned long long>(s.memory_bound()));
  metrics_port metrics;
  if (!metrics.start(options.metrics, o.bind_host, "kvferry metadata",
                     [&s](metrics_text& out) { add_metadata_metrics(out, s); }))
    return 1;
  std::fflush(stdout);
  int sig = wait_for_stop_signal();
  metrics.stop();
  log::debug("metadata: stopping on signal {}", sig);
  s.stop();
  auto c = s.counters();
  std::printf("kvferry metadata: served %llu GET, %llu PUT, %llu DELETE; %llu keys left, %llu "
              "expired; connections %llu accepted, %llu evicted, %llu timed out\n",
              static_cast<unsigned long long>(c.gets), static_cast<unsigned long long>(c.puts),
              static_cast<unsigned long long>(c.deletes), static_cast<unsigned long long>(c.keys),
              static_cast<unsigned long long>(c.expired),
              static_cast<unsigned long long>(c.accepted),
              static_cast<unsigned long long>(c.evicted),
              static_cast<unsigned long long>(c.timeouts));
  std::printf("kvferry metadata: stopped\n");
  std::fflush(stdout);
  return 0;
}

} // namespace kvferry::tools
