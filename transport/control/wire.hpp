#pragma once
/// kvferry's control-plane messages between nodes (describe a segment, deliver a notification),
/// carried one per ZMTP frame on a node's rpc port. Little-endian, versioned, every length bounded.
///
/// header (24 bytes): magic u32 "KVFC" | version u16 | kind u8 (0 request, 1 reply) | op u8 |
///                    id u64 | status u8 (an errc; 0 in requests) | reserved u8[3] (zero) |
///                    body length u32
/// bodies:
///   describe request   (empty)
///   describe reply     descriptor: name (u16 length + bytes) | incarnation u64 |
///                      endpoint count u16, each: kind (u8 length + bytes), address (u16 + bytes) |
///                      region count u32, each: base u64 | length u64 | location (u8 + bytes) |
///                      remote key u32
///   notify request     from (u16 length + bytes) | message (u32 length + bytes)
///   notify reply       (empty)
///   any reply with a non-zero status: a reason (u16 length + bytes)
///
/// decode() refuses anything that does not fit exactly: wrong magic, version, kind, op, reserved
/// bytes, a length past the end or above its limit, trailing bytes. Decoding never allocates more
/// than the frame's own size.

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <caf/expected.hpp>

#include "config/error.hpp"
#include "memory/segment_descriptor.hpp"

namespace kvferry::transport::control {

inline constexpr uint32_t magic = 0x4346564b; // "KVFC"
inline constexpr uint16_t version = 1;
inline constexpr size_t header_size = 24;
/// Longest segment name, notification sender, endpoint address.
inline constexpr size_t max_name = 256;
/// Longest notification message (as the engine API promises).
inline constexpr size_t max_message = 64 << 10;
/// Most regions and endpoints a descriptor may list.
inline constexpr size_t max_regions = 16384;
inline constexpr size_t max_endpoints = 16;
/// Longest error reason in a reply.
inline constexpr size_t max_reason = 1024;
/// Largest request frame a node accepts (a notify with its largest message).
inline constexpr size_t max_request_frame = header_size + 2 + max_name + 4 + max_message;
/// Largest reply frame a node accepts (a descriptor with its most regions).
inline constexpr size_t max_reply_frame = 1 << 20;

enum class kind : uint8_t { request = 0, reply = 1 };
enum class op : uint8_t { describe = 1, notify = 2 };

struct message {
  kind what = kind::request;
  op operation = op::describe;
  uint64_t id = 0;
  /// Replies: errc::none, or why the request failed (then `reason` says more).
  errc status = errc::none;
  std::string reason;
  /// describe replies.
  memory::segment_descriptor descriptor;
  /// notify requests.
  std::string from;
  std::string text;
};

/// Encodes a whole frame body (header and body). Fails when a field exceeds its limit.
[[nodiscard]] caf::expected<std::vector<uint8_t>> encode(const message& m);

/// Decodes a frame. The error (errc::malformed_frame) says what was wrong and where.
[[nodiscard]] caf::expected<message> decode(std::span<const uint8_t> frame);

/// The id of a frame whose header is readable (to answer a malformed request by id), else 0.
[[nodiscard]] uint64_t readable_id(std::span<const uint8_t> frame) noexcept;

} // namespace kvferry::transport::control
