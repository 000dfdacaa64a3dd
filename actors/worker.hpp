#pragma once
/// Role: worker. One per NIC or endpoint; owns exactly one data path (transport/) and drives it.
///
/// Protocol (all messages come from its transfer coordinator):
///   connect(segment, descriptor)           make a segment reachable; later posts name it by
///                                          `segment`
///   post(slices)                           start moving slices; slice_op::peer holds the segment id
///   withdraw(ids, deadline_ns) -> names    stop those slices; replies once no byte of them moves
///                                          any more, or at the deadline (steady clock, ns) with
///                                          the segments that may still receive bytes of them
///   stop -> bool                           stop the data path (in-flight slices end with
///                                          shutting_down)
/// and one message to itself:
///   withdraw(seq, names)                   the data path finished withdrawal number `seq`
/// It reports to the coordinator, in batches:
///   report(worker_index, completions)
/// A worker never decides a task's fate: it only reports slice outcomes.
///
///   [idle] --post--> [moving] --completion--> report --> [idle]
///                       \--withdraw--> dropped (no report, ack to coordinator)

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include "actors/atoms.hpp"
#include "memory/segment_descriptor.hpp"
#include "transport/data_path.hpp"

namespace kvferry {

/// Segment ids as the coordinator and workers use them.
using segment_id = uint32_t;

/// What a worker reports to (the coordinator's report interface).
using report_sink_actor = caf::typed_actor<
  caf::reacts_to<report_atom, uint32_t, std::vector<transport::slice_completion>>>;

using worker_actor = caf::typed_actor<
  caf::reacts_to<connect_atom, segment_id, memory::segment_descriptor>,
  caf::reacts_to<post_atom, std::vector<transport::slice_op>>,
  caf::replies_to<withdraw_atom, std::vector<uint64_t>, int64_t>::with<std::vector<std::string>>,
  caf::reacts_to<withdraw_atom, uint64_t, std::vector<std::string>>,
  caf::replies_to<stop_atom>::with<bool>>;

/// Spawns a worker that reports to `sink` as worker number `index`; `gates` are the
/// coordinator's slice gates, handed to the data path.
[[nodiscard]] worker_actor spawn_worker(caf::actor_system& sys, uint32_t index,
                                        report_sink_actor sink,
                                        std::shared_ptr<transport::data_path> path,
                                        std::shared_ptr<transport::slice_gates> gates);

} // namespace kvferry
