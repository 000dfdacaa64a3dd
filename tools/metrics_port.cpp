#include "tools/metrics_port.hpp"

#include <atomic>
#include <cstdio>

#include <CLI/CLI.hpp>

#include "config/error.hpp"

namespace kvferry::tools {

void add_metrics_options(CLI::App& cmd, metrics_options& options) {
  cmd.add_option("--metrics-port", options.port,
                 "serve Prometheus metrics on this port at /metrics (default 0: off)");
  cmd.add_option("--metrics-host", options.host,
                 "address the metrics port binds to (default: the command's own address)");
  cmd.add_option("--metrics-timeout-ms", options.timeout_ms,
                 "a metrics request must arrive, and its response be taken, within this")
    ->check(CLI::Range(uint64_t{10}, uint64_t{3600000}));
}

bool metrics_port::start(const metrics_options& options, const std::string& default_host,
                         const std::string& who, std::function<void(metrics_text&)> collect) {
  if (options.port == 0)
    return true;
  transport::http::server_options o;
  o.bind_host = options.host.empty() ? default_host : options.host;
  o.port = options.port;
  o.name = who + " metrics";
  o.timeout = std::chrono::milliseconds{options.timeout_ms};
  // The server's own counters are part of each scrape; it exists only once start() returned.
  auto self = std::make_shared<std::atomic<transport::http::server*>>(nullptr);
  auto render = [collect = std::move(collect), self] {
    metrics_text out;
    collect(out);
    if (auto* s = self->load())
      add_http_metrics(out, s->counters());
    return out.render();
  };
  auto server = transport::http::start_metrics_server(o, std::move(render));
  if (!server) {
    std::fprintf(stderr, "%s: cannot serve metrics on %s:%u: %s\n", who.c_str(),
                 o.bind_host.c_str(), static_cast<unsigned>(o.port),
                 describe(server.error()).c_str());
    return false;
  }
  server_ = std::move(*server);
  self->store(server_.get());
  std::printf("%s: metrics on http://%s:%u/metrics\n", who.c_str(), o.bind_host.c_str(),
              static_cast<unsigned>(server_->port()));
  return true;
}

void metrics_port::stop() {
  if (server_)
    server_->stop();
  server_.reset();
}

} // namespace kvferry::tools
