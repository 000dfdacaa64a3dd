#include "config/settings.hpp"

#include <cerrno>
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>

#include <boost/json.hpp>

#include "config/error.hpp"

namespace json = boost::json;

namespace kvferry::config {

namespace {

std::string quote(std::string_view s) {
  std::string out = "'";
  out.append(s);
  out += "'";
  return out;
}

/// A JSON value rendered for an error message, shortened.
std::string render(const json::value& v) {
  auto text = json::serialize(v);
  if (text.size() > 60)
    text = text.substr(0, 57) + "...";
  return text;
}

const char* kind_name(const json::value& v) {
  switch (v.kind()) {
    case json::kind::null: return "null";
    case json::kind::bool_: return "a boolean";
    case json::kind::int64:
    case json::kind::uint64:
    case json::kind::double_: return "a number";
    case json::kind::string: return "a string";
    case json::kind::array: return "an array";
    case json::kind::object: return "an object";
  }
  return "a value";
}

/// Context shared by the field parsers: which file and which field, for messages.
struct field_ctx {
  std::string_view source;
  std::string field;

  caf::error fail(const json::value& v, std::string_view expected) const {
    return make_error(errc::invalid_config,
                      std::string(source) + ": field " + quote(field) + ": value " + render(v)
                        + " is " + kind_name(v) + "; expected " + std::string(expected));
  }
  caf::error fail_text(std::string_view value, std::string_view why) const {
    return make_error(errc::invalid_config, std::string(source) + ": field " + quote(field)
                                              + ": value " + quote(value) + " " + std::string(why));
  }
};

caf::expected<std::string> get_string(const field_ctx& c, const json::value& v,
                                      std::string_view expected) {
  if (!v.is_string())
    return c.fail(v, expected);
  return std::string(v.get_string());
}

caf::expected<uint64_t> get_unsigned(const field_ctx& c, const json::value& v, uint64_t lo,
                                     uint64_t hi) {
  auto expected = "a whole number from " + std::to_string(lo) + " to " + std::to_string(hi);
  uint64_t x = 0;
  if (v.is_uint64()) {
    x = v.get_uint64();
  } else if (v.is_int64()) {
    if (v.get_int64() < 0)
      return c.fail(v, expected);
    x = static_cast<uint64_t>(v.get_int64());
  } else if (v.is_double()) {
    double d = v.get_double();
    if (!(d >= 0) || d != std::floor(d) || d > 1.8e19)
      return c.fail(v, expected);
    x = static_cast<uint64_t>(d);
  } else {
    return c.fail(v, expected);
  }
  if (x < lo || x > hi)
    return make_error(errc::invalid_config, std::string(c.source) + ": field " + quote(c.field)
                                              + ": value " + std::to_string(x)
                                              + " is out of range; expected " + expected);
  return x;
}

caf::expected<uint64_t> get_size(const field_ctx& c, const json::value& v, uint64_t lo) {
  constexpr const char* expected
    = "a number of bytes or a size string such as \"4GB\", \"512 MiB\" or \"64KiB\"";
  if (v.is_string()) {
    auto r = parse_size(v.get_string(), std::string(c.source) + ": field " + quote(c.field));
    if (!r)
      return r.error();
    if (*r < lo)
      return c.fail_text(std::string(v.get_string()),
                         "is too small; expected at least " + std::to_string(lo) + " bytes");
    return *r;
  }
  if (v.is_number())
    return get_unsigned(c, v, lo, std::numeric_limits<uint64_t>::max() / 2);
  return c.fail(v, expected);
}

std::vector<std::string> split_list(std::string_view text) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos <= text.size()) {
    auto comma = text.find(',', pos);
    if (comma == std::string_view::npos)
      comma = text.size();
    auto item = text.substr(pos, comma - pos);
    while (!item.empty() && item.front() == ' ')
      item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ')
      item.remove_suffix(1);
    if (!item.empty())
      out.emplace_back(item);
    pos = comma + 1;
  }
  return out;
}

/// Accepts "host:port" with a port from 1 to 65535.
bool valid_host_port(std::string_view hp) {
  auto colon = hp.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == hp.size())
    return false;
  unsigned port = 0;
  auto digits = hp.substr(colon + 1);
  auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
  return ec == std::errc{} && ptr == digits.data() + digits.size() && port >= 1 && port <= 65535;
}

