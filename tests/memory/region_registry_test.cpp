#define BOOST_TEST_MODULE region_registry_test
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <limits>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/checks.hpp"
#include "tests/support/thread_state.hpp"
#include "config/error.hpp"
#include "memory/location.hpp"
#include "memory/region_registry.hpp"
#include "memory/segment_descriptor.hpp"

using namespace kvferry;
using memory::location;
using memory::location_kind;
using memory::region;
using memory::region_registry;
using memory::region_table;

namespace {

using kvferry::test::why;
using kvferry::test::contains;
using kvferry::test::eventually;

constexpr uint64_t max_u64 = std::numeric_limits<uint64_t>::max();

template <class T>
void expect_error(const caf::expected<T>& r, errc code, std::initializer_list<std::string_view> parts) {
  BOOST_REQUIRE_MESSAGE(!r, "expected " << to_string(code) << ", got a value");
  BOOST_CHECK_MESSAGE(code_of(r.error()) == code, "expected " << to_string(code) << ", got "
                                                              << describe(r.error()));
  auto text = context_of(r.error());
  for (auto part : parts)
    BOOST_CHECK_MESSAGE(contains(text, part), "message '" << text << "' lacks '" << part << "'");
}

/// Every region of the table, sorted and non-overlapping.
bool well_formed(const region_table& t) {
  const auto& rs = t.regions();
  for (size_t i = 0; i < rs.size(); ++i) {
    if (rs[i].length == 0)
      return false;
    if (i > 0 && rs[i].base < rs[i - 1].end())
      return false;
  }
  return true;
}

} // namespace

// -- locations ----------------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(location_parsing) {
  struct { std::string_view text; location_kind kind; uint32_t index; } good[] = {
    {"cpu:0", location_kind::cpu, 0},     {"cpu:1", location_kind::cpu, 1},
    {"cuda:0", location_kind::cuda, 0},   {"cuda:7", location_kind::cuda, 7},
    {"cpu:1023", location_kind::cpu, 1023}, {"*", location_kind::cpu, 0},
    {"", location_kind::cpu, 0},
  };
  for (const auto& g : good) {
    auto r = memory::parse_location(g.text);
    BOOST_REQUIRE_MESSAGE(r, "'" << g.text << "': " << why(r));
    BOOST_CHECK_MESSAGE(r->kind == g.kind && r->index == g.index, "'" << g.text << "'");
    BOOST_CHECK_EQUAL(r->is_device(), g.kind == location_kind::cuda);
  }
  BOOST_CHECK_EQUAL(memory::to_string(location{location_kind::cuda, 3}), "cuda:3");
  BOOST_CHECK_EQUAL(memory::to_string(location{}), "cpu:0");
  auto round = memory::parse_location(memory::to_string(location{location_kind::cuda, 12}));
  BOOST_REQUIRE(round);
  BOOST_CHECK(*round == (location{location_kind::cuda, 12}));

  for (std::string_view bad : {"gpu:0", "CPU:0", "cpu", "cuda", " cpu:0", "npu:1", "cpu0"})
    expect_error(memory::parse_location(bad), errc::invalid_argument,
                 {"'" + std::string(bad) + "'", "unknown", "expected cpu:N, cuda:N or *"});
  for (std::string_view bad : {"cpu:", "cuda:", "cpu:1024", "cpu:-1", "cpu:0x", "cuda:1 ", "cpu:99999999999"})
    expect_error(memory::parse_location(bad), errc::invalid_argument,
                 {"'" + std::string(bad) + "'", "bad index", "0 to 1023"});
}

// -- region_registry::add -----------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(add_rejects_bad_ranges) {
  region_registry reg;
  expect_error(reg.add(0x1000, 0, {}), errc::invalid_argument, {"0x1000", "length is 0"});
  expect_error(reg.add(0, 4096, {}), errc::invalid_argument, {"null"});
  expect_error(reg.add(max_u64 - 10, 20, {}), errc::invalid_argument, {"wraps around", "20"});
  expect_error(reg.add(max_u64, max_u64, {}), errc::invalid_argument, {"wraps around"});
  BOOST_CHECK(reg.snapshot()->empty());
  BOOST_CHECK_EQUAL(reg.version(), 0u);
  // A range that ends one byte short of the top of the address space is fine.
  auto top = reg.add(max_u64 - 16, 16, {});
  BOOST_REQUIRE_MESSAGE(top, why(top));
  BOOST_CHECK(reg.find(max_u64 - 1, 1).has_value());
}

