#!/usr/bin/env bash
# The distributed assembly on the local infra: every service its own process. Ctrl-C stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/distributed_env.sh stack
export HANZO_REGISTRY_TELEMETRY__LOG_FORMAT=${HANZO_REGISTRY_TELEMETRY__LOG_FORMAT:-text}
# The gateway reaches the gc service over gRPC for the /v1/registry/admin/gc endpoints: give it a fixed port.
export HANZO_REGISTRY_GC__GRPC_ADDR=${HANZO_REGISTRY_GC__GRPC_ADDR:-127.0.0.1:50071}
mkdir -p var/stack
pids=()
for svc in distribution scanner signer gc replicator webhooks; do
  if [[ $svc == gc ]]; then
    HANZO_REGISTRY_SERVER__GRPC_ADDR=$HANZO_REGISTRY_GC__GRPC_ADDR .venv/bin/hanzo-registry gc > "var/stack/gc.log" 2>&1 &
    pids+=($!)
    echo "started gc (pid $!, gRPC $HANZO_REGISTRY_GC__GRPC_ADDR, log var/stack/gc.log)"
    continue
  fi
  .venv/bin/hanzo-registry "$svc" > "var/stack/$svc.log" 2>&1 &
  pids+=($!)
  echo "started $svc (pid $!, log var/stack/$svc.log)"
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait' INT TERM EXIT
echo "registry on http://$HANZO_REGISTRY_ADDR  (Ctrl-C stops every service)"
wait -n "${pids[@]}"
