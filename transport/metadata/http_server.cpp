#include "transport/metadata/http_server.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <map>
#include <optional>
#include <thread>
#include <unordered_map>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "config/error.hpp"
#include "config/log.hpp"
#include "transport/metadata/url.hpp"

namespace kvferry::transport::metadata {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using steady = std::chrono::steady_clock;
using value_ptr = std::shared_ptr<const std::string>;

/// Bytes one connection holds besides its head buffer: the socket, the parser, the response.
constexpr uint64_t connection_overhead = 8 << 10;
/// The scratch buffer lingering closes read into (shared: what is read there is dropped).
constexpr size_t scratch_bytes = 64 << 10;
constexpr auto accept_pause = std::chrono::milliseconds(100);

bool should_log(uint64_t count) noexcept {
  return count < 10 || count % 1000 == 0;
}

struct atomic_counters {
  std::atomic<uint64_t> keys{0}, expiring_keys{0}, expired{0};
  std::atomic<uint64_t> gets{0}, puts{0}, deletes{0};
  std::atomic<uint64_t> ok{0}, bad_request{0}, not_found{0}, method_not_allowed{0},
    request_timeout{0}, too_large{0}, uri_too_long{0}, head_too_large{0}, unavailable{0},
    insufficient_storage{0};
  std::atomic<uint64_t> accepted{0}, open_connections{0}, evicted{0}, timeouts{0}, malformed{0};

  void count(http::status s) noexcept {
    switch (s) {
      case http::status::ok: ++ok; break;
      case http::status::bad_request: ++bad_request; break;
      case http::status::not_found: ++not_found; break;
      case http::status::method_not_allowed: ++method_not_allowed; break;
      case http::status::request_timeout: ++request_timeout; break;
      case http::status::payload_too_large: ++too_large; break;
      case http::status::uri_too_long: ++uri_too_long; break;
      case http::status::request_header_fields_too_large: ++head_too_large; break;
      case http::status::service_unavailable: ++unavailable; break;
      case http::status::insufficient_storage: ++insufficient_storage; break;
      default: break;
    }
  }
};

/// The key-value map with TTLs, on the server's thread only. Values are shared with responses
/// being sent; a value's bytes count (value_bytes) until its last holder lets it go.
class kv_store {
public:
  enum class verdict : uint8_t { ok, too_many_keys, full };

  kv_store(const http_server_options& options, atomic_counters& counters,
           std::atomic<uint64_t>& value_bytes)
    : options_(options), counters_(counters), value_bytes_(value_bytes) {}

  /// Bytes counted against max_stored_bytes.
  [[nodiscard]] uint64_t stored_bytes() const noexcept { return value_bytes_.load() + key_bytes_; }

  /// Makes a value counted in value_bytes until its last holder drops it.
  [[nodiscard]] value_ptr make_value(std::string&& bytes) {
    auto size = bytes.size();
    value_bytes_ += size;
    return value_ptr(new std::string(std::move(bytes)),
                     [counter = &value_bytes_, size](const std::string* v) {
                       *counter -= size;
                       delete v;
                     });
  }

  /// Whether a value of `size` bytes would be taken for `key` (checked before its body is read,
  /// and again when it has arrived).
  [[nodiscard]] verdict admits(const std::string& key, uint64_t size) const {
    auto it = entries_.find(key);
    uint64_t projected = stored_bytes() + size;
    if (it == entries_.end()) {
      if (entries_.size() >= options_.max_keys)
        return verdict::too_many_keys;
      projected += key.size() + options_.max_entry_overhead;
    } else if (it->second.value.use_count() == 1) {
      // Replaced: its bytes go at once unless a response still holds them.
      projected -= std::min<uint64_t>(projected, it->second.value->size());
    }
    return projected > options_.max_stored_bytes ? verdict::full : verdict::ok;
  }

