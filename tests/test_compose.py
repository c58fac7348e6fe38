"""The docker-compose demo stack and its Dockerfile, checked without a Docker engine.

Building the image and starting the stack is `make compose-smoke` (tools/compose_smoke.py), which
needs a Docker engine; these tests need none. They read `docker-compose.yml` and `Dockerfile` as
data and check their wiring against the code they must agree with: topic names
(`worker.topics`), setting names and values (`worker.settings.Settings`, loaded from the compose
environment exactly as the worker would), the Kafka version and single-node settings
(`tools/apache_kafka.py`, `tools/kafka/pom.xml`), the broker address and listeners, health-check
ordering and the GPU reservation. When a compose CLI is installed (`docker compose` or the older
`docker-compose`), one more test has it validate the file against the Compose schema and resolve
its variables. The Kafka image built where `apache/kafka` cannot be pulled is checked by
tests/test_kafka_image.py.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests import compose_stack
from tools.apache_kafka import SINGLE_NODE_CONFIG, kafka_version
from tools.producer import DEFAULT_TOO_LARGE_BYTES
from worker.settings import Settings
from worker.topics import DEAD_LETTER_TOPIC, DEFAULT_TOPICS, REQUESTS_TOPIC, RESULTS_TOPIC

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

CORE_SERVICES = ("kafka", "topics", "worker", "producer", "results", "prometheus", "grafana")
WORKERS = ("worker", "worker-gpu")
VIEWERS = ("producer", "results")  # our image, other commands, start once a worker is ready
KAFKA_IMAGE = re.compile(r"^apache/kafka:\d+\.\d+\.\d+$")
EXACT_TAG = re.compile(r"^[\w.\-/]+:v?\d+\.\d+\.\d+[\w.\-]*(@sha256:[0-9a-f]{64})?$")
HEADROOM_BYTES = 64 * 1024  # dead-letter envelope and Kafka record overhead around a payload
REQUESTED_PARTITIONS = 4  # ranking-requests: the unit of scale-out (one consumer per partition)
VALID_RANKER_ENV = frozenset(Settings.env_name(f.name) for f in dataclasses.fields(Settings))


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    with COMPOSE_FILE.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), (
        f"{COMPOSE_FILE.name} has no `services:` map")
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?::?-(?P<default>[^}]*))?\}")


def interpolate(value: str, environ: Mapping[str, str]) -> str:
    """Compose's `${NAME}` / `${NAME:-default}` substitution (`$$` is a literal `$`)."""
    def substitute(match: re.Match[str]) -> str:
        name, default = match["name"], match["default"]
        if name in environ:
            return environ[name]
        if default is None:
            pytest.fail(f"${{{name}}} has no default: `docker compose up` would need it set")
        return default

    return _VARIABLE.sub(substitute, value.replace("$$", "\0")).replace("\0", "$")


