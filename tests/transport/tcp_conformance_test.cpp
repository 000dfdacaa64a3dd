#define BOOST_TEST_MODULE tcp_conformance_test
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <netinet/in.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <zmq.hpp>

#include "tests/support/checks.hpp"
#include "actors/runtime.hpp"
#include "actors/transfer_engine.hpp"
#include "config/error.hpp"
#include "config/log.hpp"
#include "config/settings.hpp"
#include "tests/support/child_process.hpp"
#include "tests/support/node_rig.hpp"
#include "tools/pattern.hpp"
#include "transport/tcp/wire.hpp"
#include "transport/zmtp/net.hpp"

// Issue 3's acceptance, against real processes on loopback: a `kvferry node` child process is the
// target; this process is the initiator (an engine on its own networked runtime). Cases: byte-exact
// READ/WRITE at many sizes and unaligned offsets; out-of-range offsets; SIGKILL and restart under
// the same name; SIGSTOP past the deadline; garbage on the data and control ports; 10,000 tasks in
// flight, free while in flight, two initiators; notifications between two networked runtimes.
//
// Usage: tcp_conformance_test [boost test options] -- /path/to/kvferry

using namespace kvferry;
using namespace std::chrono_literals;
using test::child_process;
using steady = std::chrono::steady_clock;

namespace {

using namespace kvferry::test::rig;
using kvferry::test::why;
using kvferry::test::contains;

struct quiet_logs {
  quiet_logs() { log::set_level("warn"); }
};

} // namespace

BOOST_TEST_GLOBAL_FIXTURE(quiet_logs);

// ------------------------------------------------------------------------------------------------
// (1) Byte-exact READ and WRITE, sizes 1 B .. 64 MiB, unaligned local and remote offsets.

BOOST_AUTO_TEST_CASE(byte_exact_read_and_write_at_unaligned_offsets) {
  const std::vector<uint64_t> sizes{1,     7,     512,   4095,         4096,
                                    65535, 65536, 65537, MiB + 3, 64 * MiB};
  const uint64_t segment_bytes = 72 * MiB;
  const uint64_t fill_seed = 0x5eed0001;
  test::temp_dir dir("kvferry-conformance");
  auto node = start_node(dir, test::node_config(0, 0, 60000), segment_bytes, fill_seed);
  initiator in(72 * MiB, initiator_settings(60s), true, 72 * MiB);
  auto seg = in.open(node.name);
  BOOST_REQUIRE_EQUAL(in.remote_len, segment_bytes);

  // Disjoint, unaligned places for every size, with a gap of at least 2 bytes between them so
  // that the bytes just before and after each range can be checked as untouched.
  std::vector<uint64_t> remote_offsets, local_offsets;
  uint64_t r = 64 * MiB + 4099, l = 64 * MiB + 8195;
  for (auto size : sizes) {
    if (size == 64 * MiB) {
      remote_offsets.push_back(7);
      local_offsets.push_back(9);
    } else {
      remote_offsets.push_back(r);
      local_offsets.push_back(l);
      r += size + 5;
      l += size + 3;
    }
  }
  BOOST_REQUIRE(r + 1 < segment_bytes && l + 1 < in.local.size);
  const uint8_t guard = 0xa5;

  // READ, one size per batch: the bytes are the node's fill pattern at the remote offset, and the
  // local bytes just outside the range are untouched.
  for (size_t i = 0; i < sizes.size(); ++i) {
    auto* dst = in.local.data + local_offsets[i];
    std::memset(dst - 1, guard, sizes[i] + 2);
    transfer_request rq{opcode::read, dst, seg, in.remote_base + remote_offsets[i], sizes[i]};
    auto st = run_one(*in.engine, rq);
    BOOST_REQUIRE_MESSAGE(st.state == task_state::completed && st.transferred_bytes == sizes[i],
                          "READ of " << sizes[i] << " bytes: " << show(st));
    auto bad = tools::check_pattern(dst, sizes[i], fill_seed, remote_offsets[i]);
    BOOST_CHECK_MESSAGE(bad == sizes[i], "READ of " << sizes[i] << " bytes: byte " << bad
                                                    << " differs from the node's pattern");
    BOOST_CHECK_MESSAGE(dst[-1] == guard && dst[sizes[i]] == guard,
                        "READ of " << sizes[i] << " bytes wrote outside its local range");
  }

  // READ, every size in one batch.
  {
    std::vector<transfer_request> rqs;
    for (size_t i = 0; i < sizes.size(); ++i) {
      auto* dst = in.local.data + local_offsets[i];
      std::memset(dst - 1, guard, sizes[i] + 2);
      rqs.push_back({opcode::read, dst, seg, in.remote_base + remote_offsets[i], sizes[i]});
    }
    auto sts = run_batch(*in.engine, rqs);
    require_completed(sts, rqs, "READ batch of every size");
    for (size_t i = 0; i < sizes.size(); ++i) {
      auto* dst = in.local.data + local_offsets[i];
      BOOST_CHECK_MESSAGE(tools::check_pattern(dst, sizes[i], fill_seed, remote_offsets[i])
                            == sizes[i],
                          "READ batch: the " << sizes[i] << "-byte task's bytes are wrong");
      BOOST_CHECK(dst[-1] == guard && dst[sizes[i]] == guard);
    }
  }

  // WRITE, one size per batch, then READ back one byte more on each side: the written bytes are
  // in the node's memory and its neighbours still hold the fill pattern.
  auto check_written = [&](size_t i, uint64_t seed, const std::string& what) {
    auto off = remote_offsets[i];
    auto len = sizes[i] + 2;
    auto* back = in.second.data;
    std::memset(back, 0, len);
    transfer_request rq{opcode::read, back, seg, in.remote_base + off - 1, len};
    auto st = run_one(*in.engine, rq);
    BOOST_REQUIRE_MESSAGE(st.state == task_state::completed, what << ": read-back " << show(st));
    BOOST_CHECK_MESSAGE(back[0] == tools::pattern_byte(fill_seed, off - 1),
                        what << " of " << sizes[i] << " bytes changed the byte before its range");
    auto bad = tools::check_pattern(back + 1, sizes[i], seed, off);
    BOOST_CHECK_MESSAGE(bad == sizes[i], what << " of " << sizes[i] << " bytes: byte " << bad
                                              << " is not in the node's memory");
    BOOST_CHECK_MESSAGE(back[len - 1] == tools::pattern_byte(fill_seed, off + sizes[i]),
                        what << " of " << sizes[i] << " bytes changed the byte after its range");
  };
  const uint64_t write_seed = 0x771e0001;
  for (size_t i = 0; i < sizes.size(); ++i) {
    auto* src = in.local.data + local_offsets[i];
    tools::fill_pattern(src, sizes[i], write_seed, remote_offsets[i]);
    transfer_request rq{opcode::write, src, seg, in.remote_base + remote_offsets[i], sizes[i]};
    auto st = run_one(*in.engine, rq);
    BOOST_REQUIRE_MESSAGE(st.state == task_state::completed && st.transferred_bytes == sizes[i],
                          "WRITE of " << sizes[i] << " bytes: " << show(st));
    check_written(i, write_seed, "WRITE");
  }

  // WRITE, every size in one batch, with another pattern.
  {
    const uint64_t seed2 = 0x771e0002;
    std::vector<transfer_request> rqs;
    for (size_t i = 0; i < sizes.size(); ++i) {
      auto* src = in.local.data + local_offsets[i];
      tools::fill_pattern(src, sizes[i], seed2, remote_offsets[i]);
      rqs.push_back({opcode::write, src, seg, in.remote_base + remote_offsets[i], sizes[i]});
    }
    auto sts = run_batch(*in.engine, rqs);
    require_completed(sts, rqs, "WRITE batch of every size");
    for (size_t i = 0; i < sizes.size(); ++i)
      check_written(i, seed2, "WRITE batch");
  }
  BOOST_CHECK_MESSAGE(node.proc->running(), "the node died\n" << node.proc->transcript());
  stop_node(node);
}

