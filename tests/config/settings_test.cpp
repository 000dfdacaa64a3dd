#define BOOST_TEST_MODULE settings_test
#include <boost/test/unit_test.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tests/support/checks.hpp"
#include "config/error.hpp"
#include "config/settings.hpp"

using namespace kvferry;
using config::settings;

namespace {

using kvferry::test::why;
using kvferry::test::contains;

constexpr std::string_view mooncake_example
  = R"({"local_hostname":"192.168.0.137","metadata_server":"etcd://192.168.0.137:2379",)"
    R"("protocol":"rdma","device_name":"erdma_0","master_server_address":"192.168.0.137:50001"})";

/// A minimal valid document with `extra` (a JSON member list, may be empty) appended.
std::string doc(std::string_view extra = {}) {
  std::string out = R"({"local_hostname":"10.0.0.1","metadata_server":"P2PHANDSHAKE")";
  if (!extra.empty()) {
    out += ",";
    out += extra;
  }
  out += "}";
  return out;
}

/// Checks that `r` failed with invalid_config and that its message names every one of `parts`.
template <class T>
void expect_config_error(const caf::expected<T>& r, std::initializer_list<std::string_view> parts) {
  BOOST_REQUIRE_MESSAGE(!r, "expected an error, got a value");
  BOOST_CHECK_MESSAGE(code_of(r.error()) == errc::invalid_config,
                      "code is " << to_string(code_of(r.error())) << ": " << why(r));
  auto text = context_of(r.error());
  for (auto part : parts)
    BOOST_CHECK_MESSAGE(contains(text, part), "message '" << text << "' lacks '" << part << "'");
}

caf::expected<uint64_t> size_of(std::string_view text) {
  return config::parse_size(text, "test.size");
}

/// A temporary directory removed at the end of the test.
struct temp_dir {
  std::filesystem::path path;
  temp_dir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "kvferry-settings-XXXXXX").string();
    BOOST_REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string write(const std::string& name, std::string_view text) const {
    auto p = path / name;
    std::ofstream out(p, std::ios::binary);
    out << text;
    return p.string();
  }
};

/// Sets or unsets an environment variable for the scope, restoring the old value after.
struct env_guard {
  std::string name;
  std::optional<std::string> old;
  env_guard(std::string n, const char* value) : name(std::move(n)) {
    if (const char* v = std::getenv(name.c_str()))
      old = v;
    if (value)
      ::setenv(name.c_str(), value, 1);
    else
      ::unsetenv(name.c_str());
  }
  ~env_guard() {
    if (old)
      ::setenv(name.c_str(), old->c_str(), 1);
    else
      ::unsetenv(name.c_str());
  }
};

} // namespace

// -- valid documents ----------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(mooncake_example_parses) {
  auto r = config::parse(mooncake_example, "mooncake.json");
  BOOST_REQUIRE_MESSAGE(r, why(r));
  BOOST_CHECK_EQUAL(r->source, "mooncake.json");
  BOOST_CHECK_EQUAL(r->local_hostname, "192.168.0.137");
  BOOST_CHECK(r->metadata.kind == config::metadata_kind::etcd);
  BOOST_REQUIRE_EQUAL(r->metadata.endpoints.size(), 1u);
  BOOST_CHECK_EQUAL(r->metadata.endpoints[0], "192.168.0.137:2379");
  BOOST_CHECK_EQUAL(r->metadata.text, "etcd://192.168.0.137:2379");
  BOOST_CHECK(r->transport == config::protocol::rdma);
  BOOST_REQUIRE_EQUAL(r->device_names.size(), 1u);
  BOOST_CHECK_EQUAL(r->device_names[0], "erdma_0");
  BOOST_CHECK_EQUAL(r->master_server_address, "192.168.0.137:50001");
  BOOST_CHECK_EQUAL(r->rpc_port, 0);
  BOOST_CHECK(r->warnings.empty());
  // Fields the example does not set keep Mooncake's defaults.
  BOOST_CHECK_EQUAL(r->global_segment_size, 3355443200ULL);
  BOOST_CHECK_EQUAL(r->local_buffer_size, 1ULL << 30);
  BOOST_CHECK_EQUAL(r->slice_size, 64ULL << 10);
}

BOOST_AUTO_TEST_CASE(embedded_defaults) {
  settings s;
  BOOST_CHECK_EQUAL(s.source, "<embedded defaults>");
  BOOST_CHECK_EQUAL(s.local_hostname, "127.0.0.1");
  BOOST_CHECK(s.metadata.kind == config::metadata_kind::p2p_handshake);
  BOOST_CHECK_EQUAL(s.metadata.text, "P2PHANDSHAKE");
  BOOST_CHECK(s.transport == config::protocol::tcp);
  BOOST_CHECK(s.device_names.empty());
  BOOST_CHECK_EQUAL(s.global_segment_size, 3355443200ULL);
  BOOST_CHECK_EQUAL(s.local_buffer_size, 1ULL << 30);
  BOOST_CHECK_EQUAL(s.slice_size, 65536u);
  BOOST_CHECK_EQUAL(s.worker_count, 2u);
  BOOST_CHECK_EQUAL(s.task_deadline.count(), 10000);
  BOOST_CHECK_EQUAL(s.retry_limit, 8u);
  BOOST_CHECK_EQUAL(s.retry_backoff.count(), 10);
  BOOST_CHECK_EQUAL(s.retry_backoff_max.count(), 1000);
  BOOST_CHECK_EQUAL(s.open_timeout.count(), 5000);
  BOOST_CHECK_EQUAL(s.withdraw_timeout.count(), 5000);
  BOOST_CHECK_EQUAL(s.max_connections, 1024u);
  BOOST_CHECK_EQUAL(s.max_connections_per_host, 1024u);
  BOOST_CHECK_EQUAL(s.handshake_timeout.count(), 10000);
  BOOST_CHECK_EQUAL(s.peer_max_queued_messages, 256u);
  BOOST_CHECK_EQUAL(s.peer_max_queued_bytes, 64ULL << 20);
  BOOST_CHECK_EQUAL(s.reply_budget, 256ULL << 20);
  BOOST_CHECK_EQUAL(s.notify_inbox_messages, 4096u);
  BOOST_CHECK_EQUAL(s.notify_inbox_bytes, 16ULL << 20);
  BOOST_CHECK_EQUAL(s.rpc_port, 0);
  BOOST_CHECK_EQUAL(s.data_port, 0);
  BOOST_CHECK_EQUAL(s.log_level, "info");
  BOOST_CHECK_EQUAL(config::to_string(config::protocol::tcp), std::string("tcp"));
  BOOST_CHECK_EQUAL(config::to_string(config::protocol::rdma), std::string("rdma"));
  BOOST_CHECK_EQUAL(config::to_string(config::metadata_kind::etcd), std::string("etcd"));
}

