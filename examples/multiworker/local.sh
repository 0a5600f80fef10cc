#!/usr/bin/env bash
# Starts N tfkit workers on this machine (127.0.0.1), each with its own TF_CONFIG, and waits for all.
# Usage: examples/multiworker/local.sh N tfkit train --data reviews.csv --out models/teacher [flags...]
# The chief (worker 0) writes the model; every worker logs to workers/worker-<i>.log. Rerunning the same
# line after a crash resumes from the last checkpoint (in models/.teacher.resume/).
set -euo pipefail
n=${1:?number of workers}; shift
[ "$#" -gt 0 ] || { echo "usage: $0 N tfkit train|distill ..." >&2; exit 2; }
ports=$(python3 - "$n" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)
workers=$(printf '"127.0.0.1:%s",' $ports); workers="[${workers%,}]"
mkdir -p workers
pids=()
for ((i = 0; i < n; i++)); do
  TF_CONFIG="{\"cluster\": {\"worker\": $workers}, \"task\": {\"type\": \"worker\", \"index\": $i}}" \
    "$@" > "workers/worker-$i.log" 2>&1 &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null' INT TERM
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
tail -n 3 workers/worker-0.log
exit "$status"
