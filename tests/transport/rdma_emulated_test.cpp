#define BOOST_TEST_MODULE rdma_emulated_test
#include <boost/test/unit_test.hpp>

// The emulated verbs provider (transport/rdma/emulated): held to the verbs semantics kvferry's
// RDMA data path relies on. Contexts of one device and of two devices in this process, and a
// forked child process as the remote; one-sided READ/WRITE byte-exact at odd sizes; every check a
// real NIC makes (rkey, bounds, access rights, lkey) failing the request, moving its queue pair to
// ERROR and flushing what follows; each injectable fault; port down; destroyed regions and queue
// pairs; a remote process killed with work outstanding.
//
// Waits are on the completion queue's event fd with a generous bound (a failure bound, never a
// guess at how long something takes); nothing sleeps.

#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <csignal>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "config/error.hpp"
#include "config/log.hpp"
#include "transport/rdma/emulated/emulated.hpp"
#include "transport/rdma/verbs.hpp"

using namespace kvferry;
using namespace kvferry::transport::rdma;
using namespace std::chrono_literals;
namespace emu = kvferry::transport::rdma::emulated;

namespace {

struct quiet_logs {
  quiet_logs() { log::set_level("off"); }
};
BOOST_TEST_GLOBAL_FIXTURE(quiet_logs);

constexpr int remote_rw = IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE;
constexpr int all_rights = IBV_ACCESS_LOCAL_WRITE | remote_rw;
constexpr auto failure_bound = 30s;

template <class T>
std::string why(const caf::expected<T>& r) {
  return r ? std::string("ok") : describe(r.error());
}

/// One end: a context, its protection domain, a completion queue and one queue pair in INIT
/// (members in creation order, so they are destroyed in reverse).
struct side {
  std::unique_ptr<device_context> context;
  std::unique_ptr<protection_domain> pd;
  std::unique_ptr<completion_queue> cq;
  std::unique_ptr<queue_pair> qp;
};

side open_side(provider& p, const std::string& device, int qp_access = remote_rw,
               qp_caps caps = {}) {
  side s;
  auto context = p.open(device);
  BOOST_REQUIRE_MESSAGE(context, why(context));
  s.context = std::move(*context);
  auto pd = s.context->alloc_pd();
  BOOST_REQUIRE_MESSAGE(pd, why(pd));
  s.pd = std::move(*pd);
  auto cq = s.context->create_cq(64);
  BOOST_REQUIRE_MESSAGE(cq, why(cq));
  s.cq = std::move(*cq);
  auto qp = s.pd->create_qp(*s.cq, caps);
  BOOST_REQUIRE_MESSAGE(qp, why(qp));
  s.qp = std::move(*qp);
  auto err = s.qp->to_init(1, qp_access);
  BOOST_REQUIRE_MESSAGE(!err, describe(err));
  return s;
}

/// What the other end needs to reach `s` (what kvferry's handshake carries).
remote_qp address_of(side& s) {
  auto port = s.context->query_port(1);
  BOOST_REQUIRE_MESSAGE(port, why(port));
  auto gid = s.context->query_gid(1, 0);
  BOOST_REQUIRE_MESSAGE(gid, why(gid));
  remote_qp r;
  r.qp_num = s.qp->qp_num();
  r.lid = port->lid;
  r.gid = *gid;
  r.mtu = IBV_MTU_4096;
  return r;
}

void bring_up(queue_pair& qp, const remote_qp& remote) {
  auto err = qp.to_rtr(remote, local_qp_params{});
  BOOST_REQUIRE_MESSAGE(!err, describe(err));
  err = qp.to_rts(local_qp_params{});
  BOOST_REQUIRE_MESSAGE(!err, describe(err));
}

void connect(side& a, side& b) {
  auto to_b = address_of(b);
  auto to_a = address_of(a);
  bring_up(*a.qp, to_b);
  bring_up(*b.qp, to_a);
}

/// Registered host memory (declared after the sides it is registered with).
struct buffer {
  buffer(side& s, size_t size, int access = all_rights) : bytes(size) {
    auto mr = s.pd->reg_mr(bytes.data(), bytes.size(), access);
    BOOST_REQUIRE_MESSAGE(mr, why(mr));
    region = std::move(*mr);
  }
  [[nodiscard]] uint64_t addr(size_t offset = 0) const {
    return reinterpret_cast<uint64_t>(bytes.data() + offset);
  }
  std::vector<uint8_t> bytes;
  std::unique_ptr<memory_region> region;
};

void fill(std::vector<uint8_t>& bytes, uint32_t seed) {
  uint32_t x = seed | 1;
  for (auto& b : bytes) {
    x = x * 1664525u + 1013904223u;
    b = static_cast<uint8_t>(x >> 24);
  }
}

work_request read_wr(uint64_t id, const buffer& local, size_t local_offset, const buffer& remote,
                     size_t remote_offset, uint32_t length) {
  return work_request{id,  IBV_WR_RDMA_READ,         local.addr(local_offset), length,
                      local.region->lkey(), remote.addr(remote_offset), remote.region->rkey()};
}

work_request write_wr(uint64_t id, const buffer& local, size_t local_offset, const buffer& remote,
                      size_t remote_offset, uint32_t length) {
  return work_request{id,  IBV_WR_RDMA_WRITE,        local.addr(local_offset), length,
                      local.region->lkey(), remote.addr(remote_offset), remote.region->rkey()};
}

void post(queue_pair& qp, std::vector<work_request> wrs) {
  auto err = qp.post_send(wrs);
  BOOST_REQUIRE_MESSAGE(!err, describe(err));
}

/// Waits (on the event fd, at most failure_bound) until `n` completions arrived; returns them.
std::vector<work_completion> wait_for(completion_queue& cq, size_t n) {
  std::vector<work_completion> got;
  std::array<work_completion, 64> batch;
  auto take = [&] {
    auto polled = cq.poll(batch);
    BOOST_REQUIRE_MESSAGE(polled, why(polled));
    got.insert(got.end(), batch.begin(), batch.begin() + static_cast<ptrdiff_t>(*polled));
    return *polled;
  };
  auto until = std::chrono::steady_clock::now() + failure_bound;
  while (got.size() < n) {
    if (take() > 0)
      continue;
    auto err = cq.arm();
    BOOST_REQUIRE_MESSAGE(!err, describe(err));
    if (take() > 0) // arrived before the arm: no notification for it
      continue;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      until - std::chrono::steady_clock::now());
    if (left <= 0ms)
      break;
    pollfd p{cq.event_fd(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) > 0)
      cq.consume_event();
  }
  BOOST_REQUIRE_MESSAGE(got.size() >= n, "only " << got.size() << " of " << n
                                                 << " completions within the failure bound");
  return got;
}

