"""Processes for the Python binding's tests: a `kvferry master` on a free loopback port, a
config.json naming it, and child Python processes that import the module from the build tree.

The ctest entries set KVFERRY_TOOL (the kvferry executable) and PYTHONPATH (the build tree's
tools/python folder, where the module is)."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
KVFERRY = os.environ.get("KVFERRY_TOOL", "")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_line(path, text, proc, timeout=20.0):
    """Waits until the file at `path` contains `text`; fails when `proc` exits first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with open(path, errors="replace") as f:
            if text in f.read():
                return
        if proc.poll() is not None:
            raise RuntimeError(f"{path}: the process exited ({proc.returncode}) before printing "
                               f"'{text}':\n{open(path, errors='replace').read()}")
        time.sleep(0.05)
    raise RuntimeError(f"{path}: no '{text}' within {timeout} s")


class Master:
    """`kvferry master` on 127.0.0.1 with its config.json in a temporary folder."""

    def __init__(self, *extra_args, global_segment_size="64MB", local_buffer_size="16MB"):
        if not KVFERRY or not os.access(KVFERRY, os.X_OK):
            raise RuntimeError("KVFERRY_TOOL does not name the kvferry executable")
        self.dir = tempfile.TemporaryDirectory(prefix="kvferry-py-")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.config = {
            "local_hostname": "127.0.0.1",
            "metadata_server": "P2PHANDSHAKE",
            "protocol": "tcp",
            "device_name": "",
            "master_server_address": self.address,
            "global_segment_size": global_segment_size,
            "local_buffer_size": local_buffer_size,
        }
        self.config_path = os.path.join(self.dir.name, "config.json")
        with open(self.config_path, "w") as f:
            json.dump(self.config, f)
        self.log_path = os.path.join(self.dir.name, "master.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [KVFERRY, "master", "--host", "127.0.0.1", "--port", str(self.port), *extra_args],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_line(self.log_path, "listening on", self.proc)

    def env(self, **extra):
        """The environment of a child: MOONCAKE_CONFIG_PATH names this master's config."""
        env = dict(os.environ)
        env["MOONCAKE_CONFIG_PATH"] = self.config_path
        env.pop("KVFERRY_CONFIG", None)
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def log_text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self.dir.cleanup()


def stop_process(proc, timeout=10.0):
    """SIGSTOP, and wait until the kernel shows the process stopped (delivery is asynchronous)."""
    proc.send_signal(signal.SIGSTOP)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] in ("T", "t"):
                return
        time.sleep(0.005)
    raise RuntimeError(f"process {proc.pid} did not stop")


def python_child(script, *args, env=None, stdin=None, stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE):
    """Starts `python3 tests/python/<script> args...` (the interpreter running the tests)."""
    return subprocess.Popen([sys.executable, os.path.join(HERE, script), *map(str, args)],
                            env=env, stdin=stdin, stdout=stdout, stderr=stderr, text=True)


def finish(proc, timeout):
    """Waits for a child; returns (returncode, stdout, stderr), killing it after `timeout`."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"child did not finish within {timeout} s:\n{out}\n{err}")
    return proc.returncode, out, err
