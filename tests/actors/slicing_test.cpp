#define BOOST_TEST_MODULE slicing_test
#include <boost/test/unit_test.hpp>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "tests/support/checks.hpp"
#include "actors/runtime.hpp"
#include "actors/transfer_engine.hpp"
#include "config/error.hpp"
#include "config/settings.hpp"
#include "tools/pattern.hpp"
#include "transport/local/path.hpp"

// How the transfer coordinator splits tasks into slices: every slice it posts to a data path is
// recorded by a test data path that then moves the bytes through the real same-process path.

using namespace kvferry;
using namespace std::chrono_literals;

namespace {

using kvferry::test::why;

/// Records every slice it is posted, then hands it to a transport::local_path, which checks both
/// ranges against the live registries, copies the bytes and reports inline.
class recording_path final : public transport::data_path {
public:
  recording_path(std::shared_ptr<memory::local_directory> directory, std::string own_segment)
    : directory_(std::move(directory)), own_segment_(std::move(own_segment)) {
    caps_.name = "recording";
    caps_.endpoint_kind = "local";
  }

  const transport::capabilities& caps() const noexcept override { return caps_; }
  void set_sink(transport::completion_sink sink) override { sink_ = std::move(sink); }
  void set_gates(std::shared_ptr<transport::slice_gates> gates) override { gates_ = std::move(gates); }

  caf::expected<uint32_t> connect(const memory::segment_descriptor& peer) override {
    // The engine's own registry exists only once the engine started: build the inner path lazily.
    if (!inner_) {
      auto own = directory_->find(own_segment_);
      if (!own)
        return make_error(errc::unknown_segment, "recording path: own segment '" + own_segment_
                                                   + "' is not in the directory");
      inner_ = std::make_unique<transport::local_path>(directory_, std::move(own));
      inner_->set_sink(sink_);
      inner_->set_gates(gates_);
    }
    return inner_->connect(peer);
  }

  void post(std::span<const transport::slice_op> ops) override {
    {
      std::lock_guard<std::mutex> guard(mutex_);
      recorded_.insert(recorded_.end(), ops.begin(), ops.end());
      ++posts_;
    }
    if (inner_) {
      inner_->post(ops);
    } else {
      std::vector<transport::slice_completion> refused;
      for (const auto& op : ops)
        refused.push_back({op.id, errc::unknown_segment, false, 0});
      sink_(std::move(refused));
    }
  }

  void withdraw(std::span<const uint64_t>, std::chrono::steady_clock::time_point,
                std::function<void(transport::unsettled_segments)> done) override {
    if (done)
      done({});
  }
  void stop() override {}

  /// The slices recorded since the last call.
  std::vector<transport::slice_op> take() {
    std::lock_guard<std::mutex> guard(mutex_);
    return std::exchange(recorded_, {});
  }

private:
  transport::capabilities caps_;
  std::shared_ptr<memory::local_directory> directory_;
  std::string own_segment_;
  transport::completion_sink sink_;
  std::shared_ptr<transport::slice_gates> gates_;
  std::unique_ptr<transport::local_path> inner_;
  std::mutex mutex_;
  std::vector<transport::slice_op> recorded_;
  uint64_t posts_ = 0;
};

using buffer = kvferry::test::aligned_buffer;

constexpr size_t buffer_size = 4 * 65536 + 3 * 4096;

struct rig {
  std::shared_ptr<runtime> rt;
  std::vector<std::shared_ptr<recording_path>> paths;
  std::unique_ptr<transfer_engine> engine;
  std::unique_ptr<transfer_engine> peer; // when the target is a second engine
  buffer local{buffer_size};
  buffer remote{buffer_size};
  segment_id target = 0;

