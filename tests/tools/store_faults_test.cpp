#define BOOST_TEST_MODULE store_faults_test
#include <boost/test/unit_test.hpp>

// The store's acceptance tests, part 2: real signals to real processes on loopback (a
// `kvferry master`, `kvferry store-node` holders, a store_putter client, store clients embedded
// in this process).
//   3. A client SIGKILLed mid-put: nothing it did not finish becomes visible broken; every
//      visible key is byte-exact; its space returns once the master declared it dead (TTL).
//   4. A replica holder SIGKILLed: get reads the other replica; with both holders gone, get
//      fails with a clear error within its deadline.
//   5. The master SIGKILLed and restarted on its port during a workload: calls fail within their
//      deadlines, clients mount again, objects put before the kill are read back after it.
//   6. The master SIGSTOPped past the deadline, then SIGCONTinued: calls fail within their
//      deadlines, then service resumes.
//
// Usage: store_faults_test [boost test options] -- /path/to/kvferry

#include <atomic>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "tests/support/store_rig.hpp"

#ifndef KVFERRY_STORE_PUTTER
#error "KVFERRY_STORE_PUTTER (the store_putter program's path) is set by tests/CMakeLists.txt"
#endif

using namespace kvferry;
using namespace kvferry::test::rig;
using kvferry::test::child_process;
using kvferry::test::value_for;

BOOST_TEST_GLOBAL_FIXTURE(quiet_logs);

namespace {

/// What a failing call may take beyond its deadline on a loaded machine.
constexpr auto margin = 2000ms;

/// Timings that make a dead client visible quickly: ten missed heartbeats (a loaded machine can
/// delay a few, never ten).
master_flags fast_liveness() {
  master_flags f;
  f.ttl_ms = 3000;
  f.watch_ms = 300;
  return f;
}

/// Keys after `word` at the start of a line of `out` ("done k" -> k).
std::vector<std::string> keys_after(const std::string& out, const std::string& word) {
  std::vector<std::string> keys;
  std::istringstream lines(out);
  std::string line;
  while (std::getline(lines, line))
    if (line.rfind(word + " ", 0) == 0 && line.find(':') == std::string::npos)
      keys.push_back(line.substr(word.size() + 1));
  return keys;
}

/// One call's outcome, as a workload thread records it (checked on the test's thread).
struct outcome {
  std::string what;
  bool ok = false;
  errc code = errc::none;
  std::string reason;
  long long took_ms = 0;
  steady::time_point at;
};

void require_failed_in_time(const caf::error& err, long long took, milliseconds deadline,
                            const std::string& what) {
  BOOST_CHECK_MESSAGE(err, what << " succeeded while the master was away");
  BOOST_CHECK_MESSAGE(!context_of(err).empty(), what << ": no reason given");
  BOOST_CHECK_MESSAGE(took <= (deadline + margin).count(),
                      what << " took " << took << " ms; its deadline is " << deadline.count()
                           << " ms (" << text(err) << ")");
}

/// SIGSTOPs the process and waits until every one of its threads is stopped.
void freeze(child_process& p) {
  BOOST_REQUIRE(p.signal(SIGSTOP));
  BOOST_REQUIRE_MESSAGE(poll_until([&] { return all_threads_stopped(p.pid()); }, 60s, 5ms),
                        "the process did not stop within 60 s of SIGSTOP");
}

/// The "N mounts" a store node prints when it stops.
uint64_t mounts_of(const std::string& out) {
  std::smatch m;
  if (!std::regex_search(out, m, std::regex("(\\d+) mounts")))
    return 0;
  return std::stoull(m[1]);
}

} // namespace

