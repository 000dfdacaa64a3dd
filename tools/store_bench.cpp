// `kvferry store-bench`: put and get throughput and per-call latency of the store, measured by a
// store client against a running master and store nodes.
//
// For every value size, each phase runs --duration seconds with --threads threads sharing one
// store client (the bench process; it contributes no memory unless --segment_size says so):
//
//   put  every call is batch_put_from of --batch_size new keys, from memory registered with the
//        client (zero copy: the transfer engine WRITEs the caller's bytes to each replica); keys
//        are never reused, so once the store is full the master evicts as it would in service
//        (a put the master cannot place now answers store_full: counted, not retried). The keys
//        are removed after the phase.
//   get  each thread first puts --get_keys objects (not measured), then every call is
//        batch_get_into of --batch_size of them, in turn, into registered memory (zero copy: the
//        replica is READ straight into the caller's buffer). The keys are removed after the phase.
//
// --staging uses batch_put / batch_get instead (values copied through the client's staging
// buffer). --verify fills every value with a pattern derived from its key and checks every byte
// a get returns (and, after a put phase, reads back each thread's last batch); the fills and
// checks are inside the measured loop, so --verify figures are not throughput figures.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "actors/store/client.hpp"
#include "config/log.hpp"
#include "tools/commands.hpp"
#include "tools/pattern.hpp"
#include "tools/store_tools.hpp"

namespace kvferry::tools {

namespace {

using steady = std::chrono::steady_clock;
constexpr uint64_t value_alignment = 64;
/// Most keys in one remove call (the store's batch limit).
constexpr size_t remove_chunk = transport::store::max_batch;

uint64_t aligned(uint64_t n) {
  return (n + value_alignment - 1) / value_alignment * value_alignment;
}

int usage_error(const std::string& what) {
  std::fprintf(stderr, "kvferry store-bench: %s\n", what.c_str());
  return 2;
}

/// What one phase (one operation at one value size) counted, over all threads.
struct phase_tally {
  std::atomic<uint64_t> calls{0}, objects{0}, store_full{0}, missing{0}, errors{0},
    verify_errors{0};
  std::mutex mutex;
  std::vector<double> call_us;
  std::string first_problem;

  void note(const std::string& what) {
    std::lock_guard<std::mutex> guard(mutex);
    if (first_problem.empty())
      first_problem = what;
  }
  void add_latencies(const std::vector<double>& us) {
    std::lock_guard<std::mutex> guard(mutex);
    call_us.insert(call_us.end(), us.begin(), us.end());
  }
};

/// The bench's context: one client, one buffer of --threads x --batch_size values of the largest
/// size (registered with the client unless --staging), the options.
struct bench {
  store::client& client;
  const store_bench_options& o;
  std::string prefix;
  uint8_t* buffer = nullptr;
  uint64_t slot_bytes = 0; // one value slot: the largest value size, aligned

  [[nodiscard]] uint8_t* slot(uint32_t tid, uint32_t i) const {
    return buffer + (uint64_t{tid} * o.batch_size + i) * slot_bytes;
  }
  [[nodiscard]] std::string key(const char* phase, uint64_t size, uint32_t tid, uint64_t n) const {
    return prefix + "/" + phase + "/" + std::to_string(size) + "/" + std::to_string(tid) + "/"
           + std::to_string(n);
  }
  [[nodiscard]] store::put_options put_opts(uint8_t replicas) const {
    store::put_options po;
    po.replicas = replicas;
    po.deadline = std::chrono::milliseconds(o.timeout_ms);
    return po;
  }
  [[nodiscard]] store::get_options get_opts() const {
    store::get_options go;
    go.deadline = std::chrono::milliseconds(o.timeout_ms);
    return go;
  }

  /// One put call of `keys` from the thread's slots; the results per key.
  std::vector<caf::error> put(uint32_t tid, const std::vector<std::string>& keys, uint64_t size,
                              uint8_t replicas) {
    if (o.staging) {
      std::vector<std::span<const uint8_t>> values;
      for (uint32_t i = 0; i < keys.size(); ++i)
        values.emplace_back(slot(tid, i), size);
      return client.batch_put(keys, values, put_opts(replicas));
    }
    std::vector<const void*> addrs;
    std::vector<size_t> sizes(keys.size(), size);
    for (uint32_t i = 0; i < keys.size(); ++i)
      addrs.push_back(slot(tid, i));
    return client.batch_put_from(keys, addrs, sizes, put_opts(replicas));
  }

