#include "actors/transfer_coordinator.hpp"

#include <algorithm>
#include <functional>
#include <limits>
#include <queue>
#include <random>
#include <set>
#include <unordered_map>

#include <caf/actor_system.hpp>
#include <caf/send.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "config/log.hpp"

namespace kvferry {

namespace {

using clock_type = caf::actor_clock;
using time_point = clock_type::time_point;

constexpr uint32_t no_slot = std::numeric_limits<uint32_t>::max();
constexpr uint32_t no_worker = std::numeric_limits<uint32_t>::max();
/// Deadlines are checked at most this often (a task times out at most this late).
constexpr auto timer_granularity = std::chrono::milliseconds(1);
/// How much longer than the withdraw timeout the coordinator waits for a worker's answer.
constexpr auto worker_answer_margin = std::chrono::seconds(1);

constexpr uint64_t make_id(uint32_t generation, uint32_t slot) noexcept {
  return (uint64_t{generation} << 32) | slot;
}
constexpr uint32_t slot_of(uint64_t id) noexcept {
  return static_cast<uint32_t>(id);
}
constexpr uint32_t generation_of(uint64_t id) noexcept {
  return static_cast<uint32_t>(id >> 32);
}

struct slice_entry {
  uint32_t generation = 0;
  uint32_t task = no_slot;
  /// The worker holding the current attempt; no_worker while it waits for its retry.
  uint32_t worker = no_worker;
  uint32_t attempts = 0;
  /// The worker of the last failed attempt (a retry prefers another).
  uint32_t failed_worker = no_worker;
  uint64_t offset = 0;
  uint64_t length = 0;
  bool live = false;
};

struct task_entry {
  uint32_t generation = 0;
  bool live = false;
  uint32_t index = 0; // in its batch
  batch_board* board = nullptr;
  uint64_t batch_id = 0;
  uint32_t prev = no_slot; // the batch's list of live tasks
  uint32_t next = no_slot;
  uint32_t slices_open = 0;
  uint64_t bytes_done = 0;
  time_point deadline;
  task_spec spec;
  /// Slice slots of this task (live or already released); capacity is reused across tasks.
  std::vector<uint32_t> slices;
  /// The submit-with-notify group this task belongs to, or no_slot.
  uint32_t group = no_slot;
  /// The last failure of one of its slices, for the reason of a TIMEOUT.
  std::string last_error;
  /// Its remote region has no RDMA keys (fenced, or device memory without GPUDirect): its slices
  /// go to the segment's non-RDMA workers.
  bool keyless = false;
};

/// The tasks of one submit-with-notify: the notification goes out when the last one resolves,
/// and only if every one of them COMPLETED.
struct notify_group {
  notify_spec spec;
  uint32_t unresolved = 0;
  bool all_completed = true;
};

struct batch_record {
  std::shared_ptr<batch_board> board;
  uint32_t head = no_slot;
  uint32_t live = 0;
};

struct worker_entry {
  worker_actor handle;
  std::string endpoint_kind;
};

struct segment_entry {
  memory::segment_descriptor descriptor;
  std::vector<uint32_t> workers; // eligible worker indices
  /// When `workers` are RDMA workers: those of the next kind the segment offers (tcp), for
  /// regions without RDMA keys; empty otherwise.
  std::vector<uint32_t> keyless_workers;
  uint32_t cursor = 0;           // round robin
  uint64_t slice_size = 0;       // for tasks to this segment
  // Bytes of the slices that succeeded, for stats (read by it, never acted on).
  uint64_t read_bytes = 0;
  uint64_t write_bytes = 0;
};

struct timed_entry {
  time_point when;
  uint64_t id; // a task id (deadlines) or a slice id (retries)
  bool operator>(const timed_entry& other) const noexcept { return when > other.when; }
};

using timed_heap = std::priority_queue<timed_entry, std::vector<timed_entry>, std::greater<>>;

/// One withdraw request sent to a worker and not yet answered.
struct withdrawal_record {
  std::vector<uint64_t> batches;
  /// Segments its WRITE slices went to (all named if the worker never answers).
  std::set<std::string> write_segments;
};

/// What free(batch) waits for: the batch's withdrawals still unanswered, and what they could not
/// settle.
struct withdrawal_book {
  uint32_t pending = 0;
  std::set<std::string> unsettled;
  std::vector<caf::typed_response_promise<std::vector<std::string>>> waiters;
};

struct coordinator_state {
  coordinator_settings settings;
  std::vector<worker_entry> workers;
  std::unordered_map<segment_id, segment_entry> segments;
  std::vector<slice_entry> slices;
  std::vector<uint32_t> free_slices;
  std::vector<task_entry> tasks;
  std::vector<uint32_t> free_tasks;
  std::unordered_map<uint64_t, batch_record> batches;
  std::vector<notify_group> groups;
  std::vector<uint32_t> free_groups;
  timed_heap deadlines;
  timed_heap retries;
  time_point next_timer = time_point::max();
  std::mt19937_64 rng;
  // Messages to workers collected while handling one message, sent by flush().
  std::vector<std::vector<transport::slice_op>> outbox_post;
  std::vector<std::vector<uint64_t>> outbox_withdraw;
  std::vector<withdrawal_record> outbox_withdraw_info;
  // Withdraw requests sent and not yet confirmed, by sequence number. stop() replies only once
  // every one of them is confirmed; free(batch) once those of its batch are.
  uint64_t withdrawals_sent = 0;
  std::unordered_map<uint64_t, withdrawal_record> withdrawals_unconfirmed;
  std::unordered_map<uint64_t, withdrawal_book> books;
  std::vector<std::function<void()>> stop_waiters;
  coordinator_stats stats;
  bool stopping = false;
  static inline const char* name = "kvferry.coordinator";
};

using self_pointer = coordinator_actor::stateful_pointer<coordinator_state>;

uint32_t allocate_slice(coordinator_state& st) {
  if (!st.free_slices.empty()) {
    auto slot = st.free_slices.back();
    st.free_slices.pop_back();
    return slot;
  }
  st.slices.emplace_back();
  return static_cast<uint32_t>(st.slices.size() - 1);
}

/// Ends the slice's current attempt: closes its gate (waiting while a data path copies its bytes)
/// and moves to a new generation, so any report still naming the old id is recognisably stale.
void end_attempt(coordinator_state& st, uint32_t slot) {
  if (st.settings.gates)
    st.settings.gates->close(slot);
  ++st.slices[slot].generation;
}

void release_slice(coordinator_state& st, uint32_t slot) {
  auto& s = st.slices[slot];
  s.live = false;
  s.worker = no_worker;
  end_attempt(st, slot);
  st.free_slices.push_back(slot);
}

uint32_t allocate_task(coordinator_state& st) {
  if (!st.free_tasks.empty()) {
    auto slot = st.free_tasks.back();
    st.free_tasks.pop_back();
    return slot;
  }
  st.tasks.emplace_back();
  return static_cast<uint32_t>(st.tasks.size() - 1);
}

/// Queues slice `slot` for worker `w`, under its current id, with its gate open.
void post_slice(coordinator_state& st, uint32_t slot, uint32_t w) {
  auto& s = st.slices[slot];
  const auto& t = st.tasks[s.task];
  s.worker = w;
  s.live = true;
  transport::slice_op op;
  op.id = make_id(s.generation, slot);
  op.op = t.spec.op;
  op.peer = t.spec.segment;
  op.remote_key = t.spec.remote_key;
  op.local_addr = t.spec.local_addr + s.offset;
  op.remote_addr = t.spec.remote_addr + s.offset;
  op.length = s.length;
  op.local_where = t.spec.local_where;
  op.fence_token = t.spec.fence_token;
  op.deadline_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                     t.deadline.time_since_epoch()).count();
  if (st.settings.gates)
    st.settings.gates->open(slot, s.generation);
  st.outbox_post[w].push_back(op);
  ++st.stats.slices_posted;
}

/// One task of notify group `g` resolved; sends or drops the notification after the last one.
void group_task_resolved(coordinator_state& st, uint32_t g, bool completed) {
  auto& group = st.groups[g];
  group.all_completed = group.all_completed && completed;
  if (--group.unresolved > 0)
    return;
  if (group.all_completed && group.spec.send) {
    // Every WRITE of the submission is confirmed in place at the target: announce it.
    group.spec.send(std::move(group.spec.from), std::move(group.spec.message));
    ++st.stats.notifies_sent;
  } else {
    ++st.stats.notifies_dropped;
  }
  group.spec = notify_spec{};
  st.free_groups.push_back(g);
}

/// The single place a task becomes terminal. Closes its slices' gates and withdraws those still at
/// workers, publishes the state on the batch board, and forgets the task.
void resolve(coordinator_state& st, uint32_t task_slot, task_state state, errc code,
             std::string reason) {
  auto& t = st.tasks[task_slot];
  if (!t.live) {
    ++st.stats.repeated_resolutions;
    return;
  }
  for (auto slot : t.slices) {
    auto& s = st.slices[slot];
    if (!s.live || s.task != task_slot)
      continue;
    if (s.worker != no_worker) {
      st.outbox_withdraw[s.worker].push_back(make_id(s.generation, slot));
      auto& info = st.outbox_withdraw_info[s.worker];
      if (std::find(info.batches.begin(), info.batches.end(), t.batch_id) == info.batches.end())
        info.batches.push_back(t.batch_id);
      if (t.spec.op == transport::opcode::write) {
        auto seg = st.segments.find(t.spec.segment);
        if (seg != st.segments.end())
          info.write_segments.insert(seg->second.descriptor.name);
      }
      ++st.stats.slices_withdrawn;
    }
    release_slice(st, slot);
  }
  t.slices.clear();
  if (!t.board->resolve(t.index, state, t.bytes_done, code, std::move(reason)))
    ++st.stats.repeated_resolutions;
  if (t.group != no_slot) {
    group_task_resolved(st, t.group, state == task_state::completed);
    t.group = no_slot;
  }
  switch (state) {
    case task_state::completed: ++st.stats.tasks_completed; break;
    case task_state::failed: ++st.stats.tasks_failed; break;
    case task_state::timeout: ++st.stats.tasks_timeout; break;
    default: ++st.stats.tasks_canceled; break;
  }
  // Unlink from the batch; forget the batch when it has no live task left.
  auto it = st.batches.find(t.batch_id);
  if (it != st.batches.end()) {
    auto& rec = it->second;
    if (t.prev != no_slot)
      st.tasks[t.prev].next = t.next;
    else
      rec.head = t.next;
    if (t.next != no_slot)
      st.tasks[t.next].prev = t.prev;
    if (--rec.live == 0)
      st.batches.erase(it);
  }
  t.live = false;
  t.board = nullptr;
  t.last_error.clear();
  ++t.generation;
  st.free_tasks.push_back(task_slot);
}

/// Answers the free() calls waiting on batch `batch` once its withdrawals are all confirmed.
void settle_book(coordinator_state& st, uint64_t batch) {
  auto it = st.books.find(batch);
  if (it == st.books.end() || it->second.pending > 0)
    return;
  auto& book = it->second;
  if (book.waiters.empty() && !book.unsettled.empty())
    return; // kept for the batch's free(), which reports it
  std::vector<std::string> names(book.unsettled.begin(), book.unsettled.end());
  for (auto& rp : book.waiters)
    rp.deliver(names);
  st.books.erase(it);
}

/// A worker answered withdraw request `seq` (or did not in time): books what it could not settle
/// and runs the waiters whose withdrawals are now all confirmed.
void confirm_withdrawal(self_pointer self, uint64_t seq, std::vector<std::string> unsettled) {
  auto& st = self->state;
  auto it = st.withdrawals_unconfirmed.find(seq);
  if (it == st.withdrawals_unconfirmed.end())
    return;
  auto record = std::move(it->second);
  st.withdrawals_unconfirmed.erase(it);
  if (!unsettled.empty())
    ++st.stats.unsettled_withdrawals;
  for (auto batch : record.batches) {
    auto& book = st.books[batch];
    if (book.pending > 0)
      --book.pending;
    book.unsettled.insert(unsettled.begin(), unsettled.end());
    settle_book(st, batch);
  }
  if (st.withdrawals_unconfirmed.empty()) {
    auto waiters = std::move(st.stop_waiters);
    st.stop_waiters.clear();
    for (auto& done : waiters)
      done();
  }
}

void flush(self_pointer self) {
  auto& st = self->state;
  for (size_t w = 0; w < st.workers.size(); ++w) {
    if (!st.outbox_post[w].empty()) {
      auto sent = st.outbox_post[w].size();
      self->send(st.workers[w].handle, post_atom::value, std::move(st.outbox_post[w]));
      st.outbox_post[w] = {};
      st.outbox_post[w].reserve(sent); // the next batch is likely as large: no regrowth
    }
  }
  for (size_t w = 0; w < st.workers.size(); ++w) {
    if (st.outbox_withdraw[w].empty())
      continue;
    auto seq = ++st.withdrawals_sent;
    auto& info = st.outbox_withdraw_info[w];
    for (auto batch : info.batches)
      ++st.books[batch].pending;
    auto segments = info.write_segments;
    st.withdrawals_unconfirmed.emplace(seq, std::move(info));
    info = withdrawal_record{};
    auto deadline = std::chrono::steady_clock::now()
                    + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                      st.settings.withdraw_timeout);
    auto deadline_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                         deadline.time_since_epoch()).count();
    self->request(st.workers[w].handle, st.settings.withdraw_timeout + worker_answer_margin,
                  withdraw_atom::value, std::move(st.outbox_withdraw[w]), deadline_ns)
      .then([self, seq](std::vector<std::string>& unsettled) {
              confirm_withdrawal(self, seq, std::move(unsettled));
            },
            [self, seq, w, segments](caf::error& err) {
              log::warn("worker {} did not confirm a withdrawal: {}", w, describe(err));
              confirm_withdrawal(self, seq,
                                 std::vector<std::string>(segments.begin(), segments.end()));
            });
    st.outbox_withdraw[w] = {};
  }
}

