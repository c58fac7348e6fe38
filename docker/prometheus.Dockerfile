# Prometheus as the compose stack runs it, built where the official prom/prometheus image cannot
# be pulled: Debian's prometheus package (the version tools/prometheus.py pins, the one the
# monitoring tests run on the host), laid out as the official image is as far as
# docker-compose.yml uses it: the binary as the entrypoint, data in /prometheus, user nobody.
#
#   docker build -f docker/prometheus.Dockerfile --build-arg BASE_IMAGE=phoenix-local/debian:bookworm \
#       --build-arg PROMETHEUS_VERSION=2.42.0+ds-5+deb12u1 -t prom/prometheus:v2.42.0 docker
#
# Any Debian bookworm image with apt does as the base; only Debian's mirror is used.
ARG BASE_IMAGE=phoenix-local/debian:bookworm
FROM ${BASE_IMAGE}

ARG PROMETHEUS_VERSION=2.42.0+ds-5+deb12u1
ENV DEBIAN_FRONTEND=noninteractive

# The package's service scripts are not used: the binary runs as the container's process.
RUN apt-get update \
 && apt-get install -y --no-install-recommends "prometheus=${PROMETHEUS_VERSION}" \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o nobody -g nogroup -m 0755 /prometheus \
 && prometheus --version

USER nobody
EXPOSE 9090
WORKDIR /prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
