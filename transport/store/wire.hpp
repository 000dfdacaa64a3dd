#pragma once
/// The store's wire codec: each message of store/messages.hpp as the payload of a control-plane
/// call (control/wire.hpp, op::call; the call's method is a store::method). Little-endian
/// fixed-size integers; strings with an explicit length; lists with an explicit count. No
/// version field: the control frame's version covers the store's payloads.
///
///   string fields     key: u16 length, 1 to max_key bytes; segment, host, client names: u16
///                     length, 1 to max_name bytes; reason: u16 length, 0 to max_reason bytes
///                     (longer reasons are truncated when encoded); stats report: u32 length, 0 to
///                     max_report bytes
///   bool              u8, 0 or 1
///   status            code u8 (an errc, none to errc_last) | reason
///   replica           segment | host | addr u64 | token u64
///   held_object       key | addr u64 | size u64 | token u64 | has_checksum bool | checksum u32 |
///                     pinned bool
///   segment_mount     name | base u64 | size u64 | object count u32, objects
///   mount_request     client_id u64 | client_name | host | fence_floor u64 |
///                     segment count u16 (<= max_segments), segments
///                     (objects over all segments <= max_held_objects)
///   mount_reply       master_id u64 | ttl_ms u32 | watch_ms u32 |
///                     dropped count u32 (<= max_held_objects), each: segment | addr u64 | size u64
///   unmount_request   client_id u64
///   instruction       id u64 | kind u8 (instruction_kind) | segment | addr u64 | size u64 |
///                     token u64 | key (commit: 1 to max_key bytes; fence: 0 to max_key) |
///                     has_checksum bool | checksum u32 | pinned bool
///   watch_request     client_id u64 | done count u32 (<= max_batch), each u64
///   watch_reply       instruction count u32 (<= max_batch), instructions
///   put_start_request client_id u64 | entry count u32 (<= max_batch), each: key | size u64 |
///                     replicas u8 (1 to max_replicas) | pin bool | upsert bool
///   put_start_reply   slot count u32 (<= max_batch), each: status | put_id u64 |
///                     replica count u8 (<= max_replicas), replicas
///   put_finish_request client_id u64 | entry count u32 (<= max_batch), each: key | put_id u64 |
///                     token u64 | has_checksum bool | checksum u32
///   keys_request      client_id u64 | force bool | key count u32 (<= max_batch), keys
///   statuses_reply    status count u32 (<= max_batch), statuses
///   get_replicas_reply object count u32 (<= max_batch), each: status | size u64 |
///                     has_checksum bool | checksum u32 | lease_ms u32 |
///                     replica count u8 (<= max_replicas), replicas
///   stats_request     client_id u64
///   stats_reply       report
///
/// encode() refuses (errc::invalid_argument) a field beyond its limit, naming the field and the
/// entry. decode_*() refuses (errc::malformed_frame) anything that does not fit exactly: a length
/// or count past the end or above its limit, an empty key or name, an unknown errc or
/// instruction kind, a bool other than 0 or 1, trailing bytes; the error says what was wrong, at
/// which byte, what was expected and in which entry. A count is checked against the bytes left
/// before anything is reserved for it: decoding never allocates more than the payload's size
/// implies. Every payload that decodes encodes again to the same bytes.

#include <cstdint>
#include <span>
#include <vector>

#include <caf/expected.hpp>

#include "config/error.hpp"
#include "transport/store/messages.hpp"

namespace kvferry::transport::store {

[[nodiscard]] caf::expected<std::vector<uint8_t>> encode(const mount_request& m);
[[nodiscard]] caf::expected<std::vector<uint8_t>> encode(const mount_reply& m);
[[nodiscard]] caf::expected<std::vector<uint8_t>> encode(const unmount_request& m);
[[nodiscard]] caf::expected<std::vector<uint8_t>> encode(const watch_request& m);
[[nodiscard]] caf::expected<std::vector<uint8_t>> encode(const watch_reply& m);
[[nodiscard]] caf::expected<std::vector<uint8_t>> encode(const put_start_request& m);
[[nodiscard]] caf::expected<std::vector<uint8_t>> encode(const put_start_reply& m);
[[nodiscard]] caf::expected<std::vector<uint8_t>> encode(const put_finish_request& m);
[[nodiscard]] caf::expected<std::vector<uint8_t>> encode(const keys_request& m);
[[nodiscard]] caf::expected<std::vector<uint8_t>> encode(const statuses_reply& m);
[[nodiscard]] caf::expected<std::vector<uint8_t>> encode(const get_replicas_reply& m);
[[nodiscard]] caf::expected<std::vector<uint8_t>> encode(const stats_request& m);
[[nodiscard]] caf::expected<std::vector<uint8_t>> encode(const stats_reply& m);

[[nodiscard]] caf::expected<mount_request> decode_mount_request(std::span<const uint8_t> in);
[[nodiscard]] caf::expected<mount_reply> decode_mount_reply(std::span<const uint8_t> in);
[[nodiscard]] caf::expected<unmount_request> decode_unmount_request(std::span<const uint8_t> in);
[[nodiscard]] caf::expected<watch_request> decode_watch_request(std::span<const uint8_t> in);
[[nodiscard]] caf::expected<watch_reply> decode_watch_reply(std::span<const uint8_t> in);
[[nodiscard]] caf::expected<put_start_request>
decode_put_start_request(std::span<const uint8_t> in);
[[nodiscard]] caf::expected<put_start_reply> decode_put_start_reply(std::span<const uint8_t> in);
[[nodiscard]] caf::expected<put_finish_request>
decode_put_finish_request(std::span<const uint8_t> in);
[[nodiscard]] caf::expected<keys_request> decode_keys_request(std::span<const uint8_t> in);
[[nodiscard]] caf::expected<statuses_reply> decode_statuses_reply(std::span<const uint8_t> in);
[[nodiscard]] caf::expected<get_replicas_reply>
decode_get_replicas_reply(std::span<const uint8_t> in);
[[nodiscard]] caf::expected<stats_request> decode_stats_request(std::span<const uint8_t> in);
[[nodiscard]] caf::expected<stats_reply> decode_stats_reply(std::span<const uint8_t> in);

} // namespace kvferry::transport::store
