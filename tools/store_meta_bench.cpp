// kvferry-store-meta-bench: the store master's metadata operations, measured in process on
// master_state directly (no actor, no network). A benchmark, not a test: it prints figures.
//
//   exists         keys_request of --batch keys, all present
//   get_replicas   the batch lookup a get starts with (grants a lease, touches the LRU)
//   put cycle      put_start -> put_end -> the holders' commit acknowledgements (watch) -> the
//                  put_end answer (take_finished_ends): everything the master does for one put
//   remove cycle   remove (forced) -> the holders' fence acknowledgements: the space returns
//
// Each is measured twice: on the state alone, and with the wire codec the master actor runs
// around it (decode the request, encode the reply; the client's encoding is not counted). Rates
// are keys (objects) per CPU-second of this thread (CLOCK_THREAD_CPUTIME_ID, only inside the
// measured calls), so the figure does not depend on what else runs on the machine.
#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <ctime>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "actors/store/master_state.hpp"
#include "transport/store/wire.hpp"

using namespace kvferry;
namespace w = kvferry::transport::store;

namespace {

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "kvferry-store-meta-bench: %s\n", what.c_str());
  std::exit(1);
}

template <class T>
T must(caf::expected<T> r, const char* what) {
  if (!r)
    fail(std::string(what) + ": " + describe(r.error()));
  return std::move(*r);
}

/// A master with `holders` mounted segments of 1 TiB each (the state never touches that memory).
struct fixture {
  store::master_state state;
  std::vector<uint64_t> holders;
  uint64_t caller = 0;
  uint64_t next_key = 0;
  uint64_t value_size;
  uint8_t replicas;
  bool codec;
  /// Counted CPU time (inside the master's calls only).
  double cpu = 0;

  fixture(uint32_t segments, uint64_t size, uint8_t r, bool with_codec)
      : state(config(), 1, 1), value_size(size), replicas(r), codec(with_codec) {
    const auto now = store::clock::now();
    for (uint32_t i = 0; i < segments; ++i) {
      w::mount_request m;
      m.client_id = 100 + i;
      m.client_name = "holder-" + std::to_string(i);
      m.host = "host";
      w::segment_mount sm;
      sm.name = m.client_name;
      sm.base = (uint64_t{i} + 1) << 44;
      sm.size = 1ULL << 40;
      m.segments.push_back(sm);
      (void) must(state.mount(m, now), "mount");
      holders.push_back(m.client_id);
    }
    w::mount_request m;
    m.client_id = 1;
    m.client_name = "caller";
    m.host = "host";
    (void) must(state.mount(m, now), "mount");
    caller = 1;
  }

  static store::master_config config() {
    store::master_config c;
    c.lease = std::chrono::milliseconds(1); // lookups do not keep objects from removal
    return c;
  }

  /// Runs `body` and counts its thread CPU time.
  template <class Body>
  auto timed(Body body) {
    const double t0 = thread_cpu_seconds();
    auto r = body();
    cpu += thread_cpu_seconds() - t0;
    return r;
  }

  std::string key(uint64_t n) const { return "object/" + std::to_string(n); }

  /// Every holder acknowledges all the work it has (commits or fences): one watch each.
  void acknowledge_all() {
    for (auto h : holders) {
      auto ids = timed([&] {
        const auto now = store::clock::now();
        std::vector<uint64_t> out;
        if (codec) {
          auto bytes = must(w::encode(w::watch_request{h, {}}), "encode watch");
          auto req = must(w::decode_watch_request(bytes), "decode watch");
          auto reply = must(state.watch(req, now), "watch");
          (void) must(w::encode(reply), "encode watch reply");
          for (const auto& i : reply.work)
            out.push_back(i.id);
        } else {
          auto reply = must(state.watch(w::watch_request{h, {}}, now), "watch");
          for (const auto& i : reply.work)
            out.push_back(i.id);
        }
        return out;
      });
      if (ids.empty())
        continue;
      w::watch_request ack{h, std::move(ids)};
      auto bytes = codec ? must(w::encode(ack), "encode watch") : std::vector<uint8_t>{};
      timed([&] {
        const auto now = store::clock::now();
        if (codec) {
          auto req = must(w::decode_watch_request(bytes), "decode watch");
          (void) must(w::encode(must(state.watch(req, now), "watch")), "encode watch reply");
        } else {
          (void) must(state.watch(ack, now), "watch");
        }
        return 0;
      });
    }
  }

