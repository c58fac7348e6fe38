#!/bin/sh
# kafka-acls.sh: add, list and remove ACLs (Kafka's AclCommand, same flags).
exec "$(dirname "$0")/kafka-run-class.sh" org.apache.kafka.tools.AclCommand "$@"
