#pragma once
/// The subcommands of the `kvferry` tool. Each returns the process exit code.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "config/settings.hpp"

namespace kvferry::tools {

/// Anonymous memory mapped for a segment or a local buffer (pages are touched lazily).
struct mapped_buffer {
  explicit mapped_buffer(size_t n);
  ~mapped_buffer();
  mapped_buffer(const mapped_buffer&) = delete;
  mapped_buffer& operator=(const mapped_buffer&) = delete;
  size_t size;
  uint8_t* data = nullptr;
};

/// The optional Prometheus metrics port of a long-running command (tools/metrics_port.hpp).
struct metrics_options {
  /// 0: no metrics port.
  uint16_t port = 0;
  /// Empty: the command's own bind address.
  std::string host;
  /// A request must arrive, and a response be taken, within this.
  uint64_t timeout_ms = 10000;
};

/// The data protocol of `s` as the tools print it: "tcp", "rdma" or "rdma (emulated)".
inline std::string protocol_name(const config::settings& s) {
  if (s.transport != config::protocol::rdma)
    return "tcp";
  return s.rdma.provider == config::rdma_provider_kind::emulated ? "rdma (emulated)" : "rdma";
}

/// The same for a report's header, saying what an emulated provider's figures are worth.
inline std::string protocol_note(const config::settings& s) {
  if (s.transport != config::protocol::rdma)
    return "tcp";
  if (s.rdma.provider == config::rdma_provider_kind::emulated)
    return "rdma (emulated NICs, no RDMA hardware: figures say nothing about RDMA speed)";
  std::string nics;
  for (const auto& n : s.device_names)
    nics += (nics.empty() ? "" : ",") + n;
  return "rdma (libibverbs, NICs: " + (nics.empty() ? std::string("all found") : nics) + ")";
}

struct demo_options {
  uint32_t layers = 32;
  uint32_t blocks = 64;
  /// Bytes of one layer of one KV block.
  uint64_t block_bytes = 64 << 10;
  /// Run both sides in this process (same-process path) instead of two processes over TCP.
  bool in_process = false;
  /// Internal: run only the decode side, pulling from this prefill segment (the demo's decode
  /// process is started this way).
  std::string decode_from;
  /// The --config path the demo was given, passed on to the processes it starts.
  std::string config_path;
};

/// Builds a synthetic KV cache in a prefill segment, moves it to a decode segment, verifies every
/// byte and prints bytes, GB/s and task states.
int run_demo(const config::settings& settings, const demo_options& options);

struct node_options {
  /// Bytes of memory the node registers; 0 means global_segment_size.
  uint64_t segment_bytes = 0;
  /// Fill the segment with tools/pattern.hpp's pattern of this seed (0: leave zeroed).
  uint64_t fill_seed = 0;
  metrics_options metrics;
};

/// A long-lived node: serves its segment until SIGINT or SIGTERM.
int run_node(const config::settings& settings, const node_options& options);

/// Flags of `kvferry bench`, named as Mooncake's transfer_engine_bench names them.
struct bench_options {
  std::string mode = "initiator";
  std::string metadata_server;
  std::string local_server_name;
  std::string segment_id;
  std::string protocol = "tcp";
  std::string device_name;
  /// verbs or emulated (--protocol=rdma only); empty: the configuration's rdma_provider.
  std::string rdma_provider;
  std::string operation = "read";
  uint64_t buffer_size = 1ULL << 30;
  uint32_t batch_size = 128;
  uint64_t block_size = 65536;
  double duration = 10;
  uint32_t threads = 4;
  std::string report_unit = "GB";
  uint32_t report_precision = 2;
  // kvferry additions
  bool verify = false;
  uint64_t timeout_ms = 0;
  bool json = false;
  int64_t target_offset = 0;
};

/// Seed of the pattern a bench target fills its buffer with, and that WRITE runs leave behind (so
/// READ verification works after any run).
inline constexpr uint64_t bench_target_seed = 0x7461726765740001ULL;

int run_bench(config::settings settings, const bench_options& options);

/// Flags of `kvferry master` (the store's master).
struct master_options {
  /// Address to listen on.
  std::string host = "0.0.0.0";
  /// 0: the port of master_server_address, else 50051.
  uint16_t port = 0;
  uint64_t lease_ms = 10000;
  uint64_t ttl_ms = 10000;
  uint64_t watch_ms = 1000;
  uint64_t put_timeout_ms = 30000;
  uint64_t commit_timeout_ms = 5000;
  double high_watermark = 0.9;
  double evict_ratio = 0.05;
  metrics_options metrics;
};

/// The store master: serves clients until SIGINT or SIGTERM.
int run_master(const config::settings& settings, const master_options& options);

/// Flags of `kvferry metadata` (a server of Mooncake's HTTP metadata protocol at /metadata).
struct metadata_options {
  /// Address to listen on.
  std::string host = "0.0.0.0";
  /// 0 picks a free port (printed at start).
  uint16_t port = 0;
  uint64_t max_keys = 1ULL << 20;
  uint64_t max_value_bytes = 4ULL << 20;
  /// Keys and values together (and 128 bytes per entry).
  uint64_t max_stored_bytes = 1ULL << 30;
  uint64_t max_connections = 256;
  /// A request must arrive, and a response be taken, within this; idle connections close after it.
  uint64_t timeout_ms = 10000;
  metrics_options metrics;
};

/// The metadata service: serves until SIGINT or SIGTERM.
int run_metadata(const metadata_options& options);

/// A store client that only contributes its segment (global_segment_size) to the store and
/// holds replicas, until SIGINT or SIGTERM.
int run_store_node(const config::settings& settings, const metrics_options& metrics = {});

/// Flags of `kvferry store-bench` (a store client measuring put and get against a running master
/// and store nodes), named in the style of `kvferry bench`.
struct store_bench_options {
  /// put, get or both (put first, then get, for every value size).
  std::string operation = "both";
  /// One size or a comma-separated list ("4KiB,64KiB,1MiB,4MiB").
  std::string value_size = "4KiB,64KiB,1MiB,4MiB";
  /// Objects per call (batch_put_from / batch_get_into).
  uint32_t batch_size = 128;
  uint32_t threads = 1;
  /// Seconds of each measured phase (per operation and value size).
  double duration = 5;
  /// Replicas of each object the put phase writes.
  uint32_t replica_num = 1;
  /// Objects each thread reads over and over in the get phase; 0: as many as fit in a third of
  /// the store's capacity (at most 4096 per thread).
  uint64_t get_keys = 0;
  /// Memory this process contributes to the store (the configuration's global_segment_size is
  /// for store nodes; the bench contributes none unless asked).
  std::string segment_size = "0";
  /// Go through the staging buffer (put/get of unregistered memory) instead of put_from/get_into.
  bool staging = false;
  bool verify = false;
  bool json = false;
  /// Deadline of each call (0: store_deadline_ms).
  uint64_t timeout_ms = 0;
  /// Prefix of every key (default: "store-bench/" and a random run id).
  std::string key_prefix;
};

int run_store_bench(config::settings settings, const store_bench_options& options);

/// Flags of `kvferry trace-replay` (replays a request trace through the store as prefill/decode
/// would).
struct trace_replay_options {
  std::string file;
  /// Bytes of the KV cache of one trace block (512 tokens).
  std::string block_size = "16KiB";
  /// Replay only the first N requests (0: all).
  uint64_t requests = 0;
  uint32_t replica_num = 1;
  std::string segment_size = "0";
  /// Seconds between progress lines (0: none).
  double progress = 1;
  bool verify = false;
  bool json = false;
  uint64_t timeout_ms = 0;
  std::string key_prefix;
};

int run_trace_replay(config::settings settings, const trace_replay_options& options);

/// Flags of `kvferry rdma-selftest` (checks a machine's RDMA NICs with kvferry's RDMA path).
struct rdma_selftest_options {
  /// Comma list of NICs; empty: every device found.
  std::string device_name;
  /// verbs (libibverbs) or emulated (software NICs).
  std::string rdma_provider = "verbs";
  /// Comma list of transfer sizes (size strings: 4096, 64KiB, 1MiB).
  std::string sizes = "4096,65536,1048576";
  /// Seconds of each measured phase (WRITE and READ per size, and the latency run).
  double duration = 2;
  /// Host a segment for a --peer run on another machine, until SIGINT or SIGTERM.
  bool serve = false;
  /// Segment name of a --serve instance: run against it instead of on loopback.
  std::string peer;
  /// Write the figures as JSON to this file.
  std::string report;
};

int run_rdma_selftest(config::settings settings, const rdma_selftest_options& options);

} // namespace kvferry::tools
