#define BOOST_TEST_MODULE control_call_test
#include <boost/test/unit_test.hpp>

// The control plane's generic call (transport/control, op::call), client and server in this
// process on loopback. What is checked:
//   - a call's payload and method arrive as sent and the reply's payload comes back;
//   - an error the handler answers with reaches the caller with its errc and its text;
//   - a server without a handler for an op answers not_supported (call, describe, notify);
//   - a call the server never answers ends at its deadline with errc::timeout;
//   - calls to one peer are pipelined on one connection: one held for long does not delay
//     the others;
//   - payloads above a frame limit are refused with a clear error when encoded, when decoded,
//     by the client before sending, and by the server and the client for replies (the connection
//     stays up);
//   - a malformed call frame is answered by id and op, and the server keeps serving;
//   - `done` answers once (a second call is ignored, a dropped one answers an error); the
//     bytes of a held call count against the reply budget until it is answered;
//   - per-instance frame limits enter memory_bound and are checked at start.

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config/log.hpp"
#include "tests/support/checks.hpp"
#include "transport/control/client.hpp"
#include "transport/control/server.hpp"
#include "transport/control/wire.hpp"
#include "transport/zmtp/codec.hpp"

using namespace kvferry;
using namespace std::chrono_literals;
using kvferry::test::contains;
using kvferry::test::eventually;
using kvferry::test::why;

namespace control = kvferry::transport::control;
namespace zmtp = kvferry::transport::zmtp;

namespace {

using bytes = std::vector<uint8_t>;
using call_done = std::function<void(caf::expected<bytes>)>;

struct quiet_logs {
  quiet_logs() { log::set_level("error"); }
};

/// The methods of the test's call handler.
enum : uint16_t {
  echo = 1,        // replies the payload followed by the method (2 bytes, little-endian)
  refuse = 2,      // answers object_not_found
  hold = 3,        // keeps `done` until the test releases it
  drop = 4,        // destroys `done` unanswered
  twice = 5,       // answers "first", then an error (ignored)
  sized_reply = 6, // replies as many bytes as the payload's u32 says
};

bytes text(std::string_view s) {
  return bytes(s.begin(), s.end());
}

bytes pattern(size_t n, uint8_t seed) {
  bytes out(n);
  for (size_t i = 0; i < n; ++i)
    out[i] = static_cast<uint8_t>(i * 31 + seed);
  return out;
}

/// A server whose call handler implements the methods above.
struct call_server {
  explicit call_server(control::server_options o = {}, bool with_call = true) {
    o.segment_name = "call-test";
    control::handlers h;
    if (with_call)
      h.call = [this](uint16_t method, bytes payload, call_done done) {
        calls.fetch_add(1);
        switch (method) {
        case echo:
          payload.push_back(static_cast<uint8_t>(method));
          payload.push_back(static_cast<uint8_t>(method >> 8));
          return done(std::move(payload));
        case refuse: return done(make_error(errc::object_not_found, "no object 'k1'"));
        case hold: {
          std::lock_guard<std::mutex> g(mutex);
          held.push_back(std::move(done));
          if (held_arrived && held.size() == held_expected)
            held_arrived->set_value();
          return;
        }
        case drop: return;
        case twice: done(text("first")); return done(make_error(errc::busy, "second answer"));
        case sized_reply: {
          uint32_t n = 0;
          std::memcpy(&n, payload.data(), std::min<size_t>(4, payload.size()));
          return done(pattern(n, 7));
        }
        default: return done(make_error(errc::invalid_argument, "unknown method"));
        }
      };
    auto s = control::server::start(o, std::move(h));
    BOOST_REQUIRE_MESSAGE(s, why(s));
    server = std::move(*s);
  }

  /// Resolves once `n` calls are held.
  std::future<void> expect_held(size_t n) {
    std::lock_guard<std::mutex> g(mutex);
    held_expected = n;
    held_arrived.emplace();
    return held_arrived->get_future();
  }

  /// Answers every held call with `reply`.
  void release(const bytes& reply) {
    std::vector<call_done> out;
    {
      std::lock_guard<std::mutex> g(mutex);
      out.swap(held);
    }
    for (auto& done : out)
      done(reply);
  }

  [[nodiscard]] uint16_t port() const { return server->port(); }

