#define BOOST_TEST_MODULE engine_api_test
#include <boost/test/unit_test.hpp>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <sys/syscall.h>
#include <unistd.h>

#include "tests/support/checks.hpp"
#include "actors/runtime.hpp"
#include "actors/transfer_engine.hpp"
#include "config/error.hpp"
#include "config/settings.hpp"
#include "memory/device.hpp"
#include "tools/pattern.hpp"
#include "tests/support/fault_path.hpp"

// The public API of transfer_engine: every bad call answers an error value with the right code and
// a message naming the offending thing; the semantics of READ/WRITE, wait, free, deadlines,
// retries, concurrency and shutdown.

using namespace kvferry;
using namespace std::chrono_literals;
using transport::fault_path;

namespace {

using kvferry::test::why;
using kvferry::test::contains;

void expect_error(const caf::error& err, errc code, std::initializer_list<std::string_view> parts) {
  BOOST_REQUIRE_MESSAGE(err, "expected " << to_string(code) << ", the call succeeded");
  BOOST_CHECK_MESSAGE(code_of(err) == code,
                      "expected " << to_string(code) << ", got " << describe(err));
  auto text = context_of(err);
  for (auto part : parts)
    BOOST_CHECK_MESSAGE(contains(text, part), "message '" << text << "' lacks '" << part << "'");
}

template <class T>
void expect_error(const caf::expected<T>& r, errc code, std::initializer_list<std::string_view> parts) {
  BOOST_REQUIRE_MESSAGE(!r, "expected " << to_string(code) << ", the call succeeded");
  expect_error(r.error(), code, parts);
}

std::string hex(const void* p) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "0x%llx",
                static_cast<unsigned long long>(reinterpret_cast<uintptr_t>(p)));
  return buf;
}

/// Polls `pred` until it holds or `timeout` passes.
bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds timeout = 10s) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until)
      return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

/// The calling thread's id, as /proc/self/task names it.
pid_t this_thread_id() { return static_cast<pid_t>(::syscall(SYS_gettid)); }

/// True while thread `tid` of this process is blocked in a futex wait: how a thread waiting on a
/// condition variable looks from outside (/proc/self/task/TID/syscall starts with the number of
/// the system call the thread is blocked in; "running" or -1 otherwise).
bool in_futex_wait(pid_t tid) {
  std::ifstream f("/proc/self/task/" + std::to_string(tid) + "/syscall");
  long number = -1;
  return (f >> number) && number == SYS_futex;
}

/// Starts a thread that calls wait(batch) and returns once that thread is blocked inside wait().
/// After announcing itself the thread's only futex wait on its way is the batch's condition
/// variable: the batch map's lock is taken shared and nobody takes it exclusively meanwhile, and
/// the board's mutex is uncontended while the batch's tasks are held at the data path. So "blocked
/// in a futex" means "past the batch lookup, waiting", whatever the machine's speed.
/// (A std::jthread: a failed REQUIRE in the caller still joins it before the engine goes away.)
std::jthread start_blocked_waiter(transfer_engine& engine, batch_id batch,
                                  std::optional<caf::expected<batch_summary>>& waited) {
  BOOST_REQUIRE_MESSAGE(std::ifstream("/proc/self/task/" + std::to_string(this_thread_id())
                                      + "/syscall").good(),
                        "this test needs /proc/self/task/TID/syscall");
  auto tid = std::make_shared<std::atomic<pid_t>>(0);
  std::jthread waiter([&engine, batch, &waited, tid] {
    tid->store(this_thread_id());
    waited.emplace(engine.wait(batch, 60s));
  });
  BOOST_CHECK_MESSAGE(eventually([&] {
                        auto id = tid->load();
                        return id != 0 && in_futex_wait(id);
                      }, 60s),
                      "the waiter never blocked inside wait()");
  return waiter;
}

using buffer = kvferry::test::aligned_buffer;

constexpr size_t buffer_size = 1 << 20;

/// Two engines "a" and "b" on one runtime with the real same-process path; "a" registers `src`,
/// "b" registers `dst`, and "a" has opened "b".
struct two_engines {
  buffer src{buffer_size};
  buffer dst{buffer_size};
  std::shared_ptr<runtime> rt;
  std::unique_ptr<transfer_engine> a;
  std::unique_ptr<transfer_engine> b;
  segment_id to_b = 0;

  two_engines() {
    auto r = runtime::create({});
    BOOST_REQUIRE(r);
    rt = *r;
    engine_options oa;
    oa.segment_name = "a";
    auto ea = transfer_engine::create(rt, config::settings{}, oa);
    BOOST_REQUIRE_MESSAGE(ea, why(ea));
    a = std::move(*ea);
    engine_options ob;
    ob.segment_name = "b";
    auto eb = transfer_engine::create(rt, config::settings{}, ob);
    BOOST_REQUIRE_MESSAGE(eb, why(eb));
    b = std::move(*eb);
    BOOST_REQUIRE(!a->register_memory(src.data, src.size, "cpu:0"));
    BOOST_REQUIRE(!b->register_memory(dst.data, dst.size, "cpu:0"));
    auto id = a->open_segment("b");
    BOOST_REQUIRE_MESSAGE(id, why(id));
    to_b = *id;
  }
  ~two_engines() {
    a.reset();
    b.reset();
  }

  transfer_request write(size_t src_offset, size_t dst_offset, uint64_t length) const {
    return {transport::opcode::write, src.data + src_offset, to_b, dst.addr(dst_offset), length};
  }
  transfer_request read(size_t src_offset, size_t dst_offset, uint64_t length) const {
    return {transport::opcode::read, src.data + src_offset, to_b, dst.addr(dst_offset), length};
  }
};

/// One engine "f" whose only data paths are manual fault paths; it targets its own segment.
struct fault_engine {
  buffer local{buffer_size};
  buffer remote{buffer_size};
  std::shared_ptr<runtime> rt;
  std::vector<std::shared_ptr<fault_path>> paths;
  std::unique_ptr<transfer_engine> engine;
  segment_id self = 0;

  explicit fault_engine(size_t path_count = 1, config::settings settings = {}) {
    auto r = runtime::create({});
    BOOST_REQUIRE(r);
    rt = *r;
    engine_options options;
    options.segment_name = "f";
    for (size_t i = 0; i < path_count; ++i) {
      paths.push_back(std::make_shared<fault_path>(fault_path::manual));
      options.data_paths.push_back(paths.back());
    }
    auto e = transfer_engine::create(rt, settings, options);
    BOOST_REQUIRE_MESSAGE(e, why(e));
    engine = std::move(*e);
    BOOST_REQUIRE(!engine->register_memory(local.data, local.size, "cpu:0"));
    BOOST_REQUIRE(!engine->register_memory(remote.data, remote.size, "cpu:0"));
    auto id = engine->open_segment("f");
    BOOST_REQUIRE_MESSAGE(id, why(id));
    self = *id;
  }
  ~fault_engine() { engine.reset(); }

