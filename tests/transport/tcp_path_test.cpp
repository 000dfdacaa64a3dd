#define BOOST_TEST_MODULE tcp_path_test
#include <boost/test/unit_test.hpp>

// The TCP data path (initiator side) against a target this test controls: a libzmq ROUTER that
// answers, stays mute, drops out and comes back exactly when the test says. What is checked:
//   - a descriptor whose endpoint cannot be used is refused with a clear error, and nothing a
//     peer puts in a descriptor can terminate the process (issue 6, item 1);
//   - a READ reply that arrives after its slice's gate closed (the task is terminal) never
//     writes local memory (item 3);
//   - withdrawing a sent WRITE settles only when the target answers; at the deadline the
//     withdrawal names the target instead (item 3);
//   - a slice's window slot is freed at its deadline, so a mute target cannot wedge later slices
//     (item 6);
//   - slices posted while the link is down wait for it and complete when it is back (item 5).

#include <condition_variable>
#include <cstring>
#include <mutex>
#include <optional>
#include <vector>

#include <zmq.hpp>

#include "config/log.hpp"
#include "memory/region_registry.hpp"
#include "tests/support/checks.hpp"
#include "transport/tcp/path.hpp"
#include "transport/tcp/wire.hpp"

using namespace kvferry;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;
using kvferry::test::eventually;
using transport::slice_completion;
using transport::slice_op;

namespace {

namespace wire = transport::wire;

/// One request as the fake target received it.
struct received {
  std::string identity;
  std::vector<wire::request_header> entries;
  std::vector<uint8_t> data;
};

/// A target the test drives by hand: a libzmq ROUTER on a fixed loopback port.
class fake_target {
public:
  fake_target() { bind(0); }

  [[nodiscard]] uint16_t port() const { return port_; }
  [[nodiscard]] std::string endpoint() const { return "tcp://127.0.0.1:" + std::to_string(port_); }

  /// The next request, or nothing after `timeout`.
  std::optional<received> receive(std::chrono::milliseconds timeout = 10s) {
    zmq::pollitem_t item{socket_->handle(), 0, ZMQ_POLLIN, 0};
    if (zmq::poll(&item, 1, timeout) <= 0)
      return std::nullopt;
    std::vector<zmq::message_t> parts;
    do {
      parts.emplace_back();
      if (!socket_->recv(parts.back(), zmq::recv_flags::none))
        return std::nullopt;
    } while (parts.back().more());
    received r;
    r.identity = parts[0].to_string();
    const auto& h = parts.at(1);
    for (size_t i = 0; i + wire::request_header_size <= h.size(); i += wire::request_header_size) {
      wire::request_header e;
      wire::decode_error err{};
      BOOST_REQUIRE(wire::decode(h.data<uint8_t>() + i, wire::request_header_size, e, err));
      r.entries.push_back(e);
    }
    if (parts.size() > 2)
      r.data.assign(parts[2].data<uint8_t>(), parts[2].data<uint8_t>() + parts[2].size());
    return r;
  }

  /// Answers every entry of `r` with success; READs get `fill` bytes.
  void answer(const received& r, uint8_t fill = 0x5a) {
    std::vector<uint8_t> headers, data;
    for (const auto& e : r.entries) {
      wire::reply_header reply{errc::none, e.id, e.length, e.op == wire::frame_op::read};
      uint8_t bytes[wire::reply_header_size];
      wire::encode(reply, bytes);
      headers.insert(headers.end(), bytes, bytes + sizeof(bytes));
      if (reply.payload)
        data.insert(data.end(), e.length, fill);
    }
    socket_->send(zmq::buffer(r.identity), zmq::send_flags::sndmore);
    socket_->send(zmq::buffer(headers), data.empty() ? zmq::send_flags::none
                                                     : zmq::send_flags::sndmore);
    if (!data.empty())
      socket_->send(zmq::buffer(data), zmq::send_flags::none);
  }