std::pair<size_t, size_t> line_and_column(std::string_view text, size_t offset) {
  size_t line = 1, col = 1;
  for (size_t i = 0; i < offset && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++line;
      col = 1;
    } else {
      ++col;
    }
  }
  return {line, col};
}

/// The kvferry fields given in milliseconds: where each goes and its range.
struct ms_field {
  std::chrono::milliseconds* target;
  uint64_t lo;
  uint64_t hi;
};

std::optional<ms_field> millisecond_field(std::string_view key, settings& out) {
  constexpr uint64_t day = 24ULL * 3600 * 1000;
  if (key == "task_deadline_ms")
    return ms_field{&out.task_deadline, 1, day};
  if (key == "retry_backoff_ms")
    return ms_field{&out.retry_backoff, 0, 60000};
  if (key == "retry_backoff_max_ms")
    return ms_field{&out.retry_backoff_max, 0, 600000};
  if (key == "open_timeout_ms")
    return ms_field{&out.open_timeout, 1, day};
  if (key == "withdraw_timeout_ms")
    return ms_field{&out.withdraw_timeout, 1, day};
  if (key == "handshake_timeout_ms")
    return ms_field{&out.handshake_timeout, 1, day};
  if (key == "store_deadline_ms")
    return ms_field{&out.store_deadline, 1, day};
  if (key == "metadata_ttl_ms")
    return ms_field{&out.metadata_ttl, 1000, day};
  if (key == "rdma_completion_timeout_ms")
    return ms_field{&out.rdma.completion_timeout, 1, 600000};
  if (key == "rdma_nic_probe_ms")
    return ms_field{&out.rdma.nic_probe, 1, 5000};
  return std::nullopt;
}

/// Sets `target` from a whole number in [lo, hi].
template <class T>
caf::error set_count(const field_ctx& c, const json::value& v, uint64_t lo, uint64_t hi,
                     T& target) {
  auto r = get_unsigned(c, v, lo, hi);
  if (!r)
    return r.error();
  target = static_cast<T>(*r);
  return {};
}

/// The whole-number rdma_ fields (without their prefix): where each goes and its range.
caf::error parse_rdma_count(const field_ctx& c, std::string_view name, const json::value& v,
                            rdma_settings& r, bool& known) {
  known = true;
  if (name == "emulated_devices")
    return set_count(c, v, 1, 16, r.emulated_devices);
  if (name == "port")
    return set_count(c, v, 1, 255, r.port);
  if (name == "gid_index")
    return set_count(c, v, 0, 255, r.gid_index);
  if (name == "qp_per_endpoint")
    return set_count(c, v, 1, 64, r.qp_per_endpoint);
  if (name == "max_endpoints")
    return set_count(c, v, 1, 65536, r.max_endpoints);
  if (name == "max_wr")
    return set_count(c, v, 1, 16384, r.max_wr);
  if (name == "cq_depth")
    return set_count(c, v, 16, 1048576, r.cq_depth);
  if (name == "nic_error_limit")
    return set_count(c, v, 1, 1000, r.nic_error_limit);
  known = false;
  return {};
}

/// "cpu:N" or "cuda:N", N a whole number written without leading zeros (as the keys are looked up).
bool valid_location(std::string_view loc) {
  auto colon = loc.find(':');
  if (colon == std::string_view::npos)
    return false;
  auto kind = loc.substr(0, colon);
  auto n = loc.substr(colon + 1);
  if ((kind != "cpu" && kind != "cuda") || n.empty() || n.size() > 5
      || (n[0] == '0' && n.size() > 1))
    return false;
  for (char ch : n)
    if (ch < '0' || ch > '9')
      return false;
  return true;
}

