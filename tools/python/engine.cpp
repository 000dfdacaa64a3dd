// kvferry.TransferEngine: the transfer engine's Python surface (register memory, open segments,
// batches of READ/WRITE requests with status and wait, notifications). Failures raise
// kvferry.Error; every call into the engine runs with the GIL released.
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <pybind11/stl.h>

#include "tools/python/binding.hpp"

namespace kvferry::python {

namespace {

/// wait() without a timeout: every task has a deadline, so the wait ends before this.
constexpr uint64_t wait_forever_ms = 24ULL * 3600 * 1000;

/// kvferry.TransferStatus: a struct sequence (as os.stat_result), made and read at C speed; a
/// status is read per task, often in a loop over a batch.
PyTypeObject* status_type = nullptr;

PyStructSequence_Field status_fields[] = {
  {"state", "kvferry.TaskState"},
  {"transferred_bytes", "bytes of the task in place (all of them when COMPLETED)"},
  {"code", "why it ended FAILED, TIMEOUT or CANCELED (kvferry.errc), 0 otherwise"},
  {"reason", "the reason's text"},
  {nullptr, nullptr}};
PyStructSequence_Desc status_desc = {"kvferry.TransferStatus",
                                     "One task's status: (state, transferred_bytes, code, reason).",
                                     status_fields, 4};

uint64_t milliseconds_of(std::optional<double> seconds, uint64_t otherwise) {
  if (!seconds)
    return otherwise;
  if (*seconds < 0)
    throw py::value_error("a timeout or deadline cannot be negative");
  return static_cast<uint64_t>(*seconds * 1000.0 + 0.5);
}

/// An unsigned integer from a request's field (an int, or anything with __index__).
uint64_t field_u64(PyObject* value, size_t request, const char* field) {
  uint64_t out;
  if (PyLong_Check(value)) {
    out = PyLong_AsUnsignedLongLong(value);
  } else {
    PyObject* index = PyNumber_Index(value);
    if (index == nullptr)
      out = static_cast<uint64_t>(-1);
    else {
      out = PyLong_AsUnsignedLongLong(index);
      Py_DECREF(index);
    }
  }
  if (out == static_cast<uint64_t>(-1) && PyErr_Occurred()) {
    PyErr_Clear();
    throw py::type_error("request " + std::to_string(request) + ": " + field
                         + " must be a non-negative int");
  }
  return out;
}

/// kvferry.TaskState's members by value (a Python IntEnum, module.cpp), set when the class is
/// bound and never released: a status hands out these objects instead of making new ones.
PyObject* task_states[7] = {};

/// (op, local_addr, segment, remote_addr, length) tuples into C requests, with the GIL held.
std::vector<kvferry_transfer_request> requests_of(py::handle requests) {
  auto seq = py::reinterpret_steal<py::object>(
    PySequence_Fast(requests.ptr(), "requests must be a list of (op, local_addr, segment, "
                                    "remote_addr, length) tuples"));
  if (!seq)
    throw py::error_already_set();
  const auto n = static_cast<size_t>(PySequence_Fast_GET_SIZE(seq.ptr()));
  std::vector<kvferry_transfer_request> out(n);
  for (size_t i = 0; i < n; ++i) {
    PyObject* item = PySequence_Fast_GET_ITEM(seq.ptr(), i);
    py::object fields; // holds a converted non-tuple request
    PyObject** f;
    if (PyTuple_Check(item) && PyTuple_GET_SIZE(item) == 5) {
      f = &PyTuple_GET_ITEM(item, 0);
    } else {
      fields = py::reinterpret_steal<py::object>(
        PySequence_Fast(item, "a request must be a tuple (op, local_addr, segment, "
                              "remote_addr, length)"));
      if (!fields)
        throw py::error_already_set();
      if (PySequence_Fast_GET_SIZE(fields.ptr()) != 5)
        throw py::value_error("request " + std::to_string(i) + ": expected 5 fields (op, "
                                                               "local_addr, segment, "
                                                               "remote_addr, length)");
      f = PySequence_Fast_ITEMS(fields.ptr());
    }
    // kvferry.READ / WRITE are IntEnum members: ints, converted without a Python call.
    const uint64_t op = field_u64(f[0], i, "op");
    if (op != KVFERRY_READ && op != KVFERRY_WRITE)
      throw py::value_error("request " + std::to_string(i) + ": op must be kvferry.READ or "
                                                             "kvferry.WRITE");
    out[i].opcode = static_cast<int>(op);
    out[i].local = reinterpret_cast<void*>(static_cast<uintptr_t>(field_u64(f[1], i, "local_addr")));
    out[i].segment = field_u64(f[2], i, "segment");
    out[i].remote = field_u64(f[3], i, "remote_addr");
    out[i].length = field_u64(f[4], i, "length");
  }
  return out;
}

py::object status_object(const kvferry_transfer_status& st) {
  auto out = py::reinterpret_steal<py::object>(PyStructSequence_New(status_type));
  if (!out)
    throw py::error_already_set();
  PyObject* state = task_states[st.state >= KVFERRY_TASK_WAITING && st.state <= KVFERRY_TASK_FAILED
                                  ? st.state
                                  : KVFERRY_TASK_INVALID];
  Py_INCREF(state);
  PyStructSequence_SET_ITEM(out.ptr(), 0, state);
  PyStructSequence_SET_ITEM(out.ptr(), 1, PyLong_FromUnsignedLongLong(st.transferred_bytes));
  PyStructSequence_SET_ITEM(out.ptr(), 2, PyLong_FromLong(st.code));
  PyStructSequence_SET_ITEM(out.ptr(), 3,
                            PyUnicode_DecodeUTF8(st.reason, std::strlen(st.reason), "replace"));
  return out;
}

class engine {
public:
  engine() = default;
  ~engine() {
    if (handle_ == nullptr)
      return;
    if (!closed_) {
      py::gil_scoped_release unlocked;
      kvferry_engine_destroy(handle_);
    } else {
      kvferry_engine_destroy(handle_); // closed: only frees
    }
  }
  engine(const engine&) = delete;
  engine& operator=(const engine&) = delete;

