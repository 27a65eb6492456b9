# Sourced by the run_bellwire_*_bench.sh scripts: builds the release binary if
# missing, starts a fresh Bellwire on 127.0.0.1 (empty data dir, open
# registration, rate limits off, plus any BELLWIRE_* the caller exported) and
# sets PID, ADDR and SHA; an EXIT trap stops it by its PID and removes the data.
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$HOME/.cache/bellwire/target}"
BIN="${BELLWIRE_BIN:-$TARGET/release/bellwire}"
if [ ! -x "$BIN" ]; then
  (cd "$ROOT" && ./scripts/prereqs.sh && CARGO_TARGET_DIR="$TARGET" cargo build --release -p bellwire --bin bellwire)
fi
DATA="$(mktemp -d)"
OUT="$DATA/stdout"
BELLWIRE_LISTEN=127.0.0.1:0 BELLWIRE_DATABASE__PATH="$DATA/db" BELLWIRE_REGISTRATION__MODE=open BELLWIRE_RATE_LIMITS__ENABLED=false \
  BELLWIRE_LOG=warn "$BIN" >"$OUT" 2>"$DATA/stderr" &
PID=$!
trap 'kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do
  grep -q 'listening on' "$OUT" 2>/dev/null && break
  sleep 0.1
done
ADDR="$(sed -n 's/^bellwire: listening on //p' "$OUT")"
[ -n "$ADDR" ] || { echo "Bellwire did not start:" >&2; cat "$DATA/stderr" >&2; exit 1; }
SHA="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
