#pragma once
/// The byte writer and the bounds-checked byte reader of kvferry's own wire formats
/// (control/wire.cpp, store/wire.cpp). Integers are little-endian whatever the host; strings and
/// byte strings carry an explicit u8/u16/u32 length.
///
/// The reader never trusts a length: every read checks the bytes left first, a declared length
/// is checked against its limit before anything is copied, and count() refuses a count whose
/// entries cannot fit in what is left of the frame before the caller reserves room for them. The
/// first problem is kept (later reads return zero values and do nothing) with the byte offset of
/// the field it was found in, so a decoder reads a whole structure and checks ok() once.

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace kvferry::transport {

class byte_writer {
public:
  byte_writer() = default;
  /// Reserves `expected_size` bytes (an encoder that knows its size copies its output once).
  explicit byte_writer(size_t expected_size) { out_.reserve(expected_size); }

  void u8(uint8_t v) { out_.push_back(v); }
  void u16(uint16_t v) { little_endian(v); }
  void u32(uint32_t v) { little_endian(v); }
  void u64(uint64_t v) { little_endian(v); }
  void boolean(bool v) { u8(v ? 1 : 0); }
  void raw(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out_.insert(out_.end(), b, b + n);
  }
  /// A string with a length of `width` bytes (1, 2 or 4); the caller checked it fits.
  void str(size_t width, std::string_view s) {
    length(width, s.size());
    raw(s.data(), s.size());
  }
  void str8(std::string_view s) { str(1, s); }
  void str16(std::string_view s) { str(2, s); }
  void str32(std::string_view s) { str(4, s); }
  /// Bytes with a u32 length; the caller checked it fits.
  void blob32(std::span<const uint8_t> b) {
    u32(static_cast<uint32_t>(b.size()));
    raw(b.data(), b.size());
  }
  /// Overwrites the u32 at `offset` (a length known only once what follows is written).
  void patch_u32(size_t offset, uint32_t v) {
    for (size_t i = 0; i < 4; ++i)
      out_[offset + i] = static_cast<uint8_t>(v >> (8 * i));
  }

  [[nodiscard]] size_t size() const noexcept { return out_.size(); }
  [[nodiscard]] std::vector<uint8_t>& bytes() noexcept { return out_; }

private:
  template <class T>
  void little_endian(T v) {
    for (size_t i = 0; i < sizeof(T); ++i)
      out_.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
  void length(size_t width, size_t n) {
    if (width == 1)
      u8(static_cast<uint8_t>(n));
    else if (width == 2)
      u16(static_cast<uint16_t>(n));
    else
      u32(static_cast<uint32_t>(n));
  }

  std::vector<uint8_t> out_;
};

class byte_reader {
public:
  explicit byte_reader(std::span<const uint8_t> in) : in_(in) {}

  [[nodiscard]] bool ok() const noexcept { return problem_.empty(); }
  /// What was wrong, where and what was expected: "<why> (at byte N)"; empty while ok().
  [[nodiscard]] const std::string& problem() const noexcept { return problem_; }
  [[nodiscard]] size_t left() const noexcept { return in_.size() - at_; }
  /// Bytes read so far.
  [[nodiscard]] size_t offset() const noexcept { return at_; }

  /// A little-endian unsigned integer.
  template <class T>
  T num(const char* what) {
    static_assert(std::is_unsigned_v<T>);
    mark_ = at_;
    return fixed<T>(what);
  }

  /// A u8 that must be 0 or 1.
  bool boolean(const char* what) {
    mark_ = at_;
    auto v = fixed<uint8_t>(what);
    if (ok() && v > 1)
      fail(std::string(what) + " is " + std::to_string(v) + "; expected 0 or 1");
    return v == 1;
  }

  /// A string with a length of `width` bytes (1, 2 or 4), 1 to `limit` bytes long (0 to `limit`
  /// when `allow_empty`).
  std::string str(size_t width, size_t limit, const char* what, bool allow_empty = false) {
    auto n = declared_length(width, limit, what, allow_empty);
    if (!ok())
      return {};
    std::string s(reinterpret_cast<const char*>(in_.data() + at_), n);
    at_ += n;
    return s;
  }

  /// Bytes with a length of `width` bytes, 0 to `limit` bytes long.
  std::vector<uint8_t> blob(size_t width, size_t limit, const char* what) {
    auto n = declared_length(width, limit, what, true);
    if (!ok())
      return {};
    std::vector<uint8_t> b(in_.begin() + static_cast<std::ptrdiff_t>(at_),
                           in_.begin() + static_cast<std::ptrdiff_t>(at_ + n));
    at_ += n;
    return b;
  }

  /// A count of `width` bytes, at most `limit`, of entries that take at least `min_entry_bytes`
  /// each: a count the rest of the frame cannot hold is refused (0 returned) before the caller
  /// reserves anything for it.
  size_t count(size_t width, size_t limit, size_t min_entry_bytes, const char* what) {
    mark_ = at_;
    uint64_t n = width_int(width, what);
    if (!ok())
      return 0;
    if (n > limit) {
      fail(std::string(what) + " is " + std::to_string(n) + "; expected at most "
           + std::to_string(limit));
      return 0;
    }
    if (n * min_entry_bytes > left()) {
      fail(std::string(what) + " is " + std::to_string(n) + ", but entries of at least "
           + std::to_string(min_entry_bytes) + " bytes each do not fit in the "
           + std::to_string(left()) + " bytes left");
      return 0;
    }
    return static_cast<size_t>(n);
  }

  /// Records a problem found in the field read last (the first problem is kept).
  void fail(std::string why) { fail_at(mark_, std::move(why)); }
  /// Records a problem found at byte `offset` (the first problem is kept).
  void fail_at(size_t offset, std::string why) {
    if (problem_.empty())
      problem_ = std::move(why) + " (at byte " + std::to_string(offset) + ")";
  }

private:
  template <class T>
  T fixed(const char* what) {
    if (!need(sizeof(T), what))
      return T{};
    T v = 0;
    for (size_t i = 0; i < sizeof(T); ++i)
      v = static_cast<T>(v | (static_cast<T>(in_[at_ + i]) << (8 * i)));
    at_ += sizeof(T);
    return v;
  }

  uint64_t width_int(size_t width, const char* what) {
    return width == 1   ? fixed<uint8_t>(what)
           : width == 2 ? fixed<uint16_t>(what)
                        : fixed<uint32_t>(what);
  }

  /// Reads a length and checks it against `limit` and the bytes left; 0 when it fails.
  size_t declared_length(size_t width, size_t limit, const char* what, bool allow_empty) {
    mark_ = at_;
    uint64_t n = width_int(width, what);
    if (!ok())
      return 0;
    if (n > limit || (n == 0 && !allow_empty)) {
      fail(std::string(what) + " has length " + std::to_string(n) + "; expected "
           + (allow_empty ? "0" : "1") + " to " + std::to_string(limit));
      return 0;
    }
    if (!need(n, what))
      return 0;
    return static_cast<size_t>(n);
  }

  bool need(uint64_t n, const char* what) {
    if (!ok())
      return false;
    if (n > left()) {
      fail(std::string(what) + " runs past the end of the frame (" + std::to_string(n)
           + " bytes needed, " + std::to_string(left()) + " left)");
      return false;
    }
    return true;
  }

  std::span<const uint8_t> in_;
  size_t at_ = 0;
  /// Where the field being read starts (the offset a problem names).
  size_t mark_ = 0;
  std::string problem_;
};

} // namespace kvferry::transport
