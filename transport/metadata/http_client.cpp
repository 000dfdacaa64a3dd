#include "transport/metadata/http_client.hpp"

#include <mutex>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "config/error.hpp"

namespace kvferry::transport::metadata {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using steady = std::chrono::steady_clock;

/// A key as error messages quote it (long keys shortened).
std::string quoted(std::string_view key) {
  constexpr size_t shown = 200;
  if (key.size() <= shown)
    return "'" + std::string(key) + "'";
  return "'" + std::string(key.substr(0, shown)) + "...' (" + std::to_string(key.size())
         + " bytes)";
}

/// The first line of a response body, for error messages.
std::string first_line(const std::string& body) {
  auto line = body.substr(0, std::min(body.find('\n'), size_t{200}));
  return line.empty() ? std::string() : ": " + line;
}

} // namespace

struct http_client::impl {
  impl(http_url u, http_client_options o) : url(std::move(u)), options(o) {}

  struct reply {
    unsigned status = 0;
    std::string body;
  };

  /// One request and its response, on the kept-alive connection (opened when there is none;
  /// once more on a fresh one when a reused connection turns out closed).
  caf::expected<reply> exchange(http::verb verb, std::string_view key, std::string_view body,
                                std::optional<std::chrono::milliseconds> ttl);

  /// "GET http://h:p/metadata key 'K'": the start of every error of a call.
  [[nodiscard]] std::string what(http::verb verb, std::string_view key) const {
    return std::string(http::to_string(verb)) + " " + url.text + " key " + quoted(key);
  }

  const http_url url;
  const http_client_options options;
  std::mutex mutex;
  asio::io_context io{1};
  tcp::resolver resolver{io};
  std::optional<beast::tcp_stream> stream;
  beast::flat_buffer buffer;

private:
  /// Runs the pending operations until they finish or `deadline` passes; on the deadline cancels
  /// them (closing the connection) and returns false.
  bool run_until(steady::time_point deadline);
  caf::error open(const std::string& context, steady::time_point deadline);
  void drop_connection();
};

bool http_client::impl::run_until(steady::time_point deadline) {
  io.restart();
  io.run_until(deadline);
  if (io.stopped())
    return true;
  resolver.cancel();
  if (stream) {
    beast::error_code ignored;
    stream->socket().close(ignored);
  }
  io.restart();
  io.run();
  drop_connection();
  return false;
}

void http_client::impl::drop_connection() {
  if (stream) {
    beast::error_code ignored;
    stream->socket().close(ignored);
  }
  stream.reset();
  buffer.consume(buffer.size());
}

caf::error http_client::impl::open(const std::string& context, steady::time_point deadline) {
  beast::error_code ec;
  tcp::resolver::results_type endpoints;
  resolver.async_resolve(url.host, std::to_string(url.port),
                         [&](beast::error_code e, tcp::resolver::results_type r) {
                           ec = e;
                           endpoints = std::move(r);
                         });
  if (!run_until(deadline))
    return make_error(errc::timeout, context + ": resolving " + url.host + " took longer than "
                                       + std::to_string(options.timeout.count()) + " ms");
  if (ec)
    return make_error(errc::peer_unreachable,
                      context + ": cannot resolve " + url.host + ": " + ec.message());
  stream.emplace(io);
  stream->expires_at(deadline);
  stream->async_connect(endpoints, [&](beast::error_code e, const tcp::endpoint&) { ec = e; });
  bool in_time = run_until(deadline);
  if (!in_time || ec == beast::error::timeout) {
    drop_connection();
    return make_error(errc::timeout, context + ": connecting took longer than "
                                       + std::to_string(options.timeout.count()) + " ms");
  }
  if (ec) {
    drop_connection();
    return make_error(errc::peer_unreachable, context + ": cannot connect: " + ec.message());
  }
  stream->socket().set_option(tcp::no_delay(true), ec);
  return {};
}

