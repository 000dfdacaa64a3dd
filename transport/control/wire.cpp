#include "transport/control/wire.hpp"

#include <cstring>

namespace kvferry::transport::control {

namespace {

class writer {
public:
  void u8(uint8_t v) { out_.push_back(v); }
  void u16(uint16_t v) { raw(&v, 2); }
  void u32(uint32_t v) { raw(&v, 4); }
  void u64(uint64_t v) { raw(&v, 8); }
  void raw(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out_.insert(out_.end(), b, b + n);
  }
  void str8(const std::string& s) {
    u8(static_cast<uint8_t>(s.size()));
    raw(s.data(), s.size());
  }
  void str16(const std::string& s) {
    u16(static_cast<uint16_t>(s.size()));
    raw(s.data(), s.size());
  }
  void str32(const std::string& s) {
    u32(static_cast<uint32_t>(s.size()));
    raw(s.data(), s.size());
  }
  std::vector<uint8_t>& bytes() { return out_; }

private:
  std::vector<uint8_t> out_;
};

class reader {
public:
  explicit reader(std::span<const uint8_t> in) : in_(in) {}
  [[nodiscard]] bool ok() const noexcept { return problem_.empty(); }
  [[nodiscard]] const std::string& problem() const noexcept { return problem_; }
  [[nodiscard]] size_t left() const noexcept { return in_.size() - at_; }

  template <class T>
  T num(const char* what) {
    T v{};
    if (!need(sizeof(T), what))
      return v;
    std::memcpy(&v, in_.data() + at_, sizeof(T));
    at_ += sizeof(T);
    return v;
  }
  std::string str(size_t length_bytes, size_t limit, const char* what, bool allow_empty = false) {
    uint64_t n = length_bytes == 1   ? num<uint8_t>(what)
                 : length_bytes == 2 ? num<uint16_t>(what)
                                     : num<uint32_t>(what);
    if (!ok())
      return {};
    if (n > limit || (n == 0 && !allow_empty)) {
      fail(std::string(what) + " has length " + std::to_string(n) + "; expected "
           + (allow_empty ? "0" : "1") + " to " + std::to_string(limit));
      return {};
    }
    if (!need(n, what))
      return {};
    std::string s(reinterpret_cast<const char*>(in_.data() + at_), n);
    at_ += n;
    return s;
  }
  void fail(std::string why) {
    if (problem_.empty())
      problem_ = std::move(why) + " (at byte " + std::to_string(at_) + ")";
  }

private:
  bool need(uint64_t n, const char* what) {
    if (!ok())
      return false;
    if (n > left()) {
      fail(std::string(what) + " runs past the end of the frame");
      return false;
    }
    return true;
  }

  std::span<const uint8_t> in_;
  size_t at_ = 0;
  std::string problem_;
};

caf::error too_long(const char* what, size_t n, size_t limit) {
  return make_error(errc::invalid_argument, std::string("control message: ") + what + " of "
                                              + std::to_string(n) + " bytes exceeds the limit of "
                                              + std::to_string(limit));
}

} // namespace

caf::expected<std::vector<uint8_t>> encode(const message& m) {
  writer body;
  if (m.what == kind::reply && m.status != errc::none) {
    auto reason = m.reason.substr(0, max_reason);
    body.str16(reason);
  } else if (m.what == kind::reply && m.operation == op::describe) {
    const auto& d = m.descriptor;
    if (d.name.empty() || d.name.size() > max_name)
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
    }
  } else if (m.what == kind::request && m.operation == op::notify) {
    if (m.from.empty() || m.from.size() > max_name)
      return too_long("notification sender", m.from.size(), max_name);
    if (m.text.size() > max_message)
      return too_long("notification", m.text.size(), max_message);
    body.str16(m.from);
    body.str32(m.text);
  }
  writer out;
  out.u32(magic);
  out.u16(version);
  out.u8(static_cast<uint8_t>(m.what));
  out.u8(static_cast<uint8_t>(m.operation));
  out.u64(m.id);
  out.u8(static_cast<uint8_t>(m.what == kind::reply ? m.status : errc::none));
  out.u8(0);
  out.u8(0);
  out.u8(0);
  out.u32(static_cast<uint32_t>(body.bytes().size()));
  auto& bytes = out.bytes();
  bytes.insert(bytes.end(), body.bytes().begin(), body.bytes().end());
  return std::move(bytes);
}

uint64_t readable_id(std::span<const uint8_t> frame) noexcept {
  if (frame.size() < header_size)
    return 0;
  uint32_t m;
  std::memcpy(&m, frame.data(), 4);
  if (m != magic)
    return 0;
  uint64_t id;
  std::memcpy(&id, frame.data() + 8, 8);
  return id;
}

caf::expected<message> decode(std::span<const uint8_t> frame) {
  reader in(frame);
  auto bad = [&](std::string why) {
    return make_error(errc::malformed_frame, "control message: " + why);
  };
  if (frame.size() < header_size)
    return bad("frame of " + std::to_string(frame.size()) + " bytes is shorter than the "
               + std::to_string(header_size) + "-byte header");
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
  if (o < 1 || o > 2)
    return bad("op " + std::to_string(o) + " is neither describe (1) nor notify (2)");
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
    auto endpoints = in.num<uint16_t>("endpoint count");
    if (in.ok() && endpoints > max_endpoints)
      in.fail("endpoint count " + std::to_string(endpoints) + " exceeds "
              + std::to_string(max_endpoints));
    for (size_t i = 0; in.ok() && i < endpoints; ++i) {
      memory::transport_endpoint ep;
      ep.kind = in.str(1, 32, "endpoint kind");
      ep.address = in.str(2, max_name, "endpoint address");
      d.endpoints.push_back(std::move(ep));
    }
    auto regions = in.num<uint32_t>("region count");
    if (in.ok() && regions > max_regions)
      in.fail("region count " + std::to_string(regions) + " exceeds "
              + std::to_string(max_regions));
    // Each region takes at least 22 bytes: a count the frame cannot hold is refused before
    // anything is reserved for it.
    if (in.ok() && uint64_t{regions} * 22 > in.left())
      in.fail("region count " + std::to_string(regions) + " does not fit in the frame");
    if (in.ok())
      d.regions.reserve(regions);
    for (size_t i = 0; in.ok() && i < regions; ++i) {
      memory::region_descriptor r;
      r.base = in.num<uint64_t>("region base");
      r.length = in.num<uint64_t>("region length");
      r.location = in.str(1, 32, "region location");
      r.remote_key = in.num<uint32_t>("region remote key");
      d.regions.push_back(std::move(r));
    }
  } else if (m.what == kind::request && m.operation == op::notify) {
    m.from = in.str(2, max_name, "notification sender");
    m.text = in.str(4, max_message, "notification", true);
  }
  if (!in.ok())
    return bad(in.problem());
  if (in.left() != 0)
    return bad(std::to_string(in.left()) + " unexpected bytes after the body");
  return m;
}

} // namespace kvferry::transport::control
