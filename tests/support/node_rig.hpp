#pragma once
// A kvferry node in a child process and an initiator engine in this one, for the multi-process
// Boost.Test programs (conformance, hardening, hostile peers). The kvferry binary's path follows
// "--" on the test program's command line.

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <netinet/in.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "actors/runtime.hpp"
#include "actors/transfer_engine.hpp"
#include "config/error.hpp"
#include "config/log.hpp"
#include "config/settings.hpp"
#include "tests/support/checks.hpp"
#include "tests/support/child_process.hpp"
#include "tools/pattern.hpp"
#include "transport/zmtp/net.hpp"

namespace kvferry::test::rig {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;
using kvferry::test::why;
using kvferry::test::contains;

inline constexpr uint64_t KiB = 1024;
inline constexpr uint64_t MiB = 1024 * 1024;

inline std::string kvferry_binary() {
  auto& suite = boost::unit_test::framework::master_test_suite();
  if (suite.argc < 2)
    throw std::runtime_error("usage: tcp_conformance_test [boost options] -- /path/to/kvferry");
  return suite.argv[1];
}

inline std::string show(const transfer_status& s) {
  return std::string(to_string(s.state)) + " (" + to_string(s.code) + ": " + s.reason + ", "
         + std::to_string(s.transferred_bytes) + " bytes)";
}

/// Anonymous memory, unmapped on destruction.
struct mapped {
  explicit mapped(size_t n) : size(n) {
    void* p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
      throw std::runtime_error("mmap failed");
    data = static_cast<uint8_t*>(p);
  }
  ~mapped() { ::munmap(data, size); }
  mapped(const mapped&) = delete;
  mapped& operator=(const mapped&) = delete;
  uint8_t* data = nullptr;
  size_t size = 0;
};

/// A `kvferry node` child process; killed and reaped on destruction if still running.
struct node_process {
  std::unique_ptr<child_process> proc;
  std::string name;

  [[nodiscard]] uint16_t rpc_port() const {
    return static_cast<uint16_t>(std::stoul(name.substr(name.rfind(':') + 1)));
  }
};

inline int config_counter = 0;

inline node_process start_node(const test::temp_dir& dir, const std::string& config_text,
                        uint64_t segment_bytes, uint64_t fill_seed) {
  auto path = dir.write("node-" + std::to_string(++config_counter) + ".json", config_text);
  node_process node;
  node.proc = std::make_unique<child_process>(std::vector<std::string>{
    kvferry_binary(), "--config", path, "node", "--segment-bytes", std::to_string(segment_bytes),
    "--fill-seed", std::to_string(fill_seed)});
  auto name = node.proc->wait_for_stdout(std::regex("segment name: (\\S+)"), 60s);
  BOOST_REQUIRE_MESSAGE(name, "the node did not print its segment name\n"
                                << node.proc->transcript());
  node.name = *name;
  return node;
}

/// SIGTERM: the node stops cleanly (exit 0, "stopped"); under the sanitizers this is also when
/// its leak check runs. Returns its stdout.
inline std::string stop_node(node_process& node) {
  BOOST_REQUIRE_MESSAGE(node.proc->signal(SIGTERM),
                        "the node is gone\n" << node.proc->transcript());
  auto rc = node.proc->wait_exit_code(30s);
  BOOST_REQUIRE_MESSAGE(rc.has_value(), "the node did not stop on SIGTERM\n"
                                          << node.proc->transcript());
  BOOST_CHECK_MESSAGE(*rc == 0, "the node exited " << *rc << "\n" << node.proc->transcript());
  auto out = node.proc->out();
  BOOST_CHECK_MESSAGE(contains(out, "kvferry node: stopped"), node.proc->transcript());
  return out;
}

inline config::settings initiator_settings(std::chrono::milliseconds deadline, uint32_t workers = 2) {
  config::settings s;
  s.local_hostname = "127.0.0.1";
  s.task_deadline = deadline;
  s.worker_count = workers;
  s.tcp_worker_count = workers; // TCP connections per peer
  s.log_level = "warn";
#ifdef KVFERRY_CONFORMANCE_RDMA
  s.transport = config::protocol::rdma;
  s.rdma.provider = config::rdma_provider_kind::emulated;
#endif
  return s;
}

/// An engine on its own networked runtime, with local memory registered. Members are destroyed
/// engine first, then the runtime, then the memory.
struct initiator {
  initiator(size_t local_bytes, config::settings settings, bool check_remote_bounds = true,
            size_t second_bytes = 0)
    : local(local_bytes), second(second_bytes ? second_bytes : 8 * MiB) {
    auto r = runtime::create({.network = true});
    BOOST_REQUIRE_MESSAGE(r, why(r));
    rt = *r;
    engine_options eo;
    eo.check_remote_bounds = check_remote_bounds;
    auto e = transfer_engine::create(rt, settings, eo);
    BOOST_REQUIRE_MESSAGE(e, why(e));
    engine = std::move(*e);
    auto err = engine->register_memory(local.data, local.size);
    BOOST_REQUIRE_MESSAGE(!err, describe(err));
    err = engine->register_memory(second.data, second.size);
    BOOST_REQUIRE_MESSAGE(!err, describe(err));
  }
  ~initiator() {
    if (engine)
      engine->shutdown();
    engine.reset();
    rt.reset();
  }

