#pragma once
/// The emulated NIC of one opened device context: its protection domains, memory regions and
/// queue pairs, and one thread that serves the fabric (wire.hpp). Internal to
/// libkvferry_verbs_emulated; the verbs handles of provider.cpp are thin wrappers around it.
///
/// One mutex guards every table and every connection buffer; the NIC thread holds it while it
/// handles an event (sockets are non-blocking, so it never waits inside), API calls hold it for
/// their bookkeeping. Lock order: device_state::nics_mutex -> nic::mutex_ -> cq_core::mutex_ and
/// device_state::mutex (leaves).
///
/// A queue pair's send queue holds its outstanding work requests in posting order:
///
///   post ──> UNSENT ──serialized──> SENT ──answer──> DONE ──(in order, after a slow delay)──> CQ
///     │                               (lost: never answered, waits for ERROR)
///     └─ refused locally (port down, local protection, injected fault) ──> DONE with an error
///
/// The first completion with an error moves the queue pair to ERROR: the rest flush
/// (IBV_WC_WR_FLUSH_ERR) and its connections close, so the peer's requests fail too.

#include <atomic>
#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "transport/rdma/emulated/emulated.hpp"
#include "transport/rdma/emulated/wire.hpp"
#include "transport/rdma/verbs.hpp"

namespace kvferry::transport::rdma::emulated::detail {

using clock = std::chrono::steady_clock;

class nic;

/// 256..4096 for an ibv_mtu value (IBV_MTU_256 = 1 .. IBV_MTU_4096 = 5), 0 for another value.
[[nodiscard]] int path_mtu_bytes(int m) noexcept;

/// Process-wide state of one device name: pending faults, port state, counters, open NICs.
struct device_state {
  explicit device_state(std::string device_name) : name(std::move(device_name)) {}

  /// The fault the next posted work request takes, if any (count decremented).
  [[nodiscard]] std::optional<fault> take_fault();
  [[nodiscard]] bool port_up();

  const std::string name;
  std::mutex mutex; // faults, up
  std::deque<fault> faults;
  bool up = true;

  std::mutex nics_mutex; // taken before any nic's mutex
  std::vector<nic*> nics;

  std::atomic<uint64_t> contexts_opened{0};
  std::atomic<uint64_t> qps_created{0};
  std::atomic<uint64_t> qps_destroyed{0};
  std::atomic<uint64_t> mrs_registered{0};
  std::atomic<uint64_t> mrs_deregistered{0};
  std::atomic<uint64_t> wrs_posted{0};
  std::atomic<uint64_t> wrs_completed{0};
  std::atomic<uint64_t> wrs_failed{0};
  std::atomic<uint64_t> remote_access_errors{0};
  std::atomic<uint64_t> peer_connections_refused{0};
};

/// The state of device `name`, created on first use, never destroyed (NIC threads may outlive
/// static destruction order).
[[nodiscard]] device_state& device(const std::string& name);

/// A completion queue: completions in arrival order, and an eventfd that is readable while an
/// armed queue holds completions. Grows past its depth rather than drop a completion.
class cq_core {
public:
  cq_core(int event_fd, uint32_t owner_serial) : fd_(event_fd), owner_(owner_serial) {}
  ~cq_core();
  cq_core(const cq_core&) = delete;
  cq_core& operator=(const cq_core&) = delete;

  void push(const work_completion& wc);
  [[nodiscard]] size_t poll(std::span<work_completion> out);
  void arm();
  void consume_event();
  [[nodiscard]] int fd() const noexcept { return fd_; }
  /// The serial of the NIC whose context created it (a queue pair must use its own context's).
  [[nodiscard]] uint32_t owner() const noexcept { return owner_; }

private:
  void signal_locked();

  std::mutex mutex_;
  std::deque<work_completion> queue_;
  bool armed_ = false;
  int fd_;
  uint32_t owner_;
};

class nic {
public:
  /// Opens a context on `device`: its listening socket and its thread.
  [[nodiscard]] static caf::expected<std::shared_ptr<nic>> open(device_state& device);
  ~nic();
  nic(const nic&) = delete;
  nic& operator=(const nic&) = delete;

  /// Stops and joins the thread, closes every socket; later calls fail. Idempotent.
  void shutdown();

  [[nodiscard]] device_state& device() const noexcept { return device_; }
  [[nodiscard]] uint32_t serial() const noexcept { return serial_; }
  [[nodiscard]] uint16_t lid() const noexcept { return lid_; }
  [[nodiscard]] const gid_bytes& gid() const noexcept { return gid_; }

  [[nodiscard]] caf::expected<uint32_t> alloc_pd();
  [[nodiscard]] caf::expected<uint32_t> register_mr(uint32_t pd, void* addr, size_t length,
                                                    int access);
  void deregister_mr(uint32_t key);

