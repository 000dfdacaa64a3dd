// Fuzz target: the TCP data plane's whole request handling, as a target node runs it. A
// zmtp::connection (socket type ROUTER) owns the data protocol (transport::make_data_protocol)
// over one end of a socket pair; the fuzz input goes into the other end in chunks, interleaved
// with the connection's reads and writes, the way the server's event loop drives them
// (zmtp::server::handle / resume_held), while the harness reads back and checks every reply.
//
// The segment (data_plane_layout.hpp): one registered 1 MiB buffer ("cpu:0") and one 64 KiB buffer
// registered as "cuda:0" (this build has no CUDA: copies to or from it fail, which exercises the
// device staging, its budget charge and the transport_failure statuses), at fixed addresses with
// guard pages around them. Incarnation 7.
//
// Input layout: byte 0 configures the run, the rest is the stream (raw mode) or a program that
// builds the stream (structured mode):
//   bit 0    prepend a valid greeting and READY (DEALER), so raw inputs start past the handshake
//   bit 1    structured: build request messages (transport/tcp/wire.hpp) with fuzzed fields,
//            entries inside, across and outside the registered buffers, fuzzed data frames,
//            PINGs, stray commands and garbage
//   bits 2-3 write chunk: whole, 4096, 61 or 1 byte(s) (chunks grow to keep to about 256 writes)
//   bit 4    half-close the stream at its end (the connection sees EOF, mid-message or not)
//   bit 5    a small reply budget (64 KiB instead of 256 MiB)
//   bit 6    small per-peer bounds (2 queued replies, 4 KiB queued bytes)
//   bit 7    a small input buffer (64 bytes) and read quantum (4 KiB)
//
// Invariants checked besides "no crash, no ASan/UBSan report, no leak":
//   - everything the server sends is well-formed ZMTP: its greeting, READY, PONGs, and replies
//     whose every header decodes (wire::decode) with a data frame of exactly the announced size;
//   - while the connection is open the budget holds at least what its queued messages charged;
//   - once the connection is closed as zmtp::server closes one (on_close, then its released and
//     queued charges given back) and destroyed, the budget is back to 0 and no region lease is
//     held;
//   - the connection never stalls: while input remains, bytes move one way or the other.

#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config/log.hpp"
#include "memory/region_registry.hpp"
#include "tests/fuzz/data_plane_layout.hpp"
#include "tests/fuzz/fuzz_check.hpp"
#include "transport/tcp/server.hpp"
#include "transport/tcp/wire.hpp"
#include "transport/zmtp/budget.hpp"
#include "transport/zmtp/codec.hpp"
#include "transport/zmtp/connection.hpp"

namespace zmtp = kvferry::transport::zmtp;
namespace wire = kvferry::transport::wire;
namespace memory = kvferry::memory;
using kvferry::transport::data_plane;

namespace {

using kvferry::fuzz::device_base;
using kvferry::fuzz::device_length;
using kvferry::fuzz::host_base;
using kvferry::fuzz::host_length;
using kvferry::fuzz::incarnation;
/// Most bytes a structured input may expand to (keeps one run to a few milliseconds).
constexpr size_t max_stream = 2 << 20;

/// The segment's memory (data_plane_layout.hpp) and its registry, set up once per process.
struct segment {
  std::shared_ptr<memory::region_registry> registry = std::make_shared<memory::region_registry>();
  memory::region host_region, device_region;
  std::vector<uint8_t> pattern = std::vector<uint8_t>(host_length);

