#define BOOST_TEST_MODULE bench_test
#include <boost/test/unit_test.hpp>

#include <chrono>
#include <csignal>
#include <regex>
#include <string>
#include <vector>

#include <boost/json.hpp>

#include "tests/support/checks.hpp"
#include "tests/support/child_process.hpp"

// `kvferry bench` (flag-compatible with Mooncake's transfer_engine_bench) as users run it: a
// target process and initiator processes on loopback. And `kvferry node` stopping on signals.
//
// Usage: bench_test [boost test options] -- /path/to/kvferry

using namespace std::chrono_literals;
using kvferry::test::child_process;

namespace {

using kvferry::test::contains;

std::string kvferry_binary() {
  auto& suite = boost::unit_test::framework::master_test_suite();
  if (suite.argc < 2)
    throw std::runtime_error("usage: bench_test [boost options] -- /path/to/kvferry");
  return suite.argv[1];
}

constexpr uint64_t buffer_size = 8 << 20;

struct run_result {
  int exit_code = -999;
  std::string out;
  std::string transcript;
};

/// Runs `kvferry` with `args` to completion (or kills it after `limit`).
run_result run_kvferry(std::vector<std::string> args, std::chrono::milliseconds limit = 120s) {
  args.insert(args.begin(), kvferry_binary());
  child_process p(args);
  auto rc = p.wait_exit_code(limit);
  run_result r;
  r.exit_code = rc ? *rc : -999;
  r.out = p.out();
  r.transcript = p.transcript();
  return r;
}

/// Runs an initiator to completion (or kills it after `limit`).
run_result run_initiator(const std::string& config, std::vector<std::string> flags,
                         std::chrono::milliseconds limit = 120s) {
  std::vector<std::string> args{"--config", config, "bench", "--mode=initiator"};
  args.insert(args.end(), flags.begin(), flags.end());
  return run_kvferry(std::move(args), limit);
}

struct task_counts {
  uint64_t completed = 0, failed = 0, timeout = 0, canceled = 0;
};

task_counts parse_task_states(const run_result& r) {
  std::smatch m;
  BOOST_REQUIRE_MESSAGE(
    std::regex_search(r.out, m,
                      std::regex("Task states: COMPLETED (\\d+), FAILED (\\d+), TIMEOUT (\\d+), "
                                 "CANCELED (\\d+)")),
    "no task-state line\n" << r.transcript);
  return {std::stoull(m[1]), std::stoull(m[2]), std::stoull(m[3]), std::stoull(m[4])};
}

/// The Mooncake-format result line: duration, batch count, throughput.
void require_completed_line(const run_result& r, const std::string& unit = "GB",
                            int precision = 2) {
  std::string frac = precision > 0 ? "\\.\\d{" + std::to_string(precision) + "}" : "";
  std::regex line("Test completed: duration \\d+" + frac + ", batch count (\\d+), throughput \\d+"
                  + frac + " " + unit + "/s");
  std::smatch m;
  BOOST_REQUIRE_MESSAGE(std::regex_search(r.out, m, line),
                        "no Mooncake-format 'Test completed' line\n" << r.transcript);
  BOOST_CHECK_GT(std::stoull(m[1]), 0u);
}

boost::json::object parse_json_line(const run_result& r) {
  std::smatch m;
  BOOST_REQUIRE_MESSAGE(std::regex_search(r.out, m, std::regex("(^|\\n)(\\{[^\\n]*\\})")),
                        "no JSON summary line\n" << r.transcript);
  boost::json::error_code ec;
  auto value = boost::json::parse(m[2].str(), ec);
  BOOST_REQUIRE_MESSAGE(!ec && value.is_object(), "JSON line does not parse: " << m[2].str());
  return value.as_object();
}

struct target_process {
  std::unique_ptr<child_process> proc;
  std::string name;
};

target_process start_target(const std::string& config, const std::string& server_name) {
  target_process t;
  t.proc = std::make_unique<child_process>(std::vector<std::string>{
    kvferry_binary(), "--config", config, "bench", "--mode=target",
    "--metadata_server=P2PHANDSHAKE", "--protocol=tcp", "--local_server_name=" + server_name,
    "--buffer_size=" + std::to_string(buffer_size)});
  auto name = t.proc->wait_for_stdout(std::regex("Target ready: segment (\\S+)"), 60s);
  BOOST_REQUIRE_MESSAGE(name, "the target did not print its segment\n" << t.proc->transcript());
  t.name = *name;
  return t;
}

} // namespace

