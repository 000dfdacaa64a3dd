#include "actors/transfer_coordinator.hpp"

#include <algorithm>
#include <functional>
#include <limits>
#include <queue>
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
/// Deadlines are checked at most this often (a task times out at most this late).
constexpr auto timer_granularity = std::chrono::milliseconds(1);

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
  uint32_t worker = 0;
  uint32_t attempts = 0;
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
  uint32_t cursor = 0;           // round robin
  uint64_t slice_size = 0;       // for tasks to this segment
};

struct deadline_entry {
  time_point when;
  uint64_t task_id;
  bool operator>(const deadline_entry& other) const noexcept { return when > other.when; }
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
  std::priority_queue<deadline_entry, std::vector<deadline_entry>, std::greater<>> deadlines;
  time_point next_timer = time_point::max();
  // Messages to workers collected while handling one message, sent by flush().
  std::vector<std::vector<transport::slice_op>> outbox_post;
  std::vector<std::vector<uint64_t>> outbox_withdraw;
  // Withdraw requests sent and not yet confirmed, by sequence number. free() and stop() reply only
  // once every withdrawal sent before them is confirmed, whichever resolution sent it: a task that
  // timed out or failed earlier may still have a slice queued at a worker.
  uint64_t withdrawals_sent = 0;
  std::set<uint64_t> withdrawals_unconfirmed;
  std::vector<std::pair<uint64_t, std::function<void()>>> withdrawal_waiters; // (last seq, done)
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

void release_slice(coordinator_state& st, uint32_t slot) {
  auto& s = st.slices[slot];
  s.live = false;
  ++s.generation; // any report still naming the old id is now recognisably stale
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

/// Queues slice `slot` for worker `w`.
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
  st.outbox_post[w].push_back(op);
  ++st.stats.slices_posted;
}

/// One task of notify group `g` resolved; sends or drops the notification after the last one.
void group_task_resolved(coordinator_state& st, uint32_t g, bool completed) {
  auto& group = st.groups[g];
  group.all_completed = group.all_completed && completed;
  if (--group.unresolved > 0)
    return;
  if (group.all_completed) {
    // Every WRITE of the submission is confirmed in place at the target: announce it.
    caf::anon_send(group.spec.target, notify_atom::value, std::move(group.spec.from),
                   std::move(group.spec.message));
    ++st.stats.notifies_sent;
  } else {
    ++st.stats.notifies_dropped;
  }
  group.spec = notify_spec{};
  st.free_groups.push_back(g);
}

/// The single place a task becomes terminal. Withdraws its slices still at workers, publishes the
/// state on the batch board, and forgets the task.
void resolve(coordinator_state& st, uint32_t task_slot, task_state state, errc code,
             std::string reason) {
  auto& t = st.tasks[task_slot];
  if (!t.live) {
    ++st.stats.repeated_resolutions;
    return;
  }
  for (auto slot : t.slices) {
    auto& s = st.slices[slot];
    if (s.live && s.task == task_slot) {
      st.outbox_withdraw[s.worker].push_back(make_id(s.generation, slot));
      ++st.stats.slices_withdrawn;
      release_slice(st, slot);
    }
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
  ++t.generation;
  st.free_tasks.push_back(task_slot);
}

/// A worker answered withdraw request `seq` (or did not within the timeout): runs the waiters
/// whose withdrawals are now all confirmed.
void confirm_withdrawal(self_pointer self, uint64_t seq) {
  auto& st = self->state;
  st.withdrawals_unconfirmed.erase(seq);
  auto oldest = st.withdrawals_unconfirmed.empty() ? std::numeric_limits<uint64_t>::max()
                                                   : *st.withdrawals_unconfirmed.begin();
  std::vector<std::function<void()>> ready;
  auto& waiters = st.withdrawal_waiters;
  for (auto it = waiters.begin(); it != waiters.end();) {
    if (it->first < oldest) {
      ready.push_back(std::move(it->second));
      it = waiters.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& done : ready)
    done();
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
    st.withdrawals_unconfirmed.insert(seq);
    self->request(st.workers[w].handle, st.settings.withdraw_timeout, withdraw_atom::value,
                  std::move(st.outbox_withdraw[w]))
      .then([self, seq](bool) { confirm_withdrawal(self, seq); },
            [self, seq, w](caf::error& err) {
              log::warn("worker {} did not confirm a withdrawal: {}", w, describe(err));
              confirm_withdrawal(self, seq);
            });
    st.outbox_withdraw[w] = {};
  }
}

/// Sends the collected posts and withdrawals and calls `done` once every withdrawal sent so far,
/// by this call or an earlier one, is confirmed (or timed out).
void flush_and_confirm(self_pointer self, std::function<void()> done) {
  flush(self);
  auto& st = self->state;
  if (st.withdrawals_unconfirmed.empty()) {
    done();
    return;
  }
  st.withdrawal_waiters.emplace_back(st.withdrawals_sent, std::move(done));
}

void arm_timer(self_pointer self) {
  auto& st = self->state;
  if (st.deadlines.empty())
    return;
  auto now = self->clock().now();
  auto when = std::max(st.deadlines.top().when, now + timer_granularity);
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
  std::vector<deadline_entry> kept;
  kept.reserve(live);
  for (uint32_t slot = 0; slot < st.tasks.size(); ++slot)
    if (st.tasks[slot].live)
      kept.push_back(deadline_entry{st.tasks[slot].deadline, make_id(st.tasks[slot].generation, slot)});
  st.deadlines = decltype(st.deadlines)(std::greater<>{}, std::move(kept));
}


void cancel_all(coordinator_state& st, const std::string& reason) {
  for (uint32_t slot = 0; slot < st.tasks.size(); ++slot)
    if (st.tasks[slot].live)
      resolve(st, slot, task_state::canceled, errc::shutting_down, reason);
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
    const auto slice_size = seg->second.slice_size;
    auto n = static_cast<uint32_t>((spec.length + slice_size - 1) / slice_size);
    t.slices_open = n;
    auto& segment = seg->second;
    for (uint32_t k = 0; k < n; ++k) {
      auto s_slot = allocate_slice(st);
      auto& s = st.slices[s_slot];
      s.task = slot;
      s.attempts = 0;
      s.offset = uint64_t{k} * slice_size;
      s.length = std::min<uint64_t>(slice_size, spec.length - s.offset);
      st.tasks[slot].slices.push_back(s_slot);
      auto w = segment.workers[segment.cursor++ % segment.workers.size()];
      post_slice(st, s_slot, w);
    }
    board.set_pending(index);
    st.deadlines.push(deadline_entry{deadline, make_id(t.generation, slot)});
  }
  if (rec.live == 0)
    st.batches.erase(board.id());
  compact_deadlines(st);
  arm_timer(self);
  flush(self);
}

void handle_report(self_pointer self, uint32_t worker,
                   std::vector<transport::slice_completion>& batch) {
  auto& st = self->state;
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
      release_slice(st, slot);
      if (--t.slices_open == 0)
        resolve(st, task_slot, task_state::completed, errc::none, {});
      continue;
    }
    ++st.stats.slices_failed;
    auto code = c.code == errc::none ? errc::transport_failure : c.code;
    if (c.retryable && s.attempts < st.settings.retry_limit) {
      // Retry under a new id on another eligible worker.
      ++s.attempts;
      ++s.generation;
      ++st.stats.slices_retried;
      auto& segment = st.segments[t.spec.segment];
      auto w = s.worker;
      if (segment.workers.size() > 1) {
        do
          w = segment.workers[segment.cursor++ % segment.workers.size()];
        while (w == s.worker);
      }
      post_slice(st, slot, w);
      continue;
    }
    auto reason = std::string("slice at offset ") + std::to_string(s.offset) + " ("
                  + std::to_string(s.length) + " bytes, remote " + hex(t.spec.remote_addr + s.offset)
                  + ") failed on worker " + std::to_string(worker) + " after "
                  + std::to_string(s.attempts + 1) + " attempt(s): " + to_string(code)
                  + (c.code == errc::none ? " (short transfer)" : "");
    release_slice(st, slot);
    resolve(st, task_slot, task_state::failed, code, std::move(reason));
  }
  flush(self);
}

