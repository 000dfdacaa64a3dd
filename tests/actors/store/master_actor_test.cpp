#define BOOST_TEST_MODULE master_actor_test
#include <boost/test/unit_test.hpp>

#include <memory>
#include <optional>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/scheduler/test_coordinator.hpp>

#include "actors/runtime.hpp"
#include "actors/store/master.hpp"
#include "tests/support/checks.hpp"
#include "transport/store/wire.hpp"

// The master actor's protocol on CAF's deterministic scheduler and virtual clock: which requests
// it answers at once, which it holds (a watch until there is work or its interval passed, a
// put_end until the holders committed), and that each held request is answered exactly once.

using namespace kvferry;
using namespace std::chrono_literals;
namespace w = transport::store;
using bytes = std::vector<uint8_t>;

namespace {

/// What one call got back; empty while the master holds it.
struct reply_box {
  std::optional<caf::expected<bytes>> value;
  int answers = 0;
};

struct fixture {
  actor_config cfg{false};
  std::unique_ptr<caf::actor_system> sys;
  caf::scheduler::test_coordinator* sched = nullptr;
  store::master_actor master;

  fixture() {
    cfg.set("scheduler.policy", caf::atom("testing"));
    sys = std::make_unique<caf::actor_system>(cfg);
    sched = &dynamic_cast<caf::scheduler::test_coordinator&>(sys->scheduler());
    store::master_options o;
    o.policy.watch_interval = 1000ms;
    o.policy.commit_timeout = 3000ms;
    o.tick_interval = 100ms;
    master = store::spawn_master(*sys, o, 42);
    run();
  }
  ~fixture() {
    caf::anon_send_exit(master, caf::exit_reason::user_shutdown);
    run();
  }

  void run() {
    while (sched->try_run_once()) {
    }
  }

  /// Moves virtual time forward by `d` in ticks, running everything due.
  void advance(caf::timespan d) {
    const caf::timespan step = 100ms;
    for (caf::timespan t{0}; t < d; t += step) {
      sched->clock().advance_time(step);
      run();
    }
  }

  template <class T>
  std::shared_ptr<reply_box> call(w::method m, const T& request) {
    auto payload = w::encode(request);
    BOOST_REQUIRE(payload);
    return call_raw(static_cast<uint16_t>(m), *payload);
  }

  std::shared_ptr<reply_box> call_raw(uint16_t m, bytes payload) {
    auto box = std::make_shared<reply_box>();
    auto body = [](caf::event_based_actor* self, store::master_actor to, uint16_t method,
                   bytes p, std::shared_ptr<reply_box> out) {
      self->request(to, caf::infinite, call_atom::value, method, std::move(p))
        .then(
          [out](bytes& r) {
            out->value = std::move(r);
            ++out->answers;
          },
          [out](caf::error& err) {
            out->value = std::move(err);
            ++out->answers;
          });
    };
    sys->spawn(body, master, m, std::move(payload), box);
    run();
    return box;
  }

  void mount(uint64_t client, const std::string& name, uint64_t base) {
    w::mount_request r{client, name, "host", 0, {{name, base, 1 << 20, {}}}};
    auto box = call(w::method::mount, r);
    BOOST_REQUIRE(box->value && *box->value);
  }
};

w::watch_reply watch_reply_of(const reply_box& box) {
  BOOST_REQUIRE(box.value);
  BOOST_REQUIRE_MESSAGE(*box.value, test::why(*box.value));
  auto r = w::decode_watch_reply(**box.value);
  BOOST_REQUIRE(r);
  return *r;
}

} // namespace

