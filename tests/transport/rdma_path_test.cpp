#define BOOST_TEST_MODULE rdma_path_test
#include <boost/test/unit_test.hpp>

// Issue 10's acceptance on the emulated verbs provider (transport/rdma/emulated, software NICs
// in this process; no RDMA hardware is involved): two or more engines, each on its own networked
// runtime, talk over "protocol": "rdma". Handshakes go over the real control plane (loopback
// ZeroMQ/ZMTP); one-sided READ/WRITE go through the emulated NICs' queue pairs.
//
// Cases: byte-exact READ/WRITE at the TCP suite's odd sizes; striping over 2 and 4 NICs; a NIC
// that fails mid-run (its slices finish on the others); a queue pair forced into ERROR
// (re-handshake, nothing lost or resolved twice); lost and failed completions; endpoint cache
// eviction destroying queue pairs; bad handshake data refused; what start says without devices.

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "actors/runtime.hpp"
#include "actors/transfer_engine.hpp"
#include "config/error.hpp"
#include "config/log.hpp"
#include "config/settings.hpp"
#include "tests/support/checks.hpp"
#include "tools/pattern.hpp"
#include "transport/control/client.hpp"
#include "transport/rdma/emulated/emulated.hpp"
#include "transport/rdma/handshake.hpp"

using namespace kvferry;
using namespace std::chrono_literals;
using kvferry::test::why;
namespace emu = kvferry::transport::rdma::emulated;

namespace {

constexpr uint64_t MiB = 1 << 20;

struct quiet_logs {
  quiet_logs() { log::set_level("warn"); }
};

config::settings rdma_settings(uint32_t nics, std::chrono::milliseconds deadline = 30s) {
  config::settings s;
  s.local_hostname = "127.0.0.1";
  s.transport = config::protocol::rdma;
  s.rdma.provider = config::rdma_provider_kind::emulated;
  s.rdma.emulated_devices = nics;
  s.task_deadline = deadline;
  s.worker_count = 1;
  s.retry_backoff = 1ms;
  s.retry_backoff_max = 20ms;
  s.retry_limit = 16;
  s.log_level = "warn";
  return s;
}

/// Anonymous memory owned by a node.
struct buffer {
  explicit buffer(size_t n) : bytes(n) {}
  std::vector<uint8_t> bytes;
  uint8_t* data() { return bytes.data(); }
};

/// An engine on its own networked runtime with one registered buffer.
struct node {
  node(config::settings s, size_t bytes) : mem(bytes) {
    auto r = runtime::create({.network = true});
    BOOST_REQUIRE_MESSAGE(r, why(r));
    rt = *r;
    auto e = transfer_engine::create(rt, s);
    BOOST_REQUIRE_MESSAGE(e, why(e));
    engine = std::move(*e);
    auto err = engine->register_memory(mem.data(), mem.bytes.size());
    BOOST_REQUIRE_MESSAGE(!err, describe(err));
  }
  ~node() {
    if (engine)
      engine->shutdown();
    engine.reset();
    rt.reset();
  }
  [[nodiscard]] std::string name() const {
    return "127.0.0.1:" + std::to_string(engine->rpc_port());
  }
  uint64_t base() { return reinterpret_cast<uint64_t>(mem.data()); }
  transport::rdma::path_counters nic(size_t i) { return engine->rdma_counters().at(i).second; }

