#define BOOST_TEST_MODULE metrics_test
#include <boost/test/unit_test.hpp>

// The metrics port of `kvferry node`, `master` and `store-node` as an operator scrapes it: the processes
// run a known workload, curl scrapes /metrics, and the values must be exactly the workload's
// (what is deterministic: bytes, tasks by state, refusals by reason, objects, puts, gets,
// removes). Then malformed requests (garbage, an oversized head, a request that never finishes)
// get their error responses and the port keeps serving. The initiator's and the store client's
// own metrics (render_metrics in this process) are checked against the same workload.
//
// Usage: metrics_test [boost test options] -- /path/to/kvferry /path/to/curl

#include <chrono>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "actors/metrics.hpp"
#include "actors/store/client.hpp"
#include "actors/store/metrics.hpp"
#include "tests/support/node_rig.hpp"

using namespace std::chrono_literals;
using namespace kvferry;
using namespace kvferry::test::rig;
using kvferry::test::child_process;
using kvferry::test::contains;
using kvferry::test::why;

namespace {

std::string curl_binary() {
  auto& suite = boost::unit_test::framework::master_test_suite();
  if (suite.argc < 3)
    throw std::runtime_error(
      "usage: metrics_test [boost options] -- /path/to/kvferry /path/to/curl");
  return suite.argv[2];
}

struct scraped {
  std::string head;
  std::string body;
  std::string transcript;
};

/// `curl -i` of http://127.0.0.1:port/path.
scraped curl(uint16_t port, const std::string& path = "/metrics") {
  child_process p({curl_binary(), "-s", "-i", "--max-time", "20",
                   "http://127.0.0.1:" + std::to_string(port) + path});
  auto rc = p.wait_exit_code(30s);
  BOOST_REQUIRE_MESSAGE(rc && *rc == 0, "curl failed\n" << p.transcript());
  auto out = p.out();
  auto end = out.find("\r\n\r\n");
  BOOST_REQUIRE_MESSAGE(end != std::string::npos, "no response head\n" << p.transcript());
  return {out.substr(0, end + 2), out.substr(end + 4), p.transcript()};
}

/// Checks the text format (every family's HELP and TYPE before its samples, each sample line
/// `name{labels} value`, no series twice) and returns the samples by series ("name{labels}").
std::map<std::string, double> parse_metrics(const std::string& text) {
  std::map<std::string, double> out;
  std::set<std::string> typed;
  static const std::regex sample(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$)");
  static const std::regex type_line(R"(^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge)$)");
  size_t at = 0;
  BOOST_REQUIRE_MESSAGE(!text.empty() && text.back() == '\n', "the document does not end a line");
  while (at < text.size()) {
    auto lf = text.find('\n', at);
    auto line = text.substr(at, lf - at);
    at = lf + 1;
    std::smatch m;
    if (line.rfind("# HELP ", 0) == 0)
      continue;
    if (std::regex_match(line, m, type_line)) {
      BOOST_CHECK_MESSAGE(typed.insert(m[1]).second, "family typed twice: " << line);
      continue;
    }
    BOOST_REQUIRE_MESSAGE(std::regex_match(line, m, sample), "not a sample line: '" << line << "'");
    BOOST_CHECK_MESSAGE(typed.count(m[1]) == 1, "a sample before its TYPE: " << line);
    auto series = m[1].str() + m[2].str();
    BOOST_CHECK_MESSAGE(out.count(series) == 0, "series twice: " << series);
    out[series] = std::stod(m[3]);
  }
  return out;
}

/// The value of a series; fails the test when it is absent.
double value(const std::map<std::string, double>& m, const std::string& series) {
  auto it = m.find(series);
  BOOST_REQUIRE_MESSAGE(it != m.end(), "no series " << series);
  return it->second;
}

/// Sends `bytes` on a new connection and returns what the server answers before it closes.
std::string send_and_read(uint16_t port, const std::string& bytes,
                     std::chrono::milliseconds limit = 10s) {
  int fd = kvferry::test::connect_loopback(port);
  BOOST_REQUIRE(fd >= 0);
  size_t sent = 0;
  while (sent < bytes.size()) {
    auto n = ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0)
      break;
    sent += static_cast<size_t>(n);
  }
  std::string out;
  auto until = steady::now() + limit;
  while (steady::now() < until) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 50) <= 0)
      continue;
    char buffer[4096];
    auto n = ::recv(fd, buffer, sizeof(buffer), 0);
    if (n <= 0)
      break;
    out.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