  transfer_request request(uint64_t offset, uint64_t length,
                           transport::opcode op = transport::opcode::write) const {
    return {op, local.data + offset, self, remote.addr(offset), length};
  }

  /// Slices held by all paths.
  size_t held() const {
    size_t n = 0;
    for (const auto& p : paths)
      n += p->held().size();
    return n;
  }
  bool await_held(size_t n) {
    return eventually([&] { return held() == n; });
  }
  coordinator_stats stats() const {
    auto s = engine->stats();
    BOOST_REQUIRE_MESSAGE(s, why(s));
    return *s;
  }
};

} // namespace

// == bad calls ===================================================================================

BOOST_AUTO_TEST_CASE(unknown_batch_never_allocated) {
  two_engines t;
  auto rq = t.write(0, 0, 16);
  expect_error(t.a->submit(4242, std::span(&rq, 1)), errc::unknown_batch, {"4242"});
  expect_error(t.a->status(4242, 0), errc::unknown_batch, {"4242"});
  expect_error(t.a->batch_status(4242), errc::unknown_batch, {"4242"});
  expect_error(t.a->wait(4242, 10ms), errc::unknown_batch, {"4242"});
  expect_error(t.a->free_batch(4242), errc::unknown_batch, {"4242"});
  // A batch id of another engine is unknown here.
  auto other = t.b->allocate_batch(1);
  BOOST_REQUIRE(other);
  auto mine = t.a->allocate_batch(1);
  BOOST_REQUIRE(mine);
  BOOST_REQUIRE(!t.a->free_batch(*mine));
  expect_error(t.a->status(*mine, 0), errc::unknown_batch, {std::to_string(*mine)});
}

BOOST_AUTO_TEST_CASE(batch_capacity_bounds) {
  two_engines t;
  expect_error(t.a->allocate_batch(0), errc::invalid_argument, {"capacity 0", "expected 1 to"});
  expect_error(t.a->allocate_batch((1u << 20) + 1), errc::invalid_argument,
               {"capacity 1048577", "expected 1 to 1048576"});
  auto largest = t.a->allocate_batch(1u << 20);
  BOOST_REQUIRE_MESSAGE(largest, why(largest));
  BOOST_CHECK(!t.a->free_batch(*largest));
  // Batch ids are not reused.
  auto x = t.a->allocate_batch(1);
  auto y = t.a->allocate_batch(1);
  BOOST_REQUIRE(x && y);
  BOOST_CHECK_NE(*x, *y);
  BOOST_CHECK_NE(*x, *largest);
}

BOOST_AUTO_TEST_CASE(batch_overflow) {
  two_engines t;
  auto batch = t.a->allocate_batch(3);
  BOOST_REQUIRE(batch);
  std::vector<transfer_request> four(4, t.write(0, 0, 8));
  expect_error(t.a->submit(*batch, four), errc::batch_full, {"4 requests", "capacity 3"});
  // Cumulative: 2 fit, then 2 more do not, then 1 does.
  std::vector<transfer_request> two(2, t.write(0, 0, 8));
  auto first = t.a->submit(*batch, two);
  BOOST_REQUIRE_MESSAGE(first, why(first));
  BOOST_CHECK_EQUAL(*first, 0u);
  expect_error(t.a->submit(*batch, two), errc::batch_full,
               {"capacity 3", "2 tasks already submitted", "2 more do not fit"});
  auto third = t.a->submit(*batch, std::span(two.data(), 1));
  BOOST_REQUIRE_MESSAGE(third, why(third));
  BOOST_CHECK_EQUAL(*third, 2u);
  expect_error(t.a->submit(*batch, std::span(two.data(), 1)), errc::batch_full,
               {"3 tasks already submitted"});
  auto s = t.a->wait(*batch, 10s);
  BOOST_REQUIRE_MESSAGE(s, why(s));
  BOOST_CHECK_EQUAL(s->tasks, 3u);
  BOOST_CHECK_EQUAL(s->completed, 3u);
  // No requests at all.
  expect_error(t.a->submit(*batch, std::span<const transfer_request>{}), errc::invalid_argument,
               {"no requests"});
}

BOOST_AUTO_TEST_CASE(bad_local_ranges) {
  two_engines t;
  auto batch = t.a->allocate_batch(8);
  BOOST_REQUIRE(batch);
  std::vector<uint8_t> unregistered(4096);
  auto rq = t.write(0, 0, 64);
  rq.source = unregistered.data();
  expect_error(t.a->submit(*batch, std::span(&rq, 1)), errc::unregistered_memory,
               {hex(unregistered.data()), "request 0", "segment 'a'"});
  // Crosses the end of the registered region by one byte.
  rq = t.write(buffer_size - 63, 0, 64);
  expect_error(t.a->submit(*batch, std::span(&rq, 1)), errc::unregistered_memory,
               {hex(t.src.data + buffer_size - 63), "+64"});
  // Starts one byte before it.
  rq = t.write(0, 0, 64);
  rq.source = t.src.data - 1;
  expect_error(t.a->submit(*batch, std::span(&rq, 1)), errc::unregistered_memory,
               {hex(t.src.data - 1)});
  // Null source.
  rq = t.write(0, 0, 64);
  rq.source = nullptr;
  expect_error(t.a->submit(*batch, std::span(&rq, 1)), errc::unregistered_memory, {"[0x0,"});
  // Memory registered by "b" is not local memory of "a".
  rq = t.write(0, 0, 64);
  rq.source = t.dst.data;
  expect_error(t.a->submit(*batch, std::span(&rq, 1)), errc::unregistered_memory, {hex(t.dst.data)});
  // Exactly the whole region is fine.
  rq = t.write(0, 0, buffer_size);
  BOOST_CHECK(t.a->submit(*batch, std::span(&rq, 1)));
}

