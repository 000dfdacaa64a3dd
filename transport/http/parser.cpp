#include "transport/http/parser.hpp"

#include <algorithm>

namespace kvferry::transport::http {

namespace {

/// RFC 9110 tchar: the characters of a method or a field name.
bool is_tchar(unsigned char c) noexcept {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
    return true;
  switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+': case '-':
    case '.': case '^': case '_': case '`': case '|': case '~':
      return true;
    default:
      return false;
  }
}

/// A character of a request target: visible ASCII.
bool is_target_char(unsigned char c) noexcept {
  return c >= 0x21 && c <= 0x7e;
}

/// A character of a field value: visible ASCII, space, tab, or obs-text.
bool is_value_char(unsigned char c) noexcept {
  return c == '\t' || c == ' ' || (c >= 0x21 && c <= 0x7e) || c >= 0x80;
}

char lower(char c) noexcept {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size())
    return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower(b[i]))
      return false;
  return true;
}

bool istarts_with(std::string_view s, std::string_view prefix) noexcept {
  return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

std::string_view trim(std::string_view s) noexcept {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  return s;
}

parse_result refuse(int status, const char* reason) {
  parse_result r;
  r.status = parse_status::error;
  r.error_status = status;
  r.error_reason = reason;
  return r;
}

/// Checks a request line that is not complete yet: could it still become a valid one? Catches
/// garbage at once instead of after the head limit or the timeout.
bool plausible_prefix(std::string_view partial) noexcept {
  size_t i = 0;
  while (i < partial.size() && partial[i] != ' ') {
    if (!is_tchar(static_cast<unsigned char>(partial[i])))
      return false;
    ++i;
  }
  if (i == partial.size())
    return true;
  if (i == 0)
    return false; // empty method
  ++i;
  size_t target_start = i;
  while (i < partial.size() && partial[i] != ' ') {
    // A CR may be the end of a line whose LF has not arrived; anything else must be visible.
    if (!is_target_char(static_cast<unsigned char>(partial[i]))
        && !(partial[i] == '\r' && i + 1 == partial.size()))
      return false;
    ++i;
  }
  if (i < partial.size() && i == target_start)
    return false; // empty target
  return true;
}

/// Parses a complete request line (without its line ending) into `out`.
parse_result parse_request_line(std::string_view line, request& out) {
  auto sp1 = line.find(' ');
  if (sp1 == std::string_view::npos || sp1 == 0)
    return refuse(400, "malformed request line");
  auto method_text = line.substr(0, sp1);
  for (char c : method_text)
    if (!is_tchar(static_cast<unsigned char>(c)))
      return refuse(400, "malformed method");
  auto sp2 = line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || sp2 == sp1 + 1)
    return refuse(400, "malformed request line");
  auto target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  for (char c : target)
    if (!is_target_char(static_cast<unsigned char>(c)))
      return refuse(400, "malformed request target");
  auto version = line.substr(sp2 + 1);
  if (version == "HTTP/1.1") {
    out.http11 = true;
  } else if (version == "HTTP/1.0") {
    out.http11 = false;
  } else if (version.size() == 8 && version.substr(0, 5) == "HTTP/" && version[5] >= '0'
             && version[5] <= '9' && version[6] == '.' && version[7] >= '0' && version[7] <= '9') {
    return refuse(505, "only HTTP/1.0 and HTTP/1.1 are served");
  } else {
    return refuse(400, "malformed HTTP version");
  }
  out.verb = method_text == "GET"    ? method::get
             : method_text == "HEAD" ? method::head
                                     : method::other;
  // origin-form "/path?query", absolute-form "http://authority/path?query", asterisk-form "*".
  std::string_view path;
  if (target.front() == '/') {
    path = target;
  } else if (istarts_with(target, "http://") || istarts_with(target, "https://")) {
    auto rest = target.substr(target.find("//") + 2);
    auto slash = rest.find_first_of("/?");
    path = slash == std::string_view::npos || rest[slash] == '?' ? std::string_view("/")
                                                                 : rest.substr(slash);
  } else if (target == "*") {
    path = target;
  } else {
    return refuse(400, "malformed request target");
  }
  path = path.substr(0, path.find_first_of("?#"));
  out.path.assign(path.begin(), path.end());
  parse_result r;
  r.status = parse_status::complete;
  return r;
}

} // namespace

