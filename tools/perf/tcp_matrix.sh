#!/usr/bin/env bash
# Runs the TCP benchmark matrix of docs/PERFORMANCE.md with its baselines in the same session:
# iperf3 single stream on loopback, the raw cppzmq PUSH/PULL program from ../shared/baselines,
# then `kvferry bench` write/read x 4 KiB, 64 KiB, 1 MiB x 1 and 2 threads, batch 128, and the
# latency of a single 4 KiB READ.
#   tools/perf/tcp_matrix.sh [build-dir] [seconds] [config.json]
set -euo pipefail
build=${1:-build}
secs=${2:-5}
config=${3:-}
kv="$build/tools/kvferry"
cfg=()
[[ -n "$config" ]] && cfg=(--config "$config")
baselines=$(cd "$(dirname "$0")/../../.." && pwd)/shared/baselines
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

echo "== baselines"
runs=()
for i in 1 2 3; do
  iperf3 -s -p 5299 -1 >/dev/null 2>&1 &
  sleep 0.5
  runs+=("$(iperf3 -c 127.0.0.1 -p 5299 -t "$secs" -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/8e9)')")
  wait
done
iperf=$(printf "%s\n" "${runs[@]}" | sort -g | sed -n 2p)
printf "iperf3 single stream, 3 runs: %s GB/s; median %.3f GB/s\n" "${runs[*]}" "$iperf"
if [[ -f "$baselines/zmq_thr.cpp" ]]; then
  g++ -O2 -o "$work/zmq_thr" "$baselines/zmq_thr.cpp" -lzmq
  for size in 65536 1048576; do
    count=$(( size == 65536 ? 100000 : 8000 ))
    "$work/zmq_thr" pull 5298 $size $count > "$work/zmq.out" &
    sleep 0.3
    "$work/zmq_thr" push 5298 $size $count
    wait %%
    echo "raw zmq: $(cat "$work/zmq.out")"
  done
fi

echo "== kvferry bench (batch 128)"
"$kv" "${cfg[@]}" bench --mode=target --local_server_name=127.0.0.1:17399 --buffer_size=1073741824 > "$work/target.log" 2>&1 &
target=$!
for _ in $(seq 100); do grep -q "Target ready" "$work/target.log" && break; sleep 0.1; done
printf "%-6s %-8s %-8s %10s %12s %10s\n" op block threads "GB/s" "blocks/s" "x iperf3"
for op in write read; do
  for block in 4096 65536 1048576; do
    for threads in 1 2; do
      line=$("$kv" "${cfg[@]}" bench --segment_id=127.0.0.1:17399 --operation=$op --block_size=$block \
               --batch_size=128 --threads=$threads --duration="$secs" --buffer_size=1073741824 --json | tail -1)
      gbps=$(echo "$line" | python3 -c 'import json,sys; print(json.load(sys.stdin)["throughput_bytes_per_s"]/1e9)')
      python3 -c "g=$gbps; print('%-6s %-8s %-8s %10.3f %12.0f %10.2f' % ('$op', $block, $threads, g, g*1e9/$block, g/$iperf))"
    done
  done
done
echo "== single 4 KiB READ latency (batch 1, 1 thread)"
"$kv" "${cfg[@]}" bench --segment_id=127.0.0.1:17399 --operation=read --block_size=4096 --batch_size=1 \
  --threads=1 --duration="$secs" --buffer_size=1073741824 | grep -E "latency"
kill -TERM $target; wait $target || true
