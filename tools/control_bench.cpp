// kvferry-control-bench: the coordinator's control path alone, and the same-process memcpy path
// next to a plain memcpy of the same sizes. A benchmark, not a test: it prints figures.
//
//   control path: tasks flow engine.submit -> coordinator -> worker -> report -> resolution, with a
//                 data path that completes every slice instantly and copies nothing
//                 (transport::fault_path with no faults). slices/s, tasks/s and slices per
//                 CPU-second (process CPU time from getrusage, all threads together).
//   memcpy path:  one READ task per block through transport::local_path versus std::memcpy of the
//                 same blocks, GB/s and the ratio.
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <sys/resource.h>

#include "actors/transfer_engine.hpp"
#include "tools/commands.hpp"
#include "tests/support/fault_path.hpp"

using namespace kvferry;

namespace {

double cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

struct control_result {
  double seconds = 0, cpu = 0;
  uint64_t tasks = 0, slices = 0;
};

/// `threads` submitters, each keeping `depth` batches of `batch` tasks of `task_bytes` in flight.
control_result run_control(uint32_t threads, uint32_t batch, uint64_t task_bytes, uint32_t depth,
                           double seconds, uint32_t workers) {
  auto rt = runtime::create({});
  config::settings settings;
  engine_options eo;
  eo.segment_name = "control-bench";
  for (uint32_t i = 0; i < workers; ++i)
    eo.data_paths.push_back(std::make_shared<transport::fault_path>(transport::fault_policy{}));
  auto engine = transfer_engine::create(*rt, settings, eo);
  if (!engine) {
    std::fprintf(stderr, "%s\n", describe(engine.error()).c_str());
    std::exit(1);
  }
  auto& e = **engine;
  // Registered but never touched: the data path copies nothing.
  const uint64_t region = task_bytes * batch * depth * threads;
  tools::mapped_buffer local(region), remote(region);
  (void) e.register_memory(local.data, region, "cpu:0");
  auto seg = e.open_segment(e.segment_name());
  const uint64_t slices_per_task = (task_bytes + settings.slice_size - 1) / settings.slice_size;
  std::atomic<uint64_t> tasks{0};
  auto start = std::chrono::steady_clock::now();
  auto cpu0 = cpu_seconds();
  auto end = start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                       std::chrono::duration<double>(seconds));
  std::vector<std::thread> ts;
  for (uint32_t t = 0; t < threads; ++t) {
    ts.emplace_back([&, t] {
      std::vector<std::vector<transfer_request>> reqs(depth);
      for (uint32_t d = 0; d < depth; ++d)
        for (uint32_t i = 0; i < batch; ++i) {
          uint64_t off = ((uint64_t{t} * depth + d) * batch + i) * task_bytes;
          reqs[d].push_back({opcode::write, local.data + off, *seg,
                             reinterpret_cast<uint64_t>(local.data) + off, task_bytes});
        }
      std::vector<batch_id> inflight(depth);
      for (uint32_t d = 0; d < depth; ++d) {
        inflight[d] = *e.allocate_batch(batch);
        (void) e.submit(inflight[d], reqs[d]);
      }
      uint64_t done = 0;
      for (uint32_t d = 0;; d = (d + 1) % depth) {
        (void) e.wait(inflight[d], std::chrono::seconds(30));
        (void) e.free_batch(inflight[d]);
        done += batch;
        if (std::chrono::steady_clock::now() >= end) {
          for (uint32_t k = 1; k < depth; ++k) {
            auto other = (d + k) % depth;
            (void) e.wait(inflight[other], std::chrono::seconds(30));
            (void) e.free_batch(inflight[other]);
            done += batch;
          }
          break;
        }
        inflight[d] = *e.allocate_batch(batch);
        (void) e.submit(inflight[d], reqs[d]);
      }
      tasks += done;
    });
  }
  for (auto& th : ts)
    th.join();
  control_result r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.cpu = cpu_seconds() - cpu0;
  r.tasks = tasks;
  r.slices = tasks * slices_per_task;
  auto stats = e.stats();
  if (!stats || stats->tasks_completed != r.tasks || stats->live_tasks != 0) {
    std::fprintf(stderr, "control bench: counters do not add up\n");
    std::exit(1);
  }
  return r;
}

double gbps(uint64_t bytes, double secs) {
  return bytes / secs / 1e9;
}