void arm_timer(self_pointer self) {
  auto& st = self->state;
  if (st.deadlines.empty() && st.retries.empty())
    return;
  auto next = time_point::max();
  if (!st.deadlines.empty())
    next = st.deadlines.top().when;
  if (!st.retries.empty())
    next = std::min(next, st.retries.top().when);
  auto now = self->clock().now();
  auto when = std::max(next, now + timer_granularity);
  if (when >= st.next_timer)
    return;
  st.next_timer = when;
  self->delayed_send(self, when - now, deadline_atom::value);
}

/// Drops deadline entries of tasks already resolved when they dominate the heap.
void compact_deadlines(coordinator_state& st) {
  auto live = st.tasks.size() - st.free_tasks.size();
  if (st.deadlines.size() < 2 * live + 4096)
    return;
  std::vector<timed_entry> kept;
  kept.reserve(live);
  for (uint32_t slot = 0; slot < st.tasks.size(); ++slot)
    if (st.tasks[slot].live)
      kept.push_back(timed_entry{st.tasks[slot].deadline, make_id(st.tasks[slot].generation, slot)});
  st.deadlines = timed_heap(std::greater<>{}, std::move(kept));
}

void cancel_all(coordinator_state& st, const std::string& reason) {
  for (uint32_t slot = 0; slot < st.tasks.size(); ++slot)
    if (st.tasks[slot].live)
      resolve(st, slot, task_state::canceled, errc::shutting_down, reason);
}

