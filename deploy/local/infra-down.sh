#!/usr/bin/env bash
# Stop what deploy/local/infra-up.sh started (by its pid files: TERM, wait, KILL).
# Usage: deploy/local/infra-down.sh [--purge] [kafka] [mongo] [s3]   (default: all)
#   --purge  also delete the components' runtime data dirs and logs under $STATE (and PostgreSQL's $PG_DIR)
# `mongo` stops FerretDB and then the PostgreSQL that infra-up starts for its postgresql backend.
# Idempotent: components that are not running are skipped.
set -euo pipefail
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

purge=0 names=()
for arg in "$@"; do
  case "$arg" in
    --purge) purge=1 ;;
    kafka) names+=(kafka) ;;
    mongo | ferretdb) names+=(ferretdb postgres) ;;
    s3 | seaweedfs | seaweed) names+=(seaweedfs) ;;
    -h | --help) sed -n '2,6p' "$0"; exit 0 ;;
    *) die "unknown argument '$arg' (expected: --purge kafka mongo s3)" ;;
  esac
done
((${#names[@]})) || names=(kafka ferretdb postgres seaweedfs)

# pattern that must appear in /proc/PID/cmdline, so a recycled pid is never killed
declare -A SIGNATURE=([kafka]="kafka.Kafka" [ferretdb]="ferretdb-" [postgres]="$PG_DIR/data" [seaweedfs]="weed-")
declare -A DATA=([kafka]="$STATE/kafka" [ferretdb]="$STATE/ferretdb" [postgres]="$PG_DIR" [seaweedfs]="$STATE/seaweed")
# PostgreSQL: SIGINT to the postmaster alone is its "fast" shutdown (SIGTERM waits for clients to leave);
# the postmaster stops its own children.
declare -A SIGNAL=([kafka]=TERM [ferretdb]=TERM [postgres]=INT [seaweedfs]=TERM)

stop() {
  local name=$1 pidf="$STATE/$1.pid" pid
  if ! pid="$(pid_of "$name")"; then
    [[ -f $pidf ]] && log "$name: not running (stale pid file removed)"
    rm -f "$pidf"
    return 0
  fi
  if ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "${SIGNATURE[$name]}"; then
    log "$name: pid $pid is not ours any more (pid reused); removing pid file only"
    rm -f "$pidf"
    return 0
  fi
  # daemons run in their own session (setsid): signal the process group they lead
  local group=$pid target
  [[ "$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ')" == "$pid" ]] && group="-$pid"
  target=$group
  [[ $name == postgres ]] && target=$pid
  log "$name: stopping pid $pid"
  kill "-${SIGNAL[$name]}" -- "$target" 2>/dev/null || true
  local i
  for ((i = 0; i < 300; i++)); do # up to 30s
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name: still alive after 30s, sending KILL"
    kill -KILL -- "$group" 2>/dev/null || true
    sleep 0.5
  fi
  rm -f "$pidf"
  log "$name: stopped"
}

for n in "${names[@]}"; do
  stop "$n"
  if ((purge)); then
    log "$n: purging ${DATA[$n]} and $LOGS/$n.log"
    rm -rf "${DATA[$n]}" "$LOGS/$n.log"
    [[ $n == ferretdb ]] && rm -f "$STATE/ferretdb.backend"
  fi
done
if ((purge)) && ((${#names[@]} == 4)); then rm -f "$STATE/infra.env"; fi
exit 0
