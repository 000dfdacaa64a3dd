#define BOOST_TEST_MODULE fence_test
#include <boost/test/unit_test.hpp>

// Fenced regions end to end (memory/fence_map.hpp, region_registry::fence): a holder engine
// registers a fenced region; every READ and WRITE to it carries a fence token, admitted only above
// the floor of its whole range; fence() raises a floor and returns once no older access to the
// range is in progress anywhere.
//   - TCP: the holder is an engine on its own networked runtime in this process (so the test can
//     call fence() and look at its memory), the initiator an engine on another runtime: their
//     bytes cross loopback TCP through the holder's data-plane server, as between two nodes.
//     Raw ZMTP peers play initiators caught in the middle of a WRITE, or holding READ replies.
//   - Same process: two engines on one runtime (the memcpy path).
// A refused access leaves the target's memory (WRITE) and the local buffer (READ) untouched, ends
// FAILED with errc::fenced and is never retried.

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>

#include "tests/support/node_rig.hpp"
#include "transport/tcp/wire.hpp"

using namespace kvferry;
using namespace kvferry::test::rig;
using kvferry::test::eventually;

namespace {

struct quiet_logs {
  quiet_logs() { log::set_level("error"); }
};

constexpr uint64_t holder_bytes = 32 * MiB;
constexpr uint64_t fill_seed = 0xfe9ce001;

/// An engine with one fenced region (filled with fill_seed's pattern), on a networked runtime of
/// its own.
struct holder {
  holder() : memory(holder_bytes) {
    tools::fill_pattern(memory.data, memory.size, fill_seed);
    auto r = runtime::create({.network = true});
    BOOST_REQUIRE_MESSAGE(r, why(r));
    rt = *r;
    auto e = transfer_engine::create(rt, initiator_settings(30s));
    BOOST_REQUIRE_MESSAGE(e, why(e));
    engine = std::move(*e);
    auto err = engine->register_memory(memory.data, memory.size, "cpu:0", /*fenced=*/true);
    BOOST_REQUIRE_MESSAGE(!err, describe(err));
  }
  ~holder() {
    if (engine)
      engine->shutdown();
    engine.reset();
    rt.reset();
  }
  [[nodiscard]] uint64_t base() const { return reinterpret_cast<uint64_t>(memory.data); }
  /// Raises the floor of [offset, offset+length) of the region.
  void fence(uint64_t offset, uint64_t length, uint64_t floor) {
    auto err = engine->fence(memory.data, base() + offset, length, floor);
    BOOST_REQUIRE_MESSAGE(!err, "fence: " << describe(err));
  }
  /// Index of the first byte of [offset, offset+length) that no longer holds the fill pattern.
  [[nodiscard]] size_t untouched(uint64_t offset, uint64_t length) const {
    return tools::check_pattern(memory.data + offset, length, fill_seed, offset);
  }