/// The next of `list` (round robin on the segment's cursor), another than `avoid` when there is one.
uint32_t round_robin(segment_entry& segment, const std::vector<uint32_t>& list, uint32_t avoid) {
  auto w = list[segment.cursor++ % list.size()];
  if (list.size() > 1)
    while (w == avoid)
      w = list[segment.cursor++ % list.size()];
  return w;
}

/// The next worker for a slice of `segment`: round robin, another than `avoid` when there is one.
uint32_t pick_worker(segment_entry& segment, uint32_t avoid) {
  return round_robin(segment, segment.workers, avoid);
}

/// As above, among the workers preferred for the slice's local memory when any of them serves the
/// segment (the NIC priority matrix); the preferred set without `avoid` may be empty on a retry,
/// then any worker of the segment.
uint32_t pick_worker(const coordinator_state& st, segment_entry& segment,
                     const memory::location& where, uint32_t avoid, bool keyless = false) {
  if (keyless && !segment.keyless_workers.empty())
    return round_robin(segment, segment.keyless_workers, avoid);
  if (!st.settings.location_workers.empty()) {
    auto it = st.settings.location_workers.find(to_string(where));
    if (it != st.settings.location_workers.end()) {
      uint32_t candidates[64];
      uint32_t n = 0;
      for (auto w : segment.workers)
        if (w != avoid && n < 64
            && std::find(it->second.begin(), it->second.end(), w) != it->second.end())
          candidates[n++] = w;
      if (n > 0)
        return candidates[segment.cursor++ % n];
    }
  }
  return pick_worker(segment, avoid);
}