def env_of(service: dict[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A service's environment as a map, variables resolved (list or map form)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: interpolate(str(v), environ or {}) for k, v in raw.items()}


def depends_of(service: dict[str, Any]) -> dict[str, str]:
    """{dependency: condition}; the short list form means `service_started`."""
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return {name: "service_started" for name in raw}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in raw.items()}


def command_of(service: dict[str, Any]) -> list[str]:
    raw = service.get("command") or []
    return shlex.split(raw) if isinstance(raw, str) else [str(part) for part in raw]


def flag_value(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from command {argv}"
    index = argv.index(flag)
    assert index + 1 < len(argv), f"{flag} has no value in {argv}"
    return argv[index + 1]


def listeners(spec: str) -> dict[str, str]:
    """'NAME://host:port,...' -> {NAME: 'host:port'}."""
    out = {}
    for part in spec.split(","):
        name, _, address = part.strip().partition("://")
        out[name] = address
    return out


def kafka_env(services: dict[str, dict[str, Any]]) -> dict[str, str]:
    return env_of(services["kafka"])


def internal_bootstrap(services: dict[str, dict[str, Any]]) -> str:
    """The address the broker advertises to the other containers (its inter-broker listener)."""
    env = kafka_env(services)
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    name = env.get("KAFKA_INTER_BROKER_LISTENER_NAME", "PLAINTEXT")
    assert name in advertised, f"inter-broker listener {name} is not advertised: {advertised}"
    return advertised[name]


def worker_settings(services: dict[str, dict[str, Any]], name: str = "worker",
                    environ: Mapping[str, str] | None = None) -> Settings:
    """The settings the worker in this container would run with (same loader, same checks)."""
    return Settings.load(argv=(), environ=env_of(services[name], environ))


@dataclasses.dataclass(frozen=True)
class Instruction:
    keyword: str  # FROM, RUN, COPY, ... (upper case)
    args: str  # the rest of the logical line, continuations joined


def dockerfile() -> list[Instruction]:
    """Logical Dockerfile instructions: comments dropped, `\\` continuations joined."""
    out, pending = [], ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker also drops comment lines inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    return out


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in dockerfile():
        if ins.keyword == "ENV":
            env.update(part.split("=", 1) for part in shlex.split(ins.args))
    return env


def global_args() -> dict[str, str]:
    """Defaults of the ARGs declared before the first FROM (the ones FROM may use)."""
    out: dict[str, str] = {}
    for ins in dockerfile():
        if ins.keyword == "FROM":
            return out
        if ins.keyword == "ARG" and "=" in ins.args:
            name, _, default = ins.args.partition("=")
            out[name] = default
    return out


def base_images() -> list[str]:
    """Each stage's FROM image, `${ARG}` resolved to its default."""
    defaults = global_args()
    return [re.sub(r"\$\{?(\w+)\}?", lambda m: defaults[m[1]], ins.args.split()[0])
            for ins in dockerfile() if ins.keyword == "FROM"]


def copied_paths(final_stage: bool = False) -> list[tuple[str, PurePosixPath]]:
    """(source in the build context, where it lands in its stage) for each COPY source;
    with `final_stage`, only the stage that becomes the image. `COPY --from` copies between
    stages, not from the build context: left out.

    Docker's rules: a directory's contents go into the destination; a file goes to
    `dest/<name>` when the destination ends in `/` (or is `.`), else to `dest` itself.
    """
    out: list[tuple[str, PurePosixPath]] = []
    workdir = PurePosixPath("/")
    for ins in dockerfile():
        if ins.keyword == "FROM":
            workdir = PurePosixPath("/")
            if final_stage:
                out = []
        elif ins.keyword == "WORKDIR":
            workdir = workdir / ins.args
        elif ins.keyword == "COPY":
            if "--from" in ins.args:
                continue
            *sources, dest = [p for p in shlex.split(ins.args) if not p.startswith("--")]
            into = dest.endswith("/") or dest in (".", "..")
            for src in sources:
                is_dir = src.endswith("/") or (ROOT / src).is_dir()
                target = workdir / dest
                out.append((src, target / PurePosixPath(src).name
                            if into and not is_dir else target))
    return out


def repo_path_for(image_path: str) -> Path | None:
    """The file in this repository that ends up at `image_path` in the image, if any."""
    target = PurePosixPath(image_path)
    best: tuple[int, Path] | None = None
    for src, dest in copied_paths(final_stage=True):
        if target == dest or dest in target.parents:
            depth = len(dest.parts)  # the most specific COPY wins
            if best is None or depth > best[0]:
                best = (depth, ROOT / src / target.relative_to(dest))
    return None if best is None else best[1]


# ----------------------------------------------------------------------------- services


def test_every_service_is_declared_and_the_gpu_worker_is_opt_in(services):
    missing = [name for name in (*CORE_SERVICES, "worker-gpu") if name not in services]
    assert not missing, f"services missing from {COMPOSE_FILE.name}: {missing}"
    for name in CORE_SERVICES:  # plain `docker compose up` must start these
        assert not services[name].get("profiles"), f"{name} must not be behind a profile"
    assert services["worker-gpu"].get("profiles") == ["gpu"]


def test_kafka_image_is_the_pinned_release(services):
    for name in ("kafka", "topics"):
        image = services[name]["image"]
        assert KAFKA_IMAGE.match(image), f"{name}: {image!r} is not apache/kafka:X.Y.Z"
    assert services["kafka"]["image"] == services["topics"]["image"], (
        "topics must use the broker's own CLI version")
    # The version the tests run on the host, and the one make compose-smoke builds locally
    # (and tags with this name) where the image cannot be pulled.
    assert services["kafka"]["image"] == f"apache/kafka:{kafka_version()}", (
        "docker-compose.yml and tools/kafka/pom.xml name different Kafka versions")


def test_every_pulled_image_is_pinned(services):
    for name, service in services.items():
        if "build" in service:
            continue
        image = service.get("image", "")
        assert EXACT_TAG.match(image) and ":latest" not in image, (
            f"{name}: image {image!r} is not pinned to an exact version")


def test_kafka_runs_kraft_as_a_single_combined_node(services):
    env = kafka_env(services)
    assert not any("ZOOKEEPER" in key for key in env), "KRaft mode has no ZooKeeper"
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"]), "CLUSTER_ID: 16 bytes, base64"
    node_id = env["KAFKA_NODE_ID"]
    voter_id, _, voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert voter_id == node_id, "the only voter must be this node"
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    bound = listeners(env["KAFKA_LISTENERS"])
    assert controller in bound, f"controller listener {controller} is not bound: {bound}"
    assert voter.split(":")[1] == bound[controller].split(":")[1], "voter port != controller port"
    assert voter.split(":")[0] in ("kafka", services["kafka"].get("hostname")), (
        "the voter must be reachable at the service's own name")
    protocol_map = dict(part.split(":") for part in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
                        .split(","))
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    for name in (*bound, *advertised):
        assert name in protocol_map, f"listener {name} has no security protocol"
    for name, address in advertised.items():
        assert name in bound, f"advertised listener {name} is not bound"
        assert address.split(":")[1] == bound[name].split(":")[1], f"{name}: port mismatch"
    assert controller not in advertised, "clients must not be sent to the controller listener"


def test_kafka_single_node_internal_topics_have_one_replica(services):
    # Defaults are 3 replicas: on one broker the consumer group and transactions never start.
    env = kafka_env(services)
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert env.get(key) == "1", f"{key} must be 1 on a single broker, got {env.get(key)!r}"


def test_kafka_has_the_single_node_settings_the_host_broker_runs_with(services):
    # tools/apache_kafka.py's node (the tests' broker) and the compose one behave alike.
    env = kafka_env(services)
    for key, value in SINGLE_NODE_CONFIG.items():
        variable = "KAFKA_" + key.upper().replace(".", "_")  # the image's mapping, reversed
        assert env.get(variable) == value, f"{variable} should be {value!r} ({key})"


def test_kafka_creates_no_topic_on_its_own(services):
    assert kafka_env(services)["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_kafka_accepts_messages_over_the_worker_cap(services):
    env = kafka_env(services)
    broker_cap = int(env["KAFKA_MESSAGE_MAX_BYTES"])
    worker_cap = worker_settings(services).max_message_bytes
    # The producer's over-cap test message must reach the worker (to be dead-lettered), and a
    # dead letter carries a whole accepted request plus its envelope.
    needed = max(worker_cap, DEFAULT_TOO_LARGE_BYTES) + HEADROOM_BYTES
    assert broker_cap >= needed, f"message.max.bytes {broker_cap} < {needed}"
    assert int(env["KAFKA_REPLICA_FETCH_MAX_BYTES"]) >= broker_cap


# ----------------------------------------------------------------------------- ordering


def test_start_order_waits_on_health_not_on_start(services):
    assert depends_of(services["topics"]) == {"kafka": "service_healthy"}
    for name in WORKERS:
        assert depends_of(services[name]) == {
            "kafka": "service_healthy", "topics": "service_completed_successfully"}, name
    for name in VIEWERS:
        assert depends_of(services[name]) == {"worker": "service_healthy"}, name


def test_every_awaited_service_has_a_healthcheck(services):
    for name, service in services.items():
        for dependency, condition in depends_of(service).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            if condition == "service_healthy":
                check = services[dependency].get("healthcheck") or {}
                assert check.get("test") and not check.get("disable"), (
                    f"{name} waits for {dependency} to be healthy, but it has no healthcheck")


def test_worker_healthcheck_asks_ready_on_the_metrics_port(services):
    for name in WORKERS:
        test = services[name]["healthcheck"]["test"]
        text = " ".join(test) if isinstance(test, list) else test
        match = re.search(r"://(?:127\.0\.0\.1|localhost):(\d+)/ready\b", text)
        assert match, f"{name}: healthcheck does not GET /ready: {text}"
        assert int(match[1]) == worker_settings(services, name).metrics_port
        assert "curl" not in text and "wget" not in text, "slim images have neither"


def test_topics_service_is_one_shot(services):
    assert services["topics"].get("restart", "no") == "no"


# ----------------------------------------------------------------------------- contract


def topics_created(services: dict[str, dict[str, Any]]) -> dict[str, int]:
    """{topic: partitions} the topics step creates: its script, run by `sh` with the
    service's environment ($ADMIN_CLIENT: how the scripts reach the broker)."""
    script = " ".join(command_of(services["topics"])).replace("$$", "$")
    for name, value in env_of(services["topics"]).items():
        script = script.replace(f"${name}", value)
    created: dict[str, int] = {}
    for call in script.split("kafka-topics.sh")[1:]:
        argv = shlex.split(call.split("\n", 1)[0])  # one call per line
        if "--create" not in argv:
            continue
        assert "--if-not-exists" in argv, f"re-running the stack would fail: {argv}"
        assert flag_value(argv, "--bootstrap-server") == internal_bootstrap(services)
        created[flag_value(argv, "--topic")] = int(flag_value(argv, "--partitions"))
    return created


def test_topics_service_creates_the_wire_contract_topics(services):
    created = topics_created(services)
    assert sorted(created) == sorted(DEFAULT_TOPICS)
    assert created[REQUESTS_TOPIC] == REQUESTED_PARTITIONS
    settings = worker_settings(services)
    assert settings.partitions == created[REQUESTS_TOPIC], "RANKER_PARTITIONS != topic partitions"


def test_workers_use_the_contract_topics(services):
    for name in WORKERS:
        env = env_of(services[name])
        assert env["RANKER_REQUESTS_TOPIC"] == REQUESTS_TOPIC
        assert env["RANKER_RESULTS_TOPIC"] == RESULTS_TOPIC
        assert env["RANKER_DEAD_LETTER_TOPIC"] == DEAD_LETTER_TOPIC
        settings = worker_settings(services, name)
        assert (settings.requests_topic, settings.results_topic, settings.dead_letter_topic) == (
            REQUESTS_TOPIC, RESULTS_TOPIC, DEAD_LETTER_TOPIC)
    producer = command_of(services["producer"])
    assert flag_value(producer, "--topic") == REQUESTS_TOPIC


def test_every_client_uses_the_advertised_broker_address(services):
    address = internal_bootstrap(services)
    host = address.split(":")[0]
    assert host in ("kafka", services["kafka"].get("hostname")), (
        f"advertised {address} is not the kafka service's name on the compose network")
    for name in WORKERS:
        assert worker_settings(services, name).bootstrap_servers == address, name
    for name in VIEWERS:
        assert flag_value(command_of(services[name]), "--bootstrap") == address, name


def test_ranker_variables_are_real_settings(services):
    used = {key for service in services.values() for key in env_of(service)
            if key.startswith("RANKER_")}
    used |= {key for key in dockerfile_env() if key.startswith("RANKER_")}
    assert used, "no RANKER_* variable found: the parser is broken"
    unknown = sorted(used - VALID_RANKER_ENV)
    assert not unknown, f"not fields of worker.settings.Settings (typo?): {unknown}"


def test_worker_settings_load_and_suit_real_kafka(services):
    for name in WORKERS:
        settings = worker_settings(services, name)  # raises SettingsError on a bad value
        assert settings.session_timeout_s >= 6, "real Kafka refuses session timeouts under 6 s"
        assert settings.heartbeat_interval_s < settings.session_timeout_s
        assert settings.processing_guarantee == "at_least_once", "the default stays at-least-once"
        assert settings.group_id == worker_settings(services, "worker").group_id, (
            "all workers of the stack share one consumer group (they split the partitions)")
    assert worker_settings(services, "worker").device == "cpu"


def test_exactly_once_is_one_variable_away(services):
    for name in WORKERS:
        settings = worker_settings(services, name,
                                   environ={"RANKER_PROCESSING_GUARANTEE": "exactly_once"})
        assert settings.processing_guarantee == "exactly_once", (
            f"{name}: RANKER_PROCESSING_GUARANTEE from the shell does not reach the worker")


def test_checkpoint_and_cache_paths_exist_in_the_image(services):
    for name in WORKERS:
        settings = worker_settings(services, name)
        source = repo_path_for(settings.checkpoint)
        assert source is not None, f"{settings.checkpoint} is not copied into the image"
        assert source.is_file(), f"{settings.checkpoint} comes from {source}, which is missing"
        mounts = [str(v).split(":")[1] for v in services[name].get("volumes", [])]
        assert settings.jax_cache_dir in mounts, "the JAX cache should outlive the container"


def test_viewers_share_the_worker_image(services):
    worker = services["worker"]
    for name in VIEWERS:
        assert services[name]["image"] == worker["image"], name
        assert services[name].get("build") == worker.get("build"), name
        assert services[name].get("healthcheck", {}).get("disable") is True, (
            f"{name} serves no /ready: the image's worker healthcheck must be off")


def test_gpu_worker_reserves_an_nvidia_device_and_builds_cuda(services):
    gpu = services["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
               for d in devices), devices
    assert gpu["build"]["args"]["JAX_VARIANT"] == "cuda12"
    assert worker_settings(services, "worker-gpu").device == "gpu"
    assert gpu["image"] != services["worker"]["image"], "the CUDA build would replace the CPU tag"
    # The extra the Dockerfile installs exists for the pinned jax.
    assert "cuda12" in (importlib.metadata.metadata("jax").get_all("Provides-Extra") or [])


def test_published_ports_stay_on_loopback(services):
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


# ----------------------------------------------------------------------------- monitoring


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of a service's bind mounts (read-only ones)."""
    return {target: source for source, target, mode in
            (volume.split(":") for volume in service.get("volumes", [])
             if volume.startswith("./"))}


def test_prometheus_is_the_version_the_tests_run_and_loads_the_repository_files(services):
    from tools import prometheus

    upstream = prometheus.VERSION.split("+")[0]  # 2.42.0+ds-5+deb12u1 -> 2.42.0
    assert services["prometheus"]["image"] == f"prom/prometheus:v{upstream}"
    dockerfile = (ROOT / "docker" / "prometheus.Dockerfile").read_text()
    assert f"ARG PROMETHEUS_VERSION={prometheus.VERSION}\n" in dockerfile
    mounts = _mounts(services["prometheus"])
    for source in mounts.values():
        assert (ROOT / source).is_file(), source
    config = yaml.safe_load((ROOT / mounts["/etc/prometheus/prometheus.yml"]).read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert mounts["/etc/prometheus/alerts.yml"] == "./monitoring/alerts.yml"


def test_prometheus_scrapes_every_worker_replica_on_its_metrics_port(services):
    config = yaml.safe_load((ROOT / "monitoring" / "prometheus" / "prometheus.yml").read_text())
    scraped = {}
    for job in config["scrape_configs"]:
        for discovery in job["dns_sd_configs"]:  # the service name: every replica's address
            assert discovery["type"] == "A"
            scraped.update({name: discovery["port"] for name in discovery["names"]})
    for name in WORKERS:
        port = int(services[name]["environment"]["RANKER_METRICS_PORT"])
        assert scraped[name] == port, name


def test_grafana_mounts_its_provisioning_and_the_dashboard(services):
    mounts = _mounts(services["grafana"])
    assert mounts["/etc/grafana/provisioning/datasources"] == (
        "./monitoring/grafana/provisioning/datasources")
    assert mounts["/etc/grafana/provisioning/dashboards"] == (
        "./monitoring/grafana/provisioning/dashboards")
    for source in mounts.values():
        assert (ROOT / source).is_dir(), source
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    folder, name = home.rsplit("/", 1)
    assert (ROOT / mounts[folder] / name).is_file()


# ----------------------------------------------------------------------------- Dockerfile


def test_dockerfile_base_image_is_pinned_and_supported():
    # The base is a build argument (a local stand-in where no registry is reachable); its
    # default is what an ordinary `docker build .` gets.
    bases = base_images()
    assert bases, "Dockerfile has no FROM"
    for base in bases:
        assert EXACT_TAG.match(base), f"FROM {base}: pin an exact version tag"
    match = re.match(r"python:(\d+)\.(\d+)\.\d+-slim", bases[-1])
    assert match, f"runtime base {bases[-1]} is not python:X.Y.Z-slim*"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = tuple(int(x) for x in re.fullmatch(r">=(\d+)\.(\d+)", requires).groups())
    assert (int(match[1]), int(match[2])) >= minimum, f"{bases[-1]} vs requires-python {requires}"


def test_dockerfile_runs_as_a_non_root_user():
    users = [ins.args for ins in dockerfile() if ins.keyword == "USER"]
    assert users, "Dockerfile has no USER: the worker would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"final USER is {users[-1]}"


def test_dockerfile_installs_from_pyproject_without_a_pip_cache():
    runs = [ins.args for ins in dockerfile() if ins.keyword == "RUN"]
    installs = [seg for run in runs for seg in re.split(r"&&|;", run) if "pip install" in seg]
    assert installs, "Dockerfile installs nothing with pip"
    for segment in installs:
        assert "--no-cache-dir" in segment, f"pip cache left in the image: {segment.strip()}"
    assert any(re.search(r"pip install [^&;]*\s\.(\s|$)", seg + " ") for seg in installs), (
        "the project itself is never installed (`pip install .`)")
    assert "pyproject.toml" in " ".join(runs), "dependencies must come from pyproject.toml"


def test_dockerfile_jax_variant_defaults_to_cpu_and_offers_cuda12():
    args = [ins.args for ins in dockerfile() if ins.keyword == "ARG"]
    assert "JAX_VARIANT=cpu" in args
    text = " ".join(ins.args for ins in dockerfile() if ins.keyword == "RUN")
    assert "cuda12)" in text and '"jax[cuda12]==' in text


def test_dockerfile_copies_what_exists_and_serves_the_worker():
    for src, _ in copied_paths():
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
    for package in ("phoenix", "worker", "training", "schemas", "checkpoints"):
        assert any(src.rstrip("/") == package for src, _ in copied_paths()), package
    cmd = [ins.args for ins in dockerfile() if ins.keyword in ("CMD", "ENTRYPOINT")]
    assert cmd and "worker.app" in cmd[-1]
    env = dockerfile_env()
    exposed = [ins.args for ins in dockerfile() if ins.keyword == "EXPOSE"]
    assert exposed == [env["RANKER_METRICS_PORT"]]
    health = [ins.args for ins in dockerfile() if ins.keyword == "HEALTHCHECK"]
    assert health and "/ready" in health[-1] and "RANKER_METRICS_PORT" in health[-1]
    assert repo_path_for(env["RANKER_CHECKPOINT"]) is not None, "default checkpoint not copied"


def test_dockerignore_keeps_the_context_small_but_complete():
    patterns = [line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]
    for required in (".git", ".venv"):
        assert required in patterns, f".dockerignore does not exclude {required}"
    for src, _ in copied_paths():
        name = src.rstrip("/")
        hit = [p for p in patterns if "/" not in p and fnmatch.fnmatch(name, p)]
        assert not hit, f"COPY {src} is excluded from the build context by {hit}"


def test_dockerfile_builds_without_a_registry_or_an_index():
    text = DOCKERFILE.read_text(encoding="utf-8")
    # `# syntax=` makes BuildKit pull a frontend image: no build where no registry answers.
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I), "drop the `# syntax=` line"
    assert "--mount=" not in text, "RUN --mount is BuildKit-only"
    froms = [ins.args.split()[0] for ins in dockerfile() if ins.keyword == "FROM"]
    assert froms and all(base == "${BASE_IMAGE}" for base in froms), (
        f"every stage must start from the BASE_IMAGE build argument: {froms}")
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", global_args()["BASE_IMAGE"])
    # The wheelhouse: copied into the build stage only (its wheels stay out of the image) and
    # used with --no-index when it holds wheels.
    assert any(src.rstrip("/") == "wheelhouse" for src, _ in copied_paths())
    assert not any(src.rstrip("/") == "wheelhouse" for src, _ in copied_paths(final_stage=True))
    assert "--no-index --find-links /tmp/wheelhouse" in text
    assert (ROOT / "wheelhouse" / "README.md").is_file(), "COPY wheelhouse/ needs the folder"


# ----------------------------------------------------------------------------- compose CLI


def compose_cli() -> list[str] | None:
    """`docker compose` (v2 plugin), else the older `docker-compose`; neither needs an engine
    for `config`."""
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_cli_validates_and_resolves_the_file(tmp_path):
    cli = compose_cli()
    if cli is None:
        pytest.skip("no compose CLI (neither `docker compose` nor `docker-compose`) installed")
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("COMPOSE_", "RANKER_", "DOCKER_"))}
    base = [*cli, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE)]
    quiet = subprocess.run([*base, "config", "-q"], capture_output=True, text=True,
                           env=environ, cwd=tmp_path, timeout=120)
    assert quiet.returncode == 0, f"{' '.join(cli)} config rejected the file:\n{quiet.stderr}"
    environ["RANKER_PROCESSING_GUARANTEE"] = "exactly_once"
    full = subprocess.run([*base, "--profile", "gpu", "config"], capture_output=True, text=True,
                          env=environ, cwd=tmp_path, timeout=120)
    assert full.returncode == 0, full.stderr
    resolved = yaml.safe_load(full.stdout)["services"]
    assert set(resolved) >= {*CORE_SERVICES, "worker-gpu"}
    for name in WORKERS:
        assert env_of(resolved[name])["RANKER_PROCESSING_GUARANTEE"] == "exactly_once"
    # The secured file over it: valid, and merged as tests/compose_stack.py merges it.
    secured = subprocess.run([*base, "-f", str(compose_stack.SECURED_FILE), "--profile", "gpu",
                              "config"], capture_output=True, text=True, env=environ,
                             cwd=tmp_path, timeout=120)
    assert secured.returncode == 0, secured.stderr
    merged = yaml.safe_load(secured.stdout)["services"]
    ours = compose_stack.services(secured=True)
    for name in ("kafka", "topics", "access", *WORKERS, *VIEWERS):
        for key, value in env_of(ours[name], environ).items():
            assert env_of(merged[name]).get(key) == value, (name, key)
        assert set(merged[name].get("depends_on") or {}) == set(ours[name].get("depends_on") or {})
