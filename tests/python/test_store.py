"""kvferry.DistributedStore: the vLLM connector's flow across processes, and the surface
(return codes, buffers, batches) against a real `kvferry master`."""
import ctypes
import os
import subprocess
import sys
import threading
import time
import unittest

import harness
import kvferry


class ConnectorFlow(unittest.TestCase):
    """Producer and consumer in separate processes, as a prefill and a decode instance."""

    def test_producer_consumer(self):
        master = harness.Master()
        try:
            run_id = f"run{os.getpid()}"
            consumer = harness.python_child("store_connector.py", "consumer", run_id, 24,
                                            env=master.env())
            producer = harness.python_child("store_connector.py", "producer", run_id, 24,
                                            env=master.env(), stdin=subprocess.PIPE)
            rc_c, out_c, err_c = harness.finish(consumer, 180)
            producer.stdin.write("consumer done\n")
            producer.stdin.flush()
            rc_p, out_p, err_p = harness.finish(producer, 60)
            self.assertEqual(rc_p, 0, f"producer:\n{out_p}\n{err_p}\nmaster:\n{master.log_text()}")
            self.assertEqual(rc_c, 0, f"consumer:\n{out_c}\n{err_c}\nmaster:\n{master.log_text()}")
            self.assertIn("consumer: 48 tensors and 8 zero-copy blocks verified", out_c)
            for err in (err_p, err_c):
                self.assertNotIn("Traceback", err)
                self.assertNotIn("terminate called", err)
        finally:
            master.stop()


