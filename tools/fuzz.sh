#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/, clang + ASan + UBSan) and runs each for a while.
#
#   tools/fuzz.sh [options] [SECONDS] [TARGET...]
#
# SECONDS: how long each target runs (default 60; `tools/fuzz.sh 600` = 10 minutes each).
# TARGET: fuzz_request, fuzz_tokenizer, fuzz_jinja, fuzz_chat_template, fuzz_safetensors
# (default: all).
# Options:
#   -j N        run N targets at a time (default 1)
#   -b DIR      build directory (default build-fuzz)
#   -o DIR      output directory (default <build dir>/out): corpus/<target>/ (the committed seeds plus
#               what the run found; fuzz/corpus stays untouched), crashes/<target>/ (crash-*,
#               leak-*, timeout-*, oom-* inputs), logs/<target>.log
#   -n          no build (use the fuzzers already in the build directory)
#   -r RUNS     stop each target after RUNS inputs instead of after SECONDS (SECONDS still caps it)
#   -s SEED     libFuzzer's random seed (default: chosen by libFuzzer). CI uses -s 1 -r N: bounded
#               work, close to (not exactly: pointer hashing varies) what a local run sees.
#   -x ARGS     extra libFuzzer arguments for every target (e.g. -x "-max_len=65536")
# Environment: NICE (default 10) is the niceness the fuzzers run at; FUZZ_TIMEOUT (default 25)
# the seconds after which one input counts as a hang; CMAKE_ARGS are added to the configure step.
#
# Exits non-zero if any target crashed (the input is under crashes/<target>/), or if the build
# failed; a crash's report (the end of its log) and its input (base64) are printed. The last lines
# print one summary row per target from libFuzzer's final stats.
set -euo pipefail
cd "$(dirname "$0")/.."

JOBS=1
BUILD_DIR=build-fuzz
OUT_DIR=""
BUILD=1
EXTRA=""
RUNS=""
SEED=""
while getopts "j:b:o:nx:r:s:" opt; do
  case "$opt" in
    j) JOBS="$OPTARG" ;;
    b) BUILD_DIR="$OPTARG" ;;
    o) OUT_DIR="$OPTARG" ;;
    n) BUILD=0 ;;
    x) EXTRA="$OPTARG" ;;
    r) RUNS="$OPTARG" ;;
    s) SEED="$OPTARG" ;;
    *) sed -n '2,26p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
SECONDS_EACH="${1:-60}"
[ $# -gt 0 ] && shift
ALL_TARGETS=(fuzz_request fuzz_tokenizer fuzz_jinja fuzz_chat_template fuzz_safetensors)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL_TARGETS[@]}")
NICE="${NICE:-10}"
OUT_DIR="${OUT_DIR:-$BUILD_DIR/out}"

if [ "$BUILD" = 1 ]; then
  launcher=()
  if command -v ccache >/dev/null; then
    launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
  fi
  # Debian's clang-14 package installs clang-14 / clang++-14 (plain clang++ needs `clang`). The
  # compiler is chosen when the build directory is first configured only (changing it later
  # would make CMake wipe the cache).
  compilers=()
  if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
    compilers=(-DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++)
    if command -v clang++-14 >/dev/null; then
      compilers=(-DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14)
    fi
  fi
  # -O1 -g without NDEBUG: assertions (nlohmann's JSON_ASSERT included) stay on.
  # shellcheck disable=SC2086
  cmake -S . -B "$BUILD_DIR" -G Ninja -DDPSERVE_FUZZ=ON "${compilers[@]}" "${launcher[@]}" \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
    -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g" ${CMAKE_ARGS:-} >/dev/null
  nice -n "$NICE" cmake --build "$BUILD_DIR" -j "$(nproc)" --target "${TARGETS[@]}"
fi

mkdir -p "$OUT_DIR/logs"
# Leak detection on; a slow input (> $TIMEOUT s) or one using > 2 GiB is a finding too. The
# timeout is generous because on a loaded 2-core machine ASan's allocator can stall for seconds
# in madvise (a 0.1 s input once hit a 10 s timeout there).
TIMEOUT="${FUZZ_TIMEOUT:-25}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}"

run_one() {
  local t="$1"
  local corpus="$OUT_DIR/corpus/$t" crashes="$OUT_DIR/crashes/$t" log="$OUT_DIR/logs/$t.log"
  mkdir -p "$corpus" "$crashes"
  local args=(-max_total_time="$SECONDS_EACH" -timeout="$TIMEOUT" -rss_limit_mb=2048
              -print_final_stats=1 -artifact_prefix="$crashes/")
  [ -f "fuzz/dict/$t.dict" ] && args+=(-dict="fuzz/dict/$t.dict")
  [ -n "$RUNS" ] && args+=(-runs="$RUNS")
  [ -n "$SEED" ] && args+=(-seed="$SEED")
  local seeds=()
  [ -d "fuzz/corpus/$t" ] && seeds=("fuzz/corpus/$t")
  # shellcheck disable=SC2086
  if nice -n "$NICE" "$BUILD_DIR/fuzz/$t" "${args[@]}" $EXTRA "$corpus" "${seeds[@]}" \
      >"$log" 2>&1; then
    echo "$t: ok"
  else
    local rc=$?
    # One block per failure so that a CI log alone is enough to reproduce it.
    {
      echo "$t: FAILED (exit $rc): see $log and $crashes/"
      grep -n -m1 -E "ERROR: |runtime error:|Assertion|terminate called" "$log" || true
      tail -n 60 "$log"
      local f
      for f in "$crashes"/*; do
        [ -f "$f" ] || continue
        echo "$t: input $(basename "$f") (base64; decode with base64 -d):"
        head -c 16384 "$f" | base64
      done
    } | sed "s/^/[$t] /"
    return 1
  fi
}

failed=0
pids=()
names=()
for t in "${TARGETS[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 1; done
  echo "fuzz: $t for ${SECONDS_EACH}s"
  run_one "$t" &
  pids+=($!)
  names+=("$t")
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || failed=1
done

# Summary: libFuzzer's last stats line (#execs DONE cov ft corp exec/s rss) of each target.
printf '%-20s %12s %8s %8s %8s %14s %10s %s\n' target execs exec/s cov ft corpus rss crashes
for t in "${TARGETS[@]}"; do
  log="$OUT_DIR/logs/$t.log"
  line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)"
  [ -n "$line" ] || line="$(grep -E '^#[0-9]+' "$log" | tail -1 || true)"
  execs="$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$line")"
  cov="$(sed -nE 's/.*cov: ([0-9]+).*/\1/p' <<<"$line")"
  ft="$(sed -nE 's/.*ft: ([0-9]+).*/\1/p' <<<"$line")"
  corp="$(sed -nE 's/.*corp: ([0-9]+\/[0-9a-zA-Z]+).*/\1/p' <<<"$line")"
  eps="$(sed -nE 's/.*exec\/s: ([0-9]+).*/\1/p' <<<"$line")"
  rss="$(sed -nE 's/.*rss: ([0-9]+Mb).*/\1/p' <<<"$line")"
  ncrash="$(find "$OUT_DIR/crashes/$t" -type f 2>/dev/null | wc -l)"
  printf '%-20s %12s %8s %8s %8s %14s %10s %s\n' "$t" "${execs:--}" "${eps:--}" "${cov:--}" \
    "${ft:--}" "${corp:--}" "${rss:--}" "$ncrash"
done
exit "$failed"
