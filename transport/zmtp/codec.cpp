#include "transport/zmtp/codec.hpp"

#include <algorithm>
#include <cstring>

namespace kvferry::transport::zmtp {

namespace {

constexpr uint8_t major_version = 3;
constexpr uint8_t minor_version = 1;
constexpr std::string_view null_mechanism = "NULL";

void put_be32(uint8_t* p, uint32_t v) noexcept {
  p[0] = static_cast<uint8_t>(v >> 24);
  p[1] = static_cast<uint8_t>(v >> 16);
  p[2] = static_cast<uint8_t>(v >> 8);
  p[3] = static_cast<uint8_t>(v);
}

uint32_t get_be32(const uint8_t* p) noexcept {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

/// A command frame with body = [len(name)] name data.
std::vector<uint8_t> command_frame(std::string_view name, std::span<const uint8_t> data) {
  const uint64_t body = 1 + name.size() + data.size();
  std::vector<uint8_t> out(9 + body);
  auto n = encode_frame_header(out.data(), body, false, true);
  out.resize(n + body);
  auto* p = out.data() + n;
  *p++ = static_cast<uint8_t>(name.size());
  std::memcpy(p, name.data(), name.size());
  p += name.size();
  if (!data.empty())
    std::memcpy(p, data.data(), data.size());
  return out;
}

bool equals_ignore_case(std::string_view a, std::string_view b) noexcept {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; };
           return lower(x) == lower(y);
         });
}

} // namespace

const char* to_string(violation v) noexcept {
  switch (v) {
    case violation::none: return "none";
    case violation::signature: return "not a ZMTP signature";
    case violation::version: return "ZMTP version below 3";
    case violation::mechanism: return "security mechanism other than NULL";
    case violation::frame_flags: return "reserved frame flags set";
    case violation::frame_size: return "frame larger than the protocol allows";
    case violation::command: return "malformed or unexpected command";
    case violation::socket_type: return "incompatible socket type";
    case violation::message_shape: return "more frames in one message than the protocol allows";
    case violation::handshake_timeout: return "no handshake within the timeout";
  }
  return "?";
}

void encode_greeting(std::span<uint8_t, greeting_size> out) noexcept {
  std::memset(out.data(), 0, greeting_size);
  out[0] = 0xff;
  out[8] = 0x01; // the padding holds a ZMTP 1.0 length of 1 (an empty identity), as libzmq's does
  out[9] = 0x7f;
  out[10] = major_version;
  out[11] = minor_version;
  std::memcpy(out.data() + 12, null_mechanism.data(), null_mechanism.size());
}

violation check_greeting(std::span<const uint8_t> have) noexcept {
  const size_t n = std::min(have.size(), greeting_size);
  if (n >= 1 && have[0] != 0xff)
    return violation::signature;
  if (n >= signature_size && (have[9] & 0x01) == 0)
    return violation::signature;
  if (n >= 11 && have[10] < major_version)
    return violation::version;
  if (n >= 32) {
    for (size_t i = 0; i < 20; ++i) {
      uint8_t expected = i < null_mechanism.size() ? static_cast<uint8_t>(null_mechanism[i]) : 0;
      if (have[12 + i] != expected)
        return violation::mechanism;
    }
  }
  return violation::none;
}

violation decode_frame_header(std::span<const uint8_t> have, frame_header& out) noexcept {
  out = frame_header{};
  if (have.empty())
    return violation::none;
  const uint8_t flags = have[0];
  if ((flags & ~(flag_more | flag_long | flag_command)) != 0)
    return violation::frame_flags;
  const bool command = (flags & flag_command) != 0;
  const bool more = (flags & flag_more) != 0;
  if (command && more)
    return violation::frame_flags;
  if (flags & flag_long) {
    if (have.size() < 9)
      return violation::none;
    uint64_t size = 0;
    for (int i = 1; i <= 8; ++i)
      size = (size << 8) | have[i];
    if (size > (uint64_t{1} << 62))
      return violation::frame_size;
    out = frame_header{more, command, size, 9};
    return violation::none;
  }
  if (have.size() < 2)
    return violation::none;
  out = frame_header{more, command, have[1], 2};
  return violation::none;
}

