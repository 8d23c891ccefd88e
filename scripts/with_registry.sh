#!/usr/bin/env bash
# Usage: with_registry.sh <embedded|distributed>[-auth] <command...>
# Starts one registry assembly on a free loopback port with fresh data, exports REGISTRY_ADDR,
# runs the command, and stops the registry (whatever the command's outcome).
# Plain <assembly>: auth.mode none (open). <assembly>-auth: token auth with a fresh bootstrap admin
# key, exported to the command as REGISTRY_USERNAME=admin and REGISTRY_PASSWORD=<key>.
set -euo pipefail
cd "$(dirname "$0")/.."
assembly=$1; shift
auth=none
case $assembly in *-auth) auth=token; assembly=${assembly%-auth} ;; esac
port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
run_id=$(date +%s)-$$
data=$(mktemp -d "${TMPDIR:-/tmp}/hanzo-registry-$assembly.XXXXXX")
export HANZO_REGISTRY_ADDR=127.0.0.1:$port HANZO_REGISTRY_DATA_DIR=$data
export HANZO_REGISTRY_TELEMETRY__LOG_LEVEL=${HANZO_REGISTRY_TELEMETRY__LOG_LEVEL:-WARNING}
export HANZO_REGISTRY_AUTH__MODE=$auth
if [ "$auth" = token ]; then
  key=hzr_$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(6) + "_" + secrets.token_hex(32))')
  export HANZO_REGISTRY_AUTH__BOOTSTRAP_ADMIN_KEY=$key
fi
case $assembly in
  embedded) cmd=(serve) ;;
  distributed)
    source scripts/distributed_env.sh "run-$run_id"
    cmd=(distribution) ;;
  *) echo "unknown assembly $assembly" >&2; exit 2 ;;
esac
log=$data/registry.log
.venv/bin/hanzo-registry "${cmd[@]}" >"$log" 2>&1 </dev/null &
pid=$!
stop() {
  local rc=$?
  kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  # What the run stored goes with it: the namespace's database, S3 prefix and topics (they piled up on the
  # shared local infra run after run), and the data dir unless the command failed (its log is there).
  if [ "$assembly" = distributed ]; then
    .venv/bin/python -c 'import sys; from bench.targets import drop_namespace; sys.exit(drop_namespace(sys.argv[1]))' \
      "run-$run_id" || true
  fi
  if [ "$rc" -eq 0 ]; then rm -rf "$data"; fi
}
trap stop EXIT
for _ in $(seq 1 100); do
  if curl -fsS "http://$HANZO_REGISTRY_ADDR/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then echo "registry ($assembly) exited:"; tail -50 "$log"; exit 1; fi
  sleep 0.2
done
curl -fsS "http://$HANZO_REGISTRY_ADDR/readyz" >/dev/null || { echo "registry ($assembly) not ready:"; tail -50 "$log"; exit 1; }
export REGISTRY_ADDR=$HANZO_REGISTRY_ADDR REGISTRY_LOG=$log
if [ "$auth" = token ]; then
  export REGISTRY_USERNAME=admin REGISTRY_PASSWORD=$key
  unset HANZO_REGISTRY_AUTH__BOOTSTRAP_ADMIN_KEY
fi
status=0
"$@" || status=$?
if [ $status -ne 0 ]; then echo "--- registry log ($assembly, last 40 lines)"; tail -40 "$log"; fi
exit $status
