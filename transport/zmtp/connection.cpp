#include "transport/zmtp/connection.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "memory/device.hpp"

namespace kvferry::transport::zmtp {

namespace {

constexpr int max_iov = 64;

std::string errno_text(const char* what) {
  return std::string(what) + ": " + std::strerror(errno);
}

} // namespace

void outbound::append_owned(std::span<const uint8_t> bytes) {
  auto at = owned.size();
  owned.insert(owned.end(), bytes.begin(), bytes.end());
  if (!ranges.empty() && ranges.back().external == nullptr
      && ranges.back().offset + ranges.back().length == at)
    ranges.back().length += bytes.size();
  else
    ranges.push_back(range{nullptr, at, bytes.size()});
}

void outbound::append_frame_header(uint64_t size, bool more) {
  uint8_t header[9];
  auto n = encode_frame_header(header, size, more);
  append_owned({header, n});
}

void outbound::append_external(const uint8_t* data, size_t length) {
  if (length > 0)
    ranges.push_back(range{data, 0, length});
}

size_t outbound::footprint() const noexcept {
  return sizeof(outbound) + owned.capacity() + ranges.capacity() * sizeof(range)
         + leases.capacity() * sizeof(memory::region_lease);
}

size_t outbound::size() const noexcept {
  size_t n = 0;
  for (const auto& r : ranges)
    n += r.length;
  return n;
}

connection::connection(unique_fd fd, uint64_t id, std::string_view socket_type,
                       std::unique_ptr<protocol> proto, connection_limits limits)
  : fd_(std::move(fd)),
    id_(id),
    socket_type_(socket_type),
    proto_(std::move(proto)),
    limits_(limits),
    in_(new uint8_t[limits.input_buffer]),
    created_(std::chrono::steady_clock::now()),
    last_activity_(created_) {
  // Both sides send their whole greeting and READY at once (ZMTP allows it; libzmq peers send
  // theirs in steps and proceed as ours arrives).
  auto hello = std::make_unique<outbound>();
  uint8_t greeting[greeting_size];
  encode_greeting(greeting);
  hello->append_owned(greeting);
  hello->append_owned(encode_ready(socket_type_));
  send(std::move(hello));
}

connection::~connection() = default;

void connection::fail(std::string reason, bool violation) {
  if (stage_ == stage::failed)
    return;
  stage_ = stage::failed;
  close_reason_ = std::move(reason);
  violated_ = violation;
}

void connection::send(std::unique_ptr<outbound> message) {
  queued_bytes_ += message->size();
  out_.push_back(std::move(message));
}

void connection::send_command(std::vector<uint8_t> frame) {
  auto message = std::make_unique<outbound>();
  message->append_owned(frame);
  send(std::move(message));
}

size_t connection::take_released_charge() noexcept {
  auto n = released_charge_;
  released_charge_ = 0;
  return n;
}

size_t connection::queued_charge() const noexcept {
  size_t n = 0;
  for (const auto& m : out_)
    n += m->charged;
  return n;
}

bool connection::holds_lease_on(const memory::region_state* state) const noexcept {
  for (const auto& m : out_)
    for (const auto& lease : m->leases)
      if (lease.state() == state)
        return true;
  return false;
}

bool connection::holds_range(uint64_t addr, uint64_t len) const noexcept {
  for (size_t m = 0; m < out_.size(); ++m) {
    const auto& ranges = out_[m]->ranges;
    // Of the message being written, only what is not written yet.
    for (size_t r = (m == 0 ? out_range_ : 0); r < ranges.size(); ++r) {
      const auto& range = ranges[r];
      if (range.external == nullptr)
        continue;
      const size_t skip = (m == 0 && r == out_range_) ? out_offset_ : 0;
      const auto start = reinterpret_cast<uint64_t>(range.external) + skip;
      const auto length = static_cast<uint64_t>(range.length - skip);
      if (length > 0 && start < addr + len && addr < start + length)
        return true;
    }
  }
  return false;
}

io_result connection::on_writable() {
  while (!out_.empty() && stage_ != stage::failed) {
    iovec iov[max_iov];
    int count = 0;
    size_t range = out_range_, offset = out_offset_;
    for (size_t m = 0; m < out_.size() && count < max_iov; ++m) {
      const auto& msg = *out_[m];
      for (size_t r = (m == 0 ? range : 0); r < msg.ranges.size() && count < max_iov; ++r) {
        const auto& rg = msg.ranges[r];
        const uint8_t* base = rg.external ? rg.external : msg.owned.data() + rg.offset;
        size_t skip = (m == 0 && r == range) ? offset : 0;
        if (rg.length > skip) {
          iov[count].iov_base = const_cast<uint8_t*>(base + skip);
          iov[count].iov_len = rg.length - skip;
          ++count;
        }
      }
    }
    msghdr hdr{};
    hdr.msg_iov = iov;
    hdr.msg_iovlen = static_cast<size_t>(count);
    ssize_t n = ::sendmsg(fd_.get(), &hdr, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return io_result::open;
      if (errno == EINTR)
        continue;
      fail(errno_text("send"), false);
      return io_result::closed;
    }
    auto left = static_cast<size_t>(n);
    queued_bytes_ -= left;
    while (!out_.empty()) {
      auto& msg = *out_.front();
      while (out_range_ < msg.ranges.size()) {
        size_t remaining = msg.ranges[out_range_].length - out_offset_;
        if (left < remaining) {
          out_offset_ += left;
          left = 0;
          break;
        }
        left -= remaining;
        ++out_range_;
        out_offset_ = 0;
      }
      if (out_range_ < msg.ranges.size())
        break;
      released_charge_ += msg.charged;
      out_.pop_front();
      out_range_ = 0;
      out_offset_ = 0;
    }
  }
  return stage_ == stage::failed ? io_result::closed : io_result::open;
}

io_result connection::on_readable() {
  held_ = false;
  size_t budget = limits_.read_quantum;
  for (;;) {
    while (step()) {
    }
    if (stage_ == stage::failed)
      return io_result::closed;
    if (held_ || budget == 0)
      return io_result::open;
    ssize_t n;
    const bool direct = part_ == part::body && plan_.how == body_plan::mode::scatter
                        && in_begin_ == in_end_ && piece_ < plan_.pieces.size()
                        && plan_.pieces[piece_].what == sink::kind::host;
    if (direct) {
      n = read_direct();
    } else {
      if (in_begin_ == in_end_) {
        in_begin_ = in_end_ = 0;
      } else if (in_begin_ > 0) {
        std::memmove(in_.get(), in_.get() + in_begin_, in_end_ - in_begin_);
        in_end_ -= in_begin_;
        in_begin_ = 0;
      }
      n = ::recv(fd_.get(), in_.get() + in_end_, limits_.input_buffer - in_end_, MSG_DONTWAIT);
      if (n > 0)
        in_end_ += static_cast<size_t>(n);
    }
    if (n == 0) {
      fail("peer closed the connection", false);
      return io_result::closed;
    }
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return io_result::open;
      if (errno == EINTR)
        continue;
      fail(errno_text("recv"), false);
      return io_result::closed;
    }
    budget -= std::min(budget, static_cast<size_t>(n));
  }
}