/// What every metrics port must survive: each gets its error response and the port goes on.
void attack_and_check_serving(uint16_t port) {
  auto garbage = send_and_read(port, std::string("\x16\x03\x01\x02\x00garbage\r\n\r\n", 16));
  BOOST_CHECK_MESSAGE(garbage.rfind("HTTP/1.1 400 Bad Request\r\n", 0) == 0, garbage);
  auto big = send_and_read(port, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(100000, 'a')
                              + "\r\n\r\n");
  BOOST_CHECK_MESSAGE(big.rfind("HTTP/1.1 431 ", 0) == 0, big.substr(0, 200));
  auto post = send_and_read(port, "POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  BOOST_CHECK_MESSAGE(post.rfind("HTTP/1.1 405 ", 0) == 0, post);
  auto missing = send_and_read(port, "GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  BOOST_CHECK_MESSAGE(missing.rfind("HTTP/1.1 404 ", 0) == 0, missing);
  // Slowloris: a request that never finishes gets 408 after the timeout (500 ms here); a scrape
  // in the meantime is served.
  std::string slow_answer;
  std::thread slow([&] {
    slow_answer = send_and_read(port, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ", 10s);
  });
  std::this_thread::sleep_for(100ms);
  auto during = curl(port);
  BOOST_CHECK_MESSAGE(during.head.rfind("HTTP/1.1 200 OK\r\n", 0) == 0, during.transcript);
  slow.join();
  BOOST_CHECK_MESSAGE(slow_answer.rfind("HTTP/1.1 408 Request Timeout\r\n", 0) == 0, slow_answer);
}

} // namespace

BOOST_AUTO_TEST_CASE(node_metrics_match_the_workload) {
  test::temp_dir dir("kvferry-metrics");
  const uint16_t metrics_port = test::free_tcp_port();
  auto config = dir.write("node.json", test::node_config(0, 0, 10000));
  node_process node;
  node.proc = std::make_unique<child_process>(std::vector<std::string>{
    kvferry_binary(), "--config", config, "node", "--segment-bytes", std::to_string(8 * MiB),
    "--fill-seed", "7", "--metrics-port", std::to_string(metrics_port), "--metrics-host",
    "127.0.0.1", "--metrics-timeout-ms", "500"});
  auto name = node.proc->wait_for_stdout(std::regex("segment name: (\\S+)"), 60s);
  BOOST_REQUIRE_MESSAGE(name, node.proc->transcript());
  node.name = *name;
  BOOST_CHECK_MESSAGE(contains(node.proc->out(), "metrics on http://127.0.0.1:"
                                                   + std::to_string(metrics_port) + "/metrics"),
                      node.proc->transcript());

  // The workload: 24 READs of 64 KiB, 8 WRITEs of 32 KiB, 3 READs outside the segment (refused
  // by the node: FAILED, never retried). One slice each (tcp slices are 1 MiB).
  initiator init(4 * MiB, initiator_settings(10s), /*check_remote_bounds=*/false);
  auto seg = init.open(node.name);
  std::vector<transfer_request> requests;
  for (uint64_t i = 0; i < 24; ++i)
    requests.push_back({opcode::read, init.local.data + i * 64 * KiB, seg,
                        init.remote_base + i * 64 * KiB, 64 * KiB});
  for (uint64_t i = 0; i < 8; ++i)
    requests.push_back({opcode::write, init.local.data + 2 * MiB + i * 32 * KiB, seg,
                        init.remote_base + 4 * MiB + i * 32 * KiB, 32 * KiB});
  for (uint64_t i = 0; i < 3; ++i)
    requests.push_back({opcode::read, init.local.data + 3 * MiB, seg,
                        init.remote_base + init.remote_len + i * 4096, 4096});
  auto states = run_batch(*init.engine, requests);
  for (size_t i = 0; i < states.size(); ++i)
    BOOST_CHECK_MESSAGE(states[i].state == (i < 32 ? task_state::completed : task_state::failed),
                        "task " << i << ": " << show(states[i]));

  auto s = curl(metrics_port);
  BOOST_CHECK_MESSAGE(s.head.rfind("HTTP/1.1 200 OK\r\n", 0) == 0, s.transcript);
  BOOST_CHECK_MESSAGE(
    contains(s.head, "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"), s.head);
  auto m = parse_metrics(s.body);
  const std::string at = "segment=\"" + node.name + "\"";
  BOOST_CHECK_EQUAL(value(m, "kvferry_served_bytes_total{" + at + ",op=\"read\"}"), 24 * 64 * KiB);
  BOOST_CHECK_EQUAL(value(m, "kvferry_served_bytes_total{" + at + ",op=\"write\"}"), 8 * 32 * KiB);
  BOOST_CHECK_EQUAL(value(m, "kvferry_served_requests_total{" + at + ",port=\"data\"}"), 35);
  auto refused = [&](const char* reason) {
    return value(m, "kvferry_requests_refused_total{" + at + ",port=\"data\",reason=\"" + reason
                      + "\"}");
  };
  BOOST_CHECK_EQUAL(refused("out_of_range"), 3);
  BOOST_CHECK_EQUAL(refused("stale_incarnation"), 0);
  BOOST_CHECK_EQUAL(refused("fenced"), 0);
  BOOST_CHECK_EQUAL(refused("busy"), 0);
  BOOST_CHECK_EQUAL(refused("malformed"), 0);
  BOOST_CHECK_GE(value(m, "kvferry_connections_accepted_total{" + at + ",port=\"data\"}"), 1);
  BOOST_CHECK_GE(value(m, "kvferry_served_requests_total{" + at + ",port=\"control\"}"), 1);
  BOOST_CHECK_GT(value(m, "kvferry_reply_budget_limit_bytes{" + at + ",port=\"data\"}"), 0);
  BOOST_CHECK_GT(value(m, "kvferry_network_memory_bound_bytes{" + at + "}"), 0);
  // The node submitted nothing itself.
  BOOST_CHECK_EQUAL(value(m, "kvferry_tasks_submitted_total{" + at + "}"), 0);

  // The initiator's own metrics (render_metrics, as an embedding application calls it).
  auto mine = parse_metrics(render_metrics(*init.engine));
  const std::string me = "segment=\"" + init.engine->segment_name() + "\"";
  BOOST_CHECK_EQUAL(value(mine, "kvferry_tasks_submitted_total{" + me + "}"), 35);
  BOOST_CHECK_EQUAL(value(mine, "kvferry_tasks_resolved_total{" + me + ",state=\"completed\"}"),
                    32);
  BOOST_CHECK_EQUAL(value(mine, "kvferry_tasks_resolved_total{" + me + ",state=\"failed\"}"), 3);
  BOOST_CHECK_EQUAL(value(mine, "kvferry_tasks_resolved_total{" + me + ",state=\"timeout\"}"), 0);
  BOOST_CHECK_EQUAL(value(mine, "kvferry_tasks_resolved_total{" + me + ",state=\"canceled\"}"), 0);
  const std::string peer = me + ",op=\"%\",peer=\"" + node.name + "\"";
  auto bytes_of = [&](const char* op) {
    auto series = peer;
    series.replace(series.find('%'), 1, op);
    return value(mine, "kvferry_transfer_bytes_total{" + series + "}");
  };
  BOOST_CHECK_EQUAL(bytes_of("read"), 24 * 64 * KiB);
  BOOST_CHECK_EQUAL(bytes_of("write"), 8 * 32 * KiB);
  BOOST_CHECK_EQUAL(value(mine, "kvferry_slice_retries_total{" + me + "}"), 0);
  BOOST_CHECK_EQUAL(value(mine, "kvferry_repeated_resolutions_total{" + me + "}"), 0);
  BOOST_CHECK_EQUAL(value(mine, "kvferry_tasks_live{" + me + "}"), 0);

  attack_and_check_serving(metrics_port);
  auto after = parse_metrics(curl(metrics_port).body);
  BOOST_CHECK_EQUAL(value(after, "kvferry_metrics_http_responses_total{code=\"400\"}"), 1);
  BOOST_CHECK_EQUAL(value(after, "kvferry_metrics_http_responses_total{code=\"431\"}"), 1);
  BOOST_CHECK_EQUAL(value(after, "kvferry_metrics_http_responses_total{code=\"405\"}"), 1);
  BOOST_CHECK_EQUAL(value(after, "kvferry_metrics_http_responses_total{code=\"404\"}"), 1);
  BOOST_CHECK_EQUAL(value(after, "kvferry_metrics_http_responses_total{code=\"408\"}"), 1);
  // 200s: the workload scrape, the one during the slowloris, this one (counted before it renders
  // only for earlier responses).
  BOOST_CHECK_EQUAL(value(after, "kvferry_metrics_http_responses_total{code=\"200\"}"), 2);
  // The data plane's figures did not move.
  BOOST_CHECK_EQUAL(value(after, "kvferry_served_bytes_total{" + at + ",op=\"read\"}"),
                    24 * 64 * KiB);
  stop_node(node);
}

BOOST_AUTO_TEST_CASE(master_metrics_match_the_store_workload) {
  test::temp_dir dir("kvferry-metrics");
  const uint16_t master_port = test::free_tcp_port();
  const uint16_t metrics_port = test::free_tcp_port();
  child_process master({kvferry_binary(), "master", "--host", "127.0.0.1", "--port",
                        std::to_string(master_port), "--metrics-port",
                        std::to_string(metrics_port), "--metrics-timeout-ms", "500"});
  BOOST_REQUIRE_MESSAGE(master.wait_for_stdout(std::regex("metrics on http://"), 60s),
                        master.transcript());

  config::settings s;
  s.local_hostname = "127.0.0.1";
  s.master_server_address = "127.0.0.1:" + std::to_string(master_port);
  s.global_segment_size = 8 * MiB;
  s.local_buffer_size = 4 * MiB;
  s.log_level = "warn";
  auto c = store::client::create(s);
  BOOST_REQUIRE_MESSAGE(c, why(c));
  auto& client = **c;

  // 20 puts of 4 KiB, 10 gets, 5 removes.
  std::vector<uint8_t> value_bytes(4096);
  for (size_t i = 0; i < value_bytes.size(); ++i)
    value_bytes[i] = static_cast<uint8_t>(i * 7);
  for (int i = 0; i < 20; ++i) {
    auto err = client.put("metrics/" + std::to_string(i), value_bytes);
    BOOST_REQUIRE_MESSAGE(!err, describe(err));
  }
  for (int i = 0; i < 10; ++i) {
    auto got = client.get("metrics/" + std::to_string(i));
    BOOST_REQUIRE_MESSAGE(got, why(got));
    BOOST_CHECK(*got == value_bytes);
  }
  for (int i = 15; i < 20; ++i) {
    auto err = client.remove("metrics/" + std::to_string(i), true);
    BOOST_REQUIRE_MESSAGE(!err, describe(err));
  }

  auto scrape = curl(metrics_port);
  BOOST_CHECK_MESSAGE(contains(scrape.head, "Content-Type: text/plain; version=0.0.4"),
                      scrape.head);
  auto m = parse_metrics(scrape.body);
  BOOST_CHECK_EQUAL(value(m, "kvferry_store_report_up"), 1);
  BOOST_CHECK_EQUAL(value(m, "kvferry_store_objects"), 15);
  BOOST_CHECK_EQUAL(value(m, "kvferry_store_object_bytes"), 15 * 4096);
  BOOST_CHECK_EQUAL(value(m, "kvferry_store_capacity_bytes"), 8 * MiB);
  BOOST_CHECK_EQUAL(value(m, "kvferry_store_clients"), 1);
  BOOST_CHECK_EQUAL(value(m, "kvferry_store_segments"), 1);
  BOOST_CHECK_EQUAL(value(m, "kvferry_store_puts_started_total"), 20);
  BOOST_CHECK_EQUAL(value(m, "kvferry_store_puts_ended_total"), 20);
  BOOST_CHECK_EQUAL(value(m, "kvferry_store_gets_total"), 10);
  BOOST_CHECK_EQUAL(value(m, "kvferry_store_removes_total"), 5);
  BOOST_CHECK_EQUAL(value(m, "kvferry_store_evictions_total"), 0);
  BOOST_CHECK_EQUAL(value(m, "kvferry_store_leases_granted_total"), 10);
  BOOST_CHECK_EQUAL(value(m, "kvferry_store_puts_in_progress"), 0);
  BOOST_CHECK_EQUAL(value(m, "kvferry_store_segment_size_bytes{segment=\"" + client.segment_name()
                               + "\"}"),
                    8 * MiB);
  BOOST_CHECK_GE(value(m, "kvferry_served_requests_total{port=\"master\"}"), 35);
  BOOST_CHECK_EQUAL(
    value(m, "kvferry_requests_refused_total{port=\"master\",reason=\"malformed\"}"), 0);

  // The client's own metrics: its engine moved the values (WRITE on put, READ on get, to and
  // from its own segment), and it mounted once.
  auto mine = parse_metrics(store::render_metrics(client));
  const std::string me = "segment=\"" + client.segment_name() + "\"";
  BOOST_CHECK_EQUAL(value(mine, "kvferry_transfer_bytes_total{" + me + ",op=\"write\",peer=\""
                                  + client.segment_name() + "\"}"),
                    20 * 4096);
  BOOST_CHECK_EQUAL(value(mine, "kvferry_transfer_bytes_total{" + me + ",op=\"read\",peer=\""
                                  + client.segment_name() + "\"}"),
                    10 * 4096);
  BOOST_CHECK_EQUAL(value(mine, "kvferry_tasks_resolved_total{" + me + ",state=\"completed\"}"),
                    30);
  BOOST_CHECK_EQUAL(value(mine, "kvferry_store_client_mounts_total{" + me + "}"), 1);
  BOOST_CHECK_EQUAL(value(mine, "kvferry_store_client_lease_expiries_total{" + me + "}"), 0);
  // The holder forgets the removed objects once the master's fences reached it (its watch).
  BOOST_CHECK(test::eventually([&] {
    auto now = parse_metrics(store::render_metrics(client));
    return value(now, "kvferry_store_client_held_objects{" + me + "}") == 15;
  }, 20s));

  // Eviction: fill the store past its high watermark (0.9 of 8 MiB) with 256 KiB objects;
  // whatever got evicted, objects = puts ended - removes - evictions.
  std::vector<uint8_t> big(256 * KiB, 1);
  for (int i = 0; i < 40; ++i) {
    auto err = client.put("metrics/big/" + std::to_string(i), big);
    BOOST_REQUIRE_MESSAGE(!err || code_of(err) == errc::store_full, describe(err));
  }
  BOOST_CHECK(test::eventually([&] {
    auto e = parse_metrics(curl(metrics_port).body);
    return value(e, "kvferry_store_evictions_total") > 0
           && value(e, "kvferry_store_objects")
                == value(e, "kvferry_store_puts_ended_total") - 5
                     - value(e, "kvferry_store_evictions_total");
  }, 20s));

  attack_and_check_serving(metrics_port);

  // `kvferry store-node --metrics-port`: a holder's own metrics (its engine, its counters).
  const uint16_t holder_metrics = test::free_tcp_port();
  auto holder_config = dir.write(
    "store-node.json", "{\"local_hostname\":\"127.0.0.1\",\"metadata_server\":\"P2PHANDSHAKE\","
                       "\"protocol\":\"tcp\",\"master_server_address\":\"127.0.0.1:"
                         + std::to_string(master_port)
                         + "\",\"global_segment_size\":\"4MiB\",\"local_buffer_size\":\"1MiB\","
                           "\"kvferry\":{\"log_level\":\"warn\"}}");
  child_process holder({kvferry_binary(), "--config", holder_config, "store-node",
                        "--metrics-port", std::to_string(holder_metrics)});
  auto holder_name = holder.wait_for_stdout(std::regex("segment name: (\\S+)"), 60s);
  BOOST_REQUIRE_MESSAGE(holder_name, holder.transcript());
  auto h = parse_metrics(curl(holder_metrics).body);
  const std::string it = "segment=\"" + *holder_name + "\"";
  BOOST_CHECK_EQUAL(value(h, "kvferry_store_client_mounts_total{" + it + "}"), 1);
  BOOST_CHECK_EQUAL(value(h, "kvferry_store_client_lease_expiries_total{" + it + "}"), 0);
  BOOST_CHECK_EQUAL(value(h, "kvferry_tasks_submitted_total{" + it + "}"), 0);
  BOOST_CHECK_GT(value(h, "kvferry_network_memory_bound_bytes{" + it + "}"), 0);
  BOOST_CHECK(test::eventually([&] {
    return value(parse_metrics(curl(metrics_port).body), "kvferry_store_segments") == 2;
  }, 20s));
  BOOST_REQUIRE(holder.signal(SIGTERM));
  auto holder_rc = holder.wait_exit_code(30s);
  BOOST_CHECK_MESSAGE(holder_rc && *holder_rc == 0, holder.transcript());

  client.close();
  BOOST_REQUIRE(master.signal(SIGTERM));
  auto rc = master.wait_exit_code(30s);
  BOOST_CHECK_MESSAGE(rc && *rc == 0, master.transcript());
}