  /// The value of `key`, nullptr when absent or expired.
  [[nodiscard]] value_ptr find(const std::string& key, steady::time_point now) {
    auto it = entries_.find(key);
    if (it == entries_.end())
      return nullptr;
    if (it->second.expiry && (*it->second.expiry)->first <= now) {
      erase(it, true);
      return nullptr;
    }
    return it->second.value;
  }

  /// Stores `bytes` under `key`; with a TTL it expires at now + ttl, else it persists.
  verdict put(const std::string& key, std::string&& bytes, std::optional<steady::duration> ttl,
              steady::time_point now) {
    auto v = admits(key, bytes.size());
    if (v != verdict::ok)
      return v;
    auto value = make_value(std::move(bytes));
    auto [it, inserted] = entries_.try_emplace(key);
    if (inserted) {
      key_bytes_ += key.size() + options_.max_entry_overhead;
      counters_.keys = entries_.size();
    }
    it->second.value = std::move(value);
    if (it->second.expiry) {
      expiries_.erase(*it->second.expiry);
      it->second.expiry.reset();
    }
    if (ttl) {
      it->second.expiry = expiries_.emplace(now + *ttl, &it->first);
    }
    counters_.expiring_keys = expiries_.size();
    return verdict::ok;
  }

  /// Removes `key`; false when it was absent (or had expired).
  bool remove(const std::string& key, steady::time_point now) {
    auto it = entries_.find(key);
    if (it == entries_.end())
      return false;
    bool live = !it->second.expiry || (*it->second.expiry)->first > now;
    erase(it, !live);
    return live;
  }

  /// Removes every entry whose time has come; returns when the next one expires.
  std::optional<steady::time_point> expire(steady::time_point now) {
    while (!expiries_.empty() && expiries_.begin()->first <= now) {
      auto it = entries_.find(*expiries_.begin()->second);
      erase(it, true);
    }
    if (expiries_.empty())
      return std::nullopt;
    return expiries_.begin()->first;
  }

  void clear() {
    expiries_.clear();
    entries_.clear();
    key_bytes_ = 0;
  }

private:
  using expiry_index = std::multimap<steady::time_point, const std::string*>;
  struct entry {
    value_ptr value;
    std::optional<expiry_index::iterator> expiry;
  };

  void erase(std::unordered_map<std::string, entry>::iterator it, bool expired) {
    if (it->second.expiry)
      expiries_.erase(*it->second.expiry);
    key_bytes_ -= it->first.size() + options_.max_entry_overhead;
    entries_.erase(it);
    counters_.keys = entries_.size();
    counters_.expiring_keys = expiries_.size();
    if (expired)
      ++counters_.expired;
  }

  const http_server_options& options_;
  atomic_counters& counters_;
  std::atomic<uint64_t>& value_bytes_;
  std::unordered_map<std::string, entry> entries_;
  expiry_index expiries_;
  /// Keys and per-entry overhead (read by counters() on other threads).
  std::atomic<uint64_t> key_bytes_{0};
};

class session;

} // namespace

struct http_server::impl {
  explicit impl(http_server_options o)
    : options(std::move(o)), store(options, counters, value_bytes), acceptor(io),
      expiry_timer(io), accept_timer(io), scratch(scratch_bytes) {}

  void accept();
  void admit(tcp::socket socket);
  void arm_expiry(steady::time_point when);
  void on_expiry(const beast::error_code& ec);
  void shutdown();

  // Declared first: values (owned by the store and by sessions) count into them until freed.
  atomic_counters counters;
  std::atomic<uint64_t> value_bytes{0};
  std::atomic<uint64_t> receiving_bytes{0};
  const http_server_options options;
  kv_store store;
  asio::io_context io{1};
  tcp::acceptor acceptor;
  asio::steady_timer expiry_timer;
  std::optional<steady::time_point> expiry_armed_for;
  asio::steady_timer accept_timer;
  std::vector<char> scratch;
  /// Open connections by id (server thread only).
  std::unordered_map<uint64_t, std::weak_ptr<session>> sessions;
  uint64_t next_id = 1;
  bool stopping = false;
  uint16_t port = 0;
  std::thread thread;
};

