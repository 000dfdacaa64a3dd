#include "actors/worker.hpp"

#include <unordered_map>

#include <caf/actor_system.hpp>
#include <caf/send.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "config/log.hpp"

namespace kvferry {

namespace {

struct worker_state {
  uint32_t index = 0;
  std::shared_ptr<transport::data_path> path;
  /// segment id -> the data path's peer index; absent when connect failed.
  std::unordered_map<segment_id, uint32_t> peers;
  /// Why connect failed, per segment (reported for every slice to it).
  std::unordered_map<segment_id, errc> unreachable;
  report_sink_actor sink;
  /// Withdrawals the data path has not confirmed yet, by sequence number.
  std::unordered_map<uint64_t, caf::typed_response_promise<std::vector<std::string>>> withdrawals;
  uint64_t next_withdrawal = 0;
  static inline const char* name = "kvferry.worker";
};

worker_actor::behavior_type worker_impl(worker_actor::stateful_pointer<worker_state> self,
                                        uint32_t index, report_sink_actor sink,
                                        std::shared_ptr<transport::data_path> path,
                                        std::shared_ptr<transport::slice_gates> gates) {
  auto& st = self->state;
  st.index = index;
  st.path = std::move(path);
  st.sink = sink;
  st.path->set_gates(std::move(gates));
  st.path->set_sink([sink, index](std::vector<transport::slice_completion>&& batch) {
    caf::anon_send(sink, report_atom::value, index, std::move(batch));
  });
  self->attach_functor([path = st.path] { path->stop(); });
  return {
    [self](connect_atom, segment_id segment, const memory::segment_descriptor& desc) {
      auto& st = self->state;
      auto peer = st.path->connect(desc);
      if (peer) {
        st.peers[segment] = *peer;
        st.unreachable.erase(segment);
      } else {
        log::warn("worker {} ({}): cannot reach segment '{}': {}", st.index,
                  st.path->caps().name, desc.name, describe(peer.error()));
        st.peers.erase(segment);
        st.unreachable[segment] = code_of(peer.error()) == errc::none ? errc::peer_unreachable
                                                                      : code_of(peer.error());
      }
    },
    [self](post_atom, std::vector<transport::slice_op>& ops) {
      auto& st = self->state;
      std::vector<transport::slice_completion> refused;
      size_t kept = 0;
      for (auto& op : ops) {
        auto it = st.peers.find(op.peer);
        if (it == st.peers.end()) {
          auto why = st.unreachable.find(op.peer);
          refused.push_back(transport::slice_completion{
            op.id, why == st.unreachable.end() ? errc::unknown_segment : why->second, false, 0});
          continue;
        }
        op.peer = it->second;
        ops[kept++] = op;
      }
      ops.resize(kept);
      if (!ops.empty())
        st.path->post(ops);
      if (!refused.empty())
        self->send(st.sink, report_atom::value, st.index, std::move(refused));
    },
    [self](withdraw_atom, const std::vector<uint64_t>& ids,
           int64_t deadline_ns) -> caf::result<std::vector<std::string>> {
      auto& st = self->state;
      auto seq = st.next_withdrawal++;
      auto rp = self->make_response_promise<std::vector<std::string>>();
      st.withdrawals.emplace(seq, rp);
      // The data path may confirm on its own thread: hop back into this actor to deliver.
      worker_actor me = self;
      auto deadline = std::chrono::steady_clock::time_point(std::chrono::nanoseconds(deadline_ns));
      st.path->withdraw(ids, deadline, [me, seq](transport::unsettled_segments unsettled) {
        caf::anon_send(me, withdraw_atom::value, seq, std::move(unsettled));
      });
      return rp;
    },
    [self](withdraw_atom, uint64_t seq, std::vector<std::string>& unsettled) {
      auto& st = self->state;
      auto it = st.withdrawals.find(seq);
      if (it == st.withdrawals.end())
        return;
      it->second.deliver(std::move(unsettled));
      st.withdrawals.erase(it);
    },
    [self](stop_atom) -> bool {
      self->state.path->stop();
      self->quit();
      return true;
    },
  };
}

} // namespace

worker_actor spawn_worker(caf::actor_system& sys, uint32_t index, report_sink_actor sink,
                          std::shared_ptr<transport::data_path> path,
                          std::shared_ptr<transport::slice_gates> gates) {
  return sys.spawn(worker_impl, index, std::move(sink), std::move(path), std::move(gates));
}

} // namespace kvferry
