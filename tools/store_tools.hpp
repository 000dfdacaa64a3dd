#pragma once
/// What `kvferry store-bench` and `kvferry trace-replay` share: the client's settings for a
/// benchmark process, value patterns derived from keys, latency percentiles, the master's report.

#include <algorithm>
#include <cstdio>
#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "actors/store/client.hpp"
#include "config/settings.hpp"
#include "tools/pattern.hpp"

namespace kvferry::tools {

/// The seed of the pattern a value carries: it depends only on the key (FNV-1a), so any process
/// that knows the key can check the bytes it reads.
inline uint64_t key_seed(std::string_view key) noexcept {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : key) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return mix(h);
}

/// The p-quantile (0..1) of `values`, sorted in place; 0 when empty.
inline double percentile(std::vector<double>& values, double p) {
  if (values.empty())
    return 0;
  std::sort(values.begin(), values.end());
  auto at = static_cast<size_t>(p * static_cast<double>(values.size()));
  return values[std::min(values.size() - 1, at)];
}

/// `text` as a JSON string literal (quotes included).
inline std::string json_string(std::string_view text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

/// A random run id, so that two runs against one store never share keys.
inline std::string run_id() {
  std::random_device rd;
  return hex((uint64_t{rd()} << 32) | rd());
}

/// The settings of a benchmark's own store client: it contributes `segment_bytes` (not the
/// configuration's global_segment_size, which is meant for the store nodes sharing the file) and
/// a staging buffer of `staging_bytes` (0 when every value lives in registered memory).
inline config::settings bench_client_settings(config::settings s, uint64_t segment_bytes,
                                              uint64_t staging_bytes) {
  s.global_segment_size = segment_bytes;
  s.local_buffer_size = staging_bytes;
  return s;
}

/// What the master's report says about capacity and eviction (store::client::master_stats).
struct master_figures {
  uint64_t capacity = 0;
  uint64_t used = 0;
  uint64_t objects = 0;
  uint64_t evictions = 0;
};

/// Reads the figures out of the master's JSON report; nothing when it cannot be had or parsed.
std::optional<master_figures> read_master_figures(store::client& c);

} // namespace kvferry::tools