work_completion wait_one(completion_queue& cq) {
  return wait_for(cq, 1).front();
}

size_t poll_now(completion_queue& cq) {
  std::array<work_completion, 64> batch;
  auto polled = cq.poll(batch);
  BOOST_REQUIRE_MESSAGE(polled, why(polled));
  return *polled;
}

bool has(const caf::error& err, const std::string& text) {
  return describe(err).find(text) != std::string::npos;
}

/// The same pattern of statuses and ids, one line per completion, for readable failures.
std::string render(const std::vector<work_completion>& wcs) {
  std::string out;
  for (const auto& wc : wcs)
    out += "\n  wr_id " + std::to_string(wc.wr_id) + " status " + std::to_string(wc.status);
  return out;
}

void expect_statuses(const std::vector<work_completion>& wcs,
                     const std::vector<std::pair<uint64_t, ibv_wc_status>>& expected) {
  BOOST_REQUIRE_MESSAGE(wcs.size() == expected.size(), render(wcs));
  for (size_t i = 0; i < wcs.size(); ++i) {
    BOOST_CHECK_MESSAGE(wcs[i].wr_id == expected[i].first && wcs[i].status == expected[i].second,
                        "completion " << i << ":" << render(wcs));
  }
}

} // namespace

BOOST_AUTO_TEST_CASE(provider_lists_devices_and_refuses_unknown_ones) {
  BOOST_CHECK(emu::make_provider(0) == nullptr);
  BOOST_CHECK(emu::make_provider(17) == nullptr);
  std::unique_ptr<provider> from_entry(kvferry_emulated_verbs_provider(3));
  BOOST_REQUIRE(from_entry != nullptr);
  BOOST_CHECK(kvferry_emulated_verbs_provider(0) == nullptr);
  BOOST_CHECK_EQUAL(from_entry->name(), "emulated");
  BOOST_CHECK(from_entry->emulated());
  auto devices = from_entry->devices();
  BOOST_REQUIRE_MESSAGE(devices, why(devices));
  BOOST_REQUIRE_EQUAL(devices->size(), 3u);
  BOOST_CHECK_EQUAL((*devices)[2].name, "emu_rdma2");
  BOOST_CHECK_EQUAL((*devices)[2].numa_node, 0);
  BOOST_CHECK_EQUAL((*devices)[2].pci_bus_id, "emulated");
  auto missing = from_entry->open("emu_rdma3");
  BOOST_REQUIRE(!missing);
  BOOST_CHECK(code_of(missing.error()) == errc::not_supported);
  BOOST_CHECK(has(missing.error(), "emu_rdma3"));
  BOOST_CHECK(!from_entry->open("mlx5_0"));
}

BOOST_AUTO_TEST_CASE(ports_and_gids_identify_contexts) {
  auto p = emu::make_provider(2);
  auto a = p->open("emu_rdma0");
  auto b = p->open("emu_rdma0");
  BOOST_REQUIRE(a && b);
  auto port_a = (*a)->query_port(1);
  auto port_b = (*b)->query_port(1);
  BOOST_REQUIRE(port_a && port_b);
  BOOST_CHECK(port_a->state == IBV_PORT_ACTIVE);
  BOOST_CHECK(port_a->link_layer == IBV_LINK_LAYER_INFINIBAND);
  BOOST_CHECK(port_a->active_mtu == IBV_MTU_4096);
  BOOST_CHECK_EQUAL(port_a->gid_table_len, 1);
  BOOST_CHECK(port_a->lid != 0 && port_b->lid != 0 && port_a->lid != port_b->lid);
  auto gid_a = (*a)->query_gid(1, 0);
  auto gid_b = (*b)->query_gid(1, 0);
  BOOST_REQUIRE(gid_a && gid_b);
  BOOST_CHECK(*gid_a != *gid_b);
  BOOST_CHECK_EQUAL((*gid_a)[0], 0xfe);
  BOOST_CHECK_EQUAL((*gid_a)[1], 0x80);
  auto pid = static_cast<uint32_t>(::getpid());
  BOOST_CHECK_EQUAL((*gid_a)[11], static_cast<uint8_t>(pid));
  auto bad_port = (*a)->query_port(2);
  BOOST_REQUIRE(!bad_port);
  BOOST_CHECK(code_of(bad_port.error()) == errc::invalid_argument);
  BOOST_CHECK(!(*a)->query_gid(1, 1));
  BOOST_CHECK(!(*a)->query_gid(2, 0));
  BOOST_CHECK(!(*a)->create_cq(0));
}

BOOST_AUTO_TEST_CASE(reg_mr_refuses_bad_arguments) {
  auto p = emu::make_provider(1);
  auto s = open_side(*p, "emu_rdma0");
  std::vector<uint8_t> bytes(4096);
  auto null = s.pd->reg_mr(nullptr, 16, all_rights);
  BOOST_REQUIRE(!null);
  BOOST_CHECK(code_of(null.error()) == errc::invalid_argument);
  auto empty = s.pd->reg_mr(bytes.data(), 0, all_rights);
  BOOST_REQUIRE(!empty);
  BOOST_CHECK(has(empty.error(), "non-zero length"));
  auto write_only = s.pd->reg_mr(bytes.data(), bytes.size(), IBV_ACCESS_REMOTE_WRITE);
  BOOST_REQUIRE(!write_only);
  BOOST_CHECK(has(write_only.error(), "LOCAL_WRITE"));
  auto one = s.pd->reg_mr(bytes.data(), bytes.size(), all_rights);
  auto two = s.pd->reg_mr(bytes.data(), bytes.size(), IBV_ACCESS_REMOTE_READ);
  BOOST_REQUIRE(one && two);
  BOOST_CHECK((*one)->rkey() != (*two)->rkey());
  BOOST_CHECK((*one)->lkey() != (*two)->lkey());
}

