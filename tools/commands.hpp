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

} // namespace kvferry::tools
