#!/usr/bin/env bash
# Stops what infra/local-cluster/start.sh started (SIGTERM: data-plane nodes drain first).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
run=${AVIARY_CLUSTER_DIR:-$root/.aviary-cluster}
[ -f "$run/nginx.pid" ] && nginx -c "$run/nginx.conf" -s stop 2>/dev/null
for pidfile in "$run"/data-plane-*.pid "$run"/control-plane.pid; do
  [ -f "$pidfile" ] || continue
  kill -TERM "$(cat "$pidfile")" 2>/dev/null
  rm -f "$pidfile"
done
echo "stopped"
