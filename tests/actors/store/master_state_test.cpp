#define BOOST_TEST_MODULE master_state_test
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "actors/store/master_state.hpp"
#include "tests/support/checks.hpp"

// The store master's policies, driven directly with a fake clock: allocation, the put life cycle
// with its commits and fences, leases, pins, eviction, client liveness, and the rebuild of a
// restarted master from what the holders report.

using namespace kvferry;
using namespace kvferry::store;
using namespace std::chrono_literals;

namespace {

constexpr uint64_t base_a = 0x100000;
constexpr uint64_t base_b = 0x900000;
constexpr uint64_t first_token = 1000;

struct fixture {
  master_config config;
  std::unique_ptr<master_state> m;
  time_point now = time_point{} + 1h;

  explicit fixture(master_config c = {}) : config(c) {
    config.alignment = 64;
    m = std::make_unique<master_state>(config, 7, first_token);
  }

  void mount(uint64_t client, const std::string& name, uint64_t base, uint64_t size,
             std::vector<msg::held_object> held = {}, uint64_t floor = 0) {
    msg::mount_request r;
    r.client_id = client;
    r.client_name = name;
    r.host = "host-" + name;
    r.fence_floor = floor;
    r.segments.push_back({name, base, size, std::move(held)});
    auto reply = m->mount(r, now);
    BOOST_REQUIRE_MESSAGE(reply, kvferry::test::why(reply));
  }

  msg::put_slot start(uint64_t client, const std::string& key, uint64_t size, uint8_t replicas = 1,
                      bool pin = false, bool upsert = false) {
    auto r = m->put_start({client, {{key, size, replicas, pin, upsert}}}, now);
    BOOST_REQUIRE(r);
    BOOST_REQUIRE_EQUAL(r->slots.size(), 1u);
    return r->slots[0];
  }

  end_outcome end(uint64_t client, const std::string& key, uint64_t put_id) {
    auto r = m->put_end({client, {{key, put_id, false, 0}}}, now);
    BOOST_REQUIRE(r);
    return (*r)[0];
  }

  /// Every holder carries out its work and acknowledges it; returns what was done.
  std::vector<msg::instruction> serve(std::vector<uint64_t> clients) {
    std::vector<msg::instruction> all;
    for (auto c : clients) {
      auto w = m->watch({c, {}}, now);
      BOOST_REQUIRE(w);
      std::vector<uint64_t> ids;
      for (auto& i : w->work) {
        ids.push_back(i.id);
        all.push_back(i);
      }
      auto ack = m->watch({c, ids}, now);
      BOOST_REQUIRE(ack);
    }
    return all;
  }

  /// put_start, put_end and the holders' commits: the object is visible.
  msg::put_slot put(uint64_t client, const std::string& key, uint64_t size,
                    std::vector<uint64_t> holders, uint8_t replicas = 1, bool pin = false) {
    auto slot = start(client, key, size, replicas, pin);
    BOOST_REQUIRE_MESSAGE(slot.result.code == errc::none, slot.result.reason);
    auto e = end(client, key, slot.put_id);
    BOOST_REQUIRE(e.pending);
    serve(holders);
    auto done = m->take_finished_ends();
    BOOST_REQUIRE_EQUAL(done.size(), 1u);
    BOOST_REQUIRE_MESSAGE(done[0].result.code == errc::none, done[0].result.reason);
    return slot;
  }

  errc exists(uint64_t client, const std::string& key) {
    auto r = m->exists({client, {key}, false}, now);
    BOOST_REQUIRE(r);
    return r->results[0].code;
  }

  msg::object_location get(uint64_t client, const std::string& key) {
    auto r = m->get_replicas({client, {key}, false}, now);
    BOOST_REQUIRE(r);
    return r->objects[0];
  }

  errc remove(uint64_t client, const std::string& key, bool force = false) {
    auto r = m->remove({client, {key}, force}, now);
    BOOST_REQUIRE(r);
    return r->results[0].code;
  }
};

size_t count_kind(const std::vector<msg::instruction>& v, msg::instruction_kind k) {
  return static_cast<size_t>(
    std::count_if(v.begin(), v.end(), [&](const msg::instruction& i) { return i.kind == k; }));
}

} // namespace