  mapped memory;
  std::shared_ptr<runtime> rt;
  std::unique_ptr<transfer_engine> engine;
};

transfer_request with_token(transfer_request rq, uint64_t token) {
  rq.fence_token = token;
  return rq;
}

void require_fenced(const transfer_status& st, const std::string& what) {
  BOOST_REQUIRE_MESSAGE(st.state == task_state::failed && st.code == errc::fenced,
                        what << ": expected FAILED (fenced), got " << show(st));
}

void require_done(const transfer_status& st, uint64_t bytes, const std::string& what) {
  BOOST_REQUIRE_MESSAGE(st.state == task_state::completed && st.transferred_bytes == bytes,
                        what << ": " << show(st));
}

/// A plain TCP connection to the holder's data port that has done the ZMTP handshake as a DEALER.
struct raw_peer {
  explicit raw_peer(uint16_t port) : fd(kvferry::test::connect_loopback(port)) {
    BOOST_REQUIRE(fd >= 0);
    send_all(concat({zmtp_greeting(), zmtp_ready_dealer()}));
  }
  ~raw_peer() {
    if (fd >= 0)
      ::close(fd);
  }
  /// Sends everything; false once the holder closed the connection.
  bool send_all(const std::vector<uint8_t>& bytes) {
    size_t sent = 0;
    while (sent < bytes.size()) {
      auto n = ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n <= 0)
        return false;
      sent += static_cast<size_t>(n);
    }
    return true;
  }
  /// Waits (up to 20 s) for the holder's next reply message and returns its first entry: skips
  /// the holder's greeting and commands, and any data frame of a reply.
  std::optional<transport::wire::reply_header> next_reply() {
    auto until = steady::now() + 20s;
    auto need = [&](size_t n) {
      while (in.size() < n) {
        pollfd p{fd, POLLIN, 0};
        if (steady::now() > until || ::poll(&p, 1, 100) < 0)
          return false;
        uint8_t chunk[65536];
        auto got = ::recv(fd, chunk, sizeof(chunk), MSG_DONTWAIT);
        if (got == 0 || (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
          return false;
        if (got > 0)
          in.insert(in.end(), chunk, chunk + got);
      }
      return true;
    };
    if (!greeted) {
      if (!need(64))
        return std::nullopt;
      in.erase(in.begin(), in.begin() + 64);
      greeted = true;
    }
    for (;;) {
      if (!need(2))
        return std::nullopt;
      const uint8_t flags = in[0];
      size_t header = 2;
      uint64_t size = in[1];
      if (flags & 0x02) {
        if (!need(9))
          return std::nullopt;
        header = 9;
        size = 0;
        for (size_t i = 1; i < 9; ++i)
          size = size << 8 | in[i];
      }
      if (!need(header + size))
        return std::nullopt;
      std::vector<uint8_t> body(in.begin() + header, in.begin() + header + size);
      in.erase(in.begin(), in.begin() + header + size);
      const bool command = flags & 0x04, more = flags & 0x01;
      if (command)
        continue;
      if (in_reply) { // a data frame of the reply
        in_reply = more;
        continue;
      }
      in_reply = more;
      transport::wire::reply_header r;
      transport::wire::decode_error err{};
      if (body.size() < transport::wire::reply_header_size
          || !transport::wire::decode(body.data(), transport::wire::reply_header_size, r, err))
        return std::nullopt;
      return r;
    }
  }
  /// Reads what is there; true once the holder closed the connection (EOF or reset).
  bool closed_by_holder() {
    char sink[65536];
    for (;;) {
      auto n = ::recv(fd, sink, sizeof(sink), MSG_DONTWAIT);
      if (n == 0)
        return true;
      if (n < 0)
        return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
    }
  }
  int fd;
  std::vector<uint8_t> in;
  bool greeted = false;
  bool in_reply = false;
};

/// One request header frame (ZMTP short frame, MORE when a data frame follows).
std::vector<uint8_t> header_frame(transport::wire::frame_op op, uint64_t id, uint64_t addr,
                                  uint64_t length, uint64_t token, bool more) {
  transport::wire::request_header h;
  h.op = op;
  h.id = id;
  h.remote_addr = addr;
  h.length = length;
  h.token = token;
  std::vector<uint8_t> frame{static_cast<uint8_t>(more ? 0x01 : 0x00),
                             static_cast<uint8_t>(transport::wire::request_header_size)};
  frame.resize(2 + transport::wire::request_header_size);
  transport::wire::encode(h, frame.data() + 2);
  return frame;
}

/// The header of a last (long) frame of `size` bytes.
std::vector<uint8_t> long_frame_header(uint64_t size) {
  std::vector<uint8_t> h{0x02};
  for (int shift = 56; shift >= 0; shift -= 8)
    h.push_back(static_cast<uint8_t>(size >> shift));
  return h;
}

} // namespace

BOOST_TEST_GLOBAL_FIXTURE(quiet_logs);

BOOST_AUTO_TEST_CASE(tcp_a_fenced_region_admits_only_tokens_above_the_floor) {
  holder h;
  initiator in(8 * MiB, initiator_settings(30s));
  auto seg = in.open(h.engine->segment_name());
  BOOST_REQUIRE_EQUAL(in.remote_base, h.base());
  const uint64_t base = h.base();
  const uint64_t write_seed = 0x771e0f01;
  tools::fill_pattern(in.local.data, 4 * MiB, write_seed);
  const auto before = stats_of(*in.engine);

  // No token: refused, whatever the floor.
  require_fenced(run_one(*in.engine, {opcode::write, in.local.data, seg, base, 4096}),
                 "WRITE without a token");
  BOOST_CHECK_EQUAL(h.untouched(0, 4096), 4096u);
  // Every floor is 0: any token is admitted (2 MiB: two slices).
  require_done(run_one(*in.engine, with_token({opcode::write, in.local.data, seg, base, 2 * MiB}, 5)),
               2 * MiB, "WRITE with token 5 before any fence");
  BOOST_CHECK_EQUAL(tools::check_pattern(h.memory.data, 2 * MiB, write_seed), 2 * MiB);

  // The allocation with token 5 is freed: the floor of its 2 MiB rises to 5, and the space is
  // reused.
  h.fence(0, 2 * MiB, 5);
  tools::fill_pattern(h.memory.data, 2 * MiB, fill_seed);
  for (uint64_t token : {1ULL, 4ULL, 5ULL}) {
    const auto t = std::to_string(token);
    require_fenced(run_one(*in.engine, with_token({opcode::write, in.local.data, seg, base + 1, MiB}, token)),
                   "late WRITE with token " + t);
    require_fenced(run_one(*in.engine, with_token({opcode::write, in.local.data, seg, base, 2 * MiB}, token)),
                   "late 2 MiB WRITE (two slices) with token " + t);
    std::memset(in.second.data, 0xa5, MiB);
    require_fenced(run_one(*in.engine, with_token({opcode::read, in.second.data, seg, base + 100, 4096}, token)),
                   "late READ with token " + t);
    require_fenced(run_one(*in.engine, with_token({opcode::read, in.second.data, seg, base, MiB}, token)),
                   "late 1 MiB READ with token " + t);
    BOOST_CHECK_MESSAGE(std::all_of(in.second.data, in.second.data + MiB,
                                    [](uint8_t b) { return b == 0xa5; }),
                        "a refused READ wrote local memory");
  }
  BOOST_CHECK_EQUAL(h.untouched(0, 3 * MiB), 3 * MiB);
  // A range that reaches the fenced one by one byte is refused; one just past it is not.
  require_fenced(run_one(*in.engine, with_token({opcode::read, in.second.data, seg, base + 2 * MiB - 1, 2}, 1)),
                 "READ over the fenced range's last byte");
  require_done(run_one(*in.engine, with_token({opcode::read, in.second.data, seg, base + 2 * MiB, 4096}, 1)),
               4096, "READ just past the fenced range");
  BOOST_CHECK_EQUAL(tools::check_pattern(in.second.data, 4096, fill_seed, 2 * MiB), 4096u);

  // The new allocation's token (6) is above the floor: READ and WRITE work.
  require_done(run_one(*in.engine, with_token({opcode::write, in.local.data + 7, seg, base + 3, 70000}, 6)),
               70000, "WRITE with token 6");
  BOOST_CHECK_EQUAL(tools::check_pattern(h.memory.data + 3, 70000, write_seed, 7), 70000u);
  BOOST_CHECK_EQUAL(h.untouched(0, 3), 3u);
  BOOST_CHECK_EQUAL(h.untouched(70003, 1), 1u);
  require_done(run_one(*in.engine, with_token({opcode::read, in.second.data, seg, base + 3, 70000}, 6)),
               70000, "READ with token 6");
  BOOST_CHECK_EQUAL(tools::check_pattern(in.second.data, 70000, write_seed, 7), 70000u);

  // Small slices travel many to a frame: each entry is judged on its own token.
  std::vector<transfer_request> mixed{
    with_token({opcode::read, in.second.data, seg, base + 2 * MiB + 4096, 512}, 1),       // unfenced range
    with_token({opcode::read, in.second.data + 4096, seg, base + MiB, 512}, 5),           // late
    with_token({opcode::write, in.local.data, seg, base + 3 * MiB, 512}, 0),              // no token
    with_token({opcode::write, in.local.data + 4096, seg, base + MiB + 8192, 512}, 7),    // new allocation
    with_token({opcode::write, in.local.data + 8192, seg, base + MiB + 24576, 512}, 2)};  // late
  auto sts = run_batch(*in.engine, mixed);
  require_done(sts[0], 512, "batched READ outside the fenced range");
  require_fenced(sts[1], "batched late READ");
  require_fenced(sts[2], "batched WRITE without a token");
  require_done(sts[3], 512, "batched WRITE with token 7");
  require_fenced(sts[4], "batched late WRITE");
  BOOST_CHECK_EQUAL(tools::check_pattern(h.memory.data + MiB + 8192, 512, write_seed, 4096), 512u);
  BOOST_CHECK_EQUAL(h.untouched(3 * MiB, 512), 512u);
  BOOST_CHECK_EQUAL(h.untouched(MiB + 24576, 512), 512u);

  // Fenced is final: no refused slice was retried, and the reason says why.
  const auto after = stats_of(*in.engine);
  BOOST_CHECK_EQUAL(after.slices_retried, before.slices_retried);
  auto st = run_one(*in.engine, with_token({opcode::write, in.local.data, seg, base, 64}, 5));
  require_fenced(st, "late WRITE, once more");
  BOOST_CHECK_MESSAGE(contains(st.reason, "fence token 5"), st.reason);
  BOOST_CHECK_MESSAGE(contains(st.reason, "1 attempt"), st.reason);
}

BOOST_AUTO_TEST_CASE(tcp_a_write_in_progress_is_cut_off_by_a_fence_and_its_rest_never_lands) {
  holder h;
  initiator in(2 * MiB, initiator_settings(30s));
  auto seg = in.open(h.engine->segment_name());
  const uint64_t base = h.base();
  const uint64_t offset = 2 * MiB, length = MiB, half = length / 2;
  const uint64_t late_seed = 0x1a7e0001;
  std::vector<uint8_t> body(length);
  tools::fill_pattern(body.data(), length, late_seed);

  // A peer admitted with token 10 (every floor is 0) sends the WRITE's header and half its bytes.
  raw_peer peer(data_port_of(in.descriptor));
  BOOST_REQUIRE(peer.send_all(concat({header_frame(transport::wire::frame_op::write, 1, base + offset,
                                                   length, 10, true),
                                      long_frame_header(length)})));
  BOOST_REQUIRE(peer.send_all(std::vector<uint8_t>(body.begin(), body.begin() + half)));
  // They go straight into the holder's memory as they arrive.
  BOOST_REQUIRE_MESSAGE(eventually([&] {
                          return tools::check_pattern(h.memory.data + offset, half, late_seed) == half;
                        }),
                        "the first half of the WRITE never landed");

  // The allocation it aims at is freed: a fence of a part of its range (token 10 is now too old)
  // cuts the connection off before it returns.
  h.fence(offset + half + 4096, 4096, 10);
  BOOST_CHECK_MESSAGE(eventually([&] { return peer.closed_by_holder(); }),
                      "the holder did not close the connection of the WRITE in progress");
  (void) peer.send_all(std::vector<uint8_t>(body.begin() + half, body.end()));
  // A round trip through the holder's server thread (it serves every connection in turn): had the
  // cut-off connection still been read, its bytes would be in place now.
  require_done(run_one(*in.engine, with_token({opcode::read, in.local.data, seg, base + offset, length}, 11)),
               length, "READ after the fence");
  BOOST_CHECK_EQUAL(tools::check_pattern(in.local.data, half, late_seed), half);
  BOOST_CHECK_MESSAGE(h.untouched(offset + half, half) == half,
                      "byte " << h.untouched(offset + half, half)
                              << " of the WRITE's second half landed after the fence");
  BOOST_CHECK_EQUAL(h.untouched(offset + half, half), half);
  // A new connection with the same token is refused at once, and its bytes go nowhere.
  raw_peer again(data_port_of(in.descriptor));
  BOOST_REQUIRE(again.send_all(concat({header_frame(transport::wire::frame_op::write, 2,
                                                    base + offset + half + 4096, 16, 10, true),
                                       {0x00, 16}, std::vector<uint8_t>(16, 0x5a)})));
  auto reply = again.next_reply();
  BOOST_REQUIRE_MESSAGE(reply, "no reply to the late WRITE");
  BOOST_CHECK_EQUAL(reply->id, 2u);
  BOOST_CHECK_MESSAGE(reply->status == errc::fenced, "late WRITE answered " << to_string(reply->status));
  BOOST_CHECK_EQUAL(h.untouched(offset + half + 4096, 16), 16u);
}

BOOST_AUTO_TEST_CASE(tcp_read_replies_still_to_leave_are_cut_off_by_a_fence) {
  holder h;
  initiator in(MiB, initiator_settings(30s));
  auto seg = in.open(h.engine->segment_name());
  const uint64_t base = h.base();
  // A peer asks for 24 MiB of READs with token 3 and never reads a byte back: the kernel's buffers
  // take a few MiB, the rest of its replies wait, pointing into the holder's memory.
  raw_peer peer(data_port_of(in.descriptor));
  const auto reads_before = h.engine->server_counters().reads;
  for (uint64_t i = 0; i < 24; ++i)
    BOOST_REQUIRE(peer.send_all(header_frame(transport::wire::frame_op::read, i + 1,
                                             base + 8 * MiB + i * MiB, MiB, 3, false)));
  BOOST_REQUIRE(eventually([&] { return h.engine->server_counters().reads >= reads_before + 24; }));
  // Fencing a range the last reply reads closes the connection (a READ with token 3 must not read
  // what reuses the space) and does not wait for the peer.
  auto started = steady::now();
  h.fence(31 * MiB + 100, 100, 3);
  BOOST_TEST_MESSAGE("fence with unread READ replies took "
                     << std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - started).count()
                     << " ms");
  BOOST_CHECK_MESSAGE(eventually([&] { return peer.closed_by_holder(); }),
                      "the holder did not close the connection with READ replies of a fenced range");
  // The holder serves on.
  require_done(run_one(*in.engine, with_token({opcode::read, in.local.data, seg, base + 31 * MiB, 4096}, 4)),
               4096, "READ with a newer token");
  BOOST_CHECK_EQUAL(tools::check_pattern(in.local.data, 4096, fill_seed, 31 * MiB), 4096u);
}

