#!/usr/bin/env bash
# What peer TLS costs (make peer-tls-bench): the pipelined batch cycle
# against a three-node cluster on 127.0.0.1 with plaintext peer links and
# with --peer-tls-* (a CA and a node certificate for 127.0.0.1 made here
# with openssl), alternating run by run so a noisy neighbour hurts both
# alike. Prints a Markdown table (median of the runs, every run, the
# ratio) for docs/BENCHMARKS.md ("Peer TLS"); it rewrites nothing.
#
# Settings (environment):
#   PT_DURATION  measured seconds per run               [6]
#   PT_WARMUP    warm-up seconds per run                [2]
#   PT_RUNS      runs per flush policy and setup        [3]
#   PT_FLUSH     flush policies measured                ["sync async"]
#   PT_DIR       results and broker data (a real disk)  [target/bench]
#   PT_BIN       where cmqd, cmq, cmq-loadgen are       [target/release]
#   PT_NO_BUILD  1: use the binaries as they are        [0]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${PT_DURATION:-6}
WARMUP=${PT_WARMUP:-2}
RUNS=${PT_RUNS:-3}
FLUSH=${PT_FLUSH:-sync async}
DIR=${PT_DIR:-$ROOT/target/bench}
BIN=${PT_BIN:-$ROOT/target/release}
CMQD=$BIN/cmqd
CMQ=$BIN/cmq
LOADGEN=$BIN/cmq-loadgen
PIPELINED=(--mode cycle --pipeline 64 --batch 16 --producers 2 --consumers 2 --size 64)

log() { printf '[peer-tls-bench] %s\n' "$*" >&2; }

[[ ${PT_NO_BUILD:-0} == 1 ]] || cargo build --release --locked --bins
RESULTS=$DIR/peer-tls-$(date +%Y%m%d-%H%M%S)
mkdir -p "$RESULTS"
log "results in $RESULTS"

# A CA of the cluster's own and one certificate every node presents (it
# names 127.0.0.1, where the nodes dial each other).
PKI=$RESULTS/pki
mkdir -p "$PKI"
(
    cd "$PKI"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
        -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=node -keyout node.key -out node.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n' >ext.cnf
    openssl x509 -req -in node.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -out node.pem -extfile ext.cnf 2>/dev/null
)
TLS_ARGS=(--peer-tls-cert "$PKI/node.pem" --peer-tls-key "$PKI/node.key" --peer-tls-ca "$PKI/ca.pem")

PIDS=()
ADDRS=
RUN_DIR=
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

start_cluster() { # plain|tls
    local d key n m peers extra=()
    [[ $1 == tls ]] && extra=("${TLS_ARGS[@]}")
    d=$(mktemp -d "$RESULTS/$1.XXXXXX")
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
            "${extra[@]}" >"$d/node$n.out" 2>"$d/node$n.err" &
        PIDS+=($!)
    done
    for n in 1 2 3; do wait_listening "$d/node$n.out" "${PIDS[n-1]}"; done
    ADDRS="127.0.0.1:${client[0]},127.0.0.1:${client[1]},127.0.0.1:${client[2]}"
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

run() { # plain|tls FLUSH K
    start_cluster "$1"
    log "$1 $2 run $3/$RUNS"
    "$LOADGEN" --server "$ADDRS" --duration "$DURATION" --warmup "$WARMUP" --verify --drain-timeout 60 \
        --json "$RESULTS/$1-$2-run$3.json" "${PIPELINED[@]}" --flush "$2" >"$RESULTS/$1-$2-run$3.txt" 2>&1 ||
        log "cmq-loadgen exited $? ($1 $2)"
    stop_all
}

for flush in $FLUSH; do
    for k in $(seq "$RUNS"); do
        run plain "$flush" "$k"
        run tls "$flush" "$k"
    done
done

python3 - "$RESULTS" "$DURATION" "$WARMUP" "$RUNS" "$FLUSH" <<'PY'
import glob, json, os, subprocess, sys, time
res, dur, warm, runs, flushes = sys.argv[1:]

def load(setup, name):
    rs = [json.load(open(f)) for f in sorted(glob.glob(f"{res}/{setup}-{name}-run*.json"))]
    return sorted(rs, key=lambda r: r["msgs_per_s"])

commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
loadavg = " / ".join(open("/proc/loadavg").read().split()[:3])
print(f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} (tree at `{commit}`) on {os.cpu_count()} vCPUs, "
      f"load average {loadavg} when written; three nodes and the load generator on the same machine; {runs} runs of "
      f"{dur} s after {warm} s of warm-up per row, plaintext and TLS peer links alternating run by run; median run shown.")
print()
print("| Flush | Plaintext peer links (msgs/s) | TLS peer links (msgs/s) | TLS / plaintext | Send-ack p99 plain / TLS | Lost / dup |")
print("| --- | --- | --- | ---: | --- | --- |")
for name in flushes.split():
    p, t = load("plain", name), load("tls", name)
    if not p or not t:
        print(f"| {name} | - | - | - | - | - |")
        continue
    mp, mt = p[len(p) // 2], t[len(t) // 2]
    fmt = lambda rs, m: f"**{m['msgs_per_s']:,.0f}** (" + ", ".join(f"{r['msgs_per_s']:,.0f}" for r in rs) + ")"
    lost = sum((r.get("lost") or 0) for r in p + t)
    dup = sum((r.get("duplicated") or 0) for r in p + t)
    p99 = lambda m: f"{m['send_ack_us']['p99'] / 1000:.1f} ms"
    print(f"| {name} | {fmt(p, mp)} | {fmt(t, mt)} | {mt['msgs_per_s'] / mp['msgs_per_s']:.2f} | {p99(mp)} / {p99(mt)} | {lost} / {dup} |")
PY