  buffer mem;
  std::shared_ptr<runtime> rt;
  std::unique_ptr<transfer_engine> engine;
};

std::string show(const transfer_status& s) {
  return std::string(to_string(s.state)) + " (" + to_string(s.code) + ": " + s.reason + ")";
}

/// Runs the requests as one batch and requires every task COMPLETED with all its bytes.
void run_completed(transfer_engine& e, const std::vector<transfer_request>& rqs,
                   const std::string& what) {
  auto batch = e.allocate_batch(rqs.size());
  BOOST_REQUIRE_MESSAGE(batch, why(batch));
  auto first = e.submit(*batch, rqs);
  BOOST_REQUIRE_MESSAGE(first, why(first));
  auto sum = e.wait(*batch, 120s);
  BOOST_REQUIRE_MESSAGE(sum, what << ": wait: " << why(sum));
  for (uint32_t i = 0; i < rqs.size(); ++i) {
    auto st = e.status(*batch, *first + i);
    BOOST_REQUIRE_MESSAGE(st, why(st));
    BOOST_REQUIRE_MESSAGE(st->state == task_state::completed
                            && st->transferred_bytes == rqs[i].length,
                          what << ": task " << i << ": " << show(*st));
  }
  BOOST_REQUIRE(!e.free_batch(*batch));
}

/// WRITEs `seed`'s pattern from `in` to the target in `n` requests of `size` bytes, reads it back
/// into a cleared buffer and checks every byte.
void write_read_verify(node& in, node& target, segment_id seg, uint64_t size, uint32_t n,
                       uint64_t seed, const std::string& what) {
  BOOST_REQUIRE(size * n * 2 <= in.mem.bytes.size() && size * n <= target.mem.bytes.size());
  auto* src = in.mem.data();
  auto* back = in.mem.data() + size * n;
  tools::fill_pattern(src, size * n, seed, 0);
  std::vector<transfer_request> w, r;
  for (uint32_t i = 0; i < n; ++i) {
    w.push_back({opcode::write, src + i * size, seg, target.base() + i * size, size});
    r.push_back({opcode::read, back + i * size, seg, target.base() + i * size, size});
  }
  run_completed(*in.engine, w, what + " WRITE");
  BOOST_REQUIRE_EQUAL(tools::check_pattern(target.mem.data(), size * n, seed, 0), size * n);
  std::memset(back, 0, size * n);
  run_completed(*in.engine, r, what + " READ");
  BOOST_REQUIRE_MESSAGE(tools::check_pattern(back, size * n, seed, 0) == size * n,
                        what << ": read-back differs");
}

void clear_all(uint32_t nics) {
  for (uint32_t i = 0; i < nics; ++i)
    emu::clear("emu_rdma" + std::to_string(i));
}

} // namespace

BOOST_TEST_GLOBAL_FIXTURE(quiet_logs);

BOOST_AUTO_TEST_CASE(byte_exact_read_and_write_at_odd_sizes) {
  clear_all(2);
  node target(rdma_settings(2), 24 * MiB);
  node in(rdma_settings(2), 48 * MiB);
  auto seg = in.engine->open_segment(target.name());
  BOOST_REQUIRE_MESSAGE(seg, why(seg));
  auto desc = in.engine->segment_descriptor(*seg);
  BOOST_REQUIRE(desc);
  BOOST_CHECK_EQUAL(desc->regions.at(0).rdma_keys.size(), 2u);
  uint64_t seed = 0x4d4d0001;
  for (uint64_t size : std::vector<uint64_t>{1, 7, 512, 4095, 4096, 65535, 65536, 65537,
                        MiB + 3, 20 * MiB})
    write_read_verify(in, target, *seg, size, 1, seed++, "size " + std::to_string(size));
  // Unaligned local and remote offsets.
  tools::fill_pattern(in.mem.data() + 3, 100003, 77, 0);
  run_completed(*in.engine,
                {{opcode::write, in.mem.data() + 3, *seg, target.base() + 11, 100003}}, "unaligned");
  BOOST_CHECK_EQUAL(tools::check_pattern(target.mem.data() + 11, 100003, 77, 0), 100003u);
  auto st = in.engine->stats();
  BOOST_REQUIRE(st);
  BOOST_CHECK_EQUAL(st->repeated_resolutions, 0u);
  // Only RDMA moved the bytes: the target's TCP data server saw no request.
  BOOST_CHECK_EQUAL(target.engine->server_counters().requests, 0u);
}

BOOST_AUTO_TEST_CASE(slices_stripe_over_two_and_four_nics) {
  for (uint32_t nics : {2u, 4u}) {
    clear_all(nics);
    node target(rdma_settings(nics), 16 * MiB);
    node in(rdma_settings(nics), 32 * MiB);
    auto seg = in.engine->open_segment(target.name());
    BOOST_REQUIRE_MESSAGE(seg, why(seg));
    // 64 requests of 256 KiB in 64 KiB slices: every NIC gets some.
    write_read_verify(in, target, *seg, 256 << 10, 64, 0x5700 + nics,
                      std::to_string(nics) + " NICs");
    for (uint32_t i = 0; i < nics; ++i) {
      auto c = in.nic(i);
      BOOST_CHECK_MESSAGE(c.wrs_posted > 0, "NIC " << i << " of " << nics << " posted nothing");
      BOOST_CHECK_EQUAL(c.wrs_failed, 0u);
      // NIC i pairs with the target's NIC i: each target NIC accepted one endpoint.
      BOOST_CHECK_EQUAL(target.nic(i).handshakes_accepted, 1u);
    }
  }
}

