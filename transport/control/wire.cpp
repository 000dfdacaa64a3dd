#include "transport/control/wire.hpp"

#include <string_view>

#include "transport/bytes_io.hpp"

namespace kvferry::transport::control {

namespace {

caf::error too_long(const char* what, size_t n, size_t limit) {
  return make_error(errc::invalid_argument, std::string("control message: ") + what + " of "
                                              + std::to_string(n) + " bytes exceeds the limit of "
                                              + std::to_string(limit));
}

caf::error empty_field(const char* what) {
  return make_error(errc::invalid_argument, std::string("control message: ") + what
                                              + " is empty; expected 1 or more bytes");
}

/// Writes the body of `m` (after the header); an error when a field exceeds its limit.
caf::error encode_body(const message& m, size_t max_frame, byte_writer& body) {
  if (m.what == kind::reply && m.status != errc::none) {
    body.str16(std::string_view(m.reason).substr(0, max_reason));
  } else if (m.what == kind::reply && m.operation == op::describe) {
    const auto& d = m.descriptor;
    if (d.name.empty())
      return empty_field("segment name");
    if (d.name.size() > max_name)
      return too_long("segment name", d.name.size(), max_name);
    if (d.endpoints.size() > max_endpoints)
      return too_long("endpoint list", d.endpoints.size(), max_endpoints);
    if (d.regions.size() > max_regions)
      return too_long("region list", d.regions.size(), max_regions);
    body.str16(d.name);
    body.u64(d.incarnation);
    body.u16(static_cast<uint16_t>(d.endpoints.size()));
    for (const auto& ep : d.endpoints) {
      if (ep.kind.empty() || ep.kind.size() > 32 || ep.address.size() > max_name)
        return too_long("endpoint", ep.kind.size() + ep.address.size(), max_name);
      body.str8(ep.kind);
      body.str16(ep.address);
    }
    body.u32(static_cast<uint32_t>(d.regions.size()));
    for (const auto& r : d.regions) {
      if (r.location.empty() || r.location.size() > 32)
        return too_long("region location", r.location.size(), 32);
      body.u64(r.base);
      body.u64(r.length);
      body.str8(r.location);
      body.u32(r.remote_key);
      if (r.rdma_keys.size() > max_endpoints)
        return too_long("region RDMA key list", r.rdma_keys.size(), max_endpoints);
      body.u8(static_cast<uint8_t>(r.rdma_keys.size()));
      for (auto key : r.rdma_keys)
        body.u32(key);
    }
  } else if (m.what == kind::request && m.operation == op::notify) {
    if (m.from.empty())
      return empty_field("notification sender");
    if (m.from.size() > max_name)
      return too_long("notification sender", m.from.size(), max_name);
    if (m.text.size() > max_message)
      return too_long("notification", m.text.size(), max_message);
    body.str16(m.from);
    body.str32(m.text);
  } else if (m.operation == op::call) {
    const auto limit = max_call_payload(m.what, max_frame);
    if (m.payload.size() > limit)
      return make_error(errc::invalid_argument,
                        "control message: call payload of " + std::to_string(m.payload.size())
                          + " bytes exceeds the limit of " + std::to_string(limit)
                          + " (frames of at most " + std::to_string(max_frame) + " bytes)");
    if (m.what == kind::request)
      body.u16(m.method);
    body.blob32(m.payload);
  }
  return {};
}

} // namespace

caf::expected<std::vector<uint8_t>> encode(const message& m, size_t max_frame) {
  byte_writer out(header_size + (m.operation == op::call ? 6 + m.payload.size() : 0));
  out.u32(magic);
  out.u16(version);
  out.u8(static_cast<uint8_t>(m.what));
  out.u8(static_cast<uint8_t>(m.operation));
  out.u64(m.id);
  out.u8(static_cast<uint8_t>(m.what == kind::reply ? m.status : errc::none));
  out.u8(0);
  out.u8(0);
  out.u8(0);
  const size_t length_at = out.size();
  out.u32(0); // body length, known once the body is written
  if (auto err = encode_body(m, max_frame, out))
    return err;
  if (out.size() > max_frame)
    return too_long("frame", out.size(), max_frame);
  out.patch_u32(length_at, static_cast<uint32_t>(out.size() - header_size));
  return std::move(out.bytes());
}

uint64_t readable_id(std::span<const uint8_t> frame) noexcept {
  if (frame.size() < header_size)
    return 0;
  byte_reader in(frame);
  if (in.num<uint32_t>("magic") != magic)
    return 0;
  in.num<uint16_t>("version");
  in.num<uint8_t>("kind");
  in.num<uint8_t>("op");
  return in.num<uint64_t>("id");
}

op readable_op(std::span<const uint8_t> frame) noexcept {
  if (frame.size() < header_size)
    return op::describe;
  byte_reader in(frame);
  if (in.num<uint32_t>("magic") != magic)
    return op::describe;
  in.num<uint16_t>("version");
  in.num<uint8_t>("kind");
  const auto o = in.num<uint8_t>("op");
  return o >= 1 && o <= 3 ? static_cast<op>(o) : op::describe;
}

caf::expected<message> decode(std::span<const uint8_t> frame, size_t max_frame) {
  byte_reader in(frame);
  auto bad = [&](std::string why) {
    return make_error(errc::malformed_frame, "control message: " + why);
  };
  if (frame.size() < header_size)
    return bad("frame of " + std::to_string(frame.size()) + " bytes is shorter than the "
               + std::to_string(header_size) + "-byte header");
  if (frame.size() > max_frame)
    return bad("frame of " + std::to_string(frame.size()) + " bytes exceeds the limit of "
               + std::to_string(max_frame));
  message m;
  if (in.num<uint32_t>("magic") != magic)
    return bad("wrong magic (not a kvferry control message)");
  if (auto v = in.num<uint16_t>("version"); v != version)
    return bad("version " + std::to_string(v) + " is not supported (this node speaks "
               + std::to_string(version) + ")");
  auto k = in.num<uint8_t>("kind");
  auto o = in.num<uint8_t>("op");
  if (k > 1)
    return bad("kind " + std::to_string(k) + " is neither request (0) nor reply (1)");
  if (o < 1 || o > 3)
    return bad("op " + std::to_string(o) + " is not describe (1), notify (2) or call (3)");
  m.what = static_cast<kind>(k);
  m.operation = static_cast<op>(o);
  m.id = in.num<uint64_t>("id");
  auto status = in.num<uint8_t>("status");
  if (status > static_cast<uint8_t>(errc_last) || (m.what == kind::request && status != 0))
    return bad("status " + std::to_string(status) + " is not valid here");
  m.status = static_cast<errc>(status);
  if (in.num<uint8_t>("reserved") != 0 || in.num<uint8_t>("reserved") != 0
      || in.num<uint8_t>("reserved") != 0)
    return bad("a reserved byte is not zero");
  auto body_length = in.num<uint32_t>("body length");
  if (body_length != in.left())
    return bad("body length " + std::to_string(body_length) + " does not match the "
               + std::to_string(in.left()) + " bytes after the header");
  if (m.what == kind::reply && m.status != errc::none) {
    m.reason = in.str(2, max_reason, "reason", true);
  } else if (m.what == kind::reply && m.operation == op::describe) {
    auto& d = m.descriptor;
    d.name = in.str(2, max_name, "segment name");
    d.incarnation = in.num<uint64_t>("incarnation");
    // Each endpoint takes at least 5 bytes, each region at least 23: a count the frame cannot
    // hold is refused before anything is reserved for it.
    auto endpoints = in.count(2, max_endpoints, 5, "endpoint count");
    for (size_t i = 0; in.ok() && i < endpoints; ++i) {
      memory::transport_endpoint ep;
      ep.kind = in.str(1, 32, "endpoint kind");
      ep.address = in.str(2, max_name, "endpoint address");
      d.endpoints.push_back(std::move(ep));
    }
    auto regions = in.count(4, max_regions, 23, "region count");
    if (in.ok())
      d.regions.reserve(regions);
    for (size_t i = 0; in.ok() && i < regions; ++i) {
      memory::region_descriptor r;
      r.base = in.num<uint64_t>("region base");
      r.length = in.num<uint64_t>("region length");
      r.location = in.str(1, 32, "region location");
      r.remote_key = in.num<uint32_t>("region remote key");
      auto keys = in.count(1, max_endpoints, 4, "region RDMA key count");
      for (size_t k = 0; in.ok() && k < keys; ++k)
        r.rdma_keys.push_back(in.num<uint32_t>("region RDMA key"));
      d.regions.push_back(std::move(r));
    }
  } else if (m.what == kind::request && m.operation == op::notify) {
    m.from = in.str(2, max_name, "notification sender");
    m.text = in.str(4, max_message, "notification", true);
  } else if (m.operation == op::call) {
    if (m.what == kind::request)
      m.method = in.num<uint16_t>("call method");
    m.payload = in.blob(4, max_call_payload(m.what, max_frame), "call payload");
  }
  if (!in.ok())
    return bad(in.problem());
  if (in.left() != 0)
    return bad(std::to_string(in.left()) + " unexpected bytes after the body");
  return m;
}

} // namespace kvferry::transport::control