BOOST_AUTO_TEST_CASE(bad_request_fields) {
  two_engines t;
  auto batch = t.a->allocate_batch(8);
  BOOST_REQUIRE(batch);
  auto rq = t.write(0, 0, 0);
  expect_error(t.a->submit(*batch, std::span(&rq, 1)), errc::invalid_argument,
               {"request 0", "length is 0"});
  rq = t.write(0, 0, 16);
  rq.op = static_cast<transport::opcode>(7);
  expect_error(t.a->submit(*batch, std::span(&rq, 1)), errc::invalid_argument,
               {"opcode 7", "READ", "WRITE"});
  rq = t.write(0, 0, 16);
  rq.target_id = 99;
  expect_error(t.a->submit(*batch, std::span(&rq, 1)), errc::unknown_segment, {"segment id 99"});
  expect_error(t.a->segment_descriptor(99), errc::unknown_segment, {"99"});
}

BOOST_AUTO_TEST_CASE(remote_out_of_range) {
  two_engines t;
  auto batch = t.a->allocate_batch(8);
  BOOST_REQUIRE(batch);
  // Past the end by one byte.
  auto rq = t.write(0, buffer_size - 15, 16);
  expect_error(t.a->submit(*batch, std::span(&rq, 1)), errc::out_of_range,
               {hex(t.dst.data + buffer_size - 15), "+16", "segment 'b'"});
  // Entirely past the end.
  rq = t.write(0, 0, 16);
  rq.target_offset = t.dst.addr() + buffer_size;
  expect_error(t.a->submit(*batch, std::span(&rq, 1)), errc::out_of_range, {"segment 'b'"});
  // Starts before the region.
  rq = t.write(0, 0, 16);
  rq.target_offset = t.dst.addr() - 1;
  expect_error(t.a->submit(*batch, std::span(&rq, 1)), errc::out_of_range,
               {hex(t.dst.data - 1), "segment 'b'"});
  // An "offset" that is not an address inside the segment at all.
  rq = t.write(0, 0, 16);
  rq.target_offset = 0;
  expect_error(t.a->submit(*batch, std::span(&rq, 1)), errc::out_of_range, {"[0x0,"});
  // Memory of "a" is not inside segment "b".
  rq = t.write(0, 0, 16);
  rq.target_offset = t.src.addr();
  expect_error(t.a->submit(*batch, std::span(&rq, 1)), errc::out_of_range, {hex(t.src.data)});
  // The last byte is fine.
  rq = t.write(0, buffer_size - 1, 1);
  BOOST_CHECK(t.a->submit(*batch, std::span(&rq, 1)));
}

BOOST_AUTO_TEST_CASE(submit_is_all_or_nothing) {
  two_engines t;
  auto batch = t.a->allocate_batch(4);
  BOOST_REQUIRE(batch);
  std::vector<transfer_request> rqs{t.write(0, 0, 8), t.write(8, 8, 8), t.write(16, 16, 0)};
  expect_error(t.a->submit(*batch, rqs), errc::invalid_argument, {"request 2", "length is 0"});
  auto s = t.a->batch_status(*batch);
  BOOST_REQUIRE(s);
  BOOST_CHECK_EQUAL(s->tasks, 0u);
  expect_error(t.a->status(*batch, 0), errc::unknown_task, {"task 0", "0 submitted"});
  // The rejected call reserved nothing: all four slots are still free.
  std::vector<transfer_request> good(4, t.write(0, 0, 8));
  auto first = t.a->submit(*batch, good);
  BOOST_REQUIRE_MESSAGE(first, why(first));
  BOOST_CHECK_EQUAL(*first, 0u);
  auto stats = t.a->stats();
  BOOST_REQUIRE(stats);
  BOOST_CHECK_EQUAL(stats->tasks_submitted, 4u);
}

BOOST_AUTO_TEST_CASE(free_twice_and_calls_after_free) {
  two_engines t;
  auto batch = t.a->allocate_batch(2);
  BOOST_REQUIRE(batch);
  auto rq = t.write(0, 0, 32);
  BOOST_REQUIRE(t.a->submit(*batch, std::span(&rq, 1)));
  BOOST_REQUIRE(t.a->wait(*batch, 10s));
  BOOST_REQUIRE(!t.a->free_batch(*batch));
  auto id = std::to_string(*batch);
  expect_error(t.a->free_batch(*batch), errc::unknown_batch, {"free batch " + id, "already freed"});
  expect_error(t.a->submit(*batch, std::span(&rq, 1)), errc::unknown_batch, {id});
  expect_error(t.a->status(*batch, 0), errc::unknown_batch, {id});
  expect_error(t.a->batch_status(*batch), errc::unknown_batch, {id});
  expect_error(t.a->wait(*batch, 10ms), errc::unknown_batch, {id});
}

BOOST_AUTO_TEST_CASE(status_of_unknown_task) {
  two_engines t;
  auto batch = t.a->allocate_batch(10);
  BOOST_REQUIRE(batch);
  std::vector<transfer_request> rqs(2, t.write(0, 0, 32));
  BOOST_REQUIRE(t.a->submit(*batch, rqs));
  BOOST_REQUIRE(t.a->wait(*batch, 10s));
  BOOST_CHECK(t.a->status(*batch, 1));
  // Inside the capacity but never submitted.
  expect_error(t.a->status(*batch, 2), errc::unknown_task, {"task 2", "2 submitted"});
  expect_error(t.a->status(*batch, 9), errc::unknown_task, {"task 9"});
  expect_error(t.a->status(*batch, 4000000000u), errc::unknown_task, {"task 4000000000"});
}

BOOST_AUTO_TEST_CASE(memory_registration_errors) {
  two_engines t;
  // Overlapping the registered source buffer: inside, across its start, exact.
  expect_error(t.a->register_memory(t.src.data + 100, 10), errc::overlapping_region,
               {hex(t.src.data), "overlaps"});
  expect_error(t.a->register_memory(t.src.data - 10, 20), errc::overlapping_region,
               {hex(t.src.data)});
  expect_error(t.a->register_memory(t.src.data, t.src.size), errc::overlapping_region, {"overlaps"});
  // Another engine may register the same memory: segments are separate.
  BOOST_CHECK(!t.b->register_memory(t.src.data, 64));
  BOOST_CHECK(!t.b->unregister_memory(t.src.data));

  expect_error(t.a->unregister_memory(t.src.data + 1), errc::unknown_region, {hex(t.src.data + 1)});
  expect_error(t.a->unregister_memory(t.dst.data), errc::unknown_region, {hex(t.dst.data)});
  expect_error(t.a->register_memory(nullptr, 64), errc::invalid_argument, {"null"});
  std::vector<uint8_t> spare(256);
  expect_error(t.a->register_memory(spare.data(), 0), errc::invalid_argument, {"length is 0"});
  expect_error(t.a->register_memory(spare.data(), 64, "gpu:0"), errc::invalid_argument, {"'gpu:0'"});
  expect_error(t.a->register_memory(spare.data(), 64, "cpu:x"), errc::invalid_argument, {"'cpu:x'"});
  // Without a usable GPU (or without CUDA in this build) cuda:N memory is refused; a GPU that does
  // not exist is refused everywhere.
  if (memory::cuda_device_count() == 0)
    expect_error(t.a->register_memory(spare.data(), 64, "cuda:0"), errc::not_supported, {"cuda:0"});
  else
    BOOST_TEST_MESSAGE("a GPU is present: cuda:0 is usable here, not checked");
  expect_error(t.a->register_memory(spare.data(), 64, "cuda:1023"), errc::not_supported, {"cuda:1023"});
  // Nothing of that was registered: the spare buffer can be registered and unregistered now.
  BOOST_CHECK(!t.a->register_memory(spare.data(), 64, "*"));
  BOOST_CHECK(!t.a->unregister_memory(spare.data()));
  expect_error(t.a->unregister_memory(spare.data()), errc::unknown_region, {hex(spare.data())});
}