BOOST_AUTO_TEST_CASE(add_rejects_overlaps) {
  region_registry reg;
  auto first = reg.add(1000, 1000, location{location_kind::cpu, 1}); // [1000, 2000)
  BOOST_REQUIRE_MESSAGE(first, why(first));
  BOOST_CHECK_EQUAL(first->base, 1000u);
  BOOST_CHECK_EQUAL(first->length, 1000u);
  BOOST_CHECK(first->where == (location{location_kind::cpu, 1}));
  auto version = reg.version();

  struct { const char* name; uint64_t base; uint64_t length; } cases[] = {
    {"left", 900, 200},          // [900, 1100)
    {"left by one byte", 500, 501}, // [500, 1001)
    {"right", 1900, 200},        // [1900, 2100)
    {"right by one byte", 1999, 100},
    {"inside", 1200, 100},
    {"enclosing", 500, 2000},
    {"exact", 1000, 1000},
    {"same base, shorter", 1000, 1},
    {"same end", 1500, 500},
  };
  for (const auto& c : cases) {
    BOOST_TEST_CONTEXT(c.name) {
      expect_error(reg.add(c.base, c.length, {}), errc::overlapping_region,
                   {"[0x3e8, 0x7d0)", "overlaps"});
    }
  }
  BOOST_CHECK_EQUAL(reg.version(), version);
  BOOST_CHECK_EQUAL(reg.snapshot()->size(), 1u);

  // With a second region, a range spanning the gap between them overlaps both.
  BOOST_REQUIRE(reg.add(5000, 1000, {}));
  expect_error(reg.add(1500, 4000, {}), errc::overlapping_region, {"overlaps"});
  expect_error(reg.add(2500, 3000, {}), errc::overlapping_region, {"[0x1388, 0x1770)"});
  // Fits exactly into the gap.
  BOOST_CHECK(reg.add(2000, 3000, {}));
}

BOOST_AUTO_TEST_CASE(adjacent_regions_allowed_but_find_does_not_cross) {
  region_registry reg;
  BOOST_REQUIRE(reg.add(2000, 1000, {}));                            // [2000, 3000)
  BOOST_REQUIRE(reg.add(1000, 1000, location{location_kind::cpu, 1})); // [1000, 2000) left
  BOOST_REQUIRE(reg.add(3000, 1000, location{location_kind::cpu, 2})); // [3000, 4000) right
  auto snap = reg.snapshot();
  BOOST_REQUIRE_EQUAL(snap->size(), 3u);
  BOOST_CHECK(well_formed(*snap));
  BOOST_CHECK_EQUAL(snap->regions()[0].base, 1000u);
  BOOST_CHECK_EQUAL(snap->regions()[2].base, 3000u);

  // First and last byte of each region.
  for (uint64_t base : {1000u, 2000u, 3000u}) {
    auto a = reg.find(base, 1);
    BOOST_REQUIRE(a);
    BOOST_CHECK_EQUAL(a->base, base);
    auto b = reg.find(base + 999, 1);
    BOOST_REQUIRE(b);
    BOOST_CHECK_EQUAL(b->base, base);
    auto whole = reg.find(base, 1000);
    BOOST_REQUIRE(whole);
    BOOST_CHECK_EQUAL(whole->base, base);
  }
  BOOST_CHECK_EQUAL(reg.find(3500, 10)->where.index, 2u);
  // Across a boundary: refused even though every byte is registered.
  BOOST_CHECK(!reg.find(1999, 2));
  BOOST_CHECK(!reg.find(1000, 1001));
  BOOST_CHECK(!reg.find(1500, 2000));
  BOOST_CHECK(!reg.find(2999, 2));
  // Outside, zero length, wrap-around.
  BOOST_CHECK(!reg.find(999, 1));
  BOOST_CHECK(!reg.find(999, 2));
  BOOST_CHECK(!reg.find(4000, 1));
  BOOST_CHECK(!reg.find(3999, 2));
  BOOST_CHECK(!reg.find(1500, 0));
  BOOST_CHECK(!reg.find(1500, max_u64));
  BOOST_CHECK(!reg.find(0, 1));
  BOOST_CHECK(!reg.find(max_u64, 1));
}