BOOST_AUTO_TEST_CASE(same_process_copies_check_the_token) {
  mapped target(4 * MiB), local(4 * MiB);
  tools::fill_pattern(target.data, target.size, fill_seed);
  auto r = runtime::create({});
  BOOST_REQUIRE(r);
  auto rt = *r;
  auto settings = initiator_settings(30s);
  engine_options holder_options, client_options;
  holder_options.segment_name = "holder";
  client_options.segment_name = "client";
  auto hold = transfer_engine::create(rt, settings, holder_options);
  auto client = transfer_engine::create(rt, settings, client_options);
  BOOST_REQUIRE_MESSAGE(hold && client, why(hold) << " / " << why(client));
  BOOST_REQUIRE(!(*hold)->register_memory(target.data, target.size, "cpu:0", true));
  BOOST_REQUIRE(!(*client)->register_memory(local.data, local.size));
  auto seg = (*client)->open_segment("holder");
  BOOST_REQUIRE_MESSAGE(seg, why(seg));
  auto& engine = **client;
  const uint64_t base = reinterpret_cast<uint64_t>(target.data);
  const uint64_t write_seed = 0x771e0f02;
  tools::fill_pattern(local.data, MiB, write_seed);
  const auto before = stats_of(engine);

  require_fenced(run_one(engine, {opcode::write, local.data, *seg, base, 4096}), "local WRITE without a token");
  BOOST_CHECK_EQUAL(tools::check_pattern(target.data, 4096, fill_seed), 4096u);
  require_done(run_one(engine, with_token({opcode::write, local.data, *seg, base, 4096}, 3)), 4096,
               "local WRITE with token 3");
  BOOST_CHECK_EQUAL(tools::check_pattern(target.data, 4096, write_seed), 4096u);

  auto err = (*hold)->fence(target.data, base, MiB, 3);
  BOOST_REQUIRE_MESSAGE(!err, describe(err));
  tools::fill_pattern(target.data, MiB, fill_seed);
  require_fenced(run_one(engine, with_token({opcode::write, local.data, *seg, base, MiB}, 3)),
                 "late local WRITE (16 slices)");
  BOOST_CHECK_EQUAL(tools::check_pattern(target.data, 2 * MiB, fill_seed), 2 * MiB);
  std::memset(local.data + 2 * MiB, 0xa5, 4096);
  require_fenced(run_one(engine, with_token({opcode::read, local.data + 2 * MiB, *seg, base + 5, 4096}, 2)),
                 "late local READ");
  BOOST_CHECK(std::all_of(local.data + 2 * MiB, local.data + 2 * MiB + 4096,
                          [](uint8_t b) { return b == 0xa5; }));
  require_done(run_one(engine, with_token({opcode::read, local.data + 2 * MiB, *seg, base + 5, 4096}, 4)),
               4096, "local READ with token 4");
  BOOST_CHECK_EQUAL(tools::check_pattern(local.data + 2 * MiB, 4096, fill_seed, 5), 4096u);
  require_done(run_one(engine, with_token({opcode::read, local.data, *seg, base + 3 * MiB, 4096}, 1)),
               4096, "local READ outside the fenced range");
  BOOST_CHECK_EQUAL(stats_of(engine).slices_retried, before.slices_retried);

  // The API's refusals.
  auto unknown = (*hold)->fence(target.data + 1, base + 1, 16, 9);
  BOOST_CHECK_MESSAGE(code_of(unknown) == errc::unknown_region, describe(unknown));
  auto unfenced = (*client)->fence(local.data, reinterpret_cast<uint64_t>(local.data), 16, 9);
  BOOST_CHECK_MESSAGE(code_of(unfenced) == errc::invalid_argument, describe(unfenced));
  auto outside = (*hold)->fence(target.data, base + target.size - 8, 16, 9);
  BOOST_CHECK_MESSAGE(code_of(outside) == errc::invalid_argument, describe(outside));
  (*client)->shutdown();
  (*hold)->shutdown();
  auto stopped = (*hold)->fence(target.data, base, 16, 9);
  BOOST_CHECK_MESSAGE(code_of(stopped) == errc::shutting_down, describe(stopped));
}
