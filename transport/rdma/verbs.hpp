#pragma once
/// The subset of libibverbs kvferry's RDMA data path uses, as an interface with two providers:
///   - `libibverbs` (verbs_real.cpp): the real API, ibv_* calls on a device the kernel exposes;
///   - `emulated` (transport/rdma/emulated/, a separate shared library, never linked into the
///     product: loaded only when "rdma_provider": "emulated" is chosen, or linked by tests): an
///     in-software NIC for machines without RDMA hardware, clearly named as such.
///
/// The shapes follow verbs one to one (a device context, a protection domain, memory regions
/// with lkey/rkey, completion queues with an event fd, RC queue pairs brought RESET -> INIT ->
/// RTR -> RTS, signalled one-sided READ/WRITE work requests, work completions with ibv_wc_status)
/// and reuse libibverbs' own enums, so the data path reads like verbs code and the emulated
/// provider is held to verbs semantics: a failed work request moves its queue pair to ERROR and
/// every later or outstanding request on it completes with IBV_WC_WR_FLUSH_ERR.
///
/// Ownership and order: objects are RAII handles; a child (memory region, queue pair) must be
/// destroyed before the parent it was made from (protection domain, completion queue), and those
/// before their device, as with ibv_destroy_qp / ibv_dereg_mr / ibv_destroy_cq /
/// ibv_dealloc_pd / ibv_close_device. Owners declare members in creation order so that the
/// destructor order is right.
///
/// Threads: post_send and poll may be called from different threads (as with verbs); a queue
/// pair's state changes must not race with its own post_send.

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include <infiniband/verbs.h>

