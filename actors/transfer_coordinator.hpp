#pragma once
/// Role: transfer coordinator. Owns batches' tasks and their slices; the only code that resolves a
/// task. One per engine.
///
/// Protocol:
///   attach(worker, endpoint_kind)          adopt a worker; its data path reaches `endpoint_kind`
///   connect(segment, descriptor)           make a segment reachable by every eligible worker
///   submit(submission)                     split the tasks into slices and dispatch them
///   report(worker_index, completions)      slice outcomes, from workers (late ones are counted)
///   deadline                               (to itself) resolve tasks whose deadline passed, and
///                                          re-post slices whose retry backoff ended
///   free(batch) -> names                   cancel the batch's unresolved tasks; replies once every
///                                          withdrawal of the batch's slices is confirmed by its
///                                          worker, with the segments that may still receive bytes
///                                          of them (empty: none)
///   stats -> coordinator_stats             counters, for tests and benchmarks
///   stop -> bool                           cancel everything, stop the workers, quit
/// and it sends, for a submission with notify, once its last task resolved and only if all of them
/// COMPLETED, the notification through the submission's notify_spec (to the target segment's
/// public face in this process, or over the control plane to another node).
///
/// Task state machine (per task; see task_state.hpp for the states):
///
///   submit ──> WAITING ──dispatch──> PENDING ──┬─ every slice ok ───────────────> COMPLETED
///                                              ├─ a slice fails, no retry left ──> FAILED
///                                              ├─ deadline passes ──────────────> TIMEOUT
///                                              └─ free(batch) / stop ───────────> CANCELED
///   A slice that fails with a retryable error and has retries left is re-posted after a backoff
///   (doubling, with jitter) on another eligible worker when there is one, under a new slice id,
///   so a report for the old attempt is recognisably stale; a retry that could not start before
///   the deadline is not made (the task times out, its reason naming the last error). A slice
///   refused with errc::fenced is never retried (a fence floor never goes down): the task FAILS
///   with that code at once, whatever the data path said about retrying. Resolving a
///   task closes its slices' gates (no data path touches its local memory afterwards), withdraws
///   its slices still at workers and forgets the task and its slices; any report that arrives
///   later names an id that no longer exists and is counted in `late_reports`, never acted on.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/meta/type_name.hpp>
#include <caf/replies_to.hpp>
#include <caf/timespan.hpp>
#include <caf/typed_actor.hpp>

#include "actors/atoms.hpp"
#include "actors/batch_board.hpp"
#include "actors/segment_owner.hpp"
#include "actors/worker.hpp"
#include "transport/data_path.hpp"

namespace kvferry {

/// One validated request, as the engine hands it to the coordinator.
struct task_spec {
  transport::opcode op = transport::opcode::read;
  segment_id segment = 0;
  uint32_t remote_key = 0;
  uint64_t local_addr = 0;
  uint64_t remote_addr = 0;
  uint64_t length = 0;
  memory::location local_where;
  /// Copied into every slice of the task (transport::slice_op::fence_token); 0 = none.
  uint64_t fence_token = 0;
};

/// A notification to send once every task of a submission is COMPLETED (never otherwise).
struct notify_spec {
  /// Delivers (from, message) to the target segment; must not block.
  std::function<void(std::string, std::string)> send;
  std::string from;
  std::string message;
};

/// Tasks [first_index, first_index + tasks.size()) of one batch.
struct submission {
  std::shared_ptr<batch_board> board;
  uint32_t first_index = 0;
  std::vector<task_spec> tasks;
  /// Relative deadline of every task in this submission.
  caf::timespan deadline{0};
  std::optional<notify_spec> notify;
};

/// Names a batch in free().
struct batch_ref {
  std::shared_ptr<batch_board> board;
};

/// Bytes moved to and from one segment (slices that succeeded, retries' bytes counted once).
struct peer_traffic {
  std::string segment;
  uint64_t read_bytes = 0;
  uint64_t write_bytes = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, peer_traffic& x) {
  return f(caf::meta::type_name("kvferry::peer_traffic"), x.segment, x.read_bytes, x.write_bytes);
}

struct coordinator_stats {
  uint64_t tasks_submitted = 0;
  uint64_t tasks_completed = 0;
  uint64_t tasks_failed = 0;
  uint64_t tasks_timeout = 0;
  uint64_t tasks_canceled = 0;
  uint64_t slices_posted = 0;    // every post, retries included
  uint64_t slices_succeeded = 0;
  uint64_t slices_failed = 0;    // failed reports acted on (retried or fatal)
  uint64_t slices_retried = 0;
  uint64_t slices_withdrawn = 0; // still at a worker when their task resolved
  uint64_t late_reports = 0;     // reports naming a slice that no longer exists
  uint64_t repeated_resolutions = 0; // always 0: resolution happens once by construction
  uint64_t live_batches = 0;
  uint64_t live_tasks = 0;
  uint64_t live_slices = 0;
  uint64_t notifies_sent = 0;
  uint64_t notifies_dropped = 0; // a task of the submission did not complete
  uint64_t retries_given_up = 0; // a retry could not start before the task's deadline
  uint64_t unsettled_withdrawals = 0; // withdrawals that named segments which may still receive bytes
  /// Bytes by segment, for the segments this engine moved bytes with.
  std::vector<peer_traffic> traffic;