// ------------------------------------------------------------------------------------------------
// (2) Out-of-range remote offsets.

BOOST_AUTO_TEST_CASE(out_of_range_remote_offsets_fail_and_target_keeps_serving) {
  const uint64_t segment_bytes = MiB + 5;
  const uint64_t fill_seed = 0x5eed0002;
  test::temp_dir dir("kvferry-conformance");
  auto node = start_node(dir, test::node_config(0, 0, 30000), segment_bytes, fill_seed);
  initiator in(4 * MiB, initiator_settings(30s), /*check_remote_bounds=*/false);
  auto seg = in.open(node.name);
  const uint64_t base = in.remote_base;
  const uint64_t end = base + in.remote_len;
  const uint64_t write_seed = 0x771e0003;

  struct probe {
    const char* what;
    opcode op;
    uint64_t remote;
    uint64_t length;
    bool valid;
  };
  const std::vector<probe> probes{
    {"valid READ", opcode::read, base + 17, 100, true},
    {"READ past the end", opcode::read, end + 4096, 16, false},
    {"READ just past the end", opcode::read, end, 1, false},
    {"READ straddling the end", opcode::read, end - 10, 20, false},
    {"READ straddling the end, many slices", opcode::read, end - 100000, 200000, false},
    {"READ before the start", opcode::read, base - 64, 16, false},
    {"READ straddling the start", opcode::read, base - 8, 16, false},
    {"READ wrapping around the address space", opcode::read, ~uint64_t{0} - 15, 32, false},
    {"valid WRITE", opcode::write, base + 1000, 100, true},
    {"WRITE straddling the end", opcode::write, end - 10, 20, false},
    {"WRITE past the end", opcode::write, end + 1, 64, false},
    {"WRITE before the start", opcode::write, base - 32, 32, false},
    {"WRITE straddling the start", opcode::write, base - 16, 32, false},
  };
  std::vector<transfer_request> rqs;
  uint64_t local_off = 0;
  for (const auto& p : probes) {
    auto* buf = in.local.data + local_off;
    if (p.op == opcode::write)
      tools::fill_pattern(buf, p.length, write_seed, p.remote - base);
    else
      std::memset(buf, 0, p.length);
    rqs.push_back({p.op, buf, seg, p.remote, p.length});
    local_off += p.length + 64;
  }
  auto sts = run_batch(*in.engine, rqs, 60s);
  for (size_t i = 0; i < probes.size(); ++i) {
    const auto& p = probes[i];
    if (p.valid) {
      BOOST_CHECK_MESSAGE(sts[i].state == task_state::completed, p.what << ": " << show(sts[i]));
    } else {
      BOOST_CHECK_MESSAGE(sts[i].state == task_state::failed && sts[i].code == errc::out_of_range,
                          p.what << ": expected FAILED out_of_range, got " << show(sts[i]));
      BOOST_CHECK_MESSAGE(contains(sts[i].reason, "out_of_range"),
                          p.what << ": the reason '" << sts[i].reason << "' does not say why");
    }
  }
  // The valid READ got the node's bytes; the valid WRITE landed; the refused WRITE straddling the
  // end changed nothing (the last bytes of the segment still hold the fill pattern).
  BOOST_CHECK(tools::check_pattern(rqs[0].source, 100, fill_seed, 17) == 100);
  require_remote_pattern(in, seg, 1000, 100, write_seed, "valid WRITE next to refused ones");
  require_remote_pattern(in, seg, in.remote_len - 10, 10, fill_seed, "refused WRITE at the end");
  require_remote_pattern(in, seg, 0, 16, fill_seed, "refused WRITE at the start");
  BOOST_REQUIRE_MESSAGE(node.proc->running(), "the node died\n" << node.proc->transcript());

  // The node still serves a whole-segment READ.
  auto full = run_one(*in.engine, {opcode::read, in.local.data + 1, seg, base, in.remote_len});
  BOOST_REQUIRE_MESSAGE(full.state == task_state::completed, show(full));
  BOOST_CHECK(tools::check_pattern(in.local.data + 1, 1000, fill_seed, 0) == 1000);
  BOOST_CHECK(tools::check_pattern(in.local.data + 1 + 1100, in.remote_len - 1100, fill_seed, 1100)
              == in.remote_len - 1100);

  // With the default check_remote_bounds=true the same requests are refused at submit, all or
  // nothing.
  mapped local(MiB);
  engine_options eo;
  auto checked = transfer_engine::create(in.rt, initiator_settings(30s), eo);
  BOOST_REQUIRE_MESSAGE(checked, why(checked));
  auto& ce = **checked;
  BOOST_REQUIRE(!ce.register_memory(local.data, local.size));
  auto cseg = ce.open_segment(node.name);
  BOOST_REQUIRE_MESSAGE(cseg, why(cseg));
  auto batch = ce.allocate_batch(4);
  BOOST_REQUIRE(batch);
  for (const auto& p : probes) {
    if (p.valid || p.length > local.size)
      continue;
    transfer_request rq{p.op, local.data, *cseg, p.remote, p.length};
    auto r = ce.submit(*batch, std::span<const transfer_request>(&rq, 1));
    BOOST_CHECK_MESSAGE(!r && code_of(r.error()) == errc::out_of_range,
                        p.what << " with check_remote_bounds: expected out_of_range, got "
                               << why(r));
  }
  std::vector<transfer_request> mixed{{opcode::read, local.data, *cseg, base, 16},
                                      {opcode::read, local.data + 16, *cseg, end - 8, 16}};
  auto r = ce.submit(*batch, mixed);
  BOOST_CHECK_MESSAGE(!r && code_of(r.error()) == errc::out_of_range, why(r));
  auto summary = ce.batch_status(*batch);
  BOOST_REQUIRE(summary);
  BOOST_CHECK_EQUAL(summary->tasks, 0u); // all or nothing: the valid request was not submitted
  BOOST_CHECK(!ce.free_batch(*batch));
  ce.shutdown();
  checked->reset();
  BOOST_CHECK_MESSAGE(node.proc->running(), "the node died\n" << node.proc->transcript());
  stop_node(node);
}

// ------------------------------------------------------------------------------------------------
// (3) SIGKILL in the middle of a run; restart under the same name.