BOOST_AUTO_TEST_CASE(allocator_best_fit_and_coalescing) {
  segment_allocator a{1000};
  auto x = a.allocate(100), y = a.allocate(200), z = a.allocate(300);
  BOOST_REQUIRE(x && y && z);
  BOOST_CHECK_EQUAL(a.free_bytes(), 400u);
  a.release(*y, 200);
  BOOST_CHECK_EQUAL(a.free_blocks(), 2u);
  auto small = a.allocate(150); // best fit: the 200-byte hole, not the 400-byte tail
  BOOST_REQUIRE(small);
  BOOST_CHECK_EQUAL(*small, *y);
  a.release(*small, 150);
  a.release(*x, 100);
  a.release(*z, 300);
  BOOST_CHECK_EQUAL(a.free_blocks(), 1u);
  BOOST_CHECK_EQUAL(a.largest_free(), 1000u);
  BOOST_CHECK(!a.allocate(1001));
  BOOST_CHECK(!a.allocate(0));
  BOOST_CHECK(a.allocate_at(500, 100));
  BOOST_CHECK(!a.allocate_at(550, 10));
  BOOST_CHECK(!a.allocate_at(950, 100));
  BOOST_CHECK_EQUAL(a.free_bytes(), 900u);
}

BOOST_AUTO_TEST_CASE(put_becomes_visible_only_after_its_holders_committed) {
  fixture f;
  f.mount(1, "a", base_a, 1 << 20);
  auto slot = f.start(1, "k", 1000);
  BOOST_REQUIRE(slot.result.code == errc::none);
  BOOST_REQUIRE_EQUAL(slot.replicas.size(), 1u);
  BOOST_CHECK_EQUAL(slot.replicas[0].segment, "a");
  BOOST_CHECK_EQUAL(slot.replicas[0].host, "host-a");
  BOOST_CHECK(slot.replicas[0].addr >= base_a && slot.replicas[0].addr + 1000 <= base_a + (1 << 20));
  BOOST_CHECK(slot.replicas[0].token >= first_token);
  BOOST_CHECK(f.exists(1, "k") == errc::object_not_found); // writing: invisible
  auto e = f.end(1, "k", slot.put_id);
  BOOST_CHECK(e.pending);
  BOOST_CHECK(f.exists(1, "k") == errc::object_not_found); // committing: still invisible
  BOOST_CHECK(f.m->take_finished_ends().empty());
  auto w = f.m->watch({1, {}}, f.now);
  BOOST_REQUIRE(w);
  BOOST_REQUIRE_EQUAL(w->work.size(), 1u);
  const auto& commit = w->work[0];
  BOOST_CHECK(commit.kind == msg::instruction_kind::commit);
  BOOST_CHECK_EQUAL(commit.key, "k");
  BOOST_CHECK_EQUAL(commit.addr, slot.replicas[0].addr);
  BOOST_CHECK_EQUAL(commit.size, 1000u);
  BOOST_CHECK_EQUAL(commit.token, slot.replicas[0].token);
  // Unacknowledged work is handed out again (the reply may have been lost).
  auto again = f.m->watch({1, {}}, f.now);
  BOOST_REQUIRE(again && again->work.size() == 1u);
  BOOST_CHECK_EQUAL(again->work[0].id, commit.id);
  BOOST_REQUIRE(f.m->watch({1, {commit.id}}, f.now));
  auto done = f.m->take_finished_ends();
  BOOST_REQUIRE_EQUAL(done.size(), 1u);
  BOOST_CHECK_EQUAL(done[0].put_id, slot.put_id);
  BOOST_CHECK(done[0].result.code == errc::none);
  BOOST_CHECK(f.exists(1, "k") == errc::none);
  auto loc = f.get(1, "k");
  BOOST_REQUIRE(loc.result.code == errc::none);
  BOOST_CHECK_EQUAL(loc.size, 1000u);
  BOOST_REQUIRE_EQUAL(loc.replicas.size(), 1u);
  BOOST_CHECK(loc.replicas[0] == slot.replicas[0]);
  BOOST_CHECK_EQUAL(loc.lease_ms, 10000u);
  // A duplicate acknowledgement is counted and ignored.
  BOOST_REQUIRE(f.m->watch({1, {commit.id}}, f.now));
  BOOST_CHECK_EQUAL(f.m->counters().late_acks_ignored, 1u);
}

