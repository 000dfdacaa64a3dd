#pragma once
/// ZMTP 3.1 (ZeroMQ's wire protocol, rfc.zeromq.org/spec/37) as kvferry speaks it: the NULL
/// security mechanism, one greeting, one READY command each way, then frames. Pure functions over
/// bytes, no I/O, so that the fuzz target and the tests drive exactly what the servers run.
///
/// kvferry's listening ports (data and control) are served by kvferry's own ZMTP implementation
/// rather than by libzmq: libzmq buffers a multipart message whole before the application sees
/// it, with no bound on its number of frames, and offers no way to stop reading one peer of a
/// ROUTER. Here every byte a peer sends is parsed as it arrives, with fixed bounds, and a frame's
/// body goes straight to where the protocol above decided (docs/ARCHITECTURE.md, "Network
/// surface"). Peers may be any ZeroMQ DEALER (libzmq 4.x speaks exactly this).
///
/// Greeting (64 bytes): 0xFF, 8 padding bytes, 0x7F | major 3 | minor | mechanism "NULL" padded
/// with zeros to 20 bytes | as-server | 31 filler bytes.
/// Frame: flags (bit 0 MORE, bit 1 LONG, bit 2 COMMAND; the other bits must be zero) | size
/// (1 byte, or 8 bytes big-endian with LONG) | body.
/// Command body: name length (1 byte) | name | data. READY's data is a list of properties:
/// name length (1 byte) | name | value length (4 bytes big-endian) | value.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kvferry::transport::zmtp {

inline constexpr size_t greeting_size = 64;
/// Bytes of the signature (0xFF ... 0x7F) at the start of the greeting.
inline constexpr size_t signature_size = 10;
/// Largest command body kvferry accepts from a peer (READY with its properties, PING).
inline constexpr size_t max_command_size = 1024;
/// Largest PING context (ZMTP 3.1).
inline constexpr size_t max_ping_context = 16;

inline constexpr uint8_t flag_more = 0x01;
inline constexpr uint8_t flag_long = 0x02;
inline constexpr uint8_t flag_command = 0x04;

/// Why bytes from a peer were refused. Each refusal closes that peer's connection.
enum class violation : uint8_t {
  none = 0,
  signature,     // the first 10 bytes are not a ZMTP signature
  version,       // major version below 3
  mechanism,     // a security mechanism other than NULL
  frame_flags,   // reserved flag bits set, or a command with MORE
  frame_size,    // a size beyond what the protocol above accepts
  command,       // a malformed or unexpected command
  socket_type,   // the peer's Socket-Type cannot talk to ours
  message_shape, // more frames in one message than the protocol above allows
  handshake_timeout,
};

[[nodiscard]] const char* to_string(violation v) noexcept;

/// Writes kvferry's greeting (ZMTP 3.1, NULL, not as-server).
void encode_greeting(std::span<uint8_t, greeting_size> out) noexcept;

/// Checks the first `have` bytes of a peer's greeting, as soon as they arrive: a wrong signature is
/// refused after its first byte, so a peer speaking another protocol costs nothing more.
[[nodiscard]] violation check_greeting(std::span<const uint8_t> have) noexcept;

/// A frame header, decoded.
struct frame_header {
  bool more = false;
  bool command = false;
  uint64_t size = 0;
  /// Bytes of the header itself (2 or 9).
  size_t header_bytes = 0;
};

/// Decodes a frame header from the start of `have`. Returns violation::none and sets `out` when a
/// whole, valid header is there; violation::none with out.header_bytes == 0 when more bytes are
/// needed; another violation for reserved flags or a command with MORE.
[[nodiscard]] violation decode_frame_header(std::span<const uint8_t> have,
                                            frame_header& out) noexcept;

/// Encodes a frame header for a body of `size` bytes into `out` (9 bytes available); returns the
/// number of bytes written (2 or 9).
size_t encode_frame_header(uint8_t* out, uint64_t size, bool more, bool command = false) noexcept;

/// A whole command frame (header and body) announcing this side's socket type.
[[nodiscard]] std::vector<uint8_t> encode_ready(std::string_view socket_type);

/// What a peer's command says.
struct command {
  enum class kind : uint8_t { ready, ping, pong, error, other };
  kind what = kind::other;
  /// READY: the peer's Socket-Type property.
  std::string socket_type;
  /// PING: the context to echo in PONG; ERROR: the reason.
  std::string context;
};

/// Decodes a command body (bounded by max_command_size by the caller). READY's properties are
/// checked to fill the body exactly; Socket-Type is required.
[[nodiscard]] violation decode_command(std::span<const uint8_t> body, command& out);

/// A whole PONG frame echoing `context`.
[[nodiscard]] std::vector<uint8_t> encode_pong(std::string_view context);

/// A whole PING frame (TTL in deciseconds, as ZMTP 3.1 counts it).
[[nodiscard]] std::vector<uint8_t> encode_ping(uint16_t ttl_deciseconds, std::string_view context);

/// True when a peer of type `peer` may talk to a socket of type `self` (ZMTP's matrix, for the
/// types kvferry uses: ROUTER and DEALER talk to each other and to themselves).
[[nodiscard]] bool compatible(std::string_view self, std::string_view peer) noexcept;

} // namespace kvferry::transport::zmtp
