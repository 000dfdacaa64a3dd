#pragma once
/// kvferry's control-plane messages between nodes (describe a segment, deliver a notification, a
/// generic call whose payload a subsystem such as the store encodes itself), carried one per ZMTP
/// frame on a node's rpc port. Little-endian, versioned, every length bounded.
///
/// header (24 bytes): magic u32 "KVFC" | version u16 | kind u8 (0 request, 1 reply) | op u8 |
///                    id u64 | status u8 (an errc; 0 in requests) | reserved u8[3] (zero) |
///                    body length u32
/// bodies:
///   describe request   (empty)
///   describe reply     descriptor: name (u16 length + bytes) | incarnation u64 |
///                      endpoint count u16, each: kind (u8 length + bytes), address (u16 + bytes) |
///                      region count u32, each: base u64 | length u64 | location (u8 + bytes) |
///                      remote key u32 | RDMA key count u8 (0..16), each: key u32
///   notify request     from (u16 length + bytes) | message (u32 length + bytes)
///   notify reply       (empty)
///   call request       method u16 | payload (u32 length + bytes)
///   call reply         payload (u32 length + bytes)
///   any reply with a non-zero status: a reason (u16 length + bytes)
///
/// Frame limits belong to each server and client (control/server.hpp, control/client.hpp): encode()
/// and decode() take the largest whole frame (header and body) allowed, and a call payload may use
/// whatever the frame leaves.
///
/// decode() refuses anything that does not fit exactly: wrong magic, version, kind, op, reserved
/// bytes, a length past the end or above its limit, a frame above the limit, trailing bytes.
/// Decoding never allocates more than the frame's own size.

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <caf/expected.hpp>

#include "config/error.hpp"
#include "memory/segment_descriptor.hpp"

namespace kvferry::transport::control {

inline constexpr uint32_t magic = 0x4346564b; // "KVFC"
inline constexpr uint16_t version = 2;
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
/// Largest request frame a node accepts by default (a notify with its largest message);
/// server_options::max_request_frame sets a server's own.
inline constexpr size_t max_request_frame = header_size + 2 + max_name + 4 + max_message;
/// Largest reply frame a client accepts by default (a descriptor with its most regions);
/// client_options::max_reply_frame sets a client's own.
inline constexpr size_t max_reply_frame = 1 << 20;
/// Bytes a call request and a call reply add to their payload (header, method, length).
inline constexpr size_t call_request_overhead = header_size + 2 + 4;
inline constexpr size_t call_reply_overhead = header_size + 4;

enum class kind : uint8_t { request = 0, reply = 1 };
enum class op : uint8_t { describe = 1, notify = 2, call = 3 };

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
  /// call requests: which operation of the subsystem behind the call handler.
  uint16_t method = 0;
  /// call requests and replies: encoded by the subsystem, opaque here.
  std::vector<uint8_t> payload;
};

/// The largest call payload a frame of at most `max_frame` bytes can carry.
[[nodiscard]] constexpr size_t max_call_payload(kind what, size_t max_frame) noexcept {
  const size_t overhead = what == kind::request ? call_request_overhead : call_reply_overhead;
  return max_frame > overhead ? max_frame - overhead : 0;
}

/// Encodes a whole frame body (header and body) of at most `max_frame` bytes. Fails
/// (errc::invalid_argument) when a field exceeds its limit or the frame exceeds `max_frame`.
[[nodiscard]] caf::expected<std::vector<uint8_t>> encode(const message& m,
                                                         size_t max_frame = max_reply_frame);

/// Decodes a frame of at most `max_frame` bytes. The error (errc::malformed_frame) says what was
/// wrong and where.
[[nodiscard]] caf::expected<message> decode(std::span<const uint8_t> frame,
                                            size_t max_frame = max_reply_frame);

/// The id of a frame whose header is readable (to answer a malformed request by id), else 0.
[[nodiscard]] uint64_t readable_id(std::span<const uint8_t> frame) noexcept;

/// The op of a frame whose header is readable and names a known op (the requester matches the
/// answer to a malformed request by id and op), else op::describe.
[[nodiscard]] op readable_op(std::span<const uint8_t> frame) noexcept;

} // namespace kvferry::transport::control