  /// Opens (or re-opens) a segment; returns its id and remembers its first region.
  segment_id open(const std::string& name) {
    auto id = engine->open_segment(name);
    BOOST_REQUIRE_MESSAGE(id, "open_segment(" << name << "): " << why(id));
    auto desc = engine->segment_descriptor(*id);
    BOOST_REQUIRE_MESSAGE(desc, why(desc));
    BOOST_REQUIRE(!desc->regions.empty());
    remote_base = desc->regions.front().base;
    remote_len = desc->regions.front().length;
    descriptor = *desc;
    return *id;
  }

  mapped local;
  mapped second;
  std::shared_ptr<runtime> rt;
  std::unique_ptr<transfer_engine> engine;
  uint64_t remote_base = 0;
  uint64_t remote_len = 0;
  memory::segment_descriptor descriptor;
};

/// Frees a batch on scope exit unless freed already.
struct batch_guard {
  transfer_engine& engine;
  batch_id id;
  bool freed = false;
  ~batch_guard() {
    if (!freed)
      (void) engine.free_batch(id);
  }
};

/// Submits `requests` as one batch, waits until every task is terminal, returns the statuses.
inline std::vector<transfer_status> run_batch(transfer_engine& engine,
                                       const std::vector<transfer_request>& requests,
                                       std::chrono::milliseconds wait_for = 120s,
                                       submit_options options = {}) {
  auto batch = engine.allocate_batch(requests.size());
  BOOST_REQUIRE_MESSAGE(batch, why(batch));
  batch_guard guard{engine, *batch};
  auto first = engine.submit(*batch, requests, options);
  BOOST_REQUIRE_MESSAGE(first, "submit: " << why(first));
  auto summary = engine.wait(*batch, wait_for);
  BOOST_REQUIRE_MESSAGE(summary, "wait: " << why(summary));
  std::vector<transfer_status> out;
  for (uint32_t i = 0; i < requests.size(); ++i) {
    auto st = engine.status(*batch, *first + i);
    BOOST_REQUIRE_MESSAGE(st, why(st));
    out.push_back(*st);
  }
  return out;
}

inline transfer_status run_one(transfer_engine& engine, transfer_request rq,
                        std::chrono::milliseconds wait_for = 120s) {
  return run_batch(engine, {rq}, wait_for).front();
}

inline void require_completed(const std::vector<transfer_status>& statuses,
                       const std::vector<transfer_request>& requests, const std::string& what) {
  for (size_t i = 0; i < statuses.size(); ++i)
    BOOST_REQUIRE_MESSAGE(statuses[i].state == task_state::completed
                            && statuses[i].transferred_bytes == requests[i].length,
                          what << ": task " << i << " (" << requests[i].length
                               << " bytes): " << show(statuses[i]));
}

/// READs [offset, offset+length) of the remote segment into `dst` and checks it holds `seed`'s
/// pattern at those positions.
inline void require_remote_pattern(initiator& in, segment_id seg, uint64_t offset, uint64_t length,
                            uint64_t seed, const std::string& what) {
  BOOST_REQUIRE(length <= in.second.size);
  std::memset(in.second.data, 0, length);
  transfer_request rq{opcode::read, in.second.data, seg, in.remote_base + offset, length};
  auto st = run_one(*in.engine, rq);
  BOOST_REQUIRE_MESSAGE(st.state == task_state::completed, what << ": read-back " << show(st));
  auto bad = tools::check_pattern(in.second.data, length, seed, offset);
  BOOST_REQUIRE_MESSAGE(bad == length, what << ": remote byte at offset " << offset + bad
                                            << " differs from the expected pattern");
}

inline coordinator_stats stats_of(transfer_engine& engine) {
  auto s = engine.stats();
  BOOST_REQUIRE_MESSAGE(s, why(s));
  return *s;
}

inline uint16_t data_port_of(const memory::segment_descriptor& desc) {
  const auto* ep = desc.endpoint("tcp");
  BOOST_REQUIRE_MESSAGE(ep != nullptr, "segment '" << desc.name << "' has no tcp endpoint");
  std::string host;
  uint16_t port = 0;
  BOOST_REQUIRE(transport::zmtp::parse_tcp_endpoint(ep->address, host, port));
  return port;
}

/// Sends `bytes` on a plain TCP connection to 127.0.0.1:port, reads whatever comes back for up
/// to `linger`, closes. Returns false when the connection could not be made.
inline bool send_raw(uint16_t port, const std::vector<uint8_t>& bytes,
              std::chrono::milliseconds linger = 200ms) {
  int fd = kvferry::test::connect_loopback(port);
  if (fd < 0)
    return false;
  size_t sent = 0;
  while (sent < bytes.size()) {
    auto n = ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0)
      break; // the peer dropped us: that is an acceptable answer to garbage
    sent += static_cast<size_t>(n);
  }
  auto until = steady::now() + linger;
  char sink[4096];
  while (steady::now() < until) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 20) > 0) {
      if (::recv(fd, sink, sizeof(sink), 0) <= 0)
        break; // closed by the peer
    }
  }
  ::close(fd);
  return true;
}