BOOST_AUTO_TEST_CASE(replicas_go_to_distinct_segments) {
  fixture f;
  f.mount(1, "a", base_a, 1 << 20);
  f.mount(2, "b", base_b, 1 << 20);
  auto slot = f.put(1, "k", 4096, {1, 2}, 2);
  BOOST_REQUIRE_EQUAL(slot.replicas.size(), 2u);
  BOOST_CHECK(slot.replicas[0].segment != slot.replicas[1].segment);
  BOOST_CHECK_EQUAL(slot.replicas[0].token, slot.replicas[1].token);
  BOOST_CHECK_EQUAL(f.get(1, "k").replicas.size(), 2u);
  auto three = f.start(1, "k3", 10, 3);
  BOOST_CHECK(three.result.code == errc::store_full);
  BOOST_CHECK_MESSAGE(three.result.reason.find("2 are mounted") != std::string::npos,
                      three.result.reason);
}

BOOST_AUTO_TEST_CASE(tokens_only_grow_and_start_above_every_floor) {
  fixture f;
  f.mount(1, "a", base_a, 1 << 20, {}, 50000);
  uint64_t last = 0;
  for (int i = 0; i < 20; ++i) {
    auto s = f.start(1, "k" + std::to_string(i), 100);
    BOOST_REQUIRE(s.result.code == errc::none);
    BOOST_CHECK(s.replicas[0].token > 50000);
    BOOST_CHECK(s.replicas[0].token > last);
    last = s.replicas[0].token;
  }
}

BOOST_AUTO_TEST_CASE(first_end_wins_and_the_loser_gets_its_space_back_after_a_fence) {
  fixture f;
  f.mount(1, "a", base_a, 1 << 20);
  auto p1 = f.start(1, "k", 1000);
  auto p2 = f.start(1, "k", 1000);
  BOOST_REQUIRE(p1.result.code == errc::none && p2.result.code == errc::none);
  BOOST_CHECK(p1.replicas[0].addr != p2.replicas[0].addr);
  BOOST_CHECK(f.end(1, "k", p2.put_id).pending);
  auto lost = f.end(1, "k", p1.put_id);
  BOOST_CHECK(!lost.pending);
  BOOST_CHECK(lost.result.code == errc::object_exists);
  auto work = f.serve({1});
  BOOST_CHECK_EQUAL(count_kind(work, msg::instruction_kind::commit), 1u);
  BOOST_REQUIRE_EQUAL(count_kind(work, msg::instruction_kind::fence), 1u);
  auto fence = *std::find_if(work.begin(), work.end(), [](const msg::instruction& i) {
    return i.kind == msg::instruction_kind::fence;
  });
  BOOST_CHECK_EQUAL(fence.addr, p1.replicas[0].addr);
  BOOST_CHECK_EQUAL(fence.token, p1.replicas[0].token);
  auto done = f.m->take_finished_ends();
  BOOST_REQUIRE_EQUAL(done.size(), 1u);
  BOOST_CHECK_EQUAL(done[0].put_id, p2.put_id);
  BOOST_CHECK_EQUAL(f.get(1, "k").replicas[0].addr, p2.replicas[0].addr);
  // Without upsert, a put of an existing key is refused at once.
  BOOST_CHECK(f.start(1, "k", 10).result.code == errc::object_exists);
}

