#!/usr/bin/env bash
# What metrics cost on pipelined throughput (issue 13: under 2%): the same
# cmq-loadgen scenario against a fresh cmqd per run, alternating
#   idle:    nobody reads the HTTP port,
#   scraped: GET /metrics every second during the run,
# and optionally a third binary without metrics (BASE=/path/to/cmqd).
# Prints each run (messages/s, and the broker's CPU per message, which a
# busy shared machine disturbs less than throughput) and the medians.
#
#   scripts/metrics-ab.sh                      # target/release binaries
#   RUNS=3 DURATION=8 BASE=/tmp/cmqd-base scripts/metrics-ab.sh
# With AB_DOC=FILE the block between <!-- metrics-ab:begin/end --> in FILE
# is rewritten with the result (make bench does this for BENCHMARKS.md).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CMQD=${CMQD:-$ROOT/target/release/cmqd}
LOADGEN=${LOADGEN:-$ROOT/target/release/cmq-loadgen}
CMQ=${CMQ:-$ROOT/target/release/cmq}
# Queues in the broker whose scrape cost is measured (each adds series).
SCRAPE_QUEUES=${SCRAPE_QUEUES:-200}
SCRAPES=${SCRAPES:-200}
RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
SCENARIO=${SCENARIO:---mode cycle --flush async --pipeline 64 --batch 1 --producers 2 --consumers 2 --size 64}
# shellcheck source-path=SCRIPTDIR source=lib/ab.sh
source "$ROOT/scripts/lib/ab.sh"
WORK=$(mktemp -d)
SCRAPER=
cleanup() {
    if [[ -n "$SCRAPER" ]]; then kill "$SCRAPER" 2>/dev/null || true; fi
    cmqd_stop
    rm -rf "$WORK"
}
trap cleanup EXIT

# run VARIANT BINARY: one loadgen run against a fresh broker; prints
# "msgs/s broker-CPU-µs-per-message".
run() {
    local variant=$1 bin=$2 dir
    dir=$(mktemp -d "$WORK/$variant.XXXX")
    local http=(--http-listen 127.0.0.1:0)
    [[ "$variant" == base ]] && http=()
    cmqd_start "$bin" "$dir/cmqd" --listen 127.0.0.1:0 "${http[@]}" --data-dir "$dir/data"
    if [[ "$variant" == scraped ]]; then
        python3 - "$CMQD_HTTP" <<'PY' &
import sys, time, urllib.request
while True:
    urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read()
    time.sleep(1)
PY
        SCRAPER=$!
    fi
    # shellcheck disable=SC2086
    "$LOADGEN" --server "$CMQD_ADDR" --server-pid "$CMQD_PID" --duration "$DURATION" --warmup 2 --json "$dir/report.json" $SCENARIO >/dev/null 2>&1
    [[ -n "$SCRAPER" ]] && { kill "$SCRAPER"; wait "$SCRAPER" 2>/dev/null || true; SCRAPER=; }
    cmqd_stop
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(round(r["msgs_per_s"]), round(1e6 * r["broker_cpu_s"] / max(r["deleted"], 1), 2))' "$dir/report.json"
}

variants=(idle scraped)
[[ -n "${BASE:-}" ]] && variants=(base idle scraped)
declare -A results cpu
for r in $(seq "$RUNS"); do
    for v in "${variants[@]}"; do
        bin=$CMQD
        [[ "$v" == base ]] && bin=$BASE
        read -r rate us < <(run "$v" "$bin")
        results[$v]+="$rate "
        cpu[$v]+="$us "
        echo "run $r $v: $rate msgs/s, $us µs broker CPU per message"
    done
done
# scrape_cost: the broker CPU one GET /metrics costs, measured directly
# (process CPU before and after SCRAPES scrapes of a broker holding
# SCRAPE_QUEUES queues with a message each). Throughput on a shared
# machine varies by more than the 2% budget; this does not.
scrape_cost() {
    local dir
    dir=$(mktemp -d "$WORK/scrape.XXXX")
    cmqd_start "$CMQD" "$dir/cmqd" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --data-dir "$dir/data"
    for i in $(seq "$SCRAPE_QUEUES"); do
        "$CMQ" --server "$CMQD_ADDR" create-queue "q$i" >/dev/null
        echo x | "$CMQ" --server "$CMQD_ADDR" send "q$i" - >/dev/null
    done
    python3 - "$CMQD_HTTP" "$CMQD_PID" "$SCRAPES" <<'PY'
import os, sys, urllib.request
web, pid, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
body = urllib.request.urlopen(f"http://{web}/metrics", timeout=5).read()
before = cpu()
for _ in range(n):
    urllib.request.urlopen(f"http://{web}/metrics", timeout=5).read()
per = (cpu() - before) / n
lines = body.count(b"\n")
print(f"{per * 1e3:.2f} ms broker CPU per scrape ({len(body)} bytes, {lines} lines), "
      f"{per * 100:.3f}% of one core at one scrape a second")
PY
    cmqd_stop
}

summary=
for v in "${variants[@]}"; do
    # shellcheck disable=SC2086
    line="$v: median $(median ${results[$v]} | cut -d. -f1) msgs/s (${results[$v]% }), median $(median ${cpu[$v]}) µs broker CPU per message (${cpu[$v]% })"
    echo "$line"
    summary+="- $line"$'\n'
done
scrape=$(scrape_cost)
echo "scrape cost with $SCRAPE_QUEUES queues: $scrape"
summary+="- scrape cost with $SCRAPE_QUEUES queues: $scrape"$'\n'
if [[ -n "${AB_DOC:-}" ]]; then
    rewrite_block "$AB_DOC" metrics-ab "scripts/metrics-ab.sh (make bench)." "Metrics cost" \
        "What metrics cost ($(date +%F)): \`cmq-loadgen $SCENARIO\`, $DURATION s per run, a fresh cmqd per run; *idle*: \
nobody reads the HTTP port, *scraped*: GET /metrics every second.

$summary"
fi
