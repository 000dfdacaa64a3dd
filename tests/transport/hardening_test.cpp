#define BOOST_TEST_MODULE hardening_test
#include <boost/test/unit_test.hpp>

// Failures that must not stop, corrupt or wedge a node (issue 6), against real processes on
// loopback: a `kvferry node` child process is the target, this process the initiator.
//   1. A peer's descriptor that cannot be used is refused at open_segment with a clear error;
//      nothing a peer describes can terminate the process.
//   3. free_batch tells the truth: a target that cannot confirm withdrawn WRITEs is named.
//   4. unregister_memory is atomic and does not wait on a peer that never reads its replies.
//   5. A link outage shorter than the deadline ends COMPLETED (backoff, reconnect, retry).
//
// Usage: hardening_test [boost test options] -- /path/to/kvferry

#include <sys/mman.h>

#include "tests/support/node_rig.hpp"
#include "tests/support/tcp_proxy.hpp"
#include "transport/control/client.hpp"
#include "transport/control/server.hpp"
#include "transport/tcp/wire.hpp"

using namespace kvferry;
using namespace kvferry::test::rig;
using kvferry::test::eventually;

namespace {

struct quiet_logs {
  quiet_logs() { log::set_level("error"); }
};

/// A control plane that answers describe with whatever the test put in `next`.
struct fake_describer {
  fake_describer() {
    transport::control::server_options o;
    o.segment_name = "fake";
    transport::control::handlers h;
    h.describe = [this](auto done) {
      std::lock_guard<std::mutex> g(mutex);
      done(next);
    };
    h.notify = [](std::string, std::string, auto done) { done(caf::error{}); };
    auto s = transport::control::server::start(o, std::move(h));
    BOOST_REQUIRE_MESSAGE(s, why(s));
    server = std::move(*s);
  }
  void set(memory::segment_descriptor d) {
    std::lock_guard<std::mutex> g(mutex);
    next = std::move(d);
  }
  [[nodiscard]] std::string name() const { return "127.0.0.1:" + std::to_string(server->port()); }

  std::mutex mutex;
  memory::segment_descriptor next;
  std::unique_ptr<transport::control::server> server;
};

memory::segment_descriptor plausible(const std::string& endpoint) {
  memory::segment_descriptor d;
  d.name = "evil";
  d.incarnation = 1;
  d.endpoints.push_back({"tcp", endpoint});
  d.regions.push_back({0x10000, 4096, "cpu:0", 0});
  return d;
}

config::settings settings_with(std::chrono::milliseconds deadline,
                               std::chrono::milliseconds withdraw_timeout) {
  auto s = initiator_settings(deadline, 1);
  s.withdraw_timeout = withdraw_timeout;
  return s;
}

} // namespace

BOOST_TEST_GLOBAL_FIXTURE(quiet_logs);

BOOST_AUTO_TEST_CASE(open_segment_refuses_a_descriptor_it_cannot_use) {
  fake_describer fake;
  initiator in(MiB, initiator_settings(10s));
  struct bad_case {
    const char* what;
    memory::segment_descriptor desc;
    const char* says;
  };
  std::vector<bad_case> cases;
  cases.push_back({"space in the host", plausible("tcp://a b:5"), "is not tcp://host:port"});
  cases.push_back({"port 0", plausible("tcp://127.0.0.1:0"), "is not tcp://host:port"});
  cases.push_back({"port above 65535", plausible("tcp://127.0.0.1:70000"), "is not tcp://host:port"});
  cases.push_back({"control character", plausible("tcp://x\x01y:5"), "is not tcp://host:port"});
  {
    auto d = plausible("tcp://127.0.0.1:5");
    d.regions.push_back({0x10800, 4096, "cpu:0", 0});
    cases.push_back({"overlapping regions", d, "overlaps"});
  }
  {
    auto d = plausible("tcp://127.0.0.1:5");
    d.regions[0] = {~uint64_t{0} - 10, 4096, "cpu:0", 0};
    cases.push_back({"region wraps around", d, "wraps around"});
  }
  {
    auto d = plausible("tcp://127.0.0.1:5");
    d.regions[0].location = "quantum:7";
    cases.push_back({"unknown location", d, "location"});
  }
  {
    auto d = plausible("tcp://127.0.0.1:5");
    d.name = std::string(300, 'n');
    cases.push_back({"name too long", d, "name"});
  }
  for (auto& c : cases) {
    BOOST_TEST_CONTEXT(c.what) {
      fake.set(c.desc);
      auto seg = in.engine->open_segment(fake.name());
      BOOST_REQUIRE_MESSAGE(!seg, "a descriptor with " << c.what << " was accepted");
      BOOST_CHECK_MESSAGE(contains(context_of(seg.error()), c.says), describe(seg.error()));
      BOOST_CHECK_MESSAGE(contains(context_of(seg.error()), fake.name()), describe(seg.error()));
    }
  }
  // The process is alive and the engine serves a real node as before.
  test::temp_dir dir("kvferry-hardening");
  auto node = start_node(dir, test::node_config(0, 0, 30000), 4 * MiB, 0x5eed0101);
  auto seg = in.open(node.name);
  require_remote_pattern(in, seg, 17, 100000, 0x5eed0101, "after refused descriptors");
  stop_node(node);
}

