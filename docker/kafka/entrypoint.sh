#!/bin/sh
# Starts one Apache Kafka node configured from the environment, the way the official
# apache/kafka image does (the image runs this as /etc/kafka/docker/run; see
# docker/kafka.Dockerfile):
#
#   KAFKA_FOO_BAR=v   -> foo.bar=v      (`__` stands for `_`, `___` for `-`, as in the official
#   KAFKA_FOO__BAR=v  -> foo_bar=v       image: KAFKA_LISTENER_SECURITY_PROTOCOL_MAP ->
#   KAFKA_FOO___BAR=v -> foo-bar=v       listener.security.protocol.map)
#   CLUSTER_ID        the KRaft cluster id the storage is formatted with (a new one if unset)
#
# TLS key and trust stores as the official image takes them: file names in /etc/kafka/secrets
# (KAFKA_SECRETS_DIR elsewhere, this image only) and their passwords in files beside them,
#   KAFKA_SSL_KEYSTORE_FILENAME, KAFKA_SSL_KEYSTORE_CREDENTIALS, KAFKA_SSL_KEY_CREDENTIALS
#       -> ssl.keystore.location, ssl.keystore.password, ssl.key.password
#   KAFKA_SSL_TRUSTSTORE_FILENAME, KAFKA_SSL_TRUSTSTORE_CREDENTIALS
#       -> ssl.truststore.location, ssl.truststore.password
# so that no password stands in the environment.
#
# Writes $KAFKA_HOME/config/server.properties (KAFKA_HOME: /opt/kafka unless set), formats the
# storage on the first start of a data directory (a restart keeps topics and records), then runs
# the broker in the foreground in place of this shell, so that `docker stop` reaches the JVM.
# The JVM and installation variables of bin/kafka-run-class.sh are not broker properties.
set -eu

KAFKA_HOME="${KAFKA_HOME:-/opt/kafka}"
export KAFKA_HOME
bin="$KAFKA_HOME/bin"
config="$KAFKA_HOME/config/server.properties"

# Variables with the KAFKA_ prefix that configure the scripts or the JVM, not the broker.
not_properties=" KAFKA_HOME KAFKA_HEAP_OPTS KAFKA_JVM_PERFORMANCE_OPTS KAFKA_LOG4J_OPTS \
KAFKA_OPTS KAFKA_GC_LOG_OPTS KAFKA_JMX_OPTS KAFKA_DEBUG KAFKA_VERSION KAFKA_SECRETS_DIR \
KAFKA_SSL_KEYSTORE_FILENAME KAFKA_SSL_KEYSTORE_CREDENTIALS KAFKA_SSL_KEY_CREDENTIALS \
KAFKA_SSL_TRUSTSTORE_FILENAME KAFKA_SSL_TRUSTSTORE_CREDENTIALS "
secrets_dir="${KAFKA_SECRETS_DIR:-/etc/kafka/secrets}"

say() {
    echo "kafka-entrypoint: $*" >&2
}

# KAFKA_LOG_DIRS -> log.dirs (`#` cannot occur in a variable name: a safe placeholder).
property_name() {
    printf '%s\n' "${1#KAFKA_}" | tr '[:upper:]' '[:lower:]' \
        | sed -e 's/___/-/g' -e 's/__/#/g' -e 's/_/./g' -e 's/#/_/g'
}

# Every KAFKA_* variable as a property line; a backslash is kept literally (the properties
# format would read it as an escape).
write_properties() {
    newline='
'
    : > "$config.partial"
    for name in $(env | sed -n 's/^\(KAFKA_[A-Z0-9_]*\)=.*/\1/p' | sort -u); do
        case "$not_properties" in *" $name "*) continue ;; esac
        # The name matched [A-Z0-9_]: safe to expand through eval. A line of a multi-line
        # value that only looks like NAME=... names no set variable: skipped.
        eval "is_set=\${$name+yes}"
        [ "$is_set" = yes ] || continue
        eval "value=\${$name}"
        case "$value" in
            *"$newline"*) say "$name holds a line break: no property can"; exit 1 ;;
        esac
        printf '%s=%s\n' "$(property_name "$name")" \
            "$(printf '%s\n' "$value" | sed 's/\\/\\\\/g')" >> "$config.partial"
    done
    if [ ! -s "$config.partial" ]; then
        say "no KAFKA_* variables: nothing to configure the broker with"
        exit 1
    fi
    mv "$config.partial" "$config"
}

