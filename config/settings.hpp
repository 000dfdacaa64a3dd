#pragma once
/// kvferry's one typed configuration. It is parsed once (from a Mooncake-compatible config.json
/// plus kvferry's own "kvferry" object) and passed down by value; no other code reads the
/// environment or a configuration file.
///
/// File format (every field optional unless marked):
/// {
///   "local_hostname": "192.168.0.137",          // required in a file; "host" or "host:rpc_port"
///   "metadata_server": "P2PHANDSHAKE",          // required in a file; P2PHANDSHAKE | http://h:p/path |
///                                               //   etcd://h:p[,h2:p2] | h:p (etcd) | redis://h:p
///   "protocol": "tcp",                          // tcp | rdma
///   "device_name": "mlx5_0,mlx5_1",             // RDMA NICs; "" or "auto-discovery" = all found
///   "master_server_address": "h:p",
///   "global_segment_size": "4GB",               // number of bytes or a size string
///   "local_buffer_size": 1073741824,
///   "kvferry": {
///     "slice_size": "64KiB", "tcp_slice_size": "1MiB", "worker_count": 2, "tcp_worker_count": 1,
///     "task_deadline_ms": 10000, "retry_limit": 8, "retry_backoff_ms": 10,
///     "retry_backoff_max_ms": 1000, "open_timeout_ms": 5000, "withdraw_timeout_ms": 5000,
///     "rpc_port": 0, "data_port": 0, "log_level": "info",
///     "max_connections": 1024, "max_connections_per_host": 1024, "handshake_timeout_ms": 10000,
///     "peer_max_queued_messages": 256, "peer_max_queued_bytes": "64MiB",
///     "reply_budget": "256MiB", "notify_inbox_messages": 4096, "notify_inbox_bytes": "16MiB",
///     "store_deadline_ms": 10000, "metadata_ttl_ms": 10000,
///     // RDMA (protocol "rdma"):
///     "rdma_provider": "verbs",                 // verbs (libibverbs) | emulated (software NICs)
///     "rdma_emulated_devices": 2,               // NICs the emulated provider lists (1-16)
///     "rdma_port": 1, "rdma_gid_index": 0,      // gid index: Mooncake's MC_GID_INDEX
///     "rdma_qp_per_endpoint": 2, "rdma_max_endpoints": 256, "rdma_max_wr": 256,
///     "rdma_cq_depth": 4096, "rdma_mtu": 4096,  // 256 | 512 | 1024 | 2048 | 4096 (upper bound)
///     "rdma_completion_timeout_ms": 2000, "rdma_nic_error_limit": 3, "rdma_nic_probe_ms": 100,
///     "nic_priority_matrix": {"cpu:0": [["mlx5_0"], ["mlx5_1"]], "cuda:0": [["mlx5_1"], []]}
///                                               // or "matrix.json", a file holding that object;
///                                               //   absent = discovered from sysfs
///   }
/// }
/// Size strings: a decimal number with an optional unit B, K/KB/KiB, M/MB/MiB, G/GB/GiB, T/TB/TiB,
/// all powers of 1024 (as Mooncake's users read "4GB"); spaces and fractions ("1.5 GB") are allowed.
/// nic_priority_matrix as a string names a file; a relative path starts at the configuration
/// file's directory.

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <caf/expected.hpp>

