#!/usr/bin/env bash
# CPU per acknowledged message of a three-node cluster on this machine:
# the pipelined batch cycle (as scripts/cluster-bench.sh runs it) against a
# fresh cluster per run, and over the measured window the CPU (utime+stime
# from /proc/PID/task/*/stat) of every node's threads and of the load
# generator, divided by the messages acknowledged. Each shard's thread is
# counted as leader or follower of its group (the leader as `cmq cluster
# status` reports it after the run), every other thread (WAL flusher,
# housekeeper, HTTP, acceptor) as "other". Several cmqd binaries are
# alternated run by run (A/B on a machine shared with other work); the
# summary gives each binary's medians.
#
# Settings (environment):
#   CC_BINS      NAME=PATH cmqd binaries, space-separated  [cur=target/release/cmqd]
#   CC_FLUSH     flush policies to run                     [sync async]
#   CC_RUNS      runs per binary and policy                [3]
#   CC_DURATION  measured seconds per run                  [8]
#   CC_WARMUP    warm-up seconds per run                   [2]
#   CC_ARGS      extra cmq-loadgen arguments               []
#   CC_NO_BUILD  1 skips `cargo build --release`           [0]
#   CC_DIR       results and broker data (a real disk)     [target/bench]
#   CC_PROFILE   1: also `perf record -g` the leader shard threads and the
#                follower shard threads (apart) over the measured window,
#                reports in the results (the runs' CPU figures then
#                include perf's own cost)                  [0]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BINS=${CC_BINS:-cur=$ROOT/target/release/cmqd}
FLUSH=${CC_FLUSH:-sync async}
RUNS=${CC_RUNS:-3}
DURATION=${CC_DURATION:-8}
WARMUP=${CC_WARMUP:-2}
DIR=${CC_DIR:-$ROOT/target/bench}
CMQ=$ROOT/target/release/cmq
LOADGEN=$ROOT/target/release/cmq-loadgen
PIPELINED=(--mode cycle --pipeline 64 --batch 16 --producers 2 --consumers 2 --size 64)

log() { printf '[cluster-cpu] %s\n' "$*" >&2; }

[[ ${CC_NO_BUILD:-0} == 1 ]] || cargo build --release --locked --bins
RESULTS=$DIR/cpu-$(date +%Y%m%d-%H%M%S)
mkdir -p "$RESULTS"
log "results in $RESULTS"

# shellcheck source=scripts/lib/ab.sh
source "$ROOT/scripts/lib/ab.sh"
BROKERS_PIDS=()
BROKERS_DIR=
trap brokers_stop EXIT

leaders() { # the leader of each shard, as JSON {"0": node, ...}
    "$CMQ" --server "$BROKERS_ADDRS" --timeout 2 cluster status --json 2>/dev/null | python3 -c '
import json, sys
shards = json.load(sys.stdin)["shards"]
if not shards or not all(s["leader"] for s in shards):
    sys.exit(1)
print(json.dumps({str(s["shard"]): s["leader"] for s in shards}))'
}

# CPU ticks of every thread of PIDS, summed by thread name: {"pid": {"name": ticks}}.
cpu_snapshot() {
    python3 - "$@" <<'EOF'
import glob, json, sys
out = {}
for pid in sys.argv[1:]:
    by = {}
    for f in glob.glob(f"/proc/{pid}/task/*/stat"):
        try:
            s = open(f).read()
        except OSError:
            continue
        name = s[s.index("(") + 1 : s.rindex(")")]
        fields = s[s.rindex(")") + 2 :].split()
        by[name] = by.get(name, 0) + int(fields[11]) + int(fields[12])
    try:
        s = open(f"/proc/{pid}/stat").read()
    except OSError:
        continue
    fields = s[s.rindex(")") + 2 :].split()
    by["*"] = int(fields[11]) + int(fields[12])  # the process, exited threads included
    out[pid] = by
print(json.dumps(out))
EOF
}

# Thread ids of the shard threads of PIDS in ROLE (leader|follower) of
# their group, comma-separated (LEADERS as `leaders` prints it).
shard_tids() { # ROLE LEADERS
    python3 - "$1" "$2" "${BROKERS_PIDS[@]}" <<'EOF'
import glob, json, sys
role, lead, pids = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
tids = []
for n, pid in enumerate(pids, 1):
    for f in glob.glob(f"/proc/{pid}/task/*/comm"):
        name = open(f).read().strip()
        if name.startswith("shard-") and (lead.get(name[6:]) == n) == (role == "leader"):
            tids.append(f.split("/")[4])
print(",".join(tids))
EOF
}

# profile BASE LEADERS SECONDS: perf on the leader and the follower shard threads.
profile() {
    local base=$1 lead=$2 secs=$3 role pids=()
    for role in leader follower; do
        perf record --no-buildid -F "${CC_PERF_FREQ:-999}" --call-graph "${CC_CALLGRAPH:-fp}" -t "$(shard_tids "$role" "$lead")" -o "$base.$role.perf" -- sleep "$secs" \
            >/dev/null 2>&1 &
        pids+=($!)
    done
    wait "${pids[@]}" || true
}

profile_report() { # BASE
    local base=$1 role
    for role in leader follower; do
        [[ -f $base.$role.perf ]] || continue
        perf report -i "$base.$role.perf" --no-children --sort dso,symbol --stdio 2>/dev/null |
            grep -E '^ +[0-9.]+%' | head -60 >"$base.$role.txt" || true
    done
}

