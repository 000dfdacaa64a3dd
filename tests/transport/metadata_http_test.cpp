#define BOOST_TEST_MODULE metadata_http_test
#include <boost/test/unit_test.hpp>

// Mooncake's HTTP metadata protocol (transport/metadata): the URL and query pieces, then the
// server in this process on a free port against its client and against raw sockets: round trips
// of keys that need escaping, the statuses of wrong requests, TTL expiry and refresh (checked by
// polling, never by sleeping a guessed time), the bounds (413, 414, 431, 503, 507, connections),
// and hostile peers (garbage, half requests, many connections, a peer that never reads). After
// each, the server still answers.

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tests/support/checks.hpp"
#include "transport/metadata/http_client.hpp"
#include "transport/metadata/http_server.hpp"
#include "transport/metadata/url.hpp"

using namespace std::chrono_literals;
namespace md = kvferry::transport::metadata;
using kvferry::errc;
using kvferry::test::contains;
using kvferry::test::eventually;
using kvferry::test::why;

namespace {

std::string why_error(const caf::error& e) {
  return e ? kvferry::describe(e) : std::string("ok");
}

/// A server on a free loopback port and a client of it.
struct rig {
  explicit rig(md::http_server_options o = {}) {
    auto s = md::http_server::start(std::move(o));
    BOOST_REQUIRE_MESSAGE(s, why(s));
    server = std::move(*s);
    url = "http://127.0.0.1:" + std::to_string(server->port()) + "/metadata";
    auto c = md::http_client::create(url, md::http_client_options{5s});
    BOOST_REQUIRE_MESSAGE(c, why(c));
    client = std::move(*c);
  }
  /// The server answers a plain round trip (after whatever a test did to it).
  void check_serving(const std::string& key = "still/serving") {
    auto c = md::http_client::create(url);
    BOOST_REQUIRE(c);
    auto put = (*c)->put(key, "yes");
    BOOST_CHECK_MESSAGE(!put, why_error(put));
    auto got = (*c)->get(key);
    BOOST_REQUIRE_MESSAGE(got, why(got));
    BOOST_CHECK(*got == std::optional<std::string>("yes"));
  }
  std::unique_ptr<md::http_server> server;
  std::string url;
  std::unique_ptr<md::http_client> client;
};

/// A raw loopback connection: what a hostile (or merely plain) peer does.
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
  raw_client(const raw_client&) = delete;
  raw_client& operator=(const raw_client&) = delete;
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
  [[nodiscard]] std::string read_to_close(std::chrono::milliseconds limit = 20s) const {
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
    return out + "<still open>";
  }
  int fd = -1;
};

/// The status code of the first response in `text` (0 when there is none).
int status_of(const std::string& text) {
  if (text.size() < 12 || text.compare(0, 5, "HTTP/") != 0)
    return 0;
  return std::stoi(text.substr(9, 3));
}

/// Sends `request` on a fresh connection; returns what came back until the server closed it.
std::string raw_exchange(uint16_t port, std::string_view request) {
  raw_client c(port);
  c.send(request);
  return c.read_to_close();
}

std::string binary_value(size_t n) {
  std::string v(n, '\0');
  for (size_t i = 0; i < n; ++i)
    v[i] = static_cast<char>((i * 131 + 7) & 0xff);
  return v;
}

} // namespace

BOOST_AUTO_TEST_SUITE(url)

BOOST_AUTO_TEST_CASE(percent_encoding_round_trips) {
  BOOST_CHECK_EQUAL(md::percent_encode("mooncake/ram/seg 1%"), "mooncake%2Fram%2Fseg%201%25");
  BOOST_CHECK_EQUAL(md::percent_encode("a-b.c_d~E9"), "a-b.c_d~E9");
  std::string all;
  for (int c = 0; c < 256; ++c)
    all += static_cast<char>(c);
  auto decoded = md::percent_decode(md::percent_encode(all));
  BOOST_REQUIRE(decoded);
  BOOST_CHECK(*decoded == all);
  BOOST_CHECK(md::percent_decode("a+b%2fc") == std::optional<std::string>("a b/c"));
  BOOST_CHECK(md::percent_decode("%2F%2f") == std::optional<std::string>("//"));
  for (const char* bad : {"%", "%2", "ab%", "%zz", "%2g", "x%-1"})
    BOOST_CHECK_MESSAGE(!md::percent_decode(bad), bad);
}