BOOST_AUTO_TEST_CASE(remove_regions) {
  region_registry reg;
  BOOST_REQUIRE(reg.add(1000, 100, {}));
  BOOST_REQUIRE(reg.add(2000, 100, {}));
  auto v = reg.version();
  expect_error(reg.remove(3000), errc::unknown_region, {"0xbb8"});
  // An address inside a region is not its base.
  expect_error(reg.remove(1050), errc::unknown_region, {"0x41a"});
  expect_error(reg.remove(0), errc::unknown_region, {"0x0"});
  BOOST_CHECK_EQUAL(reg.version(), v);

  auto removed = reg.remove(1000);
  BOOST_REQUIRE_MESSAGE(removed, why(removed));
  BOOST_CHECK_EQUAL(removed->base, 1000u);
  BOOST_CHECK_EQUAL(removed->length, 100u);
  BOOST_CHECK_GT(reg.version(), v);
  BOOST_CHECK(!reg.find(1000, 1));
  BOOST_CHECK(reg.find(2000, 1));
  // Removing twice fails the second time.
  expect_error(reg.remove(1000), errc::unknown_region, {"0x3e8"});
  // The freed range can be registered again, also with another shape.
  BOOST_CHECK(reg.add(950, 200, {}));
  BOOST_CHECK(reg.remove(2000));
  BOOST_CHECK(reg.remove(950));
  BOOST_CHECK(reg.snapshot()->empty());
}

BOOST_AUTO_TEST_CASE(a_held_lease_keeps_the_region_registered_and_unregister_fails_whole) {
  region_registry reg;
  BOOST_REQUIRE(reg.add(0x10000, 0x1000, location{}));
  auto lease = reg.lease(0x10100, 16);
  BOOST_REQUIRE(lease);
  // Nobody lets go within the timeout: the region is put back, the call says busy.
  auto removed = reg.remove(0x10000, std::chrono::milliseconds(50));
  expect_error(removed, errc::busy, {"0x10000", "still in use", "stays registered"});
  BOOST_CHECK(reg.find(0x10000, 0x1000).has_value());
  BOOST_CHECK(reg.lease(0x10000, 1)); // usable again
  lease.reset();
  BOOST_CHECK(reg.remove(0x10000, std::chrono::milliseconds(50)));
  BOOST_CHECK(!reg.find(0x10000, 1).has_value());
  BOOST_CHECK(!reg.lease(0x10000, 1));
}

BOOST_AUTO_TEST_CASE(fence_listeners_let_go_and_unregister_completes) {
  region_registry reg;
  BOOST_REQUIRE(reg.add(0x20000, 0x1000, location{}));
  BOOST_REQUIRE(reg.add(0x40000, 0x1000, location{}));
  // A user of the region (a data path holding a reply that points into it) lets go when told.
  auto held = std::make_shared<memory::region_lease>(reg.lease(0x20000, 0x1000));
  auto other = reg.lease(0x40000, 16); // another region's lease does not hold this one up
  BOOST_REQUIRE(*held && other);
  std::vector<uint64_t> fenced;
  auto id = reg.add_fence_listener([&, held](const region& r) {
    fenced.push_back(r.base);
    if (held->state() == r.state.get())
      held->reset();
  });
  // While the region is being removed, no new lease can be taken and no overlapping add.
  auto removed = reg.remove(0x20000, std::chrono::seconds(30));
  BOOST_REQUIRE_MESSAGE(removed, why(removed));
  BOOST_CHECK_EQUAL(fenced.size(), 1u);
  BOOST_CHECK_EQUAL(fenced.front(), 0x20000u);
  BOOST_CHECK_EQUAL(removed->state->users(), 0u);
  reg.remove_fence_listener(id);
  BOOST_CHECK(reg.add(0x20000, 0x1000, location{})); // reusable once removed
}

