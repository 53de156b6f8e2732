#!/usr/bin/env bash
# The unit suites under AddressSanitizer + UndefinedBehaviorSanitizer (docs/reliability.md).
set -euo pipefail
cd "$(dirname "$0")/.."
# Every unit suite, built with g++ -fsanitize=address,undefined into build-san. Left out:
# the suites that start whole `dpserve serve` processes (test_http*, test_cli,
# test_bench_serving, *_server_test, dp_controller_process_test): with the server, every rank
# and the model under ASan they would take far longer than this stage's budget (CI runs on 2
# cores), and stage 1 runs them.
SAN_EXCLUDE='^(test_http[a-z_]*|test_cli|test_bench_serving|[a-z_]*_server_test|dp_controller_process_test)\.'
ccache_args=()
if command -v ccache >/dev/null; then
  ccache_args=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
fi
# -O1 -g and no NDEBUG: assertions stay on, stack traces stay readable.
cmake -S . -B build-san -G Ninja -DDPSERVE_SANITIZE=address,undefined "${ccache_args[@]}" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
  -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g"
# Set before building too: gtest_discover_tests runs each test binary to list its tests.
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
export ASAN_OPTIONS=detect_leaks=1
cmake --build build-san
ctest --test-dir build-san -E "$SAN_EXCLUDE" --output-on-failure -j2 --timeout 600