BOOST_AUTO_TEST_CASE(bench_read_and_write_with_verify_then_probe_past_the_end) {
  kvferry::test::temp_dir dir("kvferry-bench-test");
  auto config = dir.write("bench.json", kvferry::test::node_config(0, 0, 30000));
  // A fixed rpc port given as --local_server_name=host:port names the segment.
  uint16_t port = kvferry::test::free_tcp_port();
  auto target = start_target(config, "127.0.0.1:" + std::to_string(port));
  BOOST_REQUIRE_EQUAL(target.name, "127.0.0.1:" + std::to_string(port));
  const std::vector<std::string> common{
    "--metadata_server=P2PHANDSHAKE", "--protocol=tcp", "--segment_id=" + target.name,
    "--buffer_size=" + std::to_string(buffer_size), "--timeout_ms=20000"};
  auto with = [&](std::vector<std::string> extra) {
    auto flags = common;
    flags.insert(flags.end(), extra.begin(), extra.end());
    return flags;
  };

  for (std::string op : {"read", "write"}) {
    auto r = run_initiator(config, with({"--operation=" + op, "--verify", "--json",
                                         "--block_size=65536", "--batch_size=16", "--threads=2",
                                         "--duration=1"}));
    BOOST_REQUIRE_MESSAGE(r.exit_code == 0, op << ": exit " << r.exit_code << "\n" << r.transcript);
    require_completed_line(r);
    auto counts = parse_task_states(r);
    BOOST_CHECK_GT(counts.completed, 0u);
    BOOST_CHECK_EQUAL(counts.failed + counts.timeout + counts.canceled, 0u);
    BOOST_CHECK_MESSAGE(contains(r.out, "verify errors 0"), r.transcript);
    auto json = parse_json_line(r);
    BOOST_CHECK_EQUAL(json.at("operation").as_string(), op);
    BOOST_CHECK_EQUAL(json.at("completed").to_number<uint64_t>(), counts.completed);
    BOOST_CHECK_EQUAL(json.at("failed").to_number<uint64_t>(), 0u);
    BOOST_CHECK_EQUAL(json.at("verify_errors").to_number<uint64_t>(), 0u);
    BOOST_CHECK_EQUAL(json.at("bytes").to_number<uint64_t>(), counts.completed * 65536);
  }

  // Unaligned small blocks, another report unit and precision.
  auto small = run_initiator(config, with({"--operation=write", "--verify", "--block_size=4097",
                                           "--batch_size=64", "--threads=1", "--duration=0.5",
                                           "--report_unit=MB", "--report_precision=3"}));
  BOOST_REQUIRE_MESSAGE(small.exit_code == 0, small.transcript);
  require_completed_line(small, "MB", 3);

  // --target_offset past the end of the target's buffer: every task FAILED, counted, exit != 0.
  auto past = run_initiator(config, with({"--operation=read", "--block_size=4096",
                                          "--batch_size=8", "--threads=1", "--duration=0.3",
                                          "--target_offset=" + std::to_string(buffer_size)}));
  BOOST_CHECK_MESSAGE(past.exit_code > 0, "exit " << past.exit_code << "\n" << past.transcript);
  require_completed_line(past);
  auto counts = parse_task_states(past);
  BOOST_CHECK_EQUAL(counts.completed, 0u);
  BOOST_CHECK_GT(counts.failed, 0u);
  BOOST_CHECK_MESSAGE(contains(past.out, "out_of_range"), past.transcript);

  // Straddling the end (half a block inside): also refused, never clamped.
  auto straddle = run_initiator(config, with({"--operation=write", "--block_size=4096",
                                              "--batch_size=1", "--threads=1", "--duration=0.2",
                                              "--target_offset="
                                                + std::to_string(buffer_size - 2048)}));
  BOOST_CHECK_MESSAGE(straddle.exit_code > 0, straddle.transcript);
  BOOST_CHECK_GT(parse_task_states(straddle).failed, 0u);

  // The target still serves. (A READ --verify expects the target's initial pattern, which the
  // WRITE runs above replaced: verify by WRITE and read-back.)
  auto later = run_initiator(config, with({"--operation=write", "--verify", "--block_size=65536",
                                           "--batch_size=8", "--threads=1", "--duration=0.3"}));
  BOOST_CHECK_MESSAGE(later.exit_code == 0, later.transcript);
  BOOST_CHECK(target.proc->running());

  // It stops on SIGTERM and reports what it refused.
  BOOST_REQUIRE(target.proc->signal(SIGTERM));
  auto rc = target.proc->wait_exit_code(30s);
  BOOST_REQUIRE_MESSAGE(rc && *rc == 0, target.proc->transcript());
  std::smatch m;
  auto out = target.proc->out();
  BOOST_REQUIRE_MESSAGE(std::regex_search(out, m, std::regex("Target stopped: .* (\\d+) refused")),
                        out);
  BOOST_CHECK_GT(std::stoull(m[1]), 0u);
}

