# shellcheck shell=bash disable=SC2034  # variables are used by the sourcing scripts
# Shared settings and helpers for deploy/local/*.sh (sourced, not executed).

HANZO_LOCAL_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HANZO_CACHE_ROOT="${HANZO_CACHE:-$HOME/.cache/hanzo-registry}"
CACHE="$HANZO_CACHE_ROOT/infra"
STATE="${HANZO_INFRA_STATE:-$HANZO_CACHE_ROOT/infra/run}"
BIN="$CACHE/bin"
LOGS="$STATE/logs"

# ---------------------------------------------------------------- pinned versions
KAFKA_VERSION="4.4.0"            # org.apache.kafka:kafka_2.13 (newest 4.x on Maven Central)
KAFKA_SCALA="2.13"
LOG4J_VERSION="2.25.3"           # log4j-core + log4j-slf4j2-impl binding
SLF4J_VERSION="2.0.17"
FERRETDB_VERSION="v1.24.2"       # newest v1.24 patch on the Go module proxy
# SeaweedFS publishes non-semver tags, so the proxy only serves pseudo-versions.
SEAWEEDFS_VERSION="v0.0.0-20261109003541-7506e5f91cd6"

# ---------------------------------------------------------------- ports (loopback only)
# Overridable (HANZO_INFRA_*_PORT) only to run a second, isolated stack next to the
# default one; tests should read the ports from $STATE/infra.env.
KAFKA_PORT=${HANZO_INFRA_KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${HANZO_INFRA_KAFKA_CONTROLLER_PORT:-9093}
MONGO_PORT=${HANZO_INFRA_MONGO_PORT:-27017}
FERRETDB_DEBUG_PORT=${HANZO_INFRA_FERRETDB_DEBUG_PORT:-28088}
S3_PORT=${HANZO_INFRA_S3_PORT:-8333}                       # gRPC = +10000 (18333)
WEED_MASTER_PORT=${HANZO_INFRA_WEED_MASTER_PORT:-9333}     # gRPC = +10000 (19333)
WEED_VOLUME_PORT=${HANZO_INFRA_WEED_VOLUME_PORT:-18080}    # gRPC = +10000 (28080)
WEED_FILER_PORT=${HANZO_INFRA_WEED_FILER_PORT:-8888}       # gRPC = +10000 (18888)

POSTGRES_PORT=${HANZO_INFRA_POSTGRES_PORT:-5433}            # FerretDB's PostgreSQL backend (5432 left to a system cluster)

# FerretDB's backend: sqlite (FerretDB's own files) or postgresql (Debian's PostgreSQL, started beside it).
FERRETDB_BACKEND=${HANZO_FERRETDB_BACKEND:-postgresql}  # the faster of the two here: deploy/local/README.md
PG_BIN=${HANZO_INFRA_PG_BIN:-/usr/lib/postgresql/15/bin}   # Debian's postgresql (tools.sh apt)
PG_USER="ferretdb"                                         # role and database FerretDB uses (trust on loopback)
# PostgreSQL refuses to run as root: as root it runs as the `postgres` system user, whose data directory
# must be reachable by that user (not under /root, mode 700), so it lives under /var/tmp, one per $STATE.
if ((EUID == 0)); then
  PG_DIR=${HANZO_INFRA_PG_DIR:-/var/tmp/hanzo-registry-postgres/$(printf '%s' "$STATE" | cksum | cut -d' ' -f1)}
else
  PG_DIR=${HANZO_INFRA_PG_DIR:-$STATE/postgres}
fi

S3_ACCESS_KEY="hanzo"
S3_SECRET_KEY="hanzo-secret-key"
S3_BUCKETS=(hanzo-registry hanzo-registry-test)

export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

pid_of() { # name -> pid if pid file exists and process is alive
  local f="$STATE/$1.pid" pid
  [[ -f $f ]] || return 1
  pid="$(cat "$f" 2>/dev/null)" || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

# daemonize NAME CMD... : run CMD detached (new session, stdin from /dev/null,
# stdout+stderr appended to $LOGS/NAME.log, every other inherited fd closed so no
# caller pipe is held open); pid written to $STATE/NAME.pid.
daemonize() {
  local name=$1; shift
  mkdir -p "$LOGS"
  # One log per start, the previous one kept as .1: appended forever, Kafka's grew past 500 MiB.
  [[ -f $LOGS/$name.log ]] && mv -f "$LOGS/$name.log" "$LOGS/$name.log.1"
  (
    for fdp in "/proc/$BASHPID/fd/"*; do
      fd=${fdp##*/}
      [[ $fd =~ ^[0-9]+$ ]] && ((fd > 2)) && eval "exec $fd>&-"
    done 2>/dev/null
    cd "$STATE" || exit 1
    exec setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null
  ) &
  echo $! >"$STATE/$name.pid"
}

log_tail() { # name
  local f="$LOGS/$1.log"
  echo "----- last 40 lines of $f -----" >&2
  tail -n 40 "$f" >&2 2>/dev/null || true
  if grep -qE 'ERROR|FATAL|Exception|^E[0-9]{4} |panic:' "$f" 2>/dev/null; then
    echo "----- first error lines in $f -----" >&2
    grep -m 10 -E 'ERROR|FATAL|Exception|^E[0-9]{4} |panic:' "$f" >&2 || true
  fi
  echo "-----" >&2
}

# wait_healthy NAME TIMEOUT_S CHECK-CMD... : poll until CHECK succeeds; fail with
# the log tail on timeout or if the daemon died.
wait_healthy() {
  local name=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout)) out
  while :; do
    if out="$("$@" 2>&1)"; then
      log "$name healthy: $out"
      return 0
    fi
    if ! pid_of "$name" >/dev/null; then
      log_tail "$name"
      die "$name exited during startup (last probe: $out)"
    fi
    if ((SECONDS >= deadline)); then
      log_tail "$name"
      die "$name not healthy after ${timeout}s (last probe: $out)"
    fi
    sleep 1
  done
}
