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

PIDS=()
ADDRS=
RUN_DIR=
# Stops the brokers and deletes their data (a run writes gigabytes); the
# logs stay with the results.
stop_all() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
    if [[ -n $RUN_DIR ]]; then
        find "$RUN_DIR" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
        RUN_DIR=
    fi
}
trap stop_all EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_listening() { # FILE PID
    for _ in $(seq 400); do
        grep -q '^cmqd listening on ' "$1" && return 0
        kill -0 "$2" 2>/dev/null || break
        sleep 0.05
    done
    log "cmqd did not start: $(tail -5 "${1%.out}.err")"
    exit 1
}

start_single() {
    local d
    d=$(mktemp -d "$RESULTS/single.XXXXXX")
    RUN_DIR=$d
    "$CMQD" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --data-dir "$d/data" >"$d/node.out" 2>"$d/node.err" &
    PIDS=($!)
    wait_listening "$d/node.out" "${PIDS[0]}"
    ADDRS=$(sed -n 's/^cmqd listening on //p' "$d/node.out")
}

start_cluster() {
    local d key n m peers
    d=$(mktemp -d "$RESULTS/cluster.XXXXXX")
    RUN_DIR=$d
    key=$d/cluster.key
    (umask 077 && head -c 32 /dev/urandom | base64 >"$key")
    local client=() peer=()
    for n in 1 2 3; do client+=("$(free_port)"); peer+=("$(free_port)"); done
    PIDS=()
    for n in 1 2 3; do
        peers=""
        for m in 1 2 3; do
            [[ $m == "$n" ]] || peers="${peers:+$peers,}$m=127.0.0.1:${peer[m-1]}"
        done
        "$CMQD" --node-id "$n" --listen "127.0.0.1:${client[n-1]}" --peer-listen "127.0.0.1:${peer[n-1]}" \
            --http-listen 127.0.0.1:0 --peers "$peers" --cluster-key-file "$key" --data-dir "$d/node$n" \
            >"$d/node$n.out" 2>"$d/node$n.err" &
        PIDS+=($!)
    done
    for n in 1 2 3; do wait_listening "$d/node$n.out" "${PIDS[n-1]}"; done
    ADDRS="127.0.0.1:${client[0]},127.0.0.1:${client[1]},127.0.0.1:${client[2]}"
    # Every shard has a leader.
    for _ in $(seq 200); do
        if "$CMQ" --server "$ADDRS" --timeout 2 cluster status --json 2>/dev/null | python3 -c '
import json, sys
shards = json.load(sys.stdin)["shards"]
sys.exit(0 if shards and all(s["leader"] for s in shards) else 1)' 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    log "the cluster elected no leaders: $(tail -3 "$d/node1.err")"
    exit 1
}

# run SETUP NAME ARGS...: one run against a fresh SETUP (single|cluster).
run() {
    local setup=$1 name=$2 k=$3
    shift 3
    "start_$setup"
    local json="$RESULTS/$setup-$name-run$k.json"
    log "$setup $name run $k/$RUNS"
    "$LOADGEN" --server "$ADDRS" --duration "$DURATION" --warmup "$WARMUP" --verify --drain-timeout 60 \
        --json "$json" "$@" >"$RESULTS/$setup-$name-run$k.txt" 2>&1 || log "cmq-loadgen exited $? ($setup $name)"
    stop_all
}

for name in sync async; do
    for k in $(seq "$RUNS"); do
        run single "$name" "$k" "${PIPELINED[@]}" --flush "$name"
        run cluster "$name" "$k" "${PIPELINED[@]}" --flush "$name"
    done
done

median() { # SETUP NAME FIELD-EXPR
    python3 - "$RESULTS" "$1" "$2" "$3" <<'EOF'
import glob, json, sys
res, setup, name, expr = sys.argv[1:]
runs = [json.load(open(f)) for f in sorted(glob.glob(f"{res}/{setup}-{name}-run*.json"))]
runs.sort(key=lambda r: r["msgs_per_s"])
r = runs[len(runs) // 2] if runs else None
print(eval(expr) if r else 0)
EOF
}

HALF=$(python3 -c "print(int($(median cluster sync 'r["msgs_per_s"]') / 2))")
for k in $(seq "$RUNS"); do
    run cluster half-sync "$k" "${PIPELINED[@]}" --flush sync --rate "$HALF"
done

# Where the time goes: perf on the busiest node during a replicated sync run.
if [[ $PROFILE != 0 ]] && command -v perf >/dev/null; then
    start_cluster
    "$LOADGEN" --server "$ADDRS" --duration $((DURATION + 4)) --warmup 1 "${PIPELINED[@]}" --flush sync \
        >"$RESULTS/profile-loadgen.txt" 2>&1 &
    lg=$!
    sleep 3
    busiest=$(for p in "${PIDS[@]}"; do echo "$(awk '{print $14+$15}' /proc/"$p"/stat) $p"; done | sort -n | tail -1 | cut -d' ' -f2)
    perf record -F 499 -g -p "$busiest" -o "$RESULTS/perf.data" -- sleep "$DURATION" >/dev/null 2>&1 || true
    wait "$lg" || true
    stop_all
    perf report -i "$RESULTS/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
        grep -E '^ +[0-9.]+%' | head -25 >"$RESULTS/profile.txt" || true
fi

python3 - "$RESULTS" "$DOC" "$DURATION" "$WARMUP" "$RUNS" "$HALF" <<'EOF'
import glob, json, os, platform, re, subprocess, sys, time
res, doc, dur, warm, runs, half = sys.argv[1:]

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
block = "\n".join(lines)
text = open(doc).read()
begin, end = "<!-- cluster-bench:begin -->", "<!-- cluster-bench:end -->"
gen = "<!-- Generated by scripts/cluster-bench.sh (make cluster-bench); edits between the markers are overwritten. -->"
new = f"{begin}\n{gen}\n{block}\n{end}"
if begin in text:
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: new, text, flags=re.S)
else:
    text = text.rstrip() + "\n\n## Replicated against single node\n\n" + new + "\n"
open(doc, "w").write(text)
print(block)
EOF