void handle_deadline(self_pointer self) {
  auto& st = self->state;
  st.next_timer = time_point::max();
  auto now = self->clock().now();
  while (!st.deadlines.empty() && st.deadlines.top().when <= now) {
    auto id = st.deadlines.top().task_id;
    st.deadlines.pop();
    auto slot = slot_of(id);
    if (slot >= st.tasks.size() || !st.tasks[slot].live
        || st.tasks[slot].generation != generation_of(id))
      continue;
    auto& t = st.tasks[slot];
    auto reason = "deadline passed with " + std::to_string(t.bytes_done) + " of "
                  + std::to_string(t.spec.length) + " bytes in place";
    resolve(st, slot, task_state::timeout, errc::timeout, std::move(reason));
  }
  arm_timer(self);
  flush(self);
}

coordinator_stats current_stats(const coordinator_state& st) {
  auto out = st.stats;
  out.live_batches = st.batches.size();
  out.live_tasks = st.tasks.size() - st.free_tasks.size();
  out.live_slices = st.slices.size() - st.free_slices.size();
  return out;
}

void refresh_eligibility(coordinator_state& st, segment_entry& seg) {
  seg.workers.clear();
  // The slice size for a segment: the smallest one configured for the endpoint kinds of its
  // eligible workers, else the default.
  uint64_t size = 0;
  bool all_configured = true;
  for (uint32_t w = 0; w < st.workers.size(); ++w) {
    const auto& kind = st.workers[w].endpoint_kind;
    if (seg.descriptor.endpoint(kind) == nullptr)
      continue;
    seg.workers.push_back(w);
    auto it = st.settings.endpoint_slice_size.find(kind);
    if (it == st.settings.endpoint_slice_size.end() || it->second == 0)
      all_configured = false;
    else
      size = size == 0 ? it->second : std::min(size, it->second);
  }
  seg.slice_size = all_configured && size > 0 ? size : st.settings.slice_size;
}