class Surface(unittest.TestCase):
    """One client in this process; return codes as Mooncake's store returns them."""

    @classmethod
    def setUpClass(cls):
        cls.master = harness.Master()
        cls.store = kvferry.DistributedStore()
        rc = cls.store.setup(dict(cls.master.config))
        assert rc == 0, kvferry.last_error()

    @classmethod
    def tearDownClass(cls):
        cls.store.close()
        cls.master.stop()

    def test_put_get_exists_remove(self):
        s = self.store
        self.assertEqual(s.put("surface/a", b"hello"), 0)
        self.assertEqual(s.put("surface/a", b"again"), -705)  # OBJECT_ALREADY_EXISTS
        self.assertEqual(kvferry.error_name(-705), "object_exists")
        self.assertIn("surface/a", kvferry.last_error())
        self.assertEqual(s.is_exist("surface/a"), 1)
        self.assertEqual(s.get("surface/a"), b"hello")
        self.assertEqual(s.put("surface/a", bytearray(b"upsert"), upsert=True), 0)
        self.assertEqual(s.get("surface/a"), b"upsert")
        # The gets hold a lease (the master's --lease-ms): only a forced remove goes through.
        self.assertEqual(s.remove("surface/a"), -706)  # OBJECT_HAS_LEASE
        self.assertEqual(s.remove("surface/a", force=True), 0)
        self.assertEqual(s.is_exist("surface/a"), 0)
        self.assertEqual(s.get("surface/a"), b"")
        self.assertEqual(s.remove("surface/a"), -704)  # OBJECT_NOT_FOUND
        self.assertEqual(s.batch_is_exist(["surface/none", "surface/none2"]), [0, 0])

    def test_values_from_any_buffer(self):
        s = self.store
        data = bytes(range(256)) * 64
        self.assertEqual(s.put("surface/mv", memoryview(data)[256:]), 0)
        self.assertEqual(s.get("surface/mv"), data[256:])
        floats = __import__("array").array("d", [1.5] * 100)
        self.assertEqual(s.put("surface/array", floats), 0)
        self.assertEqual(s.get("surface/array"), floats.tobytes())
        self.assertEqual(s.put("surface/empty", b""), -1002)  # invalid_argument: no value
        self.assertEqual(kvferry.error_name(-1002), "invalid_argument")
        with self.assertRaises(TypeError):
            s.put("surface/bad", 12345)

    def test_zero_copy_raw_addresses(self):
        s = self.store
        n = 128 * 1024
        source = ctypes.create_string_buffer(n)
        ctypes.memset(source, 0x5A, n)
        target = ctypes.create_string_buffer(n)
        src, dst = ctypes.addressof(source), ctypes.addressof(target)
        self.assertEqual(s.register_buffer(src, n), 0)
        self.assertEqual(s.register_buffer(dst, n), 0)
        self.assertEqual(s.register_buffer(dst, n), -1006, "overlapping registration")
        self.assertEqual(s.put_from("surface/raw", src, n), 0)
        self.assertEqual(s.get_into("surface/raw", dst, n), n)
        self.assertEqual(target.raw, source.raw)
        self.assertEqual(s.get_into("surface/raw", dst, n // 2), -1002, "larger than the buffer")
        self.assertEqual(s.get_into("surface/missing", dst, n), -704)
        keys = [f"surface/raw/{i}" for i in range(4)]
        chunk = n // 4
        self.assertEqual(s.batch_put_from(keys, [src + i * chunk for i in range(4)], [chunk] * 4),
                         [0] * 4)
        ctypes.memset(target, 0, n)
        self.assertEqual(s.batch_get_into(keys + ["surface/raw/none"],
                                          [dst + i * chunk for i in range(5)][:4] + [dst],
                                          [chunk] * 5),
                         [chunk] * 4 + [-704])
        self.assertEqual(target.raw, source.raw)
        self.assertEqual(s.unregister_buffer(src), 0)
        self.assertEqual(s.unregister_buffer(dst), 0)
        self.assertEqual(s.unregister_buffer(dst), -1007)  # unknown_region
        self.assertEqual(s.put_from("surface/raw2", src, n), -1005)  # unregistered_memory

    def test_registered_buffer_objects_stay_in_place(self):
        s = self.store
        buf = bytearray(64 * 1024)
        self.assertEqual(s.register_buffer(buf), 0)
        with self.assertRaises(BufferError):
            buf.extend(b"x")  # pinned while registered
        buf[:] = b"\x11" * len(buf)
        self.assertEqual(s.put_from("surface/obj", buf), 0)
        out = bytearray(len(buf))
        self.assertEqual(s.register_buffer(out), 0)
        self.assertEqual(s.get_into("surface/obj", out), len(buf))
        self.assertEqual(out, buf)
        self.assertEqual(s.unregister_buffer(buf), 0)
        self.assertEqual(s.unregister_buffer(out), 0)
        buf.extend(b"x")  # released
        with self.assertRaises(BufferError):
            s.register_buffer(b"read-only bytes")

    def test_calls_release_the_gil(self):
        # Another Python thread runs while this one is inside a store call: with the GIL held
        # through a call, no tick of the other thread could fall strictly inside it. A long switch
        # interval keeps the interpreter from handing the GIL over between `start` and the call.
        s = self.store
        interval = sys.getswitchinterval()
        sys.setswitchinterval(0.2)
        self.addCleanup(sys.setswitchinterval, interval)
        value = os.urandom(8 << 20)
        ticks = []
        stop = threading.Event()

        def count():
            while not stop.is_set():
                ticks.append(time.monotonic())

        calls = []
        t = threading.Thread(target=count)
        t.start()
        try:
            for i in range(3):
                start = time.monotonic()
                self.assertEqual(s.put(f"surface/gil/{i}", value), 0)
                calls.append((start, time.monotonic()))
                start = time.monotonic()
                self.assertEqual(len(s.get(f"surface/gil/{i}")), len(value))
                calls.append((start, time.monotonic()))
        finally:
            stop.set()
            t.join()
        inside = sum(1 for tick in ticks for a, b in calls if a < tick < b)
        self.assertGreater(inside, 0, f"no tick inside {len(calls)} calls")

    def test_master_stats(self):
        stats = self.store.master_stats()
        self.assertGreaterEqual(stats["clients"], 1)
        self.assertIn("objects", stats)

    def test_setup_errors_are_codes(self):
        other = kvferry.DistributedStore()
        self.assertEqual(other.put("k", b"v"), -1016)  # shutting_down: setup() not called
        self.assertIn("setup() was not called", kvferry.last_error())
        config = dict(self.master.config, master_server_address="etcd://127.0.0.1:2379")
        rc = other.setup(config)
        self.assertEqual(rc, -1001)  # invalid_config
        self.assertIn("etcd", kvferry.last_error())
        self.assertEqual(self.store.setup(dict(self.master.config)), -1002)  # already set up


class Closing(unittest.TestCase):

    def test_close_is_idempotent_and_calls_after_it_fail(self):
        master = harness.Master()
        try:
            s = kvferry.DistributedStore()
            self.assertEqual(s.setup(dict(master.config)), 0)
            self.assertEqual(s.put("closing/a", b"x"), 0)
            self.assertEqual(s.close(), 0)
            self.assertEqual(s.close(), 0)
            self.assertEqual(s.put("closing/b", b"x"), -1016)
            self.assertEqual(s.get("closing/a"), b"")
            with kvferry.DistributedStore() as t:
                self.assertEqual(t.setup(master.config), 0)
                # The first client unmounted: its object went with its segment.
                self.assertEqual(t.is_exist("closing/a"), 0)
        finally:
            master.stop()


if __name__ == "__main__":
    unittest.main()