BOOST_AUTO_TEST_CASE(minimal_document_keeps_defaults) {
  auto r = config::parse(doc(), "min.json");
  BOOST_REQUIRE_MESSAGE(r, why(r));
  settings d;
  BOOST_CHECK_EQUAL(r->local_hostname, "10.0.0.1");
  BOOST_CHECK(r->metadata.kind == config::metadata_kind::p2p_handshake);
  BOOST_CHECK(r->transport == config::protocol::tcp);
  BOOST_CHECK_EQUAL(r->slice_size, d.slice_size);
  BOOST_CHECK_EQUAL(r->worker_count, d.worker_count);
  BOOST_CHECK_EQUAL(r->retry_limit, d.retry_limit);
  BOOST_CHECK_EQUAL(r->task_deadline.count(), d.task_deadline.count());
}

BOOST_AUTO_TEST_CASE(kvferry_object) {
  auto r = config::parse(
    doc(R"("kvferry":{"slice_size":"4KiB","tcp_slice_size":"2MiB","worker_count":4,"tcp_worker_count":3,)"
        R"("task_deadline_ms":250,"retry_limit":0,"rpc_port":17000,"data_port":17001,)"
        R"("log_level":"debug"})"),
    "kv.json");
  BOOST_REQUIRE_MESSAGE(r, why(r));
  BOOST_CHECK_EQUAL(r->slice_size, 4096u);
  BOOST_CHECK_EQUAL(r->tcp_slice_size, 2u << 20);
  BOOST_CHECK_EQUAL(r->tcp_worker_count, 3u);
  BOOST_CHECK_EQUAL(r->worker_count, 4u);
  BOOST_CHECK_EQUAL(r->task_deadline.count(), 250);
  BOOST_CHECK_EQUAL(r->retry_limit, 0u);
  BOOST_CHECK_EQUAL(r->rpc_port, 17000);
  BOOST_CHECK_EQUAL(r->data_port, 17001);
  BOOST_CHECK_EQUAL(r->log_level, "debug");
  BOOST_CHECK(r->warnings.empty());

  auto numeric = config::parse(doc(R"("kvferry":{"slice_size":65536,"worker_count":64})"), "kv.json");
  BOOST_REQUIRE_MESSAGE(numeric, why(numeric));
  BOOST_CHECK_EQUAL(numeric->slice_size, 65536u);
  BOOST_CHECK_EQUAL(numeric->worker_count, 64u);
  // The largest slice accepted is 64 MiB.
  auto largest = config::parse(doc(R"("kvferry":{"slice_size":"64MiB"})"), "kv.json");
  BOOST_REQUIRE_MESSAGE(largest, why(largest));
  BOOST_CHECK_EQUAL(largest->slice_size, 64ULL << 20);
}

BOOST_AUTO_TEST_CASE(kvferry_bounds_and_timings) {
  auto r = config::parse(
    doc(R"("kvferry":{"retry_backoff_ms":0,"retry_backoff_max_ms":250,"open_timeout_ms":750,)"
        R"("withdraw_timeout_ms":1500,"max_connections":64,"max_connections_per_host":8,)"
        R"("handshake_timeout_ms":2000,"peer_max_queued_messages":32,)"
        R"("peer_max_queued_bytes":"8MiB","reply_budget":"32MiB","notify_inbox_messages":100,)"
        R"("notify_inbox_bytes":"1MiB"})"),
    "kv.json");
  BOOST_REQUIRE_MESSAGE(r, why(r));
  BOOST_CHECK_EQUAL(r->retry_backoff.count(), 0);
  BOOST_CHECK_EQUAL(r->retry_backoff_max.count(), 250);
  BOOST_CHECK_EQUAL(r->open_timeout.count(), 750);
  BOOST_CHECK_EQUAL(r->withdraw_timeout.count(), 1500);
  BOOST_CHECK_EQUAL(r->max_connections, 64u);
  BOOST_CHECK_EQUAL(r->max_connections_per_host, 8u);
  BOOST_CHECK_EQUAL(r->handshake_timeout.count(), 2000);
  BOOST_CHECK_EQUAL(r->peer_max_queued_messages, 32u);
  BOOST_CHECK_EQUAL(r->peer_max_queued_bytes, 8ULL << 20);
  BOOST_CHECK_EQUAL(r->reply_budget, 32ULL << 20);
  BOOST_CHECK_EQUAL(r->notify_inbox_messages, 100u);
  BOOST_CHECK_EQUAL(r->notify_inbox_bytes, 1ULL << 20);
  BOOST_CHECK(r->warnings.empty());
}

BOOST_AUTO_TEST_CASE(fields_parsed_but_unused_are_named) {
  config::settings plain;
  BOOST_CHECK(config::unused_fields(plain).empty());
  auto r = config::parse(
    doc(R"("device_name":"mlx5_0","master_server_address":"10.0.0.1:50051",)"
        R"("local_buffer_size":"2GB")"),
    "kv.json");
  BOOST_REQUIRE_MESSAGE(r, why(r));
  auto lines = config::unused_fields(*r);
  BOOST_REQUIRE_EQUAL(lines.size(), 3u);
  BOOST_CHECK_MESSAGE(contains(lines[0], "device_name") && contains(lines[0], "not used"), lines[0]);
  BOOST_CHECK_MESSAGE(contains(lines[1], "master_server_address"), lines[1]);
  BOOST_CHECK_MESSAGE(contains(lines[2], "local_buffer_size"), lines[2]);
  for (const auto& l : lines)
    BOOST_CHECK_MESSAGE(contains(l, "kv.json"), l);
}

