// The `kvferry` Python module: errors, buffers, the exit hook, and the two classes
// (engine.cpp: TransferEngine, store.cpp: DistributedStore).
#include "tools/python/binding.hpp"

#include <string>

#include <pybind11/eval.h>

namespace kvferry::python {

namespace {

// Created at import and never released: a py::object here would be released after the
// interpreter finalized.
/// kvferry.Error.
PyObject* error_type = nullptr;
/// The module's weak set of live engines and stores.
PyObject* live_objects = nullptr;

// Defined in Python: the exception class (with code and name) and the exit hook.
constexpr const char* python_part = R"PY(
import atexit as _atexit
import enum as _enum
import os as _os
import weakref as _weakref

class OpCode(_enum.IntEnum):
    """Transfer direction: READ (remote -> local memory), WRITE (local -> remote memory)."""
    READ = 0
    WRITE = 1

READ = OpCode.READ
WRITE = OpCode.WRITE

class TaskState(_enum.IntEnum):
    """Task states, numbered as Mooncake's."""
    WAITING = 0
    PENDING = 1
    INVALID = 2
    CANCELED = 3
    COMPLETED = 4
    TIMEOUT = 5
    FAILED = 6

class Error(Exception):
    """A kvferry call failed. `code` is the kvferry error code (kvferry.errc, the C API's
    kvferry_errc), `name` its short name, and the message says what was wrong."""

    def __init__(self, code, name, message):
        super().__init__(message)
        self.code = code
        self.name = name

_live = _weakref.WeakSet()

def _close_all():
    # Engines and stores still open when the interpreter exits: close them before the
    # interpreter goes away (threads stopped, segments unmounted at the master at once).
    for obj in list(_live):
        try:
            obj.close()
        except Exception:
            pass

_atexit.register(_close_all)

def _forget_all():
    # In a child made by fork(): the engine and store threads stayed in the parent, and closing
    # would unmount the parent's client at the master. The child's copies are dropped unused.
    for obj in list(_live):
        obj._forget()
    _live.clear()

_os.register_at_fork(after_in_child=_forget_all)
)PY";

} // namespace

namespace {
thread_local std::string last_failure;
} // namespace

int note_failure(int code) {
  last_failure = kvferry_last_error();
  return code;
}

int note_failure(int code, std::string message) {
  last_failure = std::move(message);
  return code;
}

void raise_last_error(int code) {
  const char* name = kvferry_error_name(code);
  std::string message = last_failure.empty() ? std::string(name) : last_failure;
  py::object error = py::handle(error_type)(code, name, message);
  PyErr_SetObject(error_type, error.ptr());
  throw py::error_already_set();
}

int store_code(int code) noexcept {
  switch (code) {
    case KVFERRY_OK: return 0;
    case KVFERRY_ERR_OBJECT_NOT_FOUND: return -704;
    case KVFERRY_ERR_OBJECT_EXISTS: return -705;
    case KVFERRY_ERR_OBJECT_HAS_LEASE: return -706;
    case KVFERRY_ERR_LEASE_EXPIRED: return -707;
    case KVFERRY_ERR_TRANSPORT_FAILURE:
    case KVFERRY_ERR_PEER_UNREACHABLE:
    case KVFERRY_ERR_STALE_INCARNATION:
    case KVFERRY_ERR_FENCED: return -800;
    case KVFERRY_ERR_OTHER: return -1;
    default: return -(1000 + code);
  }
}

buffer_view::buffer_view(py::handle object, bool writable) {
  const int flags = PyBUF_ANY_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
  if (PyObject_GetBuffer(object.ptr(), &view_, flags) != 0)
    throw py::error_already_set();
}

buffer_view::~buffer_view() {
  PyBuffer_Release(&view_);
}

memory_arg memory_of(py::handle object, std::optional<uint64_t> length, bool writable,
                     const char* what) {
  memory_arg out;
  if (PyLong_Check(object.ptr())) {
    if (!length)
      throw py::type_error(std::string(what) + ": a raw address needs a length");
    out.addr = reinterpret_cast<void*>(static_cast<uintptr_t>(object.cast<uint64_t>()));
    out.length = static_cast<size_t>(*length);
    return out;
  }
  if (!PyObject_CheckBuffer(object.ptr()))
    throw py::type_error(std::string(what) + ": expected an int address or an object with the "
                                             "buffer protocol (bytes, bytearray, memoryview, "
                                             "array, numpy array), got "
                         + std::string(py::str(py::type::of(object).attr("__name__"))));
  out.view = std::make_shared<buffer_view>(object, writable);
  out.addr = out.view->data();
  out.length = out.view->size();
  if (length) {
    if (*length > out.length)
      throw py::value_error(std::string(what) + ": length " + std::to_string(*length)
                            + " exceeds the buffer's " + std::to_string(out.length) + " bytes");
    out.length = static_cast<size_t>(*length);
  }
  return out;
}

std::optional<std::string> config_text(py::handle config) {
  if (config.is_none())
    return std::nullopt;
  if (py::isinstance<py::dict>(config))
    return py::module_::import("json").attr("dumps")(config).cast<std::string>();
  if (py::isinstance<py::str>(config) || py::hasattr(config, "__fspath__"))
    return py::module_::import("os").attr("fspath")(config).cast<std::string>();
  throw py::type_error("config: expected None, a path or a dict, got "
                       + std::string(py::str(py::type::of(config).attr("__name__"))));
}

void track(py::handle self) {
  py::handle(live_objects).attr("add")(self);
}

} // namespace kvferry::python

PYBIND11_MODULE(kvferry, m) {
  using namespace kvferry::python;
  m.doc() = "kvferry: KV-cache transfer engine and distributed KV store (README.md, \"Python\").";
  py::exec(python_part, m.attr("__dict__"));
  error_type = py::object(m.attr("Error")).release().ptr();
  live_objects = py::object(m.attr("_live")).release().ptr();

  m.attr("__version__") = kvferry_version();
  m.attr("C_API_VERSION") = kvferry_c_api_version();
  m.def(
    "last_error", [] { return last_failure; },
    "The message of the last failed kvferry call in this thread (store calls return codes).");
  m.def(
    "error_name",
    [](int code) -> std::string {
      if (code >= 0)
        return kvferry_error_name(code);
      switch (code) {
        case -704: return "object_not_found";
        case -705: return "object_exists";
        case -706: return "object_has_lease";
        case -707: return "lease_expired";
        case -800: return "transfer_fail";
        case -1: return "other";
        default: return code <= -1000 ? kvferry_error_name(-code - 1000) : "unknown";
      }
    },
    py::arg("code"),
    "The name of a kvferry error code (Error.code) or of a store return code (negative).");

  py::module_ errc = m.def_submodule("errc", "kvferry's error codes (the values of Error.code).");
  for (int code = 1; code <= KVFERRY_ERR_FENCED; ++code)
    errc.attr(kvferry_error_name(code)) = code;
  errc.attr("other") = static_cast<int>(KVFERRY_ERR_OTHER);

  m.def(
    "buffer_address",
    [](py::handle object) {
      buffer_view view(object, false);
      return py::make_tuple(reinterpret_cast<uintptr_t>(view.data()), view.size());
    },
    py::arg("buffer"),
    "(address, length) of an object's memory (buffer protocol). The address stays valid only as "
    "long as the object lives and is not resized: register the object itself to pin it.");

  bind_engine(m);
  bind_store(m);
  // Mooncake's class name, so that a connector written for it needs only its import changed.
  m.attr("MooncakeDistributedStore") = m.attr("DistributedStore");
}
