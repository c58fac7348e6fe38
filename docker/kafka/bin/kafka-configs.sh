#!/bin/sh
# kafka-configs.sh: describe and alter configs, SCRAM users included (Kafka's ConfigCommand, same
# flags).
exec "$(dirname "$0")/kafka-run-class.sh" kafka.admin.ConfigCommand "$@"