BOOST_AUTO_TEST_CASE(a_nic_that_fails_mid_run_leaves_its_slices_to_the_others) {
  clear_all(2);
  node target(rdma_settings(2), 16 * MiB);
  node in(rdma_settings(2), 32 * MiB);
  auto seg = in.engine->open_segment(target.name());
  BOOST_REQUIRE_MESSAGE(seg, why(seg));
  write_read_verify(in, target, *seg, 64 << 10, 32, 0x6601, "before");
  // NIC 1 (on both nodes: one emulated device per process) goes down: its completions fail.
  emu::set_port_up("emu_rdma1", false);
  write_read_verify(in, target, *seg, 64 << 10, 128, 0x6602, "NIC 1 down");
  auto c1 = in.nic(1);
  BOOST_CHECK_GE(c1.nic_pauses, 1u);
  auto c0 = in.nic(0);
  BOOST_CHECK_EQUAL(c0.wrs_failed, 0u);
  // Back up: after its probe the NIC serves again.
  emu::set_port_up("emu_rdma1", true);
  auto posted = in.nic(1).wrs_posted;
  for (int round = 0; round < 200 && in.nic(1).wrs_posted == posted; ++round)
    write_read_verify(in, target, *seg, 64 << 10, 8, 0x6603 + round, "NIC 1 back");
  BOOST_CHECK_GT(in.nic(1).wrs_posted, posted);
  auto st = in.engine->stats();
  BOOST_REQUIRE(st);
  BOOST_CHECK_EQUAL(st->repeated_resolutions, 0u);
}

BOOST_AUTO_TEST_CASE(a_queue_pair_in_error_is_rehandshaken_and_no_task_is_lost) {
  clear_all(2);
  node target(rdma_settings(2), 16 * MiB);
  node in(rdma_settings(2), 32 * MiB);
  auto seg = in.engine->open_segment(target.name());
  BOOST_REQUIRE_MESSAGE(seg, why(seg));
  write_read_verify(in, target, *seg, 64 << 10, 16, 0x7701, "before");
  auto sent = in.nic(0).handshakes_sent;
  // Every queue pair of emu_rdma0 in this process (both nodes) goes to ERROR.
  emu::inject("emu_rdma0", emu::fault{emu::fault_kind::qp_error, 1, 0ms});
  write_read_verify(in, target, *seg, 64 << 10, 64, 0x7702, "after qp error");
  BOOST_CHECK_GT(in.nic(0).handshakes_sent, sent);
  BOOST_CHECK_GE(in.nic(0).endpoints_retired, 1u);
  // Failed completions and remote errors on a working link are retried the same way.
  emu::inject("emu_rdma0", emu::fault{emu::fault_kind::completion_error, 3, 0ms});
  write_read_verify(in, target, *seg, 64 << 10, 64, 0x7703, "completion errors");
  auto st = in.engine->stats();
  BOOST_REQUIRE(st);
  BOOST_CHECK_EQUAL(st->repeated_resolutions, 0u);
  BOOST_CHECK_EQUAL(st->tasks_failed, 0u);
}

BOOST_AUTO_TEST_CASE(a_lost_completion_times_out_and_the_slice_is_retried) {
  clear_all(2);
  auto s = rdma_settings(2);
  s.rdma.completion_timeout = 200ms;
  node target(s, 4 * MiB);
  node in(s, 8 * MiB);
  auto seg = in.engine->open_segment(target.name());
  BOOST_REQUIRE_MESSAGE(seg, why(seg));
  write_read_verify(in, target, *seg, 64 << 10, 4, 0x8801, "warm");
  emu::inject("emu_rdma0", emu::fault{emu::fault_kind::lost_completion, 1, 0ms});
  emu::inject("emu_rdma1", emu::fault{emu::fault_kind::lost_completion, 1, 0ms});
  write_read_verify(in, target, *seg, 64 << 10, 16, 0x8802, "lost completions");
  BOOST_CHECK_GE(in.nic(0).completion_timeouts + in.nic(1).completion_timeouts, 1u);
  emu::inject("emu_rdma0", emu::fault{emu::fault_kind::slow_completion, 4, 50ms});
  write_read_verify(in, target, *seg, 64 << 10, 16, 0x8803, "slow completions");
}

