#pragma once
// The store across processes, for the store's acceptance tests (tests/tools/store_*_test.cpp): a
// `kvferry master` child and `kvferry store-node` children on loopback, store clients embedded in
// the test process, the master's report, and raw peers that speak the store's protocol (or break
// it) without a store client. The kvferry binary's path follows "--" on the test's command line.

#include <boost/json.hpp>
#include <boost/test/unit_test.hpp>

#include <chrono>
#include <csignal>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "actors/store/client.hpp"
#include "config/log.hpp"
#include "tests/support/node_rig.hpp"
#include "tests/support/store_values.hpp"
#include "transport/control/client.hpp"
#include "transport/store/wire.hpp"
#include "transport/zmtp/codec.hpp"

namespace kvferry::test::rig {

using std::chrono::milliseconds;
namespace sw = transport::store;

/// Logs of this process at "error" (store clients log every remount at info).
struct quiet_logs {
  quiet_logs() { log::set_level("error"); }
};

/// `ms` since `since`.
inline long long elapsed_ms(steady::time_point since) {
  return std::chrono::duration_cast<milliseconds>(steady::now() - since).count();
}

/// Polls `pred` every `step` until it holds or `timeout` passed; the last answer. (For conditions
/// that cost a request to the master each time; checks.hpp's `eventually` polls every ms.)
inline bool poll_until(const std::function<bool()>& pred, milliseconds timeout = 30s,
                       milliseconds step = 20ms) {
  const auto until = steady::now() + timeout;
  while (!pred()) {
    if (steady::now() > until)
      return pred();
    std::this_thread::sleep_for(step);
  }
  return true;
}

inline std::string text(const caf::error& e) {
  return e ? describe(e) : std::string("ok");
}

// -- processes ----------------------------------------------------------------------------------

/// `kvferry master` flags (tools/commands.hpp, master_options).
struct master_flags {
  uint64_t lease_ms = 10000;
  uint64_t ttl_ms = 10000;
  uint64_t watch_ms = 300;
  uint64_t put_timeout_ms = 30000;
  uint64_t commit_timeout_ms = 5000;
  double high_watermark = 0.9;
  double evict_ratio = 0.05;
};

/// A `kvferry master` child on 127.0.0.1 at a fixed port (a restart reuses it).
class master_process {
public:
  master_process(const test::temp_dir& dir, master_flags flags)
    : flags_(flags), port_(test::free_tcp_port()),
      config_(dir.write("master.json", "{\"local_hostname\":\"127.0.0.1\",\"metadata_server\":"
                                       "\"P2PHANDSHAKE\",\"kvferry\":{\"log_level\":\"info\"}}")) {
    start();
  }

  /// Starts it (again, after kill()) on the same port.
  void start() {
    auto num = [](double v) {
      std::ostringstream s;
      s << v;
      return s.str();
    };
    proc_ = std::make_unique<child_process>(std::vector<std::string>{
      kvferry_binary(), "--config", config_, "master", "--host", "127.0.0.1", "--port",
      std::to_string(port_), "--lease-ms", std::to_string(flags_.lease_ms), "--ttl-ms",
      std::to_string(flags_.ttl_ms), "--watch-ms", std::to_string(flags_.watch_ms),
      "--put-timeout-ms", std::to_string(flags_.put_timeout_ms), "--commit-timeout-ms",
      std::to_string(flags_.commit_timeout_ms), "--high-watermark", num(flags_.high_watermark),
      "--evict-ratio", num(flags_.evict_ratio)});
    auto listening = proc_->wait_for_stdout(std::regex("listening on 127\\.0\\.0\\.1:(\\d+)"), 60s);
    BOOST_REQUIRE_MESSAGE(listening && *listening == std::to_string(port_),
                          "the master did not start on port " << port_ << "\n"
                                                              << proc_->transcript());
  }

