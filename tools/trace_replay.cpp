// `kvferry trace-replay FILE`: replays a request trace (../shared/data: one JSON object per line,
// `hash_ids` one entry per 512-token KV block) through the store as a prefill instance would,
// one request after another, as fast as the store answers (timestamps are not waited for):
//
//   1. the request's block keys: key i = hash(key i-1, hash_ids[i]), so requests with equal
//      prefixes share keys and a block is reusable only after the same prefix;
//   2. batch_exists on every key; the leading run of present keys is the cached prefix;
//   3. batch_get_into of that prefix into registered memory (zero copy); a block evicted since
//      step 2 ends the prefix there (a miss);
//   4. batch_put_from of every block after the prefix. store_full is counted and the replay goes
//      on; object_exists (a later block still cached while an earlier one was evicted) is fine.
//
// The hit rate (blocks read from the store / blocks of all requests) is printed next to the hit
// rate an infinite cache would have on the same trace, computed exactly from the keys alone.
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <unordered_set>
#include <vector>

#include <boost/json.hpp>

#include "actors/store/client.hpp"
#include "config/log.hpp"
#include "tools/commands.hpp"
#include "tools/pattern.hpp"
#include "tools/store_tools.hpp"

namespace kvferry::tools {

namespace {

using steady = std::chrono::steady_clock;

int usage_error(const std::string& what) {
  std::fprintf(stderr, "kvferry trace-replay: %s\n", what.c_str());
  return 2;
}

/// The trace's requests, each as its chained block keys.
struct trace {
  std::vector<std::vector<uint64_t>> requests;
  size_t longest = 0;
  uint64_t blocks = 0;
};

/// Reads the first `limit` requests (0: all) of a JSONL trace; a line that is not a request is
/// an error naming the line.
caf::expected<trace> read_trace(const std::string& path, uint64_t limit) {
  std::ifstream in(path);
  if (!in)
    return make_error(errc::invalid_argument, "cannot open the trace '" + path + "'");
  trace t;
  std::string line;
  uint64_t number = 0;
  while ((limit == 0 || t.requests.size() < limit) && std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos)
      continue;
    boost::system::error_code ec;
    auto v = boost::json::parse(line, ec);
    const boost::json::value* ids = nullptr;
    if (!ec && v.is_object())
      ids = v.as_object().if_contains("hash_ids");
    if (ids == nullptr || !ids->is_array())
      return make_error(errc::invalid_argument, path + ":" + std::to_string(number)
                                                  + ": expected a JSON object with a "
                                                    "\"hash_ids\" array");
    std::vector<uint64_t> keys;
    uint64_t chained = 0x6b76666572727931ULL;
    for (const auto& id : ids->as_array()) {
      if (!id.is_int64() && !id.is_uint64())
        return make_error(errc::invalid_argument, path + ":" + std::to_string(number)
                                                    + ": a hash id that is not an integer");
      const auto value = id.is_uint64() ? id.as_uint64() : static_cast<uint64_t>(id.as_int64());
      chained = mix(chained ^ mix(value));
      keys.push_back(chained);
    }
    if (keys.size() > transport::store::max_batch)
      return make_error(errc::invalid_argument, path + ":" + std::to_string(number) + ": "
                                                  + std::to_string(keys.size())
                                                  + " blocks in one request; at most "
                                                  + std::to_string(transport::store::max_batch));
    t.longest = std::max(t.longest, keys.size());
    t.blocks += keys.size();
    t.requests.push_back(std::move(keys));
  }
  if (t.requests.empty())
    return make_error(errc::invalid_argument, "the trace '" + path + "' has no request");
  return t;
}

struct tally {
  uint64_t requests = 0, blocks = 0, hits = 0, infinite_hits = 0;
  uint64_t blocks_got = 0, blocks_put = 0, already_present = 0, evicted_after_exists = 0;
  uint64_t store_full = 0, errors = 0, verify_errors = 0;
  std::vector<double> exists_us, get_us, put_us;
  std::string first_problem;

