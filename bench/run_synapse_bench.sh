#!/usr/bin/env bash
# One-shot: start a fresh Synapse (bench/synapse.sh), run bench/matrix_bench.py against it with
# --pid for RSS sampling, then stop that Synapse by its PID (also on error / Ctrl-C).
#   bench/run_synapse_bench.sh --users 10 --rooms 5 --messages 200 --out bench/results/synapse.json
# All arguments are passed to matrix_bench.py (do not pass --url / --pid).
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$("$BENCH_DIR/synapse.sh" start)"
URL="$(sed -n 's/^URL=//p' <<<"$out")"
PID="$(sed -n 's/^PID=//p' <<<"$out")"
[ -n "$URL" ] && [ -n "$PID" ] || { echo "could not start Synapse" >&2; exit 1; }
trap '"$BENCH_DIR/synapse.sh" stop "$PID" >&2' EXIT
VER="$("$BENCH_DIR/.synapse-venv/bin/python" -c 'import synapse; print(synapse.__version__)')"
"$BENCH_DIR/matrix_bench.py" --url "$URL" --pid "$PID" --label "synapse $VER sqlite" "$@"
