#define BOOST_TEST_MODULE fence_map_test
#include <boost/test/unit_test.hpp>

// memory::fence_map: floors over [0, 2^64) that only rise, checks against them, the merge of equal
// neighbours, ranges at the top of the address space, and the access guard that raise() waits for.

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <limits>
#include <random>
#include <thread>

#include "memory/fence_map.hpp"
#include "tests/support/checks.hpp"
#include "tests/support/thread_state.hpp"

using kvferry::memory::fence_map;
using kvferry::test::eventually;
using kvferry::test::in_futex_wait;

namespace {

constexpr uint64_t max_u64 = std::numeric_limits<uint64_t>::max();

} // namespace

BOOST_AUTO_TEST_CASE(a_fresh_map_admits_every_non_zero_token) {
  fence_map m;
  BOOST_CHECK_EQUAL(m.size(), 1u);
  BOOST_CHECK(m.admits(0, 1, 1));
  BOOST_CHECK(m.admits(0x1000, 4096, 1));
  BOOST_CHECK(m.admits(max_u64, 1, 1));     // the last byte
  BOOST_CHECK(m.admits(0, max_u64, 1));     // all but the last byte
  BOOST_CHECK(m.admits(1, max_u64, 1));     // ends exactly at 2^64
  BOOST_CHECK(!m.admits(0x1000, 4096, 0));  // no token
  BOOST_CHECK(!m.admits(0x1000, 0, 1));     // empty range
  BOOST_CHECK(!m.admits(2, max_u64, 1));    // wraps around
  BOOST_CHECK(!m.admits(max_u64, 2, 1));    // wraps around
  BOOST_CHECK_EQUAL(m.max_floor(0, max_u64), 0u);
}

BOOST_AUTO_TEST_CASE(raise_sets_floors_over_exactly_its_range) {
  fence_map m;
  m.raise(100, 100, 5); // [100, 200)
  BOOST_CHECK_EQUAL(m.size(), 3u);
  BOOST_CHECK(!m.admits(100, 100, 5)); // equal to the floor: refused
  BOOST_CHECK(m.admits(100, 100, 6));
  BOOST_CHECK(m.admits(0, 100, 1));    // just before
  BOOST_CHECK(!m.admits(0, 101, 5));   // reaches the first fenced byte
  BOOST_CHECK(!m.admits(199, 1, 5));   // the last fenced byte
  BOOST_CHECK(m.admits(200, 1000, 1)); // just after
  BOOST_CHECK(!m.admits(150, 100, 3)); // straddles the end
  BOOST_CHECK(m.admits(150, 100, 6));
  BOOST_CHECK_EQUAL(m.max_floor(0, 1000), 5u);
  BOOST_CHECK_EQUAL(m.max_floor(200, 1000), 0u);

  // A lower floor changes nothing: floors never go down.
  m.raise(100, 100, 3);
  m.raise(0, 1000, 2);
  BOOST_CHECK(!m.admits(120, 10, 5));
  BOOST_CHECK_EQUAL(m.max_floor(100, 100), 5u);
  BOOST_CHECK_EQUAL(m.max_floor(0, 100), 2u);
  BOOST_CHECK_EQUAL(m.max_floor(200, 800), 2u);
  BOOST_CHECK(m.admits(1000, 1, 1)); // past the raised range
  BOOST_CHECK_EQUAL(m.size(), 4u);  // [0,100):2 [100,200):5 [200,1000):2 [1000,..):0

  // A higher floor inside a piece cuts it in three; over several pieces it keeps the higher ones.
  m.raise(120, 10, 9);
  BOOST_CHECK_EQUAL(m.max_floor(100, 20), 5u);
  BOOST_CHECK_EQUAL(m.max_floor(120, 10), 9u);
  BOOST_CHECK_EQUAL(m.max_floor(130, 70), 5u);
  BOOST_CHECK_EQUAL(m.size(), 6u);
  m.raise(50, 200, 6); // [50, 250): 2 -> 6, 5 -> 6, 9 stays
  BOOST_CHECK_EQUAL(m.max_floor(0, 50), 2u);
  BOOST_CHECK_EQUAL(m.max_floor(50, 70), 6u);
  BOOST_CHECK_EQUAL(m.max_floor(120, 10), 9u);
  BOOST_CHECK_EQUAL(m.max_floor(130, 120), 6u);
  BOOST_CHECK_EQUAL(m.max_floor(250, 750), 2u);
  // [0,50):2 [50,120):6 [120,130):9 [130,250):6 [250,1000):2 [1000,..):0
  BOOST_CHECK_EQUAL(m.size(), 6u);

  // Empty and wrapping ranges change nothing.
  m.raise(500, 0, 100);
  m.raise(max_u64 - 5, 7, 100);
  BOOST_CHECK_EQUAL(m.size(), 6u);
  BOOST_CHECK_EQUAL(m.max_floor(0, max_u64), 9u);
}

