#!/usr/bin/env bash
# One-shot: start a fresh release Bellwire on 127.0.0.1 (empty data dir, open
# registration, rate limits off), run bench/matrix_bench.py against it with
# --pid for RSS sampling, then stop that Bellwire by its PID (also on error / Ctrl-C).
#   bench/run_bellwire_bench.sh --users 10 --rooms 5 --messages 200 --out bench/results/bellwire.json
# All arguments are passed to matrix_bench.py (do not pass --url / --pid).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/start_bellwire.sh"
"$BENCH_DIR/matrix_bench.py" --url "http://$ADDR" --pid "$PID" --label "bellwire $SHA rocksdb" "$@"