size_t encode_frame_header(uint8_t* out, uint64_t size, bool more, bool command) noexcept {
  uint8_t flags = (more ? flag_more : 0) | (command ? flag_command : 0);
  if (size <= 255) {
    out[0] = flags;
    out[1] = static_cast<uint8_t>(size);
    return 2;
  }
  out[0] = flags | flag_long;
  for (int i = 8; i >= 1; --i) {
    out[i] = static_cast<uint8_t>(size);
    size >>= 8;
  }
  return 9;
}

std::vector<uint8_t> encode_ready(std::string_view socket_type) {
  constexpr std::string_view name = "Socket-Type";
  std::vector<uint8_t> props(1 + name.size() + 4 + socket_type.size());
  auto* p = props.data();
  *p++ = static_cast<uint8_t>(name.size());
  std::memcpy(p, name.data(), name.size());
  p += name.size();
  put_be32(p, static_cast<uint32_t>(socket_type.size()));
  p += 4;
  std::memcpy(p, socket_type.data(), socket_type.size());
  return command_frame("READY", props);
}

violation decode_command(std::span<const uint8_t> body, command& out) {
  out = command{};
  if (body.empty() || body.size() > max_command_size)
    return violation::command;
  const size_t name_size = body[0];
  if (name_size == 0 || 1 + name_size > body.size())
    return violation::command;
  std::string_view name(reinterpret_cast<const char*>(body.data() + 1), name_size);
  auto data = body.subspan(1 + name_size);
  if (name == "READY") {
    out.what = command::kind::ready;
    bool have_type = false;
    while (!data.empty()) {
      const size_t key_size = data[0];
      if (key_size == 0 || data.size() < 1 + key_size + 4)
        return violation::command;
      std::string_view key(reinterpret_cast<const char*>(data.data() + 1), key_size);
      const uint32_t value_size = get_be32(data.data() + 1 + key_size);
      data = data.subspan(1 + key_size + 4);
      if (value_size > data.size())
        return violation::command;
      std::string_view value(reinterpret_cast<const char*>(data.data()), value_size);
      data = data.subspan(value_size);
      if (equals_ignore_case(key, "Socket-Type")) {
        out.socket_type = std::string(value);
        have_type = true;
      }
    }
    return have_type ? violation::none : violation::command;
  }
  if (name == "PING") {
    if (data.size() < 2 || data.size() > 2 + max_ping_context)
      return violation::command;
    out.what = command::kind::ping;
    out.context.assign(reinterpret_cast<const char*>(data.data() + 2), data.size() - 2);
    return violation::none;
  }
  if (name == "PONG") {
    if (data.size() > max_ping_context)
      return violation::command;
    out.what = command::kind::pong;
    return violation::none;
  }
  if (name == "ERROR") {
    out.what = command::kind::error;
    if (!data.empty()) {
      size_t n = std::min<size_t>(data[0], data.size() - 1);
      out.context.assign(reinterpret_cast<const char*>(data.data() + 1), n);
    }
    return violation::none;
  }
  out.what = command::kind::other;
  return violation::none;
}

std::vector<uint8_t> encode_pong(std::string_view context) {
  auto n = std::min(context.size(), max_ping_context);
  return command_frame("PONG", {reinterpret_cast<const uint8_t*>(context.data()), n});
}

std::vector<uint8_t> encode_ping(uint16_t ttl_deciseconds, std::string_view context) {
  auto n = std::min(context.size(), max_ping_context);
  std::vector<uint8_t> data(2 + n);
  data[0] = static_cast<uint8_t>(ttl_deciseconds >> 8);
  data[1] = static_cast<uint8_t>(ttl_deciseconds);
  std::memcpy(data.data() + 2, context.data(), n);
  return command_frame("PING", data);
}

bool compatible(std::string_view self, std::string_view peer) noexcept {
  auto is = [](std::string_view a, std::string_view b) { return a == b; };
  if (is(self, "ROUTER") || is(self, "DEALER"))
    return is(peer, "ROUTER") || is(peer, "DEALER");
  return false;
}

} // namespace kvferry::transport::zmtp