  [[nodiscard]] uint64_t tasks_resolved() const noexcept {
    return tasks_completed + tasks_failed + tasks_timeout + tasks_canceled;
  }
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, coordinator_stats& x) {
  return f(caf::meta::type_name("kvferry::coordinator_stats"), x.tasks_submitted,
           x.tasks_completed, x.tasks_failed, x.tasks_timeout, x.tasks_canceled, x.slices_posted,
           x.slices_succeeded, x.slices_failed, x.slices_retried, x.slices_withdrawn,
           x.late_reports, x.repeated_resolutions, x.live_batches, x.live_tasks, x.live_slices,
           x.notifies_sent, x.notifies_dropped, x.retries_given_up, x.unsettled_withdrawals,
           x.traffic);
}

struct coordinator_settings {
  uint64_t slice_size = 64 << 10;
  /// Slice size for segments reached only through workers of these endpoint kinds (e.g. "tcp").
  std::map<std::string, uint64_t> endpoint_slice_size;
  /// Endpoint kinds in order of preference (e.g. {"local", "rdma", "tcp"}): a segment is served by
  /// the workers of the first kind its descriptor offers. Empty: every worker whose kind it
  /// offers.
  std::vector<std::string> endpoint_preference;
  /// Workers preferred for slices whose local memory is at a location ("cpu:0", "cuda:1"): the
  /// preferred NICs of the NIC priority matrix. A slice goes to one of them that serves its
  /// segment (round robin; another one on a retry), else to any worker that serves it.
  std::map<std::string, std::vector<uint32_t>> location_workers;
  uint32_t retry_limit = 3;
  /// Backoff before the first retry of a slice (0: retry at once); doubles per attempt up to
  /// retry_backoff_max, the actual delay drawn between half and all of it.
  caf::timespan retry_backoff{0};
  caf::timespan retry_backoff_max = std::chrono::seconds(1);
  /// How long a worker's data path has to confirm a withdrawal (then it names what may still
  /// land); the coordinator gives up on a worker that does not answer at all a second later.
  caf::timespan withdraw_timeout = std::chrono::seconds(5);
  /// The gates of this coordinator's slices, shared with its workers' data paths.
  std::shared_ptr<transport::slice_gates> gates;
  /// Seed of the retry jitter.
  uint64_t seed = 1;
};

} // namespace kvferry

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(kvferry::submission)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(kvferry::batch_ref)

namespace kvferry {

using coordinator_actor = caf::typed_actor<
  caf::reacts_to<attach_atom, worker_actor, std::string>,
  caf::reacts_to<connect_atom, segment_id, memory::segment_descriptor>,
  caf::reacts_to<submit_atom, submission>,
  caf::reacts_to<report_atom, uint32_t, std::vector<transport::slice_completion>>,
  caf::reacts_to<deadline_atom>,
  caf::replies_to<free_atom, batch_ref>::with<std::vector<std::string>>,
  caf::replies_to<stats_atom>::with<coordinator_stats>,
  caf::replies_to<stop_atom>::with<bool>>;

[[nodiscard]] coordinator_actor spawn_coordinator(caf::actor_system& sys,
                                                  coordinator_settings settings);

} // namespace kvferry
