// Fuzz target: the store's messages (transport/store/wire.hpp), the payloads of control-plane
// calls between store clients and the master. Every input is decoded as every message type.
//
// Invariants besides "no crash, no sanitizer report":
//   - a refusal is errc::malformed_frame;
//   - what decodes encodes again to exactly the input bytes (the encoding is canonical: every
//     decoded field is within the limits encode() checks), and that decodes to the same message.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "tests/fuzz/fuzz_check.hpp"
#include "transport/store/wire.hpp"

namespace store = kvferry::transport::store;

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
  auto bytes = store::encode(*m);
  FUZZ_CHECK(static_cast<bool>(bytes), "%s: a decoded message does not encode: %s", name,
             kvferry::describe(bytes.error()).c_str());
  FUZZ_CHECK(bytes->size() == in.size()
               && (in.empty() || std::memcmp(bytes->data(), in.data(), in.size()) == 0),
             "%s: a decoded message encodes to other bytes (%zu bytes, input %zu)", name,
             bytes->size(), in.size());
  auto again = decode(*bytes);
  FUZZ_CHECK(again && *again == *m, "%s: the re-encoded message decodes differently", name);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> in(data, size);
  check(in, store::decode_mount_request, "mount_request");
  check(in, store::decode_mount_reply, "mount_reply");
  check(in, store::decode_unmount_request, "unmount_request");
  check(in, store::decode_watch_request, "watch_request");
  check(in, store::decode_watch_reply, "watch_reply");
  check(in, store::decode_put_start_request, "put_start_request");
  check(in, store::decode_put_start_reply, "put_start_reply");
  check(in, store::decode_put_finish_request, "put_finish_request");
  check(in, store::decode_keys_request, "keys_request");
  check(in, store::decode_statuses_reply, "statuses_reply");
  check(in, store::decode_get_replicas_reply, "get_replicas_reply");
  check(in, store::decode_stats_request, "stats_request");
  check(in, store::decode_stats_reply, "stats_reply");
  return 0;
}
