#pragma once
/// The fault-injecting data path, for tests and the control-path benchmark (a test double: it
/// lives in tests/support and is never linked into the product libraries). It moves no bytes: a
/// successful slice reports its length as transferred.
///
/// Automatic mode (`fault_policy`): each posted slice is, at random, completed, failed, dropped
/// (never reported), duplicated, delayed, or reported out of order. With every rate at zero it
/// completes slices instantly, inline, which is what the control-path benchmark measures.
///
/// Manual mode (`fault_path::manual`): every posted slice is held until the test decides its fate
/// with complete(), or injects arbitrary (late, duplicate, stale) completions with deliver().

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "transport/data_path.hpp"

namespace kvferry::transport {

struct fault_policy {
  /// Probability that a slice is never reported.
  double drop = 0;
  /// Probability that a slice fails with a retryable transport error.
  double fail = 0;
  /// Probability that a slice's completion is delivered twice.
  double duplicate = 0;
  /// Completions are delivered after a random delay in [0, max_delay] (0: inline).
  std::chrono::microseconds max_delay{0};
  /// Shuffle each batch of completions before delivering.
  bool reorder = false;
  uint64_t seed = 1;
};

struct fault_counters {
  uint64_t posted = 0;
  uint64_t completed = 0;
  uint64_t failed = 0;
  uint64_t dropped = 0;
  uint64_t duplicated = 0;
  uint64_t withdrawn = 0;
};

class fault_path final : public data_path {
public:
  struct manual_t {};
  static constexpr manual_t manual{};

  explicit fault_path(fault_policy policy);
  explicit fault_path(manual_t);
  ~fault_path() override;

  [[nodiscard]] const capabilities& caps() const noexcept override { return caps_; }
  /// Declares the capabilities of an RDMA NIC's path (one-sided, remote keys, endpoint kind
  /// "rdma", no device memory); call before the worker is spawned.
  void shape_as_rdma() {
    caps_.name = "fault (rdma-shaped)";
    caps_.endpoint_kind = "rdma";
    caps_.one_sided = true;
    caps_.needs_remote_key = true;
    caps_.device_memory = false;
  }
  void set_sink(completion_sink sink) override;
  [[nodiscard]] caf::expected<uint32_t> connect(const memory::segment_descriptor& peer) override;
  void post(std::span<const slice_op> ops) override;
  void withdraw(std::span<const uint64_t> ids, std::chrono::steady_clock::time_point deadline,
                std::function<void(unsettled_segments)> done) override;
  void stop() override;

  // -- manual mode ----------------------------------------------------------------------------

  /// Slices posted and not yet completed or withdrawn, in posting order.
  [[nodiscard]] std::vector<slice_op> held() const;
  /// Reports a held slice (success when `code` is errc::none) and forgets it; false if not held.
  bool complete(uint64_t id, errc code = errc::none, bool retryable = true);
  /// Delivers any completion, held or not: duplicates, late and stale reports.
  void deliver(slice_completion completion);
  /// From now on, withdrawals are held until confirm_withdrawal() (a peer that does not confirm).
  void hold_withdrawals(bool hold);
  [[nodiscard]] size_t held_withdrawals() const;
  /// Confirms the oldest held withdrawal, naming what it could not settle; false if none is held.
  bool confirm_withdrawal(unsettled_segments unsettled = {});

  [[nodiscard]] fault_counters counters() const;
  /// True once stop() ran (the worker that owns this path stopped it, or was destroyed).
  [[nodiscard]] bool stopped() const;

private:
  void deliver_batch(std::vector<slice_completion>&& batch);
  void delivery_loop();

  capabilities caps_;
  bool manual_ = false;
  fault_policy policy_;
  completion_sink sink_;
  mutable std::mutex mutex_;
  std::mt19937_64 rng_;
  std::vector<slice_op> held_;
  bool hold_withdrawals_ = false;
  std::vector<std::function<void(unsettled_segments)>> pending_withdrawals_;
  fault_counters counters_;
  // Delayed deliveries, by due time (automatic mode with max_delay > 0).
  std::multimap<std::chrono::steady_clock::time_point, slice_completion> delayed_;
  std::condition_variable delayed_cv_;
  bool stopping_ = false;
  std::thread delivery_thread_;
};

} // namespace kvferry::transport
