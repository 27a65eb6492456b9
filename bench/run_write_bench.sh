#!/usr/bin/env bash
# One-shot single-room write benchmark: a fresh release Bellwire (or the
# binary in BELLWIRE_BIN) on 127.0.0.1, the write_bench load generator
# against it, then that Bellwire stopped by its PID.
#   bench/run_write_bench.sh [--messages 500] [--workers 10] [--label TEXT]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/start_bellwire.sh"
(cd "$ROOT" && CARGO_TARGET_DIR="$TARGET" cargo build --release -q -p bellwire-write-bench)
"$TARGET/release/write_bench" --url "http://$ADDR" --label "bellwire $SHA" "$@"
