#!/usr/bin/env bash
# make bench: criterion micro-benchmarks, then the cmq-loadgen matrix of
# issue 4, each scenario BENCH_RUNS times against a fresh cmqd, then two
# scenarios at scale (issue 3: disk reclamation after producing and consuming
# several GiB; restart time with 10 million queued messages); rewrites the
# tables between the bench markers in docs/BENCHMARKS.md.
#
# Settings (environment):
#   BENCH_DURATION  measured seconds per run            [10]
#   BENCH_WARMUP    warm-up seconds per run             [2]
#   BENCH_RUNS      runs per scenario (median reported) [3]
#   BENCH_SIZES     body sizes in bytes                 ["64 1024"]
#   BENCH_ONLY      run only scenarios whose name contains this (e.g. "sync/plain", "http/")
#   BENCH_HTTP_CONNS  HTTP scenarios: producer and consumer connections each [32]
#   BENCH_CRITERION 0 skips the criterion benchmarks    [1]
#   BENCH_SCALE     0 skips the two at-scale scenarios   [1]
#   BENCH_SECURITY  0 skips the authenticated and TLS rows (issue 12) [1]
#   BENCH_SECURITY_AB 0 skips the security-cost A/B (scripts/security-ab.sh:
#                   anonymous, authenticated, TLS and both, alternating; its
#                   own block in the document) [1]
#   BENCH_RECLAIM_BYTES  disk reclamation: bytes of 1 KiB bodies produced,
#                   then consumed                       [4294967296]
#   BENCH_RECLAIM_WAIT   seconds to wait for the log to shrink afterwards [180]
#   BENCH_RESTART_MESSAGES  restart: 64-byte messages queued [10000000]
#   BENCH_METRICS_AB 0 skips the metrics-cost A/B (scripts/metrics-ab.sh:
#                   pipelined runs with and without /metrics scraped every
#                   second; its own block in the document) [1]
#   BENCH_DOC       the document to rewrite             [docs/BENCHMARKS.md]
#   BENCH_DIR       where results and broker data go (must be a real disk,
#                   not tmpfs, or fsync costs nothing)  [target/bench]
#   BENCH_RESULTS   an earlier run's results directory: skip building and
#                   running, only rewrite the table from it
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
RUNS=${BENCH_RUNS:-3}
SIZES=${BENCH_SIZES:-64 1024}
ONLY=${BENCH_ONLY:-}
SCALE=${BENCH_SCALE:-1}
SECURITY=${BENCH_SECURITY:-1}
# Extra cmqd and cmq-loadgen flags of the security rows; AUTH=1: the broker
# makes an administrator key (--init-admin-key) and the load authenticates with it.
BROKER_EXTRA=()
LOADGEN_EXTRA=()
AUTH=0
RECLAIM_BYTES=${BENCH_RECLAIM_BYTES:-4294967296}
RECLAIM_WAIT=${BENCH_RECLAIM_WAIT:-180}
RESTART_MESSAGES=${BENCH_RESTART_MESSAGES:-10000000}
DOC=${BENCH_DOC:-docs/BENCHMARKS.md}
BENCH_DIR=${BENCH_DIR:-$ROOT/target/bench}
CMQD=$ROOT/target/release/cmqd
LOADGEN=$ROOT/target/release/cmq-loadgen
# Drain after each run for --verify; generous so a slow disk still finishes.
DRAIN_TIMEOUT=60

log() { printf '[bench] %s\n' "$*" >&2; }

command -v python3 >/dev/null || { log "python3 is needed to read the JSON reports"; exit 1; }

REPORT_ONLY=
if [[ -n "${BENCH_RESULTS:-}" ]]; then
    RESULTS=$BENCH_RESULTS
    REPORT_ONLY=1
    [[ -s "$RESULTS/scenarios" || -s "$RESULTS/reclaim-disk.json" || -s "$RESULTS/restart.json" ]] ||
        { log "$RESULTS has no results"; exit 1; }
else
    log "building release binaries"
    cargo build --release --locked --bins
    RESULTS=$BENCH_DIR/results-$(date +%Y%m%d-%H%M%S)
    mkdir -p "$RESULTS"
fi
log "results in $RESULTS"

