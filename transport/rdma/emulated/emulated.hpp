#pragma once
/// The EMULATED verbs provider: a software NIC for machines without RDMA hardware. It implements
/// the interface of transport/rdma/verbs.hpp so that kvferry's RDMA data path, its tests and its
/// benchmarks run where no RDMA device exists. It is an emulation, not RDMA: no byte of it touches
/// an RDMA device, and its figures say nothing about RDMA performance.
///
/// What it emulates (RC, one-sided, signalled):
///   - devices "emu_rdma0".."emu_rdma<N-1>", one port each (ACTIVE, InfiniBand, MTU 4096, a LID
///     unique per opened context, one GID that names the context across processes: fe80::/64,
///     then the process id and the context's serial number);
///   - memory regions with lkey/rkey and access bits, checked on every access (local protection
///     error at the requester, remote access error for a bad rkey, range or right at the target);
///   - queue pairs RESET -> INIT -> RTR -> RTS -> ERROR, completions in posting order per queue
///     pair, a failed request moving its queue pair to ERROR and flushing the rest (WR_FLUSH_ERR);
///   - completion queues with an event fd (an eventfd) for arm()/consume_event();
///   - the fabric: each opened context runs one "NIC" thread that listens on an abstract unix
///     socket named after its GID; a queue pair connects to its remote's socket on first use. The
///     remote application's threads do nothing: the remote NIC thread serves READs from, and
///     WRITEs into, its registered memory. Works within a process and between processes of the
///     same user on one host (the peer's uid is checked);
///   - faults for tests (inject(), set_port_up()) and per-device counters (stats()).
///
/// What it does not emulate: a wire between hosts, MTU packetization, PSNs and retransmission
/// timers (a request is lost or answered, a closed socket is "retry exceeded" at once), SEND/RECV,
/// atomics, more than one scatter/gather entry, shared receive queues, RoCE, memory windows,
/// on-demand paging. A completion queue never overflows: it grows past its depth.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "transport/rdma/verbs.hpp"

namespace kvferry::transport::rdma::emulated {

/// What inject() makes happen to the next work requests posted on a device (in this process).
enum class fault_kind : uint8_t {
  /// The next `count` requests complete with IBV_WC_RETRY_EXC_ERR (their queue pair goes to
  /// ERROR; later and outstanding requests on it flush with IBV_WC_WR_FLUSH_ERR).
  completion_error,
  /// Every queue pair of the device in this process moves to ERROR now (outstanding requests
  /// flush); `count` and `delay` are ignored.
  qp_error,
  /// The next `count` requests are never answered (they, and the requests behind them on their
  /// queue pair, hang until the queue pair goes to ERROR, then flush).
  lost_completion,
  /// The next `count` requests complete only `delay` after their answer arrived (the requests
  /// behind them on their queue pair wait too: completions stay in posting order).
  slow_completion,
  /// The next `count` requests complete with IBV_WC_REM_ACCESS_ERR (without reaching the target).
  remote_access_error,
};

struct fault {
  fault_kind kind = fault_kind::completion_error;
  uint32_t count = 1;
  std::chrono::milliseconds delay{0};
};

/// Queues a fault on `device` ("emu_rdma1"), process-wide: it applies to the device's contexts
/// opened now or later. Faults queued earlier are used up first.
void inject(const std::string& device, fault f);

/// Port state of `device`, process-wide. Down: query_port says IBV_PORT_DOWN, to_rtr and to_rts
/// fail, and requests posted while it is down complete with IBV_WC_RETRY_EXC_ERR.
void set_port_up(const std::string& device, bool up);

/// Drops the pending faults of `device` and brings its port up (counters are kept).
void clear(const std::string& device);

/// Per device name, process-wide, since the process started.
struct counters {
  uint64_t contexts_opened = 0;
  uint64_t qps_created = 0;
  uint64_t qps_destroyed = 0;
  uint64_t mrs_registered = 0;
  uint64_t mrs_deregistered = 0;
  /// Work requests accepted by post_send.
  uint64_t wrs_posted = 0;
  /// Completions with IBV_WC_SUCCESS.
  uint64_t wrs_completed = 0;
  /// Completions with any other status (flushes included).
  uint64_t wrs_failed = 0;
  /// Completions with IBV_WC_REM_ACCESS_ERR (also counted in wrs_failed).
  uint64_t remote_access_errors = 0;
  /// Connections this device's contexts refused (no such queue pair, wrong state or peer, other
  /// uid, malformed greeting).
  uint64_t peer_connections_refused = 0;
};

[[nodiscard]] counters stats(const std::string& device);

/// A provider listing `devices` emulated NICs ("emu_rdma0".."emu_rdma<devices-1>"), 1..16;
/// nullptr for another count.
[[nodiscard]] std::shared_ptr<provider> make_provider(uint32_t devices);

} // namespace kvferry::transport::rdma::emulated

/// The entry point load_emulated_provider() looks up (emulated_entry_symbol): a new provider that
/// the caller owns, or nullptr when `devices` is not in 1..16.
extern "C" kvferry::transport::rdma::provider* kvferry_emulated_verbs_provider(uint32_t devices);
