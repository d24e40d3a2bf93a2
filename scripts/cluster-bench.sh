#!/usr/bin/env bash
# Replicated against single-node throughput and latency, in one session on
# this machine (make cluster-bench): the pipelined batch cycle (sync and
# async) against one cmqd, then against a three-node cluster (three cmqd
# processes on 127.0.0.1, each with its own data dir, every message on all
# three before it is acknowledged), alternating single/cluster run by run so
# a noisy neighbour hurts both alike. Then an open-loop run at half the
# cluster's measured sync throughput for the send-ack latency at half load,
# and a perf profile of the busiest node while replicating. Rewrites the
# block between the cluster-bench markers of docs/BENCHMARKS.md.
#
# Settings (environment):
#   CB_DURATION  measured seconds per run               [10]
#   CB_WARMUP    warm-up seconds per run                [2]
#   CB_RUNS      runs per scenario and setup (median)   [3]
#   CB_PROFILE   0 skips the perf profile               [1]
#   CB_DOC       the document to rewrite                [docs/BENCHMARKS.md]
#   CB_DIR       results and broker data (a real disk)  [target/bench]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${CB_DURATION:-10}
WARMUP=${CB_WARMUP:-2}
RUNS=${CB_RUNS:-3}
PROFILE=${CB_PROFILE:-1}
DOC=${CB_DOC:-docs/BENCHMARKS.md}
DIR=${CB_DIR:-$ROOT/target/bench}
CMQD=$ROOT/target/release/cmqd
CMQ=$ROOT/target/release/cmq
LOADGEN=$ROOT/target/release/cmq-loadgen
PIPELINED=(--mode cycle --pipeline 64 --batch 16 --producers 2 --consumers 2 --size 64)

log() { printf '[cluster-bench] %s\n' "$*" >&2; }

cargo build --release --locked --bins
RESULTS=$DIR/cluster-$(date +%Y%m%d-%H%M%S)
mkdir -p "$RESULTS"
log "results in $RESULTS"

# shellcheck source-path=SCRIPTDIR source=lib/ab.sh
source scripts/lib/ab.sh
trap brokers_stop EXIT

start_single() {
    local d
    d=$(mktemp -d "$RESULTS/single.XXXXXX")
    cmqd_start "$CMQD" "$d/node" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --data-dir "$d/data"
    BROKERS_PIDS=("$CMQD_PID") BROKERS_ADDRS=$CMQD_ADDR BROKERS_DIR=$d
}

start_cluster() {
    cluster_start "$(mktemp -d "$RESULTS/cluster.XXXXXX")"
}

# run SETUP NAME ARGS...: one run against a fresh SETUP (single|cluster).
run() {
    local setup=$1 name=$2 k=$3
    shift 3
    "start_$setup"
    local json="$RESULTS/$setup-$name-run$k.json"
    log "$setup $name run $k/$RUNS"
    "$LOADGEN" --server "$BROKERS_ADDRS" --duration "$DURATION" --warmup "$WARMUP" --verify --drain-timeout 60 \
        --json "$json" "$@" >"$RESULTS/$setup-$name-run$k.txt" 2>&1 || log "cmq-loadgen exited $? ($setup $name)"
    brokers_stop
}

for name in sync async; do
    for k in $(seq "$RUNS"); do
        run single "$name" "$k" "${PIPELINED[@]}" --flush "$name"
        run cluster "$name" "$k" "${PIPELINED[@]}" --flush "$name"
    done
done

