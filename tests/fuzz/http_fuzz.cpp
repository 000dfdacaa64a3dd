// Fuzz target: the metrics port's HTTP layer (transport/http): parse_request, and a session (the
// state machine the server drives per connection) fed the input in fuzzed chunks.
//
// Input: byte 0 chooses the chunk size (1 to 64 bytes, or all at once); byte 1 bit 0 half-closes
// the peer at the end, bit 1 times the session out at the end, bit 2 takes the responses only at
// the end (a peer that does not read). The rest is what the peer sends.
// Invariants besides "no sanitizer report":
//   - parse_request: a refusal is 400, 431 or 505 with a reason free of CR and LF; a complete
//     request consumed at most the head limit and its path starts with '/' (or is "*"); parsing
//     byte by byte (passing scan_from along) reaches the same verdict as parsing at once;
//   - session: never takes more than the head limit at once nor holds more than its bound; every
//     response is "HTTP/1.1 <3 digits> <reason>\r\n...\r\n\r\n" with a Content-Length its body
//     matches (HEAD: no body); a refusal closes the session; once finished it takes no input.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <string>
#include <string_view>
#include <algorithm>

#include "tests/fuzz/fuzz_check.hpp"
#include "transport/http/parser.hpp"
#include "transport/http/session.hpp"

namespace http = kvferry::transport::http;