BOOST_AUTO_TEST_CASE(sizes_as_numbers_and_strings) {
  auto r = config::parse(doc(R"("global_segment_size":"4GB","local_buffer_size":123456789)"), "s.json");
  BOOST_REQUIRE_MESSAGE(r, why(r));
  BOOST_CHECK_EQUAL(r->global_segment_size, 4ULL << 30);
  BOOST_CHECK_EQUAL(r->local_buffer_size, 123456789u);

  auto d = config::parse(doc(R"("global_segment_size":1073741824.0,"local_buffer_size":" 2 GB ")"), "s.json");
  BOOST_REQUIRE_MESSAGE(d, why(d));
  BOOST_CHECK_EQUAL(d->global_segment_size, 1ULL << 30);
  BOOST_CHECK_EQUAL(d->local_buffer_size, 2ULL << 30);
}

BOOST_AUTO_TEST_CASE(device_name_lists) {
  auto r = config::parse(doc(R"("device_name":"mlx5_0, mlx5_1,,mlx5_2 ")"), "d.json");
  BOOST_REQUIRE_MESSAGE(r, why(r));
  BOOST_REQUIRE_EQUAL(r->device_names.size(), 3u);
  BOOST_CHECK_EQUAL(r->device_names[0], "mlx5_0");
  BOOST_CHECK_EQUAL(r->device_names[1], "mlx5_1");
  BOOST_CHECK_EQUAL(r->device_names[2], "mlx5_2");
  for (auto all : {R"("device_name":"")", R"("device_name":"auto-discovery")"}) {
    auto a = config::parse(doc(all), "d.json");
    BOOST_REQUIRE_MESSAGE(a, why(a));
    BOOST_CHECK(a->device_names.empty());
  }
}

BOOST_AUTO_TEST_CASE(hostname_with_port_sets_rpc_port) {
  auto r = config::parse(R"({"local_hostname":"node7:15000","metadata_server":"P2PHANDSHAKE"})", "h.json");
  BOOST_REQUIRE_MESSAGE(r, why(r));
  BOOST_CHECK_EQUAL(r->local_hostname, "node7");
  BOOST_CHECK_EQUAL(r->rpc_port, 15000);

  // An IPv6 address without a port is kept whole.
  auto v6 = config::parse(R"({"local_hostname":"fe80::1","metadata_server":"P2PHANDSHAKE"})", "h.json");
  BOOST_REQUIRE_MESSAGE(v6, why(v6));
  BOOST_CHECK_EQUAL(v6->local_hostname, "fe80::1");
  BOOST_CHECK_EQUAL(v6->rpc_port, 0);

  // The port in local_hostname does not depend on where the "kvferry" object sits.
  for (auto text : {R"({"kvferry":{"data_port":1},"local_hostname":"n:15001","metadata_server":"P2PHANDSHAKE"})",
                    R"({"local_hostname":"n:15001","metadata_server":"P2PHANDSHAKE","kvferry":{"data_port":1}})"}) {
    auto o = config::parse(text, "h.json");
    BOOST_REQUIRE_MESSAGE(o, why(o));
    BOOST_CHECK_EQUAL(o->rpc_port, 15001);
    BOOST_CHECK_EQUAL(o->data_port, 1);
  }

  for (auto bad : {"node7:0", "node7:65536", "node7:", "node7:http"}) {
    auto b = config::parse(std::string(R"({"local_hostname":")") + bad
                             + R"(","metadata_server":"P2PHANDSHAKE"})",
                           "h.json");
    expect_config_error(b, {"h.json", "local_hostname", bad, "host:port"});
  }
}

BOOST_AUTO_TEST_CASE(unknown_fields_become_warnings) {
  auto r = config::parse(doc(R"("mystery":1,"kvferry":{"turbo":true})"), "w.json");
  BOOST_REQUIRE_MESSAGE(r, why(r));
  BOOST_REQUIRE_EQUAL(r->warnings.size(), 2u);
  BOOST_CHECK(contains(r->warnings[0] + r->warnings[1], "'mystery'"));
  BOOST_CHECK(contains(r->warnings[0] + r->warnings[1], "'kvferry.turbo'"));
  for (const auto& w : r->warnings)
    BOOST_CHECK_MESSAGE(contains(w, "w.json"), w);
}

// -- parse_size ---------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(parse_size_accepts) {
  struct { std::string_view text; uint64_t bytes; } cases[] = {
    {"4GB", 4ULL << 30},
    {"4gb", 4ULL << 30},
    {"4G", 4ULL << 30},
    {"1.5 GiB", 3ULL << 29},
    {" 2 GB ", 2ULL << 30},
    {"64KiB", 64ULL << 10},
    {"64 KB", 64ULL << 10},
    {"1k", 1024},
    {"3M", 3ULL << 20},
    {"512MiB", 512ULL << 20},
    {"2TB", 2ULL << 40},
    {"512", 512},
    {"512B", 512},
    {"0", 0},
    {"1.0", 1},
    {"0.5KiB", 512},
    {"18446744073709551615", UINT64_MAX},
    {"16777215TiB", 16777215ULL << 40},
  };
  for (const auto& c : cases) {
    auto r = size_of(c.text);
    BOOST_REQUIRE_MESSAGE(r, "'" << c.text << "': " << why(r));
    BOOST_CHECK_MESSAGE(*r == c.bytes, "'" << c.text << "' gave " << *r << ", expected " << c.bytes);
  }
}

BOOST_AUTO_TEST_CASE(parse_size_rejects) {
  struct { std::string_view text; std::string_view why; } cases[] = {
    {"", "empty"},
    {"   ", "empty"},
    {"GB", "number"},
    {"4 parsecs", "unit"},
    {"-1", "number"},
    {"1.2.3", "number"},
    {".5GB", "number"},
    {"5.GB", "number"},
    {"99999999999TB", "too large"},
    {"16777216TiB", "too large"},
    {"18446744073709551616", "too large"},
    {"1.5", "fraction of a byte"},
    {"1.5B", "fraction of a byte"},
    {"4GBB", "unit"},
    {"4 G B", "unit"},
  };
  for (const auto& c : cases) {
    auto r = size_of(c.text);
    BOOST_REQUIRE_MESSAGE(!r, "'" << c.text << "' was accepted as " << (r ? *r : 0));
    BOOST_CHECK(code_of(r.error()) == errc::invalid_config);
    auto text = context_of(r.error());
    BOOST_CHECK_MESSAGE(contains(text, "test.size"), text);
    BOOST_CHECK_MESSAGE(contains(text, "'" + std::string(c.text) + "'"), text);
    BOOST_CHECK_MESSAGE(contains(text, c.why), "'" << c.text << "': " << text);
    BOOST_CHECK_MESSAGE(contains(text, "expected"), text);
  }
}

