#!/usr/bin/env bash
# Runs the store figures of docs/PERFORMANCE.md with their baselines in the same session, RUNS
# times, and prints each figure's median and spread (min..max) over the runs, and ratios against
# the same run's baselines.
#
# Each run, on loopback:
#   baselines   kvferry bench WRITE and READ, 1 MiB blocks, batch 128, 1 thread, one target node
#               (1 GiB buffers), each run right before the store figure it is the baseline of
#   store       a master (--lease-ms 1000) and one store node (2 GiB segment), warmed up (every
#               page of the segment touched once by puts that are not measured):
#                 store-bench get 1 MiB, put 1 MiB replication 1, get 4 KiB (batch 128);
#               then a second store node (2 GiB), warmed up:
#                 store-bench put 1 MiB replication 2
#               (1 thread, batch 128, zero copy: put_from/get_into of registered memory)
#   metadata    kvferry-store-meta-bench (master_state in process)
#   trace       trace-replay of TRACE (16 KiB blocks) into two store nodes of 2 GiB each (4 GiB:
#               holds every block of the conversation trace, 2.8 GiB), then 2 x 512 MiB and
#               2 x 128 MiB (eviction); fresh master and nodes for each, warmed up
#
#   tools/perf/store_matrix.sh [build-dir] [seconds] [runs] [trace.jsonl]
#   tools/perf/store_matrix.sh --summary results.jsonl     (the summary of an earlier session)
# Every raw JSON line is kept in $STORE_MATRIX_OUT (default: store_matrix.jsonl in the current
# directory).
set -euo pipefail
# summarize FILE: each figure's median (min..max) over the runs in FILE, and the ratios to the
# same run's baselines.
summarize() {
  python3 - "$1" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
runs = sorted({r["run"] for r in rows})
print("== summary over %d runs: median (min..max)  [each run]" % len(runs))
def get(run, name):
    for r in rows:
        if r["run"] == run and r["name"] == name:
            return r
    return None
def series(f):
    vals = []
    for run in runs:
        try:
            v = f(run)
        except (TypeError, KeyError, ZeroDivisionError):
            v = None
        if v is not None:
            vals.append(v)
    return vals
def show(label, vals, fmt):
    if not vals:
        print("%-46s (no figure)" % label); return
    print("%-46s %s (%s..%s)  [%s]" % (label, fmt % statistics.median(vals), fmt % min(vals),
                                       fmt % max(vals), ", ".join(fmt % v for v in vals)))
gbs = lambda name, key: (lambda run: get(run, name)[key] / 1e9)
show("bench WRITE 1 MiB GB/s", series(gbs("bench_write", "throughput_bytes_per_s")), "%.3f")
show("bench READ 1 MiB GB/s", series(gbs("bench_read", "throughput_bytes_per_s")), "%.3f")
show("bench WRITE 1 MiB GB/s (before put r2)", series(gbs("bench_write_r2", "throughput_bytes_per_s")), "%.3f")
for name, base in (("get_1MiB", "bench_read"), ("put_1MiB_r1", "bench_write"),
                   ("put_1MiB_r2", "bench_write_r2")):
    show("store %s GB/s" % name, series(gbs(name, "bytes_per_s")), "%.3f")
    show("store %s / %s" % (name, base),
         series(lambda run: get(run, name)["bytes_per_s"] / get(run, base)["throughput_bytes_per_s"]),
         "%.2f")
    show("store %s call p50 ms" % name, series(lambda run: get(run, name)["call_p50_us"] / 1e3), "%.1f")
    show("store %s call p99 ms" % name, series(lambda run: get(run, name)["call_p99_us"] / 1e3), "%.1f")
    show("store %s store_full" % name, series(lambda run: get(run, name)["store_full"]), "%d")
show("store get 4 KiB gets/s", series(lambda run: get(run, "get_4KiB")["ops_per_s"]), "%.0f")
show("store get 4 KiB call p50 us", series(lambda run: get(run, "get_4KiB")["call_p50_us"]), "%.0f")
show("store get 4 KiB call p99 us", series(lambda run: get(run, "get_4KiB")["call_p99_us"]), "%.0f")
for op in ("exists", "get_replicas", "put", "remove"):
    for batch in (1, 128):
        name = "meta_%s_%d" % (op, batch)
        show("master %s batch %d ops/cpu-s (state)" % (op, batch),
             series(lambda run: get(run, name)["ops_per_cpu_s"]), "%.0f")
        show("master %s batch %d ops/cpu-s (+codec)" % (op, batch),
             series(lambda run: get(run, name)["codec_ops_per_cpu_s"]), "%.0f")
for cap in ("2GiB", "512MiB", "128MiB"):
    name = "trace_2x" + cap
    show("trace 2 x %s hit rate %%" % cap, series(lambda run: 100 * get(run, name)["hit_rate"]), "%.2f")
    show("trace 2 x %s infinite hit rate %%" % cap,
         series(lambda run: 100 * get(run, name)["infinite_hit_rate"]), "%.2f")
    show("trace 2 x %s hit / infinite" % cap,
         series(lambda run: get(run, name)["hit_rate"] / get(run, name)["infinite_hit_rate"]), "%.4f")
    show("trace 2 x %s requests/s" % cap, series(lambda run: get(run, name)["requests_per_s"]), "%.0f")
    show("trace 2 x %s GB/s moved" % cap, series(lambda run: get(run, name)["bytes_per_s"] / 1e9), "%.3f")
    show("trace 2 x %s get p50 us" % cap, series(lambda run: get(run, name)["get_p50_us"]), "%.0f")
    show("trace 2 x %s get p99 us" % cap, series(lambda run: get(run, name)["get_p99_us"]), "%.0f")
    show("trace 2 x %s put p50 us" % cap, series(lambda run: get(run, name)["put_p50_us"]), "%.0f")
    show("trace 2 x %s put p99 us" % cap, series(lambda run: get(run, name)["put_p99_us"]), "%.0f")
    show("trace 2 x %s store_full" % cap, series(lambda run: get(run, name)["store_full"]), "%d")
    show("trace 2 x %s evictions" % cap, series(lambda run: get(run, name)["evictions"]), "%d")
EOF
}

