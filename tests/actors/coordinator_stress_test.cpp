#define BOOST_TEST_MODULE coordinator_stress
#include <boost/test/unit_test.hpp>

// Randomized stress with real threads: several submitting threads drive one transfer engine whose
// workers run fault-injecting data paths in automatic mode (slices dropped, failed, duplicated,
// delayed, reordered). Some batches are waited for, some are freed while in flight. At the end
// every task is terminal, the coordinator's counters add up exactly, and nothing is left alive.
//
// KVFERRY_STRESS_TASKS sets the tasks per thread (default 10000); a smaller value is only for
// slow instrumented builds that would otherwise not finish in time.

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "actors/runtime.hpp"
#include "actors/transfer_engine.hpp"
#include "config/settings.hpp"
#include "tests/support/fault_path.hpp"

namespace {

using namespace kvferry;
using namespace std::chrono_literals;

constexpr size_t thread_count = 8;
constexpr size_t path_count = 3;
constexpr uint64_t slice_size = 4096;
constexpr size_t buffer_size = 1 << 20;
constexpr auto task_deadline = 200ms;
/// How much later than its deadline a waited batch may become terminal on a loaded 2-core machine
/// (timer granularity, scheduling, sanitizers). A batch that takes longer counts as a hang.
constexpr auto resolution_slack = 5s;

size_t tasks_per_thread() {
  if (const char* text = std::getenv("KVFERRY_STRESS_TASKS")) {
    auto n = std::strtoull(text, nullptr, 10);
    if (n > 0)
      return static_cast<size_t>(n);
  }
  return 10000;
}

/// Tasks counted by state (the four terminal states, plus anything else).
struct state_counts {
  uint64_t completed = 0;
  uint64_t failed = 0;
  uint64_t timeout = 0;
  uint64_t canceled = 0;
  uint64_t other = 0;

  void add(const batch_summary& s) {
    completed += s.completed;
    failed += s.failed;
    timeout += s.timeout;
    canceled += s.canceled;
    other += s.waiting + s.pending;
  }
  void add(const state_counts& x) {
    completed += x.completed;
    failed += x.failed;
    timeout += x.timeout;
    canceled += x.canceled;
    other += x.other;
  }
  [[nodiscard]] uint64_t total() const { return completed + failed + timeout + canceled + other; }
};

struct thread_result {
  uint64_t submitted = 0;
  uint64_t batches = 0;
  uint64_t freed_in_flight = 0;
  /// Waited batches: states after wait().
  state_counts waited;
  /// Batches freed in flight: states seen just before free (terminal ones stay as they are).
  state_counts before_free;
  std::vector<std::string> errors;

