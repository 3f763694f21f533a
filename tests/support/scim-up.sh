#!/usr/bin/env bash
# scim-up.sh DIR PORT
#
# Start a real, independently written SCIM 2.0 service provider (PyPI
# scim2-server, in-memory storage) on 127.0.0.1:PORT for integration tests.
# Installs it into SCIM_VENV first if it is not there (pinned versions, PyPI only).
#
# stdout: shell-sourceable lines, e.g.   eval "$(recipes/scim-up.sh /tmp/scim 39150)"
#   SCIM_URL=http://127.0.0.1:PORT/v2     base URL (append /Users, /Groups, ...)
#   SCIM_ROOT=http://127.0.0.1:PORT       root, for tenant URLs (see below)
#   SCIM_TOKEN=...                        bearer token the server requires
#   SCIM_PID=...                          server process id
# Everything else goes to stderr. The server log is DIR/scim.log.
#
# Environment knobs:
#   SCIM_TOKEN=...           use this bearer token instead of a random one
#   SCIM_PYTHON=python3.11   interpreter used to create the venv (needs >= 3.11)
#   SCIM_DYNAMIC_TENANTS=1   serve one separate in-memory store per URL prefix:
#                            $SCIM_ROOT/<any-name>/v2/... (created on first use),
#                            so parallel tests can each use their own tenant.
#                            SCIM_URL then points at tenant "default".
#   SCIM_VENV=DIR            where the pinned server is installed (default
#                            ~/.cache/dirbridge/scim-venv, shared by test runs)
#   SCIM_WATCH_PID=PID       stop the server and remove DIR when process PID exits
#                            (a test binary never leaves a server or its files behind;
#                            a server that stops while PID runs keeps DIR for its log)
#   scim-up.sh --install     only install the pinned server into SCIM_VENV (CI set-up)
# On scim-down.sh the resources are written to DIR/dump.json.
# Adapted from shared/notes/recipes/scim-up.sh.
set -euo pipefail

usage() { echo "usage: $0 DIR PORT | $0 --install" >&2; exit 2; }
INSTALL_ONLY=0
if [ "${1:-}" = --install ]; then INSTALL_ONLY=1; set -- /tmp/dirbridge-scim-install 1; fi
[ $# -eq 2 ] || usage
DIR=$1 PORT=$2
case $PORT in ''|*[!0-9]*) usage ;; esac
[ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ] || usage

# Pinned: scim2-server and its whole dependency closure (checked on CPython 3.11).
PINS=(
  scim2-server==0.8.3 scim2-models==0.12.3
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0
  typing_extensions==4.16.0 typing-inspection==0.4.5
  email-validator==2.4.0 dnspython==2.9.2 idna==3.20 lark==1.3.1
)
HOST=127.0.0.1
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
VENV=${SCIM_VENV:-$HOME/.cache/dirbridge/scim-venv} PY=$VENV/bin/python
PIDFILE=$DIR/scim.pid ENVFILE=$DIR/scim.env LOG=$DIR/scim.log

log() { echo "scim-up: $*" >&2; }

# Already running from this DIR? Then print its values again and stop here.
if [ -f "$PIDFILE" ] && [ -f "$ENVFILE" ]; then
  oldpid=$(cat "$PIDFILE")
  if kill -0 "$oldpid" 2>/dev/null && grep -q scim2_server "/proc/$oldpid/cmdline" 2>/dev/null; then
    if grep -q "^SCIM_ROOT=http://$HOST:$PORT\$" "$ENVFILE"; then
      log "already running (pid $oldpid)"; cat "$ENVFILE"; exit 0
    fi
    log "a server from $DIR is already running on another port (pid $oldpid); run scim-down.sh $DIR first"
    exit 1
  fi
  rm -f "$PIDFILE" "$ENVFILE"
fi

