// The kvferry command: `kvferry demo`, `kvferry node`, `kvferry bench`, `kvferry master`,
// `kvferry metadata`, `kvferry rdma-selftest`, ..., `kvferry --help`.
#include <cstdio>

#include <malloc.h>
#include <sys/resource.h>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "config/error.hpp"
#include "config/log.hpp"
#include "config/settings.hpp"
#include "tools/commands.hpp"
#include "tools/metrics_port.hpp"
#include "tools/signals.hpp"

namespace {

/// Loads the settings named by --config (or the environment), prints why when it cannot.
std::optional<kvferry::config::settings> load_settings(const std::string& path) {
  auto settings = kvferry::config::load(path.empty() ? std::nullopt : std::optional{path});
  if (!settings) {
    std::fprintf(stderr, "kvferry: configuration error: %s\n",
                 kvferry::context_of(settings.error()).c_str());
    return std::nullopt;
  }
  kvferry::log::set_level(settings->log_level);
  for (const auto& w : settings->warnings)
    kvferry::log::warn("{}", w);
  return std::move(*settings);
}

/// Declares --config on `app` (the top level or one subcommand).
void add_config_option(CLI::App& app, std::string& path) {
  app.add_option("--config", path,
                 "configuration file (else $KVFERRY_CONFIG, else $MOONCAKE_CONFIG_PATH, else "
                 "embedded defaults)");
}

} // namespace