BOOST_AUTO_TEST_CASE(freed_space_is_reused_only_after_its_fence_is_acknowledged) {
  fixture f;
  f.mount(1, "a", base_a, 4096);
  auto p = f.start(1, "x", 4096);
  BOOST_REQUIRE(p.result.code == errc::none);
  auto r = f.m->put_revoke({1, {{"x", p.put_id, false, 0}}}, f.now);
  BOOST_REQUIRE(r && r->results[0].code == errc::none);
  // The space is fencing: a new put does not get it yet.
  BOOST_CHECK(f.start(1, "y", 4096).result.code == errc::store_full);
  auto w = f.m->watch({1, {}}, f.now);
  BOOST_REQUIRE(w && w->work.size() == 1u);
  BOOST_CHECK(w->work[0].kind == msg::instruction_kind::fence);
  BOOST_CHECK_EQUAL(w->work[0].token, p.replicas[0].token);
  BOOST_REQUIRE(f.m->watch({1, {w->work[0].id}}, f.now));
  auto again = f.start(1, "y", 4096);
  BOOST_REQUIRE(again.result.code == errc::none);
  BOOST_CHECK_EQUAL(again.replicas[0].addr, p.replicas[0].addr);
  BOOST_CHECK(again.replicas[0].token > p.replicas[0].token);
}

BOOST_AUTO_TEST_CASE(unfinished_puts_are_revoked_at_their_timeout) {
  master_config c;
  c.put_timeout = 2s;
  fixture f(c);
  f.mount(1, "a", base_a, 1 << 20);
  auto p = f.start(1, "k", 100);
  f.now += 1s;
  f.m->tick(f.now);
  BOOST_CHECK_EQUAL(f.m->counters().puts_timed_out, 0u);
  f.now += 1s;
  f.m->tick(f.now);
  BOOST_CHECK_EQUAL(f.m->counters().puts_timed_out, 1u);
  auto late = f.end(1, "k", p.put_id);
  BOOST_CHECK(!late.pending);
  BOOST_CHECK(late.result.code == errc::object_not_found);
  BOOST_CHECK(f.exists(1, "k") == errc::object_not_found);
  BOOST_CHECK_EQUAL(count_kind(f.serve({1}), msg::instruction_kind::fence), 1u);
}

BOOST_AUTO_TEST_CASE(commits_that_never_come_fail_the_put_within_the_commit_timeout) {
  master_config c;
  c.commit_timeout = 1s;
  fixture f(c);
  f.mount(1, "a", base_a, 1 << 20);
  f.mount(2, "b", base_b, 1 << 20);
  // Replication 2, one holder answers: the object lives with one replica.
  auto p = f.start(1, "two", 100, 2);
  BOOST_REQUIRE(f.end(1, "two", p.put_id).pending);
  f.serve({1});
  BOOST_CHECK(f.m->take_finished_ends().empty());
  f.now += 1s;
  f.m->tick(f.now);
  auto done = f.m->take_finished_ends();
  BOOST_REQUIRE_EQUAL(done.size(), 1u);
  BOOST_CHECK(done[0].result.code == errc::none);
  BOOST_CHECK_EQUAL(f.get(1, "two").replicas.size(), 1u);
  BOOST_CHECK_EQUAL(f.m->counters().commits_timed_out, 1u);
  // No holder answers: the put fails and never becomes visible.
  auto q = f.start(1, "none", 100, 2);
  BOOST_REQUIRE(f.end(1, "none", q.put_id).pending);
  f.now += 1s;
  f.m->tick(f.now);
  done = f.m->take_finished_ends();
  BOOST_REQUIRE_EQUAL(done.size(), 1u);
  BOOST_CHECK(done[0].result.code == errc::timeout);
  BOOST_CHECK(f.exists(1, "none") == errc::object_not_found);
}

BOOST_AUTO_TEST_CASE(leases_protect_from_remove_unless_forced) {
  fixture f;
  f.mount(1, "a", base_a, 1 << 20);
  f.put(1, "k", 100, {1});
  BOOST_CHECK(f.remove(1, "k") == errc::none); // never read: no lease
  f.put(1, "k", 100, {1});
  BOOST_REQUIRE(f.get(1, "k").result.code == errc::none);
  BOOST_CHECK(f.remove(1, "k") == errc::object_has_lease);
  f.now += 10s;
  BOOST_CHECK(f.remove(1, "k") == errc::none); // lease over
  BOOST_CHECK(f.remove(1, "k") == errc::object_not_found); // double remove
  f.put(1, "k", 100, {1});
  BOOST_REQUIRE(f.get(1, "k").result.code == errc::none);
  BOOST_CHECK(f.remove(1, "k", true) == errc::none);
  BOOST_CHECK(f.exists(1, "k") == errc::object_not_found);
}

