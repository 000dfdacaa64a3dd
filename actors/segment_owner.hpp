#pragma once
/// Role: segment owner. Owns this node's segment as peers see it: the descriptor peers open it by
/// (built from the segment's region registry, its endpoints, name and incarnation) and the inbox of
/// notifications peers sent it. The region registry itself is thread-safe and written by the
/// engine's register/unregister calls (memory/region_registry.hpp: unregistering waits for the
/// region's users, which must not block an actor).
///
/// Protocol, local (from the engine on this node only):
///   attach(endpoint)                            announce a data-path endpoint in the descriptor
///   attach(name)                                set the segment's name (known once the node's
///                                               control port is bound)
///   drain -> notifications                      take the notifications received so far
/// Protocol, public (what peers may ask; the node's control plane reaches the public face only):
///   describe -> segment_descriptor              the current descriptor
///   notify(from, message) -> bool               a peer's notification, queued for drain; refused
///                                               (errc::busy) when the inbox is full
///
///   [serving] --notify--> inbox (bounded: count and bytes) --drain--> engine

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
  caf::replies_to<notify_atom, std::string, std::string>::with<bool>>;

/// Everything the local engine may ask (a superset of the public face).
using segment_owner_actor = segment_public_actor::extend<
  caf::reacts_to<attach_atom, memory::transport_endpoint>,
  caf::reacts_to<attach_atom, std::string>,
  caf::replies_to<drain_atom>::with<std::vector<notification>>,
  caf::replies_to<stats_atom>::with<uint64_t, uint64_t>>;

/// Longest notification accepted from a peer.
inline constexpr size_t max_notification_bytes = 64 << 10;
/// Longest sender name of a notification.
inline constexpr size_t max_notification_sender = 256;

/// Bounds of a segment's notification inbox: beyond either, new notifications are refused (the
/// sender's notify returns errc::busy) and counted, and those already queued are kept.
struct inbox_limits {
  size_t messages = 4096;
  size_t bytes = 16 << 20;
};

[[nodiscard]] segment_owner_actor spawn_segment_owner(
  caf::actor_system& sys, std::string name, uint64_t incarnation,
  std::shared_ptr<memory::region_registry> registry, inbox_limits limits = {});

/// A face that forwards only the public protocol to `owner`; this is what a node publishes.
[[nodiscard]] segment_public_actor spawn_segment_public_face(caf::actor_system& sys,
                                                             segment_owner_actor owner);

} // namespace kvferry