  void note(const std::string& what) {
    if (first_problem.empty())
      first_problem = what;
  }
};

double micros_since(steady::time_point t0) {
  return std::chrono::duration<double, std::micro>(steady::now() - t0).count();
}

} // namespace

int run_trace_replay(config::settings settings, const trace_replay_options& o) {
  auto block = config::parse_size(o.block_size, "--block_size");
  if (!block)
    return usage_error(context_of(block.error()));
  if (*block == 0)
    return usage_error("--block_size: 0 bytes");
  auto segment = config::parse_size(o.segment_size, "--segment_size");
  if (!segment)
    return usage_error(context_of(segment.error()));
  if (o.replica_num == 0 || o.replica_num > transport::store::max_replicas)
    return usage_error("--replica_num must be between 1 and "
                       + std::to_string(transport::store::max_replicas));
  auto tr = read_trace(o.file, o.requests);
  if (!tr)
    return usage_error(context_of(tr.error()));
  const uint64_t block_bytes = *block;
  auto c = store::client::create(bench_client_settings(settings, *segment, 0));
  if (!c) {
    std::fprintf(stderr, "kvferry trace-replay: %s\n", describe(c.error()).c_str());
    return 1;
  }
  auto& client = **c;
  // Blocks read and blocks written, each up to the longest request.
  const uint64_t area = tr->longest * block_bytes;
  mapped_buffer buffer(2 * area);
  if (buffer.data == nullptr)
    return usage_error("cannot map " + std::to_string(2 * area) + " bytes for the blocks");
  std::memset(buffer.data, 0, 2 * area);
  if (auto err = client.register_buffer(buffer.data, 2 * area)) {
    std::fprintf(stderr, "kvferry trace-replay: %s\n", describe(err).c_str());
    return 1;
  }
  uint8_t* got_area = buffer.data;
  uint8_t* put_area = buffer.data + area;
  const std::string prefix = o.key_prefix.empty() ? "trace/" + run_id() : o.key_prefix;
  auto key_of = [&](uint64_t k) { return prefix + "/" + hex(k); };
  store::put_options po;
  po.replicas = static_cast<uint8_t>(o.replica_num);
  po.deadline = std::chrono::milliseconds(o.timeout_ms);
  store::get_options go;
  go.deadline = std::chrono::milliseconds(o.timeout_ms);

  const auto before = read_master_figures(client);
  std::printf("trace-replay: %s: %zu requests, %" PRIu64 " blocks of %" PRIu64
              " bytes (longest request %zu blocks); store capacity %" PRIu64 " bytes\n",
              o.file.c_str(), tr->requests.size(), tr->blocks, block_bytes, tr->longest,
              before ? before->capacity : 0);
  std::fflush(stdout);
  if (!o.verify) // a realistic, non-zero payload, written once
    for (uint64_t i = 0; i < tr->longest; ++i)
      fill_pattern(put_area + i * block_bytes, block_bytes, key_seed(prefix) + i);

  tally t;
  std::unordered_set<uint64_t> seen; // the infinite cache
  const auto start = steady::now();
  auto last_progress = start;
  const auto progress_every = std::chrono::duration<double>(o.progress);
  auto hit_rate = [](uint64_t hits, uint64_t blocks) {
    return blocks == 0 ? 0.0 : 100.0 * static_cast<double>(hits) / static_cast<double>(blocks);
  };
  std::vector<std::string> keys;
  std::vector<void*> get_addrs;
  std::vector<const void*> put_addrs;
  for (const auto& request : tr->requests) {
    const size_t n = request.size();
    ++t.requests;
    t.blocks += n;
    size_t infinite = 0;
    while (infinite < n && seen.count(request[infinite]) > 0)
      ++infinite;
    t.infinite_hits += infinite;
    seen.insert(request.begin(), request.end());
    if (n == 0)
      continue;
    keys.clear();
    for (auto k : request)
      keys.push_back(key_of(k));

    // 2. the cached prefix
    auto t0 = steady::now();
    auto present = client.batch_exists(keys);
    t.exists_us.push_back(micros_since(t0));
    size_t prefix_len = 0;
    while (prefix_len < n && present[prefix_len] && *present[prefix_len])
      ++prefix_len;
    if (prefix_len < n && !present[prefix_len]) {
      ++t.errors;
      t.note("exists: " + describe(present[prefix_len].error()));
    }

    // 3. read it
    size_t hits = 0;
    if (prefix_len > 0) {
      get_addrs.clear();
      for (size_t i = 0; i < prefix_len; ++i)
        get_addrs.push_back(got_area + i * block_bytes);
      std::vector<size_t> caps(prefix_len, block_bytes);
      std::span<const std::string> wanted(keys.data(), prefix_len);
      t0 = steady::now();
      auto got = client.batch_get_into(wanted, get_addrs, caps, go);
      t.get_us.push_back(micros_since(t0));
      while (hits < prefix_len && got[hits] && *got[hits] == block_bytes)
        ++hits;
      if (hits < prefix_len) {
        if (!got[hits] && code_of(got[hits].error()) == errc::object_not_found) {
          ++t.evicted_after_exists;
        } else {
          ++t.errors;
          t.note(got[hits] ? "get '" + keys[hits] + "': " + std::to_string(*got[hits])
                               + " bytes, expected " + std::to_string(block_bytes)
                           : describe(got[hits].error()));
        }
      }
      if (o.verify)
        for (size_t i = 0; i < hits; ++i) {
          const auto at = check_pattern(get_addrs[i], block_bytes, key_seed(keys[i]));
          if (at != block_bytes) {
            ++t.verify_errors;
            t.note("verify: block '" + keys[i] + "' differs from its pattern at byte "
                   + std::to_string(at));
          }
        }
    }
    t.hits += hits;
    t.blocks_got += hits;

    // 4. write the rest
    if (hits < n) {
      put_addrs.clear();
      for (size_t i = hits; i < n; ++i) {
        auto* at = put_area + (i - hits) * block_bytes;
        if (o.verify)
          fill_pattern(at, block_bytes, key_seed(keys[i]));
        put_addrs.push_back(at);
      }
      std::vector<size_t> sizes(n - hits, block_bytes);
      std::span<const std::string> rest(keys.data() + hits, n - hits);
      t0 = steady::now();
      auto results = client.batch_put_from(rest, put_addrs, sizes, po);
      t.put_us.push_back(micros_since(t0));
      for (size_t i = 0; i < results.size(); ++i) {
        if (!results[i])
          ++t.blocks_put;
        else if (code_of(results[i]) == errc::object_exists)
          ++t.already_present;
        else if (code_of(results[i]) == errc::store_full)
          ++t.store_full;
        else {
          ++t.errors;
          t.note(describe(results[i]));
        }
      }
    }

    const auto now = steady::now();
    if (o.progress > 0 && now - last_progress >= progress_every) {
      last_progress = now;
      const double secs = std::chrono::duration<double>(now - start).count();
      std::printf("trace-replay progress: %" PRIu64 "/%zu requests, hit rate %.2f %% (infinite "
                  "cache %.2f %%), %.3f GB moved, %.0f requests/s, store_full %" PRIu64
                  ", errors %" PRIu64 "\n",
                  t.requests, tr->requests.size(), hit_rate(t.hits, t.blocks),
                  hit_rate(t.infinite_hits, t.blocks),
                  static_cast<double>((t.blocks_got + t.blocks_put) * block_bytes) / 1e9,
                  static_cast<double>(t.requests) / secs, t.store_full, t.errors);
      std::fflush(stdout);
    }
  }
  const double secs = std::chrono::duration<double>(steady::now() - start).count();
  const auto after = read_master_figures(client);
  const uint64_t evictions = before && after ? after->evictions - before->evictions : 0;
  const uint64_t bytes_read = t.blocks_got * block_bytes, bytes_written = t.blocks_put * block_bytes;
  const double rate = hit_rate(t.hits, t.blocks), infinite = hit_rate(t.infinite_hits, t.blocks);
  const double bytes_per_s = static_cast<double>(bytes_read + bytes_written) / secs;
  std::printf("trace-replay: %" PRIu64 " requests, %" PRIu64 " blocks in %.2f s: hit rate %.2f %% "
              "(infinite cache %.2f %%, ratio %.4f)\n",
              t.requests, t.blocks, secs, rate, infinite, infinite > 0 ? rate / infinite : 0.0);
  std::printf("trace-replay: moved %.3f GB (read %" PRIu64 " blocks, wrote %" PRIu64
              " blocks x %u replicas) at %.3f GB/s, %.1f requests/s, %.0f blocks/s\n",
              static_cast<double>(bytes_read + bytes_written) / 1e9, t.blocks_got, t.blocks_put,
              o.replica_num, bytes_per_s / 1e9, static_cast<double>(t.requests) / secs,
              static_cast<double>(t.blocks) / secs);
  std::printf("trace-replay: per call: exists p50 %.1f us, p99 %.1f us; get p50 %.1f us, p99 %.1f "
              "us (%zu calls); put p50 %.1f us, p99 %.1f us (%zu calls)\n",
              percentile(t.exists_us, 0.5), percentile(t.exists_us, 0.99),
              percentile(t.get_us, 0.5), percentile(t.get_us, 0.99), t.get_us.size(),
              percentile(t.put_us, 0.5), percentile(t.put_us, 0.99), t.put_us.size());
  std::printf("trace-replay: store_full %" PRIu64 ", evicted between exists and get %" PRIu64
              ", already present %" PRIu64 ", evictions at the master %" PRIu64 ", errors %" PRIu64
              "%s\n",
              t.store_full, t.evicted_after_exists, t.already_present, evictions, t.errors,
              o.verify ? (", verify errors " + std::to_string(t.verify_errors)).c_str() : "");
  if (!t.first_problem.empty())
    std::printf("trace-replay: first problem: %s\n", t.first_problem.c_str());
  if (o.json)
    std::printf("{\"tool\":\"trace-replay\",\"trace\":%s,\"block_size\":%" PRIu64
                ",\"replicas\":%u,\"capacity\":%" PRIu64 ",\"requests\":%" PRIu64
                ",\"blocks\":%" PRIu64 ",\"hit_blocks\":%" PRIu64 ",\"infinite_hit_blocks\":%" PRIu64
                ",\"hit_rate\":%.6f,\"infinite_hit_rate\":%.6f,\"duration_s\":%.6f,"
                "\"bytes_read\":%" PRIu64 ",\"bytes_written\":%" PRIu64 ",\"bytes_per_s\":%.1f,"
                "\"requests_per_s\":%.1f,\"exists_p50_us\":%.1f,\"exists_p99_us\":%.1f,"
                "\"get_p50_us\":%.1f,\"get_p99_us\":%.1f,\"put_p50_us\":%.1f,\"put_p99_us\":%.1f,"
                "\"store_full\":%" PRIu64 ",\"evicted_after_exists\":%" PRIu64
                ",\"already_present\":%" PRIu64 ",\"evictions\":%" PRIu64 ",\"errors\":%" PRIu64
                ",\"verify_errors\":%" PRIu64 "}\n",
                json_string(o.file).c_str(), block_bytes, o.replica_num, before ? before->capacity : 0,
                t.requests, t.blocks, t.hits, t.infinite_hits, rate / 100, infinite / 100, secs,
                bytes_read, bytes_written, bytes_per_s, static_cast<double>(t.requests) / secs,
                percentile(t.exists_us, 0.5), percentile(t.exists_us, 0.99),
                percentile(t.get_us, 0.5), percentile(t.get_us, 0.99), percentile(t.put_us, 0.5),
                percentile(t.put_us, 0.99), t.store_full, t.evicted_after_exists,
                t.already_present, evictions, t.errors, t.verify_errors);
  std::fflush(stdout);
  (void) client.unregister_buffer(buffer.data);
  client.close();
  return t.errors == 0 && t.verify_errors == 0 ? 0 : 1;
}

} // namespace kvferry::tools