BOOST_AUTO_TEST_CASE(segment_errors) {
  two_engines t;
  expect_error(t.a->open_segment("nosuch:1234"), errc::unknown_segment, {"'nosuch:1234'"});
  expect_error(t.a->open_segment(""), errc::invalid_argument, {"empty"});
  // Opening again returns the same id; opening itself works too.
  auto again = t.a->open_segment("b");
  BOOST_REQUIRE(again);
  BOOST_CHECK_EQUAL(*again, t.to_b);
  auto self = t.a->open_segment("a");
  BOOST_REQUIRE(self);
  BOOST_CHECK_NE(*self, t.to_b);
  auto desc = t.a->segment_descriptor(t.to_b);
  BOOST_REQUIRE(desc);
  BOOST_CHECK_EQUAL(desc->name, "b");
  BOOST_REQUIRE_EQUAL(desc->regions.size(), 1u);
  BOOST_CHECK_EQUAL(desc->regions[0].base, t.dst.addr());
  BOOST_CHECK_EQUAL(desc->regions[0].length, buffer_size);
  expect_error(transfer_engine::create(nullptr, config::settings{}, {}), errc::invalid_argument,
               {"runtime"});
}

// A refused duplicate name must leave the live engine of that name intact (a failed start once
// removed the existing engine's directory entry on its way out).
BOOST_AUTO_TEST_CASE(duplicate_segment_name_is_refused_without_harm) {
  two_engines t;
  // Move bytes first so that both workers of "a" have connected to "b" (the connects are
  // asynchronous; one still in flight when "b" leaves the directory would fail too).
  auto warm = t.a->allocate_batch(2);
  BOOST_REQUIRE(warm);
  std::vector<transfer_request> two{t.write(0, 0, 8), t.write(8, 8, 8)};
  BOOST_REQUIRE(t.a->submit(*warm, two));
  auto warmed = t.a->wait(*warm, 10s);
  BOOST_REQUIRE_MESSAGE(warmed, why(warmed));
  BOOST_REQUIRE_EQUAL(warmed->completed, 2u);
  // A second engine with a name already used in this process is refused.
  engine_options o;
  o.segment_name = "b";
  expect_error(transfer_engine::create(t.rt, config::settings{}, o), errc::invalid_argument, {"'b'"});
  // The refused engine leaves the existing "b" alone: it can still be opened and written to.
  BOOST_CHECK_MESSAGE(t.a->open_segment("b"), "segment 'b' vanished after a refused duplicate");
  auto batch = t.a->allocate_batch(1);
  BOOST_REQUIRE(batch);
  tools::fill_pattern(t.src.data, 100, 5);
  auto rq = t.write(0, 0, 100);
  BOOST_REQUIRE(t.a->submit(*batch, std::span(&rq, 1)));
  auto s = t.a->wait(*batch, 10s);
  BOOST_REQUIRE_MESSAGE(s, why(s));
  BOOST_CHECK_EQUAL(s->completed, 1u);
  BOOST_CHECK_EQUAL(tools::check_pattern(t.dst.data, 100, 5), 100u);
}

// == semantics ===================================================================================

BOOST_AUTO_TEST_CASE(write_and_read_are_byte_exact) {
  two_engines t;
  // WRITE a -> b: several tasks, odd lengths and offsets, one larger than many slices.
  struct piece { size_t src_offset, dst_offset; uint64_t length; };
  const piece pieces[] = {{0, 0, 1}, {1, 3, 4095}, {4097, 10001, 65537}, {100003, 200005, 700001}};
  std::vector<transfer_request> writes;
  for (size_t i = 0; i < std::size(pieces); ++i) {
    tools::fill_pattern(t.src.data + pieces[i].src_offset, pieces[i].length, 10 + i);
    writes.push_back(t.write(pieces[i].src_offset, pieces[i].dst_offset, pieces[i].length));
  }
  auto batch = t.a->allocate_batch(2 * writes.size());
  BOOST_REQUIRE(batch);
  BOOST_REQUIRE(t.a->submit(*batch, writes));
  auto s = t.a->wait(*batch, 10s);
  BOOST_REQUIRE_MESSAGE(s, why(s));
  BOOST_CHECK_EQUAL(s->completed, writes.size());
  uint64_t total = 0;
  for (size_t i = 0; i < std::size(pieces); ++i) {
    auto st = t.a->status(*batch, static_cast<uint32_t>(i));
    BOOST_REQUIRE(st);
    BOOST_CHECK(st->state == task_state::completed);
    BOOST_CHECK_EQUAL(st->transferred_bytes, pieces[i].length);
    BOOST_CHECK(st->code == errc::none);
    BOOST_CHECK_EQUAL(tools::check_pattern(t.dst.data + pieces[i].dst_offset, pieces[i].length, 10 + i),
                      pieces[i].length);
    total += pieces[i].length;
  }
  BOOST_CHECK_EQUAL(s->transferred_bytes, total);
  BOOST_CHECK_EQUAL(t.dst.data[pieces[1].dst_offset - 1], 0); // around a piece: untouched
  BOOST_CHECK_EQUAL(t.dst.data[pieces[1].dst_offset + pieces[1].length], 0);

  // READ b -> a into a cleared source buffer, into the same batch.
  std::memset(t.src.data, 0, t.src.size);
  std::vector<transfer_request> reads;
  for (const auto& p : pieces)
    reads.push_back(t.read(p.src_offset, p.dst_offset, p.length));
  auto first = t.a->submit(*batch, reads);
  BOOST_REQUIRE_MESSAGE(first, why(first));
  BOOST_CHECK_EQUAL(*first, writes.size());
  s = t.a->wait(*batch, 10s);
  BOOST_REQUIRE_MESSAGE(s, why(s));
  BOOST_CHECK_EQUAL(s->completed, 2 * writes.size());
  for (size_t i = 0; i < std::size(pieces); ++i)
    BOOST_CHECK_EQUAL(tools::check_pattern(t.src.data + pieces[i].src_offset, pieces[i].length, 10 + i),
                      pieces[i].length);
  BOOST_CHECK(!t.a->free_batch(*batch));
  auto stats = t.a->stats();
  BOOST_REQUIRE(stats);
  BOOST_CHECK_EQUAL(stats->tasks_completed, 2 * writes.size());
  BOOST_CHECK_EQUAL(stats->repeated_resolutions, 0u);
  BOOST_CHECK_EQUAL(stats->live_tasks, 0u);
  BOOST_CHECK_EQUAL(stats->live_slices, 0u);
  BOOST_CHECK_EQUAL(stats->live_batches, 0u);
}