  /// One get call of `keys` into the thread's slots (staging: copied there from the returned
  /// vectors, outside the measured call); the results per key. `call_us` gets the call's time.
  std::vector<caf::error> get(uint32_t tid, const std::vector<std::string>& keys, uint64_t size,
                              double& call_us) {
    std::vector<caf::error> out(keys.size());
    if (o.staging) {
      auto t0 = steady::now();
      auto got = client.batch_get(keys, get_opts());
      call_us = std::chrono::duration<double, std::micro>(steady::now() - t0).count();
      for (uint32_t i = 0; i < keys.size(); ++i) {
        if (!got[i])
          out[i] = got[i].error();
        else if (got[i]->size() != size)
          out[i] = make_error(errc::invalid_argument, "get '" + keys[i] + "': "
                                                        + std::to_string(got[i]->size())
                                                        + " bytes, expected "
                                                        + std::to_string(size));
        else if (o.verify)
          std::memcpy(slot(tid, i), got[i]->data(), size);
      }
      return out;
    }
    std::vector<void*> addrs;
    std::vector<size_t> caps(keys.size(), slot_bytes);
    for (uint32_t i = 0; i < keys.size(); ++i)
      addrs.push_back(slot(tid, i));
    auto t0 = steady::now();
    auto got = client.batch_get_into(keys, addrs, caps, get_opts());
    call_us = std::chrono::duration<double, std::micro>(steady::now() - t0).count();
    for (uint32_t i = 0; i < keys.size(); ++i) {
      if (!got[i])
        out[i] = got[i].error();
      else if (*got[i] != size)
        out[i] = make_error(errc::invalid_argument, "get '" + keys[i] + "': "
                                                      + std::to_string(*got[i])
                                                      + " bytes, expected " + std::to_string(size));
    }
    return out;
  }

  /// Checks slot i of `tid` against the pattern of `key`; counts and notes a mismatch.
  void check(uint32_t tid, uint32_t i, const std::string& key, uint64_t size, phase_tally& t) {
    const auto at = check_pattern(slot(tid, i), size, key_seed(key));
    if (at != size) {
      ++t.verify_errors;
      t.note("verify: object '" + key + "' differs from its pattern at byte " + std::to_string(at));
    }
  }

