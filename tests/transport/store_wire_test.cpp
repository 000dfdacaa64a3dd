#define BOOST_TEST_MODULE store_wire_test
#include <boost/test/unit_test.hpp>

// The store's wire codec (transport/store/wire.hpp). What is checked, for every message type:
//   - a message with non-trivial contents encodes, decodes to the same message and encodes again
//     to the same bytes;
//   - every truncation of its encoding, and the encoding with one more byte, is refused;
// and, on chosen fields: empty and over-long keys, too many entries, unknown errc values,
// instruction kinds and bools are refused when encoded (invalid_argument) and when decoded
// (malformed_frame), each error naming the field, the byte and what was expected; a count the
// payload cannot hold is refused before anything is allocated for it.

#include <span>
#include <string>
#include <vector>

#include "tests/support/checks.hpp"
#include "transport/bytes_io.hpp"
#include "transport/store/wire.hpp"

using namespace kvferry;
namespace store = kvferry::transport::store;
using kvferry::test::contains;
using kvferry::test::why;

namespace {

using bytes = std::vector<uint8_t>;

/// Round trip, re-encoding, every truncation, one trailing byte.
template <class T, class Decode>
void check_codec(const T& value, Decode decode, const std::string& name) {
  BOOST_TEST_CONTEXT(name) {
    auto encoded = store::encode(value);
    BOOST_REQUIRE_MESSAGE(encoded, why(encoded));
    auto back = decode(*encoded);
    BOOST_REQUIRE_MESSAGE(back, why(back));
    BOOST_CHECK(*back == value);
    auto again = store::encode(*back);
    BOOST_REQUIRE(again);
    BOOST_CHECK(*again == *encoded);
    size_t refused = 0;
    for (size_t n = 0; n < encoded->size(); ++n) {
      auto cut = decode(std::span<const uint8_t>(encoded->data(), n));
      if (!cut && code_of(cut.error()) == errc::malformed_frame)
        ++refused;
      else
        BOOST_ERROR("a truncation to " << n << " of " << encoded->size()
                                       << " bytes was not refused");
    }
    BOOST_CHECK_EQUAL(refused, encoded->size());
    auto longer = *encoded;
    longer.push_back(0);
    auto trailing = decode(longer);
    BOOST_REQUIRE(!trailing);
    BOOST_CHECK(code_of(trailing.error()) == errc::malformed_frame);
    BOOST_CHECK_MESSAGE(
      contains(context_of(trailing.error()), "1 unexpected bytes")
        && contains(context_of(trailing.error()), "at byte " + std::to_string(encoded->size())),
      describe(trailing.error()));
  }
}

store::replica replica(int i) {
  return {"segment-" + std::to_string(i), "host-" + std::to_string(i % 2),
          0x7f0000001000ULL + i * 4096, 1000 + static_cast<uint64_t>(i)};
}

/// The error of a refused decode or encode, checked for its code and for `needle`.
template <class T>
void check_refused(const caf::expected<T>& r, errc code, const std::string& needle) {
  BOOST_REQUIRE_MESSAGE(!r, "accepted; expected a refusal mentioning '" << needle << "'");
  BOOST_CHECK_MESSAGE(code_of(r.error()) == code, describe(r.error()));
  BOOST_CHECK_MESSAGE(contains(context_of(r.error()), needle),
                      describe(r.error()) << "; expected it to mention '" << needle << "'");
}

} // namespace

