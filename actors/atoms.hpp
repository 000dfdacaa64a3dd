#pragma once
/// Every atom kvferry's actors exchange. The protocols that use them are declared in the role
/// headers (segment_owner.hpp, transfer_coordinator.hpp, worker.hpp).

#include <caf/atom.hpp>

namespace kvferry {

using attach_atom = caf::atom_constant<caf::atom("attach")>;
using connect_atom = caf::atom_constant<caf::atom("connect")>;
using submit_atom = caf::atom_constant<caf::atom("submit")>;
using post_atom = caf::atom_constant<caf::atom("post")>;
using report_atom = caf::atom_constant<caf::atom("report")>;
using withdraw_atom = caf::atom_constant<caf::atom("withdraw")>;
using deadline_atom = caf::atom_constant<caf::atom("deadline")>;
using free_atom = caf::atom_constant<caf::atom("free")>;
using stats_atom = caf::atom_constant<caf::atom("stats")>;
using stop_atom = caf::atom_constant<caf::atom("stop")>;
using register_atom = caf::atom_constant<caf::atom("register")>;
using unregister_atom = caf::atom_constant<caf::atom("unregister")>;
using describe_atom = caf::atom_constant<caf::atom("describe")>;
using notify_atom = caf::atom_constant<caf::atom("notify")>;
using drain_atom = caf::atom_constant<caf::atom("drain")>;
using call_atom = caf::atom_constant<caf::atom("call")>;
using tick_atom = caf::atom_constant<caf::atom("tick")>;

} // namespace kvferry