BOOST_AUTO_TEST_CASE(qp_state_machine_refuses_wrong_order) {
  auto p = emu::make_provider(2);
  auto a = open_side(*p, "emu_rdma0");
  auto b = open_side(*p, "emu_rdma1");
  auto other_cq = b.context->create_cq(8);
  BOOST_REQUIRE(other_cq);
  auto foreign = a.pd->create_qp(**other_cq, qp_caps{});
  BOOST_REQUIRE(!foreign);
  BOOST_CHECK(has(foreign.error(), "another device context"));
  BOOST_CHECK(!a.pd->create_qp(*a.cq, qp_caps{.max_send_wr = 0}));

  auto fresh = a.pd->create_qp(*a.cq, qp_caps{});
  BOOST_REQUIRE(fresh);
  queue_pair& qp = **fresh;
  BOOST_CHECK(qp.state() == IBV_QPS_RESET);
  auto remote = address_of(b);
  auto err = qp.to_rtr(remote, local_qp_params{});
  BOOST_REQUIRE(err);
  BOOST_CHECK_MESSAGE(has(err, "RESET") && has(err, "INIT"), describe(err));
  err = qp.to_rts(local_qp_params{});
  BOOST_CHECK_MESSAGE(has(err, "RESET") && has(err, "RTR"), describe(err));
  std::vector<work_request> one(1);
  err = qp.post_send(one);
  BOOST_CHECK_MESSAGE(has(err, "RESET") && has(err, "RTS"), describe(err));
  BOOST_CHECK(qp.to_init(2, remote_rw));
  BOOST_REQUIRE(!qp.to_init(1, remote_rw));
  BOOST_CHECK(qp.state() == IBV_QPS_INIT);
  err = qp.to_init(1, remote_rw);
  BOOST_CHECK_MESSAGE(has(err, "INIT") && has(err, "RESET"), describe(err));
  err = qp.to_rts(local_qp_params{});
  BOOST_CHECK_MESSAGE(has(err, "INIT") && has(err, "RTR"), describe(err));
  BOOST_CHECK(qp.post_send(one));

  auto bad = remote;
  bad.mtu = static_cast<ibv_mtu>(7); // representable, no enumerator
  BOOST_CHECK(has(qp.to_rtr(bad, local_qp_params{}), "MTU"));
  bad = remote;
  bad.qp_num = 0;
  BOOST_CHECK(qp.to_rtr(bad, local_qp_params{}));
  bad = remote;
  bad.gid = gid_bytes{};
  BOOST_CHECK(has(qp.to_rtr(bad, local_qp_params{}), "GID"));
  BOOST_CHECK(qp.to_rtr(remote, local_qp_params{.gid_index = 1}));
  BOOST_CHECK(qp.state() == IBV_QPS_INIT);

  BOOST_REQUIRE(!qp.to_rtr(remote, local_qp_params{}));
  BOOST_CHECK(qp.state() == IBV_QPS_RTR);
  err = qp.post_send(one);
  BOOST_CHECK_MESSAGE(has(err, "RTR") && has(err, "nothing was posted"), describe(err));
  BOOST_REQUIRE(!qp.to_rts(local_qp_params{}));
  BOOST_CHECK(qp.state() == IBV_QPS_RTS);
  BOOST_CHECK(has(qp.to_rtr(remote, local_qp_params{}), "RTS"));
  BOOST_REQUIRE(!qp.to_error());
  BOOST_CHECK(qp.state() == IBV_QPS_ERR);
  BOOST_CHECK(qp.to_init(1, remote_rw));
}

namespace {

/// WRITE `size` bytes from a to b, READ them back into a, at unaligned offsets; byte-exact.
void write_then_read(side& a, side& b, uint32_t size, uint64_t base_id) {
  buffer source(a, size + 7);
  buffer target(b, size + 13);
  buffer back(a, size + 5);
  fill(source.bytes, size);
  fill(target.bytes, ~size);
  auto untouched = target.bytes;
  post(*a.qp, {write_wr(base_id, source, 7, target, 13, size)});
  auto wc = wait_one(*a.cq);
  BOOST_REQUIRE_MESSAGE(wc.status == IBV_WC_SUCCESS, "size " << size << " status " << wc.status);
  BOOST_CHECK_EQUAL(wc.wr_id, base_id);
  BOOST_CHECK(wc.opcode == IBV_WC_RDMA_WRITE);
  BOOST_CHECK_EQUAL(wc.qp_num, a.qp->qp_num());
  BOOST_CHECK(std::equal(source.bytes.begin() + 7, source.bytes.end(), target.bytes.begin() + 13));
  BOOST_CHECK(std::equal(untouched.begin(), untouched.begin() + 13, target.bytes.begin()));
  post(*a.qp, {read_wr(base_id + 1, back, 5, target, 13, size)});
  wc = wait_one(*a.cq);
  BOOST_REQUIRE_MESSAGE(wc.status == IBV_WC_SUCCESS, "size " << size << " status " << wc.status);
  BOOST_CHECK(wc.opcode == IBV_WC_RDMA_READ);
  BOOST_CHECK_EQUAL(wc.byte_len, size);
  BOOST_CHECK(std::equal(back.bytes.begin() + 5, back.bytes.end(), source.bytes.begin() + 7));
}

constexpr std::array<uint32_t, 4> odd_sizes{1, 4095, 65537, (1u << 20) + 3};

} // namespace

BOOST_AUTO_TEST_CASE(read_write_byte_exact_between_contexts_of_one_device) {
  auto p = emu::make_provider(1);
  auto a = open_side(*p, "emu_rdma0");
  auto b = open_side(*p, "emu_rdma0");
  connect(a, b);
  uint64_t id = 100;
  for (uint32_t size : odd_sizes) {
    write_then_read(a, b, size, id);
    write_then_read(b, a, size, id + 2);
    id += 4;
  }
}

