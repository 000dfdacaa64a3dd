#ifndef KVFERRY_CAPI_KVFERRY_H
#define KVFERRY_CAPI_KVFERRY_H
/* kvferry's C API: the transfer engine and the store client behind opaque handles, for C
 * programs and for other languages' foreign-function interfaces. C11; link libkvferry_c.
 *
 * Errors: every function that can fail returns an int, 0 on success, otherwise one of the
 * kvferry_errc codes below (the values of C++'s kvferry::errc). kvferry_last_error() returns the
 * message of the last failure in the calling thread ("code: what was wrong"). Nothing aborts or
 * throws on bad input; a NULL handle or output pointer is KVFERRY_ERR_INVALID_ARGUMENT.
 *
 * Threads: every handle may be used from any number of threads at once. Destroying a handle waits
 * for calls in progress on it (each returns within its deadline) and must be the last call on it.
 *
 * Configuration (the `config` argument of the create functions): the path of a config.json, or
 * the JSON text itself when it starts with '{', or NULL for the file named by KVFERRY_CONFIG, else
 * MOONCAKE_CONFIG_PATH, else the embedded defaults. The format is Mooncake's config.json plus
 * kvferry's "kvferry" object (README.md, "Configuration").
 *
 * Versions: KVFERRY_C_API_VERSION is the version of this header; kvferry_c_api_version() that of
 * the library linked. A library serves every header of its major version (version / 10000) with
 * the same or a lower minor number; compare them at start. */

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** major * 10000 + minor: 1.0. */
#define KVFERRY_C_API_VERSION 10000

/** The C API version of the library linked (KVFERRY_C_API_VERSION of its build). */
int kvferry_c_api_version(void);
/** kvferry's release, e.g. "0.1.0". */
const char* kvferry_version(void);

/* -- errors ---------------------------------------------------------------------------------- */

/** The codes of kvferry::errc (config/error.hpp documents each), plus KVFERRY_ERR_OTHER. */
enum kvferry_errc {
  KVFERRY_OK = 0,
  KVFERRY_ERR_INVALID_CONFIG = 1,
  KVFERRY_ERR_INVALID_ARGUMENT = 2,
  KVFERRY_ERR_UNKNOWN_BATCH = 3,
  KVFERRY_ERR_BATCH_FULL = 4,
  KVFERRY_ERR_UNREGISTERED_MEMORY = 5,
  KVFERRY_ERR_OVERLAPPING_REGION = 6,
  KVFERRY_ERR_UNKNOWN_REGION = 7,
  KVFERRY_ERR_UNKNOWN_SEGMENT = 8,
  KVFERRY_ERR_OUT_OF_RANGE = 9,
  KVFERRY_ERR_UNKNOWN_TASK = 10,
  KVFERRY_ERR_TIMEOUT = 11,
  KVFERRY_ERR_TRANSPORT_FAILURE = 12,
  KVFERRY_ERR_PEER_UNREACHABLE = 13,
  KVFERRY_ERR_MALFORMED_FRAME = 14,
  KVFERRY_ERR_NOT_SUPPORTED = 15,
  KVFERRY_ERR_SHUTTING_DOWN = 16,
  KVFERRY_ERR_BUSY = 17,
  KVFERRY_ERR_STALE_INCARNATION = 18,
  KVFERRY_ERR_UNCONFIRMED = 19,
  KVFERRY_ERR_OBJECT_NOT_FOUND = 20,
  KVFERRY_ERR_OBJECT_EXISTS = 21,
  KVFERRY_ERR_OBJECT_HAS_LEASE = 22,
  KVFERRY_ERR_LEASE_EXPIRED = 23,
  KVFERRY_ERR_STORE_FULL = 24,
  KVFERRY_ERR_CHECKSUM_MISMATCH = 25,
  KVFERRY_ERR_NOT_MOUNTED = 26,
  KVFERRY_ERR_FENCED = 27,
  /** Not a kvferry::errc: an error of the actor framework, or out of memory; the message says. */
  KVFERRY_ERR_OTHER = 255
};

/** The message of the last failed call in this thread; "" when none failed. Valid until the
 * thread's next failing call. */
const char* kvferry_last_error(void);
/** The short name of a code ("out_of_range"); "unknown" for a value that is not a code. */
const char* kvferry_error_name(int code);

/** Frees memory kvferry returned (kvferry_store_get, kvferry_store_master_stats). NULL is ok. */
void kvferry_free(void* p);

/* -- transfer engine ------------------------------------------------------------------------- */

