#pragma once
/// The optional Prometheus metrics port of the long-running commands (`kvferry node`, `master`,
/// `store-node`): `--metrics-port P` (0 or absent: off), `--metrics-host H` (default: the address
/// the command's other ports bind to). Serves GET /metrics on transport/http's bounded server.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "actors/metrics.hpp"
#include "tools/commands.hpp"
#include "transport/http/server.hpp"

namespace CLI {
class App;
} // namespace CLI

namespace kvferry::tools {

/// Declares --metrics-port, --metrics-host and --metrics-timeout-ms on a subcommand.
void add_metrics_options(CLI::App& cmd, metrics_options& options);

/// The running metrics port of a command (nothing when it is off).
class metrics_port {
public:
  /// Starts the port when options.port != 0; `collect` adds the command's metrics to each
  /// scrape (the port's own counters are added after them). Prints where it listens, prefixed
  /// with `who` ("kvferry node"). Returns false (having printed why) when it cannot listen.
  [[nodiscard]] bool start(const metrics_options& options, const std::string& default_host,
                           const std::string& who, std::function<void(metrics_text&)> collect);
  /// Stops the port (before what `collect` reads is torn down). Idempotent.
  void stop();
  ~metrics_port() { stop(); }

private:
  std::unique_ptr<transport::http::server> server_;
};

} // namespace kvferry::tools
