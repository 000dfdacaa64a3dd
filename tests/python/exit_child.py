"""A child that uses kvferry and then ends without close(): normally, or killed.

    exit_child.py store-exit KEY     setup, put KEY, report, exit normally (no close)
    exit_child.py store-killed KEY   setup, put KEY, report, sleep until killed
    exit_child.py store-busy KEY     as store-exit, with a daemon thread still calling the store
    exit_child.py store-fork KEY     as store-exit, after a fork()ed child that used the store and
                                     exited normally: the child must not close the parent's store
    exit_child.py engine-exit        an engine serving a registered buffer: report, wait for a
                                     line on stdin, exit normally (no close)

It prints one JSON line: what it mapped of shared memory (/dev/shm, System V), the file
descriptors it holds there, and for the engine its segment name and buffer address."""
import json
import os
import sys
import threading
import time

import kvferry


def shared_memory_use():
    maps = [line for line in open("/proc/self/maps") if "/dev/shm" in line or "SYSV" in line]
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/dev/shm"):
            fds.append(target)
    return {"shm_maps": len(maps), "shm_fds": len(fds)}


def main():
    mode = sys.argv[1]
    report = {}
    if mode.startswith("store"):
        key = sys.argv[2]
        store = kvferry.DistributedStore()  # kept alive by the module's globals until exit
        globals()["store"] = store
        rc = store.setup()  # MOONCAKE_CONFIG_PATH
        assert rc == 0, kvferry.last_error()
        assert store.put(key, b"v" * 4096) == 0, kvferry.last_error()
        if mode == "store-fork":
            pid = os.fork()
            if pid == 0:
                # The child's copy is not usable, and its exit must not unmount the parent.
                if store.put(key + "/child", b"x") != -1016 or "fork" not in kvferry.last_error():
                    os._exit(3)
                return  # a normal exit: the interpreter's exit hook runs in the child too
            _, status = os.waitpid(pid, 0)
            report["fork_child_status"] = status
            report["parent_put_after_fork"] = store.put(key + "/after", b"y")
            report["parent_sees_key"] = store.is_exist(key)
        if mode == "store-busy":
            def hammer():
                while True:
                    store.is_exist(key)
            threading.Thread(target=hammer, daemon=True).start()
            time.sleep(0.2)
    else:
        engine = kvferry.TransferEngine()
        globals()["engine"] = engine
        engine.initialize({"local_hostname": "127.0.0.1", "metadata_server": "P2PHANDSHAKE"})
        buffer = bytearray(b"\x42" * (1 << 20))
        globals()["buffer"] = buffer
        engine.register_memory(buffer)
        report["segment"] = engine.segment_name
        report["base"] = kvferry.buffer_address(buffer)[0]
    report.update(shared_memory_use())
    print(json.dumps(report), flush=True)
    if mode == "store-killed":
        while True:
            time.sleep(1)
    if mode == "engine-exit":
        sys.stdin.readline()
    # Falling off the end: no close(); the interpreter's exit closes what is open.


if __name__ == "__main__":
    main()
