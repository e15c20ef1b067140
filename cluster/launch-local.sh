#!/usr/bin/env bash
# Launch N processes of W workers each of a CAP job on this machine, over loopback, and wait
# for all of them. Stops every process when one fails or on Ctrl-C.
#
#   cluster/launch-local.sh N W BINARY [run flags...]
#   cluster/launch-local.sh 2 1 target/release/customer-analytics --max-events 1000000
#
# Environment: CAP_BASE_PORT (default 2101) - process i listens on CAP_BASE_PORT+i.
set -euo pipefail

if [[ $# -lt 3 || "$1" == "-h" || "$1" == "--help" ]]; then
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
n=$1; w=$2; bin=$3; shift 3
base=${CAP_BASE_PORT:-2101}
[[ -x "$bin" ]] || { echo "launch-local: $bin is not an executable" >&2; exit 2; }

hostfile=$(mktemp)
trap 'rm -f "$hostfile"' EXIT
for ((i = 0; i < n; i++)); do echo "127.0.0.1:$((base + i))" >> "$hostfile"; done

pids=()
stop_all() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; }
trap 'stop_all; rm -f "$hostfile"' INT TERM

for ((i = 0; i < n; i++)); do
    "$bin" run -w "$w" -n "$n" -p "$i" --hostfile "$hostfile" "$@" &
    pids+=($!)
done

status=0
for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
        echo "launch-local: process $i failed; stopping the others" >&2
        status=1
        stop_all
    fi
done
exit $status