BOOST_AUTO_TEST_CASE(every_message_type_round_trips) {
  store::mount_request mount;
  mount.client_id = 0x1122334455667788ULL;
  mount.client_name = "decode-0";
  mount.host = "node-a";
  mount.fence_floor = 77;
  for (int s = 0; s < 3; ++s) {
    store::segment_mount seg{"segment-" + std::to_string(s), 0x10000ULL * (s + 1), 1 << 20, {}};
    for (int o = 0; o < s + 1; ++o)
      seg.objects.push_back({"key/" + std::to_string(s) + "/" + std::to_string(o),
                             seg.base + o * 4096ULL, 4096, 500 + static_cast<uint64_t>(o),
                             o % 2 == 0, 0xdeadbeefu + o, o == 1});
    mount.segments.push_back(seg);
  }
  check_codec(mount, store::decode_mount_request, "mount_request");

  store::mount_reply mounted{
    0xabcdef, 30000, 5000, {{"segment-0", 0x10000, 4096}, {"segment-2", 0x30000, 8192}}};
  check_codec(mounted, store::decode_mount_reply, "mount_reply");

  check_codec(store::unmount_request{42}, store::decode_unmount_request, "unmount_request");

  check_codec(store::watch_request{42, {1, 2, 0xffffffffffffffffULL}}, store::decode_watch_request,
              "watch_request");

  store::watch_reply work;
  work.work.push_back({9, store::instruction_kind::commit, "segment-1", 0x20000, 4096, 501, "k1",
                       true, 0x1234, true});
  work.work.push_back(
    {10, store::instruction_kind::fence, "segment-2", 0x30000, 1 << 20, 600, "", false, 0, false});
  check_codec(work, store::decode_watch_reply, "watch_reply");

  store::put_start_request put;
  put.client_id = 42;
  put.entries.push_back({"a", 1, 1, false, false});
  put.entries.push_back(
    {std::string(store::max_key, 'k'), 1ULL << 40, store::max_replicas, true, true});
  check_codec(put, store::decode_put_start_request, "put_start_request");

  store::put_start_reply slots;
  slots.slots.push_back({{}, 7, {replica(0), replica(1)}});
  slots.slots.push_back({{errc::store_full, "no segment has 1 TiB free"}, 0, {}});
  slots.slots.push_back({{errc::object_exists, ""}, 8, {replica(2)}});
  check_codec(slots, store::decode_put_start_reply, "put_start_reply");

  store::put_finish_request finish;
  finish.client_id = 42;
  finish.entries.push_back({"a", 7, true, 0xcafef00d});
  finish.entries.push_back({"b", 8, false, 0});
  check_codec(finish, store::decode_put_finish_request, "put_finish_request");

  check_codec(store::keys_request{42, {"a", "bb", std::string(300, 'x')}, true},
              store::decode_keys_request, "keys_request");
  check_codec(store::keys_request{42, {}, false}, store::decode_keys_request, "empty keys_request");

  store::statuses_reply statuses;
  statuses.results = {{},
                      {errc::object_not_found, "no object 'bb'"},
                      {errc::fenced, "token 3 < 5"},
                      {errc_last, std::string(store::max_reason, 'r')}};
  check_codec(statuses, store::decode_statuses_reply, "statuses_reply");

  store::get_replicas_reply located;
  located.objects.push_back({{}, 4096, true, 0x99, 2000, {replica(3), replica(4), replica(5)}});
  located.objects.push_back({{errc::object_has_lease, "being read"}, 0, false, 0, 0, {}});
  check_codec(located, store::decode_get_replicas_reply, "get_replicas_reply");

  check_codec(store::stats_request{42}, store::decode_stats_request, "stats_request");
  check_codec(store::stats_reply{R"({"objects": 3, "segments": [1, 2]})"},
              store::decode_stats_reply, "stats_reply");
  check_codec(store::stats_reply{""}, store::decode_stats_reply, "empty stats_reply");
}

BOOST_AUTO_TEST_CASE(a_long_reason_is_truncated_when_encoded) {
  store::statuses_reply r;
  r.results.push_back({errc::busy, std::string(store::max_reason + 500, 'x')});
  auto encoded = store::encode(r);
  BOOST_REQUIRE_MESSAGE(encoded, why(encoded));
  auto back = store::decode_statuses_reply(*encoded);
  BOOST_REQUIRE_MESSAGE(back, why(back));
  BOOST_CHECK_EQUAL(back->results[0].reason.size(), store::max_reason);
  BOOST_CHECK(back->results[0].code == errc::busy);
}