  void initialize(py::handle self, py::handle config, std::optional<std::string> segment_name) {
    if (handle_ != nullptr || initializing_ || forked_ || closed_)
      raise_error(KVFERRY_ERR_INVALID_ARGUMENT, "TransferEngine: already initialized");
    auto text = config_text(config);
    initializing_ = true;
    kvferry_engine* h = nullptr;
    int rc;
    {
      py::gil_scoped_release unlocked;
      rc = kvferry_engine_create(text ? text->c_str() : nullptr,
                                 segment_name ? segment_name->c_str() : nullptr, &h);
    }
    initializing_ = false;
    check(rc);
    handle_ = h;
    track(self);
  }

  [[nodiscard]] std::string segment_name() const { return kvferry_engine_segment_name(live()); }

  void register_memory(py::handle memory, std::optional<uint64_t> length,
                       const std::string& location) {
    auto* h = live();
    // Peers may WRITE into registered memory: a buffer object must be writable.
    auto m = memory_of(memory, length, true, "register_memory");
    int rc;
    {
      py::gil_scoped_release unlocked;
      rc = kvferry_engine_register_memory(h, m.addr, m.length, location.c_str());
    }
    check(rc);
    if (m.view)
      pinned_[reinterpret_cast<uintptr_t>(m.addr)] = std::move(m.view);
  }

  void unregister_memory(py::handle memory) {
    auto* h = live();
    void* addr = PyLong_Check(memory.ptr())
                   ? reinterpret_cast<void*>(static_cast<uintptr_t>(memory.cast<uint64_t>()))
                   : memory_of(memory, std::nullopt, false, "unregister_memory").addr;
    int rc;
    {
      py::gil_scoped_release unlocked;
      rc = kvferry_engine_unregister_memory(h, addr);
    }
    check(rc);
    pinned_.erase(reinterpret_cast<uintptr_t>(addr));
  }

