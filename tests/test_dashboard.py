"""The Grafana dashboard (monitoring/grafana/) is what tools/dashboard.py writes, its
provisioning points at it, and every panel's query returns data from a real Prometheus
(Debian's 2.42) scraping a worker under load with the compose stack's own jobs and rules:
the throughput panel within 10% of the offered rate, the alert rules loaded."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import urllib.request
from pathlib import Path

import aiokafka
import pytest
import yaml

from tests.worker_harness import WorkerTopics
from tools import dashboard
from tools.prometheus import PrometheusServer
from tools.producer import generate_events
from worker import codec, errors, wire

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "monitoring" / "grafana"
RATE_WINDOW = "15s"  # what Grafana's $__rate_interval is at a 1 s scrape, with margin
OFFERED_PER_S = 40.0
LOAD_S = 30.0
BAD_EVERY = 20  # one request in 20 is garbage: a dead letter with a code


def committed() -> dict:
    return json.loads(dashboard.DASHBOARD_PATH.read_text())


def test_the_committed_dashboard_is_what_the_generator_writes():
    assert dashboard.DASHBOARD_PATH.read_text() == dashboard.render(), (
        "run `python -m tools.dashboard` and commit the result")


def test_panels_are_laid_out_without_overlap_and_name_their_queries():
    cells = set()
    for panel in committed()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & mine, panel["title"]
        cells |= mine
        assert panel["targets"] and all(t["legendFormat"] for t in panel["targets"])
        assert [t["refId"] for t in panel["targets"]] == [
            chr(ord("A") + i) for i in range(len(panel["targets"]))]


def test_grafana_provisioning_loads_this_dashboard_from_this_data_source():
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
                             .read_text())["datasources"]
    uids = {source["uid"]: source for source in sources}
    assert uids[dashboard.DATASOURCE["uid"]]["type"] == "prometheus"
    assert {t["datasource"]["uid"] for p in committed()["panels"] for t in p["targets"]} == {
        dashboard.DATASOURCE["uid"]}
    provider, = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "ranking-worker.yml")
                               .read_text())["providers"]
    assert provider["type"] == "file"
    # The compose file mounts monitoring/grafana/dashboards where the provider reads.
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./monitoring/grafana/dashboards:{provider['options']['path']}:ro" in mounts


async def _offer_load(bootstrap: str, topics: WorkerTopics, stop: threading.Event) -> int:
    """Requests at OFFERED_PER_S on an absolute schedule (one in BAD_EVERY not msgpack) and an
    engagement with every fifth, through one producer, until `stop`; returns how many
    requests were sent."""
    rng = random.Random(5)
    producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        start, sent = time.monotonic(), 0
        for event in generate_events(seed=51, count=int(OFFERED_PER_S * (LOAD_S + 60))):
            if stop.is_set():
                break
            await asyncio.sleep(max(0.0, start + sent / OFFERED_PER_S - time.monotonic()))
            now_ms = int(time.time() * 1000)
            value = b"\xc1 not msgpack" if sent % BAD_EVERY == 0 else event.encode(now_ms)
            await producer.send(topics.requests, value, key=event.key)
            if sent % 5 == 0:
                user = rng.randint(1, 2**63)
                engagement = {"schema": wire.ENGAGEMENT_SCHEMA, "user_id": user,
                              "post_id": rng.randint(1, 5000), "author_id": rng.randint(1, 300),
                              "actions": ["favorite"], "surface": 0, "timestamp_ms": now_ms}
                await producer.send(topics.engagements, codec.encode_request(engagement),
                                    key=codec.user_key(user))
            sent += 1
        await producer.flush()
        return sent
    finally:
        await producer.stop()


def compose_config_on_host(port: int) -> dict:
    """The compose stack's Prometheus configuration, for the host: its jobs and rules as they
    are (the alert rules read from the repository), a 1 s scrape, and the worker's address in
    place of the DNS discovery of its service name (Prometheus asks the DNS servers, not
    /etc/hosts, and there is no Docker DNS here)."""
    config = yaml.safe_load((ROOT / "monitoring" / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(ROOT / "monitoring" / "alerts.yml")]
    for job in config["scrape_configs"]:
        names = [name for discovery in job.pop("dns_sd_configs") for name in discovery["names"]]
        job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"] if "worker" in names else []}]
    return config


def _value(samples: list[dict]) -> float:
    return sum(float(sample["value"][1]) for sample in samples)


def test_every_panel_query_returns_data_from_a_worker_under_load(kafka, worker_factory,
                                                                tmp_path):
    topics = WorkerTopics.create(kafka, partitions=2)
    worker = worker_factory(topics, partitions=2).start()
    worker.wait_ready()
    with PrometheusServer([], tmp_path / "prometheus",
                          config=compose_config_on_host(worker.metrics_port)) as prometheus:
        stop = threading.Event()
        sent: list[int] = []
        load = threading.Thread(target=lambda: sent.append(
            asyncio.run(_offer_load(kafka.bootstrap, topics, stop))))
        load.start()
        try:
            time.sleep(LOAD_S)  # the load itself: the panels are read while it runs
            at = time.time()
            up = prometheus.query('up{job="ranker"}', at)
            rules = json.load(urllib.request.urlopen(f"{prometheus.url}/api/v1/rules"))
            answers = {(title, expr): prometheus.query(
                expr.replace(dashboard.RATE_INTERVAL, RATE_WINDOW), at)
                for title, expr in dashboard.queries(committed())}
        finally:
            stop.set()
            load.join()
    # The compose configuration's worker job scrapes the worker, and its alert rules load.
    assert [(s["metric"]["instance"], s["value"][1]) for s in up] == [
        (f"127.0.0.1:{worker.metrics_port}", "1")]
    loaded = {rule["name"] for group in rules["data"]["groups"] for rule in group["rules"]}
    alerts = yaml.safe_load((ROOT / "monitoring" / "alerts.yml").read_text())
    assert loaded == {rule["alert"] for group in alerts["groups"] for rule in group["rules"]}
    empty = [key for key, samples in answers.items() if not samples]
    assert not empty, (empty, prometheus.log()[-2000:])
    throughput = {panel_expr[1]: _value(samples) for panel_expr, samples in answers.items()
                  if panel_expr[0] == "Throughput"}
    requests = throughput[dashboard.PANELS[0].queries[0].expr]
    print(f"\ndashboard under load: offered {OFFERED_PER_S:.0f}/s; Prometheus: {throughput}")
    assert requests == pytest.approx(OFFERED_PER_S, rel=0.10), throughput
    answered = (throughput[dashboard.PANELS[0].queries[1].expr]
                + throughput[dashboard.PANELS[0].queries[2].expr])
    assert answered == pytest.approx(OFFERED_PER_S, rel=0.10), throughput
    letters = prometheus_codes(answers)
    assert set(letters) == {errors.NOT_MSGPACK}, letters
    assert sent and sent[0] >= OFFERED_PER_S * LOAD_S * 0.9


def prometheus_codes(answers: dict) -> dict[str, float]:
    """Dead letters per second by code, as the throughput panel shows them."""
    query = dashboard.PANELS[0].queries[2].expr
    return {sample["metric"]["code"]: float(sample["value"][1])
            for (_, expr), samples in answers.items() if expr == query for sample in samples}
