// The kvferry command: `kvferry demo`, `kvferry --help`.
#include <cstdio>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "config/error.hpp"
#include "config/log.hpp"
#include "config/settings.hpp"
#include "tools/commands.hpp"

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

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"kvferry: moves LLM KV cache between machines, every transfer resolved exactly once"};
  app.require_subcommand(1);
  std::string config_path;
  app.add_option("--config", config_path,
                 "configuration file (else $KVFERRY_CONFIG, else $MOONCAKE_CONFIG_PATH, else "
                 "embedded defaults)");

  kvferry::tools::demo_options demo;
  auto* demo_cmd = app.add_subcommand("demo", "move a synthetic KV cache between two segments and verify every byte");
  demo_cmd->add_option("--layers", demo.layers, "model layers")->check(CLI::Range(1u, 1024u));
  demo_cmd->add_option("--blocks", demo.blocks, "KV blocks per layer")->check(CLI::Range(1u, 65536u));
  demo_cmd->add_option("--block-bytes", demo.block_bytes, "bytes of one layer of one block")
    ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 30));

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  auto settings = load_settings(config_path);
  if (!settings)
    return 2;
  if (*demo_cmd)
    return kvferry::tools::run_demo(*settings, demo);
  return 2;
}
