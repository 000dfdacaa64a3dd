// Writes the fuzz targets' seed corpora: small valid (and a few nearly valid) inputs made with the
// product's own encoders, so the seeds follow the wire formats when they change.
//   make_seeds <dir>      writes <dir>/<target>/<name> for every target
// tools/fuzz.sh seeds regenerates tests/fuzz/corpus with it.

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include "tests/fuzz/data_plane_layout.hpp"
#include "transport/control/wire.hpp"
#include "transport/metadata/url.hpp"
#include "transport/rdma/handshake.hpp"
#include "transport/store/wire.hpp"
#include "transport/tcp/wire.hpp"
#include "transport/zmtp/codec.hpp"

namespace fs = std::filesystem;
namespace zmtp = kvferry::transport::zmtp;
namespace wire = kvferry::transport::wire;
namespace control = kvferry::transport::control;
namespace store = kvferry::transport::store;
namespace layout = kvferry::fuzz;

namespace {

using bytes = std::vector<uint8_t>;

fs::path out_dir;
int failures = 0;

void put(const std::string& target, const std::string& name, const bytes& content) {
  auto dir = out_dir / target;
  fs::create_directories(dir);
  std::ofstream f(dir / name, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(content.data()), static_cast<std::streamsize>(content.size()));
  if (!f) {
    std::fprintf(stderr, "make_seeds: cannot write %s\n", (dir / name).c_str());
    ++failures;
  }
}

void append(bytes& out, std::span<const uint8_t> more) {
  out.insert(out.end(), more.begin(), more.end());
}

bytes greeting() {
  bytes g(zmtp::greeting_size);
  zmtp::encode_greeting(std::span<uint8_t, zmtp::greeting_size>(g.data(), zmtp::greeting_size));
  return g;
}

bytes frame(std::span<const uint8_t> body, bool more, bool command = false) {
  uint8_t h[9];
  bytes out(h, h + zmtp::encode_frame_header(h, body.size(), more, command));
  append(out, body);
  return out;
}

bytes request(wire::frame_op op, uint64_t id, uint64_t addr, uint64_t length,
              uint64_t incarnation = layout::incarnation) {
  bytes out(wire::request_header_size);
  wire::encode(wire::request_header{op, id, incarnation, addr, length}, out.data());
  return out;
}

bytes reply(kvferry::errc status, uint64_t id, uint64_t n, bool payload) {
  bytes out(wire::reply_header_size);
  wire::encode(wire::reply_header{status, id, n, payload}, out.data());
  return out;
}

bytes body(size_t n) {
  bytes out(n);
  for (size_t i = 0; i < n; ++i)
    out[i] = static_cast<uint8_t>(i * 7 + 3);
  return out;
}

void zmtp_codec_seeds() {
  put("zmtp_codec", "greeting", greeting());
  auto ready = zmtp::encode_ready("DEALER");
  put("zmtp_codec", "ready_frame", ready);
  put("zmtp_codec", "ready_body", bytes(ready.begin() + 2, ready.end()));
  put("zmtp_codec", "ping_frame", zmtp::encode_ping(100, "ctx"));
  put("zmtp_codec", "pong_frame", zmtp::encode_pong("ctx"));
  const uint8_t error_body[] = {5, 'E', 'R', 'R', 'O', 'R', 4, 'b', 'u', 's', 'y'};
  put("zmtp_codec", "error_body", bytes(std::begin(error_body), std::end(error_body)));
  uint8_t long_header[9];
  auto n = zmtp::encode_frame_header(long_header, 70000, true);
  put("zmtp_codec", "long_header", bytes(long_header, long_header + n));
}

void tcp_wire_seeds() {
  put("tcp_wire", "request_read", request(wire::frame_op::read, 1, layout::host_base, 4096));
  put("tcp_wire", "request_write", request(wire::frame_op::write, 2, layout::host_base, 64));
  bytes three;
  for (uint64_t i = 0; i < 3; ++i)
    append(three, request(i == 1 ? wire::frame_op::write : wire::frame_op::read, i,
                          layout::host_base + i * 4096, 4096, 0));
  put("tcp_wire", "requests_three", three);
  put("tcp_wire", "reply_ok", reply(kvferry::errc::none, 1, 4096, true));
  bytes two = reply(kvferry::errc::none, 2, 64, false);
  append(two, reply(kvferry::errc::out_of_range, 3, 0, false));
  put("tcp_wire", "replies_two", two);
}

void control_seed(const std::string& name, const control::message& m) {
  auto encoded = control::encode(m);
  if (!encoded) {
    std::fprintf(stderr, "make_seeds: cannot encode control seed %s\n", name.c_str());
    ++failures;
    return;
  }
  put("control_wire", name, *encoded);
}

void control_wire_seeds() {
  control::message describe;
  describe.id = 11;
  control_seed("describe_request", describe);

  control::message described;
  described.what = control::kind::reply;
  described.id = 11;
  described.descriptor.name = "127.0.0.1:12345";
  described.descriptor.incarnation = 7;
  described.descriptor.endpoints.push_back({"tcp", "tcp://127.0.0.1:40000"});
  described.descriptor.regions.push_back({layout::host_base, layout::host_length, "cpu:0", 0});
  described.descriptor.regions.push_back({layout::device_base, layout::device_length, "cuda:0", 9});
  control_seed("describe_reply", described);

  control::message notify;
  notify.operation = control::op::notify;
  notify.id = 12;
  notify.from = "decode-0";
  notify.text = "batch 3 written";
  control_seed("notify_request", notify);

  control::message notified;
  notified.what = control::kind::reply;
  notified.operation = control::op::notify;
  notified.id = 12;
  control_seed("notify_reply", notified);

  control::message refused = notified;
  refused.status = kvferry::errc::unknown_segment;
  refused.reason = "no such segment";
  control_seed("error_reply", refused);

  control::message call;
  call.operation = control::op::call;
  call.id = 13;
  call.method = 4;
  call.payload = {1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 'k'};
  control_seed("call_request", call);

  control::message called;
  called.what = control::kind::reply;
  called.operation = control::op::call;
  called.id = 13;
  called.payload = {1, 0, 0, 0, 0, 0};
  control_seed("call_reply", called);

  control::message call_refused = called;
  call_refused.payload.clear();
  call_refused.status = kvferry::errc::not_mounted;
  call_refused.reason = "client 42 is not mounted";
  control_seed("call_error_reply", call_refused);
}

template <class T>
void store_seed(const std::string& name, const T& m) {
  auto encoded = store::encode(m);
  if (!encoded) {
    std::fprintf(stderr, "make_seeds: cannot encode store seed %s: %s\n", name.c_str(),
                 kvferry::describe(encoded.error()).c_str());
    ++failures;
    return;
  }
  put("store_wire", name, *encoded);
}

void store_wire_seeds() {
  const store::replica r0{"node-a:12345", "host-a", layout::host_base, 11};
  const store::replica r1{"node-b:12345", "host-b", layout::host_base + 4096, 12};

  store::mount_request mount{42, "decode-0", "host-a", 10, {}};
  mount.segments.push_back({"node-a:12345", layout::host_base, layout::host_length,
                            {{"k1", layout::host_base, 4096, 11, true, 0xabcd, false},
                             {"k2", layout::host_base + 4096, 100, 12, false, 0, true}}});
  store_seed("mount_request", mount);
  store_seed("mount_reply", store::mount_reply{7, 30000, 5000, {{"node-a:12345", layout::host_base, 4096}}});
  store_seed("unmount_request", store::unmount_request{42});
  store_seed("watch_request", store::watch_request{42, {1, 2}});
  store::watch_reply work;
  work.work.push_back({1, store::instruction_kind::commit, "node-a:12345", layout::host_base, 4096,
                       11, "k1", true, 0xabcd, false});
  work.work.push_back({2, store::instruction_kind::fence, "node-a:12345", layout::host_base, 8192,
                       12, "", false, 0, false});
  store_seed("watch_reply", work);
  store_seed("put_start_request",
             store::put_start_request{42, {{"k1", 4096, 2, false, false}, {"k2", 100, 1, true, true}}});
  store::put_start_reply slots;
  slots.slots.push_back({{}, 5, {r0, r1}});
  slots.slots.push_back({{kvferry::errc::store_full, "full"}, 0, {}});
  store_seed("put_start_reply", slots);
  store_seed("put_finish_request",
             store::put_finish_request{42, {{"k1", 5, true, 0xabcd}, {"k2", 6, false, 0}}});
  store_seed("keys_request", store::keys_request{42, {"k1", "k2"}, true});
  store_seed("statuses_reply",
             store::statuses_reply{{{}, {kvferry::errc::object_not_found, "no object 'k2'"}}});
  store::get_replicas_reply located;
  located.objects.push_back({{}, 4096, true, 0xabcd, 2000, {r0, r1}});
  located.objects.push_back({{kvferry::errc::object_has_lease, "leased"}, 0, false, 0, 0, {}});
  store_seed("get_replicas_reply", located);
  store_seed("stats_request", store::stats_request{42});
  store_seed("stats_reply", store::stats_reply{R"({"objects": 2})"});
}

/// A data_plane input in raw mode: the config byte, then the stream after the handshake the
/// harness prepends (bit 0).
bytes raw(uint8_t config, std::initializer_list<bytes> frames) {
  bytes out{config};
  for (const auto& f : frames)
    append(out, f);
  return out;
}

void data_plane_seeds() {
  using wire::frame_op;
  const uint64_t host = layout::host_base;
  const uint64_t device = layout::device_base;
  put("data_plane", "read_one",
      raw(0x01, {frame(request(frame_op::read, 1, host, 4096), false)}));
  put("data_plane", "write_one", raw(0x01, {frame(request(frame_op::write, 2, host + 4096, 100), true),
                                            frame(body(100), false)}));
  bytes vector_headers;
  append(vector_headers, request(frame_op::read, 3, host + 100, 300));
  append(vector_headers, request(frame_op::write, 4, host + 8192, 200));
  append(vector_headers, request(frame_op::read, 5, device, 64));
  append(vector_headers, request(frame_op::write, 6, device + 64, 32));
  put("data_plane", "vector",
      raw(0x01, {frame(vector_headers, true), frame(body(232), false)}));
  bytes refused_headers;
  append(refused_headers, request(frame_op::read, 7, host + layout::host_length - 10, 20));
  append(refused_headers, request(frame_op::read, 8, host, 10, layout::incarnation - 1));
  append(refused_headers, request(frame_op::write, 9, 0x1000, 10));
  put("data_plane", "refused",
      raw(0x01, {frame(refused_headers, true), frame(body(10), false)}));
  put("data_plane", "ping_then_read",
      raw(0x05, {zmtp::encode_ping(10, "abc"), frame(request(frame_op::read, 10, host, 64), false)}));
  bytes short_header = request(frame_op::read, 11, host, 64);
  short_header.resize(wire::request_header_size - 1);
  put("data_plane", "short_header", raw(0x01, {frame(short_header, false)}));
  // Half-closed in the middle of a WRITE's data frame (bit 4).
  bytes cut = frame(body(50), false);
  cut.resize(20);
  put("data_plane", "cut_write",
      raw(0x11, {frame(request(frame_op::write, 12, host, 50), true), cut}));
  // The whole handshake in the input (bit 0 clear), so mutations reach the greeting and READY.
  put("data_plane", "handshake_read",
      raw(0x00, {greeting(), zmtp::encode_ready("DEALER"),
                 frame(request(frame_op::read, 13, host, 8), false)}));
  // Structured mode (bit 1): the bytes are a program; any bytes make a valid one.
  const uint8_t configs[] = {0x03, 0x07, 0x0b, 0x13, 0x23, 0x43, 0x83, 0xf3};
  uint32_t state = 12345;
  for (auto config : configs) {
    bytes program{config};
    for (int i = 0; i < 96; ++i) {
      state = state * 1103515245 + 12345;
      program.push_back(static_cast<uint8_t>(state >> 16));
    }
    char name[32];
    std::snprintf(name, sizeof name, "structured_%02x", config);
    put("data_plane", name, program);
  }
}

} // namespace