/// Through the engine: READ `blocks` blocks of `block` bytes per batch, for `seconds`.
double engine_copy(uint64_t block, uint32_t batch, double seconds, uint64_t& moved) {
  auto rt = runtime::create({});
  config::settings settings;
  auto a = transfer_engine::create(*rt, settings, {.segment_name = "a"});
  auto b = transfer_engine::create(*rt, settings, {.segment_name = "b"});
  uint64_t bytes = block * batch;
  tools::mapped_buffer src(bytes), dst(bytes);
  std::memset(src.data, 1, bytes);
  std::memset(dst.data, 2, bytes);
  (void) (*a)->register_memory(src.data, bytes, "cpu:0");
  (void) (*b)->register_memory(dst.data, bytes, "cpu:0");
  auto seg = (*b)->open_segment("a");
  std::vector<transfer_request> reqs;
  for (uint32_t i = 0; i < batch; ++i)
    reqs.push_back({opcode::read, dst.data + i * block, *seg,
                    reinterpret_cast<uint64_t>(src.data) + i * block, block});
  moved = 0;
  auto start = std::chrono::steady_clock::now();
  double secs = 0;
  do {
    auto id = *(*b)->allocate_batch(batch);
    (void) (*b)->submit(id, reqs);
    auto s = (*b)->wait(id, std::chrono::seconds(30));
    moved += s ? s->transferred_bytes : 0;
    (void) (*b)->free_batch(id);
    secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  } while (secs < seconds);
  return gbps(moved, secs);
}

/// Plain memcpy of the same blocks, one thread.
double plain_copy(uint64_t block, uint32_t batch, double seconds) {
  uint64_t bytes = block * batch;
  tools::mapped_buffer src(bytes), dst(bytes);
  std::memset(src.data, 1, bytes);
  std::memset(dst.data, 2, bytes);
  uint64_t moved = 0;
  auto start = std::chrono::steady_clock::now();
  double secs = 0;
  do {
    for (uint32_t i = 0; i < batch; ++i)
      std::memcpy(dst.data + i * block, src.data + i * block, block);
    moved += bytes;
    secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  } while (secs < seconds);
  if (dst.data[bytes - 1] != 1)
    std::puts("?");
  return gbps(moved, secs);
}

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvferry-control-bench: control-path and same-process memcpy-path throughput"};
  double seconds = 3;
  uint32_t batch = 128, depth = 4, workers = 2;
  bool skip_memcpy = false;
  app.add_option("--seconds", seconds, "seconds per measurement");
  app.add_option("--batch", batch, "tasks per batch");
  app.add_option("--depth", depth, "batches in flight per submitting thread");
  app.add_option("--workers", workers, "worker actors (instant data paths)");
  app.add_flag("--skip-memcpy", skip_memcpy, "only the control path");
  CLI11_PARSE(app, argc, argv);

  std::printf("control path (instant data path, %u workers, batch %u, %u batches in flight per "
              "thread)\n", workers, batch, depth);
  std::printf("%-8s %-10s %14s %14s %12s %18s\n", "threads", "task", "tasks/s", "slices/s",
              "cpu cores", "slices/cpu-second");
  for (uint64_t task_bytes : {uint64_t{64} << 10, uint64_t{1} << 20}) {
    for (uint32_t threads : {1u, 2u}) {
      auto r = run_control(threads, batch, task_bytes, depth, seconds, workers);
      std::printf("%-8u %-10s %14.0f %14.0f %12.2f %18.0f\n", threads,
                  task_bytes == (64u << 10) ? "64 KiB" : "1 MiB", r.tasks / r.seconds,
                  r.slices / r.seconds, r.cpu / r.seconds, r.slices / r.cpu);
    }
  }
  if (skip_memcpy)
    return 0;
  std::printf("\nsame-process memcpy path (one READ task per block, batch %u) vs plain memcpy\n",
              batch);
  std::printf("%-10s %14s %14s %8s\n", "block", "engine GB/s", "memcpy GB/s", "ratio");
  for (uint64_t block : {uint64_t{4} << 10, uint64_t{64} << 10, uint64_t{1} << 20}) {
    uint64_t moved = 0;
    auto engine = engine_copy(block, batch, seconds, moved);
    auto plain = plain_copy(block, batch, seconds);
    std::printf("%-10s %14.2f %14.2f %8.2f\n",
                block == 4096 ? "4 KiB" : block == 65536 ? "64 KiB" : "1 MiB", engine, plain,
                engine / plain);
  }
  return 0;
}
