#define BOOST_TEST_MODULE http_test
#include <boost/test/unit_test.hpp>

// The metrics port's HTTP layer (transport/http): the request parser, one session without I/O,
// and the server over loopback sockets against what a hostile peer sends: garbage, oversized
// heads, bodies, other versions and methods, a request that never finishes (slowloris), a peer
// that never reads its responses, more connections than allowed. After each, the server still
// answers a well-formed scrape. Also the Prometheus text builder (actors/metrics.hpp).

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "actors/metrics.hpp"
#include "tests/support/checks.hpp"
#include "transport/http/parser.hpp"
#include "transport/http/server.hpp"
#include "transport/http/session.hpp"
#include "transport/zmtp/net.hpp"

using namespace std::chrono_literals;
namespace http = kvferry::transport::http;
using kvferry::test::contains;
using kvferry::test::why;

namespace {

http::parse_result parse(std::string_view text) {
  return http::parse_request(text, http::request_limits{});
}

/// The status a refused request gets (0 when it is not refused).
int refused_with(std::string_view text) {
  auto r = parse(text);
  return r.status == http::parse_status::error ? r.error_status : 0;
}

} // namespace

BOOST_AUTO_TEST_SUITE(parser)

BOOST_AUTO_TEST_CASE(well_formed_requests) {
  auto r = parse("GET /metrics HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n");
  BOOST_REQUIRE(r.status == http::parse_status::complete);
  BOOST_CHECK(r.req.verb == http::method::get);
  BOOST_CHECK_EQUAL(r.req.path, "/metrics");
  BOOST_CHECK(r.req.http11 && r.req.keep_alive);
  BOOST_CHECK_EQUAL(r.consumed, 47u);

  r = parse("HEAD /metrics?x=1 HTTP/1.0\n\n");
  BOOST_REQUIRE(r.status == http::parse_status::complete);
  BOOST_CHECK(r.req.verb == http::method::head);
  BOOST_CHECK_EQUAL(r.req.path, "/metrics");
  BOOST_CHECK(!r.req.http11 && !r.req.keep_alive);

  r = parse("\r\n\r\nGET http://node:9100/metrics HTTP/1.1\r\nHost: node\r\nConnection: "
            "Upgrade, close\r\nContent-Length: 0\r\n\r\nGET / HTTP/1.1");
  BOOST_REQUIRE(r.status == http::parse_status::complete);
  BOOST_CHECK_EQUAL(r.req.path, "/metrics");
  BOOST_CHECK(!r.req.keep_alive);

  r = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  BOOST_REQUIRE(r.status == http::parse_status::complete);
  BOOST_CHECK(r.req.keep_alive);

  r = parse("DELETE /metrics HTTP/1.1\r\nHost: a\r\n\r\n");
  BOOST_REQUIRE(r.status == http::parse_status::complete);
  BOOST_CHECK(r.req.verb == http::method::other);
}

BOOST_AUTO_TEST_CASE(incomplete_requests_wait) {
  std::string full = "GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n";
  size_t scan = 0;
  for (size_t n = 0; n < full.size(); ++n) {
    auto r = http::parse_request(std::string_view(full).substr(0, n), {}, scan);
    BOOST_REQUIRE_MESSAGE(r.status == http::parse_status::incomplete,
                          "prefix of " << n << " bytes: " << r.error_reason);
    scan = r.scan_from;
  }
  auto r = http::parse_request(full, {}, scan);
  BOOST_CHECK(r.status == http::parse_status::complete);
}

