// Embedding kvferry the way a serving engine does: register KV memory, open the peer's segment,
// submit a batch, wait, check every task's state.
//
// Both segments live in this process here so the example runs anywhere; between machines the
// decode side opens the prefill node's segment by its "host:port" name instead.
#include <cstdio>
#include <cstring>
#include <vector>

#include "actors/transfer_engine.hpp"

int main() {
  using namespace kvferry;
  auto rt = runtime::create({});
  if (!rt)
    return 1;
  config::settings settings; // embedded defaults; a real engine loads its config.json
  auto prefill = transfer_engine::create(*rt, settings, {.segment_name = "prefill"});
  auto decode = transfer_engine::create(*rt, settings, {.segment_name = "decode"});
  if (!prefill || !decode)
    return 1;

  // 1. Register the KV cache memory on both sides.
  constexpr size_t block = 64 << 10, blocks = 16;
  std::vector<char> produced(block * blocks, 'k'), consumed(block * blocks, 0);
  if (auto err = (*prefill)->register_memory(produced.data(), produced.size(), "cpu:0"))
    return std::printf("register: %s\n", describe(err).c_str()), 1;
  if (auto err = (*decode)->register_memory(consumed.data(), consumed.size(), "cpu:0"))
    return std::printf("register: %s\n", describe(err).c_str()), 1;

  // 2. Open the producer's segment.
  auto seg = (*decode)->open_segment("prefill");
  if (!seg)
    return std::printf("open: %s\n", describe(seg.error()).c_str()), 1;

  // 3. One READ task per KV block, in one batch.
  auto batch = (*decode)->allocate_batch(blocks);
  if (!batch)
    return 1;
  std::vector<transfer_request> requests;
  for (size_t i = 0; i < blocks; ++i)
    requests.push_back({opcode::read, consumed.data() + i * block, *seg,
                        reinterpret_cast<uint64_t>(produced.data() + i * block), block});
  if (auto first = (*decode)->submit(*batch, requests); !first)
    return std::printf("submit: %s\n", describe(first.error()).c_str()), 1;

  // 4. Wait, then check each task: every one ends in exactly one terminal state.
  auto summary = (*decode)->wait(*batch, std::chrono::seconds(10));
  if (!summary)
    return std::printf("wait: %s\n", describe(summary.error()).c_str()), 1;
  for (uint32_t i = 0; i < blocks; ++i) {
    auto st = (*decode)->status(*batch, i);
    if (!st || st->state != task_state::completed)
      return std::printf("task %u: %s\n", i, st ? st->reason.c_str() : "?"), 1;
  }
  (void) (*decode)->free_batch(*batch);
  std::printf("%u tasks COMPLETED, %llu bytes, data %s\n", summary->completed,
              static_cast<unsigned long long>(summary->transferred_bytes),
              std::memcmp(produced.data(), consumed.data(), produced.size()) == 0 ? "identical"
                                                                                 : "DIFFERENT");
  return 0;
}