/// True when a worker still reaches the task's segment; otherwise resolves the task FAILED (its
/// segment was re-opened with a descriptor no worker's data path reaches).
bool retry_possible(coordinator_state& st, uint32_t task_slot) {
  auto& t = st.tasks[task_slot];
  auto seg = st.segments.find(t.spec.segment);
  if (seg != st.segments.end() && !seg->second.workers.empty())
    return true;
  auto name = seg == st.segments.end() ? std::to_string(t.spec.segment)
                                       : seg->second.descriptor.name;
  resolve(st, task_slot, task_state::failed, errc::not_supported,
          "no worker's data path reaches segment '" + name + "' any more (it was re-opened "
          "without an endpoint this engine can use); last error: " + t.last_error);
  return false;
}

void handle_submit(self_pointer self, submission& sub) {
  auto& st = self->state;
  auto& board = *sub.board;
  auto count = static_cast<uint32_t>(sub.tasks.size());
  st.stats.tasks_submitted += count;
  if (st.stopping || board.freed()) {
    // Never entered as live tasks: resolved here, once, and counted.
    const char* why = st.stopping ? "engine is stopping" : "batch was freed before dispatch";
    for (uint32_t i = 0; i < count; ++i)
      board.resolve(sub.first_index + i, task_state::canceled, 0,
                    st.stopping ? errc::shutting_down : errc::none, why);
    st.stats.tasks_canceled += count;
    if (sub.notify)
      ++st.stats.notifies_dropped;
    return;
  }
  uint32_t group = no_slot;
  if (sub.notify && count > 0) {
    if (!st.free_groups.empty()) {
      group = st.free_groups.back();
      st.free_groups.pop_back();
    } else {
      group = static_cast<uint32_t>(st.groups.size());
      st.groups.emplace_back();
    }
    st.groups[group] = notify_group{std::move(*sub.notify), count, true};
  }
  auto& rec = st.batches[board.id()];
  if (!rec.board)
    rec.board = sub.board;
  auto deadline = self->clock().now() + sub.deadline;
  for (uint32_t i = 0; i < count; ++i) {
    const auto& spec = sub.tasks[i];
    auto index = sub.first_index + i;
    auto seg = st.segments.find(spec.segment);
    if (seg == st.segments.end() || seg->second.workers.empty() || spec.length == 0) {
      auto code = spec.length == 0 ? errc::invalid_argument
                  : seg == st.segments.end() ? errc::unknown_segment
                                             : errc::not_supported;
      auto why = spec.length == 0 ? std::string("task has length 0")
                 : seg == st.segments.end()
                   ? "segment " + std::to_string(spec.segment) + " is not open"
                   : "no worker's data path reaches segment '" + seg->second.descriptor.name + "'";
      board.resolve(index, task_state::failed, 0, code, std::move(why));
      ++st.stats.tasks_failed;
      if (group != no_slot)
        group_task_resolved(st, group, false);
      continue;
    }
    auto slot = allocate_task(st);
    auto& t = st.tasks[slot];
    t.live = true;
    t.index = index;
    t.board = &board;
    t.batch_id = board.id();
    t.prev = no_slot;
    t.next = rec.head;
    if (rec.head != no_slot)
      st.tasks[rec.head].prev = slot;
    rec.head = slot;
    ++rec.live;
    t.bytes_done = 0;
    t.deadline = deadline;
    t.spec = spec;
    t.group = group;
    t.slices.clear();
    t.last_error.clear();
    t.keyless = false;
    if (!seg->second.keyless_workers.empty())
      if (const auto* region = seg->second.descriptor.find(spec.remote_addr, spec.length))
        t.keyless = region->rdma_keys.empty();
    const auto slice_size = seg->second.slice_size;
    auto n = static_cast<uint32_t>((spec.length + slice_size - 1) / slice_size);
    t.slices_open = n;
    auto& segment = seg->second;
    for (uint32_t k = 0; k < n; ++k) {
      auto s_slot = allocate_slice(st);
      auto& s = st.slices[s_slot];
      s.task = slot;
      s.attempts = 0;
      s.failed_worker = no_worker;
      s.offset = uint64_t{k} * slice_size;
      s.length = std::min<uint64_t>(slice_size, spec.length - s.offset);
      st.tasks[slot].slices.push_back(s_slot);
      post_slice(st, s_slot, pick_worker(st, segment, spec.local_where, no_worker, t.keyless));
    }
    board.set_pending(index);
    st.deadlines.push(timed_entry{deadline, make_id(t.generation, slot)});
  }
  if (rec.live == 0)
    st.batches.erase(board.id());
  compact_deadlines(st);
  arm_timer(self);
  flush(self);
}