  /// The link goes down: the socket closes (connections drop, the port refuses).
  void close() { socket_.reset(); }
  /// The link comes back on the same port.
  void reopen() { bind(port_); }

private:
  void bind(uint16_t port) {
    socket_ = std::make_unique<zmq::socket_t>(context_, zmq::socket_type::router);
    socket_->set(zmq::sockopt::linger, 0);
    socket_->bind("tcp://127.0.0.1:" + (port == 0 ? std::string("*") : std::to_string(port)));
    auto last = socket_->get(zmq::sockopt::last_endpoint);
    port_ = static_cast<uint16_t>(std::stoi(last.substr(last.rfind(':') + 1)));
  }

  zmq::context_t context_{1};
  std::unique_ptr<zmq::socket_t> socket_;
  uint16_t port_ = 0;
};

/// A tcp_path with registered local memory, its completions collected.
struct rig {
  explicit rig(transport::tcp_path_options options = {}) {
    log::set_level("warn");
    buffer.assign(1 << 20, 0);
    auto added = registry->add(reinterpret_cast<uint64_t>(buffer.data()), buffer.size(), {});
    BOOST_REQUIRE(added);
    auto ctx = transport::make_zmq_context(1);
    BOOST_REQUIRE(ctx);
    path = std::make_unique<transport::tcp_path>(*ctx, registry, options);
    path->set_gates(gates);
    path->set_sink([this](std::vector<slice_completion>&& batch) {
      std::lock_guard<std::mutex> guard(mutex);
      done.insert(done.end(), batch.begin(), batch.end());
    });
  }
  ~rig() { path->stop(); }

  uint32_t connect(const std::string& endpoint, const std::string& name = "fake") {
    memory::segment_descriptor d;
    d.name = name;
    d.incarnation = 1;
    d.endpoints.push_back({"tcp", endpoint});
    auto peer = path->connect(d);
    BOOST_REQUIRE_MESSAGE(peer, kvferry::test::why(peer));
    return *peer;
  }

  /// A slice of the local buffer at `offset`, gate opened as the coordinator does.
  slice_op slice(uint32_t slot, transport::opcode op, uint32_t peer, uint64_t offset,
                 uint64_t length, std::chrono::milliseconds deadline = 60s) {
    slice_op s;
    s.id = (uint64_t{1} << 32) | slot;
    s.op = op;
    s.peer = peer;
    s.local_addr = reinterpret_cast<uint64_t>(buffer.data()) + offset;
    s.remote_addr = 0x10000 + offset;
    s.length = length;
    s.deadline_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                      (steady::now() + deadline).time_since_epoch()).count();
    gates->open(slot, 1);
    return s;
  }

  std::optional<slice_completion> completion_of(uint64_t id) {
    std::lock_guard<std::mutex> guard(mutex);
    for (const auto& c : done)
      if (c.id == id)
        return c;
    return std::nullopt;
  }

  bool completed(uint64_t id) { return completion_of(id).has_value(); }

  std::vector<uint8_t> buffer;
  std::shared_ptr<memory::region_registry> registry = std::make_shared<memory::region_registry>();
  std::shared_ptr<transport::slice_gates> gates = std::make_shared<transport::slice_gates>();
  std::unique_ptr<transport::tcp_path> path;
  std::mutex mutex;
  std::vector<slice_completion> done;
};

} // namespace

BOOST_AUTO_TEST_CASE(descriptors_whose_endpoint_cannot_be_used_are_refused_with_a_reason) {
  rig r;
  for (const char* bad : {"tcp://a b:5", "tcp://host:0", "tcp://host:65536", "tcp://:5",
                          "tcp://::1:5", "udp://host:5", "tcp://host\n:5", "tcp://host:5x"}) {
    BOOST_TEST_CONTEXT("endpoint " << bad) {
      memory::segment_descriptor d;
      d.name = "evil";
      d.endpoints.push_back({"tcp", bad});
      auto checked = transport::tcp_path::check_endpoint(d);
      BOOST_REQUIRE(checked);
      BOOST_CHECK(code_of(checked) == errc::malformed_frame);
      BOOST_CHECK_MESSAGE(kvferry::test::contains(context_of(checked), "is not tcp://host:port"),
                          describe(checked));
      auto peer = r.path->connect(d);
      BOOST_CHECK(!peer);
    }
  }
  // The path still works.
  fake_target target;
  auto peer = r.connect(target.endpoint());
  auto s = r.slice(1, transport::opcode::read, peer, 0, 100);
  r.path->post({&s, 1});
  auto req = target.receive();
  BOOST_REQUIRE(req);
  target.answer(*req);
  BOOST_REQUIRE(eventually([&] { return r.completed(s.id); }));
  BOOST_CHECK(r.completion_of(s.id)->code == errc::none);
}