BOOST_AUTO_TEST_CASE(keys_and_entries_beyond_their_limits_are_refused_when_encoded) {
  check_refused(store::encode(store::keys_request{1, {"a", ""}, false}), errc::invalid_argument,
                "key of 0 bytes; expected 1 to 4096 in key 1");
  check_refused(
    store::encode(store::keys_request{1, {std::string(store::max_key + 1, 'k')}, false}),
    errc::invalid_argument, "key of 4097 bytes");
  store::keys_request many{1, std::vector<std::string>(store::max_batch + 1, "k"), false};
  check_refused(store::encode(many), errc::invalid_argument,
                "key list of 4097 entries; expected at most 4096");
  many.keys.pop_back();
  BOOST_CHECK(store::encode(many));

  store::put_start_request put{1, {{"", 1, 1, false, false}}};
  check_refused(store::encode(put), errc::invalid_argument, "key of 0 bytes");
  put.entries[0] = {"k", 1, 0, false, false};
  check_refused(store::encode(put), errc::invalid_argument,
                "replica count 0; expected 1 to 8 in entry 0");
  put.entries[0].replicas = store::max_replicas + 1;
  check_refused(store::encode(put), errc::invalid_argument, "replica count 9");

  store::put_start_reply slots;
  slots.slots.resize(2);
  slots.slots[1].replicas.assign(store::max_replicas + 1, replica(0));
  check_refused(store::encode(slots), errc::invalid_argument,
                "replica list of 9 entries; expected at most 8 in slot 1");
  slots.slots[1].replicas.assign(1, replica(0));
  slots.slots[1].replicas[0].segment = "";
  check_refused(store::encode(slots), errc::invalid_argument, "replica segment of 0 bytes");
  slots.slots[1].replicas[0] = replica(0);
  slots.slots[1].replicas[0].host = std::string(store::max_name + 1, 'h');
  check_refused(store::encode(slots), errc::invalid_argument,
                "replica host of 257 bytes; expected 1 to 256 in replica 0 of slot 1");

  store::mount_request mount{1, "c", "h", 0, {}};
  mount.segments.assign(store::max_segments + 1, store::segment_mount{"s", 0, 0, {}});
  check_refused(store::encode(mount), errc::invalid_argument, "segment list of 65 entries");
  mount.segments.assign(1, store::segment_mount{"s", 0, 0, {{"", 0, 0, 0, false, 0, false}}});
  check_refused(store::encode(mount), errc::invalid_argument,
                "key of 0 bytes; expected 1 to 4096 in held object 0 of segment 0");
  mount.segments[0].objects[0].key = "k";
  mount.client_name = "";
  check_refused(store::encode(mount), errc::invalid_argument, "client name of 0 bytes");

  store::statuses_reply bad_code;
  bad_code.results.push_back({static_cast<errc>(static_cast<uint8_t>(errc_last) + 1), ""});
  check_refused(store::encode(bad_code), errc::invalid_argument, "is not a kvferry errc");

  store::watch_reply bad_kind;
  bad_kind.work.push_back(
    {1, static_cast<store::instruction_kind>(2), "s", 0, 0, 0, "k", false, 0, false});
  check_refused(store::encode(bad_kind), errc::invalid_argument, "instruction kind 2");
  store::watch_reply commit_without_key;
  commit_without_key.work.push_back(
    {1, store::instruction_kind::commit, "s", 0, 0, 0, "", false, 0, false});
  check_refused(store::encode(commit_without_key), errc::invalid_argument, "key of 0 bytes");

  check_refused(store::encode(store::watch_request{1, std::vector<uint64_t>(store::max_batch + 1)}),
                errc::invalid_argument, "done list of 4097 entries");
  check_refused(store::encode(store::stats_reply{std::string(store::max_report + 1, ' ')}),
                errc::invalid_argument, "report of");
}