  /// `path_count` recording paths (one worker each); the target is the engine's own segment, or a
  /// second engine "slicing-peer" that registers `remote`.
  rig(config::settings settings, size_t path_count, bool second_engine) {
    auto r = runtime::create({});
    BOOST_REQUIRE(r);
    rt = *r;
    engine_options options;
    options.segment_name = "slicing-self";
    for (size_t i = 0; i < path_count; ++i) {
      paths.push_back(std::make_shared<recording_path>(rt->directory(), options.segment_name));
      options.data_paths.push_back(paths.back());
    }
    auto e = transfer_engine::create(rt, settings, options);
    BOOST_REQUIRE_MESSAGE(e, why(e));
    engine = std::move(*e);
    BOOST_REQUIRE(!engine->register_memory(local.data, local.size, "cpu:0"));
    std::string target_name = options.segment_name;
    if (second_engine) {
      engine_options peer_options;
      peer_options.segment_name = "slicing-peer";
      auto p = transfer_engine::create(rt, settings, peer_options);
      BOOST_REQUIRE_MESSAGE(p, why(p));
      peer = std::move(*p);
      BOOST_REQUIRE(!peer->register_memory(remote.data, remote.size, "cpu:0"));
      target_name = peer_options.segment_name;
    } else {
      BOOST_REQUIRE(!engine->register_memory(remote.data, remote.size, "cpu:0"));
    }
    auto id = engine->open_segment(target_name);
    BOOST_REQUIRE_MESSAGE(id, why(id));
    target = *id;
  }

  ~rig() {
    engine.reset();
    peer.reset();
  }

