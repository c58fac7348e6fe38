# A stand-in for python:3.11-slim-bookworm, built from a local Debian bookworm root file system
# where no image registry can be reached (`make compose-smoke` makes both; see tools/compose_smoke.py).
#
#   debootstrap --variant=minbase bookworm ROOT MIRROR && tar -C ROOT -c . | docker import - DEBIAN
#   docker build -f docker/local-base.Dockerfile --build-arg DEBIAN_IMAGE=DEBIAN -t BASE docker
#
# Debian bookworm's python3 is 3.11, the version the official image gives: `python` and
# `python -m venv` work as there. Only Debian's mirror is used (no package index, no TLS).
ARG DEBIAN_IMAGE=phoenix-local/debian:bookworm
FROM ${DEBIAN_IMAGE}

ENV LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python-is-python3 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && python -c "import sys, venv; assert sys.version_info[:2] == (3, 11), sys.version"

CMD ["python3"]
