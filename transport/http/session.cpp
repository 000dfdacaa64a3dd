#include "transport/http/session.hpp"

#include <cstring>
#include <exception>

namespace kvferry::transport::http {

void response_counters::count(int status) noexcept {
  switch (status) {
    case 200: ok.fetch_add(1, std::memory_order_relaxed); break;
    case 400: bad_request.fetch_add(1, std::memory_order_relaxed); break;
    case 404: not_found.fetch_add(1, std::memory_order_relaxed); break;
    case 405: method_not_allowed.fetch_add(1, std::memory_order_relaxed); break;
    case 408: timeout.fetch_add(1, std::memory_order_relaxed); break;
    case 431: head_too_large.fetch_add(1, std::memory_order_relaxed); break;
    case 500: server_error.fetch_add(1, std::memory_order_relaxed); break;
    default: other.fetch_add(1, std::memory_order_relaxed); break;
  }
}

session::session(const session_limits& limits, const handler& h, response_counters& counters)
  : limits_(limits), handler_(h), counters_(counters),
    input_(new char[limits.request.max_head_bytes]) {
}

session::phase session::current() const noexcept {
  if (wants_write())
    return phase::writing;
  if (input_length_ > 0)
    return phase::reading;
  return any_request_ ? phase::idle : phase::fresh;
}

bool session::wants_read() const noexcept {
  return !closing_ && !wants_write() && input_length_ < limits_.request.max_head_bytes;
}

std::span<char> session::input_space() noexcept {
  if (!wants_read())
    return {};
  return {input_.get() + input_length_, limits_.request.max_head_bytes - input_length_};
}

void session::received(size_t n) {
  input_length_ += std::min(n, limits_.request.max_head_bytes - input_length_);
  process();
}

void session::peer_closed() {
  peer_closed_ = true;
  closing_ = true;
  input_length_ = 0; // a request cut short is not answered
}

std::array<std::string_view, 2> session::output() const noexcept {
  std::string_view head = head_, body = body_;
  if (written_ < head.size())
    return {head.substr(written_), body};
  return {body.substr(written_ - head.size()), {}};
}

void session::written(size_t n) {
  written_ += n;
  if (wants_write())
    return;
  // The response is out: free its memory, then serve a pipelined request if one is waiting.
  head_ = std::string();
  body_ = std::string();
  written_ = 0;
  if (!closing_)
    process();
}

void session::timed_out() {
  if (!wants_write() && input_length_ > 0 && !closing_) {
    input_length_ = 0;
    refuse(408, "the request did not arrive in time");
    return;
  }
  closing_ = true;
  head_ = std::string();
  body_ = std::string();
  written_ = 0;
}

void session::answer(int status, std::string_view content_type, std::string body, bool head_only,
                     bool close) {
  counters_.count(status);
  head_ = response_head(status, content_type, body.size(), close);
  body_ = head_only ? std::string() : std::move(body);
  written_ = 0;
  if (close)
    closing_ = true;
}

void session::refuse(int status, const char* reason) {
  std::string body = std::to_string(status) + " " + reason_phrase(status) + ": " + reason + "\n";
  answer(status, "text/plain; charset=utf-8", std::move(body), false, true);
}

void session::process() {
  if (closing_ || wants_write() || input_length_ == 0)
    return;
  std::string_view input(input_.get(), input_length_);
  auto r = parse_request(input, limits_.request, scan_from_);
  if (r.status == parse_status::incomplete) {
    scan_from_ = r.scan_from;
    return;
  }
  scan_from_ = 0;
  if (r.status == parse_status::error) {
    input_length_ = 0;
    refuse(r.error_status, r.error_reason);
    return;
  }
  any_request_ = true;
  // Keep what follows the head (a pipelined request) for after this response.
  std::memmove(input_.get(), input_.get() + r.consumed, input_length_ - r.consumed);
  input_length_ -= r.consumed;
  const bool close = !r.req.keep_alive || peer_closed_;
  if (r.req.verb == method::other) {
    answer(405, "text/plain; charset=utf-8",
           "405 Method Not Allowed: only GET and HEAD are served\n", false, close);
    return;
  }
  response out;
  try {
    out = handler_(r.req);
  } catch (const std::exception& e) {
    out = response{500, "text/plain; charset=utf-8",
                   std::string("500 Internal Server Error: ") + e.what() + "\n"};
  }
  if (out.body.size() > limits_.max_body_bytes)
    out = response{500, "text/plain; charset=utf-8",
                   "500 Internal Server Error: the response exceeds the server's limit\n"};
  answer(out.status, out.content_type, std::move(out.body), r.req.verb == method::head, close);
}

} // namespace kvferry::transport::http