BOOST_AUTO_TEST_CASE(a_client_killed_mid_put_leaves_no_broken_object_and_its_space_returns) {
  auto flags = fast_liveness();
  flags.high_watermark = 1.0; // no eviction: every finished key must stay visible
  store_cluster cluster(flags, 2, 128 * MiB);
  auto checker = cluster.client(20s, 20 * MiB);
  const size_t size = 8 * MiB;
  bool killed_mid_put = false;
  for (int attempt = 0; attempt < 6 && !killed_mid_put; ++attempt) {
    BOOST_TEST_CONTEXT("attempt " << attempt) {
      const auto prefix = "putter" + std::to_string(attempt);
      const auto dead_before = report(*checker).counters["clients_declared_dead"];
      child_process putter({KVFERRY_STORE_PUTTER, cluster.master.address(), prefix,
                            std::to_string(size), "1", "0"});
      BOOST_REQUIRE_MESSAGE(putter.wait_for_stdout(std::regex("done " + prefix + "/2\n"), 60s),
                            putter.transcript());
      // Kill it while the master holds an unfinished put of it.
      BOOST_REQUIRE(poll_until([&] { return report(*checker).puts_in_progress > 0; }, 30s, 1ms));
      BOOST_REQUIRE(putter.signal(SIGKILL));
      BOOST_REQUIRE(putter.wait_exit(30s));
      const auto at_kill = report(*checker);
      killed_mid_put = at_kill.puts_in_progress > 0;
      const auto out = putter.out();
      const auto started = keys_after(out, "start");
      const auto done = keys_after(out, "done");
      const std::set<std::string> finished(done.begin(), done.end());
      BOOST_TEST_MESSAGE("attempt " << attempt << ": killed after " << done.size() << " of "
                                    << started.size() << " puts; unfinished puts at the master: "
                                    << at_kill.puts_in_progress);
      // Every key it finished is there, every key it started is there whole or not at all.
      auto visible = [&] {
        std::vector<std::string> keys;
        for (const auto& key : started) {
          auto e = checker->exists(key);
          BOOST_REQUIRE_MESSAGE(e, key << ": " << why(e));
          BOOST_CHECK_MESSAGE(*e || finished.count(key) == 0, key << " finished but is gone");
          if (!*e)
            continue;
          require_value(*checker, key, size, finished.count(key) ? "finished" : "unfinished");
          keys.push_back(key);
        }
        return keys;
      };
      visible();
      // The master declares it dead after its TTL and revokes its puts: their space returns.
      std::vector<std::string> left;
      master_report r;
      BOOST_CHECK_MESSAGE(poll_until([&] {
                            r = report(*checker);
                            return r.puts_in_progress == 0 && r.fencing == 0
                                   && r.counters["clients_declared_dead"] > dead_before;
                          }),
                          "the dead client's put was not revoked: " << r.json);
      left = visible();
      r = report(*checker);
      BOOST_CHECK_EQUAL(r.used, left.size() * allocated(size));
      BOOST_CHECK_EQUAL(r.objects, left.size());
      BOOST_CHECK_EQUAL(r.clients, 3u); // two nodes and the checker
      // Clean up for the next attempt.
      for (const auto& key : left)
        BOOST_REQUIRE(!checker->remove(key, true));
      BOOST_REQUIRE_MESSAGE(poll_until([&] { return report(*checker).used == 0; }),
                            report(*checker).json);
    }
  }
  BOOST_CHECK_MESSAGE(killed_mid_put, "no attempt killed the putter while a put was unfinished");
}

BOOST_AUTO_TEST_CASE(a_killed_replica_holder_is_skipped_and_losing_both_fails_within_the_deadline) {
  store_cluster cluster(fast_liveness(), 3, 16 * MiB);
  const auto deadline = 5000ms;
  auto c = cluster.client(deadline);
  raw_master raw(cluster.master.port());
  const std::string key = "twin";
  const size_t size = MiB + 3;
  store::put_options r2;
  r2.replicas = 2;
  BOOST_REQUIRE(!c->put(key, value_for(key, size), r2));
  auto where = raw.locate(c->client_id(), key);
  BOOST_REQUIRE_EQUAL(where.replicas.size(), 2u);
  const auto first = where.replicas[0].segment;
  const auto second = where.replicas[1].segment;

  // The holder a get tries first (every replica is on this host: the master's order) dies.
  cluster.node(first).kill();
  auto started = steady::now();
  auto got = c->get(key);
  auto took = elapsed_ms(started);
  BOOST_CHECK_MESSAGE(got && got->size() == size && test::first_wrong_byte(key, *got) == size,
                      "get with the first replica's holder killed: "
                        << (got ? "wrong bytes" : why(got)) << " after " << took << " ms");
  BOOST_CHECK_MESSAGE(took <= (deadline + margin).count(), "the get took " << took << " ms");
  BOOST_CHECK_GE(c->counters().replica_failovers, 1u);
  // Once the master declared it dead, the object lives on with one replica.
  BOOST_REQUIRE_MESSAGE(poll_until([&] { return report(*c).clients == 3; }), report(*c).json);
  require_value(*c, key, size, "its holder declared dead");
  BOOST_CHECK_EQUAL(raw.locate(c->client_id(), key).replicas.size(), 1u);

  // The other holder dies too: a clear error within the deadline.
  cluster.node(second).kill();
  started = steady::now();
  auto lost = c->get(key);
  took = elapsed_ms(started);
  BOOST_REQUIRE_MESSAGE(!lost, "a get succeeded with both holders dead");
  const auto code = code_of(lost.error());
  BOOST_CHECK_MESSAGE(code == errc::transport_failure || code == errc::object_not_found
                        || code == errc::timeout,
                      why(lost));
  BOOST_CHECK_MESSAGE(contains(context_of(lost.error()), key), why(lost));
  BOOST_CHECK_MESSAGE(took <= (deadline + margin).count(),
                      "the failing get took " << took << " ms: " << why(lost));
  // Once the master declared it dead too, the object is gone.
  BOOST_REQUIRE_MESSAGE(poll_until([&] { return report(*c).objects == 0; }), report(*c).json);
  auto gone = c->get(key);
  BOOST_REQUIRE(!gone);
  BOOST_CHECK_MESSAGE(code_of(gone.error()) == errc::object_not_found, why(gone));
  // The surviving node still takes objects.
  BOOST_REQUIRE(!c->put("after", value_for("after", 4096)));
  require_value(*c, "after", 4096, "on the surviving node");
}

