#define BOOST_TEST_MODULE hostile_peers_test
#include <boost/test/unit_test.hpp>

// A `kvferry node` attacked on its ports (issue 6, items 0 and 2): whatever peers send, and
// however they connect or fail to read, the node never exits, stays within the memory bound it
// prints at start (plus a documented constant), and keeps serving legitimate peers.
//
// Each attack has its own case; the last case runs all of them at once for a while (60 s by
// default; KVFERRY_HOSTILE_SECONDS changes it) while sampling the node's resident memory, then
// runs `kvferry bench` write / read / write with --verify against the node.
//
// Usage: hostile_peers_test [boost test options] -- /path/to/kvferry

#include <atomic>
#include <cstdlib>
#include <fcntl.h>
#include <sys/resource.h>

#include "tests/support/node_rig.hpp"
#include "transport/control/client.hpp"
#include "transport/tcp/wire.hpp"

using namespace kvferry;
using namespace kvferry::test::rig;
using kvferry::test::eventually;

namespace {

namespace wire = transport::wire;

/// What the attacked node may cost beyond its printed bound: allocator slack (freed memory glibc
/// keeps), thread stacks and the actors answering control requests. docs/ARCHITECTURE.md quotes it.
/// Under AddressSanitizer freed memory sits in its quarantine (256 MiB by default) and every
/// allocation carries red zones, so the figure there says nothing about the node: it is widened.
#if defined(__SANITIZE_ADDRESS__)
constexpr uint64_t allowed_slack = 768 * MiB;
#else
constexpr uint64_t allowed_slack = 64 * MiB;
#endif

constexpr uint64_t segment_bytes = 64 * MiB;
constexpr uint64_t fill_seed = 0x5eed0201;

struct setup {
  setup() {
    log::set_level("error");
    rlimit r{};
    if (::getrlimit(RLIMIT_NOFILE, &r) == 0) {
      r.rlim_cur = r.rlim_max;
      ::setrlimit(RLIMIT_NOFILE, &r);
    }
  }
};

/// A node with small bounds, so the attacks reach them quickly.
std::string hostile_config() {
  return R"({"local_hostname":"127.0.0.1","metadata_server":"P2PHANDSHAKE","protocol":"tcp",)"
         R"("kvferry":{"task_deadline_ms":30000,"log_level":"error","max_connections":256,)"
         R"("max_connections_per_host":192,"handshake_timeout_ms":2000,)"
         R"("peer_max_queued_messages":64,"peer_max_queued_bytes":"16MiB",)"
         R"("reply_budget":"32MiB","notify_inbox_messages":1024,"notify_inbox_bytes":"4MiB"}})";
}

struct attacked_node {
  test::temp_dir dir{"kvferry-hostile"};
  node_process node;
  uint64_t bound = 0;
  uint16_t rpc_port = 0;
  uint16_t data_port = 0;
  uint64_t remote_base = 0;
  uint64_t baseline = 0;

  attacked_node() {
    node = start_node(dir, hostile_config(), segment_bytes, fill_seed);
    std::smatch m;
    auto out = node.proc->out();
    BOOST_REQUIRE_MESSAGE(std::regex_search(out, m, std::regex("at most (\\d+) bytes")), out);
    bound = std::stoull(m[1].str());
    rpc_port = node.rpc_port();
    auto client = transport::control::client::start("probe");
    BOOST_REQUIRE(client);
    auto desc = (*client)->describe("127.0.0.1", rpc_port, 10s);
    BOOST_REQUIRE_MESSAGE(desc, why(desc));
    data_port = data_port_of(*desc);
    remote_base = desc->regions.front().base;
    serve_check("before the attack");
    baseline = resident_bytes(node.proc->pid());
    BOOST_TEST_MESSAGE("node bound " << bound / MiB << " MiB, resident " << baseline / MiB
                                     << " MiB before the attack");
  }

  /// A legitimate peer reads and writes through both ports.
  void serve_check(const std::string& what, std::chrono::milliseconds deadline = 20s) {
    initiator in(MiB, initiator_settings(deadline, 1));
    auto seg = in.open(node.name);
    require_remote_pattern(in, seg, 12345, 300000, fill_seed, what);
  }

  [[nodiscard]] uint64_t resident() const { return resident_bytes(node.proc->pid()); }

