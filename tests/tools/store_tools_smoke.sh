#!/usr/bin/env bash
# Smoke test of `kvferry store-bench` and `kvferry trace-replay`: a master and two store nodes on
# loopback with small segments; store-bench --verify (put and get, two sizes, two threads,
# replication 2) for a short duration, then trace-replay of a small generated trace (and of the
# first requests of ../shared/data's conversation trace when it is there) into a store large
# enough that the hit rate must equal the infinite cache's. Checks exit codes and output lines,
# never speed.
#   tests/tools/store_tools_smoke.sh KVFERRY [SHARED_DATA_DIR]
set -euo pipefail
kvferry=$1
data_dir=${2:-}
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "store_tools_smoke: $*" >&2
  for log in "$work"/*.log; do echo "--- $log" >&2; cat "$log" >&2; done
  exit 1
}
wait_for() { # file pattern pid
  for _ in $(seq 1 400); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$3" 2>/dev/null || fail "$(basename "$1" .log) exited before printing '$2'"
    sleep 0.05
  done
  fail "$(basename "$1" .log) did not print '$2'"
}

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/config.json" <<EOF
{ "local_hostname": "127.0.0.1", "metadata_server": "P2PHANDSHAKE", "protocol": "tcp",
  "master_server_address": "127.0.0.1:$port", "global_segment_size": "48MiB",
  "local_buffer_size": "16MiB", "kvferry": { "store_deadline_ms": 30000 } }
EOF
export MOONCAKE_CONFIG_PATH="$work/config.json"

"$kvferry" master --host 127.0.0.1 --port "$port" --lease-ms 200 > "$work/master.log" 2>&1 &
pids+=($!)
wait_for "$work/master.log" "listening on" "${pids[-1]}"
for n in 1 2; do
  "$kvferry" store-node > "$work/node$n.log" 2>&1 &
  pids+=($!)
  wait_for "$work/node$n.log" "mounted at the master" "${pids[-1]}"
done

# store-bench: every value checked; both phases must print their line and their JSON line.
out=$("$kvferry" store-bench --value_size 4KiB,1MiB --batch_size 8 --threads 2 --duration 0.3 \
        --replica_num 2 --verify --json 2>&1) || fail "store-bench --verify exited non-zero: $out"
echo "$out"
for op in put get; do
  for size in 4096 1048576; do
    grep -Eq "^store-bench $op: value $size B, .* ops/s, .* GB/s; per call p50 .* us, p99 .* us .*verify errors 0\)" <<<"$out" \
      || fail "no '$op $size' result line: $out"
    grep -q "^{\"tool\":\"store-bench\",\"op\":\"$op\",\"value_size\":$size," <<<"$out" \
      || fail "no '$op $size' JSON line: $out"
  done
done
# The staging path too (one size, one thread).
out=$("$kvferry" store-bench --value_size 64KiB --batch_size 4 --threads 1 --duration 0.2 \
        --staging --verify 2>&1) || fail "store-bench --staging --verify exited non-zero: $out"
grep -q "staging (put/get, copied)" <<<"$out" || fail "no staging result line: $out"

# A generated trace: 40 requests of 1 to 12 blocks; every third request repeats an earlier one's
# prefix. The store (96 MiB) holds all of it: hit rate = infinite cache's.
python3 - "$work/trace.jsonl" <<'EOF'
import json, random, sys
random.seed(7)
reqs, next_id = [], 0
with open(sys.argv[1], "w") as f:
    for i in range(40):
        if reqs and i % 3 == 0:
            base = random.choice(reqs)
            ids = base[:random.randint(1, len(base))]
        else:
            ids = []
        for _ in range(random.randint(1, 12)):
            ids.append(next_id); next_id += 1
        reqs.append(ids)
        f.write(json.dumps({"timestamp": i, "input_length": 512 * len(ids), "output_length": 1,
                            "hash_ids": ids}) + "\n")
EOF
out=$("$kvferry" trace-replay "$work/trace.jsonl" --block_size 16KiB --verify --json --progress 0.01 2>&1) \
  || fail "trace-replay exited non-zero: $out"
echo "$out"
grep -Eq "^trace-replay: 40 requests, [0-9]+ blocks in .* s: hit rate ([0-9.]+) % \(infinite cache \1 %, ratio 1.0000\)" <<<"$out" \
  || fail "trace-replay: no summary line, or the hit rate differs from the infinite cache's: $out"
grep -Eq "^trace-replay: per call: exists p50 .* get p50 .* put p50 " <<<"$out" || fail "no latency line: $out"
grep -q "^{\"tool\":\"trace-replay\"," <<<"$out" || fail "no JSON line: $out"
grep -q "verify errors 0" <<<"$out" || fail "verify errors: $out"

if [[ -n "$data_dir" && -f "$data_dir/conversation_trace.jsonl" ]]; then
  out=$("$kvferry" trace-replay "$data_dir/conversation_trace.jsonl" --requests 60 --block_size 4KiB \
          --verify 2>&1) || fail "trace-replay of the conversation trace exited non-zero: $out"
  echo "$out"
  grep -Eq "^trace-replay: 60 requests, .* hit rate ([0-9.]+) % \(infinite cache \1 %" <<<"$out" \
    || fail "conversation trace: hit rate differs from the infinite cache's: $out"
fi
echo "store_tools_smoke: passed"
