#pragma once
/// What the C API's opaque handles hold, and the rules every C entry point follows: an error
/// becomes a code plus the calling thread's last-error message, no exception crosses into C, and
/// a handle closes only once no call is using it.

#include <atomic>
#include <exception>
#include <new>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>

#include <caf/error.hpp>

#include "actors/capi/kvferry.h"
#include "actors/runtime.hpp"
#include "actors/store/client.hpp"
#include "actors/transfer_engine.hpp"
#include "config/error.hpp"
#include "config/settings.hpp"

namespace kvferry::capi {

/// Records `err` as this thread's last error and returns its C code (KVFERRY_OK when empty).
int fail(const caf::error& err);
/// The same for an error decided by the C layer itself.
int fail(errc code, std::string message);
/// The C code of `err`: its kvferry::errc value, KVFERRY_ERR_OTHER for other categories.
int code_of_error(const caf::error& err) noexcept;

/// Records `message` as this thread's last error and returns KVFERRY_ERR_OTHER.
int fail_other(std::string message);

/// Runs `body` (which returns a C code) so that no exception reaches C: out of memory, or an
/// exception of a C++ callback, becomes KVFERRY_ERR_OTHER.
template <class Body>
int guarded(Body body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return fail_other("out of memory");
  } catch (const std::exception& e) {
    return fail_other(std::string("unexpected exception: ") + e.what());
  } catch (...) {
    return fail_other("unexpected exception");
  }
}

/// Settings from a path, JSON text ('{' first) or nullptr (environment, then embedded defaults);
/// applies the log level and logs the parser's warnings, as the kvferry tool does.
caf::expected<config::settings> load_settings(const char* config);

/// A handle's lifetime: calls hold it shared, close() exclusively; after close (or once it
/// started) calls fail with errc::shutting_down instead of waiting.
class lifecycle {
public:
  /// A call's hold on the handle; `ok()` is false once the handle is closed or closing.
  class hold {
  public:
    explicit hold(lifecycle& l) : lock_(l.mutex_, std::defer_lock) {
      if (!l.closing_.load(std::memory_order_acquire)) {
        lock_.lock();
        ok_ = !l.closed_;
      }
    }
    [[nodiscard]] bool ok() const noexcept { return ok_; }

  private:
    std::shared_lock<std::shared_mutex> lock_;
    bool ok_ = false;
  };

  /// Marks the handle closing (new calls fail at once), waits for calls in progress, and runs
  /// `stop` once, exclusively. Idempotent.
  template <class Stop>
  void close(Stop stop) {
    closing_.store(true, std::memory_order_release);
    std::unique_lock<std::shared_mutex> guard(mutex_);
    if (closed_)
      return;
    closed_ = true;
    stop();
  }
  [[nodiscard]] bool closing() const noexcept { return closing_.load(std::memory_order_acquire); }

private:
  std::shared_mutex mutex_;
  std::atomic<bool> closing_{false};
  bool closed_ = false;
};

} // namespace kvferry::capi

struct kvferry_engine {
  kvferry::capi::lifecycle life;
  std::shared_ptr<kvferry::runtime> runtime;
  std::unique_ptr<kvferry::transfer_engine> engine;
  std::string name;
};

struct kvferry_store {
  kvferry::capi::lifecycle life;
  std::unique_ptr<kvferry::store::client> client;
};
