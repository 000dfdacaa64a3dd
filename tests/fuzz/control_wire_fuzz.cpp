// Fuzz target: node-to-node control messages (transport/control/wire.hpp), one per ZMTP frame on
// a node's rpc port: describe requests and replies (a whole segment descriptor), notifications,
// calls (method and opaque payload) and their replies.
//
// Invariants besides "no crash, no sanitizer report":
//   - what decodes encodes again (within every limit) to exactly the input bytes, and that
//     decodes to the same message;
//   - readable_id() of a frame that decodes is its id; of a frame shorter than the header, 0;
//     readable_op() is its op;
//   - what decodes stays within the documented limits (names, message, reason, counts, payload);
//   - frame limits are exact: a frame that decodes also decodes, and encodes, under a limit of
//     its own size, and is refused (malformed_frame when decoded, invalid_argument when
//     encoded) under a limit one byte smaller.

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
         && a.descriptor.endpoints == b.descriptor.endpoints && a.method == b.method
         && a.payload == b.payload;
}

void check_limits(const control::message& m) {
  FUZZ_CHECK(m.reason.size() <= control::max_reason, "reason of %zu bytes", m.reason.size());
  FUZZ_CHECK(m.from.size() <= control::max_name, "sender of %zu bytes", m.from.size());
  FUZZ_CHECK(m.text.size() <= control::max_message, "message of %zu bytes", m.text.size());
  const auto& d = m.descriptor;
  FUZZ_CHECK(d.name.size() <= control::max_name, "segment name of %zu bytes", d.name.size());
  FUZZ_CHECK(d.regions.size() <= control::max_regions, "%zu regions", d.regions.size());
  FUZZ_CHECK(d.endpoints.size() <= control::max_endpoints, "%zu endpoints", d.endpoints.size());
  FUZZ_CHECK(m.payload.size() <= control::max_call_payload(m.what, control::max_reply_frame),
             "call payload of %zu bytes", m.payload.size());
  FUZZ_CHECK(m.operation == control::op::call || (m.payload.empty() && m.method == 0),
             "a payload or method outside a call");
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
  FUZZ_CHECK(control::readable_op(in) == m->operation, "readable_op differs from the decoded op");
  check_limits(*m);

  auto exact = control::decode(in, size);
  FUZZ_CHECK(exact && same(*m, *exact), "a frame does not decode under a limit of its own size");
  auto smaller = control::decode(in, size - 1);
  FUZZ_CHECK(!smaller && kvferry::code_of(smaller.error()) == kvferry::errc::malformed_frame,
             "a frame decodes under a limit smaller than its size");
  auto fits = control::encode(*m, size);
  FUZZ_CHECK(fits && fits->size() == size, "a message does not encode under a limit of its size");
  auto too_small = control::encode(*m, size - 1);
  FUZZ_CHECK(!too_small && kvferry::code_of(too_small.error()) == kvferry::errc::invalid_argument,
             "a message encodes under a limit smaller than its size");

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
