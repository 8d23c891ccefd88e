#!/usr/bin/env bash
# Run a Kafka CLI class on the classpath assembled by infra-up.sh, e.g.
#   deploy/local/kafka-run-class.sh org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 --list
#   deploy/local/kafka-run-class.sh org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server 127.0.0.1:9092 --topic t --from-beginning
set -euo pipefail
# shellcheck source=common.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
(($#)) || { sed -n '2,4p' "$0"; exit 2; }
libs="$CACHE/kafka-$KAFKA_VERSION/libs"
[[ -d $libs ]] || die "Kafka $KAFKA_VERSION not installed; run deploy/local/infra-up.sh kafka"
cfg="$(mktemp --suffix=.properties)"
trap 'rm -f "$cfg"' EXIT
printf 'appender.e.type=Console\nappender.e.name=E\nappender.e.target=SYSTEM_ERR\nappender.e.layout.type=PatternLayout\nappender.e.layout.pattern=%%p %%m%%n\nrootLogger.level=WARN\nrootLogger.appenderRef.e.ref=E\n' >"$cfg"
java -Xmx256m -Dlog4j2.configurationFile="$cfg" -cp "$libs/*" "$@"
