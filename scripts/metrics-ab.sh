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
WORK=$(mktemp -d)
PID=
SCRAPER=
cleanup() {
    [[ -n "$SCRAPER" ]] && kill "$SCRAPER" 2>/dev/null || true
    [[ -n "$PID" ]] && kill "$PID" 2>/dev/null || true
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
    : >"$dir/stdout"
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
    "$LOADGEN" --server "$addr" --server-pid "$PID" --duration "$DURATION" --warmup 2 --json "$dir/report.json" $SCENARIO >/dev/null 2>&1
    [[ -n "$SCRAPER" ]] && { kill "$SCRAPER"; wait "$SCRAPER" 2>/dev/null || true; SCRAPER=; }
    kill -TERM "$PID"; wait "$PID" || true; PID=
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
    "$CMQD" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --data-dir "$dir/data" >"$dir/stdout" 2>"$dir/stderr" &
    PID=$!
    local addr= web=
    for _ in $(seq 200); do
        addr=$(sed -n 's/^cmqd listening on //p' "$dir/stdout")
        web=$(sed -n 's/^cmqd http on //p' "$dir/stdout")
        [[ -n "$addr" && -n "$web" ]] && break
        sleep 0.05
    done
    for i in $(seq "$SCRAPE_QUEUES"); do
        "$CMQ" --server "$addr" create-queue "q$i" >/dev/null
        echo x | "$CMQ" --server "$addr" send "q$i" - >/dev/null
    done
    python3 - "$web" "$PID" "$SCRAPES" <<'PY'
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
    kill -TERM "$PID"; wait "$PID" || true; PID=
}

median() { python3 -c 'import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))' "$@"; }
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
    python3 - "$AB_DOC" "$SCENARIO" "$DURATION" "$summary" <<'PY'
import os, sys, time
doc, scenario, duration, summary = sys.argv[1:5]
block = (
    "<!-- metrics-ab:begin -->\n<!-- Generated by scripts/metrics-ab.sh (make bench). -->\n"
    f"What metrics cost ({time.strftime('%Y-%m-%d')}): `cmq-loadgen {scenario}`, {duration} s per run, a fresh "
    "cmqd per run; *idle*: nobody reads the HTTP port, *scraped*: GET /metrics every second.\n\n"
    + summary + "<!-- metrics-ab:end -->"
)
text = open(doc).read() if os.path.exists(doc) else "# Benchmarks\n"
b, e = "<!-- metrics-ab:begin -->", "<!-- metrics-ab:end -->"
if b in text and e in text:
    text = text[: text.index(b)] + block + text[text.index(e) + len(e):]
else:
    text = text.rstrip("\n") + "\n\n## Metrics cost\n\n" + block + "\n"
open(doc, "w").write(text)
PY
fi