coordinator_actor::behavior_type coordinator_impl(self_pointer self,
                                                  coordinator_settings settings) {
  self->state.settings = settings;
  if (self->state.settings.slice_size == 0)
    self->state.settings.slice_size = 64 << 10;
  return {
    [self](attach_atom, worker_actor worker, std::string& endpoint_kind) {
      auto& st = self->state;
      st.workers.push_back(worker_entry{worker, std::move(endpoint_kind)});
      st.outbox_post.emplace_back();
      st.outbox_withdraw.emplace_back();
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
    },
    [self](submit_atom, submission& sub) { handle_submit(self, sub); },
    [self](report_atom, uint32_t worker, std::vector<transport::slice_completion>& batch) {
      handle_report(self, worker, batch);
    },
    [self](deadline_atom) { handle_deadline(self); },
    [self](free_atom, const batch_ref& ref) -> caf::result<bool> {
      auto& st = self->state;
      auto it = st.batches.find(ref.board->id());
      if (it != st.batches.end()) {
        // Resolving unlinks the task; walk a copy of the list.
        std::vector<uint32_t> live;
        for (auto slot = it->second.head; slot != no_slot; slot = st.tasks[slot].next)
          live.push_back(slot);
        for (auto slot : live)
          resolve(st, slot, task_state::canceled, errc::none, "batch freed while in flight");
      }
      // Even with no live task left, a slice of a task that timed out or failed may still be
      // queued at a worker: reply after every withdrawal sent so far is confirmed.
      auto rp = self->make_response_promise<bool>();
      flush_and_confirm(self, [rp]() mutable { rp.deliver(true); });
      return rp;
    },
    [self](stats_atom) { return current_stats(self->state); },
    [self](stop_atom) -> caf::result<bool> {
      auto& st = self->state;
      st.stopping = true;
      cancel_all(st, "engine is stopping");
      auto rp = self->make_response_promise<bool>();
      flush_and_confirm(self, [self, rp]() mutable {
        for (auto& w : self->state.workers)
          caf::anon_send(w.handle, stop_atom::value);
        rp.deliver(true);
        self->quit();
      });
      return rp;
    },
  };
}

} // namespace

coordinator_actor spawn_coordinator(caf::actor_system& sys, coordinator_settings settings) {
  return sys.spawn(coordinator_impl, settings);
}

} // namespace kvferry