parse_result parse_request(std::string_view input, const request_limits& limits,
                           size_t scan_from) {
  const auto view = input.substr(0, std::min(input.size(), limits.max_head_bytes));
  const size_t n = view.size();
  // Empty lines before the request line are ignored (RFC 9112, 2.2).
  size_t start = 0;
  while (start < n && (view[start] == '\r' || view[start] == '\n')) {
    if (view[start] == '\n') {
      ++start;
    } else if (start + 1 == n) {
      break; // a CR whose LF has not arrived
    } else if (view[start + 1] == '\n') {
      start += 2;
    } else {
      return refuse(400, "bare CR");
    }
  }
  // The end of the head: a line ending followed by an empty line.
  const auto first_lf = view.find('\n', start);
  if (first_lf == std::string_view::npos) {
    if (view.substr(start) != "\r" && !plausible_prefix(view.substr(start)))
      return refuse(400, "malformed request line");
    if (input.size() >= limits.max_head_bytes)
      return refuse(431, "request head too large");
    parse_result r;
    r.scan_from = 0;
    return r;
  }
  size_t end = 0;
  size_t i = std::max(scan_from, first_lf);
  for (; i < n; ++i) {
    if (view[i] != '\n')
      continue;
    if (i + 1 < n && view[i + 1] == '\n') {
      end = i + 2;
      break;
    }
    if (i + 2 < n && view[i + 1] == '\r' && view[i + 2] == '\n') {
      end = i + 3;
      break;
    }
    if (i + 2 >= n)
      break; // this LF may still be followed by an empty line
  }
  // The request line is complete: refuse a bad one now, before the rest of the head arrives.
  auto line = view.substr(start, first_lf - start);
  if (!line.empty() && line.back() == '\r')
    line.remove_suffix(1);
  if (line.find('\r') != std::string_view::npos)
    return refuse(400, "bare CR");
  request req;
  if (auto r = parse_request_line(line, req); r.status == parse_status::error)
    return r;
  if (end == 0) {
    if (input.size() >= limits.max_head_bytes)
      return refuse(431, "request head too large");
    parse_result r;
    r.scan_from = std::min(i, n);
    return r;
  }
  // Header fields, one per line, up to the empty line.
  size_t fields = 0, hosts = 0;
  bool saw_connection_close = false, saw_keep_alive = false;
  size_t at = first_lf + 1;
  while (true) {
    auto lf = view.find('\n', at);
    auto field = view.substr(at, lf - at);
    at = lf + 1;
    if (!field.empty() && field.back() == '\r')
      field.remove_suffix(1);
    if (field.empty())
      break; // the empty line: end of the head
    if (field.find('\r') != std::string_view::npos)
      return refuse(400, "bare CR");
    if (++fields > limits.max_fields)
      return refuse(431, "too many header fields");
    if (field.front() == ' ' || field.front() == '\t')
      return refuse(400, "obsolete line folding");
    auto colon = field.find(':');
    if (colon == std::string_view::npos || colon == 0)
      return refuse(400, "malformed header field");
    auto name = field.substr(0, colon);
    for (char c : name)
      if (!is_tchar(static_cast<unsigned char>(c)))
        return refuse(400, "malformed header field name");
    auto value = trim(field.substr(colon + 1));
    for (char c : value)
      if (!is_value_char(static_cast<unsigned char>(c)))
        return refuse(400, "malformed header field value");
    if (iequals(name, "host")) {
      if (++hosts > 1)
        return refuse(400, "more than one Host");
    } else if (iequals(name, "content-length")) {
      if (value.empty() || value.find_first_not_of('0') != std::string_view::npos)
        return refuse(400, "request bodies are not accepted");
    } else if (iequals(name, "transfer-encoding")) {
      return refuse(400, "request bodies are not accepted");
    } else if (iequals(name, "connection")) {
      // A comma-separated list of options.
      while (!value.empty()) {
        auto comma = value.find(',');
        auto option = trim(value.substr(0, comma));
        if (iequals(option, "close"))
          saw_connection_close = true;
        else if (iequals(option, "keep-alive"))
          saw_keep_alive = true;
        if (comma == std::string_view::npos)
          break;
        value.remove_prefix(comma + 1);
      }
    }
  }
  if (req.http11 && hosts == 0)
    return refuse(400, "HTTP/1.1 request without Host");
  req.keep_alive = !saw_connection_close && (req.http11 || saw_keep_alive);
  parse_result r;
  r.status = parse_status::complete;
  r.consumed = end;
  r.req = std::move(req);
  return r;
}

const char* reason_phrase(int status) noexcept {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return "Error";
  }
}

std::string response_head(int status, std::string_view content_type, size_t content_length,
                          bool close) {
  std::string head;
  head.reserve(160);
  head += "HTTP/1.1 ";
  head += std::to_string(status);
  head += ' ';
  head += reason_phrase(status);
  head += "\r\nContent-Type: ";
  head += content_type;
  head += "\r\nContent-Length: ";
  head += std::to_string(content_length);
  head += "\r\n";
  if (status == 405)
    head += "Allow: GET, HEAD\r\n";
  if (close)
    head += "Connection: close\r\n";
  head += "\r\n";
  return head;
}

} // namespace kvferry::transport::http