BOOST_AUTO_TEST_CASE(upsert_replaces_and_frees_the_old_space_after_its_lease) {
  fixture f;
  f.mount(1, "a", base_a, 1 << 20);
  auto old = f.put(1, "k", 100, {1});
  BOOST_REQUIRE(f.get(1, "k").result.code == errc::none); // leased
  auto p = f.start(1, "k", 200, 1, false, true);
  BOOST_REQUIRE(p.result.code == errc::none);
  BOOST_REQUIRE(f.end(1, "k", p.put_id).pending);
  auto work = f.serve({1});
  BOOST_CHECK_EQUAL(count_kind(work, msg::instruction_kind::fence), 0u); // old one still leased
  BOOST_REQUIRE_EQUAL(f.m->take_finished_ends().size(), 1u);
  BOOST_CHECK_EQUAL(f.get(1, "k").size, 200u);
  f.now += 10s;
  f.m->tick(f.now);
  work = f.serve({1});
  BOOST_REQUIRE_EQUAL(count_kind(work, msg::instruction_kind::fence), 1u);
  BOOST_CHECK_EQUAL(work[0].addr, old.replicas[0].addr);
}

BOOST_AUTO_TEST_CASE(eviction_above_the_watermark_in_lru_order_skipping_leased_and_pinned) {
  master_config c;
  c.high_watermark = 0.9;
  c.evict_ratio = 0.2; // evict down to 70 %
  fixture f(c);
  f.mount(1, "a", base_a, 64 * 100);
  // 10 objects of 9 slots each = 90 %: at the watermark, nothing evicted yet.
  for (int i = 0; i < 10; ++i)
    f.put(1, "o" + std::to_string(i), 64 * 9, {1}, 1, i == 1);
  f.m->tick(f.now);
  BOOST_CHECK_EQUAL(f.m->counters().evictions, 0u);
  BOOST_REQUIRE(f.get(1, "o0").result.code == errc::none); // leased now, and most recently used
  f.now += 1s;
  auto p = f.start(1, "new", 64 * 9); // fits the last 10 slots: 99 % in use
  BOOST_REQUIRE(p.result.code == errc::none);
  // Above 90 %: evict down to 70 % (29 slots), in LRU order o1, o2, ... but o1 is pinned and o0
  // leased: o2, o3, o4 and o5 go (4 x 9 = 36 slots).
  BOOST_CHECK(f.exists(1, "o0") == errc::none);
  BOOST_CHECK(f.exists(1, "o1") == errc::none);
  for (const char* gone : {"o2", "o3", "o4", "o5"})
    BOOST_CHECK_MESSAGE(f.exists(1, gone) == errc::object_not_found, gone);
  BOOST_CHECK(f.exists(1, "o6") == errc::none);
  BOOST_CHECK_EQUAL(f.m->counters().evictions, 4u);
  // Their space is back once the holder fenced it.
  BOOST_CHECK(f.start(1, "more", 64 * 20).result.code == errc::store_full);
  f.serve({1});
  BOOST_CHECK(f.start(1, "more", 64 * 20).result.code == errc::none);
}

BOOST_AUTO_TEST_CASE(pinned_objects_go_only_when_nothing_else_can) {
  master_config c;
  c.high_watermark = 0.5;
  c.evict_ratio = 0.0;
  fixture f(c);
  f.mount(1, "a", base_a, 64 * 10);
  for (int i = 0; i < 4; ++i)
    f.put(1, "p" + std::to_string(i), 64 * 2, {1}, 1, true);
  f.m->tick(f.now); // 80 % in use, all pinned: the oldest pins go until 50 %
  BOOST_CHECK(f.exists(1, "p0") == errc::object_not_found);
  BOOST_CHECK(f.exists(1, "p1") == errc::object_not_found);
  BOOST_CHECK(f.exists(1, "p2") == errc::none);
  BOOST_CHECK(f.exists(1, "p3") == errc::none);
}

