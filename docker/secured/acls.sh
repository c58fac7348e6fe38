# The secured stack's ACLs, sourced by grant-access.sh. Written by tools/acls.py:
#   python -m tools.acls --principal User:worker --group phoenix-ranker --exactly-once \
#       --no-create-topics --producer User:producer --reader User:viewer \
#       --bootstrap-server kafka:9094 --command-config /etc/kafka/secrets/admin.properties
# (tests/test_compose.py fails when this file and the tool's output differ). The topics step
# creates the topics, so the worker gets Create on its changelog only; the transactional-id rule
# lets RANKER_PROCESSING_GUARANTEE=exactly_once run without another grant.
kafka-acls.sh --bootstrap-server kafka:9094 --command-config /etc/kafka/secrets/admin.properties --add --allow-principal User:worker --allow-host '*' --operation Read --topic ranking-requests
kafka-acls.sh --bootstrap-server kafka:9094 --command-config /etc/kafka/secrets/admin.properties --add --allow-principal User:worker --allow-host '*' --operation Read --topic user-engagements
kafka-acls.sh --bootstrap-server kafka:9094 --command-config /etc/kafka/secrets/admin.properties --add --allow-principal User:worker --allow-host '*' --operation Read --topic phoenix-ranker-user-history-changelog
kafka-acls.sh --bootstrap-server kafka:9094 --command-config /etc/kafka/secrets/admin.properties --add --allow-principal User:worker --allow-host '*' --operation Write --topic ranking-results
kafka-acls.sh --bootstrap-server kafka:9094 --command-config /etc/kafka/secrets/admin.properties --add --allow-principal User:worker --allow-host '*' --operation Write --topic ranking-dead-letter
kafka-acls.sh --bootstrap-server kafka:9094 --command-config /etc/kafka/secrets/admin.properties --add --allow-principal User:worker --allow-host '*' --operation Write --topic phoenix-ranker-user-history-changelog
kafka-acls.sh --bootstrap-server kafka:9094 --command-config /etc/kafka/secrets/admin.properties --add --allow-principal User:worker --allow-host '*' --operation Read --group phoenix-ranker
kafka-acls.sh --bootstrap-server kafka:9094 --command-config /etc/kafka/secrets/admin.properties --add --allow-principal User:worker --allow-host '*' --operation Create --topic phoenix-ranker-user-history-changelog
kafka-acls.sh --bootstrap-server kafka:9094 --command-config /etc/kafka/secrets/admin.properties --add --allow-principal User:worker --allow-host '*' --operation Write --transactional-id phoenix-ranker- --resource-pattern-type prefixed
kafka-acls.sh --bootstrap-server kafka:9094 --command-config /etc/kafka/secrets/admin.properties --add --allow-principal User:producer --allow-host '*' --operation Write --topic ranking-requests
kafka-acls.sh --bootstrap-server kafka:9094 --command-config /etc/kafka/secrets/admin.properties --add --allow-principal User:viewer --allow-host '*' --operation Read --topic ranking-results
kafka-acls.sh --bootstrap-server kafka:9094 --command-config /etc/kafka/secrets/admin.properties --add --allow-principal User:viewer --allow-host '*' --operation Read --topic ranking-dead-letter
