# syntax=docker/dockerfile:1
# The Phoenix ranking worker: `python -m worker.app`, configured by RANKER_* variables.
#
#   docker build -t phoenix-ranker:cpu .
#   docker build --build-arg JAX_VARIANT=cuda12 -t phoenix-ranker:cuda12 .
#
# The same image runs the mock producer (`python -m tools.producer ...`) and the results viewer
# (`python -m tools.viewer ...`). The cuda12 variant gets CUDA and cuDNN as pip wheels through
# jax's `cuda12` extra: the host needs only the NVIDIA driver and container toolkit.
FROM python:3.11.14-slim-bookworm

# cpu: jaxlib's CPU backend only. cuda12: also jax's CUDA 12 plugin and NVIDIA's wheels (~3 GB).
ARG JAX_VARIANT=cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed numeric uid/gid, so that an orchestrator can check "not root" without /etc/passwd.
# The code stays root-owned (read-only to the worker); /var/lib/ranker is the one writable place:
# the JAX compilation cache and Faust's data directory (created relative to the working dir).
RUN groupadd --system --gid 10001 ranker \
 && useradd --system --uid 10001 --gid ranker --home-dir /var/lib/ranker --no-create-home \
        --shell /usr/sbin/nologin ranker \
 && install -d -o ranker -g ranker -m 0750 /var/lib/ranker /var/lib/ranker/jax-cache

WORKDIR /app

# Dependencies first, from pyproject.toml's pinned list (the one place versions are written),
# so that a code change does not reinstall jax. The CUDA plugin is pinned to the jax installed.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt \
 && case "$JAX_VARIANT" in \
      cpu) ;; \
      cuda12) \
        JAX_VERSION="$(python -c 'import importlib.metadata as m; print(m.version("jax"))')" \
        && pip install --no-cache-dir "jax[cuda12]==${JAX_VERSION}" ;; \
      *) echo "JAX_VARIANT must be cpu or cuda12, got '$JAX_VARIANT'" >&2; exit 1 ;; \
    esac \
 && rm /tmp/requirements.txt

# The project itself (dependencies are already in place), then a consistency check.
COPY phoenix/ phoenix/
COPY worker/ worker/
COPY training/ training/
COPY tools/ tools/
COPY bench/ bench/
RUN pip install --no-cache-dir --no-deps . \
 && pip check \
 && rm -rf build ./*.egg-info

COPY schemas/ schemas/
COPY checkpoints/ checkpoints/

# Absolute paths: the worker runs from its writable state directory, not from /app.
ENV RANKER_CHECKPOINT=/app/checkpoints/demo.npz \
    RANKER_JAX_CACHE_DIR=/var/lib/ranker/jax-cache \
    RANKER_METRICS_PORT=9100 \
    HOME=/var/lib/ranker

USER 10001:10001
WORKDIR /var/lib/ranker

# Prometheus /metrics and /ready.
EXPOSE 9100
# Healthy = model compiled and partitions assigned (/ready answers 200; 503 or no answer fails).
HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('RANKER_METRICS_PORT', '9100'); sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:' + port + '/ready', timeout=4).status == 200 else 1)"]

CMD ["python", "-m", "worker.app"]
