#define BOOST_TEST_MODULE store_client_test
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "actors/store/client.hpp"
#include "actors/store/master.hpp"
#include "tests/support/checks.hpp"
#include "tools/pattern.hpp"
#include "transport/store/wire.hpp"

// The store end to end in one process: a master node on loopback and three clients, each with
// its own runtime (so replicas on other clients' segments move over TCP, as between processes).

using namespace kvferry;
using namespace std::chrono_literals;
using kvferry::test::why;

namespace {

constexpr uint64_t MiB = 1ULL << 20;

struct cluster {
  std::unique_ptr<store::master_node> master;
  std::vector<std::unique_ptr<store::client>> clients;

  explicit cluster(size_t n = 3, uint64_t segment = 160 * MiB, store::master_config policy = {}) {
    store::master_node::options o;
    o.bind_host = "127.0.0.1";
    o.master.policy = policy;
    auto m = store::master_node::start(o);
    BOOST_REQUIRE_MESSAGE(m, why(m));
    master = std::move(*m);
    for (size_t i = 0; i < n; ++i)
      clients.push_back(make_client(segment));
  }

  config::settings settings(uint64_t segment) const {
    config::settings s;
    s.local_hostname = "127.0.0.1";
    s.master_server_address = "127.0.0.1:" + std::to_string(master->port());
    s.global_segment_size = segment;
    s.local_buffer_size = 160 * MiB;
    s.store_deadline = 20s;
    return s;
  }

  std::unique_ptr<store::client> make_client(uint64_t segment) {
    auto c = store::client::create(settings(segment));
    BOOST_REQUIRE_MESSAGE(c, why(c));
    return std::move(*c);
  }
};

std::vector<uint8_t> value_of(size_t n, uint64_t seed) {
  std::vector<uint8_t> v(n);
  tools::fill_pattern(v.data(), n, seed);
  return v;
}

std::string text(const caf::error& e) {
  return e ? describe(e) : "ok";
}

} // namespace

BOOST_AUTO_TEST_CASE(put_get_remove_exists_are_byte_exact_at_every_size_and_replication) {
  cluster c;
  auto& writer = *c.clients[0];
  auto& reader = *c.clients[1];
  uint64_t seed = 1;
  for (uint8_t replicas : {1, 2}) {
    for (size_t size : {size_t{1}, size_t{4096}, size_t{MiB + 3}, size_t{64 * MiB}}) {
      const auto key = "obj/" + std::to_string(size) + "/r" + std::to_string(replicas);
      const auto value = value_of(size, ++seed);
      store::put_options po;
      po.replicas = replicas;
      auto err = writer.put(key, value, po);
      BOOST_REQUIRE_MESSAGE(!err, key << ": " << text(err));
      auto e = reader.exists(key);
      BOOST_REQUIRE(e);
      BOOST_CHECK(*e);
      auto got = reader.get(key);
      BOOST_REQUIRE_MESSAGE(got, key << ": " << why(got));
      BOOST_CHECK_MESSAGE(*got == value, key << ": bytes differ");
      auto again = writer.put(key, value, po);
      BOOST_CHECK(code_of(again) == errc::object_exists);
      BOOST_CHECK_MESSAGE(!writer.remove(key, true), key);
      auto gone = reader.exists(key);
      BOOST_REQUIRE(gone);
      BOOST_CHECK(!*gone);
      auto missing = reader.get(key);
      BOOST_REQUIRE(!missing);
      BOOST_CHECK(code_of(missing.error()) == errc::object_not_found);
      BOOST_CHECK(code_of(writer.remove(key)) == errc::object_not_found);
    }
  }
}

