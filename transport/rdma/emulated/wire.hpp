#pragma once
/// The emulated fabric's byte formats (between NIC threads of one host, over abstract unix
/// sockets) and the byte buffer each connection reads into and writes from. Internal to
/// libkvferry_verbs_emulated.
///
/// A connection is one queue pair's link to its remote: the requester opens it, sends a greeting
/// naming both queue pairs, then request frames; the responder answers each request in order.
///
///   greeting  magic u32 | version u16 | reserved u16 | requester gid [16] | requester qpn u32 |
///             responder qpn u32                                                     (32 bytes)
///   request   kind u32 (1 READ, 2 WRITE) | length u32 | seq u64 | remote_addr u64 | rkey u32 |
///             reserved u32                                     (32 bytes, then a WRITE's bytes)
///   response  kind u32 (3) | status u32 (ibv_wc_status) | seq u64 | length u32 | reserved u32
///                                              (24 bytes, then a successful READ's bytes)
///
/// Both ends run on one host, so fields are in host byte order. Every header is checked before
/// its payload is waited for; a payload is never longer than max_message.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>

#include "transport/rdma/verbs.hpp"

namespace kvferry::transport::rdma::emulated::detail {

/// The largest READ or WRITE one work request may move (larger ones are refused at post).
inline constexpr uint32_t max_message = 16u << 20;
/// A responder stops reading requests of a connection whose unsent answers exceed this; a
/// requester stops serializing requests past it.
inline constexpr size_t output_limit = 8u << 20;

inline constexpr uint32_t greeting_magic = 0x4b56454d; // "KVEM"
inline constexpr uint16_t greeting_version = 1;

enum class frame_kind : uint32_t { read_request = 1, write_request = 2, response = 3 };

struct greeting {
  uint32_t magic = greeting_magic;
  uint16_t version = greeting_version;
  uint16_t reserved = 0;
  gid_bytes gid{};
  uint32_t source_qpn = 0;
  uint32_t target_qpn = 0;
};

struct request_header {
  uint32_t kind = 0;
  uint32_t length = 0;
  uint64_t seq = 0;
  uint64_t remote_addr = 0;
  uint32_t rkey = 0;
  uint32_t reserved = 0;
};

struct response_header {
  uint32_t kind = static_cast<uint32_t>(frame_kind::response);
  uint32_t status = IBV_WC_SUCCESS;
  uint64_t seq = 0;
  uint32_t length = 0;
  uint32_t reserved = 0;
};

static_assert(sizeof(greeting) == 32 && std::is_trivially_copyable_v<greeting>);
static_assert(sizeof(request_header) == 32 && std::is_trivially_copyable_v<request_header>);
static_assert(sizeof(response_header) == 24 && std::is_trivially_copyable_v<response_header>);

[[nodiscard]] inline bool well_formed(const greeting& g) {
  return g.magic == greeting_magic && g.version == greeting_version && g.reserved == 0;
}

[[nodiscard]] inline bool well_formed(const request_header& h) {
  return (h.kind == static_cast<uint32_t>(frame_kind::read_request)
          || h.kind == static_cast<uint32_t>(frame_kind::write_request))
         && h.length <= max_message && h.reserved == 0;
}

/// A response carries bytes only when it answers a READ with success (the caller checks that it
/// answers a READ of exactly that length).
[[nodiscard]] inline bool well_formed(const response_header& h) {
  bool status_ok = h.status == IBV_WC_SUCCESS || h.status == IBV_WC_REM_ACCESS_ERR;
  return h.kind == static_cast<uint32_t>(frame_kind::response) && status_ok
         && h.length <= max_message && h.reserved == 0
         && (h.status == IBV_WC_SUCCESS || h.length == 0);
}

/// Copies a header out of the front of `bytes` (which holds at least sizeof(T)).
template <class T>
[[nodiscard]] T read_header(const uint8_t* bytes) {
  T out;
  std::memcpy(&out, bytes, sizeof(T));
  return out;
}

/// The abstract unix socket name of the context with `gid` (leading NUL, no terminator).
[[nodiscard]] inline std::string socket_name(const gid_bytes& gid) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string name("\0kvferry-emu-rdma-", 18);
  for (uint8_t b : gid) {
    name += digits[b >> 4];
    name += digits[b & 15];
  }
  return name;
}

/// A growable byte queue: append at the back, consume from the front. Storage is not
/// zero-filled (a READ's bytes are written into it directly).
class byte_buffer {
public:
  [[nodiscard]] size_t size() const noexcept { return end_ - begin_; }
  [[nodiscard]] bool empty() const noexcept { return begin_ == end_; }
  [[nodiscard]] const uint8_t* data() const noexcept { return storage_.get() + begin_; }

  /// Room for `n` more bytes at the back; commit() what was written there.
  [[nodiscard]] uint8_t* prepare(size_t n) {
    if (capacity_ - end_ < n) {
      size_t used = size();
      if (begin_ > 0 && capacity_ - used >= n && used <= capacity_ / 2) {
        std::memmove(storage_.get(), data(), used);
      } else {
        size_t capacity = std::max(capacity_ * 2, used + n);
        auto grown = std::make_unique_for_overwrite<uint8_t[]>(capacity);
        if (used > 0)
          std::memcpy(grown.get(), data(), used);
        storage_ = std::move(grown);
        capacity_ = capacity;
      }
      begin_ = 0;
      end_ = used;
    }
    return storage_.get() + end_;
  }
  void commit(size_t n) noexcept { end_ += n; }
  void append(const void* bytes, size_t n) {
    if (n == 0)
      return;
    std::memcpy(prepare(n), bytes, n);
    commit(n);
  }
  void consume(size_t n) noexcept {
    begin_ += n;
    if (begin_ == end_) {
      begin_ = end_ = 0;
      // A large frame does not pin its storage once it is gone.
      if (capacity_ > 2 * size_t{max_message}) {
        storage_.reset();
        capacity_ = 0;
      }
    }
  }

private:
  std::unique_ptr<uint8_t[]> storage_;
  size_t capacity_ = 0;
  size_t begin_ = 0;
  size_t end_ = 0;
};

} // namespace kvferry::transport::rdma::emulated::detail