  /// put_start + put_end + commits of `batch` new keys; returns the keys.
  std::vector<std::string> put_cycle(uint32_t batch) {
    w::put_start_request start{caller, {}};
    for (uint32_t i = 0; i < batch; ++i)
      start.entries.push_back(w::put_entry{key(next_key++), value_size, replicas, false, false});
    auto start_bytes = codec ? must(w::encode(start), "encode") : std::vector<uint8_t>{};
    auto slots = timed([&] {
      const auto now = store::clock::now();
      if (!codec)
        return must(state.put_start(start, now), "put_start");
      auto req = must(w::decode_put_start_request(start_bytes), "decode");
      auto reply = must(state.put_start(req, now), "put_start");
      (void) must(w::encode(reply), "encode");
      return reply;
    });
    w::put_finish_request end{caller, {}};
    for (uint32_t i = 0; i < batch; ++i) {
      if (slots.slots[i].result.code != errc::none)
        fail("put_start: " + slots.slots[i].result.reason);
      end.entries.push_back(w::put_end_entry{start.entries[i].key, slots.slots[i].put_id, false, 0});
    }
    auto end_bytes = codec ? must(w::encode(end), "encode") : std::vector<uint8_t>{};
    timed([&] {
      const auto now = store::clock::now();
      if (!codec) {
        (void) must(state.put_end(end, now), "put_end");
        return 0;
      }
      auto req = must(w::decode_put_finish_request(end_bytes), "decode");
      auto outcomes = must(state.put_end(req, now), "put_end");
      // What the actor answers at once (entries that need no commit); here every entry waits.
      w::statuses_reply now_answered;
      for (const auto& o : outcomes)
        if (!o.pending)
          now_answered.results.push_back(o.result);
      if (!now_answered.results.empty())
        (void) must(w::encode(now_answered), "encode");
      return 0;
    });
    acknowledge_all();
    auto finished = timed([&] {
      auto f = state.take_finished_ends();
      if (codec) {
        w::statuses_reply r;
        for (const auto& e : f)
          r.results.push_back(e.result);
        (void) must(w::encode(r), "encode");
      }
      return f;
    });
    for (const auto& f : finished)
      if (f.result.code != errc::none)
        fail("put_end: " + f.result.reason);
    std::vector<std::string> keys;
    for (auto& e : start.entries)
      keys.push_back(std::move(e.key));
    return keys;
  }

  /// One keys request (exists, get_replicas or remove) of `keys`.
  void keys_call(w::method m, const std::vector<std::string>& keys) {
    w::keys_request req{caller, keys, m == w::method::remove};
    auto bytes = codec ? must(w::encode(req), "encode") : std::vector<uint8_t>{};
    timed([&] {
      const auto now = store::clock::now();
      std::optional<w::keys_request> decoded;
      if (codec)
        decoded = must(w::decode_keys_request(bytes), "decode");
      const auto& r = codec ? *decoded : req;
      switch (m) {
        case w::method::exists: {
          auto reply = must(state.exists(r, now), "exists");
          if (codec)
            (void) must(w::encode(reply), "encode");
          break;
        }
        case w::method::get_replicas: {
          auto reply = must(state.get_replicas(r, now), "get_replicas");
          if (codec)
            (void) must(w::encode(reply), "encode");
          break;
        }
        default: {
          auto reply = must(state.remove(r, now), "remove");
          if (codec)
            (void) must(w::encode(reply), "encode");
          break;
        }
      }
      return 0;
    });
  }
};

struct result {
  uint64_t ops = 0;
  double cpu = 0, wall = 0;
};