BOOST_AUTO_TEST_CASE(lease_and_remove_race_without_a_lost_use) {
  // Threads take and drop leases while another unregisters and re-registers the region: a
  // lease is either refused or counted, so remove() never returns while one is held.
  region_registry reg;
  BOOST_REQUIRE(reg.add(0x50000, 0x1000, location{}));
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> violations{0}, taken{0};
  std::atomic<bool> removed_flag{false};
  std::vector<std::thread> users;
  for (int t = 0; t < 2; ++t)
    users.emplace_back([&] {
      while (!stop.load()) {
        auto l = reg.lease(0x50000, 64);
        if (l) {
          ++taken;
          if (removed_flag.load()) // remove() returned while this lease was held
            ++violations;
        }
      }
    });
  for (int i = 0; i < 500; ++i) {
    // Let a user take a lease on the region before it goes (bounded: users may be descheduled).
    auto before = taken.load();
    for (int spin = 0; spin < 100000 && taken.load() == before; ++spin)
      std::this_thread::yield();
    auto r = reg.remove(0x50000, std::chrono::seconds(30));
    BOOST_REQUIRE_MESSAGE(r, why(r));
    removed_flag = true; // from here until the next add, no lease may be held
    for (int spin = 0; spin < 3; ++spin)
      std::this_thread::yield();
    removed_flag = false;
    BOOST_REQUIRE(reg.add(0x50000, 0x1000, location{}));
  }
  stop = true;
  for (auto& u : users)
    u.join();
  BOOST_CHECK_EQUAL(violations.load(), 0u);
  BOOST_CHECK_GT(taken.load(), 0u);
}

BOOST_AUTO_TEST_CASE(a_closed_registry_refuses_everything) {
  region_registry reg;
  BOOST_REQUIRE(reg.add(0x60000, 0x1000, location{}));
  BOOST_CHECK_EQUAL(reg.close(std::chrono::seconds(5)), 0u);
  BOOST_CHECK(reg.closed());
  BOOST_CHECK(reg.snapshot()->empty());
  BOOST_CHECK(!reg.lease(0x60000, 1));
  expect_error(reg.add(0x70000, 0x1000, location{}), errc::shutting_down, {"shut down"});
}

BOOST_AUTO_TEST_CASE(snapshot_is_immutable_while_registry_changes) {
  region_registry reg;
  BOOST_REQUIRE(reg.add(1000, 100, {}));
  auto before = reg.snapshot();
  auto v0 = reg.version();
  BOOST_REQUIRE(reg.add(500, 100, {}));
  BOOST_REQUIRE(reg.remove(1000));
  BOOST_CHECK_EQUAL(reg.version(), v0 + 2);
  // The old snapshot still answers as it did.
  BOOST_REQUIRE_EQUAL(before->size(), 1u);
  BOOST_CHECK_EQUAL(before->regions()[0].base, 1000u);
  BOOST_CHECK(before->find(1000, 100) != nullptr);
  BOOST_CHECK(before->find(500, 1) == nullptr);
  // The new one reflects both changes.
  auto after = reg.snapshot();
  BOOST_REQUIRE_EQUAL(after->size(), 1u);
  BOOST_CHECK_EQUAL(after->regions()[0].base, 500u);
  BOOST_CHECK(after->find(1000, 1) == nullptr);
  BOOST_CHECK(after != before);
}

