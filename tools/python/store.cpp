// kvferry.DistributedStore (also kvferry.MooncakeDistributedStore): the store client with the
// method names, argument orders and return codes of Mooncake's Python store, so that a
// connector written for it needs only its import changed. Calls return 0 / a negative code
// (store_code in binding.hpp), never raise on a store error; kvferry.last_error() has the message.
// Every call into the store runs with the GIL released.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <pybind11/stl.h>

#include "tools/python/binding.hpp"

namespace kvferry::python {

namespace {

/// Mooncake's defaults for setup()'s positional form.
constexpr uint64_t default_global_segment_size = 3355443200ULL;
constexpr uint64_t default_local_buffer_size = 1ULL << 30;

int failed(int code) {
  return store_code(note_failure(code));
}

kvferry_put_options put_options(uint32_t replicas, bool pin, bool upsert, bool checksum) {
  kvferry_put_options o{};
  o.replicas = replicas;
  o.pin = pin ? 1 : 0;
  o.upsert = upsert ? 1 : 0;
  o.checksum = checksum ? 1 : 0;
  return o;
}

/// Addresses of a batch: ints, or buffer objects (held by `views` while the call runs).
std::vector<void*> addresses_of(const py::sequence& ptrs, bool writable,
                                std::vector<std::shared_ptr<buffer_view>>& views) {
  std::vector<void*> out;
  out.reserve(ptrs.size());
  for (auto p : ptrs) {
    if (PyLong_Check(p.ptr())) {
      out.push_back(reinterpret_cast<void*>(static_cast<uintptr_t>(p.cast<uint64_t>())));
    } else {
      auto m = memory_of(p, std::nullopt, writable, "buffer_ptrs");
      out.push_back(m.addr);
      views.push_back(std::move(m.view));
    }
  }
  return out;
}

std::vector<const char*> pointers_of(const std::vector<std::string>& keys) {
  std::vector<const char*> out;
  out.reserve(keys.size());
  for (const auto& k : keys)
    out.push_back(k.c_str());
  return out;
}

class store {
public:
  store() = default;
  ~store() {
    if (handle_ == nullptr)
      return;
    if (!closed_) {
      py::gil_scoped_release unlocked;
      kvferry_store_destroy(handle_);
    } else {
      kvferry_store_destroy(handle_); // closed: only frees
    }
  }
  store(const store&) = delete;
  store& operator=(const store&) = delete;

  int setup(py::handle self, py::handle config) {
    if (handle_ != nullptr || starting_ || forked_ || closed_)
      return store_code(note_failure(KVFERRY_ERR_INVALID_ARGUMENT,
                                     "DistributedStore: setup() was already called"));
    auto text = config_text(config);
    starting_ = true;
    kvferry_store* h = nullptr;
    int rc;
    {
      py::gil_scoped_release unlocked;
      rc = kvferry_store_create(text ? text->c_str() : nullptr, &h);
    }
    starting_ = false;
    if (rc != KVFERRY_OK)
      return failed(rc);
    handle_ = h;
    track(self);
    return 0;
  }

  int put(const std::string& key, py::handle value, const kvferry_put_options& o) {
    auto* h = live();
    if (h == nullptr)
      return not_live();
    buffer_view view(value, false);
    int rc;
    {
      py::gil_scoped_release unlocked;
      rc = kvferry_store_put(h, key.c_str(), view.data(), view.size(), &o);
    }
    return rc == KVFERRY_OK ? 0 : failed(rc);
  }

  int put_from(const std::string& key, py::handle ptr, std::optional<uint64_t> size,
               const kvferry_put_options& o) {
    auto* h = live();
    if (h == nullptr)
      return not_live();
    auto m = memory_of(ptr, size, false, "put_from");
    int rc;
    {
      py::gil_scoped_release unlocked;
      rc = kvferry_store_put_from(h, key.c_str(), m.addr, m.length, &o);
    }
    return rc == KVFERRY_OK ? 0 : failed(rc);
  }

  py::bytes get(const std::string& key) {
    auto* h = live();
    if (h == nullptr)
      return py::bytes();
    void* value = nullptr;
    size_t size = 0;
    int rc;
    {
      py::gil_scoped_release unlocked;
      rc = kvferry_store_get(h, key.c_str(), &value, &size);
    }
    if (rc != KVFERRY_OK) {
      failed(rc);
      return py::bytes(); // Mooncake's get: empty bytes when missing (or on any failure)
    }
    std::unique_ptr<void, decltype(&kvferry_free)> owned(value, &kvferry_free);
    return py::bytes(static_cast<const char*>(value), size);
  }