BOOST_AUTO_TEST_CASE(free_batch_names_a_target_that_did_not_confirm_withdrawn_writes) {
  test::temp_dir dir("kvferry-hardening");
  auto node = start_node(dir, test::node_config(0, 0, 30000), 8 * MiB, 0x5eed0102);
  initiator in(8 * MiB, settings_with(60s, 500ms));
  auto seg = in.open(node.name);
  round_trip_every_connection(in, seg, 1, 0x5eed0102, "before SIGSTOP");

  // WRITEs reach the stopped node's socket: handed to the network, never answered. (Away from
  // what the barrier reads: these WRITEs may land once the node runs again. The data path's own
  // test covers a large WRITE lent from registered memory.)
  stop_the_world(node);
  const uint16_t data_port = data_port_of(in.descriptor);
  const uint64_t queued_before = bytes_queued_at(data_port);
  std::vector<transfer_request> rqs;
  for (uint64_t i = 0; i < 4; ++i)
    rqs.push_back({opcode::write, in.local.data + i * 4096, seg, in.remote_base + 4 * MiB + i * 4096,
                   4096});
  auto batch = in.engine->allocate_batch(rqs.size());
  BOOST_REQUIRE(batch);
  BOOST_REQUIRE(in.engine->submit(*batch, rqs));
  // They are on the wire: waiting, unread, in the stopped node's receive queue.
  BOOST_REQUIRE_MESSAGE(eventually([&] { return bytes_queued_at(data_port) >= queued_before + 4 * 4096; }),
                        "the WRITEs never reached the node's socket");
  // free_batch cancels the tasks; the target cannot confirm, so the call says so and names it.
  auto err = in.engine->free_batch(*batch);
  BOOST_REQUIRE_MESSAGE(err, "free_batch reported success while the stopped node holds WRITEs");
  BOOST_CHECK(code_of(err) == errc::unconfirmed);
  BOOST_CHECK_MESSAGE(contains(context_of(err), "'" + node.name + "'"), describe(err));
  BOOST_CHECK_MESSAGE(contains(context_of(err), "freed locally"), describe(err));
  // It is freed all the same.
  BOOST_CHECK(code_of(in.engine->free_batch(*batch)) == errc::unknown_batch);
  BOOST_REQUIRE(node.proc->signal(SIGCONT));

  // A batch whose WRITEs the target answers frees with success, even when freed in flight.
  auto again = in.engine->allocate_batch(rqs.size());
  BOOST_REQUIRE(again);
  BOOST_REQUIRE(in.engine->submit(*again, rqs));
  auto freed = in.engine->free_batch(*again);
  BOOST_CHECK_MESSAGE(!freed, describe(freed));
  round_trip_every_connection(in, seg, 1, 0x5eed0102, "after SIGCONT");
  stop_node(node);
}