  uint64_t open_segment(const std::string& name) {
    auto* h = live();
    kvferry_segment_id id = 0;
    int rc;
    {
      py::gil_scoped_release unlocked;
      rc = kvferry_engine_open_segment(h, name.c_str(), &id);
    }
    check(rc);
    return id;
  }

  std::vector<std::pair<uint64_t, uint64_t>> segment_regions(uint64_t segment) {
    auto* h = live();
    std::vector<std::pair<uint64_t, uint64_t>> out;
    for (size_t i = 0;; ++i) {
      uint64_t base = 0, length = 0;
      int rc = kvferry_engine_segment_region(h, segment, i, &base, &length);
      if (rc == KVFERRY_ERR_OUT_OF_RANGE)
        return out;
      check(rc);
      out.emplace_back(base, length);
    }
  }

  uint64_t allocate_batch(size_t capacity) {
    auto* h = live();
    kvferry_batch_id id = 0;
    int rc;
    {
      py::gil_scoped_release unlocked;
      rc = kvferry_engine_allocate_batch(h, capacity, &id);
    }
    check(rc);
    return id;
  }

  void free_batch(uint64_t batch) {
    auto* h = live();
    int rc;
    {
      py::gil_scoped_release unlocked;
      rc = kvferry_engine_free_batch(h, batch);
    }
    check(rc);
  }

  uint32_t submit(uint64_t batch, py::handle requests, std::optional<double> deadline,
                  std::optional<std::string> notify) {
    auto* h = live();
    auto converted = requests_of(requests);
    const uint64_t deadline_ms = milliseconds_of(deadline, 0);
    uint32_t first = 0;
    int rc;
    {
      py::gil_scoped_release unlocked;
      rc = kvferry_engine_submit(h, batch, converted.data(), converted.size(), deadline_ms,
                                 notify ? notify->c_str() : nullptr, &first);
    }
    check(rc);
    return first;
  }

  py::object status(uint64_t batch, uint32_t task) {
    kvferry_transfer_status st{};
    // A status read takes no lock the engine's threads hold for long: no need to drop the GIL.
    check(kvferry_engine_status(live(), batch, task, &st));
    return status_object(st);
  }

  kvferry_batch_summary batch_status(uint64_t batch) {
    kvferry_batch_summary summary{};
    check(kvferry_engine_batch_status(live(), batch, &summary));
    return summary;
  }

  /// Every submitted task's status, in one call (a loop of status() pays Python's call cost per
  /// task).
  py::list statuses(uint64_t batch) {
    auto* h = live();
    kvferry_batch_summary summary{};
    check(kvferry_engine_batch_status(h, batch, &summary));
    py::list out(summary.tasks);
    for (uint32_t i = 0; i < summary.tasks; ++i) {
      kvferry_transfer_status st{};
      check(kvferry_engine_status(h, batch, i, &st));
      PyList_SET_ITEM(out.ptr(), i, status_object(st).release().ptr());
    }
    return out;
  }

  kvferry_batch_summary wait(uint64_t batch, std::optional<double> timeout) {
    auto* h = live();
    const uint64_t timeout_ms = milliseconds_of(timeout, wait_forever_ms);
    kvferry_batch_summary summary{};
    int rc;
    {
      py::gil_scoped_release unlocked;
      rc = kvferry_engine_wait(h, batch, timeout_ms, &summary);
    }
    check(rc);
    return summary;
  }

  void notify(uint64_t segment, py::handle message) {
    auto* h = live();
    std::string bytes;
    if (py::isinstance<py::str>(message)) {
      bytes = message.cast<std::string>();
    } else {
      buffer_view view(message, false);
      bytes.assign(static_cast<const char*>(view.data()), view.size());
    }
    int rc;
    {
      py::gil_scoped_release unlocked;
      rc = kvferry_engine_notify(h, segment, bytes.data(), bytes.size());
    }
    check(rc);
  }

