# Apache Kafka as the compose stack runs it, built where the official apache/kafka image cannot be
# pulled: Debian's Java 17 and the jars of the version pinned in tools/kafka/pom.xml (the ones
# tools/apache_kafka.py runs on the host), laid out as the official image is as far as
# docker-compose.yml uses it: /opt/kafka/bin/kafka-topics.sh, kafka-broker-api-versions.sh, and
# the broker configured from KAFKA_* variables with CLUSTER_ID (docker/kafka/entrypoint.sh).
#
# `make compose-smoke` stages the build context and tags the image apache/kafka:<version>:
#   CONTEXT/Dockerfile          this file
#   CONTEXT/bin/, config/, entrypoint.sh    from docker/kafka/
#   CONTEXT/config/log4j2.properties        tools/kafka/log4j2.properties (the broker's log)
#   CONTEXT/libs/*.jar          the jars Maven fetched for tools/kafka/pom.xml (apache_kafka.classpath)
#   docker build -f CONTEXT/Dockerfile --build-arg BASE_IMAGE=phoenix-local/debian:bookworm \
#       -t apache/kafka:4.1.1 CONTEXT
#
# Any Debian bookworm image with apt and useradd does as the base; only Debian's mirror is used.
# No BuildKit-only syntax, as in the worker's Dockerfile.
ARG BASE_IMAGE=phoenix-local/debian:bookworm
FROM ${BASE_IMAGE}

ENV LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive

# The man-page folder: slim images leave it out, and the JRE's postinst links a page into it.
RUN mkdir -p /usr/share/man/man1 \
 && apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && java -version

# The official image's user (uid 1000, not root); the entrypoint writes the configuration as it.
RUN groupadd --system --gid 1000 appuser \
 && useradd --system --uid 1000 --gid appuser --home-dir /home/appuser --create-home \
        --shell /usr/sbin/nologin appuser \
 && install -d -o appuser -g appuser -m 0755 /opt/kafka/config

# Jars first: they change least (a new Kafka version), the scripts more often.
COPY libs/ /opt/kafka/libs/
COPY config/ /opt/kafka/config/
COPY bin/ /opt/kafka/bin/
COPY entrypoint.sh /etc/kafka/docker/run
# Executable whatever the checkout or the copy did to the mode bits.
RUN chmod 0755 /opt/kafka/bin/*.sh /etc/kafka/docker/run \
 && chown -R appuser:appuser /opt/kafka/config

ENV KAFKA_HOME=/opt/kafka \
    PATH=/opt/kafka/bin:$PATH

USER appuser
WORKDIR /home/appuser
EXPOSE 9092
CMD ["/etc/kafka/docker/run"]
