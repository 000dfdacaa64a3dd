"""A Python process that ends without close(), normally or killed, leaves nothing behind: no
shared memory or semaphores, no client at the master (at once on a normal exit, after the
master's TTL when killed), nothing a peer can still reach."""
import json
import signal
import subprocess
import time
import unittest

import harness
import kvferry


def observer(master):
    """A client in this process that contributes no memory: objects live in the child's."""
    s = kvferry.DistributedStore()
    rc = s.setup(dict(master.config, global_segment_size=0))
    assert rc == 0, kvferry.last_error()
    return s


def wait_until(predicate, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class StoreExit(unittest.TestCase):

    def check_child_output(self, out, err):
        report = json.loads(out.strip().splitlines()[0])
        self.assertEqual(report["shm_maps"], 0, "the client maps shared memory")
        self.assertEqual(report["shm_fds"], 0, "the client holds /dev/shm descriptors")
        for bad in ("Traceback", "terminate called", "Segmentation", "leaked", "Aborted"):
            self.assertNotIn(bad, err)

    def run_exit(self, mode):
        # A long TTL: only an unmount at exit can drop the client within the test's wait.
        master = harness.Master("--ttl-ms", "30000")
        s = observer(master)
        try:
            key = f"{mode}/key"
            started = time.monotonic()
            child = harness.python_child("exit_child.py", mode, key, env=master.env())
            rc, out, err = harness.finish(child, 60)
            elapsed = time.monotonic() - started
            self.assertEqual(rc, 0, f"{out}\n{err}")
            self.check_child_output(out, err)
            self.assertLess(elapsed, 20, "exiting took too long")
            self.assertTrue(wait_until(lambda: s.master_stats()["clients"] == 1, 3),
                            f"the child is still a client: {s.master_stats()}")
            self.assertEqual(s.is_exist(key), 0, "the child's object outlived its segment")
            return json.loads(out.strip().splitlines()[0])
        finally:
            s.close()
            master.stop()

    def test_normal_exit_without_close_unmounts_at_once(self):
        self.run_exit("store-exit")

    def test_exit_with_a_thread_still_calling_the_store(self):
        self.run_exit("store-busy")

    def test_a_forked_child_does_not_close_the_parents_store(self):
        report = self.run_exit("store-fork")
        self.assertEqual(report["fork_child_status"], 0)
        self.assertEqual(report["parent_put_after_fork"], 0)
        self.assertEqual(report["parent_sees_key"], 1)

    def test_killed_client_is_dropped_after_the_ttl(self):
        master = harness.Master("--ttl-ms", "1500", "--watch-ms", "300")
        s = observer(master)
        try:
            key = "killed/key"
            child = harness.python_child("exit_child.py", "store-killed", key, env=master.env())
            line = child.stdout.readline()
            self.assertTrue(line, child.stderr.read() if child.poll() is not None else "")
            self.check_child_output(line, "")
            self.assertEqual(s.master_stats()["clients"], 2)
            self.assertEqual(s.is_exist(key), 1)
            child.send_signal(signal.SIGKILL)
            child.communicate()
            self.assertTrue(wait_until(lambda: s.master_stats()["clients"] == 1, 15),
                            f"the killed client is still there: {s.master_stats()}")
            self.assertEqual(s.is_exist(key), 0)
        finally:
            s.close()
            master.stop()


class EngineExit(unittest.TestCase):

    def test_target_exit_without_close(self):
        child = harness.python_child("exit_child.py", "engine-exit", stdin=subprocess.PIPE)
        try:
            report = json.loads(child.stdout.readline())
            self.assertEqual(report["shm_maps"], 0)
            self.assertEqual(report["shm_fds"], 0)
            with kvferry.TransferEngine() as e:
                e.initialize({"local_hostname": "127.0.0.1", "metadata_server": "P2PHANDSHAKE",
                              "kvferry": {"task_deadline_ms": 2000, "open_timeout_ms": 2000}})
                local = bytearray(4096)
                e.register_memory(local)
                seg = e.open_segment(report["segment"])
                addr = kvferry.buffer_address(local)[0]

                def read_once():
                    b = e.allocate_batch(1)
                    e.submit(b, [(kvferry.READ, addr, seg, report["base"], 4096)])
                    e.wait(b, timeout=10)
                    st = e.status(b, 0)
                    e.free_batch(b)
                    return st

                self.assertEqual(read_once().state, kvferry.TaskState.COMPLETED)
                self.assertEqual(bytes(local), b"\x42" * 4096)
                started = time.monotonic()
                child.stdin.write("bye\n")
                child.stdin.flush()
                rc, out, err = harness.finish(child, 30)
                self.assertEqual(rc, 0, err)
                self.assertLess(time.monotonic() - started, 15)
                self.assertNotIn("terminate called", err)
                # The target is gone: a READ fails within its deadline, never hangs.
                st = read_once()
                self.assertIn(st.state, (kvferry.TaskState.FAILED, kvferry.TaskState.TIMEOUT))
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()


if __name__ == "__main__":
    unittest.main()
