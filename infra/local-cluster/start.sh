#!/usr/bin/env bash
# Starts a local Aviary cluster on this machine, without Docker:
#   control plane on Postgres (REST :8070, gRPC :8071), three data-plane nodes (:8081-:8083)
#   sharing Redis, and nginx on :8080 in front of them (if nginx is installed).
# State (logs, pids, nginx config) goes to $AVIARY_CLUSTER_DIR (default ./.aviary-cluster).
# Stop it with infra/local-cluster/stop.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
run=${AVIARY_CLUSTER_DIR:-$root/.aviary-cluster}
bin=${AVIARY_BIN:-$root/target/release/aviary}
db=${AVIARY_CLUSTER_DB:-aviary_local}
export AVIARY_DATABASE_URL=${AVIARY_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/$db}
export AVIARY_REDIS_URL=${AVIARY_REDIS_URL:-redis://127.0.0.1:6379}
export AVIARY_OPERATOR_TOKEN=${AVIARY_OPERATOR_TOKEN:-avo_local_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
export AVIARY_NODE_TOKEN=${AVIARY_NODE_TOKEN:-avn_local_$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')}
mkdir -p "$run"

[ -x "$bin" ] || (cd "$root" && cargo build --release -p aviary)
psql -h 127.0.0.1 -U postgres -d postgres -tc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE $db" >/dev/null

wait_http() { for _ in $(seq 1 100); do curl -fsS "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "no answer from $1" >&2; return 1; }

"$bin" migrate
"$bin" control-plane --listen 127.0.0.1:8070 --grpc-listen 127.0.0.1:8071 --no-migrate >"$run/control-plane.log" 2>&1 &
echo $! >"$run/control-plane.pid"
wait_http http://127.0.0.1:8070/healthz
upstreams=""
for i in 1 2 3; do
  "$bin" data-plane --listen 127.0.0.1:808$i --control-plane http://127.0.0.1:8071 --node-id "local-$i" \
    --cache-dir "$run/node-$i" >"$run/data-plane-$i.log" 2>&1 &
  echo $! >"$run/data-plane-$i.pid"
  upstreams="${upstreams}server 127.0.0.1:808$i; "
done
for i in 1 2 3; do wait_http http://127.0.0.1:808$i/healthz; done

if command -v nginx >/dev/null 2>&1; then
  mkdir -p "$run/body" "$run/proxy" "$run/fastcgi" "$run/uwsgi" "$run/scgi"
  sed -e "s|__RUN_DIR__|$run|g" -e "s|__DATA_PLANE_UPSTREAMS__|$upstreams|" \
      -e "s|__CONTROL_PLANE_PORT__|8070|" -e "s|__LB_PORT__|8080|" "$root/infra/nginx.conf" >"$run/nginx.conf"
  nginx -c "$run/nginx.conf"
  echo "load balancer   http://127.0.0.1:8080 (nginx)"
else
  echo "nginx is not installed (apt-get install -y nginx); connect to a node directly"
fi
echo "control plane   http://127.0.0.1:8070   gRPC 127.0.0.1:8071"
echo "data plane      http://127.0.0.1:8081 .. 8083"
echo "operator token  $AVIARY_OPERATOR_TOKEN"
echo "logs            $run"
