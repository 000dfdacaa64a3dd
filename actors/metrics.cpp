#include "actors/metrics.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>

namespace kvferry {

namespace {

using kind = metrics_text::kind;

/// A label value as the text format escapes it: backslash, double quote and line feed.
void append_escaped(std::string& out, std::string_view value) {
  for (char c : value) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '"': out += "\\\""; break;
      case '\n': out += "\\n"; break;
      default: out += c;
    }
  }
}

/// HELP text escapes backslash and line feed.
void append_help(std::string& out, std::string_view help) {
  for (char c : help) {
    if (c == '\\')
      out += "\\\\";
    else if (c == '\n')
      out += "\\n";
    else
      out += c;
  }
}

std::string format_double(double v) {
  if (std::isnan(v))
    return "NaN";
  if (std::isinf(v))
    return v > 0 ? "+Inf" : "-Inf";
  char buffer[64];
  auto r = std::to_chars(buffer, buffer + sizeof(buffer), v);
  return std::string(buffer, r.ptr);
}

} // namespace

std::string& metrics_text::samples_of(std::string_view name, kind type, std::string_view help) {
  auto it = index_.find(std::string(name));
  if (it != index_.end())
    return families_[it->second].samples;
  family f;
  f.header = "# HELP ";
  f.header += name;
  f.header += ' ';
  append_help(f.header, help);
  f.header += "\n# TYPE ";
  f.header += name;
  f.header += type == kind::counter ? " counter\n" : " gauge\n";
  index_.emplace(std::string(name), families_.size());
  families_.push_back(std::move(f));
  return families_.back().samples;
}

void metrics_text::add_sample(std::string& out, std::string_view name, const labels& l,
                              std::string_view value) {
  out += name;
  if (!l.empty()) {
    out += '{';
    bool first = true;
    for (const auto& [key, val] : l) {
      if (!first)
        out += ',';
      first = false;
      out += key;
      out += "=\"";
      append_escaped(out, val);
      out += '"';
    }
    out += '}';
  }
  out += ' ';
  out += value;
  out += '\n';
}

void metrics_text::add(std::string_view name, kind type, std::string_view help, const labels& l,
                       uint64_t value) {
  add_sample(samples_of(name, type, help), name, l, std::to_string(value));
}

void metrics_text::add(std::string_view name, kind type, std::string_view help, const labels& l,
                       double value) {
  add_sample(samples_of(name, type, help), name, l, format_double(value));
}

std::string metrics_text::render() const {
  std::string out;
  size_t size = 0;
  for (const auto& f : families_)
    size += f.header.size() + f.samples.size();
  out.reserve(size);
  for (const auto& f : families_) {
    out += f.header;
    out += f.samples;
  }
  return out;
}

namespace {

/// `base` with `extra` appended.
metrics_text::labels with(const metrics_text::labels& base, metrics_text::labels extra) {
  extra.insert(extra.begin(), base.begin(), base.end());
  return extra;
}

} // namespace

void add_port_metrics(metrics_text& out, const metrics_text::labels& base, std::string_view port,
                      const transport::zmtp::server_counters& c, uint64_t budget_limit) {
  const auto counter = kind::counter;
  const auto gauge = kind::gauge;
  const auto at = with(base, {{"port", port}});
  out.add("kvferry_connections_accepted_total", counter, "Connections accepted on a port.", at,
          c.accepted);
  const char* closed_help = "Connections a port closed: evicted at its connection limits, "
                            "protocol violations, handshakes not finished in time.";
  out.add("kvferry_connections_closed_total", counter, closed_help,
          with(at, {{"reason", "evicted"}}), c.evicted);
  out.add("kvferry_connections_closed_total", counter, closed_help,
          with(at, {{"reason", "violation"}}), c.violations);
  out.add("kvferry_connections_closed_total", counter, closed_help,
          with(at, {{"reason", "handshake_timeout"}}), c.handshake_timeouts);
  out.add("kvferry_accept_failures_total", counter,
          "accept() failures for want of file descriptors.", at, c.accept_failures);
  out.add("kvferry_connections_open", gauge, "Connections open on a port.", at,
          c.open_connections);
  out.add("kvferry_reply_budget_in_use_bytes", gauge,
          "Bytes of a port's reply budget that queued replies hold now.", at, c.budget_in_use);
  out.add("kvferry_reply_budget_peak_bytes", gauge,
          "Most bytes of a port's reply budget ever held at once.", at, c.budget_peak);
  out.add("kvferry_reply_budget_limit_bytes", gauge, "A port's reply budget.", at, budget_limit);
}

