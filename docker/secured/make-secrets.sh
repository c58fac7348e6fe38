#!/bin/sh
# The secured stack's secrets (docker-compose.secured.yml's one-shot `secrets` step), made with
# the JRE's keytool only, so it runs in the Kafka image (official or local) as it is:
#
#   make-secrets.sh BROKER_DIR CLIENT_DIR
#
# BROKER_DIR (the broker's /etc/kafka/secrets; files named as the official apache/kafka image
# expects them through KAFKA_SSL_*_FILENAME and KAFKA_SSL_*_CREDENTIALS):
#   broker.keystore.p12   the broker's key and certificate (CN=broker; kafka, localhost,
#                         127.0.0.1), signed by the stack's own CA
#   truststore.p12        that CA: the broker accepts client certificates it signed
#   *_creds               the two stores' passwords, one file each
#   admin.keystore.p12, admin.properties   the super user CN=admin (a client certificate) and
#                         its client configuration for Kafka's scripts (kafka-topics.sh ...)
#   kafka_server_jaas.conf   SCRAM on the SASL_SSL listeners (credentials live in the cluster)
#   ca/                   the CA's key: root only, read by nothing but this script
# CLIENT_DIR (the ranker containers' /run/ranker-secrets):
#   ca.pem                the CA certificate, for RANKER_SSL_CAFILE
#   <user>.password       a SCRAM password for each of worker, producer, viewer
#
# Passwords are random, made here, and never printed. A second run keeps what the first made.
# As root (the compose step) it hands BROKER_DIR to the Kafka image's user (uid 1000) and
# CLIENT_DIR to the ranker image's (uid 10001), readable by their owner only.
set -eu

broker_dir="${1:?usage: make-secrets.sh BROKER_DIR CLIENT_DIR}"
client_dir="${2:?usage: make-secrets.sh BROKER_DIR CLIENT_DIR}"
users="worker producer viewer"  # SCRAM users; docker-compose.secured.yml names the same
days=825
kafka_uid=1000
ranker_uid=10001

say() {
    echo "make-secrets: $*" >&2
}

if [ -s "$broker_dir/broker.keystore.p12" ] && [ -s "$client_dir/ca.pem" ]; then
    say "secrets already made in $broker_dir and $client_dir: kept"
    exit 0
fi

# 24 random letters and digits: safe in properties files, JAAS and SCRAM's [password=...].
new_password() {
    head -c 96 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24
}

umask 077
mkdir -p "$broker_dir/ca" "$client_dir"
ca_store="$broker_dir/ca/ca.p12"
ca_pass="$(new_password)"
store_pass="$(new_password)"
trust_pass="$(new_password)"
admin_pass="$(new_password)"

# keytool with the password from the environment, never on a command line.
export KT_CA KT_STORE KT_TRUST KT_ADMIN
KT_CA="$ca_pass" KT_STORE="$store_pass" KT_TRUST="$trust_pass" KT_ADMIN="$admin_pass"

keytool -genkeypair -keystore "$ca_store" -storetype PKCS12 -storepass:env KT_CA \
    -alias ca -dname "CN=phoenix-ranker stack CA" -keyalg RSA -keysize 2048 -validity "$days" \
    -ext bc:c -ext KeyUsage:c=keyCertSign,cRLSign
keytool -exportcert -rfc -keystore "$ca_store" -storepass:env KT_CA -alias ca \
    -file "$client_dir/ca.pem"

# A key pair in STORE (password env PASS) for common name CN, signed by the CA, with the CA
# before it in the chain. Further arguments: the certificate's extensions.
signed_key() {
    store="$1" pass="$2" cn="$3"
    shift 3
    keytool -genkeypair -keystore "$store" -storetype PKCS12 -storepass:env "$pass" \
        -alias "$cn" -dname "CN=$cn" -keyalg RSA -keysize 2048 -validity "$days"
    keytool -certreq -keystore "$store" -storepass:env "$pass" -alias "$cn" \
        -file "$store.csr"
    keytool -gencert -keystore "$ca_store" -storepass:env KT_CA -alias ca -rfc \
        -validity "$days" -infile "$store.csr" -outfile "$store.crt" "$@"
    keytool -importcert -keystore "$store" -storepass:env "$pass" -alias ca -noprompt \
        -file "$client_dir/ca.pem"
    keytool -importcert -keystore "$store" -storepass:env "$pass" -alias "$cn" \
        -file "$store.crt"
    rm -f "$store.csr" "$store.crt"
}

signed_key "$broker_dir/broker.keystore.p12" KT_STORE broker \
    -ext SAN=dns:kafka,dns:localhost,ip:127.0.0.1 \
    -ext KeyUsage:c=digitalSignature,keyEncipherment -ext ExtendedKeyUsage=serverAuth,clientAuth
signed_key "$broker_dir/admin.keystore.p12" KT_ADMIN admin \
    -ext KeyUsage:c=digitalSignature -ext ExtendedKeyUsage=clientAuth
keytool -importcert -keystore "$broker_dir/truststore.p12" -storetype PKCS12 \
    -storepass:env KT_TRUST -alias ca -noprompt -file "$client_dir/ca.pem"

# PKCS12 keeps the key under the store's password.
printf '%s' "$store_pass" > "$broker_dir/broker_keystore_creds"
printf '%s' "$store_pass" > "$broker_dir/broker_key_creds"
printf '%s' "$trust_pass" > "$broker_dir/truststore_creds"

cat > "$broker_dir/admin.properties" <<EOF
security.protocol=SSL
ssl.keystore.type=PKCS12
ssl.keystore.location=$broker_dir/admin.keystore.p12
ssl.keystore.password=$admin_pass
ssl.key.password=$admin_pass
ssl.truststore.type=PKCS12
ssl.truststore.location=$broker_dir/truststore.p12
ssl.truststore.password=$trust_pass
EOF

cat > "$broker_dir/kafka_server_jaas.conf" <<EOF
KafkaServer {
    org.apache.kafka.common.security.scram.ScramLoginModule required;
};
EOF

for user in $users; do
    new_password > "$client_dir/$user.password"
done

chmod 0644 "$client_dir/ca.pem"
if [ "$(id -u)" = 0 ]; then
    chown -R "$kafka_uid:$kafka_uid" "$broker_dir"
    chown -R 0:0 "$broker_dir/ca"
    chown -R "$ranker_uid:$ranker_uid" "$client_dir"
fi
say "made a CA, the broker's and the admin's certificates, and passwords for: $users"
