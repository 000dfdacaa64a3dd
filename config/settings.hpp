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
///     "store_deadline_ms": 10000
///   }
/// }
/// Size strings: a decimal number with an optional unit B, K/KB/KiB, M/MB/MiB, G/GB/GiB, T/TB/TiB,
/// all powers of 1024 (as Mooncake's users read "4GB"); spaces and fractions ("1.5 GB") are allowed.

#include <chrono>
#include <cstdint>
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

/// Fields that were set but that this program does not use (device_name without RDMA;
/// master_server_address and local_buffer_size outside a store client), each as a ready-to-log
/// sentence.
[[nodiscard]] std::vector<std::string> unused_fields(const settings& s, bool store_client = false);

[[nodiscard]] const char* to_string(protocol p) noexcept;
[[nodiscard]] const char* to_string(metadata_kind k) noexcept;

} // namespace kvferry::config
