// The C API's store client: kvferry_store_* over kvferry::store::client.
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "actors/capi/handles.hpp"

using namespace kvferry;
using capi::fail;
using capi::guarded;

namespace {

int closed() {
  return fail(errc::shutting_down, "the store client was closed");
}

int null_argument(const char* call, const char* what) {
  return fail(errc::invalid_argument, std::string(call) + ": " + what + " is NULL");
}

store::put_options options_of(const kvferry_put_options* o) {
  store::put_options out;
  if (o == nullptr)
    return out;
  out.replicas = static_cast<uint8_t>(o->replicas == 0 ? 1 : std::min<uint32_t>(o->replicas, 255));
  out.pin = o->pin != 0;
  out.upsert = o->upsert != 0;
  out.checksum = o->checksum != 0;
  out.deadline = std::chrono::milliseconds(o->deadline_ms);
  return out;
}

/// Entry results into `results` (may be NULL); the first failing entry's code, or 0.
template <class Results, class Each>
int batch_results(const Results& got, int* results, Each each) {
  int first = KVFERRY_OK;
  for (size_t i = 0; i < got.size(); ++i) {
    const caf::error err = each(i);
    const int code = capi::code_of_error(err);
    if (results != nullptr)
      results[i] = code;
    if (code != KVFERRY_OK && first == KVFERRY_OK)
      first = fail(err);
  }
  return first;
}

std::vector<std::string> keys_of(const char* const* keys, size_t count, int& error) {
  std::vector<std::string> out;
  out.reserve(count);
  for (size_t i = 0; i < count; ++i) {
    if (keys[i] == nullptr) {
      error = fail(errc::invalid_argument, "key " + std::to_string(i) + " is NULL");
      return {};
    }
    out.emplace_back(keys[i]);
  }
  return out;
}

} // namespace

