// Fuzz target: `kvferry metadata`, the server of Mooncake's HTTP metadata protocol
// (transport/metadata): the text parsers of url.hpp, and the server itself (Boost.Beast), started
// on 127.0.0.1:0 for each input and fed the input over a loopback TCP connection.
//
// Input: byte 0 chooses the chunk size the peer writes in (1 to 64 bytes, or all at once); byte 1:
//   bit 0  no half-close at the end: the server's timeout (50 ms here) must end the connection
//          (408 for a request begun, a plain close for an idle one)
//   bit 1  the peer reads only when a write would block (a peer that does not read)
//   bit 2  small bounds (8-byte keys, 16-byte values, 2 keys, a 256-byte head, 10 ms TTLs)
//   bit 3  the peer resets the connection once it has sent everything, without reading the rest
// The rest is what the peer sends. The same bytes go to the url.hpp parsers: percent_decode,
// percent_encode, parse_target (also of the request target of the first line) and
// parse_http_url.
//
// A fresh server per input keeps runs reproducible (its store starts empty) and lets the harness
// check the server's accounting after stop(). Invariants besides "no crash, no sanitizer report,
// no leak":
//   - url.hpp: nothing throws; percent_encode writes only unreserved bytes and %XX, and decodes
//     back to its input; percent_decode agrees with a reference decoder, and what it decodes
//     encodes and decodes to the same; parse_target agrees with a reference split, its path is the
//     text before '?', a refusal is one of its three reasons, and what it parses re-encodes
//     (path?key=<percent_encode(key)>&ttl_ms=...) to a target that parses the same;
//     parse_http_url refuses with invalid_argument, and what it accepts has a host, a port in
//     1..65535 and a path starting with '/', and re-encodes (http://host:port/path, brackets
//     around a host with ':') to a URL that parses the same;
//   - server: every response is "HTTP/1.1 <status> ..." with a status the protocol has, a
//     Content-Length its body matches (a 100 Continue has none), a value no larger than
//     max_value_bytes; 408, 413, 431 and 503 say Connection: close, and nothing follows a response
//     that does; when the peer half-closes, the server closes the connection too (within 5 s),
//     after whole responses only, and the responses read are exactly those its counters count;
//     with the timeout bit, it closes within 5 s on its own;
//   - afterwards the same server answers a valid GET (200 or 404) on a new connection; it holds
//     at most max_stored_bytes and max_keys; after stop() no connection is open and no byte is
//     counted as stored.

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config/error.hpp"
#include "config/log.hpp"
#include "tests/fuzz/fuzz_check.hpp"
#include "transport/metadata/http_server.hpp"
#include "transport/metadata/url.hpp"

namespace md = kvferry::transport::metadata;

namespace {

/// KVFERRY_FUZZ_TRACE=1: one line per run (the statuses the peer read).
bool trace = false;

// ---- url.hpp --------------------------------------------------------------------------------

bool unreserved(unsigned char c) {
  return std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
}

int hex(unsigned char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  c = static_cast<unsigned char>(std::tolower(c));
  return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/// The decoding percent_decode promises, written again.
std::optional<std::string> reference_decode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out += ' ';
    } else if (s[i] != '%') {
      out += s[i];
    } else {
      if (s.size() - i < 3 || hex(s[i + 1]) < 0 || hex(s[i + 2]) < 0)
        return std::nullopt;
      out += static_cast<char>(hex(s[i + 1]) * 16 + hex(s[i + 2]));
      i += 2;
    }
  }
  return out;
}

template <class F>
auto no_throw(const char* what, F f) {
  try {
    return f();
  } catch (const std::exception& e) {
    FUZZ_CHECK(false, "%s threw: %s", what, e.what());
  } catch (...) {
    FUZZ_CHECK(false, "%s threw", what);
  }
  std::abort();
}