BOOST_AUTO_TEST_CASE(sigkill_mid_run_resolves_every_task_and_restarted_target_works) {
  const uint64_t segment_bytes = 32 * MiB;
  const uint64_t fill_seed = 0x5eed0003;
  const auto deadline = 2000ms;
  const auto margin = 1500ms;
  test::temp_dir dir("kvferry-conformance");
  uint16_t rpc_port = test::free_tcp_port();
  uint16_t data_port = test::free_tcp_port();
  while (data_port == rpc_port)
    data_port = test::free_tcp_port();
  const auto config = test::node_config(rpc_port, data_port, 30000);
  auto node = start_node(dir, config, segment_bytes, fill_seed);
  BOOST_REQUIRE_EQUAL(node.name, "127.0.0.1:" + std::to_string(rpc_port));
  initiator in(64 * MiB, initiator_settings(deadline));
  auto seg = in.open(node.name);
  const auto old = in.descriptor;
  require_remote_pattern(in, seg, 12345, 4096, fill_seed, "before the kill");

  // Many batches in flight: 80 batches x 64 tasks x 256 KiB, READ and WRITE mixed.
  const uint32_t batches = 80, per_batch = 64;
  const uint64_t block = 256 * KiB;
  std::vector<batch_id> ids;
  std::vector<steady::time_point> submitted;
  std::vector<std::unique_ptr<batch_guard>> guards;
  for (uint32_t b = 0; b < batches; ++b) {
    std::vector<transfer_request> rqs;
    for (uint32_t t = 0; t < per_batch; ++t) {
      uint32_t k = b * per_batch + t;
      rqs.push_back({k % 2 ? opcode::write : opcode::read, in.local.data + (k % 256) * block, seg,
                     in.remote_base + (k % 128) * block, block});
    }
    auto id = in.engine->allocate_batch(per_batch);
    BOOST_REQUIRE(id);
    guards.push_back(std::make_unique<batch_guard>(*in.engine, *id));
    auto first = in.engine->submit(*id, rqs);
    BOOST_REQUIRE_MESSAGE(first, why(first));
    ids.push_back(*id);
    submitted.push_back(steady::now());
  }
  // Kill once bytes are moving.
  auto until = steady::now() + 20s;
  for (;;) {
    auto s = in.engine->batch_status(ids.front());
    BOOST_REQUIRE(s);
    if (s->completed > 0 || s->transferred_bytes > 0)
      break;
    BOOST_REQUIRE_MESSAGE(steady::now() < until, "no transfer completed within 20 s");
    std::this_thread::sleep_for(1ms);
  }
  BOOST_REQUIRE(node.proc->signal(SIGKILL));
  auto killed_at = steady::now();
  BOOST_REQUIRE(node.proc->wait_exit(10s).has_value());

  // Every task is terminal by its deadline plus the margin.
  uint32_t completed = 0, failed = 0, timed_out = 0, canceled = 0;
  std::chrono::milliseconds worst{0};
  for (uint32_t b = 0; b < batches; ++b) {
    auto limit = submitted[b] + deadline + margin;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(limit - steady::now());
    auto w = in.engine->wait(ids[b], std::max(left, 0ms));
    BOOST_REQUIRE_MESSAGE(w, "batch " << b << " not terminal within deadline + "
                                      << margin.count() << " ms: " << why(w));
    worst = std::max(worst, std::chrono::duration_cast<std::chrono::milliseconds>(
                              steady::now() - submitted[b]));
    for (uint32_t t = 0; t < per_batch; ++t) {
      auto st = in.engine->status(ids[b], t);
      BOOST_REQUIRE(st);
      BOOST_REQUIRE_MESSAGE(is_terminal(st->state), show(*st));
      switch (st->state) {
        case task_state::completed: ++completed; break;
        case task_state::failed: ++failed; break;
        case task_state::timeout: ++timed_out; break;
        default: ++canceled; break;
      }
    }
  }
  BOOST_TEST_MESSAGE("SIGKILL: " << completed << " completed, " << failed << " failed, "
                                 << timed_out << " timed out, " << canceled
                                 << " canceled; slowest batch terminal after " << worst.count()
                                 << " ms, kill "
                                 << std::chrono::duration_cast<std::chrono::milliseconds>(
                                      killed_at - submitted.front())
                                      .count()
                                 << " ms after the first submit");
  BOOST_CHECK_MESSAGE(failed + timed_out > 0, "the kill interrupted nothing");
  BOOST_CHECK_EQUAL(canceled, 0u);
  for (auto& g : guards) {
    BOOST_CHECK(!in.engine->free_batch(g->id));
    g->freed = true;
  }
  auto stats = stats_of(*in.engine);
  BOOST_CHECK_EQUAL(stats.live_tasks, 0u);
  BOOST_CHECK_EQUAL(stats.repeated_resolutions, 0u);

  // Restart on the same ports: the same segment name.
  auto again = start_node(dir, config, segment_bytes, fill_seed);
  BOOST_REQUIRE_EQUAL(again.name, node.name);

  // Without re-opening, requests still carry the old descriptor (old incarnation, old addresses):
  // they must never complete. Once the data connection is re-established the target refuses them
  // as stale_incarnation.
  const uint64_t stale_seed = 0xdeadbeef;
  tools::fill_pattern(in.local.data, 4096, stale_seed, 12345);
  bool saw_stale = false;
  auto stale_until = steady::now() + 15s;
  while (!saw_stale && steady::now() < stale_until) {
    std::vector<transfer_request> rqs{
      {opcode::write, in.local.data, seg, old.regions.front().base + 12345, 4096},
      {opcode::read, in.local.data + 8192, seg, old.regions.front().base + 12345, 4096}};
    std::memset(in.local.data + 8192, 0xee, 4096);
    auto sts = run_batch(*in.engine, rqs, 10s);
    for (const auto& st : sts) {
      BOOST_REQUIRE_MESSAGE(st.state == task_state::failed || st.state == task_state::timeout,
                            "a request for the old incarnation ended " << show(st));
      saw_stale = saw_stale || st.code == errc::stale_incarnation;
    }
    BOOST_REQUIRE_MESSAGE(std::all_of(in.local.data + 8192, in.local.data + 8192 + 4096,
                                      [](uint8_t b) { return b == 0xee; }),
                          "a refused READ changed local memory");
    if (!saw_stale)
      std::this_thread::sleep_for(100ms);
  }
  BOOST_CHECK_MESSAGE(saw_stale, "the restarted target never refused a stale request as "
                                 "stale_incarnation");

  // Re-open: a new incarnation; transfers work byte-exact; the stale WRITE changed nothing.
  BOOST_REQUIRE_EQUAL(in.open(node.name), seg);
  BOOST_CHECK_NE(in.descriptor.incarnation, old.incarnation);
  require_remote_pattern(in, seg, 12345, 4096, fill_seed, "the stale WRITE's target range");
  require_remote_pattern(in, seg, 0, 3 * MiB + 7, fill_seed, "READ after restart");
  const uint64_t seed2 = 0x771e0004;
  tools::fill_pattern(in.local.data + 3, MiB + 3, seed2, 777);
  auto w = run_one(*in.engine, {opcode::write, in.local.data + 3, seg, in.remote_base + 777,
                                MiB + 3});
  BOOST_REQUIRE_MESSAGE(w.state == task_state::completed, show(w));
  require_remote_pattern(in, seg, 777, MiB + 3, seed2, "WRITE after restart");

  // Kill the idle target and restart it once more, re-opening right away: the first transfer
  // after the re-open succeeds.
  BOOST_REQUIRE(again.proc->signal(SIGKILL));
  BOOST_REQUIRE(again.proc->wait_exit(10s).has_value());
  auto third = start_node(dir, config, segment_bytes, fill_seed);
  BOOST_REQUIRE_EQUAL(in.open(third.name), seg);
  auto r = run_one(*in.engine, {opcode::read, in.second.data, seg, in.remote_base + 99, 4096});
  BOOST_CHECK_MESSAGE(r.state == task_state::completed,
                      "first READ right after re-opening a restarted target: " << show(r));
  require_remote_pattern(in, seg, 99, 4096, fill_seed, "READ after the second restart");
  BOOST_CHECK_MESSAGE(third.proc->running(), third.proc->transcript());
  stop_node(third);
}