  [[nodiscard]] caf::expected<uint32_t> create_qp(uint32_t pd, std::shared_ptr<cq_core> cq,
                                                  const qp_caps& caps);
  /// Forgets the queue pair: no completion for what it had outstanding, connections closed.
  void destroy_qp(uint32_t qpn);
  [[nodiscard]] ibv_qp_state state(uint32_t qpn);
  [[nodiscard]] caf::error to_init(uint32_t qpn, uint8_t port, int access);
  [[nodiscard]] caf::error to_rtr(uint32_t qpn, const remote_qp& remote,
                                  const local_qp_params& local);
  [[nodiscard]] caf::error to_rts(uint32_t qpn, const local_qp_params& local);
  [[nodiscard]] caf::error to_error(uint32_t qpn);
  [[nodiscard]] caf::error post_send(uint32_t qpn, std::span<const work_request> wrs);
  /// Moves every queue pair to ERROR (fault_kind::qp_error).
  void fail_all_qps();

private:
  struct memory_entry {
    uint32_t pd = 0;
    uint64_t addr = 0;
    uint64_t length = 0;
    int access = 0;
  };
  enum class phase : uint8_t { unsent, sent, lost, done };
  struct wr_entry {
    work_request wr;
    uint64_t seq = 0;
    phase at = phase::unsent;
    ibv_wc_status status = IBV_WC_SUCCESS;
    std::chrono::milliseconds delay{0};
    clock::time_point ready{};
  };
  struct qp_entry {
    uint32_t pd = 0;
    std::shared_ptr<cq_core> cq;
    uint32_t max_send_wr = 0;
    ibv_qp_state state = IBV_QPS_RESET;
    int access = 0;
    remote_qp remote{};
    std::deque<wr_entry> send_queue;
    uint64_t next_seq = 1;
    /// The connection to the remote (0: none yet).
    uint64_t link = 0;
    /// While connecting is retried (the remote's backlog was full): when to give up.
    std::optional<clock::time_point> connect_deadline;
    /// The timer armed for the front request's slow completion.
    clock::time_point timer_at{};
  };
  enum class role : uint8_t { requester, greeted, responder };
  struct connection {
    uint64_t id = 0;
    int fd = -1; // -1 once closed
    role side = role::requester;
    uint32_t qpn = 0; // the local queue pair it serves
    byte_buffer in;
    byte_buffer out;
    uint32_t events = 0; // epoll interest now
  };
  using connection_ptr = std::shared_ptr<connection>;

  nic(device_state& device, uint32_t serial);

  // Verbs semantics (nic.cpp).
  [[nodiscard]] caf::error check_open() const;
  [[nodiscard]] qp_entry* find_qp(uint32_t qpn);
  /// Whether `key` names a region of `pd` covering [addr, addr+length) with all of `access`.
  [[nodiscard]] bool covers(uint32_t key, uint32_t pd, uint64_t addr, uint64_t length,
                            int access) const;
  void complete(uint32_t qpn, qp_entry& qp, const wr_entry& e, ibv_wc_status status);
  /// Moves the completed front of the send queue to the CQ, in order; the first failure moves
  /// the queue pair to ERROR.
  void deliver(uint32_t qpn, qp_entry& qp);
  void enter_error(uint32_t qpn, qp_entry& qp);
  /// The link is gone: what the queue pair had outstanding fails with RETRY_EXC_ERR.
  void link_lost(uint32_t qpn);
  /// Serializes unsent requests onto the queue pair's link (connecting it first).
  void pump(uint32_t qpn, qp_entry& qp);
  void add_timer(clock::time_point when, uint32_t qpn);
  void wake();

  // The fabric (nic_io.cpp).
  void run();
  enum class connect_result : uint8_t { connected, retry, refused };
  [[nodiscard]] connect_result connect_link(uint32_t qpn, qp_entry& qp);
  void accept_all();
  void on_event(uint64_t id, uint32_t events);
  /// Reads what the socket has (false: end of stream or error).
  [[nodiscard]] bool read_some(connection& c);
  /// Writes what the socket takes (false: error).
  [[nodiscard]] bool flush(connection& c);
  /// Handles the complete frames in c.in (false: malformed, close).
  [[nodiscard]] bool process_input(connection& c);
  [[nodiscard]] bool on_greeting(connection& c, const greeting& g);
  void on_request(connection& c, const request_header& h, const uint8_t* payload);
  [[nodiscard]] bool on_response(connection& c, const response_header& h, const uint8_t* payload);
  void update_interest(connection& c);
  /// Closes the connection; a requester link's loss fails its queue pair's requests when
  /// `fail_requests`.
  void close_connection(uint64_t id, bool fail_requests);
  void close_connections_of(uint32_t qpn);

  device_state& device_;
  const uint32_t serial_;
  const uint16_t lid_;
  gid_bytes gid_{};

  mutable std::mutex mutex_;
  bool closed_ = false;
  bool stopping_ = false;
  uint32_t next_pd_ = 1;
  uint32_t next_key_;
  uint32_t next_qpn_ = 0x100;
  uint64_t next_connection_ = 16; // below: the wake and listen ids
  std::unordered_map<uint32_t, memory_entry> regions_;
  std::unordered_map<uint32_t, qp_entry> qps_;
  std::unordered_map<uint64_t, connection_ptr> connections_;
  std::multimap<clock::time_point, uint32_t> timers_;

  int epoll_fd_ = -1;
  int wake_fd_ = -1;
  int listen_fd_ = -1;
  std::thread thread_;
};

} // namespace kvferry::transport::rdma::emulated::detail