/// Checks a priority matrix (an object in place or a file's content); `where` names the source,
/// the field and the file for messages.
caf::expected<std::map<std::string, nic_priority>> check_matrix(const std::string& where,
                                                                const json::value& v) {
  constexpr std::string_view row_shape
    = "an array of exactly 2 arrays of NIC names: [[preferred NICs], [fallback NICs]]";
  auto fail = [&](const std::string& what) {
    return make_error(errc::invalid_config, where + ": " + what);
  };
  if (!v.is_object())
    return fail("value " + render(v) + " is " + kind_name(v)
                + "; expected an object mapping \"cpu:N\" or \"cuda:N\" to "
                + std::string(row_shape)
                + ", e.g. {\"cpu:0\": [[\"mlx5_0\"], [\"mlx5_1\"]]}");
  std::map<std::string, nic_priority> out;
  for (const auto& [key, row] : v.get_object()) {
    auto at = "location " + quote(key) + ": ";
    if (!valid_location(key))
      return fail("location " + quote(key) + " is not a memory location; expected \"cpu:N\" or "
                  "\"cuda:N\" (N a whole number without leading zeros)");
    if (!row.is_array() || row.get_array().size() != 2)
      return fail(at + "value " + render(row) + " is "
                  + (row.is_array() ? "an array of " + std::to_string(row.get_array().size())
                                        + (row.get_array().size() == 1 ? " element" : " elements")
                                    : std::string(kind_name(row)))
                  + "; expected " + std::string(row_shape));
    nic_priority p;
    for (size_t i = 0; i < 2; ++i) {
      const auto& list = row.get_array()[i];
      std::string which = i == 0 ? "preferred" : "fallback";
      if (!list.is_array())
        return fail(at + which + " list " + render(list) + " is " + kind_name(list)
                    + "; expected an array of NIC names such as [\"mlx5_0\"]");
      for (const auto& nic : list.get_array()) {
        if (!nic.is_string() || nic.get_string().empty())
          return fail(at + which + " NIC " + render(nic) + " is "
                      + (nic.is_string() ? "an empty string" : kind_name(nic))
                      + "; expected a NIC name such as \"mlx5_0\"");
        std::string name(nic.get_string());
        auto listed = [&](const std::vector<std::string>& l) {
          return std::find(l.begin(), l.end(), name) != l.end();
        };
        if (listed(p.preferred) || listed(p.fallback))
          return fail(at + "NIC " + quote(name) + " is listed "
                      + (listed(p.preferred) && i == 1 ? "as both preferred and fallback"
                                                       : "twice in the " + which + " list")
                      + "; expected each NIC at most once per location");
        (i == 0 ? p.preferred : p.fallback).push_back(std::move(name));
      }
    }
    out[std::string(key)] = std::move(p);
  }
  return out;
}

/// nic_priority_matrix: the object in place, or a string naming a JSON file that holds it (a
/// relative path starts at the configuration file's directory).
caf::expected<std::map<std::string, nic_priority>> parse_matrix(const field_ctx& c,
                                                                const json::value& v) {
  auto where = std::string(c.source) + ": field " + quote(c.field);
  if (v.is_object())
    return check_matrix(where, v);
  if (!v.is_string())
    return c.fail(v, "an object such as {\"cpu:0\": [[\"mlx5_0\"], [\"mlx5_1\"]]} or a string "
                     "naming a JSON file that holds one");
  std::filesystem::path path(std::string(v.get_string()));
  if (path.empty())
    return c.fail_text("", "is empty; expected the path of a JSON file holding the matrix");
  if (path.is_relative())
    path = std::filesystem::path(std::string(c.source)).parent_path() / path;
  where += " (file " + quote(path.string()) + ")";
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return make_error(errc::invalid_config, where + ": cannot open: " + std::strerror(errno)
                                              + "; expected a JSON file holding the NIC priority "
                                                "matrix");
  std::ostringstream buf;
  buf << in.rdbuf();
  auto text = buf.str();
  json::stream_parser parser;
  boost::system::error_code ec;
  size_t used = parser.write_some(text.data(), text.size(), ec);
  if (!ec)
    parser.finish(ec);
  if (ec) {
    auto [line, col] = line_and_column(text, used);
    return make_error(errc::invalid_config,
                      where + ": malformed JSON at line " + std::to_string(line) + ", column "
                        + std::to_string(col) + ": " + ec.message()
                        + "; expected one JSON object such as {\"cpu:0\": [[\"mlx5_0\"], []]}");
  }
  return check_matrix(where, parser.release());
}

