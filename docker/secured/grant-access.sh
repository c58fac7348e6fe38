#!/bin/sh
# The secured stack's SCRAM users and their ACLs (docker-compose.secured.yml's one-shot
# `access` step), made as the super user CN=admin through Kafka's own scripts:
#
#   grant-access.sh BROKER_DIR CLIENT_DIR BOOTSTRAP
#
# BROKER_DIR and CLIENT_DIR are make-secrets.sh's; BOOTSTRAP is the listener that takes the
# admin's certificate. Each user's password is read from CLIENT_DIR/<user>.password and handed
# to kafka-configs.sh (SCRAM-SHA-512); then acls.sh, beside this script, grants each user what
# it needs. Running it again changes nothing: the same passwords, the same ACLs.
set -eu

broker_dir="${1:?usage: grant-access.sh BROKER_DIR CLIENT_DIR BOOTSTRAP}"
client_dir="${2:?usage: grant-access.sh BROKER_DIR CLIENT_DIR BOOTSTRAP}"
bootstrap="${3:?usage: grant-access.sh BROKER_DIR CLIENT_DIR BOOTSTRAP}"
users="worker producer viewer"  # make-secrets.sh made a password for each
iterations=8192  # SCRAM-SHA-512 takes 4096 or more
PATH="${KAFKA_HOME:-/opt/kafka}/bin:$PATH"
here="$(cd "$(dirname "$0")" && pwd)"

for user in $users; do
    password="$(cat "$client_dir/$user.password")"
    kafka-configs.sh --bootstrap-server "$bootstrap" \
        --command-config "$broker_dir/admin.properties" --alter --entity-type users \
        --entity-name "$user" \
        --add-config "SCRAM-SHA-512=[iterations=$iterations,password=$password]" > /dev/null
    echo "grant-access: SCRAM user $user" >&2
done
. "$here/acls.sh" > /dev/null  # kafka-acls.sh lists every ACL after each change
echo "grant-access: ACLs granted" >&2