  void error(std::string what) {
    if (errors.size() < 20)
      errors.push_back(std::move(what));
  }
};

void submitter(transfer_engine& engine, segment_id self_segment, uint8_t* buffer, size_t index,
               size_t task_count, thread_result& out) {
  std::mt19937_64 rng(0x5eed + index);
  auto uniform = [&](uint64_t lo, uint64_t hi) {
    return std::uniform_int_distribution<uint64_t>(lo, hi)(rng);
  };
  const auto base = reinterpret_cast<uint64_t>(buffer);
  std::vector<transfer_request> requests;
  while (out.submitted < task_count) {
    auto n = std::min<uint64_t>(uniform(64, 128), task_count - out.submitted);
    auto batch = engine.allocate_batch(n);
    if (!batch) {
      out.error("allocate_batch: " + describe(batch.error()));
      return;
    }
    ++out.batches;
    requests.clear();
    for (uint64_t i = 0; i < n; ++i) {
      transfer_request rq;
      rq.op = uniform(0, 1) == 0 ? opcode::read : opcode::write;
      // Three in four tasks fit one slice; the rest span two or three.
      rq.length = uniform(0, 3) != 0 ? uniform(1, slice_size) : uniform(slice_size + 1, 3 * slice_size);
      rq.source = buffer + uniform(0, buffer_size - rq.length);
      rq.target_id = self_segment;
      rq.target_offset = base + uniform(0, buffer_size - rq.length);
      requests.push_back(rq);
    }
    // Some batches are submitted in two calls: tasks are numbered across both.
    auto split = uniform(0, 3) == 0 ? n / 2 : n;
    submit_options options;
    options.deadline = task_deadline;
    const auto submitted_at = std::chrono::steady_clock::now();
    auto first = engine.submit(*batch, std::span<const transfer_request>(requests.data(), split), options);
    if (!first || *first != 0) {
      out.error("submit: " + (first ? "first index " + std::to_string(*first) : describe(first.error())));
      return;
    }
    if (split < n) {
      auto second = engine.submit(*batch, std::span<const transfer_request>(requests.data() + split, n - split),
                                  options);
      if (!second || *second != split) {
        out.error("second submit: " + (second ? "first index " + std::to_string(*second)
                                              : describe(second.error())));
        return;
      }
    }
    out.submitted += n;
    if (uniform(0, 7) == 0) {
      // Freed while in flight: unresolved tasks end CANCELED, the rest keep their state.
      ++out.freed_in_flight;
      if (uniform(0, 1) == 0)
        (void)engine.wait(*batch, std::chrono::milliseconds(uniform(0, 1))); // let some finish
      auto before = engine.batch_status(*batch);
      if (!before || before->tasks != n) {
        out.error("batch_status before free: " + (before ? std::to_string(before->tasks) + " tasks"
                                                         : describe(before.error())));
        return;
      }
      out.before_free.add(*before);
      if (auto err = engine.free_batch(*batch)) {
        out.error("free_batch in flight: " + describe(err));
        return;
      }
      continue;
    }
    auto summary = engine.wait(*batch, std::chrono::duration_cast<std::chrono::milliseconds>(
                                         task_deadline + resolution_slack));
    if (!summary) {
      out.error("wait: " + describe(summary.error()));
      return;
    }
    if (summary->tasks != n || !summary->all_terminal())
      out.error("batch of " + std::to_string(n) + " tasks: summary shows " + std::to_string(summary->tasks)
                + " tasks, " + std::to_string(summary->terminal()) + " terminal");
    out.waited.add(*summary);
    // TIMEOUT only once the deadline has passed.
    if (summary->timeout > 0 && std::chrono::steady_clock::now() - submitted_at < task_deadline)
      out.error("a task timed out " + std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                                        std::chrono::steady_clock::now() - submitted_at)
                                                        .count())
                + " ms after submission, before its deadline");
    uint64_t bytes = 0;
    for (uint32_t i = 0; i < n; ++i) {
      auto st = engine.status(*batch, i);
      if (!st) {
        out.error("status: " + describe(st.error()));
        continue;
      }
      bytes += st->transferred_bytes;
      const auto& rq = requests[i];
      auto where = "task " + std::to_string(i) + " (" + to_string(st->state) + "): ";
      switch (st->state) {
        case task_state::completed:
          if (st->transferred_bytes != rq.length || st->code != errc::none)
            out.error(where + std::to_string(st->transferred_bytes) + " of "
                      + std::to_string(rq.length) + " bytes");
          break;
        case task_state::timeout:
          if (st->transferred_bytes >= rq.length || st->code != errc::timeout)
            out.error(where + "bytes " + std::to_string(st->transferred_bytes) + ", code "
                      + to_string(st->code));
          break;
        case task_state::failed:
          if (st->transferred_bytes >= rq.length || st->code != errc::transport_failure)
            out.error(where + "bytes " + std::to_string(st->transferred_bytes) + ", code "
                      + to_string(st->code));
          break;
        default:
          out.error(where + "not terminal after wait, or canceled without a free");
      }
    }
    if (bytes != summary->transferred_bytes)
      out.error("summary bytes " + std::to_string(summary->transferred_bytes)
                + " differ from the tasks' sum " + std::to_string(bytes));
    if (auto err = engine.free_batch(*batch)) {
      out.error("free_batch: " + describe(err));
      return;
    }
  }
}

} // namespace