/// Runs `kind` for `seconds` of wall time on a master holding `preload` objects.
result run(const std::string& kind, uint32_t batch, uint64_t preload, double seconds,
           uint32_t segments, uint64_t size, uint8_t replicas, bool codec) {
  fixture f(segments, size, replicas, codec);
  std::vector<std::string> present;
  while (present.size() < preload) {
    auto keys = f.put_cycle(std::min<uint64_t>(1024, preload - present.size()));
    present.insert(present.end(), keys.begin(), keys.end());
  }
  std::mt19937_64 random(42);
  f.cpu = 0;
  result r;
  const auto start = std::chrono::steady_clock::now();
  const auto end = start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                             std::chrono::duration<double>(seconds));
  std::vector<std::string> keys(batch);
  while (std::chrono::steady_clock::now() < end) {
    if (kind == "exists" || kind == "get_replicas") {
      for (auto& k : keys)
        k = present[random() % present.size()];
      f.keys_call(kind == "exists" ? w::method::exists : w::method::get_replicas, keys);
      r.ops += batch;
    } else if (kind == "put") {
      // The removal keeps the map at its preloaded size; its time is not counted here.
      auto made = f.put_cycle(batch);
      r.ops += batch;
      const double counted = f.cpu;
      f.keys_call(w::method::remove, made);
      f.acknowledge_all();
      f.cpu = counted;
    } else { // remove
      const double counted = f.cpu;
      auto made = f.put_cycle(batch);
      f.cpu = counted;
      f.keys_call(w::method::remove, made);
      f.acknowledge_all();
      r.ops += batch;
    }
  }
  r.wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.cpu = f.cpu;
  return r;
}

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvferry-store-meta-bench: the store master's metadata operations on master_state "
               "in process, ops per CPU-second"};
  double seconds = 2;
  std::vector<uint32_t> batches{1, 128};
  uint64_t preload = 100000;
  uint32_t segments = 2;
  uint64_t value_size = 16384;
  uint32_t replicas = 1;
  bool json = false;
  app.add_option("--seconds", seconds, "wall seconds per measurement")->check(CLI::Range(0.01, 1e4));
  app.add_option("--batch", batches, "keys per call (several: --batch 1 128)")
    ->check(CLI::Range(1u, 4096u));
  app.add_option("--objects", preload, "objects in the map while measuring")
    ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 26));
  app.add_option("--segments", segments, "mounted holder segments")->check(CLI::Range(1u, 64u));
  app.add_option("--value_size", value_size, "bytes of each object")
    ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 30));
  app.add_option("--replica_num", replicas, "replicas per put")->check(CLI::Range(1u, 8u));
  app.add_flag("--json", json, "also print a JSON line per measurement");
  CLI11_PARSE(app, argc, argv);
  if (replicas > segments) {
    std::fprintf(stderr, "kvferry-store-meta-bench: --replica_num exceeds --segments\n");
    return 2;
  }
  std::printf("master_state in process: %" PRIu64 " objects of %" PRIu64 " bytes, %u segments, "
              "%u replica(s); ops = keys; rate per CPU-second of the measuring thread\n",
              preload, value_size, segments, replicas);
  std::printf("%-14s %6s %16s %16s\n", "operation", "batch", "state ops/cpu-s",
              "+codec ops/cpu-s");
  for (const char* kind : {"exists", "get_replicas", "put", "remove"}) {
    for (auto batch : batches) {
      auto plain = run(kind, batch, preload, seconds, segments, value_size,
                       static_cast<uint8_t>(replicas), false);
      auto coded = run(kind, batch, preload, seconds, segments, value_size,
                       static_cast<uint8_t>(replicas), true);
      const double a = plain.cpu > 0 ? static_cast<double>(plain.ops) / plain.cpu : 0;
      const double b = coded.cpu > 0 ? static_cast<double>(coded.ops) / coded.cpu : 0;
      const char* name = std::string(kind) == "put"      ? "put cycle"
                         : std::string(kind) == "remove" ? "remove cycle"
                                                         : kind;
      std::printf("%-14s %6u %16.0f %16.0f\n", name, batch, a, b);
      if (json)
        std::printf("{\"tool\":\"store-meta-bench\",\"op\":\"%s\",\"batch\":%u,\"objects\":%" PRIu64
                    ",\"ops\":%" PRIu64 ",\"cpu_s\":%.6f,\"ops_per_cpu_s\":%.1f,\"codec_ops\":%" PRIu64
                    ",\"codec_cpu_s\":%.6f,\"codec_ops_per_cpu_s\":%.1f}\n",
                    kind, batch, preload, plain.ops, plain.cpu, a, coded.ops, coded.cpu, b);
      std::fflush(stdout);
    }
  }
  return 0;
}