inline std::vector<uint8_t> random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::vector<uint8_t> out(n);
  for (auto& b : out)
    b = static_cast<uint8_t>(gen());
  return out;
}

/// A ZMTP 3.0 greeting with the NULL mechanism, as a client sends it.
inline std::vector<uint8_t> zmtp_greeting() {
  std::vector<uint8_t> g(64, 0);
  g[0] = 0xff;
  g[9] = 0x7f;
  g[10] = 3; // version 3.0
  g[11] = 0;
  std::memcpy(&g[12], "NULL", 4);
  return g;
}

/// A ZMTP READY command announcing a DEALER socket.
inline std::vector<uint8_t> zmtp_ready_dealer() {
  std::vector<uint8_t> body;
  auto put = [&](std::string_view s) { body.insert(body.end(), s.begin(), s.end()); };
  body.push_back(5);
  put("READY");
  body.push_back(11);
  put("Socket-Type");
  body.insert(body.end(), {0, 0, 0, 6});
  put("DEALER");
  body.insert(body.begin(), {uint8_t{0x04}, static_cast<uint8_t>(body.size())});
  return body;
}

inline std::vector<uint8_t> concat(std::initializer_list<std::vector<uint8_t>> parts) {
  std::vector<uint8_t> out;
  for (const auto& p : parts)
    out.insert(out.end(), p.begin(), p.end());
  return out;
}

