#!/usr/bin/env bash
# Run a throw-away Synapse on 127.0.0.1 (SQLite, server_name "localhost", open registration,
# rate limits raised out of the way) as the reference server for bench/matrix_bench.py.
#
#   bench/synapse.sh start [--port N] [--dir DIR] [--keep] [--registration-token TOK]
#                                                            # prints URL=... PID=... DIR=...
#   bench/synapse.sh stop  [PID]                             # PID defaults to DIR/synapse.pid
#   bench/synapse.sh status
#
# start: creates bench/.synapse-venv and `pip install matrix-synapse` on first use (~1 min),
#        wipes DIR (default bench/.synapse-data) unless --keep, generates a config, picks a free
#        loopback port unless --port, starts Synapse in the background, waits until
#        /_matrix/client/versions answers, then prints URL and PID (also DIR/synapse.url/.pid).
#        --registration-token TOK: set registration_requires_token and create TOK through the
#        admin API (via an admin user made with register_new_matrix_user), to exercise the
#        m.login.registration_token UIA stage (matrix_bench.py --registration-token TOK).
# stop:  sends SIGTERM to that PID only (after checking it is a synapse.app.homeserver process),
#        waits up to 30 s, then SIGKILL.
# Env:   SYNAPSE_VERSION=1.163.2 to pin a version (default: newest on PyPI).
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$BENCH_DIR/.synapse-venv"
DIR="$BENCH_DIR/.synapse-data"
PORT=""
KEEP=0
REG_TOKEN=""

die() { echo "synapse.sh: $*" >&2; exit 1; }

cmd="${1:-}"; [ $# -gt 0 ] && shift
while [ $# -gt 0 ]; do
  case "$1" in
    --port) PORT="$2"; shift 2 ;;
    --dir)  DIR="$(mkdir -p "$2" && cd "$2" && pwd)"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --registration-token) REG_TOKEN="$2"; shift 2 ;;
    [0-9]*) PID_ARG="$1"; shift ;;
    *) die "unknown argument $1" ;;
  esac
done

is_synapse_pid() {  # $1 = pid
  [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q "synapse.app.homeserver"
}

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "creating venv $VENV" >&2
    python3 -m venv "$VENV"
  fi
  if ! "$VENV/bin/python" -c "import synapse" 2>/dev/null; then
    echo "pip install matrix-synapse${SYNAPSE_VERSION:+==$SYNAPSE_VERSION} (takes ~1 min)" >&2
    "$VENV/bin/pip" install -q --upgrade pip >&2
    "$VENV/bin/pip" install -q "matrix-synapse${SYNAPSE_VERSION:+==$SYNAPSE_VERSION}" >&2
  fi
}

free_port() {
  "$VENV/bin/python" - <<'EOF'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
EOF
}

