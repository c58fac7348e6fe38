"""tools/compose_smoke.py without a Docker engine: what it says when tools are missing, and the
small decisions it makes before touching Docker (wheelhouse complete, apt mirror, base image,
where the Kafka, Prometheus and Grafana images come from, which dashboard queries a
Prometheus has no data for)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from tools import compose_smoke


def test_missing_docker_stops_with_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(compose_smoke.SmokeError, match="apt-get install docker.io docker-compose"):
        compose_smoke.check_docker()


def test_missing_compose_stops_with_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoPlugin:
        returncode = 1

    monkeypatch.setattr(compose_smoke.subprocess, "run", lambda *a, **k: NoPlugin())
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(compose_smoke.SmokeError, match="no Docker Compose found"):
        compose_smoke.find_compose()


def test_main_reports_a_failure_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert compose_smoke.main([]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("compose-smoke: FAILED after ")


def test_wheelhouse_is_complete_only_with_every_pin(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    monkeypatch.setattr(compose_smoke, "WHEELHOUSE", tmp_path)
    pins = ["dm-haiku==0.0.17", "jax==0.10.2", "setuptools>=68"]
    (tmp_path / "dm_haiku-0.0.17-py3-none-any.whl").touch()
    assert not compose_smoke.wheelhouse_complete(pins)
    (tmp_path / "jax-0.10.1-py3-none-any.whl").touch()  # another version is no match
    assert not compose_smoke.wheelhouse_complete(pins)
    (tmp_path / "jax-0.10.2-py3-none-any.whl").touch()
    assert compose_smoke.wheelhouse_complete(pins)


def test_requirements_are_pyprojects_pins_plus_the_build_backend() -> None:
    requirements = compose_smoke.pinned_requirements()
    assert "setuptools>=68" in requirements
    assert any(req.startswith("jax==") for req in requirements)


def test_default_base_image_is_the_dockerfiles() -> None:
    assert compose_smoke.default_base_image().startswith("python:3.11.")


def test_producer_plan_comes_from_the_compose_file() -> None:
    count, codes = compose_smoke.producer_plan()
    assert count == 2000
    # --bad-fraction 0.05: about 100 malformed requests, each with the code it must get.
    assert 50 < sum(codes.values()) < 150 and "invalid" in codes


# ----------------------------------------------------------------------------- the Kafka image


class Done:
    def __init__(self, returncode: int, stderr: str = "") -> None:
        self.returncode, self.stdout, self.stderr = returncode, "", stderr


@dataclasses.dataclass
class Engine:
    """A stand-in for the Docker engine's images (name -> labels)."""

    images: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    pullable: bool = False
    built: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (tag, base)


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Engine:
    """compose_smoke's image look-ups, `docker pull` and local Kafka builds, on an `Engine`."""
    fake = Engine()

    def docker_pull(argv: list[str], **kwargs: object) -> Done:
        assert argv[:2] == ["docker", "pull"], argv
        return Done(0) if fake.pullable else Done(1, "Error: no registry")

    monkeypatch.setattr(compose_smoke, "image_exists", lambda name: name in fake.images)
    monkeypatch.setattr(compose_smoke, "image_label",
                        lambda name, label: fake.images.get(name, {}).get(label))
    monkeypatch.setattr(compose_smoke.subprocess, "run", docker_pull)
    monkeypatch.setattr(compose_smoke, "build_kafka_image",
                        lambda name, base: fake.built.append((name, base)))
    return fake


def test_kafka_image_uses_the_official_one_when_present_or_pullable(engine: Engine) -> None:
    name = compose_smoke.kafka_image_name()
    engine.pullable = True
    assert compose_smoke.kafka_image("some-base") == f"{name} (pulled)"
    engine.images[name] = {}
    assert compose_smoke.kafka_image("some-base") == f"{name} (present)"
    assert engine.built == []


def test_kafka_image_is_built_locally_when_it_cannot_be_pulled(engine: Engine) -> None:
    name = compose_smoke.kafka_image_name()
    assert compose_smoke.kafka_image("worker-base") == f"{name} (built here)"
    assert engine.built == [(name, "worker-base")]  # no local Debian image here
    # The local Debian image where make compose-smoke made one; a tag built here is rebuilt.
    engine.images[compose_smoke.LOCAL_DEBIAN] = {}
    engine.images[name] = {compose_smoke.LOCAL_BUILD_LABEL: "1"}
    assert compose_smoke.kafka_image("worker-base") == f"{name} (built here)"
    assert engine.built[-1] == (name, compose_smoke.LOCAL_DEBIAN)


def test_a_local_kafka_image_carries_the_pinned_version_only() -> None:
    with pytest.raises(compose_smoke.SmokeError, match="pins apache/kafka:"):
        compose_smoke.build_kafka_image("apache/kafka:0.0.1", "base")


# ----------------------------------------------------------------------------- monitoring


def test_prometheus_image_is_built_from_debians_package_where_it_cannot_be_pulled(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    from tools import prometheus

    builds: list[list[str]] = []
    monkeypatch.setattr(compose_smoke, "run", lambda argv, **kwargs: builds.append(argv))
    name = compose_smoke.compose_services()["prometheus"]["image"]
    assert compose_smoke.prometheus_image("worker-base") == f"{name} (built here)"
    build, = builds
    assert build[:2] == ["docker", "build"] and build[build.index("-t") + 1] == name
    assert f"PROMETHEUS_VERSION={prometheus.VERSION}" in build
    assert str(compose_smoke.PROMETHEUS_DOCKERFILE) in build
    engine.pullable = True
    assert compose_smoke.prometheus_image("worker-base") == f"{name} (pulled)"
    assert len(builds) == 1


def test_grafana_runs_only_where_its_image_can_be_had(engine: Engine) -> None:
    assert compose_smoke.grafana_image() is None
    engine.pullable = True
    assert compose_smoke.grafana_image() == (
        f"{compose_smoke.compose_services()['grafana']['image']} (pulled)")


def test_empty_panels_names_every_query_a_prometheus_has_no_data_for(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A real Prometheus that scrapes nothing: every dashboard query comes back empty, and
    the engagement ones are not asked where no engagement was sent."""
    from tools import dashboard
    from tools.prometheus import PrometheusServer

    queries = dashboard.queries(json.loads(dashboard.DASHBOARD_PATH.read_text()))
    engagement = [q for q in queries if any(m in q[1] for m in compose_smoke.ENGAGEMENT_METRICS)]
    assert engagement
    with PrometheusServer([], tmp_path) as server:
        monkeypatch.setattr(compose_smoke, "PROMETHEUS", server.url)
        empty, not_asked = compose_smoke.empty_panels(with_engagements=False)
        assert (len(empty), not_asked) == (len(queries) - len(engagement), len(engagement))
        empty, not_asked = compose_smoke.empty_panels(with_engagements=True)
        assert (len(empty), not_asked) == (len(queries), 0)
        assert empty[0] == f"{queries[0][0]}: {queries[0][1]}"