median_run() { # SETUP NAME FIELD-EXPR: EXPR over the median run (by msgs/s)
    python3 - "$RESULTS" "$1" "$2" "$3" <<'EOF'
import glob, json, sys
res, setup, name, expr = sys.argv[1:]
runs = [json.load(open(f)) for f in sorted(glob.glob(f"{res}/{setup}-{name}-run*.json"))]
runs.sort(key=lambda r: r["msgs_per_s"])
r = runs[len(runs) // 2] if runs else None
print(eval(expr) if r else 0)
EOF
}

HALF=$(python3 -c "print(int($(median_run cluster sync 'r["msgs_per_s"]') / 2))")
for k in $(seq "$RUNS"); do
    run cluster half-sync "$k" "${PIPELINED[@]}" --flush sync --rate "$HALF"
done

# Where the time goes: perf on the busiest node during a replicated sync run.
if [[ $PROFILE != 0 ]] && command -v perf >/dev/null; then
    start_cluster
    "$LOADGEN" --server "$BROKERS_ADDRS" --duration $((DURATION + 4)) --warmup 1 "${PIPELINED[@]}" --flush sync \
        >"$RESULTS/profile-loadgen.txt" 2>&1 &
    lg=$!
    sleep 3
    busiest=$(for p in "${BROKERS_PIDS[@]}"; do echo "$(awk '{print $14+$15}' /proc/"$p"/stat) $p"; done | sort -n | tail -1 | cut -d' ' -f2)
    perf record -F 499 -g -p "$busiest" -o "$RESULTS/perf.data" -- sleep "$DURATION" >/dev/null 2>&1 || true
    wait "$lg" || true
    brokers_stop
    perf report -i "$RESULTS/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
        grep -E '^ +[0-9.]+%' | head -25 >"$RESULTS/profile.txt" || true
fi

TABLE=$(python3 - "$RESULTS" "$DURATION" "$WARMUP" "$RUNS" "$HALF" <<'EOF'
import glob, json, os, platform, re, subprocess, sys, time
res, dur, warm, runs, half = sys.argv[1:]

def load(setup, name):
    rs = [json.load(open(f)) for f in sorted(glob.glob(f"{res}/{setup}-{name}-run*.json"))]
    rs.sort(key=lambda r: r["msgs_per_s"])
    return rs

def us(v):
    return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} µs"

def row(label, rs):
    if not rs:
        return f"| {label} | - | - | - | - |"
    m = rs[len(rs) // 2]
    lost = sum((r.get("lost") or 0) for r in rs)
    dup = sum((r.get("duplicated") or 0) for r in rs)
    allr = ", ".join(f"{r['msgs_per_s']:,.0f}" for r in rs)
    return (f"| {label} | {m['msgs_per_s']:,.0f} | {allr} | {us(m['send_ack_us']['p50'])} / {us(m['send_ack_us']['p99'])} "
            f"| {lost} / {dup} |")

lines = []
cpu = "?"
try:
    cpu = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")][0]
except Exception:
    pass
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
loadavg = open("/proc/loadavg").read().split()[:3]
lines.append(f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} (tree at `{commit}`) on {os.cpu_count()} vCPUs ({cpu}), "
             f"load average {' / '.join(loadavg)} when written (1 / 5 / 15 min: anything near the vCPU count means other work shared them); "
             f"every broker process and the load generator on the same machine. {runs} runs of {dur} s after {warm} s of "
             "warm-up per row, single node and cluster alternating run by run; the median run (by msgs/s) is shown. "
             "Against the cluster the load generator sends idempotency keys (as the client library does there); "
             "against the single node it does not.")
lines.append("")
lines.append("| Setup | Median msgs/s | All runs | Send-ack p50 / p99 | Lost / dup |")
lines.append("| --- | ---: | --- | --- | --- |")
ratios = []
for name in ("sync", "async"):
    s, c = load("single", name), load("cluster", name)
    lines.append(row(f"cycle/{name}/pipelined, single node", s))
    lines.append(row(f"cycle/{name}/pipelined, three nodes", c))
    if s and c:
        ratios.append((name, c[len(c) // 2]["msgs_per_s"] / s[len(s) // 2]["msgs_per_s"]))
h = load("cluster", "half-sync")
lines.append(row(f"open loop at {int(half):,}/s (half the cluster's sync), three nodes", h))
lines.append("")
for name, r in ratios:
    lines.append(f"- Replicated {name} throughput is **{r:.0%}** of single-node.")
if h:
    lines.append(f"- Send-ack p99 at half load (sync, replicated): **{us(h[len(h) // 2]['send_ack_us']['p99'])}**.")
lines.append("")
lines.append("Commands: `make cluster-bench` (`scripts/cluster-bench.sh`); each run is `cmq-loadgen --server SEEDS "
             f"--duration {dur} --warmup {warm} --verify --mode cycle --pipeline 64 --batch 16 --producers 2 --consumers 2 "
             "--size 64 --flush sync|async` against a fresh single `cmqd` or a fresh three-node cluster "
             "(`--rate` for the open-loop row).")
prof = os.path.join(res, "profile.txt")
if os.path.exists(prof) and os.path.getsize(prof):
    lines.append("")
    lines.append("Profile of the busiest node during a replicated sync run (`perf record -g`, self time, top entries):")
    lines.append("")
    lines.append("```")
    lines.extend(l.rstrip() for l in open(prof).read().splitlines()[:20])
    lines.append("```")
print("\n".join(lines))
EOF
)
rewrite_block "$DOC" cluster-bench "scripts/cluster-bench.sh (make cluster-bench); edits between the markers are overwritten." \
    "Replicated against single node" "$TABLE"
echo "$TABLE"