  segment() {
    using kvferry::fuzz::reserve_base;
    using kvferry::fuzz::reserve_length;
    void* at = ::mmap(reinterpret_cast<void*>(reserve_base), reserve_length, PROT_NONE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
    if (at != reinterpret_cast<void*>(reserve_base)
        || ::mprotect(reinterpret_cast<void*>(host_base), host_length, PROT_READ | PROT_WRITE) != 0
        || ::mprotect(reinterpret_cast<void*>(device_base), device_length, PROT_READ | PROT_WRITE)
             != 0) {
      std::fprintf(stderr, "data_plane_fuzz: cannot map the segment at 0x%llx: %s\n",
                   static_cast<unsigned long long>(reserve_base), std::strerror(errno));
      std::abort();
    }
    for (size_t i = 0; i < pattern.size(); ++i)
      pattern[i] = static_cast<uint8_t>(i * 131 + 17);
    auto h = registry->add(host_base, host_length, {});
    auto d = registry->add(device_base, device_length,
                           memory::location{memory::location_kind::cuda, 0});
    if (!h || !d) {
      std::fprintf(stderr, "data_plane_fuzz: cannot register the segment's buffers\n");
      std::abort();
    }
    host_region = *h;
    device_region = *d;
  }
};

segment& the_segment() {
  static segment s;
  return s;
}

// -- the stream -------------------------------------------------------------------------------

void append(std::vector<uint8_t>& out, std::span<const uint8_t> bytes) {
  out.insert(out.end(), bytes.begin(), bytes.end());
}

void append_frame_header(std::vector<uint8_t>& out, uint64_t size, bool more, bool command,
                         bool force_long) {
  uint8_t h[9];
  if (force_long && size <= 255) {
    h[0] = static_cast<uint8_t>((more ? zmtp::flag_more : 0) | (command ? zmtp::flag_command : 0)
                                | zmtp::flag_long);
    for (int i = 8; i >= 1; --i, size >>= 8)
      h[i] = static_cast<uint8_t>(size);
    append(out, {h, 9});
    return;
  }
  append(out, {h, zmtp::encode_frame_header(h, size, more, command)});
}

void append_handshake(std::vector<uint8_t>& out, std::string_view socket_type) {
  uint8_t greeting[zmtp::greeting_size];
  zmtp::encode_greeting(greeting);
  append(out, greeting);
  append(out, zmtp::encode_ready(socket_type));
}

/// `n` body bytes (a repeating pattern; the fuzzer decides sizes, not contents, here).
void append_body(std::vector<uint8_t>& out, uint64_t n) {
  const auto& pattern = the_segment().pattern;
  while (n > 0) {
    auto k = std::min<uint64_t>(n, pattern.size());
    out.insert(out.end(), pattern.begin(), pattern.begin() + static_cast<ptrdiff_t>(k));
    n -= k;
  }
}

/// One entry's address and length: inside, across the edges of, or outside the registered buffers.
void pick_range(FuzzedDataProvider& in, uint64_t& addr, uint64_t& length) {
  auto inside = [&](uint64_t base, uint64_t size, uint64_t most) {
    auto offset = in.ConsumeIntegralInRange<uint64_t>(0, size - 1);
    addr = base + offset;
    length = in.ConsumeIntegralInRange<uint64_t>(1, std::min(size - offset, most));
  };
  // Mostly small ranges (they keep a run short); the large ones one case each.
  switch (in.ConsumeIntegralInRange<int>(0, 11)) {
    case 0: inside(host_base, host_length, host_length); break;
    case 1: inside(device_base, device_length, device_length); break;
    case 2: inside(device_base, device_length, 256); break;
    case 3: { // around an edge of either buffer
      const bool host = in.ConsumeBool();
      const uint64_t base = host ? host_base : device_base;
      const uint64_t end = base + (host ? host_length : device_length);
      const auto slack = in.ConsumeIntegralInRange<uint64_t>(0, 64);
      addr = in.ConsumeBool() ? base - slack : end - slack;
      length = in.ConsumeIntegralInRange<uint64_t>(1, 128);
      break;
    }
    case 4: // the whole host buffer, or one byte more
      addr = host_base;
      length = host_length + in.ConsumeIntegralInRange<uint64_t>(0, 1);
      break;
    case 5: // wrap-around and huge lengths
      addr = host_base + in.ConsumeIntegralInRange<uint64_t>(0, host_length);
      length = ~uint64_t{0} - in.ConsumeIntegralInRange<uint64_t>(0, host_length);
      if (in.ConsumeBool())
        length = wire::max_frame_payload + in.ConsumeIntegralInRange<uint64_t>(0, 1);
      break;
    case 6:
      addr = in.ConsumeIntegral<uint64_t>();
      length = in.ConsumeIntegral<uint64_t>();
      break;
    default: inside(host_base, host_length, 4096); break;
  }
}

/// One request message: a header frame of N entries, then (maybe) a data frame.
void append_request(FuzzedDataProvider& in, std::vector<uint8_t>& out) {
  size_t entries;
  switch (in.ConsumeIntegralInRange<int>(0, 15)) {
    case 0: entries = wire::max_entries + in.ConsumeIntegralInRange<size_t>(0, 1); break;
    case 1: entries = in.ConsumeIntegralInRange<size_t>(9, 64); break;
    default: entries = in.ConsumeIntegralInRange<size_t>(1, 8); break;
  }
  std::vector<uint8_t> headers(entries * wire::request_header_size);
  uint64_t write_total = 0;
  for (size_t i = 0; i < entries; ++i) {
    wire::request_header h;
    h.op = in.ConsumeBool() ? wire::frame_op::write : wire::frame_op::read;
    h.id = in.ConsumeIntegral<uint16_t>();
    switch (in.ConsumeIntegralInRange<int>(0, 3)) {
      case 0: h.incarnation = 0; break;
      case 1: h.incarnation = incarnation; break;
      case 2: h.incarnation = incarnation - 1; break;
      default: h.incarnation = in.ConsumeIntegral<uint64_t>(); break;
    }
    // Large vector requests stay small per entry.
    if (i >= 8) {
      h.remote_addr = host_base + in.ConsumeIntegralInRange<uint64_t>(0, 4095);
      h.length = in.ConsumeIntegralInRange<uint64_t>(1, 64);
    } else {
      pick_range(in, h.remote_addr, h.length);
    }
    auto* p = headers.data() + i * wire::request_header_size;
    wire::encode(h, p);
    if (in.ConsumeIntegralInRange<int>(0, 15) == 0) // corrupt a byte (magic, version, reserved...)
      p[in.ConsumeIntegralInRange<size_t>(0, wire::request_header_size - 1)] =
        in.ConsumeIntegral<uint8_t>();
    if (h.op == wire::frame_op::write && h.length <= wire::max_frame_payload)
      write_total += h.length;
  }
  // The header frame's size: usually exact, sometimes cut or padded.
  size_t header_size = headers.size();
  if (in.ConsumeIntegralInRange<int>(0, 7) == 0) {
    auto delta = in.ConsumeIntegralInRange<int>(-47, 47);
    header_size = delta < 0 ? header_size - std::min<size_t>(header_size, -delta)
                            : header_size + static_cast<size_t>(delta);
    headers.resize(header_size, in.ConsumeIntegral<uint8_t>());
  }
  // The data frame: usually exactly the WRITE entries' bytes, sometimes missing, of the wrong
  // size, present without WRITEs, or followed by a third frame.
  bool data = write_total > 0;
  uint64_t data_size = write_total;
  bool third = false;
  switch (in.ConsumeIntegralInRange<int>(0, 9)) {
    case 0: data = false; break;
    case 1:
      data = true;
      data_size = write_total + in.ConsumeIntegralInRange<uint64_t>(0, 64)
                  - std::min<uint64_t>(write_total, in.ConsumeIntegralInRange<uint64_t>(0, 64));
      break;
    case 2: data = true; third = true; break;
    default: break;
  }
  const bool force_long = in.ConsumeIntegralInRange<int>(0, 7) == 0;
  append_frame_header(out, header_size, data, false, force_long);
  append(out, headers);
  if (!data)
    return;
  append_frame_header(out, data_size, third, false, force_long);
  // A body the stream has no room for is cut short: the stream ends inside it.
  append_body(out, std::min<uint64_t>(data_size, out.size() < max_stream ? max_stream - out.size()
                                                                         : 0));
  if (third) {
    auto n = in.ConsumeIntegralInRange<uint64_t>(0, 300);
    append_frame_header(out, n, false, false, false);
    append_body(out, n);
  }
}

/// A command frame: PING (valid or with too long a context), READY again, ERROR, or unknown.
void append_command(FuzzedDataProvider& in, std::vector<uint8_t>& out) {
  switch (in.ConsumeIntegralInRange<int>(0, 4)) {
    case 0:
    case 1: {
      auto context = in.ConsumeRandomLengthString(zmtp::max_ping_context);
      append(out, zmtp::encode_ping(in.ConsumeIntegral<uint16_t>(), context));
      return;
    }
    case 2: append(out, zmtp::encode_ready("DEALER")); return;
    default: {
      auto name = in.ConsumeRandomLengthString(12);
      auto body = in.ConsumeRandomLengthString(40);
      std::vector<uint8_t> frame_body;
      frame_body.push_back(static_cast<uint8_t>(name.size()));
      frame_body.insert(frame_body.end(), name.begin(), name.end());
      frame_body.insert(frame_body.end(), body.begin(), body.end());
      append_frame_header(out, frame_body.size(), false, true, false);
      append(out, frame_body);
      return;
    }
  }
}

std::vector<uint8_t> build_stream(FuzzedDataProvider& in, bool handshake) {
  std::vector<uint8_t> out;
  if (handshake)
    append_handshake(out, "DEALER");
  for (int step = 0; step < 64 && in.remaining_bytes() > 0 && out.size() < max_stream; ++step) {
    switch (in.ConsumeIntegralInRange<int>(0, 11)) {
      case 0: append_command(in, out); break;
      case 1: { // garbage
        auto bytes = in.ConsumeBytes<uint8_t>(in.ConsumeIntegralInRange<size_t>(1, 64));
        append(out, bytes);
        break;
      }
      case 2: { // a frame with fuzzed flags and size, and a pattern body
        const auto flags = in.ConsumeIntegral<uint8_t>();
        const auto size = in.ConsumeBool() ? in.ConsumeIntegral<uint64_t>()
                                           : in.ConsumeIntegralInRange<uint64_t>(0, 600);
        out.push_back(flags);
        uint8_t size_bytes[8];
        size_t n = (flags & zmtp::flag_long) ? 8 : 1;
        for (size_t i = 0; i < n; ++i)
          size_bytes[i] = static_cast<uint8_t>(size >> (8 * (n - 1 - i)));
        append(out, {size_bytes, n});
        append_body(out, std::min<uint64_t>(size, 4096));
        break;
      }
      default: append_request(in, out); break;
    }
  }
  return out;
}

// -- the peer: reads and checks what the server sends -----------------------------------------

class reply_reader {
public:
  void feed(const uint8_t* p, size_t n) {
    while (n > 0) {
      if (greeting_left_ > 0) {
        auto k = std::min(n, greeting_left_);
        greeting_.insert(greeting_.end(), p, p + k);
        greeting_left_ -= k;
        p += k;
        n -= k;
        if (greeting_left_ == 0)
          FUZZ_CHECK(zmtp::check_greeting(greeting_) == zmtp::violation::none,
                     "the server sent a greeting it would refuse");
        continue;
      }
      if (body_left_ == 0 && !in_body_) {
        header_.push_back(*p++);
        --n;
        zmtp::frame_header h;
        FUZZ_CHECK(zmtp::decode_frame_header(header_, h) == zmtp::violation::none,
                   "the server sent a bad frame header");
        if (h.header_bytes == 0)
          continue;
        header_.clear();
        start(h);
        continue;
      }
      auto k = static_cast<size_t>(std::min<uint64_t>(n, body_left_));
      if (keep_)
        body_.insert(body_.end(), p, p + k);
      body_left_ -= k;
      p += k;
      n -= k;
      if (body_left_ == 0)
        done();
    }
  }

