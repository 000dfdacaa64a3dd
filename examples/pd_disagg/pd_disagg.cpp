// Prefill/decode disaggregation through the kvferry store, as a serving cluster runs it: a
// producer (kv_role kv_producer, the prefill instance) puts the KV blocks of each request under
// keys chained by prefix hash; a consumer (kv_role kv_consumer, the decode instance) finds the
// longest cached prefix of each request, gets those blocks and verifies every byte.
//
// Both read one config.json named by MOONCAKE_CONFIG_PATH (master_server_address names the
// store's master), as in Mooncake's vLLM setup. run.sh starts a master, a producer and a consumer
// on loopback. Usage:
//   pd_disagg --kv-role kv_producer|kv_consumer [--trace FILE.jsonl] [--requests N]
//             [--block-bytes B] [--run-id ID] [--wait-s S]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <boost/json.hpp>

#include "actors/store/client.hpp"
#include "config/settings.hpp"
#include "tools/pattern.hpp"

using namespace kvferry;

namespace {

struct options {
  std::string role;
  std::string trace;
  size_t requests = 64;
  uint64_t block_bytes = 128 << 10;
  std::string run_id = "run";
  int wait_s = 60;
};

/// The hash_ids of each request: from a trace (../shared/data format), or a synthetic set in
/// which requests share a system prompt and conversations grow turn by turn.
std::vector<std::vector<uint64_t>> load_requests(const options& o) {
  std::vector<std::vector<uint64_t>> out;
  if (!o.trace.empty()) {
    std::ifstream in(o.trace);
    std::string line;
    while (out.size() < o.requests && std::getline(in, line)) {
      boost::system::error_code ec;
      auto v = boost::json::parse(line, ec);
      if (ec || !v.is_object() || !v.as_object().contains("hash_ids"))
        continue;
      std::vector<uint64_t> ids;
      for (const auto& id : v.as_object().at("hash_ids").as_array())
        ids.push_back(static_cast<uint64_t>(id.to_number<int64_t>()));
      out.push_back(std::move(ids));
    }
    return out;
  }
  for (size_t r = 0; r < o.requests; ++r) {
    std::vector<uint64_t> ids{0, 1, 2, 3}; // the shared system prompt
    const uint64_t conversation = r % 8, turn = r / 8;
    for (uint64_t t = 0; t <= turn; ++t)
      ids.push_back(1000 + conversation * 100 + t);
    out.push_back(std::move(ids));
  }
  return out;
}

/// Keys chained by prefix: block i's key depends on every block before it (as vLLM's prefix
/// caching hashes them), so equal prefixes share keys and nothing else does.
std::vector<uint64_t> chain(const std::vector<uint64_t>& ids, const std::string& run_id) {
  uint64_t h = tools::mix(std::hash<std::string>{}(run_id));
  std::vector<uint64_t> out;
  for (auto id : ids) {
    h = tools::mix(h ^ tools::mix(id + 1));
    out.push_back(h);
  }
  return out;
}

std::string key_of(uint64_t h, const std::string& run_id) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return "pd_disagg/" + run_id + "/kv/" + buf;
}

