#pragma once
/// Role: segment owner. Owns this node's segment: its registered memory regions and the descriptor
/// peers open it by. It is the only writer of the segment's region registry; the data paths that
/// serve peers read the registry's published snapshot to check every remote access (the whole
/// range inside one registered region) before a byte moves.
///
/// Protocol, local (from the engine on this node only):
///   register(addr, length, location) -> bool    add a region (rejects overlap, zero length)
///   unregister(addr) -> bool                    remove the region starting at addr
///   attach(endpoint)                            announce a data-path endpoint in the descriptor
///   attach(name)                                set the segment's name (known once the node's
///                                               control port is bound)
///   drain -> notifications                      take the notifications received so far
/// Protocol, public (what peers may send; the node publishes a segment_public_actor face):
///   describe -> segment_descriptor              the current descriptor
///   notify(from, message)                       a peer's notification, queued for drain
///
///   [serving] --register/unregister--> registry snapshot republished --> [serving]

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <caf/meta/type_name.hpp>
#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include "actors/atoms.hpp"
#include "memory/region_registry.hpp"
#include "memory/segment_descriptor.hpp"

namespace kvferry {

/// A short message from a peer's engine.
struct notification {
  /// The sending segment's name.
  std::string from;
  std::string message;
  friend bool operator==(const notification&, const notification&) = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, notification& x) {
  return f(caf::meta::type_name("kvferry::notification"), x.from, x.message);
}

/// What peers may ask of a segment.
using segment_public_actor = caf::typed_actor<
  caf::replies_to<describe_atom>::with<memory::segment_descriptor>,
  caf::reacts_to<notify_atom, std::string, std::string>>;

/// Everything the local engine may ask (a superset of the public face).
using segment_owner_actor = segment_public_actor::extend<
  caf::replies_to<register_atom, uint64_t, uint64_t, std::string>::with<bool>,
  caf::replies_to<unregister_atom, uint64_t>::with<bool>,
  caf::reacts_to<attach_atom, memory::transport_endpoint>,
  caf::reacts_to<attach_atom, std::string>,
  caf::replies_to<drain_atom>::with<std::vector<notification>>>;

/// Notifications kept per segment before the oldest are dropped (and counted in the log).
inline constexpr size_t max_pending_notifications = 65536;
/// Longest notification accepted from a peer.
inline constexpr size_t max_notification_bytes = 64 << 10;

[[nodiscard]] segment_owner_actor spawn_segment_owner(
  caf::actor_system& sys, std::string name, uint64_t incarnation,
  std::shared_ptr<memory::region_registry> registry);

/// A face that forwards only the public protocol to `owner`; this is what a node publishes.
[[nodiscard]] segment_public_actor spawn_segment_public_face(caf::actor_system& sys,
                                                             segment_owner_actor owner);

} // namespace kvferry
