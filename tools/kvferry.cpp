// The kvferry command: `kvferry demo`, `kvferry node`, `kvferry bench`, `kvferry --help`.
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
    "demo", "prefill and decode as two processes over TCP on loopback: move a synthetic KV cache "
            "and verify every byte");
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
  bench_cmd->add_option("--device_name", bench.device_name, "RDMA NICs (rdma only)");
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

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  for (const auto* after : {&demo_config_path, &node_config_path, &bench_config_path}) {
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
  if (*node_cmd || (*bench_cmd && bench.mode == "target"))
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
  return 2;
}