  py::list get_notifies() {
    auto* h = live();
    std::vector<std::pair<std::string, std::string>> taken;
    int rc;
    {
      py::gil_scoped_release unlocked;
      rc = kvferry_engine_get_notifies(
        h,
        [](void* user, const char* from, const void* message, size_t length) {
          static_cast<decltype(taken)*>(user)->emplace_back(
            from, std::string(static_cast<const char*>(message), length));
        },
        &taken);
    }
    check(rc);
    py::list out;
    for (auto& [from, message] : taken)
      out.append(py::make_tuple(py::str(from), py::bytes(message)));
    return out;
  }

  void close() {
    if (handle_ == nullptr || closed_)
      return;
    closed_ = true;
    {
      py::gil_scoped_release unlocked;
      kvferry_engine_close(handle_);
    }
    pinned_.clear();
  }

  /// After fork(), in the child: the handle belongs to the parent's threads; drop it unused
  /// (calls fail as after close()).
  void forget() {
    handle_ = nullptr;
    forked_ = true;
    pinned_.clear();
  }

private:
  /// The handle, or kvferry.Error when initialize() was not called or close() was.
  kvferry_engine* live() const {
    if (forked_)
      raise_error(KVFERRY_ERR_SHUTTING_DOWN, "TransferEngine: the engine belongs to the process "
                                             "that forked this one");
    if (handle_ == nullptr)
      raise_error(KVFERRY_ERR_SHUTTING_DOWN, "TransferEngine: initialize() was not called");
    if (closed_)
      raise_error(KVFERRY_ERR_SHUTTING_DOWN, "TransferEngine: the engine was closed");
    return handle_;
  }