  /// SIGKILL, and reaped.
  void kill() {
    BOOST_REQUIRE_MESSAGE(proc_->signal(SIGKILL), "the master is gone\n" << proc_->transcript());
    BOOST_REQUIRE(proc_->wait_exit(30s).has_value());
  }

  /// SIGTERM: a clean stop (exit 0, "stopped"). Returns its stdout.
  std::string stop() {
    BOOST_REQUIRE_MESSAGE(proc_->signal(SIGTERM), "the master is gone\n" << proc_->transcript());
    auto rc = proc_->wait_exit_code(30s);
    BOOST_REQUIRE_MESSAGE(rc.has_value(), "the master did not stop on SIGTERM\n"
                                            << proc_->transcript());
    BOOST_CHECK_MESSAGE(*rc == 0, "the master exited " << *rc << "\n" << proc_->transcript());
    BOOST_CHECK_MESSAGE(contains(proc_->out(), "kvferry master: stopped"), proc_->transcript());
    return proc_->out();
  }

  [[nodiscard]] uint16_t port() const noexcept { return port_; }
  [[nodiscard]] std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  [[nodiscard]] child_process& proc() { return *proc_; }

private:
  master_flags flags_;
  uint16_t port_;
  std::string config_;
  std::unique_ptr<child_process> proc_;
};

/// The config.json text of a store node or client.
inline std::string store_config(const std::string& master_address, uint64_t segment_bytes,
                                uint64_t buffer_bytes, milliseconds deadline,
                                const std::string& log_level = "warn") {
  return "{\"local_hostname\":\"127.0.0.1\",\"metadata_server\":\"P2PHANDSHAKE\","
         "\"protocol\":\"tcp\",\"master_server_address\":\""
         + master_address + "\",\"global_segment_size\":" + std::to_string(segment_bytes)
         + ",\"local_buffer_size\":" + std::to_string(buffer_bytes)
         + ",\"kvferry\":{\"store_deadline_ms\":" + std::to_string(deadline.count())
         + ",\"log_level\":\"" + log_level + "\"}}";
}

/// A `kvferry store-node` child: a holder of `segment_bytes`, mounted once it printed its name.
struct store_node {
  std::unique_ptr<child_process> proc;
  /// Its segment name ("127.0.0.1:rpc_port"), as replicas name it.
  std::string name;

  [[nodiscard]] uint16_t rpc_port() const {
    return static_cast<uint16_t>(std::stoul(name.substr(name.rfind(':') + 1)));
  }

  /// SIGTERM: a clean stop (exit 0, "stopped"). Returns its stdout.
  std::string stop() {
    BOOST_REQUIRE_MESSAGE(proc->signal(SIGTERM), "the node is gone\n" << proc->transcript());
    auto rc = proc->wait_exit_code(30s);
    BOOST_REQUIRE_MESSAGE(rc.has_value(), "the node did not stop on SIGTERM\n"
                                            << proc->transcript());
    BOOST_CHECK_MESSAGE(*rc == 0, "the node exited " << *rc << "\n" << proc->transcript());
    BOOST_CHECK_MESSAGE(contains(proc->out(), "kvferry store-node: stopped"), proc->transcript());
    return proc->out();
  }

