#define BOOST_TEST_MODULE store_basics_test
#include <boost/test/unit_test.hpp>

// The store's acceptance tests, part 1 (issue: the store across processes), against real
// processes on loopback: a `kvferry master` child, `kvferry store-node` children holding the
// replicas, and store clients embedded in this process (no segment of their own, so every replica
// lands on a node process and every byte crosses TCP).
//   1. put / get / remove / exists, batches and upsert are byte-exact at 1 B, 4 KiB, 1 MiB + 3 and
//      64 MiB, with replication 1 and 2, and the replicas are where the master says (node
//      processes, distinct segments).
//   2. Eviction goes in LRU order and spares leased and pinned objects; a full store answers put
//      with store_full at once.
//   8. Bad input (keys, values, unknown objects, malformed requests sent raw to the master's port)
//      gets errors that name the problem, and the master keeps serving.
//
// Usage: store_basics_test [boost test options] -- /path/to/kvferry

#include "tests/support/store_rig.hpp"
#include "transport/control/wire.hpp"

using namespace kvferry;
using namespace kvferry::test::rig;
using kvferry::test::value_for;

BOOST_TEST_GLOBAL_FIXTURE(quiet_logs);

namespace {

std::string key_of(size_t size, int replicas) {
  return "obj/" + std::to_string(size) + "/r" + std::to_string(replicas);
}

/// Checks that `e` has code `code` and a reason that contains `says`.
void check_error(const caf::error& e, errc code, const std::string& says, const std::string& what) {
  BOOST_CHECK_MESSAGE(code_of(e) == code, what << ": expected " << to_string(code) << ", got "
                                               << text(e));
  BOOST_CHECK_MESSAGE(contains(context_of(e), says),
                      what << ": the reason does not say '" << says << "': " << text(e));
}

} // namespace

BOOST_AUTO_TEST_CASE(put_get_remove_exists_are_byte_exact_on_node_processes) {
  store_cluster cluster({}, 3, 96 * MiB);
  auto writer = cluster.client(60s, 80 * MiB);
  auto reader = cluster.client(60s, 80 * MiB);
  raw_master raw(cluster.master.port());
  const std::vector<size_t> sizes{1, 4096, MiB + 3, 64 * MiB};
  uint64_t expected_used = 0;
  for (int replicas : {1, 2}) {
    for (size_t size : sizes) {
      const auto key = key_of(size, replicas);
      const auto value = value_for(key, size);
      store::put_options po;
      po.replicas = static_cast<uint8_t>(replicas);
      auto err = writer->put(key, value, po);
      BOOST_REQUIRE_MESSAGE(!err, key << ": " << text(err));
      expected_used += allocated(size) * static_cast<uint64_t>(replicas);
      auto e = reader->exists(key);
      BOOST_REQUIRE_MESSAGE(e && *e, key << ": exists: " << why(e));
      require_value(*reader, key, size, "another client");
      require_value(*writer, key, size, "the writer");
      // Where the master put it: on node processes, one replica per segment.
      auto where = raw.locate(reader->client_id(), key);
      BOOST_REQUIRE_MESSAGE(where.result.code == errc::none, where.result.reason);
      BOOST_CHECK_EQUAL(where.size, size);
      BOOST_REQUIRE_EQUAL(where.replicas.size(), static_cast<size_t>(replicas));
      for (const auto& r : where.replicas)
        BOOST_CHECK_MESSAGE(cluster.is_node(r.segment), key << ": a replica on '" << r.segment
                                                            << "', not a node process");
      if (replicas == 2)
        BOOST_CHECK_MESSAGE(where.replicas[0].segment != where.replicas[1].segment,
                            key << ": both replicas on " << where.replicas[0].segment);
      auto again = writer->put(key, value, po);
      check_error(again, errc::object_exists, "exists", key + " put twice");
    }
  }
  // All eight objects at once, each still byte-exact; the master counts their space on the three
  // node segments and nowhere else.
  for (int replicas : {1, 2})
    for (size_t size : sizes)
      require_value(*reader, key_of(size, replicas), size, "all objects stored");
  auto r = report(*reader);
  BOOST_CHECK_EQUAL(r.objects, 8u);
  BOOST_CHECK_EQUAL(r.used, expected_used);
  BOOST_CHECK_EQUAL(r.capacity, 3 * 96 * MiB);
  BOOST_REQUIRE_EQUAL(r.segments.size(), 3u);
  uint64_t in_segments = 0;
  for (const auto& s : r.segments) {
    BOOST_CHECK_MESSAGE(cluster.is_node(s.name), "segment '" << s.name << "' is no node's");
    in_segments += s.size - s.free;
  }
  BOOST_CHECK_EQUAL(in_segments, expected_used);

  // Every object is leased by the gets above: remove refuses without force.
  check_error(writer->remove(key_of(1, 1)), errc::object_has_lease, "leased", "remove of a leased object");
  for (int replicas : {1, 2}) {
    for (size_t size : sizes) {
      const auto key = key_of(size, replicas);
      BOOST_REQUIRE_MESSAGE(!writer->remove(key, true), key);
      auto gone = reader->exists(key);
      BOOST_REQUIRE(gone);
      BOOST_CHECK_MESSAGE(!*gone, key << " still exists after remove");
      auto missing = reader->get(key);
      BOOST_REQUIRE(!missing);
      check_error(missing.error(), errc::object_not_found, "no such object", key + " after remove");
      check_error(writer->remove(key), errc::object_not_found, "no such object", key + " removed twice");
    }
  }
  // The space comes back once the holders fenced it.
  BOOST_CHECK_MESSAGE(poll_until([&] {
                        auto now = report(*reader);
                        return now.used == 0 && now.fencing == 0 && now.objects == 0;
                      }),
                      "the space did not return: " << report(*reader).json);
  reader.reset();
  writer.reset();
  for (auto& node : cluster.nodes)
    node.stop();
  cluster.master.stop();
}