BOOST_AUTO_TEST_CASE(a_full_store_answers_put_with_a_clear_error) {
  fixture f;
  f.mount(1, "a", base_a, 64 * 4);
  for (int i = 0; i < 4; ++i) {
    auto s = f.start(1, "w" + std::to_string(i), 64);
    BOOST_REQUIRE(s.result.code == errc::none);
  }
  auto full = f.start(1, "more", 64);
  BOOST_CHECK(full.result.code == errc::store_full);
  BOOST_CHECK_MESSAGE(full.result.reason.find("contiguous free bytes") != std::string::npos,
                      full.result.reason);
  auto huge = f.start(1, "huge", 1 << 20);
  BOOST_CHECK(huge.result.code == errc::invalid_argument);
  BOOST_CHECK_MESSAGE(huge.result.reason.find("larger than any mounted segment") != std::string::npos,
                      huge.result.reason);
}

BOOST_AUTO_TEST_CASE(bad_requests_get_clear_errors) {
  fixture f;
  f.mount(1, "a", base_a, 1 << 20);
  BOOST_CHECK(f.start(1, "", 10).result.code == errc::invalid_argument);
  BOOST_CHECK(f.start(1, std::string(4097, 'k'), 10).result.code == errc::invalid_argument);
  BOOST_CHECK(f.start(1, std::string(4096, 'k'), 10).result.code == errc::none);
  BOOST_CHECK(f.start(1, "zero", 0).result.code == errc::invalid_argument);
  BOOST_CHECK(f.start(1, "r0", 10, 0).result.code == errc::invalid_argument);
  BOOST_CHECK(f.start(1, "r9", 10, 9).result.code == errc::invalid_argument);
  auto unknown = f.m->put_start({99, {{"k", 10, 1, false, false}}}, f.now);
  BOOST_REQUIRE(!unknown);
  BOOST_CHECK(code_of(unknown.error()) == errc::not_mounted);
  BOOST_CHECK(!f.m->watch({99, {}}, f.now));
  BOOST_CHECK(f.exists(1, "missing") == errc::object_not_found);
  BOOST_CHECK(f.remove(1, "missing") == errc::object_not_found);
  BOOST_CHECK(f.get(1, "missing").result.code == errc::object_not_found);
  auto wrong = f.m->put_end({1, {{"nope", 12345, false, 0}}}, f.now);
  BOOST_REQUIRE(wrong);
  BOOST_CHECK((*wrong)[0].result.code == errc::object_not_found);
  // Another client cannot end or revoke my put.
  f.mount(2, "b", base_b, 1 << 20);
  auto mine = f.start(1, "mine", 10);
  auto theirs = f.m->put_revoke({2, {{"mine", mine.put_id, false, 0}}}, f.now);
  BOOST_REQUIRE(theirs);
  BOOST_CHECK(theirs->results[0].code == errc::object_not_found);
  // A segment mounted twice under one name is refused.
  msg::mount_request twice{3, "c", "h", 0, {{"a", base_b, 100, {}}}};
  auto refused = f.m->mount(twice, f.now);
  BOOST_REQUIRE(!refused);
  BOOST_CHECK(code_of(refused.error()) == errc::invalid_argument);
}