void add_engine_metrics(metrics_text& out, const transfer_engine& engine) {
  const auto counter = kind::counter;
  const auto gauge = kind::gauge;
  const std::string& seg = engine.segment_name();
  if (auto s = engine.stats()) {
    out.add("kvferry_tasks_submitted_total", counter, "Tasks submitted.", {{"segment", seg}},
            s->tasks_submitted);
    const char* resolved_help = "Tasks resolved, by terminal state (each task exactly once).";
    out.add("kvferry_tasks_resolved_total", counter, resolved_help,
            {{"segment", seg}, {"state", "completed"}}, s->tasks_completed);
    out.add("kvferry_tasks_resolved_total", counter, resolved_help,
            {{"segment", seg}, {"state", "failed"}}, s->tasks_failed);
    out.add("kvferry_tasks_resolved_total", counter, resolved_help,
            {{"segment", seg}, {"state", "timeout"}}, s->tasks_timeout);
    out.add("kvferry_tasks_resolved_total", counter, resolved_help,
            {{"segment", seg}, {"state", "canceled"}}, s->tasks_canceled);
    out.add("kvferry_tasks_live", gauge, "Tasks not resolved yet.", {{"segment", seg}},
            s->live_tasks);
    out.add("kvferry_batches_live", gauge, "Batches with tasks not resolved yet.",
            {{"segment", seg}}, s->live_batches);
    out.add("kvferry_slices_live", gauge, "Slices at workers or waiting for a retry.",
            {{"segment", seg}}, s->live_slices);
    // Bytes of the slices that succeeded, by op and peer segment (sorted: stable output).
    auto traffic = s->traffic;
    std::sort(traffic.begin(), traffic.end(),
              [](const auto& a, const auto& b) { return a.segment < b.segment; });
    const char* bytes_help =
      "Bytes this engine moved (slices that succeeded), by op and peer segment.";
    for (const auto& t : traffic) {
      out.add("kvferry_transfer_bytes_total", counter, bytes_help,
              {{"segment", seg}, {"op", "read"}, {"peer", t.segment}}, t.read_bytes);
      out.add("kvferry_transfer_bytes_total", counter, bytes_help,
              {{"segment", seg}, {"op", "write"}, {"peer", t.segment}}, t.write_bytes);
    }
    out.add("kvferry_slices_posted_total", counter, "Slices posted to workers, retries included.",
            {{"segment", seg}}, s->slices_posted);
    out.add("kvferry_slices_succeeded_total", counter, "Slice reports of success acted on.",
            {{"segment", seg}}, s->slices_succeeded);
    out.add("kvferry_slices_failed_total", counter,
            "Slice reports of failure acted on (retried or fatal).", {{"segment", seg}},
            s->slices_failed);
    out.add("kvferry_slice_retries_total", counter, "Slices retried after a retryable failure.",
            {{"segment", seg}}, s->slices_retried);
    out.add("kvferry_slice_retries_given_up_total", counter,
            "Retries not made because they could not start before the task's deadline.",
            {{"segment", seg}}, s->retries_given_up);
    out.add("kvferry_slices_withdrawn_total", counter,
            "Slices still at a worker when their task resolved.", {{"segment", seg}},
            s->slices_withdrawn);
    out.add("kvferry_late_reports_total", counter,
            "Reports naming a slice that no longer exists (late, duplicate or for a retried "
            "attempt): counted and ignored.",
            {{"segment", seg}}, s->late_reports);
    out.add("kvferry_repeated_resolutions_total", counter,
            "Second attempts to resolve a task (0 by construction).", {{"segment", seg}},
            s->repeated_resolutions);
    out.add("kvferry_unsettled_withdrawals_total", counter,
            "Withdrawals whose target did not confirm in time that no more bytes land.",
            {{"segment", seg}}, s->unsettled_withdrawals);
    out.add("kvferry_notifications_sent_total", counter,
            "Submit-with-notify notifications sent (every task completed).", {{"segment", seg}},
            s->notifies_sent);
    out.add("kvferry_notifications_dropped_total", counter,
            "Submit-with-notify notifications not sent (a task did not complete).",
            {{"segment", seg}}, s->notifies_dropped);
  }
  if (auto inbox = engine.notification_counters()) {
    out.add("kvferry_notify_inbox_messages", gauge, "Notifications waiting for get_notifies.",
            {{"segment", seg}}, inbox->first);
    out.add("kvferry_notify_refused_total", counter,
            "Notifications refused because the inbox was full.", {{"segment", seg}},
            inbox->second);
  }
  if (engine.rpc_port() == 0)
    return; // not networked: no ports
  const auto& settings = engine.settings();
  const auto data = engine.server_counters();
  const auto control = engine.control_counters();
  const char* requests_help =
    "Requests served by a port (data: request entries; control and master: requests).";
  out.add("kvferry_served_requests_total", counter, requests_help,
          {{"segment", seg}, {"port", "data"}}, data.requests);
  out.add("kvferry_served_requests_total", counter, requests_help,
          {{"segment", seg}, {"port", "control"}}, control.requests);
  const char* served_help = "Bytes the data port served, by op (READ replies, WRITEs received).";
  out.add("kvferry_served_bytes_total", counter, served_help, {{"segment", seg}, {"op", "read"}},
          data.read_bytes);
  out.add("kvferry_served_bytes_total", counter, served_help, {{"segment", seg}, {"op", "write"}},
          data.write_bytes);
  const char* refused_help =
    "Requests a port refused, by reason (data: entries out of range, for an earlier "
    "incarnation, fenced, over the reply budget; malformed: messages that failed validation).";
  out.add("kvferry_requests_refused_total", counter, refused_help,
          {{"segment", seg}, {"port", "data"}, {"reason", "out_of_range"}},
          data.refused_out_of_range);
  out.add("kvferry_requests_refused_total", counter, refused_help,
          {{"segment", seg}, {"port", "data"}, {"reason", "stale_incarnation"}},
          data.refused_stale_incarnation);
  out.add("kvferry_requests_refused_total", counter, refused_help,
          {{"segment", seg}, {"port", "data"}, {"reason", "fenced"}}, data.refused_fenced);
  out.add("kvferry_requests_refused_total", counter, refused_help,
          {{"segment", seg}, {"port", "data"}, {"reason", "busy"}}, data.refused_busy);
  out.add("kvferry_requests_refused_total", counter, refused_help,
          {{"segment", seg}, {"port", "data"}, {"reason", "malformed"}}, data.malformed);
  out.add("kvferry_requests_refused_total", counter, refused_help,
          {{"segment", seg}, {"port", "control"}, {"reason", "malformed"}}, control.malformed);
  add_port_metrics(out, {{"segment", seg}}, "data", data.connections, settings.reply_budget);
  add_port_metrics(out, {{"segment", seg}}, "control", control.connections,
                   std::min<uint64_t>(settings.reply_budget, 32ULL << 20));
  out.add("kvferry_network_memory_bound_bytes", gauge,
          "The most memory peers can make this node hold through its ports.",
          {{"segment", seg}}, engine.network_memory_bound());
}

