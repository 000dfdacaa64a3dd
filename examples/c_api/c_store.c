/* kvferry from C (actors/capi/kvferry.h): a store put/get round trip, then an engine transfer.
 *
 * The configuration comes from MOONCAKE_CONFIG_PATH (or KVFERRY_CONFIG), whose
 * master_server_address names a running `kvferry master`; run.sh starts one on loopback.
 *   c_store            exits 0 when every byte came back as it was put and transferred */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvferry.h"

/* Prints the failed call and kvferry's message; returns 1 for main. */
static int report(const char* what, int code) {
  fprintf(stderr, "c_store: %s failed: %s (%d): %s\n", what, kvferry_error_name(code), code,
          kvferry_last_error());
  return 1;
}

static void fill(unsigned char* p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; ++i)
    p[i] = (unsigned char) ((i * 31u + seed) & 0xffu);
}

/* 1. The store: put a value, check it exists, get it back two ways, remove it. */
static int store_round_trip(void) {
  kvferry_store* store = NULL;
  int rc = kvferry_store_create(NULL, &store); /* NULL: MOONCAKE_CONFIG_PATH */
  if (rc != KVFERRY_OK)
    return report("kvferry_store_create", rc);
  int failed = 1;
  enum { value_size = 256 * 1024 };
  unsigned char* value = malloc(value_size);
  unsigned char* landing = malloc(value_size);
  void* copy = NULL;
  size_t size = 0;
  int exists = 0;
  if (value == NULL || landing == NULL)
    goto done;
  fill(value, value_size, 7);

  if ((rc = kvferry_store_put(store, "c_store/key", value, value_size, NULL)) != KVFERRY_OK) {
    report("kvferry_store_put", rc);
    goto done;
  }
  rc = kvferry_store_put(store, "c_store/key", value, value_size, NULL);
  if (rc != KVFERRY_ERR_OBJECT_EXISTS) {
    fprintf(stderr, "c_store: a second put of one key returned %d, not OBJECT_EXISTS\n", rc);
    goto done;
  }
  if ((rc = kvferry_store_exists(store, "c_store/key", &exists)) != KVFERRY_OK || !exists) {
    report("kvferry_store_exists", rc);
    goto done;
  }
  /* get: a copy kvferry allocates. */
  if ((rc = kvferry_store_get(store, "c_store/key", &copy, &size)) != KVFERRY_OK) {
    report("kvferry_store_get", rc);
    goto done;
  }
  if (size != value_size || memcmp(copy, value, value_size) != 0) {
    fprintf(stderr, "c_store: get returned %zu bytes that differ from the value put\n", size);
    goto done;
  }
  /* get_into: straight into memory registered with the store (zero copy). */
  if ((rc = kvferry_store_register_buffer(store, landing, value_size, NULL)) != KVFERRY_OK) {
    report("kvferry_store_register_buffer", rc);
    goto done;
  }
  memset(landing, 0, value_size);
  rc = kvferry_store_get_into(store, "c_store/key", landing, value_size, &size);
  if (rc != KVFERRY_OK || size != value_size || memcmp(landing, value, value_size) != 0) {
    report("kvferry_store_get_into", rc);
    goto done;
  }
  if ((rc = kvferry_store_unregister_buffer(store, landing)) != KVFERRY_OK) {
    report("kvferry_store_unregister_buffer", rc);
    goto done;
  }
  /* A get holds a lease on the object (the master's --lease-ms): removing it needs force. */
  rc = kvferry_store_remove(store, "c_store/key", 0);
  if (rc != KVFERRY_ERR_OBJECT_HAS_LEASE) {
    fprintf(stderr, "c_store: a remove under a lease returned %d, not OBJECT_HAS_LEASE\n", rc);
    goto done;
  }
  if ((rc = kvferry_store_remove(store, "c_store/key", 1)) != KVFERRY_OK) {
    report("kvferry_store_remove", rc);
    goto done;
  }
  kvferry_free(copy);
  copy = NULL;
  rc = kvferry_store_get(store, "c_store/key", &copy, &size);
  if (rc != KVFERRY_ERR_OBJECT_NOT_FOUND) {
    fprintf(stderr, "c_store: a get after remove returned %d, not OBJECT_NOT_FOUND\n", rc);
    goto done;
  }
  printf("c_store: store round trip of %d bytes ok\n", value_size);
  failed = 0;
done:
  kvferry_free(copy);
  free(landing);
  free(value);
  kvferry_store_destroy(store);
  return failed;
}

/* 2. The engine: a target engine registers a buffer; an initiator engine opens the target's
 * segment by name and READs it in one batch of 16 tasks, then WRITEs it back changed. */
