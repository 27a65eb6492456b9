#!/usr/bin/env bash
# The single-room write benchmark on two Bellwire binaries, alternating
# (before, after, before, after, ...) so that both see the same machine,
# ROUNDS runs each, every run on a fresh data directory. One JSON per run
# in bench/results/, then the medians side by side with their ratio.
#   bench/compare_write_bench.sh BEFORE_BIN AFTER_BIN [ROUNDS] [write_bench args...]
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BEFORE=$1; AFTER=$2; ROUNDS=${3:-7}
shift $(( $# < 3 ? $# : 3 ))
OUT="$BENCH_DIR/results"
mkdir -p "$OUT"
STAMP=$(date +%Y%m%d-%H%M%S)
for i in $(seq "$ROUNDS"); do
  for side in before after; do
    bin=$BEFORE; [ "$side" = after ] && bin=$AFTER
    BELLWIRE_BIN="$bin" "$BENCH_DIR/run_write_bench.sh" --label "$side" "$@" \
      > "$OUT/write-$STAMP-$side-$i.json"
  done
done
"$BENCH_DIR/summarize_write.py" "$OUT"/write-"$STAMP"-before-*.json -- "$OUT"/write-"$STAMP"-after-*.json
