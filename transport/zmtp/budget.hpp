#pragma once
/// A byte budget shared by the connections of one server: what queued replies (and requests being
/// answered) hold in memory. Protocols check it before they start reading a message and charge
/// what they queue; the connection releases a message's charge once it is written (or dropped).
/// Used from the server's thread only; the figures can be read from any thread.

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <utility>

namespace kvferry::transport::zmtp {

class budget {
public:
  explicit budget(size_t limit) noexcept : limit_(limit) {}
  budget(const budget&) = delete;
  budget& operator=(const budget&) = delete;

  /// True when `n` more bytes fit.
  [[nodiscard]] bool allows(size_t n) const noexcept { return used() + n <= limit_; }
  /// Takes `n` bytes; false (nothing taken) when they do not fit.
  [[nodiscard]] bool try_charge(size_t n) noexcept {
    if (!allows(n))
      return false;
    charge(n);
    return true;
  }
  /// Takes `n` bytes even past the limit (the caller checked for room before it began; the
  /// overshoot is at most what one message holds).
  void charge(size_t n) noexcept {
    auto now = used_.load(std::memory_order_relaxed) + n;
    used_.store(now, std::memory_order_relaxed);
    if (now > peak_.load(std::memory_order_relaxed))
      peak_.store(now, std::memory_order_relaxed);
  }
  /// Gives back `n` bytes.
  void release(size_t n) noexcept {
    if (n == 0)
      return;
    auto now = used_.load(std::memory_order_relaxed);
    used_.store(now - std::min(now, n), std::memory_order_relaxed);
    freed_ = true;
  }
  /// True once after bytes were given back (held connections may read again).
  [[nodiscard]] bool take_freed() noexcept { return std::exchange(freed_, false); }

  [[nodiscard]] size_t used() const noexcept { return used_.load(std::memory_order_relaxed); }
  [[nodiscard]] size_t peak() const noexcept { return peak_.load(std::memory_order_relaxed); }
  [[nodiscard]] size_t limit() const noexcept { return limit_; }

private:
  const size_t limit_;
  std::atomic<size_t> used_{0};
  std::atomic<size_t> peak_{0};
  bool freed_ = false;
};

} // namespace kvferry::transport::zmtp