// ------------------------------------------------------------------------------------------------
// (4) SIGSTOP longer than the deadline.

BOOST_AUTO_TEST_CASE(sigstop_past_the_deadline_times_out_once_and_late_replies_are_ignored) {
  const uint64_t segment_bytes = 8 * MiB;
  const uint64_t fill_seed = 0x5eed0004;
  const auto deadline = 500ms;
  const uint32_t workers = 2;
  test::temp_dir dir("kvferry-conformance");
  auto node = start_node(dir, test::node_config(0, 0, 30000), segment_bytes, fill_seed);
  initiator in(8 * MiB, initiator_settings(deadline, workers));
  auto seg = in.open(node.name);
  const uint16_t data_port = data_port_of(in.descriptor);
  round_trip_every_connection(in, seg, workers, fill_seed, "before SIGSTOP");

  const uint32_t reads = 32, writes = 32;
  const uint64_t block = 4096;
  const uint8_t sentinel = 0xee;
  std::vector<transfer_request> rqs;
  for (uint32_t i = 0; i < reads; ++i) {
    auto* dst = in.local.data + i * (block + 8);
    std::memset(dst, sentinel, block);
    rqs.push_back({opcode::read, dst, seg, in.remote_base + 3 + i * block, block});
  }
  for (uint32_t i = 0; i < writes; ++i) {
    auto* src = in.local.data + 4 * MiB + i * block;
    tools::fill_pattern(src, block, 0x771e0005, 4 * MiB + i * block);
    rqs.push_back({opcode::write, src, seg, in.remote_base + 4 * MiB + i * block, block});
  }
  auto before = stats_of(*in.engine);

  // The node is stopped, every one of its threads, before the batch is submitted: no task can
  // complete however slow or fast this machine is. It stays stopped until every task is terminal,
  // i.e. past the deadline.
  BOOST_REQUIRE(node.proc->signal(SIGSTOP));
  auto stop_wait_until = steady::now() + 60s;
  while (!all_threads_stopped(node.proc->pid())) {
    BOOST_REQUIRE_MESSAGE(steady::now() < stop_wait_until,
                          "the node did not stop within 60 s of SIGSTOP\n"
                            << node.proc->transcript());
    std::this_thread::sleep_for(1ms);
  }
  auto batch = in.engine->allocate_batch(rqs.size());
  BOOST_REQUIRE(batch);
  batch_guard guard{*in.engine, *batch};
  auto submitted = steady::now();
  auto first = in.engine->submit(*batch, rqs);
  BOOST_REQUIRE_MESSAGE(first, why(first));
  auto w = in.engine->wait(*batch, deadline + 60s);
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - submitted);
  BOOST_REQUIRE_MESSAGE(w, "tasks not terminal within deadline + 60 s: " << why(w));
  BOOST_TEST_MESSAGE("SIGSTOP: batch terminal after " << took.count() << " ms");
  BOOST_CHECK_GE(took.count(), deadline.count() - 5); // not before the deadline
  std::vector<transfer_status> first_seen;
  for (uint32_t i = 0; i < rqs.size(); ++i) {
    auto st = in.engine->status(*batch, *first + i);
    BOOST_REQUIRE(st);
    BOOST_CHECK_MESSAGE(st->state == task_state::timeout && st->code == errc::timeout,
                        "task " << i << ": " << show(*st));
    first_seen.push_back(*st);
  }
  auto mid = stats_of(*in.engine);
  BOOST_CHECK_EQUAL(mid.tasks_timeout - before.tasks_timeout, rqs.size());
  BOOST_CHECK_EQUAL(mid.tasks_completed, before.tasks_completed);
  BOOST_CHECK_EQUAL(mid.repeated_resolutions, 0u);
  // Requests the initiator sent before the deadline wait, unread, at the stopped node: each one
  // will get a late reply.
  BOOST_REQUIRE(all_threads_stopped(node.proc->pid()));
  const uint64_t queued = bytes_queued_at(data_port);
  BOOST_TEST_MESSAGE("bytes waiting at the stopped node: " << queued);

  // Let it answer; the barrier makes sure every late reply has arrived and been reported.
  BOOST_REQUIRE(node.proc->signal(SIGCONT));
  round_trip_every_connection(in, seg, workers, fill_seed, "after SIGCONT");
  auto after = stats_of(*in.engine);
  BOOST_TEST_MESSAGE("late reports after SIGCONT: " << after.late_reports - mid.late_reports);
  if (queued > 0)
    BOOST_CHECK_MESSAGE(after.late_reports > mid.late_reports,
                        "the late replies after SIGCONT were not counted");
  // Nothing changed: every task still TIMEOUT with the same reason and bytes, resolved once.
  for (uint32_t i = 0; i < rqs.size(); ++i) {
    auto st = in.engine->status(*batch, *first + i);
    BOOST_REQUIRE(st);
    BOOST_CHECK_MESSAGE(st->state == task_state::timeout && st->code == first_seen[i].code
                          && st->reason == first_seen[i].reason
                          && st->transferred_bytes == first_seen[i].transferred_bytes,
                        "task " << i << " changed after SIGCONT: " << show(first_seen[i])
                                << " -> " << show(*st));
  }
  BOOST_CHECK_EQUAL(after.tasks_timeout, mid.tasks_timeout);
  BOOST_CHECK_EQUAL(after.tasks_completed, mid.tasks_completed + 2 * workers); // the barrier's
  BOOST_CHECK_EQUAL(after.tasks_failed, mid.tasks_failed);
  BOOST_CHECK_EQUAL(after.repeated_resolutions, 0u);
  // The late READ replies did not land in local memory.
  for (uint32_t i = 0; i < reads; ++i) {
    const auto* dst = in.local.data + i * (block + 8);
    BOOST_CHECK_MESSAGE(std::all_of(dst, dst + block, [&](uint8_t b) { return b == sentinel; }),
                        "a late READ reply for timed-out task " << i << " wrote local memory");
  }
  BOOST_CHECK(!in.engine->free_batch(*batch));
  guard.freed = true;

  // Both sides still work.
  BOOST_REQUIRE_MESSAGE(node.proc->running(), node.proc->transcript());
  require_remote_pattern(in, seg, 1, 2 * MiB, fill_seed, "READ after SIGCONT");
  tools::fill_pattern(in.local.data, 100000, 0x771e0006, 6 * MiB);
  auto wr = run_one(*in.engine,
                    {opcode::write, in.local.data, seg, in.remote_base + 6 * MiB, 100000});
  BOOST_REQUIRE_MESSAGE(wr.state == task_state::completed, show(wr));
  require_remote_pattern(in, seg, 6 * MiB, 100000, 0x771e0006, "WRITE after SIGCONT");
  BOOST_CHECK_EQUAL(stats_of(*in.engine).live_tasks, 0u);
  stop_node(node);
}

// ------------------------------------------------------------------------------------------------
// (5) Garbage on the data and control ports.