  [[nodiscard]] size_t replies() const noexcept { return replies_; }

private:
  void start(const zmtp::frame_header& h) {
    frame_ = h;
    body_left_ = h.size;
    body_.clear();
    in_body_ = true;
    if (h.command) {
      FUZZ_CHECK(index_ == 0, "the server sent a command inside a message");
      FUZZ_CHECK(h.size <= zmtp::max_command_size, "the server sent a %llu-byte command",
                 static_cast<unsigned long long>(h.size));
      keep_ = true;
    } else if (index_ == 0) {
      FUZZ_CHECK(ready_, "the server sent a message before its READY");
      FUZZ_CHECK(h.size > 0 && h.size % wire::reply_header_size == 0
                   && h.size <= wire::max_entries * wire::reply_header_size,
                 "the server sent a reply header frame of %llu bytes",
                 static_cast<unsigned long long>(h.size));
      keep_ = true;
    } else {
      FUZZ_CHECK(index_ == 1 && !h.more, "the server sent a reply of more than two frames");
      FUZZ_CHECK(h.size == payload_, "reply data frame of %llu bytes, headers announce %llu",
                 static_cast<unsigned long long>(h.size),
                 static_cast<unsigned long long>(payload_));
      keep_ = false;
    }
    if (body_left_ == 0)
      done();
  }