namespace {

/// One connection: reads a request, answers it, and reads the next (kept alive) or closes.
///
///   reading head ──> routed ──PUT──> (100 Continue) ──> reading body ──┐
///        ▲              │                                           │
///        │              └──────────────> writing response <─────────┘
///        └──── kept alive ────────────────────┤
///                                  final ──> lingering (reads, drops) ──> closed
class session : public std::enable_shared_from_this<session> {
public:
  session(http_server::impl& server, tcp::socket socket, uint64_t id)
    : server_(server), stream_(std::move(socket)), request_deadline_(server.io),
      buffer_(server.options.max_head_bytes + 4096), id_(id), last_active_(steady::now()) {
    ++server_.counters.open_connections;
  }

  ~session() {
    release_receiving();
    --server_.counters.open_connections;
    server_.sessions.erase(id_);
  }

  void start() { read_head(); }

  [[nodiscard]] steady::time_point last_active() const noexcept { return last_active_; }
  [[nodiscard]] uint64_t id() const noexcept { return id_; }

  /// Closes the socket; pending operations end with operation_aborted.
  void close() {
    request_deadline_.cancel();
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.close();
  }

private:
  void read_head() {
    if (server_.stopping)
      return close();
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(server_.options.max_head_bytes));
    // The body's size is judged after routing (413 before any body byte; chunked bodies get the
    // limit set then).
    parser_->body_limit(boost::none);
    start_request_deadline();
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = shared_from_this()](beast::error_code ec, size_t) {
                              self->on_head(ec);
                            });
  }

  /// The request (head and body) must arrive within the timeout. Unlike the stream's own
  /// expiry, which closes the socket, this cancels the read, so that 408 can still be sent.
  void start_request_deadline() {
    timed_out_ = false;
    stream_.expires_never();
    request_deadline_.expires_after(server_.options.timeout);
    request_deadline_.async_wait([weak = weak_from_this()](beast::error_code ec) {
      auto self = weak.lock();
      if (ec || !self)
        return;
      self->timed_out_ = true;
      beast::error_code ignored;
      self->stream_.socket().cancel(ignored);
    });
  }

  void on_head(beast::error_code ec) {
    if (ec == asio::error::operation_aborted && timed_out_) {
      ++server_.counters.timeouts;
      // A request was begun: say why it is dropped; an idle kept-alive connection just closes.
      if (buffer_.size() > 0 || parser_->got_some())
        return respond(http::status::request_timeout, "request not received in time\n", true);
      return close();
    }
    if (ec == http::error::header_limit || ec == http::error::buffer_overflow)
      return respond(http::status::request_header_fields_too_large,
                     "request head larger than " + std::to_string(server_.options.max_head_bytes)
                       + " bytes\n",
                     true);
    if (ec.category() == http::make_error_code(http::error::bad_target).category()
        && ec != http::error::end_of_stream && ec != http::error::partial_message) {
      if (should_log(server_.counters.malformed++))
        log::debug("metadata http: malformed request from connection {}: {}", id_, ec.message());
      return respond(http::status::bad_request, "malformed HTTP request: " + ec.message() + "\n",
                     true);
    }
    if (ec)
      return close();
    last_active_ = steady::now();
    route();
  }

  /// Decides what the request asks for and answers it, or reads a PUT's body first.
  void route() {
    auto& req = parser_->get();
    if (req.version() != 10 && req.version() != 11) {
      ++server_.counters.malformed;
      return respond(http::status::bad_request, "only HTTP/1.0 and HTTP/1.1 are served\n", true);
    }
    auto t = parse_target(std::string_view(req.target().data(), req.target().size()));
    const auto& o = server_.options;
    if (t.path != o.path)
      return respond(http::status::not_found, "no such path (the metadata is at " + o.path + ")\n");
    auto verb = req.method();
    if (verb != http::verb::get && verb != http::verb::put && verb != http::verb::delete_)
      return respond(http::status::method_not_allowed, "method not allowed (GET, PUT, DELETE)\n");
    if (!t.error.empty())
      return respond(http::status::bad_request, t.error + "\n");
    if (!t.key || t.key->empty())
      return respond(http::status::bad_request, "missing key (?key=<url-encoded key>)\n");
    if (t.key->size() > o.max_key_bytes)
      return respond(http::status::uri_too_long, "key longer than "
                                                   + std::to_string(o.max_key_bytes)
                                                   + " bytes\n");
    key_ = std::move(*t.key);
    auto now = steady::now();
    if (verb == http::verb::get) {
      ++server_.counters.gets;
      auto value = server_.store.find(key_, now);
      if (!value)
        return respond(http::status::not_found, "key not found\n");
      return respond_value(std::move(value));
    }
    if (verb == http::verb::delete_) {
      ++server_.counters.deletes;
      if (!server_.store.remove(key_, now))
        return respond(http::status::not_found, "key not found\n");
      return respond(http::status::ok, "deleted\n");
    }
    ++server_.counters.puts;
    ttl_.reset();
    if (t.ttl_ms) {
      auto ttl = parse_ttl(*t.ttl_ms);
      if (!ttl)
        return respond(http::status::bad_request,
                       "ttl_ms must be a whole number of milliseconds in 1.."
                         + std::to_string(o.max_ttl.count()) + "\n");
      ttl_ = *ttl;
    }
    start_put();
  }

  [[nodiscard]] std::optional<std::chrono::milliseconds> parse_ttl(const std::string& text) const {
    uint64_t ms = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), ms);
    if (text.empty() || ec != std::errc{} || end != text.data() + text.size() || ms == 0
        || ms > static_cast<uint64_t>(server_.options.max_ttl.count()))
      return std::nullopt;
    return std::chrono::milliseconds(ms);
  }

  /// Checks a PUT's announced size against the bounds before any body byte is read.
  void start_put() {
    const auto& o = server_.options;
    auto length = parser_->content_length();
    bool chunked = !parser_->is_done() && !length;
    if (length && *length > o.max_value_bytes)
      return respond(http::status::payload_too_large,
                     "value of " + std::to_string(*length) + " bytes is larger than "
                       + std::to_string(o.max_value_bytes) + "\n",
                     true);
    if (auto refusal = storage_refusal(length.value_or(0)))
      return respond(http::status::insufficient_storage, *refusal, true);
    if (parser_->is_done())
      return finish_put();
    // A chunked body may grow to the limit: reserve the limit for it.
    uint64_t reserve = chunked ? o.max_value_bytes : *length;
    if (server_.receiving_bytes.load() + reserve > o.max_receiving_bytes) {
      if (should_log(server_.counters.unavailable.load()))
        log::debug("metadata http: {} bytes of request bodies in flight; refusing {} more",
                   server_.receiving_bytes.load(), reserve);
      return respond(http::status::service_unavailable,
                     "too many request bodies in flight; retry\n", true);
    }
    receiving_ = reserve;
    server_.receiving_bytes += reserve;
    parser_->body_limit(o.max_value_bytes);
    auto expect = parser_->get()[http::field::expect];
    if (beast::iequals(expect, "100-continue")) {
      continue_ = {};
      continue_.version(11);
      continue_.result(http::status::continue_);
      return http::async_write(stream_, continue_,
                               [self = shared_from_this()](beast::error_code ec, size_t) {
                                 if (ec)
                                   return self->close();
                                 self->read_body();
                               });
    }
    read_body();
  }

  /// Why a value of `size` bytes for key_ would be refused (507); nullopt when it would not.
  [[nodiscard]] std::optional<std::string> storage_refusal(uint64_t size) const {
    const auto& o = server_.options;
    switch (server_.store.admits(key_, size)) {
      case kv_store::verdict::ok:
        return std::nullopt;
      case kv_store::verdict::too_many_keys:
        return "the server holds " + std::to_string(o.max_keys) + " keys, its limit\n";
      case kv_store::verdict::full:
        return "the server's " + std::to_string(o.max_stored_bytes)
               + " bytes for keys and values are full\n";
    }
    return std::nullopt;
  }

  void read_body() {
    // The deadline started before the head still runs: the whole request within the timeout.
    // If it fired after the head arrived (its cancel then found no read to cancel), the body
    // would be read without one: answer 408 now instead.
    if (timed_out_) {
      ++server_.counters.timeouts;
      release_receiving();
      return respond(http::status::request_timeout, "request body not received in time\n", true);
    }
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       self->on_body(ec);
                     });
  }

  void on_body(beast::error_code ec) {
    if (ec == http::error::body_limit) {
      release_receiving();
      return respond(http::status::payload_too_large,
                     "value larger than " + std::to_string(server_.options.max_value_bytes)
                       + " bytes\n",
                     true);
    }
    if (ec == asio::error::operation_aborted && timed_out_) {
      ++server_.counters.timeouts;
      release_receiving();
      return respond(http::status::request_timeout, "request body not received in time\n", true);
    }
    if (ec) {
      release_receiving();
      return close();
    }
    finish_put();
  }

  void finish_put() {
    auto body = std::move(parser_->get().body());
    release_receiving();
    auto size = body.size();
    auto verdict = server_.store.put(key_, std::move(body), ttl_, steady::now());
    if (verdict != kv_store::verdict::ok)
      return respond(http::status::insufficient_storage,
                     storage_refusal(size).value_or("no room for the value\n"));
    if (ttl_)
      server_.arm_expiry(steady::now() + *ttl_);
    respond(http::status::ok, "stored\n");
  }

  void release_receiving() {
    server_.receiving_bytes -= receiving_;
    receiving_ = 0;
  }

  void respond_value(value_ptr value) {
    prepare(http::status::ok, false);
    response_.set(http::field::content_type, "application/octet-stream");
    response_owner_ = std::move(value);
    response_.body() = {response_owner_->data(), response_owner_->size()};
    send();
  }

  /// A text response; `final` closes the connection after it.
  void respond(http::status status, std::string text, bool final = false) {
    prepare(status, final);
    response_.set(http::field::content_type, "text/plain; charset=utf-8");
    if (status == http::status::method_not_allowed)
      response_.set(http::field::allow, "GET, PUT, DELETE");
    if (status == http::status::service_unavailable)
      response_.set(http::field::retry_after, "1");
    auto owned = std::make_shared<const std::string>(std::move(text));
    response_.body() = {owned->data(), owned->size()};
    response_owner_ = std::move(owned);
    send();
  }

  void prepare(http::status status, bool final) {
    server_.counters.count(status);
    response_ = {};
    response_.result(status);
    response_.version(11);
    response_.set(http::field::server, "kvferry");
    // A body left unread (a refused request) ends the connection: its bytes are not a request.
    bool keep = !final && parser_ && parser_->is_done() && parser_->get().keep_alive();
    response_.keep_alive(keep);
  }

  void send() {
    request_deadline_.cancel();
    response_.prepare_payload();
    stream_.expires_after(server_.options.timeout);
    http::async_write(stream_, response_,
                      [self = shared_from_this()](beast::error_code ec, size_t) {
                        self->on_written(ec);
                      });
  }

  void on_written(beast::error_code ec) {
    // The value a reader took is no longer held (its bytes leave the count if it was replaced).
    response_.body() = {};
    response_owner_.reset();
    if (ec) {
      if (ec == beast::error::timeout)
        ++server_.counters.timeouts;
      return close();
    }
    last_active_ = steady::now();
    if (!response_.keep_alive())
      return linger();
    read_head();
  }

  /// After a final response: shut the write side, then read and drop what the peer still sends
  /// until it closes or the timeout passes, so that the response is not destroyed by a reset.
  void linger() {
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    buffer_.consume(buffer_.size());
    parser_.reset();
    stream_.expires_after(server_.options.timeout);
    drain();
  }

  void drain() {
    if (server_.stopping)
      return close();
    stream_.async_read_some(asio::buffer(server_.scratch),
                            [self = shared_from_this()](beast::error_code ec, size_t) {
                              if (ec)
                                return self->close();
                              self->drain();
                            });
  }

  http_server::impl& server_;
  beast::tcp_stream stream_;
  asio::steady_timer request_deadline_;
  /// request_deadline_ fired: the read it cancelled ran out of time.
  bool timed_out_ = false;
  /// Holds a request head (max_head_bytes) and what arrives with it; bodies go to the parser.
  beast::flat_buffer buffer_;
  uint64_t id_;
  steady::time_point last_active_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::response<http::empty_body> continue_;
  http::response<http::span_body<const char>> response_;
  /// What response_'s body points into: a stored value, or a short text.
  value_ptr response_owner_;
  std::string key_;
  std::optional<std::chrono::milliseconds> ttl_;
  /// Bytes of server_.receiving_bytes this connection's body reserved.
  uint64_t receiving_ = 0;
};

} // namespace