BOOST_AUTO_TEST_CASE(bench_initiator_fails_cleanly_without_a_target) {
  kvferry::test::temp_dir dir("kvferry-bench-test");
  auto config = dir.write("bench.json", kvferry::test::node_config(0, 0, 5000));
  uint16_t nobody = kvferry::test::free_tcp_port();
  auto r = run_initiator(config, {"--segment_id=127.0.0.1:" + std::to_string(nobody),
                                  "--operation=read", "--duration=0.2", "--buffer_size=65536",
                                  "--block_size=4096"},
                         60s);
  BOOST_CHECK_MESSAGE(r.exit_code > 0, "exit " << r.exit_code << "\n" << r.transcript);
}

BOOST_AUTO_TEST_CASE(node_stops_cleanly_on_sigterm_and_sigint) {
  kvferry::test::temp_dir dir("kvferry-bench-test");
  auto config = dir.write("node.json", kvferry::test::node_config(0, 0, 5000));
  for (int sig : {SIGTERM, SIGINT}) {
    child_process node({kvferry_binary(), "--config", config, "node", "--segment-bytes=1048576",
                        "--fill-seed=7"});
    auto name = node.wait_for_stdout(std::regex("segment name: (\\S+)"), 60s);
    BOOST_REQUIRE_MESSAGE(name, node.transcript());
    BOOST_REQUIRE(node.signal(sig));
    auto rc = node.wait_exit_code(30s);
    BOOST_REQUIRE_MESSAGE(rc.has_value(), "node did not stop on signal " << sig << "\n"
                                                                         << node.transcript());
    BOOST_CHECK_MESSAGE(*rc == 0, "node exit " << *rc << " on signal " << sig << "\n"
                                               << node.transcript());
    BOOST_CHECK_MESSAGE(contains(node.out(), "kvferry node: stopped"), node.transcript());
  }
}

// The README writes `kvferry node --config node.json`: --config is accepted after the subcommand
// as well as before it, for every subcommand, and the file it names is the one read.
BOOST_AUTO_TEST_CASE(config_option_after_the_subcommand) {
  kvferry::test::temp_dir dir("kvferry-bench-test");
  // A fixed rpc port in the file: the segment name shows that this file was read.
  uint16_t node_port = kvferry::test::free_tcp_port();
  auto node_config = dir.write("node.json", kvferry::test::node_config(node_port, 0, 5000));
  {
    child_process node({kvferry_binary(), "node", "--config", node_config,
                        "--segment-bytes=1048576"});
    auto name = node.wait_for_stdout(std::regex("segment name: (\\S+)"), 60s);
    BOOST_REQUIRE_MESSAGE(name, node.transcript());
    BOOST_CHECK_EQUAL(*name, "127.0.0.1:" + std::to_string(node_port));
    BOOST_REQUIRE(node.signal(SIGTERM));
    auto rc = node.wait_exit_code(30s);
    BOOST_REQUIRE_MESSAGE(rc.has_value(), "node did not stop on SIGTERM\n" << node.transcript());
    BOOST_CHECK_MESSAGE(*rc == 0, "node exit " << *rc << "\n" << node.transcript());
    BOOST_CHECK_MESSAGE(contains(node.out(), "kvferry node: stopped"), node.transcript());
  }

  uint16_t target_port = kvferry::test::free_tcp_port();
  auto target_config = dir.write("target.json", kvferry::test::node_config(target_port, 0, 5000));
  {
    child_process target({kvferry_binary(), "bench", "--config=" + target_config, "--mode=target",
                          "--buffer_size=1048576"});
    auto name = target.wait_for_stdout(std::regex("Target ready: segment (\\S+)"), 60s);
    BOOST_REQUIRE_MESSAGE(name, target.transcript());
    BOOST_CHECK_EQUAL(*name, "127.0.0.1:" + std::to_string(target_port));
    BOOST_REQUIRE(target.signal(SIGTERM));
    auto rc = target.wait_exit_code(30s);
    BOOST_REQUIRE_MESSAGE(rc.has_value(), "target did not stop on SIGTERM\n"
                                            << target.transcript());
    BOOST_CHECK_MESSAGE(*rc == 0, "target exit " << *rc << "\n" << target.transcript());
    BOOST_CHECK_MESSAGE(contains(target.out(), "Target stopped"), target.transcript());
  }

  // demo: a bad file named after the subcommand is read and refused (exit 2, the file named).
  auto bad = dir.write("bad.json", "{\"protocol\": \"carrier-pigeon\"}");
  auto demo = run_kvferry({"demo", "--in-process", "--config", bad}, 60s);
  BOOST_CHECK_MESSAGE(demo.exit_code == 2, "exit " << demo.exit_code << "\n" << demo.transcript);
  BOOST_CHECK_MESSAGE(contains(demo.transcript, "configuration error")
                        && contains(demo.transcript, "bad.json"),
                      demo.transcript);
  BOOST_CHECK_MESSAGE(!contains(demo.transcript, "not expected"), demo.transcript);

  // Given both before and after the subcommand: refused, both places named.
  auto twice = run_kvferry({"--config", node_config, "node", "--config", bad}, 60s);
  BOOST_CHECK_MESSAGE(twice.exit_code == 2, "exit " << twice.exit_code << "\n" << twice.transcript);
  BOOST_CHECK_MESSAGE(contains(twice.transcript, "--config given twice"), twice.transcript);
}

