#!/bin/sh
# kafka-broker-api-versions.sh: asks each broker which API versions it serves; exit 0 once one
# answers (the compose file's health check).
exec "$(dirname "$0")/kafka-run-class.sh" org.apache.kafka.tools.BrokerApiVersionsCommand "$@"