  int64_t get_into(const std::string& key, py::handle ptr, std::optional<uint64_t> size) {
    auto* h = live();
    if (h == nullptr)
      return not_live();
    auto m = memory_of(ptr, size, true, "get_into");
    size_t got = 0;
    int rc;
    {
      py::gil_scoped_release unlocked;
      rc = kvferry_store_get_into(h, key.c_str(), m.addr, m.length, &got);
    }
    return rc == KVFERRY_OK ? static_cast<int64_t>(got) : failed(rc);
  }

  int is_exist(const std::string& key) {
    auto* h = live();
    if (h == nullptr)
      return not_live();
    int exists = 0;
    int rc;
    {
      py::gil_scoped_release unlocked;
      rc = kvferry_store_exists(h, key.c_str(), &exists);
    }
    return rc == KVFERRY_OK ? exists : failed(rc);
  }

  int remove(const std::string& key, bool force) {
    auto* h = live();
    if (h == nullptr)
      return not_live();
    int rc;
    {
      py::gil_scoped_release unlocked;
      rc = kvferry_store_remove(h, key.c_str(), force ? 1 : 0);
    }
    return rc == KVFERRY_OK ? 0 : failed(rc);
  }

  int register_buffer(py::handle ptr, std::optional<uint64_t> size, const std::string& location) {
    auto* h = live();
    if (h == nullptr)
      return not_live();
    // The store READs objects into registered memory: a buffer object must be writable.
    auto m = memory_of(ptr, size, true, "register_buffer");
    int rc;
    {
      py::gil_scoped_release unlocked;
      rc = kvferry_store_register_buffer(h, m.addr, m.length, location.c_str());
    }
    if (rc != KVFERRY_OK)
      return failed(rc);
    if (m.view)
      pinned_[reinterpret_cast<uintptr_t>(m.addr)] = std::move(m.view);
    return 0;
  }

  int unregister_buffer(py::handle ptr) {
    auto* h = live();
    if (h == nullptr)
      return not_live();
    void* addr = PyLong_Check(ptr.ptr())
                   ? reinterpret_cast<void*>(static_cast<uintptr_t>(ptr.cast<uint64_t>()))
                   : memory_of(ptr, std::nullopt, false, "unregister_buffer").addr;
    int rc;
    {
      py::gil_scoped_release unlocked;
      rc = kvferry_store_unregister_buffer(h, addr);
    }
    if (rc != KVFERRY_OK)
      return failed(rc);
    pinned_.erase(reinterpret_cast<uintptr_t>(addr));
    return 0;
  }

  std::vector<int> batch_put_from(const std::vector<std::string>& keys, const py::sequence& ptrs,
                                  const std::vector<uint64_t>& sizes,
                                  const kvferry_put_options& o) {
    if (ptrs.size() != keys.size() || sizes.size() != keys.size())
      throw py::value_error("batch_put_from: keys, buffer_ptrs and sizes differ in length");
    auto* h = live();
    if (h == nullptr)
      return std::vector<int>(keys.size(), not_live());
    std::vector<std::shared_ptr<buffer_view>> views;
    auto addrs = addresses_of(ptrs, false, views);
    std::vector<const void*> sources(addrs.begin(), addrs.end());
    std::vector<size_t> lengths(sizes.begin(), sizes.end());
    auto k = pointers_of(keys);
    std::vector<int> results(keys.size(), KVFERRY_OK);
    int rc;
    {
      py::gil_scoped_release unlocked;
      rc = kvferry_store_batch_put_from(h, k.data(), sources.data(), lengths.data(), k.size(), &o,
                                        results.data());
    }
    if (rc != KVFERRY_OK)
      note_failure(rc);
    for (auto& r : results)
      r = store_code(r);
    return results;
  }

  std::vector<int64_t> batch_get_into(const std::vector<std::string>& keys,
                                      const py::sequence& ptrs,
                                      const std::vector<uint64_t>& sizes) {
    if (ptrs.size() != keys.size() || sizes.size() != keys.size())
      throw py::value_error("batch_get_into: keys, buffer_ptrs and sizes differ in length");
    auto* h = live();
    if (h == nullptr)
      return std::vector<int64_t>(keys.size(), not_live());
    std::vector<std::shared_ptr<buffer_view>> views;
    auto addrs = addresses_of(ptrs, true, views);
    std::vector<size_t> capacities(sizes.begin(), sizes.end());
    auto k = pointers_of(keys);
    std::vector<int> results(keys.size(), KVFERRY_OK);
    std::vector<size_t> got(keys.size(), 0);
    int rc;
    {
      py::gil_scoped_release unlocked;
      rc = kvferry_store_batch_get_into(h, k.data(), addrs.data(), capacities.data(), k.size(),
                                        results.data(), got.data());
    }
    if (rc != KVFERRY_OK)
      note_failure(rc);
    std::vector<int64_t> out(keys.size());
    for (size_t i = 0; i < keys.size(); ++i)
      out[i] = results[i] == KVFERRY_OK ? static_cast<int64_t>(got[i]) : store_code(results[i]);
    return out;
  }

