#pragma once
/// The RDMA handshake between two nodes' NICs, carried by the control plane's generic `call`
/// (method `handshake_method`): the initiator's NIC names the target NIC it wants and offers its
/// LID, GID, active MTU and one (queue pair number, PSN) per queue pair of the endpoint; the target
/// NIC creates as many queue pairs, connects them (INIT -> RTR -> RTS) and answers with its own.
/// Both sides then use the smaller MTU.
///
/// The codec is strict and bounded like every kvferry wire format (transport/bytes_io.hpp): a
/// field out of range is refused with its name, its value and what was expected, and nothing is
/// allocated from a count the frame cannot hold. It has a fuzz target (tests/fuzz).

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <caf/expected.hpp>

#include "transport/rdma/verbs.hpp"

namespace kvferry::transport::rdma {

/// The control-plane method number of the handshake (store methods are 1..10).
inline constexpr uint16_t handshake_method = 0x100;
inline constexpr uint16_t handshake_version = 2;
inline constexpr size_t max_handshake_qps = 64;
inline constexpr size_t max_nic_name = 64;
inline constexpr size_t max_peer_name = 300;

struct qp_endpoint {
  /// 24-bit queue pair number and 24-bit initial PSN.
  uint32_t qp_num = 0;
  uint32_t psn = 0;
  friend bool operator==(const qp_endpoint&, const qp_endpoint&) = default;
};

struct nic_address {
  uint16_t lid = 0;
  gid_bytes gid{};
  ibv_mtu mtu = IBV_MTU_1024;
  std::vector<qp_endpoint> qps;
  friend bool operator==(const nic_address&, const nic_address&) = default;
};

struct handshake_request {
  /// The requesting node's segment name and NIC (the target keys its endpoint by them: a second
  /// handshake from the same NIC replaces the first, whose queue pairs are destroyed).
  std::string peer;
  std::string peer_nic;
  /// The target's NIC the initiator wants to reach.
  std::string target_nic;
  /// The target's incarnation in the descriptor the initiator holds: a restarted target (another
  /// incarnation) refuses with errc::stale_incarnation, so keys of the old one never reach the new
  /// one's memory.
  uint64_t target_incarnation = 0;
  nic_address address;
  friend bool operator==(const handshake_request&, const handshake_request&) = default;
};

struct handshake_reply {
  nic_address address;
  friend bool operator==(const handshake_reply&, const handshake_reply&) = default;
};

[[nodiscard]] std::vector<uint8_t> encode(const handshake_request& r);
[[nodiscard]] std::vector<uint8_t> encode(const handshake_reply& r);
/// Errors are errc::malformed_frame naming the field, e.g. "RDMA handshake request: qp count is
/// 0; expected 1 to 64 (at byte 95)".
[[nodiscard]] caf::expected<handshake_request> decode_request(std::span<const uint8_t> in);
/// `expected_qps`: the reply must carry exactly as many queue pairs as were offered.
[[nodiscard]] caf::expected<handshake_reply> decode_reply(std::span<const uint8_t> in,
                                                          size_t expected_qps);

} // namespace kvferry::transport::rdma
