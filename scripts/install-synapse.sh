#!/usr/bin/env bash
# Installs Synapse (the reference Matrix homeserver) into a Python venv for the
# federation interoperability tests (tests/tests/federation_synapse.rs).
# Idempotent: only creates the venv / runs pip when `import synapse` fails.
#
#   scripts/install-synapse.sh        # prints "Synapse <version> at <venv>/bin/python"
#
# Env: BELLWIRE_SYNAPSE_VENV  venv directory (default ~/.cache/bellwire/synapse-venv)
#      SYNAPSE_VERSION        pin a version, e.g. 1.163.2 (default: newest on PyPI)
# Exits non-zero (with pip's output on stderr) when the install fails.
set -euo pipefail

VENV="${BELLWIRE_SYNAPSE_VENV:-$HOME/.cache/bellwire/synapse-venv}"
PY="$VENV/bin/python"

die() { echo "install-synapse.sh: $*" >&2; exit 1; }

if ! "$PY" -c "import synapse" >/dev/null 2>&1; then
  command -v python3 >/dev/null 2>&1 || die "python3 is not installed"
  mkdir -p "$(dirname "$VENV")"
  if [ ! -x "$PY" ]; then
    log="$(mktemp)"
    if ! python3 -m venv "$VENV" >"$log" 2>&1; then
      cat "$log" >&2; rm -f "$log"
      die "cannot create a venv at $VENV (on Debian/Ubuntu: apt-get install python3-venv)"
    fi
    rm -f "$log"
  fi
  log="$(mktemp)"
  if ! { "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip &&
         "$VENV/bin/pip" install -q --disable-pip-version-check \
           "matrix-synapse${SYNAPSE_VERSION:+==$SYNAPSE_VERSION}"; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2; rm -f "$log"
    die "pip install matrix-synapse failed in $VENV"
  fi
  rm -f "$log"
  "$PY" -c "import synapse" >/dev/null 2>&1 || die "synapse is installed in $VENV but does not import"
fi

echo "Synapse $("$PY" -c 'import synapse; print(synapse.__version__.split()[0])') at $PY"
