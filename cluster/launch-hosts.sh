#!/usr/bin/env bash
# Launch one CAP process per line of a host file (host:port, in process order) over ssh, each
# with W workers, and wait for all of them. The binary and any input must exist at the same
# path on every host.
#
#   cluster/launch-hosts.sh HOSTFILE W BINARY [run flags...]
#
# Environment: CAP_SSH (default "ssh") - the remote shell command.
set -euo pipefail

if [[ $# -lt 3 || "$1" == "-h" || "$1" == "--help" ]]; then
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
hostfile=$1; w=$2; bin=$3; shift 3
ssh_cmd=${CAP_SSH:-ssh}
mapfile -t hosts < <(grep -v '^\s*\(#\|$\)' "$hostfile")
n=${#hosts[@]}
(( n > 0 )) || { echo "launch-hosts: $hostfile lists no hosts" >&2; exit 2; }

remote_hostfile="/tmp/cap-hosts-$$.txt"
pids=()
for ((i = 0; i < n; i++)); do
    host=${hosts[$i]%%:*}
    printf '%s\n' "${hosts[@]}" | $ssh_cmd "$host" "cat > $remote_hostfile"
    $ssh_cmd "$host" "$bin" run -w "$w" -n "$n" -p "$i" --hostfile "$remote_hostfile" "$(printf '%q ' "$@")" &
    pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
    wait "${pids[$i]}" || { echo "launch-hosts: process $i (${hosts[$i]}) failed" >&2; status=1; }
done
exit $status