// Users run WRITE and READ against one target in any order: a WRITE run leaves the target's own
// pattern in place, so every later run verifies, with or without --verify on the WRITE.
BOOST_AUTO_TEST_CASE(write_and_read_runs_in_any_order_verify_against_one_target) {
  kvferry::test::temp_dir dir("kvferry-bench-test");
  auto config = dir.write("bench.json", kvferry::test::node_config(0, 0, 30000));
  auto target = start_target(config, "127.0.0.1:" + std::to_string(kvferry::test::free_tcp_port()));
  const std::vector<std::string> common{
    "--metadata_server=P2PHANDSHAKE", "--protocol=tcp", "--segment_id=" + target.name,
    "--buffer_size=" + std::to_string(buffer_size), "--timeout_ms=20000", "--duration=0.3"};
  struct step {
    std::string operation;
    bool verify;
    std::vector<std::string> shape;
  };
  const std::vector<std::string> two_threads{"--block_size=65536", "--batch_size=16",
                                             "--threads=2"};
  // Three threads over 128 remote blocks, 64 tasks per batch: local blocks are shared within a
  // batch and remote blocks wrap around.
  const std::vector<std::string> three_threads{"--block_size=65536", "--batch_size=64",
                                               "--threads=3"};
  const std::vector<step> steps{
    {"write", true, two_threads},  {"read", true, two_threads},   {"write", true, two_threads},
    {"write", false, two_threads}, {"read", true, two_threads},   {"write", true, three_threads},
    {"read", true, three_threads}, {"write", false, three_threads}, {"read", true, two_threads}};
  for (size_t i = 0; i < steps.size(); ++i) {
    const auto& st = steps[i];
    auto flags = common;
    flags.push_back("--operation=" + st.operation);
    if (st.verify)
      flags.push_back("--verify");
    flags.insert(flags.end(), st.shape.begin(), st.shape.end());
    auto r = run_initiator(config, flags);
    BOOST_TEST_CONTEXT("run " << i << ": " << st.operation << (st.verify ? " --verify" : "")) {
      BOOST_REQUIRE_MESSAGE(r.exit_code == 0, "exit " << r.exit_code << "\n" << r.transcript);
      require_completed_line(r);
      auto counts = parse_task_states(r);
      BOOST_CHECK_GT(counts.completed, 0u);
      BOOST_CHECK_EQUAL(counts.failed + counts.timeout + counts.canceled, 0u);
      if (st.verify)
        BOOST_CHECK_MESSAGE(contains(r.out, "verify errors 0"), r.transcript);
    }
  }
  BOOST_REQUIRE(target.proc->signal(SIGTERM));
  auto rc = target.proc->wait_exit_code(30s);
  BOOST_CHECK_MESSAGE(rc && *rc == 0, target.proc->transcript());
}
