#!/usr/bin/env bash
# kvferry bootstrap: installs the Debian packages kvferry needs, configures, builds, then runs one job.
#   tools/bootstrap.sh demo        install + build + `kvferry demo` (embedded defaults)
#   tools/bootstrap.sh test        install + build + every test through ctest
#   tools/bootstrap.sh test-asan   the same tests built with AddressSanitizer + UndefinedBehaviorSanitizer
#   tools/bootstrap.sh build       install + build only
# Environment: KVFERRY_SKIP_INSTALL=1 skips apt (packages already present), KVFERRY_JOBS sets build parallelism.
set -euo pipefail

job=${1:-demo}
shift || true
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

packages=(
  g++ cmake ninja-build pkg-config curl
  libcaf-dev
  libboost-json1.81-dev libboost-test1.81-dev
  libzmq3-dev cppzmq-dev
  libibverbs-dev
  libspdlog-dev libfmt-dev libcli11-dev
  iperf3
  clang libclang-rt-14-dev llvm-14
  python3 python3-dev pybind11-dev
)

install_packages() {
  if [[ "${KVFERRY_SKIP_INSTALL:-0}" == 1 ]]; then return; fi
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then return; fi
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "bootstrap: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
  fi
  echo "bootstrap: installing ${missing[*]}"
  "${sudo[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
}

build() {  # build <dir> <cmake args...>
  local dir=$1; shift
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@"
  cmake --build "$dir" -j "${KVFERRY_JOBS:-$(nproc)}"
}

install_packages
case "$job" in
  demo)
    build build
    exec ./build/tools/kvferry demo "$@"
    ;;
  test)
    build build
    cd build && exec ctest --output-on-failure --timeout 900 "$@"
    ;;
  test-asan)
    build build-asan -DKVFERRY_SANITIZE=ON
    cd build-asan && exec ctest --output-on-failure --timeout 1800 "$@"
    ;;
  build)
    build build
    ;;
  *)
    echo "bootstrap: unknown job '$job' (expected demo, test, test-asan or build)" >&2
    exit 2
    ;;
esac
