#pragma once
/// One ZMTP 3.1 connection over a non-blocking TCP socket, as both kvferry's servers and its control
/// client use it. It owns the socket, parses what the peer sends as it arrives (greeting, READY,
/// frames) and writes what is queued for the peer. It never blocks and never allocates on behalf of
/// the peer beyond fixed bounds:
///   - the input buffer has a fixed size;
///   - a command frame is buffered only up to zmtp::max_command_size;
///   - a message frame's body goes where the protocol above says (a bounded buffer it chose, memory
///     it checked, or nowhere), decided when the frame's header arrives, before any body byte;
///   - at a message boundary the protocol above may hold off reading (backpressure): the
///     connection then stops reading the socket, so the peer's bytes wait in the kernel.
/// The protocol above (a `protocol` object owned by the connection) never sees a partial header.

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <sys/types.h>

#include "memory/location.hpp"
#include "memory/region_registry.hpp"
#include "transport/zmtp/codec.hpp"
#include "transport/zmtp/net.hpp"

namespace kvferry::transport::zmtp {

/// Where the bytes of one piece of a frame's body go.
struct sink {
  enum class kind : uint8_t {
    /// Host memory at `data` (the connection may read into it straight from the socket).
    host,
    /// Device memory at `data`, `where`: staged through the input buffer and copied.
    device,
    /// Read and dropped.
    discard,
  };
  kind what = kind::discard;
  uint8_t* data = nullptr;
  uint64_t length = 0;
  memory::location where;
  /// Set by the connection when a device copy into this piece failed.
  bool failed = false;
};

/// Where a message frame's body goes, chosen by the protocol when the frame header arrives.
struct body_plan {
  enum class mode : uint8_t { buffer, scatter };
  mode how = mode::buffer;
  /// mode::buffer: the connection fills this vector (resized to the frame's size, which the
  /// protocol bounded before choosing this mode).
  std::vector<uint8_t>* buffer = nullptr;
  /// mode::scatter: pieces in order; their lengths add up to the frame's size.
  std::vector<sink> pieces;
};

/// One message to send: frames already encoded as a list of byte ranges. `owned` holds the bytes
/// the message owns (frame headers, copied data); other ranges point into memory kept alive (and
/// kept registered) by `leases` until the message is written or the connection closes.
struct outbound {
  std::vector<uint8_t> owned;
  struct range {
    /// Offset into `owned` when `external` is null.
    const uint8_t* external = nullptr;
    size_t offset = 0;
    size_t length = 0;
  };
  std::vector<range> ranges;
  std::vector<memory::region_lease> leases;
  /// Bytes charged to a budget by whoever queued it (released when written or dropped).
  size_t charged = 0;

  /// Appends owned bytes as a range.
  void append_owned(std::span<const uint8_t> bytes);
  /// Appends a frame header for a body of `size` bytes (owned).
  void append_frame_header(uint64_t size, bool more);
  /// Appends a range of memory the message does not own.
  void append_external(const uint8_t* data, size_t length);
  [[nodiscard]] size_t size() const noexcept;
  /// Heap bytes this message holds (its owned bytes and its bookkeeping), what a budget charges.
  [[nodiscard]] size_t footprint() const noexcept;
};

class connection;

/// The protocol above ZMTP on one connection (kvferry's data or control protocol).
class protocol {
public:
  virtual ~protocol() = default;
  /// The peer's READY arrived (its socket type is compatible). Default: nothing.
  virtual void on_ready(connection&) {}
  /// Before the first frame of a new message: false holds off reading (backpressure); the owner
  /// of the connection calls connection::resume() when the protocol may read again.
  [[nodiscard]] virtual bool may_start_message(connection&) { return true; }
  /// A message frame's header arrived (`index` counts frames within the message from 0). Fill
  /// `plan`, or return a violation to close the connection.
  [[nodiscard]] virtual violation on_frame(connection&, const frame_header& header, size_t index,
                                           body_plan& plan) = 0;
  /// The body of that frame is complete (in the plan's buffer or its pieces).
  [[nodiscard]] virtual violation on_frame_done(connection&, const frame_header& header,
                                                size_t index, body_plan& plan) = 0;
  /// The connection is closing; drop anything that refers to it.
  virtual void on_close(connection&) {}
  /// True while the protocol has work in progress for its peer (a request being answered): the
  /// server evicts such a connection only as a last resort.
  [[nodiscard]] virtual bool busy() const { return false; }
  /// True when the protocol holds a lease on that region's memory for a message in progress.
  [[nodiscard]] virtual bool holds_region(const memory::region_state*) const { return false; }
  /// True when a message in progress may still touch a byte of [addr, addr+len) (a WRITE whose
  /// bytes are arriving, a READ not yet answered): fencing that range closes the connection.
  [[nodiscard]] virtual bool holds_range(uint64_t addr, uint64_t len) const {
    (void) addr;
    (void) len;
    return false;
  }
};

struct connection_limits {
  /// Bytes read from the socket per readiness event, so one busy peer cannot starve the others.
  size_t read_quantum = 4 << 20;
  /// Input buffer size.
  size_t input_buffer = 16 << 10;
};

/// What the last I/O call found.
enum class io_result : uint8_t {
  /// Keep going.
  open,
  /// The peer closed, the socket failed, or the peer violated the protocol: close it.
  closed,
};

class connection {
public:
  /// `socket_type` is this side's ZMTP socket type ("ROUTER" for servers, "DEALER" for clients).
  connection(unique_fd fd, uint64_t id, std::string_view socket_type,
             std::unique_ptr<protocol> proto, connection_limits limits = {});
  ~connection();
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  [[nodiscard]] int fd() const noexcept { return fd_.get(); }
  [[nodiscard]] uint64_t id() const noexcept { return id_; }
  [[nodiscard]] protocol& proto() noexcept { return *proto_; }
  [[nodiscard]] const protocol& proto() const noexcept { return *proto_; }
  [[nodiscard]] bool ready() const noexcept { return stage_ == stage::open; }

