#!/usr/bin/env bash
# A/B comparison of cmqd builds on a noisy machine: alternates the binaries
# round by round, a fresh broker (and data dir) per run, the same load
# generator and arguments for all, and prints one line per run.
#
#   VARIANTS="before after" scripts/ab.sh LOADGEN ROUNDS SECONDS -- LOADGEN_ARGS...
#
# Each variant V is the binary /tmp/cmqd-V (copy target/release/cmqd there
# after building each version). Compare medians per variant, as ratios.
# Example (the cycle/sync/plain scenario of make bench):
#   VARIANTS="before after" scripts/ab.sh target/release/cmq-loadgen 4 6 -- \
#     --mode cycle --flush sync --producers 8 --consumers 8 --pipeline 1 --batch 1 --size 64 --threads 1
set -euo pipefail
LOADGEN=$1; ROUNDS=$2; DUR=$3; shift 4
OUT=${AB_DIR:-target/ab}
mkdir -p "$OUT"
# shellcheck source-path=SCRIPTDIR source=lib/ab.sh
source "$(dirname "$0")/lib/ab.sh"
trap cmqd_stop EXIT
for _ in $(seq "$ROUNDS"); do
  for v in ${VARIANTS:?set VARIANTS to the names of /tmp/cmqd-NAME binaries}; do
    D=$OUT/data-$v; rm -rf "$D" "$OUT/r.json"; mkdir -p "$D"
    cmqd_start "/tmp/cmqd-$v" "$OUT/cmqd-$v" --data-dir "$D" --listen 127.0.0.1:0
    "$LOADGEN" --server "$CMQD_ADDR" --server-pid "$CMQD_PID" --duration "$DUR" --warmup 1 --verify \
      --json "$OUT/r.json" "$@" >/dev/null 2>&1 || true
    python3 -c "import json;r=json.load(open('$OUT/r.json'));print('$v', int(r['msgs_per_s']), 'send-ack p50/p99 us', r['send_ack_us']['p50'], r['send_ack_us']['p99'], 'lost', r['lost'], 'dup', r['duplicated'])"
    cmqd_stop
  done
done
