#pragma once
/// The same-process data path: memcpy (or cudaMemcpy) between regions registered by segments of
/// this process. The target side's check runs here, before a byte moves: the remote range must lie
/// inside one region the target segment registered (read from its live registry, not from a
/// possibly stale descriptor). Each copy holds leases on both regions (so unregistering either
/// waits for it, and a region being unregistered is not touched) and the slice's gate (so a task
/// that is already terminal is not written). A fenced target region admits a copy only when the
/// slice's fence token is above the floor of its range (else errc::fenced); the copy holds that
/// check (a fence_map::access) until its last byte moved, so fencing the range waits for it.

#include <memory>
#include <string>
#include <vector>

#include "memory/local_directory.hpp"
#include "transport/data_path.hpp"

namespace kvferry::transport {

class local_path final : public data_path {
public:
  /// `self` is the registry of the segment that owns this data path (the local side).
  local_path(std::shared_ptr<memory::local_directory> directory,
             std::shared_ptr<memory::region_registry> self);

  [[nodiscard]] const capabilities& caps() const noexcept override { return caps_; }
  void set_sink(completion_sink sink) override { sink_ = std::move(sink); }
  void set_gates(std::shared_ptr<slice_gates> gates) override { gates_ = std::move(gates); }
  [[nodiscard]] caf::expected<uint32_t> connect(const memory::segment_descriptor& peer) override;
  void post(std::span<const slice_op> ops) override;
  void withdraw(std::span<const uint64_t> ids, std::chrono::steady_clock::time_point deadline,
                std::function<void(unsettled_segments)> done) override;
  void stop() override {}

private:
  struct peer_entry {
    std::string name;
    std::weak_ptr<memory::region_registry> regions;
  };

  capabilities caps_;
  std::shared_ptr<memory::local_directory> directory_;
  std::shared_ptr<memory::region_registry> self_;
  completion_sink sink_;
  std::shared_ptr<slice_gates> gates_;
  std::vector<peer_entry> peers_;
};

} // namespace kvferry::transport