BOOST_AUTO_TEST_CASE(unregister_does_not_wait_on_a_peer_that_never_reads) {
  // The target is an engine of this process, so its memory can be unregistered and unmapped
  // while a peer holds READ replies that point into it.
  auto rt = runtime::create({.network = true});
  BOOST_REQUIRE(rt);
  auto settings = initiator_settings(10s);
  auto engine = transfer_engine::create(*rt, settings, {.segment_name = "target"});
  BOOST_REQUIRE_MESSAGE(engine, why(engine));
  const size_t bytes = 32 * MiB;
  void* memory = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  BOOST_REQUIRE(memory != MAP_FAILED);
  BOOST_REQUIRE(!(*engine)->register_memory(memory, bytes));
  // Its data port, from its own descriptor as a peer would see it.
  auto client = transport::control::client::start("test");
  BOOST_REQUIRE(client);
  auto desc = (*client)->describe("127.0.0.1", (*engine)->rpc_port(), 10s);
  BOOST_REQUIRE_MESSAGE(desc, why(desc));
  auto data_port = data_port_of(*desc);

  // A peer that completes the handshake, asks for 64 MiB of READs and never reads a byte back.
  int fd = test::connect_loopback(data_port);
  BOOST_REQUIRE(fd >= 0);
  auto hello = concat({zmtp_greeting(), zmtp_ready_dealer()});
  BOOST_REQUIRE(::send(fd, hello.data(), hello.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(hello.size()));
  for (uint64_t i = 0; i < 32; ++i) {
    transport::wire::request_header h;
    h.op = transport::wire::frame_op::read;
    h.id = i + 1;
    h.remote_addr = reinterpret_cast<uint64_t>(memory) + i * MiB;
    h.length = MiB;
    std::vector<uint8_t> frame = {0x00, static_cast<uint8_t>(transport::wire::request_header_size)};
    frame.resize(2 + transport::wire::request_header_size);
    transport::wire::encode(h, frame.data() + 2);
    BOOST_REQUIRE(::send(fd, frame.data(), frame.size(), MSG_NOSIGNAL) > 0);
  }
  // The node took the requests (its replies now wait on this peer).
  BOOST_REQUIRE(eventually([&] { return (*engine)->server_counters().reads >= 32; }));

  auto started = steady::now();
  auto err = (*engine)->unregister_memory(memory);
  auto took = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - started);
  BOOST_REQUIRE_MESSAGE(!err, "unregister_memory: " << describe(err));
  BOOST_TEST_MESSAGE("unregister with a non-reading peer took " << took.count() << " ms");
  // The memory may be freed at once: nothing touches it afterwards (ASan would see it).
  ::munmap(memory, bytes);
  char sink[65536];
  while (::recv(fd, sink, sizeof(sink), MSG_DONTWAIT) > 0) {
  }
  ::close(fd);
  // The node still serves: new memory, a fresh peer.
  std::vector<uint8_t> fresh(MiB, 0x3c);
  BOOST_REQUIRE(!(*engine)->register_memory(fresh.data(), fresh.size()));
  {
    initiator peer(MiB, initiator_settings(10s));
    auto seg = peer.engine->open_segment("127.0.0.1:" + std::to_string((*engine)->rpc_port()));
    BOOST_REQUIRE_MESSAGE(seg, why(seg));
    auto st = run_one(*peer.engine,
                      {opcode::read, peer.local.data, *seg, reinterpret_cast<uint64_t>(fresh.data()), 4096});
    BOOST_REQUIRE_MESSAGE(st.state == task_state::completed, show(st));
    BOOST_CHECK(peer.local.data[0] == 0x3c && peer.local.data[4095] == 0x3c);
  }
  (*engine)->shutdown();
}