int main(int argc, char** argv) {
  // ZeroMQ allocates every received frame with malloc. glibc's default returns frames above 128 KiB
  // to the kernel and maps them again (page faults on every 1 MiB slice); keep them in the heap.
  // See docs/PERFORMANCE.md: an engine embedded elsewhere benefits from the same two settings.
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
  // Connections are bounded by the configuration (max_connections per port), not by the file
  // descriptor limit: raise the soft limit to the hard one so the bounds are what decides.
  if (rlimit nofile{}; ::getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &nofile);
  }
  CLI::App app{"kvferry: moves LLM KV cache between machines, every transfer resolved exactly once"};
  app.require_subcommand(1);
  // --config is accepted before the subcommand (`kvferry --config F node`) and after it
  // (`kvferry node --config F`, as the README writes it). Each subcommand declares its own copy so
  // that its --help lists it; giving it in both places is refused below.
  std::string config_path;
  add_config_option(app, config_path);

  kvferry::tools::demo_options demo;
  auto* demo_cmd = app.add_subcommand(
    "demo", "prefill and decode as two processes on loopback (over the configuration's protocol: "
            "tcp, or rdma): move a synthetic KV cache and verify every byte");
  std::string demo_config_path;
  add_config_option(*demo_cmd, demo_config_path);
  demo_cmd->add_option("--layers", demo.layers, "model layers")->check(CLI::Range(1u, 1024u));
  demo_cmd->add_option("--blocks", demo.blocks, "KV blocks per layer")->check(CLI::Range(1u, 65536u));
  demo_cmd->add_option("--block-bytes", demo.block_bytes, "bytes of one layer of one block")
    ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 30));
  demo_cmd->add_flag("--in-process", demo.in_process,
                     "run both sides in this process (same-process memcpy path)");
  demo_cmd->add_option("--decode-from", demo.decode_from,
                       "internal: run only the decode side against this prefill segment");

  kvferry::tools::node_options node;
  auto* node_cmd = app.add_subcommand(
    "node", "run a long-lived node serving its segment until SIGTERM or SIGINT");
  std::string node_config_path;
  add_config_option(*node_cmd, node_config_path);
  node_cmd->add_option("--segment-bytes", node.segment_bytes,
                       "bytes to register (default: global_segment_size)");
  node_cmd->add_option("--fill-seed", node.fill_seed, "fill the segment with a test pattern");
  kvferry::tools::add_metrics_options(*node_cmd, node.metrics);

  kvferry::tools::bench_options bench;
  auto* bench_cmd = app.add_subcommand(
    "bench", "throughput benchmark, flag-compatible with Mooncake's transfer_engine_bench");
  std::string bench_config_path;
  add_config_option(*bench_cmd, bench_config_path);
  bench_cmd->add_option("--mode", bench.mode, "initiator or target")
    ->check(CLI::IsMember({"initiator", "target"}));
  bench_cmd->add_option("--metadata_server", bench.metadata_server,
                        "P2PHANDSHAKE (default from the configuration)");
  bench_cmd->add_option("--local_server_name", bench.local_server_name,
                        "host[:port]: this node's address and fixed rpc port");
  bench_cmd->add_option("--segment_id", bench.segment_id, "the target's segment name (host:port)");
  bench_cmd->add_option("--protocol", bench.protocol, "tcp or rdma");
  bench_cmd->add_option("--device_name", bench.device_name,
                        "RDMA NICs, comma list (rdma only; default: the configuration's)");
  bench_cmd->add_option("--rdma_provider", bench.rdma_provider,
                        "verbs (libibverbs) or emulated (software NICs, no RDMA hardware); "
                        "--protocol=rdma only (default: the configuration's rdma_provider)");
  bench_cmd->add_option("--operation", bench.operation, "read or write")
    ->check(CLI::IsMember({"read", "write"}));
  bench_cmd->add_option("--buffer_size", bench.buffer_size, "bytes of each side's buffer")
    ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 40));
  bench_cmd->add_option("--batch_size", bench.batch_size, "tasks per batch")
    ->check(CLI::Range(1u, 1u << 20));
  bench_cmd->add_option("--block_size", bench.block_size, "bytes per task")
    ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 32));
  bench_cmd->add_option("--duration", bench.duration, "seconds")->check(CLI::Range(0.001, 1e6));
  bench_cmd->add_option("--threads", bench.threads, "submitting threads")
    ->check(CLI::Range(1u, 1024u));
  bench_cmd->add_option("--report_unit", bench.report_unit, "GB GiB Gb MB MiB Mb KB KiB Kb");
  bench_cmd->add_option("--report_precision", bench.report_precision, "digits after the point")
    ->check(CLI::Range(0u, 12u));
  bench_cmd->add_flag("--verify", bench.verify, "check every byte with a deterministic pattern");
  bench_cmd->add_option("--timeout_ms", bench.timeout_ms, "per-task deadline (default: configuration)");
  bench_cmd->add_flag("--json", bench.json, "also print a machine-readable summary line");
  bench_cmd->add_option("--target_offset", bench.target_offset,
                        "added to every remote offset (never clamped), to probe a segment's edges");

  kvferry::tools::master_options master;
  auto* master_cmd = app.add_subcommand(
    "master", "run the store's master (objects, allocation, leases, eviction) until SIGTERM");
  std::string master_config_path;
  add_config_option(*master_cmd, master_config_path);
  master_cmd->add_option("--host", master.host, "address to listen on (default 0.0.0.0)");
  master_cmd->add_option("--port", master.port,
                         "port (default: the port of master_server_address, else 50051)");
  master_cmd->add_option("--lease-ms", master.lease_ms, "lease a get holds on an object")
    ->check(CLI::Range(uint64_t{1}, uint64_t{3600000}));
  master_cmd->add_option("--ttl-ms", master.ttl_ms, "a client silent this long is declared dead")
    ->check(CLI::Range(uint64_t{10}, uint64_t{3600000}));
  master_cmd->add_option("--watch-ms", master.watch_ms, "heartbeat period clients are given")
    ->check(CLI::Range(uint64_t{5}, uint64_t{3600000}));
  master_cmd->add_option("--put-timeout-ms", master.put_timeout_ms,
                         "an unfinished put is revoked after this")
    ->check(CLI::Range(uint64_t{1}, uint64_t{3600000}));
  master_cmd->add_option("--commit-timeout-ms", master.commit_timeout_ms,
                         "put_end waits this long for the replicas' holders")
    ->check(CLI::Range(uint64_t{1}, uint64_t{3600000}));
  master_cmd->add_option("--high-watermark", master.high_watermark,
                         "evict above this fraction of the capacity in use")
    ->check(CLI::Range(0.01, 1.0));
  master_cmd->add_option("--evict-ratio", master.evict_ratio,
                         "evict down to high-watermark minus this fraction")
    ->check(CLI::Range(0.0, 1.0));
  kvferry::tools::add_metrics_options(*master_cmd, master.metrics);

  kvferry::tools::metadata_options metadata;
  auto* metadata_cmd = app.add_subcommand(
    "metadata", "serve Mooncake's HTTP metadata protocol (GET/PUT/DELETE /metadata?key=K; "
                "&ttl_ms=T on a PUT: the entry expires unless put again) until SIGTERM");
  std::string metadata_config_path;
  add_config_option(*metadata_cmd, metadata_config_path);
  metadata_cmd->add_option("--port", metadata.port, "port (0: any free one, printed at start)")
    ->required();
  metadata_cmd->add_option("--host", metadata.host, "address to listen on (default 0.0.0.0)");
  metadata_cmd->add_option("--max-keys", metadata.max_keys,
                           "keys held at most (more are refused with 507)")
    ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 30));
  metadata_cmd->add_option("--max-value-bytes", metadata.max_value_bytes,
                           "largest value (larger ones are refused with 413)")
    ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 30));
  metadata_cmd->add_option("--max-stored-bytes", metadata.max_stored_bytes,
                           "keys and values held at most (beyond: 507)")
    ->check(CLI::Range(uint64_t{1} << 10, uint64_t{1} << 40));
  metadata_cmd->add_option("--max-connections", metadata.max_connections,
                           "connections at once (beyond: the one quiet the longest is closed)")
    ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 16));
  metadata_cmd->add_option("--timeout-ms", metadata.timeout_ms,
                           "a request must arrive, and a response be taken, within this")
    ->check(CLI::Range(uint64_t{10}, uint64_t{3600000}));
  kvferry::tools::add_metrics_options(*metadata_cmd, metadata.metrics);

  auto* store_node_cmd = app.add_subcommand(
    "store-node", "contribute global_segment_size bytes to the store at master_server_address "
                  "and hold replicas until SIGTERM");
  std::string store_node_config_path;
  add_config_option(*store_node_cmd, store_node_config_path);
  kvferry::tools::metrics_options store_node_metrics;
  kvferry::tools::add_metrics_options(*store_node_cmd, store_node_metrics);

  kvferry::tools::store_bench_options store_bench;
  auto* store_bench_cmd = app.add_subcommand(
    "store-bench", "store put/get throughput and per-call latency against a running master and "
                   "store nodes (zero copy: put_from/get_into of registered memory)");
  std::string store_bench_config_path;
  add_config_option(*store_bench_cmd, store_bench_config_path);
  store_bench_cmd->add_option("--operation", store_bench.operation, "put, get or both")
    ->check(CLI::IsMember({"put", "get", "both"}));
  store_bench_cmd->add_option("--value_size", store_bench.value_size,
                              "value size, or a comma-separated list (4KiB,1MiB)");
  store_bench_cmd->add_option("--batch_size", store_bench.batch_size, "objects per call")
    ->check(CLI::Range(1u, 4096u));
  store_bench_cmd->add_option("--threads", store_bench.threads, "calling threads (one client)")
    ->check(CLI::Range(1u, 1024u));
  store_bench_cmd->add_option("--duration", store_bench.duration,
                              "seconds of each phase (per operation and value size)")
    ->check(CLI::Range(0.001, 1e6));
  store_bench_cmd->add_option("--replica_num", store_bench.replica_num, "replicas per put")
    ->check(CLI::Range(1u, 8u));
  store_bench_cmd->add_option("--get_keys", store_bench.get_keys,
                              "objects per thread the get phase reads in turn (0: a third of "
                              "the capacity, at most 4096)");
  store_bench_cmd->add_option("--segment_size", store_bench.segment_size,
                              "memory this process contributes to the store (default 0)");
  store_bench_cmd->add_flag("--staging", store_bench.staging,
                            "copy values through the staging buffer (put/get) instead");
  store_bench_cmd->add_flag("--verify", store_bench.verify,
                            "a pattern per key in every value, checked on every get");
  store_bench_cmd->add_flag("--json", store_bench.json, "also print a JSON line per phase");
  store_bench_cmd->add_option("--timeout_ms", store_bench.timeout_ms,
                              "deadline of each call (default: store_deadline_ms)");
  store_bench_cmd->add_option("--key_prefix", store_bench.key_prefix,
                              "prefix of every key (default: a random run id)");

  kvferry::tools::trace_replay_options replay;
  auto* replay_cmd = app.add_subcommand(
    "trace-replay", "replay a request trace (jsonl, hash_ids) through the store as prefill "
                    "would: get the longest cached prefix, put the rest; hit rate vs an "
                    "infinite cache");
  std::string replay_config_path;
  add_config_option(*replay_cmd, replay_config_path);
  replay_cmd->add_option("file", replay.file, "the trace (../shared/data/*.jsonl)")->required();
  replay_cmd->add_option("--block_size", replay.block_size,
                         "bytes of one trace block (512 tokens of KV cache)");
  replay_cmd->add_option("--requests", replay.requests, "replay the first N requests (0: all)");
  replay_cmd->add_option("--replica_num", replay.replica_num, "replicas per put")
    ->check(CLI::Range(1u, 8u));
  replay_cmd->add_option("--segment_size", replay.segment_size,
                         "memory this process contributes to the store (default 0)");
  replay_cmd->add_option("--progress", replay.progress, "seconds between progress lines (0: none)")
    ->check(CLI::Range(0.0, 1e6));
  replay_cmd->add_flag("--verify", replay.verify, "a pattern per block, checked on every get");
  replay_cmd->add_flag("--json", replay.json, "also print a JSON summary line");
  replay_cmd->add_option("--timeout_ms", replay.timeout_ms,
                         "deadline of each call (default: store_deadline_ms)");
  replay_cmd->add_option("--key_prefix", replay.key_prefix,
                         "prefix of every key (default: a random run id)");

  kvferry::tools::rdma_selftest_options selftest;
  auto* selftest_cmd = app.add_subcommand(
    "rdma-selftest", "check this machine's RDMA NICs with kvferry's RDMA path: devices, then "
                     "WRITE/READ of a verified pattern per size (GB/s) and 4 KiB READ latency, "
                     "on loopback or against a --serve instance on another host");
  std::string selftest_config_path;
  add_config_option(*selftest_cmd, selftest_config_path);
  selftest_cmd->add_option("--device_name", selftest.device_name,
                           "RDMA NICs, comma list (default: every device found)");
  selftest_cmd->add_option("--rdma_provider", selftest.rdma_provider,
                           "verbs (libibverbs) or emulated (software NICs, no RDMA hardware)")
    ->check(CLI::IsMember({"verbs", "emulated"}));
  selftest_cmd->add_option("--sizes", selftest.sizes, "transfer sizes, comma list (4096,64KiB)");
  selftest_cmd->add_option("--duration", selftest.duration,
                           "seconds of each measured phase (WRITE and READ per size, latency)")
    ->check(CLI::Range(0.001, 1e6));
  selftest_cmd->add_flag("--serve", selftest.serve,
                         "host a segment for `rdma-selftest --peer` on another host (its "
                         "address: local_hostname) until SIGTERM; prints 'segment name: NAME'");
  selftest_cmd->add_option("--peer", selftest.peer,
                           "segment name of a --serve instance: test against it (two hosts)");
  selftest_cmd->add_option("--report", selftest.report, "also write the figures as JSON here");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  for (const auto* after :
       {&demo_config_path, &node_config_path, &bench_config_path, &master_config_path,
        &store_node_config_path, &store_bench_config_path, &replay_config_path,
        &selftest_config_path, &metadata_config_path}) {
    if (after->empty())
      continue;
    if (!config_path.empty()) {
      std::fprintf(stderr, "kvferry: --config given twice ('%s' before the subcommand, '%s' after "
                           "it); give it once\n", config_path.c_str(), after->c_str());
      return 2;
    }
    config_path = *after;
  }
  // Long-running commands stop on SIGINT/SIGTERM; block them before any thread starts so the
  // main thread alone receives them.
  if (*node_cmd || *master_cmd || *store_node_cmd || *metadata_cmd
      || (*bench_cmd && bench.mode == "target")
      || (*selftest_cmd && selftest.serve))
    kvferry::tools::block_stop_signals();
  auto settings = load_settings(config_path);
  if (!settings)
    return 2;
  if (*demo_cmd) {
    demo.config_path = config_path;
    return kvferry::tools::run_demo(*settings, demo);
  }
  if (*node_cmd)
    return kvferry::tools::run_node(*settings, node);
  if (*bench_cmd)
    return kvferry::tools::run_bench(*settings, bench);
  if (*master_cmd)
    return kvferry::tools::run_master(*settings, master);
  if (*store_node_cmd)
    return kvferry::tools::run_store_node(*settings, store_node_metrics);
  if (*metadata_cmd)
    return kvferry::tools::run_metadata(metadata);
  if (*store_bench_cmd)
    return kvferry::tools::run_store_bench(*settings, store_bench);
  if (*replay_cmd)
    return kvferry::tools::run_trace_replay(*settings, replay);
  if (*selftest_cmd)
    return kvferry::tools::run_rdma_selftest(*settings, selftest);
  return 2;
}