BOOST_AUTO_TEST_CASE(targets_are_split_and_decoded) {
  auto t = md::parse_target("/metadata?key=mooncake%2Fram%2Fseg1&ttl_ms=500&other=1");
  BOOST_CHECK_EQUAL(t.path, "/metadata");
  BOOST_CHECK(t.key == std::optional<std::string>("mooncake/ram/seg1"));
  BOOST_CHECK(t.ttl_ms == std::optional<std::string>("500"));
  BOOST_CHECK(t.error.empty());
  t = md::parse_target("/metadata");
  BOOST_CHECK(!t.key && !t.ttl_ms && t.error.empty());
  t = md::parse_target("/metadata?x=1&key");
  BOOST_CHECK(t.key == std::optional<std::string>(""));
  t = md::parse_target("/metadata?key=a&key=b");
  BOOST_CHECK(contains(t.error, "twice"));
  t = md::parse_target("/metadata?key=%zz");
  BOOST_CHECK(contains(t.error, "escape"));
  t = md::parse_target("/metadata?key=a#frag");
  BOOST_CHECK(t.key == std::optional<std::string>("a"));
}

BOOST_AUTO_TEST_CASE(server_urls) {
  auto u = md::parse_http_url("http://10.0.0.1:8080/metadata");
  BOOST_REQUIRE_MESSAGE(u, why(u));
  BOOST_CHECK_EQUAL(u->host, "10.0.0.1");
  BOOST_CHECK_EQUAL(u->port, 8080);
  BOOST_CHECK_EQUAL(u->path, "/metadata");
  u = md::parse_http_url("http://meta.example");
  BOOST_REQUIRE(u);
  BOOST_CHECK_EQUAL(u->port, 80);
  BOOST_CHECK_EQUAL(u->path, "/");
  u = md::parse_http_url("http://[::1]:9000/a/b");
  BOOST_REQUIRE(u);
  BOOST_CHECK_EQUAL(u->host, "::1");
  BOOST_CHECK_EQUAL(u->port, 9000);
  BOOST_CHECK_EQUAL(u->path, "/a/b");
  for (const char* bad :
       {"https://h:1/metadata", "etcd://h:2379", "h:8080", "http://", "http://:80/x",
        "http://h:0/x", "http://h:65536/x", "http://h:8x/x", "http://h:/x",
        "http://h:1/metadata?key=a", "http://u@h:1/x", "http://::1:80/x", "http://[::1/x"}) {
    auto r = md::parse_http_url(bad);
    BOOST_CHECK_MESSAGE(!r, bad);
    if (!r) {
      BOOST_CHECK(kvferry::code_of(r.error()) == errc::invalid_argument);
      BOOST_CHECK_MESSAGE(contains(kvferry::describe(r.error()), bad), why(r));
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(server)

BOOST_AUTO_TEST_CASE(client_round_trips) {
  rig r;
  auto& c = *r.client;
  const std::vector<std::string> keys{"mooncake/ram/seg1", "mooncake/rpc_meta/node a:1",
                                      "100%/sure+",        "a&b=c?d#e",
                                      std::string("nul\0byte", 8), std::string(4096, 'k')};
  for (const auto& key : keys) {
    auto missing = c.get(key);
    BOOST_REQUIRE_MESSAGE(missing, why(missing));
    BOOST_CHECK(!missing->has_value());
    auto value = binary_value(key.size() * 3 + 1);
    auto put = c.put(key, value);
    BOOST_REQUIRE_MESSAGE(!put, why_error(put));
    auto got = c.get(key);
    BOOST_REQUIRE_MESSAGE(got, why(got));
    BOOST_REQUIRE(got->has_value());
    BOOST_CHECK(**got == value);
    // Overwrite, then remove (twice: the second finds nothing).
    BOOST_REQUIRE(!c.put(key, "second"));
    got = c.get(key);
    BOOST_REQUIRE(got && got->has_value());
    BOOST_CHECK_EQUAL(**got, "second");
    auto removed = c.remove(key);
    BOOST_REQUIRE_MESSAGE(removed, why(removed));
    BOOST_CHECK(*removed);
    removed = c.remove(key);
    BOOST_REQUIRE(removed);
    BOOST_CHECK(!*removed);
  }
  // Empty and large values.
  BOOST_REQUIRE(!c.put("empty", ""));
  auto got = c.get("empty");
  BOOST_REQUIRE(got && got->has_value());
  BOOST_CHECK((*got)->empty());
  auto big = binary_value(4 << 20);
  BOOST_REQUIRE(!c.put("big", big));
  got = c.get("big");
  BOOST_REQUIRE(got && got->has_value());
  BOOST_CHECK(**got == big);
  auto counters = r.server->counters();
  BOOST_CHECK_EQUAL(counters.keys, 2u);
  // Every call went over one kept-alive connection.
  BOOST_CHECK_EQUAL(counters.accepted, 1u);
  // An empty key is refused before anything is sent.
  auto empty = c.get("");
  BOOST_REQUIRE(!empty);
  BOOST_CHECK(kvferry::code_of(empty.error()) == errc::invalid_argument);
}

BOOST_AUTO_TEST_CASE(wrong_requests_get_their_status) {
  rig r;
  auto port = r.server->port();
  BOOST_REQUIRE(!r.client->put("k", "v"));
  auto ask = [&](const std::string& line) {
    return raw_exchange(port, line + " HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
  };
  BOOST_CHECK_EQUAL(status_of(ask("GET /metadata?key=k")), 200);
  BOOST_CHECK_EQUAL(status_of(ask("GET /metadata?key=k+")), 404);
  BOOST_CHECK_EQUAL(status_of(ask("GET /metadata")), 400);
  BOOST_CHECK_EQUAL(status_of(ask("GET /metadata?key=")), 400);
  BOOST_CHECK_EQUAL(status_of(ask("GET /metadata?other=k")), 400);
  BOOST_CHECK_EQUAL(status_of(ask("GET /metadata?key=%zz")), 400);
  BOOST_CHECK_EQUAL(status_of(ask("GET /metadata?key=a&key=b")), 400);
  BOOST_CHECK_EQUAL(status_of(ask("DELETE /metadata")), 400);
  BOOST_CHECK_EQUAL(status_of(ask("PUT /metadata?key=k&ttl_ms=abc")), 400);
  BOOST_CHECK_EQUAL(status_of(ask("PUT /metadata?key=k&ttl_ms=0")), 400);
  BOOST_CHECK_EQUAL(status_of(ask("PUT /metadata?key=k&ttl_ms=-5")), 400);
  BOOST_CHECK_EQUAL(status_of(ask("PUT /metadata?key=k&ttl_ms=99999999999999999999")), 400);
  BOOST_CHECK_EQUAL(status_of(ask("GET /other?key=k")), 404);
  BOOST_CHECK_EQUAL(status_of(ask("GET /metadata/x?key=k")), 404);
  BOOST_CHECK_EQUAL(status_of(ask("GET /?key=k")), 404);
  auto post = ask("POST /metadata?key=k");
  BOOST_CHECK_EQUAL(status_of(post), 405);
  BOOST_CHECK(contains(post, "Allow: GET, PUT, DELETE"));
  BOOST_CHECK_EQUAL(status_of(ask("PATCH /metadata?key=k")), 405);
  BOOST_CHECK_EQUAL(status_of(ask("BREW /metadata?key=k")), 405);
  BOOST_CHECK_EQUAL(status_of(ask("GET /metadata?key=" + std::string(4097, 'x'))), 414);
  BOOST_CHECK_EQUAL(status_of(ask("GET /metadata?key=" + std::string(4096, 'x'))), 404);
  // The value is untouched by all of that, and HTTP/1.0 is served too.
  auto old = raw_exchange(port, "GET /metadata?key=k HTTP/1.0\r\n\r\n");
  BOOST_CHECK_EQUAL(status_of(old), 200);
  BOOST_CHECK(old.size() > 0 && old.substr(old.size() - 1) == "v");
  r.check_serving();
}

BOOST_AUTO_TEST_CASE(ttl_entries_expire_and_plain_puts_persist) {
  rig r;
  auto& c = *r.client;
  BOOST_REQUIRE(!c.put("node/a", "a", 200ms));
  // A plain PUT over a TTL entry makes it persist; a TTL PUT over a plain one makes it expire.
  BOOST_REQUIRE(!c.put("plain", "p", 200ms));
  BOOST_REQUIRE(!c.put("plain", "p"));
  BOOST_REQUIRE(!c.put("becomes/expiring", "x"));
  BOOST_REQUIRE(!c.put("becomes/expiring", "x", 200ms));
  BOOST_CHECK_EQUAL(r.server->counters().expiring_keys, 2u);
  BOOST_CHECK(eventually([&] {
    auto got = c.get("node/a");
    return got && !got->has_value();
  }));
  BOOST_CHECK(eventually([&] {
    auto got = c.get("becomes/expiring");
    return got && !got->has_value();
  }));
  // Both expiring entries are gone, and "plain" was put (with its TTL) before either: it stays.
  auto plain = c.get("plain");
  BOOST_REQUIRE(plain);
  BOOST_CHECK(*plain == std::optional<std::string>("p"));
  // The expiry also runs without anyone asking (the timer), and DELETE of an expired key is 404.
  BOOST_REQUIRE(!c.put("unasked", "u", 50ms));
  BOOST_CHECK(eventually([&] { return r.server->counters().keys == 1; }));
  auto removed = c.remove("unasked");
  BOOST_REQUIRE(removed);
  BOOST_CHECK(!*removed);
  BOOST_CHECK_GE(r.server->counters().expired, 3u);
  BOOST_CHECK_EQUAL(r.server->counters().expiring_keys, 0u);
}

BOOST_AUTO_TEST_CASE(refresh_keeps_an_entry_alive) {
  rig r;
  auto& c = *r.client;
  // A sentinel put once with the same TTL as the refreshed entry: once it is gone, the
  // refreshed entry's first TTL has run out too, so it lives only thanks to its refreshes.
  constexpr auto ttl = 1000ms;
  BOOST_REQUIRE(!c.put("node/refreshed", "r", ttl));
  BOOST_REQUIRE(!c.put("node/sentinel", "s", ttl));
  size_t refreshes = 0;
  bool sentinel_gone = eventually([&] {
    BOOST_REQUIRE(!c.put("node/refreshed", "r", ttl));
    ++refreshes;
    auto got = c.get("node/sentinel");
    return got && !got->has_value();
  });
  BOOST_REQUIRE(sentinel_gone);
  auto refreshed = c.get("node/refreshed");
  BOOST_REQUIRE(refreshed);
  BOOST_CHECK(*refreshed == std::optional<std::string>("r"));
  BOOST_TEST_MESSAGE(refreshes << " refreshes until the sentinel expired");
  // Stopping the refreshes lets it expire.
  BOOST_CHECK(eventually([&] {
    auto got = c.get("node/refreshed");
    return got && !got->has_value();
  }));
}

BOOST_AUTO_TEST_CASE(values_above_the_limit_get_413) {
  md::http_server_options o;
  o.max_value_bytes = 1024;
  o.max_receiving_bytes = 4096;
  rig r(o);
  auto& c = *r.client;
  BOOST_REQUIRE(!c.put("fits", std::string(1024, 'f')));
  auto err = c.put("too/big", std::string(1025, 'b'));
  BOOST_REQUIRE(err);
  BOOST_CHECK(kvferry::code_of(err) == errc::transport_failure);
  auto text = why_error(err);
  BOOST_CHECK_MESSAGE(contains(text, "413") && contains(text, r.url) && contains(text, "too/big"),
                      text);
  // Much larger than the limit (the server drops the body it does not want).
  err = c.put("too/big", std::string(8 << 20, 'b'));
  BOOST_CHECK_MESSAGE(contains(why_error(err), "413"), why_error(err));
  // A chunked body that grows past the limit.
  raw_client chunked(r.server->port());
  chunked.send("PUT /metadata?key=chunked HTTP/1.1\r\nHost: t\r\n"
               "Transfer-Encoding: chunked\r\n\r\n");
  for (int i = 0; i < 3; ++i)
    chunked.send("200\r\n" + std::string(512, 'c') + "\r\n");
  BOOST_CHECK_EQUAL(status_of(chunked.read_to_close()), 413);
  // A chunked body within it is stored.
  auto ok = raw_exchange(r.server->port(),
                     "PUT /metadata?key=chunked HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
  BOOST_CHECK_EQUAL(status_of(ok), 200);
  auto got = c.get("chunked");
  BOOST_REQUIRE(got);
  BOOST_CHECK(*got == std::optional<std::string>("abcde"));
  auto fits = c.get("fits");
  BOOST_REQUIRE(fits && fits->has_value());
  BOOST_CHECK_EQUAL((*fits)->size(), 1024u);
  BOOST_CHECK_GE(r.server->counters().too_large, 3u);
  r.check_serving();
}

BOOST_AUTO_TEST_CASE(too_many_keys_or_bytes_get_507) {
  md::http_server_options o;
  o.max_keys = 4;
  o.max_stored_bytes = 4 * (128 + 8 + 1000);
  rig r(o);
  auto& c = *r.client;
  for (int i = 0; i < 4; ++i)
    BOOST_REQUIRE(!c.put("key/" + std::to_string(i), "v"));
  auto err = c.put("key/4", "v");
  BOOST_REQUIRE(err);
  BOOST_CHECK_MESSAGE(contains(why_error(err), "507") && contains(why_error(err), "4 keys"),
                      why_error(err));
  // Replacing an existing key is not a new key.
  BOOST_CHECK(!c.put("key/0", "again"));
  auto removed = c.remove("key/3");
  BOOST_REQUIRE(removed && *removed);
  BOOST_CHECK(!c.put("key/4", "v"));
  // Bytes: the four entries may hold about 4 x 1000 bytes of values.
  BOOST_CHECK(!c.put("key/0", std::string(3000, 'x')));
  err = c.put("key/1", std::string(2000, 'x'));
  BOOST_CHECK_MESSAGE(contains(why_error(err), "507") && contains(why_error(err), "full"),
                      why_error(err));
  BOOST_CHECK(!c.put("key/1", std::string(900, 'x')));
  BOOST_CHECK_GE(r.server->counters().insufficient_storage, 2u);
  BOOST_CHECK_LE(r.server->counters().stored_bytes, o.max_stored_bytes);
  auto got = c.get("key/0");
  BOOST_REQUIRE(got && got->has_value());
  BOOST_CHECK_EQUAL((*got)->size(), 3000u);
}

BOOST_AUTO_TEST_CASE(bodies_in_flight_are_bounded) {
  md::http_server_options o;
  o.max_value_bytes = 1024;
  o.max_receiving_bytes = 2048;
  o.timeout = 20s;
  rig r(o);
  // Two peers announce the largest value and send none of it: the budget is taken.
  std::vector<std::unique_ptr<raw_client>> hogs;
  for (int i = 0; i < 2; ++i) {
    hogs.push_back(std::make_unique<raw_client>(r.server->port()));
    hogs.back()->send("PUT /metadata?key=hog HTTP/1.1\r\nHost: t\r\nContent-Length: 1024\r\n\r\n");
  }
  caf::error last;
  BOOST_CHECK(eventually([&] {
    last = r.client->put("late", std::string(100, 'l'));
    return kvferry::code_of(last) == errc::busy;
  }));
  BOOST_CHECK_MESSAGE(contains(why_error(last), "503"), why_error(last));
  // Reads are not affected, and the budget comes back when the hogs go.
  auto got = r.client->get("late");
  BOOST_CHECK(got);
  hogs.clear();
  BOOST_CHECK(eventually([&] { return !r.client->put("late", std::string(100, 'l')); }));
}

BOOST_AUTO_TEST_CASE(hostile_peers_leave_it_serving) {
  md::http_server_options o;
  o.timeout = 500ms;
  o.max_head_bytes = 2048;
  rig r(o);
  auto port = r.server->port();
  // Garbage.
  const std::string tls_hello("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11);
  auto garbage = raw_exchange(port, tls_hello + "\r\n\r\n");
  BOOST_CHECK_EQUAL(status_of(garbage), 400);
  BOOST_CHECK_EQUAL(status_of(raw_exchange(port, "GET /metadata?key=k HTTP/2.0\r\n\r\n")), 400);
  BOOST_CHECK_EQUAL(
    status_of(raw_exchange(port, "GET /metadata?key=k HTTP/1.1\r\nBad Field\r\n\r\n")), 400);
  BOOST_CHECK_EQUAL(status_of(raw_exchange(port, "PUT /metadata?key=k HTTP/1.1\r\n"
                                             "Content-Length: 5\r\nContent-Length: 6\r\n\r\n")),
                    400);
  // A head larger than allowed.
  BOOST_CHECK_EQUAL(status_of(raw_exchange(port, "GET /metadata?key=k HTTP/1.1\r\nX: "
                                               + std::string(4096, 'x') + "\r\n\r\n")),
                    431);
  r.check_serving("after/garbage");
  // Half a request (head, then part of the body, then nothing): 408 after the timeout.
  raw_client half(port);
  half.send("PUT /metadata?key=half HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc");
  raw_client half_head(port);
  half_head.send("GET /metadata?key=");
  r.check_serving("during/half");
  BOOST_CHECK_EQUAL(status_of(half.read_to_close()), 408);
  BOOST_CHECK_EQUAL(status_of(half_head.read_to_close()), 408);
  // A silent connection is just closed.
  raw_client silent(port);
  BOOST_CHECK_EQUAL(silent.read_to_close(), "");
  BOOST_CHECK_GE(r.server->counters().timeouts, 3u);
  auto half_value = r.client->get("half");
  BOOST_REQUIRE(half_value);
  BOOST_CHECK(!half_value->has_value());
  r.check_serving("after/half");
}

BOOST_AUTO_TEST_CASE(more_connections_than_allowed) {
  md::http_server_options o;
  o.max_connections = 8;
  o.timeout = 30s;
  rig r(o);
  // 32 connections that send nothing: the server keeps at most 8, closing the quietest.
  std::vector<std::unique_ptr<raw_client>> idle;
  for (int i = 0; i < 32; ++i)
    idle.push_back(std::make_unique<raw_client>(r.server->port()));
  BOOST_CHECK(eventually([&] { return r.server->counters().accepted == 32; }));
  BOOST_CHECK_LE(r.server->counters().open_connections, 8u);
  // A client still gets through (its connection is the newest), several times over.
  for (int i = 0; i < 5; ++i)
    r.check_serving("crowded/" + std::to_string(i));
  BOOST_CHECK_GE(r.server->counters().evicted, 24u);
  BOOST_CHECK_LE(r.server->counters().open_connections, 8u);
}

BOOST_AUTO_TEST_CASE(a_peer_that_never_reads) {
  md::http_server_options o;
  o.timeout = 500ms;
  rig r(o);
  auto value = binary_value(1 << 20);
  BOOST_REQUIRE(!r.client->put("large", value));
  auto before = r.server->counters().stored_bytes;
  // Many GETs of a 1 MiB value, pipelined, never read: the server sends one response at a time
  // (the value shared, not copied) and gives up after the timeout.
  raw_client greedy(r.server->port());
  std::string gets;
  for (int i = 0; i < 64; ++i)
    gets += "GET /metadata?key=large HTTP/1.1\r\nHost: t\r\n\r\n";
  greedy.send(gets);
  // Replacing the value while a response still holds it: both count until it is out.
  BOOST_REQUIRE(!r.client->put("large", "small now"));
  r.check_serving("while/greedy");
  BOOST_CHECK(eventually([&] { return r.server->counters().timeouts >= 1; }));
  BOOST_CHECK(eventually([&] {
    return r.server->counters().stored_bytes < before - (1 << 20) + 4096;
  }));
  r.check_serving("after/greedy");
}

BOOST_AUTO_TEST_CASE(expect_100_continue) {
  rig r;
  raw_client c(r.server->port());
  c.send("PUT /metadata?key=expect HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
         "Expect: 100-continue\r\nConnection: close\r\n\r\n");
  // The interim response comes before any body byte is sent.
  std::string interim;
  auto until = std::chrono::steady_clock::now() + 20s;
  while (!contains(interim, "\r\n\r\n") && std::chrono::steady_clock::now() < until) {
    pollfd p{c.fd, POLLIN, 0};
    if (::poll(&p, 1, 50) <= 0)
      continue;
    char b[256];
    auto n = ::recv(c.fd, b, sizeof(b), 0);
    if (n <= 0)
      break;
    interim.append(b, static_cast<size_t>(n));
  }
  BOOST_CHECK_EQUAL(status_of(interim), 100);
  c.send("hello");
  BOOST_CHECK_EQUAL(status_of(c.read_to_close()), 200);
  auto got = r.client->get("expect");
  BOOST_REQUIRE(got);
  BOOST_CHECK(*got == std::optional<std::string>("hello"));
  // Refused before the body: the final status instead of 100.
  raw_client big(r.server->port());
  big.send("PUT /metadata?key=expect HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n"
           "Expect: 100-continue\r\n\r\n");
  BOOST_CHECK_EQUAL(status_of(big.read_to_close()), 413);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(client)

BOOST_AUTO_TEST_CASE(reconnects_after_the_server_closed_an_idle_connection) {
  md::http_server_options o;
  o.timeout = 200ms;
  rig r(o);
  BOOST_REQUIRE(!r.client->put("k", "v"));
  BOOST_CHECK(eventually([&] { return r.server->counters().open_connections == 0; }));
  auto got = r.client->get("k");
  BOOST_REQUIRE_MESSAGE(got, why(got));
  BOOST_CHECK(*got == std::optional<std::string>("v"));
  BOOST_CHECK_EQUAL(r.server->counters().accepted, 2u);
}

BOOST_AUTO_TEST_CASE(errors_name_the_url_the_key_and_what_happened) {
  // Nobody listening: a port of a server that stopped.
  std::string url;
  {
    rig r;
    url = r.url;
    r.server->stop();
    auto got = r.client->get("mooncake/ram/gone");
    BOOST_REQUIRE(!got);
    auto text = why(got);
    BOOST_CHECK(kvferry::code_of(got.error()) == errc::peer_unreachable);
    BOOST_CHECK_MESSAGE(contains(text, url) && contains(text, "mooncake/ram/gone")
                          && contains(text, "GET") && contains(text, "connect"),
                        text);
  }
  // A server that accepts but never answers: the call ends at its timeout.
  int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  BOOST_REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  BOOST_REQUIRE(::listen(listener, 16) == 0);
  socklen_t len = sizeof(a);
  ::getsockname(listener, reinterpret_cast<sockaddr*>(&a), &len);
  auto mute_url = "http://127.0.0.1:" + std::to_string(ntohs(a.sin_port)) + "/metadata";
  auto c = md::http_client::create(mute_url, md::http_client_options{300ms});
  BOOST_REQUIRE(c);
  auto started = std::chrono::steady_clock::now();
  auto err = (*c)->put("mooncake/rpc_meta/x", "v", 1000ms);
  auto took = std::chrono::steady_clock::now() - started;
  BOOST_REQUIRE(err);
  BOOST_CHECK(kvferry::code_of(err) == errc::timeout);
  BOOST_CHECK_MESSAGE(contains(why_error(err), mute_url)
                        && contains(why_error(err), "mooncake/rpc_meta/x"),
                      why_error(err));
  BOOST_CHECK(took < 10s);
  ::close(listener);
  // Bad URLs are refused at creation.
  auto bad = md::http_client::create("https://h:1/metadata");
  BOOST_REQUIRE(!bad);
  BOOST_CHECK(contains(why(bad), "https"));
  // A response larger than the client takes.
  rig r;
  BOOST_REQUIRE(!r.client->put("large", std::string(2048, 'x')));
  auto small = md::http_client::create(r.url, md::http_client_options{5s, 1024});
  BOOST_REQUIRE(small);
  auto got = (*small)->get("large");
  BOOST_REQUIRE(!got);
  BOOST_CHECK_MESSAGE(contains(why(got), "larger than 1024"), why(got));
  // The client goes on working after that.
  BOOST_REQUIRE(!(*small)->put("small", "s"));
}

BOOST_AUTO_TEST_CASE(stop_with_connections_open) {
  rig r;
  raw_client idle(r.server->port());
  raw_client half(r.server->port());
  half.send("PUT /metadata?key=h HTTP/1.1\r\nContent-Length: 10\r\n\r\n");
  BOOST_REQUIRE(!r.client->put("k", "v"));
  r.server->stop();
  r.server->stop();
  BOOST_CHECK_EQUAL(r.server->counters().open_connections, 0u);
}

BOOST_AUTO_TEST_SUITE_END()