void check_codec(std::string_view text) {
  auto encoded = no_throw("percent_encode", [&] { return md::percent_encode(text); });
  FUZZ_CHECK(encoded.size() >= text.size() && encoded.size() <= 3 * text.size(),
             "%zu bytes encode to %zu", text.size(), encoded.size());
  for (size_t i = 0; i < encoded.size(); ++i) {
    auto c = static_cast<unsigned char>(encoded[i]);
    if (c == '%') {
      FUZZ_CHECK(i + 2 < encoded.size() && std::isxdigit(static_cast<unsigned char>(encoded[i + 1]))
                   && std::isxdigit(static_cast<unsigned char>(encoded[i + 2]))
                   && !std::islower(static_cast<unsigned char>(encoded[i + 1]))
                   && !std::islower(static_cast<unsigned char>(encoded[i + 2])),
                 "a bad escape in the encoding at %zu", i);
      i += 2;
    } else {
      FUZZ_CHECK(unreserved(c), "percent_encode left byte 0x%02x", c);
    }
  }
  auto back = no_throw("percent_decode", [&] { return md::percent_decode(encoded); });
  FUZZ_CHECK(back && *back == text, "percent_decode(percent_encode(x)) != x");

  auto decoded = no_throw("percent_decode", [&] { return md::percent_decode(text); });
  auto expected = reference_decode(text);
  FUZZ_CHECK(decoded.has_value() == expected.has_value() && (!decoded || *decoded == *expected),
             "percent_decode %s where the reference %s", decoded ? "decodes" : "refuses",
             expected ? "decodes" : "refuses");
  if (decoded) {
    FUZZ_CHECK(decoded->size() <= text.size(), "decoding grew %zu bytes to %zu", text.size(),
               decoded->size());
    auto again = md::percent_decode(md::percent_encode(*decoded));
    FUZZ_CHECK(again && *again == *decoded, "a decoded key does not survive re-encoding");
  }
}

/// What parse_target promises, written again: the error kind (0 none, 1 key twice, 2 bad
/// escape, 3 ttl_ms twice), the key and ttl_ms.
struct reference_target {
  int error = 0;
  std::optional<std::string> key, ttl_ms;
};

reference_target reference_split(std::string_view text) {
  reference_target r;
  auto q = text.find('?');
  if (q == std::string_view::npos)
    return r;
  auto query = text.substr(q + 1);
  if (auto hash = query.find('#'); hash != std::string_view::npos)
    query = query.substr(0, hash);
  size_t start = 0;
  while (start < query.size()) {
    auto end = query.find('&', start);
    if (end == std::string_view::npos)
      end = query.size();
    auto pair = query.substr(start, end - start);
    start = end + 1;
    auto eq = pair.find('=');
    auto name = pair.substr(0, eq);
    auto value = eq == std::string_view::npos ? std::string_view{} : pair.substr(eq + 1);
    if (name == "key") {
      if (r.key)
        return r.error = 1, r;
      auto d = reference_decode(value);
      if (!d)
        return r.error = 2, r;
      r.key = *d;
    } else if (name == "ttl_ms") {
      if (r.ttl_ms)
        return r.error = 3, r;
      r.ttl_ms = std::string(value);
    }
  }
  return r;
}

void check_target(std::string_view text) {
  auto t = no_throw("parse_target", [&] { return md::parse_target(text); });
  FUZZ_CHECK(t.path == text.substr(0, text.find('?')), "path '%s' of '%.*s'", t.path.c_str(),
             static_cast<int>(std::min<size_t>(text.size(), 80)), text.data());
  auto ref = reference_split(text);
  static const char* const reasons[] = {"", "the key parameter is given twice",
                                        "the key parameter has a malformed %-escape",
                                        "the ttl_ms parameter is given twice"};
  FUZZ_CHECK(t.error == reasons[ref.error], "parse_target says '%s', the reference '%s'",
             t.error.c_str(), reasons[ref.error]);
  if (!t.error.empty())
    return;
  FUZZ_CHECK(t.key == ref.key && t.ttl_ms == ref.ttl_ms, "parse_target differs from the reference");
  // Re-encoded as a client writes it: parses the same.
  std::string again = t.path;
  char sep = '?';
  if (t.key) {
    again += "?key=" + md::percent_encode(*t.key);
    sep = '&';
  }
  if (t.ttl_ms) {
    again += sep;
    again += "ttl_ms=" + *t.ttl_ms;
  }
  auto u = md::parse_target(again);
  FUZZ_CHECK(u.error.empty() && u.path == t.path && u.key == t.key && u.ttl_ms == t.ttl_ms,
             "the re-encoded target '%s' parses differently ('%s')", again.c_str(),
             u.error.c_str());
}

