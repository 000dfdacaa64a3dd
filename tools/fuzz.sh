#!/usr/bin/env bash
# kvferry fuzzing: libFuzzer targets for every parser of network input (tests/fuzz/README.md).
#   tools/fuzz.sh build                  configure and build the targets (clang) into build-fuzz/
#   tools/fuzz.sh short [target...]      build, replay tests/fuzz/crashes, then fuzz each target for a
#                                        few seconds from its seed corpus; non-zero on any crash
#   tools/fuzz.sh long [seconds] [target...]
#                                        fuzz each target longer (default 600 s), keeping the corpus
#                                        in build-fuzz/corpus/<target>
#   tools/fuzz.sh repro <target> <file...>
#                                        run one target on the given inputs (a crash reproducer)
#   tools/fuzz.sh seeds                  regenerate tests/fuzz/corpus with the product's encoders
# Exits 77 with "skipped: no clang/libFuzzer" when clang++ or the libFuzzer runtime is missing
# (tools/bootstrap.sh installs both: clang, libclang-rt-14-dev; and llvm-14 for the symbolizer).
# Environment: KVFERRY_FUZZ_BUILD (build folder, default build-fuzz), KVFERRY_FUZZ_CXX (compiler,
# default clang++), KVFERRY_FUZZ_JOBS (build parallelism, default 1), KVFERRY_FUZZ_SECONDS (per
# target in `short`, default 8).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${KVFERRY_FUZZ_BUILD:-$root/build-fuzz}
cxx=${KVFERRY_FUZZ_CXX:-clang++}
jobs=${KVFERRY_FUZZ_JOBS:-1}
short_seconds=${KVFERRY_FUZZ_SECONDS:-8}
fuzz_dir=$root/tests/fuzz
common_flags=(-rss_limit_mb=2048 -timeout=10 -print_final_stats=1)

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
# Symbolized reports: Debian's llvm-14 has the symbolizer, on PATH only with the `llvm` package.
if ! command -v llvm-symbolizer >/dev/null 2>&1 && [[ -x /usr/lib/llvm-14/bin/llvm-symbolizer ]]; then
  export ASAN_SYMBOLIZER_PATH=${ASAN_SYMBOLIZER_PATH:-/usr/lib/llvm-14/bin/llvm-symbolizer}
fi

say() { echo "fuzz: $*"; }

# Skips (exit 77, the message ctest looks for) when clang++ cannot build a libFuzzer program.
require_toolchain() {
  local why=""
  if ! command -v "$cxx" >/dev/null 2>&1; then
    why="$cxx not found"
  else
    local probe
    probe=$(mktemp -d)
    printf '%s\n' '#include <cstddef>' '#include <cstdint>' \
      'extern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }' >"$probe/p.cpp"
    if ! "$cxx" -fsanitize=fuzzer,address,undefined "$probe/p.cpp" -o "$probe/p" >"$probe/log" 2>&1; then
      why="$cxx cannot link -fsanitize=fuzzer ($(head -c 300 "$probe/log" | tr '\n' ' '))"
    fi
    rm -rf "$probe"
  fi
  if [[ -n "$why" ]]; then
    echo "fuzz: skipped: no clang/libFuzzer: $why. Install the Debian packages clang and libclang-rt-14-dev (tools/bootstrap.sh does)."
    exit 77
  fi
}

build() {
  require_toolchain
  if [[ ! -f "$build_dir/build.ninja" ]]; then
    CXX=$cxx cmake -S "$fuzz_dir" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  fi
  cmake --build "$build_dir" -j "$jobs"
}

all_targets() {
  tr ';' ' ' <"$build_dir/targets.txt"
}

extra_flags() {  # libFuzzer options of one target
  case "$1" in
    data_plane) echo "-max_len=16384" ;;
    *) echo "" ;;
  esac
}

failed=()
summary=()