  void require_within_bound(uint64_t peak, const std::string& what) const {
    BOOST_TEST_MESSAGE(what << ": peak resident " << peak / MiB << " MiB (baseline "
                            << baseline / MiB << ", bound " << bound / MiB << ")");
    BOOST_REQUIRE_MESSAGE(node.proc->running(), what << ": the node exited\n" << node.proc->transcript());
    BOOST_CHECK_MESSAGE(peak <= baseline + bound + allowed_slack,
                        what << ": resident " << peak / MiB << " MiB exceeds baseline "
                             << baseline / MiB << " + bound " << bound / MiB << " + slack "
                             << allowed_slack / MiB << " MiB");
  }
};

/// An attacker's TCP connection to the node (or -1), non-blocking unless asked otherwise. Attackers
/// come from 127.0.0.2 and legitimate peers from 127.0.0.1, so the node's per-host bound keeps a
/// share of its connections for hosts other than the attacker's, as it would in a cluster.
int connect_to(uint16_t port, bool nonblocking = true) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return -1;
  // The source port is chosen at connect (by 4-tuple), so thousands of attacker sockets do not
  // use up the ephemeral ports that legitimate peers' connections need.
  int one = 1;
  ::setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
  sockaddr_in from{};
  from.sin_family = AF_INET;
  from.sin_addr.s_addr = htonl(0x7f000002);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  to.sin_port = htons(port);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof(from)) != 0
      || ::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof(to)) != 0) {
    ::close(fd);
    return -1;
  }
  if (nonblocking)
    ::fcntl(fd, F_SETFL, O_NONBLOCK);
  return fd;
}

/// Sends as much of `bytes` as the socket takes without blocking; returns how much.
size_t push(int fd, const std::vector<uint8_t>& bytes, size_t from = 0) {
  size_t at = from;
  while (at < bytes.size()) {
    auto n = ::send(fd, bytes.data() + at, bytes.size() - at, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n <= 0)
      break;
    at += static_cast<size_t>(n);
  }
  return at - from;
}

std::vector<uint8_t> hello() {
  return concat({zmtp_greeting(), zmtp_ready_dealer()});
}

