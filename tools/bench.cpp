// `kvferry bench`: flag-compatible with Mooncake's transfer_engine_bench, plus --verify,
// --timeout_ms, --json and --target_offset.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "actors/transfer_engine.hpp"
#include "config/log.hpp"
#include "tools/commands.hpp"
#include "tools/pattern.hpp"
#include "tools/signals.hpp"

namespace kvferry::tools {

namespace {

struct unit_info {
  const char* name;
  double bytes_per_unit;
};

/// Mooncake's report units: decimal bytes, binary bytes, or bits.
std::optional<unit_info> parse_unit(const std::string& unit) {
  static const unit_info units[] = {{"GB", 1e9},       {"GiB", 1073741824.0}, {"Gb", 1e9 / 8},
                                    {"MB", 1e6},       {"MiB", 1048576.0},    {"Mb", 1e6 / 8},
                                    {"KB", 1e3},       {"KiB", 1024.0},       {"Kb", 1e3 / 8}};
  for (const auto& u : units)
    if (unit == u.name)
      return u;
  return std::nullopt;
}

// What a WRITE run leaves in the target, so that every order of runs against one target verifies.
//
// A WRITE run leaves the target holding the target's canonical pattern: bench_target_seed at each
// absolute remote offset, which is what `--mode=target` fills its buffer with and what a READ
// --verify run expects.
// - Without --verify, a thread's requests are the same in every batch, so its local blocks are
//   filled once, before the clock starts, with the canonical pattern of the remote offsets they
//   write; the measured loop does nothing extra.
// - With --verify, each batch first writes a probe pattern that differs from the canonical one and
//   from every earlier batch's and run's (write_seed mixed with a per-run nonce, the thread and the
//   batch number), so a WRITE that did not happen, or landed elsewhere, is detected; it reads the
//   blocks back and checks them, then writes the canonical pattern back. Only the first WRITE is
//   counted in the task states and the throughput (the read-back and restore are verification).

/// Seed from which each WRITE --verify batch's probe pattern is derived.
constexpr uint64_t write_seed = 0x7772697465000001ULL;

struct tally {
  std::atomic<uint64_t> batches{0}, bytes{0}, completed{0}, failed{0}, timeout{0}, canceled{0},
    verify_errors{0}, submit_errors{0};
  std::mutex reason_mutex;
  std::string first_reason;
  /// Submit-to-all-terminal time of every batch, in microseconds.
  std::vector<double> batch_latency_us;