ssize_t connection::read_direct() {
  iovec iov[max_iov];
  int count = 0;
  uint64_t planned = 0;
  uint64_t skip = piece_done_;
  for (size_t p = piece_; p < plan_.pieces.size() && count < max_iov - 1 && planned < body_left_;
       ++p) {
    const auto& s = plan_.pieces[p];
    if (s.what != sink::kind::host)
      break;
    uint64_t len = std::min<uint64_t>(s.length - skip, body_left_ - planned);
    if (len > 0) {
      iov[count].iov_base = s.data + skip;
      iov[count].iov_len = len;
      ++count;
      planned += len;
    }
    skip = 0;
  }
  // Whatever follows the body lands in the input buffer.
  in_begin_ = in_end_ = 0;
  iov[count].iov_base = in_.get();
  iov[count].iov_len = limits_.input_buffer;
  ++count;
  msghdr hdr{};
  hdr.msg_iov = iov;
  hdr.msg_iovlen = static_cast<size_t>(count);
  ssize_t n = ::recvmsg(fd_.get(), &hdr, MSG_DONTWAIT);
  if (n <= 0)
    return n;
  auto got = static_cast<uint64_t>(n);
  auto into_body = std::min(got, planned);
  advance_piece(into_body);
  in_end_ = static_cast<size_t>(got - into_body);
  if (body_left_ == 0)
    finish_frame();
  return n;
}

void connection::advance_piece(size_t n) {
  body_done_ += n;
  body_left_ -= n;
  piece_done_ += n;
  while (piece_ < plan_.pieces.size() && piece_done_ >= plan_.pieces[piece_].length) {
    piece_done_ -= plan_.pieces[piece_].length;
    ++piece_;
  }
}

size_t connection::feed_body(const uint8_t* data, size_t n) {
  if (plan_.how == body_plan::mode::buffer) {
    std::memcpy(plan_.buffer->data() + body_done_, data, n);
    body_done_ += n;
    body_left_ -= n;
    return n;
  }
  size_t used = 0;
  while (used < n && piece_ < plan_.pieces.size()) {
    auto& s = plan_.pieces[piece_];
    size_t k = static_cast<size_t>(std::min<uint64_t>(n - used, s.length - piece_done_));
    if (s.what == sink::kind::host) {
      std::memcpy(s.data + piece_done_, data + used, k);
    } else if (s.what == sink::kind::device) {
      if (memory::copy_bytes(s.data + piece_done_, s.where, data + used, memory::location{}, k))
        s.failed = true;
    }
    used += k;
    advance_piece(k);
  }
  return used;
}

