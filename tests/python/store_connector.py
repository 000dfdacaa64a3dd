"""What vLLM's Mooncake store connector does, with `import kvferry` in place of Mooncake's module.

    store_connector.py producer|consumer RUN_ID REQUESTS

Both roles read MOONCAKE_CONFIG_PATH into a dict (as the connector's config class does). The
producer (the prefill instance) sets up with setup(dict), serializes each request's KV tensor and
hidden states to bytes and puts them under keys derived from the request's token ids; then it puts
a second set of blocks zero-copy from a registered buffer (batch_put_from). The consumer (the
decode instance) sets up with the positional setup(...) vLLM calls, polls is_exist for each key,
gets the bytes and checks every byte against what the producer must have put, then reads the
zero-copy set with batch_get_into. The producer stays (its segment holds the objects) until a
line on stdin says the consumer is done. Neither calls close(): vLLM's connector relies on the
interpreter's exit, and so does this script (the store unmounts at exit)."""
import array
import hashlib
import json
import os
import struct
import sys
import time

import kvferry

LAYERS, HEADS, HEAD_DIM, BLOCK_TOKENS = 4, 2, 16, 16
TP_RANK = 0
ZERO_COPY_BLOCKS, ZERO_COPY_BLOCK = 8, 64 * 1024


def tokens_of(run_id, request):
    """A request's token ids: requests share a 32-token prompt prefix, then differ."""
    return list(range(32)) + [1000 + request * 7 + t for t in range(request % 5 + 3)]


def key_prefix(run_id, tokens):
    # vLLM hashes the prompt's token ids into the store key.
    return run_id + "/" + hashlib.sha256(repr(tokens).encode()).hexdigest()[:32]


def kv_tensor(tokens):
    """A float32 tensor [layers, 2, tokens, heads * head_dim] whose values derive from the tokens."""
    n = LAYERS * 2 * len(tokens) * HEADS * HEAD_DIM
    seed = sum(tokens) % 997
    return array.array("f", ((i * 0.25 + seed) % 1024.0 for i in range(n)))


def hidden_tensor(tokens):
    return array.array("f", (float(t) * 0.5 for t in tokens))


def serialize(tensor, shape):
    """Shape header + raw bytes: what safetensors' save() produces, in spirit."""
    header = json.dumps({"dtype": "float32", "shape": shape}).encode()
    return struct.pack("<Q", len(header)) + header + memoryview(tensor).cast("B").tobytes()


def deserialize(blob):
    (n,) = struct.unpack_from("<Q", blob)
    meta = json.loads(blob[8:8 + n])
    values = array.array("f")
    values.frombytes(blob[8 + n:])
    return meta["shape"], values


def load_config():
    with open(os.environ["MOONCAKE_CONFIG_PATH"]) as f:
        return json.load(f)


