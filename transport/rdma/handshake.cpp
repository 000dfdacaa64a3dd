#include "transport/rdma/handshake.hpp"

#include "config/error.hpp"
#include "transport/bytes_io.hpp"

namespace kvferry::transport::rdma {

namespace {

constexpr uint32_t magic = 0x4b564844; // "KVHD"

void put_address(byte_writer& w, const nic_address& a) {
  w.u16(a.lid);
  w.raw(a.gid.data(), a.gid.size());
  w.u8(static_cast<uint8_t>(a.mtu));
  w.u8(static_cast<uint8_t>(a.qps.size()));
  for (const auto& q : a.qps) {
    w.u32(q.qp_num);
    w.u32(q.psn);
  }
}

void get_address(byte_reader& in, nic_address& a, size_t min_qps, size_t max_qps) {
  a.lid = in.num<uint16_t>("LID");
  for (auto& b : a.gid)
    b = in.num<uint8_t>("GID");
  auto mtu = in.num<uint8_t>("MTU");
  if (in.ok() && (mtu < IBV_MTU_256 || mtu > IBV_MTU_4096))
    in.fail("MTU is " + std::to_string(mtu) + "; expected 1 (256 bytes) to 5 (4096 bytes)");
  // Only a valid value becomes an ibv_mtu: the enum's values are 0 to 7, and converting a byte
  // outside them (8 to 255) is undefined behaviour even when the frame is then refused.
  if (in.ok())
    a.mtu = static_cast<ibv_mtu>(mtu);
  auto n = in.count(1, max_qps, 8, "qp count");
  if (in.ok() && n < min_qps)
    in.fail("qp count is " + std::to_string(n) + "; expected " + std::to_string(min_qps) + " to "
            + std::to_string(max_qps));
  for (size_t i = 0; in.ok() && i < n; ++i) {
    qp_endpoint q;
    q.qp_num = in.num<uint32_t>("qp number");
    q.psn = in.num<uint32_t>("psn");
    if (in.ok() && (q.qp_num == 0 || q.qp_num > 0xffffff))
      in.fail("qp number is " + std::to_string(q.qp_num) + "; expected 1 to 16777215");
    if (in.ok() && q.psn > 0xffffff)
      in.fail("psn is " + std::to_string(q.psn) + "; expected at most 16777215");
    a.qps.push_back(q);
  }
}

void put_header(byte_writer& w, uint8_t kind) {
  w.u32(magic);
  w.u16(handshake_version);
  w.u8(kind);
}

void get_header(byte_reader& in, uint8_t kind) {
  auto m = in.num<uint32_t>("magic");
  if (in.ok() && m != magic)
    in.fail("magic is " + hex(m) + "; expected " + hex(magic));
  auto v = in.num<uint16_t>("version");
  if (in.ok() && v != handshake_version)
    in.fail("version is " + std::to_string(v) + "; expected " + std::to_string(handshake_version));
  auto k = in.num<uint8_t>("kind");
  if (in.ok() && k != kind)
    in.fail("kind is " + std::to_string(k) + "; expected " + std::to_string(kind));
}

caf::error finish(byte_reader& in, const char* what) {
  if (in.ok() && in.left() != 0)
    in.fail(std::to_string(in.left()) + " bytes follow the end of the message");
  if (!in.ok())
    return make_error(errc::malformed_frame, std::string(what) + ": " + in.problem());
  return {};
}

} // namespace

std::vector<uint8_t> encode(const handshake_request& r) {
  byte_writer w(128 + r.address.qps.size() * 8);
  put_header(w, 1);
  w.str16(r.peer);
  w.str8(r.peer_nic);
  w.str8(r.target_nic);
  w.u64(r.target_incarnation);
  put_address(w, r.address);
  return std::move(w.bytes());
}

std::vector<uint8_t> encode(const handshake_reply& r) {
  byte_writer w(64 + r.address.qps.size() * 8);
  put_header(w, 2);
  put_address(w, r.address);
  return std::move(w.bytes());
}

caf::expected<handshake_request> decode_request(std::span<const uint8_t> bytes) {
  byte_reader in(bytes);
  handshake_request r;
  get_header(in, 1);
  r.peer = in.str(2, max_peer_name, "peer name");
  r.peer_nic = in.str(1, max_nic_name, "peer NIC name");
  r.target_nic = in.str(1, max_nic_name, "target NIC name");
  r.target_incarnation = in.num<uint64_t>("target incarnation");
  get_address(in, r.address, 1, max_handshake_qps);
  if (auto err = finish(in, "RDMA handshake request"))
    return err;
  return r;
}

caf::expected<handshake_reply> decode_reply(std::span<const uint8_t> bytes, size_t expected_qps) {
  byte_reader in(bytes);
  handshake_reply r;
  get_header(in, 2);
  get_address(in, r.address, expected_qps, expected_qps);
  if (auto err = finish(in, "RDMA handshake reply"))
    return err;
  return r;
}

} // namespace kvferry::transport::rdma
