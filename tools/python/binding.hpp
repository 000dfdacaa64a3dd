#pragma once
// Shared parts of the `kvferry` Python module: errors, buffers, and the registry of live objects
// that the interpreter's exit closes. The module is a thin layer over the C API
// (actors/capi/kvferry.h): every call goes through one C entry point with the GIL released.

#include <Python.h>

#include <cstdint>
#include <optional>
#include <string>

#include <pybind11/pybind11.h>

#include "actors/capi/kvferry.h"

namespace kvferry::python {

namespace py = pybind11;

/// Records a failed C call's code and message (the C API's last error of this thread) as the
/// module's last error (kvferry.last_error()); returns `code`.
int note_failure(int code);
/// Records a failure the binding itself decided; returns `code`.
int note_failure(int code, std::string message);
/// Raises kvferry.Error(code, name, message) with the module's last error of this thread.
[[noreturn]] void raise_last_error(int code);
/// Raises kvferry.Error for a failed C call; nothing when `code` is KVFERRY_OK.
inline void check(int code) {
  if (code != KVFERRY_OK)
    raise_last_error(note_failure(code));
}
/// Raises kvferry.Error with a message of the binding's own.
[[noreturn]] inline void raise_error(int code, std::string message) {
  raise_last_error(note_failure(code, std::move(message)));
}
/// The configuration text the C API takes: None -> nullopt (environment, then defaults); a str
/// or os.PathLike -> a file path; a dict -> its JSON text.
std::optional<std::string> config_text(py::handle config);

/// The store's return code for a C code, as Mooncake's store returns them: 0; -704 not found,
/// -705 exists, -706 has lease, -707 lease expired, -800 a transfer failed (transport failure,
/// peer unreachable, stale incarnation, fenced); -1 for an error outside kvferry's codes; every
/// other code c as -(1000 + c).
int store_code(int code) noexcept;

/// A contiguous view of a Python object's memory (the buffer protocol), held until destroyed:
/// the object cannot be freed or resized meanwhile. Create and destroy it with the GIL held.
class buffer_view {
public:
  buffer_view(py::handle object, bool writable);
  ~buffer_view();
  buffer_view(const buffer_view&) = delete;
  buffer_view& operator=(const buffer_view&) = delete;
  [[nodiscard]] void* data() const noexcept { return view_.buf; }
  [[nodiscard]] size_t size() const noexcept { return static_cast<size_t>(view_.len); }

private:
  Py_buffer view_{};
};

/// Memory a call names: a raw address (an int) with a length, or an object with the buffer
/// protocol (then `length` may be omitted and must not exceed the object's size).
struct memory_arg {
  void* addr = nullptr;
  size_t length = 0;
  /// Set for a buffer object: keeps its memory in place while the call uses it.
  std::shared_ptr<buffer_view> view;
};
memory_arg memory_of(py::handle object, std::optional<uint64_t> length, bool writable,
                     const char* what);

/// Adds an object holding a C handle (an engine, a store) to the module's weak set of live
/// objects; at interpreter exit each one still there is closed, so a process that never calls
/// close() still stops its threads and unmounts before it ends.
void track(py::handle self);

void bind_engine(py::module_& m);
void bind_store(py::module_& m);

} // namespace kvferry::python