BOOST_AUTO_TEST_CASE(wait_times_out_while_tasks_are_held) {
  fault_engine f;
  auto batch = f.engine->allocate_batch(2);
  BOOST_REQUIRE(batch);
  std::vector<transfer_request> rqs{f.request(0, 100), f.request(100, 100)};
  BOOST_REQUIRE(f.engine->submit(*batch, rqs));
  BOOST_REQUIRE(f.await_held(2));
  auto before = std::chrono::steady_clock::now();
  auto w = f.engine->wait(*batch, 50ms);
  BOOST_CHECK_GE(std::chrono::steady_clock::now() - before, 50ms);
  expect_error(w, errc::timeout, {"batch " + std::to_string(*batch), "2 of 2", "50 ms"});
  auto st = f.engine->status(*batch, 0);
  BOOST_REQUIRE(st);
  BOOST_CHECK(st->state == task_state::pending);
  // Completing one task leaves the other one holding the batch.
  auto held = f.paths[0]->held();
  BOOST_REQUIRE_EQUAL(held.size(), 2u);
  BOOST_REQUIRE(f.paths[0]->complete(held[0].id));
  BOOST_REQUIRE(eventually([&] { return f.engine->batch_status(*batch)->completed == 1; }));
  expect_error(f.engine->wait(*batch, 10ms), errc::timeout, {"1 of 2"});
  BOOST_REQUIRE(f.paths[0]->complete(held[1].id));
  auto s = f.engine->wait(*batch, 10s);
  BOOST_REQUIRE_MESSAGE(s, why(s));
  BOOST_CHECK_EQUAL(s->completed, 2u);
  BOOST_CHECK_EQUAL(s->transferred_bytes, 200u);
}

BOOST_AUTO_TEST_CASE(free_batch_during_flight_cancels_every_task_once) {
  fault_engine f;
  constexpr uint32_t tasks = 5;
  auto batch = f.engine->allocate_batch(tasks);
  BOOST_REQUIRE(batch);
  std::vector<transfer_request> rqs;
  for (uint32_t i = 0; i < tasks; ++i)
    rqs.push_back(f.request(i * 3 * 65536, 3 * 65536)); // three slices each
  BOOST_REQUIRE(f.engine->submit(*batch, rqs));
  BOOST_REQUIRE(f.await_held(3 * tasks));
  // Let one slice succeed: its task stays unresolved, the batch still in flight.
  auto held = f.paths[0]->held();
  BOOST_REQUIRE(f.paths[0]->complete(held[0].id));
  BOOST_REQUIRE(eventually([&] { return f.stats().slices_succeeded == 1; }));

  // A waiter inside wait() when the batch is freed sees every task CANCELED.
  std::optional<caf::expected<batch_summary>> waited;
  std::jthread waiter = start_blocked_waiter(*f.engine, *batch, waited);
  BOOST_REQUIRE(!f.engine->free_batch(*batch));
  // Once free_batch returned, no slice is at the data path any more.
  BOOST_CHECK_EQUAL(f.held(), 0u);
  waiter.join();
  BOOST_REQUIRE(waited.has_value());
  BOOST_REQUIRE_MESSAGE(*waited, why(*waited));
  BOOST_CHECK_EQUAL((*waited)->tasks, tasks);
  BOOST_CHECK_EQUAL((*waited)->canceled, tasks);
  BOOST_CHECK_EQUAL((*waited)->completed, 0u);

  auto s = f.stats();
  BOOST_CHECK_EQUAL(s.tasks_submitted, tasks);
  BOOST_CHECK_EQUAL(s.tasks_canceled, tasks);
  BOOST_CHECK_EQUAL(s.tasks_resolved(), tasks);
  BOOST_CHECK_EQUAL(s.repeated_resolutions, 0u);
  BOOST_CHECK_EQUAL(s.slices_withdrawn, 3 * tasks - 1);
  BOOST_CHECK_EQUAL(f.paths[0]->counters().withdrawn, 3 * tasks - 1);
  BOOST_CHECK_EQUAL(s.live_tasks, 0u);
  BOOST_CHECK_EQUAL(s.live_slices, 0u);
  BOOST_CHECK_EQUAL(s.live_batches, 0u);
  expect_error(f.engine->free_batch(*batch), errc::unknown_batch, {std::to_string(*batch)});

  // A report for a withdrawn slice that arrives anyway changes nothing but a counter.
  f.paths[0]->deliver({held[1].id, errc::none, false, held[1].length});
  BOOST_REQUIRE(eventually([&] { return f.stats().late_reports == 1; }));
  s = f.stats();
  BOOST_CHECK_EQUAL(s.tasks_completed, 0u);
  BOOST_CHECK_EQUAL(s.tasks_canceled, tasks);
  BOOST_CHECK_EQUAL(s.slices_succeeded, 1u);
}

BOOST_AUTO_TEST_CASE(free_batch_before_dispatch) {
  // Submit and free back to back: whether the coordinator saw the tasks or not, they end CANCELED
  // and nothing stays live.
  fault_engine f;
  for (int round = 0; round < 20; ++round) {
    auto batch = f.engine->allocate_batch(4);
    BOOST_REQUIRE(batch);
    std::vector<transfer_request> rqs(4, f.request(0, 100));
    BOOST_REQUIRE(f.engine->submit(*batch, rqs));
    BOOST_REQUIRE(!f.engine->free_batch(*batch));
  }
  BOOST_REQUIRE(eventually([&] { return f.stats().tasks_canceled == 80; }));
  auto s = f.stats();
  BOOST_CHECK_EQUAL(s.tasks_submitted, 80u);
  BOOST_CHECK_EQUAL(s.tasks_resolved(), 80u);
  BOOST_CHECK_EQUAL(s.live_tasks, 0u);
  BOOST_CHECK_EQUAL(s.live_slices, 0u);
  BOOST_CHECK_EQUAL(s.live_batches, 0u);
  BOOST_CHECK_EQUAL(f.held(), 0u);
}

