#!/usr/bin/env bash
# make bench: criterion micro-benchmarks, then the cmq-loadgen matrix of
# issue 4, each scenario BENCH_RUNS times against a fresh cmqd; rewrites the
# table between the bench markers in docs/BENCHMARKS.md with the medians.
#
# Settings (environment):
#   BENCH_DURATION  measured seconds per run            [10]
#   BENCH_WARMUP    warm-up seconds per run             [2]
#   BENCH_RUNS      runs per scenario (median reported) [3]
#   BENCH_SIZES     body sizes in bytes                 ["64 1024"]
#   BENCH_ONLY      run only scenarios whose name contains this (e.g. "sync/plain")
#   BENCH_CRITERION 0 skips the criterion benchmarks    [1]
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
    [[ -s "$RESULTS/scenarios" ]] || { log "$RESULTS has no scenarios file"; exit 1; }
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
        cargo bench --workspace --locked -- --noplot 2>&1 | tee "$RESULTS/criterion.txt" >&2
    else
        log "no criterion benchmarks in the workspace yet; skipped"
    fi
fi

# ---- broker lifecycle -------------------------------------------------------
BROKER_PID=
BROKER_ADDR=
BROKER_DIR=

# Bytes the broker process caused to be written to storage so far (0 if unknown).
broker_write_bytes() {
    awk '/^write_bytes:/ {print $2}' "/proc/$BROKER_PID/io" 2>/dev/null || echo 0
}

# stop_broker [LOG]: SIGTERM our cmqd, wait for it, keep its log in LOG.
stop_broker() {
    if [[ -n "$BROKER_PID" ]]; then
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
        BROKER_PID=
    fi
    if [[ -n "$BROKER_DIR" && -n "${1:-}" ]]; then
        cp "$BROKER_DIR/stderr" "$1" 2>/dev/null || true
    fi
    if [[ -n "$BROKER_DIR" ]]; then
        rm -rf "$BROKER_DIR"
        BROKER_DIR=
    fi
}
trap stop_broker EXIT

start_broker() {
    BROKER_DIR=$(mktemp -d "$BENCH_DIR/cmqd.XXXXXX")
    : >"$BROKER_DIR/stdout"
    "$CMQD" --listen 127.0.0.1:0 --data-dir "$BROKER_DIR/data" >"$BROKER_DIR/stdout" 2>"$BROKER_DIR/stderr" &
    BROKER_PID=$!
    BROKER_ADDR=
    for _ in $(seq 200); do
        BROKER_ADDR=$(sed -n 's/^cmqd listening on //p' "$BROKER_DIR/stdout" || true)
        [[ -n "$BROKER_ADDR" ]] && return 0
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.05
    done
    log "cmqd did not start:"
    cat "$BROKER_DIR/stderr" >&2
    exit 1
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
        local rc=0
        "$LOADGEN" --server "$BROKER_ADDR" --server-pid "$BROKER_PID" --size "$size" \
            --duration "$DURATION" --warmup "$WARMUP" --verify --drain-timeout "$DRAIN_TIMEOUT" \
            --json "$json" "$@" >"$RESULTS/$slug-run$run.txt" 2>"$RESULTS/$slug-run$run.progress" || rc=$?
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
PLAIN=(--pipeline 1 --batch 1 --producers 8 --consumers 8)

for size in $SIZES; do
    [[ -n "$REPORT_ONLY" ]] && break
    run_scenario "cycle/sync/pipelined" "$size" --mode cycle --flush sync "${PIPELINED[@]}"
    run_scenario "cycle/async/pipelined" "$size" --mode cycle --flush async "${PIPELINED[@]}"
    run_scenario "cycle/sync/plain" "$size" --mode cycle --flush sync "${PLAIN[@]}"
    run_scenario "cycle/async/plain" "$size" --mode cycle --flush async "${PLAIN[@]}"
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

if [[ ! -s "$RESULTS/scenarios" ]]; then
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
python3 - "$RESULTS" "$DOC" "$FSYNC_US" <<'EOF'
import glob, json, os, platform, re, statistics, subprocess, sys, time

results, doc, fsync_us = sys.argv[1:4]
fsync_us = int(fsync_us)
first = json.load(open(sorted(glob.glob(f"{results}/*-run*.json"))[0]))
duration = first["config"]["duration"]
warmup = first["config"]["warmup"]
runs = max(len(glob.glob(f"{results}/{line.split('|')[2].strip()}-run*.json")) for line in open(f"{results}/scenarios"))
when_epoch = os.path.getmtime(f"{results}/scenarios")

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
    "open-loop/async/half-max": ("send-ack p99 < 1 ms", lambda r: r["send_ack_us"]["p99"] < 1000),
    "open-loop/sync/half-max": (
        f"send-ack p99 < 2 fsyncs ({fmt_us(2 * fsync_us)})",
        lambda r: r["send_ack_us"]["p99"] < 2 * fsync_us,
    ),
}

rows = []
rows_cmds = []
disk_total = [0, 0]
for line in open(os.path.join(results, "scenarios")):
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

table = f"""<!-- bench:begin -->
<!-- Generated by scripts/bench.sh (make bench); edits between the markers are overwritten. -->
Measured {when} (tree at commit `{rev}` when the table was written) on {nproc} vCPUs ({cpu_model()}), Linux {kernel}; broker and
load generator on the same machine. Each scenario: {runs} runs of {duration} s after {warmup} s of warm-up, a fresh
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

""" + "\n".join(rows_cmds) + """
<!-- bench:end -->"""

if os.path.exists(doc):
    text = open(doc).read()
else:
    text = "# Benchmarks\n\n<!-- bench:begin -->\n<!-- bench:end -->\n"
begin, end = "<!-- bench:begin -->", "<!-- bench:end -->"
if begin in text and end in text:
    text = text[: text.index(begin)] + table + text[text.index(end) + len(end):]
else:
    text = text.rstrip("\n") + "\n\n" + table + "\n"
open(doc, "w").write(text)
print(f"[bench] wrote {doc}", file=sys.stderr)
EOF
