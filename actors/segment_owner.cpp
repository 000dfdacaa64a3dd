#include "actors/segment_owner.hpp"

#include <deque>

#include <caf/actor_system.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "config/error.hpp"
#include "config/log.hpp"

namespace kvferry {

namespace {

struct owner_state {
  std::string name;
  uint64_t incarnation = 0;
  std::shared_ptr<memory::region_registry> registry;
  std::vector<memory::transport_endpoint> endpoints;
  inbox_limits limits;
  std::deque<notification> inbox;
  size_t inbox_bytes = 0;
  uint64_t refused_notifications = 0;
};

memory::segment_descriptor describe_segment(const owner_state& st) {
  memory::segment_descriptor out;
  out.name = st.name;
  out.incarnation = st.incarnation;
  out.endpoints = st.endpoints;
  auto table = st.registry->snapshot();
  out.regions.reserve(table->size());
  for (const auto& r : table->regions())
    out.regions.push_back(
      memory::region_descriptor{r.base, r.length, to_string(r.where), 0, r.rdma_keys});
  return out;
}

segment_owner_actor::behavior_type owner_impl(segment_owner_actor::stateful_pointer<owner_state> self,
                                              std::string name, uint64_t incarnation,
                                              std::shared_ptr<memory::region_registry> registry,
                                              inbox_limits limits) {
  self->state.name = std::move(name);
  self->state.incarnation = incarnation;
  self->state.registry = std::move(registry);
  self->state.limits = limits;
  return {
    [self](describe_atom) { return describe_segment(self->state); },
    [self](notify_atom, std::string& from, std::string& message) -> caf::result<bool> {
      auto& st = self->state;
      if (from.empty() || from.size() > max_notification_sender
          || message.size() > max_notification_bytes)
        return make_error(errc::invalid_argument,
                          "segment '" + st.name + "': a notification from '" + from.substr(0, 64)
                            + "' of " + std::to_string(message.size())
                            + " bytes exceeds the limits (sender 1-256 bytes, message up to "
                            + std::to_string(max_notification_bytes) + ")");
      auto cost = from.size() + message.size();
      if (st.inbox.size() >= st.limits.messages || st.inbox_bytes + cost > st.limits.bytes) {
        if (st.refused_notifications++ % 1024 == 0)
          log::warn("segment '{}': notification inbox full ({} of {} messages, {} of {} bytes): "
                    "refused a notification from '{}' ({} refused so far)",
                    st.name, st.inbox.size(), st.limits.messages, st.inbox_bytes, st.limits.bytes,
                    from.substr(0, 64), st.refused_notifications);
        return make_error(errc::busy, "segment '" + st.name + "': its notification inbox is full ("
                                        + std::to_string(st.inbox.size()) + " messages, "
                                        + std::to_string(st.inbox_bytes)
                                        + " bytes); its engine has not taken them");
      }
      st.inbox_bytes += cost;
      st.inbox.push_back(notification{std::move(from), std::move(message)});
      return true;
    },
    [self](attach_atom, memory::transport_endpoint& ep) {
      auto& eps = self->state.endpoints;
      // One endpoint per kind, except "rdma": one per NIC, told apart by address.
      for (auto& existing : eps) {
        if (existing.kind == ep.kind && (ep.kind != "rdma" || existing.address == ep.address)) {
          existing = std::move(ep);
          return;
        }
      }
      eps.push_back(std::move(ep));
    },
    [self](attach_atom, std::string& name) { self->state.name = std::move(name); },
    [self](drain_atom) {
      auto& st = self->state;
      std::vector<notification> out(std::make_move_iterator(st.inbox.begin()),
                                    std::make_move_iterator(st.inbox.end()));
      st.inbox.clear();
      st.inbox = {}; // give the memory back
      st.inbox_bytes = 0;
      return out;
    },
    [self](stats_atom) {
      auto& st = self->state;
      return caf::make_result(static_cast<uint64_t>(st.inbox.size()), st.refused_notifications);
    },
  };
}

segment_public_actor::behavior_type public_face_impl(segment_public_actor::pointer self,
                                                     segment_owner_actor owner) {
  self->link_to(owner);
  return {
    [self, owner](describe_atom) { return self->delegate(owner, describe_atom::value); },
    [self, owner](notify_atom, std::string& from, std::string& message) {
      return self->delegate(owner, notify_atom::value, std::move(from), std::move(message));
    },
  };
}

} // namespace

segment_owner_actor spawn_segment_owner(caf::actor_system& sys, std::string name,
                                        uint64_t incarnation,
                                        std::shared_ptr<memory::region_registry> registry,
                                        inbox_limits limits) {
  return sys.spawn(owner_impl, std::move(name), incarnation, std::move(registry), limits);
}

segment_public_actor spawn_segment_public_face(caf::actor_system& sys, segment_owner_actor owner) {
  return sys.spawn(public_face_impl, std::move(owner));
}

} // namespace kvferry