typedef struct kvferry_engine kvferry_engine;
typedef uint64_t kvferry_segment_id;
typedef uint64_t kvferry_batch_id;

enum kvferry_opcode { KVFERRY_READ = 0, KVFERRY_WRITE = 1 };

/** Task states, as Mooncake's transfer engine numbers them. */
enum kvferry_task_state {
  KVFERRY_TASK_WAITING = 0,
  KVFERRY_TASK_PENDING = 1,
  KVFERRY_TASK_INVALID = 2,
  KVFERRY_TASK_CANCELED = 3,
  KVFERRY_TASK_COMPLETED = 4,
  KVFERRY_TASK_TIMEOUT = 5,
  KVFERRY_TASK_FAILED = 6
};

/** One transfer: `length` bytes between local memory at `local` and the target segment's memory
 * at address `remote` (inside a region the target registered; kvferry_engine_segment_region). */
typedef struct kvferry_transfer_request {
  int opcode; /* enum kvferry_opcode */
  void* local;
  kvferry_segment_id segment;
  uint64_t remote;
  uint64_t length;
} kvferry_transfer_request;

typedef struct kvferry_transfer_status {
  int state; /* enum kvferry_task_state */
  uint64_t transferred_bytes;
  /** Why a task ended FAILED, TIMEOUT or CANCELED; KVFERRY_OK otherwise. */
  int code;
  /** The reason's text, cut to fit. */
  char reason[256];
} kvferry_transfer_status;

typedef struct kvferry_batch_summary {
  uint32_t tasks, waiting, pending, completed, failed, timeout, canceled;
  uint64_t transferred_bytes;
} kvferry_batch_summary;

/** Creates an engine that serves its segment to other nodes and reaches theirs (TCP).
 * `segment_name`: NULL or "" for "local_hostname:rpc_port". */
int kvferry_engine_create(const char* config, const char* segment_name, kvferry_engine** out);
/** Stops the engine: unresolved tasks end CANCELED, waits in progress return, later calls fail
 * with KVFERRY_ERR_SHUTTING_DOWN. Idempotent; the handle stays valid until destroyed. */
void kvferry_engine_close(kvferry_engine* engine);
/** Closes the engine and frees the handle. NULL is ok. */
void kvferry_engine_destroy(kvferry_engine* engine);
/** This engine's segment name (valid as long as the engine). */
const char* kvferry_engine_segment_name(const kvferry_engine* engine);

/** Registers [addr, addr+length) at `location` ("cpu:0", "cuda:0"; NULL for "cpu:0"). */
int kvferry_engine_register_memory(kvferry_engine* engine, void* addr, size_t length,
                                   const char* location);
/** Unregisters the region that starts at `addr` (atomic: see transfer_engine.hpp). */
int kvferry_engine_unregister_memory(kvferry_engine* engine, void* addr);

/** Opens a segment by name ("host:port" of another node, or a segment of this process). */
int kvferry_engine_open_segment(kvferry_engine* engine, const char* name, kvferry_segment_id* out);
/** Region `index` of an opened segment (base address and length), from its descriptor;
 * KVFERRY_ERR_OUT_OF_RANGE past the last one. */
int kvferry_engine_segment_region(kvferry_engine* engine, kvferry_segment_id segment, size_t index,
                                  uint64_t* base, uint64_t* length);

int kvferry_engine_allocate_batch(kvferry_engine* engine, size_t capacity, kvferry_batch_id* out);
/** Frees the batch at any time (its unresolved tasks end CANCELED). */
int kvferry_engine_free_batch(kvferry_engine* engine, kvferry_batch_id batch);
/** Submits `count` requests as tasks [*first, *first + count) of the batch, all or none.
 * `deadline_ms`: per task, 0 for the configured task_deadline_ms. `notify`: NULL, or a message
 * sent to the target once every task of this submission COMPLETED (all requests must then name
 * one segment). `first` may be NULL. */
int kvferry_engine_submit(kvferry_engine* engine, kvferry_batch_id batch,
                          const kvferry_transfer_request* requests, size_t count,
                          uint64_t deadline_ms, const char* notify, uint32_t* first);
int kvferry_engine_status(kvferry_engine* engine, kvferry_batch_id batch, uint32_t task,
                          kvferry_transfer_status* out);
/** The batch's tasks counted by state, now (no waiting). */
int kvferry_engine_batch_status(kvferry_engine* engine, kvferry_batch_id batch,
                                kvferry_batch_summary* out);
/** Waits until every submitted task of the batch is terminal; KVFERRY_ERR_TIMEOUT after
 * `timeout_ms`. `out` may be NULL. */