BOOST_AUTO_TEST_CASE(batches_upsert_and_registered_memory) {
  cluster c;
  auto& a = *c.clients[0];
  auto& b = *c.clients[2];
  std::vector<std::string> keys;
  std::vector<std::vector<uint8_t>> values;
  for (int i = 0; i < 64; ++i) {
    keys.push_back("batch/" + std::to_string(i));
    values.push_back(value_of(4096 + i, 100 + i));
  }
  std::vector<std::span<const uint8_t>> spans(values.begin(), values.end());
  for (auto& e : a.batch_put(keys, spans))
    BOOST_REQUIRE_MESSAGE(!e, text(e));
  for (auto& e : b.batch_exists(keys))
    BOOST_CHECK(e && *e);
  auto got = b.batch_get(keys);
  for (size_t i = 0; i < keys.size(); ++i) {
    BOOST_REQUIRE_MESSAGE(got[i], why(got[i]));
    BOOST_CHECK(*got[i] == values[i]);
  }
  // Zero copy: registered memory on both sides.
  std::vector<uint8_t> src(8 * MiB), dst(8 * MiB);
  tools::fill_pattern(src.data(), src.size(), 9);
  BOOST_REQUIRE(!a.register_buffer(src.data(), src.size()));
  BOOST_REQUIRE(!b.register_buffer(dst.data(), dst.size()));
  std::vector<std::string> zkeys{"z/0", "z/1"};
  std::vector<const void*> addrs{src.data(), src.data() + 4 * MiB};
  std::vector<size_t> sizes{4 * MiB, 4 * MiB - 5};
  for (auto& e : a.batch_put_from(zkeys, addrs, sizes))
    BOOST_REQUIRE_MESSAGE(!e, text(e));
  std::vector<void*> targets{dst.data(), dst.data() + 4 * MiB};
  std::vector<size_t> caps{4 * MiB, 4 * MiB};
  auto n = b.batch_get_into(zkeys, targets, caps);
  BOOST_REQUIRE_MESSAGE(n[0] && n[1], why(n[0]) << " / " << why(n[1]));
  BOOST_CHECK_EQUAL(*n[0], 4 * MiB);
  BOOST_CHECK_EQUAL(*n[1], 4 * MiB - 5);
  BOOST_CHECK(std::memcmp(src.data(), dst.data(), 8 * MiB - 5) == 0);
  auto small = b.get_into("z/0", dst.data(), 100);
  BOOST_REQUIRE(!small);
  BOOST_CHECK(code_of(small.error()) == errc::invalid_argument);
  // Upsert replaces; without it the key is taken.
  store::put_options up;
  up.upsert = true;
  auto replacement = value_of(777, 5);
  BOOST_CHECK(code_of(a.put("batch/0", replacement)) == errc::object_exists);
  BOOST_REQUIRE(!a.put("batch/0", replacement, up));
  auto now = b.get("batch/0");
  BOOST_REQUIRE(now);
  BOOST_CHECK(*now == replacement);
  BOOST_REQUIRE(!a.unregister_buffer(src.data()));
  BOOST_REQUIRE(!b.unregister_buffer(dst.data()));
}

BOOST_AUTO_TEST_CASE(checksums_catch_corrupted_replicas) {
  cluster c(1);
  auto& a = *c.clients[0];
  store::put_options po;
  po.checksum = true;
  auto value = value_of(100000, 3);
  BOOST_REQUIRE(!a.put("sum", value, po));
  auto got = a.get("sum");
  BOOST_REQUIRE(got && *got == value);
  // Find the replica through the master and flip one byte of it in the holder's memory.
  auto master = transport::control::client::start("test", {});
  BOOST_REQUIRE(master);
  auto req = transport::store::encode(transport::store::keys_request{a.client_id(), {"sum"}, false});
  BOOST_REQUIRE(req);
  auto raw = (*master)->call("127.0.0.1", c.master->port(),
                             static_cast<uint16_t>(transport::store::method::get_replicas), *req, 5s);
  BOOST_REQUIRE_MESSAGE(raw, why(raw));
  auto loc = transport::store::decode_get_replicas_reply(*raw);
  BOOST_REQUIRE(loc && loc->objects.size() == 1 && loc->objects[0].replicas.size() == 1);
  auto* p = reinterpret_cast<uint8_t*>(loc->objects[0].replicas[0].addr);
  p[500] ^= 0xff;
  auto bad = a.get("sum");
  BOOST_REQUIRE(!bad);
  BOOST_CHECK_MESSAGE(code_of(bad.error()) == errc::checksum_mismatch, why(bad));
  p[500] ^= 0xff;
  BOOST_CHECK(a.get("sum"));
}

BOOST_AUTO_TEST_CASE(bad_input_gets_clear_errors_and_the_master_keeps_serving) {
  cluster c(1, 16 * MiB);
  auto& a = *c.clients[0];
  auto one = value_of(10, 1);
  auto check = [&](const caf::error& e, errc code, const char* what) {
    BOOST_CHECK_MESSAGE(code_of(e) == code, what << ": " << text(e));
    BOOST_CHECK_MESSAGE(!context_of(e).empty(), what << ": no reason given");
  };
  check(a.put("", one), errc::invalid_argument, "empty key");
  check(a.put(std::string(1 << 20, 'k'), one), errc::invalid_argument, "1 MiB key");
  check(a.put("zero", {}), errc::invalid_argument, "zero-byte value");
  auto big = std::vector<uint8_t>(32 * MiB);
  check(a.put("big", big), errc::invalid_argument, "value above every segment");
  check(a.remove("nothing"), errc::object_not_found, "remove of an unknown object");
  auto g = a.get("nothing");
  BOOST_REQUIRE(!g);
  check(g.error(), errc::object_not_found, "get of an unknown object");
  BOOST_REQUIRE(!a.put("twice", one));
  BOOST_REQUIRE(!a.remove("twice"));
  check(a.remove("twice"), errc::object_not_found, "double remove");
  // Malformed messages straight to the master's port: errors, and it keeps serving.
  auto raw = transport::control::client::start("raw", {});
  BOOST_REQUIRE(raw);
  for (uint16_t method : {uint16_t{0}, uint16_t{4}, uint16_t{7}, uint16_t{99}}) {
    auto r = (*raw)->call("127.0.0.1", c.master->port(), method, {1, 2, 3}, 5s);
    BOOST_REQUIRE(!r);
    BOOST_CHECK_MESSAGE(code_of(r.error()) == errc::malformed_frame, why(r));
  }
  BOOST_REQUIRE(!a.put("after", one));
  auto after = a.get("after");
  BOOST_REQUIRE(after && *after == one);
}

