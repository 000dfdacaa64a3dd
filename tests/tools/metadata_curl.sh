#!/usr/bin/env bash
# `kvferry metadata` against a plain HTTP client doing what Mooncake's clients do (curl): PUT a
# file as the value of an url-encoded key, GET it back byte-exact, DELETE it, GET -> 404, a
# request without key -> 400, a TTL entry that expires, a value above --max-value-bytes -> 413;
# then SIGTERM -> "stopped" and exit 0.
#   tests/tools/metadata_curl.sh KVFERRY [CURL]
set -euo pipefail
kvferry=$1
curl=${2:-curl}
work=$(mktemp -d)
pid=
cleanup() {
  if [[ -n $pid ]]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "metadata_curl: $*" >&2
  echo "--- kvferry metadata output" >&2
  cat "$work/server.log" >&2 || true
  exit 1
}

"$kvferry" metadata --host 127.0.0.1 --port 0 --max-value-bytes 1048576 \
  > "$work/server.log" 2>&1 &
pid=$!
port=
for _ in $(seq 1 400); do
  port=$(sed -n 's/^kvferry metadata: listening on [0-9.]*:\([0-9]*\).*/\1/p' "$work/server.log")
  [[ -n $port ]] && break
  kill -0 "$pid" 2>/dev/null || fail "kvferry metadata exited before listening"
  sleep 0.05
done
[[ -n $port ]] || fail "kvferry metadata did not print 'listening on'"
base="http://127.0.0.1:$port/metadata"
# curl's options as Mooncake's HTTP client sets them: a bounded time, no proxy from the environment.
c() { "$curl" --silent --show-error --max-time 20 --noproxy '*' "$@"; }
status() { c --output "$work/body" --write-out '%{http_code}' "$@"; }

# A value with every byte value, a JSON-looking head and a NUL in the middle.
python3 -c 'import sys; sys.stdout.buffer.write(b"{\"seg\":1}\0" + bytes(range(256)) * 300)' \
  > "$work/value"

s=$(status -X PUT --data-binary @"$work/value" "$base?key=mooncake%2Fram%2Fseg1")
[[ $s == 200 ]] || fail "PUT answered $s"
s=$(status "$base?key=mooncake%2Fram%2Fseg1")
[[ $s == 200 ]] || fail "GET answered $s"
cmp -s "$work/value" "$work/body" || fail "GET returned other bytes than were put"
# The same key written with '/' left unescaped is the same key.
s=$(status "$base?key=mooncake/ram/seg1")
[[ $s == 200 ]] && cmp -s "$work/value" "$work/body" || fail "GET with unescaped '/' answered $s"
# Keys with a space and a '%'.
s=$(status -X PUT --data-binary 'rpc' "$base?key=mooncake%2Frpc_meta%2Fnode%20a%25")
[[ $s == 200 ]] || fail "PUT of an escaped key answered $s"
[[ $(c "$base?key=mooncake%2Frpc_meta%2Fnode+a%25") == rpc ]] || fail "'+' is not a space"

s=$(status -X DELETE "$base?key=mooncake%2Fram%2Fseg1")
[[ $s == 200 ]] || fail "DELETE answered $s"
s=$(status "$base?key=mooncake%2Fram%2Fseg1")
[[ $s == 404 ]] || fail "GET after DELETE answered $s"
s=$(status -X DELETE "$base?key=mooncake%2Fram%2Fseg1")
[[ $s == 404 ]] || fail "DELETE of an absent key answered $s"
s=$(status "$base")
[[ $s == 400 ]] || fail "GET without key answered $s"
s=$(status -X PUT --data-binary x "$base?key=")
[[ $s == 400 ]] || fail "PUT with an empty key answered $s"
s=$(status "http://127.0.0.1:$port/other?key=a")
[[ $s == 404 ]] || fail "another path answered $s"
s=$(status -X POST --data-binary x "$base?key=a")
[[ $s == 405 ]] || fail "POST answered $s"

# Above --max-value-bytes: 413 (curl sends Expect: 100-continue for a large body; without it too).
head -c 1048577 /dev/zero > "$work/big"
s=$(status -X PUT --data-binary @"$work/big" "$base?key=big")
[[ $s == 413 ]] || fail "PUT of 1 MiB + 1 answered $s"
s=$(status -X PUT -H 'Expect:' --data-binary @"$work/big" "$base?key=big")
[[ $s == 413 ]] || fail "PUT of 1 MiB + 1 without Expect answered $s"

# kvferry's TTL extension: gone after its TTL (polled, at most 20 s), while a plain PUT stays.
s=$(status -X PUT --data-binary alive "$base?key=node%2Fttl&ttl_ms=300")
[[ $s == 200 ]] || fail "PUT with ttl_ms answered $s"
gone=
for _ in $(seq 1 400); do
  s=$(status "$base?key=node%2Fttl")
  if [[ $s == 404 ]]; then gone=1; break; fi
  [[ $s == 200 ]] || fail "GET of a TTL entry answered $s"
  sleep 0.05
done
[[ -n $gone ]] || fail "an entry put with ttl_ms=300 was still there after 20 s"
[[ $(c "$base?key=mooncake%2Frpc_meta%2Fnode%20a%25") == rpc ]] \
  || fail "a plain PUT did not persist"

kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=
[[ $rc == 0 ]] || fail "kvferry metadata exited $rc on SIGTERM"
grep -q '^kvferry metadata: stopped$' "$work/server.log" || fail "no 'stopped' line"
cat "$work/server.log"
echo "metadata_curl: passed"