void check_url(std::string_view text) {
  auto u = no_throw("parse_http_url", [&] { return md::parse_http_url(text); });
  if (!u) {
    FUZZ_CHECK(kvferry::code_of(u.error()) == kvferry::errc::invalid_argument,
               "parse_http_url refused with another code: %s",
               kvferry::describe(u.error()).c_str());
    return;
  }
  FUZZ_CHECK(text.starts_with("http://") && text.find_first_of("?#") == std::string_view::npos,
             "accepted '%.*s'", static_cast<int>(std::min<size_t>(text.size(), 80)), text.data());
  FUZZ_CHECK(!u->host.empty() && u->port >= 1 && !u->path.empty() && u->path[0] == '/'
               && u->text == text && u->host.find_first_of("/@") == std::string::npos,
             "accepted host '%s' port %u path '%s'", u->host.c_str(), u->port, u->path.c_str());
  // Re-encoded (a host with ':' or a leading '[' in brackets): parses the same.
  bool bracket = u->host.find(':') != std::string::npos || u->host.front() == '[';
  std::string again = "http://" + (bracket ? "[" + u->host + "]" : u->host) + ":"
                      + std::to_string(u->port) + u->path;
  auto v = md::parse_http_url(again);
  FUZZ_CHECK(v && v->host == u->host && v->port == u->port && v->path == u->path,
             "the re-encoded URL '%s' parses differently: %s", again.c_str(),
             v ? "accepted" : kvferry::describe(v.error()).c_str());
}

void check_url_functions(std::string_view rest) {
  check_codec(rest);
  check_target(rest);
  // The first line: a request target between its first two spaces, and the line as a URL.
  auto line = rest.substr(0, rest.find_first_of("\r\n"));
  check_url(line);
  auto sp = line.find(' ');
  if (sp != std::string_view::npos) {
    auto target = line.substr(sp + 1);
    target = target.substr(0, target.find(' '));
    check_target(target);
    check_codec(target);
  }
}

// ---- the server ---------------------------------------------------------------------------

/// Reads the server's responses as they arrive and checks each.
class response_reader {
public:
  explicit response_reader(const md::http_server_options& o) : options_(o) {}

  void feed(std::string_view in) {
    while (!in.empty()) {
      if (body_left_ > 0) {
        auto n = std::min<uint64_t>(body_left_, in.size());
        body_left_ -= n;
        in.remove_prefix(n);
        continue;
      }
      FUZZ_CHECK(!closing_, "%zu bytes after a response that closes the connection: '%.40s'",
                 in.size(), std::string(in.substr(0, 40)).c_str());
      size_t old = head_.size();
      head_.append(in);
      auto end = head_.find("\r\n\r\n", old >= 3 ? old - 3 : 0);
      if (end == std::string::npos) {
        FUZZ_CHECK(head_.size() <= 2048, "a response head of %zu bytes", head_.size());
        return;
      }
      in.remove_prefix(end + 4 - old);
      head_.resize(end + 4);
      on_head();
      head_.clear();
    }
  }

  /// At the end of the connection: whether a response was cut.
  [[nodiscard]] bool cut() const noexcept { return !head_.empty() || body_left_ > 0; }
  [[nodiscard]] const std::map<int, uint64_t>& statuses() const noexcept { return statuses_; }
  [[nodiscard]] uint64_t count(int status) const {
    auto it = statuses_.find(status);
    return it == statuses_.end() ? 0 : it->second;
  }

private:
  void on_head() {
    const std::string& h = head_;
    auto digit = [&](size_t i) { return h[i] >= '0' && h[i] <= '9'; };
    FUZZ_CHECK(h.size() > 13 && h.starts_with("HTTP/1.1 ") && digit(9) && digit(10) && digit(11)
                 && h[12] == ' ',
               "bad status line: '%.40s'", h.c_str());
    int status = std::stoi(h.substr(9, 3));
    static const int known[] = {100, 200, 400, 404, 405, 408, 413, 414, 431, 503, 507};
    FUZZ_CHECK(std::find(std::begin(known), std::end(known), status) != std::end(known),
               "status %d", status);
    ++statuses_[status];
    if (status == 100)
      return;
    auto cl = h.find("\r\nContent-Length: ");
    FUZZ_CHECK(cl != std::string::npos, "a %d without Content-Length", status);
    auto length = std::stoull(h.substr(cl + 18));
    bool value = h.find("\r\nContent-Type: application/octet-stream\r\n") != std::string::npos;
    FUZZ_CHECK(value ? status == 200 && length <= options_.max_value_bytes : length <= 512,
               "a %d with %llu bytes of %s", status, static_cast<unsigned long long>(length),
               value ? "value" : "text");
    closing_ = h.find("\r\nConnection: close\r\n") != std::string::npos;
    if (status == 408 || status == 413 || status == 431 || status == 503)
      FUZZ_CHECK(closing_, "a %d that keeps the connection", status);
    body_left_ = length;
  }

