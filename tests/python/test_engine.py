"""kvferry.TransferEngine: an initiator in this process, a target engine in another process;
READ and WRITE byte-exact, status and wait, notifications, errors as kvferry.Error."""
import ctypes
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import unittest

import harness
import kvferry
from engine_target import pattern

SIZE = 4 << 20
BLOCK = 64 << 10


class Engine(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.target = harness.python_child("engine_target.py", SIZE, stdin=subprocess.PIPE)
        line = cls.target.stdout.readline()
        if not line:
            raise RuntimeError(cls.target.stderr.read())
        cls.info = json.loads(line)
        cls.engine = kvferry.TransferEngine()
        cls.engine.initialize({"local_hostname": "127.0.0.1", "metadata_server": "P2PHANDSHAKE",
                               "protocol": "tcp",
                               "kvferry": {"task_deadline_ms": 5000}})
        cls.local = bytearray(SIZE)
        cls.engine.register_memory(cls.local)
        cls.local_base = kvferry.buffer_address(cls.local)[0]
        cls.segment = cls.engine.open_segment(cls.info["segment"])

    @classmethod
    def tearDownClass(cls):
        cls.engine.close()
        cls.target.stdin.write("quit\n")
        cls.target.stdin.flush()
        harness.finish(cls.target, 30)

    def ask(self, command):
        self.target.stdin.write(command + "\n")
        self.target.stdin.flush()
        return self.target.stdout.readline().strip()

    def run_batch(self, op, blocks, offset=0):
        e = self.engine
        batch = e.allocate_batch(blocks)
        requests = [(op, self.local_base + offset + i * BLOCK, self.segment,
                     self.info["base"] + offset + i * BLOCK, BLOCK) for i in range(blocks)]
        first = e.submit(batch, requests)
        self.assertEqual(first, 0)
        summary = e.wait(batch, timeout=30)
        self.assertEqual(summary.tasks, blocks)
        self.assertEqual(summary.completed, blocks, repr(summary))
        self.assertEqual(summary.transferred_bytes, blocks * BLOCK)
        for i in range(blocks):
            st = e.status(batch, i)
            self.assertEqual(st.state, kvferry.TaskState.COMPLETED, repr(st))
            self.assertEqual(st.transferred_bytes, BLOCK)
        e.free_batch(batch)

    def test_segment_regions(self):
        regions = self.engine.segment_regions(self.segment)
        self.assertIn((self.info["base"], SIZE), regions)
        self.assertEqual(self.engine.open_segment(self.info["segment"]), self.segment)

    def test_read_is_byte_exact(self):
        self.local[:] = bytes(SIZE)
        self.run_batch(kvferry.READ, SIZE // BLOCK)
        self.assertEqual(bytes(self.local), pattern(SIZE))

    def test_write_is_byte_exact(self):
        offset, blocks = 1 << 20, 8
        data = os.urandom(blocks * BLOCK)
        self.local[offset:offset + len(data)] = data
        self.run_batch(kvferry.WRITE, blocks, offset)
        self.assertEqual(self.ask(f"sha {offset} {len(data)}"), hashlib.sha256(data).hexdigest())
        # And back: READ what was written into a clean buffer.
        self.local[offset:offset + len(data)] = bytes(len(data))
        self.run_batch(kvferry.READ, blocks, offset)
        self.assertEqual(bytes(self.local[offset:offset + len(data)]), data)
        # Leave the target's pattern in place for the other tests.
        self.local[:] = pattern(SIZE)
        self.run_batch(kvferry.WRITE, blocks, offset)

    def test_raw_address_registration(self):
        e = self.engine
        raw = ctypes.create_string_buffer(BLOCK)
        addr = ctypes.addressof(raw)
        e.register_memory(addr, BLOCK)
        try:
            batch = e.allocate_batch(1)
            e.submit(batch, [(kvferry.OpCode.READ, addr, self.segment, self.info["base"], BLOCK)])
            self.assertEqual(e.wait(batch).completed, 1)
            e.free_batch(batch)
            self.assertEqual(raw.raw, pattern(BLOCK))
        finally:
            e.unregister_memory(addr)

    def test_errors_raise_with_kvferry_messages(self):
        e = self.engine
        batch = e.allocate_batch(2)
        with self.assertRaises(kvferry.Error) as caught:
            e.submit(batch, [(kvferry.READ, self.local_base, self.segment,
                              self.info["base"] + SIZE, BLOCK)])
        self.assertEqual(caught.exception.name, "out_of_range")
        self.assertEqual(caught.exception.code, kvferry.errc.out_of_range)
        with self.assertRaises(kvferry.Error) as caught:
            e.submit(batch, [(kvferry.READ, 12345, self.segment, self.info["base"], BLOCK)])
        self.assertEqual(caught.exception.name, "unregistered_memory")
        with self.assertRaises(kvferry.Error) as caught:
            e.submit(batch, [(kvferry.READ, self.local_base, self.segment, self.info["base"],
                              BLOCK)] * 3)
        self.assertEqual(caught.exception.name, "batch_full")
        with self.assertRaises(ValueError):
            e.submit(batch, [(7, self.local_base, self.segment, self.info["base"], BLOCK)])
        with self.assertRaises(kvferry.Error) as caught:
            e.status(batch, 0)
        self.assertEqual(caught.exception.name, "unknown_task")
        e.free_batch(batch)
        with self.assertRaises(kvferry.Error) as caught:
            e.free_batch(batch)
        self.assertEqual(caught.exception.name, "unknown_batch")
        with self.assertRaises(kvferry.Error) as caught:
            e.open_segment("127.0.0.1:1")
        self.assertIn("127.0.0.1:1", str(caught.exception))
        with self.assertRaises(kvferry.Error) as caught:
            e.register_memory(self.local)  # already registered
        self.assertEqual(caught.exception.name, "overlapping_region")

    def test_notifications(self):
        e = self.engine
        e.notify(self.segment, b"hello")
        self.local[:16] = pattern(16)  # what the target holds there already
        batch = e.allocate_batch(1)
        e.submit(batch, [(kvferry.WRITE, self.local_base, self.segment, self.info["base"], 16)],
                 notify="batch done")
        self.assertEqual(e.wait(batch, timeout=10).completed, 1)
        e.free_batch(batch)
        deadline = time.monotonic() + 10
        notes = []
        while time.monotonic() < deadline:
            notes += json.loads(self.ask("notes"))
            if len(notes) >= 2:
                break
            time.sleep(0.05)
        self.assertEqual([m for _, m in notes], ["hello", "batch done"])
        self.assertEqual(notes[0][0], e.segment_name)

    def test_wait_releases_the_gil_and_times_out(self):
        # The target is stopped: the READ cannot finish before its deadline. Meanwhile another
        # Python thread keeps running: with the GIL held through wait(), none of its ticks could
        # fall strictly inside the call (a long switch interval keeps the interpreter from handing
        # the GIL over just before the call).
        e = self.engine
        interval = sys.getswitchinterval()
        sys.setswitchinterval(0.2)
        self.addCleanup(sys.setswitchinterval, interval)
        ticks = []
        stop = threading.Event()

        def count():
            while not stop.is_set():
                ticks.append(time.monotonic())

        t = threading.Thread(target=count)
        harness.stop_process(self.target)
        try:
            batch = e.allocate_batch(1)
            e.submit(batch, [(kvferry.READ, self.local_base, self.segment, self.info["base"],
                              BLOCK)], deadline=1.0)
            with self.assertRaises(kvferry.Error) as caught:
                e.wait(batch, timeout=0.2)
            self.assertEqual(caught.exception.name, "timeout")
            t.start()
            start = time.monotonic()
            summary = e.wait(batch, timeout=10)
            end = time.monotonic()
            stop.set()
            t.join()
            self.assertTrue(any(start < tick < end for tick in ticks),
                            "the GIL was held during wait()")
            self.assertEqual(summary.timeout, 1)
            self.assertEqual(e.status(batch, 0).state, kvferry.TaskState.TIMEOUT)
            e.free_batch(batch)
        finally:
            stop.set()
            if t.is_alive():
                t.join()
            self.target.send_signal(signal.SIGCONT)

    def test_close_wakes_a_waiter(self):
        e = kvferry.TransferEngine()
        e.initialize({"local_hostname": "127.0.0.1", "metadata_server": "P2PHANDSHAKE"})
        local = bytearray(BLOCK)
        e.register_memory(local)
        seg = e.open_segment(self.info["segment"])
        result = {}

        def waiter(batch):
            try:
                result["summary"] = e.wait(batch, timeout=60)
            except kvferry.Error as err:
                result["error"] = err.name

        harness.stop_process(self.target)
        try:
            batch = e.allocate_batch(1)
            e.submit(batch, [(kvferry.READ, kvferry.buffer_address(local)[0], seg,
                              self.info["base"], BLOCK)], deadline=60)
            t = threading.Thread(target=waiter, args=(batch,))
            t.start()
            time.sleep(0.3)
            started = time.monotonic()
            e.close()
            t.join(timeout=20)
            self.assertFalse(t.is_alive(), "wait() did not return after close()")
            self.assertLess(time.monotonic() - started, 15)
            if "summary" in result:
                self.assertEqual(result["summary"].canceled, 1, repr(result["summary"]))
            else:
                self.assertEqual(result["error"], "shutting_down")
        finally:
            self.target.send_signal(signal.SIGCONT)


class Lifecycle(unittest.TestCase):

    def test_initialize_forms_and_close(self):
        e = kvferry.TransferEngine()
        with self.assertRaises(kvferry.Error):
            e.allocate_batch(1)  # not initialized
        self.assertEqual(e.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", ""), 0)
        self.assertTrue(e.segment_name.startswith("127.0.0.1:"))
        with self.assertRaises(kvferry.Error):
            e.initialize()
        e.close()
        e.close()
        with self.assertRaises(kvferry.Error) as caught:
            e.allocate_batch(1)
        self.assertEqual(caught.exception.name, "shutting_down")

    def test_bad_config(self):
        e = kvferry.TransferEngine()
        with self.assertRaises(kvferry.Error) as caught:
            e.initialize({"local_hostname": "127.0.0.1", "metadata_server": "P2PHANDSHAKE",
                          "protocol": "carrier-pigeon"})
        self.assertEqual(caught.exception.name, "invalid_config")
        self.assertIn("carrier-pigeon", str(caught.exception))
        with self.assertRaises(kvferry.Error) as caught:
            e.initialize("/nonexistent/config.json")
        self.assertIn("/nonexistent/config.json", str(caught.exception))
        with self.assertRaises(TypeError):
            e.initialize(42)

    def test_open_of_a_mute_node_fails_within_open_timeout(self):
        e = kvferry.TransferEngine()
        e.initialize({"local_hostname": "127.0.0.1", "metadata_server": "P2PHANDSHAKE",
                      "kvferry": {"open_timeout_ms": 1000}})
        # A listening socket that never speaks ZMTP.
        mute = socket.socket()
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        try:
            started = time.monotonic()
            with self.assertRaises(kvferry.Error):
                e.open_segment(f"127.0.0.1:{mute.getsockname()[1]}")
            self.assertLess(time.monotonic() - started, 5)
        finally:
            mute.close()
            e.close()

if __name__ == "__main__":
    unittest.main()