/// One data-plane request frame (no MORE) of READ entries.
std::vector<uint8_t> read_frame(uint64_t first_id, uint64_t addr, uint64_t length, size_t entries) {
  std::vector<uint8_t> body(entries * wire::request_header_size);
  for (size_t i = 0; i < entries; ++i) {
    wire::request_header h;
    h.op = wire::frame_op::read;
    h.id = first_id + i;
    h.remote_addr = addr + i * length;
    h.length = length;
    wire::encode(h, body.data() + i * wire::request_header_size);
  }
  std::vector<uint8_t> out;
  uint8_t header[9];
  auto n = transport::zmtp::encode_frame_header(header, body.size(), false);
  out.insert(out.end(), header, header + n);
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

/// A CAF BASP header (32 bytes): operation, flags, payload length (big-endian), operation data.
std::vector<uint8_t> basp_header(uint8_t operation, uint32_t payload_length, uint64_t op_data) {
  std::vector<uint8_t> h(32, 0);
  h[0] = operation;
  for (int i = 0; i < 4; ++i)
    h[4 + i] = static_cast<uint8_t>(payload_length >> (24 - 8 * i));
  for (int i = 0; i < 8; ++i)
    h[8 + i] = static_cast<uint8_t>(op_data >> (56 - 8 * i));
  return h;
}

/// Samples a process's resident memory on a thread until stopped; keeps the peak.
struct rss_sampler {
  explicit rss_sampler(pid_t pid)
    : thread_([this, pid] {
        while (!stop_) {
          auto r = resident_bytes(pid);
          if (r > peak_)
            peak_ = r;
          std::this_thread::sleep_for(20ms); // sampling period (not a synchronisation)
        }
      }) {}
  ~rss_sampler() { finish(); }
  uint64_t finish() {
    stop_ = true;
    if (thread_.joinable())
      thread_.join();
    return peak_;
  }
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> peak_{0};
  std::jthread thread_;
};

// -- the attacks ---------------------------------------------------------------------------------
// Each runs until `until`, or once when it is in the past.

/// Item 0: a BASP handshake header announcing no payload (32 bytes), and headers announcing 1 GiB
/// payloads kept open: on both ports.
void basp_headers(uint16_t port, steady::time_point until, std::vector<int>& keep) {
  do {
    for (uint8_t op : {uint8_t{1}, uint8_t{0}}) {
      int fd = connect_to(port, false);
      if (fd < 0)
        continue;
      push(fd, basp_header(op, 0, 1));
      ::close(fd);
    }
    for (int i = 0; i < 8; ++i) {
      int fd = connect_to(port);
      if (fd < 0)
        continue;
      push(fd, basp_header(1, 1u << 30, 1));
      if (keep.size() < 64)
        keep.push_back(fd);
      else
        ::close(fd);
    }
  } while (steady::now() < until);
}

/// Item 2: a peer that never reads, asking for two-entry READs of 32 MiB each (64 MiB a request).
void non_reader_large_reads(uint16_t port, uint64_t base, steady::time_point until,
                            std::vector<int>& keep) {
  int fd = connect_to(port);
  if (fd < 0)
    return;
  keep.push_back(fd);
  auto request = read_frame(1, base, 32 * MiB, 2);
  auto greeting = hello();
  push(fd, greeting);
  uint64_t sent = 0;
  do {
    auto n = push(fd, request);
    sent += n;
    if (n < request.size()) // the node stopped reading this peer: that is the point
      std::this_thread::sleep_for(10ms);
  } while (steady::now() < until && sent < 90 * request.size());
}

/// Item 2: one multipart message of 20 frames of 60 MiB (1.2 GB), as fast as the node reads.
void multipart_giant(uint16_t port, uint64_t base, steady::time_point until) {
  int fd = connect_to(port);
  if (fd < 0)
    return;
  auto start = hello();
  auto first = read_frame(1, base, 100, 1);
  first[0] |= transport::zmtp::flag_more;
  start.insert(start.end(), first.begin(), first.end());
  push(fd, start);
  std::vector<uint8_t> chunk(1 * MiB, 0x5a);
  for (int frame = 0; frame < 20 && steady::now() < until; ++frame) {
    uint8_t header[9];
    auto n = transport::zmtp::encode_frame_header(header, 60 * MiB, frame + 1 < 20);
    std::vector<uint8_t> h(header, header + n);
    while (push(fd, h) == 0 && steady::now() < until)
      std::this_thread::sleep_for(1ms);
    for (int mib = 0; mib < 60 && steady::now() < until; ++mib) {
      size_t at = 0;
      while (at < chunk.size() && steady::now() < until) {
        auto k = push(fd, chunk, at);
        at += k;
        if (k == 0)
          std::this_thread::sleep_for(1ms);
      }
    }
  }
  ::close(fd);
}

/// Item 2: 16 KiB READs as fast as the socket takes them, never reading a reply.
void small_read_flood(uint16_t port, uint64_t base, steady::time_point until,
                      std::vector<int>& keep) {
  int fd = connect_to(port);
  if (fd < 0)
    return;
  keep.push_back(fd);
  push(fd, hello());
  std::vector<uint8_t> batch;
  for (uint64_t i = 0; i < 256; ++i) {
    auto f = read_frame(i + 1, base + (i % 1024) * 16384, 16384, 1);
    batch.insert(batch.end(), f.begin(), f.end());
  }
  do {
    if (push(fd, batch) == 0)
      std::this_thread::sleep_for(5ms);
  } while (steady::now() < until);
}

/// Item 2: thousands of connections that stay idle: nothing sent, a greeting only, or a whole
/// handshake; on both ports.
void idle_connections(uint16_t data_port, uint16_t rpc_port, size_t count, std::vector<int>& keep) {
  auto greeting = zmtp_greeting();
  auto full = hello();
  for (size_t i = 0; i < count; ++i) {
    int fd = connect_to(i % 2 ? data_port : rpc_port);
    if (fd < 0)
      continue;
    if (i % 3 == 1)
      push(fd, greeting);
    else if (i % 3 == 2)
      push(fd, full);
    keep.push_back(fd);
  }
}

/// Half a frame, then silence; a greeting cut short; random bytes.
void half_frames_and_garbage(uint16_t data_port, uint16_t rpc_port, steady::time_point until,
                             std::vector<int>& keep) {
  uint64_t seed = 1;
  do {
    for (uint16_t port : {data_port, rpc_port}) {
      int fd = connect_to(port);
      if (fd < 0)
        continue;
      auto stalled = hello();
      uint8_t header[9];
      auto n = transport::zmtp::encode_frame_header(header, MiB, false);
      stalled.insert(stalled.end(), header, header + n);
      stalled.resize(stalled.size() + 512 * 1024, 0x33); // half the announced body
      push(fd, stalled);
      if (keep.size() < 512)
        keep.push_back(fd);
      else
        ::close(fd);
      int g = connect_to(port);
      if (g >= 0) {
        auto cut = zmtp_greeting();
        cut.resize(20);
        push(g, cut);
        ::close(g);
      }
      int r = connect_to(port);
      if (r >= 0) {
        push(r, random_bytes(64 * KiB, seed++));
        ::close(r);
      }
    }
  } while (steady::now() < until);
}

/// Notifications of 64 KiB as fast as the node takes them, never drained by its engine.
void notification_flood(uint16_t rpc_port, steady::time_point until, std::atomic<uint64_t>& refused) {
  auto client = transport::control::client::start("flood");
  if (!client)
    return;
  std::string big(64 * KiB - 1, 'n');
  do {
    auto err = (*client)->notify("127.0.0.1", rpc_port, "flood", big, 5s);
    if (err && code_of(err) == errc::busy)
      ++refused;
  } while (steady::now() < until);
}

void close_all(std::vector<int>& fds) {
  for (int fd : fds)
    ::close(fd);
  fds.clear();
}

} // namespace