  void kill() {
    BOOST_REQUIRE_MESSAGE(proc->signal(SIGKILL), "the node is gone\n" << proc->transcript());
    BOOST_REQUIRE(proc->wait_exit(30s).has_value());
  }
};

inline store_node start_store_node(const test::temp_dir& dir, const std::string& master_address,
                                   uint64_t segment_bytes, milliseconds deadline = 10s) {
  auto path = dir.write("store-node-" + std::to_string(++config_counter) + ".json",
                        store_config(master_address, segment_bytes, MiB, deadline));
  store_node node;
  node.proc = std::make_unique<child_process>(
    std::vector<std::string>{kvferry_binary(), "store-node", "--config", path});
  auto name = node.proc->wait_for_stdout(std::regex("segment name: (\\S+)"), 60s);
  BOOST_REQUIRE_MESSAGE(name, "the store node did not mount\n" << node.proc->transcript());
  node.name = *name;
  return node;
}

/// Settings of a store client embedded in this process (no segment unless asked for).
inline config::settings client_settings(const std::string& master_address, milliseconds deadline,
                                        uint64_t buffer_bytes = 8 * MiB,
                                        uint64_t segment_bytes = 0) {
  config::settings s;
  s.local_hostname = "127.0.0.1";
  s.master_server_address = master_address;
  s.global_segment_size = segment_bytes;
  s.local_buffer_size = buffer_bytes;
  s.store_deadline = deadline;
  s.log_level = "error";
  return s;
}

inline std::unique_ptr<store::client> make_client(const config::settings& s) {
  auto c = store::client::create(s);
  BOOST_REQUIRE_MESSAGE(c, "store client: " << why(c));
  return std::move(*c);
}

/// A master and `n` store nodes of `segment_bytes` each. Declare clients after it: they are
/// closed (and unmount) while the master still runs.
struct store_cluster {
  test::temp_dir dir{"kvferry-store"};
  master_process master;
  std::vector<store_node> nodes;

  store_cluster(master_flags flags, size_t n, uint64_t segment_bytes) : master(dir, flags) {
    for (size_t i = 0; i < n; ++i)
      nodes.push_back(start_store_node(dir, master.address(), segment_bytes));
  }

  std::unique_ptr<store::client> client(milliseconds deadline, uint64_t buffer_bytes = 8 * MiB) {
    return make_client(client_settings(master.address(), deadline, buffer_bytes));
  }

  /// The node whose segment is `name`.
  store_node& node(const std::string& name) {
    for (auto& n : nodes)
      if (n.name == name)
        return n;
    BOOST_FAIL("no store node has segment '" << name << "'");
    return nodes.front();
  }

  bool is_node(const std::string& name) const {
    for (const auto& n : nodes)
      if (n.name == name)
        return true;
    return false;
  }
};

// -- the master's report --------------------------------------------------------------------------

struct segment_report {
  std::string name;
  uint64_t size = 0;
  uint64_t free = 0;
  uint64_t fencing = 0;
};

/// client::master_stats(), parsed (master_state::report).
struct master_report {
  uint64_t objects = 0, capacity = 0, used = 0, fencing = 0, puts_in_progress = 0, clients = 0;
  std::vector<segment_report> segments;
  std::map<std::string, uint64_t> counters;
  std::string json;
};

inline master_report parse_report(const std::string& json) {
  master_report r;
  r.json = json;
  auto v = boost::json::parse(json).as_object();
  auto u = [&](const boost::json::object& o, const char* k) { return o.at(k).to_number<uint64_t>(); };
  r.objects = u(v, "objects");
  r.capacity = u(v, "capacity");
  r.used = u(v, "used");
  r.fencing = u(v, "fencing");
  r.puts_in_progress = u(v, "puts_in_progress");
  r.clients = u(v, "clients");
  for (const auto& s : v.at("segments").as_array()) {
    const auto& o = s.as_object();
    r.segments.push_back({std::string(o.at("name").as_string()), u(o, "size"), u(o, "free"),
                          u(o, "fencing")});
  }
  for (const auto& [k, c] : v.at("counters").as_object())
    r.counters[std::string(k)] = c.to_number<uint64_t>();
  return r;
}

/// The master's report through `c`; nullopt when the call failed (the master is away).
inline std::optional<master_report> try_report(store::client& c) {
  auto json = c.master_stats();
  if (!json)
    return std::nullopt;
  return parse_report(*json);
}

inline master_report report(store::client& c) {
  auto json = c.master_stats();
  BOOST_REQUIRE_MESSAGE(json, "master_stats: " << why(json));
  return parse_report(*json);
}

/// Space an object of `size` bytes takes per replica (the master's 64-byte alignment).
inline uint64_t allocated(uint64_t size) {
  return (size + 63) / 64 * 64;
}

// -- checks ---------------------------------------------------------------------------------------

/// get(key) succeeds and returns key's value of `size` bytes, byte for byte.
inline void require_value(store::client& c, const std::string& key, size_t size,
                          const std::string& what) {
  auto got = c.get(key);
  BOOST_REQUIRE_MESSAGE(got, what << ": get '" << key << "': " << why(got));
  BOOST_REQUIRE_MESSAGE(got->size() == size, what << ": '" << key << "' has " << got->size()
                                                  << " bytes, expected " << size);
  auto bad = first_wrong_byte(key, *got);
  BOOST_REQUIRE_MESSAGE(bad == size, what << ": '" << key << "' differs at byte " << bad << " of "
                                          << size);
}

// -- raw peers of the master's port -------------------------------------------------------------

/// Store requests as any program could send them (control client + store wire codec), without a
/// store client: the slow or broken client of the tests.
class raw_master {
public:
  explicit raw_master(uint16_t port) : port_(port) {
    transport::control::client_options o;
    o.max_reply_frame = 16 * MiB;
    o.max_request_frame = 4 * MiB;
    auto c = transport::control::client::start("raw store peer", o);
    BOOST_REQUIRE_MESSAGE(c, why(c));
    control_ = std::move(*c);
  }

