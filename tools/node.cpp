#include <cstdio>
#include <cstdlib>
#include <cstring>


#include "actors/transfer_engine.hpp"
#include "config/log.hpp"
#include "tools/commands.hpp"
#include "tools/metrics_port.hpp"
#include "tools/pattern.hpp"
#include "tools/signals.hpp"

namespace kvferry::tools {

int run_node(const config::settings& settings, const node_options& options) {
  auto rt = runtime::create({.network = true});
  if (!rt) {
    std::fprintf(stderr, "kvferry node: %s\n", describe(rt.error()).c_str());
    return 1;
  }
  auto engine = transfer_engine::create(*rt, settings);
  if (!engine) {
    std::fprintf(stderr, "kvferry node: %s\n", describe(engine.error()).c_str());
    return 1;
  }
  uint64_t bytes = options.segment_bytes ? options.segment_bytes : settings.global_segment_size;
  mapped_buffer buffer(bytes);
  if (buffer.data == nullptr) {
    std::fprintf(stderr, "kvferry node: cannot map %llu bytes for the segment\n",
                 static_cast<unsigned long long>(bytes));
    return 1;
  }
  if (options.fill_seed != 0)
    fill_pattern(buffer.data, bytes, options.fill_seed);
  if (auto err = (*engine)->register_memory(buffer.data, bytes, "cpu:0")) {
    std::fprintf(stderr, "kvferry node: %s\n", describe(err).c_str());
    return 1;
  }
  std::printf("kvferry node: serving segment %s (%llu bytes at %p)\n",
              (*engine)->segment_name().c_str(), static_cast<unsigned long long>(bytes),
              static_cast<void*>(buffer.data));
  std::printf("kvferry node: peers can make it hold at most %llu bytes (network memory bound)\n",
              static_cast<unsigned long long>((*engine)->network_memory_bound()));
  metrics_port metrics;
  if (!metrics.start(options.metrics, settings.local_hostname, "kvferry node",
                     [e = engine->get()](metrics_text& out) { add_engine_metrics(out, *e); }))
    return 1;
  std::printf("segment name: %s\n", (*engine)->segment_name().c_str());
  std::fflush(stdout);
  int sig = wait_for_stop_signal();
  metrics.stop();
  log::debug("node '{}': stopping on signal {}", (*engine)->segment_name(), sig);
  auto c = (*engine)->server_counters();
  auto k = (*engine)->control_counters();
  auto inbox = (*engine)->notification_counters();
  (*engine)->shutdown();
  std::printf("kvferry node: served %llu requests (%llu reads, %llu writes), %llu refused, "
              "%llu malformed frames\n",
              static_cast<unsigned long long>(c.requests), static_cast<unsigned long long>(c.reads),
              static_cast<unsigned long long>(c.writes), static_cast<unsigned long long>(c.refused),
              static_cast<unsigned long long>(c.malformed));
  std::printf("kvferry node: connections: data %llu accepted, %llu evicted, %llu closed for "
              "protocol violations, %llu handshake timeouts; control %llu accepted, %llu evicted, "
              "%llu violations, %llu control requests, %llu malformed\n",
              static_cast<unsigned long long>(c.connections.accepted),
              static_cast<unsigned long long>(c.connections.evicted),
              static_cast<unsigned long long>(c.connections.violations),
              static_cast<unsigned long long>(c.connections.handshake_timeouts),
              static_cast<unsigned long long>(k.connections.accepted),
              static_cast<unsigned long long>(k.connections.evicted),
              static_cast<unsigned long long>(k.connections.violations),
              static_cast<unsigned long long>(k.requests),
              static_cast<unsigned long long>(k.malformed));
  if (inbox)
    std::printf("kvferry node: notifications: %llu waiting, %llu refused (inbox full)\n",
                static_cast<unsigned long long>(inbox->first),
                static_cast<unsigned long long>(inbox->second));
  std::printf("kvferry node: stopped\n");
  return 0;
}

} // namespace kvferry::tools