BOOST_AUTO_TEST_CASE(keys_and_entries_beyond_their_limits_are_refused_when_decoded) {
  using transport::byte_writer;
  auto keys_with = [](const std::vector<std::string>& keys, uint8_t force = 0) {
    byte_writer w;
    w.u64(1);
    w.u8(force);
    w.u32(static_cast<uint32_t>(keys.size()));
    for (const auto& k : keys)
      w.str16(k);
    return w.bytes();
  };
  BOOST_CHECK(store::decode_keys_request(keys_with({"a", std::string(store::max_key, 'k')})));
  // The empty key is key 1, at byte 8 + 1 + 4 + (2 + 1).
  check_refused(store::decode_keys_request(keys_with({"a", "", "bbbbbb"})), errc::malformed_frame,
                "key has length 0; expected 1 to 4096 (at byte 16) in key 1");
  check_refused(store::decode_keys_request(keys_with({std::string(store::max_key + 1, 'k')})),
                errc::malformed_frame, "key has length 4097; expected 1 to 4096 (at byte 13)");
  check_refused(store::decode_keys_request(keys_with({"a"}, 2)), errc::malformed_frame,
                "force is 2; expected 0 or 1 (at byte 8)");
  check_refused(
    store::decode_keys_request(keys_with(std::vector<std::string>(store::max_batch + 1, "k"))),
    errc::malformed_frame, "key count is 4097; expected at most 4096 (at byte 9)");

  // A count the payload cannot hold is refused before anything is reserved for it.
  byte_writer huge;
  huge.u64(1);
  huge.u8(0);
  huge.u32(4000);
  huge.str16("k");
  check_refused(
    store::decode_keys_request(huge.bytes()), errc::malformed_frame,
    "key count is 4000, but entries of at least 3 bytes each do not fit in the 3 bytes left");
  byte_writer dropped;
  dropped.u64(1);
  dropped.u32(1);
  dropped.u32(1);
  dropped.u32(0xffffffffu);
  check_refused(store::decode_mount_reply(dropped.bytes()), errc::malformed_frame,
                "dropped object count is 4294967295; expected at most");

  // Unknown errc values.
  for (unsigned code : {static_cast<unsigned>(errc_last) + 1, 255u}) {
    byte_writer w;
    w.u32(2);
    w.u8(0);
    w.str16("");
    w.u8(static_cast<uint8_t>(code));
    w.str16("why");
    check_refused(store::decode_statuses_reply(w.bytes()), errc::malformed_frame,
                  "status code " + std::to_string(code) + " is not a kvferry errc; expected 0 to "
                    + std::to_string(static_cast<unsigned>(errc_last))
                    + " (at byte 7) in status 1");
  }

  // An unknown instruction kind; a commit without a key.
  auto instruction = [](uint8_t kind, const std::string& key) {
    byte_writer w;
    w.u32(1);
    w.u64(5);
    w.u8(kind);
    w.str16("seg");
    w.u64(0);
    w.u64(0);
    w.u64(0);
    w.str16(key);
    w.u8(0);
    w.u32(0);
    w.u8(0);
    return w.bytes();
  };
  BOOST_CHECK(store::decode_watch_reply(instruction(1, "")));
  BOOST_CHECK(store::decode_watch_reply(instruction(0, "k")));
  check_refused(
    store::decode_watch_reply(instruction(2, "k")), errc::malformed_frame,
    "instruction kind 2 is neither commit (0) nor fence (1) (at byte 12) in instruction 0");
  check_refused(store::decode_watch_reply(instruction(0, "")), errc::malformed_frame,
                "key has length 0");

  // Bools other than 0 and 1, and replica counts out of range.
  auto put_entry = [](uint8_t replicas, uint8_t pin, uint8_t upsert) {
    byte_writer w;
    w.u64(1);
    w.u32(1);
    w.str16("k");
    w.u64(10);
    w.u8(replicas);
    w.u8(pin);
    w.u8(upsert);
    return w.bytes();
  };
  BOOST_CHECK(store::decode_put_start_request(put_entry(2, 1, 0)));
  check_refused(store::decode_put_start_request(put_entry(2, 1, 7)), errc::malformed_frame,
                "upsert is 7; expected 0 or 1 (at byte 25) in entry 0");
  check_refused(store::decode_put_start_request(put_entry(0, 0, 0)), errc::malformed_frame,
                "replica count 0; expected 1 to 8");
  check_refused(store::decode_put_start_request(put_entry(9, 0, 0)), errc::malformed_frame,
                "replica count 9");

  // An empty segment name in a replica.
  byte_writer located;
  located.u32(1);
  located.u8(0);
  located.str16("");
  located.u64(1);
  located.u8(0);
  located.u32(0);
  located.u32(0);
  located.u8(1);
  located.str16("");
  located.str16("h");
  located.u64(0);
  located.u64(0);
  located.u8(0); // the 22 bytes a replica takes at least, so the count passes
  check_refused(
    store::decode_get_replicas_reply(located.bytes()), errc::malformed_frame,
    "replica segment has length 0; expected 1 to 256 (at byte 25) in replica 0 of object 0");
}
