#!/usr/bin/env bash
# The int8 (default) and the float32 server on the same export, 1 ORT thread each, alternating over two
# rounds, one `tfkit loadtest` (2,000 requests, 16 in flight) per server and round.
# usage: benchmarks/serve_int8_vs_fp32.sh EXPORT_DIR [OUT_PREFIX]   (writes OUT_PREFIX_<format>_<round>.json)
set -u
export_dir=${1:?usage: benchmarks/serve_int8_vs_fp32.sh EXPORT_DIR [OUT_PREFIX]}; out=${2:-/tmp/serve_ab}; port=8795
for round in 1 2; do
  for fmt in onnx-int8 onnx; do
    tfkit serve "$export_dir" --port "$port" --format "$fmt" --threads 1 2> "${out}_$fmt.log" &
    pid=$!
    until curl -sf "localhost:$port/health" > /dev/null; do sleep 0.1; done
    tfkit loadtest "http://127.0.0.1:$port" --requests 2000 --concurrency 16 --json "${out}_${fmt}_$round.json" 2>&1 | tail -4
    kill -TERM $pid; wait $pid
  done
done