BOOST_AUTO_TEST_CASE(batches_and_upserts_are_byte_exact_at_every_size_and_replication) {
  store_cluster cluster({}, 3, 128 * MiB);
  auto a = cluster.client(60s, 80 * MiB);
  auto b = cluster.client(60s, 80 * MiB);
  const std::vector<size_t> sizes{1, 4096, MiB + 3, 64 * MiB};
  for (int replicas : {1, 2}) {
    BOOST_TEST_CONTEXT("replication " << replicas) {
      std::vector<std::string> keys;
      std::vector<std::vector<uint8_t>> values;
      for (size_t size : sizes) {
        keys.push_back("batch/" + std::to_string(size) + "/r" + std::to_string(replicas));
        values.push_back(value_for(keys.back(), size));
      }
      std::vector<std::span<const uint8_t>> spans(values.begin(), values.end());
      store::put_options o;
      o.replicas = static_cast<uint8_t>(replicas);
      auto put = a->batch_put(keys, spans, o);
      for (size_t i = 0; i < keys.size(); ++i)
        BOOST_REQUIRE_MESSAGE(!put[i], keys[i] << ": " << text(put[i]));
      for (auto& e : b->batch_exists(keys))
        BOOST_CHECK_MESSAGE(e && *e, why(e));
      auto got = b->batch_get(keys);
      for (size_t i = 0; i < keys.size(); ++i) {
        BOOST_REQUIRE_MESSAGE(got[i], keys[i] << ": " << why(got[i]));
        BOOST_CHECK_MESSAGE(*got[i] == values[i], keys[i] << ": bytes differ");
      }
      for (auto& e : a->batch_put(keys, spans, o))
        BOOST_CHECK_MESSAGE(code_of(e) == errc::object_exists, text(e));
      for (auto& e : b->batch_remove(keys, true))
        BOOST_CHECK_MESSAGE(!e, text(e));
      for (auto& e : a->batch_exists(keys))
        BOOST_CHECK_MESSAGE(e && !*e, why(e));
    }
  }
  // One key upserted through every size and replication factor: each get returns the newest
  // value, whole.
  const std::string key = "upserted";
  int version = 0;
  for (int replicas : {1, 2}) {
    for (size_t size : sizes) {
      const auto value = value_for(key + "#" + std::to_string(++version), size);
      store::put_options o;
      o.replicas = static_cast<uint8_t>(replicas);
      o.upsert = true;
      auto err = a->put(key, value, o);
      BOOST_REQUIRE_MESSAGE(!err, "upsert " << version << ": " << text(err));
      auto got = b->get(key);
      BOOST_REQUIRE_MESSAGE(got, "after upsert " << version << ": " << why(got));
      BOOST_CHECK_MESSAGE(*got == value, "after upsert " << version << ": bytes differ");
    }
  }
  check_error(a->put(key, value_for(key, 10)), errc::object_exists, "exists", "put without upsert");
  BOOST_CHECK_EQUAL(report(*a).objects, 1u);
}

