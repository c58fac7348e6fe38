# The Phoenix ranking worker: `python -m worker.app`, configured by RANKER_* variables.
#
#   docker build -t phoenix-ranker:cpu .
#   docker build --build-arg JAX_VARIANT=cuda12 -t phoenix-ranker:cuda12 .
#   docker build --build-arg BASE_IMAGE=my-registry/python:3.11 -t phoenix-ranker:cpu .
#
# The same image runs the mock producer (`python -m tools.producer ...`) and the results viewer
# (`python -m tools.viewer ...`). The cuda12 variant gets CUDA and cuDNN as pip wheels through
# jax's `cuda12` extra: the host needs only the NVIDIA driver and container toolkit.
#
# Offline builds: wheels in ./wheelhouse (see wheelhouse/README.md) are installed with
# `--no-index`; with no wheels there, dependencies come from the package index. No BuildKit-only
# syntax: the classic builder and BuildKit (without fetching a frontend image) both build this.

# Any image with Python 3.11 as `python` (with `venv`) and `groupadd`/`useradd`: the official slim
# image by default; `make compose-smoke` builds a local one where no registry can be reached.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

# ---- deps: the virtual environment with every pinned dependency (and nothing of the build
# context left behind: the wheelhouse stays in this stage's layers, not the final image's).
FROM ${BASE_IMAGE} AS deps

# cpu: jaxlib's CPU backend only. cuda12: also jax's CUDA 12 plugin and NVIDIA's wheels (~3 GB).
ARG JAX_VARIANT=cpu

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# From pyproject.toml's pinned list (the one place versions are written), so that a code change
# does not reinstall jax. setuptools (the project's build backend) is installed too: the final
# stage builds the project without build isolation, which would fetch it from an index.
COPY pyproject.toml /tmp/build/
COPY wheelhouse/ /tmp/wheelhouse/
RUN python -m venv /opt/venv \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/build/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/build/requirements.txt \
 && if ls /tmp/wheelhouse/*.whl > /dev/null 2>&1; then \
        set -- --no-index --find-links /tmp/wheelhouse; echo "installing from the wheelhouse"; \
    else set --; echo "no wheels in wheelhouse/: installing from the package index"; fi \
 && /opt/venv/bin/pip install --no-cache-dir "$@" -r /tmp/build/requirements.txt "setuptools>=68" \
 && case "$JAX_VARIANT" in \
      cpu) ;; \
      cuda12) \
        JAX_VERSION="$(/opt/venv/bin/python -c 'import importlib.metadata as m; print(m.version("jax"))')" \
        && /opt/venv/bin/pip install --no-cache-dir "$@" "jax[cuda12]==${JAX_VERSION}" ;; \
      *) echo "JAX_VARIANT must be cpu or cuda12, got '$JAX_VARIANT'" >&2; exit 1 ;; \
    esac

# ---- the image that runs.
FROM ${BASE_IMAGE}

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

COPY --from=deps /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# The project itself (dependencies are already in place), then a consistency check.
COPY pyproject.toml ./
COPY phoenix/ phoenix/
COPY worker/ worker/
COPY training/ training/
COPY tools/ tools/
COPY bench/ bench/
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
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