void http_server::impl::accept() {
  acceptor.async_accept([this](beast::error_code ec, tcp::socket socket) {
    if (stopping || ec == asio::error::operation_aborted)
      return;
    if (ec) {
      // Out of descriptors (or another transient failure): pause instead of spinning.
      log::warn("metadata http: accept failed: {}; pausing {} ms", ec.message(),
                accept_pause.count());
      accept_timer.expires_after(accept_pause);
      accept_timer.async_wait([this](beast::error_code e) {
        if (!e && !stopping)
          accept();
      });
      return;
    }
    admit(std::move(socket));
    accept();
  });
}

void http_server::impl::admit(tcp::socket socket) {
  ++counters.accepted;
  if (sessions.size() >= options.max_connections) {
    // Close the connection quiet the longest: a peer that holds connections open without
    // using them loses them first; one just admitted has a request on its way.
    std::shared_ptr<session> victim;
    for (auto& [id, weak] : sessions) {
      auto s = weak.lock();
      if (s && (!victim || s->last_active() < victim->last_active()))
        victim = std::move(s);
    }
    if (victim) {
      if (should_log(counters.evicted++))
        log::debug("metadata http: {} connections open; closing the one quiet the longest",
                   sessions.size());
      sessions.erase(victim->id());
      victim->close();
    }
  }
  beast::error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);
  auto id = next_id++;
  auto s = std::make_shared<session>(*this, std::move(socket), id);
  sessions.emplace(id, s);
  s->start();
}