  void note(const std::string& reason) {
    std::lock_guard<std::mutex> guard(reason_mutex);
    if (first_reason.empty())
      first_reason = reason;
  }
};

int bench_usage_error(const std::string& what) {
  std::fprintf(stderr, "kvferry bench: %s\n", what.c_str());
  return 2;
}

int run_target(const config::settings& settings, const bench_options& options) {
  auto rt = runtime::create({.network = true});
  if (!rt)
    return bench_usage_error(describe(rt.error()));
  auto engine = transfer_engine::create(*rt, settings);
  if (!engine) {
    std::fprintf(stderr, "kvferry bench: %s\n", describe(engine.error()).c_str());
    return 1;
  }
  mapped_buffer buffer(options.buffer_size);
  if (buffer.data == nullptr)
    return bench_usage_error("cannot map --buffer_size=" + std::to_string(options.buffer_size));
  fill_pattern(buffer.data, options.buffer_size, bench_target_seed);
  if (auto err = (*engine)->register_memory(buffer.data, options.buffer_size, "cpu:0")) {
    std::fprintf(stderr, "kvferry bench: %s\n", describe(err).c_str());
    return 1;
  }
  std::printf("Target ready: segment %s serving %" PRIu64 " bytes; run the initiator with "
              "--segment_id=%s\n",
              (*engine)->segment_name().c_str(), options.buffer_size,
              (*engine)->segment_name().c_str());
  std::fflush(stdout);
  wait_for_stop_signal();
  auto c = (*engine)->server_counters();
  auto rdma = (*engine)->rdma_counters();
  (*engine)->shutdown();
  std::printf("Target stopped: %" PRIu64 " requests (%" PRIu64 " reads, %" PRIu64
              " writes), %" PRIu64 " refused, %" PRIu64 " malformed frames\n",
              c.requests, c.reads, c.writes, c.refused, c.malformed);
  for (const auto& [nic, r] : rdma)
    std::printf("Target RDMA NIC %s: %" PRIu64 " handshakes accepted, %" PRIu64 " refused\n",
                nic.c_str(), r.handshakes_accepted, r.handshakes_refused);
  return 0;
}

/// One thread's requests, the same in every batch. Task i uses local block k = i mod (blocks in the
/// thread's slice of the local buffer) and remote block (k * threads + tid) mod R, where R is the
/// target's block count rounded down to a multiple of --threads: threads never share a remote
/// block, and two tasks of a batch that share a local block also share their remote block (they
/// are identical transfers), so verification is exact even when the buffers are small.
struct thread_plan {
  std::vector<transfer_request> requests;
  /// Offset of each task's block from the start of the target's region (with --target_offset).
  std::vector<uint64_t> remote_offsets;
};

thread_plan plan_thread(const bench_options& o, uint32_t tid, uint8_t* local, uint64_t local_len,
                        segment_id seg, uint64_t remote_base, uint64_t remote_len) {
  const bool write = o.operation == "write";
  const uint64_t local_slots = local_len / o.block_size;
  uint64_t remote_slots = remote_len / o.block_size;
  if (remote_slots >= o.threads)
    remote_slots = remote_slots / o.threads * o.threads;
  thread_plan plan;
  plan.requests.resize(o.batch_size);
  plan.remote_offsets.resize(o.batch_size);
  for (uint32_t i = 0; i < o.batch_size; ++i) {
    uint64_t k = i % local_slots;
    auto* src = local + k * o.block_size;
    uint64_t roff = ((k * o.threads + tid) % remote_slots) * o.block_size
                    + static_cast<uint64_t>(o.target_offset);
    plan.remote_offsets[i] = roff;
    plan.requests[i] = transfer_request{write ? opcode::write : opcode::read, src, seg,
                                        remote_base + roff, o.block_size};
    if (write && !o.verify)
      fill_pattern(src, o.block_size, bench_target_seed, roff);
  }
  return plan;
}

/// Runs `requests` as one batch (not measured) and returns each task's final state; a batch that
/// cannot be allocated or submitted reports its reason once and every task as failed.
std::vector<task_state> run_unmeasured(transfer_engine& engine,
                                       const std::vector<transfer_request>& requests,
                                       const submit_options& so,
                                       std::chrono::milliseconds wait_budget, tally& t) {
  std::vector<task_state> states(requests.size(), task_state::failed);
  auto batch = engine.allocate_batch(requests.size());
  if (!batch) {
    t.note("verify: " + describe(batch.error()));
    return states;
  }
  auto first = engine.submit(*batch, requests, so);
  if (!first) {
    t.note("verify: " + describe(first.error()));
  } else {
    (void) engine.wait(*batch, wait_budget);
    for (uint32_t i = 0; i < requests.size(); ++i) {
      auto st = engine.status(*batch, *first + i);
      if (st)
        states[i] = st->state;
    }
  }
  (void) engine.free_batch(*batch);
  return states;
}

/// WRITE --verify, after the measured batch wrote `probe_seed`'s pattern: reads the blocks whose
/// WRITE completed back and checks them, then writes the canonical pattern back to every block.
void verify_and_restore(transfer_engine& engine, const bench_options& o, const thread_plan& plan,
                        const std::vector<bool>& written, uint64_t probe_seed,
                        const submit_options& so, std::chrono::milliseconds wait_budget,
                        tally& t) {
  auto requests = plan.requests;
  for (auto& rq : requests) {
    rq.op = opcode::read;
    std::memset(rq.source, 0, o.block_size);
  }
  auto read_back = run_unmeasured(engine, requests, so, wait_budget, t);
  for (uint32_t i = 0; i < requests.size(); ++i) {
    if (!written[i])
      continue; // counted as FAILED, TIMEOUT or CANCELED already
    const auto roff = std::to_string(plan.remote_offsets[i]);
    if (read_back[i] != task_state::completed) {
      ++t.verify_errors;
      t.note("verify: the read-back of the block written at remote offset " + roff + " ended "
             + to_string(read_back[i]));
    } else if (check_pattern(requests[i].source, o.block_size, probe_seed, plan.remote_offsets[i])
               != o.block_size) {
      ++t.verify_errors;
      t.note("verify: block written at remote offset " + roff + " reads back different bytes");
    }
  }
  // Restore every block, also those whose WRITE did not complete (it may have landed anyway).
  requests = plan.requests;
  for (uint32_t i = 0; i < requests.size(); ++i)
    fill_pattern(requests[i].source, o.block_size, bench_target_seed, plan.remote_offsets[i]);
  auto restored = run_unmeasured(engine, requests, so, wait_budget, t);
  for (uint32_t i = 0; i < requests.size(); ++i) {
    if (written[i] && restored[i] != task_state::completed) {
      ++t.verify_errors;
      t.note("verify: writing the target's pattern back at remote offset "
             + std::to_string(plan.remote_offsets[i]) + " ended " + to_string(restored[i]));
    }
  }
}

void initiator_thread(transfer_engine& engine, const bench_options& o, uint32_t tid,
                      const thread_plan& plan, uint64_t run_nonce,
                      std::chrono::steady_clock::time_point end, tally& t) {
  const bool write = o.operation == "write";
  submit_options so;
  so.deadline = std::chrono::milliseconds(o.timeout_ms);
  const auto wait_budget = std::chrono::milliseconds(o.timeout_ms ? o.timeout_ms + 5000 : 120000);
  const auto& requests = plan.requests;
  std::vector<bool> written(o.batch_size);
  // At least one batch, however late this thread starts: a run that moved nothing measures
  // nothing and verifies nothing.
  for (uint64_t batch_number = 0; batch_number == 0 || std::chrono::steady_clock::now() < end;
       ++batch_number) {
    const uint64_t probe_seed = write_seed ^ mix(run_nonce ^ (uint64_t{tid} << 40) ^ batch_number);
    if (write && o.verify)
      for (uint32_t i = 0; i < o.batch_size; ++i)
        fill_pattern(requests[i].source, o.block_size, probe_seed, plan.remote_offsets[i]);
    auto batch = engine.allocate_batch(o.batch_size);
    if (!batch) {
      t.note(describe(batch.error()));
      ++t.submit_errors;
      return;
    }
    auto submitted = std::chrono::steady_clock::now();
    auto first = engine.submit(*batch, requests, so);
    if (!first) {
      t.note(describe(first.error()));
      t.failed += o.batch_size;
      ++t.submit_errors;
      (void) engine.free_batch(*batch);
      continue;
    }
    auto summary = engine.wait(*batch, wait_budget);
    auto latency = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now()
                                                             - submitted).count();
    {
      std::lock_guard<std::mutex> guard(t.reason_mutex);
      t.batch_latency_us.push_back(latency);
    }
    if (!summary) {
      t.note(describe(summary.error()));
    }
    for (uint32_t i = 0; i < o.batch_size; ++i) {
      written[i] = false;
      auto st = engine.status(*batch, *first + i);
      if (!st)
        continue;
      switch (st->state) {
        case task_state::completed: ++t.completed; break;
        case task_state::failed: ++t.failed; t.note(st->reason.empty() ? to_string(st->code) : std::string(to_string(st->code)) + ": " + st->reason); break;
        case task_state::timeout: ++t.timeout; t.note("TIMEOUT: " + st->reason); break;
        case task_state::canceled: ++t.canceled; break;
        default: break;
      }
      if (st->state == task_state::completed) {
        written[i] = true;
        t.bytes += o.block_size;
        if (o.verify && !write) {
          auto* got = static_cast<uint8_t*>(requests[i].source);
          if (check_pattern(got, o.block_size, bench_target_seed, plan.remote_offsets[i])
              != o.block_size) {
            ++t.verify_errors;
            t.note("verify: READ block at remote offset " + std::to_string(plan.remote_offsets[i])
                   + " does not match the target's pattern");
          }
        }
      }
    }
    (void) engine.free_batch(*batch);
    ++t.batches;
    if (write && o.verify)
      verify_and_restore(engine, o, plan, written, probe_seed, so, wait_budget, t);
  }
}

int run_initiator(const config::settings& settings, const bench_options& o) {
  if (o.segment_id.empty())
    return bench_usage_error("--segment_id is required in initiator mode (the name the target printed)");
  auto unit = parse_unit(o.report_unit);
  if (!unit)
    return bench_usage_error("--report_unit=" + o.report_unit
                             + " is not one of GB, GiB, Gb, MB, MiB, Mb, KB, KiB, Kb");
  if (o.block_size == 0 || o.block_size > o.buffer_size)
    return bench_usage_error("--block_size must be between 1 and --buffer_size");
  // Threads sharing a local block would write one thread's pattern to another's remote offsets.
  if ((o.verify || o.operation == "write") && o.buffer_size / o.threads < o.block_size)
    return bench_usage_error("--buffer_size must hold --threads x --block_size bytes for WRITE or "
                             "--verify (each thread its own local blocks)");
  auto rt = runtime::create({.network = true});
  if (!rt)
    return bench_usage_error(describe(rt.error()));
  engine_options eo;
  eo.check_remote_bounds = false; // the target's own check is what --target_offset probes
  auto engine = transfer_engine::create(*rt, settings, eo);
  if (!engine) {
    std::fprintf(stderr, "kvferry bench: %s\n", describe(engine.error()).c_str());
    return 1;
  }
  auto seg = (*engine)->open_segment(o.segment_id);
  if (!seg) {
    std::fprintf(stderr, "kvferry bench: %s\n", describe(seg.error()).c_str());
    return 1;
  }
  auto desc = (*engine)->segment_descriptor(*seg);
  if (!desc || desc->regions.empty()) {
    std::fprintf(stderr, "kvferry bench: segment '%s' has no registered memory\n",
                 o.segment_id.c_str());
    return 1;
  }
  const auto& remote = desc->regions.front();
  if (remote.length < o.block_size) {
    std::fprintf(stderr, "kvferry bench: the target's buffer (%" PRIu64
                         " bytes) is smaller than --block_size\n", remote.length);
    return 1;
  }
  if (o.verify && o.operation == "write" && remote.length / o.block_size < o.threads) {
    std::fprintf(stderr, "kvferry bench: --verify: the target's buffer (%" PRIu64 " bytes) holds "
                         "fewer blocks than --threads; each thread needs its own remote block\n",
                 remote.length);
    return 2;
  }
  mapped_buffer local(o.buffer_size);
  if (local.data == nullptr)
    return bench_usage_error("cannot map --buffer_size=" + std::to_string(o.buffer_size));
  std::memset(local.data, 0, o.buffer_size);
  if (auto err = (*engine)->register_memory(local.data, o.buffer_size, "cpu:0")) {
    std::fprintf(stderr, "kvferry bench: %s\n", describe(err).c_str());
    return 1;
  }
  uint64_t per_thread = o.buffer_size / o.threads / o.block_size * o.block_size;
  if (per_thread < o.block_size)
    per_thread = o.block_size;
  std::vector<thread_plan> plans;
  for (uint32_t tid = 0; tid < o.threads; ++tid) {
    // Each thread owns a slice of the local buffer (so verification never races).
    auto* base = local.data + (tid * per_thread) % (o.buffer_size - o.block_size + 1);
    plans.push_back(plan_thread(o, tid, base, per_thread, *seg, remote.base, remote.length));
  }
  const uint64_t run_nonce = (uint64_t{std::random_device{}()} << 32) ^ std::random_device{}();
  tally t;
  auto start = std::chrono::steady_clock::now();
  auto end = start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                       std::chrono::duration<double>(o.duration));
  std::vector<std::thread> threads;
  for (uint32_t tid = 0; tid < o.threads; ++tid) {
    threads.emplace_back([&, tid] {
      initiator_thread(**engine, o, tid, plans[tid], run_nonce, end, t);
    });
  }
  for (auto& th : threads)
    th.join();
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double throughput = t.bytes.load() / secs / unit->bytes_per_unit;
  std::printf("Test completed: duration %.*f, batch count %" PRIu64 ", throughput %.*f %s/s\n",
              static_cast<int>(o.report_precision), secs, t.batches.load(),
              static_cast<int>(o.report_precision), throughput, unit->name);
  uint64_t not_completed = t.failed + t.timeout + t.canceled;
  std::printf("Task states: COMPLETED %" PRIu64 ", FAILED %" PRIu64 ", TIMEOUT %" PRIu64
              ", CANCELED %" PRIu64 "%s\n",
              t.completed.load(), t.failed.load(), t.timeout.load(), t.canceled.load(),
              o.verify ? (", verify errors " + std::to_string(t.verify_errors.load())).c_str() : "");
  if (!t.first_reason.empty())
    std::printf("First problem: %s\n", t.first_reason.c_str());
  auto& lat = t.batch_latency_us;
  std::sort(lat.begin(), lat.end());
  auto pct = [&](double p) {
    return lat.empty() ? 0.0 : lat[std::min(lat.size() - 1, static_cast<size_t>(p * lat.size()))];
  };
  std::printf("Batch latency (submit to all terminal, %zu batches): p50 %.1f us, p99 %.1f us\n",
              lat.size(), pct(0.50), pct(0.99));
  // With --protocol=rdma every task must have gone over RDMA: a target without an RDMA
  // endpoint would be reached over TCP, and the figures would be TCP's.
  uint64_t rdma_wrs = 0;
  for (const auto& [nic, c] : (*engine)->rdma_counters()) {
    rdma_wrs += c.wrs_posted;
    std::printf("RDMA NIC %s: %" PRIu64 " work requests posted, %" PRIu64 " failed, %" PRIu64
                " completion timeouts\n", nic.c_str(), c.wrs_posted, c.wrs_failed,
                c.completion_timeouts);
  }
  const bool rdma = settings.transport == config::protocol::rdma;
  if (rdma && rdma_wrs == 0 && t.completed > 0)
    std::printf("Not over RDMA: no work request was posted; segment %s offers no RDMA endpoint "
                "(run its target with --protocol=rdma), the figures above are TCP's\n",
                o.segment_id.c_str());
  auto stats = (*engine)->stats();
  if (o.json) {
    std::printf("{\"mode\":\"initiator\",\"protocol\":\"%s\",\"operation\":\"%s\",\"block_size\":%" PRIu64
                ",\"batch_size\":%u,\"threads\":%u,\"duration_s\":%.6f,\"batch_count\":%" PRIu64
                ",\"bytes\":%" PRIu64 ",\"throughput_bytes_per_s\":%.1f,\"completed\":%" PRIu64
                ",\"failed\":%" PRIu64 ",\"timeout\":%" PRIu64 ",\"canceled\":%" PRIu64
                ",\"verify_errors\":%" PRIu64 ",\"late_reports\":%" PRIu64
                ",\"batch_latency_p50_us\":%.1f,\"batch_latency_p99_us\":%.1f}\n",
                protocol_name(settings).c_str(), o.operation.c_str(), o.block_size, o.batch_size, o.threads, secs,
                t.batches.load(), t.bytes.load(), t.bytes.load() / secs, t.completed.load(),
                t.failed.load(), t.timeout.load(), t.canceled.load(), t.verify_errors.load(),
                stats ? stats->late_reports : 0, pct(0.50), pct(0.99));
  }
  std::fflush(stdout);
  (*engine)->shutdown();
  return (not_completed > 0 || t.verify_errors > 0 || t.completed == 0 || (rdma && rdma_wrs == 0))
           ? 1 : 0;
}

} // namespace