  std::vector<transport::slice_op> take_all() {
    std::vector<transport::slice_op> out;
    for (auto& p : paths) {
      auto part = p->take();
      out.insert(out.end(), part.begin(), part.end());
    }
    return out;
  }
};

/// Checks that `slices` tile [local_addr, local_addr + length) and the matching remote range
/// exactly, in slices of at most `slice_size` bytes, all full but the last.
void check_tiling(std::vector<transport::slice_op> slices, transport::opcode op, uint64_t local_addr,
                  uint64_t remote_addr, uint64_t length, uint64_t slice_size) {
  auto expected_count = (length + slice_size - 1) / slice_size;
  BOOST_REQUIRE_EQUAL(slices.size(), expected_count);
  std::sort(slices.begin(), slices.end(),
            [](const auto& x, const auto& y) { return x.local_addr < y.local_addr; });
  std::set<uint64_t> ids;
  uint64_t next = local_addr;
  for (size_t i = 0; i < slices.size(); ++i) {
    const auto& s = slices[i];
    BOOST_TEST_CONTEXT("slice " << i << " of " << slices.size()) {
      BOOST_CHECK(s.op == op);
      BOOST_CHECK_EQUAL(s.local_addr, next);
      BOOST_CHECK_EQUAL(s.remote_addr - s.local_addr, remote_addr - local_addr);
      BOOST_CHECK_GT(s.length, 0u);
      BOOST_CHECK_LE(s.length, slice_size);
      if (i + 1 < slices.size())
        BOOST_CHECK_EQUAL(s.length, slice_size);
      else
        BOOST_CHECK_EQUAL(s.length, length - (expected_count - 1) * slice_size);
      BOOST_CHECK(s.local_where == (memory::location{}));
      BOOST_CHECK_MESSAGE(ids.insert(s.id).second, "slice id " << s.id << " posted twice");
    }
    next = s.local_addr + s.length;
  }
  BOOST_CHECK_EQUAL(next, local_addr + length);
}

/// Runs one task and checks its slices and its bytes. For a WRITE the pattern goes from
/// local+local_offset to remote+remote_offset; for a READ the other way.
void run_one(rig& r, transport::opcode op, uint64_t length, size_t local_offset,
             size_t remote_offset, uint64_t slice_size, uint64_t seed) {
  BOOST_TEST_CONTEXT((op == transport::opcode::write ? "WRITE" : "READ")
                     << " length " << length << " local +" << local_offset << " remote +"
                     << remote_offset) {
    BOOST_REQUIRE_LE(local_offset + length, r.local.size);
    BOOST_REQUIRE_LE(remote_offset + length, r.remote.size);
    std::memset(r.local.data, 0, r.local.size);
    std::memset(r.remote.data, 0, r.remote.size);
    auto& from = op == transport::opcode::write ? r.local : r.remote;
    auto& to = op == transport::opcode::write ? r.remote : r.local;
    auto from_offset = op == transport::opcode::write ? local_offset : remote_offset;
    auto to_offset = op == transport::opcode::write ? remote_offset : local_offset;
    tools::fill_pattern(from.data + from_offset, length, seed);

    auto batch = r.engine->allocate_batch(1);
    BOOST_REQUIRE(batch);
    transfer_request rq;
    rq.op = op;
    rq.source = r.local.data + local_offset;
    rq.target_id = r.target;
    rq.target_offset = reinterpret_cast<uint64_t>(r.remote.data + remote_offset);
    rq.length = length;
    auto first = r.engine->submit(*batch, std::span(&rq, 1));
    BOOST_REQUIRE_MESSAGE(first, why(first));
    BOOST_CHECK_EQUAL(*first, 0u);
    auto summary = r.engine->wait(*batch, 10s);
    BOOST_REQUIRE_MESSAGE(summary, why(summary));
    BOOST_CHECK_EQUAL(summary->completed, 1u);
    auto st = r.engine->status(*batch, 0);
    BOOST_REQUIRE(st);
    BOOST_CHECK_MESSAGE(st->state == task_state::completed,
                        "state " << to_string(st->state) << ": " << st->reason);
    BOOST_CHECK_EQUAL(st->transferred_bytes, length);
    BOOST_CHECK(!r.engine->free_batch(*batch));

    check_tiling(r.take_all(), op, reinterpret_cast<uint64_t>(rq.source), rq.target_offset, length,
                 slice_size);

    // The bytes arrived exactly, and nothing around them changed.
    BOOST_CHECK_EQUAL(tools::check_pattern(to.data + to_offset, length, seed), length);
    BOOST_CHECK_EQUAL(tools::check_pattern(from.data + from_offset, length, seed), length);
    auto untouched = [](const buffer& b, size_t begin, size_t end) {
      return std::all_of(b.data + begin, b.data + end, [](uint8_t x) { return x == 0; });
    };
    BOOST_CHECK(untouched(to, 0, to_offset));
    BOOST_CHECK(untouched(to, to_offset + length, to.size));
  }
}

const uint64_t lengths_64k[] = {1, 65535, 65536, 65537, 3 * 65536 + 5};
const std::pair<size_t, size_t> offsets[] = {{0, 0}, {1, 3}, {3, 4095}, {4095, 1}, {4096, 4097}};

void run_matrix(rig& r, const uint64_t* lengths, size_t count, uint64_t slice_size) {
  uint64_t seed = 1;
  for (size_t i = 0; i < count; ++i)
    for (auto [lo, ro] : offsets)
      for (auto op : {transport::opcode::write, transport::opcode::read})
        run_one(r, op, lengths[i], lo, ro, slice_size, seed++);
}

} // namespace

BOOST_AUTO_TEST_CASE(default_slices_own_segment) {
  rig r(config::settings{}, 1, false);
  BOOST_REQUIRE_EQUAL(r.engine->settings().slice_size, 65536u);
  run_matrix(r, lengths_64k, std::size(lengths_64k), 65536);
  auto stats = r.engine->stats();
  BOOST_REQUIRE(stats);
  BOOST_CHECK_EQUAL(stats->tasks_failed, 0u);
  BOOST_CHECK_EQUAL(stats->slices_retried, 0u);
  BOOST_CHECK_EQUAL(stats->slices_posted, stats->slices_succeeded);
  BOOST_CHECK_EQUAL(stats->live_slices, 0u);
  BOOST_CHECK_EQUAL(stats->live_tasks, 0u);
}

BOOST_AUTO_TEST_CASE(default_slices_second_engine) {
  rig r(config::settings{}, 1, true);
  run_matrix(r, lengths_64k, std::size(lengths_64k), 65536);
}

