#!/usr/bin/env bash
# Starts a three-node cmq cluster on 127.0.0.1 for trying it out (`make cluster`):
# clients on 7701-7703, peers on 7801-7803, metrics/health on 7781-7783,
# data in ./data/node{1,2,3},
# logs in ./data/node{1,2,3}.log. Ctrl-C stops all three.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CMQD:-target/release/cmqd}
DATA=${CMQ_CLUSTER_DATA:-data}
mkdir -p "$DATA"
KEY="$DATA/cluster.key"
if [ ! -f "$KEY" ]; then
    # 32 random bytes, readable by this user only (cmqd refuses a looser key file).
    (umask 077 && head -c 32 /dev/urandom | base64 > "$KEY")
fi
pids=()
stop() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop EXIT INT TERM
for n in 1 2 3; do
    peers=""
    for m in 1 2 3; do
        [ "$m" = "$n" ] || peers="${peers:+$peers,}$m=127.0.0.1:780$m"
    done
    "$BIN" --node-id "$n" --listen "127.0.0.1:770$n" --peer-listen "127.0.0.1:780$n" --http-listen "127.0.0.1:778$n" \
        --peers "$peers" --cluster-key-file "$KEY" --data-dir "$DATA/node$n" \
        >"$DATA/node$n.log" 2>&1 &
    pids+=($!)
done
echo "cmq cluster: nodes 1-3 on 127.0.0.1:7701-7703 (pids ${pids[*]}), logs in $DATA/node{1,2,3}.log"
echo "try: target/release/cmq --server 127.0.0.1:7701,127.0.0.1:7702,127.0.0.1:7703 cluster status"
wait -n "${pids[@]}" || true
echo "a node exited; see $DATA/node*.log" >&2
