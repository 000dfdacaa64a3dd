#define BOOST_TEST_MODULE metadata_engine_test
#include <boost/test/unit_test.hpp>

// Engines with "metadata_server": "http://..." against kvferry's metadata server in this process:
// a segment found by its entry; when the entry vanishes (its node stopped), tasks to the opened
// segment fail at once instead of timing out; when a node comes back under the same name, the
// opened segment is described again and transfers resume without a new open_segment.

#include <chrono>
#include <cstring>
#include <memory>
#include <thread>
#include <string>
#include <vector>

#include "actors/runtime.hpp"
#include "actors/transfer_engine.hpp"
#include "config/log.hpp"
#include "tests/support/checks.hpp"
#include "tools/pattern.hpp"
#include "transport/metadata/http_server.hpp"

using namespace kvferry;
using namespace std::chrono_literals;
using kvferry::test::why;
using steady = std::chrono::steady_clock;

namespace {

struct quiet_logs {
  quiet_logs() { log::set_level("error"); }
};

config::settings with_metadata(uint16_t metadata_port, uint16_t rpc_port = 0) {
  config::settings s;
  s.local_hostname = "127.0.0.1";
  auto m = config::parse_metadata_server(
    "http://127.0.0.1:" + std::to_string(metadata_port) + "/metadata", "test");
  BOOST_REQUIRE_MESSAGE(m, why(m));
  s.metadata = *m;
  s.metadata_ttl = 1000ms;
  s.rpc_port = rpc_port;
  s.task_deadline = 30s;
  s.log_level = "error";
  return s;
}

struct node {
  node(const config::settings& s, std::vector<uint8_t>& mem) {
    auto r = runtime::create({.network = true});
    BOOST_REQUIRE_MESSAGE(r, why(r));
    rt = *r;
    auto e = transfer_engine::create(rt, s);
    BOOST_REQUIRE_MESSAGE(e, why(e));
    engine = std::move(*e);
    BOOST_REQUIRE(!engine->register_memory(mem.data(), mem.size()));
  }
  ~node() {
    if (engine)
      engine->shutdown();
  }
  std::shared_ptr<runtime> rt;
  std::unique_ptr<transfer_engine> engine;
};

transfer_status run_one(transfer_engine& e, transfer_request rq,
                        std::chrono::milliseconds deadline = 0ms) {
  auto b = e.allocate_batch(1);
  BOOST_REQUIRE(b);
  submit_options so;
  so.deadline = deadline;
  auto first = e.submit(*b, std::span(&rq, 1), so);
  BOOST_REQUIRE_MESSAGE(first, why(first));
  auto w = e.wait(*b, 60s);
  BOOST_REQUIRE_MESSAGE(w, why(w));
  auto st = e.status(*b, *first);
  BOOST_REQUIRE(st);
  BOOST_REQUIRE(!e.free_batch(*b));
  return *st;
}

} // namespace

BOOST_TEST_GLOBAL_FIXTURE(quiet_logs);

BOOST_AUTO_TEST_CASE(opened_segments_follow_their_metadata_entry) {
  transport::metadata::http_server_options so;
  so.bind_host = "127.0.0.1";
  so.port = 0;
  auto server = transport::metadata::http_server::start(so);
  BOOST_REQUIRE_MESSAGE(server, why(server));
  auto mport = (*server)->port();

  std::vector<uint8_t> target_mem(1 << 20), local(1 << 20);
  auto target = std::make_unique<node>(with_metadata(mport), target_mem);
  auto name = target->engine->segment_name();
  auto rpc_port = target->engine->rpc_port();
  node in(with_metadata(mport), local);
  auto seg = in.engine->open_segment(name);
  BOOST_REQUIRE_MESSAGE(seg, why(seg));
  tools::fill_pattern(local.data(), 65537, 11, 0);
  auto remote = reinterpret_cast<uint64_t>(target_mem.data());
  auto st = run_one(*in.engine, {opcode::write, local.data(), *seg, remote, 65537});
  BOOST_REQUIRE(st.state == task_state::completed);
  BOOST_CHECK_EQUAL(tools::check_pattern(target_mem.data(), 65537, 11, 0), 65537u);

  // An unknown name fails at once, naming the key.
  auto unknown = in.engine->open_segment("127.0.0.1:1");
  BOOST_REQUIRE(!unknown);
  BOOST_CHECK_MESSAGE(test::contains(describe(unknown.error()), "mooncake/rpc_meta/127.0.0.1:1"),
                      describe(unknown.error()));

  // The target stops: its entry goes. Once the initiator's watcher saw it (within a third of the
  // TTL), tasks to the opened segment FAIL at once instead of waiting for their deadline (tasks
  // submitted before that may still time out: they get a 2 s deadline here).
  target.reset();
  bool failed_fast = false;
  for (auto until = steady::now() + 20s; !failed_fast && steady::now() < until;) {
    auto r = run_one(*in.engine, {opcode::read, local.data(), *seg, remote, 4096}, 2000ms);
    failed_fast = r.state == task_state::failed;
    BOOST_REQUIRE_MESSAGE(r.state != task_state::completed, "a READ from a stopped node completed");
  }
  BOOST_CHECK_MESSAGE(failed_fast, "tasks to a vanished segment did not fail fast");

  // Back under the same name (same rpc port): transfers resume without a new open_segment.
  std::vector<uint8_t> target_mem2(1 << 20);
  target = std::make_unique<node>(with_metadata(mport, rpc_port), target_mem2);
  BOOST_REQUIRE_EQUAL(target->engine->segment_name(), name);
  auto remote2 = reinterpret_cast<uint64_t>(target_mem2.data());
  bool resumed = false;
  for (auto until = steady::now() + 20s; !resumed && steady::now() < until;) {
    // The old descriptor's region is gone: the new one is only known once re-described.
    auto desc = in.engine->segment_descriptor(*seg);
    if (desc && !desc->regions.empty() && desc->regions.front().base == remote2) {
      auto r = run_one(*in.engine, {opcode::write, local.data(), *seg, remote2, 65537});
      resumed = r.state == task_state::completed;
    } else {
      std::this_thread::sleep_for(20ms); // polling the engine's view, not synchronising threads
    }
  }
  BOOST_REQUIRE_MESSAGE(resumed, "transfers did not resume after the node came back");
  BOOST_CHECK_EQUAL(tools::check_pattern(target_mem2.data(), 65537, 11, 0), 65537u);
  target.reset();
  (*server)->stop();
}
