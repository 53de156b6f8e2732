#!/usr/bin/env bash
# Sweep bench_serving over --max-concurrency against a fresh `dpserve serve`, then plot.
#
#   bench/sweep_serving.sh --model-path /work/shared/models/stories260K --concurrency "1 8 32 64" \
#     --out-dir /tmp/serving-stories --png docs/img/serving_stories260k.png \
#     --server-args "--max-total-tokens 65536" -- --random-input-len 128 --random-output-len 64
#
# Options (before `--`; everything after `--` goes to every bench_serving run):
#   --model-path DIR            model to serve (required)
#   --build-dir DIR             where dpserve and bench_serving are built (default build-bench)
#   --dpserve PATH              the server binary (default <build-dir>/dpserve)
#   --port P                    server port (default 30123)
#   --concurrency "C1 C2 ..."   the --max-concurrency values (default "1 8 32 64")
#   --prompts-per-concurrency K requests per run = max(--min-prompts, K * C) (default 4)
#   --min-prompts M             (default 8)
#   --out-dir DIR               result JSONs c<C>.json and the logs (default /tmp/sweep_serving)
#   --png FILE                  plot written by tools/plot_serving.py (skipped if not given)
#   --title TEXT                plot title
#   --server-args "ARGS"        extra `dpserve serve` flags (e.g. "--max-total-tokens 65536")
# Plotting needs matplotlib (Debian: apt-get install python3-matplotlib); the runs do not.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_PATH="" BUILD_DIR=build-bench PORT=30123 CONCURRENCY="1 8 32 64" PER_C=4 MIN_PROMPTS=8
OUT_DIR=/tmp/sweep_serving PNG="" TITLE="" SERVER_ARGS="" DPSERVE=""
while (($#)); do
  case "$1" in
    --model-path) MODEL_PATH=$2; shift 2 ;;
    --build-dir) BUILD_DIR=$2; shift 2 ;;
    --dpserve) DPSERVE=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    --concurrency) CONCURRENCY=$2; shift 2 ;;
    --prompts-per-concurrency) PER_C=$2; shift 2 ;;
    --min-prompts) MIN_PROMPTS=$2; shift 2 ;;
    --out-dir) OUT_DIR=$2; shift 2 ;;
    --png) PNG=$2; shift 2 ;;
    --title) TITLE=$2; shift 2 ;;
    --server-args) SERVER_ARGS=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "sweep_serving.sh: unknown option $1 (bench_serving flags go after --)" >&2; exit 2 ;;
  esac
done
[ -n "$MODEL_PATH" ] || { echo "sweep_serving.sh: --model-path is required" >&2; exit 2; }
BENCH_ARGS=("$@")
DPSERVE=${DPSERVE:-$BUILD_DIR/dpserve}
mkdir -p "$OUT_DIR"

# shellcheck disable=SC2086  # SERVER_ARGS is a list of flags
"$DPSERVE" serve --model-path "$MODEL_PATH" --port "$PORT" $SERVER_ARGS \
  >"$OUT_DIR/server.log" 2>&1 &
SERVER_PID=$!
trap 'kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$OUT_DIR/server.log" >&2; exit 1; }
  sleep 0.5
done
curl -sf "http://127.0.0.1:$PORT/health" >/dev/null || { echo "server not healthy" >&2; exit 1; }

FILES=()
for C in $CONCURRENCY; do
  N=$((PER_C * C)); ((N >= MIN_PROMPTS)) || N=$MIN_PROMPTS
  echo "=== max concurrency $C, $N prompts, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  "$BUILD_DIR/bench/bench_serving" --port "$PORT" --max-concurrency "$C" --num-prompts "$N" \
    --flush-cache --output-file "$OUT_DIR/c$C.json" "${BENCH_ARGS[@]}" | tee "$OUT_DIR/c$C.txt"
  FILES+=("$OUT_DIR/c$C.json")
done

if [ -n "$PNG" ]; then
  /usr/bin/python3 tools/plot_serving.py --out "$PNG" ${TITLE:+--title "$TITLE"} "${FILES[@]}"
fi