int produce(store::client& c, const options& o) {
  auto requests = load_requests(o);
  size_t put = 0, reused = 0;
  uint64_t bytes = 0;
  std::vector<uint8_t> block(o.block_bytes);
  for (const auto& ids : requests) {
    auto hashes = chain(ids, o.run_id);
    std::vector<std::string> keys;
    for (auto h : hashes)
      keys.push_back(key_of(h, o.run_id));
    // The longest prefix already in the store is not computed (nor put) again.
    auto present = c.batch_exists(keys);
    size_t cached = 0;
    while (cached < keys.size() && present[cached] && *present[cached])
      ++cached;
    reused += cached;
    for (size_t i = cached; i < keys.size(); ++i) {
      tools::fill_pattern(block.data(), block.size(), hashes[i]);
      auto err = c.put(keys[i], block);
      if (err && code_of(err) != errc::object_exists) {
        std::fprintf(stderr, "producer: put %s: %s\n", keys[i].c_str(), describe(err).c_str());
        return 1;
      }
      ++put;
      bytes += block.size();
    }
  }
  std::string summary = std::to_string(requests.size());
  if (auto err = c.put("pd_disagg/" + o.run_id + "/done",
                       {reinterpret_cast<const uint8_t*>(summary.data()), summary.size()})) {
    std::fprintf(stderr, "producer: %s\n", describe(err).c_str());
    return 1;
  }
  std::printf("producer: %zu requests, %zu blocks put (%llu bytes), %zu prefix blocks reused\n",
              requests.size(), put, static_cast<unsigned long long>(bytes), reused);
  std::fflush(stdout);
  // The blocks live in the memory this instance contributes: stay until the consumer is done
  // (a prefill instance serves for as long as the cluster runs).
  const std::string consumed = "pd_disagg/" + o.run_id + "/consumed";
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(o.wait_s);
  for (;;) {
    auto e = c.exists(consumed);
    if (e && *e) {
      // Tell the consumer it may go (its own segment may hold some of these markers).
      (void) c.remove("pd_disagg/" + o.run_id + "/done", true);
      return 0;
    }
    if (std::chrono::steady_clock::now() > until) {
      std::fprintf(stderr, "producer: the consumer did not finish within %d s\n", o.wait_s);
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

int consume(store::client& c, const options& o) {
  // Wait for the producer, polling as vLLM's consumer polls is_exist.
  const std::string done = "pd_disagg/" + o.run_id + "/done";
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(o.wait_s);
  for (;;) {
    auto e = c.exists(done);
    if (e && *e)
      break;
    if (std::chrono::steady_clock::now() > until) {
      std::fprintf(stderr, "consumer: the producer did not finish within %d s\n", o.wait_s);
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  auto requests = load_requests(o);
  size_t blocks = 0, missing = 0, wrong = 0;
  uint64_t bytes = 0;
  for (const auto& ids : requests) {
    auto hashes = chain(ids, o.run_id);
    std::vector<std::string> keys;
    for (auto h : hashes)
      keys.push_back(key_of(h, o.run_id));
    auto got = c.batch_get(keys);
    for (size_t i = 0; i < keys.size(); ++i) {
      ++blocks;
      if (!got[i]) {
        ++missing;
        std::fprintf(stderr, "consumer: get %s: %s\n", keys[i].c_str(), describe(got[i].error()).c_str());
        continue;
      }
      if (got[i]->size() != o.block_bytes
          || tools::check_pattern(got[i]->data(), got[i]->size(), hashes[i]) != got[i]->size()) {
        ++wrong;
        std::fprintf(stderr, "consumer: %s: bytes differ from what the producer put\n",
                     keys[i].c_str());
        continue;
      }
      bytes += got[i]->size();
    }
  }
  std::printf("consumer: %zu requests, %zu blocks, %llu bytes verified, %zu missing, %zu wrong\n",
              requests.size(), blocks, static_cast<unsigned long long>(bytes), missing, wrong);
  const std::string marker = "consumed";
  if (auto err = c.put("pd_disagg/" + o.run_id + "/consumed",
                       {reinterpret_cast<const uint8_t*>(marker.data()), marker.size()}))
    std::fprintf(stderr, "consumer: %s\n", describe(err).c_str());
  // Stay until the producer saw the marker (it removes "done" then).
  auto until_seen = std::chrono::steady_clock::now() + std::chrono::seconds(o.wait_s);
  for (;;) {
    auto e = c.exists(done);
    if (!e || !*e || std::chrono::steady_clock::now() > until_seen)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (missing == 0 && wrong == 0 && blocks > 0) {
    std::printf("consumer: every byte verified\n");
    return 0;
  }
  return 1;
}

} // namespace

int main(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "pd_disagg: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--kv-role")
      o.role = value();
    else if (a == "--trace")
      o.trace = value();
    else if (a == "--requests")
      o.requests = std::stoul(value());
    else if (a == "--block-bytes")
      o.block_bytes = std::stoull(value());
    else if (a == "--run-id")
      o.run_id = value();
    else if (a == "--wait-s")
      o.wait_s = std::stoi(value());
    else {
      std::fprintf(stderr, "pd_disagg: unknown argument '%s'\n", a.c_str());
      return 2;
    }
  }
  if (o.role != "kv_producer" && o.role != "kv_consumer") {
    std::fprintf(stderr, "pd_disagg: --kv-role must be kv_producer or kv_consumer\n");
    return 2;
  }
  if (o.block_bytes == 0) {
    std::fprintf(stderr, "pd_disagg: --block-bytes must be above 0\n");
    return 2;
  }
  // MOONCAKE_CONFIG_PATH (or KVFERRY_CONFIG) names the config.json, as in the seed's setup.
  auto settings = config::load(std::nullopt);
  if (!settings) {
    std::fprintf(stderr, "pd_disagg: %s\n", describe(settings.error()).c_str());
    return 2;
  }
  auto c = store::client::create(*settings);
  if (!c) {
    std::fprintf(stderr, "pd_disagg (%s): %s\n", o.role.c_str(), describe(c.error()).c_str());
    return 1;
  }
  int rc = o.role == "kv_producer" ? produce(**c, o) : consume(**c, o);
  (*c)->close();
  return rc;
}
