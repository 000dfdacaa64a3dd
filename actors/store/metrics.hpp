#pragma once
/// Prometheus metrics of the store (text format 0.0.4; actors/metrics.hpp has the builder and the
/// transfer engine's metrics): for `kvferry master` and for applications that embed a master node
/// or a store client.
///
/// The master's figures come from its report (master_node::report, client::master_stats: the JSON
/// that docs/ARCHITECTURE.md, "The report", describes), so a scrape costs what a report costs: one
/// request to the master actor, which walks its object map once.

#include <string>
#include <string_view>

#include "actors/metrics.hpp"
#include "actors/store/client.hpp"
#include "actors/store/master.hpp"

namespace kvferry::store {

/// Adds the figures of a store report (kvferry_store_*): objects, their bytes, capacity, use,
/// fencing, unfinished puts, clients, leased objects, per segment size/free/fragmentation, and
/// every counter (puts, gets, removes, evictions, leases, fences, dead clients...). Returns false
/// (adding nothing) when `report_json` is not such a report.
bool add_store_report_metrics(metrics_text& out, std::string_view report_json);

/// A master node: its report and its port (requests, malformed ones, connections, reply budget,
/// network memory bound). A master that does not answer in time renders without its report, with
/// kvferry_store_report_up 0.
void add_master_metrics(metrics_text& out, const master_node& node);
[[nodiscard]] std::string render_metrics(const master_node& node);

/// A store client: its transfer engine (add_engine_metrics) and its own counters as a holder
/// (mounts, commits, fences, watch errors, replica failovers), labelled segment="<its segment>".
void add_client_metrics(metrics_text& out, client& c);
[[nodiscard]] std::string render_metrics(client& c);

} // namespace kvferry::store
