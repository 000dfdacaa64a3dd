#pragma once
/// HTTP/1.1 requests, as a GET-only server reads them from any peer (RFC 9112): a pure, bounded
/// parser of the request head, and the responses such a server writes. No I/O, no allocation
/// proportional to the input beyond the request target; tests/fuzz/http_fuzz.cpp drives it.
///
/// What is accepted: optional empty lines, a request line `METHOD SP target SP HTTP/1.x`, header
/// fields `name: value`, an empty line; lines end in CRLF or LF. The target is origin-form
/// (`/path?query`) or absolute-form (`http://host/path`); only the path is kept. A request with a
/// body (Content-Length other than 0, or any Transfer-Encoding) is refused, as is an HTTP/1.1
/// request without Host. Everything else is refused with the status that says why.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kvferry::transport::http {

struct request_limits {
  /// Bytes of the request head (request line, header fields, the empty line); beyond it the
  /// request is refused with 431.
  size_t max_head_bytes = 8 << 10;
  /// Header fields of one request; beyond it 431.
  size_t max_fields = 64;
};

enum class method : uint8_t {
  get,
  head,
  /// A well-formed method token other than GET and HEAD (answered 405).
  other,
};

struct request {
  method verb = method::get;
  /// The target's path (without query), e.g. "/metrics". At most max_head_bytes long.
  std::string path;
  /// HTTP/1.1 (else HTTP/1.0).
  bool http11 = true;
  /// The connection stays open after the response (HTTP/1.1 unless "Connection: close"; HTTP/1.0
  /// only with "Connection: keep-alive").
  bool keep_alive = true;
};

enum class parse_status : uint8_t {
  /// More bytes are needed (nothing wrong so far, and the head fits in the limit).
  incomplete,
  complete,
  /// Refused: answer `status` and close.
  error,
};

struct parse_result {
  parse_status status = parse_status::incomplete;
  /// complete: bytes of the head (a pipelined request may follow).
  size_t consumed = 0;
  request req;
  /// error: the HTTP status to answer (400, 431, 505) and a short reason (ASCII, no CR/LF).
  int error_status = 0;
  const char* error_reason = "";
  /// incomplete: where the next search for the end of the head may start (pass it back as
  /// `scan_from` once more bytes arrived; keeps a peer sending one byte at a time linear).
  size_t scan_from = 0;
};

/// Parses the request head at the start of `input` (at most limits.max_head_bytes are looked at).
/// `scan_from`: the value a previous incomplete result returned for a prefix of this input, or 0.
[[nodiscard]] parse_result parse_request(std::string_view input, const request_limits& limits,
                                         size_t scan_from = 0);

/// The reason phrase of a status kvferry's server sends ("OK", "Not Found", ...).
[[nodiscard]] const char* reason_phrase(int status) noexcept;

/// The head of a response: status line, Content-Type, Content-Length, Connection: close when
/// `close`, Allow for 405, the empty line.
[[nodiscard]] std::string response_head(int status, std::string_view content_type,
                                        size_t content_length, bool close);

} // namespace kvferry::transport::http