BOOST_AUTO_TEST_CASE(a_read_reply_after_the_gate_closed_never_writes_local_memory) {
  rig r;
  fake_target target;
  auto peer = r.connect(target.endpoint());
  std::memset(r.buffer.data(), 0xee, 4096);
  auto s = r.slice(7, transport::opcode::read, peer, 0, 4096);
  r.path->post({&s, 1});
  auto req = target.receive();
  BOOST_REQUIRE(req);
  // The coordinator resolved the task (TIMEOUT, FAILED or CANCELED): the gate closes before its
  // state is published; the withdrawal has not reached the path yet when the reply arrives.
  r.gates->close(7);
  target.answer(*req, 0x11);
  BOOST_REQUIRE(eventually([&] { return r.completed(s.id); }));
  BOOST_CHECK(r.completion_of(s.id)->code != errc::none); // reported late, no bytes
  BOOST_CHECK_EQUAL(r.path->counters().gated_replies, 1u);
  for (size_t i = 0; i < 4096; ++i)
    BOOST_REQUIRE_MESSAGE(r.buffer[i] == 0xee, "byte " << i << " was written after the gate closed");
}

BOOST_AUTO_TEST_CASE(withdrawing_a_sent_write_waits_for_the_target_or_names_it) {
  rig r;
  fake_target target;
  auto peer = r.connect(target.endpoint());
  // A small WRITE (copied into the frame) and a large one (lent from registered memory).
  auto small = r.slice(1, transport::opcode::write, peer, 0, 4096);
  auto large = r.slice(2, transport::opcode::write, peer, 65536, 256 << 10);
  r.path->post({&small, 1});
  r.path->post({&large, 1});
  auto first = target.receive();
  auto second = target.receive();
  BOOST_REQUIRE(first && second);

  // Withdrawn while the target holds them: not settled until it answers.
  std::mutex m;
  std::optional<transport::unsettled_segments> outcome;
  uint64_t ids[] = {small.id, large.id};
  r.path->withdraw(ids, steady::now() + 60s, [&](transport::unsettled_segments u) {
    std::lock_guard<std::mutex> g(m);
    outcome = std::move(u);
  });
  r.gates->close(1);
  r.gates->close(2);
  auto settled = [&] {
    std::lock_guard<std::mutex> g(m);
    return outcome.has_value();
  };
  // A READ round trip on the same connection proves the withdrawal reached the I/O thread.
  auto probe = r.slice(3, transport::opcode::read, peer, 512 << 10, 16);
  r.path->post({&probe, 1});
  auto pr = target.receive();
  BOOST_REQUIRE(pr);
  target.answer(*pr);
  BOOST_REQUIRE(eventually([&] { return r.completed(probe.id); }));
  BOOST_CHECK(!settled()); // the WRITEs are still unanswered: the target may yet apply them
  target.answer(*first);
  target.answer(*second);
  BOOST_REQUIRE(eventually(settled));
  BOOST_CHECK(outcome->empty());

  // Withdrawn and never answered: at the deadline the withdrawal names the target.
  auto mute = r.slice(4, transport::opcode::write, peer, 0, 4096);
  r.path->post({&mute, 1});
  BOOST_REQUIRE(target.receive());
  std::optional<transport::unsettled_segments> named;
  uint64_t mute_id[] = {mute.id};
  auto withdrawn_at = steady::now();
  r.path->withdraw(mute_id, steady::now() + 300ms, [&](transport::unsettled_segments u) {
    std::lock_guard<std::mutex> g(m);
    named = std::move(u);
  });
  BOOST_REQUIRE(eventually([&] {
    std::lock_guard<std::mutex> g(m);
    return named.has_value();
  }));
  BOOST_CHECK_GE(std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - withdrawn_at)
                   .count(),
                 250);
  BOOST_REQUIRE_EQUAL(named->size(), 1u);
  BOOST_CHECK_EQUAL(named->front(), "fake");
}

