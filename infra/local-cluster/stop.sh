#!/usr/bin/env bash
# Stops what infra/local-cluster/start.sh started (SIGTERM: data-plane nodes drain first).
set -uo pipefail
run=${AVIARY_CLUSTER_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/.aviary-cluster}
[ -f "$run/nginx.pid" ] && nginx -e "$run/nginx-error.log" -c "$run/nginx.conf" -s stop 2>/dev/null
for pidfile in "$run"/data-plane-*.pid "$run"/control-plane.pid; do
  [ -f "$pidfile" ] || continue
  kill -TERM "$(cat "$pidfile")" 2>/dev/null
  rm -f "$pidfile"
done
# The owner watcher, unless it is the one stopping the cluster.
if [ -f "$run/watcher.pid" ]; then
  watcher=$(cat "$run/watcher.pid")
  rm -f "$run/watcher.pid"
  [ "$watcher" != "${BASHPID:-}" ] && [ "$watcher" != "$PPID" ] && kill "$watcher" 2>/dev/null
fi
echo "stopped"