if [[ "${1:-}" == "--summary" ]]; then
  summarize "$2"
  exit 0
fi
build=${1:-build}
secs=${2:-5}
runs=${3:-3}
trace=${4:-$(cd "$(dirname "$0")/../../.." && pwd)/shared/data/conversation_trace.jsonl}
kv="$build/tools/kvferry"
meta="$build/tools/kvferry-store-meta-bench"
out=${STORE_MATRIX_OUT:-store_matrix.jsonl}
for bin in "$kv" "$meta"; do
  [[ -x "$bin" ]] || { echo "store_matrix: $bin not found; build it first" >&2; exit 2; }
done
[[ -f "$trace" ]] || { echo "store_matrix: trace $trace not found" >&2; exit 2; }
work=$(mktemp -d)
: > "$out"
store_pids=()
target_pid=""
stop_store() {
  for pid in "${store_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${store_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  store_pids=()
}
cleanup() {
  stop_store
  [[ -n "$target_pid" ]] && { kill -TERM "$target_pid" 2>/dev/null; wait "$target_pid" 2>/dev/null; } || true
  rm -rf "$work"
}
trap cleanup EXIT
wait_for() { # log pattern pid
  for _ in $(seq 1 600); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || { echo "store_matrix: $1:" >&2; cat "$1" >&2; exit 1; }
    sleep 0.05
  done
  echo "store_matrix: timed out waiting for '$2' in $1" >&2; exit 1
}
# record RUN NAME JSON-LINE: one line of the results file.
record() {
  python3 -c 'import json,sys; d=json.loads(sys.argv[3]); d["run"]=int(sys.argv[1]); d["name"]=sys.argv[2]; print(json.dumps(d))' \
    "$1" "$2" "$3" >> "$out"
}
start_master() {
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat > "$work/config.json" <<EOF
{ "local_hostname": "127.0.0.1", "metadata_server": "P2PHANDSHAKE", "protocol": "tcp",
  "master_server_address": "127.0.0.1:$port", "global_segment_size": "2GiB",
  "local_buffer_size": "64MiB", "kvferry": { "store_deadline_ms": 60000, "log_level": "warn" } }
EOF
  # A fresh log: the background process truncates its log only once it runs, and wait_for
  # must not find the previous master's line.
  rm -f "$work/master.log"
  "$kv" --config "$work/config.json" master --host 127.0.0.1 --port "$port" --lease-ms 1000 \
    > "$work/master.log" 2>&1 &
  store_pids+=($!)
  wait_for "$work/master.log" "listening on" $!
}
start_node() { # segment size
  sed "s/\"global_segment_size\": \"[^\"]*\"/\"global_segment_size\": \"$1\"/" "$work/config.json" \
    > "$work/node.json"
  local log="$work/node${#store_pids[@]}.log"
  rm -f "$log"
  "$kv" --config "$work/node.json" store-node > "$log" 2>&1 &
  store_pids+=($!)
  wait_for "$log" "mounted at the master" $!
}
# Touches every page of the mounted segments before anything is measured, as in a store that has
# run for a while: puts of 1 MiB values (replicas on every node) until twice the capacity was
# written. A fresh segment's first touch costs a page fault per 4 KiB page in the holder (in this
# VM about as much as the copy itself), which is not what a long-running store pays per put.
warm_up() { # replicas capacity-bytes
  local written=0 line
  for _ in $(seq 1 20); do
    line=$("$kv" --config "$work/config.json" store-bench --operation put --value_size 1MiB \
             --batch_size 16 --threads 1 --duration 2 --replica_num "$1" --json | grep '^{' | tail -1)
    written=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(int(sys.argv[2]) + d["objects"] * d["value_size"] * d["replicas"])' "$line" "$written")
    (( written >= 2 * $2 )) && return 0
  done
}
store_bench() { # run name flags...
  local run=$1 name=$2
  shift 2
  local line
  line=$("$kv" --config "$work/config.json" store-bench --batch_size 128 --threads 1 \
           --duration "$secs" --json "$@" | tee -a "$work/store-bench.log" | grep '^{' | tail -1)
  echo "  $name: $(grep -v '^{' "$work/store-bench.log" | grep '^store-bench [pg]' | tail -1)"
  record "$run" "$name" "$line"
}