BOOST_AUTO_TEST_CASE(a_mute_target_cannot_wedge_later_slices) {
  transport::tcp_path_options options;
  options.window_slices = 4;
  rig r(options);
  fake_target target;
  auto peer = r.connect(target.endpoint());
  // Four READs fill the window; the target takes them and never answers.
  std::vector<slice_op> lost;
  for (uint32_t i = 0; i < 4; ++i)
    lost.push_back(r.slice(10 + i, transport::opcode::read, peer, i * 1024, 1024, 300ms));
  r.path->post(lost);
  std::vector<received> swallowed;
  while (swallowed.size() < 1) { // small slices travel in one frame
    auto req = target.receive();
    BOOST_REQUIRE(req);
    swallowed.push_back(*req);
  }
  // Their deadline frees their window slots: they end TIMEOUT, and later slices go out.
  for (const auto& s : lost) {
    BOOST_REQUIRE(eventually([&] { return r.completed(s.id); }));
    BOOST_CHECK(r.completion_of(s.id)->code == errc::timeout);
  }
  std::vector<slice_op> later;
  for (uint32_t i = 0; i < 4; ++i)
    later.push_back(r.slice(20 + i, transport::opcode::read, peer, 8192 + i * 1024, 1024));
  r.path->post(later);
  auto req = target.receive();
  BOOST_REQUIRE_MESSAGE(req, "later slices were not sent: the window is still held by the old ones");
  target.answer(*req);
  for (const auto& s : later) {
    BOOST_REQUIRE(eventually([&] { return r.completed(s.id); }));
    BOOST_CHECK(r.completion_of(s.id)->code == errc::none);
  }
  // A late answer to the old slices is counted, not applied.
  target.answer(swallowed.front(), 0x77);
  BOOST_REQUIRE(eventually([&] { return r.path->counters().replies >= 5; }));
  for (size_t i = 0; i < 4096; ++i)
    BOOST_REQUIRE_MESSAGE(r.buffer[i] != 0x77, "a late reply wrote byte " << i);
}

BOOST_AUTO_TEST_CASE(slices_posted_while_the_link_is_down_wait_for_it) {
  rig r;
  fake_target target;
  auto peer = r.connect(target.endpoint());
  auto first = r.slice(1, transport::opcode::read, peer, 0, 100);
  r.path->post({&first, 1});
  auto req = target.receive();
  BOOST_REQUIRE(req);
  // The link drops with the slice in flight: it fails, retryable.
  target.close();
  BOOST_REQUIRE(eventually([&] { return r.completed(first.id); }));
  BOOST_CHECK(r.completion_of(first.id)->code == errc::peer_unreachable);
  BOOST_CHECK(r.completion_of(first.id)->retryable);
  // Posted while it is down: nothing fails at once; they wait for the link.
  auto during = r.slice(2, transport::opcode::read, peer, 4096, 100);
  r.path->post({&during, 1});
  BOOST_REQUIRE(eventually([&] { return r.path->counters().disconnects >= 1; }));
  BOOST_CHECK(!r.completed(during.id));
  // The link is back: ZeroMQ reconnects and the waiting slice goes out.
  target.reopen();
  auto again = target.receive(20s);
  BOOST_REQUIRE_MESSAGE(again, "the waiting slice was not sent after the link came back");
  target.answer(*again);
  BOOST_REQUIRE(eventually([&] { return r.completed(during.id); }));
  BOOST_CHECK(r.completion_of(during.id)->code == errc::none);
}