BOOST_TEST_GLOBAL_FIXTURE(setup);

BOOST_AUTO_TEST_CASE(thirty_two_bytes_of_basp_handshake_do_not_stop_a_node) {
  attacked_node n;
  std::vector<int> keep;
  rss_sampler rss(n.node.proc->pid());
  basp_headers(n.rpc_port, steady::now(), keep);
  basp_headers(n.data_port, steady::now(), keep);
  n.serve_check("after BASP headers");
  n.require_within_bound(rss.finish(), "BASP headers");
  close_all(keep);
  stop_node(n.node);
}

BOOST_AUTO_TEST_CASE(a_peer_that_never_reads_cannot_grow_the_node) {
  attacked_node n;
  std::vector<int> keep;
  rss_sampler rss(n.node.proc->pid());
  auto until = steady::now() + 3s;
  std::jthread large([&] { non_reader_large_reads(n.data_port, n.remote_base, until, keep); });
  std::vector<int> keep2;
  std::jthread small([&] { small_read_flood(n.data_port, n.remote_base, until, keep2); });
  large.join();
  small.join();
  // The node holds off these peers and serves others meanwhile.
  n.serve_check("while peers do not read");
  n.require_within_bound(rss.finish(), "non-reading peers");
  close_all(keep);
  close_all(keep2);
  n.serve_check("after the non-reading peers left");
  stop_node(n.node);
}

BOOST_AUTO_TEST_CASE(a_multipart_message_of_giant_frames_is_never_buffered) {
  attacked_node n;
  rss_sampler rss(n.node.proc->pid());
  multipart_giant(n.data_port, n.remote_base, steady::now() + 30s);
  n.serve_check("after 1.2 GB of multipart frames");
  n.require_within_bound(rss.finish(), "multipart frames");
  stop_node(n.node);
}

BOOST_AUTO_TEST_CASE(thousands_of_idle_connections_do_not_stop_legitimate_reads) {
  attacked_node n;
  std::vector<int> keep;
  rss_sampler rss(n.node.proc->pid());
  idle_connections(n.data_port, n.rpc_port, 16000, keep);
  BOOST_TEST_MESSAGE("idle connections opened: " << keep.size());
  BOOST_CHECK_GT(keep.size(), 10000u);
  // A legitimate peer is served while they are all still open.
  n.serve_check("with idle connections open", 20s);
  n.require_within_bound(rss.finish(), "idle connections");
  close_all(keep);
  stop_node(n.node);
  auto out = n.node.proc->out();
  BOOST_CHECK_MESSAGE(!contains(out, "data 0 accepted"), out);
}

BOOST_AUTO_TEST_CASE(a_notification_flood_is_refused_beyond_the_inbox_bound) {
  attacked_node n;
  rss_sampler rss(n.node.proc->pid());
  std::atomic<uint64_t> refused{0};
  notification_flood(n.rpc_port, steady::now() + 2s, refused);
  BOOST_CHECK_GT(refused.load(), 0u); // the inbox (1024 messages, 4 MiB) filled and said so
  n.serve_check("after a notification flood");
  n.require_within_bound(rss.finish(), "notification flood");
  auto out = stop_node(n.node);
  std::smatch m;
  BOOST_REQUIRE_MESSAGE(std::regex_search(out, m, std::regex("(\\d+) waiting, (\\d+) refused")), out);
  BOOST_CHECK_LE(std::stoull(m[1].str()), 1024u);
  BOOST_CHECK_GE(std::stoull(m[2].str()), refused.load());
}

BOOST_AUTO_TEST_CASE(half_frames_stalls_and_garbage_cost_nothing_lasting) {
  attacked_node n;
  std::vector<int> keep;
  rss_sampler rss(n.node.proc->pid());
  half_frames_and_garbage(n.data_port, n.rpc_port, steady::now() + 2s, keep);
  n.serve_check("with stalled half frames");
  n.require_within_bound(rss.finish(), "half frames and garbage");
  close_all(keep);
  stop_node(n.node);
}