void http_server::impl::arm_expiry(steady::time_point when) {
  if (expiry_armed_for && *expiry_armed_for <= when)
    return;
  expiry_armed_for = when;
  expiry_timer.expires_at(when);
  expiry_timer.async_wait([this](beast::error_code ec) { on_expiry(ec); });
}

void http_server::impl::on_expiry(const beast::error_code& ec) {
  // Aborted: re-armed for an earlier time (that wait owns expiry_armed_for now) or stopping.
  if (ec == asio::error::operation_aborted || stopping)
    return;
  expiry_armed_for.reset();
  if (auto next = store.expire(steady::now()))
    arm_expiry(*next);
}

void http_server::impl::shutdown() {
  stopping = true;
  beast::error_code ignored;
  acceptor.close(ignored);
  expiry_timer.cancel();
  accept_timer.cancel();
  std::vector<std::shared_ptr<session>> open;
  for (auto& [id, weak] : sessions)
    if (auto s = weak.lock())
      open.push_back(std::move(s));
  for (auto& s : open)
    s->close();
}

http_server::http_server(std::unique_ptr<impl> i) : impl_(std::move(i)) {
}

http_server::~http_server() {
  stop();
}

caf::expected<std::unique_ptr<http_server>> http_server::start(http_server_options options) {
  auto refuse = [&](const std::string& why) {
    return make_error(errc::invalid_argument, "metadata server: " + why);
  };
  if (options.path.empty() || options.path.front() != '/')
    return refuse("the path '" + options.path + "' does not start with '/'");
  if (options.max_connections == 0 || options.max_keys == 0 || options.max_key_bytes == 0
      || options.max_head_bytes < 256 || options.timeout.count() <= 0)
    return refuse("max_connections, max_keys, max_key_bytes and timeout must be positive, "
                  "max_head_bytes at least 256");
  if (options.max_value_bytes > options.max_receiving_bytes)
    return refuse("max_value_bytes (" + std::to_string(options.max_value_bytes)
                  + ") is above max_receiving_bytes ("
                  + std::to_string(options.max_receiving_bytes)
                  + "): no value that large could be received");
  auto i = std::make_unique<impl>(std::move(options));
  const auto& o = i->options;
  beast::error_code ec;
  auto address = asio::ip::make_address(o.bind_host, ec);
  if (ec)
    return make_error(errc::invalid_argument,
                      "metadata server: bind address '" + o.bind_host
                        + "' is not an IP address: " + ec.message());
  tcp::endpoint endpoint(address, o.port);
  auto where = o.bind_host + ":" + std::to_string(o.port);
  i->acceptor.open(endpoint.protocol(), ec);
  if (!ec)
    i->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec)
    i->acceptor.bind(endpoint, ec);
  if (!ec)
    i->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    return make_error(errc::invalid_argument,
                      "metadata server: cannot listen on " + where + ": " + ec.message());
  i->port = i->acceptor.local_endpoint().port();
  i->accept();
  auto* raw = i.get();
  i->thread = std::thread([raw] { raw->io.run(); });
  return std::unique_ptr<http_server>(new http_server(std::move(i)));
}

