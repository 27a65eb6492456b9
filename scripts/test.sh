#!/usr/bin/env bash
# The whole test suite: unit tests of every crate and the cross-crate
# scenarios in tests/, which start real bellwire processes on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/prereqs.sh
if ./scripts/install-synapse.sh; then export BELLWIRE_SYNAPSE_PYTHON="${BELLWIRE_SYNAPSE_VENV:-$HOME/.cache/bellwire/synapse-venv}/bin/python"; else echo "test.sh: Synapse could not be installed; the federation_synapse tests will fail" >&2; fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/bellwire/target}"
# The tree is rustfmt-clean and clippy-clean (warnings are errors; no
# unwrap/expect outside tests).
cargo fmt --all --check
# The same package selection as the test build, so dependencies (RocksDB
# above all) resolve their features alike and compile once.
cargo build --workspace --bins
cargo clippy --workspace --all-targets -- -D warnings
export BELLWIRE_BIN="$CARGO_TARGET_DIR/debug/bellwire"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
