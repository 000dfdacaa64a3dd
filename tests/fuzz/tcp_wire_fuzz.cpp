// Fuzz target: the TCP data plane's request and reply headers (transport/tcp/wire.hpp). The target
// decodes request headers from initiators; the initiator decodes reply headers from targets.
//
// The input is decoded whole (the size check) and cut into 48-byte request headers and 32-byte
// reply headers, as a header frame of N entries is. Invariants besides "no sanitizer report":
//   - a header that decodes re-encodes to exactly the same bytes (decode accepts one encoding);
//   - what decode accepts is within the documented bounds (op, status, 1..64 MiB lengths);
//   - a request refused for anything but its size still reports its id (the target answers the
//     entry by id).

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "tests/fuzz/fuzz_check.hpp"
#include "transport/tcp/wire.hpp"

namespace wire = kvferry::transport::wire;

namespace {

void check_request(const uint8_t* p, size_t n) {
  wire::request_header h;
  wire::decode_error err{};
  if (!wire::decode(p, n, h, err)) {
    FUZZ_CHECK(wire::to_string(err) != nullptr, "no text for a decode error");
    if (err != wire::decode_error::size)
      FUZZ_CHECK(h.id == wire::detail::get64(p + 8), "refused request lost its id");
    else
      FUZZ_CHECK(n != wire::request_header_size, "a whole header refused for its size");
    return;
  }
  FUZZ_CHECK(n == wire::request_header_size, "request header of %zu bytes accepted", n);
  FUZZ_CHECK(h.op == wire::frame_op::read || h.op == wire::frame_op::write, "unknown op accepted");
  FUZZ_CHECK(h.length >= 1 && h.length <= wire::max_frame_payload, "length %llu accepted",
             static_cast<unsigned long long>(h.length));
  std::array<uint8_t, wire::request_header_size> again{};
  wire::encode(h, again.data());
  FUZZ_CHECK(std::memcmp(again.data(), p, n) == 0, "request header does not re-encode the same");
}

void check_reply(const uint8_t* p, size_t n) {
  wire::reply_header h;
  wire::decode_error err{};
  if (!wire::decode(p, n, h, err)) {
    FUZZ_CHECK(wire::to_string(err) != nullptr, "no text for a decode error");
    return;
  }
  FUZZ_CHECK(n == wire::reply_header_size, "reply header of %zu bytes accepted", n);
  FUZZ_CHECK(static_cast<uint8_t>(h.status) <= static_cast<uint8_t>(kvferry::errc_last),
             "status %u accepted", static_cast<unsigned>(h.status));
  FUZZ_CHECK(h.bytes <= wire::max_frame_payload, "bytes %llu accepted",
             static_cast<unsigned long long>(h.bytes));
  std::array<uint8_t, wire::reply_header_size> again{};
  wire::encode(h, again.data());
  FUZZ_CHECK(std::memcmp(again.data(), p, n) == 0, "reply header does not re-encode the same");
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  check_request(data, size);
  check_reply(data, size);
  for (size_t at = 0; at + wire::request_header_size <= size; at += wire::request_header_size)
    check_request(data + at, wire::request_header_size);
  for (size_t at = 0; at + wire::reply_header_size <= size; at += wire::reply_header_size)
    check_reply(data + at, wire::reply_header_size);
  return 0;
}
