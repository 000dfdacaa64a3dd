#pragma once
/// One HTTP connection of a GET-only server, without I/O: a bounded input buffer, the request
/// parser (parser.hpp), at most one response waiting to be written. The server (server.hpp) moves
/// bytes between its socket and a session; tests/fuzz/http_fuzz.cpp drives one directly.
///
/// What a peer can make a session hold: its input buffer (request_limits::max_head_bytes) and one
/// response. While a response is waiting, the session reads nothing more (a peer that does not
/// read its responses stalls only itself, and its bytes wait in the kernel).
///
///   fresh ──first byte──> reading ──head complete──> writing ──written──> idle (keep-alive)
///     │                      │                          │                    │
///     └──────────────────────┴── malformed: an error response, then closed ─┘
///                           timeout while reading: 408 (when a request was begun), closed

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "transport/http/parser.hpp"

namespace kvferry::transport::http {

struct response {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

/// Answers a well-formed GET or HEAD request (its path is the handler's to route). Runs on the
/// server's thread; an exception becomes a 500.
using handler = std::function<response(const request&)>;

struct session_limits {
  request_limits request;
  /// A response body larger than this is answered 500 instead (what one response can hold).
  size_t max_body_bytes = 16ULL << 20;
};

/// Responses by status, over all sessions of a server (any thread may read them).
struct response_counters {
  std::atomic<uint64_t> ok{0};                 // 200
  std::atomic<uint64_t> bad_request{0};        // 400
  std::atomic<uint64_t> not_found{0};          // 404
  std::atomic<uint64_t> method_not_allowed{0}; // 405
  std::atomic<uint64_t> timeout{0};            // 408
  std::atomic<uint64_t> head_too_large{0};     // 431
  std::atomic<uint64_t> server_error{0};       // 500
  std::atomic<uint64_t> other{0};              // anything else the handler chose
  void count(int status) noexcept;
};

class session {
public:
  enum class phase : uint8_t {
    /// Connected, nothing received yet.
    fresh,
    /// Part of a request received.
    reading,
    /// A response waiting to be written.
    writing,
    /// Between requests of a kept-alive connection.
    idle,
  };

  /// `h` and `counters` must outlive the session.
  session(const session_limits& limits, const handler& h, response_counters& counters);

  [[nodiscard]] phase current() const noexcept;
  /// True while the session takes input: no response waiting, not closing, room in the buffer.
  [[nodiscard]] bool wants_read() const noexcept;
  /// Where the next bytes go (empty when !wants_read()).
  [[nodiscard]] std::span<char> input_space() noexcept;
  /// `n` bytes were written into input_space(): parses, and queues a response when a request is
  /// complete or refused.
  void received(size_t n);
  /// The peer closed its side: a partial request is dropped; a queued response is still written.
  void peer_closed();

  [[nodiscard]] bool wants_write() const noexcept { return written_ < head_.size() + body_.size(); }
  /// The bytes still to write: the response head, then its body.
  [[nodiscard]] std::array<std::string_view, 2> output() const noexcept;
  /// `n` bytes of output() were written.
  void written(size_t n);

  /// The peer took too long: a begun request is answered 408 (then closed), a response not taken
  /// or an idle connection is closed.
  void timed_out();
  /// The connection should be closed now (nothing left to write, or nothing worth writing).
  [[nodiscard]] bool finished() const noexcept { return closing_ && !wants_write(); }
  /// Bytes this session holds (input buffer and queued response).
  [[nodiscard]] size_t held_bytes() const noexcept {
    return limits_.request.max_head_bytes + head_.capacity() + body_.capacity();
  }

private:
  void process();
  void answer(int status, std::string_view content_type, std::string body, bool head_only,
              bool close);
  void refuse(int status, const char* reason);

  session_limits limits_;
  const handler& handler_;
  response_counters& counters_;
  std::unique_ptr<char[]> input_;
  size_t input_length_ = 0;
  size_t scan_from_ = 0;
  bool any_request_ = false;
  bool peer_closed_ = false;
  bool closing_ = false;
  std::string head_;
  std::string body_;
  size_t written_ = 0;
};

} // namespace kvferry::transport::http
