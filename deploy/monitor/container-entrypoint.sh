#!/bin/sh
# codi-monitor's container entrypoint: container defaults (state under /var/lib/codi, the
# socket under /run/codi, JSON logs on stderr, the TCP listener for sibling containers
# when a token is given), each overridable by its CODI_* variable. Secrets may come from
# files (Docker/Kubernetes secrets): CODI_TCP_TOKEN_FILE, CODI_HUB_API_KEY_FILE.
#
#   HEALTHCHECK CMD ["codi-monitor", "health"]
#   ENTRYPOINT ["/usr/local/bin/container-entrypoint.sh"]   # default command: run
set -eu

: "${CODI_DB:=/var/lib/codi/monitor.db}"
: "${CODI_SOCKET:=/run/codi/codi-monitor.sock}"
: "${CODI_EXPORT_DIR:=/var/lib/codi/exports}"
: "${CODI_LOG_JSON:=true}"

if [ -n "${CODI_TCP_TOKEN_FILE:-}" ]; then
    CODI_TCP_TOKEN=$(cat "$CODI_TCP_TOKEN_FILE")
    export CODI_TCP_TOKEN
fi
if [ -n "${CODI_HUB_API_KEY_FILE:-}" ]; then
    CODI_HUB_API_KEY=$(cat "$CODI_HUB_API_KEY_FILE")
    export CODI_HUB_API_KEY
fi
if [ -n "${CODI_TCP_TOKEN:-}" ]; then
    : "${CODI_TCP_ENABLED:=true}"
    : "${CODI_TCP_LISTEN:=0.0.0.0:9847}"
    export CODI_TCP_ENABLED CODI_TCP_LISTEN
fi
export CODI_DB CODI_SOCKET CODI_EXPORT_DIR CODI_LOG_JSON

if [ "$#" -eq 0 ]; then
    set -- run
fi
# exec: the daemon is PID 1's child no more, it is PID 1, and gets SIGTERM directly.
exec "${CODI_MONITOR_BIN:-codi-monitor}" "$@"
