#include <cstdio>

#include "actors/store/client.hpp"
#include "actors/store/metrics.hpp"
#include "config/log.hpp"
#include "tools/commands.hpp"
#include "tools/metrics_port.hpp"
#include "tools/signals.hpp"

namespace kvferry::tools {

int run_store_node(const config::settings& settings, const metrics_options& metrics) {
  auto c = store::client::create(settings);
  if (!c) {
    std::fprintf(stderr, "kvferry store-node: %s\n", describe(c.error()).c_str());
    return 1;
  }
  std::printf("kvferry store-node: segment %s (%llu bytes) mounted at the master %s\n",
              (*c)->segment_name().c_str(),
              static_cast<unsigned long long>(settings.global_segment_size),
              settings.master_server_address.c_str());
  std::printf("kvferry store-node: peers can make it hold at most %llu bytes (network memory "
              "bound)\n",
              static_cast<unsigned long long>((*c)->engine().network_memory_bound()));
  metrics_port port;
  if (!port.start(metrics, settings.local_hostname, "kvferry store-node",
                  [cl = c->get()](metrics_text& out) { store::add_client_metrics(out, *cl); }))
    return 1;
  std::printf("segment name: %s\n", (*c)->segment_name().c_str());
  std::fflush(stdout);
  int sig = wait_for_stop_signal();
  port.stop();
  log::debug("store-node '{}': stopping on signal {}", (*c)->segment_name(), sig);
  auto k = (*c)->counters();
  auto held = (*c)->held_objects();
  (*c)->close();
  std::printf("kvferry store-node: held %zu objects; %llu commits, %llu fences, %llu mounts, "
              "%llu watch errors\n",
              held, static_cast<unsigned long long>(k.commits),
              static_cast<unsigned long long>(k.fences), static_cast<unsigned long long>(k.mounts),
              static_cast<unsigned long long>(k.watch_errors));
  std::printf("kvferry store-node: stopped\n");
  return 0;
}

} // namespace kvferry::tools