BOOST_AUTO_TEST_CASE(endpoint_cache_eviction_destroys_queue_pairs) {
  clear_all(1);
  auto s = rdma_settings(1);
  s.rdma.max_endpoints = 1;
  s.rdma.qp_per_endpoint = 3;
  node a(rdma_settings(1), 4 * MiB);
  node b(rdma_settings(1), 4 * MiB);
  node in(s, 8 * MiB);
  auto sa = in.engine->open_segment(a.name());
  auto sb = in.engine->open_segment(b.name());
  BOOST_REQUIRE(sa && sb);
  auto before = emu::stats("emu_rdma0").qps_destroyed;
  for (int round = 0; round < 3; ++round) {
    write_read_verify(in, a, *sa, 4096, 4, 0x9900 + round, "a");
    write_read_verify(in, b, *sb, 4096, 4, 0x9910 + round, "b");
  }
  auto c = in.nic(0);
  // Each switch between a and b evicts the other endpoint: 5 evictions of 3 queue pairs each.
  BOOST_CHECK_EQUAL(c.endpoints_evicted, 5u);
  BOOST_CHECK_EQUAL(c.endpoints_created, 6u);
  BOOST_CHECK_EQUAL(c.qps_created, 18u);
  // Destroyed for real: the provider counted them (the last endpoint's three are still alive;
  // the targets replaced their side of each re-handshake too).
  BOOST_CHECK_GE(c.qps_destroyed, 15u);
  BOOST_CHECK_GE(emu::stats("emu_rdma0").qps_destroyed - before, 15u);
  BOOST_CHECK_EQUAL(in.engine->rdma_live_qps(), 3u);
}

BOOST_AUTO_TEST_CASE(bad_handshake_data_is_refused_with_a_clear_error) {
  clear_all(1);
  node target(rdma_settings(1), 4 * MiB);
  auto client = transport::control::client::start("rdma_path_test");
  BOOST_REQUIRE_MESSAGE(client, why(client));
  auto call = [&](std::vector<uint8_t> payload) {
    return (*client)->call("127.0.0.1", target.engine->rpc_port(),
                           transport::rdma::handshake_method, std::move(payload), 10s);
  };
  // Garbage.
  auto r1 = call({1, 2, 3, 4, 5});
  BOOST_REQUIRE(!r1);
  BOOST_CHECK_MESSAGE(test::contains(describe(r1.error()), "RDMA handshake request"),
                      describe(r1.error()));
  // Well-formed but zero queue pairs, a bad MTU, an unknown NIC.
  transport::rdma::handshake_request req;
  req.peer = "evil:1";
  req.peer_nic = "x";
  req.target_nic = "emu_rdma0";
  req.address.lid = 1;
  req.address.mtu = IBV_MTU_4096;
  auto zero = transport::rdma::encode(req);
  auto r2 = call(zero);
  BOOST_REQUIRE(!r2);
  BOOST_CHECK_MESSAGE(test::contains(describe(r2.error()), "qp count"), describe(r2.error()));
  req.address.qps.push_back({0x1234, 5});
  auto bad_mtu = transport::rdma::encode(req);
  bad_mtu[bad_mtu.size() - 10] = 9; // the MTU byte precedes the qp count and the one qp
  auto r3 = call(bad_mtu);
  BOOST_REQUIRE(!r3);
  BOOST_CHECK_MESSAGE(test::contains(describe(r3.error()), "MTU"), describe(r3.error()));
  req.target_nic = "mlx5_9";
  auto r4 = call(transport::rdma::encode(req));
  BOOST_REQUIRE(!r4);
  BOOST_CHECK_MESSAGE(test::contains(describe(r4.error()), "no RDMA NIC 'mlx5_9'"),
                      describe(r4.error()));
  // The target still serves a real peer.
  node in(rdma_settings(1), 4 * MiB);
  auto seg = in.engine->open_segment(target.name());
  BOOST_REQUIRE(seg);
  write_read_verify(in, target, *seg, 4096, 8, 0xaa01, "after bad handshakes");
  (*client)->stop();
}