# A property's value as written ($1 is a regular expression: dots escaped).
property() {
    sed -n "s/^$1=//p" "$config" | tail -n 1
}

# Where KRaft keeps meta.properties: metadata.log.dir, else the first of log.dirs (log.dir),
# else Kafka's default.
metadata_dir() {
    dir="$(property 'metadata\.log\.dir')"
    [ -n "$dir" ] || dir="$(property 'log\.dirs' | cut -d, -f1)"
    [ -n "$dir" ] || dir="$(property 'log\.dir')"
    printf '%s\n' "${dir:-/tmp/kafka-logs}"
}

format_storage() {
    cluster_id="${CLUSTER_ID:-}"
    if [ -z "$cluster_id" ]; then
        cluster_id="$("$bin/kafka-storage.sh" random-uuid)"
        say "CLUSTER_ID is not set: formatting with a new cluster id $cluster_id"
    fi
    "$bin/kafka-storage.sh" format --cluster-id "$cluster_id" --config "$config" \
        --ignore-formatted
}

# A file in the secrets folder, named by variable $1 (unset: nothing), that must exist.
secret_file() {
    eval "name=\${$1:-}"
    [ -n "$name" ] || return 0
    if [ ! -r "$secrets_dir/$name" ]; then
        say "$1 names $secrets_dir/$name, which is missing or unreadable"
        exit 1
    fi
    printf '%s\n' "$secrets_dir/$name"
}

# KAFKA_SSL_*_FILENAME and *_CREDENTIALS -> the location and password properties.
stores_from_secrets() {
    keystore="$(secret_file KAFKA_SSL_KEYSTORE_FILENAME)"
    truststore="$(secret_file KAFKA_SSL_TRUSTSTORE_FILENAME)"
    keystore_creds="$(secret_file KAFKA_SSL_KEYSTORE_CREDENTIALS)"
    key_creds="$(secret_file KAFKA_SSL_KEY_CREDENTIALS)"
    truststore_creds="$(secret_file KAFKA_SSL_TRUSTSTORE_CREDENTIALS)"
    [ -z "$keystore" ] || export KAFKA_SSL_KEYSTORE_LOCATION="$keystore"
    [ -z "$truststore" ] || export KAFKA_SSL_TRUSTSTORE_LOCATION="$truststore"
    [ -z "$keystore_creds" ] || export KAFKA_SSL_KEYSTORE_PASSWORD="$(cat "$keystore_creds")"
    [ -z "$key_creds" ] || export KAFKA_SSL_KEY_PASSWORD="$(cat "$key_creds")"
    [ -z "$truststore_creds" ] \
        || export KAFKA_SSL_TRUSTSTORE_PASSWORD="$(cat "$truststore_creds")"
}

mkdir -p "$KAFKA_HOME/config"
stores_from_secrets
(umask 077 && write_properties)
if [ -f "$(metadata_dir)/meta.properties" ]; then
    say "storage in $(metadata_dir) already formatted"
else
    format_storage
fi

# The broker's own JVM defaults (the tools above ran with the small ones of kafka-run-class.sh).
export KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"
if [ -z "${KAFKA_LOG4J_OPTS:-}" ] && [ -f "$KAFKA_HOME/config/log4j2.properties" ]; then
    export KAFKA_LOG4J_OPTS="-Dlog4j2.configurationFile=$KAFKA_HOME/config/log4j2.properties"
fi
exec "$bin/kafka-run-class.sh" kafka.Kafka "$config"