int run_bench(config::settings settings, const bench_options& o) {
  // Flags override the configuration, as transfer_engine_bench's flags do.
  if (!o.metadata_server.empty()) {
    auto m = config::parse_metadata_server(o.metadata_server, "--metadata_server");
    if (!m)
      return bench_usage_error(context_of(m.error()));
    settings.metadata = *m;
  }
  if (o.protocol == "tcp")
    settings.transport = config::protocol::tcp;
  else if (o.protocol == "rdma")
    settings.transport = config::protocol::rdma;
  else
    return bench_usage_error("--protocol=" + o.protocol + " is not tcp or rdma");
  if (!o.rdma_provider.empty()) {
    if (settings.transport != config::protocol::rdma)
      return bench_usage_error("--rdma_provider=" + o.rdma_provider
                               + " chooses the RDMA provider: it needs --protocol=rdma");
    if (o.rdma_provider == "verbs")
      settings.rdma.provider = config::rdma_provider_kind::verbs;
    else if (o.rdma_provider == "emulated")
      settings.rdma.provider = config::rdma_provider_kind::emulated;
    else
      return bench_usage_error("--rdma_provider=" + o.rdma_provider + " is not verbs or emulated");
  }
  // Mooncake's device_name: a comma list, or "auto-discovery" (every device found).
  if (!o.device_name.empty()) {
    settings.device_names.clear();
    for (size_t at = 0; o.device_name != "auto-discovery" && at <= o.device_name.size();) {
      auto comma = std::min(o.device_name.find(',', at), o.device_name.size());
      if (comma > at)
        settings.device_names.push_back(o.device_name.substr(at, comma - at));
      at = comma + 1;
    }
  }
  if (!o.local_server_name.empty()) {
    auto colon = o.local_server_name.rfind(':');
    if (colon != std::string::npos) {
      unsigned port = 0;
      if (std::sscanf(o.local_server_name.c_str() + colon + 1, "%u", &port) != 1 || port > 65535)
        return bench_usage_error("--local_server_name=" + o.local_server_name
                                 + " is not host or host:port");
      settings.local_hostname = o.local_server_name.substr(0, colon);
      settings.rpc_port = static_cast<uint16_t>(port);
    } else {
      settings.local_hostname = o.local_server_name;
    }
  }
  if (o.operation != "read" && o.operation != "write")
    return bench_usage_error("--operation=" + o.operation + " is not read or write");
  if (o.batch_size == 0 || o.threads == 0 || o.duration <= 0)
    return bench_usage_error("--batch_size, --threads and --duration must be positive");
  std::printf("protocol: %s\n", protocol_note(settings).c_str());
  if (o.mode == "target")
    return run_target(settings, o);
  if (o.mode == "initiator")
    return run_initiator(settings, o);
  return bench_usage_error("--mode=" + o.mode + " is not initiator or target");
}

} // namespace kvferry::tools