BOOST_AUTO_TEST_CASE(batch_entries_fail_alone_and_registered_memory_works_across_processes) {
  store_cluster cluster({}, 3, 16 * MiB);
  auto a = cluster.client(30s, 16 * MiB);
  auto b = cluster.client(30s, 16 * MiB);
  std::vector<std::string> keys;
  std::vector<std::vector<uint8_t>> values;
  for (size_t i = 0; i < 48; ++i) {
    keys.push_back("batch/" + std::to_string(i));
    values.push_back(value_for(keys.back(), 1 + i * 7919 % 100000));
  }
  std::vector<std::span<const uint8_t>> spans(values.begin(), values.end());
  store::put_options r2;
  r2.replicas = 2;
  auto put = a->batch_put(keys, spans, r2);
  for (size_t i = 0; i < keys.size(); ++i)
    BOOST_REQUIRE_MESSAGE(!put[i], keys[i] << ": " << text(put[i]));
  auto with_unknown = keys;
  with_unknown.push_back("batch/unknown");
  auto ex = b->batch_exists(with_unknown);
  for (size_t i = 0; i < keys.size(); ++i)
    BOOST_CHECK_MESSAGE(ex[i] && *ex[i], keys[i] << ": " << why(ex[i]));
  BOOST_CHECK_MESSAGE(ex.back() && !*ex.back(), "an unknown key exists: " << why(ex.back()));
  auto got = b->batch_get(with_unknown);
  for (size_t i = 0; i < keys.size(); ++i) {
    BOOST_REQUIRE_MESSAGE(got[i], keys[i] << ": " << why(got[i]));
    BOOST_CHECK_MESSAGE(*got[i] == values[i], keys[i] << ": bytes differ");
  }
  BOOST_REQUIRE(!got.back());
  BOOST_CHECK(code_of(got.back().error()) == errc::object_not_found);

  // Half of them removed in one call; removed again, each entry says so.
  std::vector<std::string> half(keys.begin(), keys.begin() + 24);
  for (auto& e : b->batch_remove(half, true))
    BOOST_CHECK_MESSAGE(!e, text(e));
  for (auto& e : b->batch_remove(half, true))
    BOOST_CHECK_MESSAGE(code_of(e) == errc::object_not_found, text(e));
  ex = a->batch_exists(keys);
  for (size_t i = 0; i < keys.size(); ++i)
    BOOST_CHECK_MESSAGE(ex[i] && *ex[i] == (i >= 24), keys[i] << ": " << why(ex[i]));
  got = a->batch_get(keys);
  for (size_t i = 0; i < keys.size(); ++i) {
    if (i < 24) {
      BOOST_CHECK_MESSAGE(!got[i] && code_of(got[i].error()) == errc::object_not_found,
                          keys[i] << ": " << why(got[i]));
    } else {
      BOOST_REQUIRE_MESSAGE(got[i], keys[i] << ": " << why(got[i]));
      BOOST_CHECK_MESSAGE(*got[i] == values[i], keys[i] << ": bytes differ");
    }
  }

  // Upsert replaces; without it the key is taken and the old value stays.
  const std::string key = "batch/40";
  const auto replacement = value_for("replacement of batch/40", 300000);
  store::put_options up;
  up.upsert = true;
  check_error(a->put(key, replacement), errc::object_exists, "exists", "put of a taken key");
  require_value(*b, key, values[40].size(), "after a refused put");
  BOOST_REQUIRE(!a->put(key, replacement, up));
  auto now = b->get(key);
  BOOST_REQUIRE_MESSAGE(now, why(now));
  BOOST_CHECK_MESSAGE(*now == replacement, "the upserted value differs");

  // Registered memory on both sides (no staging copy).
  mapped src(4 * MiB), dst(4 * MiB);
  tools::fill_pattern(src.data, src.size, test::value_seed("zero-copy"));
  BOOST_REQUIRE(!a->register_buffer(src.data, src.size));
  BOOST_REQUIRE(!b->register_buffer(dst.data, dst.size));
  BOOST_REQUIRE(!a->put_from("zero-copy", src.data, 4 * MiB - 5, r2));
  auto n = b->get_into("zero-copy", dst.data, dst.size);
  BOOST_REQUIRE_MESSAGE(n, why(n));
  BOOST_CHECK_EQUAL(*n, 4 * MiB - 5);
  BOOST_CHECK(std::memcmp(src.data, dst.data, 4 * MiB - 5) == 0);
  BOOST_REQUIRE(!a->unregister_buffer(src.data));
  BOOST_REQUIRE(!b->unregister_buffer(dst.data));
}