/// http: byte 0 chunk size, byte 1 flags (http_fuzz.cpp), then what a peer sends.
void http_seed(const std::string& name, uint8_t chunk, uint8_t flags, const std::string& text) {
  bytes b{chunk, flags};
  b.insert(b.end(), text.begin(), text.end());
  put("http", name, b);
}

void http_seeds() {
  const std::string scrape = "GET /metrics HTTP/1.1\r\nHost: node:9100\r\nAccept: */*\r\n\r\n";
  http_seed("scrape", 0, 0, scrape);
  http_seed("scrape_trickled", 1, 0, scrape);
  http_seed("pipelined", 7, 0, scrape + "HEAD /metrics HTTP/1.1\r\nHost: a\r\n\r\n"
                                  "GET /x?y HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  http_seed("not_read", 0, 4, scrape + scrape + scrape);
  http_seed("close", 0, 1, "GET http://a/metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  http_seed("post_body", 0, 0, "POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc");
  http_seed("slow_timeout", 3, 2, "GET /metrics HTTP/1.1\r\nHost: a\r\n");
  http_seed("version", 0, 0, "GET /metrics HTTP/2.0\r\nHost: a\r\n\r\n");
  http_seed("oversized", 64, 0,
            "GET /metrics HTTP/1.1\r\nX: " + std::string(600, 'a') + "\r\n\r\n");
  http_seed("lf_only", 0, 0, "\nGET /metrics HTTP/1.1\nHost: a\nConnection: x, close\n\n");
}

void rdma_handshake_seeds() {
  namespace rdma = kvferry::transport::rdma;
  rdma::handshake_request req;
  req.peer = "10.0.0.2:41000";
  req.peer_nic = "mlx5_0";
  req.target_nic = "mlx5_1";
  req.address.lid = 7;
  req.address.gid[0] = 0xfe;
  req.address.gid[1] = 0x80;
  req.address.mtu = IBV_MTU_4096;
  req.address.qps = {{0x123, 0x456}, {0x124, 0xffffff}};
  put("rdma_handshake", "request_2qps", rdma::encode(req));
  rdma::handshake_reply reply;
  reply.address = req.address;
  put("rdma_handshake", "reply_2qps", rdma::encode(reply));
  reply.address.qps.resize(1);
  reply.address.mtu = IBV_MTU_256;
  put("rdma_handshake", "reply_1qp", rdma::encode(reply));
}

/// metadata_http: byte 0 chunk size, byte 1 flags (metadata_http_fuzz.cpp), then what a peer
/// sends (also given to the url.hpp parsers).
void metadata_seed(const std::string& name, uint8_t chunk, uint8_t flags, const std::string& text) {
  bytes b{chunk, flags};
  b.insert(b.end(), text.begin(), text.end());
  put("metadata_http", name, b);
}

void metadata_http_seeds() {
  namespace md = kvferry::transport::metadata;
  const std::string key = md::percent_encode("mooncake/ram/node a:1");
  const std::string at = "/metadata?key=" + key;
  auto req = [](const std::string& verb, const std::string& target, const std::string& fields = "",
                const std::string& body = "") {
    return verb + " " + target + " HTTP/1.1\r\nHost: meta:8080\r\n" + fields
           + (verb == "PUT" && fields.find("Transfer-Encoding") == std::string::npos
                ? "Content-Length: " + std::to_string(body.size()) + "\r\n"
                : "")
           + "\r\n" + body;
  };
  const std::string value = R"({"name":"node a:1","rpc":"10.0.0.1:12345"})";
  const std::string put_get_delete = req("PUT", at, "", value) + req("GET", at)
                                     + req("DELETE", at) + req("GET", at);
  metadata_seed("put_get_delete", 0, 0, put_get_delete);
  metadata_seed("put_get_delete_trickled", 1, 0, put_get_delete);
  metadata_seed("put_get_delete_not_read", 7, 2, put_get_delete);
  metadata_seed("put_ttl", 0, 0,
                req("PUT", at + "&ttl_ms=60000", "", value) + req("GET", at)
                  + req("PUT", "/metadata?ttl_ms=5&key=k", "", "v")
                  + req("GET", "/metadata?key=k"));
  metadata_seed("put_bad_ttl", 0, 0,
                req("PUT", at + "&ttl_ms=0", "", "v") + req("PUT", at + "&ttl_ms=abc", "", "v")
                  + req("PUT", at + "&ttl_ms=1&ttl_ms=2", "", "v"));
  metadata_seed("put_chunked", 3, 0,
                req("PUT", "/metadata?key=a+b%2Fc", "Transfer-Encoding: chunked\r\n",
                    "5\r\nhello\r\n0\r\n\r\n")
                  + req("GET", "/metadata?key=a%20b/c"));
  metadata_seed("put_expect_continue", 0, 0,
                req("PUT", at, "Expect: 100-continue\r\n", value) + req("GET", at));
  metadata_seed("missing_key", 0, 0,
                req("GET", "/metadata") + req("GET", "/metadata?key=")
                  + req("DELETE", "/metadata?ttl_ms=5")
                  + req("GET", "/metadata?key=a&key=b") + req("GET", "/metadata?key=%zz")
                  + req("GET", "/metadata?key=%4"));
  metadata_seed("other_path_method", 0, 0,
                req("GET", "/other?key=a") + req("POST", at) + req("HEAD", at)
                  + "GET /metadata?key=a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                  + "GET /metadata?key=a HTTP/1.0\r\n\r\n");
  metadata_seed("bad_version", 0, 0, "GET /metadata?key=a HTTP/2.0\r\n\r\n");
  // A TLS ClientHello's first bytes (a client configured with https://).
  const uint8_t hello[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03};
  metadata_seed("tls_hello", 0, 0, std::string(std::begin(hello), std::end(hello)));
  metadata_seed("oversized_value", 0, 0,
                "PUT " + at + " HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n" + value);
  metadata_seed("oversized_head", 64, 0,
                req("GET", at, "X-Pad: " + std::string(1200, 'p') + "\r\n"));
  metadata_seed("oversized_key", 0, 0, req("GET", "/metadata?key=" + std::string(300, 'k')));
  metadata_seed("small_bounds", 0, 4,
                req("PUT", "/metadata?key=a", "", "0123456789")
                  + req("PUT", "/metadata?key=b", "", "x") + req("PUT", "/metadata?key=c", "", "y")
                  + req("PUT", "/metadata?key=a", "", value)
                  + req("PUT", "/metadata?key=aaaaaaaaa", "", "z")
                  + req("PUT", "/metadata?key=b&ttl_ms=1", "", "t")
                  + req("GET", "/metadata?key=b"));
  metadata_seed("timeout_partial", 0, 1,
                "PUT " + at + " HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
  metadata_seed("timeout_idle", 0, 1, req("GET", at));
  metadata_seed("reset", 5, 8, req("PUT", at, "", value) + req("GET", at) + req("GET", at));
  metadata_seed("url_ipv4", 0, 0, "http://10.0.0.1:8080/metadata");
  metadata_seed("url_ipv6", 0, 0, "http://[fe80::1]:2379/metadata");
  metadata_seed("url_refused", 0, 0, "https://u@meta:99999/m?x#y");
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds <dir>\n");
    return 2;
  }
  out_dir = argv[1];
  zmtp_codec_seeds();
  tcp_wire_seeds();
  control_wire_seeds();
  store_wire_seeds();
  data_plane_seeds();
  http_seeds();
  rdma_handshake_seeds();
  metadata_http_seeds();
  return failures == 0 ? 0 : 1;
}