  caf::expected<std::vector<uint8_t>> call(uint16_t method, std::vector<uint8_t> payload,
                                           milliseconds timeout = 10s) {
    return control_->call("127.0.0.1", port_, method, std::move(payload), timeout);
  }

  template <class Request>
  caf::expected<std::vector<uint8_t>> call(sw::method m, const Request& request) {
    auto payload = sw::encode(request);
    BOOST_REQUIRE_MESSAGE(payload, why(payload));
    return call(static_cast<uint16_t>(m), *payload);
  }

  /// Mounts a client without segments; returns its id.
  uint64_t mount(const std::string& name) {
    sw::mount_request m;
    m.client_id = 0x5105'0000'0000'0000ULL | (++mounts_ & 0xffff);
    m.client_name = name;
    m.host = "raw-peer-host";
    auto reply = call(sw::method::mount, m);
    BOOST_REQUIRE_MESSAGE(reply, "raw mount: " << why(reply));
    auto decoded = sw::decode_mount_reply(*reply);
    BOOST_REQUIRE_MESSAGE(decoded, why(decoded));
    return m.client_id;
  }

  sw::put_slot put_start(uint64_t client, const std::string& key, uint64_t size,
                         uint8_t replicas = 1) {
    auto reply = call(sw::method::put_start,
                      sw::put_start_request{client, {sw::put_entry{key, size, replicas, false, false}}});
    BOOST_REQUIRE_MESSAGE(reply, "raw put_start: " << why(reply));
    auto decoded = sw::decode_put_start_reply(*reply);
    BOOST_REQUIRE_MESSAGE(decoded && decoded->slots.size() == 1, why(decoded));
    return decoded->slots[0];
  }

  sw::status put_end(uint64_t client, const std::string& key, uint64_t put_id) {
    auto reply = call(sw::method::put_end,
                      sw::put_finish_request{client, {sw::put_end_entry{key, put_id, false, 0}}});
    BOOST_REQUIRE_MESSAGE(reply, "raw put_end: " << why(reply));
    auto decoded = sw::decode_statuses_reply(*reply);
    BOOST_REQUIRE_MESSAGE(decoded && decoded->results.size() == 1, why(decoded));
    return decoded->results[0];
  }

