#!/usr/bin/env bash
# The distributed assembly on the local infra: every service its own process. Ctrl-C stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/distributed_env.sh stack
export HANZO_REGISTRY_TELEMETRY__LOG_FORMAT=${HANZO_REGISTRY_TELEMETRY__LOG_FORMAT:-text}
mkdir -p var/stack
pids=()
for svc in distribution scanner signer gc replicator; do
  .venv/bin/hanzo-registry "$svc" > "var/stack/$svc.log" 2>&1 &
  pids+=($!)
  echo "started $svc (pid $!, log var/stack/$svc.log)"
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait' INT TERM EXIT
echo "registry on http://$HANZO_REGISTRY_ADDR  (Ctrl-C stops every service)"
wait -n "${pids[@]}"