extern "C" {

int kvferry_store_create(const char* config, kvferry_store** out) {
  return guarded([&]() -> int {
    if (out == nullptr)
      return null_argument("kvferry_store_create", "out");
    *out = nullptr;
    auto settings = capi::load_settings(config);
    if (!settings)
      return fail(settings.error());
    auto client = store::client::create(*settings);
    if (!client)
      return fail(client.error());
    auto handle = std::make_unique<kvferry_store>();
    handle->client = std::move(*client);
    *out = handle.release();
    return KVFERRY_OK;
  });
}

void kvferry_store_close(kvferry_store* store) {
  if (store == nullptr)
    return;
  (void) guarded([&]() -> int {
    store->life.close([&] {
      store->client->close();
      store->client.reset();
    });
    return KVFERRY_OK;
  });
}

void kvferry_store_destroy(kvferry_store* store) {
  if (store == nullptr)
    return;
  kvferry_store_close(store);
  delete store;
}

int kvferry_store_put(kvferry_store* store, const char* key, const void* value, size_t size,
                      const kvferry_put_options* options) {
  if (store == nullptr || key == nullptr || (value == nullptr && size > 0))
    return null_argument("kvferry_store_put", "store, key or value");
  return guarded([&]() -> int {
    capi::lifecycle::hold hold(store->life);
    if (!hold.ok())
      return closed();
    return fail(store->client->put(key, {static_cast<const uint8_t*>(value), size},
                                   options_of(options)));
  });
}

int kvferry_store_put_from(kvferry_store* store, const char* key, const void* addr, size_t size,
                           const kvferry_put_options* options) {
  if (store == nullptr || key == nullptr)
    return null_argument("kvferry_store_put_from", "store or key");
  return guarded([&]() -> int {
    capi::lifecycle::hold hold(store->life);
    if (!hold.ok())
      return closed();
    return fail(store->client->put_from(key, addr, size, options_of(options)));
  });
}

int kvferry_store_get(kvferry_store* store, const char* key, void** value, size_t* size) {
  if (store == nullptr || key == nullptr || value == nullptr || size == nullptr)
    return null_argument("kvferry_store_get", "store, key, value or size");
  return guarded([&]() -> int {
    *value = nullptr;
    *size = 0;
    capi::lifecycle::hold hold(store->life);
    if (!hold.ok())
      return closed();
    auto got = store->client->get(key);
    if (!got)
      return fail(got.error());
    // malloc(0) may return NULL: one byte keeps "found, empty" apart from a failure.
    void* copy = std::malloc(got->empty() ? 1 : got->size());
    if (copy == nullptr)
      return capi::fail_other("out of memory for a value of " + std::to_string(got->size())
                              + " bytes");
    if (!got->empty())
      std::memcpy(copy, got->data(), got->size());
    *value = copy;
    *size = got->size();
    return KVFERRY_OK;
  });
}

int kvferry_store_get_into(kvferry_store* store, const char* key, void* addr, size_t capacity,
                           size_t* size) {
  if (store == nullptr || key == nullptr)
    return null_argument("kvferry_store_get_into", "store or key");
  return guarded([&]() -> int {
    capi::lifecycle::hold hold(store->life);
    if (!hold.ok())
      return closed();
    auto got = store->client->get_into(key, addr, capacity);
    if (!got)
      return fail(got.error());
    if (size != nullptr)
      *size = *got;
    return KVFERRY_OK;
  });
}

int kvferry_store_remove(kvferry_store* store, const char* key, int force) {
  if (store == nullptr || key == nullptr)
    return null_argument("kvferry_store_remove", "store or key");
  return guarded([&]() -> int {
    capi::lifecycle::hold hold(store->life);
    if (!hold.ok())
      return closed();
    return fail(store->client->remove(key, force != 0));
  });
}

int kvferry_store_exists(kvferry_store* store, const char* key, int* exists) {
  if (store == nullptr || key == nullptr || exists == nullptr)
    return null_argument("kvferry_store_exists", "store, key or exists");
  return guarded([&]() -> int {
    capi::lifecycle::hold hold(store->life);
    if (!hold.ok())
      return closed();
    auto got = store->client->exists(key);
    if (!got)
      return fail(got.error());
    *exists = *got ? 1 : 0;
    return KVFERRY_OK;
  });
}

int kvferry_store_register_buffer(kvferry_store* store, void* addr, size_t size,
                                  const char* location) {
  if (store == nullptr)
    return null_argument("kvferry_store_register_buffer", "store");
  return guarded([&]() -> int {
    capi::lifecycle::hold hold(store->life);
    if (!hold.ok())
      return closed();
    return fail(store->client->register_buffer(addr, size, location ? location : "cpu:0"));
  });
}

int kvferry_store_unregister_buffer(kvferry_store* store, void* addr) {
  if (store == nullptr)
    return null_argument("kvferry_store_unregister_buffer", "store");
  return guarded([&]() -> int {
    capi::lifecycle::hold hold(store->life);
    if (!hold.ok())
      return closed();
    return fail(store->client->unregister_buffer(addr));
  });
}

int kvferry_store_batch_put_from(kvferry_store* store, const char* const* keys,
                                 const void* const* addrs, const size_t* sizes, size_t count,
                                 const kvferry_put_options* options, int* results) {
  if (store == nullptr || (count > 0 && (keys == nullptr || addrs == nullptr || sizes == nullptr)))
    return null_argument("kvferry_store_batch_put_from", "store, keys, addrs or sizes");
  return guarded([&]() -> int {
    capi::lifecycle::hold hold(store->life);
    if (!hold.ok())
      return closed();
    int error = KVFERRY_OK;
    auto k = keys_of(keys, count, error);
    if (error != KVFERRY_OK)
      return error;
    auto got = store->client->batch_put_from(k, {addrs, count}, {sizes, count},
                                             options_of(options));
    return batch_results(got, results, [&](size_t i) { return got[i]; });
  });
}

int kvferry_store_batch_get_into(kvferry_store* store, const char* const* keys,
                                 void* const* addrs, const size_t* capacities, size_t count,
                                 int* results, size_t* sizes) {
  if (store == nullptr
      || (count > 0 && (keys == nullptr || addrs == nullptr || capacities == nullptr)))
    return null_argument("kvferry_store_batch_get_into", "store, keys, addrs or capacities");
  return guarded([&]() -> int {
    capi::lifecycle::hold hold(store->life);
    if (!hold.ok())
      return closed();
    int error = KVFERRY_OK;
    auto k = keys_of(keys, count, error);
    if (error != KVFERRY_OK)
      return error;
    auto got = store->client->batch_get_into(k, {addrs, count}, {capacities, count});
    return batch_results(got, results, [&](size_t i) {
      if (sizes != nullptr)
        sizes[i] = got[i] ? *got[i] : 0;
      return got[i] ? caf::error{} : got[i].error();
    });
  });
}

int kvferry_store_batch_exists(kvferry_store* store, const char* const* keys, size_t count,
                               int* results, int* exists) {
  if (store == nullptr || (count > 0 && keys == nullptr))
    return null_argument("kvferry_store_batch_exists", "store or keys");
  return guarded([&]() -> int {
    capi::lifecycle::hold hold(store->life);
    if (!hold.ok())
      return closed();
    int error = KVFERRY_OK;
    auto k = keys_of(keys, count, error);
    if (error != KVFERRY_OK)
      return error;
    auto got = store->client->batch_exists(k);
    return batch_results(got, results, [&](size_t i) {
      if (exists != nullptr)
        exists[i] = got[i] && *got[i] ? 1 : 0;
      return got[i] ? caf::error{} : got[i].error();
    });
  });
}

int kvferry_store_master_stats(kvferry_store* store, char** json) {
  if (store == nullptr || json == nullptr)
    return null_argument("kvferry_store_master_stats", "store or json");
  return guarded([&]() -> int {
    *json = nullptr;
    capi::lifecycle::hold hold(store->life);
    if (!hold.ok())
      return closed();
    auto report = store->client->master_stats();
    if (!report)
      return fail(report.error());
    auto* copy = static_cast<char*>(std::malloc(report->size() + 1));
    if (copy == nullptr)
      return capi::fail_other("out of memory for the master's report");
    std::memcpy(copy, report->data(), report->size());
    copy[report->size()] = '\0';
    *json = copy;
    return KVFERRY_OK;
  });
}

} // extern "C"