  /// Where `key` lives (a get's first step: it takes a lease on the object).
  sw::object_location locate(uint64_t client, const std::string& key) {
    auto reply = call(sw::method::get_replicas, sw::keys_request{client, {key}, false});
    BOOST_REQUIRE_MESSAGE(reply, "raw get_replicas: " << why(reply));
    auto decoded = sw::decode_get_replicas_reply(*reply);
    BOOST_REQUIRE_MESSAGE(decoded && decoded->objects.size() == 1, why(decoded));
    return decoded->objects[0];
  }

private:
  uint16_t port_;
  uint64_t mounts_ = 0;
  std::unique_ptr<transport::control::client> control_;
};

/// A plain TCP connection that speaks ZMTP by hand (greeting, READY as a DEALER, frames), to send
/// what no well-behaved peer sends: truncated frames, garbage, a WRITE whose body stops halfway.
class raw_zmtp {
public:
  explicit raw_zmtp(uint16_t port) : fd_(test::connect_loopback(port)) {
    BOOST_REQUIRE_MESSAGE(fd_ >= 0, "cannot connect to 127.0.0.1:" << port);
  }
  ~raw_zmtp() {
    if (fd_ >= 0)
      ::close(fd_);
  }
  raw_zmtp(const raw_zmtp&) = delete;
  raw_zmtp& operator=(const raw_zmtp&) = delete;

  /// Sends all of `bytes`; false when the peer closed the connection (EPIPE, ECONNRESET).
  bool send(const std::vector<uint8_t>& bytes) {
    size_t sent = 0;
    while (sent < bytes.size()) {
      auto n = ::send(fd_, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        return false;
      sent += static_cast<size_t>(n);
    }
    return true;
  }

  bool hello() { return send(concat({zmtp_greeting(), zmtp_ready_dealer()})); }

  /// One frame: header (MORE when `more`) and body.
  static std::vector<uint8_t> frame(const std::vector<uint8_t>& body, bool more = false) {
    std::vector<uint8_t> out(9);
    out.resize(transport::zmtp::encode_frame_header(out.data(), body.size(), more));
    out.insert(out.end(), body.begin(), body.end());
    return out;
  }

  /// The body of the next message frame from the peer (its greeting and commands skipped);
  /// nullopt when the peer closed the connection or nothing came within `timeout`.
  std::optional<std::vector<uint8_t>> next_frame(milliseconds timeout) {
    const auto until = steady::now() + timeout;
    for (;;) {
      if (!greeted_ && in_.size() >= transport::zmtp::greeting_size) {
        in_.erase(in_.begin(), in_.begin() + transport::zmtp::greeting_size);
        greeted_ = true;
      }
      if (greeted_) {
        transport::zmtp::frame_header h;
        if (transport::zmtp::decode_frame_header(in_, h) != transport::zmtp::violation::none)
          return std::nullopt;
        if (h.header_bytes > 0 && in_.size() >= h.header_bytes + h.size) {
          std::vector<uint8_t> body(in_.begin() + static_cast<long>(h.header_bytes),
                                    in_.begin() + static_cast<long>(h.header_bytes + h.size));
          in_.erase(in_.begin(), in_.begin() + static_cast<long>(h.header_bytes + h.size));
          if (!h.command)
            return body;
          continue;
        }
      }
      if (!receive(until))
        return std::nullopt;
    }
  }

  /// True once the peer closed the connection (EOF or reset) within `timeout`; bytes it sent
  /// meanwhile are kept for next_frame.
  bool closed_by_peer(milliseconds timeout) {
    const auto until = steady::now() + timeout;
    while (!closed_)
      if (!receive(until))
        return closed_;
    return true;
  }

private:
  /// Reads what arrives before `until`; false on timeout or when the connection ended.
  bool receive(steady::time_point until) {
    if (closed_)
      return false;
    for (;;) {
      auto left = std::chrono::duration_cast<milliseconds>(until - steady::now()).count();
      if (left <= 0)
        return false;
      pollfd p{fd_, POLLIN, 0};
      int r = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 100)));
      if (r < 0 && errno != EINTR)
        return false;
      if (r <= 0)
        continue;
      uint8_t buf[65536];
      auto n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0) {
        closed_ = true;
        return false;
      }
      in_.insert(in_.end(), buf, buf + n);
      return true;
    }
  }

  int fd_;
  std::vector<uint8_t> in_;
  bool greeted_ = false;
  bool closed_ = false;
};

} // namespace kvferry::test::rig