BOOST_AUTO_TEST_CASE(concurrent_readers_see_consistent_snapshots) {
  region_registry reg;
  // A permanent region readers must always find.
  BOOST_REQUIRE(reg.add(1ULL << 40, 4096, {}));
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> bad{0}, reads{0};
  std::atomic<int> started{0};
  std::vector<std::thread> readers;
  for (int i = 0; i < 2; ++i) {
    readers.emplace_back([&] {
      started.fetch_add(1);
      do {
        auto snap = reg.snapshot();
        if (!well_formed(*snap) || snap->find((1ULL << 40) + 100, 10) == nullptr)
          bad.fetch_add(1);
        reads.fetch_add(1, std::memory_order_relaxed);
      } while (!stop.load(std::memory_order_relaxed));
    });
  }
  while (started.load() < 2)
    std::this_thread::yield();
  for (uint64_t round = 0; round < 200; ++round) {
    for (uint64_t k = 0; k < 10; ++k)
      BOOST_REQUIRE(reg.add(0x10000 + (k * 7 % 10) * 0x1000, 0x800 + round, {}));
    for (uint64_t k = 0; k < 10; ++k)
      BOOST_REQUIRE(reg.remove(0x10000 + k * 0x1000));
  }
  stop = true;
  for (auto& t : readers)
    t.join();
  BOOST_CHECK_EQUAL(bad.load(), 0u);
  BOOST_CHECK_GT(reads.load(), 0u);
  BOOST_CHECK_EQUAL(reg.snapshot()->size(), 1u);
  BOOST_CHECK_EQUAL(reg.version(), 1u + 200 * 20);
}

// A linear scan would need about 10^11 comparisons here and hit the timeout; a binary search needs
// a few million. The timeout guards against a hang, not a speed target.
BOOST_AUTO_TEST_CASE(lookup_in_100k_regions, *boost::unit_test::timeout(20)) {
  constexpr uint64_t n = 100000;
  constexpr uint64_t stride = 0x2000, length = 0x1000; // a gap after every region
  std::vector<region> sorted;
  sorted.reserve(n);
  for (uint64_t i = 0; i < n; ++i)
    sorted.push_back(region{0x100000 + i * stride, length, location{location_kind::cpu, uint32_t(i % 4)}, nullptr, nullptr});
  region_table table{std::move(sorted)};
  BOOST_REQUIRE_EQUAL(table.size(), n);
  uint64_t wrong = 0;
  for (int pass = 0; pass < 4; ++pass) {
    for (uint64_t i = 0; i < n; ++i) {
      uint64_t base = 0x100000 + i * stride;
      const region* first = table.find(base, 1);
      const region* last = table.find(base + length - 1, 1);
      const region* whole = table.find(base, length);
      wrong += first == nullptr || first->base != base || first->where.index != i % 4;
      wrong += last == nullptr || last->base != base;
      wrong += whole != first;
      wrong += table.find(base + length, 1) != nullptr;      // in the gap
      wrong += table.find(base + length - 1, 2) != nullptr;  // runs into the gap
      wrong += table.find_base(base) != first;
      wrong += table.find_base(base + 1) != nullptr;
      wrong += table.find_overlap(base - 1, 2) != first;
      wrong += table.find_overlap(base + length, stride - length) != nullptr;
    }
  }
  BOOST_CHECK_EQUAL(wrong, 0u);
  BOOST_CHECK(table.find(0x100000 - 1, 1) == nullptr);
  BOOST_CHECK(table.find(0x100000 + n * stride, 1) == nullptr);

  // The registry itself with a few thousand regions, added out of order.
  region_registry reg;
  constexpr uint64_t m = 3000;
  for (uint64_t i = 0; i < m; ++i) {
    uint64_t k = (i * 1237) % m; // a permutation of 0..m-1 (1237 is prime, m = 2^3 * 3 * 5^3)
    BOOST_REQUIRE(reg.add(0x100000 + k * stride, length, {}));
  }
  auto snap = reg.snapshot();
  BOOST_REQUIRE_EQUAL(snap->size(), m);
  BOOST_CHECK(well_formed(*snap));
  uint64_t missing = 0;
  for (uint64_t k = 0; k < m; ++k)
    missing += !reg.find(0x100000 + k * stride + 17, 100);
  BOOST_CHECK_EQUAL(missing, 0u);
}

