"""tools/compose_smoke.py without a Docker engine: what it says when tools are missing, and the
small decisions it makes before touching Docker (wheelhouse complete, apt mirror, base image,
where the Kafka image comes from)."""

from __future__ import annotations

import dataclasses
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