BOOST_AUTO_TEST_CASE(read_write_byte_exact_between_two_devices) {
  auto p = emu::make_provider(2);
  auto a = open_side(*p, "emu_rdma0");
  auto b = open_side(*p, "emu_rdma1");
  connect(a, b);
  uint64_t id = 200;
  for (uint32_t size : odd_sizes) {
    write_then_read(a, b, size, id);
    id += 2;
  }
  // A chain of requests completes in posting order.
  buffer local(a, 64 * 1024);
  buffer remote(b, 64 * 1024);
  std::vector<work_request> chain;
  for (uint64_t i = 0; i < 32; ++i)
    chain.push_back(i % 2 ? read_wr(i, local, i * 2048, remote, i * 2048, 2048)
                          : write_wr(i, local, i * 2048, remote, i * 2048, 2048));
  chain.push_back(work_request{32, IBV_WR_RDMA_WRITE, 0, 0, 0, 0, 0}); // zero length: no checks
  post(*a.qp, chain);
  auto wcs = wait_for(*a.cq, chain.size());
  for (uint64_t i = 0; i < wcs.size(); ++i) {
    BOOST_CHECK_EQUAL(wcs[i].wr_id, i);
    BOOST_CHECK(wcs[i].status == IBV_WC_SUCCESS);
  }
}

BOOST_AUTO_TEST_CASE(large_transfers_both_ways_at_once) {
  // Both NICs serve and request at the same time, with more in flight than the socket buffers
  // and the output limit hold: backpressure must not deadlock.
  auto p = emu::make_provider(2);
  auto a = open_side(*p, "emu_rdma0");
  auto b = open_side(*p, "emu_rdma1");
  connect(a, b);
  constexpr uint32_t chunk = 4u << 20;
  constexpr size_t chunks = 4;
  constexpr size_t total = chunk * chunks;
  buffer a_out(a, total), a_in(a, total), a_back(a, total);
  buffer b_out(b, total), b_in(b, total), b_back(b, total);
  fill(a_out.bytes, 1);
  fill(b_out.bytes, 2);
  std::vector<work_request> from_a, from_b;
  for (size_t i = 0; i < chunks; ++i) {
    from_a.push_back(write_wr(i, a_out, i * chunk, b_in, i * chunk, chunk));
    from_a.push_back(read_wr(100 + i, a_back, i * chunk, b_out, i * chunk, chunk));
    from_b.push_back(write_wr(i, b_out, i * chunk, a_in, i * chunk, chunk));
    from_b.push_back(read_wr(100 + i, b_back, i * chunk, a_out, i * chunk, chunk));
  }
  post(*a.qp, from_a);
  post(*b.qp, from_b);
  auto wa = wait_for(*a.cq, from_a.size());
  auto wb = wait_for(*b.cq, from_b.size());
  for (const auto& wc : wa)
    BOOST_CHECK(wc.status == IBV_WC_SUCCESS);
  for (const auto& wc : wb)
    BOOST_CHECK(wc.status == IBV_WC_SUCCESS);
  // Many READs at once: the responder holds back answers past its output limit, then resumes.
  constexpr uint32_t mib = 1u << 20;
  std::vector<work_request> reads;
  for (size_t i = 0; i < 64; ++i)
    reads.push_back(read_wr(200 + i, a_back, (i % 16) * mib, b_out, (i % 16) * mib, mib));
  post(*a.qp, reads);
  for (const auto& wc : wait_for(*a.cq, reads.size()))
    BOOST_CHECK(wc.status == IBV_WC_SUCCESS);
  BOOST_CHECK(b_in.bytes == a_out.bytes);
  BOOST_CHECK(a_back.bytes == b_out.bytes);
  BOOST_CHECK(a_in.bytes == b_out.bytes);
  BOOST_CHECK(b_back.bytes == a_out.bytes);
}

BOOST_AUTO_TEST_CASE(remote_checks_fail_the_request_and_flush_the_rest) {
  auto p = emu::make_provider(2);
  struct probe {
    const char* what;
    std::function<work_request(const buffer& local, const buffer& remote, const buffer& ro)> wr;
  };
  std::vector<probe> probes{
    {"unknown rkey",
     [](const buffer& l, const buffer& r, const buffer&) {
       auto wr = read_wr(1, l, 0, r, 0, 64);
       wr.rkey ^= 0x5a5a;
       return wr;
     }},
    {"past the end",
     [](const buffer& l, const buffer& r, const buffer&) {
       return read_wr(1, l, 0, r, r.bytes.size() - 63, 64);
     }},
    {"before the start",
     [](const buffer& l, const buffer& r, const buffer&) {
       auto wr = read_wr(1, l, 0, r, 0, 64);
       wr.remote_addr -= 1;
       return wr;
     }},
    {"WRITE into a region without REMOTE_WRITE",
     [](const buffer& l, const buffer&, const buffer& ro) { return write_wr(1, l, 0, ro, 0, 64); }},
  };
  for (const auto& probe : probes) {
    BOOST_TEST_CONTEXT(probe.what) {
      auto a = open_side(*p, "emu_rdma0");
      auto b = open_side(*p, "emu_rdma1");
      connect(a, b);
      buffer local(a, 4096);
      buffer remote(b, 4096);
      buffer read_only(b, 4096, IBV_ACCESS_REMOTE_READ);
      auto before = emu::stats("emu_rdma0");
      fill(remote.bytes, 9);
      auto untouched = read_only.bytes;
      post(*a.qp, {probe.wr(local, remote, read_only), read_wr(2, local, 0, remote, 0, 64)});
      expect_statuses(wait_for(*a.cq, 2), {{1, IBV_WC_REM_ACCESS_ERR}, {2, IBV_WC_WR_FLUSH_ERR}});
      BOOST_CHECK(a.qp->state() == IBV_QPS_ERR);
      BOOST_CHECK(read_only.bytes == untouched);
      // ERROR accepts posts and flushes them.
      post(*a.qp, {read_wr(3, local, 0, remote, 0, 64)});
      expect_statuses(wait_for(*a.cq, 1), {{3, IBV_WC_WR_FLUSH_ERR}});
      auto after = emu::stats("emu_rdma0");
      BOOST_CHECK_EQUAL(after.remote_access_errors - before.remote_access_errors, 1u);
      BOOST_CHECK_EQUAL(after.wrs_failed - before.wrs_failed, 3u);
    }
  }
  // The remote queue pair's own access rights count too.
  auto a = open_side(*p, "emu_rdma0");
  auto b = open_side(*p, "emu_rdma1", IBV_ACCESS_REMOTE_READ);
  connect(a, b);
  buffer local(a, 4096);
  buffer remote(b, 4096);
  post(*a.qp, {read_wr(1, local, 0, remote, 0, 64), write_wr(2, local, 0, remote, 0, 64)});
  expect_statuses(wait_for(*a.cq, 2), {{1, IBV_WC_SUCCESS}, {2, IBV_WC_REM_ACCESS_ERR}});
}