BOOST_AUTO_TEST_CASE(put_end_is_answered_once_the_holder_acknowledged_the_commit) {
  fixture f;
  f.mount(1, "a", 0x100000);
  auto held = f.call(w::method::watch, w::watch_request{1, {}});
  BOOST_CHECK(!held->value); // nothing to do: held
  auto start = f.call(w::method::put_start,
                      w::put_start_request{1, {{"k", 100, 1, false, false}}});
  BOOST_REQUIRE(start->value && *start->value);
  auto slots = w::decode_put_start_reply(**start->value);
  BOOST_REQUIRE(slots && slots->slots.size() == 1);
  auto put_id = slots->slots[0].put_id;
  auto end = f.call(w::method::put_end, w::put_finish_request{1, {{"k", put_id, false, 0}}});
  BOOST_CHECK(!end->value); // waits for the holder
  // The held watch was answered with the commit.
  auto work = watch_reply_of(*held);
  BOOST_REQUIRE_EQUAL(work.work.size(), 1u);
  BOOST_CHECK(work.work[0].kind == w::instruction_kind::commit);
  BOOST_CHECK(!end->value);
  auto next = f.call(w::method::watch, w::watch_request{1, {work.work[0].id}});
  BOOST_REQUIRE(end->value && *end->value);
  auto results = w::decode_statuses_reply(**end->value);
  BOOST_REQUIRE(results && results->results.size() == 1);
  BOOST_CHECK(results->results[0].code == errc::none);
  BOOST_CHECK(!next->value); // nothing more to do: held again
  f.advance(5s);
  BOOST_CHECK_EQUAL(held->answers, 1);
  BOOST_CHECK_EQUAL(end->answers, 1);
}

BOOST_AUTO_TEST_CASE(an_idle_watch_is_answered_after_its_interval_and_not_before) {
  fixture f;
  f.mount(1, "a", 0x100000);
  auto held = f.call(w::method::watch, w::watch_request{1, {}});
  f.advance(800ms);
  BOOST_CHECK(!held->value);
  f.advance(400ms);
  BOOST_REQUIRE(held->value);
  BOOST_CHECK(watch_reply_of(*held).work.empty());
  BOOST_CHECK_EQUAL(held->answers, 1);
}

BOOST_AUTO_TEST_CASE(a_newer_watch_answers_the_held_one) {
  fixture f;
  f.mount(1, "a", 0x100000);
  auto first = f.call(w::method::watch, w::watch_request{1, {}});
  auto second = f.call(w::method::watch, w::watch_request{1, {}});
  BOOST_REQUIRE(first->value);
  BOOST_CHECK(watch_reply_of(*first).work.empty());
  BOOST_CHECK(!second->value);
  f.advance(3s);
  BOOST_CHECK_EQUAL(first->answers, 1);
  BOOST_CHECK_EQUAL(second->answers, 1);
}

BOOST_AUTO_TEST_CASE(a_commit_that_never_comes_fails_the_put_end_at_the_commit_timeout) {
  fixture f;
  f.mount(1, "a", 0x100000);
  auto start = f.call(w::method::put_start,
                      w::put_start_request{1, {{"k", 100, 1, false, false}}});
  auto slots = w::decode_put_start_reply(**start->value);
  BOOST_REQUIRE(slots);
  auto end = f.call(w::method::put_end,
                    w::put_finish_request{1, {{"k", slots->slots[0].put_id, false, 0}}});
  f.advance(2s);
  BOOST_CHECK(!end->value);
  f.advance(2s);
  BOOST_REQUIRE(end->value && *end->value);
  auto results = w::decode_statuses_reply(**end->value);
  BOOST_REQUIRE(results);
  BOOST_CHECK(results->results[0].code == errc::timeout);
  auto exists = f.call(w::method::exists, w::keys_request{1, {"k"}, false});
  auto e = w::decode_statuses_reply(**exists->value);
  BOOST_REQUIRE(e);
  BOOST_CHECK(e->results[0].code == errc::object_not_found);
}

BOOST_AUTO_TEST_CASE(bad_requests_are_answered_with_errors_at_once) {
  fixture f;
  for (uint16_t m : {uint16_t{0}, uint16_t{11}, uint16_t{65535}}) {
    auto r = f.call_raw(m, {1, 2, 3});
    BOOST_REQUIRE(r->value);
    BOOST_REQUIRE(!*r->value);
    BOOST_CHECK(code_of(r->value->error()) == errc::malformed_frame);
  }
  auto garbage = f.call_raw(static_cast<uint16_t>(w::method::put_start), {0xff, 0xff});
  BOOST_REQUIRE(garbage->value && !*garbage->value);
  BOOST_CHECK(code_of(garbage->value->error()) == errc::malformed_frame);
  auto unknown = f.call(w::method::watch, w::watch_request{77, {}});
  BOOST_REQUIRE(unknown->value && !*unknown->value);
  BOOST_CHECK(code_of(unknown->value->error()) == errc::not_mounted);
  // Still serving.
  f.mount(1, "a", 0x100000);
}