  kvferry_engine* handle_ = nullptr;
  bool initializing_ = false;
  bool closed_ = false;
  bool forked_ = false;
  /// Buffer objects registered as objects, kept in place until unregistered or closed.
  std::map<uintptr_t, std::shared_ptr<buffer_view>> pinned_;
};

} // namespace

void bind_engine(py::module_& m) {
  // OpCode, READ, WRITE and TaskState are Python IntEnums (module.cpp): ints to C, compared at C
  // speed; a pybind11 enum costs a Python call per conversion or comparison.
  py::object states = m.attr("TaskState");
  for (int v = KVFERRY_TASK_WAITING; v <= KVFERRY_TASK_FAILED; ++v)
    task_states[v] = states(v).release().ptr();

  status_type = PyStructSequence_NewType(&status_desc);
  if (status_type == nullptr)
    throw py::error_already_set();
  m.attr("TransferStatus") = py::handle(reinterpret_cast<PyObject*>(status_type));

  py::class_<kvferry_batch_summary>(m, "BatchSummary", "A batch's tasks counted by state.")
    .def_readonly("tasks", &kvferry_batch_summary::tasks)
    .def_readonly("waiting", &kvferry_batch_summary::waiting)
    .def_readonly("pending", &kvferry_batch_summary::pending)
    .def_readonly("completed", &kvferry_batch_summary::completed)
    .def_readonly("failed", &kvferry_batch_summary::failed)
    .def_readonly("timeout", &kvferry_batch_summary::timeout)
    .def_readonly("canceled", &kvferry_batch_summary::canceled)
    .def_readonly("transferred_bytes", &kvferry_batch_summary::transferred_bytes)
    .def("__repr__", [](const kvferry_batch_summary& s) {
      return "BatchSummary(tasks " + std::to_string(s.tasks) + ", completed "
             + std::to_string(s.completed) + ", failed " + std::to_string(s.failed)
             + ", timeout " + std::to_string(s.timeout) + ", canceled "
             + std::to_string(s.canceled) + ", " + std::to_string(s.transferred_bytes)
             + " bytes)";
    });

  py::class_<engine>(m, "TransferEngine", R"(The transfer engine (README.md, "Python").

    e = kvferry.TransferEngine()
    e.initialize()                      # or initialize("config.json"), initialize({...})
    e.register_memory(buf)              # or register_memory(address, length)
    seg = e.open_segment("10.0.0.2:12345")
    batch = e.allocate_batch(128)
    e.submit(batch, [(kvferry.READ, local_addr, seg, remote_addr, length), ...])
    e.wait(batch, timeout=10.0); e.status(batch, 0); e.free_batch(batch)

Every failure raises kvferry.Error; calls release the GIL while the engine works.)")
    .def(py::init<>())
    .def(
      "initialize",
      [](py::object self, py::object config, std::optional<std::string> segment_name) {
        self.cast<engine&>().initialize(self, config, std::move(segment_name));
      },
      py::arg("config") = py::none(), py::arg("segment_name") = py::none(),
      "Starts the engine from a config.json path, a dict of its fields, or None: the file named "
      "by KVFERRY_CONFIG or MOONCAKE_CONFIG_PATH, else the embedded defaults. segment_name: "
      "None for \"local_hostname:rpc_port\".")
    .def(
      "initialize",
      [](py::object self, const std::string& local_hostname, const std::string& metadata_server,
         const std::string& protocol, const std::string& device_name) {
        py::dict config;
        config["local_hostname"] = local_hostname;
        config["metadata_server"] = metadata_server;
        config["protocol"] = protocol;
        config["device_name"] = device_name;
        self.cast<engine&>().initialize(self, config, std::nullopt);
        return 0;
      },
      py::arg("local_hostname"), py::arg("metadata_server"), py::arg("protocol"),
      py::arg("device_name"),
      "Mooncake's form: returns 0 (failures raise kvferry.Error).")
    .def_property_readonly("segment_name", &engine::segment_name,
                           "This engine's segment name (\"host:port\" for peers).")
    .def("register_memory", &engine::register_memory, py::arg("memory"),
         py::arg("length") = py::none(), py::arg("location") = "cpu:0",
         "Registers a writable buffer object (kept in place until unregistered) or an int "
         "address with its length (\"cuda:N\" location for device memory).")
    .def("unregister_memory", &engine::unregister_memory, py::arg("memory"),
         "Unregisters the region starting at an address or at a registered buffer object.")
    .def("open_segment", &engine::open_segment, py::arg("name"),
         "Opens a segment (\"host:port\") and returns its id.")
    .def("segment_regions", &engine::segment_regions, py::arg("segment"),
         "[(base, length)] of the regions an opened segment registered.")
    .def("allocate_batch", &engine::allocate_batch, py::arg("capacity"))
    .def("free_batch", &engine::free_batch, py::arg("batch"),
         "Frees the batch at any time (unresolved tasks end CANCELED).")
    .def("submit", &engine::submit, py::arg("batch"), py::arg("requests"),
         py::arg("deadline") = py::none(), py::arg("notify") = py::none(),
         "Submits [(op, local_addr, segment, remote_addr, length)] as the batch's next tasks, "
         "all or none; returns the first task's index. deadline: seconds per task (None: "
         "task_deadline_ms); notify: a message sent to the target once every task completed.")
    .def("status", &engine::status, py::arg("batch"), py::arg("task"))
    .def("batch_status", &engine::batch_status, py::arg("batch"),
         "The batch's BatchSummary now, without waiting.")
    .def("statuses", &engine::statuses, py::arg("batch"),
         "[TransferStatus] of every submitted task, in one call.")
    .def("wait", &engine::wait, py::arg("batch"), py::arg("timeout") = py::none(),
         "Waits until every submitted task is terminal (timeout in seconds; raises "
         "kvferry.Error 'timeout' after it) and returns the BatchSummary.")
    .def("notify", &engine::notify, py::arg("segment"), py::arg("message"),
         "Sends a short message (bytes or str, at most 64 KiB) to a segment's engine.")
    .def("get_notifies", &engine::get_notifies,
         "Takes the notifications received so far: [(sender segment name, message bytes)].")
    .def("close", &engine::close,
         "Stops the engine (unresolved tasks end CANCELED) and releases registered buffers. "
         "Idempotent; also done at interpreter exit.")
    .def("_forget", &engine::forget)
    .def("__enter__", [](py::object self) { return self; })
    .def("__exit__", [](engine& e, py::args) { e.close(); });
}

} // namespace kvferry::python