namespace {

void check_parser(std::string_view input) {
  http::request_limits limits;
  limits.max_head_bytes = 512; // small, so the fuzzer reaches the limit
  limits.max_fields = 8;
  auto whole = http::parse_request(input, limits);
  if (whole.status == http::parse_status::error) {
    FUZZ_CHECK(whole.error_status == 400 || whole.error_status == 431 || whole.error_status == 505,
               "refused with %d", whole.error_status);
    FUZZ_CHECK(std::strpbrk(whole.error_reason, "\r\n") == nullptr, "reason with CR/LF");
  } else if (whole.status == http::parse_status::complete) {
    FUZZ_CHECK(whole.consumed > 0
                 && whole.consumed <= std::min(input.size(), limits.max_head_bytes),
               "consumed %zu of %zu", whole.consumed, input.size());
    FUZZ_CHECK(!whole.req.path.empty() && (whole.req.path[0] == '/' || whole.req.path == "*"),
               "path '%s'", whole.req.path.c_str());
  } else {
    FUZZ_CHECK(input.size() < limits.max_head_bytes, "incomplete at the head limit");
  }
  // Byte by byte, as a slow peer sends it: the first verdict that is not "incomplete" must be the
  // one parsing the whole input gives.
  size_t scan = 0;
  for (size_t n = 1; n <= input.size(); ++n) {
    auto r = http::parse_request(input.substr(0, n), limits, scan);
    if (r.status == http::parse_status::incomplete) {
      FUZZ_CHECK(r.scan_from <= n, "scan_from %zu past %zu bytes", r.scan_from, n);
      scan = r.scan_from;
      continue;
    }
    // An error seen early may be a different one than at once (it was decided on less input),
    // but never a request that completes.
    if (r.status == http::parse_status::complete) {
      FUZZ_CHECK(whole.status == http::parse_status::complete && whole.consumed == r.consumed
                   && whole.req.path == r.req.path && whole.req.verb == r.req.verb
                   && whole.req.keep_alive == r.req.keep_alive,
                 "byte by byte completes differently");
    } else {
      FUZZ_CHECK(whole.status == http::parse_status::error, "byte by byte refuses what is fine");
    }
    return;
  }
  FUZZ_CHECK(whole.status == http::parse_status::incomplete, "byte by byte never decides");
}

struct handled {
  bool head = false;
};

/// Checks the responses in `out` (complete ones are removed); `calls` are the handler's answers
/// in order (the session answers requests in order).
void check_responses(std::string& out, std::deque<handled>& calls, bool final) {
  while (!out.empty()) {
    FUZZ_CHECK(out.rfind("HTTP/1.1 ", 0) == 0
                 || (!final && std::string_view("HTTP/1.1 ").starts_with(out)),
               "response does not start with the status line: '%.40s'", out.c_str());
    auto end = out.find("\r\n\r\n");
    if (end == std::string::npos) {
      FUZZ_CHECK(!final, "a response head was cut");
      return;
    }
    FUZZ_CHECK(out.size() > 12 && out[9] >= '1' && out[9] <= '5' && out[10] >= '0'
                 && out[10] <= '9' && out[11] >= '0' && out[11] <= '9' && out[12] == ' ',
               "bad status line");
    int status = std::stoi(out.substr(9, 3));
    auto cl = out.find("\r\nContent-Length: ");
    FUZZ_CHECK(cl != std::string::npos && cl < end, "no Content-Length");
    size_t length = std::stoul(out.substr(cl + 18));
    bool head_only = false;
    if (status == 200 || status == 404) {
      FUZZ_CHECK(!calls.empty(), "a %d nobody asked the handler for", status);
      head_only = calls.front().head;
      calls.pop_front();
    }
    size_t total = end + 4 + (head_only ? 0 : length);
    if (out.size() < total) {
      FUZZ_CHECK(!final, "a response body was cut");
      return;
    }
    if (status == 400 || status == 431 || status == 505 || status == 408)
      FUZZ_CHECK(out.find("Connection: close\r\n") < end, "a refusal keeps the connection");
    out.erase(0, total);
  }
}

void check_session(const uint8_t* data, size_t size) {
  if (size < 2)
    return;
  const size_t chunk = data[0] % 65 == 0 ? size : data[0] % 65;
  const uint8_t flags = data[1];
  std::string_view input(reinterpret_cast<const char*>(data + 2), size - 2);
  std::deque<handled> calls;
  http::handler h = [&calls](const http::request& r) {
    calls.push_back({r.verb == http::method::head});
    if (r.path == "/metrics")
      return http::response{200, "text/plain", std::string(r.path.size() * 3, 'm')};
    return http::response{404, "text/plain", "not found\n"};
  };
  http::response_counters counters;
  http::session_limits limits;
  limits.request.max_head_bytes = 256;
  limits.request.max_fields = 8;
  http::session s(limits, h, counters);
  const size_t bound = limits.request.max_head_bytes + 4096 + 2 * limits.request.max_head_bytes;
  std::string out;
  size_t at = 0;
  auto drain = [&](bool final) {
    while (s.wants_write()) {
      // Take a few bytes at a time, as a slow reader does (output()[0] is what is due first).
      auto due = s.output()[0];
      FUZZ_CHECK(!due.empty(), "wants_write with nothing to write");
      size_t n = std::min<size_t>(due.size(), 7);
      out.append(due.substr(0, n));
      s.written(n);
    }
    check_responses(out, calls, final);
  };
  while (at < input.size() && s.wants_read()) {
    auto space = s.input_space();
    FUZZ_CHECK(space.size() <= limits.request.max_head_bytes, "space %zu", space.size());
    size_t n = std::min({chunk, space.size(), input.size() - at});
    std::memcpy(space.data(), input.data() + at, n);
    s.received(n);
    at += n;
    FUZZ_CHECK(s.held_bytes() <= bound, "holds %zu bytes", s.held_bytes());
    if (!(flags & 4))
      drain(false);
    if (s.finished())
      break;
  }
  if (flags & 1)
    s.peer_closed();
  if (flags & 2)
    s.timed_out();
  drain(true);
  FUZZ_CHECK(out.empty(), "%zu bytes of output left unchecked", out.size());
  if (s.finished())
    FUZZ_CHECK(!s.wants_read() && s.input_space().empty(), "a finished session takes input");
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 0)
    check_parser(std::string_view(reinterpret_cast<const char*>(data + 1), size - 1));
  check_session(data, size);
  return 0;
}
