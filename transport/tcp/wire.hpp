#pragma once
/// kvferry's TCP data-plane frames (carried in ZMTP messages). Little-endian, fixed size, versioned.
///
/// request = [N request headers (N x 48 bytes)] [data: the WRITE entries' bytes, in order]
/// reply   = [N reply headers (N x 32 bytes)]     [data: the successful READ entries' bytes, in order]
/// N is 1 to max_entries. The data frame is present exactly when it is not empty. Small slices
/// travel N to a frame (fewer frames and wake-ups); a large one travels alone, its READ reply sent
/// from registered memory without a copy.
///
/// request header: magic u32 "KVFQ" | version u16 | op u8 | reserved u8 | id u64 |
///                 incarnation u64 (the target incarnation the initiator addressed; 0 = any) |
///                 remote_addr u64 | length u64 |
///                 token u64 (fence token, 0 = none: a fenced region admits the entry only when
///                 the token is above the fence floor of its whole range; others ignore it)
/// reply header:   magic u32 "KVFR" | version u16 | status u8 (errc) | flags u8 (bit 0: `bytes`
///                 bytes of this entry are in the data frame) | id u64 | bytes u64 | reserved u64
///
/// Everything a peer sends is decoded with these functions, which reject wrong sizes, magic,
/// versions, opcodes, lengths and non-zero reserved fields instead of trusting them. A request
/// whose entries cannot all be decoded is refused whole: every entry whose id is readable (its
/// 48 bytes are there) gets a reply with errc::malformed_frame, so its sender learns at once.

#include <cstdint>
#include <cstring>
#include <optional>

#include "config/error.hpp"

namespace kvferry::transport::wire {

inline constexpr uint32_t request_magic = 0x5146564b; // "KVFQ"
inline constexpr uint32_t reply_magic = 0x5246564b;   // "KVFR"
inline constexpr uint16_t version = 1;
inline constexpr size_t request_header_size = 48;
inline constexpr size_t reply_header_size = 32;
/// Largest slice, and largest data frame, a target accepts or sends.
inline constexpr uint64_t max_frame_payload = 64ULL << 20;
/// Most entries in one request.
inline constexpr size_t max_entries = 1024;

enum class frame_op : uint8_t { read = 0, write = 1 };

struct request_header {
  frame_op op = frame_op::read;
  uint64_t id = 0;
  uint64_t incarnation = 0;
  uint64_t remote_addr = 0;
  uint64_t length = 0;
  /// Fence token (memory/fence_map.hpp); 0 = none.
  uint64_t token = 0;
};

struct reply_header {
  errc status = errc::none;
  uint64_t id = 0;
  uint64_t bytes = 0;
  /// The entry's `bytes` bytes are in the reply's data frame (a successful READ).
  bool payload = false;
};

namespace detail {
inline void put16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }
inline void put32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
inline void put64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }
inline uint16_t get16(const uint8_t* p) { uint16_t v; std::memcpy(&v, p, 2); return v; }
inline uint32_t get32(const uint8_t* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
inline uint64_t get64(const uint8_t* p) { uint64_t v; std::memcpy(&v, p, 8); return v; }
} // namespace detail

inline void encode(const request_header& h, uint8_t* out) {
  std::memset(out, 0, request_header_size);
  detail::put32(out, request_magic);
  detail::put16(out + 4, version);
  out[6] = static_cast<uint8_t>(h.op);
  detail::put64(out + 8, h.id);
  detail::put64(out + 16, h.incarnation);
  detail::put64(out + 24, h.remote_addr);
  detail::put64(out + 32, h.length);
  detail::put64(out + 40, h.token);
}

inline void encode(const reply_header& h, uint8_t* out) {
  std::memset(out, 0, reply_header_size);
  detail::put32(out, reply_magic);
  detail::put16(out + 4, version);
  out[6] = static_cast<uint8_t>(h.status);
  out[7] = h.payload ? 1 : 0;
  detail::put64(out + 8, h.id);
  detail::put64(out + 16, h.bytes);
}

/// Why a frame was refused, for the log; empty optional means the frame is well formed.
enum class decode_error : uint8_t { size, magic, version, opcode, length, reserved };

[[nodiscard]] inline const char* to_string(decode_error e) noexcept {
  switch (e) {
    case decode_error::size: return "wrong header size";
    case decode_error::magic: return "wrong magic";
    case decode_error::version: return "unsupported version";
    case decode_error::opcode: return "unknown opcode";
    case decode_error::length: return "length is 0 or above the 64 MiB frame limit";
    case decode_error::reserved: return "a reserved field is not zero";
  }
  return "?";
}

/// Decodes a request header; on failure `err` says why (and `out.id` is set when readable).
[[nodiscard]] inline bool decode(const void* data, size_t size, request_header& out,
                                 decode_error& err) {
  const auto* p = static_cast<const uint8_t*>(data);
  if (size != request_header_size) {
    err = decode_error::size;
    return false;
  }
  out.id = detail::get64(p + 8);
  if (detail::get32(p) != request_magic) {
    err = decode_error::magic;
    return false;
  }
  if (detail::get16(p + 4) != version) {
    err = decode_error::version;
    return false;
  }
  if (p[6] > static_cast<uint8_t>(frame_op::write)) {
    err = decode_error::opcode;
    return false;
  }
  if (p[7] != 0) {
    err = decode_error::reserved;
    return false;
  }
  out.op = static_cast<frame_op>(p[6]);
  out.incarnation = detail::get64(p + 16);
  out.remote_addr = detail::get64(p + 24);
  out.length = detail::get64(p + 32);
  out.token = detail::get64(p + 40);
  if (out.length == 0 || out.length > max_frame_payload) {
    err = decode_error::length;
    return false;
  }
  return true;
}

[[nodiscard]] inline bool decode(const void* data, size_t size, reply_header& out,
                                 decode_error& err) {
  const auto* p = static_cast<const uint8_t*>(data);
  if (size != reply_header_size) {
    err = decode_error::size;
    return false;
  }
  if (detail::get32(p) != reply_magic) {
    err = decode_error::magic;
    return false;
  }
  if (detail::get16(p + 4) != version) {
    err = decode_error::version;
    return false;
  }
  if (p[6] > static_cast<uint8_t>(errc_last) || p[7] > 1) {
    err = decode_error::opcode;
    return false;
  }
  if (detail::get64(p + 24) != 0) {
    err = decode_error::reserved;
    return false;
  }
  out.status = static_cast<errc>(p[6]);
  out.payload = p[7] == 1;
  out.id = detail::get64(p + 8);
  out.bytes = detail::get64(p + 16);
  if (out.bytes > max_frame_payload) {
    err = decode_error::length;
    return false;
  }
  return true;
}

} // namespace kvferry::transport::wire
