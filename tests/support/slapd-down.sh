#!/usr/bin/env bash
# Stop a server started by tests/support/slapd-up.sh, using DIR/slapd.pid.
#   tests/support/slapd-down.sh DIR          # stop, keep DIR (slapd-up.sh DIR restarts it with its data)
#   tests/support/slapd-down.sh DIR --purge  # stop and delete DIR
set -euo pipefail
DIR=${1:?usage: slapd-down.sh DIR [--purge]}
PIDFILE="$DIR/slapd.pid"

if [ -s "$PIDFILE" ]; then
    PID=$(cat "$PIDFILE")
    if kill -0 "$PID" 2>/dev/null && grep -q slapd "/proc/$PID/comm" 2>/dev/null; then
        kill -TERM "$PID"
        for _ in $(seq 1 100); do          # slapd flushes and exits; wait up to ~10 s
            kill -0 "$PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$PID" 2>/dev/null; then
            echo "slapd-down: pid $PID ignored SIGTERM, sending SIGKILL" >&2
            kill -KILL "$PID" 2>/dev/null || true
        fi
    fi
    rm -f "$PIDFILE"
fi

if [ "${2:-}" = "--purge" ]; then
    # only delete directories that look like ours
    [ -f "$DIR/config.ldif" ] && [ -d "$DIR/slapd.d" ] && rm -rf "$DIR"
fi
exit 0