// -- fenced regions -----------------------------------------------------------------------------

BOOST_AUTO_TEST_CASE(fence_refuses_what_it_cannot_fence) {
  region_registry reg;
  auto fenced = reg.add(0x80000, 0x1000, location{}, /*fenced=*/true);
  BOOST_REQUIRE(fenced);
  BOOST_REQUIRE(fenced->fences);
  auto plain = reg.add(0x90000, 0x1000, location{});
  BOOST_REQUIRE(plain);
  BOOST_CHECK(!plain->fences);
  const auto t = std::chrono::seconds(5);
  auto expect = [&](caf::error err, errc code, std::initializer_list<std::string_view> parts) {
    BOOST_REQUIRE_MESSAGE(err, "expected " << to_string(code) << ", got success");
    BOOST_CHECK_MESSAGE(code_of(err) == code, "expected " << to_string(code) << ", got " << describe(err));
    for (auto part : parts)
      BOOST_CHECK_MESSAGE(contains(context_of(err), part), describe(err) << " lacks '" << part << "'");
  };
  expect(reg.fence(0x80001, 0x80001, 16, 5, t), errc::unknown_region, {"0x80001", "no registered region"});
  expect(reg.fence(0x90000, 0x90000, 16, 5, t), errc::invalid_argument, {"not registered as fenced"});
  expect(reg.fence(0x80000, 0x80000, 0, 5, t), errc::invalid_argument, {"not inside"});
  expect(reg.fence(0x80000, 0x80ff0, 0x20, 5, t), errc::invalid_argument, {"not inside"}); // past the end
  expect(reg.fence(0x80000, 0x7fff0, 0x20, 5, t), errc::invalid_argument, {"not inside"}); // before the start
  expect(reg.fence(0x80000, 0x90000, 0x10, 5, t), errc::invalid_argument, {"not inside"}); // another region
  expect(reg.fence(0x80000, 0x80010, max_u64, 5, t), errc::invalid_argument, {"not inside"});
  // Nothing was raised by a refused call.
  BOOST_CHECK_EQUAL(fenced->fences->size(), 1u);
  BOOST_CHECK(!reg.fence(0x80000, 0x80000, 0x1000, 5, t));
  BOOST_CHECK(!fenced->fences->admits(0x80000, 1, 5));
  BOOST_CHECK(fenced->fences->admits(0x80000, 0x1000, 6));
  // A region registered again starts with fresh floors (they live as long as the registration).
  BOOST_REQUIRE(reg.remove(0x80000, t));
  auto again = reg.add(0x80000, 0x1000, location{}, true);
  BOOST_REQUIRE(again && again->fences);
  BOOST_CHECK(again->fences->admits(0x80000, 0x1000, 1));
}

