#!/usr/bin/env bash
# Runs kvferry's GPU tests on a machine with a GPU that lacks the build's packages: copies the
# test binary and the shared libraries it needs (minus the C/C++ runtime) into one folder.
#   tools/device/run_gpu_tests.sh pack  [build-dir] [out-dir]   (on the build machine)
#   out-dir/run.sh                                               (on the GPU machine)
set -euo pipefail
cmd=${1:-pack}
build=${2:-build}
out=${3:-.device}
[[ "$cmd" == pack ]] || { echo "usage: $0 pack [build-dir] [out-dir]" >&2; exit 2; }
rm -rf "$out" && mkdir -p "$out/lib"
cp "$build/tests/cuda_paths_test" "$out/"
ldd "$build/tests/cuda_paths_test" | awk '/=>/{print $3}' \
  | grep -vE "/(libc|libm|libstdc\+\+|libgcc_s|ld-linux|libpthread|libdl|librt)\.so" \
  | xargs -I{} cp -L {} "$out/lib/"
cat > "$out/run.sh" <<'RUN'
#!/bin/bash
cd "$(dirname "$0")"
export LD_LIBRARY_PATH=$PWD/lib:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
./cuda_paths_test --color_output=no --log_level=message --report_level=short
RUN
chmod +x "$out/run.sh"
echo "packed $(du -sh "$out" | cut -f1) into $out; run $out/run.sh on the GPU machine"