BOOST_AUTO_TEST_CASE(local_checks_fail_with_local_protection_error) {
  auto p = emu::make_provider(1);
  auto a = open_side(*p, "emu_rdma0");
  auto b = open_side(*p, "emu_rdma0");
  connect(a, b);
  buffer remote(b, 4096);
  buffer read_only_local(a, 4096, IBV_ACCESS_REMOTE_READ);
  // A READ needs LOCAL_WRITE on its destination.
  post(*a.qp, {read_wr(1, read_only_local, 0, remote, 0, 64)});
  expect_statuses(wait_for(*a.cq, 1), {{1, IBV_WC_LOC_PROT_ERR}});
  BOOST_CHECK(a.qp->state() == IBV_QPS_ERR);

  // An lkey this context never gave out.
  auto c = open_side(*p, "emu_rdma0");
  auto d = open_side(*p, "emu_rdma0");
  connect(c, d);
  buffer local(c, 4096);
  buffer far(d, 4096);
  auto wrong_key = write_wr(1, local, 0, far, 0, 64);
  wrong_key.lkey += 1000;
  post(*c.qp, {wrong_key, write_wr(2, local, 0, far, 0, 64)});
  expect_statuses(wait_for(*c.cq, 2), {{1, IBV_WC_LOC_PROT_ERR}, {2, IBV_WC_WR_FLUSH_ERR}});

  // A range past the end of the local region.
  auto e = open_side(*p, "emu_rdma0");
  auto f = open_side(*p, "emu_rdma0");
  connect(e, f);
  buffer short_local(e, 4096);
  buffer big_remote(f, 8192);
  post(*e.qp, {write_wr(3, short_local, 1, big_remote, 0, 4096)});
  expect_statuses(wait_for(*e.cq, 1), {{3, IBV_WC_LOC_PROT_ERR}});
}

BOOST_AUTO_TEST_CASE(destroyed_memory_regions_are_not_reachable) {
  auto p = emu::make_provider(1);
  auto a = open_side(*p, "emu_rdma0");
  auto b = open_side(*p, "emu_rdma0");
  connect(a, b);
  buffer local(a, 4096);
  buffer remote(b, 4096);
  post(*a.qp, {read_wr(1, local, 0, remote, 0, 64)});
  expect_statuses(wait_for(*a.cq, 1), {{1, IBV_WC_SUCCESS}});
  auto stale = read_wr(2, local, 0, remote, 0, 64);
  remote.region.reset();
  post(*a.qp, {stale});
  expect_statuses(wait_for(*a.cq, 1), {{2, IBV_WC_REM_ACCESS_ERR}});

  auto c = open_side(*p, "emu_rdma0");
  auto d = open_side(*p, "emu_rdma0");
  connect(c, d);
  buffer mine(c, 4096);
  buffer theirs(d, 4096);
  auto stale_local = read_wr(3, mine, 0, theirs, 0, 64);
  mine.region.reset();
  post(*c.qp, {stale_local});
  expect_statuses(wait_for(*c.cq, 1), {{3, IBV_WC_LOC_PROT_ERR}});
}

BOOST_AUTO_TEST_CASE(destroyed_remote_queue_pair_fails_requests_with_retry_exceeded) {
  auto p = emu::make_provider(2);
  // Connected before: the remote closes the link when its queue pair goes away.
  {
    auto a = open_side(*p, "emu_rdma0");
    auto b = open_side(*p, "emu_rdma1");
    connect(a, b);
    buffer local(a, 4096);
    buffer remote(b, 4096);
    post(*a.qp, {write_wr(1, local, 0, remote, 0, 64)});
    expect_statuses(wait_for(*a.cq, 1), {{1, IBV_WC_SUCCESS}});
    b.qp.reset();
    post(*a.qp, {write_wr(2, local, 0, remote, 0, 64), write_wr(3, local, 0, remote, 0, 64)});
    expect_statuses(wait_for(*a.cq, 2), {{2, IBV_WC_RETRY_EXC_ERR}, {3, IBV_WC_WR_FLUSH_ERR}});
    BOOST_CHECK(a.qp->state() == IBV_QPS_ERR);
  }
  // Never connected: the remote refuses the connection.
  {
    auto a = open_side(*p, "emu_rdma0");
    auto b = open_side(*p, "emu_rdma1");
    connect(a, b);
    buffer local(a, 4096);
    buffer remote(b, 4096);
    auto before = emu::stats("emu_rdma1");
    b.qp.reset();
    post(*a.qp, {read_wr(4, local, 0, remote, 0, 64)});
    expect_statuses(wait_for(*a.cq, 1), {{4, IBV_WC_RETRY_EXC_ERR}});
    BOOST_CHECK_EQUAL(emu::stats("emu_rdma1").peer_connections_refused
                        - before.peer_connections_refused,
                      1u);
  }
  // A remote in RTR connected to another queue pair refuses as well.
  {
    auto a = open_side(*p, "emu_rdma0");
    auto b = open_side(*p, "emu_rdma1");
    auto c = open_side(*p, "emu_rdma0");
    bring_up(*a.qp, address_of(b));
    bring_up(*b.qp, address_of(c));
    buffer local(a, 4096);
    buffer remote(b, 4096);
    post(*a.qp, {read_wr(5, local, 0, remote, 0, 64)});
    expect_statuses(wait_for(*a.cq, 1), {{5, IBV_WC_RETRY_EXC_ERR}});
  }
}