caf::error parse_kvferry_object(std::string_view source, const json::object& obj,
                                settings& out) {
  for (const auto& [key, value] : obj) {
    field_ctx c{source, "kvferry." + std::string(key)};
    if (key == "slice_size" || key == "tcp_slice_size") {
      auto r = get_size(c, value, 1);
      if (!r)
        return r.error();
      if (*r > (64ULL << 20))
        return c.fail_text(render(value), "is too large; expected at most 64 MiB");
      (key == "slice_size" ? out.slice_size : out.tcp_slice_size) = *r;
    } else if (key == "worker_count" || key == "tcp_worker_count") {
      auto r = get_unsigned(c, value, 1, 64);
      if (!r)
        return r.error();
      (key == "worker_count" ? out.worker_count : out.tcp_worker_count) = static_cast<uint32_t>(*r);
    } else if (auto ms = millisecond_field(key, out)) {
      auto r = get_unsigned(c, value, ms->lo, ms->hi);
      if (!r)
        return r.error();
      *ms->target = std::chrono::milliseconds{*r};
    } else if (key == "retry_limit") {
      auto r = get_unsigned(c, value, 0, 100);
      if (!r)
        return r.error();
      out.retry_limit = static_cast<uint32_t>(*r);
    } else if (key == "max_connections" || key == "max_connections_per_host"
               || key == "peer_max_queued_messages" || key == "notify_inbox_messages") {
      auto r = get_unsigned(c, value, 1, 1u << 20);
      if (!r)
        return r.error();
      auto v = static_cast<uint32_t>(*r);
      if (key == "max_connections")
        out.max_connections = v;
      else if (key == "max_connections_per_host")
        out.max_connections_per_host = v;
      else if (key == "peer_max_queued_messages")
        out.peer_max_queued_messages = v;
      else
        out.notify_inbox_messages = v;
    } else if (key == "peer_max_queued_bytes" || key == "reply_budget"
               || key == "notify_inbox_bytes") {
      auto r = get_size(c, value, key == "reply_budget" ? 4 << 20 : 64 << 10);
      if (!r)
        return r.error();
      if (key == "peer_max_queued_bytes")
        out.peer_max_queued_bytes = *r;
      else if (key == "reply_budget")
        out.reply_budget = *r;
      else
        out.notify_inbox_bytes = *r;
    } else if (key == "rpc_port" || key == "data_port") {
      auto r = get_unsigned(c, value, 0, 65535);
      if (!r)
        return r.error();
      (key == "rpc_port" ? out.rpc_port : out.data_port) = static_cast<uint16_t>(*r);
    } else if (key == "rdma_provider") {
      auto r = get_string(c, value, "a string: \"verbs\" or \"emulated\"");
      if (!r)
        return r.error();
      if (*r == "verbs")
        out.rdma.provider = rdma_provider_kind::verbs;
      else if (*r == "emulated")
        out.rdma.provider = rdma_provider_kind::emulated;
      else
        return c.fail_text(*r, "is not an RDMA provider; expected \"verbs\" (libibverbs) or "
                               "\"emulated\" (software NICs, for machines without RDMA hardware)");
    } else if (key == "rdma_mtu") {
      auto r = get_unsigned(c, value, 256, 4096);
      if (!r)
        return r.error();
      if ((*r & (*r - 1)) != 0)
        return c.fail_text(render(value), "is not an MTU; expected one of 256, 512, 1024, 2048, "
                                          "4096");
      out.rdma.mtu = static_cast<uint32_t>(*r);
    } else if (key == "nic_priority_matrix") {
      auto r = parse_matrix(c, value);
      if (!r)
        return r.error();
      out.rdma.nic_priority_matrix = std::move(*r);
    } else if (bool known = false; key.starts_with("rdma_")) {
      if (auto err = parse_rdma_count(c, key.substr(5), value, out.rdma, known))
        return err;
      if (!known)
        out.warnings.push_back(std::string(source) + ": unknown field " + quote(c.field)
                               + " ignored");
    } else if (key == "log_level") {
      auto r = get_string(c, value, "one of trace, debug, info, warn, error, critical, off");
      if (!r)
        return r.error();
      static constexpr std::string_view levels[]
        = {"trace", "debug", "info", "warn", "error", "critical", "off"};
      bool ok = false;
      for (auto l : levels)
        ok = ok || *r == l;
      if (!ok)
        return c.fail_text(*r, "is not a log level; expected one of trace, debug, info, warn, "
                               "error, critical, off");
      out.log_level = *r;
    } else {
      out.warnings.push_back(std::string(source) + ": unknown field " + quote(c.field)
                             + " ignored");
    }
  }
  return {};
}

} // namespace