# run BIN-NAME CMQD FLUSH K: one run against a fresh cluster.
run() {
    local name=$1 cmqd=$2 flush=$3 k=$4
    CMQD=$cmqd cluster_start "$(mktemp -d "$RESULTS/cluster.XXXXXX")"
    local base="$RESULTS/$name-$flush-run$k" lead0
    lead0=$(leaders)
    log "$name $flush run $k/$RUNS"
    "$LOADGEN" --server "$BROKERS_ADDRS" --duration "$DURATION" --warmup "$WARMUP" --verify --drain-timeout 60 \
        --json "$base.json" "${PIPELINED[@]}" --flush "$flush" ${CC_ARGS:-} >"$base.txt" 2>&1 &
    local lg=$!
    # The measured window starts after the warm-up (plus the run's set-up,
    # well under a second): sample inside it, half a second in from each end.
    sleep "$(python3 -c "print($WARMUP + 0.5)")"
    local t0 c0 t1 c1
    t0=$(date +%s.%N)
    c0=$(cpu_snapshot "${BROKERS_PIDS[@]}" "$lg")
    if [[ ${CC_PROFILE:-0} == 1 ]]; then
        profile "$base" "$lead0" "$(python3 -c "print($DURATION - 1)")"
    else
        sleep "$(python3 -c "print($DURATION - 1)")"
    fi
    t1=$(date +%s.%N)
    c1=$(cpu_snapshot "${BROKERS_PIDS[@]}" "$lg")
    wait "$lg" || log "cmq-loadgen exited $? ($name $flush)"
    profile_report "$base"
    local lead
    lead=$(leaders || echo '{}')
    python3 - "$base" "$t0" "$t1" "$c0" "$c1" "$lead" "$lg" "${BROKERS_PIDS[@]}" <<'EOF'
import json, os, sys
base, t0, t1, c0, c1, lead, lg, *pids = sys.argv[1:]
c0, c1, lead = json.loads(c0), json.loads(c1), json.loads(lead)
hz = os.sysconf("SC_CLK_TCK")
secs = float(t1) - float(t0)
r = json.load(open(base + ".json"))
rate = r["msgs_per_s"]
def us(ticks):  # µs of CPU per acknowledged message
    return ticks / hz / secs / rate * 1e6 if rate else 0.0
parts = {"leader": 0, "follower": 0, "other": 0}
nodes = []
for n, pid in enumerate(pids, 1):
    a, b = c0.get(pid, {}), c1.get(pid, {})
    tot = b.get("*", 0) - a.get("*", 0)
    shards = 0
    for tname, t in b.items():
        if tname.startswith("shard-"):
            d = t - a.get(tname, 0)
            shards += d
            parts["leader" if lead.get(tname[6:]) == n else "follower"] += d
    parts["other"] += tot - shards
    nodes.append(tot)
lgt = c1.get(lg, {}).get("*", 0) - c0.get(lg, {}).get("*", 0)
out = {
    "msgs_per_s": rate,
    "lost": r.get("lost"), "duplicated": r.get("duplicated"),
    "p99_send_ack_us": r["send_ack_us"]["p99"],
    "cluster_us": us(sum(nodes)),
    "node_us": [us(t) for t in nodes],
    "leader_us": us(parts["leader"]), "follower_us": us(parts["follower"]), "other_us": us(parts["other"]),
    "loadgen_us": us(lgt),
    "cluster_cores": sum(nodes) / hz / secs,
    "leaders": lead,
    "loadavg": open("/proc/loadavg").read().split()[0],
}
json.dump(out, open(base + ".cpu.json", "w"))
print(f"  {rate:,.0f} msgs/s  cluster {out['cluster_us']:.2f} µs/msg (leader shards {out['leader_us']:.2f}, "
      f"follower shards {out['follower_us']:.2f}, other {out['other_us']:.2f}), loadgen {out['loadgen_us']:.2f}, "
      f"cluster {out['cluster_cores']:.2f} cores, load {out['loadavg']}", file=sys.stderr)
EOF
    brokers_stop
}

for flush in $FLUSH; do
    for k in $(seq "$RUNS"); do
        for b in $BINS; do
            run "${b%%=*}" "${b#*=}" "$flush" "$k"
        done
    done
done

python3 - "$RESULTS" "$FLUSH" "$BINS" <<'EOF'
import glob, json, statistics, sys
res, flushes, bins = sys.argv[1], sys.argv[2].split(), [b.split("=", 1)[0] for b in sys.argv[3].split()]
print("| Binary | Flush | msgs/s (median; runs) | cluster µs/msg | leader shard | follower shards | other threads | loadgen µs/msg | lost/dup | load avg |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for flush in flushes:
    for b in bins:
        rs = [json.load(open(f)) for f in sorted(glob.glob(f"{res}/{b}-{flush}-run*.cpu.json"))]
        if not rs:
            continue
        med = lambda k: statistics.median(r[k] for r in rs)
        runs = ", ".join(f"{r['msgs_per_s']:,.0f}" for r in rs)
        lost = sum(r["lost"] or 0 for r in rs)
        dup = sum(r["duplicated"] or 0 for r in rs)
        cl = " / ".join(f"{r['cluster_us']:.2f}" for r in rs)
        print(f"| {b} | {flush} | {med('msgs_per_s'):,.0f} ({runs}) | **{med('cluster_us'):.2f}** ({cl}) | "
              f"{med('leader_us'):.2f} | {med('follower_us'):.2f} | {med('other_us'):.2f} | {med('loadgen_us'):.2f} | "
              f"{lost} / {dup} | {', '.join(r['loadavg'] for r in rs)} |")
EOF