BOOST_AUTO_TEST_CASE(a_link_outage_shorter_than_the_deadline_ends_completed) {
  const uint64_t fill_seed = 0x5eed0105;
  test::temp_dir dir("kvferry-hardening");
  auto node = start_node(dir, test::node_config(0, 0, 30000), 16 * MiB, fill_seed);
  // The initiator reaches the node's data port through a proxy it can freeze and cut: the node's
  // descriptor is served by a control plane of this test, its tcp endpoint pointing at the proxy.
  auto client = transport::control::client::start("test");
  BOOST_REQUIRE(client);
  auto real = (*client)->describe("127.0.0.1", node.rpc_port(), 10s);
  BOOST_REQUIRE_MESSAGE(real, why(real));
  test::tcp_proxy link(data_port_of(*real));
  fake_describer via;
  auto routed = *real;
  for (auto& ep : routed.endpoints)
    if (ep.kind == "tcp")
      ep.address = "tcp://127.0.0.1:" + std::to_string(link.port());
  via.set(routed);
  initiator in(8 * MiB, initiator_settings(10s, 1));
  auto seg = in.open(via.name());
  require_remote_pattern(in, seg, 0, 4096, fill_seed, "through the proxy");

  auto batch_of = [&](uint64_t first_offset) {
    std::vector<transfer_request> rqs;
    for (uint64_t i = 0; i < 48; ++i)
      rqs.push_back({opcode::read, in.local.data + i * 65536, seg,
                     in.remote_base + first_offset + i * 65536, 65536});
    return rqs;
  };
  auto check_batch = [&](const std::vector<transfer_request>& rqs, uint64_t first_offset,
                         const std::string& what) {
    for (size_t i = 0; i < rqs.size(); ++i)
      BOOST_REQUIRE_MESSAGE(tools::check_pattern(in.local.data + i * 65536, 65536, fill_seed,
                                                 first_offset + i * 65536) == 65536,
                            what << ": block " << i << " differs");
  };
  auto before = stats_of(*in.engine);

  // (a) The link is down when the batch is submitted, for longer than many round trips.
  link.cut();
  auto a = batch_of(MiB);
  auto batch_a = in.engine->allocate_batch(a.size());
  BOOST_REQUIRE(batch_a);
  BOOST_REQUIRE(in.engine->submit(*batch_a, a));
  std::this_thread::sleep_for(1500ms); // the outage (a fault's duration, not a synchronisation)
  link.restore();
  auto wa = in.engine->wait(*batch_a, 60s);
  BOOST_REQUIRE_MESSAGE(wa, why(wa));
  for (uint32_t i = 0; i < a.size(); ++i) {
    auto st = in.engine->status(*batch_a, i);
    BOOST_REQUIRE_MESSAGE(st->state == task_state::completed, "outage before submit: " << show(*st));
  }
  check_batch(a, MiB, "outage before submit");
  BOOST_CHECK(!in.engine->free_batch(*batch_a));

  // (b) The requests are on the wire when the link freezes and then drops: they fail, and are
  // retried with backoff until the link is back.
  link.freeze();
  const auto sent_before = link.client_bytes();
  auto b = batch_of(5 * MiB);
  auto batch_b = in.engine->allocate_batch(b.size());
  BOOST_REQUIRE(batch_b);
  BOOST_REQUIRE(in.engine->submit(*batch_b, b));
  // The requests left the initiator (the frozen link swallowed them).
  BOOST_REQUIRE(eventually([&] { return link.client_bytes() > sent_before; }));
  link.cut();
  std::this_thread::sleep_for(1500ms); // the outage
  link.restore();
  auto wb = in.engine->wait(*batch_b, 60s);
  BOOST_REQUIRE_MESSAGE(wb, why(wb));
  for (uint32_t i = 0; i < b.size(); ++i) {
    auto st = in.engine->status(*batch_b, i);
    BOOST_REQUIRE_MESSAGE(st->state == task_state::completed, "outage in flight: " << show(*st));
  }
  check_batch(b, 5 * MiB, "outage in flight");
  BOOST_CHECK(!in.engine->free_batch(*batch_b));
  auto after = stats_of(*in.engine);
  BOOST_CHECK_GT(after.slices_retried, before.slices_retried); // (b) lost slices in flight
  BOOST_CHECK_EQUAL(after.tasks_failed, before.tasks_failed);
  stop_node(node);
}

