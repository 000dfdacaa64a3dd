#!/usr/bin/env bash
# `kvferry bench --protocol=rdma --rdma_provider=emulated` as users run it: a target process and
# initiator processes on loopback over the emulated verbs provider (software NICs), WRITE and
# READ with --verify. Checks exit codes, that every run says it is emulated and that work requests
# went over the emulated NICs; never speed (the emulation says nothing about RDMA speed).
#   tests/tools/bench_rdma_emulated.sh KVFERRY
set -euo pipefail
kvferry=$1
work=$(mktemp -d)
target_pid=
cleanup() {
  if [[ -n $target_pid ]]; then kill -TERM "$target_pid" 2>/dev/null || true; wait "$target_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "bench_rdma_emulated: $*" >&2
  echo "--- target log" >&2; cat "$work/target.log" >&2 || true
  exit 1
}
unset KVFERRY_CONFIG MOONCAKE_CONFIG_PATH
common=(--metadata_server=P2PHANDSHAKE --protocol=rdma --rdma_provider=emulated --buffer_size=8388608)

# A usage error names the flag: --rdma_provider without --protocol=rdma.
rc=0; out=$("$kvferry" bench --protocol=tcp --rdma_provider=emulated --segment_id=x 2>&1) || rc=$?
[[ $rc == 2 && $out == *--rdma_provider* ]] || fail "--rdma_provider with tcp: exit $rc: $out"

"$kvferry" bench --mode=target "${common[@]}" --local_server_name=127.0.0.1 > "$work/target.log" 2>&1 &
target_pid=$!
name=
for _ in $(seq 1 400); do
  name=$(sed -n 's/^Target ready: segment \([^ ]*\) .*/\1/p' "$work/target.log")
  [[ -n $name ]] && break
  kill -0 "$target_pid" 2>/dev/null || fail "the target exited before it was ready"
  sleep 0.05
done
[[ -n $name ]] || fail "the target did not print 'Target ready'"
grep -q "^protocol: rdma (emulated NICs, no RDMA hardware" "$work/target.log" \
  || fail "the target does not say it is emulated"

for run in "write 65536" "read 65536" "read 4096" "write 4096"; do
  set -- $run
  rc=0
  out=$("$kvferry" bench --mode=initiator "${common[@]}" --segment_id="$name" --operation="$1" \
          --block_size="$2" --batch_size=16 --threads=2 --duration=0.3 --verify --json 2>&1) || rc=$?
  echo "$out"
  [[ $rc == 0 ]] || fail "$run exited $rc: $out"
  grep -q "^protocol: rdma (emulated NICs, no RDMA hardware: figures say nothing about RDMA speed)" <<<"$out" \
    || fail "$run: no 'protocol: rdma (emulated ...' header: $out"
  grep -Eq "^Test completed: duration [0-9.]+, batch count [1-9][0-9]*, throughput" <<<"$out" \
    || fail "$run: no result line: $out"
  grep -q "verify errors 0" <<<"$out" || fail "$run: verify errors: $out"
  grep -Eq "^RDMA NIC emu_rdma[0-9]+: [1-9][0-9]* work requests posted" <<<"$out" \
    || fail "$run: no work request over the emulated NICs: $out"
  grep -q '"protocol":"rdma (emulated)"' <<<"$out" || fail "$run: JSON line lacks the protocol: $out"
done

kill -TERM "$target_pid"
rc=0; wait "$target_pid" || rc=$?
target_pid=
[[ $rc == 0 ]] || fail "the target exited $rc on SIGTERM"
grep -Eq "^Target RDMA NIC emu_rdma[0-9]+: [1-9][0-9]* handshakes accepted" "$work/target.log" \
  || fail "the target accepted no RDMA handshake"
echo "bench_rdma_emulated: passed"
