#!/usr/bin/env bash
# The C API example against a `kvferry master` on loopback: a store round trip and an engine
# transfer (examples/c_api/c_store.c). Exits 0 only when the example verified every byte.
#
#   examples/c_api/run.sh [BUILD_DIR]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="${1:-$here/../../build}"
kvferry="$build/tools/kvferry"
example="$build/examples/c_api/c_store"
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
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cat > "$work/config.json" <<JSON
{ "local_hostname": "127.0.0.1", "metadata_server": "P2PHANDSHAKE", "protocol": "tcp",
  "master_server_address": "127.0.0.1:$port", "global_segment_size": "64MB",
  "local_buffer_size": "16MB" }
JSON
export MOONCAKE_CONFIG_PATH="$work/config.json"
"$kvferry" master --host 127.0.0.1 --port "$port" > "$work/master.log" 2>&1 &
master_pid=$!
for _ in $(seq 1 200); do
  grep -q "listening on" "$work/master.log" 2>/dev/null && break
  kill -0 "$master_pid" 2>/dev/null || { cat "$work/master.log" >&2; exit 1; }
  sleep 0.05
done
if ! "$example"; then
  echo "run.sh: the C example failed; master log:" >&2
  cat "$work/master.log" >&2
  exit 1
fi
