// store_putter: a store client in a process of its own, for the store's fault tests
// (tests/tools/store_faults_test.cpp). It puts <prefix>/0, <prefix>/1, ... one after another, each
// value of <value bytes> bytes holding the key's own pattern (store_values.hpp), and prints
//   "mounted <client id>"        once the client is mounted at the master,
//   "start <key>"                before each put,
//   "done <key>"                 once the put returned success,
//   "failed <key>: <reason>"     when it returned an error,
// each line flushed before the next put begins, so that a test can SIGKILL it mid-put and know
// exactly which puts finished. It stops after <count> puts (0: never) or on any signal.
//
// Usage: store_putter <master host:port> <key prefix> <value bytes> <replicas> <count>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "actors/store/client.hpp"
#include "config/log.hpp"
#include "tests/support/store_values.hpp"

int main(int argc, char** argv) {
  using namespace kvferry;
  if (argc != 6) {
    std::fprintf(stderr, "usage: store_putter <master host:port> <key prefix> <value bytes> "
                         "<replicas> <count (0: forever)>\n");
    return 2;
  }
  const std::string master = argv[1];
  const std::string prefix = argv[2];
  const uint64_t value_bytes = std::strtoull(argv[3], nullptr, 10);
  const auto replicas = static_cast<uint8_t>(std::strtoul(argv[4], nullptr, 10));
  const uint64_t count = std::strtoull(argv[5], nullptr, 10);
  if (value_bytes == 0 || replicas == 0) {
    std::fprintf(stderr, "store_putter: value bytes and replicas must be positive\n");
    return 2;
  }
  log::set_level("warn");
  config::settings s;
  s.local_hostname = "127.0.0.1";
  s.master_server_address = master;
  s.global_segment_size = 0; // a pure client: it holds nothing, so its death loses no replica
  s.local_buffer_size = std::max<uint64_t>(2 * value_bytes, 1 << 20);
  s.store_deadline = std::chrono::seconds(20);
  s.log_level = "warn";
  auto client = store::client::create(s);
  if (!client) {
    std::fprintf(stderr, "store_putter: %s\n", describe(client.error()).c_str());
    return 1;
  }
  std::printf("mounted %" PRIx64 "\n", (*client)->client_id());
  std::fflush(stdout);
  store::put_options o;
  o.replicas = replicas;
  for (uint64_t i = 0; count == 0 || i < count; ++i) {
    const std::string key = prefix + "/" + std::to_string(i);
    const auto value = test::value_for(key, value_bytes);
    std::printf("start %s\n", key.c_str());
    std::fflush(stdout);
    if (auto err = (*client)->put(key, value, o))
      std::printf("failed %s: %s\n", key.c_str(), describe(err).c_str());
    else
      std::printf("done %s\n", key.c_str());
    std::fflush(stdout);
  }
  (*client)->close();
  return 0;
}