BOOST_AUTO_TEST_CASE(destroying_a_queue_pair_with_work_outstanding) {
  auto p = emu::make_provider(1);
  auto a = open_side(*p, "emu_rdma0");
  auto b = open_side(*p, "emu_rdma0");
  connect(a, b);
  buffer local(a, 1 << 20);
  buffer remote(b, 1 << 20);
  emu::inject("emu_rdma0", {emu::fault_kind::lost_completion, 1});
  post(*a.qp, {read_wr(1, local, 0, remote, 0, 1 << 20), read_wr(2, local, 0, remote, 0, 1 << 20)});
  a.qp.reset(); // no completion, no crash, nothing written later
  BOOST_CHECK_EQUAL(poll_now(*a.cq), 0u);
  // The context still works: a new queue pair on it.
  auto qp = a.pd->create_qp(*a.cq, qp_caps{});
  BOOST_REQUIRE(qp);
  a.qp = std::move(*qp);
  BOOST_REQUIRE(!a.qp->to_init(1, remote_rw));
  auto c = open_side(*p, "emu_rdma0");
  connect(a, c);
  buffer other(c, 4096);
  post(*a.qp, {write_wr(3, local, 0, other, 0, 4096)});
  expect_statuses(wait_for(*a.cq, 1), {{3, IBV_WC_SUCCESS}});
}

BOOST_AUTO_TEST_CASE(fault_completion_error) {
  auto p = emu::make_provider(1);
  auto a = open_side(*p, "emu_rdma0");
  auto b = open_side(*p, "emu_rdma0");
  connect(a, b);
  buffer local(a, 4096);
  buffer remote(b, 4096);
  emu::inject("emu_rdma0", {emu::fault_kind::completion_error, 1});
  post(*a.qp, {read_wr(1, local, 0, remote, 0, 64), read_wr(2, local, 0, remote, 0, 64)});
  expect_statuses(wait_for(*a.cq, 2), {{1, IBV_WC_RETRY_EXC_ERR}, {2, IBV_WC_WR_FLUSH_ERR}});
  BOOST_CHECK(a.qp->state() == IBV_QPS_ERR);
  // Used up: a fresh pair works.
  auto c = open_side(*p, "emu_rdma0");
  auto d = open_side(*p, "emu_rdma0");
  connect(c, d);
  buffer l2(c, 4096);
  buffer r2(d, 4096);
  post(*c.qp, {read_wr(3, l2, 0, r2, 0, 64)});
  expect_statuses(wait_for(*c.cq, 1), {{3, IBV_WC_SUCCESS}});
}

BOOST_AUTO_TEST_CASE(fault_remote_access_error) {
  auto p = emu::make_provider(1);
  auto a = open_side(*p, "emu_rdma0");
  auto b = open_side(*p, "emu_rdma0");
  connect(a, b);
  buffer local(a, 4096);
  buffer remote(b, 4096);
  post(*a.qp, {read_wr(1, local, 0, remote, 0, 64)});
  expect_statuses(wait_for(*a.cq, 1), {{1, IBV_WC_SUCCESS}});
  emu::inject("emu_rdma0", {emu::fault_kind::remote_access_error, 1});
  post(*a.qp, {write_wr(2, local, 0, remote, 0, 64), write_wr(3, local, 0, remote, 0, 64)});
  expect_statuses(wait_for(*a.cq, 2), {{2, IBV_WC_REM_ACCESS_ERR}, {3, IBV_WC_WR_FLUSH_ERR}});
}

BOOST_AUTO_TEST_CASE(fault_lost_completion_hangs_until_error) {
  auto p = emu::make_provider(1);
  auto a = open_side(*p, "emu_rdma0");
  auto b = open_side(*p, "emu_rdma0");
  auto c = open_side(*p, "emu_rdma0");
  auto d = open_side(*p, "emu_rdma0");
  connect(a, b);
  connect(c, d);
  buffer local(a, 4096);
  buffer remote(b, 4096);
  buffer l2(c, 4096);
  buffer r2(d, 4096);
  emu::inject("emu_rdma0", {emu::fault_kind::lost_completion, 1});
  post(*a.qp, {read_wr(1, local, 0, remote, 0, 64), read_wr(2, local, 0, remote, 0, 64)});
  // Work posted after it on another queue pair completes; the lost one and the one behind it
  // on its queue pair do not.
  post(*c.qp, {read_wr(3, l2, 0, r2, 0, 64)});
  expect_statuses(wait_for(*c.cq, 1), {{3, IBV_WC_SUCCESS}});
  BOOST_CHECK_EQUAL(poll_now(*a.cq), 0u);
  BOOST_CHECK(a.qp->state() == IBV_QPS_RTS);
  BOOST_REQUIRE(!a.qp->to_error());
  expect_statuses(wait_for(*a.cq, 2), {{1, IBV_WC_WR_FLUSH_ERR}, {2, IBV_WC_WR_FLUSH_ERR}});
}

BOOST_AUTO_TEST_CASE(fault_slow_completion_keeps_order) {
  auto p = emu::make_provider(1);
  auto a = open_side(*p, "emu_rdma0");
  auto b = open_side(*p, "emu_rdma0");
  connect(a, b);
  buffer local(a, 4096);
  buffer remote(b, 4096);
  constexpr auto delay = 150ms;
  emu::inject("emu_rdma0", {emu::fault_kind::slow_completion, 1, delay});
  auto posted = std::chrono::steady_clock::now();
  post(*a.qp, {read_wr(1, local, 0, remote, 0, 64), read_wr(2, local, 0, remote, 0, 64)});
  auto wcs = wait_for(*a.cq, 2);
  auto waited = std::chrono::steady_clock::now() - posted;
  expect_statuses(wcs, {{1, IBV_WC_SUCCESS}, {2, IBV_WC_SUCCESS}});
  BOOST_CHECK(waited >= delay); // a lower bound only: never a guess at speed
}

BOOST_AUTO_TEST_CASE(fault_qp_error_moves_every_queue_pair_of_the_device) {
  auto p = emu::make_provider(2);
  auto a = open_side(*p, "emu_rdma1");
  auto b = open_side(*p, "emu_rdma0");
  auto c = open_side(*p, "emu_rdma1");
  connect(a, b);
  buffer local(a, 4096);
  buffer remote(b, 4096);
  emu::inject("emu_rdma1", {emu::fault_kind::lost_completion, 1});
  post(*a.qp, {read_wr(1, local, 0, remote, 0, 64)});
  emu::inject("emu_rdma1", {emu::fault_kind::qp_error});
  expect_statuses(wait_for(*a.cq, 1), {{1, IBV_WC_WR_FLUSH_ERR}});
  BOOST_CHECK(a.qp->state() == IBV_QPS_ERR);
  BOOST_CHECK(c.qp->state() == IBV_QPS_ERR);
  BOOST_CHECK(b.qp->state() == IBV_QPS_RTS); // another device
}

