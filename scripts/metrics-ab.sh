#!/usr/bin/env bash
# What metrics cost on pipelined throughput (issue 13: under 2%): the same
# cmq-loadgen scenario against a fresh cmqd per run, alternating
#   idle:    nobody reads the HTTP port,
#   scraped: GET /metrics every second during the run,
# and optionally a third binary without metrics (BASE=/path/to/cmqd).
# Prints each run and the median of each variant.
#
#   scripts/metrics-ab.sh                      # target/release binaries
#   RUNS=3 DURATION=8 BASE=/tmp/cmqd-base scripts/metrics-ab.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CMQD=${CMQD:-$ROOT/target/release/cmqd}
LOADGEN=${LOADGEN:-$ROOT/target/release/cmq-loadgen}
RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
SCENARIO=${SCENARIO:---mode cycle --flush async --pipeline 64 --batch 1 --producers 2 --consumers 2 --size 64}
WORK=$(mktemp -d)
PID=
SCRAPER=
cleanup() {
    [[ -n "$SCRAPER" ]] && kill "$SCRAPER" 2>/dev/null || true
    [[ -n "$PID" ]] && kill "$PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# run VARIANT BINARY: one loadgen run against a fresh broker; prints msgs/s.
run() {
    local variant=$1 bin=$2 dir
    dir=$(mktemp -d "$WORK/$variant.XXXX")
    local http=(--http-listen 127.0.0.1:0)
    [[ "$variant" == base ]] && http=()
    "$bin" --listen 127.0.0.1:0 "${http[@]}" --data-dir "$dir/data" >"$dir/stdout" 2>"$dir/stderr" &
    PID=$!
    local addr= web=
    for _ in $(seq 200); do
        addr=$(sed -n 's/^cmqd listening on //p' "$dir/stdout")
        [[ -n "$addr" ]] && break
        sleep 0.05
    done
    [[ -n "$addr" ]] || { cat "$dir/stderr" >&2; exit 1; }
    web=$(sed -n 's/^cmqd http on //p' "$dir/stdout")
    if [[ "$variant" == scraped ]]; then
        python3 - "$web" <<'PY' &
import sys, time, urllib.request
while True:
    urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read()
    time.sleep(1)
PY
        SCRAPER=$!
    fi
    # shellcheck disable=SC2086
    "$LOADGEN" --server "$addr" --duration "$DURATION" --warmup 2 --json "$dir/report.json" $SCENARIO >/dev/null 2>&1
    [[ -n "$SCRAPER" ]] && { kill "$SCRAPER"; wait "$SCRAPER" 2>/dev/null || true; SCRAPER=; }
    kill -TERM "$PID"; wait "$PID" || true; PID=
    python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["msgs_per_s"]))' "$dir/report.json"
}

variants=(idle scraped)
[[ -n "${BASE:-}" ]] && variants=(base idle scraped)
declare -A results
for r in $(seq "$RUNS"); do
    for v in "${variants[@]}"; do
        bin=$CMQD
        [[ "$v" == base ]] && bin=$BASE
        rate=$(run "$v" "$bin")
        results[$v]+="$rate "
        echo "run $r $v: $rate msgs/s"
    done
done
for v in "${variants[@]}"; do
    echo "$v median: $(python3 -c 'import statistics,sys; print(round(statistics.median(map(float, sys.argv[1:]))))' ${results[$v]}) msgs/s (${results[$v]% })"
done
