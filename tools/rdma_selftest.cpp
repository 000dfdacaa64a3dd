// `kvferry rdma-selftest`: checks a machine's RDMA NICs with kvferry's own RDMA path. It lists the
// provider's devices (NUMA node, port state), then for each selected NIC and each size WRITEs a
// pattern and READs it back (GB/s, every byte checked after every batch, outside the timed part),
// and times single 4 KiB READs (one task per batch: p50/p99).
//
// Loopback (default): a target and an initiator engine in this process, each on its own
// networked runtime, so that they reach each other through the NIC as two nodes would (never the
// same-process path). Two hosts: `--serve` on one prints its segment name, `--peer NAME` on the
// other runs the same checks against it (READ-back verifies what the WRITEs left there).
#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <boost/json.hpp>

#include "actors/transfer_engine.hpp"
#include "config/error.hpp"
#include "tools/commands.hpp"
#include "tools/pattern.hpp"
#include "tools/signals.hpp"
#include "transport/rdma/topology.hpp"
#include "transport/rdma/verbs.hpp"

namespace kvferry::tools {

namespace {

namespace rdma = transport::rdma;
namespace json = boost::json;
using clock_type = std::chrono::steady_clock;

/// Bytes each side registers; the largest size a run accepts.
constexpr uint64_t working_set = 32ULL << 20;
constexpr uint32_t max_tasks = 128;
constexpr uint64_t latency_bytes = 4096;
/// Patterns: one stream per size, so bytes left by an earlier size never pass for this one's.
constexpr uint64_t pattern_seed = 0x72646d6173656c66ULL;

std::vector<std::string> split_commas(const std::string& text) {
  std::vector<std::string> out;
  for (size_t at = 0; at <= text.size();) {
    auto comma = std::min(text.find(',', at), text.size());
    if (comma > at)
      out.push_back(text.substr(at, comma - at));
    at = comma + 1;
  }
  return out;
}

caf::expected<std::vector<uint64_t>> parse_sizes(const std::string& text) {
  std::vector<uint64_t> out;
  for (const auto& item : split_commas(text)) {
    auto size = config::parse_size(item, "--sizes");
    if (!size)
      return size.error();
    if (*size == 0 || *size > working_set)
      return make_error(errc::invalid_argument,
                        "--sizes: " + item + " is not between 1 byte and 32 MiB (the memory each "
                        "side registers)");
    out.push_back(*size);
  }
  if (out.empty())
    return make_error(errc::invalid_argument, "--sizes: expected a comma list such as 4096,64KiB");
  return out;
}

/// One line per device: facts from sysfs and the port the engine would use.
json::object describe_device(rdma::provider& verbs, const rdma::device_info& d, uint8_t port) {
  json::object out{{"name", d.name}, {"numa_node", d.numa_node}, {"pci_bus_id", d.pci_bus_id}};
  std::string state = "cannot open", detail;
  if (auto ctx = verbs.open(d.name); !ctx) {
    detail = context_of(ctx.error());
  } else if (auto p = (*ctx)->query_port(port); !p) {
    state = "cannot query";
    detail = context_of(p.error());
  } else {
    state = ibv_port_state_str(p->state);
    if (state.starts_with("PORT_"))
      state.erase(0, 5);
    detail = std::string(p->link_layer == IBV_LINK_LAYER_ETHERNET ? "Ethernet (RoCE)"
                                                                   : "InfiniBand")
             + ", active MTU " + std::to_string(rdma::mtu_bytes(p->active_mtu));
  }
  out["port"] = unsigned{port};
  out["port_state"] = state;
  out["port_detail"] = detail;
  std::printf("  %s: numa node %s, pci %s, port %u %s (%s)\n", d.name.c_str(),
              d.numa_node < 0 ? "unknown" : std::to_string(d.numa_node).c_str(),
              d.pci_bus_id.empty() ? "unknown" : d.pci_bus_id.c_str(), unsigned{port},
              state.c_str(), detail.c_str());
  return out;
}

/// An engine on its own networked runtime with `working_set` bytes registered. Members in
/// creation order: the engine stops before its memory goes.
struct node {
  std::unique_ptr<mapped_buffer> memory;
  std::shared_ptr<runtime> rt;
  std::unique_ptr<transfer_engine> engine;
  ~node() {
    if (engine)
      engine->shutdown();
  }
  [[nodiscard]] uint64_t base() const { return reinterpret_cast<uint64_t>(memory->data); }
};

caf::expected<std::unique_ptr<node>> open_node(const config::settings& settings,
                                               const std::string& role) {
  auto n = std::make_unique<node>();
  n->memory = std::make_unique<mapped_buffer>(working_set);
  if (n->memory->data == nullptr)
    return make_error(errc::invalid_argument, role + ": cannot map " + std::to_string(working_set)
                                                + " bytes");
  std::memset(n->memory->data, 0, working_set);
  auto rt = runtime::create({.network = true});
  if (!rt)
    return rt.error();
  n->rt = std::move(*rt);
  auto engine = transfer_engine::create(n->rt, settings);
  if (!engine)
    return make_error(code_of(engine.error()), role + ": " + context_of(engine.error()));
  n->engine = std::move(*engine);
  if (auto err = n->engine->register_memory(n->memory->data, working_set, "cpu:0"))
    return make_error(code_of(err), role + ": " + context_of(err));
  return n;
}

/// Runs `requests` as one batch; the submit-to-terminal time, or an error naming the first task
/// that did not complete.
caf::expected<double> timed_batch(transfer_engine& engine,
                                  const std::vector<transfer_request>& requests,
                                  const std::string& what) {
  auto batch = engine.allocate_batch(requests.size());
  if (!batch)
    return batch.error();
  auto start = clock_type::now();
  auto first = engine.submit(*batch, requests);
  if (!first) {
    (void) engine.free_batch(*batch);
    return make_error(code_of(first.error()), what + ": submit: " + context_of(first.error()));
  }
  auto budget = engine.settings().task_deadline + std::chrono::seconds(10);
  auto summary = engine.wait(*batch, std::chrono::duration_cast<std::chrono::milliseconds>(budget));
  double secs = std::chrono::duration<double>(clock_type::now() - start).count();
  caf::error err;
  if (!summary)
    err = make_error(code_of(summary.error()), what + ": wait: " + context_of(summary.error()));
  for (uint32_t i = 0; !err && i < requests.size(); ++i) {
    auto st = engine.status(*batch, *first + i);
    if (!st)
      err = st.error();
    else if (st->state != task_state::completed)
      err = make_error(st->code == errc::none ? errc::transport_failure : st->code,
                       what + ": task " + std::to_string(i) + " ended " + to_string(st->state)
                         + (st->reason.empty() ? "" : ": " + st->reason));
  }
  (void) engine.free_batch(*batch);
  if (err)
    return err;
  return secs;
}

struct phase {
  uint64_t batches = 0;
  uint64_t bytes = 0;
  double busy_s = 0;
  [[nodiscard]] double gbps() const { return busy_s > 0 ? bytes / busy_s / 1e9 : 0; }
};

/// Repeats `requests` for `duration` (at least once); after each batch `check` verifies its bytes
/// (outside the timed part) and returns an error when one is wrong.
template <class Prepare, class Check>
caf::expected<phase> measure(transfer_engine& engine, const std::vector<transfer_request>& requests,
                             double duration, const std::string& what, Prepare prepare,
                             Check check) {
  phase out;
  auto end = clock_type::now() + std::chrono::duration_cast<clock_type::duration>(
                                   std::chrono::duration<double>(duration));
  do {
    prepare();
    auto secs = timed_batch(engine, requests, what);
    if (!secs)
      return secs.error();
    if (auto err = check())
      return err;
    ++out.batches;
    out.busy_s += *secs;
    for (const auto& rq : requests)
      out.bytes += rq.length;
  } while (clock_type::now() < end);
  return out;
}

/// Where the bytes of a run go: the initiator's memory, the target's segment and, on loopback,
/// the target's memory itself (so that WRITEs are checked where they land).
struct run_target {
  segment_id segment = 0;
  uint64_t remote_base = 0;
  uint64_t remote_length = 0;
  uint8_t* target_memory = nullptr;
};

caf::error check_bytes(const uint8_t* bytes, uint64_t length, uint64_t seed,
                       const std::string& what) {
  auto bad = check_pattern(bytes, length, seed);
  if (bad == length)
    return {};
  return make_error(errc::checksum_mismatch, what + ": byte " + std::to_string(bad) + " of "
                                               + std::to_string(length) + " is wrong");
}

/// The WRITE, READ and latency checks of one NIC; results are appended to `results`.
caf::error test_nic(transfer_engine& engine, uint8_t* local, const run_target& t,
                    const std::string& nic, const std::vector<uint64_t>& sizes, double duration,
                    json::array& results) {
  // Connects the queue pairs (handshake) before anything is timed.
  std::vector<transfer_request> one{{opcode::read, local, t.segment, t.remote_base, latency_bytes}};
  if (auto warm = timed_batch(engine, one, nic + " warm-up READ"); !warm)
    return warm.error();
  uint64_t last_seed = 0;
  for (auto size : sizes) {
    const auto tasks = static_cast<uint32_t>(
      std::min<uint64_t>({max_tasks, working_set / size, t.remote_length / size}));
    if (tasks == 0)
      return make_error(errc::out_of_range, "the target's segment (" + std::to_string(t.remote_length)
                                              + " bytes) is smaller than " + std::to_string(size));
    const uint64_t span = uint64_t{tasks} * size;
    const uint64_t seed = pattern_seed ^ mix(size);
    const std::string label = nic + " " + std::to_string(size) + " B x " + std::to_string(tasks);
    std::vector<transfer_request> writes, reads;
    for (uint32_t i = 0; i < tasks; ++i) {
      writes.push_back({opcode::write, local + i * size, t.segment, t.remote_base + i * size, size});
      reads.push_back({opcode::read, local + i * size, t.segment, t.remote_base + i * size, size});
    }
    fill_pattern(local, span, seed);
    auto write = measure(
      engine, writes, duration, label + " WRITE",
      [&] { if (t.target_memory) std::memset(t.target_memory, 0, span); },
      [&] {
        return t.target_memory ? check_bytes(t.target_memory, span, seed, label + " WRITE")
                               : caf::error{};
      });
    if (!write)
      return write.error();
    auto read = measure(
      engine, reads, duration, label + " READ", [&] { std::memset(local, 0, span); },
      [&] { return check_bytes(local, span, seed, label + " READ"); });
    if (!read)
      return read.error();
    last_seed = seed;
    std::printf("  %s: WRITE %.3f GB/s (%" PRIu64 " batches), READ %.3f GB/s (%" PRIu64
                " batches), every byte verified\n",
                label.c_str(), write->gbps(), write->batches, read->gbps(), read->batches);
    results.push_back(json::object{{"nic", nic}, {"size", size}, {"tasks_per_batch", tasks},
                                   {"write_gbps", write->gbps()}, {"write_bytes", write->bytes},
                                   {"write_batches", write->batches}, {"read_gbps", read->gbps()},
                                   {"read_bytes", read->bytes}, {"read_batches", read->batches}});
  }
  // Single 4 KiB READs of what the last size left at the start of the segment.
  const std::string label = nic + " " + std::to_string(latency_bytes) + " B READ latency";
  std::vector<double> us;
  auto end = clock_type::now() + std::chrono::duration_cast<clock_type::duration>(
                                   std::chrono::duration<double>(duration));
  while (us.size() < 20 || (clock_type::now() < end && us.size() < 1000000)) {
    std::memset(local, 0, latency_bytes);
    auto secs = timed_batch(engine, one, label);
    if (!secs)
      return secs.error();
    if (auto err = check_bytes(local, latency_bytes, last_seed, label))
      return err;
    us.push_back(*secs * 1e6);
  }
  std::sort(us.begin(), us.end());
  auto pct = [&](double p) { return us[std::min(us.size() - 1, static_cast<size_t>(p * us.size()))]; };
  std::printf("  %s, one task per batch, %zu iterations: p50 %.1f us, p99 %.1f us\n",
              label.c_str(), us.size(), pct(0.5), pct(0.99));
  results.push_back(json::object{{"nic", nic}, {"size", latency_bytes}, {"latency_iterations", us.size()},
                                 {"latency_p50_us", pct(0.5)}, {"latency_p99_us", pct(0.99)}});
  // The bytes must have gone over this NIC, not over TCP (a target without an RDMA endpoint).
  for (const auto& [name, c] : engine.rdma_counters()) {
    if (c.wrs_posted == 0)
      return make_error(errc::not_supported, "no work request was posted on " + name
                                               + ": the transfers did not go over RDMA");
    if (c.wrs_failed > 0 || c.completion_timeouts > 0)
      std::printf("  warning: %s: %" PRIu64 " work requests failed, %" PRIu64
                  " completion timeouts (their slices were retried)\n",
                  name.c_str(), c.wrs_failed, c.completion_timeouts);
  }
  return {};
}

/// Loopback or --peer, one NIC after the other.
caf::error run_checks(const config::settings& settings, const rdma_selftest_options& o,
                      const std::vector<std::string>& nics, const std::vector<uint64_t>& sizes,
                      json::array& results) {
  for (const auto& nic : nics) {
    auto s = settings;
    s.device_names = {nic};
    s.rpc_port = 0;
    s.data_port = 0;
    std::unique_ptr<node> target;
    run_target t;
    if (o.peer.empty()) {
      auto opened = open_node(s, "loopback target on " + nic);
      if (!opened)
        return opened.error();
      target = std::move(*opened);
      t.remote_base = target->base();
      t.remote_length = working_set;
      t.target_memory = target->memory->data;
    }
    auto initiator = open_node(s, "initiator on " + nic);
    if (!initiator)
      return initiator.error();
    auto& engine = *(*initiator)->engine;
    auto name = o.peer.empty() ? target->engine->segment_name() : o.peer;
    auto seg = engine.open_segment(name);
    if (!seg)
      return seg.error();
    t.segment = *seg;
    auto desc = engine.segment_descriptor(*seg);
    if (!desc)
      return desc.error();
    if (desc->endpoint("rdma") == nullptr)
      return make_error(errc::not_supported, "segment " + name + " offers no RDMA endpoint (run "
                                               "it with `kvferry rdma-selftest --serve`)");
    if (desc->regions.empty())
      return make_error(errc::unknown_region, "segment " + name + " has no registered memory");
    if (!o.peer.empty()) {
      t.remote_base = desc->regions.front().base;
      t.remote_length = desc->regions.front().length;
    }
    std::printf("%s -> %s over %s\n", engine.segment_name().c_str(), name.c_str(), nic.c_str());
    if (auto err = test_nic(engine, (*initiator)->memory->data, t, nic, sizes, o.duration,
                            results))
      return err;
  }
  return {};
}

int serve(const config::settings& settings) {
  auto n = open_node(settings, "serve");
  if (!n) {
    std::fprintf(stderr, "kvferry rdma-selftest: %s\n", describe(n.error()).c_str());
    return 1;
  }
  std::printf("serving %" PRIu64 " bytes; on the other host run: kvferry rdma-selftest --peer %s\n",
              working_set, (*n)->engine->segment_name().c_str());
  std::printf("segment name: %s\n", (*n)->engine->segment_name().c_str());
  std::fflush(stdout);
  wait_for_stop_signal();
  for (const auto& [nic, c] : (*n)->engine->rdma_counters())
    std::printf("%s: %" PRIu64 " handshakes accepted, %" PRIu64 " refused\n", nic.c_str(),
                c.handshakes_accepted, c.handshakes_refused);
  return 0;
}

} // namespace

int run_rdma_selftest(config::settings settings, const rdma_selftest_options& o) {
  json::object report{{"mode", o.serve ? "serve" : o.peer.empty() ? "loopback" : "peer"},
                      {"peer", o.peer}, {"duration_s", o.duration}, {"results", json::array{}}};
  // Every end of a run, passed or not, writes --report (a script reads why it failed there).
  auto finish = [&](const std::string& error, int code = 1) {
    report["ok"] = error.empty();
    report["error"] = error;
    if (!o.report.empty() && !o.serve) {
      std::ofstream out(o.report);
      out << json::serialize(report) << "\n";
      if (!out) {
        std::fprintf(stderr, "kvferry rdma-selftest: cannot write --report %s\n",
                     o.report.c_str());
        return 1;
      }
    }
    std::fflush(stdout);
    if (!error.empty())
      std::fprintf(stderr, "kvferry rdma-selftest: %s\n", error.c_str());
    return error.empty() ? 0 : code;
  };
  settings.transport = config::protocol::rdma;
  settings.rdma.provider = o.rdma_provider == "emulated" ? config::rdma_provider_kind::emulated
                                                          : config::rdma_provider_kind::verbs;
  if (!o.device_name.empty())
    settings.device_names = o.device_name == "auto-discovery" ? std::vector<std::string>{}
                                                              : split_commas(o.device_name);
  auto sizes = parse_sizes(o.sizes);
  if (!sizes)
    return finish(context_of(sizes.error()), 2);
  if (o.serve && !o.peer.empty())
    return finish("--serve and --peer are the two ends of a two-host run: give one", 2);
  const bool emulated = settings.rdma.provider == config::rdma_provider_kind::emulated;
  const char* emulated_note = " (EMULATED — no RDMA hardware: kvferry's software NICs; figures "
                              "say nothing about RDMA speed)";

  std::vector<std::string> nics;
  {
    std::shared_ptr<rdma::provider> verbs;
    if (emulated) {
      auto loaded = rdma::load_emulated_provider(settings.rdma.emulated_devices);
      if (!loaded)
        return finish(context_of(loaded.error()));
      verbs = std::move(*loaded);
    } else {
      verbs = rdma::make_verbs_provider();
    }
    std::printf("provider: %s%s\n", verbs->name().c_str(), verbs->emulated() ? emulated_note : "");
    report["provider"] = verbs->name();
    report["emulated"] = verbs->emulated();
    auto present = verbs->devices();
    if (!present)
      return finish("listing RDMA devices: " + context_of(present.error()));
    std::printf("devices found: %zu\n", present->size());
    if (present->empty())
      return finish("no RDMA devices found (ibv_devices lists none): this machine has no RDMA "
                    "NIC, or its driver (kernel module, rdma-core provider) is not loaded; "
                    "`--rdma_provider emulated` runs kvferry's RDMA path on software NICs");
    json::array devices;
    for (const auto& d : rdma::with_sysfs_facts(*present, "/sys"))
      devices.push_back(describe_device(*verbs, d, settings.rdma.port));
    report["devices"] = std::move(devices);
    auto selected = rdma::select_nics(*present, settings.device_names);
    if (!selected)
      return finish(context_of(selected.error()));
    nics = std::move(*selected);
  } // the listing's device contexts are closed before the engines open theirs
  std::string used;
  for (const auto& n : nics)
    used += (used.empty() ? "" : ", ") + n;
  std::printf("using NICs: %s\n", used.c_str());
  report["nics_used"] = json::value_from(nics);
  if (o.serve) {
    settings.device_names = nics;
    return serve(settings);
  }
  std::printf("%s: sizes %s, %.3g s per phase\n",
              o.peer.empty() ? "loopback (two engines in this process)" : ("peer " + o.peer).c_str(),
              o.sizes.c_str(), o.duration);
  std::fflush(stdout);
  auto err = run_checks(settings, o, nics, *sizes, report["results"].as_array());
  if (err)
    return finish("FAILED: " + describe(err));
  std::printf("rdma-selftest: PASSED on %zu NIC(s) with provider %s%s\n", nics.size(),
              emulated ? "emulated" : "libibverbs", emulated ? emulated_note : "");
  return finish("");
}

} // namespace kvferry::tools