BOOST_AUTO_TEST_CASE(every_attack_at_once_then_bench_verifies) {
  int seconds = 60;
  if (const char* s = std::getenv("KVFERRY_HOSTILE_SECONDS"); s && std::atoi(s) > 0)
    seconds = std::atoi(s);
  attacked_node n;
  rss_sampler rss(n.node.proc->pid());
  auto until = steady::now() + std::chrono::seconds(seconds);
  std::atomic<uint64_t> refused{0};
  std::vector<std::vector<int>> held(8);
  std::vector<std::jthread> attackers;
  attackers.emplace_back([&] { basp_headers(n.rpc_port, until, held[0]); });
  attackers.emplace_back([&] { basp_headers(n.data_port, until, held[1]); });
  attackers.emplace_back([&] {
    while (steady::now() < until)
      non_reader_large_reads(n.data_port, n.remote_base, until, held[2]);
  });
  attackers.emplace_back([&] {
    while (steady::now() < until)
      multipart_giant(n.data_port, n.remote_base, until);
  });
  attackers.emplace_back([&] { small_read_flood(n.data_port, n.remote_base, until, held[3]); });
  attackers.emplace_back([&] {
    idle_connections(n.data_port, n.rpc_port, 8000, held[4]);
    while (steady::now() < until) {
      // Churn: drop the oldest thousand, open a thousand more.
      std::vector<int> drop(held[4].begin(), held[4].begin() + std::min<size_t>(1000, held[4].size()));
      held[4].erase(held[4].begin(), held[4].begin() + drop.size());
      close_all(drop);
      idle_connections(n.data_port, n.rpc_port, 1000, held[4]);
    }
  });
  attackers.emplace_back([&] { half_frames_and_garbage(n.data_port, n.rpc_port, until, held[5]); });
  attackers.emplace_back([&] { notification_flood(n.rpc_port, until, refused); });
  // Legitimate traffic during the attack: reads keep being served (each within its deadline).
  uint64_t served = 0;
  while (steady::now() < until) {
    n.serve_check("during the attack", 30s);
    ++served;
  }
  for (auto& t : attackers)
    t.join();
  auto peak = rss.finish();
  BOOST_TEST_MESSAGE("attacked for " << seconds << " s: peak resident " << peak / MiB
                                     << " MiB (baseline " << n.baseline / MiB << ", bound "
                                     << n.bound / MiB << "), " << served
                                     << " legitimate checks served, " << refused.load()
                                     << " notifications refused");
  std::printf("hostile_peers: %d s of every attack: peak resident %llu MiB = baseline %llu + "
              "%llu MiB (bound %llu MiB, slack allowed %llu MiB); %llu legitimate checks served\n",
              seconds, static_cast<unsigned long long>(peak / MiB),
              static_cast<unsigned long long>(n.baseline / MiB),
              static_cast<unsigned long long>((peak > n.baseline ? peak - n.baseline : 0) / MiB),
              static_cast<unsigned long long>(n.bound / MiB),
              static_cast<unsigned long long>(allowed_slack / MiB),
              static_cast<unsigned long long>(served));
  n.require_within_bound(peak, "every attack at once");
  BOOST_CHECK_GT(served, 0u);
  for (auto& h : held)
    close_all(h);

  // A legitimate kvferry bench, write then read then write, all with --verify.
  for (const char* op : {"write", "read", "write"}) {
    test::child_process bench(std::vector<std::string>{
      kvferry_binary(), "--config", n.dir.write("bench.json", test::node_config(0, 0, 30000)),
      "bench", "--mode=initiator", "--segment_id=" + n.node.name, std::string("--operation=") + op,
      "--block_size=65536", "--batch_size=32", "--buffer_size=" + std::to_string(16 * MiB),
      "--duration=1", "--threads=1", "--verify"});
    auto rc = bench.wait_exit_code(120s);
    BOOST_REQUIRE_MESSAGE(rc.has_value(), "bench did not finish\n" << bench.transcript());
    BOOST_CHECK_MESSAGE(*rc == 0, "bench " << op << " exited " << *rc << "\n" << bench.transcript());
    BOOST_CHECK_MESSAGE(contains(bench.out(), "verify errors 0"), bench.transcript());
  }
  BOOST_REQUIRE_MESSAGE(n.node.proc->running(), n.node.proc->transcript());
  stop_node(n.node);
}
