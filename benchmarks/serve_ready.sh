#!/bin/bash
# Time from spawning `python -m tfkit.serve EXPORT_DIR` to its first 200 on /health, three starts; then
# whether TensorFlow is in the process, the tokenizer check, and the exit code after SIGTERM.
# usage: benchmarks/serve_ready.sh EXPORT_DIR [PORT]
set -u
export_dir=$1; port=${2:-8792}
cd "$(dirname "$0")/.."
for i in 1 2 3; do
  start=$(date +%s.%N)
  PYTHONPATH=$PWD python -m tfkit.serve "$export_dir" --port "$port" 2> /tmp/tfkit-serve-ready.log &
  pid=$!
  until curl -sf "localhost:$port/health" > /dev/null; do sleep 0.01; done
  end=$(date +%s.%N)
  echo "start $i: ready after $(echo "$end - $start" | bc | cut -c1-5) s ($(grep -o 'ready in [0-9.]* s' /tmp/tfkit-serve-ready.log) after imports)"
  curl -s "localhost:$port/info" | python -c "import json, sys; d = json.load(sys.stdin); c = d['tokenizer']['check']; print('  tensorflow imported:', d['process']['tensorflow_imported'], '| tokenizer check:', c['texts'], 'texts, agreement', c['agreement'])"
  kill -TERM $pid; wait $pid; echo "  exit code after SIGTERM: $?"
done