# Install if missing.
if ! "$PY" -c 'import importlib.metadata as m, sys; sys.exit(m.version("scim2-server") != "0.8.3")' 2>/dev/null; then
  pybin=${SCIM_PYTHON:-python3}
  "$pybin" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || { log "$pybin is older than 3.11 (scim2-server needs >= 3.11); set SCIM_PYTHON"; exit 1; }
  log "installing scim2-server 0.8.3 into $VENV"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$pybin" -m venv "$VENV" || { log "python3 -m venv failed: apt-get install python3-venv"; exit 1; }
  "$PY" -m pip install --quiet --disable-pip-version-check --no-input "${PINS[@]}" >&2
fi

[ "$INSTALL_ONLY" = 1 ] && { log "installed in $VENV"; exit 0; }

# Refuse a port that something else already listens on.
if "$PY" -c 'import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(0 if s.connect_ex((sys.argv[1], int(sys.argv[2]))) == 0 else 1)' "$HOST" "$PORT"; then
  log "port $PORT on $HOST is already in use"; exit 1
fi

TOKEN=${SCIM_TOKEN:-$("$PY" -c 'import secrets; print(secrets.token_hex(16))')}
ARGS=(--hostname "$HOST" --port "$PORT" --bearer-token "$TOKEN" --dump-resources "$DIR/dump.json")
URL=http://$HOST:$PORT/v2
if [ "${SCIM_DYNAMIC_TENANTS:-0}" = 1 ]; then
  ARGS+=(--dynamic-tenants); URL=http://$HOST:$PORT/default/v2
fi

# Launcher: SIGTERM/SIGINT end serve_forever cleanly, so --dump-resources is written.
LAUNCH='
import signal, sys
from scim2_server.testserver.cli import main
def _stop(*_):
    raise KeyboardInterrupt
signal.signal(signal.SIGTERM, _stop)
signal.signal(signal.SIGINT, _stop)
sys.argv[0] = "scim2-server"
main()
'
start_server() {
  # setsid: own session, so the server outlives this script and a terminal's ^C.
  setsid "$PY" -c "$LAUNCH" "${ARGS[@]}" </dev/null >"$LOG" 2>&1 &
  PID=$!
  echo "$PID" >"$PIDFILE"
  # Wait until it answers (unauthenticated discovery endpoint), up to 30 s.
  "$PY" - "$URL/ServiceProviderConfig" "$PID" <<'EOF'
import os, sys, time, urllib.request
url, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except Exception:
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit(1)
    time.sleep(0.05)
sys.exit(1)
EOF
}

# The port can be held by another program's loopback client socket: 39100-39199
# lies inside Linux's ephemeral range (32768-60999), and such a socket blocks
# bind() with "Address already in use" while it is open and for up to 60 s of
# TIME_WAIT after it closes. So retry for up to ~75 s before giving up.
ok=0
for attempt in $(seq 1 38); do
  if start_server; then ok=1; break; fi
  kill "$PID" 2>/dev/null || true
  rm -f "$PIDFILE"
  grep -q "Address already in use" "$LOG" 2>/dev/null || break
  log "port $PORT held by another socket at bind (attempt $attempt); retrying in 2 s"
  sleep 2
done
if [ "$ok" != 1 ]; then
  log "server did not become ready; log follows"; cat "$LOG" >&2
  exit 1
fi

{
  printf 'SCIM_URL=%q\n' "$URL"
  printf 'SCIM_ROOT=%q\n' "http://$HOST:$PORT"
  printf 'SCIM_TOKEN=%q\n' "$TOKEN"
  printf 'SCIM_PID=%q\n' "$PID"
} >"$ENVFILE"
if [ -n "${SCIM_WATCH_PID:-}" ]; then
  setsid sh -c 'while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 0.5; done
    kill -0 "$1" 2>/dev/null && exit 0
    kill "$2" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$2" 2>/dev/null || break; sleep 0.1; done
    rm -rf "$3"' \
    _ "$SCIM_WATCH_PID" "$PID" "$DIR" </dev/null >/dev/null 2>&1 &
fi
log "ready on $URL (pid $PID, log $LOG)"
cat "$ENVFILE"