uint16_t http_server::port() const noexcept {
  return impl_->port;
}

const http_server_options& http_server::options() const noexcept {
  return impl_->options;
}

uint64_t http_server::memory_bound() const noexcept {
  const auto& o = impl_->options;
  return o.max_stored_bytes + o.max_receiving_bytes
         + o.max_connections * (o.max_head_bytes + 4096 + connection_overhead) + scratch_bytes;
}

http_server_counters http_server::counters() const noexcept {
  const auto& c = impl_->counters;
  http_server_counters out;
  out.keys = c.keys;
  out.expiring_keys = c.expiring_keys;
  out.stored_bytes = impl_->store.stored_bytes();
  out.expired = c.expired;
  out.gets = c.gets;
  out.puts = c.puts;
  out.deletes = c.deletes;
  out.ok = c.ok;
  out.bad_request = c.bad_request;
  out.not_found = c.not_found;
  out.method_not_allowed = c.method_not_allowed;
  out.request_timeout = c.request_timeout;
  out.too_large = c.too_large;
  out.uri_too_long = c.uri_too_long;
  out.head_too_large = c.head_too_large;
  out.unavailable = c.unavailable;
  out.insufficient_storage = c.insufficient_storage;
  out.accepted = c.accepted;
  out.open_connections = c.open_connections;
  out.evicted = c.evicted;
  out.timeouts = c.timeouts;
  out.malformed = c.malformed;
  return out;
}

void http_server::stop() {
  if (!impl_ || !impl_->thread.joinable())
    return;
  auto* i = impl_.get();
  asio::post(i->io, [i] { i->shutdown(); });
  // run() returns once every connection's last handler has run.
  i->thread.join();
  i->store.clear();
}

} // namespace kvferry::transport::metadata