/// Polls `engine`'s notifications until one with `message` arrives; all drained ones are
/// appended to `seen`.
inline bool await_notification(transfer_engine& engine, const std::string& message,
                        std::vector<notification>& seen, std::chrono::milliseconds timeout) {
  auto until = steady::now() + timeout;
  for (;;) {
    auto got = engine.get_notifies();
    BOOST_REQUIRE_MESSAGE(got, why(got));
    bool found = false;
    for (auto& n : *got) {
      found = found || n.message == message;
      seen.push_back(std::move(n));
    }
    if (found)
      return true;
    if (steady::now() > until)
      return false;
    std::this_thread::sleep_for(1ms);
  }
}

/// True once every thread of process `pid` is stopped (state 'T' in /proc/PID/task/*/stat):
/// kill(SIGSTOP) returns before the stop takes effect.
inline bool all_threads_stopped(pid_t pid) {
  std::error_code ec;
  std::filesystem::directory_iterator tasks("/proc/" + std::to_string(pid) + "/task", ec);
  if (ec)
    return false;
  bool any = false;
  for (const auto& task : tasks) {
    std::ifstream stat(task.path() / "stat");
    std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    auto close = text.rfind(')'); // the command name may contain spaces and parentheses
    if (close == std::string::npos || close + 2 >= text.size() || text[close + 2] != 'T')
      return false;
    any = true;
  }
  return any;
}

/// SIGSTOPs the node and waits until the stop took effect in every one of its threads.
inline void stop_the_world(node_process& node) {
  BOOST_REQUIRE(node.proc->signal(SIGSTOP));
  BOOST_REQUIRE_MESSAGE(kvferry::test::eventually([&] { return all_threads_stopped(node.proc->pid()); },
                                                  60s),
                        "the node did not stop within 60 s of SIGSTOP\n" << node.proc->transcript());
}

/// The resident memory of process `pid` in bytes (VmRSS), 0 when unreadable.
inline uint64_t resident_bytes(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmRSS:", 0) == 0)
      return std::stoull(line.substr(6)) * 1024;
  return 0;
}

/// One 4 KiB READ per connection and then some (2 x workers tasks in one batch: the coordinator
/// deals slices to the workers in turn), each checked against the node's pattern. Before SIGSTOP
/// it makes sure every connection is up; after SIGCONT it is a barrier: the node serves each
/// connection in order from one thread and its replies come back in order, so once these are
/// answered every reply to a request sent before them has arrived and been reported.
inline void round_trip_every_connection(initiator& in, segment_id seg, uint32_t workers,
                                 uint64_t fill_seed, const std::string& what) {
  const uint64_t block = 4096;
  std::vector<transfer_request> rqs;
  for (uint32_t i = 0; i < 2 * workers; ++i) {
    std::memset(in.second.data + i * block, 0, block);
    rqs.push_back({opcode::read, in.second.data + i * block, seg, in.remote_base + 5 + i * block,
                   block});
  }
  require_completed(run_batch(*in.engine, rqs), rqs, what);
  for (uint32_t i = 0; i < rqs.size(); ++i)
    BOOST_REQUIRE_MESSAGE(tools::check_pattern(in.second.data + i * block, block, fill_seed,
                                               5 + i * block) == block,
                          what << ": block " << i << " differs from the node's pattern");
}

/// Bytes waiting in the receive queues of the established IPv4 connections whose local port is
/// `port` (the target's side of its data connections), from /proc/net/tcp.
inline uint64_t bytes_queued_at(uint16_t port) {
  std::ifstream table("/proc/net/tcp");
  std::string line;
  std::getline(table, line); // header
  uint64_t total = 0;
  while (std::getline(table, line)) {
    // "sl local_address rem_address st tx_queue:rx_queue ...", addresses and queues in hex.
    std::istringstream fields(line);
    std::string slot, local, remote, state, queues;
    if (!(fields >> slot >> local >> remote >> state >> queues) || state != "01")
      continue;
    auto colon = local.rfind(':');
    auto queue_colon = queues.find(':');
    if (colon == std::string::npos || queue_colon == std::string::npos
        || std::stoul(local.substr(colon + 1), nullptr, 16) != port)
      continue;
    total += std::stoull(queues.substr(queue_colon + 1), nullptr, 16);
  }
  return total;
}

} // namespace kvferry::test::rig