BOOST_AUTO_TEST_CASE(deadline_with_a_held_slice) {
  fault_engine f;
  auto batch = f.engine->allocate_batch(2);
  BOOST_REQUIRE(batch);
  auto rq = f.request(4096, 1000);
  submit_options opts;
  opts.deadline = 50ms;
  BOOST_REQUIRE(f.engine->submit(*batch, std::span(&rq, 1), opts));
  BOOST_REQUIRE(f.await_held(1));
  auto slice = f.paths[0]->held().at(0);
  auto s = f.engine->wait(*batch, 10s);
  BOOST_REQUIRE_MESSAGE(s, why(s));
  BOOST_CHECK_EQUAL(s->timeout, 1u);
  auto st = f.engine->status(*batch, 0);
  BOOST_REQUIRE(st);
  BOOST_CHECK_MESSAGE(st->state == task_state::timeout, to_string(st->state));
  BOOST_CHECK(st->code == errc::timeout);
  BOOST_CHECK_MESSAGE(contains(st->reason, "deadline"), st->reason);
  BOOST_CHECK_EQUAL(st->transferred_bytes, 0u);

  // The timed-out task's slice is withdrawn from the data path ...
  BOOST_REQUIRE(f.await_held(0));
  BOOST_CHECK(!f.paths[0]->complete(slice.id));
  // ... and a completion for it that arrives anyway is a counted late report.
  f.paths[0]->deliver({slice.id, errc::none, false, slice.length});
  BOOST_REQUIRE(eventually([&] { return f.stats().late_reports == 1; }));
  st = f.engine->status(*batch, 0);
  BOOST_REQUIRE(st);
  BOOST_CHECK(st->state == task_state::timeout);
  BOOST_CHECK_EQUAL(st->transferred_bytes, 0u);
  auto stats = f.stats();
  BOOST_CHECK_EQUAL(stats.tasks_timeout, 1u);
  BOOST_CHECK_EQUAL(stats.tasks_completed, 0u);
  BOOST_CHECK_EQUAL(stats.live_slices, 0u);

  // Without an explicit deadline, the configured one (10 s) applies: nothing times out soon.
  auto rq2 = f.request(0, 10);
  BOOST_REQUIRE(f.engine->submit(*batch, std::span(&rq2, 1)));
  BOOST_REQUIRE(f.await_held(1));
  std::this_thread::sleep_for(100ms);
  BOOST_CHECK(f.engine->status(*batch, 1)->state == task_state::pending);
  BOOST_REQUIRE(f.paths[0]->complete(f.paths[0]->held().at(0).id));
  BOOST_REQUIRE(f.engine->wait(*batch, 10s));
  BOOST_CHECK(f.engine->status(*batch, 1)->state == task_state::completed);
}

BOOST_AUTO_TEST_CASE(free_after_timeout_waits_for_the_withdrawal) {
  // "Once free_batch returns no worker touches the batch's memory any more" holds also for slices
  // of tasks that resolved earlier (here: TIMEOUT) and whose withdrawal may still be on its way.
  fault_engine f(2);
  for (int round = 0; round < 10; ++round) {
    BOOST_TEST_CONTEXT("round " << round) {
      auto batch = f.engine->allocate_batch(2);
      BOOST_REQUIRE(batch);
      std::vector<transfer_request> rqs{f.request(0, 3 * 65536), f.request(4 * 65536, 2 * 65536)};
      submit_options opts;
      opts.deadline = 20ms;
      BOOST_REQUIRE(f.engine->submit(*batch, rqs, opts));
      auto s = f.engine->wait(*batch, 10s);
      BOOST_REQUIRE_MESSAGE(s, why(s));
      BOOST_CHECK_EQUAL(s->timeout, 2u);
      BOOST_REQUIRE(!f.engine->free_batch(*batch));
      BOOST_CHECK_EQUAL(f.held(), 0u);
    }
  }
  auto stats = f.stats();
  BOOST_CHECK_EQUAL(stats.tasks_timeout, 20u);
  BOOST_CHECK_EQUAL(stats.slices_withdrawn, 50u);
  BOOST_CHECK_EQUAL(stats.live_slices, 0u);
}

BOOST_AUTO_TEST_CASE(retry_on_the_other_worker) {
  fault_engine f(2);
  auto batch = f.engine->allocate_batch(1);
  BOOST_REQUIRE(batch);
  auto rq = f.request(0, 777);
  BOOST_REQUIRE(f.engine->submit(*batch, std::span(&rq, 1)));
  BOOST_REQUIRE(f.await_held(1));
  size_t first_path = f.paths[0]->held().empty() ? 1 : 0;
  auto first = f.paths[first_path]->held().at(0);
  BOOST_REQUIRE(f.paths[first_path]->complete(first.id, errc::transport_failure, true));
  // Re-posted, under a new id, on the other worker.
  auto& other = *f.paths[1 - first_path];
  BOOST_REQUIRE(eventually([&] { return other.held().size() == 1; }));
  auto second = other.held().at(0);
  BOOST_CHECK_NE(second.id, first.id);
  BOOST_CHECK_EQUAL(second.length, first.length);
  BOOST_CHECK_EQUAL(second.local_addr, first.local_addr);
  BOOST_CHECK_EQUAL(second.remote_addr, first.remote_addr);
  BOOST_CHECK(f.paths[first_path]->held().empty());
  // A stale report of the first attempt is ignored.
  f.paths[first_path]->deliver({first.id, errc::none, false, first.length});
  BOOST_REQUIRE(eventually([&] { return f.stats().late_reports == 1; }));
  BOOST_CHECK(f.engine->status(*batch, 0)->state == task_state::pending);

  BOOST_REQUIRE(other.complete(second.id));
  auto s = f.engine->wait(*batch, 10s);
  BOOST_REQUIRE_MESSAGE(s, why(s));
  BOOST_CHECK_EQUAL(s->completed, 1u);
  auto st = f.engine->status(*batch, 0);
  BOOST_CHECK(st->state == task_state::completed);
  BOOST_CHECK_EQUAL(st->transferred_bytes, 777u);
  auto stats = f.stats();
  BOOST_CHECK_EQUAL(stats.slices_failed, 1u);
  BOOST_CHECK_EQUAL(stats.slices_retried, 1u);
  BOOST_CHECK_EQUAL(stats.slices_posted, 2u);
  BOOST_CHECK_EQUAL(stats.slices_succeeded, 1u);
}

