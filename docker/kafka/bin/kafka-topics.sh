#!/bin/sh
# kafka-topics.sh: create, list and describe topics (Kafka's TopicCommand, same flags).
exec "$(dirname "$0")/kafka-run-class.sh" org.apache.kafka.tools.TopicCommand "$@"