static int engine_transfer(void) {
  enum { blocks = 16, block = 64 * 1024 };
  kvferry_engine* target = NULL;
  kvferry_engine* initiator = NULL;
  unsigned char* remote = malloc((size_t) blocks * block);
  unsigned char* local = malloc((size_t) blocks * block);
  int failed = 1, rc;
  kvferry_segment_id segment = 0;
  kvferry_batch_id batch = 0;
  int have_batch = 0;
  uint64_t base = 0, length = 0;
  kvferry_transfer_request requests[blocks];
  kvferry_batch_summary summary;
  if (remote == NULL || local == NULL)
    goto done;
  fill(remote, (size_t) blocks * block, 3);
  memset(local, 0, (size_t) blocks * block);

  /* The configuration as JSON text (a path, or NULL for the environment, work too); the two
   * engines are peers on loopback. */
  const char* config = "{\"local_hostname\": \"127.0.0.1\", \"metadata_server\": \"P2PHANDSHAKE\"}";
  if ((rc = kvferry_engine_create(config, NULL, &target)) != KVFERRY_OK
      || (rc = kvferry_engine_create(config, NULL, &initiator)) != KVFERRY_OK) {
    report("kvferry_engine_create", rc);
    goto done;
  }
  if ((rc = kvferry_engine_register_memory(target, remote, (size_t) blocks * block, "cpu:0"))
        != KVFERRY_OK
      || (rc = kvferry_engine_register_memory(initiator, local, (size_t) blocks * block, NULL))
           != KVFERRY_OK) {
    report("kvferry_engine_register_memory", rc);
    goto done;
  }
  /* The target's segment name ("host:port") is what a peer on another machine would open. */
  rc = kvferry_engine_open_segment(initiator, kvferry_engine_segment_name(target), &segment);
  if (rc != KVFERRY_OK) {
    report("kvferry_engine_open_segment", rc);
    goto done;
  }
  if ((rc = kvferry_engine_segment_region(initiator, segment, 0, &base, &length)) != KVFERRY_OK) {
    report("kvferry_engine_segment_region", rc);
    goto done;
  }
  for (int pass = 0; pass < 2; ++pass) {
    const int op = pass == 0 ? KVFERRY_READ : KVFERRY_WRITE;
    if (op == KVFERRY_WRITE)
      fill(local, (size_t) blocks * block, 11);
    for (int i = 0; i < blocks; ++i) {
      requests[i].opcode = op;
      requests[i].local = local + (size_t) i * block;
      requests[i].segment = segment;
      requests[i].remote = base + (uint64_t) i * block;
      requests[i].length = block;
    }
    if ((rc = kvferry_engine_allocate_batch(initiator, blocks, &batch)) != KVFERRY_OK) {
      report("kvferry_engine_allocate_batch", rc);
      goto done;
    }
    have_batch = 1;
    if ((rc = kvferry_engine_submit(initiator, batch, requests, blocks, 0, NULL, NULL))
        != KVFERRY_OK) {
      report("kvferry_engine_submit", rc);
      goto done;
    }
    if ((rc = kvferry_engine_wait(initiator, batch, 10000, &summary)) != KVFERRY_OK) {
      report("kvferry_engine_wait", rc);
      goto done;
    }
    for (uint32_t i = 0; i < blocks; ++i) {
      kvferry_transfer_status st;
      if ((rc = kvferry_engine_status(initiator, batch, i, &st)) != KVFERRY_OK) {
        report("kvferry_engine_status", rc);
        goto done;
      }
      if (st.state != KVFERRY_TASK_COMPLETED || st.transferred_bytes != block) {
        fprintf(stderr, "c_store: task %u ended in state %d (%s): %s\n", i, st.state,
                kvferry_error_name(st.code), st.reason);
        goto done;
      }
    }
    have_batch = 0;
    if ((rc = kvferry_engine_free_batch(initiator, batch)) != KVFERRY_OK) {
      report("kvferry_engine_free_batch", rc);
      goto done;
    }
    if (memcmp(local, remote, (size_t) blocks * block) != 0) {
      fprintf(stderr, "c_store: after the %s the two buffers differ\n",
              op == KVFERRY_READ ? "READ" : "WRITE");
      goto done;
    }
    printf("c_store: %s of %u tasks, %llu bytes, COMPLETED and identical\n",
           op == KVFERRY_READ ? "READ" : "WRITE", summary.completed,
           (unsigned long long) summary.transferred_bytes);
  }
  failed = 0;
done:
  if (have_batch)
    (void) kvferry_engine_free_batch(initiator, batch);
  kvferry_engine_destroy(initiator);
  kvferry_engine_destroy(target);
  free(local);
  free(remote);
  return failed;
}

int main(void) {
  if (kvferry_c_api_version() / 10000 != KVFERRY_C_API_VERSION / 10000
      || kvferry_c_api_version() < KVFERRY_C_API_VERSION) {
    fprintf(stderr, "c_store: built for C API %d, the library is %d\n", KVFERRY_C_API_VERSION,
            kvferry_c_api_version());
    return 1;
  }
  printf("c_store: kvferry %s, C API %d\n", kvferry_version(), kvferry_c_api_version());
  if (store_round_trip() != 0 || engine_transfer() != 0)
    return 1;
  printf("c_store: ok\n");
  return 0;
}