BOOST_AUTO_TEST_CASE(eviction_goes_in_lru_order_and_spares_leased_and_pinned_objects) {
  // One 1 MiB segment, eviction above half of it down to 40 %: 100 KiB objects, five fit
  // (500 KiB), the sixth starts eviction, which must free two (600 -> 400 KiB).
  master_flags flags;
  flags.high_watermark = 0.5;
  flags.evict_ratio = 0.1;
  flags.lease_ms = 120000; // a get's lease outlives the test
  store_cluster cluster(flags, 1, MiB);
  auto c = cluster.client(20s);
  const size_t size = 100 * 1024;
  auto put = [&](const std::string& key, bool pin = false) {
    store::put_options o;
    o.pin = pin;
    auto err = c->put(key, value_for(key, size), o);
    BOOST_REQUIRE_MESSAGE(!err, key << ": " << text(err));
  };
  put("lru/leased");
  require_value(*c, "lru/leased", size, "leased"); // the get leases it; it is the oldest
  put("lru/pinned", true);
  put("lru/a");
  put("lru/b");
  put("lru/c");
  auto before = report(*c);
  BOOST_REQUIRE_EQUAL(before.objects, 5u);
  BOOST_REQUIRE_EQUAL(before.counters["evictions"], 0u);
  put("lru/d");
  // Least recently used first, leased and pinned ones skipped: a and b go.
  auto after = report(*c);
  BOOST_CHECK_EQUAL(after.counters["evictions"], 2u);
  BOOST_CHECK_EQUAL(after.objects, 4u);
  for (const char* gone : {"lru/a", "lru/b"}) {
    auto e = c->exists(gone);
    BOOST_CHECK_MESSAGE(e && !*e, gone << " was not evicted: " << after.json);
  }
  for (const char* kept : {"lru/leased", "lru/pinned", "lru/c", "lru/d"}) {
    auto e = c->exists(kept);
    BOOST_CHECK_MESSAGE(e && *e, kept << " was evicted: " << after.json);
  }
  require_value(*c, "lru/leased", size, "the leased object");
  require_value(*c, "lru/pinned", size, "the pinned object");
  check_error(c->remove("lru/leased"), errc::object_has_lease, "leased", "remove of a leased object");
  // Eviction went down to the target: the evicted space returns once fenced.
  BOOST_CHECK_MESSAGE(poll_until([&] {
                        auto r = report(*c);
                        return r.fencing == 0 && r.used == 4 * allocated(size);
                      }),
                      report(*c).json);
}

BOOST_AUTO_TEST_CASE(a_full_store_answers_store_full_at_once) {
  master_flags flags;
  flags.high_watermark = 1.0; // no eviction before the store is full
  flags.lease_ms = 120000;    // every object leased: nothing may be evicted
  store_cluster cluster(flags, 1, MiB);
  const auto deadline = 20s;
  auto c = cluster.client(deadline);
  const size_t size = 100 * 1024;
  std::vector<std::string> keys;
  for (int i = 0; i < 10; ++i) {
    keys.push_back("full/" + std::to_string(i));
    BOOST_REQUIRE_MESSAGE(!c->put(keys.back(), value_for(keys.back(), size)), keys.back());
    require_value(*c, keys.back(), size, "filling"); // leased from now on
  }
  for (int attempt = 0; attempt < 3; ++attempt) {
    const auto started = steady::now();
    auto err = c->put("full/one-too-many", value_for("full/one-too-many", size));
    const auto took = elapsed_ms(started);
    check_error(err, errc::store_full, "contiguous free bytes", "a put into a full store");
    BOOST_CHECK_MESSAGE(took < 5000, "store_full took " << took << " ms (deadline "
                                                        << deadline.count() << " s)");
  }
  store::put_options r2;
  r2.replicas = 2;
  check_error(c->put("full/r2", value_for("full/r2", 10), r2), errc::store_full,
              "needs as many segments", "replication 2 on one segment");
  // Nothing was evicted to make room.
  for (const auto& key : keys)
    require_value(*c, key, size, "after store_full");
  // Once one object is removed, its space returns (after its fence) and the put succeeds.
  BOOST_REQUIRE(!c->remove(keys[3], true));
  caf::error last;
  BOOST_CHECK_MESSAGE(poll_until([&] {
                        last = c->put("full/one-too-many", value_for("full/one-too-many", size));
                        return !last;
                      }),
                      "the put still fails: " << text(last));
  require_value(*c, "full/one-too-many", size, "in the freed space");
}

