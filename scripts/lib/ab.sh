# shellcheck shell=bash
# What the benchmark scripts share (sourced, never run): starting a fresh
# cmqd and waiting for its address, a three-node cluster on 127.0.0.1, a
# throwaway TLS certificate, the median of figures, and rewriting a marked
# block of a document. Each function says which variables it sets (for
# the script that sources this, hence SC2034 off).
# shellcheck disable=SC2034

# How long a cmqd may take to print its address (steps of 0.05 s).
CMQD_START_STEPS=400

# cmqd_spawn BIN LOG ARGS...: runs `BIN ARGS...` in the background, its
# stdout in LOG.out and its stderr in LOG.err. Sets CMQD_PID.
cmqd_spawn() {
    local bin=$1 log=$2
    shift 2
    : >"$log.out"
    "$bin" "$@" >"$log.out" 2>"$log.err" &
    CMQD_PID=$!
}

# cmqd_wait LOG PID: waits until the cmqd writing LOG.out prints its client
# address. Sets CMQD_ADDR and CMQD_HTTP (its HTTP port, printed before,
# empty without --http-listen). A cmqd that exits or does not listen in
# time ends the script with the end of LOG.err.
cmqd_wait() {
    local log=$1 pid=$2
    CMQD_ADDR=
    for _ in $(seq "$CMQD_START_STEPS"); do
        CMQD_ADDR=$(sed -n 's/^cmqd listening on //p' "$log.out")
        if [[ -n "$CMQD_ADDR" ]]; then
            CMQD_HTTP=$(sed -n 's/^cmqd http on //p' "$log.out")
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    printf 'cmqd did not start (%s.err):\n' "$log" >&2
    tail -5 "$log.err" >&2
    exit 1
}

# cmqd_start BIN LOG ARGS...: cmqd_spawn, then cmqd_wait. Sets CMQD_PID,
# CMQD_ADDR and CMQD_HTTP.
cmqd_start() {
    cmqd_spawn "$@"
    cmqd_wait "$2" "$CMQD_PID"
}

# cmqd_wait_file FILE: waits until the running cmqd (CMQD_PID) has written
# FILE (--init-admin-key writes the key file once it can write its log).
cmqd_wait_file() {
    for _ in $(seq "$CMQD_START_STEPS"); do
        [[ -s "$1" ]] && return 0
        kill -0 "$CMQD_PID" 2>/dev/null || break
        sleep 0.05
    done
    printf 'cmqd wrote no %s\n' "$1" >&2
    exit 1
}

# cmqd_stop: SIGTERM to CMQD_PID (if set), waits for it; clears CMQD_PID.
cmqd_stop() {
    if [[ -n "${CMQD_PID:-}" ]]; then
        kill -TERM "$CMQD_PID" 2>/dev/null || true
        wait "$CMQD_PID" 2>/dev/null || true
        CMQD_PID=
    fi
}

# A TCP port free on 127.0.0.1 now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The brokers of the current run: their pids, their client addresses
# (comma-separated, what --server takes) and their directory.
BROKERS_PIDS=()
BROKERS_ADDRS=
BROKERS_DIR=

# cluster_start DIR EXTRA_ARGS...: three nodes of $CMQD on 127.0.0.1 with a
# fresh cluster key, each with its own data directory under DIR and logs
# DIR/nodeN.out and .err, EXTRA_ARGS given to each; returns once every shard
# has a leader (asked with $CMQ). Sets BROKERS_PIDS, BROKERS_ADDRS, BROKERS_DIR.
cluster_start() {
    local d=$1 key n m peers client=() peer=()
    shift
    BROKERS_DIR=$d
    key=$d/cluster.key
    (umask 077 && head -c 32 /dev/urandom | base64 >"$key")
    for n in 1 2 3; do client+=("$(free_port)"); peer+=("$(free_port)"); done
    BROKERS_PIDS=()
    for n in 1 2 3; do
        peers=""
        for m in 1 2 3; do
            [[ $m == "$n" ]] || peers="${peers:+$peers,}$m=127.0.0.1:${peer[m-1]}"
        done
        cmqd_spawn "$CMQD" "$d/node$n" --node-id "$n" --listen "127.0.0.1:${client[n-1]}" \
            --peer-listen "127.0.0.1:${peer[n-1]}" --http-listen 127.0.0.1:0 --peers "$peers" \
            --cluster-key-file "$key" --data-dir "$d/node$n" "$@"
        BROKERS_PIDS+=("$CMQD_PID")
    done
    for n in 1 2 3; do cmqd_wait "$d/node$n" "${BROKERS_PIDS[n-1]}"; done
    BROKERS_ADDRS="127.0.0.1:${client[0]},127.0.0.1:${client[1]},127.0.0.1:${client[2]}"
    for _ in $(seq 200); do
        if "$CMQ" --server "$BROKERS_ADDRS" --timeout 2 cluster status --json 2>/dev/null | python3 -c '
import json, sys
shards = json.load(sys.stdin)["shards"]
sys.exit(0 if shards and all(s["leader"] for s in shards) else 1)' 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    printf 'the cluster elected no leaders: %s\n' "$(tail -3 "$d/node1.err")" >&2
    exit 1
}

# brokers_stop: stops BROKERS_PIDS and deletes the data under BROKERS_DIR
# (a run writes gigabytes); the logs stay.
brokers_stop() {
    local p
    for p in "${BROKERS_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${BROKERS_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    BROKERS_PIDS=()
    if [[ -n $BROKERS_DIR ]]; then
        find "$BROKERS_DIR" -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
        BROKERS_DIR=
    fi
}

# self_signed_cert DIR: DIR/server.pem and DIR/server.key, a throwaway
# ECDSA P-256 certificate for 127.0.0.1 and localhost, valid a day (not a
# CA: rustls refuses a CA certificate as a server's).
self_signed_cert() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
        -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" -addext "basicConstraints=critical,CA:FALSE" \
        -keyout "$1/server.key" -out "$1/server.pem" 2>/dev/null
}

# median FIGURES...: their median.
median() {
    python3 -c 'import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))' "$@"
}

# rewrite_block DOC NAME WHO HEADING BODY: what stands between
# <!-- NAME:begin --> and <!-- NAME:end --> in DOC becomes a comment
# "Generated by WHO" and BODY; a DOC without the markers gets the block
# appended under "## HEADING" (no heading when HEADING is empty), a missing
# DOC is created.
rewrite_block() {
    python3 - "$@" <<'PY'
import os, sys
doc, name, who, heading, body = sys.argv[1:6]
begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
block = f"{begin}\n<!-- Generated by {who} -->\n{body.rstrip(chr(10))}\n{end}"
text = open(doc).read() if os.path.exists(doc) else "# Benchmarks\n"
if begin in text and end in text:
    text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
else:
    text = text.rstrip("\n") + "\n\n" + (f"## {heading}\n\n" if heading else "") + block + "\n"
open(doc, "w").write(text)
PY
}