def zero_copy_block(i):
    return bytes((i * 13 + j * 7) & 0xFF for j in range(256)) * (ZERO_COPY_BLOCK // 256)


def produce(store, run_id, requests):
    put = 0
    for r in range(requests):
        tokens = tokens_of(run_id, r)
        prefix = key_prefix(run_id, tokens)
        kv = kv_tensor(tokens)
        shape = [LAYERS, 2, len(tokens), HEADS * HEAD_DIM]
        rc = store.put(f"{prefix}_{TP_RANK}", serialize(kv, shape))
        if rc == -705:  # OBJECT_ALREADY_EXISTS: another request put this prefix
            continue
        assert rc == 0, f"put {prefix}: {rc} {kvferry.last_error()}"
        rc = store.put(f"{prefix}_hidden_{TP_RANK}",
                       serialize(hidden_tensor(tokens), [len(tokens)]))
        assert rc == 0, f"put hidden {prefix}: {rc} {kvferry.last_error()}"
        put += 2
    # Zero copy: one registered buffer, every block put from it in one batch.
    buffer = bytearray(ZERO_COPY_BLOCKS * ZERO_COPY_BLOCK)
    for i in range(ZERO_COPY_BLOCKS):
        buffer[i * ZERO_COPY_BLOCK:(i + 1) * ZERO_COPY_BLOCK] = zero_copy_block(i)
    assert store.register_buffer(buffer) == 0, kvferry.last_error()
    base, _ = kvferry.buffer_address(buffer)
    keys = [f"{run_id}/zero_copy/{i}" for i in range(ZERO_COPY_BLOCKS)]
    codes = store.batch_put_from(keys, [base + i * ZERO_COPY_BLOCK for i in range(ZERO_COPY_BLOCKS)],
                                 [ZERO_COPY_BLOCK] * ZERO_COPY_BLOCKS)
    assert codes == [0] * ZERO_COPY_BLOCKS, f"batch_put_from: {codes} {kvferry.last_error()}"
    assert store.unregister_buffer(buffer) == 0, kvferry.last_error()
    print(f"producer: {put} tensors and {ZERO_COPY_BLOCKS} zero-copy blocks put", flush=True)
    # The decode side reads from this process's segment, as from a running prefill instance:
    # stay until told (a line on stdin) that the consumer is done.
    sys.stdin.readline()


def consume(store, run_id, requests):
    got = 0
    assert store.get(f"{run_id}/never_put") == b"", "get of a missing key must return b''"
    assert store.is_exist(f"{run_id}/never_put") == 0
    for r in range(requests):
        tokens = tokens_of(run_id, r)
        prefix = key_prefix(run_id, tokens)
        key = f"{prefix}_{TP_RANK}"
        end = time.monotonic() + 60
        while store.is_exist(f"{prefix}_hidden_{TP_RANK}") != 1:  # put after the KV tensor
            assert time.monotonic() < end, f"{key} never appeared"
            time.sleep(0.01)
        blob = store.get(key)
        assert blob, f"get {key} returned nothing: {kvferry.last_error()}"
        shape, values = deserialize(blob)
        assert shape == [LAYERS, 2, len(tokens), HEADS * HEAD_DIM], shape
        assert values.tobytes() == kv_tensor(tokens).tobytes(), f"{key}: tensor bytes differ"
        shape, hidden = deserialize(store.get(f"{prefix}_hidden_{TP_RANK}"))
        assert hidden.tobytes() == hidden_tensor(tokens).tobytes(), f"{key}: hidden differs"
        got += 2
    keys = [f"{run_id}/zero_copy/{i}" for i in range(ZERO_COPY_BLOCKS)]
    end = time.monotonic() + 60
    while store.batch_is_exist(keys) != [1] * ZERO_COPY_BLOCKS:
        assert time.monotonic() < end, "the zero-copy blocks never appeared"
        time.sleep(0.01)
    landing = bytearray(ZERO_COPY_BLOCKS * ZERO_COPY_BLOCK)
    assert store.register_buffer(landing) == 0, kvferry.last_error()
    views = [memoryview(landing)[i * ZERO_COPY_BLOCK:(i + 1) * ZERO_COPY_BLOCK]
             for i in range(ZERO_COPY_BLOCKS)]
    sizes = store.batch_get_into(keys, views, [ZERO_COPY_BLOCK] * ZERO_COPY_BLOCKS)
    assert sizes == [ZERO_COPY_BLOCK] * ZERO_COPY_BLOCKS, f"{sizes} {kvferry.last_error()}"
    for i in range(ZERO_COPY_BLOCKS):
        assert bytes(views[i]) == zero_copy_block(i), f"zero-copy block {i} differs"
    del views
    assert store.unregister_buffer(landing) == 0, kvferry.last_error()
    print(f"consumer: {got} tensors and {ZERO_COPY_BLOCKS} zero-copy blocks verified", flush=True)


def main():
    role, run_id, requests = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = load_config()
    store = kvferry.MooncakeDistributedStore()
    if role == "producer":
        rc = store.setup(config)
    else:
        # The positional form vLLM's connector calls.
        rc = store.setup(config["local_hostname"], config["metadata_server"],
                         config["global_segment_size"], config["local_buffer_size"],
                         config["protocol"], config["device_name"],
                         config["master_server_address"])
    assert rc == 0, f"setup: {rc} {kvferry.last_error()}"
    if role == "producer":
        produce(store, run_id, requests)
    else:
        consume(store, run_id, requests)
    # No close(): the store is closed when the interpreter exits.


if __name__ == "__main__":
    main()