BOOST_AUTO_TEST_CASE(fence_raises_the_floor_then_waits_for_every_listener) {
  region_registry reg;
  auto r = reg.add(0xa0000, 0x10000, location{}, true);
  BOOST_REQUIRE(r);
  struct call {
    uint64_t base, addr, len;
    bool raised; // the floor was already up when the listener ran
  };
  std::mutex calls_mutex;
  std::vector<call> calls;
  std::function<void()> held_done; // the second listener answers later, from another thread
  std::atomic<bool> held{false};
  auto first = reg.add_range_fence_listener([&](const region& x, uint64_t addr, uint64_t len, auto done) {
    {
      std::lock_guard<std::mutex> g(calls_mutex);
      calls.push_back({x.base, addr, len, !x.fences->admits(addr, len, 7)});
    }
    done();
    done(); // a second call counts once
  });
  auto second = reg.add_range_fence_listener([&](const region&, uint64_t, uint64_t, auto done) {
    held_done = std::move(done);
    held = true;
  });
  std::atomic<bool> returned{false};
  caf::error result;
  std::thread fencer([&] {
    result = reg.fence(0xa0000, 0xa1000, 0x2000, 7, std::chrono::seconds(60));
    returned = true;
  });
  BOOST_REQUIRE(eventually([&] { return held.load(); }));
  // The first listener answered; the second has not: fence() has not returned.
  BOOST_CHECK(!returned.load());
  {
    std::lock_guard<std::mutex> g(calls_mutex);
    BOOST_REQUIRE_EQUAL(calls.size(), 1u);
    BOOST_CHECK_EQUAL(calls[0].base, 0xa0000u);
    BOOST_CHECK_EQUAL(calls[0].addr, 0xa1000u);
    BOOST_CHECK_EQUAL(calls[0].len, 0x2000u);
    BOOST_CHECK(calls[0].raised);
  }
  std::thread answer([&] { held_done(); });
  answer.join();
  fencer.join();
  BOOST_CHECK(returned.load());
  BOOST_CHECK_MESSAGE(!result, describe(result));
  BOOST_CHECK(!r->fences->admits(0xa1000, 0x2000, 7));
  BOOST_CHECK(r->fences->admits(0xa1000, 0x2000, 8));
  BOOST_CHECK(r->fences->admits(0xa0000, 0x1000, 1)); // outside the fenced range

  // A listener that never answers: errc::busy after the timeout, the floor raised all the same.
  reg.remove_range_fence_listener(first);
  reg.remove_range_fence_listener(second);
  auto mute = reg.add_range_fence_listener([](const region&, uint64_t, uint64_t, auto) {});
  auto err = reg.fence(0xa0000, 0xa4000, 0x100, 9, std::chrono::milliseconds(50));
  BOOST_CHECK_MESSAGE(code_of(err) == errc::busy, describe(err));
  BOOST_CHECK(contains(context_of(err), "did not confirm"));
  BOOST_CHECK(!r->fences->admits(0xa4000, 0x100, 9));
  // Removed listeners are not called any more.
  reg.remove_range_fence_listener(mute);
  BOOST_CHECK(!reg.fence(0xa0000, 0xa5000, 0x100, 9, std::chrono::milliseconds(50)));
  BOOST_CHECK_EQUAL(calls.size(), 1u);
}

BOOST_AUTO_TEST_CASE(fence_waits_for_a_same_process_copy_in_progress) {
  region_registry reg;
  auto r = reg.add(0xb0000, 0x1000, location{}, true);
  BOOST_REQUIRE(r);
  std::atomic<int> listener_calls{0};
  auto id = reg.add_range_fence_listener([&](const region&, uint64_t, uint64_t, auto done) {
    ++listener_calls;
    done();
  });
  std::atomic<pid_t> fencer_id{0};
  std::atomic<bool> returned{false};
  caf::error result;
  std::thread fencer;
  {
    // A copy admitted with token 3 is in progress (as the local path holds it around its memcpy).
    memory::fence_map::access copy(*r->fences, 0xb0100, 64, 3);
    BOOST_REQUIRE(copy);
    fencer = std::thread([&] {
      fencer_id = test::current_thread_id();
      result = reg.fence(0xb0000, 0xb0000, 0x1000, 3, std::chrono::seconds(60));
      returned = true;
    });
    BOOST_REQUIRE(eventually([&] {
      return fencer_id.load() != 0 && test::in_futex_wait(fencer_id.load());
    }));
    BOOST_CHECK(!returned.load());
    BOOST_CHECK_EQUAL(listener_calls.load(), 0); // the raise comes first, and it waits
  }
  fencer.join();
  BOOST_CHECK(returned.load());
  BOOST_CHECK_MESSAGE(!result, describe(result));
  BOOST_CHECK_EQUAL(listener_calls.load(), 1);
  BOOST_CHECK(!memory::fence_map::access(*r->fences, 0xb0100, 64, 3));
  BOOST_CHECK(memory::fence_map::access(*r->fences, 0xb0100, 64, 4));
  reg.remove_range_fence_listener(id);
}

// -- segment_descriptor -------------------------------------------------------------------------