/// The delay before attempt `attempt` (1 for the first retry): base * 2^(attempt-1), capped, the
/// actual delay drawn between half and all of it.
caf::timespan backoff(coordinator_state& st, uint32_t attempt) {
  auto base = st.settings.retry_backoff;
  if (base.count() <= 0)
    return caf::timespan{0};
  auto delay = base;
  for (uint32_t i = 1; i < attempt && delay < st.settings.retry_backoff_max; ++i)
    delay *= 2;
  delay = std::min(delay, st.settings.retry_backoff_max);
  std::uniform_int_distribution<int64_t> jitter(delay.count() / 2, delay.count());
  return caf::timespan{jitter(st.rng)};
}

void handle_report(self_pointer self, uint32_t worker,
                   std::vector<transport::slice_completion>& batch) {
  auto& st = self->state;
  bool retry_scheduled = false;
  for (const auto& c : batch) {
    auto slot = slot_of(c.id);
    if (slot >= st.slices.size() || !st.slices[slot].live
        || st.slices[slot].generation != generation_of(c.id)) {
      ++st.stats.late_reports;
      continue;
    }
    auto& s = st.slices[slot];
    auto task_slot = s.task;
    auto& t = st.tasks[task_slot];
    bool ok = c.code == errc::none && c.bytes == s.length;
    if (ok) {
      ++st.stats.slices_succeeded;
      t.bytes_done += s.length;
      if (auto seg = st.segments.find(t.spec.segment); seg != st.segments.end())
        (t.spec.op == transport::opcode::write ? seg->second.write_bytes : seg->second.read_bytes)
          += s.length;
      release_slice(st, slot);
      if (--t.slices_open == 0)
        resolve(st, task_slot, task_state::completed, errc::none, {});
      continue;
    }
    ++st.stats.slices_failed;
    auto code = c.code == errc::none ? errc::transport_failure : c.code;
    t.last_error = std::string(to_string(code)) + " on worker " + std::to_string(worker)
                   + " (slice at offset " + std::to_string(s.offset) + ", attempt "
                   + std::to_string(s.attempts + 1) + ")";
    if (code == errc::timeout && !c.retryable) {
      // The data path gave the slice up at the task's deadline: the task times out.
      auto reason = "deadline passed with " + std::to_string(t.bytes_done) + " of "
                    + std::to_string(t.spec.length) + " bytes in place; last error: "
                    + t.last_error;
      resolve(st, task_slot, task_state::timeout, errc::timeout, std::move(reason));
      continue;
    }
    // A fenced access stays fenced (the target's floor never goes down): never retried, whatever
    // the data path said.
    const bool retryable = c.retryable && code != errc::fenced;
    if (retryable && s.attempts < st.settings.retry_limit) {
      ++s.attempts;
      ++st.stats.slices_retried;
      s.failed_worker = s.worker;
      end_attempt(st, slot); // a report for the failed attempt is stale from now on
      if (!retry_possible(st, task_slot))
        continue; // resolved FAILED: no worker reaches the segment any more
      auto delay = backoff(st, s.attempts);
      if (delay.count() == 0) {
        post_slice(st, slot, pick_worker(st, st.segments[t.spec.segment], t.spec.local_where, s.failed_worker,
                                     t.keyless));
        continue;
      }
      s.worker = no_worker; // waiting for its retry
      auto when = self->clock().now() + delay;
      if (when >= t.deadline) {
        // No time left for the retry: the task times out at its deadline, naming the error.
        ++st.stats.retries_given_up;
        continue;
      }
      st.retries.push(timed_entry{when, make_id(s.generation, slot)});
      retry_scheduled = true;
      continue;
    }
    auto reason = std::string("slice at offset ") + std::to_string(s.offset) + " ("
                  + std::to_string(s.length) + " bytes, remote " + hex(t.spec.remote_addr + s.offset)
                  + ") failed on worker " + std::to_string(worker) + " after "
                  + std::to_string(s.attempts + 1) + " attempt(s): " + to_string(code)
                  + (c.code == errc::none ? " (short transfer)" : "")
                  + (code == errc::stale_incarnation
                       ? " (the target restarted: the memory this task named is gone; open the "
                         "segment again to learn its new layout)"
                       : "")
                  + (code == errc::fenced
                       ? " (the target's fence floor for that range is at or above the task's "
                         "fence token " + std::to_string(t.spec.fence_token)
                           + ": the allocation it named was freed)"
                       : "");
    release_slice(st, slot);
    resolve(st, task_slot, task_state::failed, code, std::move(reason));
  }
  if (retry_scheduled)
    arm_timer(self);
  flush(self);
}