start() {
  if [ -f "$DIR/synapse.pid" ] && is_synapse_pid "$(cat "$DIR/synapse.pid")"; then
    die "a Synapse is already running from $DIR (PID $(cat "$DIR/synapse.pid")); stop it first"
  fi
  ensure_venv
  [ -n "$PORT" ] || PORT="$(free_port)"
  if [ "$KEEP" = 0 ]; then rm -rf "$DIR"; fi
  mkdir -p "$DIR"
  if [ ! -f "$DIR/homeserver.yaml" ]; then
    # cwd = DIR so the generated log config writes DIR/homeserver.log
    (cd "$DIR" && "$VENV/bin/python" -m synapse.app.homeserver --server-name localhost \
        --config-path "$DIR/homeserver.yaml" --data-directory "$DIR" \
        --generate-config --report-stats=no >/dev/null)
  fi
  "$VENV/bin/python" - "$DIR/homeserver.yaml" "$PORT" "$REG_TOKEN" <<'EOF'
import sys, yaml
path, port, reg_token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
cfg = yaml.safe_load(open(path))
cfg["listeners"] = [{
    "port": port, "tls": False, "type": "http", "x_forwarded": False,
    "bind_addresses": ["127.0.0.1"],
    "resources": [{"names": ["client", "federation"], "compress": False}],
}]
cfg.update({
    "enable_registration": True,
    "enable_registration_without_verification": True,
    "report_stats": False,
    # keep this server off the network: no key servers, no federation with anyone
    "trusted_key_servers": [],
    "suppress_key_server_warning": True,
    "federation_domain_whitelist": [],
    "url_preview_enabled": False,
    "registration_requires_token": bool(reg_token),
})
HIGH = {"per_second": 100000, "burst_count": 100000}
cfg.update({
    "rc_message": HIGH,
    "rc_registration": HIGH,
    "rc_registration_token_validity": HIGH,
    "rc_login": {"address": HIGH, "account": HIGH, "failed_attempts": HIGH},
    "rc_joins": {"local": HIGH, "remote": HIGH},
    "rc_joins_per_room": HIGH,
    "rc_invites": {"per_room": HIGH, "per_user": HIGH, "per_issuer": HIGH},
    "rc_room_creation": HIGH,
    "rc_presence": {"per_user": HIGH},
    "rc_key_requests": HIGH,
    "rc_3pid_validation": HIGH,
    "rc_third_party_invite": HIGH,
    "rc_media_create": HIGH,
    "rc_delayed_event_mgmt": HIGH,
    "rc_admin_redaction": HIGH,
    "rc_reports": HIGH,
    "rc_user_directory": HIGH,
    "rc_profile": HIGH,
})
yaml.safe_dump(cfg, open(path, "w"), sort_keys=False)
EOF
  # exec, so that $! is the Synapse python process itself (the PID to sample RSS from / stop)
  (cd "$DIR" && exec nohup "$VENV/bin/python" -m synapse.app.homeserver -c "$DIR/homeserver.yaml" \
      >"$DIR/stdout.log" 2>&1 </dev/null) &
  local pid=$!
  echo "$pid" >"$DIR/synapse.pid"
  local url="http://127.0.0.1:$PORT"
  echo "$url" >"$DIR/synapse.url"
  for _ in $(seq 1 120); do
    if curl --noproxy '*' -fsS --max-time 2 "$url/_matrix/client/versions" >/dev/null 2>&1; then
      echo "Synapse $("$VENV/bin/python" -c 'import synapse; print(synapse.__version__)') up" >&2
      [ -z "$REG_TOKEN" ] || make_reg_token "$url"
      echo "URL=$url"
      echo "PID=$pid"
      echo "DIR=$DIR"
      echo "stop with: $BENCH_DIR/synapse.sh stop $pid" >&2
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$DIR/stdout.log" "$DIR/homeserver.log" >&2 2>/dev/null || true
      die "Synapse exited during startup (see $DIR/stdout.log, $DIR/homeserver.log)"
    fi
    sleep 0.5
  done
  kill "$pid" 2>/dev/null || true
  die "Synapse did not answer on $url within 60 s (killed PID $pid)"
}

make_reg_token() {  # $1 = url; creates $REG_TOKEN via the admin API
  local pw; pw="$("$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(16))')"
  "$VENV/bin/register_new_matrix_user" -c "$DIR/homeserver.yaml" -u bench_admin -p "$pw" -a "$1" >/dev/null
  "$VENV/bin/python" - "$1" "$pw" "$REG_TOKEN" <<'EOF'
import json, sys, urllib.request
url, pw, tok = sys.argv[1:4]
def call(method, path, body, token=None):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method=method,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": "Bearer " + token} if token else {})})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, no proxy
    with opener.open(req, timeout=30) as r:
        return json.load(r)
login = call("POST", "/_matrix/client/v3/login", {"type": "m.login.password",
             "identifier": {"type": "m.id.user", "user": "bench_admin"}, "password": pw})
call("POST", "/_synapse/admin/v1/registration_tokens/new", {"token": tok}, login["access_token"])
print("registration token %r created (unlimited uses)" % tok, file=sys.stderr)
EOF
}

stop() {
  local pid="${PID_ARG:-}"
  [ -n "$pid" ] || { [ -f "$DIR/synapse.pid" ] && pid="$(cat "$DIR/synapse.pid")"; } || true
  [ -n "$pid" ] || die "no PID given and no $DIR/synapse.pid"
  is_synapse_pid "$pid" || die "PID $pid is not a running synapse.app.homeserver; not touching it"
  kill -TERM "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || { echo "stopped Synapse PID $pid"; rm -f "$DIR/synapse.pid"; return 0; }
    sleep 0.5
  done
  kill -KILL "$pid" 2>/dev/null || true
  echo "Synapse PID $pid did not stop on SIGTERM in 30 s; sent SIGKILL"
}

status() {
  if [ -f "$DIR/synapse.pid" ] && is_synapse_pid "$(cat "$DIR/synapse.pid")"; then
    echo "running: PID=$(cat "$DIR/synapse.pid") URL=$(cat "$DIR/synapse.url" 2>/dev/null)"
  else
    echo "not running (dir $DIR)"
  fi
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
