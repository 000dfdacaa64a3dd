// Fuzz target: node-to-node control messages (transport/control/wire.hpp), one per ZMTP frame on
// a node's rpc port: describe requests and replies (a whole segment descriptor), notifications.
//
// Invariants besides "no crash, no sanitizer report":
//   - what decodes encodes again (within every limit) to exactly the input bytes, and that
//     decodes to the same message;
//   - readable_id() of a frame that decodes is its id; of a frame shorter than the header, 0;
//   - what decodes stays within the documented limits (names, message, reason, counts).

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "tests/fuzz/fuzz_check.hpp"
#include "transport/control/wire.hpp"

namespace control = kvferry::transport::control;

namespace {

bool same(const control::message& a, const control::message& b) {
  return a.what == b.what && a.operation == b.operation && a.id == b.id && a.status == b.status
         && a.reason == b.reason && a.from == b.from && a.text == b.text
         && a.descriptor.name == b.descriptor.name
         && a.descriptor.incarnation == b.descriptor.incarnation
         && a.descriptor.regions == b.descriptor.regions
         && a.descriptor.endpoints == b.descriptor.endpoints;
}

void check_limits(const control::message& m) {
  FUZZ_CHECK(m.reason.size() <= control::max_reason, "reason of %zu bytes", m.reason.size());
  FUZZ_CHECK(m.from.size() <= control::max_name, "sender of %zu bytes", m.from.size());
  FUZZ_CHECK(m.text.size() <= control::max_message, "message of %zu bytes", m.text.size());
  const auto& d = m.descriptor;
  FUZZ_CHECK(d.name.size() <= control::max_name, "segment name of %zu bytes", d.name.size());
  FUZZ_CHECK(d.regions.size() <= control::max_regions, "%zu regions", d.regions.size());
  FUZZ_CHECK(d.endpoints.size() <= control::max_endpoints, "%zu endpoints", d.endpoints.size());
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const uint8_t> in(data, size);
  const uint64_t id = control::readable_id(in);
  if (size < control::header_size)
    FUZZ_CHECK(id == 0, "readable_id of a %zu-byte frame is not 0", size);

  auto m = control::decode(in);
  if (!m) {
    FUZZ_CHECK(kvferry::code_of(m.error()) == kvferry::errc::malformed_frame,
               "decode failed with another code: %s", kvferry::describe(m.error()).c_str());
    return 0;
  }
  FUZZ_CHECK(id == m->id, "readable_id %llu differs from the decoded id %llu",
             static_cast<unsigned long long>(id), static_cast<unsigned long long>(m->id));
  check_limits(*m);

  auto bytes = control::encode(*m);
  FUZZ_CHECK(static_cast<bool>(bytes), "a decoded message does not encode: %s",
             kvferry::describe(bytes.error()).c_str());
  FUZZ_CHECK(bytes->size() == size && std::memcmp(bytes->data(), data, size) == 0,
             "a decoded message encodes to other bytes (%zu bytes, input %zu)", bytes->size(),
             size);
  auto again = control::decode(*bytes);
  FUZZ_CHECK(again && same(*m, *again), "re-encoded message decodes differently");
  return 0;
}