void handle_deadline(self_pointer self) {
  auto& st = self->state;
  st.next_timer = time_point::max();
  auto now = self->clock().now();
  while (!st.deadlines.empty() && st.deadlines.top().when <= now) {
    auto id = st.deadlines.top().id;
    st.deadlines.pop();
    auto slot = slot_of(id);
    if (slot >= st.tasks.size() || !st.tasks[slot].live
        || st.tasks[slot].generation != generation_of(id))
      continue;
    auto& t = st.tasks[slot];
    auto reason = "deadline passed with " + std::to_string(t.bytes_done) + " of "
                  + std::to_string(t.spec.length) + " bytes in place"
                  + (t.last_error.empty() ? "" : "; last error: " + t.last_error);
    resolve(st, slot, task_state::timeout, errc::timeout, std::move(reason));
  }
  while (!st.retries.empty() && st.retries.top().when <= now) {
    auto id = st.retries.top().id;
    st.retries.pop();
    auto slot = slot_of(id);
    if (slot >= st.slices.size() || !st.slices[slot].live
        || st.slices[slot].generation != generation_of(id)
        || st.slices[slot].worker != no_worker)
      continue;
    auto& s = st.slices[slot];
    if (!retry_possible(st, s.task))
      continue;
    auto& t = st.tasks[s.task];
    post_slice(st, slot, pick_worker(st, st.segments[t.spec.segment], t.spec.local_where, s.failed_worker,
                                     t.keyless));
  }
  arm_timer(self);
  flush(self);
}

