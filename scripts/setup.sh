#!/usr/bin/env bash
# Installs the Debian 12 packages dpserve needs, then configures and builds it into build/.
# Safe to run again: installed packages are skipped and the build is incremental.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  cmake ninja-build g++ pkg-config git curl
  libgtest-dev libgmock-dev libbenchmark-dev
  libopenblas-dev nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev
  libsentencepiece-dev libpcre2-dev
  libzmq3-dev cppzmq-dev libmsgpack-cxx-dev libcpp-httplib-dev libgloo-dev
  # libsodium (already a dependency of libzmq3-dev, named because dpserve calls it directly):
  # Argon2id derives the cluster's CURVE keys from --cluster-secret, the field's standard.
  libsodium-dev
  python3 python3-numpy iproute2
  # clang 14 with libFuzzer and the sanitizer runtimes: tools/fuzz.sh and .ci/run's fuzzing stage
  # (the g++ sanitizer build uses g++'s own libasan / libubsan, installed with g++).
  clang-14 libclang-rt-14-dev ccache
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

BUILD_DIR="${BUILD_DIR:-build}"
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD_DIR"
