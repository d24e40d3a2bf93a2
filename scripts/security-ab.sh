#!/usr/bin/env bash
# What authentication, permission checks and TLS cost on pipelined
# throughput (issue 12: authentication and permission checks under 3%): the
# same cmq-loadgen scenario against a fresh cmqd per run, alternating
#   anon:     no keys (loopback, anonymous),
#   auth:     the broker makes an administrator key (--init-admin-key) and
#             every connection authenticates with it; every request is
#             checked against its policy (the same cached check any key gets),
#   tls:      anonymous over TLS 1.3 (a throwaway self-signed certificate),
#   auth+tls: both.
# Prints each run (messages/s, and the broker's CPU per message, which a busy
# shared machine disturbs less than throughput) and the medians, with each
# variant's CPU per message as a ratio of anon's.
#
#   scripts/security-ab.sh                    # target/release binaries
#   RUNS=5 DURATION=6 scripts/security-ab.sh
#   SCENARIO="--mode cycle --flush async --pipeline 64 --batch 1 ..." scripts/security-ab.sh
# With AB_DOC=FILE the block between <!-- security-ab:begin/end --> in FILE
# is rewritten with the result (make bench does this for BENCHMARKS.md).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CMQD=${CMQD:-$ROOT/target/release/cmqd}
LOADGEN=${LOADGEN:-$ROOT/target/release/cmq-loadgen}
RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
VARIANTS=${VARIANTS:-anon auth tls auth+tls}
SCENARIO=${SCENARIO:---mode cycle --flush async --pipeline 64 --batch 16 --producers 2 --consumers 2 --size 64}
# shellcheck source-path=SCRIPTDIR source=lib/ab.sh
source "$ROOT/scripts/lib/ab.sh"
WORK=$(mktemp -d)
cleanup() {
    cmqd_stop
    rm -rf "$WORK"
}
trap cleanup EXIT

self_signed_cert "$WORK"

# run VARIANT: one loadgen run against a fresh broker; prints
# "msgs/s broker-CPU-µs-per-message".
run() {
    local variant=$1 dir broker=() load=()
    dir=$(mktemp -d "$WORK/$variant.XXXX")
    if [[ "$variant" == *auth* ]]; then
        broker+=(--init-admin-key "$dir/admin.creds")
        load+=(--credentials "$dir/admin.creds")
    fi
    if [[ "$variant" == *tls* ]]; then
        broker+=(--tls-cert "$WORK/server.pem" --tls-key "$WORK/server.key")
        load+=(--tls --ca-file "$WORK/server.pem")
    fi
    cmqd_start "$CMQD" "$dir/cmqd" --listen 127.0.0.1:0 --data-dir "$dir/data" "${broker[@]}"
    [[ "$variant" != *auth* ]] || cmqd_wait_file "$dir/admin.creds"
    # shellcheck disable=SC2086
    "$LOADGEN" --server "$CMQD_ADDR" --server-pid "$CMQD_PID" --duration "$DURATION" --warmup 2 --json "$dir/report.json" \
        "${load[@]}" $SCENARIO >"$dir/loadgen.out" 2>&1 || { cat "$dir/loadgen.out" >&2; exit 1; }
    cmqd_stop
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(round(r["msgs_per_s"]), round(1e6 * r["broker_cpu_s"] / max(r["deleted"], 1), 3))' "$dir/report.json"
}

declare -A rates cpu
for r in $(seq "$RUNS"); do
    for v in $VARIANTS; do
        read -r rate us < <(run "$v")
        rates[$v]+="$rate "
        cpu[$v]+="$us "
        echo "run $r $v: $rate msgs/s, $us µs broker CPU per message"
    done
done

summary=
read -r first _ <<<"$VARIANTS"
# shellcheck disable=SC2086
base_cpu=$(median ${cpu[$first]})
# shellcheck disable=SC2086
base_rate=$(median ${rates[$first]})
for v in $VARIANTS; do
    # shellcheck disable=SC2086
    m_rate=$(median ${rates[$v]}) m_cpu=$(median ${cpu[$v]})
    ratio=$(python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.3f}')" "$m_cpu" "$base_cpu")
    rate_ratio=$(python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.3f}')" "$m_rate" "$base_rate")
    line="$v: median ${m_rate%.*} msgs/s (${rates[$v]% }; ${rate_ratio}x $first), median $m_cpu µs broker CPU per message (${cpu[$v]% }; ${ratio}x $first)"
    echo "$line"
    summary+="- $line"$'\n'
done
if [[ -n "${AB_DOC:-}" ]]; then
    rewrite_block "$AB_DOC" security-ab "scripts/security-ab.sh (make bench)." "Security cost" \
        "What authentication and TLS cost ($(date +%F)): \`cmq-loadgen $SCENARIO\`, $DURATION s per run, a fresh cmqd per \
run, variants alternating; *anon*: no keys; *auth*: every connection authenticated and every request checked against \
the key's policy; *tls*: TLS 1.3 (ECDSA P-256, rustls with ring).

$summary"
fi