BOOST_AUTO_TEST_CASE(open_segment_and_notify_give_up_on_a_mute_node_within_the_timeout) {
  test::temp_dir dir("kvferry-hardening");
  auto node = start_node(dir, test::node_config(0, 0, 30000), MiB, 0x5eed0106);
  auto settings = initiator_settings(10s);
  settings.open_timeout = 400ms;
  initiator in(MiB, settings);
  auto seg = in.open(node.name);
  // The node's process is stopped: its kernel still accepts connections, nothing answers.
  stop_the_world(node);
  auto other = in.engine->open_segment(node.name);
  BOOST_REQUIRE_MESSAGE(!other, "open_segment of a stopped node succeeded");
  BOOST_CHECK(code_of(other.error()) == errc::timeout);
  BOOST_CHECK_MESSAGE(contains(context_of(other.error()), "did not answer within 400 ms"),
                      describe(other.error()));
  auto err = in.engine->notify(seg, "hello");
  BOOST_REQUIRE_MESSAGE(err, "notify to a stopped node succeeded");
  BOOST_CHECK(code_of(err) == errc::timeout);
  BOOST_REQUIRE(node.proc->signal(SIGCONT));
  BOOST_CHECK(!in.engine->notify(seg, "hello again"));
  stop_node(node);
  // No node at all: refused at once, with the address.
  auto none = in.engine->open_segment("127.0.0.1:" + std::to_string(test::free_tcp_port()));
  BOOST_REQUIRE(!none);
  BOOST_CHECK(code_of(none.error()) == errc::peer_unreachable);
}

BOOST_AUTO_TEST_CASE(a_node_names_the_configuration_fields_it_does_not_use) {
  test::temp_dir dir("kvferry-hardening");
  auto config = R"({"local_hostname":"127.0.0.1","metadata_server":"P2PHANDSHAKE",)"
                R"("device_name":"mlx5_0","master_server_address":"127.0.0.1:50051",)"
                R"("local_buffer_size":"2GB","kvferry":{"log_level":"warn"}})";
  auto node = start_node(dir, config, MiB, 0);
  BOOST_REQUIRE(eventually([&] { return contains(node.proc->err(), "local_buffer_size"); }));
  auto err = node.proc->err();
  for (const char* field : {"device_name", "master_server_address", "local_buffer_size"})
    BOOST_CHECK_MESSAGE(contains(err, field), "the node's log does not name " << field << "\n" << err);
  BOOST_CHECK(contains(err, "not used"));
  stop_node(node);
}

BOOST_AUTO_TEST_CASE(a_target_stopped_and_resumed_within_the_deadline_completes) {
  const uint64_t fill_seed = 0x5eed0107;
  test::temp_dir dir("kvferry-hardening");
  auto node = start_node(dir, test::node_config(0, 0, 30000), 8 * MiB, fill_seed);
  initiator in(8 * MiB, initiator_settings(10s, 1));
  auto seg = in.open(node.name);
  round_trip_every_connection(in, seg, 1, fill_seed, "before SIGSTOP");
  stop_the_world(node);
  std::vector<transfer_request> rqs;
  for (uint64_t i = 0; i < 16; ++i)
    rqs.push_back({opcode::read, in.local.data + i * 65536, seg, in.remote_base + i * 65536, 65536});
  auto batch = in.engine->allocate_batch(rqs.size());
  BOOST_REQUIRE(batch);
  BOOST_REQUIRE(in.engine->submit(*batch, rqs));
  std::this_thread::sleep_for(1500ms); // the pause (a fault's duration, not a synchronisation)
  BOOST_REQUIRE(node.proc->signal(SIGCONT));
  auto w = in.engine->wait(*batch, 60s);
  BOOST_REQUIRE_MESSAGE(w, why(w));
  for (uint32_t i = 0; i < rqs.size(); ++i) {
    auto st = in.engine->status(*batch, i);
    BOOST_REQUIRE_MESSAGE(st->state == task_state::completed, show(*st));
    BOOST_REQUIRE(tools::check_pattern(in.local.data + i * 65536, 65536, fill_seed, i * 65536) == 65536);
  }
  BOOST_CHECK(!in.engine->free_batch(*batch));
  stop_node(node);
}
