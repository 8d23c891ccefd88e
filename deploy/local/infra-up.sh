#!/usr/bin/env bash
# Install (if not cached) and start (if not already running and healthy) the local
# test infrastructure on loopback:
#   kafka  Apache Kafka (KRaft, single node)   127.0.0.1:9092 (controller 9093)
#   mongo  FerretDB v1                         127.0.0.1:27017
#          HANZO_FERRETDB_BACKEND=postgresql (default) or sqlite: the former also starts Debian's
#          PostgreSQL 15 on 127.0.0.1:5433 (as the `postgres` user when run as root)
#   s3     SeaweedFS S3 gateway                127.0.0.1:8333
# Usage: deploy/local/infra-up.sh [kafka] [mongo] [s3]      (default: all)
# Writes $STATE/infra.env with the HANZO_TEST_* connection settings.
set -euo pipefail
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CHECK=(python3 "$HANZO_LOCAL_DIR/infra_check.py")

want_kafka=0 want_mongo=0 want_s3=0
if (($# == 0)); then set -- kafka mongo s3; fi
for arg in "$@"; do
  case "$arg" in
    kafka) want_kafka=1 ;;
    mongo | ferretdb) want_mongo=1 ;;
    s3 | seaweedfs | seaweed) want_s3=1 ;;
    -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
    *) die "unknown component '$arg' (expected: kafka mongo s3)" ;;
  esac
done

mkdir -p "$CACHE" "$BIN" "$STATE" "$LOGS" "$CACHE/logs" "$CACHE/src" "$CACHE/build"
# Serialise concurrent runs. fd 9 is closed in daemons (see daemonize).
exec 9>"$CACHE/infra-up.lock"
flock -w 1800 9 || die "timed out waiting for $CACHE/infra-up.lock"

# run_build NAME CMD... : run a (possibly long) build step, output to a build log.
run_build() {
  local name=$1; shift
  local blog="$CACHE/logs/build-$name.log" t0=$SECONDS
  log "building $name (log: $blog) ..."
  # Run in a background subshell and wait: the step keeps `set -e` semantics
  # (which an `if ! cmd` context would silently switch off inside functions).
  local rc=0
  ("$@") >"$blog" 2>&1 </dev/null &
  wait $! || rc=$?
  if ((rc)); then
    tail -n 40 "$blog" >&2
    die "build of $name failed (full log: $blog)"
  fi
  log "built $name in $((SECONDS - t0))s"
}

need_go() { command -v go >/dev/null || die "go is required to build $1 (not on PATH)"; }