  void done() {
    in_body_ = false;
    if (frame_.command) {
      zmtp::command cmd;
      FUZZ_CHECK(zmtp::decode_command(body_, cmd) == zmtp::violation::none,
                 "the server sent a command it would refuse");
      if (!ready_) {
        FUZZ_CHECK(cmd.what == zmtp::command::kind::ready && cmd.socket_type == "ROUTER",
                   "the server's first command is not READY ROUTER");
        ready_ = true;
      } else {
        FUZZ_CHECK(cmd.what == zmtp::command::kind::pong, "the server sent a command besides PONG");
      }
      return;
    }
    if (index_ == 0) {
      payload_ = 0;
      for (size_t at = 0; at < body_.size(); at += wire::reply_header_size) {
        wire::reply_header r;
        wire::decode_error err{};
        FUZZ_CHECK(wire::decode(body_.data() + at, wire::reply_header_size, r, err),
                   "the server sent a reply header it cannot decode: %s", wire::to_string(err));
        FUZZ_CHECK(!r.payload || r.bytes > 0, "a reply entry flags an empty payload");
        if (r.payload)
          payload_ += r.bytes;
      }
      FUZZ_CHECK(frame_.more == (payload_ > 0), "reply's MORE flag %d with %llu payload bytes",
                 frame_.more, static_cast<unsigned long long>(payload_));
      ++replies_;
    }
    index_ = frame_.more ? index_ + 1 : 0;
  }