int kvferry_engine_wait(kvferry_engine* engine, kvferry_batch_id batch, uint64_t timeout_ms,
                        kvferry_batch_summary* out);

/** Sends a message (at most 64 KiB) to the engine owning `segment`; KVFERRY_ERR_BUSY when its
 * inbox is full. */
int kvferry_engine_notify(kvferry_engine* engine, kvferry_segment_id segment, const void* message,
                          size_t length);
/** Takes the notifications received so far, oldest first, calling `fn` once for each (the
 * arguments are valid during the call only). */
int kvferry_engine_get_notifies(kvferry_engine* engine,
                                void (*fn)(void* user, const char* from, const void* message,
                                           size_t length),
                                void* user);

/* -- store client ---------------------------------------------------------------------------- */

typedef struct kvferry_store kvferry_store;

/** Options of a put; all zeros mean the defaults. */
typedef struct kvferry_put_options {
  /** Replicas on distinct segments; 0 means 1. */
  uint32_t replicas;
  /** Soft pin: evicted only when nothing unpinned can be. */
  int pin;
  /** Replace an existing object of the key instead of KVFERRY_ERR_OBJECT_EXISTS. */
  int upsert;
  /** Record a CRC-32C of the value; every get checks it. */
  int checksum;
  /** 0: the configured store_deadline_ms. */
  uint64_t deadline_ms;
} kvferry_put_options;

/** Creates a store client (master_server_address in the configuration names the master) and
 * mounts its global_segment_size bytes there. */
int kvferry_store_create(const char* config, kvferry_store** out);
/** Unmounts (the master drops this client's replicas at once) and stops, after the calls in
 * progress returned; later calls fail with KVFERRY_ERR_SHUTTING_DOWN. Idempotent; the handle stays
 * valid until destroyed. */
void kvferry_store_close(kvferry_store* store);
/** Closes the store client and frees the handle. NULL is ok. */
void kvferry_store_destroy(kvferry_store* store);

/** Keys are NUL-terminated strings of 1 to 4096 bytes. `options` may be NULL. */
int kvferry_store_put(kvferry_store* store, const char* key, const void* value, size_t size,
                      const kvferry_put_options* options);
/** Puts `size` bytes from memory registered with kvferry_store_register_buffer (no copy). */
int kvferry_store_put_from(kvferry_store* store, const char* key, const void* addr, size_t size,
                           const kvferry_put_options* options);
/** A copy of the object in *value (free it with kvferry_free) and its size in *size. */
int kvferry_store_get(kvferry_store* store, const char* key, void** value, size_t* size);
/** Reads the object into registered memory; its size in *size (may be NULL).
 * KVFERRY_ERR_INVALID_ARGUMENT when it is larger than `capacity`. */
int kvferry_store_get_into(kvferry_store* store, const char* key, void* addr, size_t capacity,
                           size_t* size);
/** KVFERRY_ERR_OBJECT_HAS_LEASE while a get reads it, unless `force`. */
int kvferry_store_remove(kvferry_store* store, const char* key, int force);
/** *exists = 1 or 0. */
int kvferry_store_exists(kvferry_store* store, const char* key, int* exists);

/** Registers caller memory for put_from / get_into at `location` ("cpu:0", "cuda:0"; NULL for
 * "cpu:0"). */
int kvferry_store_register_buffer(kvferry_store* store, void* addr, size_t size,
                                  const char* location);
int kvferry_store_unregister_buffer(kvferry_store* store, void* addr);

/* Batches: one deadline for all entries; results[i] is entry i's code (0 or a kvferry_errc).
 * They return 0 when every entry succeeded, else the first failing entry's code. */
int kvferry_store_batch_put_from(kvferry_store* store, const char* const* keys,
                                 const void* const* addrs, const size_t* sizes, size_t count,
                                 const kvferry_put_options* options, int* results);
/** sizes[i]: the size of entry i's object when results[i] is 0. */
int kvferry_store_batch_get_into(kvferry_store* store, const char* const* keys,
                                 void* const* addrs, const size_t* capacities, size_t count,
                                 int* results, size_t* sizes);
/** exists[i] = 1 or 0 when results[i] is 0. */
int kvferry_store_batch_exists(kvferry_store* store, const char* const* keys, size_t count,
                               int* results, int* exists);

/** The master's report (JSON text, NUL-terminated; free it with kvferry_free). */
int kvferry_store_master_stats(kvferry_store* store, char** json);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* KVFERRY_CAPI_KVFERRY_H */
