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

# shellcheck source-path=SCRIPTDIR source=lib/ab.sh
source scripts/lib/ab.sh
trap brokers_stop EXIT

start_cluster() { # plain|tls
    local extra=()
    [[ $1 == tls ]] && extra=("${TLS_ARGS[@]}")
    cluster_start "$(mktemp -d "$RESULTS/$1.XXXXXX")" "${extra[@]}"
}

run() { # plain|tls FLUSH K
    start_cluster "$1"
    log "$1 $2 run $3/$RUNS"
    "$LOADGEN" --server "$BROKERS_ADDRS" --duration "$DURATION" --warmup "$WARMUP" --verify --drain-timeout 60 \
        --json "$RESULTS/$1-$2-run$3.json" "${PIPELINED[@]}" --flush "$2" >"$RESULTS/$1-$2-run$3.txt" 2>&1 ||
        log "cmq-loadgen exited $? ($1 $2)"
    brokers_stop
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