  /// Reads and parses until the socket has nothing more, the read quantum is used, or the protocol
  /// holds off. Handles ZMTP commands itself (PING -> PONG).
  [[nodiscard]] io_result on_readable();
  /// Writes queued output until the socket is full or the queue is empty.
  [[nodiscard]] io_result on_writable();
  /// Parses what is already buffered after the protocol allowed reading again; then reads.
  [[nodiscard]] io_result resume() { return on_readable(); }

  /// True when reading is held off by the protocol.
  [[nodiscard]] bool held() const noexcept { return held_; }
  /// True while output is queued.
  [[nodiscard]] bool wants_write() const noexcept { return !out_.empty(); }
  /// Bytes queued and not yet written.
  [[nodiscard]] size_t queued_bytes() const noexcept { return queued_bytes_; }
  /// Messages queued and not yet completely written.
  [[nodiscard]] size_t queued_messages() const noexcept { return out_.size(); }

  /// Queues a message (its frames already encoded).
  void send(std::unique_ptr<outbound> message);
  /// Queues a ZMTP command frame (already encoded).
  void send_command(std::vector<uint8_t> frame);

  /// Why the connection closed or was refused, for the log.
  [[nodiscard]] const std::string& close_reason() const noexcept { return close_reason_; }
  /// Marks the connection for closing with a reason (the owner closes it); `violation` says the
  /// peer broke the protocol (counted and logged as such).
  void fail(std::string reason, bool violation = true);
  [[nodiscard]] bool violated() const noexcept { return violated_; }
  /// Messages written out completely, with their charged bytes, since the last call (the owner
  /// releases the budget they held).
  [[nodiscard]] size_t take_released_charge() noexcept;

  /// True when a queued message holds a lease on `state` (unregistering that region must not wait
  /// on a peer that never reads: its owner closes the connection instead).
  [[nodiscard]] bool holds_lease_on(const memory::region_state* state) const noexcept;
  /// True when a queued message still has to read a byte of [addr, addr+len) of memory it does not
  /// own (a READ reply sent from registered memory): fencing that range closes the connection.
  [[nodiscard]] bool holds_range(uint64_t addr, uint64_t len) const noexcept;

  /// When this connection last completed a message from its peer, or was accepted.
  [[nodiscard]] std::chrono::steady_clock::time_point last_activity() const noexcept {
    return last_activity_;
  }
  [[nodiscard]] std::chrono::steady_clock::time_point created() const noexcept { return created_; }
  /// True once the peer sent the start of a valid greeting (its signature).
  [[nodiscard]] bool greeted() const noexcept { return greeting_have_ >= signature_size; }
  /// Messages the peer sent in full so far.
  [[nodiscard]] uint64_t messages_received() const noexcept { return messages_; }

  /// Charges `n` owned bytes dropped with the queue when the connection closes.
  [[nodiscard]] size_t queued_charge() const noexcept;

private:
  enum class stage : uint8_t { greeting, ready, open, failed };
  enum class part : uint8_t { header, command_body, body };

  /// Consumes buffered input; returns false when it needs more bytes or must stop.
  bool step();
  bool start_frame(const frame_header& header);
  void finish_frame();
  bool handle_command();
  /// Moves up to `n` buffered bytes into the current body; returns how many.
  size_t feed_body(const uint8_t* data, size_t n);
  /// Reads straight into the current host piece when the buffer is empty; returns bytes read, 0 on
  /// would-block, -1 on error/EOF (closed).
  ssize_t read_direct();
  void advance_piece(size_t n);

  unique_fd fd_;
  uint64_t id_;
  std::string socket_type_;
  std::unique_ptr<protocol> proto_;
  connection_limits limits_;
  stage stage_ = stage::greeting;

  // Input.
  std::unique_ptr<uint8_t[]> in_;
  size_t in_begin_ = 0, in_end_ = 0;
  uint8_t greeting_[greeting_size] = {};
  size_t greeting_have_ = 0;
  part part_ = part::header;
  frame_header frame_;
  size_t frame_index_ = 0;   // within the current message
  uint64_t body_left_ = 0;   // bytes of the current frame's body still to come
  uint64_t body_done_ = 0;   // bytes of the current frame's body received
  std::vector<uint8_t> command_;
  body_plan plan_;
  size_t piece_ = 0;         // current piece (scatter)
  uint64_t piece_done_ = 0;  // bytes of the current piece received
  bool held_ = false;

  // Output.
  std::deque<std::unique_ptr<outbound>> out_;
  size_t out_range_ = 0;     // of out_.front()
  size_t out_offset_ = 0;    // within that range
  size_t queued_bytes_ = 0;
  size_t released_charge_ = 0;

  std::string close_reason_;
  bool violated_ = false;
  uint64_t messages_ = 0;
  std::chrono::steady_clock::time_point created_;
  std::chrono::steady_clock::time_point last_activity_;
};

} // namespace kvferry::transport::zmtp