BOOST_AUTO_TEST_CASE(start_names_what_is_missing) {
  // Real verbs on a machine without RDMA devices (this one): a clear error at start.
  {
    auto s = rdma_settings(1);
    s.rdma.provider = config::rdma_provider_kind::verbs;
    auto rt = runtime::create({.network = true});
    BOOST_REQUIRE(rt);
    auto e = transfer_engine::create(*rt, s);
    if (e) {
      BOOST_TEST_MESSAGE("this machine has RDMA devices: the no-device case is not checked here");
    } else {
      BOOST_CHECK_MESSAGE(test::contains(describe(e.error()), "no RDMA devices"),
                          describe(e.error()));
    }
  }
  // A named device that does not exist.
  {
    auto s = rdma_settings(2);
    s.device_names = {"emu_rdma0", "mlx5_7"};
    auto rt = runtime::create({.network = true});
    BOOST_REQUIRE(rt);
    auto e = transfer_engine::create(*rt, s);
    BOOST_REQUIRE(!e);
    BOOST_CHECK_MESSAGE(test::contains(describe(e.error()), "mlx5_7"), describe(e.error()));
  }
}

BOOST_AUTO_TEST_CASE(a_tcp_only_initiator_reaches_an_rdma_node_over_tcp) {
  clear_all(1);
  node target(rdma_settings(1), 4 * MiB);
  config::settings tcp;
  tcp.local_hostname = "127.0.0.1";
  tcp.log_level = "warn";
  node in(tcp, 8 * MiB);
  auto seg = in.engine->open_segment(target.name());
  BOOST_REQUIRE_MESSAGE(seg, why(seg));
  write_read_verify(in, target, *seg, 65537, 4, 0xbb01, "tcp to rdma node");
  BOOST_CHECK_GT(target.engine->server_counters().requests, 0u);
}

BOOST_AUTO_TEST_CASE(the_nic_priority_matrix_chooses_the_nic_for_local_memory) {
  clear_all(2);
  auto s = rdma_settings(2);
  // Mooncake's format: location -> [preferred NICs, fallback NICs].
  s.rdma.nic_priority_matrix["cpu:0"] = config::nic_priority{{"emu_rdma1"}, {"emu_rdma0"}};
  node target(rdma_settings(2), 8 * MiB);
  node in(s, 16 * MiB);
  auto seg = in.engine->open_segment(target.name());
  BOOST_REQUIRE_MESSAGE(seg, why(seg));
  write_read_verify(in, target, *seg, 64 << 10, 32, 0xcc01, "preferred NIC");
  BOOST_CHECK_EQUAL(in.nic(0).wrs_posted, 0u);
  BOOST_CHECK_GE(in.nic(1).wrs_posted, 64u);
  // The preferred NIC fails: its slices fall back to the other one.
  emu::set_port_up("emu_rdma1", false);
  write_read_verify(in, target, *seg, 64 << 10, 32, 0xcc02, "fallback NIC");
  BOOST_CHECK_GT(in.nic(0).wrs_posted, 0u);
  emu::set_port_up("emu_rdma1", true);
}