namespace {

memory::segment_descriptor three_regions() {
  memory::segment_descriptor d;
  d.name = "node-a:12345";
  d.regions = {{1000, 1000, "cpu:0", 11}, {2000, 500, "cpu:1", 22}, {5000, 100, "cuda:0", 33}};
  d.endpoints = {{"local", ""}, {"tcp", "tcp://10.0.0.2:41000"}};
  return d;
}

} // namespace

BOOST_AUTO_TEST_CASE(descriptor_find_and_endpoint) {
  auto d = three_regions();
  BOOST_CHECK(!d.validate());
  auto* a = d.find(1000, 1);
  BOOST_REQUIRE(a != nullptr);
  BOOST_CHECK_EQUAL(a->remote_key, 11u);
  BOOST_CHECK_EQUAL(d.find(1999, 1)->remote_key, 11u);
  BOOST_CHECK_EQUAL(d.find(2000, 500)->remote_key, 22u);
  BOOST_CHECK_EQUAL(d.find(5099, 1)->remote_key, 33u);
  BOOST_CHECK(d.find(1999, 2) == nullptr); // crosses into the adjacent region
  BOOST_CHECK(d.find(2400, 101) == nullptr);
  BOOST_CHECK(d.find(2500, 1) == nullptr);
  BOOST_CHECK(d.find(999, 1) == nullptr);
  BOOST_CHECK(d.find(5100, 1) == nullptr);
  BOOST_CHECK(d.find(1000, 0) == nullptr);
  BOOST_CHECK(d.find(1500, max_u64) == nullptr);
  BOOST_REQUIRE(d.endpoint("tcp") != nullptr);
  BOOST_CHECK_EQUAL(d.endpoint("tcp")->address, "tcp://10.0.0.2:41000");
  BOOST_CHECK(d.endpoint("rdma") == nullptr);
  memory::segment_descriptor empty;
  empty.name = "x:1";
  BOOST_CHECK(empty.find(0, 1) == nullptr);
  BOOST_CHECK(!empty.validate());
}

BOOST_AUTO_TEST_CASE(descriptor_validate_rejects) {
  auto expect_malformed = [](const memory::segment_descriptor& d, std::string_view what,
                             std::initializer_list<std::string_view> parts) {
    BOOST_TEST_CONTEXT(what) {
      auto err = d.validate();
      BOOST_REQUIRE_MESSAGE(err, "accepted");
      BOOST_CHECK(code_of(err) == errc::malformed_frame);
      auto text = context_of(err);
      for (auto part : parts)
        BOOST_CHECK_MESSAGE(contains(text, part), "message '" << text << "' lacks '" << part << "'");
    }
  };
  {
    auto d = three_regions();
    d.name.clear();
    expect_malformed(d, "empty name", {"name"});
    d.name = std::string(257, 'n');
    expect_malformed(d, "long name", {"name"});
  }
  {
    auto d = three_regions();
    d.regions[1].base = 1999; // overlaps region 0 by one byte
    expect_malformed(d, "overlap", {"node-a:12345", "region 1"});
  }
  {
    auto d = three_regions();
    std::swap(d.regions[0], d.regions[2]); // unsorted, though disjoint
    expect_malformed(d, "unsorted", {"node-a:12345", "region 1"});
  }
  {
    auto d = three_regions();
    d.regions[2].length = 0;
    expect_malformed(d, "empty region", {"region 2"});
  }
  {
    auto d = three_regions();
    d.regions.push_back({max_u64 - 5, 10, "cpu:0", 0});
    expect_malformed(d, "wrap-around", {"region 3"});
  }
  {
    auto d = three_regions();
    d.regions.insert(d.regions.begin() + 1, d.regions[0]); // duplicate
    expect_malformed(d, "duplicate", {"region 1"});
  }
  {
    // Adjacent and a region at the very bottom are fine.
    memory::segment_descriptor d;
    d.name = "n:1";
    d.regions = {{0, 10, "cpu:0", 0}, {10, 10, "cpu:0", 0}, {20, 1, "cpu:0", 0}};
    BOOST_CHECK(!d.validate());
    BOOST_CHECK(d.find(9, 2) == nullptr);
    BOOST_CHECK(d.find(0, 10) != nullptr);
  }
}