BOOST_AUTO_TEST_CASE(size_fields_reject_bad_values) {
  expect_config_error(config::parse(doc(R"("global_segment_size":"4 parsecs")"), "s.json"),
                      {"s.json", "global_segment_size", "4 parsecs", "expected"});
  expect_config_error(config::parse(doc(R"("local_buffer_size":-1)"), "s.json"),
                      {"s.json", "local_buffer_size", "-1", "expected"});
  expect_config_error(config::parse(doc(R"("local_buffer_size":1.5)"), "s.json"),
                      {"s.json", "local_buffer_size", "1.5", "expected"});
  expect_config_error(config::parse(doc(R"("local_buffer_size":true)"), "s.json"),
                      {"s.json", "local_buffer_size", "true", "boolean", "expected"});
  expect_config_error(config::parse(doc(R"("global_segment_size":"99999999999TB")"), "s.json"),
                      {"s.json", "global_segment_size", "99999999999TB", "too large"});
}

// -- parse_metadata_server ----------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(metadata_server_forms) {
  auto p2p = config::parse_metadata_server("P2PHANDSHAKE", "m");
  BOOST_REQUIRE(p2p);
  BOOST_CHECK(p2p->kind == config::metadata_kind::p2p_handshake);
  BOOST_CHECK(p2p->endpoints.empty());

  auto http = config::parse_metadata_server("http://10.0.0.1:8080/metadata", "m");
  BOOST_REQUIRE_MESSAGE(http, why(http));
  BOOST_CHECK(http->kind == config::metadata_kind::http);
  BOOST_REQUIRE_EQUAL(http->endpoints.size(), 1u);
  BOOST_CHECK_EQUAL(http->endpoints[0], "http://10.0.0.1:8080/metadata");

  auto etcd = config::parse_metadata_server("etcd://h1:2379,h2:2379", "m");
  BOOST_REQUIRE_MESSAGE(etcd, why(etcd));
  BOOST_CHECK(etcd->kind == config::metadata_kind::etcd);
  BOOST_REQUIRE_EQUAL(etcd->endpoints.size(), 2u);
  BOOST_CHECK_EQUAL(etcd->endpoints[0], "h1:2379");
  BOOST_CHECK_EQUAL(etcd->endpoints[1], "h2:2379");

  auto plain = config::parse_metadata_server("10.1.1.1:2379", "m");
  BOOST_REQUIRE_MESSAGE(plain, why(plain));
  BOOST_CHECK(plain->kind == config::metadata_kind::etcd);
  BOOST_REQUIRE_EQUAL(plain->endpoints.size(), 1u);
  BOOST_CHECK_EQUAL(plain->endpoints[0], "10.1.1.1:2379");
  BOOST_CHECK_EQUAL(plain->text, "10.1.1.1:2379");

  auto redis = config::parse_metadata_server("redis://cache:6379", "m");
  BOOST_REQUIRE_MESSAGE(redis, why(redis));
  BOOST_CHECK(redis->kind == config::metadata_kind::redis);
  BOOST_REQUIRE_EQUAL(redis->endpoints.size(), 1u);
  BOOST_CHECK_EQUAL(redis->endpoints[0], "cache:6379");
}

BOOST_AUTO_TEST_CASE(metadata_server_rejects) {
  struct { std::string_view text; std::string_view why; } cases[] = {
    {"", "no endpoint"},
    {"etcd://", "no endpoint"},
    {"etcd://h1", "not host:port"},
    {"etcd://h1:2379,h2", "'h2'"},
    {"etcd://h1:0", "not host:port"},
    {"etcd://h1:99999", "not host:port"},
    {":2379", "not host:port"},
    {"redis://cache", "not host:port"},
    {"zk://h:2181", "unknown scheme"},
    {"http://", "no host"},
    {"http:///metadata", "no host"},
    {"p2phandshake", "not host:port"},
  };
  for (const auto& c : cases) {
    auto r = config::parse_metadata_server(c.text, "cfg.json: field 'metadata_server'");
    BOOST_REQUIRE_MESSAGE(!r, "'" << c.text << "' was accepted");
    BOOST_CHECK(code_of(r.error()) == errc::invalid_config);
    auto text = context_of(r.error());
    BOOST_CHECK_MESSAGE(contains(text, "cfg.json: field 'metadata_server'"), text);
    BOOST_CHECK_MESSAGE(contains(text, "'" + std::string(c.text) + "'"), text);
    BOOST_CHECK_MESSAGE(contains(text, c.why), "'" << c.text << "': " << text);
    BOOST_CHECK_MESSAGE(contains(text, "expected P2PHANDSHAKE"), text);
  }
  // Through parse(): the file and the field are named.
  expect_config_error(
    config::parse(R"({"local_hostname":"h","metadata_server":"zk://h:2181"})", "cfg.json"),
    {"cfg.json", "metadata_server", "zk://h:2181", "expected"});
}

// -- malformed documents ------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(malformed_json_names_file_line_and_column) {
  // The stray '}' after a dangling comma is on line 3, column 1.
  auto r = config::parse("{\n  \"local_hostname\": \"h\",\n}\n", "broken.json");
  expect_config_error(r, {"broken.json", "malformed JSON", "line 3", "column 1", "expected"});

  auto truncated = config::parse("{\"local_hostname\": \"h\"", "cut.json");
  expect_config_error(truncated, {"cut.json", "malformed JSON", "line 1"});

  auto empty = config::parse("", "empty.json");
  expect_config_error(empty, {"empty.json", "malformed JSON"});

  auto garbage = config::parse("local_hostname = h", "ini.json");
  expect_config_error(garbage, {"ini.json", "malformed JSON", "line 1, column 1"});
}