namespace kvferry::config {

/// Which data path moves bytes between nodes.
enum class protocol : uint8_t { tcp, rdma };

/// How segment names are resolved to descriptors.
enum class metadata_kind : uint8_t {
  /// Segment name "host:port" is asked directly at that node (no metadata service).
  p2p_handshake,
  /// A Mooncake-style HTTP metadata server: GET/PUT/DELETE url?key=...
  http,
  /// etcd v3 (one or more endpoints).
  etcd,
  /// Redis.
  redis,
};

struct metadata_server {
  metadata_kind kind = metadata_kind::p2p_handshake;
  /// Endpoints as written, without scheme: "h:p" (several for etcd), or the full URL for http.
  std::vector<std::string> endpoints;
  /// The text as the user wrote it, for messages.
  std::string text = "P2PHANDSHAKE";
};

/// Which RDMA provider the RDMA data path opens.
enum class rdma_provider_kind : uint8_t {
  /// libibverbs: the NICs the kernel exposes.
  verbs,
  /// kvferry's software NIC, for machines without RDMA hardware (tests, demos); never fast.
  emulated,
};

/// One row of Mooncake's NIC priority matrix: the NICs that serve a memory location.
struct nic_priority {
  /// NICs close to the location (same NUMA node or PCIe switch), tried first.
  std::vector<std::string> preferred;
  /// NICs used when no preferred one is available.
  std::vector<std::string> fallback;
  bool operator==(const nic_priority&) const = default;
};

/// The RDMA data path's settings ("kvferry" object, fields prefixed rdma_).
struct rdma_settings {
  rdma_provider_kind provider = rdma_provider_kind::verbs;
  /// How many NICs the emulated provider lists (emu_rdma0 ...).
  uint32_t emulated_devices = 2;
  /// The port of each NIC used (ports are numbered from 1, as in verbs).
  uint8_t port = 1;
  /// GID table index of that port (RoCE needs the right one; Mooncake reads MC_GID_INDEX).
  uint8_t gid_index = 0;
  /// Queue pairs per connection to one remote NIC; slices spread over them.
  uint32_t qp_per_endpoint = 2;
  /// Connections (endpoints) kept per local NIC; beyond it the one idle the longest is closed.
  uint32_t max_endpoints = 256;
  /// Outstanding work requests per queue pair.
  uint32_t max_wr = 256;
  /// Entries of each NIC's completion queue.
  uint32_t cq_depth = 4096;
  /// Upper bound of the path MTU in bytes; the path uses the smallest of this and both sides'
  /// active MTUs.
  uint32_t mtu = 4096;
  /// A work request unanswered this long moves its queue pair to ERROR; its slice is retried
  /// elsewhere.
  std::chrono::milliseconds completion_timeout{2000};
  /// Consecutive failed completions on a NIC before it is paused and probed.
  uint32_t nic_error_limit = 3;
  /// A paused NIC's first pause; each failed probe doubles it, up to 5 s.
  std::chrono::milliseconds nic_probe{100};
  /// Location ("cpu:N", "cuda:N") -> NICs; empty means discovered from sysfs at start.
  std::map<std::string, nic_priority> nic_priority_matrix;
  bool operator==(const rdma_settings&) const = default;
};

struct settings {
  /// Where these settings came from: a file path or "<embedded defaults>".
  std::string source = "<embedded defaults>";

  // -- Mooncake-compatible fields --------------------------------------------------------------
  /// This node's address as peers reach it (without port).
  std::string local_hostname = "127.0.0.1";
  metadata_server metadata;
  protocol transport = protocol::tcp;
  /// RDMA NIC names; empty means every device found.
  std::vector<std::string> device_names;
  std::string master_server_address;
  uint64_t global_segment_size = 3355443200ULL;
  uint64_t local_buffer_size = 1ULL << 30;

  // -- kvferry's own ("kvferry" object) ----------------------------------------------------------
  /// Tasks are split into slices of at most this many bytes (RDMA and same-process paths).
  uint64_t slice_size = 64ULL << 10;
  /// Slice size for peers reached over TCP: larger slices cost fewer frames per byte, and TCP has
  /// no multi-NIC spreading that small slices would serve.
  uint64_t tcp_slice_size = 1ULL << 20;
  /// Worker actors (data-path endpoints, one per NIC for RDMA) per node.
  uint32_t worker_count = 2;
  /// TCP worker actors per node: connections per peer, each with its own I/O thread. One keeps the
  /// fewest threads busy (best on small hosts); more help where many cores drive a fast NIC.
  uint32_t tcp_worker_count = 1;
  /// A task that is not terminal this long after submission resolves TIMEOUT.
  std::chrono::milliseconds task_deadline{10000};
  /// A failed slice is retried at most this many times (on another worker when there is one), each
  /// retry after a backoff, and never past the task's deadline.
  uint32_t retry_limit = 8;
  /// Delay before the first retry of a slice; it doubles with each attempt (the actual delay is
  /// drawn between half and all of it) up to retry_backoff_max.
  std::chrono::milliseconds retry_backoff{10};
  std::chrono::milliseconds retry_backoff_max{1000};
  /// How long open_segment, and a notification to another node, wait for the peer's node.
  std::chrono::milliseconds open_timeout{5000};
  /// How long free_batch waits for targets to confirm that withdrawn WRITEs move no more bytes.
  std::chrono::milliseconds withdraw_timeout{5000};
  /// Control-plane (CAF) port; 0 picks a free one. A port in local_hostname sets it too.
  uint16_t rpc_port = 0;
  /// Data-plane (ZeroMQ TCP) port; 0 picks a free one.
  uint16_t data_port = 0;
  /// trace, debug, info, warn, error, critical or off.
  std::string log_level = "info";

