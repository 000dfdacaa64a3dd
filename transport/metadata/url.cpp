#include "transport/metadata/url.hpp"

#include <charconv>

#include "config/error.hpp"

namespace kvferry::transport::metadata {

namespace {

bool unreserved(unsigned char c) noexcept {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'
         || c == '.' || c == '_' || c == '~';
}

int hex_value(char c) noexcept {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

} // namespace

std::string percent_encode(std::string_view text) {
  static constexpr char digits[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size());
  for (unsigned char c : text) {
    if (unreserved(c)) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += digits[c >> 4];
      out += digits[c & 15];
    }
  }
  return out;
}

std::optional<std::string> percent_decode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '+') {
      out += ' ';
    } else if (c == '%') {
      if (i + 2 >= text.size())
        return std::nullopt;
      int high = hex_value(text[i + 1]);
      int low = hex_value(text[i + 2]);
      if (high < 0 || low < 0)
        return std::nullopt;
      out += static_cast<char>(high * 16 + low);
      i += 2;
    } else {
      out += c;
    }
  }
  return out;
}

target parse_target(std::string_view request_target) {
  target t;
  auto question = request_target.find('?');
  t.path = std::string(request_target.substr(0, question));
  if (question == std::string_view::npos)
    return t;
  auto query = request_target.substr(question + 1);
  // A fragment never reaches a server, but a hand-written request may carry one: ignore it.
  query = query.substr(0, query.find('#'));
  while (!query.empty()) {
    auto amp = query.find('&');
    auto pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    auto eq = pair.find('=');
    auto name = pair.substr(0, eq);
    auto value = eq == std::string_view::npos ? std::string_view{} : pair.substr(eq + 1);
    if (name == "key") {
      if (t.key) {
        t.error = "the key parameter is given twice";
        return t;
      }
      auto decoded = percent_decode(value);
      if (!decoded) {
        t.error = "the key parameter has a malformed %-escape";
        return t;
      }
      t.key = std::move(*decoded);
    } else if (name == "ttl_ms") {
      if (t.ttl_ms) {
        t.error = "the ttl_ms parameter is given twice";
        return t;
      }
      t.ttl_ms = std::string(value);
    }
  }
  return t;
}

caf::expected<http_url> parse_http_url(std::string_view url) {
  auto refuse = [&](const std::string& why) {
    return make_error(errc::invalid_argument,
                      "metadata server URL '" + std::string(url) + "': " + why
                        + " (expected http://host:port/path)");
  };
  constexpr std::string_view scheme = "http://";
  if (url.size() < scheme.size() || url.substr(0, scheme.size()) != scheme) {
    if (url.substr(0, 8) == "https://")
      return refuse("https is not supported");
    return refuse("the scheme is not http://");
  }
  http_url out;
  out.text = std::string(url);
  auto rest = url.substr(scheme.size());
  if (rest.find_first_of("?#") != std::string_view::npos)
    return refuse("a query or fragment is not allowed (the client adds ?key=)");
  auto slash = rest.find('/');
  auto authority = rest.substr(0, slash);
  if (slash != std::string_view::npos)
    out.path = std::string(rest.substr(slash));
  if (authority.find('@') != std::string_view::npos)
    return refuse("user info is not supported");
  std::string_view port_text;
  if (!authority.empty() && authority.front() == '[') {
    auto close = authority.find(']');
    if (close == std::string_view::npos)
      return refuse("an IPv6 host without its closing ']'");
    out.host = std::string(authority.substr(1, close - 1));
    auto after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':')
        return refuse("unexpected text after the IPv6 host");
      port_text = after.substr(1);
      if (port_text.empty())
        return refuse("an empty port");
    }
  } else {
    auto colon = authority.rfind(':');
    out.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) {
      port_text = authority.substr(colon + 1);
      if (port_text.empty())
        return refuse("an empty port");
    }
    if (out.host.find(':') != std::string::npos)
      return refuse("an IPv6 host must be written in brackets");
  }
  if (out.host.empty())
    return refuse("no host");
  if (!port_text.empty()) {
    unsigned port = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc{} || end != port_text.data() + port_text.size() || port == 0
        || port > 65535)
      return refuse("the port '" + std::string(port_text) + "' is not a number in 1..65535");
    out.port = static_cast<uint16_t>(port);
  }
  return out;
}

} // namespace kvferry::transport::metadata