coordinator_stats current_stats(const coordinator_state& st) {
  auto out = st.stats;
  out.live_batches = st.batches.size();
  out.live_tasks = st.tasks.size() - st.free_tasks.size();
  out.live_slices = st.slices.size() - st.free_slices.size();
  for (const auto& [id, seg] : st.segments)
    if (seg.read_bytes > 0 || seg.write_bytes > 0)
      out.traffic.push_back(peer_traffic{seg.descriptor.name, seg.read_bytes, seg.write_bytes});
  return out;
}

void refresh_eligibility(coordinator_state& st, segment_entry& seg) {
  seg.workers.clear();
  // The slice size for a segment: the smallest one configured for the endpoint kinds of its
  // eligible workers, else the default.
  uint64_t size = 0;
  bool all_configured = true;
  // The preferred kind among those both the descriptor and some worker offer.
  std::string preferred;
  for (const auto& kind : st.settings.endpoint_preference) {
    bool served = seg.descriptor.endpoint(kind) != nullptr
                  && std::any_of(st.workers.begin(), st.workers.end(),
                                 [&](const worker_entry& w) { return w.endpoint_kind == kind; });
    if (served) {
      preferred = kind;
      break;
    }
  }
  for (uint32_t w = 0; w < st.workers.size(); ++w) {
    const auto& kind = st.workers[w].endpoint_kind;
    if (seg.descriptor.endpoint(kind) == nullptr || (!preferred.empty() && kind != preferred))
      continue;
    seg.workers.push_back(w);
    auto it = st.settings.endpoint_slice_size.find(kind);
    if (it == st.settings.endpoint_slice_size.end() || it->second == 0)
      all_configured = false;
    else
      size = size == 0 ? it->second : std::min(size, it->second);
  }
  seg.slice_size = all_configured && size > 0 ? size : st.settings.slice_size;
  // Regions without RDMA keys are reached through the next kind the segment offers.
  seg.keyless_workers.clear();
  if (preferred == "rdma") {
    for (const auto& kind : st.settings.endpoint_preference) {
      if (kind == "rdma" || seg.descriptor.endpoint(kind) == nullptr)
        continue;
      for (uint32_t w = 0; w < st.workers.size(); ++w)
        if (st.workers[w].endpoint_kind == kind)
          seg.keyless_workers.push_back(w);
      if (!seg.keyless_workers.empty())
        break;
    }
  }
}