namespace {

/// A value that carries its own check: seed and size up front, the seed's pattern after.
std::vector<uint8_t> self_checking_value(uint64_t seed, size_t size) {
  std::vector<uint8_t> v(std::max<size_t>(size, 16));
  std::memcpy(v.data(), &seed, 8);
  uint64_t n = v.size();
  std::memcpy(v.data() + 8, &n, 8);
  tools::fill_pattern(v.data() + 16, v.size() - 16, seed, 16);
  return v;
}

bool intact(const std::vector<uint8_t>& v) {
  if (v.size() < 16)
    return false;
  uint64_t seed, n;
  std::memcpy(&seed, v.data(), 8);
  std::memcpy(&n, v.data() + 8, 8);
  return n == v.size() && tools::check_pattern(v.data() + 16, v.size() - 16, seed, 16) == v.size() - 16;
}

} // namespace

BOOST_AUTO_TEST_CASE(random_operations_from_many_threads_never_return_broken_data) {
  cluster c(3, 32 * MiB);
  constexpr int threads_per_client = 2, ops = 250, keys = 24;
  std::atomic<int> unexpected{0}, broken{0}, got{0};
  std::mutex log_mutex;
  std::vector<std::string> problems;
  auto note = [&](std::string what) {
    std::lock_guard<std::mutex> guard(log_mutex);
    if (problems.size() < 20)
      problems.push_back(std::move(what));
  };
  auto worker = [&](store::client& cl, uint64_t seed) {
    uint64_t state = seed;
    auto next = [&] { return state = tools::mix(state); };
    for (int i = 0; i < ops; ++i) {
      const std::string key = "stress/" + std::to_string(next() % keys);
      const auto op = next() % 6;
      if (op <= 1) {
        store::put_options po;
        po.upsert = op == 1;
        po.replicas = static_cast<uint8_t>(1 + next() % 2);
        po.checksum = next() % 2 == 0;
        auto value = self_checking_value(next(), 16 + next() % (64 << 10));
        auto err = cl.put(key, value, po);
        if (err && code_of(err) != errc::object_exists) {
          ++unexpected;
          note("put " + key + ": " + describe(err));
        }
      } else if (op <= 3) {
        auto v = cl.get(key);
        if (v) {
          ++got;
          if (!intact(*v)) {
            ++broken;
            note("get " + key + ": bytes broken");
          }
        } else if (code_of(v.error()) != errc::object_not_found) {
          ++unexpected;
          note("get " + key + ": " + describe(v.error()));
        }
      } else if (op == 4) {
        auto err = cl.remove(key, next() % 2 == 0);
        if (err && code_of(err) != errc::object_not_found && code_of(err) != errc::object_has_lease) {
          ++unexpected;
          note("remove " + key + ": " + describe(err));
        }
      } else {
        auto e = cl.exists(key);
        if (!e) {
          ++unexpected;
          note("exists " + key + ": " + describe(e.error()));
        }
      }
    }
  };
  std::vector<std::thread> threads;
  for (size_t k = 0; k < c.clients.size(); ++k)
    for (int t = 0; t < threads_per_client; ++t)
      threads.emplace_back(worker, std::ref(*c.clients[k]), 1000 * k + t + 1);
  for (auto& t : threads)
    t.join();
  for (const auto& p : problems)
    BOOST_TEST_MESSAGE(p);
  BOOST_CHECK_EQUAL(unexpected.load(), 0);
  BOOST_CHECK_EQUAL(broken.load(), 0);
  BOOST_CHECK_GT(got.load(), 0);
  // Afterwards every object that exists reads back intact, from every client.
  for (int k = 0; k < keys; ++k) {
    const auto key = "stress/" + std::to_string(k);
    for (auto& cl : c.clients) {
      auto v = cl->get(key);
      if (v)
        BOOST_CHECK_MESSAGE(intact(*v), key);
      else
        BOOST_CHECK_MESSAGE(code_of(v.error()) == errc::object_not_found, key << ": " << why(v));
    }
  }
}