std::vector<std::string> unused_fields(const settings& s, bool store_client) {
  std::vector<std::string> out;
  auto source = s.source;
  if (!s.device_names.empty() && s.transport != protocol::rdma)
    out.push_back(source + ": device_name is set, but protocol is tcp: the RDMA NICs it names are "
                           "not used");
  if (s.transport != protocol::rdma && s.rdma != rdma_settings{}) {
    const rdma_settings d;
    const auto& r = s.rdma;
    std::string names;
    auto note = [&](bool set, const char* name) {
      if (set)
        names += (names.empty() ? "" : ", ") + std::string(name);
    };
    note(r.provider != d.provider, "rdma_provider");
    note(r.emulated_devices != d.emulated_devices, "rdma_emulated_devices");
    note(r.port != d.port, "rdma_port");
    note(r.gid_index != d.gid_index, "rdma_gid_index");
    note(r.qp_per_endpoint != d.qp_per_endpoint, "rdma_qp_per_endpoint");
    note(r.max_endpoints != d.max_endpoints, "rdma_max_endpoints");
    note(r.max_wr != d.max_wr, "rdma_max_wr");
    note(r.cq_depth != d.cq_depth, "rdma_cq_depth");
    note(r.mtu != d.mtu, "rdma_mtu");
    note(r.completion_timeout != d.completion_timeout, "rdma_completion_timeout_ms");
    note(r.nic_error_limit != d.nic_error_limit, "rdma_nic_error_limit");
    note(r.nic_probe != d.nic_probe, "rdma_nic_probe_ms");
    note(r.nic_priority_matrix != d.nic_priority_matrix, "nic_priority_matrix");
    bool one = names.find(',') == std::string::npos;
    out.push_back(source + (one ? ": kvferry field " : ": kvferry fields ") + names
                  + (one ? " is set, but protocol is tcp: it is not used"
                         : " are set, but protocol is tcp: they are not used"));
  } else if (s.rdma.provider == rdma_provider_kind::verbs
             && s.rdma.emulated_devices != rdma_settings{}.emulated_devices) {
    out.push_back(source + ": kvferry.rdma_emulated_devices is set, but rdma_provider is verbs: "
                           "it is not used");
  }
  if (!store_client && !s.master_server_address.empty())
    out.push_back(source + ": master_server_address is set, but this program is not a store "
                           "client: it is not used");
  if (!store_client && s.local_buffer_size != settings{}.local_buffer_size)
    out.push_back(source + ": local_buffer_size is set, but this program is not a store "
                           "client (no staging buffer): it is not used");
  return out;
}

const char* to_string(protocol p) noexcept {
  return p == protocol::rdma ? "rdma" : "tcp";
}

const char* to_string(rdma_provider_kind k) noexcept {
  return k == rdma_provider_kind::emulated ? "emulated" : "verbs";
}

const char* to_string(metadata_kind k) noexcept {
  switch (k) {
    case metadata_kind::p2p_handshake: return "P2PHANDSHAKE";
    case metadata_kind::http: return "http";
    case metadata_kind::etcd: return "etcd";
    case metadata_kind::redis: return "redis";
  }
  return "?";
}

caf::expected<uint64_t> parse_size(std::string_view text, std::string_view what) {
  auto fail = [&](std::string_view why) {
    return make_error(errc::invalid_config,
                      std::string(what) + ": value " + quote(text) + " " + std::string(why)
                        + "; expected a size such as 1048576, \"4GB\", \"1.5 GiB\" or \"64KiB\"");
  };
  std::string_view s = text;
  while (!s.empty() && s.front() == ' ')
    s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ')
    s.remove_suffix(1);
  if (s.empty())
    return fail("is empty");
  size_t i = 0;
  while (i < s.size() && ((s[i] >= '0' && s[i] <= '9') || s[i] == '.'))
    ++i;
  auto number = s.substr(0, i);
  if (number.empty() || number.front() == '.' || number.back() == '.'
      || number.find('.') != number.rfind('.'))
    return fail("does not start with a number");
  auto unit = s.substr(i);
  while (!unit.empty() && unit.front() == ' ')
    unit.remove_prefix(1);
  std::string u;
  for (char ch : unit)
    u += static_cast<char>(ch >= 'a' && ch <= 'z' ? ch - 'a' + 'A' : ch);
  unsigned shift = 0;
  if (u.empty() || u == "B")
    shift = 0;
  else if (u == "K" || u == "KB" || u == "KIB")
    shift = 10;
  else if (u == "M" || u == "MB" || u == "MIB")
    shift = 20;
  else if (u == "G" || u == "GB" || u == "GIB")
    shift = 30;
  else if (u == "T" || u == "TB" || u == "TIB")
    shift = 40;
  else
    return fail("has an unknown unit " + quote(unit));
  auto dot = number.find('.');
  uint64_t whole = 0;
  auto int_part = number.substr(0, dot);
  auto [p, ec] = std::from_chars(int_part.data(), int_part.data() + int_part.size(), whole);
  if (ec != std::errc{} || p != int_part.data() + int_part.size())
    return fail("is too large");
  if (shift > 0 && whole > (std::numeric_limits<uint64_t>::max() >> shift))
    return fail("is too large");
  uint64_t result = whole << shift;
  if (dot != std::string_view::npos) {
    // Fraction: exact for up to 9 digits, rounded down to whole bytes.
    auto frac = number.substr(dot + 1);
    if (frac.size() > 9)
      frac = frac.substr(0, 9);
    uint64_t f = 0, scale = 1;
    for (char ch : frac) {
      f = f * 10 + static_cast<uint64_t>(ch - '0');
      scale *= 10;
    }
    result += static_cast<uint64_t>((static_cast<__uint128_t>(f) << shift) / scale);
    if (shift == 0 && f != 0)
      return fail("has a fraction of a byte");
  }
  return result;
}

