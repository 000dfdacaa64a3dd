#include <cstdio>

#include "actors/store/master.hpp"
#include "actors/store/metrics.hpp"
#include "config/log.hpp"
#include "tools/commands.hpp"
#include "tools/metrics_port.hpp"
#include "tools/signals.hpp"

namespace kvferry::tools {

int run_master(const config::settings& settings, const master_options& options) {
  store::master_node::options o;
  o.bind_host = options.host;
  o.port = options.port;
  if (o.port == 0) {
    // The port of master_server_address, as clients will dial it; else Mooncake's default.
    const auto& address = settings.master_server_address;
    unsigned port = 0;
    auto colon = address.rfind(':');
    if (colon != std::string::npos && std::sscanf(address.c_str() + colon + 1, "%u", &port) == 1
        && port > 0 && port < 65536)
      o.port = static_cast<uint16_t>(port);
    else
      o.port = 50051;
  }
  auto& p = o.master.policy;
  p.lease = std::chrono::milliseconds{options.lease_ms};
  p.ttl = std::chrono::milliseconds{options.ttl_ms};
  p.watch_interval = std::chrono::milliseconds{options.watch_ms};
  p.put_timeout = std::chrono::milliseconds{options.put_timeout_ms};
  p.commit_timeout = std::chrono::milliseconds{options.commit_timeout_ms};
  p.high_watermark = options.high_watermark;
  p.evict_ratio = options.evict_ratio;
  if (p.watch_interval >= p.ttl) {
    std::fprintf(stderr, "kvferry master: --watch-ms (%llu) must be below --ttl-ms (%llu): clients "
                         "renew their heartbeat once per watch\n",
                 static_cast<unsigned long long>(options.watch_ms),
                 static_cast<unsigned long long>(options.ttl_ms));
    return 2;
  }
  o.limits.max_connections = settings.max_connections;
  o.limits.max_connections_per_host = settings.max_connections_per_host;
  o.limits.handshake_timeout = settings.handshake_timeout;
  auto node = store::master_node::start(o);
  if (!node) {
    std::fprintf(stderr, "kvferry master: %s\n", describe(node.error()).c_str());
    return 1;
  }
  std::printf("kvferry master: listening on %s:%u (master id %s)\n", o.bind_host.c_str(),
              static_cast<unsigned>((*node)->port()), hex((*node)->master_id()).c_str());
  std::printf("kvferry master: lease %llu ms, client ttl %llu ms, put timeout %llu ms, eviction "
              "above %.2f of capacity\n",
              static_cast<unsigned long long>(options.lease_ms),
              static_cast<unsigned long long>(options.ttl_ms),
              static_cast<unsigned long long>(options.put_timeout_ms), options.high_watermark);
  std::printf("kvferry master: clients can make its port hold at most %llu bytes (network memory "
              "bound)\n",
              static_cast<unsigned long long>((*node)->network_memory_bound()));
  metrics_port metrics;
  if (!metrics.start(options.metrics, o.bind_host, "kvferry master",
                     [n = node->get()](metrics_text& out) { store::add_master_metrics(out, *n); }))
    return 1;
  std::fflush(stdout);
  int sig = wait_for_stop_signal();
  metrics.stop();
  log::debug("store master: stopping on signal {}", sig);
  auto c = (*node)->counters();
  (*node)->stop();
  std::printf("kvferry master: served %llu requests, %llu malformed; connections %llu accepted, "
              "%llu evicted, %llu violations\n",
              static_cast<unsigned long long>(c.requests),
              static_cast<unsigned long long>(c.malformed),
              static_cast<unsigned long long>(c.connections.accepted),
              static_cast<unsigned long long>(c.connections.evicted),
              static_cast<unsigned long long>(c.connections.violations));
  std::printf("kvferry master: stopped\n");
  return 0;
}

} // namespace kvferry::tools