  // -- What peers may cost (each listening port; docs/ARCHITECTURE.md gives the memory bound) ---
  /// Connections at once; beyond it the one idle the longest is closed.
  uint32_t max_connections = 1024;
  /// Connections at once from one address.
  uint32_t max_connections_per_host = 1024;
  /// A connection that does not finish the ZMTP handshake in this time is closed.
  std::chrono::milliseconds handshake_timeout{10000};
  /// Replies queued for one peer (messages, bytes) before the node stops reading its requests.
  uint32_t peer_max_queued_messages = 256;
  uint64_t peer_max_queued_bytes = 64ULL << 20;
  /// Bytes queued replies hold on the data port (copies, headers, bookkeeping), over all peers;
  /// the control port uses the same figure, at most 32 MiB. At least 4 MiB.
  uint64_t reply_budget = 256ULL << 20;
  /// Notifications kept for get_notifies (count, bytes); beyond them new ones are refused.
  uint32_t notify_inbox_messages = 4096;
  uint64_t notify_inbox_bytes = 16ULL << 20;

  // -- Store clients ---------------------------------------------------------------------------
  /// Every store call (put, get, remove, exists and their batch forms) returns within this time:
  /// its result, or an error naming what did not answer.
  std::chrono::milliseconds store_deadline{10000};

  // -- Metadata service ("metadata_server" other than P2PHANDSHAKE) ---------------------------
  /// A node's entry expires this long after its last refresh (it refreshes every third of it),
  /// so a node that crashed disappears from the service within this time.
  std::chrono::milliseconds metadata_ttl{10000};

  // -- RDMA ------------------------------------------------------------------------------------
  rdma_settings rdma;

  /// Fields the parser did not know, each as a ready-to-log warning.
  std::vector<std::string> warnings;
};

/// Parses `json_text` (named `source` in messages). Errors name the source, the field, the bad
/// value and what was expected; unknown fields become warnings.
[[nodiscard]] caf::expected<settings> parse(std::string_view json_text, std::string_view source);

/// Reads and parses the file at `path`.
[[nodiscard]] caf::expected<settings> load_file(const std::string& path);

/// Settings for a process: from `cli_path` (--config) if given, else the file named by
/// KVFERRY_CONFIG, else by MOONCAKE_CONFIG_PATH, else the embedded defaults. The only place in
/// kvferry that reads the environment.
[[nodiscard]] caf::expected<settings> load(const std::optional<std::string>& cli_path);

/// Parses a size: digits with an optional fraction and unit (see above). `what` names the field
/// in the error message.
[[nodiscard]] caf::expected<uint64_t> parse_size(std::string_view text, std::string_view what);

/// Parses "P2PHANDSHAKE", "http://...", "etcd://h:p[,h:p]", "redis://h:p" or "h:p" (etcd).
[[nodiscard]] caf::expected<metadata_server> parse_metadata_server(std::string_view text,
                                                                   std::string_view what);

/// Fields that were set but that this program does not use (device_name and the rdma_ fields
/// without RDMA; rdma_emulated_devices with the verbs provider; master_server_address and
/// local_buffer_size outside a store client), each as a ready-to-log
/// sentence.
[[nodiscard]] std::vector<std::string> unused_fields(const settings& s, bool store_client = false);

[[nodiscard]] const char* to_string(protocol p) noexcept;
[[nodiscard]] const char* to_string(metadata_kind k) noexcept;
[[nodiscard]] const char* to_string(rdma_provider_kind k) noexcept;

} // namespace kvferry::config