BOOST_AUTO_TEST_CASE(a_silent_client_is_declared_dead_after_the_ttl) {
  master_config c;
  c.ttl = 10s;
  fixture f(c);
  f.mount(1, "a", base_a, 1 << 20);
  f.mount(2, "b", base_b, 1 << 20);
  f.put(2, "both", 100, {1, 2}, 2);
  // Client 1's own put is unfinished; client 2 is writing into client 1's segment.
  auto own = f.start(1, "own", 100);
  BOOST_REQUIRE(own.result.code == errc::none);
  f.now += 6s;
  BOOST_REQUIRE(f.m->watch({2, {}}, f.now)); // client 2 stays alive
  f.now += 5s;
  f.m->tick(f.now);
  BOOST_CHECK_EQUAL(f.m->counters().clients_declared_dead, 1u);
  BOOST_CHECK(!f.m->watch({1, {}}, f.now)); // must mount again
  auto loc = f.get(2, "both");
  BOOST_REQUIRE(loc.result.code == errc::none);
  BOOST_REQUIRE_EQUAL(loc.replicas.size(), 1u);
  BOOST_CHECK_EQUAL(loc.replicas[0].segment, "b");
  BOOST_CHECK_EQUAL(f.m->counters().puts_revoked, 1u);
  BOOST_CHECK_EQUAL(f.m->capacity(), uint64_t{1} << 20);
  // A restarted client (same name, new id) mounts again.
  f.mount(3, "a", base_a, 1 << 20);
  BOOST_CHECK_EQUAL(f.m->capacity(), uint64_t{2} << 20);
}

BOOST_AUTO_TEST_CASE(a_restarted_client_replaces_its_predecessor_at_once) {
  fixture f;
  f.mount(1, "a", base_a, 1 << 20);
  f.put(1, "k", 100, {1});
  f.mount(5, "a", base_a, 1 << 20); // same name, new process: the old memory is gone
  BOOST_CHECK(f.exists(5, "k") == errc::object_not_found);
  BOOST_CHECK(!f.m->watch({1, {}}, f.now));
  BOOST_CHECK_EQUAL(f.m->capacity(), uint64_t{1} << 20);
}

BOOST_AUTO_TEST_CASE(a_restarted_master_rebuilds_from_what_holders_hold) {
  fixture f;
  // A new master hears from two holders: "k" twice (one replica each, same token), "old" twice
  // with different tokens (the newer wins), and one entry outside its segment.
  std::vector<msg::held_object> a{{"k", base_a + 0, 100, 5000, true, 77, false},
                                  {"old", base_a + 4096, 100, 4000, false, 0, true},
                                  {"bad", base_a + (2 << 20), 100, 4100, false, 0, false}};
  std::vector<msg::held_object> b{{"k", base_b + 64, 100, 5000, true, 77, false},
                                  {"old", base_b + 4096, 100, 4500, false, 0, false}};
  msg::mount_request ra{1, "a", "h1", 6000, {{"a", base_a, 1 << 20, a}}};
  auto reply_a = f.m->mount(ra, f.now);
  BOOST_REQUIRE(reply_a);
  BOOST_REQUIRE_EQUAL(reply_a->dropped.size(), 1u);
  BOOST_CHECK_EQUAL(reply_a->dropped[0].addr, base_a + (2 << 20));
  msg::mount_request rb{2, "b", "h2", 6000, {{"b", base_b, 1 << 20, b}}};
  BOOST_REQUIRE(f.m->mount(rb, f.now));
  auto k = f.get(1, "k");
  BOOST_REQUIRE(k.result.code == errc::none);
  BOOST_CHECK_EQUAL(k.replicas.size(), 2u);
  BOOST_CHECK(k.has_checksum);
  BOOST_CHECK_EQUAL(k.checksum, 77u);
  auto old = f.get(1, "old");
  BOOST_REQUIRE(old.result.code == errc::none);
  BOOST_REQUIRE_EQUAL(old.replicas.size(), 1u);
  BOOST_CHECK_EQUAL(old.replicas[0].segment, "b");
  BOOST_CHECK_EQUAL(old.replicas[0].token, 4500u);
  // The older "old" on a is fenced (its space returns once a acknowledges).
  auto work = f.serve({1});
  BOOST_REQUIRE_EQUAL(count_kind(work, msg::instruction_kind::fence), 1u);
  BOOST_CHECK_EQUAL(work[0].addr, base_a + 4096);
  // New tokens are above every floor and held token.
  auto s = f.start(1, "new", 10);
  BOOST_CHECK(s.replicas[0].token > 6000);
}