BOOST_AUTO_TEST_CASE(every_task_resolves_once_under_faults_and_threads) {
  const auto per_thread = tasks_per_thread();
  auto rt = runtime::create({});
  BOOST_TEST_REQUIRE(static_cast<bool>(rt));

  std::vector<std::shared_ptr<transport::fault_path>> paths;
  engine_options options;
  options.segment_name = "stress:1";
  for (size_t i = 0; i < path_count; ++i) {
    transport::fault_policy policy;
    policy.drop = 0.001;
    policy.fail = 0.02;
    policy.duplicate = 0.01;
    policy.max_delay = 200us;
    policy.reorder = true;
    policy.seed = 17 + i;
    paths.push_back(std::make_shared<transport::fault_path>(policy));
    options.data_paths.push_back(paths.back());
  }
  config::settings settings;
  settings.slice_size = slice_size;
  settings.retry_limit = 1; // with fail 0.02, about 4e-4 of slices fail for good
  auto created = transfer_engine::create(*rt, settings, options);
  BOOST_TEST_REQUIRE(static_cast<bool>(created), (created ? "" : describe(created.error())));
  auto& engine = **created;

  std::vector<uint8_t> buffer(buffer_size);
  BOOST_TEST_REQUIRE(!engine.register_memory(buffer.data(), buffer.size(), "cpu:0"));
  auto self_segment = engine.open_segment(engine.segment_name());
  BOOST_TEST_REQUIRE(static_cast<bool>(self_segment));

  auto started = std::chrono::steady_clock::now();
  std::array<thread_result, thread_count> results;
  {
    std::vector<std::thread> threads;
    for (size_t t = 0; t < thread_count; ++t)
      threads.emplace_back([&, t] {
        submitter(engine, *self_segment, buffer.data(), t, per_thread, results[t]);
      });
    for (auto& th : threads)
      th.join();
  }
  auto elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now()
                                                                       - started);

  thread_result all;
  for (auto& r : results) {
    for (auto& e : r.errors)
      BOOST_ERROR(e);
    all.submitted += r.submitted;
    all.batches += r.batches;
    all.freed_in_flight += r.freed_in_flight;
    all.waited.add(r.waited);
    all.before_free.add(r.before_free);
  }
  BOOST_TEST(all.submitted == thread_count * per_thread);
  BOOST_TEST(all.waited.other == 0u);
  BOOST_TEST(all.waited.canceled == 0u);
  BOOST_TEST(all.waited.total() + all.before_free.total() == all.submitted);

  transport::fault_counters faults;
  auto sum_faults = [&] {
    faults = {};
    for (auto& p : paths) {
      auto c = p->counters();
      faults.posted += c.posted;
      faults.completed += c.completed;
      faults.failed += c.failed;
      faults.dropped += c.dropped;
      faults.duplicated += c.duplicated;
      faults.withdrawn += c.withdrawn;
    }
  };
  // Every batch is freed: nothing is alive any more. Duplicated completions still in a fault
  // path's delay queue (at most max_delay) arrive late; wait for them to be counted.
  auto stats = engine.stats();
  BOOST_TEST_REQUIRE(static_cast<bool>(stats));
  sum_faults();
  for (auto until = std::chrono::steady_clock::now() + 5s;
       stats && stats->late_reports < faults.duplicated && std::chrono::steady_clock::now() < until;) {
    std::this_thread::sleep_for(1ms);
    stats = engine.stats();
    sum_faults();
  }
  BOOST_TEST_REQUIRE(static_cast<bool>(stats));
  const auto& s = *stats;

  std::printf("coordinator_stress: %zu threads x %zu tasks in %lld ms, %llu batches (%llu freed in "
              "flight): submitted %llu completed %llu failed %llu timeout %llu canceled %llu | "
              "slices posted %llu succeeded %llu failed %llu retried %llu withdrawn %llu | "
              "late_reports %llu repeated %llu | live batches %llu tasks %llu slices %llu | "
              "faults posted %llu dropped %llu failed %llu duplicated %llu\n",
              thread_count, per_thread, static_cast<long long>(elapsed.count()),
              (unsigned long long) all.batches, (unsigned long long) all.freed_in_flight,
              (unsigned long long) s.tasks_submitted, (unsigned long long) s.tasks_completed,
              (unsigned long long) s.tasks_failed, (unsigned long long) s.tasks_timeout,
              (unsigned long long) s.tasks_canceled, (unsigned long long) s.slices_posted,
              (unsigned long long) s.slices_succeeded, (unsigned long long) s.slices_failed,
              (unsigned long long) s.slices_retried, (unsigned long long) s.slices_withdrawn,
              (unsigned long long) s.late_reports, (unsigned long long) s.repeated_resolutions,
              (unsigned long long) s.live_batches, (unsigned long long) s.live_tasks,
              (unsigned long long) s.live_slices, (unsigned long long) faults.posted,
              (unsigned long long) faults.dropped, (unsigned long long) faults.failed,
              (unsigned long long) faults.duplicated);
  std::fflush(stdout);

  // Every task resolved exactly once, into one of the four terminal states.
  BOOST_TEST(s.tasks_submitted == all.submitted);
  BOOST_TEST(s.tasks_submitted == s.tasks_completed + s.tasks_failed + s.tasks_timeout + s.tasks_canceled);
  BOOST_TEST(s.repeated_resolutions == 0u);
  BOOST_TEST(s.live_batches == 0u);
  BOOST_TEST(s.live_tasks == 0u);
  BOOST_TEST(s.live_slices == 0u);
  // What callers saw is part of what the coordinator counted: waited batches fully, batches freed
  // in flight with the tasks that were terminal before the free; only those can be CANCELED.
  BOOST_TEST(s.tasks_completed >= all.waited.completed + all.before_free.completed);
  BOOST_TEST(s.tasks_failed >= all.waited.failed + all.before_free.failed);
  BOOST_TEST(s.tasks_timeout >= all.waited.timeout + all.before_free.timeout);
  BOOST_TEST(s.tasks_canceled <= all.before_free.other);
  BOOST_TEST(s.tasks_canceled > 0u);
  BOOST_TEST(s.tasks_failed > 0u);
  // Each posted attempt (first posts and retries) ended exactly one way: its success was acted on,
  // its failure was acted on (and then retried or fatal), or it was withdrawn when its task
  // resolved (dropped slices end here, withdrawn when their task timed out or was canceled).
  BOOST_TEST(s.slices_posted == s.slices_succeeded + s.slices_failed + s.slices_withdrawn);
  // Every task is valid, so a FAILED task is exactly a failure with no retry left.
  BOOST_TEST(s.tasks_failed == s.slices_failed - s.slices_retried);
  BOOST_TEST(s.slices_retried <= s.slices_failed);
  // Once every batch is freed, every withdrawal was confirmed, so every post reached its path.
  BOOST_TEST(faults.posted == s.slices_posted);
  BOOST_TEST(faults.posted == faults.completed + faults.failed + faults.dropped);
  BOOST_TEST(s.slices_succeeded <= faults.completed);
  BOOST_TEST(s.slices_failed <= faults.failed);
  // Duplicates were injected; at most one copy of each was acted on.
  BOOST_TEST(faults.duplicated > 0u);
  BOOST_TEST(s.late_reports > 0u);
  BOOST_TEST(s.late_reports >= faults.duplicated);
  // Dropped slices never report: their tasks end TIMEOUT (or CANCELED when freed first).
  if (faults.dropped > 20)
    BOOST_TEST(s.tasks_timeout > 0u);

  engine.shutdown();
}
