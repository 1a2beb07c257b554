#!/usr/bin/env bash
# FedNAS through Flower on one machine: a SuperLink and one SuperNode per client, all on
# 127.0.0.1 (on separate machines each runs the same command; the README shows them).
#
#   bash experiments/flower/localhost.sh SAVE [experiments/fednas.py flags...]
#
# Needs `pip install "jnas[flower]"` in the active environment. Starts --clients SuperNodes,
# runs experiments/flower on them, and writes SAVE/server.npz, SAVE/rounds.jsonl and every
# process's log under SAVE/logs; exits 0 when the run completed.
set -euo pipefail
[ $# -ge 1 ] || { sed -n 2,9p "$0"; exit 2; }
app=$(cd "$(dirname "$0")" && pwd)
save=$(python -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "$1"); shift
flags=$(python -c 'import shlex, sys; print(shlex.join(sys.argv[1:]))' "$@")
clients=$(python -c 'import sys; from jnas.cli import fednas_config
print(fednas_config("", sys.argv[1:])[0].clients)' "$@")
port() { python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'; }
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
homes=$(mktemp -d) link=$(port) nodes=()
mkdir -p "$save/logs" "$homes/cli"
stop() {  # the SuperNodes first, then the SuperLink
    kill "${nodes[@]}" 2>/dev/null || true; wait "${nodes[@]}" 2>/dev/null || true
    kill "$superlink" 2>/dev/null || true; wait "$superlink" 2>/dev/null || true
    rm -rf "$homes"
}
trap stop EXIT

FLWR_HOME=$homes/link flower-superlink --insecure --host 127.0.0.1 --port "$link" \
    --disable-runtime-dependency-installation > "$save/logs/superlink.log" 2>&1 &
superlink=$!
for ((k = 0; k < clients; k++)); do
    FLWR_HOME=$homes/node$k flower-supernode --insecure --superlink "127.0.0.1:$link" \
        --host 127.0.0.1 --port "$(port)" \
        --node-config "partition-id=$k num-partitions=$clients" \
        > "$save/logs/supernode$k.log" 2>&1 &
    nodes+=($!)
done
printf '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:%s"\ninsecure = true\n' \
    "$link" > "$homes/cli/config.toml"
export FLWR_HOME=$homes/cli
until python -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])))' \
    "$link" 2>/dev/null; do sleep 0.2; done

json_of() { python -c 'import json, sys; t = sys.stdin.read(); print(json.dumps(json.loads(
    t[t.index("{"):])))'; }  # flwr may print lines before its JSON
run_id=$(flwr run "$app" local --format json \
    --run-config "flags=\"$flags\" save=\"$save\"" | json_of \
    | python -c 'import json, sys; print(json.load(sys.stdin)["run-id"])')
echo "run $run_id: $clients SuperNodes on 127.0.0.1:$link; logs in $save/logs"
status=pending
while [[ $status != finished* ]]; do
    sleep 1
    status=$(flwr ls local --run-id "$run_id" --format json | json_of \
        | python -c 'import json, sys; print(json.load(sys.stdin)["runs"][0]["status"])')
done
flwr log "$run_id" local --show > "$save/logs/run.log" 2>&1 || true
echo "run $run_id: $status"
[ "$status" = finished:completed ]