  std::vector<int> batch_is_exist(const std::vector<std::string>& keys) {
    auto* h = live();
    if (h == nullptr)
      return std::vector<int>(keys.size(), not_live());
    auto k = pointers_of(keys);
    std::vector<int> results(keys.size(), KVFERRY_OK), exists(keys.size(), 0);
    int rc;
    {
      py::gil_scoped_release unlocked;
      rc = kvferry_store_batch_exists(h, k.data(), k.size(), results.data(), exists.data());
    }
    if (rc != KVFERRY_OK)
      note_failure(rc);
    for (size_t i = 0; i < keys.size(); ++i)
      exists[i] = results[i] == KVFERRY_OK ? exists[i] : store_code(results[i]);
    return exists;
  }

  py::object master_stats() {
    auto* h = live();
    if (h == nullptr)
      raise_last_error(KVFERRY_ERR_SHUTTING_DOWN);
    char* json = nullptr;
    int rc;
    {
      py::gil_scoped_release unlocked;
      rc = kvferry_store_master_stats(h, &json);
    }
    check(rc);
    std::unique_ptr<char, decltype(&kvferry_free)> owned(json, &kvferry_free);
    return py::module_::import("json").attr("loads")(py::str(json));
  }

  int close() {
    if (handle_ == nullptr || closed_)
      return 0;
    closed_ = true;
    {
      py::gil_scoped_release unlocked;
      kvferry_store_close(handle_);
    }
    pinned_.clear();
    return 0;
  }

  /// After fork(), in the child: the handle belongs to the parent's threads; drop it unused
  /// (calls fail as after close()).
  void forget() {
    handle_ = nullptr;
    forked_ = true;
    pinned_.clear();
  }

private:
  /// The handle, or nullptr (with the module's last error set) before setup() or after close().
  kvferry_store* live() const {
    if (forked_) {
      note_failure(KVFERRY_ERR_SHUTTING_DOWN, "DistributedStore: the store belongs to the process "
                                              "that forked this one");
      return nullptr;
    }
    if (handle_ == nullptr) {
      note_failure(KVFERRY_ERR_SHUTTING_DOWN, "DistributedStore: setup() was not called");
      return nullptr;
    }
    if (closed_) {
      note_failure(KVFERRY_ERR_SHUTTING_DOWN, "DistributedStore: the store was closed");
      return nullptr;
    }
    return handle_;
  }
  static int not_live() { return store_code(KVFERRY_ERR_SHUTTING_DOWN); }