BOOST_AUTO_TEST_CASE(trailing_content_after_the_object_is_rejected) {
  auto r = config::parse(doc() + "\n{\"local_hostname\": \"other\"}", "two.json");
  expect_config_error(r, {"two.json", "malformed JSON", "line 2"});
  auto junk = config::parse(doc() + " junk", "junk.json");
  expect_config_error(junk, {"junk.json", "malformed JSON"});
  // Trailing whitespace is fine.
  auto ws = config::parse(doc() + " \n\t\n", "ws.json");
  BOOST_CHECK_MESSAGE(ws, why(ws));
}

BOOST_AUTO_TEST_CASE(top_level_must_be_an_object) {
  expect_config_error(config::parse("[1,2]", "arr.json"), {"arr.json", "an array", "expected a JSON object"});
  expect_config_error(config::parse("\"x\"", "str.json"), {"str.json", "a string", "expected a JSON object"});
}

BOOST_AUTO_TEST_CASE(wrong_types) {
  expect_config_error(config::parse(R"({"local_hostname":42,"metadata_server":"P2PHANDSHAKE"})", "t.json"),
                      {"t.json", "'local_hostname'", "42", "a number", "expected a string"});
  expect_config_error(config::parse(doc(R"("protocol":["tcp"])"), "t.json"),
                      {"t.json", "'protocol'", "[\"tcp\"]", "an array", "expected"});
  expect_config_error(config::parse(doc(R"("kvferry":{"worker_count":"four"})"), "t.json"),
                      {"t.json", "'kvferry.worker_count'", "\"four\"", "a string",
                       "expected a whole number"});
  expect_config_error(config::parse(doc(R"("kvferry":{"retry_limit":2.5})"), "t.json"),
                      {"t.json", "'kvferry.retry_limit'", "2.5", "expected a whole number"});
  expect_config_error(config::parse(doc(R"("kvferry":{"log_level":3})"), "t.json"),
                      {"t.json", "'kvferry.log_level'", "3", "expected one of"});
  expect_config_error(config::parse(doc(R"("kvferry":[1])"), "t.json"),
                      {"t.json", "'kvferry'", "an array", "expected an object"});
  expect_config_error(config::parse(doc(R"("device_name":null)"), "t.json"),
                      {"t.json", "'device_name'", "null", "expected a string"});
}

BOOST_AUTO_TEST_CASE(unknown_protocol) {
  expect_config_error(config::parse(doc(R"("protocol":"udp")"), "p.json"),
                      {"p.json", "'protocol'", "'udp'", "\"tcp\" or \"rdma\""});
  // Protocol names are exact.
  expect_config_error(config::parse(doc(R"("protocol":"TCP")"), "p.json"),
                      {"p.json", "'protocol'", "'TCP'"});
}

BOOST_AUTO_TEST_CASE(required_fields) {
  expect_config_error(config::parse(R"({"metadata_server":"P2PHANDSHAKE"})", "req.json"),
                      {"req.json", "'local_hostname'", "missing", "expected"});
  expect_config_error(config::parse(R"({"local_hostname":"h"})", "req.json"),
                      {"req.json", "'metadata_server'", "missing", "expected"});
  expect_config_error(config::parse("{}", "req.json"), {"req.json", "missing"});
  expect_config_error(config::parse(R"({"local_hostname":"","metadata_server":"P2PHANDSHAKE"})", "req.json"),
                      {"req.json", "'local_hostname'", "empty", "expected"});
}