  const md::http_server_options& options_;
  std::string head_;
  uint64_t body_left_ = 0;
  bool closing_ = false;
  std::map<int, uint64_t> statuses_;
};

int connect_to(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  FUZZ_CHECK(fd >= 0, "socket: %s", std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  int rc;
  do {
    rc = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  } while (rc != 0 && errno == EINTR);
  FUZZ_CHECK(rc == 0, "connect to 127.0.0.1:%u: %s", port, std::strerror(errno));
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

/// Closes with a reset: no TIME_WAIT left behind (a run makes thousands of connections), and,
/// when the peer has not read everything, the abrupt end a crashing client gives.
void close_reset(int fd) {
  linger l{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
  ::close(fd);
}

struct peer {
  size_t chunk = 0;
  bool half_close = true;
  bool read_late = false;
  /// Stop once everything is sent (the caller resets the connection).
  bool stop_after_send = false;
};

enum class ending { closed, sent, stalled };

/// Sends `input` in chunks, reading what the server sends meanwhile, then half-closes (or not)
/// and reads until the server closes. At most `bound`.
ending drive(int fd, std::string_view input, const peer& p, response_reader& r,
             std::chrono::milliseconds bound) {
  const auto deadline = std::chrono::steady_clock::now() + bound;
  static char buf[64 << 10];
  size_t at = 0;
  bool writing = true;
  for (;;) {
    if (writing && at == input.size()) {
      writing = false;
      if (p.stop_after_send)
        return ending::sent;
      if (p.half_close)
        ::shutdown(fd, SHUT_WR);
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                  deadline - std::chrono::steady_clock::now())
                  .count();
    if (left <= 0)
      return ending::stalled;
    pollfd pfd{fd, static_cast<short>(POLLIN | (writing ? POLLOUT : 0)), 0};
    int rc = ::poll(&pfd, 1, static_cast<int>(left));
    if (rc < 0 && errno == EINTR)
      continue;
    FUZZ_CHECK(rc >= 0, "poll: %s", std::strerror(errno));
    if (rc == 0)
      continue;
    bool could_write = writing && (pfd.revents & POLLOUT);
    if (could_write) {
      size_t n = std::min(p.chunk, input.size() - at);
      auto sent = ::send(fd, input.data() + at, n, MSG_NOSIGNAL);
      if (sent > 0) {
        at += static_cast<size_t>(sent);
      } else if (sent < 0 && errno != EAGAIN && errno != EINTR) {
        // The server closed (a refusal, or a reset): nothing more can be sent.
        writing = false;
        at = input.size();
        if (p.stop_after_send)
          return ending::sent;
      }
    }
    if (!(pfd.revents & (POLLIN | POLLHUP | POLLERR)))
      continue;
    // A peer that does not read reads only when it cannot write.
    if (p.read_late && could_write)
      continue;
    auto got = ::recv(fd, buf, sizeof buf, 0);
    if (got > 0)
      r.feed(std::string_view(buf, static_cast<size_t>(got)));
    else if (got == 0 || (errno != EAGAIN && errno != EINTR))
      return ending::closed;
  }
}

md::http_server_options server_options(uint8_t flags) {
  md::http_server_options o;
  o.bind_host = "127.0.0.1";
  o.port = 0;
  o.timeout = std::chrono::milliseconds((flags & 1) ? 50 : 10000);
  if (flags & 4) {
    o.max_key_bytes = 8;
    o.max_value_bytes = 16;
    o.max_keys = 2;
    o.max_entry_overhead = 128;
    o.max_stored_bytes = 300;
    o.max_receiving_bytes = 16;
    o.max_head_bytes = 256;
    o.max_connections = 2;
    o.max_ttl = std::chrono::milliseconds(10);
  } else {
    o.max_key_bytes = 256;
    o.max_value_bytes = 4096;
    o.max_keys = 64;
    o.max_stored_bytes = 32 << 10;
    o.max_receiving_bytes = 8192;
    o.max_head_bytes = 1024;
    o.max_connections = 8;
    o.max_ttl = std::chrono::milliseconds(60000);
  }
  return o;
}

void check_counters_match(const md::http_server_counters& c, const response_reader& r,
                          bool exact) {
  const std::pair<int, uint64_t> counted[] = {
    {200, c.ok},          {400, c.bad_request},     {404, c.not_found},
    {405, c.method_not_allowed}, {408, c.request_timeout}, {413, c.too_large},
    {414, c.uri_too_long}, {431, c.head_too_large}, {503, c.unavailable},
    {507, c.insufficient_storage}};
  for (auto [status, n] : counted) {
    auto seen = r.count(status);
    FUZZ_CHECK(exact ? n == seen : n >= seen,
               "the server counts %llu responses %d, the peer read %llu",
               static_cast<unsigned long long>(n), status, static_cast<unsigned long long>(seen));
  }
}

void check_server(const uint8_t* data, size_t size) {
  if (size < 2)
    return;
  const size_t chunk = data[0] % 65 == 0 ? size : data[0] % 65;
  const uint8_t flags = data[1];
  const bool timeout_mode = flags & 1;
  const bool reset = flags & 8;
  std::string_view input(reinterpret_cast<const char*>(data + 2), size - 2);

  auto started = md::http_server::start(server_options(flags));
  FUZZ_CHECK(started, "the server does not start: %s", kvferry::describe(started.error()).c_str());
  auto& server = **started;
  const auto& o = server.options();

  // The fuzzed peer.
  {
    response_reader r(o);
    peer p;
    p.chunk = chunk;
    p.half_close = !timeout_mode;
    p.read_late = flags & 2;
    p.stop_after_send = reset;
    int fd = connect_to(server.port());
    auto end = drive(fd, input, p, r, std::chrono::seconds(5));
    close_reset(fd);
    if (trace) {
      std::string line;
      for (auto [status, n] : r.statuses())
        line += " " + std::to_string(status) + "x" + std::to_string(n);
      const char* how = end == ending::closed ? "closed"
                        : end == ending::sent ? "sent (reset)"
                                              : "STALLED";
      std::fprintf(stderr, "metadata_http: chunk %zu flags 0x%02x, %zu bytes: ended %s;%s\n", chunk,
                   flags, input.size(), how, line.c_str());
    }
    FUZZ_CHECK(end != ending::stalled, "the server did not close the connection within 5 s (%s)",
               timeout_mode ? "its timeout is 50 ms" : "the peer half-closed");
    if (!reset) {
      if (!timeout_mode)
        FUZZ_CHECK(!r.cut(), "the connection ended inside a response");
      check_counters_match(server.counters(), r, !timeout_mode);
    }
  }

  // A valid GET on a new connection is answered.
  {
    response_reader r(o);
    peer p;
    p.chunk = 1 << 20;
    int fd = connect_to(server.port());
    auto end = drive(fd, "GET /metadata?key=probe HTTP/1.1\r\nHost: fuzz\r\n\r\n", p, r,
                     std::chrono::seconds(5));
    close_reset(fd);
    FUZZ_CHECK(end == ending::closed && !r.cut(), "the probe GET ended %s",
               end == ending::stalled ? "without the server closing" : "inside a response");
    uint64_t answers = r.count(200) + r.count(404);
    // With a 50 ms timeout a loaded machine may see the probe's request time out.
    FUZZ_CHECK(answers == 1 || (timeout_mode && answers == 0 && r.count(408) <= 1),
               "the probe GET got %llu answers (200 or 404) of %zu statuses",
               static_cast<unsigned long long>(answers), r.statuses().size());
  }

  auto c = server.counters();
  FUZZ_CHECK(c.stored_bytes <= o.max_stored_bytes && c.keys <= o.max_keys,
             "holds %llu bytes in %llu keys (bounds %llu, %zu)",
             static_cast<unsigned long long>(c.stored_bytes),
             static_cast<unsigned long long>(c.keys),
             static_cast<unsigned long long>(o.max_stored_bytes), o.max_keys);
  server.stop();
  c = server.counters();
  FUZZ_CHECK(c.open_connections == 0 && c.stored_bytes == 0,
             "after stop: %llu connections open, %llu bytes counted as stored",
             static_cast<unsigned long long>(c.open_connections),
             static_cast<unsigned long long>(c.stored_bytes));
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Quiet by default (the server logs malformed requests); KVFERRY_FUZZ_LOG=debug shows them.
  const char* level = std::getenv("KVFERRY_FUZZ_LOG");
  kvferry::log::set_level(level ? level : "off");
  ::signal(SIGPIPE, SIG_IGN);
  trace = std::getenv("KVFERRY_FUZZ_TRACE") != nullptr;
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size >= 2)
    check_url_functions(std::string_view(reinterpret_cast<const char*>(data + 2), size - 2));
  check_server(data, size);
  return 0;
}