  /// Removes `keys` (forced: leases of this run's gets do not matter any more); objects already
  /// evicted are fine.
  void remove_all(const std::vector<std::string>& keys) {
    for (size_t i = 0; i < keys.size(); i += remove_chunk) {
      std::vector<std::string> part(keys.begin() + i,
                                    keys.begin() + std::min(keys.size(), i + remove_chunk));
      auto results = client.batch_remove(part, true);
      for (size_t k = 0; k < results.size(); ++k)
        if (results[k] && code_of(results[k]) != errc::object_not_found)
          log::warn("store-bench: cannot remove '{}': {}", part[k], describe(results[k]));
    }
  }
};

void put_thread(bench& b, uint32_t tid, uint64_t size, steady::time_point end, phase_tally& t,
                uint64_t& keys_made) {
  const auto& o = b.o;
  std::vector<std::string> keys(o.batch_size);
  std::vector<double> lat;
  std::vector<std::string> last_ok;
  uint64_t n = 0;
  for (bool first = true; first || steady::now() < end; first = false) {
    for (uint32_t i = 0; i < o.batch_size; ++i) {
      keys[i] = b.key("p", size, tid, n++);
      if (o.verify)
        fill_pattern(b.slot(tid, i), size, key_seed(keys[i]));
    }
    auto t0 = steady::now();
    auto results = b.put(tid, keys, size, static_cast<uint8_t>(o.replica_num));
    lat.push_back(std::chrono::duration<double, std::micro>(steady::now() - t0).count());
    ++t.calls;
    if (o.verify)
      last_ok.clear();
    for (uint32_t i = 0; i < results.size(); ++i) {
      if (!results[i]) {
        ++t.objects;
        if (o.verify)
          last_ok.push_back(keys[i]);
      } else if (code_of(results[i]) == errc::store_full) {
        ++t.store_full;
      } else {
        ++t.errors;
        t.note(describe(results[i]));
      }
    }
  }
  keys_made = n;
  t.add_latencies(lat);
  if (!o.verify || last_ok.empty())
    return;
  // Read the last batch back (not measured): the bytes every replica-WRITE left must be the key's.
  double unused;
  auto results = b.get(tid, last_ok, size, unused);
  for (uint32_t i = 0; i < results.size(); ++i) {
    if (!results[i])
      b.check(tid, i, last_ok[i], size, t);
    else if (code_of(results[i]) != errc::object_not_found) { // evicted since: nothing to check
      ++t.verify_errors;
      t.note("verify: reading back '" + last_ok[i] + "': " + describe(results[i]));
    }
  }
}

/// Puts the thread's get working set (not measured); false when it could not.
bool preload_thread(bench& b, uint32_t tid, uint64_t size, uint64_t count, phase_tally& t) {
  const auto& o = b.o;
  uint64_t n = 0;
  int full_retries = 0;
  while (n < count) {
    std::vector<std::string> keys;
    for (uint64_t i = n; i < count && keys.size() < o.batch_size; ++i) {
      keys.push_back(b.key("g", size, tid, i));
      fill_pattern(b.slot(tid, static_cast<uint32_t>(keys.size() - 1)), size,
                   key_seed(keys.back()));
    }
    auto results = b.put(tid, keys, size, 1);
    uint64_t done = 0;
    for (uint32_t i = 0; i < results.size(); ++i) {
      if (!results[i] || code_of(results[i]) == errc::object_exists) {
        ++done;
        continue;
      }
      if (code_of(results[i]) == errc::store_full && full_retries < 200)
        break; // eviction of earlier phases' objects is under way: retry from here
      t.note("preload: " + describe(results[i]));
      return false;
    }
    if (done < keys.size()) {
      ++full_retries;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    n += done;
  }
  return true;
}

void get_thread(bench& b, uint32_t tid, uint64_t size, uint64_t count, steady::time_point end,
                phase_tally& t) {
  const auto& o = b.o;
  std::vector<std::string> keys(o.batch_size);
  std::vector<double> lat;
  uint64_t cursor = 0;
  for (bool first = true; first || steady::now() < end; first = false) {
    for (uint32_t i = 0; i < o.batch_size; ++i)
      keys[i] = b.key("g", size, tid, (cursor + i) % count);
    cursor = (cursor + o.batch_size) % count;
    if (o.verify)
      for (uint32_t i = 0; i < o.batch_size; ++i)
        std::memset(b.slot(tid, i), 0, size);
    double us = 0;
    auto results = b.get(tid, keys, size, us);
    lat.push_back(us);
    ++t.calls;
    for (uint32_t i = 0; i < results.size(); ++i) {
      if (!results[i]) {
        ++t.objects;
        if (o.verify)
          b.check(tid, i, keys[i], size, t);
      } else if (code_of(results[i]) == errc::object_not_found) {
        ++t.missing;
        t.note(describe(results[i]));
      } else {
        ++t.errors;
        t.note(describe(results[i]));
      }
    }
  }
  t.add_latencies(lat);
}

/// Prints one phase's line (and its JSON line); true when nothing went wrong.
bool report(const store_bench_options& o, const char* op, uint64_t size, double secs,
            phase_tally& t, uint64_t working_set) {
  const double ops = static_cast<double>(t.objects.load()) / secs;
  const double bytes_per_s = ops * static_cast<double>(size);
  const double p50 = percentile(t.call_us, 0.50), p99 = percentile(t.call_us, 0.99);
  const char* path = o.staging ? "staging (put/get, copied)" : "zero copy (put_from/get_into)";
  const bool is_put = std::strcmp(op, "put") == 0;
  std::printf("store-bench %s: value %" PRIu64 " B, batch %u, threads %u, %s%s: %.1f ops/s, "
              "%.3f GB/s; per call p50 %.1f us, p99 %.1f us (%" PRIu64 " calls, %" PRIu64
              " objects in %.2f s; store_full %" PRIu64 ", missing %" PRIu64 ", errors %" PRIu64
              "%s)\n",
              op, size, o.batch_size, o.threads,
              is_put ? ("replicas " + std::to_string(o.replica_num) + ", ").c_str()
                     : ("working set " + std::to_string(working_set) + " per thread, ").c_str(),
              path, ops, bytes_per_s / 1e9, p50, p99, t.calls.load(), t.objects.load(), secs,
              t.store_full.load(), t.missing.load(), t.errors.load(),
              o.verify ? (", verify errors " + std::to_string(t.verify_errors.load())).c_str()
                       : "");
  if (!t.first_problem.empty())
    std::printf("store-bench %s: first problem: %s\n", op, t.first_problem.c_str());
  if (o.json)
    std::printf("{\"tool\":\"store-bench\",\"op\":\"%s\",\"value_size\":%" PRIu64
                ",\"batch_size\":%u,\"threads\":%u,\"replicas\":%u,\"path\":\"%s\","
                "\"working_set_per_thread\":%" PRIu64 ",\"duration_s\":%.6f,\"calls\":%" PRIu64
                ",\"objects\":%" PRIu64 ",\"ops_per_s\":%.1f,\"bytes_per_s\":%.1f,"
                "\"call_p50_us\":%.1f,\"call_p99_us\":%.1f,\"store_full\":%" PRIu64
                ",\"missing\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"verify_errors\":%" PRIu64
                "}\n",
                op, size, o.batch_size, o.threads, is_put ? o.replica_num : 1u,
                o.staging ? "staging" : "zero_copy", is_put ? 0 : working_set, secs,
                t.calls.load(), t.objects.load(), ops, bytes_per_s, p50, p99,
                t.store_full.load(), t.missing.load(), t.errors.load(), t.verify_errors.load());
  std::fflush(stdout);
  return t.objects > 0 && t.errors == 0 && t.missing == 0 && t.verify_errors == 0;
}

template <class Body>
double run_threads(uint32_t threads, Body body) {
  const auto start = steady::now();
  std::vector<std::thread> pool;
  for (uint32_t tid = 0; tid < threads; ++tid)
    pool.emplace_back([&body, tid] { body(tid); });
  for (auto& th : pool)
    th.join();
  return std::chrono::duration<double>(steady::now() - start).count();
}

bool run_put_phase(bench& b, uint64_t size) {
  const auto& o = b.o;
  phase_tally t;
  std::vector<uint64_t> made(o.threads, 0);
  const auto end = steady::now() + std::chrono::duration_cast<steady::duration>(
                                     std::chrono::duration<double>(o.duration));
  if (!o.verify)
    for (uint32_t tid = 0; tid < o.threads; ++tid)
      for (uint32_t i = 0; i < o.batch_size; ++i)
        fill_pattern(b.slot(tid, i), size, key_seed(b.prefix) + i);
  const double secs = run_threads(o.threads, [&](uint32_t tid) {
    put_thread(b, tid, size, end, t, made[tid]);
  });
  const bool ok = report(o, "put", size, secs, t, 0);
  for (uint32_t tid = 0; tid < o.threads; ++tid) {
    std::vector<std::string> keys;
    for (uint64_t n = 0; n < made[tid]; ++n)
      keys.push_back(b.key("p", size, tid, n));
    b.remove_all(keys);
  }
  return ok;
}

bool run_get_phase(bench& b, uint64_t size) {
  const auto& o = b.o;
  uint64_t count = o.get_keys;
  if (count == 0) {
    auto f = read_master_figures(b.client);
    const uint64_t capacity = f ? f->capacity : 0;
    count = std::min<uint64_t>(4096, capacity / 3 / aligned(size) / o.threads);
    if (count == 0) {
      std::fprintf(stderr, "kvferry store-bench: the store (capacity %" PRIu64 " bytes) cannot "
                           "hold a get working set of %u x %" PRIu64 " bytes in a third of it; "
                           "give --get_keys\n",
                   capacity, o.threads, size);
      return false;
    }
  }
  phase_tally t;
  std::atomic<bool> loaded{true};
  run_threads(o.threads, [&](uint32_t tid) {
    if (!preload_thread(b, tid, size, count, t))
      loaded = false;
  });
  if (!loaded) {
    std::fprintf(stderr, "kvferry store-bench: cannot put the get working set: %s\n",
                 t.first_problem.c_str());
    return false;
  }
  const auto end = steady::now() + std::chrono::duration_cast<steady::duration>(
                                     std::chrono::duration<double>(o.duration));
  const double secs = run_threads(o.threads, [&](uint32_t tid) {
    get_thread(b, tid, size, count, end, t);
  });
  const bool ok = report(o, "get", size, secs, t, count);
  for (uint32_t tid = 0; tid < o.threads; ++tid) {
    std::vector<std::string> keys;
    for (uint64_t n = 0; n < count; ++n)
      keys.push_back(b.key("g", size, tid, n));
    b.remove_all(keys);
  }
  return ok;
}

} // namespace

int run_store_bench(config::settings settings, const store_bench_options& o) {
  if (o.operation != "put" && o.operation != "get" && o.operation != "both")
    return usage_error("--operation=" + o.operation + " is not put, get or both");
  if (o.batch_size == 0 || o.batch_size > transport::store::max_batch)
    return usage_error("--batch_size must be between 1 and "
                       + std::to_string(transport::store::max_batch));
  if (o.threads == 0 || o.duration <= 0)
    return usage_error("--threads and --duration must be positive");
  if (o.replica_num == 0 || o.replica_num > transport::store::max_replicas)
    return usage_error("--replica_num must be between 1 and "
                       + std::to_string(transport::store::max_replicas));
  std::vector<uint64_t> sizes;
  for (size_t at = 0; at <= o.value_size.size();) {
    auto comma = o.value_size.find(',', at);
    if (comma == std::string::npos)
      comma = o.value_size.size();
    auto size = config::parse_size(o.value_size.substr(at, comma - at), "--value_size");
    if (!size)
      return usage_error(context_of(size.error()));
    if (*size == 0)
      return usage_error("--value_size: a value of 0 bytes");
    sizes.push_back(*size);
    at = comma + 1;
  }
  auto segment = config::parse_size(o.segment_size, "--segment_size");
  if (!segment)
    return usage_error(context_of(segment.error()));
  const uint64_t slot_bytes = aligned(*std::max_element(sizes.begin(), sizes.end()));
  const uint64_t buffer_bytes = slot_bytes * o.batch_size * o.threads;
  auto c = store::client::create(
    bench_client_settings(settings, *segment, o.staging ? buffer_bytes : 0));
  if (!c) {
    std::fprintf(stderr, "kvferry store-bench: %s\n", describe(c.error()).c_str());
    return 1;
  }
  mapped_buffer buffer(buffer_bytes);
  if (buffer.data == nullptr)
    return usage_error("cannot map " + std::to_string(buffer_bytes) + " bytes for the values");
  std::memset(buffer.data, 0, buffer_bytes);
  if (!o.staging) {
    if (auto err = (*c)->register_buffer(buffer.data, buffer_bytes)) {
      std::fprintf(stderr, "kvferry store-bench: %s\n", describe(err).c_str());
      return 1;
    }
  }
  bench b{**c, o, o.key_prefix.empty() ? "store-bench/" + run_id() : o.key_prefix, buffer.data,
          slot_bytes};
  if (auto f = read_master_figures(**c))
    std::printf("store-bench: master %s: capacity %" PRIu64 " bytes, %" PRIu64 " in use, %" PRIu64
                " objects; this client contributes %" PRIu64 " bytes\n",
                settings.master_server_address.c_str(), f->capacity, f->used, f->objects,
                *segment);
  bool ok = true;
  for (auto size : sizes) {
    if (o.operation != "get")
      ok = run_put_phase(b, size) && ok;
    if (o.operation != "put")
      ok = run_get_phase(b, size) && ok;
  }
  if (!o.staging)
    (void) (*c)->unregister_buffer(buffer.data);
  (*c)->close();
  return ok ? 0 : 1;
}

} // namespace kvferry::tools