std::string render_metrics(const transfer_engine& engine) {
  metrics_text out;
  add_engine_metrics(out, engine);
  return out.render();
}

void add_http_metrics(metrics_text& out, const transport::http::server_counters& c) {
  const auto counter = kind::counter;
  const char* help = "Responses of the metrics port, by status.";
  auto code = [&](std::string_view status, uint64_t value) {
    out.add("kvferry_metrics_http_responses_total", counter, help, {{"code", status}}, value);
  };
  code("200", c.ok);
  code("400", c.bad_request);
  code("404", c.not_found);
  code("405", c.method_not_allowed);
  code("408", c.request_timeout);
  code("431", c.head_too_large);
  code("500", c.server_error);
  code("other", c.other);
  out.add("kvferry_metrics_http_connections_accepted_total", counter,
          "Connections accepted on the metrics port.", {}, c.accepted);
  const char* closed_help =
    "Connections the metrics port closed: evicted at its connection limits, timed out.";
  out.add("kvferry_metrics_http_connections_closed_total", counter, closed_help,
          {{"reason", "evicted"}}, c.evicted);
  out.add("kvferry_metrics_http_connections_closed_total", counter, closed_help,
          {{"reason", "timeout"}}, c.timeouts);
  out.add("kvferry_metrics_http_connections_open", kind::gauge,
          "Connections open on the metrics port.", {}, c.open_connections);
}

} // namespace kvferry
