#pragma once
/// The subcommands of the `kvferry` tool. Each returns the process exit code.

#include <cstdint>
#include <optional>
#include <string>

#include "config/settings.hpp"

namespace kvferry::tools {

struct demo_options {
  uint32_t layers = 32;
  uint32_t blocks = 64;
  /// Bytes of one layer of one KV block.
  uint64_t block_bytes = 64 << 10;
};

/// Builds a synthetic KV cache in a "prefill" segment, moves it to a "decode" segment, verifies
/// every byte and prints bytes, GB/s and task states.
int run_demo(const config::settings& settings, const demo_options& options);

} // namespace kvferry::tools