  std::atomic<uint64_t> calls{0};
  std::mutex mutex;
  std::vector<call_done> held;
  size_t held_expected = 0;
  std::optional<std::promise<void>> held_arrived;
  std::unique_ptr<control::server> server;
};

std::unique_ptr<control::client> start_client(control::client_options o = {}) {
  auto c = control::client::start("test", o);
  BOOST_REQUIRE_MESSAGE(c, why(c));
  return std::move(*c);
}

/// A blocking ZMTP peer on a raw socket: sends frames the test builds byte by byte.
class raw_peer {
public:
  explicit raw_peer(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    BOOST_REQUIRE(fd_ >= 0);
    timeval tv{10, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    BOOST_REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    bytes hello(zmtp::greeting_size);
    zmtp::encode_greeting(
      std::span<uint8_t, zmtp::greeting_size>(hello.data(), zmtp::greeting_size));
    auto ready = zmtp::encode_ready("DEALER");
    hello.insert(hello.end(), ready.begin(), ready.end());
    send_all(hello);
    BOOST_REQUIRE(read_exact(zmtp::greeting_size).size() == zmtp::greeting_size);
  }
  ~raw_peer() { ::close(fd_); }
  raw_peer(const raw_peer&) = delete;
  raw_peer& operator=(const raw_peer&) = delete;

  void send_frame(const bytes& body) {
    uint8_t h[9];
    bytes out(h, h + zmtp::encode_frame_header(h, body.size(), false));
    out.insert(out.end(), body.begin(), body.end());
    send_all(out);
  }

  /// The next message frame's body (commands such as READY are skipped); empty on failure.
  bytes read_frame() {
    for (;;) {
      bytes header;
      zmtp::frame_header h;
      while (h.header_bytes == 0) {
        auto more = read_exact(1);
        if (more.empty())
          return {};
        header.push_back(more[0]);
        if (zmtp::decode_frame_header(header, h) != zmtp::violation::none)
          return {};
      }
      auto body = read_exact(h.size);
      if (!h.command)
        return body;
    }
  }

private:
  void send_all(const bytes& b) {
    size_t sent = 0;
    while (sent < b.size()) {
      auto n = ::send(fd_, b.data() + sent, b.size() - sent, MSG_NOSIGNAL);
      BOOST_REQUIRE(n > 0);
      sent += static_cast<size_t>(n);
    }
  }
  bytes read_exact(size_t n) {
    bytes out(n);
    size_t got = 0;
    while (got < n) {
      auto r = ::recv(fd_, out.data() + got, n - got, 0);
      if (r <= 0)
        return {};
      got += static_cast<size_t>(r);
    }
    return out;
  }

  int fd_ = -1;
};

control::message call_request(uint64_t id, uint16_t method, bytes payload) {
  control::message m;
  m.what = control::kind::request;
  m.operation = control::op::call;
  m.id = id;
  m.method = method;
  m.payload = std::move(payload);
  return m;
}

} // namespace

BOOST_TEST_GLOBAL_FIXTURE(quiet_logs);

BOOST_AUTO_TEST_CASE(a_call_round_trips_method_and_payload) {
  call_server server;
  auto client = start_client();
  for (size_t n : {size_t{0}, size_t{1}, size_t{1000}, size_t{60000}}) {
    auto sent = pattern(n, 3);
    auto reply = client->call("127.0.0.1", server.port(), echo, sent, 10s);
    BOOST_REQUIRE_MESSAGE(reply, why(reply));
    auto expected = sent;
    expected.push_back(echo);
    expected.push_back(0);
    BOOST_CHECK(*reply == expected);
  }
  // The async form, answered on the client's thread.
  std::promise<caf::expected<bytes>> result;
  client->call("127.0.0.1", server.port(), echo, text("async"), 10s,
               [&](caf::expected<bytes> r) { result.set_value(std::move(r)); });
  auto reply = result.get_future().get();
  BOOST_REQUIRE_MESSAGE(reply, why(reply));
  BOOST_CHECK(*reply == (bytes{'a', 's', 'y', 'n', 'c', echo, 0}));
  BOOST_CHECK_EQUAL(client->counters().connects, 1u);
  BOOST_CHECK_EQUAL(server.server->counters().requests, 5u);
}

BOOST_AUTO_TEST_CASE(a_remote_error_keeps_its_code_and_reason) {
  call_server server;
  auto client = start_client();
  auto reply = client->call("127.0.0.1", server.port(), refuse, text("k1"), 10s);
  BOOST_REQUIRE(!reply);
  BOOST_CHECK(code_of(reply.error()) == errc::object_not_found);
  BOOST_CHECK_MESSAGE(contains(context_of(reply.error()), "no object 'k1'"),
                      describe(reply.error()));
  BOOST_CHECK_MESSAGE(
    contains(context_of(reply.error()), "127.0.0.1:" + std::to_string(server.port())),
    describe(reply.error()));
  // An unknown method is the handler's business: its error comes back the same way.
  auto unknown = client->call("127.0.0.1", server.port(), 999, {}, 10s);
  BOOST_REQUIRE(!unknown);
  BOOST_CHECK(code_of(unknown.error()) == errc::invalid_argument);
}

BOOST_AUTO_TEST_CASE(an_op_without_a_handler_is_not_supported) {
  auto client = start_client();
  {
    // A node that answers describe and notify only.
    call_server server({}, /*with_call=*/false);
    auto reply = client->call("127.0.0.1", server.port(), echo, text("x"), 10s);
    BOOST_REQUIRE(!reply);
    BOOST_CHECK(code_of(reply.error()) == errc::not_supported);
    BOOST_CHECK_MESSAGE(contains(context_of(reply.error()), "call"), describe(reply.error()));
    auto described = client->describe("127.0.0.1", server.port(), 10s);
    BOOST_REQUIRE(!described);
    BOOST_CHECK(code_of(described.error()) == errc::not_supported);
  }
  {
    // A store master installs only `call`.
    call_server master;
    auto described = client->describe("127.0.0.1", master.port(), 10s);
    BOOST_REQUIRE(!described);
    BOOST_CHECK(code_of(described.error()) == errc::not_supported);
    BOOST_CHECK_MESSAGE(contains(context_of(described.error()), "describe"),
                        describe(described.error()));
    auto notified = client->notify("127.0.0.1", master.port(), "me", "hello", 10s);
    BOOST_CHECK(code_of(notified) == errc::not_supported);
    auto reply = client->call("127.0.0.1", master.port(), echo, text("still here"), 10s);
    BOOST_CHECK_MESSAGE(reply, why(reply));
  }
}

BOOST_AUTO_TEST_CASE(a_call_never_answered_ends_at_its_deadline) {
  call_server server;
  auto client = start_client();
  auto arrived = server.expect_held(1);
  auto started = std::chrono::steady_clock::now();
  auto reply = client->call("127.0.0.1", server.port(), hold, text("wait"), 300ms);
  auto took = std::chrono::steady_clock::now() - started;
  BOOST_REQUIRE(!reply);
  BOOST_CHECK(code_of(reply.error()) == errc::timeout);
  BOOST_CHECK(took >= 300ms);
  BOOST_CHECK_EQUAL(client->counters().timeouts, 1u);
  BOOST_REQUIRE(arrived.wait_for(10s) == std::future_status::ready);
  // The late answer finds no request waiting: counted, and the connection keeps serving.
  server.release(text("late"));
  BOOST_CHECK(eventually([&] { return client->counters().unmatched_replies == 1; }));
  auto next = client->call("127.0.0.1", server.port(), echo, {}, 10s);
  BOOST_CHECK_MESSAGE(next, why(next));
  BOOST_CHECK_EQUAL(client->counters().connects, 1u);
}

BOOST_AUTO_TEST_CASE(calls_to_one_peer_are_pipelined_past_a_held_one) {
  call_server server;
  auto client = start_client();
  auto arrived = server.expect_held(1);
  std::promise<caf::expected<bytes>> held_result;
  auto held_future = held_result.get_future();
  client->call("127.0.0.1", server.port(), hold, text("long poll"), 20s,
               [&](caf::expected<bytes> r) { held_result.set_value(std::move(r)); });
  BOOST_REQUIRE(arrived.wait_for(10s) == std::future_status::ready);

  // While the first call is held, many others are sent at once and all answered.
  constexpr size_t n = 12;
  std::array<std::promise<caf::expected<bytes>>, n> results;
  for (size_t i = 0; i < n; ++i)
    client->call("127.0.0.1", server.port(), echo, pattern(100 + i, static_cast<uint8_t>(i)), 10s,
                 [&results, i](caf::expected<bytes> r) { results[i].set_value(std::move(r)); });
  for (size_t i = 0; i < n; ++i) {
    auto r = results[i].get_future().get();
    BOOST_REQUIRE_MESSAGE(r, "call " << i << ": " << why(r));
    auto expected = pattern(100 + i, static_cast<uint8_t>(i));
    expected.push_back(echo);
    expected.push_back(0);
    BOOST_CHECK(*r == expected);
  }
  BOOST_CHECK(held_future.wait_for(0s) == std::future_status::timeout);
  server.release(text("work"));
  auto held = held_future.get();
  BOOST_REQUIRE_MESSAGE(held, why(held));
  BOOST_CHECK(*held == text("work"));
  // All of it on one connection.
  BOOST_CHECK_EQUAL(client->counters().connects, 1u);
  BOOST_CHECK_EQUAL(server.server->counters().connections.accepted, 1u);
}

BOOST_AUTO_TEST_CASE(an_oversized_payload_is_refused_when_encoded_and_decoded) {
  const size_t limit = 4096;
  const size_t fits = control::max_call_payload(control::kind::request, limit);
  BOOST_CHECK_EQUAL(fits, limit - control::call_request_overhead);

  auto ok = control::encode(call_request(1, echo, bytes(fits, 1)), limit);
  BOOST_REQUIRE_MESSAGE(ok, why(ok));
  BOOST_CHECK_EQUAL(ok->size(), limit);
  auto back = control::decode(*ok, limit);
  BOOST_REQUIRE_MESSAGE(back, why(back));
  BOOST_CHECK(back->payload == bytes(fits, 1) && back->method == echo);

  auto too_big = control::encode(call_request(1, echo, bytes(fits + 1, 1)), limit);
  BOOST_REQUIRE(!too_big);
  BOOST_CHECK(code_of(too_big.error()) == errc::invalid_argument);
  BOOST_CHECK_MESSAGE(
    contains(context_of(too_big.error()), "call payload of " + std::to_string(fits + 1)),
    describe(too_big.error()));

  // Encoded under a larger limit, decoded under the smaller one.
  auto big = control::encode(call_request(2, echo, bytes(fits + 1, 1)), 2 * limit);
  BOOST_REQUIRE_MESSAGE(big, why(big));
  auto refused = control::decode(*big, limit);
  BOOST_REQUIRE(!refused);
  BOOST_CHECK(code_of(refused.error()) == errc::malformed_frame);
  BOOST_CHECK_MESSAGE(
    contains(context_of(refused.error()), "exceeds the limit of " + std::to_string(limit)),
    describe(refused.error()));

  // A payload length that claims more than the limit, in a frame within it.
  auto lying = *ok;
  const uint32_t claimed = static_cast<uint32_t>(fits + 1);
  std::memcpy(lying.data() + control::header_size + 2, &claimed, 4);
  auto lie = control::decode(lying, limit);
  BOOST_REQUIRE(!lie);
  BOOST_CHECK(code_of(lie.error()) == errc::malformed_frame);
  BOOST_CHECK_MESSAGE(contains(context_of(lie.error()), "call payload has length"),
                      describe(lie.error()));

  // Replies: the same rule with the reply's overhead.
  control::message reply;
  reply.what = control::kind::reply;
  reply.operation = control::op::call;
  reply.id = 3;
  reply.payload.assign(control::max_call_payload(control::kind::reply, limit), 9);
  auto encoded_reply = control::encode(reply, limit);
  BOOST_REQUIRE_MESSAGE(encoded_reply, why(encoded_reply));
  BOOST_CHECK_EQUAL(encoded_reply->size(), limit);
  reply.payload.push_back(9);
  BOOST_CHECK(!control::encode(reply, limit));
}

BOOST_AUTO_TEST_CASE(frame_limits_are_per_instance_and_bound_every_step) {
  // A master-like server (large requests and replies) and clients with their own limits.
  control::server_options big;
  big.max_request_frame = 4 << 20;
  big.max_reply_frame = 16 << 20;
  big.reply_budget = 64 << 20;
  call_server server(big);
  const size_t one_mib = 1 << 20;

  // A default client refuses, before sending, a request above its own request limit: no
  // connection is opened for it.
  auto small = start_client();
  auto refused = small->call("127.0.0.1", server.port(), echo, bytes(one_mib, 1), 10s);
  BOOST_REQUIRE(!refused);
  BOOST_CHECK(code_of(refused.error()) == errc::invalid_argument);
  BOOST_CHECK_MESSAGE(contains(context_of(refused.error()), "call payload of"),
                      describe(refused.error()));
  BOOST_CHECK_EQUAL(small->counters().connects, 0u);

  // A reply above the default client's 1 MiB limit fails that call alone: the frame is skipped
  // and the same connection answers the next call.
  uint32_t two_mib = 2 << 20;
  bytes ask(4);
  std::memcpy(ask.data(), &two_mib, 4);
  auto oversized = small->call("127.0.0.1", server.port(), sized_reply, ask, 10s);
  BOOST_REQUIRE(!oversized);
  BOOST_CHECK(code_of(oversized.error()) == errc::malformed_frame);
  BOOST_CHECK_MESSAGE(contains(context_of(oversized.error()), "above this client's limit"),
                      describe(oversized.error()));
  auto after = small->call("127.0.0.1", server.port(), echo, text("after"), 10s);
  BOOST_CHECK_MESSAGE(after, why(after));
  BOOST_CHECK_EQUAL(small->counters().connects, 1u);

  // A client configured for the master's limits sends 3 MiB and receives 12 MiB.
  control::client_options store_client;
  store_client.max_request_frame = 4 << 20;
  store_client.max_reply_frame = 16 << 20;
  auto large = start_client(store_client);
  auto sent = pattern(3 * one_mib, 5);
  auto echoed = large->call("127.0.0.1", server.port(), echo, sent, 20s);
  BOOST_REQUIRE_MESSAGE(echoed, why(echoed));
  BOOST_CHECK_EQUAL(echoed->size(), sent.size() + 2);
  BOOST_CHECK(std::equal(sent.begin(), sent.end(), echoed->begin()));
  uint32_t twelve_mib = 12 << 20;
  std::memcpy(ask.data(), &twelve_mib, 4);
  auto large_reply = large->call("127.0.0.1", server.port(), sized_reply, ask, 20s);
  BOOST_REQUIRE_MESSAGE(large_reply, why(large_reply));
  BOOST_CHECK(*large_reply == pattern(12 << 20, 7));

  // A reply above the server's own reply limit becomes an error reply.
  uint32_t too_much = 17 << 20;
  std::memcpy(ask.data(), &too_much, 4);
  auto unsendable = large->call("127.0.0.1", server.port(), sized_reply, ask, 20s);
  BOOST_REQUIRE(!unsendable);
  BOOST_CHECK(code_of(unsendable.error()) == errc::not_supported);
  BOOST_CHECK_MESSAGE(contains(context_of(unsendable.error()), "cannot be sent"),
                      describe(unsendable.error()));

  // A default server closes a connection whose request frame exceeds its limit; the requests on
  // it fail, a new connection serves again.
  call_server plain;
  auto bad = large->call("127.0.0.1", plain.port(), echo, bytes(one_mib, 2), 10s);
  BOOST_REQUIRE(!bad);
  BOOST_CHECK(code_of(bad.error()) == errc::peer_unreachable);
  auto fine = large->call("127.0.0.1", plain.port(), echo, text("fine"), 10s);
  BOOST_CHECK_MESSAGE(fine, why(fine));

  // memory_bound counts each connection's largest request.
  control::server_options d;
  BOOST_CHECK_EQUAL(control::memory_bound(d),
                    d.limits.max_connections
                        * (control::control_connection_overhead + control::max_request_frame)
                      + d.reply_budget);
  BOOST_CHECK_EQUAL(control::memory_bound(big) - control::memory_bound(d),
                    big.limits.max_connections * ((4u << 20) - control::max_request_frame)
                      + (big.reply_budget - d.reply_budget));
}

BOOST_AUTO_TEST_CASE(start_refuses_limits_that_cannot_work) {
  control::server_options tiny_reply;
  tiny_reply.max_reply_frame = 100;
  auto s1 = control::server::start(tiny_reply, {});
  BOOST_REQUIRE(!s1);
  BOOST_CHECK(code_of(s1.error()) == errc::invalid_argument);
  control::server_options small_budget;
  small_budget.max_request_frame = 4 << 20;
  small_budget.max_reply_frame = 16 << 20;
  small_budget.reply_budget = 8 << 20;
  auto s2 = control::server::start(small_budget, {});
  BOOST_REQUIRE(!s2);
  BOOST_CHECK_MESSAGE(contains(context_of(s2.error()), "reply_budget"), describe(s2.error()));
  control::client_options tiny_client;
  tiny_client.max_reply_frame = 64;
  auto c = control::client::start("tiny", tiny_client);
  BOOST_REQUIRE(!c);
  BOOST_CHECK(code_of(c.error()) == errc::invalid_argument);
}

BOOST_AUTO_TEST_CASE(the_server_keeps_serving_after_a_malformed_call_frame) {
  call_server server;
  raw_peer peer(server.port());

  // A call whose payload length runs past the end of its frame.
  auto frame = control::encode(call_request(77, echo, text("abcd")), control::max_request_frame);
  BOOST_REQUIRE(frame);
  const uint32_t claimed = 40;
  std::memcpy(frame->data() + control::header_size + 2, &claimed, 4);
  peer.send_frame(*frame);
  auto answer = control::decode(peer.read_frame());
  BOOST_REQUIRE_MESSAGE(answer, why(answer));
  BOOST_CHECK_EQUAL(answer->id, 77u);
  BOOST_CHECK(answer->operation == control::op::call);
  BOOST_CHECK(answer->status == errc::malformed_frame);
  BOOST_CHECK_MESSAGE(contains(answer->reason, "call payload"), answer->reason);

  // A call frame cut short (its body length does not match), then a request with a bad op.
  auto cut = *control::encode(call_request(78, echo, text("abcd")), control::max_request_frame);
  cut.pop_back();
  peer.send_frame(cut);
  auto cut_answer = control::decode(peer.read_frame());
  BOOST_REQUIRE_MESSAGE(cut_answer, why(cut_answer));
  BOOST_CHECK(cut_answer->id == 78 && cut_answer->status == errc::malformed_frame);
  auto bad_op = *control::encode(call_request(79, echo, {}), control::max_request_frame);
  bad_op[7] = 9;
  peer.send_frame(bad_op);
  auto bad_op_answer = control::decode(peer.read_frame());
  BOOST_REQUIRE_MESSAGE(bad_op_answer, why(bad_op_answer));
  BOOST_CHECK(bad_op_answer->id == 79 && bad_op_answer->status == errc::malformed_frame);

  // The same connection still serves a good call, and so does a new client.
  peer.send_frame(*control::encode(call_request(80, echo, text("ok")), control::max_request_frame));
  auto good = control::decode(peer.read_frame());
  BOOST_REQUIRE_MESSAGE(good, why(good));
  BOOST_CHECK(good->id == 80 && good->status == errc::none);
  BOOST_CHECK(good->payload == (bytes{'o', 'k', echo, 0}));
  auto client = start_client();
  auto reply = client->call("127.0.0.1", server.port(), echo, text("new"), 10s);
  BOOST_CHECK_MESSAGE(reply, why(reply));
  BOOST_CHECK_EQUAL(server.server->counters().malformed, 3u);
  BOOST_CHECK_EQUAL(server.calls.load(), 2u);
}

BOOST_AUTO_TEST_CASE(done_answers_once) {
  call_server server;
  auto client = start_client();
  // A second answer is ignored.
  auto first = client->call("127.0.0.1", server.port(), twice, {}, 10s);
  BOOST_REQUIRE_MESSAGE(first, why(first));
  BOOST_CHECK(*first == text("first"));
  // A handler that drops `done` unanswered still gets an answer sent.
  auto dropped = client->call("127.0.0.1", server.port(), drop, {}, 10s);
  BOOST_REQUIRE(!dropped);
  BOOST_CHECK(code_of(dropped.error()) == errc::transport_failure);
  BOOST_CHECK_MESSAGE(contains(context_of(dropped.error()), "without answering"),
                      describe(dropped.error()));
  // Neither left a request pending on the connection: 16 held calls (the per-connection bound)
  // are still taken.
  auto arrived = server.expect_held(16);
  std::atomic<int> answered{0};
  for (int i = 0; i < 16; ++i)
    client->call("127.0.0.1", server.port(), hold, {}, 20s,
                 [&](caf::expected<bytes> r) { answered += r ? 1 : 0; });
  BOOST_REQUIRE(arrived.wait_for(10s) == std::future_status::ready);
  server.release({});
  BOOST_CHECK(eventually([&] { return answered.load() == 16; }));
}

BOOST_AUTO_TEST_CASE(a_held_call_counts_against_the_reply_budget) {
  call_server server;
  auto client = start_client();
  auto arrived = server.expect_held(1);
  std::promise<caf::expected<bytes>> result;
  client->call("127.0.0.1", server.port(), hold, bytes(50000, 4), 20s,
               [&](caf::expected<bytes> r) { result.set_value(std::move(r)); });
  BOOST_REQUIRE(arrived.wait_for(10s) == std::future_status::ready);
  BOOST_CHECK_GE(server.server->counters().connections.budget_in_use, 50000u);
  server.release(text("done"));
  auto r = result.get_future().get();
  BOOST_REQUIRE_MESSAGE(r, why(r));
  BOOST_CHECK(eventually([&] { return server.server->counters().connections.budget_in_use == 0; }));
}