# go_build_module NAME MODULE VERSION PKG OUT [PREP-FN] : build PKG of MODULE@VERSION
# from a writable copy of the module-proxy download (works for modules whose go.mod
# has replace directives, which `go install pkg@version` refuses, and lets PREP-FN
# add generated files inside the source dir before the build).
go_build_module() {
  local name=$1 mod=$2 ver=$3 pkg=$4 out=$5 prep=${6:-}
  need_go "$name"
  local src="$CACHE/src/$name-$ver"
  _gbm() {
    local dir
    dir="$(go mod download -json "$mod@$ver" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["Dir"]) if "Dir" in d else sys.exit("go mod download: " + d.get("Error", "no Dir"))')"
    rm -rf "$src.tmp" && cp -r "$dir" "$src.tmp" && chmod -R u+w "$src.tmp"
    rm -rf "$src" && mv "$src.tmp" "$src"
    if [[ -n $prep ]]; then (cd "$src" && "$prep"); fi
    (cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$out.tmp" "$pkg")
    mv "$out.tmp" "$out"
  }
  run_build "$name" _gbm
}

# ============================================================== Kafka
KAFKA_HOME="$CACHE/kafka-$KAFKA_VERSION"
KAFKA_STATE="$STATE/kafka"

install_kafka() {
  [[ -f $KAFKA_HOME/.complete ]] && return 0
  command -v mvn >/dev/null || die "mvn is required to assemble Kafka from Maven Central"
  mkdir -p "$KAFKA_HOME"
  cat >"$KAFKA_HOME/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.hanzo</groupId><artifactId>kafka-runtime</artifactId>
  <version>$KAFKA_VERSION</version><packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_$KAFKA_SCALA</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-server</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>$SLF4J_VERSION</version></dependency>
  </dependencies>
</project>
EOF
  _kafka_deps() {
    rm -rf "$KAFKA_HOME/libs.tmp"
    mvn -B -q -f "$KAFKA_HOME/pom.xml" -Dmaven.repo.local="$CACHE/m2" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$KAFKA_HOME/libs.tmp"
    rm -rf "$KAFKA_HOME/libs" && mv "$KAFKA_HOME/libs.tmp" "$KAFKA_HOME/libs"
  }
  run_build kafka _kafka_deps
  [[ -f $KAFKA_HOME/libs/kafka_$KAFKA_SCALA-$KAFKA_VERSION.jar ]] || die "kafka jar missing after mvn"
  touch "$KAFKA_HOME/.complete"
}

write_kafka_config() {
  mkdir -p "$KAFKA_STATE/data"
  cat >"$KAFKA_STATE/server.properties" <<EOF
# generated by deploy/local/infra-up.sh (Kafka $KAFKA_VERSION, KRaft combined mode)
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_STATE/data
auto.create.topics.enable=true
num.partitions=3
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
EOF
  cat >"$KAFKA_STATE/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.kafka.name = kafka
logger.kafka.level = INFO
EOF
}

KAFKA_JAVA=(java -Xms512m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
  -Dlog4j2.configurationFile="$KAFKA_STATE/log4j2.properties" -cp "$KAFKA_HOME/libs/*")

start_kafka() {
  local probe=("${CHECK[@]}" kafka "127.0.0.1:$KAFKA_PORT")
  if pid_of kafka >/dev/null; then
    wait_healthy kafka 120 "${probe[@]}"
    return 0
  fi
  if "${probe[@]}" >/dev/null 2>&1; then
    log "kafka: something not started by infra-up already answers on :$KAFKA_PORT; leaving it"
    return 0
  fi
  install_kafka
  command -v java >/dev/null || die "java (17+) is required for Kafka"
  # A cold start begins with an empty broker: the stand-in keeps no events between runs, and tests create a
  # topic set per test (they delete them at the end of a session; a session that was killed leaves them). Kept,
  # 11,000 leftover partitions once took the broker out of heap in the middle of `make test`.
  # HANZO_KAFKA_KEEP_DATA=1 restarts on the data there is (a broker restart, as a test of outages does).
  if [[ ${HANZO_KAFKA_KEEP_DATA:-0} != 1 ]]; then rm -rf "$KAFKA_STATE/data"; fi
  write_kafka_config
  if [[ ! -f $KAFKA_STATE/data/meta.properties ]]; then
    local cid
    cid="$(python3 -c 'import base64,uuid; print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')"
    log "kafka: formatting storage (cluster id $cid)"
    "${KAFKA_JAVA[@]}" kafka.tools.StorageTool format -t "$cid" -c "$KAFKA_STATE/server.properties" \
      --ignore-formatted >>"$LOGS/kafka.log" 2>&1 </dev/null ||
      { log_tail kafka; die "kafka storage format failed"; }
  fi
  log "kafka: starting $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT"
  daemonize kafka "${KAFKA_JAVA[@]}" kafka.Kafka "$KAFKA_STATE/server.properties"
  wait_healthy kafka 120 "${probe[@]}"
}

# ============================================================== FerretDB
FERRETDB_BIN="$BIN/ferretdb-$FERRETDB_VERSION"
# FerretDB 1.x decodes every document a query reads into fresh Go objects (a listing of 1,000 tags: 1,000
# JSON documents from PostgreSQL), which keeps Go's garbage collector busy: GOGC=400 (collect a quarter as
# often) cut its CPU per such listing by about a third, for ~55 MiB resident instead of ~40
# (deploy/local/README.md). The stand-in's setting only: MongoDB answers listings from its indexes.
FERRETDB_GOGC=${HANZO_FERRETDB_GOGC:-400}

# FerretDB embeds build/version/version.txt (generated by its release tooling, absent
# from the module zip) and panics at start-up without it, so a plain
# `go install ...@version` binary is unusable: build from a copy with the file written.
_ferretdb_prep() {
  echo "$FERRETDB_VERSION" >build/version/version.txt
  echo "hanzo-local" >build/version/package.txt
}

install_ferretdb() {
  [[ -x $FERRETDB_BIN ]] && return 0
  go_build_module ferretdb github.com/FerretDB/FerretDB "$FERRETDB_VERSION" ./cmd/ferretdb \
    "$FERRETDB_BIN" _ferretdb_prep
}

# ============================================================== PostgreSQL (FerretDB's postgresql backend)
# As root, PostgreSQL runs as the `postgres` system user (it refuses root); setpriv execs, so the pid
# file holds the postmaster itself. Its data directory is $PG_DIR/data (see common.sh), its unix socket
# $PG_DIR, TCP on 127.0.0.1:$POSTGRES_PORT only; trust authentication (initdb -A trust: local socket and
# loopback only). synchronous_commit=off: a crash of the machine may lose the last commits (never
# corrupts), which is fine for test data and spares an fsync per FerretDB command.
PG_AS=()
((EUID == 0)) && PG_AS=(setpriv --reuid=postgres --regid=postgres --init-groups --)

install_postgres() {
  [[ -x $PG_BIN/postgres && -x $PG_BIN/initdb ]] && return 0
  # Debian's postgresql is in tools.sh's apt list (pinned); `make servers` runs tools beside infra-up,
  # so install it here too when it is missing (tools.sh takes its own lock; apt runs once).
  log "postgres: $PG_BIN/postgres missing; installing Debian's postgresql with tools.sh apt"
  bash "$HANZO_LOCAL_DIR/tools.sh" apt
  [[ -x $PG_BIN/postgres ]] || die "postgres not found in $PG_BIN after tools.sh apt (set HANZO_INFRA_PG_BIN)"
}

init_postgres() {
  [[ -f $PG_DIR/data/PG_VERSION ]] && return 0
  log "postgres: initdb in $PG_DIR/data"
  mkdir -p "$PG_DIR"
  rm -rf "$PG_DIR/data"
  ((EUID == 0)) && chown postgres:postgres "$PG_DIR" && chmod 700 "$PG_DIR"
  (cd / && "${PG_AS[@]}" "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 \
    --no-instructions) >>"$LOGS/postgres.log" 2>&1 </dev/null || { log_tail postgres; die "initdb failed"; }
}

start_postgres() {
  local probe=("${CHECK[@]}" postgres "127.0.0.1:$POSTGRES_PORT" postgres postgres)
  if pid_of postgres >/dev/null; then
    wait_healthy postgres 60 "${probe[@]}"
  elif "${probe[@]}" >/dev/null 2>&1; then
    log "postgres: something not started by infra-up already answers on :$POSTGRES_PORT; using it"
  else
    install_postgres
    init_postgres
    log "postgres: starting $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$POSTGRES_PORT ($PG_DIR)"
    daemonize postgres "${PG_AS[@]}" "$PG_BIN/postgres" -D "$PG_DIR/data" \
      -c listen_addresses=127.0.0.1 -c port="$POSTGRES_PORT" -c unix_socket_directories="$PG_DIR" \
      -c max_connections=200 -c shared_buffers=256MB -c synchronous_commit=off -c logging_collector=off
    wait_healthy postgres 60 "${probe[@]}"
  fi
  # FerretDB's role and database (idempotent).
  local psql=("$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres -d postgres -tA)
  if [[ -z "$("${psql[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = '$PG_USER'")" ]]; then
    "${psql[@]}" -c "CREATE ROLE $PG_USER LOGIN"
  fi
  if [[ -z "$("${psql[@]}" -c "SELECT 1 FROM pg_database WHERE datname = '$PG_USER'")" ]]; then
    "${psql[@]}" -c "CREATE DATABASE $PG_USER OWNER $PG_USER"
  fi
  "${CHECK[@]}" postgres "127.0.0.1:$POSTGRES_PORT" "$PG_USER" "$PG_USER" >/dev/null
}

start_mongo() {
  local probe=("${CHECK[@]}" mongo "127.0.0.1:$MONGO_PORT")
  case "$FERRETDB_BACKEND" in
    sqlite | postgresql) ;;
    *) die "HANZO_FERRETDB_BACKEND=$FERRETDB_BACKEND (expected sqlite or postgresql)" ;;
  esac
  if pid_of ferretdb >/dev/null; then
    local running
    running="$(cat "$STATE/ferretdb.backend" 2>/dev/null || echo sqlite)"
    if [[ $running != "$FERRETDB_BACKEND" ]]; then
      # Never restart a running FerretDB behind the back of whoever uses it.
      log "ferretdb: WARNING: running on $running, not $FERRETDB_BACKEND; left as it is" \
        "(run 'infra-down.sh mongo' first to switch)"
    fi
    local pid gogc
    pid="$(pid_of ferretdb)"
    gogc="$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | sed -n 's/^GOGC=//p')"
    if [[ ${gogc:-100} != "$FERRETDB_GOGC" ]]; then
      log "ferretdb: note: running with GOGC=${gogc:-100}, not $FERRETDB_GOGC; left as it is" \
        "(kill \$(cat $STATE/ferretdb.pid) and re-run 'infra-up.sh mongo' to apply)"
    fi
    [[ $running == postgresql ]] && start_postgres
    wait_healthy ferretdb 60 "${probe[@]}"
    return 0
  fi
  if "${probe[@]}" >/dev/null 2>&1; then
    log "mongo: something not started by infra-up already answers on :$MONGO_PORT; leaving it"
    return 0
  fi
  install_ferretdb
  local backend=(--handler=sqlite --sqlite-url="file:$STATE/ferretdb/data/")
  if [[ $FERRETDB_BACKEND == postgresql ]]; then
    start_postgres
    backend=(--handler=postgresql --postgresql-url="postgres://$PG_USER@127.0.0.1:$POSTGRES_PORT/$PG_USER")
  fi
  mkdir -p "$STATE/ferretdb/data" "$STATE/ferretdb/state"
  log "ferretdb: starting $FERRETDB_VERSION ($FERRETDB_BACKEND backend, GOGC=$FERRETDB_GOGC) on 127.0.0.1:$MONGO_PORT"
  echo "$FERRETDB_BACKEND" >"$STATE/ferretdb.backend"
  daemonize ferretdb env GOGC="$FERRETDB_GOGC" "$FERRETDB_BIN" \
    --listen-addr="127.0.0.1:$MONGO_PORT" \
    "${backend[@]}" \
    --state-dir="$STATE/ferretdb/state" \
    --debug-addr="127.0.0.1:$FERRETDB_DEBUG_PORT" \
    --telemetry=disable --log-level=info
  wait_healthy ferretdb 60 "${probe[@]}"
}

# ============================================================== SeaweedFS
WEED_BIN="$BIN/weed-$SEAWEEDFS_VERSION"

install_seaweedfs() {
  [[ -x $WEED_BIN ]] && return 0
  go_build_module seaweedfs github.com/seaweedfs/seaweedfs "$SEAWEEDFS_VERSION" ./weed "$WEED_BIN"
}

start_s3() {
  local probe=("${CHECK[@]}" s3 "127.0.0.1:$S3_PORT" "$S3_ACCESS_KEY" "$S3_SECRET_KEY")
  local b
  for b in "${S3_BUCKETS[@]}"; do probe+=(--create "$b"); done
  if pid_of seaweedfs >/dev/null; then
    wait_healthy seaweedfs 120 "${probe[@]}"
    return 0
  fi
  if "${probe[@]}" >/dev/null 2>&1; then
    log "s3: something not started by infra-up already answers on :$S3_PORT; leaving it"
    return 0
  fi
  install_seaweedfs
  local sd="$STATE/seaweed"
  mkdir -p "$sd/data"
  cat >"$sd/s3.json" <<EOF
{
  "identities": [
    {
      "name": "hanzo",
      "credentials": [{"accessKey": "$S3_ACCESS_KEY", "secretKey": "$S3_SECRET_KEY"}],
      "actions": ["Admin", "Read", "Write", "List", "Tagging"]
    }
  ]
}
EOF
  log "seaweedfs: starting (master :$WEED_MASTER_PORT, volume :$WEED_VOLUME_PORT, filer :$WEED_FILER_PORT, s3 :$S3_PORT)"
  # Every bucket is a collection; grow 2 volumes at a time instead of 7 so that tests
  # creating many buckets do not exhaust the volume slots (-volume.max=0: sized from
  # free disk / 256MB). Iceberg/Lance side listeners and telemetry are disabled. A 1 s election
  # timeout: a restarted server takes writes again in seconds, not the ~30 s of the default 10 s.
  daemonize seaweedfs env WEED_MASTER_VOLUME_GROWTH_COPY_1=2 "$WEED_BIN" server \
    -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$sd/data" \
    -master.port="$WEED_MASTER_PORT" -master.volumeSizeLimitMB=256 -master.telemetry=false \
    -master.electionTimeout=1s \
    -volume.port="$WEED_VOLUME_PORT" -volume.max=0 -volume.preStopSeconds=0 \
    -filer -filer.port="$WEED_FILER_PORT" \
    -s3 -s3.port="$S3_PORT" -s3.config="$sd/s3.json" -s3.port.iceberg=0 -s3.port.lance=0
  wait_healthy seaweedfs 120 "${probe[@]}"
}

# ============================================================== main
t0=$SECONDS
((want_kafka)) && start_kafka
((want_mongo)) && start_mongo
((want_s3)) && start_s3

cat >"$STATE/infra.env.tmp" <<EOF
HANZO_TEST_KAFKA=127.0.0.1:$KAFKA_PORT
HANZO_TEST_MONGO_URI=mongodb://127.0.0.1:$MONGO_PORT
HANZO_TEST_FERRETDB_BACKEND=$(cat "$STATE/ferretdb.backend" 2>/dev/null || echo "$FERRETDB_BACKEND")
HANZO_TEST_S3_ENDPOINT=127.0.0.1:$S3_PORT
HANZO_TEST_S3_ACCESS_KEY=$S3_ACCESS_KEY
HANZO_TEST_S3_SECRET_KEY=$S3_SECRET_KEY
HANZO_TEST_S3_BUCKET=hanzo-registry-test
HANZO_TEST_S3_REGION=us-east-1
EOF
mv "$STATE/infra.env.tmp" "$STATE/infra.env"
log "infra up in $((SECONDS - t0))s; env file: $STATE/infra.env"
