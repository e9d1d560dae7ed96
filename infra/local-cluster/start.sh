#!/usr/bin/env bash
# Starts a local Aviary cluster on this machine, without Docker:
#   control plane on Postgres (REST :8070, gRPC :8071), three data-plane nodes (:8081-:8083)
#   sharing Redis, and nginx on :8080 in front of them (if nginx is installed). /metrics is on
#   loopback :9470 (control plane) and :9481-:9483 (nodes), as infra/prometheus.yml scrapes.
# State (logs, pids, nginx config) goes to $AVIARY_CLUSTER_DIR (default ./.aviary-cluster).
# Stop it with infra/local-cluster/stop.sh.
#
# Everything is overridable, so several clusters (and the tests, aviary/tests/nginx.rs) can run
# side by side on one machine and one Postgres/Redis:
#   AVIARY_CLUSTER_LB_PORT        nginx's port (8080)
#   AVIARY_CLUSTER_CP_PORT        control-plane REST port (8070; 0 picks a free one)
#   AVIARY_CLUSTER_GRPC_PORT      control-plane gRPC port (8071; 0 picks a free one)
#   AVIARY_CLUSTER_NODE_PORTS     data-plane ports, one node each ("8081 8082 8083"; 0 picks)
#   AVIARY_CLUSTER_DB             Postgres database, created if missing (aviary_local)
#   AVIARY_REDIS_PREFIX           prefix of the cluster's Redis keys (aviary)
#   AVIARY_CLUSTER_OWNER_PID      when set, the cluster stops itself once that process is gone
#   AVIARY_TRUSTED_PROXIES        peers believed about the client address (127.0.0.1: the nginx
#                                 in front, whose X-Forwarded-For then names each client)
# The addresses it ends up on are printed and written to $AVIARY_CLUSTER_DIR/endpoints.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
run=${AVIARY_CLUSTER_DIR:-$root/.aviary-cluster}
bin=${AVIARY_BIN:-$root/target/release/aviary}
db=${AVIARY_CLUSTER_DB:-aviary_local}
lb_port=${AVIARY_CLUSTER_LB_PORT:-8080}
cp_port=${AVIARY_CLUSTER_CP_PORT:-8070}
grpc_port=${AVIARY_CLUSTER_GRPC_PORT:-8071}
node_ports=${AVIARY_CLUSTER_NODE_PORTS:-8081 8082 8083}
export AVIARY_DATABASE_URL=${AVIARY_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/$db}
export AVIARY_REDIS_URL=${AVIARY_REDIS_URL:-redis://127.0.0.1:6379}
# nginx connects to the planes from 127.0.0.1; without this every client behind it would share
# one rate-limit bucket.
export AVIARY_TRUSTED_PROXIES=${AVIARY_TRUSTED_PROXIES:-127.0.0.1}
export AVIARY_OPERATOR_TOKEN=${AVIARY_OPERATOR_TOKEN:-avo_local_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
export AVIARY_NODE_TOKEN=${AVIARY_NODE_TOKEN:-avn_local_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
# Seals Pusher credential secrets in the store: keep it to keep those credentials.
export AVIARY_CREDENTIALS_KEY=${AVIARY_CREDENTIALS_KEY:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}
mkdir -p "$run"

[ -x "$bin" ] || (cd "$root" && cargo build --release -p aviary)
psql -h 127.0.0.1 -U postgres -d postgres -tc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE $db" >/dev/null

# The address a process printed as `<label> http://ADDR` in its log (it binds before printing).
printed_addr() {
  local log=$1 label=$2
  for _ in $(seq 1 200); do
    addr=$(sed -n "s|^$label http://||p" "$log" | head -n1)
    [ -n "$addr" ] && { echo "$addr"; return 0; }
    sleep 0.05
  done
  echo "no '$label' line in $log:" >&2; cat "$log" >&2; return 1
}
wait_http() { for _ in $(seq 1 100); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "no answer from $1" >&2; return 1; }

if [ -n "${AVIARY_CLUSTER_OWNER_PID:-}" ]; then
  # Tests start clusters; this watcher stops one whose test died without stopping it.
  owner=$AVIARY_CLUSTER_OWNER_PID
  (while kill -0 "$owner" 2>/dev/null; do sleep 1; done; AVIARY_CLUSTER_DIR="$run" "$root/infra/local-cluster/stop.sh") \
    </dev/null >/dev/null 2>&1 &
  echo $! >"$run/watcher.pid"
fi

"$bin" migrate
# /metrics listens on loopback: :9470 for the control plane, the node's port + 1400 for a node
# (:9481-:9483 by default, as infra/prometheus.yml scrapes); a free port when the port is 0.
metrics_port() { if [ "$1" = 0 ]; then echo 0; else echo "$2"; fi; }
"$bin" control-plane --listen "127.0.0.1:$cp_port" --grpc-listen "127.0.0.1:$grpc_port" \
  --metrics-listen "127.0.0.1:$(metrics_port "$cp_port" 9470)" --no-migrate >"$run/control-plane.log" 2>&1 &
echo $! >"$run/control-plane.pid"
cp_addr=$(printed_addr "$run/control-plane.log" "listening on")
grpc_addr=$(printed_addr "$run/control-plane.log" "grpc on")
wait_http "http://$cp_addr/healthz"
upstreams=""
nodes=""
i=0
for port in $node_ports; do
  i=$((i + 1))
  "$bin" data-plane --listen "127.0.0.1:$port" --metrics-listen "127.0.0.1:$(metrics_port "$port" $((port + 1400)))" \
    --control-plane "http://$grpc_addr" --node-id "local-$i" \
    --cache-dir "$run/node-$i" >"$run/data-plane-$i.log" 2>&1 &
  echo $! >"$run/data-plane-$i.pid"
done
for n in $(seq 1 "$i"); do
  addr=$(printed_addr "$run/data-plane-$n.log" "listening on")
  wait_http "http://$addr/healthz"
  upstreams="${upstreams}server $addr; "
  nodes="$nodes $addr"
done

{
  echo "control_plane=http://$cp_addr"
  echo "grpc=http://$grpc_addr"
  echo "data_plane=${nodes# }"
} >"$run/endpoints"
if command -v nginx >/dev/null 2>&1; then
  mkdir -p "$run/body" "$run/proxy" "$run/fastcgi" "$run/uwsgi" "$run/scgi"
  sed -e "s|__RUN_DIR__|$run|g" -e "s|__DATA_PLANE_UPSTREAMS__|$upstreams|" \
      -e "s|__CONTROL_PLANE_ADDR__|$cp_addr|" -e "s|__LB_PORT__|$lb_port|" "$root/infra/nginx.conf" >"$run/nginx.conf"
  # -e: log start-up errors here too, not in the package's /var/log/nginx.
  nginx -e "$run/nginx-error.log" -c "$run/nginx.conf"
  echo "load_balancer=http://127.0.0.1:$lb_port" >>"$run/endpoints"
  echo "load balancer   http://127.0.0.1:$lb_port (nginx)"
else
  echo "nginx is not installed (apt-get install -y nginx); connect to a node directly"
fi
echo "control plane   http://$cp_addr   gRPC $grpc_addr"
echo "data plane      $nodes"
echo "operator token  $AVIARY_OPERATOR_TOKEN"
echo "logs            $run"
