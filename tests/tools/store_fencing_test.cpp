#define BOOST_TEST_MODULE store_fencing_test
#include <boost/test/unit_test.hpp>

// The store's acceptance tests, part 3 (item 7): a put whose WRITE is delayed at the target past
// the put's revocation cannot corrupt the object that reuses its space. Real processes on
// loopback: a `kvferry master` child and one `kvferry store-node` child whose segment fits
// exactly one value, so that the new object is allocated at the revoked put's address.
//
// This process plays the slow client with the raw protocol (the store's messages through a
// control client; the data plane's frames through a hand-made ZMTP connection), so it knows the
// allocation's address and fence token, and decides when each byte of its WRITE leaves.
//
// Usage: store_fencing_test [boost test options] -- /path/to/kvferry

#include "tests/support/store_rig.hpp"
#include "transport/control/client.hpp"
#include "transport/tcp/wire.hpp"

using namespace kvferry;
using namespace kvferry::test::rig;
using kvferry::test::value_for;

BOOST_TEST_GLOBAL_FIXTURE(quiet_logs);

namespace {

/// The two frames of a data-plane WRITE request (header frame, then data frame) for `length`
/// bytes at `addr` with fence token `token`; the data frame carries `body` (all of it or less).
std::vector<uint8_t> write_request(uint64_t id, uint64_t addr, uint64_t length, uint64_t token,
                                   const uint8_t* body, size_t body_bytes) {
  transport::wire::request_header h;
  h.op = transport::wire::frame_op::write;
  h.id = id;
  h.incarnation = 0; // any
  h.remote_addr = addr;
  h.length = length;
  h.token = token;
  std::vector<uint8_t> header(transport::wire::request_header_size);
  transport::wire::encode(h, header.data());
  auto out = raw_zmtp::frame(header, true);
  std::vector<uint8_t> data_header(9);
  data_header.resize(transport::zmtp::encode_frame_header(data_header.data(), length, false));
  out.insert(out.end(), data_header.begin(), data_header.end());
  out.insert(out.end(), body, body + body_bytes);
  return out;
}

} // namespace