coordinator_actor::behavior_type coordinator_impl(self_pointer self,
                                                  coordinator_settings settings) {
  self->state.settings = settings;
  if (self->state.settings.slice_size == 0)
    self->state.settings.slice_size = 64 << 10;
  self->state.rng.seed(settings.seed);
  return {
    [self](attach_atom, worker_actor worker, std::string& endpoint_kind) {
      auto& st = self->state;
      st.workers.push_back(worker_entry{worker, std::move(endpoint_kind)});
      st.outbox_post.emplace_back();
      st.outbox_withdraw.emplace_back();
      st.outbox_withdraw_info.emplace_back();
      for (auto& [id, seg] : st.segments) {
        refresh_eligibility(st, seg);
        if (seg.descriptor.endpoint(st.workers.back().endpoint_kind) != nullptr)
          self->send(worker, connect_atom::value, id, seg.descriptor);
      }
    },
    [self](connect_atom, segment_id id, memory::segment_descriptor& desc) {
      auto& st = self->state;
      auto& seg = st.segments[id];
      seg.descriptor = std::move(desc);
      refresh_eligibility(st, seg);
      for (auto w : seg.workers)
        self->send(st.workers[w].handle, connect_atom::value, id, seg.descriptor);
      for (auto w : seg.keyless_workers)
        self->send(st.workers[w].handle, connect_atom::value, id, seg.descriptor);
    },
    [self](submit_atom, submission& sub) { handle_submit(self, sub); },
    [self](report_atom, uint32_t worker, std::vector<transport::slice_completion>& batch) {
      handle_report(self, worker, batch);
    },
    [self](deadline_atom) { handle_deadline(self); },
    [self](free_atom, const batch_ref& ref) -> caf::result<std::vector<std::string>> {
      auto& st = self->state;
      auto batch = ref.board->id();
      auto it = st.batches.find(batch);
      if (it != st.batches.end()) {
        // Resolving unlinks the task; walk a copy of the list.
        std::vector<uint32_t> live;
        for (auto slot = it->second.head; slot != no_slot; slot = st.tasks[slot].next)
          live.push_back(slot);
        for (auto slot : live)
          resolve(st, slot, task_state::canceled, errc::none, "batch freed while in flight");
      }
      flush(self);
      // Even with no live task left, a slice of a task that timed out or failed may still be
      // withdrawing: reply once every withdrawal of this batch is confirmed.
      auto rp = self->make_response_promise<std::vector<std::string>>();
      st.books[batch].waiters.push_back(rp);
      settle_book(st, batch);
      return rp;
    },
    [self](stats_atom) { return current_stats(self->state); },
    [self](stop_atom) -> caf::result<bool> {
      auto& st = self->state;
      st.stopping = true;
      cancel_all(st, "engine is stopping");
      flush(self);
      auto rp = self->make_response_promise<bool>();
      auto done = [self, rp]() mutable {
        for (auto& w : self->state.workers)
          caf::anon_send(w.handle, stop_atom::value);
        rp.deliver(true);
        self->quit();
      };
      if (st.withdrawals_unconfirmed.empty())
        done();
      else
        st.stop_waiters.push_back(std::move(done));
      return rp;
    },
  };
}

} // namespace

coordinator_actor spawn_coordinator(caf::actor_system& sys, coordinator_settings settings) {
  return sys.spawn(coordinator_impl, settings);
}

} // namespace kvferry
