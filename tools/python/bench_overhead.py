#!/usr/bin/env python3
"""The Python binding's overhead: one batch of 128 x 4 KiB READs (allocate, submit, wait, free)
from Python against the same batch from C++ (`kvferry bench`), against one target process, the two
runs interleaved. Prints batches per second and per-batch latency of both, and their ratio.

    PYTHONPATH=build/tools/python python3 tools/python/bench_overhead.py \\
        --kvferry build/tools/kvferry [--duration 1] [--rounds 15] [--status summary|each|all]

After each batch the Python loop checks the summary wait() returns (--status summary, the
default), or also reads every task's status: one status() call per task (each), or one
statuses() call (all). `kvferry bench` reads every task's status. docs/PERFORMANCE.md has the
figures."""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

import kvferry


def start_target(kvferry_tool, buffer_size):
    proc = subprocess.Popen([kvferry_tool, "bench", "--mode=target", "--local_server_name=127.0.0.1",
                             f"--buffer_size={buffer_size}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        m = re.match(r"Target ready: segment (\S+) serving", line)
        if m:
            return proc, m.group(1)
    raise RuntimeError(f"the target did not start (exit {proc.wait()})")


def run_cpp(kvferry_tool, segment, args):
    out = subprocess.run([kvferry_tool, "bench", "--mode=initiator", f"--segment_id={segment}",
                          "--operation=read", f"--block_size={args.block_size}",
                          f"--batch_size={args.batch_size}", f"--duration={args.duration}",
                          f"--buffer_size={args.buffer_size}", "--threads=1", "--json"],
                         capture_output=True, text=True, check=True).stdout
    summary = json.loads(out.strip().splitlines()[-1])
    return {"batches_per_s": summary["batch_count"] / summary["duration_s"],
            "p50_us": summary["batch_latency_p50_us"]}


def run_python(engine, segment, remote_base, local_base, args):
    requests = [(kvferry.READ, local_base + i * args.block_size, segment,
                 remote_base + i * args.block_size, args.block_size)
                for i in range(args.batch_size)]
    latencies = []
    start = time.perf_counter()
    end = start + args.duration
    while True:
        batch = engine.allocate_batch(args.batch_size)
        t0 = time.perf_counter()
        engine.submit(batch, requests)
        summary = engine.wait(batch, timeout=60)
        latencies.append((time.perf_counter() - t0) * 1e6)
        if summary.completed != args.batch_size:
            raise RuntimeError(f"a batch did not complete: {summary}")
        if args.status == "each":
            for i in range(args.batch_size):
                if engine.status(batch, i).state != kvferry.TaskState.COMPLETED:
                    raise RuntimeError(f"task {i} did not complete")
        elif args.status == "all":
            for i, st in enumerate(engine.statuses(batch)):
                if st.state != kvferry.TaskState.COMPLETED:
                    raise RuntimeError(f"task {i} did not complete")
        engine.free_batch(batch)
        if time.perf_counter() >= end:
            break
    elapsed = time.perf_counter() - start
    return {"batches_per_s": len(latencies) / elapsed, "p50_us": statistics.median(latencies)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kvferry", required=True, help="the kvferry executable")
    p.add_argument("--duration", type=float, default=1.0, help="seconds per run")
    p.add_argument("--rounds", type=int, default=15, help="C++ and Python runs, interleaved")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--block_size", type=int, default=4096)
    p.add_argument("--buffer_size", type=int, default=64 << 20)
    p.add_argument("--status", choices=["summary", "each", "all"], default="summary",
                   help="after each batch: check wait()'s summary, or also every task's status "
                        "(status() per task, or statuses())")
    args = p.parse_args()

    target, segment = start_target(args.kvferry, args.buffer_size)
    engine = kvferry.TransferEngine()
    try:
        engine.initialize({"local_hostname": "127.0.0.1", "metadata_server": "P2PHANDSHAKE",
                           "protocol": "tcp"})
        local = bytearray(args.batch_size * args.block_size)
        engine.register_memory(local)
        seg = engine.open_segment(segment)
        remote_base = engine.segment_regions(seg)[0][0]
        local_base = kvferry.buffer_address(local)[0]
        cpp, py = [], []
        for _ in range(args.rounds):
            cpp.append(run_cpp(args.kvferry, segment, args))
            py.append(run_python(engine, seg, remote_base, local_base, args))
        c = statistics.median(r["batches_per_s"] for r in cpp)
        y = statistics.median(r["batches_per_s"] for r in py)
        c50 = statistics.median(r["p50_us"] for r in cpp)
        y50 = statistics.median(r["p50_us"] for r in py)
        # Each round's two runs are back to back: the ratio within a round is what the other
        # load on the machine disturbs least.
        ratios = sorted(a["batches_per_s"] / b["batches_per_s"] for a, b in zip(cpp, py))
        ratio = statistics.median(ratios)
        print(f"python-overhead: {args.batch_size} x {args.block_size} B READ batches, "
              f"{args.rounds} rounds of {args.duration} s, medians: C++ {c:.0f} batches/s "
              f"(p50 {c50:.0f} us), Python (status {args.status}) {y:.0f} batches/s "
              f"(p50 {y50:.0f} us); Python/C++ time per batch {ratio:.3f} "
              f"(rounds {ratios[0]:.3f}-{ratios[-1]:.3f})")
        print(json.dumps({"cpp_batches_per_s": c, "python_batches_per_s": y, "cpp_p50_us": c50,
                          "python_p50_us": y50, "ratio": ratio, "status": args.status,
                          "rounds": [{"cpp": a, "python": b} for a, b in zip(cpp, py)]}))
    finally:
        engine.close()
        target.terminate()
        target.wait()


if __name__ == "__main__":
    sys.exit(main())