BOOST_AUTO_TEST_CASE(retries_exhausted_fail_the_task) {
  config::settings settings;
  settings.retry_limit = 3;
  fault_engine f(2, settings);
  auto batch = f.engine->allocate_batch(2);
  BOOST_REQUIRE(batch);
  auto rq = f.request(0, 3 * 65536); // three slices; only one keeps failing
  BOOST_REQUIRE(f.engine->submit(*batch, std::span(&rq, 1)));
  BOOST_REQUIRE(f.await_held(3));
  // Pick the middle slice (offset 65536) and fail it retry_limit + 1 times.
  auto target_local = f.local.addr(65536);
  size_t last_path = 2;
  for (uint32_t attempt = 0; attempt <= settings.retry_limit; ++attempt) {
    BOOST_TEST_CONTEXT("attempt " << attempt) {
      std::optional<std::pair<size_t, transport::slice_op>> found;
      BOOST_REQUIRE(eventually([&] {
        for (size_t p = 0; p < f.paths.size(); ++p)
          for (const auto& op : f.paths[p]->held())
            if (op.local_addr == target_local) {
              found.emplace(p, op);
              return true;
            }
        return false;
      }));
      // Each retry goes to the worker that did not fail last time.
      if (last_path != 2)
        BOOST_CHECK_NE(found->first, last_path);
      last_path = found->first;
      BOOST_CHECK(f.engine->status(*batch, 0)->state == task_state::pending);
      BOOST_REQUIRE(f.paths[found->first]->complete(found->second.id, errc::transport_failure, true));
    }
  }
  auto s = f.engine->wait(*batch, 10s);
  BOOST_REQUIRE_MESSAGE(s, why(s));
  BOOST_CHECK_EQUAL(s->failed, 1u);
  auto st = f.engine->status(*batch, 0);
  BOOST_REQUIRE(st);
  BOOST_CHECK(st->state == task_state::failed);
  BOOST_CHECK(st->code == errc::transport_failure);
  BOOST_CHECK_MESSAGE(contains(st->reason, "transport_failure"), st->reason);
  BOOST_CHECK_MESSAGE(contains(st->reason, "offset 65536"), st->reason);
  BOOST_CHECK_MESSAGE(contains(st->reason, "4 attempt(s)"), st->reason);
  // The other two slices were withdrawn when the task failed.
  BOOST_REQUIRE(f.await_held(0));
  auto stats = f.stats();
  BOOST_CHECK_EQUAL(stats.slices_failed, 4u);
  BOOST_CHECK_EQUAL(stats.slices_retried, 3u);
  BOOST_CHECK_EQUAL(stats.slices_withdrawn, 2u);
  BOOST_CHECK_EQUAL(stats.tasks_failed, 1u);
  BOOST_CHECK_EQUAL(stats.live_slices, 0u);

  // A refusal that is not retryable fails at once.
  auto rq2 = f.request(0, 10);
  BOOST_REQUIRE(f.engine->submit(*batch, std::span(&rq2, 1)));
  BOOST_REQUIRE(f.await_held(1));
  size_t p = f.paths[0]->held().empty() ? 1 : 0;
  BOOST_REQUIRE(f.paths[p]->complete(f.paths[p]->held().at(0).id, errc::out_of_range, false));
  BOOST_REQUIRE(f.engine->wait(*batch, 10s));
  st = f.engine->status(*batch, 1);
  BOOST_CHECK(st->state == task_state::failed);
  BOOST_CHECK(st->code == errc::out_of_range);
  BOOST_CHECK_MESSAGE(contains(st->reason, "out_of_range"), st->reason);
  BOOST_CHECK_MESSAGE(contains(st->reason, "1 attempt(s)"), st->reason);
  BOOST_CHECK_EQUAL(f.stats().slices_retried, 3u);
}

BOOST_AUTO_TEST_CASE(concurrent_submitters) {
  two_engines t;
  constexpr size_t threads = 4, per_thread = 200, block = 512;
  for (size_t i = 0; i < threads * per_thread; ++i)
    tools::fill_pattern(t.src.data + i * block, block, 1000 + i);
  struct outcome {
    std::string error;
    batch_summary summary;
    size_t completed_by_status = 0;
  };
  std::vector<outcome> outcomes(threads);
  std::vector<std::thread> workers;
  for (size_t k = 0; k < threads; ++k) {
    workers.emplace_back([&, k] {
      auto& out = outcomes[k];
      auto batch = t.a->allocate_batch(per_thread);
      if (!batch) {
        out.error = why(batch);
        return;
      }
      for (size_t i = 0; i < per_thread; ++i) {
        auto offset = (k * per_thread + i) * block;
        auto rq = t.write(offset, offset, block);
        auto r = t.a->submit(*batch, std::span(&rq, 1));
        if (!r || *r != i) {
          out.error = "submit " + std::to_string(i) + ": " + why(r);
          return;
        }
      }
      auto s = t.a->wait(*batch, 20s);
      if (!s) {
        out.error = why(s);
        return;
      }
      out.summary = *s;
      for (uint32_t i = 0; i < per_thread; ++i) {
        auto st = t.a->status(*batch, i);
        if (st && st->state == task_state::completed && st->transferred_bytes == block)
          ++out.completed_by_status;
      }
      if (auto err = t.a->free_batch(*batch))
        out.error = describe(err);
    });
  }
  for (auto& w : workers)
    w.join();
  for (size_t k = 0; k < threads; ++k) {
    BOOST_TEST_CONTEXT("thread " << k) {
      BOOST_CHECK_EQUAL(outcomes[k].error, "");
      BOOST_CHECK_EQUAL(outcomes[k].summary.tasks, per_thread);
      BOOST_CHECK_EQUAL(outcomes[k].summary.completed, per_thread);
      BOOST_CHECK_EQUAL(outcomes[k].completed_by_status, per_thread);
    }
  }
  size_t bad = 0;
  for (size_t i = 0; i < threads * per_thread; ++i)
    bad += tools::check_pattern(t.dst.data + i * block, block, 1000 + i) != block;
  BOOST_CHECK_EQUAL(bad, 0u);
  auto stats = t.a->stats();
  BOOST_REQUIRE(stats);
  BOOST_CHECK_EQUAL(stats->tasks_submitted, threads * per_thread);
  BOOST_CHECK_EQUAL(stats->tasks_completed, threads * per_thread);
  BOOST_CHECK_EQUAL(stats->repeated_resolutions, 0u);
  BOOST_CHECK_EQUAL(stats->live_tasks, 0u);
}

