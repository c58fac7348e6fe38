#!/bin/sh
# kafka-run-class.sh CLASS [ARG...]: runs one of Apache Kafka's Java classes, as the script of
# that name in Kafka's distribution does (a smaller one: no JMX, no GC log, no class-path
# discovery beyond libs/). The other scripts here call it.
#
# Environment (the names Kafka's own scripts honour):
#   KAFKA_HOME   the installation, holding libs/ and config/ (default: the folder above bin/)
#   CLASSPATH    jars or folders put before $KAFKA_HOME/libs/*
#   JAVA_HOME    the Java to run (default: `java` on PATH)
#   KAFKA_HEAP_OPTS, KAFKA_JVM_PERFORMANCE_OPTS, KAFKA_LOG4J_OPTS, KAFKA_OPTS   JVM options
set -eu

if [ "$#" -lt 1 ]; then
    echo "usage: $0 CLASS [ARG...]" >&2
    exit 2
fi

KAFKA_HOME="${KAFKA_HOME:-$(cd "$(dirname "$0")/.." && pwd)}"
java="${JAVA_HOME:+$JAVA_HOME/bin/}java"

# Java expands the trailing `*` itself (every jar in libs/): no shell glob, no length limit.
classpath="$KAFKA_HOME/libs/*"
if [ -n "${CLASSPATH:-}" ]; then
    classpath="$CLASSPATH:$classpath"
fi

# Tools log warnings to stderr, so that their stdout stays what they print.
if [ -z "${KAFKA_LOG4J_OPTS:-}" ] && [ -f "$KAFKA_HOME/config/tools-log4j2.properties" ]; then
    KAFKA_LOG4J_OPTS="-Dlog4j2.configurationFile=$KAFKA_HOME/config/tools-log4j2.properties"
fi

# Kafka's own defaults: G1 with short pauses.
performance="-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35"
performance="$performance -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true"

# The *_OPTS are option lists: split on spaces on purpose (as Kafka's script does).
# shellcheck disable=SC2086
exec "$java" \
    ${KAFKA_HEAP_OPTS:--Xmx256m} \
    ${KAFKA_JVM_PERFORMANCE_OPTS:-$performance} \
    ${KAFKA_LOG4J_OPTS:-} \
    ${KAFKA_OPTS:-} \
    -cp "$classpath" "$@"
