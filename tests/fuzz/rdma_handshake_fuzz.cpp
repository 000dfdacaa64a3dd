// Fuzz target: the RDMA handshake (transport/rdma/handshake.hpp), the payload of the control-plane
// call a peer's NIC sends to connect queue pairs, and its reply. Every input is decoded as a
// request and as replies of 1, 2 and 64 queue pairs.
//
// Invariants besides "no crash, no sanitizer report":
//   - a refusal is errc::malformed_frame;
//   - what decodes encodes again to exactly the input bytes, and that decodes to the same message.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "config/error.hpp"
#include "tests/fuzz/fuzz_check.hpp"
#include "transport/rdma/handshake.hpp"

namespace rdma = kvferry::transport::rdma;

namespace {

template <class Decode>
void check(std::span<const uint8_t> in, Decode decode, const char* name) {
  auto m = decode(in);
  if (!m) {
    FUZZ_CHECK(kvferry::code_of(m.error()) == kvferry::errc::malformed_frame,
               "%s: decode failed with another code: %s", name,
               kvferry::describe(m.error()).c_str());
    return;
  }
  auto bytes = rdma::encode(*m);
  FUZZ_CHECK(bytes.size() == in.size()
               && (in.empty() || std::memcmp(bytes.data(), in.data(), in.size()) == 0),
             "%s: a decoded message encodes to other bytes (%zu bytes, input %zu)", name,
             bytes.size(), in.size());
  auto again = decode(bytes);
  FUZZ_CHECK(again && *again == *m, "%s: the re-encoded message decodes differently", name);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> in(data, size);
  check(in, [](auto b) { return rdma::decode_request(b); }, "request");
  for (size_t qps : {1, 2, 64})
    check(in, [qps](auto b) { return rdma::decode_reply(b, qps); }, "reply");
  return 0;
}