BOOST_AUTO_TEST_CASE(garbage_on_data_and_control_ports_is_refused_and_node_keeps_serving) {
  const uint64_t segment_bytes = 4 * MiB;
  const uint64_t fill_seed = 0x5eed0005;
  test::temp_dir dir("kvferry-conformance");
  auto node = start_node(dir, test::node_config(0, 0, 30000, 2, "warn"), segment_bytes, fill_seed);
  initiator in(8 * MiB, initiator_settings(10s));
  auto seg = in.open(node.name);
  const uint16_t data_port = data_port_of(in.descriptor);
  const uint16_t rpc_port = node.rpc_port();
  const uint64_t base = in.remote_base;

  // A zmq DEALER speaking malformed kvferry frames (first, so that the node's rate-limited log
  // shows each reason).
  zmq::context_t ctx(1);
  zmq::socket_t dealer(ctx, zmq::socket_type::dealer);
  dealer.set(zmq::sockopt::linger, 0);
  dealer.connect("tcp://127.0.0.1:" + std::to_string(data_port));
  auto header = [](transport::wire::frame_op op, uint64_t id, uint64_t addr, uint64_t len,
                   uint64_t incarnation = 0) {
    transport::wire::request_header h;
    h.op = op;
    h.id = id;
    h.remote_addr = addr;
    h.length = len;
    h.incarnation = incarnation;
    std::vector<uint8_t> out(transport::wire::request_header_size);
    transport::wire::encode(h, out.data());
    return out;
  };
  auto send_frames = [&](std::vector<std::vector<uint8_t>> frames) {
    for (size_t i = 0; i < frames.size(); ++i)
      dealer.send(zmq::buffer(frames[i]),
                  i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
  };
  using transport::wire::frame_op;
  const uint64_t in_range = base + 4096;
  const auto z_seed = 0x2a2a2a2aULL;
  auto junk_data = [&](size_t n) {
    std::vector<uint8_t> d(n);
    tools::fill_pattern(d.data(), n, z_seed, 4096);
    return d;
  };
  int malformed_sent = 0;
  auto malformed = [&](std::vector<std::vector<uint8_t>> frames) {
    send_frames(std::move(frames));
    ++malformed_sent;
  };
  malformed({std::vector<uint8_t>(10, 0x11)});                               // short header
  {
    auto h = header(frame_op::read, 2001, in_range, 16);
    h[0] ^= 0xff;
    malformed({h});                                                         // wrong magic
  }
  {
    auto h = header(frame_op::read, 2002, in_range, 16);
    h[4] = 99;
    malformed({h});                                                         // wrong version
  }
  {
    auto h = header(frame_op::read, 2003, in_range, 16);
    h[6] = 9;
    malformed({h});                                                         // unknown opcode
  }
  malformed({header(frame_op::read, 2004, in_range, 0)});                  // length 0
  malformed({header(frame_op::read, 2005, base, 64 * MiB + 1)});           // above 64 MiB
  malformed({header(frame_op::write, 2006, in_range, 100)});               // WRITE without data
  malformed({header(frame_op::write, 2007, in_range, 100), junk_data(50)}); // wrong data size
  malformed({header(frame_op::write, 2008, in_range, 100), junk_data(100), junk_data(1),
             junk_data(1)});                                                // 4 frames
  malformed({header(frame_op::read, 2009, in_range, 100), junk_data(100)}); // READ with data
  malformed({std::vector<uint8_t>{}});                                      // empty frame
  {
    auto bad = header(frame_op::read, 2011, in_range, 16);
    bad[0] ^= 0xff;
    malformed({concat({header(frame_op::read, 2010, in_range, 16), bad})}); // one bad entry of two
  }
  malformed({concat({header(frame_op::write, 2012, in_range, 100),          // vector WRITE data
                     header(frame_op::write, 2013, in_range + 100, 50)}),   // 100 of 150 bytes
             junk_data(100)});
  malformed({concat({header(frame_op::read, 2014, in_range, 16), std::vector<uint8_t>(7, 1)})});
  {
    auto h = header(frame_op::read, 2015, in_range, 16);
    h[7] = 1;
    malformed({h});                                                         // reserved byte set
  }
  {
    // The last word is the fence token (0 = none): an unfenced region ignores it.
    auto g = header(frame_op::read, 2016, in_range, 16);
    g[47] = 1;
    send_frames({g});
  }
  // Well formed but refused: out of range, stale incarnation. Then a valid READ.
  send_frames({header(frame_op::read, 1001, base + segment_bytes, 16)});
  send_frames({header(frame_op::write, 1002, in_range, 100, 12345), junk_data(100)});
  send_frames({header(frame_op::read, 1003, base + 64, 100)});
  // Several entries in one frame: READ, refused WRITE (its 8 bytes still in the data frame), READ.
  send_frames({concat({header(frame_op::read, 1004, base + 128, 32),
                       header(frame_op::write, 1005, base + segment_bytes, 8),
                       header(frame_op::read, 1006, base + 256, 16)}),
               junk_data(8)});
  std::optional<transport::wire::reply_header> out_of_range, stale, valid, vec_a, vec_refused, vec_b,
    token_ignored;
  std::set<uint64_t> refused_ids; // malformed requests answered by id
  std::vector<uint8_t> valid_data, vec_data;
  size_t vector_replies = 0;
  auto until = steady::now() + 10s;
  while ((!out_of_range || !stale || !valid || !vec_b) && steady::now() < until) {
    zmq::pollitem_t item{dealer.handle(), 0, ZMQ_POLLIN, 0};
    if (zmq::poll(&item, 1, 100ms) <= 0)
      continue;
    std::vector<zmq::message_t> parts;
    do {
      parts.emplace_back();
      BOOST_REQUIRE(dealer.recv(parts.back()).has_value());
    } while (parts.back().more());
    if (parts[0].size() > transport::wire::reply_header_size) {
      // Several entries: the vector request's reply (one header per entry, flagged READ bytes in
      // the data frame), or a refused request whose every readable id is answered.
      const size_t n = parts[0].size() / transport::wire::reply_header_size;
      std::vector<transport::wire::reply_header> r(n);
      for (size_t i = 0; i < n; ++i) {
        transport::wire::decode_error derr{};
        BOOST_REQUIRE(transport::wire::decode(parts[0].data<uint8_t>() + 32 * i, 32, r[i], derr));
      }
      if (r[0].id != 1004) {
        for (const auto& e : r) {
          BOOST_CHECK_MESSAGE(e.status == errc::malformed_frame,
                              "entry " << e.id << " of a malformed request answered "
                                       << to_string(e.status));
          refused_ids.insert(e.id);
        }
        continue;
      }
      ++vector_replies;
      BOOST_REQUIRE_EQUAL(n, 3u);
      vec_a = r[0];
      vec_refused = r[1];
      vec_b = r[2];
      if (parts.size() > 1)
        vec_data.assign(parts[1].data<uint8_t>(), parts[1].data<uint8_t>() + parts[1].size());
      continue;
    }
    transport::wire::reply_header reply;
    transport::wire::decode_error derr{};
    BOOST_REQUIRE_MESSAGE(transport::wire::decode(parts[0].data(), parts[0].size(), reply, derr),
                          "the node sent a malformed reply: " << transport::wire::to_string(derr));
    if (reply.id == 1001) {
      out_of_range = reply;
    } else if (reply.id == 1002) {
      stale = reply;
    } else if (reply.id == 2016) {
      token_ignored = reply;
    } else if (reply.id == 1003) {
      valid = reply;
      if (parts.size() > 1)
        valid_data.assign(parts[1].data<uint8_t>(), parts[1].data<uint8_t>() + parts[1].size());
    } else {
      BOOST_CHECK_MESSAGE(reply.status == errc::malformed_frame,
                          "a malformed request (id " << reply.id << ") was answered "
                                                     << to_string(reply.status));
      refused_ids.insert(reply.id);
    }
  }
  BOOST_REQUIRE_MESSAGE(out_of_range && stale && valid,
                        "missing replies to well-formed requests\n" << node.proc->transcript());
  // Every malformed request whose id is readable was answered (replies come in request order, so
  // they all arrived before the well-formed ones sent after them).
  for (uint64_t id = 2001; id <= 2015; ++id)
    BOOST_CHECK_MESSAGE(id == 2011 || id == 2013 || refused_ids.count(id) == 1,
                        "malformed request " << id << " got no malformed_frame reply");
  BOOST_CHECK_MESSAGE(out_of_range->status == errc::out_of_range,
                      "out-of-range READ answered " << to_string(out_of_range->status));
  BOOST_CHECK_MESSAGE(stale->status == errc::stale_incarnation,
                      "stale WRITE answered " << to_string(stale->status));
  BOOST_CHECK(valid->status == errc::none && valid->bytes == 100);
  BOOST_REQUIRE_MESSAGE(token_ignored, "no reply to the READ that carried a fence token");
  BOOST_CHECK_MESSAGE(token_ignored->status == errc::none && token_ignored->bytes == 16,
                      "a fence token on an unfenced region was not ignored: "
                        << to_string(token_ignored->status));
  BOOST_REQUIRE_EQUAL(valid_data.size(), 100u);
  BOOST_CHECK(tools::check_pattern(valid_data.data(), 100, fill_seed, 64) == 100);
  BOOST_REQUIRE_MESSAGE(vec_a && vec_refused && vec_b, "no reply to the vector request");
  BOOST_CHECK_EQUAL(vector_replies, 1u);
  BOOST_CHECK(vec_a->id == 1004 && vec_a->status == errc::none && vec_a->payload && vec_a->bytes == 32);
  BOOST_CHECK(vec_refused->id == 1005 && vec_refused->status == errc::out_of_range
              && !vec_refused->payload);
  BOOST_CHECK(vec_b->id == 1006 && vec_b->status == errc::none && vec_b->payload && vec_b->bytes == 16);
  BOOST_REQUIRE_EQUAL(vec_data.size(), 48u);
  BOOST_CHECK(tools::check_pattern(vec_data.data(), 32, fill_seed, 128) == 32);
  BOOST_CHECK(tools::check_pattern(vec_data.data() + 32, 16, fill_seed, 256) == 16);
  dealer.close();
  ctx.close();

  // Plain TCP, data port: random bytes; a truncated greeting; a greeting then junk; a greeting,
  // READY and a frame far above the size limit; a greeting, READY and a junk message.
  BOOST_REQUIRE(send_raw(data_port, random_bytes(64 * KiB, 1)));
  BOOST_REQUIRE(send_raw(data_port, {0xff, 0, 0, 0, 0, 0, 0, 0, 1}));
  BOOST_REQUIRE(send_raw(data_port, concat({zmtp_greeting(), random_bytes(4096, 2)})));
  BOOST_REQUIRE(send_raw(data_port, concat({zmtp_greeting(), {0x06, 0xff, 0xff, 0xff, 0xff,
                                                               0xff, 0xff, 0xff, 0xff}})));
  BOOST_REQUIRE(send_raw(data_port, concat({zmtp_greeting(), zmtp_ready_dealer(),
                                            {0x02, 0, 0, 1, 0, 0, 0, 0, 0}})));
  BOOST_REQUIRE(send_raw(data_port, concat({zmtp_greeting(), zmtp_ready_dealer(), {0x00, 10},
                                            random_bytes(10, 3)})));
  // Plain TCP, control port: random bytes; a truncated header; a CAF BASP handshake-looking
  // header with a junk payload; a header announcing 4 GiB and then closing (the control plane is
  // kvferry's ZMTP server: each is refused at its first byte).
  BOOST_REQUIRE(send_raw(rpc_port, random_bytes(64 * KiB, 4)));
  BOOST_REQUIRE(send_raw(rpc_port, random_bytes(10, 5)));
  {
    std::vector<uint8_t> h(32, 0);
    h[0] = 1;     // client_handshake
    h[7] = 64;    // payload length 64 (big-endian)
    h[15] = 1;    // operation data (version)
    BOOST_REQUIRE(send_raw(rpc_port, concat({h, random_bytes(64, 6)})));
    h[4] = h[5] = h[6] = h[7] = 0xff;
    BOOST_REQUIRE(send_raw(rpc_port, h));
  }
  BOOST_REQUIRE_MESSAGE(node.proc->running(), "the node died of raw garbage\n"
                                                << node.proc->transcript());

  // None of the refused WRITEs touched memory; the node serves a normal transfer.
  BOOST_REQUIRE_MESSAGE(node.proc->running(), node.proc->transcript());
  require_remote_pattern(in, seg, 4096, 4096, fill_seed, "range targeted by refused WRITEs");
  tools::fill_pattern(in.local.data + 1, 70000, 0x771e0007, 100001);
  auto w = run_one(*in.engine, {opcode::write, in.local.data + 1, seg, base + 100001, 70000});
  BOOST_REQUIRE_MESSAGE(w.state == task_state::completed, show(w));
  require_remote_pattern(in, seg, 100001, 70000, 0x771e0007, "WRITE after garbage");

  // The control port still serves new peers: a fresh runtime opens the segment and reads.
  {
    initiator fresh(MiB, initiator_settings(10s));
    auto fseg = fresh.open(node.name);
    require_remote_pattern(fresh, fseg, 0, 3000, fill_seed, "fresh peer after garbage");
  }

  // The node logged the refusals, counted them, and stops cleanly.
  auto out = stop_node(node);
  auto err = node.proc->err();
  BOOST_TEST_MESSAGE("node after garbage:\n" << node.proc->transcript());
  BOOST_CHECK_MESSAGE(contains(err, "refused a malformed"),
                      "no 'refused a malformed' line in the node's log\n" << err);
  for (const auto* reason : {"wrong header size", "wrong magic", "unsupported version",
                             "unknown opcode", "length is 0 or above the 64 MiB frame limit",
                             "data frame missing, unexpected or of the wrong size",
                             "a reserved field is not zero",
                             "more than two frames in a request"})
    BOOST_CHECK_MESSAGE(contains(err, reason), "the node's log does not name '" << reason << "'");
  std::smatch m;
  BOOST_REQUIRE_MESSAGE(std::regex_search(out, m, std::regex("(\\d+) refused, (\\d+) malformed")),
                        out);
  BOOST_CHECK_GE(std::stoull(m[1].str()), 2u);
  BOOST_CHECK_GE(std::stoull(m[2].str()), static_cast<unsigned long long>(malformed_sent));
}

// ------------------------------------------------------------------------------------------------
// (6) 10,000 tasks in flight over one connection; free while in flight; two initiators.

BOOST_AUTO_TEST_CASE(ten_thousand_tasks_in_flight_over_one_connection) {
  const uint64_t segment_bytes = 16 * MiB;
  const uint64_t fill_seed = 0x5eed0006;
  const uint32_t n = 10000;
  test::temp_dir dir("kvferry-conformance");
  auto node = start_node(dir, test::node_config(0, 0, 60000, 1), segment_bytes, fill_seed);
  initiator in(8 * MiB, initiator_settings(120s, /*workers=*/1), true, 8 * MiB);
  auto seg = in.open(node.name);
  auto size_of = [](uint32_t i) { return uint64_t{1} + (uint64_t{i} * 37) % 512; };
  std::vector<transfer_request> reads, writes, checks;
  std::vector<uint64_t> read_offsets;
  for (uint32_t i = 0; i < n; ++i) {
    uint64_t roff = (uint64_t{i} * 1031 + i % 5) % (8 * MiB);
    read_offsets.push_back(roff);
    auto* slot = in.local.data + i * 520;
    reads.push_back({opcode::read, slot, seg, in.remote_base + roff, size_of(i)});
    uint64_t woff = 8 * MiB + i * 520 + 3;
    tools::fill_pattern(in.second.data + i * 520, size_of(i), 0x771e0008, woff);
    writes.push_back(
      {opcode::write, in.second.data + i * 520, seg, in.remote_base + woff, size_of(i)});
    checks.push_back({opcode::read, slot, seg, in.remote_base + woff, size_of(i)});
  }
  auto before = stats_of(*in.engine);
  auto sts = run_batch(*in.engine, reads);
  require_completed(sts, reads, "10,000 READs");
  for (uint32_t i = 0; i < n; ++i)
    BOOST_REQUIRE_MESSAGE(tools::check_pattern(reads[i].source, size_of(i), fill_seed,
                                               read_offsets[i])
                            == size_of(i),
                          "READ task " << i << " got wrong bytes");
  sts = run_batch(*in.engine, writes);
  require_completed(sts, writes, "10,000 WRITEs");
  std::memset(in.local.data, 0, n * 520);
  sts = run_batch(*in.engine, checks);
  require_completed(sts, checks, "10,000 read-backs");
  for (uint32_t i = 0; i < n; ++i)
    BOOST_REQUIRE_MESSAGE(tools::check_pattern(checks[i].source, size_of(i), 0x771e0008,
                                               8 * MiB + i * 520 + 3)
                            == size_of(i),
                          "WRITE task " << i << " did not land");
  auto after = stats_of(*in.engine);
  BOOST_CHECK_EQUAL(after.tasks_completed - before.tasks_completed, 3u * n);
  BOOST_CHECK_EQUAL(after.live_tasks, 0u);
  BOOST_CHECK(node.proc->running());
  stop_node(node);
}

BOOST_AUTO_TEST_CASE(free_batch_while_tasks_are_in_flight) {
  const uint64_t segment_bytes = 64 * MiB;
  const uint64_t fill_seed = 0x5eed0007;
  test::temp_dir dir("kvferry-conformance");
  auto node = start_node(dir, test::node_config(0, 0, 60000), segment_bytes, fill_seed);
  initiator in(64 * MiB, initiator_settings(60s), true, 64 * MiB);
  auto seg = in.open(node.name);
  const uint8_t sentinel = 0xee;
  std::vector<uint8_t> snapshot(in.local.size);
  uint64_t canceled_total = 0;
  // WRITEs put the node's own pattern back, so its memory stays checkable whatever completes.
  tools::fill_pattern(in.second.data, in.second.size, fill_seed, 0);
  for (int round = 0; round < 4; ++round) {
    std::memset(in.local.data, sentinel, in.local.size);
    std::vector<transfer_request> rqs;
    for (uint32_t i = 0; i < 64; ++i) {
      rqs.push_back({opcode::read, in.local.data + i * MiB, seg, in.remote_base + i * MiB, MiB});
      rqs.push_back({opcode::write, in.second.data + i * MiB, seg, in.remote_base + i * MiB, MiB});
    }
    auto before = stats_of(*in.engine);
    auto batch = in.engine->allocate_batch(rqs.size());
    BOOST_REQUIRE(batch);
    auto first = in.engine->submit(*batch, rqs);
    BOOST_REQUIRE_MESSAGE(first, why(first));
    if (round > 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(5 * round * round));
    auto err = in.engine->free_batch(*batch);
    BOOST_REQUIRE_MESSAGE(!err, describe(err));
    // Once free_batch returned, nothing touches the batch's memory any more.
    std::memcpy(snapshot.data(), in.local.data, in.local.size);
    std::this_thread::sleep_for(300ms);
    BOOST_CHECK_MESSAGE(std::memcmp(snapshot.data(), in.local.data, in.local.size) == 0,
                        "round " << round << ": local memory changed after free_batch returned");
    auto after = stats_of(*in.engine);
    auto done = after.tasks_completed - before.tasks_completed;
    auto canceled = after.tasks_canceled - before.tasks_canceled;
    BOOST_TEST_MESSAGE("free while in flight, round " << round << ": " << done << " completed, "
                                                      << canceled << " canceled");
    BOOST_CHECK_EQUAL(done + canceled, rqs.size());
    BOOST_CHECK_EQUAL(after.tasks_failed, before.tasks_failed);
    BOOST_CHECK_EQUAL(after.tasks_timeout, before.tasks_timeout);
    BOOST_CHECK_EQUAL(after.live_tasks, 0u);
    BOOST_CHECK_EQUAL(after.live_slices, 0u);
    BOOST_CHECK_EQUAL(after.live_batches, 0u);
    canceled_total += canceled;
    auto again = in.engine->free_batch(*batch);
    BOOST_CHECK_MESSAGE(again && code_of(again) == errc::unknown_batch, "double free: "
                                                                           << describe(again));
    auto st = in.engine->status(*batch, 0);
    BOOST_CHECK(!st && code_of(st.error()) == errc::unknown_batch);
  }
  BOOST_CHECK_MESSAGE(canceled_total > 0, "no free happened while tasks were in flight");
  // The engine and the node still work.
  require_remote_pattern(in, seg, 64 * MiB - 70000, 70000, fill_seed, "READ after frees");
  BOOST_CHECK(node.proc->running());
  stop_node(node);
}

BOOST_AUTO_TEST_CASE(two_initiators_against_one_target) {
  const uint64_t segment_bytes = 8 * MiB;
  const uint64_t fill_seed = 0x5eed0008;
  test::temp_dir dir("kvferry-conformance");
  auto config = test::node_config(0, 0, 30000);
  auto node = start_node(dir, config, segment_bytes, fill_seed);
  initiator in(4 * MiB, initiator_settings(30s));
  auto seg = in.open(node.name);

  // The other initiator: `kvferry bench --verify` WRITEs (and reads back) the first 128 KiB.
  auto bench_config = dir.write("bench.json", test::node_config(0, 0, 30000));
  child_process bench({kvferry_binary(), "--config", bench_config, "bench", "--mode=initiator",
                       "--segment_id=" + node.name, "--operation=write", "--verify",
                       "--block_size=4096", "--batch_size=32", "--threads=1", "--duration=2",
                       "--buffer_size=1048576", "--timeout_ms=20000"});
  // Meanwhile this engine READs pristine bytes at 4 MiB and WRITEs/READs back at 2 MiB.
  uint32_t rounds = 0;
  auto until = steady::now() + 60s;
  while (bench.running() && steady::now() < until) {
    ++rounds;
    const uint64_t seed = 0x771e1000 + rounds;
    std::vector<transfer_request> rqs;
    for (uint32_t i = 0; i < 32; ++i) {
      rqs.push_back({opcode::read, in.local.data + i * 16 * KiB, seg,
                     in.remote_base + 4 * MiB + i * 16 * KiB + 1, 16 * KiB});
      auto* src = in.local.data + MiB + i * 16 * KiB;
      tools::fill_pattern(src, 16 * KiB, seed, 2 * MiB + i * 16 * KiB);
      rqs.push_back({opcode::write, src, seg, in.remote_base + 2 * MiB + i * 16 * KiB, 16 * KiB});
    }
    auto sts = run_batch(*in.engine, rqs, 60s);
    require_completed(sts, rqs, "concurrent initiator, round " + std::to_string(rounds));
    for (uint32_t i = 0; i < 32; ++i)
      BOOST_REQUIRE(tools::check_pattern(in.local.data + i * 16 * KiB, 16 * KiB, fill_seed,
                                         4 * MiB + i * 16 * KiB + 1)
                    == 16 * KiB);
    require_remote_pattern(in, seg, 2 * MiB, 512 * KiB, seed, "concurrent WRITE");
  }
  auto rc = bench.wait_exit_code(60s);
  BOOST_REQUIRE_MESSAGE(rc && *rc == 0, "bench exit " << (rc ? *rc : -999) << "\n"
                                                       << bench.transcript());
  BOOST_CHECK_MESSAGE(rounds >= 1, "no round ran while the bench ran");
  BOOST_TEST_MESSAGE("concurrent rounds while the bench ran: " << rounds);
  auto out = bench.out();
  BOOST_CHECK_MESSAGE(std::regex_search(out, std::regex("Task states: COMPLETED [1-9][0-9]*, "
                                                        "FAILED 0, TIMEOUT 0, CANCELED 0, "
                                                        "verify errors 0")),
                      out);
  BOOST_CHECK(node.proc->running());
  stop_node(node);
}

// ------------------------------------------------------------------------------------------------
// (7) Notifications between two networked runtimes (two engines that talk over loopback TCP
// exactly as two processes do).

/// Engine B (the receiver, 16 MiB registered) and initiator A on two networked runtimes; A has
/// B's segment open. Destroyed A first, then B, then B's memory.
struct notify_pair {
  notify_pair() : target(16 * MiB) {
    std::memset(target.data, 0, target.size);
    auto r = runtime::create({.network = true});
    BOOST_REQUIRE_MESSAGE(r, why(r));
    rt_b = *r;
    auto e = transfer_engine::create(rt_b, initiator_settings(30s));
    BOOST_REQUIRE_MESSAGE(e, why(e));
    b = std::move(*e);
    BOOST_REQUIRE(!b->register_memory(target.data, target.size));
    a = std::make_unique<initiator>(16 * MiB, initiator_settings(30s),
                                    /*check_remote_bounds=*/false);
    seg = a->open(b->segment_name());
    BOOST_REQUIRE_EQUAL(a->remote_base, reinterpret_cast<uint64_t>(target.data));
  }
  ~notify_pair() {
    a.reset();
    if (b)
      b->shutdown();
    b.reset();
    rt_b.reset();
  }

  mapped target;
  std::shared_ptr<runtime> rt_b;
  std::unique_ptr<transfer_engine> b;
  std::unique_ptr<initiator> a;
  segment_id seg = 0;
};

BOOST_AUTO_TEST_CASE(plain_notify_reaches_the_peer_engine) {
  notify_pair p;
  std::vector<notification> seen;
  BOOST_REQUIRE(!p.a->engine->notify(p.seg, "hello from a"));
  BOOST_REQUIRE(!p.a->engine->notify(p.seg, "second"));
  BOOST_REQUIRE_MESSAGE(await_notification(*p.b, "second", seen, 10s),
                        "a plain notification never arrived");
  const auto from = p.a->engine->segment_name();
  BOOST_CHECK(std::find(seen.begin(), seen.end(), notification{from, "hello from a"})
              != seen.end());
  // Drained once: a second drain does not return them again.
  auto again = p.b->get_notifies();
  BOOST_REQUIRE(again);
  BOOST_CHECK(again->empty());
  auto too_big = p.a->engine->notify(p.seg, std::string(64 * KiB + 1, 'x'));
  BOOST_CHECK(too_big && code_of(too_big) == errc::invalid_argument);
}

// Labelled: ctest runs it as its own test (tcp_conformance_notify_test), so that the state of
// "submit with notify" shows apart from the data-plane cases.
BOOST_AUTO_TEST_CASE(notify_with_a_batch_arrives_after_the_data_and_never_for_a_failed_batch,
                     *boost::unit_test::label("notify_with_batch")) {
  notify_pair p;
  auto& a = *p.a;
  auto& b = *p.b;
  auto& target = p.target;
  auto seg = p.seg;
  std::vector<notification> seen;

  // Submit with notify: when the message arrives, every byte of the batch is in place.
  const uint64_t seed = 0x771e0009;
  std::vector<transfer_request> rqs;
  for (uint32_t i = 0; i < 8; ++i) {
    auto* src = a.local.data + i * MiB;
    tools::fill_pattern(src, MiB, seed, i * MiB + 5);
    rqs.push_back({opcode::write, src, seg, a.remote_base + i * MiB + 5, MiB});
  }
  auto before = stats_of(*a.engine);
  submit_options with_notify;
  with_notify.notify = "batch one done";
  auto batch = a.engine->allocate_batch(rqs.size());
  BOOST_REQUIRE(batch);
  batch_guard guard{*a.engine, *batch};
  auto first = a.engine->submit(*batch, rqs, with_notify);
  BOOST_REQUIRE_MESSAGE(first, why(first));
  seen.clear();
  bool arrived = await_notification(b, "batch one done", seen, 10s);
  // Checked at once, before anything else can land.
  auto bad = tools::check_pattern(target.data + 5, 8 * MiB, seed, 5);
  BOOST_CHECK_MESSAGE(arrived, "the batch's notification never arrived (submit with notify)");
  if (arrived)
    BOOST_CHECK_MESSAGE(bad == 8 * MiB, "the notification arrived before byte " << bad
                                                                              << " was in place");
  auto w = a.engine->wait(*batch, 30s);
  BOOST_REQUIRE_MESSAGE(w && w->completed == rqs.size(), why(w));
  if (arrived) {
    auto it = std::find_if(seen.begin(), seen.end(),
                           [](const notification& n) { return n.message == "batch one done"; });
    BOOST_CHECK_EQUAL(it->from, a.engine->segment_name());
  }

  // A batch with a failing task (out of range; bounds checked only by the target) sends none.
  with_notify.notify = "failed batch";
  std::vector<transfer_request> failing{
    {opcode::write, a.local.data, seg, a.remote_base + 9 * MiB, 4096},
    {opcode::write, a.local.data + 4096, seg, a.remote_base + target.size - 100, 4096}};
  auto sts = run_batch(*a.engine, failing, 30s, with_notify);
  BOOST_CHECK(sts[0].state == task_state::completed);
  BOOST_CHECK_MESSAGE(sts[1].state == task_state::failed && sts[1].code == errc::out_of_range,
                      show(sts[1]));
  // A later plain notify arrives; the failed batch's never does.
  BOOST_REQUIRE(!a.engine->notify(seg, "marker"));
  seen.clear();
  BOOST_REQUIRE(await_notification(b, "marker", seen, 10s));
  std::this_thread::sleep_for(300ms);
  auto rest = b.get_notifies();
  BOOST_REQUIRE(rest);
  seen.insert(seen.end(), rest->begin(), rest->end());
  for (const auto& n : seen)
    BOOST_CHECK_MESSAGE(n.message != "failed batch", "a failed batch sent its notification");
  auto after = stats_of(*a.engine);
  BOOST_CHECK_EQUAL(after.notifies_sent - before.notifies_sent, 1u);
  BOOST_CHECK_EQUAL(after.notifies_dropped - before.notifies_dropped, 1u);
}
