#!/usr/bin/env bash
# Two federating Bellwire instances (release build) on loopback with a CA made for the run,
# then bench/federation_bench.py against them. Arguments pass through, e.g.
#   bench/run_federation_bench.sh --messages 200 --burst 500 --members 1000 --history 10000 \
#       --out bench/results/federation.json
# Both servers are stopped by their PIDs on exit; their data is removed.
set -euo pipefail
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH_DIR/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$HOME/.cache/bellwire/target}"
BIN="${BELLWIRE_BIN:-$TARGET/release/bellwire}"
if [ ! -x "$BIN" ]; then
  (cd "$ROOT" && ./scripts/prereqs.sh && CARGO_TARGET_DIR="$TARGET" cargo build --release -p bellwire --bin bellwire)
fi
DIR="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$DIR"; }
trap cleanup EXIT

# A throw-away CA and one certificate for localhost / 127.0.0.1.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$DIR/ca.key" -out "$DIR/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
  -keyout "$DIR/hs.key" -out "$DIR/hs.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$DIR/san.ext"
openssl x509 -req -in "$DIR/hs.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" -CAcreateserial -days 2 \
  -extfile "$DIR/san.ext" -out "$DIR/hs.crt" 2>/dev/null
openssl pkcs8 -topk8 -nocrypt -in "$DIR/hs.key" -out "$DIR/hs.pk8"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start() {  # $1 = name
  local port; port="$(free_port)"
  mkdir -p "$DIR/$1"
  cat >"$DIR/$1/bellwire.toml" <<TOML
server_name = "localhost:$port"
listen = "127.0.0.1:0"
[database]
path = "$DIR/$1/db"
[registration]
mode = "open"
[rate_limits]
enabled = false
[federation]
enabled = true
listen = "127.0.0.1:$port"
tls_certificate = "$DIR/hs.crt"
tls_private_key = "$DIR/hs.pk8"
trusted_ca_certificates = ["$DIR/ca.pem"]
max_backoff_secs = 5
TOML
  BELLWIRE_LOG=warn "$BIN" --config "$DIR/$1/bellwire.toml" >"$DIR/$1/stdout" 2>"$DIR/$1/stderr" &
  PIDS+=($!)
  for _ in $(seq 100); do grep -q '^bellwire: listening on' "$DIR/$1/stdout" 2>/dev/null && break; sleep 0.1; done
  local addr; addr="$(sed -n 's/^bellwire: listening on //p' "$DIR/$1/stdout")"
  [ -n "$addr" ] || { echo "Bellwire $1 did not start:" >&2; cat "$DIR/$1/stderr" >&2; exit 1; }
  URL="http://$addr"; NAME="localhost:$port"
}
start hs1; HS1="$URL"; NAME1="$NAME"
start hs2; HS2="$URL"; NAME2="$NAME"
SHA="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
python3 "$BENCH_DIR/federation_bench.py" --hs1 "$HS1" --hs2 "$HS2" --hs1-name "$NAME1" \
  --pids "$(IFS=,; echo "${PIDS[*]}")" --label "bellwire $SHA x2 federated" "$@"
