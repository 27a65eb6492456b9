#!/usr/bin/env bash
# Runs the server with config.example.toml (override keys with BELLWIRE_*).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/prereqs.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bellwire/target}"
exec cargo run --release -p bellwire --bin bellwire -- --config "${BELLWIRE_CONFIG:-config.example.toml}" "$@"
