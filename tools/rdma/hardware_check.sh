#!/usr/bin/env bash
# kvferry's RDMA path on a machine with a real RDMA NIC, in one go: lists the devices
# (ibv_devices, ibv_devinfo), builds kvferry into build-rdma, runs `kvferry rdma-selftest` on
# loopback, `kvferry bench --protocol=rdma` (a target and an initiator on loopback: 64 KiB and
# 4 KiB, READ and WRITE, --verify) and, when perftest is installed, ib_write_bw / ib_read_bw /
# ib_read_lat on the same NIC as baselines; writes rdma-report.md with the figures and
# kvferry/perftest ratios. Without an RDMA device it says so and exits 77.
#
#   tools/rdma/hardware_check.sh [--device mlx5_0] [--gid-index N] [--duration S]
#                                [--build-dir DIR] [--report FILE] [--no-build] [--emulated]
# --emulated rehearses the script without hardware on the emulated provider (no perftest; its
# figures say nothing about RDMA speed).
# Exit: 0 every kvferry step passed; 1 a step failed (the report says which); 2 usage; 77 no device.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
device= gid_index= duration=5 build="$root/build-rdma" report="$PWD/rdma-report.md" do_build=1
emulated=0
while (($#)); do
  case $1 in
    --device) device=$2; shift 2 ;;
    --gid-index) gid_index=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --build-dir) build=$2; shift 2 ;;
    --report) report=$2; shift 2 ;;
    --no-build) do_build=0; shift ;;
    --emulated) emulated=1; shift ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "hardware_check: unknown argument '$1' (--help lists them)" >&2; exit 2 ;;
  esac
done

