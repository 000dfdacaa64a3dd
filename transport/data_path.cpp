#include "transport/data_path.hpp"

#include <mutex>
#include <thread>

namespace kvferry::transport {

namespace {

// Gate word: generation (high 32 bits) | open (bit 1) | busy (bit 0).
constexpr uint64_t busy_bit = 1;
constexpr uint64_t open_bit = 2;

uint32_t generation_of(uint64_t word) noexcept {
  return static_cast<uint32_t>(word >> 32);
}

std::mutex chunk_mutex;

} // namespace

slice_gates::slice_gates() : chunks_(new std::atomic<std::atomic<uint64_t>*>[max_chunks]) {
  for (uint32_t i = 0; i < max_chunks; ++i)
    chunks_[i].store(nullptr, std::memory_order_relaxed);
}

slice_gates::~slice_gates() {
  for (uint32_t i = 0; i < max_chunks; ++i)
    delete[] chunks_[i].load(std::memory_order_relaxed);
}

std::atomic<uint64_t>* slice_gates::word(uint32_t slot, bool create) {
  auto chunk = slot >> chunk_bits;
  if (chunk >= max_chunks)
    return nullptr;
  auto* base = chunks_[chunk].load(std::memory_order_acquire);
  if (base == nullptr && create) {
    std::lock_guard<std::mutex> guard(chunk_mutex);
    base = chunks_[chunk].load(std::memory_order_acquire);
    if (base == nullptr) {
      base = new std::atomic<uint64_t>[chunk_size];
      for (uint32_t i = 0; i < chunk_size; ++i)
        base[i].store(0, std::memory_order_relaxed);
      chunks_[chunk].store(base, std::memory_order_release);
    }
  }
  return base == nullptr ? nullptr : base + (slot & (chunk_size - 1));
}

void slice_gates::open(uint32_t slot, uint32_t generation) {
  if (auto* w = word(slot, true))
    w->store((uint64_t{generation} << 32) | open_bit, std::memory_order_release);
}

void slice_gates::close(uint32_t slot) noexcept {
  auto* w = word(slot, false);
  if (w == nullptr)
    return;
  auto current = w->load(std::memory_order_acquire);
  for (;;) {
    if (!(current & open_bit))
      return;
    if (current & busy_bit) {
      // A data path is copying this slice's bytes (a bounded memcpy): wait for it to leave.
      std::this_thread::yield();
      current = w->load(std::memory_order_acquire);
      continue;
    }
    if (w->compare_exchange_weak(current, current & ~open_bit, std::memory_order_acq_rel))
      return;
  }
}

bool slice_gates::enter(uint64_t id) noexcept {
  auto* w = word(static_cast<uint32_t>(id), false);
  if (w == nullptr)
    return false;
  const auto generation = static_cast<uint32_t>(id >> 32);
  auto current = w->load(std::memory_order_acquire);
  for (;;) {
    if (!(current & open_bit) || generation_of(current) != generation || (current & busy_bit))
      return false;
    if (w->compare_exchange_weak(current, current | busy_bit, std::memory_order_acq_rel))
      return true;
  }
}

void slice_gates::leave(uint64_t id) noexcept {
  if (auto* w = word(static_cast<uint32_t>(id), false))
    w->fetch_and(~busy_bit, std::memory_order_release);
}

} // namespace kvferry::transport
