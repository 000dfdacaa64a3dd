#include "transport/local/path.hpp"

#include <optional>

#include "memory/device.hpp"

namespace kvferry::transport {

local_path::local_path(std::shared_ptr<memory::local_directory> directory,
                       std::shared_ptr<memory::region_registry> self)
  : directory_(std::move(directory)), self_(std::move(self)) {
  caps_.name = "local";
  caps_.endpoint_kind = "local";
  caps_.device_memory = memory::built_with_cuda();
}

caf::expected<uint32_t> local_path::connect(const memory::segment_descriptor& peer) {
  auto regions = directory_->find(peer.name);
  if (!regions)
    return make_error(errc::unknown_segment,
                      "segment '" + peer.name + "' is not hosted in this process");
  for (uint32_t i = 0; i < peers_.size(); ++i) {
    if (peers_[i].name == peer.name) {
      peers_[i].regions = regions;
      return i;
    }
  }
  peers_.push_back(peer_entry{peer.name, regions});
  return static_cast<uint32_t>(peers_.size() - 1);
}

void local_path::post(std::span<const slice_op> ops) {
  std::vector<slice_completion> done;
  done.reserve(ops.size());
  // Registries per peer for this call: one lookup per peer, not per slice.
  std::vector<std::shared_ptr<memory::region_registry>> registries(peers_.size());
  for (const auto& op : ops) {
    slice_completion c{op.id, errc::none, false, 0};
    if (op.peer >= peers_.size()) {
      c.code = errc::unknown_segment;
      done.push_back(c);
      continue;
    }
    auto& registry = registries[op.peer];
    if (!registry)
      registry = peers_[op.peer].regions.lock();
    if (!registry || registry->closed()) {
      c.code = errc::peer_unreachable; // the segment was shut down
      done.push_back(c);
      continue;
    }
    memory::location remote_where, local_where;
    const auto remote_table = registry->snapshot();
    const auto* remote_region = remote_table->find(op.remote_addr, op.length);
    memory::region_lease remote;
    if (remote_region != nullptr) {
      remote = memory::region_lease(*remote_region);
      remote_where = remote_region->where;
    }
    auto local = self_->lease(op.local_addr, op.length, &local_where);
    if (!remote || !local) {
      c.code = !remote ? errc::out_of_range : errc::unregistered_memory;
      done.push_back(c);
      continue;
    }
    // A fenced target admits the copy only with a token above the floor of its range; the check
    // stays held until the copy ended, so a fence of the range waits for it.
    std::optional<memory::fence_map::access> fence;
    if (remote_region->fences) {
      fence.emplace(*remote_region->fences, op.remote_addr, op.length, op.fence_token);
      if (!*fence) {
        c.code = errc::fenced;
        done.push_back(c);
        continue;
      }
    }
    slice_gates::pass gate(gates_.get(), op.id);
    if (!gate) {
      c.code = errc::timeout; // its task resolved meanwhile: nothing moves; the report is late
      done.push_back(c);
      continue;
    }
    auto* remote_ptr = reinterpret_cast<void*>(op.remote_addr);
    auto* local_ptr = reinterpret_cast<void*>(op.local_addr);
    caf::error err;
    if (op.op == opcode::write)
      err = memory::copy_bytes(remote_ptr, remote_where, local_ptr, local_where, op.length);
    else
      err = memory::copy_bytes(local_ptr, local_where, remote_ptr, remote_where, op.length);
    if (err) {
      c.code = code_of(err) == errc::none ? errc::transport_failure : code_of(err);
    } else {
      c.bytes = op.length;
    }
    done.push_back(c);
  }
  if (sink_ && !done.empty())
    sink_(std::move(done));
}

void local_path::withdraw(std::span<const uint64_t>, std::chrono::steady_clock::time_point,
                          std::function<void(unsettled_segments)> done) {
  // post() completes every slice before it returns: nothing is ever in flight here.
  if (done)
    done({});
}

} // namespace kvferry::transport