  kvferry_store* handle_ = nullptr;
  bool starting_ = false;
  bool closed_ = false;
  bool forked_ = false;
  /// Buffer objects registered as objects, kept in place until unregistered or closed.
  std::map<uintptr_t, std::shared_ptr<buffer_view>> pinned_;
};

py::dict setup_config(py::object local_hostname, py::object metadata_server,
                      py::object global_segment_size, py::object local_buffer_size,
                      py::object protocol, py::object rdma_devices,
                      py::object master_server_addr) {
  py::dict config;
  config["local_hostname"] = local_hostname;
  config["metadata_server"] = metadata_server;
  config["global_segment_size"] = global_segment_size;
  config["local_buffer_size"] = local_buffer_size;
  config["protocol"] = protocol;
  config["device_name"] = rdma_devices;
  config["master_server_address"] = master_server_addr;
  return config;
}

} // namespace

void bind_store(py::module_& m) {
  py::class_<store>(m, "DistributedStore", R"(The store client (README.md, "Python").

Mooncake's Python store surface: setup(...) or setup(dict), put, get, is_exist, remove,
register_buffer, unregister_buffer, put_from, get_into, batch_put_from, batch_get_into,
batch_is_exist, close. Calls return 0 or a negative code (-704 not found, -705 exists, -706 has a
lease, -707 lease expired, -800 transfer failed, -1000 - kvferry.errc for the others; -1 other);
get returns b"" when the key is missing; kvferry.last_error() says why a call failed. Buffers
are ints (addresses, with sizes) or objects with the buffer protocol.)")
    .def(py::init<>())
    .def(
      "setup",
      [](py::object self, py::dict config) {
        // Mooncake's setup() argument names, accepted as keys too.
        py::dict copy;
        for (auto [k, v] : config) {
          std::string key = py::str(k);
          if (key == "rdma_devices")
            key = "device_name";
          else if (key == "master_server_addr")
            key = "master_server_address";
          copy[py::str(key)] = v;
        }
        return self.cast<store&>().setup(self, copy);
      },
      py::arg("config"),
      "Sets up from a dict of config.json's fields; returns 0 or a negative code.")
    .def(
      "setup",
      [](py::object self, py::object local_hostname, py::object metadata_server,
         py::object global_segment_size, py::object local_buffer_size, py::object protocol,
         py::object rdma_devices, py::object master_server_addr) {
        return self.cast<store&>().setup(
          self, setup_config(local_hostname, metadata_server, global_segment_size,
                             local_buffer_size, protocol, rdma_devices, master_server_addr));
      },
      py::arg("local_hostname"), py::arg("metadata_server"),
      py::arg("global_segment_size") = default_global_segment_size,
      py::arg("local_buffer_size") = default_local_buffer_size, py::arg("protocol") = "tcp",
      py::arg("rdma_devices") = "", py::arg("master_server_addr") = "127.0.0.1:50051",
      "Mooncake's positional form (sizes as ints or strings such as \"4GB\"); returns 0 or a "
      "negative code.")
    .def(
      "setup", [](py::object self) { return self.cast<store&>().setup(self, py::none()); },
      "Sets up from the file named by KVFERRY_CONFIG or MOONCAKE_CONFIG_PATH.")
    .def(
      "put",
      [](store& s, const std::string& key, py::handle value, uint32_t replicas, bool pin,
         bool upsert, bool checksum) {
        return s.put(key, value, put_options(replicas, pin, upsert, checksum));
      },
      py::arg("key"), py::arg("value"), py::kw_only(), py::arg("replicas") = 1,
      py::arg("pin") = false, py::arg("upsert") = false, py::arg("checksum") = false,
      "Puts a copy of a bytes-like value; 0 or a negative code (-705 when the key exists).")
    .def(
      "put_from",
      [](store& s, const std::string& key, py::handle ptr, std::optional<uint64_t> size,
         uint32_t replicas, bool pin, bool upsert, bool checksum) {
        return s.put_from(key, ptr, size, put_options(replicas, pin, upsert, checksum));
      },
      py::arg("key"), py::arg("buffer_ptr"), py::arg("size") = py::none(), py::kw_only(),
      py::arg("replicas") = 1, py::arg("pin") = false, py::arg("upsert") = false,
      py::arg("checksum") = false,
      "Puts size bytes of registered memory (no copy); 0 or a negative code.")
    .def("get", &store::get, py::arg("key"),
         "The object's bytes; b\"\" when it is missing (or the get failed: kvferry.last_error()).")
    .def("get_into", &store::get_into, py::arg("key"), py::arg("buffer_ptr"),
         py::arg("size") = py::none(),
         "Reads the object into registered memory; bytes read or a negative code.")
    .def("is_exist", &store::is_exist, py::arg("key"), "1, 0, or a negative code.")
    .def("remove", &store::remove, py::arg("key"), py::arg("force") = false,
         "0 or a negative code (-706 while a get holds a lease on it, unless force).")
    .def("register_buffer", &store::register_buffer, py::arg("buffer_ptr"),
         py::arg("size") = py::none(), py::arg("location") = "cpu:0",
         "Registers memory for put_from / get_into: an int address and size, or a writable "
         "buffer object (kept in place until unregistered); 0 or a negative code.")
    .def("unregister_buffer", &store::unregister_buffer, py::arg("buffer_ptr"))
    .def(
      "batch_put_from",
      [](store& s, const std::vector<std::string>& keys, const py::sequence& ptrs,
         const std::vector<uint64_t>& sizes, uint32_t replicas, bool pin, bool upsert,
         bool checksum) {
        return s.batch_put_from(keys, ptrs, sizes, put_options(replicas, pin, upsert, checksum));
      },
      py::arg("keys"), py::arg("buffer_ptrs"), py::arg("sizes"), py::kw_only(),
      py::arg("replicas") = 1, py::arg("pin") = false, py::arg("upsert") = false,
      py::arg("checksum") = false, "One code per key (0 or negative).")
    .def("batch_get_into", &store::batch_get_into, py::arg("keys"), py::arg("buffer_ptrs"),
         py::arg("sizes"), "Per key: bytes read or a negative code.")
    .def("batch_is_exist", &store::batch_is_exist, py::arg("keys"),
         "Per key: 1, 0, or a negative code.")
    .def("master_stats", &store::master_stats,
         "The master's report as a dict (objects, capacity, clients, counters); raises "
         "kvferry.Error on failure.")
    .def("close", &store::close,
         "Unmounts at the master (at once, no TTL wait) and stops; idempotent, also done at "
         "interpreter exit. Returns 0.")
    .def("_forget", &store::forget)
    .def("__enter__", [](py::object self) { return self; })
    .def("__exit__", [](store& s, py::args) { s.close(); });
}

} // namespace kvferry::python
