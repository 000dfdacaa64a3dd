#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "actors/transfer_engine.hpp"
#include "config/log.hpp"
#include "tools/commands.hpp"
#include "tools/pattern.hpp"

namespace kvferry::tools {

namespace {

struct aligned_buffer {
  explicit aligned_buffer(size_t n) : size(n), data(static_cast<uint8_t*>(std::aligned_alloc(4096, (n + 4095) / 4096 * 4096))) {}
  ~aligned_buffer() { std::free(data); }
  size_t size;
  uint8_t* data;
};

} // namespace

int run_demo(const config::settings& settings, const demo_options& options) {
  const uint64_t kv_bytes = uint64_t{options.layers} * options.blocks * options.block_bytes;
  std::printf("kvferry demo: synthetic KV cache of %u layers x %u blocks x %llu bytes = %.1f MiB\n",
              options.layers, options.blocks,
              static_cast<unsigned long long>(options.block_bytes), kv_bytes / 1048576.0);
  auto rt = runtime::create({});
  if (!rt) {
    std::fprintf(stderr, "kvferry demo: %s\n", describe(rt.error()).c_str());
    return 1;
  }
  engine_options prefill_opts;
  prefill_opts.segment_name = "prefill";
  engine_options decode_opts;
  decode_opts.segment_name = "decode";
  auto prefill = transfer_engine::create(*rt, settings, prefill_opts);
  if (!prefill) {
    std::fprintf(stderr, "kvferry demo: %s\n", describe(prefill.error()).c_str());
    return 1;
  }
  auto decode = transfer_engine::create(*rt, settings, decode_opts);
  if (!decode) {
    std::fprintf(stderr, "kvferry demo: %s\n", describe(decode.error()).c_str());
    return 1;
  }
  aligned_buffer source(kv_bytes), target(kv_bytes);
  const uint64_t seed = 0x6b7666657272ULL; // "kvferr"
  fill_pattern(source.data, kv_bytes, seed);
  std::memset(target.data, 0, kv_bytes);
  if (auto err = (*prefill)->register_memory(source.data, kv_bytes, "cpu:0")) {
    std::fprintf(stderr, "kvferry demo: %s\n", describe(err).c_str());
    return 1;
  }
  if (auto err = (*decode)->register_memory(target.data, kv_bytes, "cpu:0")) {
    std::fprintf(stderr, "kvferry demo: %s\n", describe(err).c_str());
    return 1;
  }
  // The decode side pulls every (layer, block) from prefill, one task each.
  auto seg = (*decode)->open_segment("prefill");
  if (!seg) {
    std::fprintf(stderr, "kvferry demo: %s\n", describe(seg.error()).c_str());
    return 1;
  }
  const uint32_t tasks = options.layers * options.blocks;
  auto batch = (*decode)->allocate_batch(tasks);
  if (!batch) {
    std::fprintf(stderr, "kvferry demo: %s\n", describe(batch.error()).c_str());
    return 1;
  }
  std::vector<transfer_request> requests(tasks);
  for (uint32_t i = 0; i < tasks; ++i) {
    uint64_t offset = uint64_t{i} * options.block_bytes;
    requests[i] = transfer_request{opcode::read, target.data + offset, *seg,
                                   reinterpret_cast<uint64_t>(source.data) + offset,
                                   options.block_bytes};
  }
  auto start = std::chrono::steady_clock::now();
  auto first = (*decode)->submit(*batch, requests);
  if (!first) {
    std::fprintf(stderr, "kvferry demo: %s\n", describe(first.error()).c_str());
    return 1;
  }
  auto summary = (*decode)->wait(*batch, std::chrono::milliseconds(60000));
  auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!summary) {
    std::fprintf(stderr, "kvferry demo: %s\n", describe(summary.error()).c_str());
    return 1;
  }
  auto bad = check_pattern(target.data, kv_bytes, seed);
  std::printf("moved %llu bytes in %u tasks in %.3f s: %.2f GB/s\n",
              static_cast<unsigned long long>(summary->transferred_bytes), tasks, secs,
              summary->transferred_bytes / secs / 1e9);
  std::printf("task states: COMPLETED %u, FAILED %u, TIMEOUT %u, CANCELED %u, unresolved %u\n",
              summary->completed, summary->failed, summary->timeout, summary->canceled,
              summary->tasks - summary->terminal());
  if (summary->completed != tasks)
    for (uint32_t i = 0; i < tasks; ++i)
      if (auto st = (*decode)->status(*batch, i); st && st->state != task_state::completed) {
        std::printf("first failed task %u: %s: %s\n", i, to_string(st->state), st->reason.c_str());
        break;
      }
  if (bad != kv_bytes) {
    std::printf("verification FAILED: first wrong byte at offset %zu\n", bad);
    return 1;
  }
  std::printf("verified: all %llu bytes match\n", static_cast<unsigned long long>(kv_bytes));
  (void) (*decode)->free_batch(*batch);
  return summary->completed == tasks ? 0 : 1;
}

} // namespace kvferry::tools