BOOST_AUTO_TEST_CASE(bad_input_gets_clear_errors_and_the_master_keeps_serving) {
  store_cluster cluster({}, 1, 16 * MiB);
  auto c = cluster.client(10s, 40 * MiB);
  const auto one = value_for("one", 10);
  check_error(c->put("", one), errc::invalid_argument, "key", "empty key");
  check_error(c->put(std::string(MiB, 'k'), one), errc::invalid_argument, "key", "1 MiB key");
  check_error(c->put("zero", {}), errc::invalid_argument, "0 bytes", "zero-byte value");
  check_error(c->put("big", std::vector<uint8_t>(32 * MiB)), errc::invalid_argument,
              "larger than any mounted segment", "value above every segment");
  store::put_options none, nine;
  none.replicas = 0;
  nine.replicas = 9;
  check_error(c->put("r0", one, none), errc::invalid_argument, "replica", "0 replicas");
  check_error(c->put("r9", one, nine), errc::invalid_argument, "replica", "9 replicas");
  auto g = c->get("nothing");
  BOOST_REQUIRE(!g);
  check_error(g.error(), errc::object_not_found, "no such object", "get of an unknown object");
  auto g0 = c->get("");
  BOOST_REQUIRE(!g0);
  check_error(g0.error(), errc::invalid_argument, "key", "get of an empty key");
  auto e0 = c->exists("");
  BOOST_REQUIRE(!e0);
  check_error(e0.error(), errc::invalid_argument, "key", "exists of an empty key");
  check_error(c->remove("nothing"), errc::object_not_found, "no such object", "remove of an unknown object");
  BOOST_REQUIRE(!c->put("twice", one));
  BOOST_REQUIRE(!c->remove("twice"));
  check_error(c->remove("twice"), errc::object_not_found, "no such object", "double remove");

  // Store requests that do not decode, and unknown methods, through a well-formed control frame.
  raw_master raw(cluster.master.port());
  const std::vector<uint8_t> garbage{0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03};
  for (uint16_t method = 1; method <= sw::method_last; ++method) {
    for (const auto& payload : {garbage, std::vector<uint8_t>{}}) {
      auto r = raw.call(method, payload);
      BOOST_REQUIRE_MESSAGE(!r, "method " << method << " accepted garbage");
      BOOST_CHECK_MESSAGE(code_of(r.error()) == errc::malformed_frame && !context_of(r.error()).empty(),
                          "method " << method << ": " << why(r));
    }
  }
  for (uint16_t method : {uint16_t{0}, uint16_t{11}, uint16_t{65535}}) {
    auto r = raw.call(method, {});
    BOOST_REQUIRE(!r);
    check_error(r.error(), errc::malformed_frame, "unknown method", "method " + std::to_string(method));
  }
  auto stranger = raw.call(sw::method::put_start,
                           sw::put_start_request{0x1234, {sw::put_entry{"k", 10, 1, false, false}}});
  BOOST_REQUIRE(!stranger);
  check_error(stranger.error(), errc::not_mounted, "does not know client", "a client never mounted");

  // Broken frames on raw connections to the master's port.
  namespace ctl = transport::control;
  auto stats_call = [](uint64_t id) {
    ctl::message m;
    m.what = ctl::kind::request;
    m.operation = ctl::op::call;
    m.id = id;
    m.method = static_cast<uint16_t>(sw::method::stats);
    m.payload = *sw::encode(sw::stats_request{1});
    auto bytes = ctl::encode(m, 4 * MiB);
    BOOST_REQUIRE(bytes);
    return *bytes;
  };
  auto answer_to = [](raw_zmtp& peer, const std::string& what) {
    auto frame = peer.next_frame(20s);
    BOOST_REQUIRE_MESSAGE(frame, what << ": no answer");
    auto reply = ctl::decode(*frame, 16 * MiB);
    BOOST_REQUIRE_MESSAGE(reply, what << ": " << why(reply));
    return *reply;
  };
  {
    // Not ZMTP at all: the connection is closed.
    raw_zmtp peer(cluster.master.port());
    peer.send(random_bytes(300, 7));
    BOOST_CHECK_MESSAGE(peer.closed_by_peer(20s), "garbage left the connection open");
  }
  {
    // A control frame whose body is cut short (its length says more than the frame holds), then
    // one with a wrong magic, then an unknown op: a clear refusal by id where the id is readable,
    // and the same connection still serves a good request.
    raw_zmtp peer(cluster.master.port());
    BOOST_REQUIRE(peer.hello());
    auto cut = stats_call(77);
    cut.resize(cut.size() - 3);
    BOOST_REQUIRE(peer.send(raw_zmtp::frame(cut)));
    auto refused = answer_to(peer, "a truncated control body");
    BOOST_CHECK_EQUAL(refused.id, 77u);
    BOOST_CHECK_MESSAGE(refused.status == errc::malformed_frame && !refused.reason.empty(),
                        to_string(refused.status) << ": " << refused.reason);
    auto bad_magic = stats_call(78);
    bad_magic[0] ^= 0xff;
    BOOST_REQUIRE(peer.send(raw_zmtp::frame(bad_magic)));
    auto bad_op = stats_call(79);
    bad_op[7] = 9;
    BOOST_REQUIRE(peer.send(raw_zmtp::frame(bad_op)));
    auto refused_op = answer_to(peer, "an unknown control op");
    BOOST_CHECK_EQUAL(refused_op.id, 79u);
    BOOST_CHECK_MESSAGE(refused_op.status == errc::malformed_frame && !refused_op.reason.empty(),
                        to_string(refused_op.status) << ": " << refused_op.reason);
    BOOST_REQUIRE(peer.send(raw_zmtp::frame(stats_call(80))));
    auto good = answer_to(peer, "a good request after bad ones");
    BOOST_CHECK_EQUAL(good.id, 80u);
    BOOST_CHECK_MESSAGE(good.status == errc::none, good.reason);
    auto stats = sw::decode_stats_reply(good.payload);
    BOOST_REQUIRE_MESSAGE(stats, why(stats));
    BOOST_CHECK(contains(stats->report, "\"objects\""));
  }
  {
    // A frame announced at 1 GiB: refused at its header, the connection closed.
    raw_zmtp peer(cluster.master.port());
    BOOST_REQUIRE(peer.hello());
    std::vector<uint8_t> header(9);
    header.resize(transport::zmtp::encode_frame_header(header.data(), 1ULL << 30, false));
    peer.send(header);
    BOOST_CHECK_MESSAGE(peer.closed_by_peer(20s), "a 1 GiB frame left the connection open");
  }
  {
    // A multi-frame message (the control plane takes one frame per message): closed.
    raw_zmtp peer(cluster.master.port());
    BOOST_REQUIRE(peer.hello());
    peer.send(raw_zmtp::frame(stats_call(81), true));
    BOOST_CHECK_MESSAGE(peer.closed_by_peer(20s), "a two-frame message left the connection open");
  }
  {
    // A frame cut off mid-body by a peer that goes away.
    raw_zmtp peer(cluster.master.port());
    BOOST_REQUIRE(peer.hello());
    auto frame = raw_zmtp::frame(stats_call(82));
    frame.resize(frame.size() / 2);
    BOOST_REQUIRE(peer.send(frame));
  }
  // The master still serves clients, old and new.
  BOOST_REQUIRE_MESSAGE(!c->put("after", value_for("after", 10)), "put after bad input");
  require_value(*c, "after", 10, "after bad input");
  auto late = cluster.client(10s);
  require_value(*late, "after", 10, "a new client after bad input");
  BOOST_REQUIRE(cluster.master.proc().running());
  late.reset();
  c.reset();
  // It counted what it refused.
  auto out = cluster.master.stop();
  std::smatch m;
  BOOST_REQUIRE_MESSAGE(std::regex_search(out, m, std::regex("(\\d+) malformed; connections (\\d+) "
                                                             "accepted, \\d+ evicted, (\\d+) violations")),
                        out);
  BOOST_CHECK_MESSAGE(std::stoull(m[1]) >= 3, out);
  BOOST_CHECK_MESSAGE(std::stoull(m[3]) >= 3, out);
}