caf::expected<metadata_server> parse_metadata_server(std::string_view text, std::string_view what) {
  metadata_server out;
  out.text = std::string(text);
  auto fail = [&](std::string_view why) {
    return make_error(
      errc::invalid_config,
      std::string(what) + ": value " + quote(text) + " " + std::string(why)
        + "; expected P2PHANDSHAKE, http://host:port/path, etcd://host:port[,host:port], "
          "redis://host:port or host:port (etcd)");
  };
  auto starts = [&](std::string_view prefix) { return text.substr(0, prefix.size()) == prefix; };
  if (text == "P2PHANDSHAKE") {
    out.kind = metadata_kind::p2p_handshake;
    return out;
  }
  if (starts("http://") || starts("https://")) {
    auto rest = text.substr(text.find("//") + 2);
    auto host_end = rest.find('/');
    auto host = rest.substr(0, host_end);
    if (host.empty())
      return fail("has no host");
    out.kind = metadata_kind::http;
    out.endpoints.emplace_back(text);
    return out;
  }
  std::string_view list = text;
  out.kind = metadata_kind::etcd;
  if (starts("etcd://")) {
    list = text.substr(7);
  } else if (starts("redis://")) {
    list = text.substr(8);
    out.kind = metadata_kind::redis;
  } else if (text.find("://") != std::string_view::npos) {
    return fail("has an unknown scheme");
  }
  out.endpoints = split_list(list);
  if (out.endpoints.empty())
    return fail("names no endpoint");
  for (const auto& ep : out.endpoints)
    if (!valid_host_port(ep))
      return fail("has endpoint " + quote(ep) + " that is not host:port");
  return out;
}