BOOST_AUTO_TEST_CASE(malformed_requests_are_refused) {
  BOOST_CHECK_EQUAL(refused_with(std::string("\x16\x03\x01\x02\x00", 5)), 400); // TLS hello
  BOOST_CHECK_EQUAL(refused_with("garbage\r\n\r\n"), 400);
  BOOST_CHECK_EQUAL(refused_with("GET\r\n\r\n"), 400);
  BOOST_CHECK_EQUAL(refused_with("GET  /metrics HTTP/1.1\r\n\r\n"), 400);
  BOOST_CHECK_EQUAL(refused_with("GET /metrics HTTP/1.1 \r\nHost: a\r\n\r\n"), 400);
  BOOST_CHECK_EQUAL(refused_with("GET metrics HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
  BOOST_CHECK_EQUAL(refused_with("GET /metrics HTTP/2.0\r\nHost: a\r\n\r\n"), 505);
  BOOST_CHECK_EQUAL(refused_with("GET /metrics HTTX/1.1\r\nHost: a\r\n\r\n"), 400);
  BOOST_CHECK_EQUAL(refused_with("GET /metrics HTTP/1.1\r\n\r\n"), 400); // no Host
  BOOST_CHECK_EQUAL(refused_with("GET /metrics HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
  BOOST_CHECK_EQUAL(refused_with("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"),
                    400);
  BOOST_CHECK_EQUAL(refused_with("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
                    400);
  BOOST_CHECK_EQUAL(refused_with("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n"), 400);
  BOOST_CHECK_EQUAL(refused_with("GET / HTTP/1.1\r\nHost : a\r\n\r\n"), 400);
  BOOST_CHECK_EQUAL(refused_with("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n"), 400);
  BOOST_CHECK_EQUAL(refused_with(std::string("GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n", 29)), 400);
  BOOST_CHECK_EQUAL(refused_with("GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
  // Refused as soon as the request line shows it, without waiting for the rest.
  BOOST_CHECK_EQUAL(refused_with("\x01\x02\x03"), 400);
  BOOST_CHECK_EQUAL(refused_with("GET /a\x01"), 400);
  BOOST_CHECK_EQUAL(refused_with("GET /metrics HTTP/9.9\r\n"), 505);
}

BOOST_AUTO_TEST_CASE(oversized_heads_are_refused) {
  http::request_limits limits;
  std::string big = "GET /metrics HTTP/1.1\r\nHost: a\r\nX-Big: " + std::string(10000, 'a');
  auto r = http::parse_request(big, limits);
  BOOST_REQUIRE(r.status == http::parse_status::error);
  BOOST_CHECK_EQUAL(r.error_status, 431);
  std::string target = "GET /" + std::string(limits.max_head_bytes, 'a');
  BOOST_CHECK_EQUAL(http::parse_request(target, limits).error_status, 431);
  std::string fields = "GET / HTTP/1.1\r\n";
  for (size_t i = 0; i <= limits.max_fields; ++i)
    fields += "X-" + std::to_string(i) + ": v\r\n";
  fields += "\r\n";
  BOOST_CHECK_EQUAL(http::parse_request(fields, limits).error_status, 431);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(session)

struct session_rig {
  http::handler h = [](const http::request& r) {
    if (r.path == "/metrics")
      return http::response{200, "text/plain", "body\n"};
    return http::response{404, "text/plain", "nope\n"};
  };
  http::response_counters counters;
  http::session s{http::session_limits{}, h, counters};

  void feed(std::string_view bytes) {
    while (!bytes.empty()) {
      auto space = s.input_space();
      BOOST_REQUIRE(!space.empty());
      size_t n = std::min(space.size(), bytes.size());
      std::copy_n(bytes.data(), n, space.data());
      s.received(n);
      bytes.remove_prefix(n);
    }
  }
  std::string take() {
    std::string out;
    while (s.wants_write()) {
      auto o = s.output();
      out.append(o[0]);
      out.append(o[1]);
      s.written(o[0].size() + o[1].size());
    }
    return out;
  }
};

BOOST_AUTO_TEST_CASE(pipelined_requests_are_answered_in_order) {
  session_rig rig;
  rig.feed("GET /metrics HTTP/1.1\r\nHost: a\r\n\r\nHEAD /metrics HTTP/1.1\r\nHost: a\r\n\r\n"
           "GET /other HTTP/1.1\r\nHost: a\r\n\r\n");
  BOOST_CHECK(!rig.s.wants_read()); // one response at a time
  auto out = rig.take();
  BOOST_CHECK_EQUAL(out, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
                         "body\n"
                         "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
                         "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: "
                         "5\r\n\r\nnope\n");
  BOOST_CHECK(rig.s.wants_read());
  BOOST_CHECK(rig.s.current() == http::session::phase::idle);
  BOOST_CHECK_EQUAL(rig.counters.ok.load(), 2u);
  BOOST_CHECK_EQUAL(rig.counters.not_found.load(), 1u);
}

BOOST_AUTO_TEST_CASE(errors_close_the_session) {
  session_rig rig;
  rig.feed("POST /metrics HTTP/1.1\r\nHost: a\r\n\r\n");
  auto out = rig.take();
  BOOST_CHECK(out.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
  BOOST_CHECK(contains(out, "Allow: GET, HEAD\r\n"));
  BOOST_CHECK(!rig.s.finished()); // 405 keeps the connection
  rig.feed("BLAH\x01\r\n");
  out = rig.take();
  BOOST_CHECK(out.starts_with("HTTP/1.1 400 Bad Request\r\n"));
  BOOST_CHECK(contains(out, "Connection: close\r\n"));
  BOOST_CHECK(rig.s.finished());
  BOOST_CHECK(!rig.s.wants_read());
}

BOOST_AUTO_TEST_CASE(a_slow_request_times_out_with_408) {
  session_rig rig;
  rig.feed("GET /metrics HTTP/1.1\r\nHo");
  BOOST_CHECK(rig.s.current() == http::session::phase::reading);
  rig.s.timed_out();
  auto out = rig.take();
  BOOST_CHECK(out.starts_with("HTTP/1.1 408 Request Timeout\r\n"));
  BOOST_CHECK(rig.s.finished());
  session_rig idle;
  idle.s.timed_out();
  BOOST_CHECK(idle.s.finished());
  BOOST_CHECK(idle.take().empty());
}

BOOST_AUTO_TEST_CASE(the_input_buffer_is_bounded) {
  session_rig rig;
  std::string head = "GET /metrics HTTP/1.1\r\nX: " + std::string(20000, 'x');
  size_t fed = 0;
  while (rig.s.wants_read() && fed < head.size()) {
    auto space = rig.s.input_space();
    size_t n = std::min(space.size(), head.size() - fed);
    std::copy_n(head.data() + fed, n, space.data());
    rig.s.received(n);
    fed += n;
  }
  BOOST_CHECK_LE(fed, http::request_limits{}.max_head_bytes);
  BOOST_CHECK(rig.take().starts_with("HTTP/1.1 431 "));
  BOOST_CHECK(rig.s.finished());
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(server)

namespace {

/// A raw loopback client: what a hostile (or merely plain) peer does.
struct raw_client {
  explicit raw_client(uint16_t port) {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    BOOST_REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  }
  ~raw_client() {
    if (fd >= 0)
      ::close(fd);
  }
  void send(std::string_view bytes) const {
    size_t sent = 0;
    while (sent < bytes.size()) {
      auto n = ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
      if (n <= 0)
        return; // closed by the server: what follows checks what it answered
      sent += static_cast<size_t>(n);
    }
  }
  /// Everything until the server closes the connection (or `limit` passes).
  std::string read_to_close(std::chrono::milliseconds limit = 10s) const {
    std::string out;
    auto until = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < until) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0)
        continue;
      char buffer[4096];
      auto n = ::recv(fd, buffer, sizeof(buffer), 0);
      if (n <= 0)
        return out;
      out.append(buffer, static_cast<size_t>(n));
    }
    out += "<still open>";
    return out;
  }
  /// One response of known total length (head + Content-Length body).
  std::string read_response(std::chrono::milliseconds limit = 10s) const {
    std::string out;
    auto until = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < until) {
      auto end = out.find("\r\n\r\n");
      if (end != std::string::npos) {
        auto cl = out.find("Content-Length: ");
        size_t length = cl == std::string::npos ? 0 : std::stoul(out.substr(cl + 16));
        if (out.size() >= end + 4 + length)
          return out;
      }
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0)
        continue;
      char buffer[4096];
      auto n = ::recv(fd, buffer, sizeof(buffer), 0);
      if (n <= 0)
        return out + "<closed>";
      out.append(buffer, static_cast<size_t>(n));
    }
    return out + "<timeout>";
  }
  int fd = -1;
};

constexpr const char* scrape = "GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n";

struct server_rig {
  /// `padding`: bytes of comment lines added to each response.
  explicit server_rig(std::chrono::milliseconds timeout = 10s, size_t connections = 8,
                      size_t per_host = 8, size_t padding = 0) {
    http::server_options o;
    o.name = "test metrics";
    o.timeout = timeout;
    o.max_connections = connections;
    o.max_connections_per_host = per_host;
    auto s = http::start_metrics_server(o, [this, padding] {
      ++renders;
      std::string text = padding > 0 ? "# " + std::string(padding, 'p') + "\n" : "";
      return text + "# TYPE up gauge\nup 1\n";
    });
    BOOST_REQUIRE_MESSAGE(s, why(s));
    server = std::move(*s);
  }
  /// A well-formed scrape on a new connection succeeds.
  void check_serving() const {
    raw_client c(server->port());
    c.send(scrape);
    auto out = c.read_response();
    BOOST_CHECK_MESSAGE(out.starts_with("HTTP/1.1 200 OK\r\n"), out);
    BOOST_CHECK_MESSAGE(contains(out, "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"),
                        out);
    BOOST_CHECK_MESSAGE(out.ends_with("# TYPE up gauge\nup 1\n"), out.substr(0, 300));
  }
  std::atomic<int> renders{0};
  std::unique_ptr<http::server> server;
};

} // namespace

BOOST_AUTO_TEST_CASE(scrapes_keep_alive_and_not_found) {
  server_rig rig;
  raw_client c(rig.server->port());
  for (int i = 0; i < 3; ++i) {
    c.send(scrape);
    auto out = c.read_response();
    BOOST_REQUIRE_MESSAGE(out.starts_with("HTTP/1.1 200 OK\r\n"), out);
  }
  c.send("GET /nothing HTTP/1.1\r\nHost: test\r\n\r\n");
  BOOST_CHECK(c.read_response().starts_with("HTTP/1.1 404 Not Found\r\n"));
  c.send("PUT /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
  BOOST_CHECK(c.read_response().starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
  c.send("HEAD /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
  auto head = c.read_to_close();
  BOOST_CHECK_MESSAGE(head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"), head);
  BOOST_CHECK_EQUAL(rig.renders.load(), 4);
  auto k = rig.server->counters();
  BOOST_CHECK_EQUAL(k.ok, 4u);
  BOOST_CHECK_EQUAL(k.not_found, 1u);
  BOOST_CHECK_EQUAL(k.method_not_allowed, 1u);
}

BOOST_AUTO_TEST_CASE(malformed_requests_get_an_error_and_the_server_goes_on) {
  server_rig rig;
  const std::vector<std::pair<std::string, std::string>> attacks = {
    {std::string("\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 11), "HTTP/1.1 400 "},
    {"garbage garbage garbage\r\n\r\n", "HTTP/1.1 400 "},
    {"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(64 << 10, 'a') + "\r\n\r\n",
     "HTTP/1.1 431 "},
    {"GET /metrics HTTP/3.0\r\nHost: x\r\n\r\n", "HTTP/1.1 505 "},
    {"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd", "HTTP/1.1 400 "},
    {"GET /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 400 "},
    {std::string(100000, '\n'), "HTTP/1.1 431 "},
  };
  for (const auto& [bytes, expected] : attacks) {
    raw_client c(rig.server->port());
    c.send(bytes);
    auto out = c.read_to_close();
    BOOST_CHECK_MESSAGE(out.starts_with(expected) && contains(out, "Connection: close\r\n"),
                        "sent " << bytes.substr(0, 40) << "...; got " << out);
    rig.check_serving();
  }
  auto k = rig.server->counters();
  BOOST_CHECK_EQUAL(k.bad_request, 4u);
  BOOST_CHECK_EQUAL(k.head_too_large, 2u);
  BOOST_CHECK_EQUAL(k.other, 1u); // 505
  BOOST_CHECK_EQUAL(rig.renders.load(), static_cast<int>(attacks.size()));
}

BOOST_AUTO_TEST_CASE(a_request_that_never_finishes_gets_408) {
  server_rig rig(300ms);
  raw_client slow(rig.server->port());
  slow.send("GET /metrics HTTP/1.1\r\nHost: x\r\n");
  // Trickling bytes does not extend the deadline.
  for (int i = 0; i < 3; ++i) {
    std::this_thread::sleep_for(50ms);
    slow.send("X");
  }
  rig.check_serving(); // others are served meanwhile
  auto start = std::chrono::steady_clock::now();
  auto out = slow.read_to_close(5s);
  BOOST_CHECK_MESSAGE(out.starts_with("HTTP/1.1 408 Request Timeout\r\n"), out);
  BOOST_CHECK_LT(std::chrono::steady_clock::now() - start, 2s);
  // A silent connection is closed without an answer.
  raw_client silent(rig.server->port());
  BOOST_CHECK_EQUAL(silent.read_to_close(5s), "");
  BOOST_CHECK_GE(rig.server->counters().timeouts, 2u);
  rig.check_serving();
}

BOOST_AUTO_TEST_CASE(a_peer_that_never_reads_holds_one_response) {
  // 64 KiB responses: the kernel's buffers take a few dozen, then the server must stop.
  constexpr size_t padding = 64 << 10;
  server_rig rig(2s, 8, 8, padding);
  raw_client greedy(rig.server->port());
  int small = 4096;
  ::setsockopt(greedy.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
  std::string many;
  for (int i = 0; i < 2000; ++i)
    many += scrape;
  std::thread sender([&] { greedy.send(many); }); // blocks once the kernel buffers are full
  std::this_thread::sleep_for(300ms);
  auto k = rig.server->counters();
  // Its input buffer and one response (string capacity may be up to twice the text).
  BOOST_CHECK_LE(k.held_bytes, http::request_limits{}.max_head_bytes + 2 * padding + 4096);
  BOOST_CHECK_LT(rig.renders.load(), 1000);
  auto before = rig.renders.load();
  std::this_thread::sleep_for(300ms);
  BOOST_CHECK_EQUAL(rig.renders.load(), before); // stalled: nothing more is read from it
  rig.check_serving();                           // and everyone else is served
  ::shutdown(greedy.fd, SHUT_RDWR);
  sender.join();
  rig.check_serving();
}

BOOST_AUTO_TEST_CASE(connections_beyond_the_limit_evict_idle_ones) {
  server_rig rig(10s, 4, 4);
  std::vector<std::unique_ptr<raw_client>> idle;
  for (int i = 0; i < 20; ++i)
    idle.push_back(std::make_unique<raw_client>(rig.server->port()));
  std::this_thread::sleep_for(100ms);
  rig.check_serving(); // a scraper gets in: a silent connection makes room
  auto k = rig.server->counters();
  BOOST_CHECK_LE(k.open_connections, 4u);
  BOOST_CHECK_GE(k.evicted, 17u);
}

BOOST_AUTO_TEST_CASE(refuses_bad_options) {
  http::server_options o;
  o.max_connections = 0;
  auto s = http::start_metrics_server(o, [] { return std::string(); });
  BOOST_CHECK(!s);
  auto t = http::start_metrics_server(http::server_options{}, nullptr);
  BOOST_CHECK(!t);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_CASE(prometheus_text) {
  kvferry::metrics_text m;
  m.add("a_total", kvferry::metrics_text::kind::counter, "Help with \\ and\nnewline.",
        {{"l", "q\"uote\\back\nline"}}, uint64_t{3});
  m.add("b", kvferry::metrics_text::kind::gauge, "B.", {}, 0.25);
  m.add("a_total", kvferry::metrics_text::kind::counter, "ignored", {{"l", "x"}}, uint64_t{4});
  BOOST_CHECK_EQUAL(m.render(), "# HELP a_total Help with \\\\ and\\nnewline.\n"
                                "# TYPE a_total counter\n"
                                "a_total{l=\"q\\\"uote\\\\back\\nline\"} 3\n"
                                "a_total{l=\"x\"} 4\n"
                                "# HELP b B.\n"
                                "# TYPE b gauge\n"
                                "b 0.25\n");
}
