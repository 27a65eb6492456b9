#!/usr/bin/env bash
# One-shot: start a fresh release Bellwire (see start_bellwire.sh; 100 MiB
# upload limit), run bench/media_bench.py against it with --pid, then stop it.
#   bench/run_bellwire_media_bench.sh --files 40 --size-mib 5 --out bench/results/media.json
set -euo pipefail
export BELLWIRE_MEDIA__MAX_UPLOAD_BYTES=104857600
source "$(dirname "${BASH_SOURCE[0]}")/start_bellwire.sh"
"$BENCH_DIR/media_bench.py" --url "http://$ADDR" --pid "$PID" --label "bellwire $SHA" "$@"
