#define BOOST_TEST_MODULE memory_lifetime_test
#include <boost/test/unit_test.hpp>

// Memory that is gone stays gone (issue 6, item 4), between engines of one process:
//   - after engine B shuts down, engine A cannot reach B's memory: tasks naming B fail with a
//     clear error and B's memory is not touched;
//   - unregister_memory is atomic while copies between the engines run on other threads: once it
//     returns success nothing touches the region (the test makes it inaccessible at once, so a
//     late copy would crash the test), and when it fails the region is still registered.

#include <atomic>
#include <cstring>
#include <thread>
#include <vector>

#include <sys/mman.h>

#include "actors/runtime.hpp"
#include "actors/transfer_engine.hpp"
#include "config/log.hpp"
#include "tests/support/checks.hpp"

using namespace kvferry;
using namespace std::chrono_literals;
using kvferry::test::contains;
using kvferry::test::why;

namespace {

struct quiet_logs {
  quiet_logs() { log::set_level("error"); }
};

/// An anonymous mapping that can be made inaccessible (never unmapped before the test ends, so
/// its addresses are not reused by a later mapping).
struct mapping {
  explicit mapping(size_t n) : size(n) {
    void* p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    BOOST_REQUIRE(p != MAP_FAILED);
    data = static_cast<uint8_t*>(p);
  }
  ~mapping() { ::munmap(data, size); }
  mapping(const mapping&) = delete;
  mapping& operator=(const mapping&) = delete;
  /// Any access from now on faults.
  void revoke() {
    ::madvise(data, size, MADV_DONTNEED);
    ::mprotect(data, size, PROT_NONE);
  }
  size_t size;
  uint8_t* data = nullptr;
};

std::unique_ptr<transfer_engine> make_engine(const std::shared_ptr<runtime>& rt,
                                             const std::string& name) {
  config::settings s;
  s.task_deadline = 30s;
  auto e = transfer_engine::create(rt, s, {.segment_name = name});
  BOOST_REQUIRE_MESSAGE(e, why(e));
  return std::move(*e);
}

} // namespace

BOOST_TEST_GLOBAL_FIXTURE(quiet_logs);

BOOST_AUTO_TEST_CASE(a_shut_down_engine_memory_is_unreachable) {
  auto rt = runtime::create({});
  BOOST_REQUIRE(rt);
  auto a = make_engine(*rt, "a");
  auto b = make_engine(*rt, "b");
  std::vector<uint8_t> mine(64 << 10, 0x11), theirs(64 << 10, 0xaa);
  BOOST_REQUIRE(!a->register_memory(mine.data(), mine.size()));
  BOOST_REQUIRE(!b->register_memory(theirs.data(), theirs.size()));
  auto seg = a->open_segment("b");
  BOOST_REQUIRE_MESSAGE(seg, why(seg));
  b->shutdown();

  auto batch = a->allocate_batch(2);
  BOOST_REQUIRE(batch);
  transfer_request rq{opcode::write, mine.data(), *seg, reinterpret_cast<uint64_t>(theirs.data()),
                      4096};
  auto submitted = a->submit(*batch, {&rq, 1});
  BOOST_REQUIRE_MESSAGE(!submitted, "a WRITE into a shut-down engine's memory was accepted");
  BOOST_CHECK(code_of(submitted.error()) == errc::peer_unreachable);
  BOOST_CHECK_MESSAGE(contains(context_of(submitted.error()), "'b' was shut down"),
                      describe(submitted.error()));
  rq.op = opcode::read;
  BOOST_CHECK(!a->submit(*batch, {&rq, 1}));
  BOOST_CHECK(!a->free_batch(*batch));
  for (auto byte : theirs)
    BOOST_REQUIRE_EQUAL(byte, 0xaa);
  // Re-opening it finds nothing either.
  auto again = a->open_segment("b");
  BOOST_CHECK(!again);
}

BOOST_AUTO_TEST_CASE(unregister_is_atomic_while_copies_run) {
  auto rt = runtime::create({});
  BOOST_REQUIRE(rt);
  auto a = make_engine(*rt, "a");
  auto b = make_engine(*rt, "b");
  const size_t region = 1 << 20;
  mapping local(region);
  std::memset(local.data, 0x42, region);
  BOOST_REQUIRE(!a->register_memory(local.data, region));
  auto seg = a->open_segment("b");
  BOOST_REQUIRE(seg);

  // B's memory comes and goes; each region, once unregistered, becomes inaccessible at once.
  constexpr int cycles = 60;
  std::vector<std::unique_ptr<mapping>> regions;
  for (int i = 0; i < cycles; ++i)
    regions.push_back(std::make_unique<mapping>(region));
  std::atomic<uint64_t> current{0};
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> completed{0}, refused{0}, failed{0};

  std::thread copier([&] {
    while (!stop.load()) {
      auto base = current.load();
      if (base == 0)
        continue;
      std::vector<transfer_request> rqs;
      for (uint64_t k = 0; k < 8; ++k)
        rqs.push_back({k % 2 ? opcode::read : opcode::write, local.data + k * 65536, *seg,
                       base + k * 65536, 65536});
      auto batch = a->allocate_batch(rqs.size());
      if (!batch)
        continue;
      auto first = a->submit(*batch, rqs);
      if (!first) {
        ++refused; // the region left B's table between our load and the submit
      } else {
        (void) a->wait(*batch, 30s);
        for (uint32_t i = 0; i < rqs.size(); ++i) {
          auto st = a->status(*batch, *first + i);
          if (st && st->state == task_state::completed)
            ++completed;
          else
            ++failed;
        }
      }
      (void) a->free_batch(*batch);
    }
  });

  int unregistered = 0;
  for (int i = 0; i < cycles; ++i) {
    auto& r = *regions[i];
    BOOST_REQUIRE(!b->register_memory(r.data, region));
    // Make the copier (re)open the segment so its descriptor lists the new region.
    BOOST_REQUIRE(a->open_segment("b"));
    current = reinterpret_cast<uint64_t>(r.data);
    // Let some copies start on this region (bounded wait, not a timing assumption).
    auto seen = completed.load() + failed.load() + refused.load();
    (void) kvferry::test::eventually(
      [&] { return completed.load() + failed.load() + refused.load() > seen; }, 5s);
    auto err = b->unregister_memory(r.data);
    BOOST_CHECK_MESSAGE(!err, describe(err)); // copies are short: they let go within the timeout
    if (!err) {
      // Nothing touches it from here on: a late copy would fault.
      r.revoke();
      ++unregistered;
    }
  }
  stop = true;
  copier.join();
  BOOST_TEST_MESSAGE("regions unregistered " << unregistered << ", tasks completed "
                                             << completed.load() << ", failed " << failed.load()
                                             << ", submits refused " << refused.load());
  BOOST_CHECK_EQUAL(unregistered, cycles);
  BOOST_CHECK_GT(completed.load(), 0u);
  a->shutdown();
  b->shutdown();
}