BOOST_AUTO_TEST_CASE(equal_neighbours_merge_so_the_map_stays_small) {
  fence_map m;
  m.raise(100, 100, 5);
  m.raise(200, 100, 5); // adjacent, same floor: one piece [100, 300)
  BOOST_CHECK_EQUAL(m.size(), 3u);
  m.raise(0, 100, 5);   // [0, 300)
  BOOST_CHECK_EQUAL(m.size(), 2u);
  m.raise(300, max_u64 - 299, 5); // [300, 2^64): every floor is 5
  BOOST_CHECK_EQUAL(m.size(), 1u);
  BOOST_CHECK(!m.admits(0, 1, 5));
  BOOST_CHECK(m.admits(max_u64, 1, 6));

  // Allocations freed one after another over a region, each with a larger token, then one new
  // allocation over all of them freed in turn: the map is back to three pieces.
  fence_map a;
  for (uint64_t i = 0; i < 1000; ++i)
    a.raise(0x10000 + i * 64, 64, i + 1);
  BOOST_CHECK_EQUAL(a.size(), 1001u + 1u);
  BOOST_CHECK(!a.admits(0x10000, 64 * 1000, 1000)); // the new allocation needs a larger token
  BOOST_CHECK(a.admits(0x10000, 64 * 1000, 1001));
  a.raise(0x10000, 64 * 1000, 1001);
  BOOST_CHECK_EQUAL(a.size(), 3u);
  // Raising the middle of a piece to its own floor neither cuts nor grows it.
  a.raise(0x10000 + 64, 64, 1001);
  BOOST_CHECK_EQUAL(a.size(), 3u);
}

BOOST_AUTO_TEST_CASE(ranges_at_the_top_of_the_address_space) {
  fence_map m;
  m.raise(max_u64 - 9, 10, 9); // the last ten bytes, ending exactly at 2^64
  BOOST_CHECK_EQUAL(m.size(), 2u);
  BOOST_CHECK(!m.admits(max_u64, 1, 9));
  BOOST_CHECK(m.admits(max_u64, 1, 10));
  BOOST_CHECK(m.admits(max_u64 - 10, 1, 1));
  BOOST_CHECK(!m.admits(max_u64 - 10, 2, 1));
  BOOST_CHECK_EQUAL(m.max_floor(0, max_u64), 9u); // [0, 2^64 - 1)
  m.raise(0, 1, 9);                               // the very first byte
  BOOST_CHECK_EQUAL(m.size(), 3u);
  BOOST_CHECK(!m.admits(0, 1, 9));
  BOOST_CHECK(m.admits(1, 100, 1));
  m.raise(1, max_u64 - 10, 9); // [1, 2^64 - 9): everything is 9 now
  BOOST_CHECK_EQUAL(m.size(), 1u);
}

BOOST_AUTO_TEST_CASE(random_raises_agree_with_a_byte_model) {
  // Every floor of a 64-byte window (the rest of the address space stays 0), checked after each
  // raise against a model that stores one floor per byte.
  std::mt19937_64 rng(7);
  for (int round = 0; round < 200; ++round) {
    fence_map m;
    std::array<uint64_t, 64> model{};
    for (int step = 0; step < 30; ++step) {
      uint64_t addr = rng() % 64, len = rng() % (65 - addr), floor = rng() % 6;
      m.raise(addr, len, floor);
      for (uint64_t b = addr; b < addr + len; ++b)
        model[b] = std::max(model[b], floor);
      // Pieces: runs of equal floors in the window, plus the zero tail unless the last run is 0.
      size_t runs = 1;
      for (size_t b = 1; b < model.size(); ++b)
        runs += model[b] != model[b - 1];
      if (model.back() != 0)
        ++runs;
      BOOST_REQUIRE_EQUAL(m.size(), runs);
      for (int probe = 0; probe < 20; ++probe) {
        uint64_t a = rng() % 70, l = rng() % 70, token = rng() % 7;
        uint64_t highest = 0;
        for (uint64_t b = a; b < a + l; ++b)
          highest = std::max(highest, b < 64 ? model[b] : 0);
        BOOST_REQUIRE_EQUAL(m.max_floor(a, l), highest);
        BOOST_REQUIRE_EQUAL(m.admits(a, l, token), l > 0 && token != 0 && token > highest);
        fence_map::access guard(m, a, l, token);
        BOOST_REQUIRE_EQUAL(static_cast<bool>(guard), l > 0 && token != 0 && token > highest);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(raise_waits_for_an_admitted_access) {
  fence_map m;
  m.raise(0x1000, 0x1000, 3);
  {
    fence_map::access refused(m, 0x1000, 16, 3);
    BOOST_CHECK(!refused);
    m.raise(0x3000, 16, 1); // a refused access holds nothing
  }
  std::atomic<pid_t> raiser{0};
  std::atomic<bool> raised{false};
  std::thread t;
  {
    fence_map::access copy(m, 0x1000, 16, 4); // a copy admitted with token 4 is in progress
    BOOST_REQUIRE(copy);
    t = std::thread([&] {
      raiser = kvferry::test::current_thread_id();
      m.raise(0x1000, 0x1000, 4);
      raised = true;
    });
    // The raising thread blocks on the lock (asleep) and cannot return while the copy runs.
    BOOST_REQUIRE(eventually([&] { return raiser.load() != 0 && in_futex_wait(raiser.load()); }));
    BOOST_CHECK(!raised.load());
  }
  t.join();
  BOOST_CHECK(raised.load());
  BOOST_CHECK(!m.admits(0x1000, 16, 4));
  BOOST_CHECK(m.admits(0x1000, 16, 5));
}