BOOST_AUTO_TEST_CASE(unmount_drops_a_clients_segments_at_once) {
  fixture f;
  f.mount(1, "a", base_a, 1 << 20);
  f.put(1, "k", 100, {1});
  BOOST_CHECK(f.m->unmount(1, f.now).code == errc::none);
  BOOST_CHECK_EQUAL(f.m->capacity(), 0u);
  BOOST_CHECK_EQUAL(f.m->object_count(), 0u);
  BOOST_CHECK(f.m->unmount(1, f.now).code == errc::not_mounted);
}

BOOST_AUTO_TEST_CASE(the_report_lists_segments_and_counters) {
  fixture f;
  f.mount(1, "a", base_a, 1 << 20);
  f.put(1, "k", 100, {1});
  auto r = f.m->report(f.now);
  for (const char* field : {"\"objects\":1", "\"fragmentation\"", "\"puts_ended\":1", "\"segments\""})
    BOOST_CHECK_MESSAGE(r.find(field) != std::string::npos, field << " in " << r);
}

BOOST_AUTO_TEST_CASE(what_clients_can_make_the_master_hold_is_bounded) {
  master_config c;
  c.max_objects = 3;
  c.max_key_bytes = 1000;
  c.max_clients = 2;
  fixture f(c);
  f.mount(1, "a", base_a, 1 << 20);
  f.put(1, "k1", 10, {1});
  BOOST_CHECK(f.start(1, "k2", 10).result.code == errc::none);
  BOOST_CHECK(f.start(1, std::string(997, 'x'), 10).result.code == errc::store_full);
  BOOST_CHECK(f.start(1, "k3", 10).result.code == errc::none);
  auto over = f.start(1, "k4", 10);
  BOOST_CHECK(over.result.code == errc::store_full);
  BOOST_CHECK_MESSAGE(over.result.reason.find("max_objects") != std::string::npos, over.result.reason);
  BOOST_CHECK(f.remove(1, "k1") == errc::none);
  BOOST_CHECK(f.start(1, "k4", 10).result.code == errc::none);
  f.mount(2, "b", base_b, 1 << 20);
  msg::mount_request third{3, "c", "h", 0, {{"c", 0x5000000, 100, {}}}};
  auto refused = f.m->mount(third, f.now);
  BOOST_REQUIRE(!refused);
  BOOST_CHECK(code_of(refused.error()) == errc::invalid_argument);
}

BOOST_AUTO_TEST_CASE(a_client_that_never_learnt_its_put_ended_can_still_revoke_it) {
  fixture f;
  f.mount(1, "a", base_a, 1 << 20);
  // Revoked while committing: the pending put_end is answered, the object never appears.
  auto p = f.start(1, "k", 100);
  BOOST_REQUIRE(f.end(1, "k", p.put_id).pending);
  auto r = f.m->put_revoke({1, {{"k", p.put_id, false, 0, p.replicas[0].token}}}, f.now);
  BOOST_REQUIRE(r && r->results[0].code == errc::none);
  auto done = f.m->take_finished_ends();
  BOOST_REQUIRE_EQUAL(done.size(), 1u);
  BOOST_CHECK(done[0].result.code == errc::object_not_found);
  f.serve({1});
  BOOST_CHECK(f.exists(1, "k") == errc::object_not_found);
  // Ended, but its client saw put_end fail: the object of that token goes.
  auto q = f.put(1, "k", 100, {1});
  auto late = f.m->put_revoke({1, {{"k", q.put_id, false, 0, q.replicas[0].token}}}, f.now);
  BOOST_REQUIRE(late && late->results[0].code == errc::none);
  BOOST_CHECK(f.exists(1, "k") == errc::object_not_found);
  // A revoke naming another put's token leaves the object alone.
  auto s = f.put(1, "k", 100, {1});
  auto wrong = f.m->put_revoke({1, {{"k", q.put_id, false, 0, q.replicas[0].token}}}, f.now);
  BOOST_REQUIRE(wrong);
  BOOST_CHECK(wrong->results[0].code == errc::object_not_found);
  BOOST_CHECK(f.exists(1, "k") == errc::none);
  (void) s;
}