BOOST_AUTO_TEST_CASE(a_write_delayed_past_its_revocation_cannot_corrupt_the_object_that_reuses_its_space) {
  master_flags flags;
  flags.put_timeout_ms = 5000; // the slow put is revoked after this
  flags.ttl_ms = 60000;        // ...and not because the slow client (it never watches) died
  flags.high_watermark = 1.0;  // a full segment is not a reason to evict
  const size_t size = MiB;
  store_cluster cluster(flags, 1, size);
  const auto& holder = cluster.nodes[0];
  auto c = cluster.client(20s, 4 * MiB);
  raw_master raw(cluster.master.port());

  // The holder's data port, from its descriptor (as any peer learns it).
  auto control = transport::control::client::start("fencing test");
  BOOST_REQUIRE(control);
  auto desc = (*control)->describe("127.0.0.1", holder.rpc_port(), 10s);
  BOOST_REQUIRE_MESSAGE(desc, why(desc));
  const uint16_t data_port = data_port_of(*desc);
  // A peer that reads and writes the holder's memory directly, with whatever token it is given.
  initiator reader(2 * MiB, initiator_settings(10s, 1));
  const auto seg = reader.open(holder.name);

  // The slow client: mounted without a segment, it starts a put and learns where to WRITE.
  const auto slow = raw.mount("slow-writer");
  auto slot = raw.put_start(slow, "victim", size);
  BOOST_REQUIRE_MESSAGE(slot.result.code == errc::none, slot.result.reason);
  BOOST_REQUIRE_EQUAL(slot.replicas.size(), 1u);
  const auto old = slot.replicas[0];
  BOOST_REQUIRE_EQUAL(old.segment, holder.name);

  // Its WRITE: the header and half of the body, then nothing. The holder admits it (the token is
  // above the range's floor) and puts the bytes in place as they arrive.
  const auto stale = value_for("victim", size);
  const size_t half = size / 2;
  raw_zmtp late(data_port);
  BOOST_REQUIRE(late.hello());
  BOOST_REQUIRE(late.send(write_request(1, old.addr, size, old.token, stale.data(), half)));
  auto read_back = [&](uint64_t token, size_t length) {
    std::memset(reader.local.data, 0, length);
    return run_one(*reader.engine, {opcode::read, reader.local.data, seg, old.addr, length, token});
  };
  BOOST_REQUIRE_MESSAGE(poll_until([&] {
                          auto st = read_back(old.token, half);
                          return st.state == task_state::completed
                                 && std::memcmp(reader.local.data, stale.data(), half) == 0;
                        }),
                        "the first half of the slow WRITE never landed");

  // The master revokes the put at its timeout; the holder fences the range, which cuts the
  // connection whose WRITE is still arriving, and the space returns.
  BOOST_REQUIRE_MESSAGE(late.closed_by_peer(60s),
                        "the holder kept the connection of a WRITE to a fenced range open");
  master_report r;
  BOOST_REQUIRE_MESSAGE(poll_until([&] {
                          r = report(*c);
                          return r.puts_in_progress == 0 && r.used == 0 && r.fencing == 0;
                        }),
                        "the revoked put's space did not return: " << r.json);
  BOOST_CHECK_EQUAL(r.counters["puts_timed_out"], 1u);
  auto ended = raw.put_end(slow, "victim", slot.put_id);
  BOOST_CHECK_MESSAGE(ended.code == errc::object_not_found && contains(ended.reason, "revoked"),
                      "put_end of the revoked put: " << to_string(ended.code) << ": " << ended.reason);
  auto victim = c->exists("victim");
  BOOST_REQUIRE(victim);
  BOOST_CHECK(!*victim);

  // A new object takes the same space, under a newer token.
  BOOST_REQUIRE(!c->put("fresh", value_for("fresh", size)));
  auto now = raw.locate(c->client_id(), "fresh");
  BOOST_REQUIRE_EQUAL(now.replicas.size(), 1u);
  BOOST_REQUIRE_MESSAGE(now.replicas[0].addr == old.addr,
                        "the new object is elsewhere: the test needs it in the old space");
  BOOST_CHECK_GT(now.replicas[0].token, old.token);

  // The late WRITE goes on: the rest of its body (its connection is gone: nowhere to land)...
  (void) late.send(std::vector<uint8_t>(stale.begin() + static_cast<long>(half), stale.end()));
  // ... a whole WRITE with the old token from a transfer engine: refused as fenced...
  std::memcpy(reader.local.data, stale.data(), size);
  auto st = run_one(*reader.engine, {opcode::write, reader.local.data, seg, old.addr, size, old.token});
  BOOST_CHECK_MESSAGE(st.state == task_state::failed && st.code == errc::fenced, show(st));
  // ... and the same on a raw connection, answered by id with errc::fenced.
  raw_zmtp again(data_port);
  BOOST_REQUIRE(again.hello());
  BOOST_REQUIRE(again.send(write_request(2, old.addr, size, old.token, stale.data(), size)));
  auto reply = again.next_frame(30s);
  BOOST_REQUIRE_MESSAGE(reply, "no reply to a WRITE with the old token");
  transport::wire::reply_header answer;
  transport::wire::decode_error bad{};
  BOOST_REQUIRE(transport::wire::decode(reply->data(), reply->size(), answer, bad));
  BOOST_CHECK_EQUAL(answer.id, 2u);
  BOOST_CHECK_MESSAGE(answer.status == errc::fenced, to_string(answer.status));
  // A late READ with the old token does not see the new object either.
  auto peek = read_back(old.token, size);
  BOOST_CHECK_MESSAGE(peek.state == task_state::failed && peek.code == errc::fenced, show(peek));

  // The new object, byte for byte, through the store and straight from the holder's memory.
  require_value(*c, "fresh", size, "after the late WRITEs");
  auto direct = read_back(now.replicas[0].token, size);
  BOOST_REQUIRE_MESSAGE(direct.state == task_state::completed, show(direct));
  BOOST_CHECK(test::first_wrong_byte("fresh", std::vector<uint8_t>(reader.local.data,
                                                                   reader.local.data + size))
              == size);
}