echo "== host: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr); build $build"
echo "== kvferry bench target (1 GiB)"
"$kv" bench --mode=target --local_server_name=127.0.0.1:17399 --buffer_size=1073741824 \
  > "$work/target.log" 2>&1 &
target_pid=$!
wait_for "$work/target.log" "Target ready" "$target_pid"

bench() { # run name op: one kvferry bench initiator, 1 MiB, batch 128, 1 thread
  local line
  line=$("$kv" bench --segment_id=127.0.0.1:17399 --operation="$3" --block_size=1048576 \
           --batch_size=128 --threads=1 --duration="$secs" --buffer_size=1073741824 --json | tail -1)
  record "$1" "$2" "$line"
  echo "  $2: bench $3 1 MiB $(python3 -c 'import json,sys; print("%.3f GB/s" % (json.loads(sys.argv[1])["throughput_bytes_per_s"]/1e9))' "$line")"
}

for run in $(seq 1 "$runs"); do
  echo "== run $run of $runs ($(uptime | sed 's/.*load/load/'))"
  # Each store figure runs right after its baseline: on a shared machine the load changes
  # within a minute, so a baseline taken next to its figure makes the ratio meaningful.
  start_master
  start_node 2GiB
  warm_up 1 $((2 << 30))
  bench "$run" bench_read read
  store_bench "$run" get_1MiB --operation get --value_size 1MiB
  bench "$run" bench_write write
  store_bench "$run" put_1MiB_r1 --operation put --value_size 1MiB --replica_num 1
  store_bench "$run" get_4KiB --operation get --value_size 4KiB
  start_node 2GiB
  warm_up 2 $((4 << 30))
  bench "$run" bench_write_r2 write
  store_bench "$run" put_1MiB_r2 --operation put --value_size 1MiB --replica_num 2
  stop_store

  "$meta" --seconds 1 --json > "$work/meta.log"
  grep -v '^{' "$work/meta.log" | sed 's/^/  /'
  while read -r line; do
    name=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print("meta_%s_%d" % (d["op"], d["batch"]))' "$line")
    record "$run" "$name" "$line"
  done < <(grep '^{' "$work/meta.log")

  for capacity in 2GiB 512MiB 128MiB; do
    start_master
    start_node $capacity
    start_node $capacity
    warm_up 2 $(( 2 * $(numfmt --from=iec "${capacity%iB}") ))
    line=$("$kv" --config "$work/config.json" trace-replay "$trace" --block_size 16KiB --json \
             --progress 10 | tee "$work/replay.log" | grep '^{' | tail -1)
    grep '^trace-replay: [0-9]' "$work/replay.log" | head -1 | sed "s/^/  2 x $capacity: /"
    record "$run" "trace_2x$capacity" "$line"
    stop_store
  done
done

summarize "$out"
echo "raw results: $out"