work=$(mktemp -d)
bg_pids=()
cleanup() {
  for pid in "${bg_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${bg_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
say() { echo "== $*"; }
failures=()
failed() { echo "hardware_check: FAILED: $*" >&2; failures+=("$*"); }

# -- devices ------------------------------------------------------------------------------------
devices=()
provider=verbs
if ((emulated)); then
  provider=emulated
  devices=(emu_rdma0 emu_rdma1)
  echo "EMULATED rehearsal: software NICs ${devices[*]}, no RDMA hardware" | tee "$work/ibv_devices.txt"
elif command -v ibv_devices > /dev/null; then
  ibv_devices | tee "$work/ibv_devices.txt"
  mapfile -t devices < <(awk 'NR > 2 && NF { print $1 }' "$work/ibv_devices.txt")
else
  echo "(ibv_devices not installed: apt-get install ibverbs-utils; listing /sys/class/infiniband)" \
    | tee "$work/ibv_devices.txt"
  if [[ -d /sys/class/infiniband ]]; then
    mapfile -t devices < <(ls /sys/class/infiniband)
  fi
fi
if ((${#devices[@]} == 0)); then
  echo "hardware_check: no RDMA device on this machine (ibv_devices lists none): nothing to check."
  echo "  kvferry's RDMA path runs without hardware on the emulated provider:"
  echo "  kvferry rdma-selftest --rdma_provider emulated"
  exit 77
fi
device=${device:-${devices[0]}}
[[ " ${devices[*]} " == *" $device "* ]] \
  || { echo "hardware_check: --device $device is not among: ${devices[*]}" >&2; exit 2; }
say "using $device (of: ${devices[*]})"
if command -v ibv_devinfo > /dev/null && ((!emulated)); then
  ibv_devinfo -d "$device" | tee "$work/ibv_devinfo.txt" || true
else
  echo "(ibv_devinfo not installed)" > "$work/ibv_devinfo.txt"
fi

# -- build --------------------------------------------------------------------------------------
kvferry="$build/tools/kvferry"
if ((do_build)); then
  say "building kvferry into $build"
  generator=()
  command -v ninja > /dev/null && generator=(-G Ninja)
  [[ -f $build/CMakeCache.txt ]] && generator=()
  cmake -S "$root" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release > "$work/configure.log" \
    || { cat "$work/configure.log"; echo "hardware_check: cmake configure failed" >&2; exit 1; }
  cmake --build "$build" --target kvferry -j "$(nproc)" \
    || { echo "hardware_check: the build failed" >&2; exit 1; }
fi
[[ -x $kvferry ]] || { echo "hardware_check: no kvferry at $kvferry (build it, or drop --no-build)" >&2; exit 1; }

# The engines' configuration: RDMA on loopback, the chosen NIC and GID index.
kv_extra=
[[ -n $gid_index ]] && kv_extra=", \"kvferry\": {\"rdma_gid_index\": $gid_index}"
cat > "$work/config.json" <<JSON
{"local_hostname": "127.0.0.1", "metadata_server": "P2PHANDSHAKE", "protocol": "rdma",
 "device_name": "$device"$kv_extra}
JSON
unset KVFERRY_CONFIG MOONCAKE_CONFIG_PATH

# -- kvferry rdma-selftest ----------------------------------------------------------------------
say "kvferry rdma-selftest (loopback on $device)"
"$kvferry" --config "$work/config.json" rdma-selftest --device_name "$device" --rdma_provider $provider \
  --duration "$duration" --report "$work/selftest.json" 2>&1 | tee "$work/selftest.log" \
  || failed "kvferry rdma-selftest (see its output above)"

# -- kvferry bench: target + initiator on loopback ----------------------------------------------
say "kvferry bench --protocol=rdma (target and initiator on loopback)"
"$kvferry" --config "$work/config.json" bench --mode=target --protocol=rdma --rdma_provider=$provider \
  --device_name="$device" --buffer_size=1073741824 --local_server_name=127.0.0.1 \
  > "$work/target.log" 2>&1 &
bg_pids+=($!)
segment=
for _ in $(seq 1 600); do
  segment=$(sed -n 's/^Target ready: segment \([^ ]*\) .*/\1/p' "$work/target.log")
  [[ -n $segment ]] && break
  kill -0 "${bg_pids[-1]}" 2>/dev/null || break
  sleep 0.1
done
if [[ -z $segment ]]; then
  cat "$work/target.log"
  failed "kvferry bench target did not come up"
else
  for size in 65536 4096; do
    for op in write read; do
      out="$work/bench-$op-$size.log"
      "$kvferry" --config "$work/config.json" bench --mode=initiator --protocol=rdma --rdma_provider=$provider \
        --device_name="$device" --segment_id="$segment" --operation=$op --block_size=$size \
        --batch_size=128 --threads=1 --duration="$duration" --verify --json 2>&1 | tee "$out" \
        || failed "kvferry bench $op $size"
    done
  done
  kill -TERM "${bg_pids[-1]}" 2>/dev/null || true
fi

# -- perftest baselines -------------------------------------------------------------------------
perftest_args=(-d "$device" -F)
[[ -n $gid_index ]] && perftest_args+=(-x "$gid_index")
port=18515
perftest() { # name tool args...: server in the background, client against 127.0.0.1
  local name=$1 tool=$2; shift 2
  port=$((port + 1))
  timeout 120 "$tool" "${perftest_args[@]}" -p "$port" "$@" > "$work/$name.server" 2>&1 &
  local server=$!
  bg_pids+=("$server")
  sleep 1
  if ! timeout 120 "$tool" "${perftest_args[@]}" -p "$port" "$@" 127.0.0.1 > "$work/$name.txt" 2>&1; then
    echo "(perftest $tool $* failed; see below)" >> "$work/$name.txt"
    cat "$work/$name.server" >> "$work/$name.txt"
  fi
  wait "$server" 2>/dev/null || true
  cat "$work/$name.txt"
}
if ((emulated)); then
  say "EMULATED rehearsal: no perftest baselines"
elif command -v ib_write_bw > /dev/null; then
  say "perftest baselines on $device"
  for size in 65536 4096; do
    perftest "ib_write_bw-$size" ib_write_bw -s "$size" -D "$duration" --report_gbits
    perftest "ib_read_bw-$size" ib_read_bw -s "$size" -D "$duration" --report_gbits
  done
  perftest "ib_read_lat-4096" ib_read_lat -s 4096 -n 10000
else
  say "perftest not installed (apt-get install perftest): no baselines"
fi

# -- the report ---------------------------------------------------------------------------------
python3 - "$work" "$report" "$device" "$duration" "$provider" "${failures[@]+"${failures[@]}"}" <<'PY'
import json, os, re, sys
work, report, device, duration, provider, failures = *sys.argv[1:6], sys.argv[6:]
def read(name):
    p = os.path.join(work, name)
    return open(p).read() if os.path.exists(p) else ""
def bench(op, size):
    for line in read(f"bench-{op}-{size}.log").splitlines():
        if line.startswith('{"mode":"initiator"'):
            return json.loads(line)
    return None
def perf_bw(name):  # --report_gbits: the 4th column of the result line is the average, Gb/s
    for line in read(name + ".txt").splitlines():
        f = line.split()
        if len(f) >= 4 and f[0].isdigit() and re.match(r"^[\d.]+$", f[3]):
            return float(f[3]) / 8  # GB/s (1e9 bytes)
    return None
def perf_lat(name):  # t_typical (median) and the 99% percentile, us
    for line in read(name + ".txt").splitlines():
        f = line.split()
        if len(f) >= 8 and f[0].isdigit():
            return float(f[4]), float(f[7])
    return None
def fmt(x, digits=3):
    return "n/a" if x is None else f"{x:.{digits}f}"
def ratio(a, b):
    return "n/a" if a is None or not b else f"{a / b:.2f}"
selftest = json.loads(read("selftest.json") or "{}")
out = [f"# kvferry RDMA hardware check: {device}", ""]
if provider == "emulated":
    out += ["**EMULATED rehearsal: software NICs, no RDMA hardware; the figures say nothing about RDMA speed.**", ""]
out += ["Status: " + ("every kvferry step passed" if not failures else "FAILED: " + "; ".join(failures)), ""]
out += ["## Devices", "", "```", read("ibv_devices.txt").strip(), "```", "",
        "<details><summary>ibv_devinfo</summary>", "", "```", read("ibv_devinfo.txt").strip(), "```",
        "", "</details>", ""]
out += ["## kvferry rdma-selftest (loopback, two engines in one process)", ""]
out += [f"Provider: {selftest.get('provider', 'n/a')}; NICs: {', '.join(selftest.get('nics_used', []))}; "
        f"{duration} s per phase; result: {'passed' if selftest.get('ok') else 'FAILED ' + selftest.get('error', '(no report)')}", ""]
out += ["| NIC | size | WRITE GB/s | READ GB/s | 4 KiB READ p50 us | p99 us |", "|---|---|---|---|---|---|"]
for r in selftest.get("results", []):
    if "latency_p50_us" in r:
        out.append(f"| {r['nic']} | {r['size']} (one task per batch) | | | {r['latency_p50_us']:.1f} | {r['latency_p99_us']:.1f} |")
    else:
        out.append(f"| {r['nic']} | {r['size']} x {r['tasks_per_batch']} | {r['write_gbps']:.3f} | {r['read_gbps']:.3f} | | |")
out += ["", "## kvferry bench --protocol=rdma vs perftest (loopback, one thread, batch 128)", ""]
out += ["| block | op | kvferry GB/s | perftest GB/s | kvferry / perftest | kvferry batch p50 us |",
        "|---|---|---|---|---|---|"]
for size in (65536, 4096):
    for op in ("write", "read"):
        b = bench(op, size)
        k = b["throughput_bytes_per_s"] / 1e9 if b else None
        p = perf_bw(f"ib_{op}_bw-{size}")
        out.append(f"| {size} | {op.upper()} | {fmt(k)} | {fmt(p)} | {ratio(k, p)} | "
                   f"{fmt(b['batch_latency_p50_us'] if b else None, 1)} |")
lat = perf_lat("ib_read_lat-4096")
ours = next((r for r in selftest.get("results", []) if "latency_p50_us" in r), None)
out += ["", "## 4 KiB READ latency", "", "| | p50 us | p99 us |", "|---|---|---|",
        f"| kvferry (selftest, one task per batch, through the engine) | {fmt(ours and ours['latency_p50_us'], 1)} | {fmt(ours and ours['latency_p99_us'], 1)} |",
        f"| ib_read_lat (raw verbs, typical / 99%) | {fmt(lat and lat[0], 2)} | {fmt(lat and lat[1], 2)} |",
        f"| ratio | {ratio(ours and ours['latency_p50_us'], lat and lat[0])} | {ratio(ours and ours['latency_p99_us'], lat and lat[1])} |", ""]
out += ["perftest figures: `--report_gbits` average / 8 (GB = 1e9 bytes, as kvferry reports). "
        "n/a: perftest is not installed or the run failed (raw outputs below).", ""]
for name in sorted(os.listdir(work)):
    if name.startswith("ib_") and name.endswith(".txt"):
        out += [f"<details><summary>{name}</summary>", "", "```", read(name).strip(), "```", "", "</details>", ""]
open(report, "w").write("\n".join(out) + "\n")
print(f"report: {report}")
PY
if ((${#failures[@]})); then
  echo "hardware_check: ${#failures[@]} step(s) failed: ${failures[*]}" >&2
  exit 1
fi
echo "hardware_check: every kvferry step passed; report in $report"