BOOST_AUTO_TEST_CASE(port_down) {
  auto p = emu::make_provider(1);
  auto a = open_side(*p, "emu_rdma0");
  auto b = open_side(*p, "emu_rdma0");
  auto c = open_side(*p, "emu_rdma0");
  connect(a, b);
  buffer local(a, 4096);
  buffer remote(b, 4096);
  emu::set_port_up("emu_rdma0", false);
  auto port = a.context->query_port(1);
  BOOST_REQUIRE(port);
  BOOST_CHECK(port->state == IBV_PORT_DOWN);
  auto err = c.qp->to_rtr(address_of(b), local_qp_params{});
  BOOST_CHECK_MESSAGE(has(err, "down"), describe(err));
  post(*a.qp, {read_wr(1, local, 0, remote, 0, 64)});
  expect_statuses(wait_for(*a.cq, 1), {{1, IBV_WC_RETRY_EXC_ERR}});
  emu::clear("emu_rdma0");
  port = a.context->query_port(1);
  BOOST_CHECK(port && port->state == IBV_PORT_ACTIVE);
  BOOST_CHECK(!c.qp->to_rtr(address_of(b), local_qp_params{}));
}

BOOST_AUTO_TEST_CASE(post_send_limits) {
  auto p = emu::make_provider(1);
  auto a = open_side(*p, "emu_rdma0", remote_rw, qp_caps{.max_send_wr = 2});
  auto b = open_side(*p, "emu_rdma0");
  connect(a, b);
  buffer local(a, 4096);
  buffer remote(b, 4096);
  auto huge = read_wr(1, local, 0, remote, 0, 64);
  huge.length = (16u << 20) + 1;
  auto err = a.qp->post_send(std::vector<work_request>{huge});
  BOOST_CHECK_MESSAGE(has(err, "16 MiB"), describe(err));
  auto atomic = read_wr(1, local, 0, remote, 0, 8);
  atomic.opcode = IBV_WR_ATOMIC_FETCH_AND_ADD;
  err = a.qp->post_send(std::vector<work_request>{atomic});
  BOOST_CHECK(code_of(err) == errc::not_supported);
  // Two outstanding (never answered) fill the queue: the third is refused, the first two posted.
  emu::inject("emu_rdma0", {emu::fault_kind::lost_completion, 2});
  err = a.qp->post_send(std::vector<work_request>{read_wr(2, local, 0, remote, 0, 64),
                                                  read_wr(3, local, 0, remote, 0, 64),
                                                  read_wr(4, local, 0, remote, 0, 64)});
  BOOST_CHECK_MESSAGE(has(err, "work request 2") && has(err, "max_send_wr"), describe(err));
  BOOST_REQUIRE(!a.qp->to_error());
  expect_statuses(wait_for(*a.cq, 2), {{2, IBV_WC_WR_FLUSH_ERR}, {3, IBV_WC_WR_FLUSH_ERR}});
  BOOST_CHECK_EQUAL(poll_now(*a.cq), 0u);
}