caf::expected<settings> parse(std::string_view text, std::string_view source) {
  json::stream_parser parser;
  boost::system::error_code ec;
  size_t used = parser.write_some(text.data(), text.size(), ec);
  if (!ec)
    parser.finish(ec);
  if (ec) {
    auto [line, col] = line_and_column(text, used);
    return make_error(errc::invalid_config,
                      std::string(source) + ": malformed JSON at line " + std::to_string(line)
                        + ", column " + std::to_string(col) + ": " + ec.message()
                        + "; expected one JSON object such as "
                          "{\"local_hostname\": \"10.0.0.1\", \"metadata_server\": \"P2PHANDSHAKE\"}");
  }
  auto root = parser.release();
  if (!root.is_object())
    return make_error(errc::invalid_config, std::string(source) + ": the top level is "
                                              + kind_name(root) + "; expected a JSON object");
  settings out;
  out.source = std::string(source);
  bool has_hostname = false, has_metadata = false;
  for (const auto& [key, value] : root.get_object()) {
    field_ctx c{source, std::string(key)};
    if (key == "local_hostname") {
      auto r = get_string(c, value, "a string: this node's address, \"host\" or \"host:port\"");
      if (!r)
        return r.error();
      if (r->empty())
        return c.fail_text(*r, "is empty; expected this node's address");
      // "host:port", "[v6]:port"; a bare IPv6 address ("fe80::1", "[fe80::1]") has no port.
      auto colon = r->rfind(':');
      bool bracketed = !r->empty() && r->front() == '[';
      if (bracketed && colon != std::string::npos && colon > 0 && (*r)[colon - 1] == ']') {
        if (!valid_host_port(*r))
          return c.fail_text(*r, "has a bad port; expected [address]:port (1-65535)");
        out.rpc_port = static_cast<uint16_t>(std::stoul(r->substr(colon + 1)));
        *r = r->substr(1, colon - 2);
      } else if (bracketed && r->back() == ']') {
        *r = r->substr(1, r->size() - 2);
      } else if (colon != std::string::npos && r->find(':') == colon) {
        if (!valid_host_port(*r))
          return c.fail_text(*r, "has a bad port; expected host or host:port (1-65535)");
        out.rpc_port = static_cast<uint16_t>(std::stoul(r->substr(colon + 1)));
        *r = r->substr(0, colon);
      }
      out.local_hostname = *r;
      has_hostname = true;
    } else if (key == "metadata_server") {
      auto r = get_string(c, value, "a string such as \"P2PHANDSHAKE\" or \"etcd://host:2379\"");
      if (!r)
        return r.error();
      auto m = parse_metadata_server(*r, std::string(source) + ": field " + quote(c.field));
      if (!m)
        return m.error();
      out.metadata = std::move(*m);
      has_metadata = true;
    } else if (key == "protocol") {
      auto r = get_string(c, value, "a string: \"tcp\" or \"rdma\"");
      if (!r)
        return r.error();
      if (*r == "tcp")
        out.transport = protocol::tcp;
      else if (*r == "rdma")
        out.transport = protocol::rdma;
      else
        return c.fail_text(*r, "is not a supported protocol; expected \"tcp\" or \"rdma\"");
    } else if (key == "device_name") {
      auto r = get_string(c, value, "a string: comma-separated RDMA NIC names such as "
                                    "\"mlx5_0,mlx5_1\", or \"\" / \"auto-discovery\"");
      if (!r)
        return r.error();
      out.device_names.clear();
      if (*r != "auto-discovery")
        out.device_names = split_list(*r);
    } else if (key == "master_server_address") {
      auto r = get_string(c, value, "a string \"host:port\" or \"etcd://host:port\"");
      if (!r)
        return r.error();
      if (!r->empty() && r->find("://") == std::string::npos && !valid_host_port(*r))
        return c.fail_text(*r, "is not host:port; expected \"host:port\" or \"etcd://host:port\"");
      out.master_server_address = *r;
    } else if (key == "global_segment_size" || key == "local_buffer_size") {
      auto r = get_size(c, value, 0);
      if (!r)
        return r.error();
      (key == "global_segment_size" ? out.global_segment_size : out.local_buffer_size) = *r;
    } else if (key == "kvferry") {
      if (!value.is_object())
        return c.fail(value, "an object with kvferry's settings (see README.md, Configuration)");
      if (auto err = parse_kvferry_object(source, value.get_object(), out))
        return err;
    } else {
      out.warnings.push_back(std::string(source) + ": unknown field " + quote(key) + " ignored");
    }
  }
  if (!has_hostname)
    return make_error(errc::invalid_config,
                      std::string(source) + ": field 'local_hostname' is missing; expected this "
                                            "node's address, e.g. \"local_hostname\": \"10.0.0.1\"");
  if (!has_metadata)
    return make_error(errc::invalid_config,
                      std::string(source) + ": field 'metadata_server' is missing; expected e.g. "
                                            "\"metadata_server\": \"P2PHANDSHAKE\"");
  return out;
}

caf::expected<settings> load_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return make_error(errc::invalid_config,
                      path + ": cannot open configuration file: " + std::strerror(errno));
  std::ostringstream buf;
  buf << in.rdbuf();
  return parse(buf.str(), path);
}

caf::expected<settings> load(const std::optional<std::string>& cli_path) {
  if (cli_path)
    return load_file(*cli_path);
  for (const char* var : {"KVFERRY_CONFIG", "MOONCAKE_CONFIG_PATH"}) {
    if (const char* value = std::getenv(var); value != nullptr && *value != '\0') {
      auto r = load_file(value);
      if (!r)
        return make_error(errc::invalid_config,
                          context_of(r.error()) + " (file named by " + var + ")");
      return r;
    }
  }
  return settings{};
}

} // namespace kvferry::config