// Randomized stress with real threads: submitters on 4 threads, each injecting a random fault into
// a random NIC before each round (failed completions, queue pairs to ERROR, lost and slow
// completions), WRITE then READ of random sizes at random offsets of its own target range, every
// byte checked; every task completes exactly once.
BOOST_AUTO_TEST_CASE(randomized_stress_with_threads_and_injected_faults) {
  clear_all(2);
  auto s = rdma_settings(2, 60s);
  s.rdma.completion_timeout = 300ms;
  s.retry_limit = 64;
  constexpr uint32_t threads = 4;
  constexpr uint64_t span = 2 * MiB;
  node target(rdma_settings(2), threads * span);
  node in(s, threads * 2 * span);
  auto seg = in.engine->open_segment(target.name());
  BOOST_REQUIRE_MESSAGE(seg, why(seg));
  std::vector<std::string> errors(threads);
  std::vector<std::thread> pool;
  for (uint32_t t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      std::mt19937_64 rng(1000 + t);
      auto* local = in.mem.data() + t * 2 * span;
      auto* back = local + span;
      auto remote = target.base() + t * span;
      for (uint32_t round = 0; round < 20 && errors[t].empty(); ++round) {
        static const emu::fault_kind kinds[] = {emu::fault_kind::completion_error,
                                                emu::fault_kind::qp_error,
                                                emu::fault_kind::lost_completion,
                                                emu::fault_kind::slow_completion};
        emu::inject("emu_rdma" + std::to_string(rng() % 2),
                    emu::fault{kinds[rng() % 4], static_cast<uint32_t>(1 + rng() % 3), 5ms});
        std::vector<transfer_request> w, r;
        uint64_t at = 0;
        auto n = 1 + rng() % 12;
        for (uint64_t i = 0; i < n && at < span; ++i) {
          auto len = std::min<uint64_t>(1 + rng() % (160 << 10), span - at);
          w.push_back({opcode::write, local + at, *seg, remote + at, len});
          r.push_back({opcode::read, back + at, *seg, remote + at, len});
          at += len + rng() % 4096;
        }
        uint64_t seed = (uint64_t{t} << 32) | round;
        tools::fill_pattern(local, span, seed, 0);
        std::memset(back, 0, span);
        for (auto* rqs : {&w, &r}) {
          auto batch = in.engine->allocate_batch(rqs->size());
          auto first = batch ? in.engine->submit(*batch, *rqs) : caf::expected<uint32_t>(batch.error());
          auto sum = first ? in.engine->wait(*batch, 120s) : caf::expected<batch_summary>(first.error());
          if (!sum) {
            errors[t] = "round " + std::to_string(round) + ": " + describe(sum.error());
            return;
          }
          for (uint32_t i = 0; i < rqs->size(); ++i) {
            auto st = in.engine->status(*batch, *first + i);
            if (!st || st->state != task_state::completed)
              errors[t] = "round " + std::to_string(round) + " task " + std::to_string(i) + ": "
                          + (st ? show(*st) : describe(st.error()));
          }
          (void) in.engine->free_batch(*batch);
        }
        for (const auto& rq : r) {
          auto off = static_cast<uint64_t>(static_cast<uint8_t*>(rq.source) - back);
          if (tools::check_pattern(back + off, rq.length, seed, off) != rq.length)
            errors[t] = "round " + std::to_string(round) + ": read-back differs at offset "
                        + std::to_string(off);
        }
      }
    });
  for (auto& th : pool)
    th.join();
  for (const auto& e : errors)
    BOOST_CHECK_MESSAGE(e.empty(), e);
  auto st = in.engine->stats();
  BOOST_REQUIRE(st);
  BOOST_CHECK_EQUAL(st->repeated_resolutions, 0u);
  BOOST_CHECK_EQUAL(st->tasks_failed + st->tasks_timeout + st->tasks_canceled, 0u);
  auto c0 = in.nic(0);
  auto c1 = in.nic(1);
  BOOST_CHECK_GT(c0.endpoints_retired + c1.endpoints_retired, 0u);
  clear_all(2);
}

// A region without RDMA keys (here a fenced one, as the store's segments are: one-sided access
// cannot check a fence token) is reached over TCP, the rest of the segment over RDMA.
BOOST_AUTO_TEST_CASE(regions_without_rdma_keys_are_reached_over_tcp) {
  clear_all(1);
  std::vector<uint8_t> fenced(MiB);
  node target(rdma_settings(1), 4 * MiB);
  BOOST_REQUIRE(!target.engine->register_memory(fenced.data(), fenced.size(), "cpu:0", true));
  node in(rdma_settings(1), 8 * MiB);
  auto seg = in.engine->open_segment(target.name());
  BOOST_REQUIRE_MESSAGE(seg, why(seg));
  auto desc = in.engine->segment_descriptor(*seg);
  BOOST_REQUIRE(desc);
  const auto* region = desc->find(reinterpret_cast<uint64_t>(fenced.data()), 1);
  BOOST_REQUIRE(region != nullptr);
  BOOST_CHECK(region->rdma_keys.empty());
  auto remote = reinterpret_cast<uint64_t>(fenced.data()) + 5;
  tools::fill_pattern(in.mem.data(), 65537, 0xdd01, 0);
  transfer_request w{opcode::write, in.mem.data(), *seg, remote, 65537, 7};
  run_completed(*in.engine, {w}, "fenced WRITE");
  BOOST_CHECK_EQUAL(tools::check_pattern(fenced.data() + 5, 65537, 0xdd01, 0), 65537u);
  std::memset(in.mem.data() + MiB, 0, 65537);
  transfer_request r{opcode::read, in.mem.data() + MiB, *seg, remote, 65537, 7};
  run_completed(*in.engine, {r}, "fenced READ");
  BOOST_CHECK_EQUAL(tools::check_pattern(in.mem.data() + MiB, 65537, 0xdd01, 0), 65537u);
  BOOST_CHECK_GT(target.engine->server_counters().requests, 0u);
  BOOST_CHECK_EQUAL(in.nic(0).wrs_posted, 0u);
  // The unfenced region still goes over RDMA.
  write_read_verify(in, target, *seg, 4096, 4, 0xdd02, "unfenced");
  BOOST_CHECK_GT(in.nic(0).wrs_posted, 0u);
}