caf::expected<http_client::impl::reply>
http_client::impl::exchange(http::verb verb, std::string_view key, std::string_view body,
                            std::optional<std::chrono::milliseconds> ttl) {
  auto context = what(verb, key);
  if (key.empty())
    return make_error(errc::invalid_argument, context + ": the key is empty");
  std::lock_guard guard(mutex);
  auto deadline = steady::now() + options.timeout;
  auto target = url.path + "?key=" + percent_encode(key);
  if (ttl)
    target += "&ttl_ms=" + std::to_string(ttl->count());
  http::request<http::span_body<const char>> request{verb, target, 11};
  request.set(http::field::host, url.host + ":" + std::to_string(url.port));
  request.set(http::field::user_agent, "kvferry");
  request.keep_alive(true);
  if (verb == http::verb::put) {
    request.set(http::field::content_type, "application/octet-stream");
    request.body() = {body.data(), body.size()};
  }
  request.prepare_payload();
  auto timed_out = [&] {
    return make_error(errc::timeout, context + ": no response within "
                                       + std::to_string(options.timeout.count()) + " ms");
  };
  for (int attempt = 0;; ++attempt) {
    bool reused = stream.has_value();
    if (!reused)
      if (auto err = open(context, deadline))
        return err;
    beast::error_code ec;
    stream->expires_at(deadline);
    http::async_write(*stream, request, [&](beast::error_code e, size_t) { ec = e; });
    if (!run_until(deadline) || ec == beast::error::timeout) {
      drop_connection();
      return timed_out();
    }
    if (!ec) {
      http::response_parser<http::string_body> parser;
      parser.header_limit(64 << 10);
      parser.body_limit(options.max_response_bytes);
      http::async_read(*stream, buffer, parser, [&](beast::error_code e, size_t) { ec = e; });
      if (!run_until(deadline) || ec == beast::error::timeout) {
        drop_connection();
        return timed_out();
      }
      if (ec == http::error::body_limit) {
        drop_connection();
        return make_error(errc::transport_failure,
                          context + ": the response is larger than "
                            + std::to_string(options.max_response_bytes) + " bytes");
      }
      if (!ec) {
        auto& response = parser.get();
        if (!response.keep_alive())
          drop_connection();
        return reply{response.result_int(), std::move(response.body())};
      }
      // A server that closed a kept-alive connection: nothing came back.
      bool nothing_back = !parser.got_some();
      drop_connection();
      if (reused && attempt == 0 && nothing_back)
        continue;
      return make_error(errc::transport_failure,
                        context + ": reading the response failed: " + ec.message());
    }
    drop_connection();
    if (reused && attempt == 0)
      continue;
    return make_error(errc::transport_failure,
                      context + ": sending the request failed: " + ec.message());
  }
}

http_client::http_client(std::unique_ptr<impl> i) : impl_(std::move(i)) {
}

http_client::~http_client() = default;

caf::expected<std::unique_ptr<http_client>> http_client::create(std::string_view url,
                                                                http_client_options options) {
  auto parsed = parse_http_url(url);
  if (!parsed)
    return parsed.error();
  if (options.timeout.count() <= 0)
    return make_error(errc::invalid_argument,
                      "metadata client for " + std::string(url) + ": the timeout must be positive");
  return std::unique_ptr<http_client>(
    new http_client(std::make_unique<impl>(std::move(*parsed), options)));
}

const http_url& http_client::url() const noexcept {
  return impl_->url;
}

caf::expected<std::optional<std::string>> http_client::get(std::string_view key) {
  auto r = impl_->exchange(http::verb::get, key, {}, std::nullopt);
  if (!r)
    return r.error();
  if (r->status == 200)
    return std::optional<std::string>(std::move(r->body));
  if (r->status == 404)
    return std::optional<std::string>();
  return make_error(errc::transport_failure, impl_->what(http::verb::get, key) + ": answered "
                                               + std::to_string(r->status)
                                               + first_line(r->body));
}

caf::error http_client::put(std::string_view key, std::string_view value,
                            std::optional<std::chrono::milliseconds> ttl) {
  if (ttl && ttl->count() <= 0)
    return make_error(errc::invalid_argument,
                      impl_->what(http::verb::put, key) + ": the TTL must be positive");
  auto r = impl_->exchange(http::verb::put, key, value, ttl);
  if (!r)
    return r.error();
  if (r->status == 200 || r->status == 201 || r->status == 204)
    return {};
  auto text = impl_->what(http::verb::put, key) + " (a value of " + std::to_string(value.size())
              + " bytes): answered " + std::to_string(r->status) + first_line(r->body);
  return make_error(r->status == 503 ? errc::busy : errc::transport_failure, std::move(text));
}

caf::expected<bool> http_client::remove(std::string_view key) {
  auto r = impl_->exchange(http::verb::delete_, key, {}, std::nullopt);
  if (!r)
    return r.error();
  if (r->status == 200 || r->status == 204)
    return true;
  if (r->status == 404)
    return false;
  return make_error(errc::transport_failure, impl_->what(http::verb::delete_, key)
                                               + ": answered " + std::to_string(r->status)
                                               + first_line(r->body));
}

} // namespace kvferry::transport::metadata