BOOST_AUTO_TEST_CASE(slices_spread_over_two_workers) {
  rig r(config::settings{}, 2, true);
  run_matrix(r, lengths_64k, std::size(lengths_64k), 65536);
  // A four-slice task reaches both workers.
  auto batch = r.engine->allocate_batch(1);
  BOOST_REQUIRE(batch);
  transfer_request rq{transport::opcode::write, r.local.data, r.target,
                      reinterpret_cast<uint64_t>(r.remote.data), 4 * 65536};
  BOOST_REQUIRE(r.engine->submit(*batch, std::span(&rq, 1)));
  BOOST_REQUIRE(r.engine->wait(*batch, 10s));
  auto first = r.paths[0]->take();
  auto second = r.paths[1]->take();
  BOOST_CHECK_EQUAL(first.size() + second.size(), 4u);
  BOOST_CHECK_GT(first.size(), 0u);
  BOOST_CHECK_GT(second.size(), 0u);
}

BOOST_AUTO_TEST_CASE(slice_size_from_settings) {
  auto parsed = config::parse(
    R"({"local_hostname":"127.0.0.1","metadata_server":"P2PHANDSHAKE","kvferry":{"slice_size":"4KiB"}})",
    "slicing.json");
  BOOST_REQUIRE_MESSAGE(parsed, why(parsed));
  BOOST_REQUIRE_EQUAL(parsed->slice_size, 4096u);
  rig r(*parsed, 1, true);
  const uint64_t lengths[] = {1, 4095, 4096, 4097, 3 * 4096 + 5, 65537};
  run_matrix(r, lengths, std::size(lengths), 4096);
}

BOOST_AUTO_TEST_CASE(odd_slice_size) {
  config::settings s;
  s.slice_size = 1000; // not a power of two
  rig r(s, 1, false);
  const uint64_t lengths[] = {1, 999, 1000, 1001, 7777};
  run_matrix(r, lengths, std::size(lengths), 1000);
}

BOOST_AUTO_TEST_CASE(several_tasks_in_one_submit_are_sliced_separately) {
  rig r(config::settings{}, 2, true);
  struct piece { size_t local_offset, remote_offset; uint64_t length; };
  const piece pieces[] = {{1, 7, 65537}, {70000, 70001, 1}, {80000, 90003, 2 * 65536},
                          {220000, 230000, 30000}};
  std::vector<transfer_request> rqs;
  for (size_t i = 0; i < std::size(pieces); ++i) {
    const auto& p = pieces[i];
    tools::fill_pattern(r.local.data + p.local_offset, p.length, 100 + i);
    rqs.push_back({transport::opcode::write, r.local.data + p.local_offset, r.target,
                   reinterpret_cast<uint64_t>(r.remote.data + p.remote_offset), p.length});
  }
  auto batch = r.engine->allocate_batch(rqs.size());
  BOOST_REQUIRE(batch);
  auto first = r.engine->submit(*batch, rqs);
  BOOST_REQUIRE_MESSAGE(first, why(first));
  auto summary = r.engine->wait(*batch, 10s);
  BOOST_REQUIRE_MESSAGE(summary, why(summary));
  BOOST_CHECK_EQUAL(summary->completed, rqs.size());
  auto slices = r.take_all();
  size_t total = 0;
  for (size_t i = 0; i < std::size(pieces); ++i) {
    const auto& p = pieces[i];
    auto begin = reinterpret_cast<uint64_t>(r.local.data + p.local_offset);
    std::vector<transport::slice_op> mine;
    for (const auto& s : slices)
      if (s.local_addr >= begin && s.local_addr < begin + p.length)
        mine.push_back(s);
    total += mine.size();
    BOOST_TEST_CONTEXT("task " << i) {
      check_tiling(mine, transport::opcode::write, begin,
                   reinterpret_cast<uint64_t>(r.remote.data + p.remote_offset), p.length, 65536);
      BOOST_CHECK_EQUAL(tools::check_pattern(r.remote.data + p.remote_offset, p.length, 100 + i),
                        p.length);
    }
  }
  BOOST_CHECK_EQUAL(total, slices.size());
}