# Replays the committed reproducers of a target; false when one still crashes.
replay_crashes() {
  local target=$1 log=$2
  local dir=$fuzz_dir/crashes/$target
  local files=()
  if [[ -d "$dir" ]]; then
    while IFS= read -r -d '' f; do files+=("$f"); done < <(find "$dir" -type f ! -name '*.md' -print0 | sort -z)
  fi
  [[ ${#files[@]} -eq 0 ]] && return 0
  if "$build_dir/${target}_fuzz" "${files[@]}" >"$log" 2>&1; then
    say "$target: ${#files[@]} reproducer(s) in tests/fuzz/crashes/$target no longer crash"
    return 0
  fi
  say "$target: a reproducer in tests/fuzz/crashes/$target still crashes (not fuzzed; see $log):"
  grep -E -A1 "FUZZ_CHECK failed" "$log" | sed 's/^/    /' | head -20
  grep -E "ERROR: |SUMMARY|Running:" "$log" | sed 's/^/    /' | head -20
  return 1
}

# fuzz_one <target> <seconds> <corpus dir>: fuzzes, records the figures, keeps the log.
fuzz_one() {
  local target=$1 seconds=$2 corpus=$3
  local log=$build_dir/logs/$mode-$target.log
  local artifacts=$build_dir/artifacts/$target/
  mkdir -p "$corpus" "$artifacts" "$build_dir/logs"
  if ! replay_crashes "$target" "$build_dir/logs/$mode-$target-replay.log"; then
    failed+=("$target")
    summary+=("$target: known crash reproduces, not fuzzed")
    return
  fi
  say "$target: fuzzing for $seconds s (log $log)"
  local rc=0
  # shellcheck disable=SC2046
  "$build_dir/${target}_fuzz" -max_total_time="$seconds" "${common_flags[@]}" $(extra_flags "$target") \
    -artifact_prefix="$artifacts" "$corpus" "$fuzz_dir/corpus/$target" >"$log" 2>&1 || rc=$?
  local done_line units
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
  units=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' || true)
  if [[ $rc -ne 0 ]]; then
    failed+=("$target")
    local unit
    unit=$(grep -oE "Test unit written to .*" "$log" | tail -1 | sed 's/Test unit written to //' || true)
    summary+=("$target: CRASH (exit $rc) reproducer ${unit:-?}")
    say "$target: crashed (exit $rc); reproducer: ${unit:-none written}; the report:"
    grep -E -A1 "FUZZ_CHECK failed" "$log" | head -4 | sed 's/^/    /'
    grep -E "ERROR: |SUMMARY| #[0-9]+ 0x.* in " "$log" | head -30 | sed 's/^/    /'
    return
  fi
  summary+=("$target: ${units:-?} executions; ${done_line:-no DONE line}")
}

print_summary() {
  echo "fuzz: ---- $mode run summary ----"
  for line in "${summary[@]}"; do echo "fuzz: $line"; done
  if [[ ${#failed[@]} -gt 0 ]]; then
    say "FAILED: ${failed[*]}"
    exit 1
  fi
  say "no crash"
}

mode=${1:-short}
shift || true
case "$mode" in
  build)
    build
    ;;
  short)
    build
    targets=("$@")
    [[ ${#targets[@]} -eq 0 ]] && read -r -a targets <<<"$(all_targets)"
    for t in "${targets[@]}"; do
      # A fresh working corpus each time: a short run starts from the seeds only.
      rm -rf "$build_dir/short/$t"
      fuzz_one "$t" "$short_seconds" "$build_dir/short/$t"
    done
    print_summary
    ;;
  long)
    seconds=600
    if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then seconds=$1; shift; fi
    build
    targets=("$@")
    [[ ${#targets[@]} -eq 0 ]] && read -r -a targets <<<"$(all_targets)"
    for t in "${targets[@]}"; do
      fuzz_one "$t" "$seconds" "$build_dir/corpus/$t"
    done
    print_summary
    ;;
  repro)
    [[ $# -ge 2 ]] || { echo "usage: tools/fuzz.sh repro <target> <file...>" >&2; exit 2; }
    build >&2
    target=$1; shift
    exec "$build_dir/${target}_fuzz" "$@"
    ;;
  seeds)
    build
    "$build_dir/make_seeds" "$fuzz_dir/corpus"
    say "seeds written to tests/fuzz/corpus"
    ;;
  *)
    echo "fuzz: unknown job '$mode' (expected build, short, long, repro or seeds)" >&2
    exit 2
    ;;
esac