namespace kvferry::transport::rdma {

/// A device as listed by the provider (ibv_get_device_list + sysfs facts).
struct device_info {
  /// "mlx5_0"; emulated devices are named "emu_rdma<N>".
  std::string name;
  /// NUMA node of the device's PCI function, -1 when unknown.
  int numa_node = -1;
  /// The PCI bus id ("0000:3b:00.0"), empty when unknown.
  std::string pci_bus_id;
};

struct port_info {
  ibv_port_state state = IBV_PORT_DOWN;
  /// IBV_LINK_LAYER_INFINIBAND or IBV_LINK_LAYER_ETHERNET (RoCE: LID is 0, the GID routes).
  uint8_t link_layer = IBV_LINK_LAYER_INFINIBAND;
  uint16_t lid = 0;
  ibv_mtu active_mtu = IBV_MTU_1024;
  int gid_table_len = 0;
};

using gid_bytes = std::array<uint8_t, 16>;

/// What a queue pair needs to know about its remote peer to go to RTR (what a handshake carries).
struct remote_qp {
  uint32_t qp_num = 0;
  uint16_t lid = 0;
  gid_bytes gid{};
  /// The path MTU both sides agreed on (the smaller of their active MTUs).
  ibv_mtu mtu = IBV_MTU_1024;
  /// The remote's initial packet sequence number (its send PSN = our receive PSN).
  uint32_t psn = 0;
};

/// The local side of a transition to RTR/RTS.
struct local_qp_params {
  uint8_t port = 1;
  /// GID index of the local port (RoCE needs a valid one; InfiniBand uses it when the remote is
  /// on another subnet).
  int gid_index = 0;
  /// Our send PSN.
  uint32_t psn = 0;
  /// Local ACK timeout exponent (4.096 us * 2^timeout) and retry counts, as ibv_modify_qp takes.
  uint8_t timeout = 14;
  uint8_t retry_cnt = 7;
  uint8_t rnr_retry = 7;
  /// Outstanding RDMA READs this side issues / accepts.
  uint8_t max_rd_atomic = 16;
};

/// One work request: a signalled one-sided READ or WRITE with one scatter/gather entry.
struct work_request {
  uint64_t wr_id = 0;
  /// IBV_WR_RDMA_READ or IBV_WR_RDMA_WRITE.
  ibv_wr_opcode opcode = IBV_WR_RDMA_READ;
  uint64_t local_addr = 0;
  uint32_t length = 0;
  uint32_t lkey = 0;
  uint64_t remote_addr = 0;
  uint32_t rkey = 0;
};

struct work_completion {
  uint64_t wr_id = 0;
  ibv_wc_status status = IBV_WC_SUCCESS;
  /// IBV_WC_RDMA_READ or IBV_WC_RDMA_WRITE (undefined when status is not success, as in verbs).
  ibv_wc_opcode opcode = IBV_WC_RDMA_READ;
  uint32_t byte_len = 0;
  uint32_t qp_num = 0;
  uint32_t vendor_err = 0;
};

class memory_region {
public:
  virtual ~memory_region() = default;
  [[nodiscard]] virtual uint32_t lkey() const noexcept = 0;
  [[nodiscard]] virtual uint32_t rkey() const noexcept = 0;
};

class completion_queue {
public:
  virtual ~completion_queue() = default;
  /// Moves up to out.size() completions into `out`; returns how many (ibv_poll_cq), or an error.
  [[nodiscard]] virtual caf::expected<size_t> poll(std::span<work_completion> out) = 0;
  /// A file descriptor that becomes readable after arm() when a completion arrives (the
  /// completion channel's fd); -1 when the provider has none (then poll in a loop).
  [[nodiscard]] virtual int event_fd() const noexcept = 0;
  /// Requests one notification for the next completion (ibv_req_notify_cq). Poll once more
  /// after arming: a completion that arrived in between does not notify.
  [[nodiscard]] virtual caf::error arm() = 0;
  /// Consumes the notification that made event_fd() readable (ibv_get_cq_event + ack).
  virtual void consume_event() = 0;
};

class queue_pair {
public:
  virtual ~queue_pair() = default;
  [[nodiscard]] virtual uint32_t qp_num() const noexcept = 0;
  /// The state as last set or as the provider moved it (ERROR after a failed request).
  [[nodiscard]] virtual ibv_qp_state state() const = 0;
  /// RESET -> INIT: port and remote access rights (IBV_ACCESS_REMOTE_READ|WRITE...).
  [[nodiscard]] virtual caf::error to_init(uint8_t port, int access) = 0;
  /// INIT -> RTR: connects to the remote queue pair.
  [[nodiscard]] virtual caf::error to_rtr(const remote_qp& remote,
                                          const local_qp_params& local) = 0;
  /// RTR -> RTS: ready to send.
  [[nodiscard]] virtual caf::error to_rts(const local_qp_params& local) = 0;
  /// Any state -> ERROR: outstanding requests complete with IBV_WC_WR_FLUSH_ERR.
  [[nodiscard]] virtual caf::error to_error() = 0;
  /// Posts the requests, in order, as one chain (ibv_post_send); all signalled. On an error
  /// none after the first refused one was posted; the error says which.
  [[nodiscard]] virtual caf::error post_send(std::span<const work_request> wrs) = 0;
};

struct qp_caps {
  uint32_t max_send_wr = 256;
  uint32_t max_recv_wr = 1;
  uint32_t max_send_sge = 1;
};

class protection_domain {
public:
  virtual ~protection_domain() = default;
  /// Registers [addr, addr+length) with `access` (IBV_ACCESS_* bits) (ibv_reg_mr).
  [[nodiscard]] virtual caf::expected<std::unique_ptr<memory_region>>
  reg_mr(void* addr, size_t length, int access) = 0;
  /// An RC queue pair in RESET whose send and receive completions go to `cq` (ibv_create_qp).
  [[nodiscard]] virtual caf::expected<std::unique_ptr<queue_pair>>
  create_qp(completion_queue& cq, const qp_caps& caps) = 0;
};

/// An opened device (ibv_context).
class device_context {
public:
  virtual ~device_context() = default;
  [[nodiscard]] virtual const std::string& name() const noexcept = 0;
  [[nodiscard]] virtual caf::expected<port_info> query_port(uint8_t port) = 0;
  [[nodiscard]] virtual caf::expected<gid_bytes> query_gid(uint8_t port, int index) = 0;
  [[nodiscard]] virtual caf::expected<std::unique_ptr<protection_domain>> alloc_pd() = 0;
  /// A completion queue of at least `depth` entries with a completion channel.
  [[nodiscard]] virtual caf::expected<std::unique_ptr<completion_queue>> create_cq(int depth) = 0;
};

class provider {
public:
  virtual ~provider() = default;
  /// "libibverbs" or "emulated".
  [[nodiscard]] virtual std::string name() const = 0;
  /// True for the software provider (every log line about RDMA says so).
  [[nodiscard]] virtual bool emulated() const noexcept = 0;
  /// The devices present; empty (not an error) when there are none.
  [[nodiscard]] virtual caf::expected<std::vector<device_info>> devices() = 0;
  /// Opens a device by name (ibv_open_device); errc::not_supported naming it when absent.
  [[nodiscard]] virtual caf::expected<std::unique_ptr<device_context>>
  open(const std::string& name) = 0;
};

/// The real provider over libibverbs.
[[nodiscard]] std::shared_ptr<provider> make_verbs_provider();

/// The emulated provider, loaded from libkvferry_verbs_emulated.so (dlopen; the product never
/// links it). `devices` is how many emulated NICs it lists (emu_rdma0 ...). The library is looked
/// up next to the running executable, in its ../lib, then by the loader's search path.
[[nodiscard]] caf::expected<std::shared_ptr<provider>> load_emulated_provider(uint32_t devices);

/// The entry point the emulated library exports (extern "C"), for load_emulated_provider.
using emulated_entry = provider* (*)(uint32_t devices);
inline constexpr const char* emulated_entry_symbol = "kvferry_emulated_verbs_provider";
inline constexpr const char* emulated_library = "libkvferry_verbs_emulated.so";

/// Human-readable names for log lines and errors.
[[nodiscard]] const char* describe_status(ibv_wc_status s) noexcept;
/// Inline (needs no libibverbs symbol): the emulated library uses it too.
[[nodiscard]] inline const char* describe_state(ibv_qp_state s) noexcept {
  switch (s) {
    case IBV_QPS_RESET: return "RESET";
    case IBV_QPS_INIT: return "INIT";
    case IBV_QPS_RTR: return "RTR";
    case IBV_QPS_RTS: return "RTS";
    case IBV_QPS_SQD: return "SQD";
    case IBV_QPS_SQE: return "SQE";
    case IBV_QPS_ERR: return "ERROR";
    default: return "UNKNOWN";
  }
}
/// 256..4096, or 0 for a value that is not an ibv_mtu.
[[nodiscard]] int mtu_bytes(ibv_mtu m) noexcept;

} // namespace kvferry::transport::rdma
