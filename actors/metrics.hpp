#pragma once
/// Prometheus metrics of a transfer engine, in the text exposition format 0.0.4, for `kvferry node`
/// and for applications that embed engines (serve them with transport::http::start_metrics_server,
/// or with any HTTP server they already run). The store's metrics are in actors/store/metrics.hpp.
///
/// Every value is a read of a counter its owner keeps (the coordinator, the data and control
/// servers, the segment owner); rendering changes nothing. One scrape asks the engine's coordinator
/// and segment owner once each (actor requests; a stopped engine renders without them).
///
///   std::string text = kvferry::render_metrics(*engine);        // one engine
///   kvferry::metrics_text out;                                  // several, one document
///   kvferry::add_engine_metrics(out, *prefill);
///   kvferry::add_engine_metrics(out, *decode);
///   std::string text = out.render();

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "actors/transfer_engine.hpp"
#include "transport/http/server.hpp"

namespace kvferry {

/// A Prometheus text document being built: metric families in the order first added, each with
/// its HELP and TYPE lines once, then its samples. Label values are escaped as the format says.
class metrics_text {
public:
  enum class kind : uint8_t { counter, gauge };
  using label = std::pair<std::string_view, std::string_view>;
  using labels = std::vector<label>;

  /// Adds one sample of family `name` (created with `type` and `help` on first use; names and
  /// label names are constants of the caller: [a-zA-Z_:][a-zA-Z0-9_:]*).
  void add(std::string_view name, kind type, std::string_view help, const labels& l,
           uint64_t value);
  void add(std::string_view name, kind type, std::string_view help, const labels& l,
           double value);
  /// The document (families separated by their HELP/TYPE lines, a final newline).
  [[nodiscard]] std::string render() const;

private:
  struct family {
    std::string header;
    std::string samples;
  };
  std::string& samples_of(std::string_view name, kind type, std::string_view help);
  static void add_sample(std::string& out, std::string_view name, const labels& l,
                         std::string_view value);
  std::vector<family> families_;
  std::unordered_map<std::string, size_t> index_;
};

/// Adds `engine`'s metrics, each labelled segment="<its segment name>": tasks by terminal state,
/// bytes moved by op and peer segment, slices posted/retried/failed, late or duplicate reports
/// ignored, notifications, and for a networked engine what its data and control ports served and
/// refused (by reason), their connections and reply budgets in use, and its network memory bound.
void add_engine_metrics(metrics_text& out, const transfer_engine& engine);

/// Adds the metrics of one ZMTP port (`port` = "data", "control", "master"): connections accepted,
/// open and closed by reason, its reply budget (in use, peak, limit); labelled `base` + port.
void add_port_metrics(metrics_text& out, const metrics_text::labels& base, std::string_view port,
                      const transport::zmtp::server_counters& c, uint64_t budget_limit);

/// One engine's metrics as a document.
[[nodiscard]] std::string render_metrics(const transfer_engine& engine);

/// Adds a metrics HTTP server's own counters (responses by status, connections), labelled
/// port="metrics".
void add_http_metrics(metrics_text& out, const transport::http::server_counters& c);

} // namespace kvferry