BOOST_AUTO_TEST_CASE(shutdown_with_tasks_in_flight) {
  fault_engine f;
  auto batch = f.engine->allocate_batch(4);
  BOOST_REQUIRE(batch);
  std::vector<transfer_request> rqs{f.request(0, 100), f.request(100, 70000), f.request(80000, 1)};
  BOOST_REQUIRE(f.engine->submit(*batch, rqs));
  BOOST_REQUIRE(f.await_held(4));

  std::optional<caf::expected<batch_summary>> waited;
  std::jthread waiter = start_blocked_waiter(*f.engine, *batch, waited);
  f.engine->shutdown();
  // Every slice was withdrawn before shutdown returned.
  BOOST_CHECK_EQUAL(f.held(), 0u);
  waiter.join();
  BOOST_REQUIRE(waited.has_value());
  BOOST_REQUIRE_MESSAGE(*waited, why(*waited));
  BOOST_CHECK_EQUAL((*waited)->tasks, 3u);
  BOOST_CHECK_EQUAL((*waited)->canceled, 3u);

  f.engine->shutdown(); // idempotent
  std::vector<uint8_t> spare(64);
  expect_error(f.engine->allocate_batch(1), errc::shutting_down, {"shut down"});
  expect_error(f.engine->register_memory(spare.data(), spare.size()), errc::shutting_down, {});
  expect_error(f.engine->unregister_memory(f.local.data), errc::shutting_down, {});
  expect_error(f.engine->open_segment("f"), errc::shutting_down, {});
  expect_error(f.engine->stats(), errc::shutting_down, {});
}

// After shutdown, calls on a batch allocated before it answer shutting_down, not unknown_batch.
BOOST_AUTO_TEST_CASE(batch_calls_after_shutdown_say_shutting_down) {
  two_engines t;
  auto batch = t.a->allocate_batch(2);
  BOOST_REQUIRE(batch);
  t.a->shutdown();
  auto rq = t.write(0, 0, 8);
  BOOST_CHECK(code_of(t.a->submit(*batch, std::span(&rq, 1)).error()) == errc::shutting_down);
  BOOST_CHECK(code_of(t.a->status(*batch, 0).error()) == errc::shutting_down);
  BOOST_CHECK(code_of(t.a->batch_status(*batch).error()) == errc::shutting_down);
  BOOST_CHECK(code_of(t.a->wait(*batch, 10ms).error()) == errc::shutting_down);
  BOOST_CHECK(code_of(t.a->free_batch(*batch)) == errc::shutting_down);
}

// Submit with notify on the same-process path: the notification arrives once every WRITE of the
// submission completed, after the bytes are in place, and never for a submission with a failure.
BOOST_AUTO_TEST_CASE(submit_with_notify_same_process) {
  two_engines t;
  std::memset(t.src.data, 0x5a, 4096);
  auto batch = t.a->allocate_batch(8);
  BOOST_REQUIRE(batch);
  std::vector<transfer_request> ok{t.write(0, 0, 1000), t.write(1000, 1000, 3096)};
  submit_options with_note;
  with_note.notify = std::string("kv ready: blocks 0-1");
  BOOST_REQUIRE(t.a->submit(*batch, ok, with_note));
  std::vector<notification> got;
  BOOST_REQUIRE(eventually([&] {
    auto drained = t.b->get_notifies();
    BOOST_REQUIRE(drained);
    got.insert(got.end(), drained->begin(), drained->end());
    return !got.empty();
  }, 60s));
  BOOST_REQUIRE_EQUAL(got.size(), 1u);
  BOOST_CHECK_EQUAL(got[0].from, "a");
  BOOST_CHECK_EQUAL(got[0].message, "kv ready: blocks 0-1");
  // The data was in place before the notification could be read.
  for (size_t i = 0; i < 4096; ++i)
    BOOST_REQUIRE_EQUAL(static_cast<uint8_t>(t.dst.data[i]), 0x5a);
  // A submission whose slice the target refuses fails, and its notification is never sent. Engine
  // "c" leaves bounds to the target, which no longer has the memory registered.
  engine_options oc;
  oc.segment_name = "c";
  oc.check_remote_bounds = false;
  auto c = transfer_engine::create(t.rt, config::settings{}, oc);
  BOOST_REQUIRE(c);
  BOOST_REQUIRE(!(*c)->register_memory(t.src.data, t.src.size, "cpu:0"));
  auto c_to_b = (*c)->open_segment("b");
  BOOST_REQUIRE(c_to_b);
  BOOST_REQUIRE(!t.b->unregister_memory(t.dst.data));
  auto failing = (*c)->allocate_batch(2);
  BOOST_REQUIRE(failing);
  with_note.notify = std::string("must not arrive");
  std::vector<transfer_request> refused_write{{opcode::write, t.src.data, *c_to_b, t.dst.addr(0), 64},
                                              {opcode::write, t.src.data + 64, *c_to_b, t.dst.addr(64), 64}};
  BOOST_REQUIRE(!t.b->register_memory(t.dst.data, 64, "cpu:0")); // the first one succeeds
  BOOST_REQUIRE((*c)->submit(*failing, refused_write, with_note));
  auto summary = (*c)->wait(*failing, std::chrono::seconds(10));
  BOOST_REQUIRE(summary);
  BOOST_CHECK_EQUAL(summary->completed, 1u);
  BOOST_CHECK_EQUAL(summary->failed, 1u);
  auto stats_a = t.a->stats();
  auto stats_c = (*c)->stats();
  BOOST_REQUIRE(stats_a && stats_c);
  BOOST_CHECK_EQUAL(stats_a->notifies_sent, 1u);
  BOOST_CHECK_EQUAL(stats_c->notifies_sent, 0u);
  BOOST_CHECK_EQUAL(stats_c->notifies_dropped, 1u);
  auto later = t.b->get_notifies();
  BOOST_REQUIRE(later);
  BOOST_CHECK(later->empty());
  (*c)->shutdown();
  // Notify with requests to different segments is refused.
  auto own = t.a->open_segment("a");
  BOOST_REQUIRE(own);
  std::vector<transfer_request> mixed{t.write(0, 0, 8), {opcode::write, t.src.data, *own, t.src.addr(64), 8}};
  auto third = t.a->allocate_batch(2);
  auto refused = t.a->submit(*third, mixed, with_note);
  BOOST_REQUIRE(!refused);
  BOOST_CHECK(code_of(refused.error()) == errc::invalid_argument);
}