BOOST_AUTO_TEST_CASE(arming_a_non_empty_queue_notifies_at_once) {
  auto p = emu::make_provider(1);
  auto a = open_side(*p, "emu_rdma0");
  auto b = open_side(*p, "emu_rdma0");
  connect(a, b);
  buffer local(a, 4096);
  buffer remote(b, 4096);
  BOOST_REQUIRE(!a.cq->arm());
  post(*a.qp, {read_wr(1, local, 0, remote, 0, 64)});
  pollfd pfd{a.cq->event_fd(), POLLIN, 0};
  BOOST_REQUIRE_EQUAL(::poll(&pfd, 1, 30'000), 1);
  a.cq->consume_event();
  BOOST_CHECK_EQUAL(::poll(&pfd, 1, 0), 0); // consumed
  BOOST_REQUIRE(!a.cq->arm()); // the completion is still queued
  BOOST_CHECK_EQUAL(::poll(&pfd, 1, 0), 1);
  a.cq->consume_event();
  expect_statuses(wait_for(*a.cq, 1), {{1, IBV_WC_SUCCESS}});
}

BOOST_AUTO_TEST_CASE(counters_count) {
  const std::string dev = "emu_rdma5";
  auto before = emu::stats(dev);
  {
    auto p = emu::make_provider(6);
    auto a = open_side(*p, dev);
    auto b = open_side(*p, dev);
    connect(a, b);
    buffer local(a, 4096);
    buffer remote(b, 4096);
    post(*a.qp, {read_wr(1, local, 0, remote, 0, 64), write_wr(2, local, 0, remote, 0, 64)});
    wait_for(*a.cq, 2);
    auto bad = read_wr(3, local, 0, remote, 0, 64);
    bad.rkey += 1000;
    post(*a.qp, {bad, read_wr(4, local, 0, remote, 0, 64)});
    wait_for(*a.cq, 2);
  }
  auto after = emu::stats(dev);
  BOOST_CHECK_EQUAL(after.contexts_opened - before.contexts_opened, 2u);
  BOOST_CHECK_EQUAL(after.qps_created - before.qps_created, 2u);
  BOOST_CHECK_EQUAL(after.qps_destroyed - before.qps_destroyed, 2u);
  BOOST_CHECK_EQUAL(after.mrs_registered - before.mrs_registered, 2u);
  BOOST_CHECK_EQUAL(after.mrs_deregistered - before.mrs_deregistered, 2u);
  BOOST_CHECK_EQUAL(after.wrs_posted - before.wrs_posted, 4u);
  BOOST_CHECK_EQUAL(after.wrs_completed - before.wrs_completed, 2u);
  BOOST_CHECK_EQUAL(after.wrs_failed - before.wrs_failed, 2u);
  BOOST_CHECK_EQUAL(after.remote_access_errors - before.remote_access_errors, 1u);
}

namespace {

/// What the two processes exchange over their pipes.
struct peer_info {
  uint32_t qp_num = 0;
  uint16_t lid = 0;
  gid_bytes gid{};
  uint64_t addr = 0;
  uint32_t rkey = 0;
};

bool write_all(int fd, const void* data, size_t n) {
  auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w <= 0)
      return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool read_all(int fd, void* data, size_t n) {
  auto* p = static_cast<uint8_t*>(data);
  while (n > 0) {
    ssize_t r = ::read(fd, p, n);
    if (r <= 0)
      return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

constexpr size_t child_bytes = (1u << 20) + 3;

/// The child: a context with registered memory and a queue pair; its threads then only wait on
/// the pipe while the parent reads and writes its memory. Exit code 0: the parent's WRITE landed.
int child_main(int to_parent, int from_parent) {
  emu::clear("emu_rdma0");
  auto p = emu::make_provider(1);
  auto context = p->open("emu_rdma0");
  if (!context)
    return 10;
  auto pd = (*context)->alloc_pd();
  auto cq = (*context)->create_cq(16);
  if (!pd || !cq)
    return 11;
  auto qp = (*pd)->create_qp(**cq, qp_caps{});
  if (!qp || (*qp)->to_init(1, remote_rw))
    return 12;
  std::vector<uint8_t> memory(child_bytes);
  fill(memory, 77);
  auto mr = (*pd)->reg_mr(memory.data(), memory.size(), all_rights);
  if (!mr)
    return 13;
  auto port = (*context)->query_port(1);
  auto gid = (*context)->query_gid(1, 0);
  if (!port || !gid)
    return 14;
  peer_info mine{(*qp)->qp_num(), port->lid, *gid, reinterpret_cast<uint64_t>(memory.data()),
                 (*mr)->rkey()};
  peer_info theirs;
  if (!write_all(to_parent, &mine, sizeof mine) || !read_all(from_parent, &theirs, sizeof theirs))
    return 15;
  remote_qp remote{theirs.qp_num, theirs.lid, theirs.gid, IBV_MTU_4096, 0};
  if ((*qp)->to_rtr(remote, local_qp_params{}) || (*qp)->to_rts(local_qp_params{}))
    return 16;
  char go = 0;
  if (!write_all(to_parent, &go, 1) || !read_all(from_parent, &go, 1))
    return 17;
  // The parent wrote the pattern of seed 78 over the whole region.
  std::vector<uint8_t> expected(child_bytes);
  fill(expected, 78);
  char verdict = memory == expected ? 'y' : 'n';
  if (!write_all(to_parent, &verdict, 1))
    return 18;
  read_all(from_parent, &go, 1); // until killed
  return 0;
}

} // namespace

BOOST_AUTO_TEST_CASE(another_process_as_the_remote) {
  int down[2];
  int up[2];
  BOOST_REQUIRE(::pipe(down) == 0 && ::pipe(up) == 0);
  pid_t child = ::fork();
  BOOST_REQUIRE(child >= 0);
  if (child == 0) {
    ::close(down[1]);
    ::close(up[0]);
    ::_exit(child_main(up[1], down[0]));
  }
  ::close(down[0]);
  ::close(up[1]);
  struct reaper {
    pid_t pid;
    int fds[2];
    ~reaper() {
      if (pid > 0) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
      }
      ::close(fds[0]);
      ::close(fds[1]);
    }
  } reap{child, {down[1], up[0]}};

  auto p = emu::make_provider(1);
  auto a = open_side(*p, "emu_rdma0");
  buffer local(a, child_bytes);
  peer_info theirs;
  BOOST_REQUIRE(read_all(up[0], &theirs, sizeof theirs));
  auto port = a.context->query_port(1);
  auto gid = a.context->query_gid(1, 0);
  BOOST_REQUIRE(port && gid);
  BOOST_CHECK(*gid != theirs.gid);
  peer_info mine{a.qp->qp_num(), port->lid, *gid, 0, 0};
  BOOST_REQUIRE(write_all(down[1], &mine, sizeof mine));
  char ready = 0;
  BOOST_REQUIRE(read_all(up[0], &ready, 1)); // the child's queue pair is in RTS
  bring_up(*a.qp, remote_qp{theirs.qp_num, theirs.lid, theirs.gid, IBV_MTU_4096, 0});

  work_request read{1, IBV_WR_RDMA_READ, local.addr(), static_cast<uint32_t>(child_bytes),
                    local.region->lkey(), theirs.addr, theirs.rkey};
  post(*a.qp, {read});
  expect_statuses(wait_for(*a.cq, 1), {{1, IBV_WC_SUCCESS}});
  std::vector<uint8_t> expected(child_bytes);
  fill(expected, 77);
  BOOST_CHECK(local.bytes == expected);

  fill(local.bytes, 78);
  work_request write = read;
  write.wr_id = 2;
  write.opcode = IBV_WR_RDMA_WRITE;
  post(*a.qp, {write});
  expect_statuses(wait_for(*a.cq, 1), {{2, IBV_WC_SUCCESS}});
  char go = 'c';
  BOOST_REQUIRE(write_all(down[1], &go, 1));
  char verdict = 0;
  BOOST_REQUIRE(read_all(up[0], &verdict, 1));
  BOOST_CHECK_MESSAGE(verdict == 'y', "the child did not find the parent's WRITE in its memory");

  // Outstanding work when the remote process dies fails with retry exceeded, the rest flushes.
  emu::inject("emu_rdma0", {emu::fault_kind::lost_completion, 1});
  read.wr_id = 3;
  post(*a.qp, {read});
  read.wr_id = 4;
  post(*a.qp, {read});
  BOOST_REQUIRE(::kill(child, SIGKILL) == 0);
  expect_statuses(wait_for(*a.cq, 2), {{3, IBV_WC_RETRY_EXC_ERR}, {4, IBV_WC_WR_FLUSH_ERR}});
  BOOST_CHECK(a.qp->state() == IBV_QPS_ERR);
  int status = 0;
  BOOST_REQUIRE(::waitpid(child, &status, 0) == child);
  BOOST_CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  reap.pid = -1; // reaped
}
