// Fuzz target: ZMTP 3.1 codec (transport/zmtp/codec.hpp), the first code every byte from a peer
// reaches on kvferry's data and rpc ports. The same input is read as a greeting (every prefix, as
// the connection checks it while bytes arrive), a frame header and a command body.
//
// Invariants besides "no crash, no sanitizer report":
//   - check_greeting is monotonic: once a prefix is refused, every longer prefix is refused;
//   - a decoded frame header never claims more header bytes than were given, and re-encoding its
//     size and flags decodes to the same header;
//   - a decoded READY, PING or ERROR round-trips through kvferry's own encoders.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "tests/fuzz/fuzz_check.hpp"
#include "transport/zmtp/codec.hpp"

namespace zmtp = kvferry::transport::zmtp;

namespace {

void check_greeting_prefixes(std::span<const uint8_t> in) {
  const size_t n = std::min(in.size(), zmtp::greeting_size);
  bool refused = false;
  for (size_t k = 0; k <= n; ++k) {
    auto v = zmtp::check_greeting(in.first(k));
    FUZZ_CHECK(!(refused && v == zmtp::violation::none),
               "greeting prefix of %zu bytes accepted after a shorter one was refused", k);
    refused = v != zmtp::violation::none;
    FUZZ_CHECK(zmtp::to_string(v) != nullptr, "no text for a violation");
  }
  // Bytes past the greeting do not change the verdict on the greeting.
  FUZZ_CHECK(zmtp::check_greeting(in) == zmtp::check_greeting(in.first(n)),
             "bytes after the 64-byte greeting changed the verdict");
}

void check_frame_header(std::span<const uint8_t> in) {
  zmtp::frame_header h;
  auto v = zmtp::decode_frame_header(in, h);
  if (v != zmtp::violation::none || h.header_bytes == 0)
    return;
  FUZZ_CHECK(h.header_bytes == 2 || h.header_bytes == 9, "header of %zu bytes", h.header_bytes);
  FUZZ_CHECK(h.header_bytes <= in.size(), "header claims %zu bytes of %zu", h.header_bytes,
             in.size());
  FUZZ_CHECK(!(h.more && h.command), "a command frame with MORE was accepted");
  std::array<uint8_t, 9> out{};
  auto n = zmtp::encode_frame_header(out.data(), h.size, h.more, h.command);
  zmtp::frame_header again;
  FUZZ_CHECK(zmtp::decode_frame_header({out.data(), n}, again) == zmtp::violation::none,
             "re-encoded header refused");
  FUZZ_CHECK(again.size == h.size && again.more == h.more && again.command == h.command
               && again.header_bytes == n,
             "re-encoded header decodes differently");
}

/// The body of a whole command frame encoded by kvferry.
std::span<const uint8_t> body_of(const std::vector<uint8_t>& frame) {
  zmtp::frame_header h;
  FUZZ_CHECK(zmtp::decode_frame_header(frame, h) == zmtp::violation::none && h.header_bytes > 0
               && h.command && h.header_bytes + h.size == frame.size(),
             "kvferry encoded a command frame it cannot decode");
  return std::span<const uint8_t>(frame).subspan(h.header_bytes);
}

void check_command(std::span<const uint8_t> in) {
  zmtp::command cmd;
  auto v = zmtp::decode_command(in, cmd);
  if (v != zmtp::violation::none)
    return;
  FUZZ_CHECK(!in.empty() && in.size() <= zmtp::max_command_size, "command of %zu bytes accepted",
             in.size());
  zmtp::command again;
  switch (cmd.what) {
    case zmtp::command::kind::ready: {
      (void) zmtp::compatible("ROUTER", cmd.socket_type);
      auto frame = zmtp::encode_ready(cmd.socket_type);
      auto body = body_of(frame);
      if (body.size() <= zmtp::max_command_size) {
        FUZZ_CHECK(zmtp::decode_command(body, again) == zmtp::violation::none,
                   "re-encoded READY refused");
        FUZZ_CHECK(again.what == zmtp::command::kind::ready
                     && again.socket_type == cmd.socket_type,
                   "re-encoded READY decodes differently");
      }
      break;
    }
    case zmtp::command::kind::ping: {
      FUZZ_CHECK(cmd.context.size() <= zmtp::max_ping_context, "PING context of %zu bytes",
                 cmd.context.size());
      auto pong = zmtp::encode_pong(cmd.context);
      FUZZ_CHECK(zmtp::decode_command(body_of(pong), again) == zmtp::violation::none
                   && again.what == zmtp::command::kind::pong,
                 "PONG answering a valid PING is refused");
      auto ping = zmtp::encode_ping(0x1234, cmd.context);
      FUZZ_CHECK(zmtp::decode_command(body_of(ping), again) == zmtp::violation::none
                   && again.what == zmtp::command::kind::ping && again.context == cmd.context,
                 "re-encoded PING decodes differently");
      break;
    }
    case zmtp::command::kind::error:
      FUZZ_CHECK(cmd.context.size() < in.size(), "ERROR reason longer than its command");
      break;
    case zmtp::command::kind::pong:
    case zmtp::command::kind::other:
      break;
  }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> in(data, size);
  check_greeting_prefixes(in);
  check_frame_header(in);
  check_command(in);
  // A frame header followed by its command body, as the connection reads them.
  zmtp::frame_header h;
  if (zmtp::decode_frame_header(in, h) == zmtp::violation::none && h.header_bytes > 0
      && h.command && h.size <= in.size() - h.header_bytes)
    check_command(in.subspan(h.header_bytes, h.size));
  return 0;
}