bool connection::start_frame(const frame_header& header) {
  plan_ = body_plan{};
  auto v = proto_->on_frame(*this, header, frame_index_, plan_);
  if (v != violation::none) {
    fail(std::string("refused a frame: ") + to_string(v));
    return false;
  }
  if (plan_.how == body_plan::mode::buffer) {
    if (plan_.buffer == nullptr) {
      fail("protocol chose no buffer for a frame");
      return false;
    }
    plan_.buffer->resize(header.size);
  } else {
    uint64_t total = 0;
    for (const auto& s : plan_.pieces)
      total += s.length;
    if (total != header.size) {
      fail("protocol's plan does not cover the frame");
      return false;
    }
  }
  part_ = part::body;
  body_left_ = header.size;
  body_done_ = 0;
  piece_ = 0;
  piece_done_ = 0;
  while (piece_ < plan_.pieces.size() && plan_.pieces[piece_].length == 0)
    ++piece_;
  if (body_left_ == 0)
    finish_frame();
  return stage_ != stage::failed;
}

void connection::finish_frame() {
  auto v = proto_->on_frame_done(*this, frame_, frame_index_, plan_);
  part_ = part::header;
  plan_ = body_plan{};
  if (v != violation::none) {
    fail(std::string("refused a message: ") + to_string(v));
    return;
  }
  if (frame_.more) {
    ++frame_index_;
  } else {
    frame_index_ = 0;
    ++messages_;
    last_activity_ = std::chrono::steady_clock::now();
  }
}

bool connection::handle_command() {
  command cmd;
  auto v = decode_command(command_, cmd);
  if (v != violation::none) {
    fail(std::string("refused a command: ") + to_string(v));
    return false;
  }
  if (stage_ == stage::ready) {
    if (cmd.what != command::kind::ready) {
      fail("the peer's first command is not READY");
      return false;
    }
    if (!compatible(socket_type_, cmd.socket_type)) {
      fail("the peer's socket type '" + cmd.socket_type.substr(0, 32) + "' cannot talk to "
           + socket_type_);
      return false;
    }
    stage_ = stage::open;
    last_activity_ = std::chrono::steady_clock::now();
    proto_->on_ready(*this);
    return true;
  }
  switch (cmd.what) {
    case command::kind::ping: send_command(encode_pong(cmd.context)); break;
    case command::kind::ready: fail("the peer sent READY twice"); return false;
    case command::kind::error: fail("the peer sent ERROR: " + cmd.context); return false;
    default: break; // PONG, and commands for other socket types: nothing to do
  }
  return true;
}

bool connection::step() {
  if (stage_ == stage::failed)
    return false;
  const size_t avail = in_end_ - in_begin_;
  if (stage_ == stage::greeting) {
    if (avail == 0)
      return false;
    size_t take = std::min(avail, greeting_size - greeting_have_);
    std::memcpy(greeting_ + greeting_have_, in_.get() + in_begin_, take);
    greeting_have_ += take;
    in_begin_ += take;
    auto v = check_greeting({greeting_, greeting_have_});
    if (v != violation::none) {
      fail(std::string("refused the greeting: ") + to_string(v));
      return false;
    }
    if (greeting_have_ == greeting_size)
      stage_ = stage::ready;
    return true;
  }
  switch (part_) {
    case part::header: {
      if (avail == 0)
        return false;
      if (stage_ == stage::open && frame_index_ == 0 && !proto_->may_start_message(*this)) {
        held_ = true;
        return false;
      }
      frame_header h;
      auto v = decode_frame_header({in_.get() + in_begin_, avail}, h);
      if (v != violation::none) {
        fail(std::string("refused a frame header: ") + to_string(v));
        return false;
      }
      if (h.header_bytes == 0)
        return false;
      in_begin_ += h.header_bytes;
      frame_ = h;
      if (stage_ == stage::ready || h.command) {
        if (!h.command || frame_index_ != 0) {
          fail(stage_ == stage::ready ? "a message frame before the handshake"
                                      : "a command inside a multipart message");
          return false;
        }
        if (h.size > max_command_size) {
          fail("a command of " + std::to_string(h.size) + " bytes (limit "
               + std::to_string(max_command_size) + ")");
          return false;
        }
        command_.clear();
        body_left_ = h.size;
        part_ = part::command_body;
        if (body_left_ == 0) {
          part_ = part::header;
          handle_command();
        }
        return stage_ != stage::failed;
      }
      return start_frame(h);
    }
    case part::command_body: {
      if (avail == 0)
        return false;
      size_t take = static_cast<size_t>(std::min<uint64_t>(avail, body_left_));
      command_.insert(command_.end(), in_.get() + in_begin_, in_.get() + in_begin_ + take);
      in_begin_ += take;
      body_left_ -= take;
      if (body_left_ == 0) {
        part_ = part::header;
        handle_command();
      }
      return stage_ != stage::failed;
    }
    case part::body: {
      if (avail == 0)
        return false;
      size_t take = static_cast<size_t>(std::min<uint64_t>(avail, body_left_));
      feed_body(in_.get() + in_begin_, take);
      in_begin_ += take;
      if (body_left_ == 0)
        finish_frame();
      return stage_ != stage::failed;
    }
  }
  return false;
}

} // namespace kvferry::transport::zmtp
