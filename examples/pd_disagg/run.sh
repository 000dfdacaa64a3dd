#!/usr/bin/env bash
# Prefill/decode disaggregation through the kvferry store on loopback: a master, a producer
# (kv_producer) and a consumer (kv_consumer), all configured by one config.json named by
# MOONCAKE_CONFIG_PATH. Exits 0 only when the consumer verified every byte.
#
#   examples/pd_disagg/run.sh [BUILD_DIR] [extra pd_disagg flags, e.g. --trace FILE --requests N]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="${1:-$here/../../build}"
shift || true
kvferry="$build/tools/kvferry"
example="$build/examples/pd_disagg/pd_disagg"
for bin in "$kvferry" "$example"; do
  [[ -x "$bin" ]] || { echo "run.sh: $bin not found; build first (see README)" >&2; exit 2; }
done
work="$(mktemp -d)"
master_pid=""
cleanup() {
  [[ -n "$master_pid" ]] && kill "$master_pid" 2>/dev/null && wait "$master_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# A free port for the master.
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
sed "s/@MASTER_PORT@/$port/" "$here/config.json" > "$work/config.json"
export MOONCAKE_CONFIG_PATH="$work/config.json"
"$kvferry" master --host 127.0.0.1 --port "$port" > "$work/master.log" 2>&1 &
master_pid=$!
for _ in $(seq 1 200); do
  grep -q "listening on" "$work/master.log" 2>/dev/null && break
  kill -0 "$master_pid" 2>/dev/null || { cat "$work/master.log" >&2; exit 1; }
  sleep 0.05
done
run_id="run$$"
"$example" --kv-role kv_consumer --run-id "$run_id" "$@" > "$work/consumer.log" 2>&1 &
consumer_pid=$!
if ! "$example" --kv-role kv_producer --run-id "$run_id" "$@"; then
  echo "run.sh: the producer failed" >&2
  kill "$consumer_pid" 2>/dev/null || true
  exit 1
fi
rc=0
wait "$consumer_pid" || rc=$?
cat "$work/consumer.log"
if [[ $rc -ne 0 ]]; then
  echo "run.sh: the consumer failed (exit $rc); master log:" >&2
  cat "$work/master.log" >&2
  exit 1
fi
echo "run.sh: every byte verified"
