#include "tests/support/fault_path.hpp"

#include <algorithm>
#include <unordered_set>

namespace kvferry::transport {

fault_path::fault_path(fault_policy policy) : policy_(policy), rng_(policy.seed) {
  caps_.name = "fault";
  caps_.endpoint_kind = "local";
  caps_.device_memory = true;
  if (policy_.max_delay.count() > 0)
    delivery_thread_ = std::thread([this] { delivery_loop(); });
}

fault_path::fault_path(manual_t) : manual_(true), rng_(1) {
  caps_.name = "fault";
  caps_.endpoint_kind = "local";
  caps_.device_memory = true;
}

fault_path::~fault_path() {
  stop();
}

void fault_path::set_sink(completion_sink sink) {
  std::lock_guard<std::mutex> guard(mutex_);
  sink_ = std::move(sink);
}

caf::expected<uint32_t> fault_path::connect(const memory::segment_descriptor&) {
  return uint32_t{0};
}

void fault_path::post(std::span<const slice_op> ops) {
  std::vector<slice_completion> now;
  {
    std::unique_lock<std::mutex> guard(mutex_);
    counters_.posted += ops.size();
    if (manual_) {
      held_.insert(held_.end(), ops.begin(), ops.end());
      return;
    }
    std::uniform_real_distribution<double> coin(0.0, 1.0);
    auto due = [&] {
      if (policy_.max_delay.count() == 0)
        return std::chrono::steady_clock::time_point{};
      std::uniform_int_distribution<int64_t> d(0, policy_.max_delay.count());
      return std::chrono::steady_clock::now() + std::chrono::microseconds{d(rng_)};
    };
    now.reserve(ops.size());
    bool scheduled = false;
    for (const auto& op : ops) {
      if (policy_.drop > 0 && coin(rng_) < policy_.drop) {
        ++counters_.dropped;
        continue;
      }
      slice_completion c{op.id, errc::none, false, op.length};
      if (policy_.fail > 0 && coin(rng_) < policy_.fail) {
        c = slice_completion{op.id, errc::transport_failure, true, 0};
        ++counters_.failed;
      } else {
        ++counters_.completed;
      }
      int copies = 1;
      if (policy_.duplicate > 0 && coin(rng_) < policy_.duplicate) {
        ++counters_.duplicated;
        copies = 2;
      }
      for (int i = 0; i < copies; ++i) {
        if (policy_.max_delay.count() > 0) {
          delayed_.emplace(due(), c);
          scheduled = true;
        } else {
          now.push_back(c);
        }
      }
    }
    if (policy_.reorder)
      std::shuffle(now.begin(), now.end(), rng_);
    if (scheduled)
      delayed_cv_.notify_one();
  }
  if (!now.empty())
    deliver_batch(std::move(now));
}

void fault_path::withdraw(std::span<const uint64_t> ids, std::chrono::steady_clock::time_point,
                          std::function<void(unsettled_segments)> done) {
  {
    std::lock_guard<std::mutex> guard(mutex_);
    std::unordered_set<uint64_t> gone(ids.begin(), ids.end());
    auto before = held_.size();
    held_.erase(std::remove_if(held_.begin(), held_.end(),
                               [&](const slice_op& op) { return gone.count(op.id) > 0; }),
                held_.end());
    counters_.withdrawn += before - held_.size();
    if (manual_ && hold_withdrawals_) {
      // The test decides when (and with what) this withdrawal is confirmed.
      pending_withdrawals_.push_back(std::move(done));
      return;
    }
    // Delayed completions of withdrawn slices are dropped, except duplicates that the policy
    // injects deliberately: those stay, to exercise the coordinator's late-report path.
    for (auto it = delayed_.begin(); it != delayed_.end();) {
      if (gone.erase(it->second.id) > 0) {
        ++counters_.withdrawn;
        it = delayed_.erase(it);
      } else {
        ++it;
      }
    }
  }
  if (done)
    done({});
}

void fault_path::hold_withdrawals(bool hold) {
  std::lock_guard<std::mutex> guard(mutex_);
  hold_withdrawals_ = hold;
}

size_t fault_path::held_withdrawals() const {
  std::lock_guard<std::mutex> guard(mutex_);
  return pending_withdrawals_.size();
}

bool fault_path::confirm_withdrawal(unsettled_segments unsettled) {
  std::function<void(unsettled_segments)> done;
  {
    std::lock_guard<std::mutex> guard(mutex_);
    if (pending_withdrawals_.empty())
      return false;
    done = std::move(pending_withdrawals_.front());
    pending_withdrawals_.erase(pending_withdrawals_.begin());
  }
  if (done)
    done(std::move(unsettled));
  return true;
}

void fault_path::stop() {
  {
    std::lock_guard<std::mutex> guard(mutex_);
    if (stopping_)
      return;
    stopping_ = true;
    delayed_.clear();
  }
  delayed_cv_.notify_all();
  if (delivery_thread_.joinable())
    delivery_thread_.join();
}

std::vector<slice_op> fault_path::held() const {
  std::lock_guard<std::mutex> guard(mutex_);
  return held_;
}

bool fault_path::complete(uint64_t id, errc code, bool retryable) {
  slice_completion c;
  {
    std::lock_guard<std::mutex> guard(mutex_);
    auto it = std::find_if(held_.begin(), held_.end(),
                           [id](const slice_op& op) { return op.id == id; });
    if (it == held_.end())
      return false;
    c = slice_completion{id, code, code != errc::none && retryable,
                         code == errc::none ? it->length : 0};
    held_.erase(it);
    ++(code == errc::none ? counters_.completed : counters_.failed);
  }
  deliver_batch({c});
  return true;
}

void fault_path::deliver(slice_completion completion) {
  deliver_batch({completion});
}

fault_counters fault_path::counters() const {
  std::lock_guard<std::mutex> guard(mutex_);
  return counters_;
}

bool fault_path::stopped() const {
  std::lock_guard<std::mutex> guard(mutex_);
  return stopping_;
}

void fault_path::deliver_batch(std::vector<slice_completion>&& batch) {
  completion_sink sink;
  {
    std::lock_guard<std::mutex> guard(mutex_);
    if (stopping_)
      return;
    sink = sink_;
  }
  if (sink)
    sink(std::move(batch));
}

void fault_path::delivery_loop() {
  std::unique_lock<std::mutex> guard(mutex_);
  while (!stopping_) {
    if (delayed_.empty()) {
      delayed_cv_.wait(guard);
      continue;
    }
    auto due = delayed_.begin()->first;
    if (std::chrono::steady_clock::now() < due) {
      delayed_cv_.wait_until(guard, due);
      continue;
    }
    std::vector<slice_completion> batch;
    auto now = std::chrono::steady_clock::now();
    while (!delayed_.empty() && delayed_.begin()->first <= now) {
      batch.push_back(delayed_.begin()->second);
      delayed_.erase(delayed_.begin());
    }
    if (policy_.reorder)
      std::shuffle(batch.begin(), batch.end(), rng_);
    auto sink = sink_;
    guard.unlock();
    if (sink)
      sink(std::move(batch));
    guard.lock();
  }
}

} // namespace kvferry::transport