BOOST_AUTO_TEST_CASE(a_master_killed_and_restarted_keeps_objects_and_calls_fail_in_time) {
  store_cluster cluster(fast_liveness(), 3, 32 * MiB);
  const auto deadline = 2000ms;
  auto c = cluster.client(deadline);
  const size_t size = 256 * 1024;
  std::vector<std::string> before;
  for (int i = 0; i < 12; ++i) {
    before.push_back("before/" + std::to_string(i));
    store::put_options o;
    o.replicas = static_cast<uint8_t>(1 + i % 2);
    BOOST_REQUIRE_MESSAGE(!c->put(before.back(), value_for(before.back(), size), o), before.back());
  }
  // A workload of puts and gets throughout.
  std::mutex mutex;
  std::vector<outcome> log;
  std::atomic<bool> stop{false};
  const size_t load_size = 64 * 1024;
  std::thread load([&] {
    for (uint64_t n = 0; !stop; ++n) {
      const auto key = "load/" + std::to_string(n);
      store::put_options o;
      o.replicas = 2;
      auto t0 = steady::now();
      auto err = c->put(key, value_for(key, load_size), o);
      outcome put{"put " + key, !err, code_of(err), err ? context_of(err) : "", elapsed_ms(t0), t0};
      t0 = steady::now();
      auto got = c->get(before[n % before.size()]);
      bool exact = got && got->size() == size
                   && test::first_wrong_byte(before[n % before.size()], *got) == size;
      outcome get{"get " + before[n % before.size()], exact, got ? errc::none : code_of(got.error()),
                  got ? (exact ? "" : "bytes differ") : context_of(got.error()), elapsed_ms(t0), t0};
      {
        std::lock_guard<std::mutex> guard(mutex);
        log.push_back(std::move(put));
        log.push_back(std::move(get));
      }
      // Pacing (calls to a master that is gone may fail at once), not synchronisation.
      std::this_thread::sleep_for(10ms);
    }
  });
  auto count = [&](bool ok, steady::time_point since) {
    std::lock_guard<std::mutex> guard(mutex);
    size_t n = 0;
    for (const auto& o : log)
      n += o.ok == ok && o.at >= since ? 1 : 0;
    return n;
  };
  const auto began = steady::now();
  BOOST_CHECK(poll_until([&] { return count(true, began) >= 10; }, 60s));
  const auto killing = steady::now();
  cluster.master.kill();
  const auto killed = steady::now();
  BOOST_CHECK_MESSAGE(poll_until([&] { return count(false, killed) >= 6; }, 60s),
                      "the workload did not see the master gone");
  cluster.master.start();
  const auto restarted = steady::now();
  BOOST_CHECK_MESSAGE(poll_until([&] { return count(true, restarted) >= 10; }, 60s),
                      "the workload did not resume after the restart");
  stop = true;
  load.join();

  size_t failures = 0;
  long long slowest = 0;
  std::vector<std::string> acknowledged;
  for (const auto& o : log) {
    if (!o.ok) {
      ++failures;
      slowest = std::max(slowest, o.took_ms);
      BOOST_CHECK_MESSAGE(o.at + milliseconds{o.took_ms + 1} >= killing,
                          o.what << " failed before the kill: " << o.reason);
      BOOST_CHECK_MESSAGE(!o.reason.empty(), o.what << ": no reason given");
      BOOST_CHECK_MESSAGE(o.took_ms <= (deadline + margin).count(),
                          o.what << " failed after " << o.took_ms << " ms: " << to_string(o.code)
                                 << ": " << o.reason);
    } else if (o.what.rfind("put ", 0) == 0) {
      acknowledged.push_back(o.what.substr(4));
    }
  }
  BOOST_TEST_MESSAGE("workload: " << log.size() << " calls, " << failures
                                   << " failed, the slowest failure in " << slowest << " ms");
  // The restarted master rebuilt its map from the holders: nothing acknowledged is lost.
  for (const auto& key : before)
    require_value(*c, key, size, "put before the kill");
  for (const auto& key : acknowledged)
    require_value(*c, key, load_size, "acknowledged by either master");
  BOOST_CHECK_GE(report(*c).objects, before.size() + acknowledged.size());
  BOOST_CHECK_GE(c->counters().mounts, 2u);
  c.reset();
  for (auto& node : cluster.nodes) {
    auto out = node.stop();
    BOOST_CHECK_MESSAGE(mounts_of(out) >= 2, "the node did not mount again:\n" << out);
  }
}