BOOST_AUTO_TEST_CASE(master_server_address) {
  auto ok = config::parse(doc(R"("master_server_address":"etcd://h:2379")"), "m.json");
  BOOST_REQUIRE_MESSAGE(ok, why(ok));
  BOOST_CHECK_EQUAL(ok->master_server_address, "etcd://h:2379");
  expect_config_error(config::parse(doc(R"("master_server_address":"master")"), "m.json"),
                      {"m.json", "'master_server_address'", "'master'", "host:port"});
}

BOOST_AUTO_TEST_CASE(kvferry_values_out_of_range) {
  struct { std::string_view member; std::string_view field; std::string_view value; } cases[] = {
    {R"("worker_count":0)", "'kvferry.worker_count'", "0"},
    {R"("worker_count":65)", "'kvferry.worker_count'", "65"},
    {R"("tcp_worker_count":0)", "'kvferry.tcp_worker_count'", "0"},
    {R"("task_deadline_ms":0)", "'kvferry.task_deadline_ms'", "0"},
    {R"("task_deadline_ms":86400001)", "'kvferry.task_deadline_ms'", "86400001"},
    {R"("retry_limit":101)", "'kvferry.retry_limit'", "101"},
    {R"("rpc_port":65536)", "'kvferry.rpc_port'", "65536"},
    {R"("data_port":-1)", "'kvferry.data_port'", "-1"},
    {R"("slice_size":0)", "'kvferry.slice_size'", "0"},
    {R"("tcp_slice_size":"65MiB")", "'kvferry.tcp_slice_size'", "65MiB"},
    {R"("slice_size":"0")", "'kvferry.slice_size'", "'0'"},
    {R"("slice_size":"65MiB")", "'kvferry.slice_size'", "65MiB"},
    {R"("slice_size":67108865)", "'kvferry.slice_size'", "67108865"},
    {R"("log_level":"loud")", "'kvferry.log_level'", "'loud'"},
    {R"("max_connections":0)", "'kvferry.max_connections'", "0"},
    {R"("open_timeout_ms":0)", "'kvferry.open_timeout_ms'", "0"},
    {R"("retry_backoff_ms":60001)", "'kvferry.retry_backoff_ms'", "60001"},
    {R"("reply_budget":"1KiB")", "'kvferry.reply_budget'", "1KiB"},
    {R"("notify_inbox_bytes":"x")", "'kvferry.notify_inbox_bytes'", "'x'"},
  };
  for (const auto& c : cases) {
    auto r = config::parse(doc(std::string(R"("kvferry":{)") + std::string(c.member) + "}"), "kv.json");
    BOOST_TEST_CONTEXT("member " << c.member) {
      expect_config_error(r, {"kv.json", c.field, c.value, "expected"});
    }
  }
}

// -- RDMA ----------------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(rdma_defaults) {
  const config::rdma_settings r = settings{}.rdma;
  BOOST_CHECK(r.provider == config::rdma_provider_kind::verbs);
  BOOST_CHECK_EQUAL(r.emulated_devices, 2u);
  BOOST_CHECK_EQUAL(int{r.port}, 1);
  BOOST_CHECK_EQUAL(int{r.gid_index}, 0);
  BOOST_CHECK_EQUAL(r.qp_per_endpoint, 2u);
  BOOST_CHECK_EQUAL(r.max_endpoints, 256u);
  BOOST_CHECK_EQUAL(r.max_wr, 256u);
  BOOST_CHECK_EQUAL(r.cq_depth, 4096u);
  BOOST_CHECK_EQUAL(r.mtu, 4096u);
  BOOST_CHECK_EQUAL(r.completion_timeout.count(), 2000);
  BOOST_CHECK_EQUAL(r.nic_error_limit, 3u);
  BOOST_CHECK_EQUAL(r.nic_probe.count(), 100);
  BOOST_CHECK(r.nic_priority_matrix.empty());
  // The Mooncake example sets none of them.
  auto m = config::parse(mooncake_example, "mooncake.json");
  BOOST_REQUIRE_MESSAGE(m, why(m));
  BOOST_CHECK(m->rdma == r);
  BOOST_CHECK_EQUAL(config::to_string(r.provider), std::string("verbs"));
}

BOOST_AUTO_TEST_CASE(rdma_fields_parse) {
  auto r = config::parse(
    doc(R"("protocol":"rdma","kvferry":{"rdma_provider":"emulated","rdma_emulated_devices":16,)"
        R"("rdma_port":2,"rdma_gid_index":3,"rdma_qp_per_endpoint":64,"rdma_max_endpoints":65536,)"
        R"("rdma_max_wr":16384,"rdma_cq_depth":16,"rdma_mtu":1024,)"
        R"("rdma_completion_timeout_ms":600000,"rdma_nic_error_limit":5,)"
        R"("rdma_nic_probe_ms":5000})"),
    "rdma.json");
  BOOST_REQUIRE_MESSAGE(r, why(r));
  const auto& x = r->rdma;
  BOOST_CHECK(x.provider == config::rdma_provider_kind::emulated);
  BOOST_CHECK_EQUAL(config::to_string(x.provider), std::string("emulated"));
  BOOST_CHECK_EQUAL(x.emulated_devices, 16u);
  BOOST_CHECK_EQUAL(int{x.port}, 2);
  BOOST_CHECK_EQUAL(int{x.gid_index}, 3);
  BOOST_CHECK_EQUAL(x.qp_per_endpoint, 64u);
  BOOST_CHECK_EQUAL(x.max_endpoints, 65536u);
  BOOST_CHECK_EQUAL(x.max_wr, 16384u);
  BOOST_CHECK_EQUAL(x.cq_depth, 16u);
  BOOST_CHECK_EQUAL(x.mtu, 1024u);
  BOOST_CHECK_EQUAL(x.completion_timeout.count(), 600000);
  BOOST_CHECK_EQUAL(x.nic_error_limit, 5u);
  BOOST_CHECK_EQUAL(x.nic_probe.count(), 5000);
  BOOST_CHECK(r->warnings.empty());
  BOOST_CHECK(config::unused_fields(*r).empty());
  for (unsigned mtu : {256u, 512u, 2048u, 4096u}) {
    auto m = config::parse(doc(R"("kvferry":{"rdma_mtu":)" + std::to_string(mtu) + "}"), "m.json");
    BOOST_REQUIRE_MESSAGE(m, why(m));
    BOOST_CHECK_EQUAL(m->rdma.mtu, mtu);
  }
  auto unknown = config::parse(doc(R"("kvferry":{"rdma_speed":9})"), "u.json");
  BOOST_REQUIRE_MESSAGE(unknown, why(unknown));
  BOOST_REQUIRE_EQUAL(unknown->warnings.size(), 1u);
  BOOST_CHECK_MESSAGE(contains(unknown->warnings[0], "'kvferry.rdma_speed'"), unknown->warnings[0]);
}

BOOST_AUTO_TEST_CASE(rdma_values_rejected) {
  struct { std::string_view member; std::string_view field; std::string_view value;
           std::string_view expectation; } cases[] = {
    {R"("rdma_provider":"ucx")", "'kvferry.rdma_provider'", "'ucx'", "\"emulated\""},
    {R"("rdma_provider":1)", "'kvferry.rdma_provider'", "1", "\"verbs\""},
    {R"("rdma_emulated_devices":0)", "'kvferry.rdma_emulated_devices'", "0", "from 1 to 16"},
    {R"("rdma_emulated_devices":17)", "'kvferry.rdma_emulated_devices'", "17", "from 1 to 16"},
    {R"("rdma_port":0)", "'kvferry.rdma_port'", "0", "from 1 to 255"},
    {R"("rdma_port":256)", "'kvferry.rdma_port'", "256", "from 1 to 255"},
    {R"("rdma_gid_index":-1)", "'kvferry.rdma_gid_index'", "-1", "from 0 to 255"},
    {R"("rdma_gid_index":"3")", "'kvferry.rdma_gid_index'", "\"3\"", "from 0 to 255"},
    {R"("rdma_qp_per_endpoint":65)", "'kvferry.rdma_qp_per_endpoint'", "65", "from 1 to 64"},
    {R"("rdma_max_endpoints":0)", "'kvferry.rdma_max_endpoints'", "0", "from 1 to 65536"},
    {R"("rdma_max_wr":16385)", "'kvferry.rdma_max_wr'", "16385", "from 1 to 16384"},
    {R"("rdma_cq_depth":15)", "'kvferry.rdma_cq_depth'", "15", "from 16 to 1048576"},
    {R"("rdma_cq_depth":1048577)", "'kvferry.rdma_cq_depth'", "1048577", "from 16 to 1048576"},
    {R"("rdma_mtu":1500)", "'kvferry.rdma_mtu'", "1500", "256, 512, 1024, 2048, 4096"},
    {R"("rdma_mtu":9000)", "'kvferry.rdma_mtu'", "9000", "from 256 to 4096"},
    {R"("rdma_completion_timeout_ms":0)", "'kvferry.rdma_completion_timeout_ms'", "0",
     "from 1 to 600000"},
    {R"("rdma_nic_error_limit":0)", "'kvferry.rdma_nic_error_limit'", "0", "from 1 to 1000"},
    {R"("rdma_nic_probe_ms":5001)", "'kvferry.rdma_nic_probe_ms'", "5001", "from 1 to 5000"},
    {R"("nic_priority_matrix":7)", "'kvferry.nic_priority_matrix'", "7", "a string naming"},
  };
  for (const auto& c : cases) {
    auto r = config::parse(doc(std::string(R"("kvferry":{)") + std::string(c.member) + "}"),
                           "kv.json");
    BOOST_TEST_CONTEXT("member " << c.member) {
      expect_config_error(r, {"kv.json", c.field, c.value, "expected", c.expectation});
    }
  }
}

BOOST_AUTO_TEST_CASE(rdma_fields_without_rdma_are_named) {
  auto r = config::parse(
    doc(R"("kvferry":{"rdma_port":2,"nic_priority_matrix":{"cpu:0":[[],[]]}})"), "kv.json");
  BOOST_REQUIRE_MESSAGE(r, why(r));
  auto lines = config::unused_fields(*r);
  BOOST_REQUIRE_EQUAL(lines.size(), 1u);
  for (auto part : {"kv.json", "rdma_port", "nic_priority_matrix", "protocol is tcp", "not used"})
    BOOST_CHECK_MESSAGE(contains(lines[0], part), lines[0] << " lacks " << part);
  auto emu
    = config::parse(doc(R"("protocol":"rdma","kvferry":{"rdma_emulated_devices":4})"), "e.json");
  BOOST_REQUIRE_MESSAGE(emu, why(emu));
  auto emu_lines = config::unused_fields(*emu);
  bool named = false;
  for (const auto& l : emu_lines)
    named = named || (contains(l, "rdma_emulated_devices") && contains(l, "verbs"));
  BOOST_CHECK(named);
}

BOOST_AUTO_TEST_CASE(nic_priority_matrix_in_place) {
  auto r = config::parse(
    doc(R"("protocol":"rdma","kvferry":{"nic_priority_matrix":)"
        R"({"cpu:0":[["mlx5_0"],["mlx5_1"]],"cuda:0":[["mlx5_1"],[]],"cuda:12":[[],["a","b"]]}})"),
    "m.json");
  BOOST_REQUIRE_MESSAGE(r, why(r));
  const auto& m = r->rdma.nic_priority_matrix;
  BOOST_REQUIRE_EQUAL(m.size(), 3u);
  using list = std::vector<std::string>;
  BOOST_CHECK(m.at("cpu:0").preferred == list{"mlx5_0"});
  BOOST_CHECK(m.at("cpu:0").fallback == list{"mlx5_1"});
  BOOST_CHECK(m.at("cuda:0").preferred == list{"mlx5_1"});
  BOOST_CHECK(m.at("cuda:0").fallback.empty());
  BOOST_CHECK(m.at("cuda:12").preferred.empty());
  BOOST_CHECK((m.at("cuda:12").fallback == list{"a", "b"}));
  auto empty = config::parse(doc(R"("kvferry":{"nic_priority_matrix":{}})"), "m.json");
  BOOST_REQUIRE_MESSAGE(empty, why(empty));
  BOOST_CHECK(empty->rdma.nic_priority_matrix.empty());
}

BOOST_AUTO_TEST_CASE(nic_priority_matrix_from_a_file) {
  temp_dir dir;
  auto matrix = dir.write("topology.json", R"({"cpu:1": [["mlx5_1", "mlx5_3"], ["mlx5_0"]]})");
  // An absolute path, and a path relative to the configuration file's directory.
  auto absolute = config::parse(doc(R"("kvferry":{"nic_priority_matrix":")" + matrix + R"("})"),
                                "abs.json");
  BOOST_REQUIRE_MESSAGE(absolute, why(absolute));
  auto config_path = dir.write("config.json",
                               doc(R"("kvferry":{"nic_priority_matrix":"topology.json"})"));
  auto relative = config::load_file(config_path);
  BOOST_REQUIRE_MESSAGE(relative, why(relative));
  for (const auto* s : {&*absolute, &*relative}) {
    const auto& m = s->rdma.nic_priority_matrix;
    BOOST_REQUIRE_EQUAL(m.size(), 1u);
    BOOST_CHECK((m.at("cpu:1").preferred == std::vector<std::string>{"mlx5_1", "mlx5_3"}));
    BOOST_CHECK(m.at("cpu:1").fallback == std::vector<std::string>{"mlx5_0"});
  }
  // A missing file and a malformed one name the configuration, the field and the file.
  expect_config_error(config::load_file(dir.write("missing.json",
                        doc(R"("kvferry":{"nic_priority_matrix":"nowhere.json"})"))),
                      {"missing.json", "'kvferry.nic_priority_matrix'", "nowhere.json",
                       "cannot open", "expected a JSON file"});
  dir.write("broken.json", "{\"cpu:0\": [[\"mlx5_0\"],\n [}");
  expect_config_error(config::load_file(dir.write("uses-broken.json",
                        doc(R"("kvferry":{"nic_priority_matrix":"broken.json"})"))),
                      {"uses-broken.json", "'kvferry.nic_priority_matrix'", "broken.json",
                       "line 2", "expected one JSON object"});
  dir.write("bad-row.json", R"({"cpu:0": [["mlx5_0"]]})");
  expect_config_error(config::load_file(dir.write("uses-bad-row.json",
                        doc(R"("kvferry":{"nic_priority_matrix":"bad-row.json"})"))),
                      {"uses-bad-row.json", "bad-row.json", "location 'cpu:0'",
                       "an array of 1 element;", "exactly 2 arrays"});
  expect_config_error(config::parse(doc(R"("kvferry":{"nic_priority_matrix":""})"), "e.json"),
                      {"e.json", "'kvferry.nic_priority_matrix'", "is empty", "expected"});
}

BOOST_AUTO_TEST_CASE(nic_priority_matrix_rejects) {
  struct { std::string_view matrix; std::string_view part1; std::string_view part2; } cases[] = {
    {R"([["mlx5_0"],[]])", "is an array", "expected an object such as"},
    {R"({"gpu:0":[["mlx5_0"],[]]})", "location 'gpu:0'", "expected \"cpu:N\" or \"cuda:N\""},
    {R"({"cpu":[["mlx5_0"],[]]})", "location 'cpu'", "expected \"cpu:N\""},
    {R"({"cpu:01":[["mlx5_0"],[]]})", "location 'cpu:01'", "without leading zeros"},
    {R"({"cuda:x":[["mlx5_0"],[]]})", "location 'cuda:x'", "expected"},
    {R"({"cpu:0":["mlx5_0"]})", "location 'cpu:0'", "exactly 2 arrays"},
    {R"({"cpu:0":[[],[],[]]})", "an array of 3 elements", "exactly 2 arrays"},
    {R"({"cpu:0":{"a":1}})", "is an object", "exactly 2 arrays"},
    {R"({"cpu:0":["mlx5_0",[]]})", "preferred list \"mlx5_0\" is a string", "array of NIC names"},
    {R"({"cpu:0":[[],[""]]})", "fallback NIC \"\" is an empty string", "a NIC name"},
    {R"({"cpu:0":[[3],[]]})", "preferred NIC 3 is a number", "a NIC name"},
    {R"({"cpu:0":[["mlx5_0"],["mlx5_0"]]})", "'mlx5_0' is listed as both preferred and fallback",
     "at most once per location"},
    {R"({"cpu:0":[["mlx5_0","mlx5_0"],[]]})", "listed twice in the preferred list",
     "at most once"},
  };
  for (const auto& c : cases) {
    auto r = config::parse(
      doc(R"("kvferry":{"nic_priority_matrix":)" + std::string(c.matrix) + "}"), "bad.json");
    BOOST_TEST_CONTEXT("matrix " << c.matrix) {
      expect_config_error(r, {"bad.json", "'kvferry.nic_priority_matrix'", c.part1, c.part2});
    }
  }
}

// -- files and the environment ------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(load_file_reads_and_names_the_path) {
  temp_dir dir;
  auto good = dir.write("good.json", mooncake_example);
  auto r = config::load_file(good);
  BOOST_REQUIRE_MESSAGE(r, why(r));
  BOOST_CHECK_EQUAL(r->source, good);
  BOOST_CHECK_EQUAL(r->local_hostname, "192.168.0.137");

  auto bad = dir.write("bad.json", "{\n\"local_hostname\": \"h\",\n\"metadata_server\": P2P\n}");
  expect_config_error(config::load_file(bad), {bad, "malformed JSON", "line 3"});

  auto missing = (dir.path / "nope.json").string();
  expect_config_error(config::load_file(missing), {missing, "cannot open"});
  // A directory is not a configuration file.
  expect_config_error(config::load_file(dir.path.string()), {dir.path.string()});
}

