// `kvferry demo`: a prefill process and a decode process on loopback; decode pulls a synthetic KV
// cache (layers x blocks) from prefill over the configured protocol (TCP, or RDMA: with the
// emulated provider on a machine without NICs), one task per (layer, block), and verifies every
// byte. `--in-process` runs both segments in one process over the same-process path instead.
#include <chrono>
#include <cinttypes>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include <unistd.h>

#include "actors/transfer_engine.hpp"
#include "config/log.hpp"
#include "tools/child_process.hpp"
#include "tools/commands.hpp"
#include "tools/pattern.hpp"

namespace kvferry::tools {

namespace {

/// Seed of the synthetic KV cache ("kvferr").
constexpr uint64_t kv_seed = 0x6b7666657272ULL;

int fail(const char* role, const caf::error& err) {
  std::fprintf(stderr, "kvferry demo (%s): %s\n", role, describe(err).c_str());
  return 1;
}

uint64_t kv_bytes(const demo_options& o) {
  return uint64_t{o.layers} * o.blocks * o.block_bytes;
}

/// Pulls every (layer, block) of segment `seg` at `remote_base` into `target` and reports.
int pull_and_verify(transfer_engine& decode, segment_id seg, uint64_t remote_base,
                    uint8_t* target, const demo_options& o, const char* role) {
  const uint64_t total = kv_bytes(o);
  const uint32_t tasks = o.layers * o.blocks;
  auto batch = decode.allocate_batch(tasks);
  if (!batch)
    return fail(role, batch.error());
  std::vector<transfer_request> requests(tasks);
  for (uint32_t i = 0; i < tasks; ++i) {
    uint64_t offset = uint64_t{i} * o.block_bytes;
    requests[i] = transfer_request{opcode::read, target + offset, seg, remote_base + offset,
                                   o.block_bytes};
  }
  auto start = std::chrono::steady_clock::now();
  auto first = decode.submit(*batch, requests);
  if (!first)
    return fail(role, first.error());
  auto summary = decode.wait(*batch, std::chrono::milliseconds(120000));
  auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!summary)
    return fail(role, summary.error());
  auto bad = check_pattern(target, total, kv_seed);
  std::printf("moved %" PRIu64 " bytes in %u tasks in %.3f s: %.2f GB/s\n",
              summary->transferred_bytes, tasks, secs, summary->transferred_bytes / secs / 1e9);
  std::printf("task states: COMPLETED %u, FAILED %u, TIMEOUT %u, CANCELED %u, unresolved %u\n",
              summary->completed, summary->failed, summary->timeout, summary->canceled,
              summary->tasks - summary->terminal());
  if (summary->completed != tasks)
    for (uint32_t i = 0; i < tasks; ++i)
      if (auto st = decode.status(*batch, i); st && st->state != task_state::completed) {
        std::printf("first unfinished task %u: %s: %s\n", i, to_string(st->state),
                    st->reason.c_str());
        break;
      }
  (void) decode.free_batch(*batch);
  if (bad != total) {
    std::printf("verification FAILED: first wrong byte at offset %zu\n", bad);
    return 1;
  }
  std::printf("verified: all %" PRIu64 " bytes match the prefill KV cache\n", total);
  return summary->completed == tasks ? 0 : 1;
}

int run_in_process(const config::settings& settings, const demo_options& o) {
  auto rt = runtime::create({});
  if (!rt)
    return fail("in-process", rt.error());
  engine_options prefill_opts;
  prefill_opts.segment_name = "prefill";
  engine_options decode_opts;
  decode_opts.segment_name = "decode";
  auto prefill = transfer_engine::create(*rt, settings, prefill_opts);
  if (!prefill)
    return fail("in-process", prefill.error());
  auto decode = transfer_engine::create(*rt, settings, decode_opts);
  if (!decode)
    return fail("in-process", decode.error());
  mapped_buffer source(kv_bytes(o)), target(kv_bytes(o));
  if (!source.data || !target.data) {
    std::fprintf(stderr, "kvferry demo: cannot map %" PRIu64 " bytes\n", kv_bytes(o));
    return 1;
  }
  fill_pattern(source.data, source.size, kv_seed);
  if (auto err = (*prefill)->register_memory(source.data, source.size, "cpu:0"))
    return fail("in-process", err);
  if (auto err = (*decode)->register_memory(target.data, target.size, "cpu:0"))
    return fail("in-process", err);
  auto seg = (*decode)->open_segment("prefill");
  if (!seg)
    return fail("in-process", seg.error());
  return pull_and_verify(**decode, *seg, reinterpret_cast<uint64_t>(source.data), target.data, o,
                         "in-process");
}

int run_decode(const config::settings& settings, const demo_options& o) {
  auto rt = runtime::create({.network = true});
  if (!rt)
    return fail("decode", rt.error());
  auto decode = transfer_engine::create(*rt, settings);
  if (!decode)
    return fail("decode", decode.error());
  mapped_buffer target(kv_bytes(o));
  if (!target.data) {
    std::fprintf(stderr, "kvferry demo (decode): cannot map %" PRIu64 " bytes\n", kv_bytes(o));
    return 1;
  }
  if (auto err = (*decode)->register_memory(target.data, target.size, "cpu:0"))
    return fail("decode", err);
  auto seg = (*decode)->open_segment(o.decode_from);
  if (!seg)
    return fail("decode", seg.error());
  auto desc = (*decode)->segment_descriptor(*seg);
  if (!desc || desc->regions.empty() || desc->regions.front().length < kv_bytes(o)) {
    std::fprintf(stderr, "kvferry demo (decode): prefill segment '%s' holds no KV cache of %" PRIu64
                         " bytes\n", o.decode_from.c_str(), kv_bytes(o));
    return 1;
  }
  std::printf("decode %s: pulling from prefill %s over %s\n", (*decode)->segment_name().c_str(),
              o.decode_from.c_str(), protocol_name(settings).c_str());
  int rc = pull_and_verify(**decode, *seg, desc->regions.front().base, target.data, o, "decode");
  if (settings.transport != config::protocol::rdma)
    return rc;
  // Over RDMA only if work requests were posted (a prefill without RDMA is reached over TCP).
  uint64_t wrs = 0;
  for (const auto& [nic, c] : (*decode)->rdma_counters()) {
    std::printf("%s NIC %s: %" PRIu64 " work requests posted, %" PRIu64 " failed\n",
                protocol_name(settings).c_str(), nic.c_str(), c.wrs_posted, c.wrs_failed);
    wrs += c.wrs_posted;
  }
  if (wrs == 0) {
    std::printf("not over rdma: prefill %s offers no RDMA endpoint\n", o.decode_from.c_str());
    return 1;
  }
  return rc;
}

std::string self_executable() {
  char buf[4096];
  auto n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string("kvferry");
}

int run_two_processes(const demo_options& o) {
  auto self = self_executable();
  std::vector<std::string> common{self};
  if (!o.config_path.empty()) {
    common.push_back("--config");
    common.push_back(o.config_path);
  }
  auto prefill_args = common;
  for (const auto* a : {"node", "--segment-bytes"})
    prefill_args.emplace_back(a);
  prefill_args.push_back(std::to_string(kv_bytes(o)));
  prefill_args.emplace_back("--fill-seed");
  prefill_args.push_back(std::to_string(kv_seed));
  child_process prefill(prefill_args);
  if (!prefill.started()) {
    std::fprintf(stderr, "kvferry demo: cannot start the prefill process (%s)\n", self.c_str());
    return 1;
  }
  auto name = prefill.wait_for_line("segment name: ", std::chrono::seconds(60));
  if (!name) {
    std::fprintf(stderr, "kvferry demo: the prefill process did not come up\n");
    return 1;
  }
  std::printf("prefill process %d serves its KV cache as segment %s\n",
              static_cast<int>(prefill.pid()), name->c_str());
  auto decode_args = common;
  decode_args.emplace_back("demo");
  decode_args.emplace_back("--decode-from");
  decode_args.push_back(*name);
  for (auto [flag, value] : {std::pair{"--layers", uint64_t{o.layers}},
                             std::pair{"--blocks", uint64_t{o.blocks}},
                             std::pair{"--block-bytes", o.block_bytes}}) {
    decode_args.emplace_back(flag);
    decode_args.push_back(std::to_string(value));
  }
  std::fflush(stdout);
  child_process decode(decode_args);
  if (!decode.started()) {
    std::fprintf(stderr, "kvferry demo: cannot start the decode process\n");
    return 1;
  }
  std::printf("decode process %d started\n", static_cast<int>(decode.pid()));
  while (auto line = decode.read_line(std::chrono::seconds(300)))
    std::printf("  [decode] %s\n", line->c_str());
  int decode_rc = decode.wait(std::chrono::seconds(30));
  prefill.signal(SIGTERM);
  while (auto line = prefill.read_line(std::chrono::seconds(10)))
    std::printf("  [prefill] %s\n", line->c_str());
  int prefill_rc = prefill.wait(std::chrono::seconds(30));
  std::printf("decode exited %d, prefill stopped on SIGTERM with %d\n", decode_rc, prefill_rc);
  return decode_rc == 0 && prefill_rc == 0 ? 0 : 1;
}

} // namespace

int run_demo(const config::settings& settings, const demo_options& options) {
  if (!options.decode_from.empty())
    return run_decode(settings, options);
  std::printf("kvferry demo: synthetic KV cache of %u layers x %u blocks x %" PRIu64
              " bytes = %.1f MiB\n",
              options.layers, options.blocks, options.block_bytes, kv_bytes(options) / 1048576.0);
  if (options.in_process) {
    std::printf("in one process: over the same-process path (memcpy), not %s\n",
                protocol_name(settings).c_str());
    return run_in_process(settings, options);
  }
  std::printf("protocol: %s\n", protocol_note(settings).c_str());
  return run_two_processes(options);
}

} // namespace kvferry::tools