BOOST_AUTO_TEST_CASE(a_stopped_master_fails_calls_in_time_and_service_resumes) {
  store_cluster cluster(fast_liveness(), 2, 16 * MiB);
  const auto deadline = 1500ms;
  auto c = cluster.client(deadline);
  const size_t size = 64 * 1024;
  std::vector<std::string> kept;
  for (int i = 0; i < 4; ++i) {
    kept.push_back("kept/" + std::to_string(i));
    store::put_options o;
    o.replicas = 2;
    BOOST_REQUIRE(!c->put(kept.back(), value_for(kept.back(), size), o));
  }
  freeze(cluster.master.proc());
  // Each call fails within its deadline; together they keep the master stopped well past it (and
  // past the clients' TTL: once it runs again, it declares every client dead, and they mount again
  // with what they hold).
  {
    auto t0 = steady::now();
    const std::string key = "while-stopped";
    auto err = c->put(key, value_for(key, size));
    require_failed_in_time(err, elapsed_ms(t0), deadline, "put");
    t0 = steady::now();
    auto got = c->get(kept[0]);
    require_failed_in_time(got ? caf::error{} : got.error(), elapsed_ms(t0), deadline, "get");
    t0 = steady::now();
    auto e = c->exists(kept[1]);
    require_failed_in_time(e ? caf::error{} : e.error(), elapsed_ms(t0), deadline, "exists");
    t0 = steady::now();
    auto stats = c->master_stats();
    require_failed_in_time(stats ? caf::error{} : stats.error(), elapsed_ms(t0), deadline,
                           "master_stats");
  }
  BOOST_REQUIRE(cluster.master.proc().signal(SIGCONT));
  // Service resumes: what was stored is there, byte for byte, and new puts work.
  std::string last_get;
  BOOST_REQUIRE_MESSAGE(poll_until([&] {
                          auto got = c->get(kept[0]);
                          last_get = why(got);
                          return static_cast<bool>(got);
                        }, 60s),
                        "no get succeeded after SIGCONT: " << last_get);
  for (const auto& key : kept)
    require_value(*c, key, size, "after SIGCONT");
  caf::error last;
  BOOST_REQUIRE_MESSAGE(poll_until([&] { return !(last = c->put("resumed", value_for("resumed", size))); }, 60s),
                        "no put succeeded after SIGCONT: " << text(last));
  require_value(*c, "resumed", size, "put after SIGCONT");
  // Nothing lost, and nothing of the put that timed out while the master was stopped.
  auto r = report(*c);
  BOOST_CHECK_EQUAL(r.objects, kept.size() + 1);
  BOOST_TEST_MESSAGE("after SIGCONT: " << r.counters["clients_declared_dead"]
                                       << " clients declared dead, client mounts "
                                       << c->counters().mounts);
  BOOST_CHECK_MESSAGE(cluster.master.proc().running(), cluster.master.proc().transcript());
}