  std::vector<uint8_t> greeting_;
  size_t greeting_left_ = zmtp::greeting_size;
  std::vector<uint8_t> header_;
  zmtp::frame_header frame_;
  bool in_body_ = false;
  bool keep_ = false;
  bool ready_ = false;
  uint64_t body_left_ = 0;
  std::vector<uint8_t> body_;
  size_t index_ = 0;
  uint64_t payload_ = 0;
  size_t replies_ = 0;
};

/// KVFERRY_FUZZ_TRACE set: one line per run (stream size, rounds, replies, why it closed).
bool trace = false;

size_t pending_input(int fd) {
  int n = 0;
  if (::ioctl(fd, FIONREAD, &n) != 0)
    return 0;
  return static_cast<size_t>(n);
}

/// Drives the connection as zmtp::server::handle and resume_held do; false once it is closed.
bool pump(zmtp::connection& c, zmtp::budget& budget) {
  auto r = c.on_readable();
  if (r == zmtp::io_result::open && c.wants_write())
    r = c.on_writable();
  if (r == zmtp::io_result::open && c.held())
    r = c.resume();
  if (r == zmtp::io_result::open && c.wants_write())
    r = c.on_writable();
  budget.release(c.take_released_charge());
  if (r == zmtp::io_result::open && budget.take_freed() && c.held()) {
    r = c.resume();
    if (r == zmtp::io_result::open && c.wants_write())
      r = c.on_writable();
    budget.release(c.take_released_charge());
  }
  return r == zmtp::io_result::open;
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Quiet by default: the protocol logs refusals (rate-limited per data plane, and each run has
  // a fresh one). KVFERRY_FUZZ_LOG=info shows them.
  const char* level = std::getenv("KVFERRY_FUZZ_LOG");
  kvferry::log::set_level(level ? level : "off");
  trace = std::getenv("KVFERRY_FUZZ_TRACE") != nullptr;
  (void) the_segment();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0)
    return 0;
  auto& seg = the_segment();
  const uint8_t config = data[0];
  const bool handshake = config & 0x01;
  const bool structured = config & 0x02;
  const bool half_close = config & 0x10;

  std::vector<uint8_t> stream;
  if (structured) {
    FuzzedDataProvider in(data + 1, size - 1);
    stream = build_stream(in, handshake);
  } else {
    if (handshake)
      append_handshake(stream, "DEALER");
    stream.insert(stream.end(), data + 1, data + size);
  }

  static constexpr size_t chunks[] = {~size_t{0}, 4096, 61, 1};
  // At most about 256 writes per run, whatever the chunk.
  const size_t chunk = std::max(chunks[(config >> 2) & 3], stream.size() / 256 + 1);

  zmtp::budget budget(config & 0x20 ? (64 << 10) : (256ULL << 20));
  auto plane = std::make_shared<data_plane>();
  plane->registry = seg.registry;
  plane->segment_name = "fuzz";
  plane->incarnation = incarnation;
  if (config & 0x40) {
    plane->limits.peer_max_queued_messages = 2;
    plane->limits.peer_max_queued_bytes = 4096;
  }
  zmtp::connection_limits limits;
  if (config & 0x80) {
    limits.input_buffer = 64;
    limits.read_quantum = 4096;
  }

  int fds[2];
  FUZZ_CHECK(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) == 0,
             "socketpair: %s", std::strerror(errno));
  const int peer = fds[1];
  auto conn = std::make_unique<zmtp::connection>(
    zmtp::unique_fd(fds[0]), 1, "ROUTER", kvferry::transport::make_data_protocol(budget, plane),
    limits);