BOOST_AUTO_TEST_CASE(load_uses_cli_then_kvferry_config_then_mooncake_config_path) {
  temp_dir dir;
  auto cli = dir.write("cli.json", R"({"local_hostname":"cli-host","metadata_server":"P2PHANDSHAKE"})");
  auto kv = dir.write("kv.json", R"({"local_hostname":"kv-host","metadata_server":"P2PHANDSHAKE"})");
  auto mc = dir.write("mc.json", R"({"local_hostname":"mc-host","metadata_server":"P2PHANDSHAKE"})");

  {
    env_guard a("KVFERRY_CONFIG", nullptr);
    env_guard b("MOONCAKE_CONFIG_PATH", nullptr);
    auto r = config::load(std::nullopt);
    BOOST_REQUIRE_MESSAGE(r, why(r));
    BOOST_CHECK_EQUAL(r->source, "<embedded defaults>");
    BOOST_CHECK_EQUAL(r->local_hostname, "127.0.0.1");
  }
  {
    env_guard a("KVFERRY_CONFIG", nullptr);
    env_guard b("MOONCAKE_CONFIG_PATH", mc.c_str());
    auto r = config::load(std::nullopt);
    BOOST_REQUIRE_MESSAGE(r, why(r));
    BOOST_CHECK_EQUAL(r->local_hostname, "mc-host");
    BOOST_CHECK_EQUAL(r->source, mc);
  }
  {
    env_guard a("KVFERRY_CONFIG", kv.c_str());
    env_guard b("MOONCAKE_CONFIG_PATH", mc.c_str());
    auto r = config::load(std::nullopt);
    BOOST_REQUIRE_MESSAGE(r, why(r));
    BOOST_CHECK_EQUAL(r->local_hostname, "kv-host");
    // --config wins over both variables.
    auto c = config::load(cli);
    BOOST_REQUIRE_MESSAGE(c, why(c));
    BOOST_CHECK_EQUAL(c->local_hostname, "cli-host");
    BOOST_CHECK_EQUAL(c->source, cli);
  }
  {
    // An empty variable counts as unset.
    env_guard a("KVFERRY_CONFIG", "");
    env_guard b("MOONCAKE_CONFIG_PATH", mc.c_str());
    auto r = config::load(std::nullopt);
    BOOST_REQUIRE_MESSAGE(r, why(r));
    BOOST_CHECK_EQUAL(r->local_hostname, "mc-host");
  }
}

BOOST_AUTO_TEST_CASE(load_errors_name_the_variable) {
  temp_dir dir;
  auto broken = dir.write("broken.json", R"({"local_hostname":"h","metadata_server":"P2PHANDSHAKE","protocol":"udp"})");
  auto absent = (dir.path / "absent.json").string();
  {
    env_guard a("KVFERRY_CONFIG", broken.c_str());
    env_guard b("MOONCAKE_CONFIG_PATH", nullptr);
    expect_config_error(config::load(std::nullopt), {broken, "'protocol'", "udp", "KVFERRY_CONFIG"});
  }
  {
    env_guard a("KVFERRY_CONFIG", nullptr);
    env_guard b("MOONCAKE_CONFIG_PATH", absent.c_str());
    expect_config_error(config::load(std::nullopt), {absent, "cannot open", "MOONCAKE_CONFIG_PATH"});
  }
  {
    // A bad --config is reported even when the variables name a good file.
    auto good = dir.write("good.json", doc());
    env_guard a("KVFERRY_CONFIG", good.c_str());
    expect_config_error(config::load(absent), {absent, "cannot open"});
  }
}
