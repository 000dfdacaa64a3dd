// The C API's transfer engine: kvferry_engine_* over kvferry::transfer_engine.
#include <cstring>
#include <exception>
#include <new>
#include <vector>

#include "actors/capi/handles.hpp"

using namespace kvferry;
using capi::fail;
using capi::guarded;

namespace {

int closed() {
  return fail(errc::shutting_down, "the engine was closed");
}

int null_argument(const char* call, const char* what) {
  return fail(errc::invalid_argument, std::string(call) + ": " + what + " is NULL");
}

kvferry_batch_summary summary_of(const batch_summary& s) {
  return {s.tasks,  s.waiting, s.pending,  s.completed,
          s.failed, s.timeout, s.canceled, s.transferred_bytes};
}

} // namespace

extern "C" {

int kvferry_engine_create(const char* config, const char* segment_name, kvferry_engine** out) {
  return guarded([&]() -> int {
    if (out == nullptr)
      return null_argument("kvferry_engine_create", "out");
    *out = nullptr;
    auto settings = capi::load_settings(config);
    if (!settings)
      return fail(settings.error());
    auto rt = runtime::create({.network = true});
    if (!rt)
      return fail(rt.error());
    engine_options options;
    if (segment_name != nullptr)
      options.segment_name = segment_name;
    auto engine = transfer_engine::create(*rt, *settings, std::move(options));
    if (!engine)
      return fail(engine.error());
    auto handle = std::make_unique<kvferry_engine>();
    handle->runtime = std::move(*rt);
    handle->engine = std::move(*engine);
    handle->name = handle->engine->segment_name();
    *out = handle.release();
    return KVFERRY_OK;
  });
}

void kvferry_engine_close(kvferry_engine* engine) {
  if (engine == nullptr)
    return;
  (void) guarded([&]() -> int {
    {
      // Shutting down first makes waits in progress return (their tasks end CANCELED).
      capi::lifecycle::hold hold(engine->life);
      if (hold.ok())
        engine->engine->shutdown();
    }
    engine->life.close([&] {
      engine->engine.reset();
      engine->runtime.reset();
    });
    return KVFERRY_OK;
  });
}

void kvferry_engine_destroy(kvferry_engine* engine) {
  if (engine == nullptr)
    return;
  kvferry_engine_close(engine);
  delete engine;
}

const char* kvferry_engine_segment_name(const kvferry_engine* engine) {
  return engine == nullptr ? "" : engine->name.c_str();
}

int kvferry_engine_register_memory(kvferry_engine* engine, void* addr, size_t length,
                                   const char* location) {
  if (engine == nullptr)
    return null_argument("kvferry_engine_register_memory", "engine");
  return guarded([&]() -> int {
    capi::lifecycle::hold hold(engine->life);
    if (!hold.ok())
      return closed();
    return fail(engine->engine->register_memory(addr, length, location ? location : "cpu:0"));
  });
}

int kvferry_engine_unregister_memory(kvferry_engine* engine, void* addr) {
  if (engine == nullptr)
    return null_argument("kvferry_engine_unregister_memory", "engine");
  return guarded([&]() -> int {
    capi::lifecycle::hold hold(engine->life);
    if (!hold.ok())
      return closed();
    return fail(engine->engine->unregister_memory(addr));
  });
}

int kvferry_engine_open_segment(kvferry_engine* engine, const char* name, kvferry_segment_id* out) {
  if (engine == nullptr || name == nullptr || out == nullptr)
    return null_argument("kvferry_engine_open_segment", "engine, name or out");
  return guarded([&]() -> int {
    capi::lifecycle::hold hold(engine->life);
    if (!hold.ok())
      return closed();
    auto id = engine->engine->open_segment(name);
    if (!id)
      return fail(id.error());
    *out = *id;
    return KVFERRY_OK;
  });
}

int kvferry_engine_segment_region(kvferry_engine* engine, kvferry_segment_id segment, size_t index,
                                  uint64_t* base, uint64_t* length) {
  if (engine == nullptr || base == nullptr || length == nullptr)
    return null_argument("kvferry_engine_segment_region", "engine, base or length");
  return guarded([&]() -> int {
    capi::lifecycle::hold hold(engine->life);
    if (!hold.ok())
      return closed();
    if (segment > UINT32_MAX)
      return fail(errc::unknown_segment, "segment id " + std::to_string(segment) + " is not open");
    auto desc = engine->engine->segment_descriptor(static_cast<segment_id>(segment));
    if (!desc)
      return fail(desc.error());
    if (index >= desc->regions.size())
      return fail(errc::out_of_range, "segment '" + desc->name + "' has "
                                        + std::to_string(desc->regions.size())
                                        + " regions; region " + std::to_string(index)
                                        + " does not exist");
    *base = desc->regions[index].base;
    *length = desc->regions[index].length;
    return KVFERRY_OK;
  });
}

int kvferry_engine_allocate_batch(kvferry_engine* engine, size_t capacity, kvferry_batch_id* out) {
  if (engine == nullptr || out == nullptr)
    return null_argument("kvferry_engine_allocate_batch", "engine or out");
  return guarded([&]() -> int {
    capi::lifecycle::hold hold(engine->life);
    if (!hold.ok())
      return closed();
    auto batch = engine->engine->allocate_batch(capacity);
    if (!batch)
      return fail(batch.error());
    *out = *batch;
    return KVFERRY_OK;
  });
}

int kvferry_engine_free_batch(kvferry_engine* engine, kvferry_batch_id batch) {
  if (engine == nullptr)
    return null_argument("kvferry_engine_free_batch", "engine");
  return guarded([&]() -> int {
    capi::lifecycle::hold hold(engine->life);
    if (!hold.ok())
      return closed();
    return fail(engine->engine->free_batch(batch));
  });
}

int kvferry_engine_submit(kvferry_engine* engine, kvferry_batch_id batch,
                          const kvferry_transfer_request* requests, size_t count,
                          uint64_t deadline_ms, const char* notify, uint32_t* first) {
  if (engine == nullptr || (requests == nullptr && count > 0))
    return null_argument("kvferry_engine_submit", "engine or requests");
  return guarded([&]() -> int {
    capi::lifecycle::hold hold(engine->life);
    if (!hold.ok())
      return closed();
    std::vector<transfer_request> converted(count);
    for (size_t i = 0; i < count; ++i) {
      const auto& r = requests[i];
      if (r.opcode != KVFERRY_READ && r.opcode != KVFERRY_WRITE)
        return fail(errc::invalid_argument, "request " + std::to_string(i) + ": opcode "
                                              + std::to_string(r.opcode)
                                              + " is neither KVFERRY_READ nor KVFERRY_WRITE");
      if (r.segment > UINT32_MAX)
        return fail(errc::unknown_segment, "request " + std::to_string(i) + ": segment id "
                                             + std::to_string(r.segment) + " is not open");
      converted[i] = transfer_request{r.opcode == KVFERRY_READ ? opcode::read : opcode::write,
                                      r.local, static_cast<segment_id>(r.segment), r.remote,
                                      r.length};
    }
    submit_options options;
    options.deadline = std::chrono::milliseconds(deadline_ms);
    if (notify != nullptr)
      options.notify = std::string(notify);
    auto at = engine->engine->submit(batch, converted, std::move(options));
    if (!at)
      return fail(at.error());
    if (first != nullptr)
      *first = *at;
    return KVFERRY_OK;
  });
}

int kvferry_engine_status(kvferry_engine* engine, kvferry_batch_id batch, uint32_t task,
                          kvferry_transfer_status* out) {
  if (engine == nullptr || out == nullptr)
    return null_argument("kvferry_engine_status", "engine or out");
  return guarded([&]() -> int {
    capi::lifecycle::hold hold(engine->life);
    if (!hold.ok())
      return closed();
    auto st = engine->engine->status(batch, task);
    if (!st)
      return fail(st.error());
    out->state = static_cast<int>(st->state);
    out->transferred_bytes = st->transferred_bytes;
    out->code = static_cast<int>(st->code);
    const size_t n = std::min(st->reason.size(), sizeof(out->reason) - 1);
    std::memcpy(out->reason, st->reason.data(), n);
    out->reason[n] = '\0';
    return KVFERRY_OK;
  });
}

int kvferry_engine_batch_status(kvferry_engine* engine, kvferry_batch_id batch,
                                kvferry_batch_summary* out) {
  if (engine == nullptr || out == nullptr)
    return null_argument("kvferry_engine_batch_status", "engine or out");
  return guarded([&]() -> int {
    capi::lifecycle::hold hold(engine->life);
    if (!hold.ok())
      return closed();
    auto summary = engine->engine->batch_status(batch);
    if (!summary)
      return fail(summary.error());
    *out = summary_of(*summary);
    return KVFERRY_OK;
  });
}

int kvferry_engine_wait(kvferry_engine* engine, kvferry_batch_id batch, uint64_t timeout_ms,
                        kvferry_batch_summary* out) {
  if (engine == nullptr)
    return null_argument("kvferry_engine_wait", "engine");
  return guarded([&]() -> int {
    capi::lifecycle::hold hold(engine->life);
    if (!hold.ok())
      return closed();
    auto summary = engine->engine->wait(batch, std::chrono::milliseconds(timeout_ms));
    if (!summary)
      return fail(summary.error());
    if (out != nullptr)
      *out = summary_of(*summary);
    return KVFERRY_OK;
  });
}

int kvferry_engine_notify(kvferry_engine* engine, kvferry_segment_id segment, const void* message,
                          size_t length) {
  if (engine == nullptr || (message == nullptr && length > 0))
    return null_argument("kvferry_engine_notify", "engine or message");
  return guarded([&]() -> int {
    capi::lifecycle::hold hold(engine->life);
    if (!hold.ok())
      return closed();
    if (segment > UINT32_MAX)
      return fail(errc::unknown_segment, "segment id " + std::to_string(segment) + " is not open");
    return fail(engine->engine->notify(static_cast<segment_id>(segment),
                                       std::string(static_cast<const char*>(message), length)));
  });
}

int kvferry_engine_get_notifies(kvferry_engine* engine,
                                void (*fn)(void* user, const char* from, const void* message,
                                           size_t length),
                                void* user) {
  if (engine == nullptr || fn == nullptr)
    return null_argument("kvferry_engine_get_notifies", "engine or fn");
  return guarded([&]() -> int {
    std::vector<notification> taken;
    {
      capi::lifecycle::hold hold(engine->life);
      if (!hold.ok())
        return closed();
      auto got = engine->engine->get_notifies();
      if (!got)
        return fail(got.error());
      taken = std::move(*got);
    }
    // Outside the hold: the callback may call into the engine, even close it.
    for (const auto& n : taken)
      fn(user, n.from.c_str(), n.message.data(), n.message.size());
    return KVFERRY_OK;
  });
}

} // extern "C"