  reply_reader replies;
  static std::vector<uint8_t> scratch(256 << 10);
  size_t sent = 0;
  bool shut = false;
  bool open = true;
  int idle = 0;
  size_t rounds = 0;
  for (;; ++rounds) {
    // Progress is any byte moving: into the socket, out of it into the connection, or back.
    const size_t unread_before = pending_input(conn->fd());
    const size_t queued_before = conn->queued_bytes();
    bool moved = false;
    if (sent < stream.size()) {
      auto k = ::send(peer, stream.data() + sent, std::min(chunk, stream.size() - sent),
                      MSG_DONTWAIT | MSG_NOSIGNAL);
      if (k > 0) {
        sent += static_cast<size_t>(k);
        moved = true;
      } else {
        FUZZ_CHECK(k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EPIPE
                             || errno == ECONNRESET),
                   "send to the connection: %s", std::strerror(errno));
      }
    } else if (half_close && !shut) {
      ::shutdown(peer, SHUT_WR);
      shut = true;
      moved = true;
    }
    open = pump(*conn, budget);
    for (;;) {
      auto k = ::recv(peer, scratch.data(), scratch.size(), MSG_DONTWAIT);
      if (k <= 0)
        break;
      replies.feed(scratch.data(), static_cast<size_t>(k));
      moved = true;
    }
    if (!open)
      break;
    moved = moved || pending_input(conn->fd()) != unread_before
            || conn->queued_bytes() != queued_before;
    FUZZ_CHECK(budget.used() >= conn->queued_charge(),
               "budget holds %zu bytes, the connection's queue charged %zu", budget.used(),
               conn->queued_charge());
    const bool all_sent = sent == stream.size() && (!half_close || shut);
    if (all_sent && pending_input(conn->fd()) == 0 && !conn->wants_write())
      break; // the connection has read everything; it may be inside a message
    idle = moved ? 0 : idle + 1;
    FUZZ_CHECK(idle < 4,
               "the connection stalled: %zu of %zu bytes sent, %zu unread, held %d, %zu messages "
               "queued, budget %zu of %zu",
               sent, stream.size(), pending_input(conn->fd()), conn->held(),
               conn->queued_messages(), budget.used(), budget.limit());
  }

  if (trace)
    std::fprintf(stderr, "data_plane_fuzz: config 0x%02x, stream %zu bytes, %zu sent, %zu rounds, "
                 "%zu replies, %s\n", config, stream.size(), sent, rounds, replies.replies(),
                 open ? "open" : conn->close_reason().c_str());
  // Closed as zmtp::server::close_connection closes a connection, then destroyed.
  conn->proto().on_close(*conn);
  budget.release(conn->take_released_charge());
  budget.release(conn->queued_charge());
  conn.reset();
  ::close(peer);
  FUZZ_CHECK(budget.used() == 0, "%zu budget bytes still held after the connection was closed",
             budget.used());
  FUZZ_CHECK(seg.host_region.state->users() == 0 && seg.device_region.state->users() == 0,
             "region leases still held after the connection was closed (host %u, device %u)",
             seg.host_region.state->users(), seg.device_region.state->users());
  return 0;
}