# ---- criterion micro-benchmarks -------------------------------------------
if [[ -z "$REPORT_ONLY" && "${BENCH_CRITERION:-1}" != 0 ]]; then
    if grep -qs '^\[\[bench\]\]' ./*/Cargo.toml || compgen -G "*/benches/*.rs" >/dev/null; then
        log "criterion benchmarks"
        cargo bench --workspace --bench '*' --locked -- --noplot 2>&1 | tee "$RESULTS/criterion.txt" >&2
    else
        log "no criterion benchmarks in the workspace yet; skipped"
    fi
fi

# ---- broker lifecycle -------------------------------------------------------
# shellcheck source-path=SCRIPTDIR source=lib/ab.sh
source scripts/lib/ab.sh
CMQD_PID=
BROKER_DIR=

# Bytes the broker process caused to be written to storage so far (0 if unknown).
broker_write_bytes() {
    awk '/^write_bytes:/ {print $2}' "/proc/$CMQD_PID/io" 2>/dev/null || echo 0
}

# stop_broker [LOG]: SIGTERM our cmqd, wait for it, keep its log in LOG.
stop_broker() {
    cmqd_stop
    if [[ -n "$BROKER_DIR" && -n "${1:-}" ]]; then
        cp "$BROKER_DIR/cmqd.err" "$1" 2>/dev/null || true
    fi
    if [[ -n "$BROKER_DIR" ]]; then
        rm -rf "$BROKER_DIR"
        BROKER_DIR=
    fi
}
trap stop_broker EXIT

# A fresh cmqd (BROKER_DIR: its data and logs); with AUTH=1 it makes an
# administrator key, BROKER_DIR/admin.creds. Sets CMQD_PID, CMQD_ADDR, CMQD_HTTP.
start_broker() {
    BROKER_DIR=$(mktemp -d "$BENCH_DIR/cmqd.XXXXXX")
    local auth=()
    [[ "$AUTH" == 1 ]] && auth=(--init-admin-key "$BROKER_DIR/admin.creds")
    cmqd_start "$CMQD" "$BROKER_DIR/cmqd" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
        --data-dir "$BROKER_DIR/data" ${BROKER_EXTRA[@]+"${BROKER_EXTRA[@]}"} ${auth[@]+"${auth[@]}"}
    [[ "$AUTH" != 1 ]] || cmqd_wait_file "$BROKER_DIR/admin.creds"
}

# Reads fields of a JSON report: json_get FILE EXPR (a Python expression over r).
json_get() {
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

# run_scenario NAME SIZE ARGS...: BENCH_RUNS runs, each on a fresh broker.
run_scenario() {
    local name=$1 size=$2
    shift 2
    if [[ -n "$ONLY" && "$name" != *"$ONLY"* ]]; then
        return 0
    fi
    local slug
    slug=$(echo "$name-$size" | tr '/ ' '__')
    for run in $(seq "$RUNS"); do
        start_broker
        local json="$RESULTS/$slug-run$run.json"
        log "$name, $size-byte bodies, run $run/$RUNS"
        local rc=0 creds=()
        [[ "$AUTH" == 1 ]] && creds=(--credentials "$BROKER_DIR/admin.creds")
        # @HTTP in the arguments: the CMQ API URL of this run's broker.
        local args=("${@//@HTTP/http://$CMQD_HTTP}")
        "$LOADGEN" --server "$CMQD_ADDR" --server-pid "$CMQD_PID" --size "$size" \
            ${LOADGEN_EXTRA[@]+"${LOADGEN_EXTRA[@]}"} ${creds[@]+"${creds[@]}"} \
            --duration "$DURATION" --warmup "$WARMUP" --verify --drain-timeout "$DRAIN_TIMEOUT" \
            --json "$json" "${args[@]}" >"$RESULTS/$slug-run$run.txt" 2>"$RESULTS/$slug-run$run.progress" || rc=$?
        # What reached the disk: a broker that acknowledges sync sends must have written them.
        broker_write_bytes >"$RESULTS/$slug-run$run.disk_bytes"
        stop_broker "$RESULTS/$slug-run$run.cmqd.log"
        if [[ ! -s "$json" ]]; then
            log "run failed (exit $rc), no report; see $RESULTS/$slug-run$run.progress"
            exit 1
        fi
        if [[ $rc != 0 ]]; then
            log "cmq-loadgen exited $rc (2: lost or duplicated messages, 3: a connection broke)"
        fi
        cat "$RESULTS/$slug-run$run.txt" >&2
    done
    echo "$name|$size|$slug" >>"$RESULTS/scenarios"
}

# The median run's msgs/s of a scenario already run (0 if it was skipped).
median_rate() {
    local slug=$1
    python3 - "$RESULTS" "$slug" <<'EOF'
import glob, json, statistics, sys
files = sorted(glob.glob(f"{sys.argv[1]}/{sys.argv[2]}-run*.json"))
rates = [json.load(open(f))["msgs_per_s"] for f in files]
print(int(statistics.median_low(rates)) if rates else 0)
EOF
}

# ---- the matrix (issue 4) ---------------------------------------------------
PIPELINED=(--pipeline 64 --batch 16 --producers 2 --consumers 2)
# The plain scenarios: one request in flight on each of 8 + 8 connections.
# How many event-loop threads drive them is the client's choice; each plain
# scenario uses the faster one, measured A/B on this machine (see "Load
# generator threads" in docs/BENCHMARKS.md): sync/plain is faster with one
# loop (answers trickle in at fdatasync pace and one loop collects them with
# the fewest wake-ups), async/plain with two (one loop saturates a vCPU).
PLAIN=(--pipeline 1 --batch 1 --producers 8 --consumers 8)

for size in $SIZES; do
    [[ -n "$REPORT_ONLY" ]] && break
    run_scenario "cycle/sync/pipelined" "$size" --mode cycle --flush sync "${PIPELINED[@]}"
    run_scenario "cycle/async/pipelined" "$size" --mode cycle --flush async "${PIPELINED[@]}"
    run_scenario "cycle/sync/plain" "$size" --mode cycle --flush sync "${PLAIN[@]}" --threads 1
    run_scenario "cycle/async/plain" "$size" --mode cycle --flush async "${PLAIN[@]}" --threads 2
    for flush in sync async; do
        max=$(median_rate "cycle_${flush}_pipelined-$size")
        if [[ "$max" -gt 0 ]]; then
            rate=$((max / 2))
            run_scenario "open-loop/$flush/half-max" "$size" --mode cycle --flush "$flush" "${PIPELINED[@]}" \
                --rate "$rate"
        elif [[ -z "$ONLY" || "open-loop/$flush/half-max" == *"$ONLY"* ]]; then
            echo "open-loop/$flush/half-max|$size|not run: cycle/$flush/pipelined measured a median of 0 msgs/s" \
                >>"$RESULTS/skipped"
        fi
    done
done

# ---- the CMQ API 2.0 gateway (issue 14) ----------------------------------------
# SendMessage / ReceiveMessage / DeleteMessage over keep-alive HTTP/1.1, one
# request in flight on each of HTTP_CONNS + HTTP_CONNS connections (the SDKs'
# way), every request signed (HmacSHA256; the broker has no keys here, so it
# serves them anonymously: docs/BENCHMARKS.md has the keyed figures).
HTTP_CONNS=${BENCH_HTTP_CONNS:-32}
HTTP=(--http @HTTP --producers "$HTTP_CONNS" --consumers "$HTTP_CONNS" --threads 1 --wait 1)
for size in $SIZES; do
    [[ -n "$REPORT_ONLY" ]] && break
    run_scenario "http/cycle/sync" "$size" --mode cycle --flush sync "${HTTP[@]}"
    run_scenario "http/cycle/async" "$size" --mode cycle --flush async "${HTTP[@]}"
done

# ---- security (issue 12): what authentication and TLS cost --------------------
# The async pipelined and plain rows again, with every connection
# authenticated (and permission-checked), over TLS, and both; 64-byte bodies.
# A throwaway self-signed certificate is made for the run.
if [[ "$SECURITY" != 0 && -z "$REPORT_ONLY" ]]; then
    TLS_DIR=$(mktemp -d "$BENCH_DIR/tls.XXXXXX")
    self_signed_cert "$TLS_DIR"
    TLS_BROKER=(--tls-cert "$TLS_DIR/server.pem" --tls-key "$TLS_DIR/server.key")
    TLS_LOAD=(--tls --ca-file "$TLS_DIR/server.pem")
    for variant in auth tls auth+tls; do
        AUTH=0 BROKER_EXTRA=() LOADGEN_EXTRA=()
        [[ "$variant" == *auth* ]] && AUTH=1
        [[ "$variant" == *tls* ]] && BROKER_EXTRA=("${TLS_BROKER[@]}") LOADGEN_EXTRA=("${TLS_LOAD[@]}")
        run_scenario "cycle/async/pipelined+$variant" 64 --mode cycle --flush async "${PIPELINED[@]}"
        run_scenario "cycle/async/plain+$variant" 64 --mode cycle --flush async "${PLAIN[@]}" --threads 2
    done
    AUTH=0 BROKER_EXTRA=() LOADGEN_EXTRA=()
fi

# ---- at scale (issue 3): disk reclamation and restart time ---------------------
# Disk use per shard: the broker's write-ahead-log segments, shard-K/*.log.
# log_usage DATA_DIR prints one JSON object: {"K": [segments, bytes, allocated bytes], ...}.
log_usage() {
    python3 - "$1" <<'EOF'
import glob, json, os, sys
out = {}
for shard_dir in sorted(glob.glob(os.path.join(sys.argv[1], "shard-*"))):
    k = shard_dir.rsplit("-", 1)[1]
    segs = size = alloc = 0
    for f in glob.glob(os.path.join(shard_dir, "*.log")):
        try:
            st = os.stat(f)
        except FileNotFoundError:
            continue  # released while we looked
        segs += 1
        size += st.st_size
        alloc += st.st_blocks * 512
    out[k] = [segs, size, alloc]
print(json.dumps(out))
EOF
}

wants() { [[ -z "$ONLY" || "$1" == *"$ONLY"* ]]; }

# Produce RECLAIM_BYTES of 1 KiB bodies (async) into one queue per shard,
# consume and delete them all, then watch the log shrink back: housekeeping
# releases whole segments about once a second.
run_reclaim() {
    local msgs=$((RECLAIM_BYTES / 1024))
    start_broker
    local data=$BROKER_DIR/data
    rm -f "$RESULTS/reclaim.consumed"
    # Samples the log's size every 0.25 s from start to end; after the
    # consumers finish, waits until every shard is down to two segments (the
    # live one and one prepared ahead), or the size has not changed for 20 s,
    # or RECLAIM_WAIT seconds have passed.
    python3 - "$data" "$RESULTS" "$RECLAIM_WAIT" <<'EOF' &
import glob, json, os, sys, time
data, results, wait_max = sys.argv[1], sys.argv[2], float(sys.argv[3])
samples = open(os.path.join(results, "reclaim.samples"), "w")
def usage():
    out = {}
    for shard_dir in sorted(glob.glob(os.path.join(data, "shard-*"))):
        segs = size = 0
        for f in glob.glob(os.path.join(shard_dir, "*.log")):
            try:
                size += os.stat(f).st_size
                segs += 1
            except FileNotFoundError:
                pass
        out[shard_dir.rsplit("-", 1)[1]] = [segs, size]
    return out
peak = {}
consumed_at = None
reached = False
last_change, last_total = time.time(), None
while True:
    now = time.time()
    u = usage()
    samples.write(f"{now:.3f} {json.dumps(u)}\n")
    for k, (segs, size) in u.items():
        p = peak.setdefault(k, [0, 0])
        p[0], p[1] = max(p[0], segs), max(p[1], size)
    total = sum(size for _, size in u.values())
    if total != last_total:
        last_change, last_total = now, total
    if not os.path.isdir(data):
        break  # the broker's directory is gone: the script ended early
    marker = os.path.join(results, "reclaim.consumed")
    if consumed_at is None and os.path.exists(marker):
        consumed_at = float(open(marker).read().strip() or now)
    if consumed_at is not None:
        reached = all(segs <= 2 for segs, _ in u.values())
        if reached or now - last_change >= 20 or now - consumed_at >= wait_max:
            break
    time.sleep(0.25)
consumed_at = consumed_at or now
# reclaim_s: from the last delete's answer until the log was as small as it got.
json.dump({"peak": peak, "final": u, "reached_two_segments": reached,
           "reclaim_s": round(max(0.0, (now if reached else last_change) - consumed_at), 2),
           "watched_s": round(now - consumed_at, 2)},
          open(os.path.join(results, "reclaim-disk.json"), "w"))
EOF
    local watcher=$!
    log "disk reclamation: producing $msgs 1 KiB messages (async)"
    local common=(--server "$CMQD_ADDR" --server-pid "$CMQD_PID" --size 1024 --flush async --batch 16
        --pipeline 64 --queue-prefix reclaim)
    local rc=0
    "$LOADGEN" "${common[@]}" --mode produce --producers 2 --messages "$msgs" \
        --json "$RESULTS/reclaim-produce.json" >"$RESULTS/reclaim-produce.txt" 2>"$RESULTS/reclaim-produce.progress" ||
        rc=$?
    [[ $rc == 0 ]] || log "producing exited $rc; see $RESULTS/reclaim-produce.progress"
    log "disk reclamation: log after producing: $(log_usage "$data")"
    log "disk reclamation: consuming and deleting them"
    rc=0
    "$LOADGEN" "${common[@]}" --mode consume --reuse --preload 0 --consumers 2 --messages "$msgs" \
        --json "$RESULTS/reclaim-consume.json" >"$RESULTS/reclaim-consume.txt" 2>"$RESULTS/reclaim-consume.progress" ||
        rc=$?
    [[ $rc == 0 ]] || log "consuming exited $rc; see $RESULTS/reclaim-consume.progress"
    date +%s.%N >"$RESULTS/reclaim.consumed"
    log "disk reclamation: waiting for housekeeping to release segments (up to $RECLAIM_WAIT s)"
    wait "$watcher" || true
    cat "$RESULTS/reclaim-produce.txt" "$RESULTS/reclaim-consume.txt" >&2
    log "disk reclamation: $(cat "$RESULTS/reclaim-disk.json" 2>/dev/null)"
    stop_broker "$RESULTS/reclaim.cmqd.log"
}

# Produce RESTART_MESSAGES 64-byte messages (async, batch 16, pipelined),
# stop cmqd with SIGTERM, start it again on the same data and time it from
# spawn to "cmqd listening on"; then its memory and the queues' counts.
run_restart() {
    start_broker
    local data=$BROKER_DIR/data
    local rss_empty
    rss_empty=$(awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$CMQD_PID/status")
    log "restart: producing $RESTART_MESSAGES 64-byte messages (async)"
    local rc=0
    "$LOADGEN" --server "$CMQD_ADDR" --server-pid "$CMQD_PID" --size 64 --flush async --batch 16 --pipeline 64 \
        --producers 2 --queue-prefix restart --mode produce --messages "$RESTART_MESSAGES" \
        --json "$RESULTS/restart-produce.json" >"$RESULTS/restart-produce.txt" \
        2>"$RESULTS/restart-produce.progress" || rc=$?
    [[ $rc == 0 ]] || log "producing exited $rc; see $RESULTS/restart-produce.progress"
    cat "$RESULTS/restart-produce.txt" >&2
    local rss_before
    rss_before=$(awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$CMQD_PID/status")
    log_usage "$data" >"$RESULTS/restart-disk.json"
    log "restart: SIGTERM; log on disk: $(cat "$RESULTS/restart-disk.json")"
    local t0 t1
    t0=$(date +%s.%N)
    kill "$CMQD_PID"
    wait "$CMQD_PID" 2>/dev/null || true
    t1=$(date +%s.%N)
    CMQD_PID=
    cp "$BROKER_DIR/cmqd.err" "$RESULTS/restart-first.cmqd.log"
    python3 - "$CMQD" "$ROOT/target/release/cmq" "$data" "$RESULTS" "$rss_empty" "$rss_before" "$t0" "$t1" <<'EOF'
import json, os, re, subprocess, sys, threading, time
cmqd, cmq, data, results = sys.argv[1:5]
rss_empty, rss_before = int(sys.argv[5] or 0), int(sys.argv[6] or 0)
stop_s = float(sys.argv[8]) - float(sys.argv[7])
log_path = os.path.join(results, "restart.cmqd.log")
stderr = open(log_path, "w")
t0 = time.monotonic()
p = subprocess.Popen([cmqd, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir", data], stdout=subprocess.PIPE, stderr=stderr, text=True)
addr = None
for line in p.stdout:
    if line.startswith("cmqd listening on "):
        addr = line.split("cmqd listening on ", 1)[1].strip()
        break
listen_s = time.monotonic() - t0
threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()

def status(field):
    for line in open(f"/proc/{p.pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None

out = {"listen_s": round(listen_s, 3), "stop_s": round(stop_s, 3), "rss_empty": rss_empty, "rss_before_stop": rss_before}
if addr is None:
    out["error"] = f"cmqd exited ({p.wait()}) without listening; see {log_path}"
else:
    out["rss_at_listen"] = status("VmRSS")
    time.sleep(2)
    out["rss"] = status("VmRSS")
    out["rss_anon"] = status("RssAnon")
    out["rss_file"] = status("RssFile")
    out["rss_peak"] = status("VmHWM")
    produced = json.load(open(os.path.join(results, "restart-produce.json")))
    out["acked"] = produced.get("acked_total")
    queued = 0
    for q in produced.get("queues", []):
        r = subprocess.run([cmq, "--json", "--server", addr, "queue-info", q], capture_output=True, text=True)
        try:
            info = json.loads(r.stdout)
            queued += int(info.get("activeMsgNum", 0)) + int(info.get("inactiveMsgNum", 0)) + int(info.get("delayMsgNum", 0))
        except (ValueError, AttributeError):
            out.setdefault("queue_info_errors", []).append(r.stdout + r.stderr)
    out["queued_after"] = queued
    p.terminate()
    p.wait()
stderr.close()
units = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
out["recovered"] = []
for line in open(log_path):
    m = re.search(r"shard (\d+): recovered (\d+) records from (\d+) segments in ([\d.]+)(ns|µs|us|ms|s)\b", line)
    if m:
        out["recovered"].append({"shard": int(m[1]), "records": int(m[2]), "segments": int(m[3]),
                                 "secs": round(float(m[4]) * units[m[5]], 3)})
json.dump(out, open(os.path.join(results, "restart.json"), "w"))
print(json.dumps(out), file=sys.stderr)
EOF
    rm -rf "$BROKER_DIR"
    BROKER_DIR=
}

if [[ -z "$REPORT_ONLY" && "$SCALE" != 0 ]]; then
    wants "disk-reclaim" && run_reclaim
    wants "restart" && run_restart
fi

if [[ ! -s "$RESULTS/scenarios" && ! -s "$RESULTS/reclaim-disk.json" && ! -s "$RESULTS/restart.json" ]]; then
    log "no scenario ran (BENCH_ONLY=$ONLY?)"
    exit 1
fi

# ---- the fsync time the sync open-loop target is measured against -----------
if [[ -s "$RESULTS/fsync_us" ]]; then
    FSYNC_US=$(cat "$RESULTS/fsync_us")
else
FSYNC_US=$(python3 - "$BENCH_DIR" <<'EOF'
import os, sys, time
path = os.path.join(sys.argv[1], "fsync-probe")
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
block = b"\0" * 4096
os.pwrite(fd, block * 256, 0)  # preallocated, as the broker's segments are
os.fsync(fd)
times = []
for i in range(300):
    t = time.perf_counter()
    os.pwrite(fd, block, (i % 256) * 4096)
    os.fdatasync(fd)
    times.append(time.perf_counter() - t)
os.close(fd)
os.unlink(path)
times.sort()
print(int(times[len(times) // 2] * 1e6))
EOF
)
echo "$FSYNC_US" >"$RESULTS/fsync_us"
fi
log "4 KiB overwrite + fdatasync: median $FSYNC_US µs"

# ---- the table ----------------------------------------------------------------
mkdir -p "$(dirname "$DOC")"
TABLE=$(python3 - "$RESULTS" "$FSYNC_US" <<'EOF'
import glob, json, os, platform, re, statistics, subprocess, sys, time

results, fsync_us = sys.argv[1:3]
fsync_us = int(fsync_us)
scenarios_file = os.path.join(results, "scenarios")
have_matrix = os.path.exists(scenarios_file)
if have_matrix:
    first = json.load(open(sorted(glob.glob(f"{results}/*-run*.json"))[0]))
    duration = first["config"]["duration"]
    warmup = first["config"]["warmup"]
    runs = max(len(glob.glob(f"{results}/{line.split('|')[2].strip()}-run*.json")) for line in open(scenarios_file))
    when_epoch = os.path.getmtime(scenarios_file)
else:
    duration = warmup = runs = 0
    when_epoch = max(os.path.getmtime(f) for f in glob.glob(f"{results}/*.json"))

def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"

def fmt_int(v):
    return f"{int(round(v)):,}"

def fmt_us(v):
    if v is None:
        return "-"
    return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} µs"

TARGETS = {
    "cycle/sync/pipelined": ("≥ 300,000 cycles/s", lambda r: r["msgs_per_s"] >= 300_000),
    "cycle/async/pipelined": ("≥ 800,000 cycles/s", lambda r: r["msgs_per_s"] >= 800_000),
    "cycle/sync/plain": ("≥ 18,000 cycles/s", lambda r: r["msgs_per_s"] >= 18_000),
    "cycle/async/plain": ("≥ 80,000 cycles/s", lambda r: r["msgs_per_s"] >= 80_000),
    # Issue 14: the CMQ API gateway, sync and async flush.
    "http/cycle/sync": ("≥ 50,000 cycles/s", lambda r: r["msgs_per_s"] >= 50_000),
    "http/cycle/async": ("≥ 50,000 cycles/s", lambda r: r["msgs_per_s"] >= 50_000),
    "open-loop/async/half-max": ("send-ack p99 < 1 ms", lambda r: r["send_ack_us"]["p99"] < 1000),
    "open-loop/sync/half-max": (
        f"send-ack p99 < 2 fsyncs ({fmt_us(2 * fsync_us)})",
        lambda r: r["send_ack_us"]["p99"] < 2 * fsync_us,
    ),
}

rows = []
rows_cmds = []
disk_total = [0, 0]
for line in open(scenarios_file) if have_matrix else []:
    name, size, slug = line.strip().split("|")
    reports = [json.load(open(f)) for f in sorted(glob.glob(f"{results}/{slug}-run*.json"))]
    reports.sort(key=lambda r: r["msgs_per_s"])
    med = reports[(len(reports) - 1) // 2]
    all_rates = ", ".join(fmt_int(r["msgs_per_s"]) for r in reports)
    errs = {}
    for r in reports:
        for code, n in r["errors"].items():
            ename = r.get("error_names", {}).get(code, code)
            errs[ename] = errs.get(ename, 0) + n
    broken_runs = sum(1 for r in reports if r.get("broken"))
    notes = ", ".join(f"{k}: {v:,}" for k, v in sorted(errs.items())) or "none"
    if broken_runs:
        notes += f"; {broken_runs} run(s) with a stuck connection"
    # The gateway rows share 2 cores with the load client: CPU per cycle is what compares across runs.
    cycles = med["msgs_per_s"] * med["duration_s"]
    if name.startswith("http/") and med.get("broker_cpu_s") is not None and cycles > 0:
        notes += f"; broker CPU {1e6 * med['broker_cpu_s'] / cycles:.0f} µs per cycle"
    disk = []
    for f in sorted(glob.glob(f"{results}/{slug}-run*.disk_bytes")):
        try:
            disk.append(int(open(f).read().strip() or 0))
        except ValueError:
            pass
    acked = sum(r.get("acked_total", 0) for r in reports)
    disk_per_msg = f"{sum(disk) / acked:.0f} B" if disk and acked else "-"
    if disk:
        disk_total[0] += sum(disk)
        disk_total[1] += acked
    lost = sum((r["lost"] or 0) for r in reports)
    dup = sum((r["duplicated"] or 0) for r in reports)
    target, check = TARGETS.get(name, ("", None))
    if size != "64" or check is None:
        verdict = "-"
    else:
        verdict = ("met" if check(med) else "**missed**") + f": {target}"
    cmd = med["command"]
    # Hide the per-run details (address, pid, file) that differ on every run.
    cmd = re.sub(r"--server \S+ ", "", cmd)
    cmd = re.sub(r"--server-pid \S+ ", "--server-pid PID ", cmd)
    cmd = re.sub(r"--json \S+ ", "--json FILE ", cmd)
    cmd = re.sub(r"--http http://\S+ ", "--http http://CMQD_HTTP ", cmd)
    cmd = "cmq-loadgen " + cmd.split(" ", 1)[1] if " " in cmd else cmd
    rate_label = f"{fmt_int(med['msgs_per_s'])}"
    if med.get("open_loop_rate"):
        rate_label += f" (offered {fmt_int(med['open_loop_rate'])})"
    rows.append(
        "| {name} | {size} B | {rate} | {all} | {ap50} / {ap99} | {ep50} / {ep99} | {bcpu} | {lcpu} | {ocpu} | {disk} | {lost} / {dup} | {notes} | {verdict} |".format(
            name=name,
            size=size,
            rate=rate_label,
            all=all_rates,
            ap50=fmt_us(med["send_ack_us"]["p50"]),
            ap99=fmt_us(med["send_ack_us"]["p99"]),
            ep50=fmt_us(med["e2e_us"]["p50"]),
            ep99=fmt_us(med["e2e_us"]["p99"]),
            bcpu=f"{med['broker_cpu_pct']:.0f}%" if med.get("broker_cpu_pct") is not None else "-",
            lcpu=f"{med['loadgen_cpu_pct']:.0f}%" if med.get("loadgen_cpu_pct") is not None else "-",
            ocpu=f"{med['other_cpu_pct']:.0f}%" if med.get("other_cpu_pct") is not None else "-",
            lost=lost,
            dup=dup,
            notes=notes,
            disk=disk_per_msg,
            verdict=verdict,
        )
    )
    rows_cmds.append(f"- {name}, {size} B: `{cmd}`")

skipped_file = os.path.join(results, "skipped")
if os.path.exists(skipped_file):
    for line in open(skipped_file):
        name, size, why = line.strip().split("|", 2)
        rows.append(f"| {name} | {size} B | - | {why} |" + " - |" * 9)

kernel = platform.release()
nproc = os.cpu_count()
when = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(when_epoch))
try:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
except OSError:
    rev = "?"

durability_warning = ""
if disk_total[1] and disk_total[0] < disk_total[1] * 24:
    durability_warning = (
        f"**Warning: the broker wrote {disk_total[0]:,} bytes to storage for {disk_total[1]:,} acknowledged messages "
        "(less than one message header each). Nothing here was durable: these are figures for an in-memory broker, "
        "and sync and async ran the same code. The targets are not met until a write-ahead log is in place.**\n\n"
    )
    rows = [r.replace("| met: ", "| met only without durability: ") for r in rows]

def fmt_bytes(b):
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if b >= div:
            return f"{b / div:.2f} {unit}" if unit == "GiB" else f"{b / div:.0f} {unit}"
    return f"{b} B"

def fmt_s(v):
    return "-" if v is None else (f"{v:.2f} s" if v < 10 else f"{v:.1f} s")

def load(name):
    path = os.path.join(results, name)
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None

def per_shard(usage):
    return "; ".join(
        f"shard {k}: {fmt_bytes(v[1])} ({v[0]} segment{'s' if v[0] != 1 else ''})" for k, v in sorted(usage.items())
    )

scale = []
disk = load("reclaim-disk.json")
if disk is not None:
    prod, cons = load("reclaim-produce.json") or {}, load("reclaim-consume.json") or {}
    acked, deleted = prod.get("acked_total", 0), cons.get("deleted", 0)
    size = (prod.get("config") or {}).get("size", 1024)
    verdict = ("met" if disk["reached_two_segments"] else "**missed**") + ": at most 2 segments per shard"
    if disk["reached_two_segments"]:
        verdict += f", {fmt_s(disk['reclaim_s'])} after the last delete was answered"
    else:
        verdict += f" (still as shown {fmt_s(disk['watched_s'])} after the last delete)"
    if deleted < acked:
        verdict += f"; only {deleted:,} of {acked:,} deleted"
    scale.append(f"""**Disk reclamation at scale.** One fresh `cmqd` (default 64 MiB segments); {acked:,} messages of
{size} B ({fmt_bytes(acked * size)} of bodies), async flush, produced into one queue per shard by 2 producers
(`--batch 16 --pipeline 64`), then received and deleted by 2 consumers; the shards' `*.log` files were sampled every
0.25 s throughout, and after the last delete until every shard was down to two segments (the live one and one
prepared ahead), or stopped shrinking for 20 s.

| Produced | Produce msgs/s | Consume msgs/s | Peak log on disk | Log on disk at the end | Result |
| ---: | ---: | ---: | --- | --- | --- |
| {acked:,} | {fmt_int(prod.get("msgs_per_s", 0))} | {fmt_int(cons.get("msgs_per_s", 0))} | {per_shard(disk["peak"])} | {per_shard(disk["final"])} | {verdict} |
""")
rs = load("restart.json")
if rs is not None:
    prod = load("restart-produce.json") or {}
    acked = prod.get("acked_total", 0)
    on_disk = load("restart-disk.json") or {}
    log_bytes = sum(v[1] for v in on_disk.values())
    rec = "; ".join(f"shard {r['shard']}: {r['records']:,} records, {r['segments']} segment{'s' if r['segments'] != 1 else ''} in {fmt_s(r['secs'])}"
                    for r in sorted(rs.get("recovered", []), key=lambda r: r["shard"])) or "-"
    if "error" in rs:
        scale.append(f"**Restart with {acked:,} queued messages**: {rs['error']}\n")
    else:
        rss, anon = rs.get("rss") or 0, rs.get("rss_anon") or 0
        per_msg = f"{rss / acked:.0f} B ({anon / acked:.0f} B anonymous)" if acked else "-"
        queued = rs.get("queued_after")
        check = "" if queued == acked else f" **{queued:,} queued after the restart, {acked:,} acknowledged**"
        scale.append(f"""**Restart with {acked:,} queued messages.** One fresh `cmqd`; {acked:,} messages of 64 B, async
flush, produced by 2 producers (`--batch 16 --pipeline 64`) into one queue per shard and left there; `cmqd`
stopped with SIGTERM and started again on the same data. Start-up is timed from spawn until it prints `cmqd
listening on`; recovery as each shard's log line reports it. Memory: the restarted `cmqd`'s RSS 2 s after it
listens (its empty RSS before producing: {fmt_bytes(rs.get("rss_empty") or 0)}; before the stop:
{fmt_bytes(rs.get("rss_before_stop") or 0)}; peak during recovery: {fmt_bytes(rs.get("rss_peak") or 0)}).{check}

| Queued | Log on disk | SIGTERM to exit | Spawn to listening | Recovery (cmqd log) | RSS after restart (anonymous) | RSS per queued msg |
| ---: | ---: | ---: | ---: | --- | ---: | ---: |
| {acked:,} | {fmt_bytes(log_bytes)} | {fmt_s(rs.get("stop_s"))} | {fmt_s(rs.get("listen_s"))} | {rec} | {fmt_bytes(rss)} ({fmt_bytes(anon)}) | {per_msg} |
""")

matrix = ""
if have_matrix:
    matrix = f"""**The matrix.** Each scenario: {runs} runs of {duration} s after {warmup} s of warm-up, a fresh
`cmqd` (release build, default flags, data dir on disk) per run, `--verify` on. The table shows the median run
(by msgs/s) and every run's msgs/s. msgs/s is completed cycles/s: messages sent, received and deleted. CPU is
percent of one core over the measured interval (200% = both vCPUs). A 4 KiB overwrite + fdatasync took a median
of {fsync_us} µs during this run. Errors: broker error codes, plus "stalled" (answers the broker sent only after
the load generator nudged an idle connection with a Ping) and "timeout" (requests never answered). Disk writes
per msg: the broker's `write_bytes` (/proc/PID/io) over its life divided by the messages acknowledged to it.
Other CPU: busy CPU of every other process on the machine during the measurement (from /proc/stat); anything
well above 0% means the figures were taken on a shared, noisy machine.

{durability_warning}| Scenario | Body | Median msgs/s | All runs | Send-ack p50 / p99 | End-to-end p50 / p99 | Broker CPU | Loadgen CPU | Other CPU | Disk writes per msg | Lost / dup (all runs) | Errors (all runs) | Target (64 B) |
| --- | --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- | --- |
""" + "\n".join(rows) + """

Commands (per run, with a fresh broker; `--server` is that broker's address):

""" + "\n".join(rows_cmds) + "\n"

print(f"""Measured {when} (tree at commit `{rev}` when the table was written) on {nproc} vCPUs ({cpu_model()}), Linux {kernel}; broker and
load generator on the same machine.""" + "".join("\n\n" + part.strip("\n") for part in [matrix, *scale] if part))
EOF
)
rewrite_block "$DOC" bench "scripts/bench.sh (make bench); edits between the markers are overwritten." "" "$TABLE"
log "wrote $DOC"

# ---- what metrics cost (issue 13) ------------------------------------------
if [[ -z "$REPORT_ONLY" && "${BENCH_METRICS_AB:-1}" != 0 ]]; then
    log "metrics cost: pipelined runs with and without /metrics scraped every second"
    RUNS=$RUNS DURATION=$DURATION AB_DOC=$DOC CMQD=$CMQD LOADGEN=$LOADGEN scripts/metrics-ab.sh | tee "$RESULTS/metrics-ab.txt" >&2
fi

# ---- what authentication and TLS cost (issue 12) -----------------------------
if [[ -z "$REPORT_ONLY" && "${BENCH_SECURITY_AB:-1}" != 0 ]]; then
    log "security cost: pipelined runs anonymous, authenticated, over TLS, both (alternating)"
    RUNS=$RUNS DURATION=$DURATION AB_DOC=$DOC CMQD=$CMQD LOADGEN=$LOADGEN scripts/security-ab.sh | tee "$RESULTS/security-ab.txt" >&2
fi
