#include "actors/segment_owner.hpp"

#include <deque>

#include <caf/actor_system.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "config/error.hpp"
#include "config/log.hpp"
#include "memory/device.hpp"

namespace kvferry {

namespace {

struct owner_state {
  std::string name;
  uint64_t incarnation = 0;
  std::shared_ptr<memory::region_registry> registry;
  std::vector<memory::transport_endpoint> endpoints;
  std::deque<notification> inbox;
  uint64_t dropped_notifications = 0;
};

memory::segment_descriptor describe_segment(const owner_state& st) {
  memory::segment_descriptor out;
  out.name = st.name;
  out.incarnation = st.incarnation;
  out.endpoints = st.endpoints;
  auto table = st.registry->snapshot();
  out.regions.reserve(table->size());
  for (const auto& r : table->regions())
    out.regions.push_back(memory::region_descriptor{r.base, r.length, to_string(r.where), 0});
  return out;
}

segment_owner_actor::behavior_type owner_impl(segment_owner_actor::stateful_pointer<owner_state> self,
                                              std::string name, uint64_t incarnation,
                                              std::shared_ptr<memory::region_registry> registry) {
  self->state.name = std::move(name);
  self->state.incarnation = incarnation;
  self->state.registry = std::move(registry);
  return {
    [self](describe_atom) { return describe_segment(self->state); },
    [self](notify_atom, std::string& from, std::string& message) {
      auto& st = self->state;
      if (from.size() > 256 || message.size() > max_notification_bytes) {
        log::warn("segment '{}': rejected a notification from '{}' of {} bytes (limit {})",
                  st.name, from.substr(0, 64), message.size(), max_notification_bytes);
        return;
      }
      if (st.inbox.size() >= max_pending_notifications) {
        st.inbox.pop_front();
        if (st.dropped_notifications++ % 1024 == 0)
          log::warn("segment '{}': notification inbox full ({}), dropping the oldest", st.name,
                    max_pending_notifications);
      }
      st.inbox.push_back(notification{std::move(from), std::move(message)});
    },
    [self](register_atom, uint64_t addr, uint64_t length,
           const std::string& where) -> caf::result<bool> {
      auto loc = memory::parse_location(where);
      if (!loc)
        return loc.error();
      if (auto err = memory::check_location_usable(*loc))
        return err;
      auto added = self->state.registry->add(addr, length, *loc);
      if (!added)
        return added.error();
      return true;
    },
    [self](unregister_atom, uint64_t addr) -> caf::result<bool> {
      auto removed = self->state.registry->remove(addr);
      if (!removed)
        return removed.error();
      return true;
    },
    [self](attach_atom, memory::transport_endpoint& ep) {
      auto& eps = self->state.endpoints;
      for (auto& existing : eps) {
        if (existing.kind == ep.kind) {
          existing = std::move(ep);
          return;
        }
      }
      eps.push_back(std::move(ep));
    },
    [self](attach_atom, std::string& name) { self->state.name = std::move(name); },
    [self](drain_atom) {
      std::vector<notification> out(std::make_move_iterator(self->state.inbox.begin()),
                                    std::make_move_iterator(self->state.inbox.end()));
      self->state.inbox.clear();
      return out;
    },
  };
}

segment_public_actor::behavior_type public_face_impl(segment_public_actor::pointer self,
                                                     segment_owner_actor owner) {
  self->link_to(owner);
  return {
    [self, owner](describe_atom) { return self->delegate(owner, describe_atom::value); },
    [self, owner](notify_atom, std::string& from, std::string& message) {
      self->send(owner, notify_atom::value, std::move(from), std::move(message));
    },
  };
}

} // namespace

segment_owner_actor spawn_segment_owner(caf::actor_system& sys, std::string name,
                                        uint64_t incarnation,
                                        std::shared_ptr<memory::region_registry> registry) {
  return sys.spawn(owner_impl, std::move(name), incarnation, std::move(registry));
}

segment_public_actor spawn_segment_public_face(caf::actor_system& sys, segment_owner_actor owner) {
  return sys.spawn(public_face_impl, std::move(owner));
}

} // namespace kvferry
