"""`make compose-smoke`: build the images and run docker-compose.yml for real, Apache Kafka
included.

    python -m tools.compose_smoke [--host-requests 200] [--secured]

Installs nothing on the host: it stops with a hint when docker or compose is missing. Steps:
render the gpu profile (`config`, no GPU needed); find a base image (the Dockerfile's default,
pulled, or else a local one: a Debian bookworm root made with debootstrap, imported, plus
docker/local-base.Dockerfile); find the compose file's Kafka image (apache/kafka:<version>:
present, pulled, or else built from docker/kafka.Dockerfile on the local Debian base with
Debian's Java and the jars Maven fetched for tools/kafka/pom.xml, and tagged with that name);
fill ./wheelhouse from pyproject.toml's pins; build the worker image from it; start the stack
(kafka, its topics step, the worker); wait for the worker's health check; send the producer
service's requests and as many from the host through localhost:29092; read every answer back
with the viewer service; check the worker runs as uid 10001 and /ready and /metrics answer on
the published port; start Prometheus (the official image, or one built from Debian's package:
docker/prometheus.Dockerfile) and Grafana (where its image can be pulled), check Prometheus
scrapes the worker and every dashboard query returns data, and Grafana provisioned the
dashboard; `down`, and check nothing of the stack is left running. Every wait has a
timeout, and the stack goes down whatever happens. The last line is the summary.

`--secured` (`make compose-smoke SECURED=1`) runs docker-compose.secured.yml over the plain
file: the same checks on a Kafka with TLS, SCRAM users and ACLs (its secrets, topics and access
steps before the worker), the host producer signed in as the `producer` user with the CA and
password copied out of the worker container, and two refusals checked: a host client without
credentials, and the viewer's user sending requests.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from worker.errors import WorkerError

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = "docker-compose.yml"
SECURED_FILE = "docker-compose.secured.yml"  # --secured: given after COMPOSE_FILE
SECRETS_IN_CONTAINER = "/run/ranker-secrets"  # the ranker containers' CA and passwords
PROJECT = "phoenix-smoke"  # its own compose project: a user's `docker-compose up` is not touched
LOCAL_DEBIAN = "phoenix-local/debian:bookworm"
LOCAL_BASE = "phoenix-local/python:3.11-bookworm"
WHEELHOUSE = ROOT / "wheelhouse"
HOST_BOOTSTRAP = "localhost:29092"  # Kafka's HOST listener, published on loopback
KAFKA_DOCKERFILE = ROOT / "docker" / "kafka.Dockerfile"
KAFKA_SCRIPTS = ROOT / "docker" / "kafka"  # bin/, config/ and entrypoint.sh of the image
LOCAL_BUILD_LABEL = "phoenix.local-build"  # marks an apache/kafka tag this tool built
METRICS = "http://127.0.0.1:9100"  # the worker's published metrics port
PROMETHEUS = "http://127.0.0.1:9090"  # the stack's Prometheus, published on loopback
GRAFANA = "http://127.0.0.1:3000"
PROMETHEUS_DOCKERFILE = ROOT / "docker" / "prometheus.Dockerfile"
# What the dashboard's engagement panels read: empty where no engagement was sent.
ENGAGEMENT_METRICS = ("ranker_engagements_total", "ranker_engagement_visible_lag_seconds")
MONITORING_TIMEOUT_S = 90.0
WORKER_UID = 10001

HEALTHY_TIMEOUT_S = 900.0  # a cold worker compiles every batch bucket first (~2-5 min, 2 cores)
PRODUCER_TIMEOUT_S = 300.0
VIEWER_TIMEOUT_S = 180.0
BUILD_TIMEOUT_S = 1800.0

HINT_DOCKER = ("Install Docker Engine and Compose (Debian/Ubuntu: `sudo apt-get install docker.io "
               "docker-compose`; elsewhere see https://docs.docker.com/engine/install/), start "
               "the engine (`sudo systemctl start docker`, or `sudo dockerd &` without systemd) "
               "and make sure your user may use it (`docker info` works).")


class SmokeError(WorkerError, RuntimeError):
    """A step failed; the message says which and why."""


def say(text: str) -> None:
    print(f"compose-smoke: {text}", flush=True)


def run(argv: Sequence[str], *, timeout: float = 300.0, check: bool = True,
        quiet: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; with `quiet`, its output is captured (and shown only when it fails)."""
    try:
        done = subprocess.run(list(argv), cwd=ROOT, text=True, timeout=timeout,
                              stdout=subprocess.PIPE if quiet else None,
                              stderr=subprocess.STDOUT if quiet else None)
    except subprocess.TimeoutExpired as exc:
        raise SmokeError(f"`{shlex.join(argv)}` did not finish within {timeout:.0f} s") from exc
    if check and done.returncode != 0:
        tail = "\n".join((done.stdout or "").splitlines()[-30:])
        raise SmokeError(f"`{shlex.join(argv)}` exited with {done.returncode}:\n{tail}")
    return done


@dataclasses.dataclass
class Timings:
    phases: dict[str, float] = dataclasses.field(default_factory=dict)
    start: float = dataclasses.field(default_factory=time.monotonic)

    def phase(self, name: str, since: float) -> None:
        self.phases[name] = time.monotonic() - since
        say(f"{name}: {self.phases[name]:.1f} s")

    def line(self) -> str:
        return ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.phases.items())

    @property
    def total(self) -> float:
        return time.monotonic() - self.start


# ----------------------------------------------------------------------------- tools


def find_compose() -> list[str]:
    """`docker compose` (v2) when present, else `docker-compose` (v1); neither is installed."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise SmokeError(f"no Docker Compose found (`docker compose` or `docker-compose`). {HINT_DOCKER}")


def check_docker() -> str:
    if not shutil.which("docker"):
        raise SmokeError(f"`docker` is not on PATH. {HINT_DOCKER}")
    probe = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        raise SmokeError(f"the Docker Engine does not answer ({probe.stderr.strip()}). "
                         f"{HINT_DOCKER}")
    return probe.stdout.strip()


def image_exists(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


# ----------------------------------------------------------------------------- images


def default_base_image() -> str:
    """The Dockerfile's `ARG BASE_IMAGE=` default."""
    match = re.search(r"^ARG BASE_IMAGE=(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    if not match:
        raise SmokeError("Dockerfile has no `ARG BASE_IMAGE=...` default")
    return match[1]


def apt_mirror() -> str:
    """The Debian mirror this host's apt uses (deb822 or one-line sources), else the default."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        text = path.read_text(errors="replace") if path.is_file() else ""
        for pattern in (r"^URIs:\s*(\S+/debian)/?\s*$", r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)/?\s"):
            match = re.search(pattern, text, re.M)
            if match:
                return match[1]
    return "http://deb.debian.org/debian"


def build_local_debian() -> None:
    """A Debian bookworm root file system (debootstrap), imported as LOCAL_DEBIAN."""
    debootstrap = shutil.which("debootstrap") or (
        "/usr/sbin/debootstrap" if Path("/usr/sbin/debootstrap").exists() else None)
    if debootstrap is None or os.geteuid() != 0:
        raise SmokeError(
            f"no registry image and no {LOCAL_DEBIAN} image: making one needs root and "
            "debootstrap (`sudo apt-get install debootstrap`, then run `sudo make compose-smoke`), "
            f"or load a Debian bookworm image yourself: `docker tag <image> {LOCAL_DEBIAN}`.")
    mirror = apt_mirror()
    with tempfile.TemporaryDirectory(prefix="phoenix-debian-") as tmp:
        root = Path(tmp) / "root"
        say(f"debootstrap --variant=minbase bookworm from {mirror} (a minute or two)")
        run([debootstrap, "--variant=minbase", "bookworm", str(root), mirror], timeout=900)
        # Downloaded .debs and package lists are not part of the image.
        for leftover in (root / "var/cache/apt/archives").glob("*.deb"):
            leftover.unlink()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        try:
            imported = subprocess.run(["docker", "import", "-", LOCAL_DEBIAN], stdin=tar.stdout,
                                      capture_output=True, text=True, timeout=600)
        finally:
            if tar.stdout is not None:
                tar.stdout.close()
            tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise SmokeError(f"importing the Debian root failed: {imported.stderr.strip()}")


def pull(name: str) -> str | None:
    """`docker pull name`: None once pulled, else why not (the last line it printed)."""
    say(f"pulling {name}")
    pulled = subprocess.run(["docker", "pull", name], capture_output=True, text=True,
                            timeout=600)
    if pulled.returncode == 0:
        return None
    return (pulled.stderr.strip().splitlines() or ["no reason given"])[-1]


def base_image() -> str:
    """The Dockerfile's default base when it is here or can be pulled; else a local stand-in."""
    default = default_base_image()
    if image_exists(default):
        return default
    if (reason := pull(default)) is None:
        return default
    say(f"cannot pull {default} ({reason}); using a local base image {LOCAL_BASE}")
    if not image_exists(LOCAL_BASE):
        if not image_exists(LOCAL_DEBIAN):
            build_local_debian()
        say(f"building {LOCAL_BASE} from docker/local-base.Dockerfile (Debian's python3 3.11)")
        run(["docker", "build", "-f", "docker/local-base.Dockerfile",
             "--build-arg", f"DEBIAN_IMAGE={LOCAL_DEBIAN}", "-t", LOCAL_BASE, "docker"],
            timeout=BUILD_TIMEOUT_S)
    return LOCAL_BASE


def compose_services() -> dict[str, Any]:
    import yaml  # the test extra, installed with the project's venv

    return yaml.safe_load((ROOT / COMPOSE_FILE).read_text())["services"]


def kafka_image_name() -> str:
    """The image of the compose file's kafka service (the topics step uses the same)."""
    return str(compose_services()["kafka"]["image"])


def kafka_jars() -> list[Path]:
    """The jars of the pinned Kafka (broker and tools), fetched by Maven on first use.

    Raises `BrokerPrerequisiteError` without Maven and `BrokerStartError` when the fetch fails.
    """
    from tools.apache_kafka import classpath, kafka_version

    tools_jar = f"kafka-tools-{kafka_version()}.jar"
    jars = [Path(p) for p in classpath().split(":") if p]
    if not any(jar.name == tools_jar for jar in jars):
        raise SmokeError(f"Maven's class path for tools/kafka/pom.xml has no {tools_jar}: "
                         "kafka-topics.sh would not run")
    return jars


def _symlink(src: str | Path, dst: str | Path) -> None:
    Path(dst).symlink_to(Path(src).resolve())


def stage_kafka_context(dest: Path, jars: Sequence[Path], *, link: bool = False) -> Path:
    """The build context of docker/kafka.Dockerfile in `dest` (laid out as its header says).

    `link`: symlinks to the repository's scripts and Maven's jars instead of copies, for a run
    on the host (Docker does not follow symlinks out of a build context: copies for a build).
    """
    place = _symlink if link else shutil.copy2
    shutil.copytree(KAFKA_SCRIPTS, dest, copy_function=place, dirs_exist_ok=True)
    place(ROOT / "tools" / "kafka" / "log4j2.properties", dest / "config" / "log4j2.properties")
    shutil.copy2(KAFKA_DOCKERFILE, dest / "Dockerfile")
    doubled = sorted(name for name, n in collections.Counter(j.name for j in jars).items() if n > 1)
    if doubled:
        raise SmokeError(f"two jars of one name would share libs/: {doubled}")
    (dest / "libs").mkdir()
    for jar in jars:
        place(jar, dest / "libs" / jar.name)
    return dest


def image_label(name: str, label: str) -> str | None:
    shown = subprocess.run(["docker", "image", "inspect", "--format",
                            f'{{{{index .Config.Labels "{label}"}}}}', name],
                           capture_output=True, text=True)
    value = shown.stdout.strip()
    return value if shown.returncode == 0 and value not in ("", "<no value>") else None


def kafka_base(worker_base: str) -> str:
    """The local Debian image where one was made, else the worker's base (Debian bookworm too)."""
    return LOCAL_DEBIAN if image_exists(LOCAL_DEBIAN) else worker_base


def build_kafka_image(name: str, base: str) -> None:
    from tools.apache_kafka import kafka_version
    from tools.broker import BrokerStartError

    wanted = f"apache/kafka:{kafka_version()}"
    if name != wanted:  # the tag would name another version than the jars inside
        raise SmokeError(f"{COMPOSE_FILE} runs {name}, but tools/kafka/pom.xml pins {wanted}")
    try:
        jars = kafka_jars()
    except BrokerStartError as exc:  # no Maven, or the fetch failed
        raise SmokeError(f"no jars for a local {name}: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="phoenix-kafka-image-") as tmp:
        context = stage_kafka_context(Path(tmp) / "context", jars)
        say(f"docker build -t {name} from docker/kafka.Dockerfile on {base} "
            f"({len(jars)} jars, Debian's openjdk-17-jre-headless)")
        run(["docker", "build", "-f", str(context / "Dockerfile"),
             "--build-arg", f"BASE_IMAGE={base}", "--label", f"{LOCAL_BUILD_LABEL}=1",
             "-t", name, str(context)], timeout=BUILD_TIMEOUT_S)


def official_image(name: str) -> str | None:
    """`name (present)` or `name (pulled)` when the official image is here or can be pulled;
    None (said why) when it cannot, or when the one here was built by this tool (built again,
    cached layers: seconds, so that a change to its Dockerfile reaches it)."""
    if image_exists(name) and not image_label(name, LOCAL_BUILD_LABEL):
        return f"{name} (present)"
    if image_exists(name):
        return None
    if (reason := pull(name)) is None:
        return f"{name} (pulled)"
    say(f"cannot pull {name} ({reason})")
    return None


def kafka_image(worker_base: str) -> str:
    """Make the compose file's Kafka image present; says where it came from: the official
    image, else one built here from the same version's jars."""
    name = kafka_image_name()
    if found := official_image(name):
        return found
    build_kafka_image(name, kafka_base(worker_base))
    return f"{name} (built here)"


def prometheus_image(worker_base: str) -> str:
    """Make the compose file's Prometheus image present: the official one, else one built
    here from Debian's prometheus package at the version the monitoring tests run."""
    from tools.prometheus import VERSION

    name = compose_services()["prometheus"]["image"]
    if found := official_image(name):
        return found
    base = kafka_base(worker_base)
    say(f"docker build -t {name} from docker/prometheus.Dockerfile on {base} (Debian's "
        f"prometheus {VERSION})")
    run(["docker", "build", "-f", str(PROMETHEUS_DOCKERFILE), "--build-arg", f"BASE_IMAGE={base}",
         "--build-arg", f"PROMETHEUS_VERSION={VERSION}", "--label", f"{LOCAL_BUILD_LABEL}=1",
         "-t", name, str(PROMETHEUS_DOCKERFILE.parent)], timeout=BUILD_TIMEOUT_S)
    return f"{name} (built here)"


def grafana_image() -> str | None:
    """The compose file's Grafana image if present or pulled; None where it cannot be (no
    Debian package to build one from: its provisioning files are checked by tests instead)."""
    return official_image(compose_services()["grafana"]["image"])


def pinned_requirements() -> list[str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return [*pyproject["project"]["dependencies"], "setuptools>=68"]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheelhouse_complete(requirements: list[str]) -> bool:
    """Every `name==version` pin has its wheel here (`pip wheel` then fetched the rest too)."""
    have = {tuple(_normal(part) for part in wheel.name.split("-")[:2])
            for wheel in WHEELHOUSE.glob("*.whl")}
    pins = [req.split("==") for req in requirements if "==" in req]
    return bool(pins) and all((_normal(n), _normal(v)) in have for n, v in pins)


def fill_wheelhouse(requirements: list[str]) -> int:
    WHEELHOUSE.mkdir(exist_ok=True)
    if not wheelhouse_complete(requirements):
        say(f"pip wheel: {len(requirements)} requirements into {WHEELHOUSE.name}/ "
            "(Linux x86_64 CPython 3.11 wheels, as this host)")
        run([sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "-q",
             "-w", str(WHEELHOUSE), *requirements], timeout=1800)
    return len(list(WHEELHOUSE.glob("*.whl")))


# ----------------------------------------------------------------------------- the stack


class Stack:
    def __init__(self, compose: list[str], *, secured: bool = False) -> None:
        self.secured = secured
        files = [COMPOSE_FILE, SECURED_FILE] if secured else [COMPOSE_FILE]
        self.base = [*compose, "-p", PROJECT, *(arg for f in files for arg in ("-f", f))]

    def __call__(self, *args: str, timeout: float = 300.0, check: bool = True,
                 quiet: bool = True) -> subprocess.CompletedProcess[str]:
        return run([*self.base, *args], timeout=timeout, check=check, quiet=quiet)

    def container(self, service: str) -> str:
        cid = self("ps", "-q", service).stdout.strip()
        if not cid:
            raise SmokeError(f"service {service} has no container")
        return cid.splitlines()[0]

    def state(self, service: str) -> dict[str, Any]:
        out = run(["docker", "inspect", "--format", "{{json .State}}", self.container(service)])
        return json.loads(out.stdout)

    def logs(self, service: str, lines: int = 40) -> str:
        return self("logs", "--no-color", "--tail", str(lines), service, check=False).stdout

    def wait_healthy(self, service: str, timeout_s: float) -> None:
        deadline, last = time.monotonic() + timeout_s, None
        while True:
            state = self.state(service)
            health = (state.get("Health") or {}).get("Status")
            if health != last:
                say(f"{service}: {health or state.get('Status')}")
                last = health
            if health == "healthy":
                return
            if state.get("Status") in ("exited", "dead") or state.get("Restarting"):
                raise SmokeError(f"{service} stopped (exit {state.get('ExitCode')}):\n"
                                 f"{self.logs(service)}")
            if time.monotonic() > deadline:
                raise SmokeError(f"{service} not healthy within {timeout_s:.0f} s:\n"
                                 f"{self.logs(service)}")
            time.sleep(2)

    def wait_exited(self, service: str, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while (state := self.state(service)).get("Status") != "exited":
            if time.monotonic() > deadline:
                raise SmokeError(f"{service} still running after {timeout_s:.0f} s:\n"
                                 f"{self.logs(service)}")
            time.sleep(2)
        return int(state.get("ExitCode", -1))

    def leftovers(self) -> list[str]:
        """Containers and networks of this project that still exist."""
        label = f"label=com.docker.compose.project={PROJECT}"
        containers = run(["docker", "ps", "-a", "-q", "--filter", label]).stdout.split()
        networks = run(["docker", "network", "ls", "-q", "--filter", label]).stdout.split()
        return [f"container {c}" for c in containers] + [f"network {n}" for n in networks]


def producer_plan() -> tuple[int, collections.Counter[str]]:
    """(requests, dead-letter codes expected) of the producer service's own command in
    docker-compose.yml: the producer's events are a function of its arguments."""
    from tools.producer import _parser, generate_events
    from training.world import WorldConfig

    service = compose_services()["producer"]
    argv = [str(part) for part in service["command"]]
    args = _parser().parse_args(argv[argv.index("tools.producer") + 1:])
    events = generate_events(args.seed, args.count, source=args.source,
                             bad_fraction=args.bad_fraction,
                             world_config=WorldConfig(seed=args.world_seed),
                             too_large_bytes=args.too_large_bytes, candidates=args.candidates)
    codes = collections.Counter(code for event in events
                                if (code := event.expected_code) is not None)
    return args.count, codes


def host_client_env(stack: Stack, user: str, directory: Path) -> dict[str, str]:
    """This process's environment plus, on the secured stack, the RANKER_* settings that sign
    a host client in as `user` (the CA and the password copied out of the worker container)."""
    env = dict(os.environ)
    if not stack.secured:
        return env
    for name in ("ca.pem", f"{user}.password"):
        out = stack("exec", "-T", "worker", "cat", f"{SECRETS_IN_CONTAINER}/{name}")
        (directory / name).write_text(out.stdout)
        (directory / name).chmod(0o600)
    return {**env, "RANKER_SECURITY_PROTOCOL": "SASL_SSL", "RANKER_SASL_MECHANISM": "SCRAM-SHA-512",
            "RANKER_SSL_CAFILE": str(directory / "ca.pem"), "RANKER_SASL_USERNAME": user,
            "RANKER_SASL_PASSWORD_FILE": str(directory / f"{user}.password")}


def refusals(stack: Stack, directory: Path) -> list[str]:
    """On the secured stack, what the broker must refuse from the host: a client without
    credentials, and the viewer's user sending requests. Each one it lets in is a problem."""
    send = [sys.executable, "-m", "tools.producer", "--bootstrap", HOST_BOOTSTRAP, "--count",
            "1", "--no-progress"]
    problems = []
    anonymous = subprocess.run(send, cwd=ROOT, capture_output=True, text=True, timeout=120,
                               env={k: v for k, v in os.environ.items()
                                    if not k.startswith("RANKER_")})
    if anonymous.returncode == 0:
        problems.append("a host client without credentials sent a request")
    viewer = subprocess.run(send, cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env=host_client_env(stack, "viewer", directory))
    if viewer.returncode != 2 or "not authorized" not in viewer.stderr:
        problems.append(f"the viewer's user sending requests: exit {viewer.returncode}, "
                        f"{viewer.stderr.strip().splitlines()[-1:]}")
    say(f"refused: a client without credentials (exit {anonymous.returncode}), the viewer's "
        f"user as a producer (exit {viewer.returncode})")
    return problems


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def scraped_workers(expected: int) -> list[dict]:
    """Prometheus' `up` samples of the worker job once it has `expected` of them, all up;
    SmokeError with what it has after MONITORING_TIMEOUT_S."""
    from tools.prometheus import PrometheusError, query

    deadline, samples = time.monotonic() + MONITORING_TIMEOUT_S, []
    while time.monotonic() < deadline:
        try:
            samples = query(PROMETHEUS, 'up{job="ranker"}')
        except (PrometheusError, OSError):
            samples = []
        if len(samples) == expected and all(s["value"][1] == "1" for s in samples):
            return samples
        time.sleep(2)
    raise SmokeError(f"Prometheus scrapes {len(samples)} worker(s), {expected} expected, all "
                     f"up: {samples}")


def empty_panels(with_engagements: bool) -> tuple[list[str], int]:
    """The dashboard's queries that return no data from the stack's Prometheus, and how many
    were not asked (the engagement panels, where no engagement was sent)."""
    from tools import dashboard
    from tools.prometheus import query

    empty, skipped = [], 0
    for title, expr in dashboard.queries(json.loads(dashboard.DASHBOARD_PATH.read_text())):
        if not with_engagements and any(name in expr for name in ENGAGEMENT_METRICS):
            skipped += 1
            continue
        if not query(PROMETHEUS, expr.replace(dashboard.RATE_INTERVAL, "1m")):
            empty.append(f"{title}: {expr}")
    return empty, skipped


def grafana_dashboards() -> list[str]:
    """Titles of the dashboards Grafana provisioned (its search API, as the admin)."""
    request = urllib.request.Request(f"{GRAFANA}/api/search?type=dash-db", headers={
        "Authorization": "Basic YWRtaW46YWRtaW4="})  # admin:admin, Grafana's first-start login
    with urllib.request.urlopen(request, timeout=10) as response:
        return [hit["title"] for hit in json.load(response)]


def worker_uids(cid: str) -> set[int]:
    """uids of the container's processes running `worker.app`, as the host kernel sees them."""
    out = run(["docker", "top", cid, "-eo", "pid,uid,args"]).stdout.splitlines()[1:]
    return {int(line.split(None, 2)[1]) for line in out if "worker.app" in line}


def read_answers(stack: Stack, expected: int) -> tuple[set[str], collections.Counter[str]]:
    """(request ids answered with a result, dead-letter codes), each answer counted once,
    through the viewer service reading both output topics from their start. Once: a request
    answered twice (at-least-once) must not hide one never answered."""
    out = stack("run", "--rm", "--no-deps", "-T", "results", "python", "-m", "tools.viewer",
                "--bootstrap", "kafka:9092", "--json", "--count", str(expected),
                "--idle-timeout-s", "60", timeout=VIEWER_TIMEOUT_S)
    ids: set[str] = set()
    dead: dict[tuple[str, int, int], str] = {}  # a malformed request may have no usable id
    for line in out.stdout.splitlines():
        if not line.startswith("{"):
            continue  # compose's own lines and the viewer's summary
        message = json.loads(line)
        if "error" in message and "source" in message:
            source = message["source"]
            dead[(source["topic"], source["partition"], source["offset"])] = \
                message["error"]["code"]
        else:
            ids.add(message["request_id"])
    return ids, collections.Counter(dead.values())


# ----------------------------------------------------------------------------- main


def smoke(args: argparse.Namespace, timings: Timings) -> str:
    t = time.monotonic()
    engine = check_docker()
    compose = find_compose()
    version = run([*compose, "version"]).stdout.splitlines()[0]
    say(f"Docker Engine {engine}; {version}")
    stack = Stack(compose, secured=args.secured)
    argv = [*stack.base, "--profile", "gpu", "config"]
    if "worker-gpu" not in run(argv).stdout:
        raise SmokeError(f"`{shlex.join(argv)}` rendered no worker-gpu service")
    say("gpu profile renders (`config`, no GPU needed)")

    base = base_image()
    timings.phase("base image", t)
    t = time.monotonic()
    kafka = kafka_image(base)
    say(f"kafka image: {kafka}")
    timings.phase("kafka image", t)
    t = time.monotonic()
    prometheus = prometheus_image(base)
    grafana = grafana_image()
    say(f"prometheus image: {prometheus}; grafana image: "
        f"{grafana or 'none (cannot be pulled: its provisioning is checked by tests only)'}")
    timings.phase("monitoring images", t)
    t = time.monotonic()
    wheels = fill_wheelhouse(pinned_requirements())
    timings.phase(f"wheelhouse ({wheels} wheels)", t)
    t = time.monotonic()
    say(f"docker build -t phoenix-ranker:cpu --build-arg BASE_IMAGE={base} .")
    run(["docker", "build", "-t", "phoenix-ranker:cpu", "--build-arg", f"BASE_IMAGE={base}", "."],
        timeout=BUILD_TIMEOUT_S)
    timings.phase("worker image", t)

    stack("down", "--remove-orphans", timeout=180)  # a previous run interrupted hard
    try:
        t = time.monotonic()
        say(f"up: kafka ({kafka}), topics, worker")
        stack("up", "-d", "--no-build", "worker", timeout=600)
        stack.wait_healthy("worker", HEALTHY_TIMEOUT_S)
        # The worker waited for it to succeed; said here, in case a compose skips the condition.
        if (code := stack.wait_exited("topics", 60)) != 0:
            raise SmokeError(f"topics service exited {code}:\n{stack.logs('topics')}")
        timings.phase("stack up, worker healthy", t)
        stack("up", "-d", "--no-build", "prometheus", *(["grafana"] if grafana else []),
              timeout=300)

        t = time.monotonic()
        say(f"up: producer and results services; host producer to {HOST_BOOTSTRAP}")
        stack("up", "-d", "--no-build", "producer", "results", timeout=300)
        with tempfile.TemporaryDirectory(prefix="compose-smoke-") as tmp:
            truth = Path(tmp) / "host-truth.jsonl"
            sent_from_host = subprocess.run(
                [sys.executable, "-m", "tools.producer", "--bootstrap", HOST_BOOTSTRAP,
                 "--count", str(args.host_requests), "--seed", "17", "--truth", str(truth),
                 "--no-progress",
                 # Histories as engagements, for the dashboard's history panels (the secured
                 # stack's producer user may write requests only).
                 *([] if stack.secured else ["--server-history"])],
                cwd=ROOT, env=host_client_env(stack, "producer", Path(tmp)),
                timeout=PRODUCER_TIMEOUT_S)
            if sent_from_host.returncode != 0:
                raise SmokeError(f"the host producer exited {sent_from_host.returncode}")
            host_ids = {json.loads(line)["request_id"] for line in truth.read_text().splitlines()}
            refused = refusals(stack, Path(tmp)) if stack.secured else []
        code = stack.wait_exited("producer", PRODUCER_TIMEOUT_S)
        if code != 0:
            raise SmokeError(f"producer service exited {code}:\n{stack.logs('producer')}")
        if stack.state("results").get("Status") != "running":
            raise SmokeError(f"results service is not running:\n{stack.logs('results')}")
        timings.phase("requests sent", t)

        t = time.monotonic()
        produced, expected_codes = producer_plan()
        sent = produced + args.host_requests
        ids, codes = read_answers(stack, sent)
        results, dead = len(ids), sum(codes.values())
        host_answered = len(host_ids & ids)
        say(f"read {results} results and {dead} dead letters; {host_answered} of the "
            f"{len(host_ids)} host requests answered")
        timings.phase("answers read", t)
        uids = worker_uids(stack.container("worker"))
        ready, metrics = http_status(f"{METRICS}/ready"), http_status(f"{METRICS}/metrics")
        t = time.monotonic()
        scraped = len(scraped_workers(expected=1))
        empty, not_asked = empty_panels(with_engagements=not stack.secured)
        dashboards = grafana_dashboards() if grafana else None
        say(f"Prometheus scrapes {scraped} worker; dashboard queries without data: "
            f"{empty or 'none'} ({not_asked} not asked); Grafana dashboards: {dashboards}")
        timings.phase("monitoring", t)
    except BaseException:
        setup = ("secrets", "access") if stack.secured else ()
        for service in ("kafka", "topics", *setup, "worker", "producer", "prometheus"):
            print(f"--- {service} logs ---\n{stack.logs(service, 20)}", flush=True)
        raise
    finally:
        t = time.monotonic()
        stack("down", "--remove-orphans", timeout=180, check=False)
        timings.phase("down", t)
    left = stack.leftovers()

    answered = results + dead
    problems = []
    if answered != sent:
        problems.append(f"{answered}/{sent} requests answered")
    if codes != expected_codes:
        problems.append(f"dead letters {dict(codes)}, the producer's malformed requests "
                        f"{dict(expected_codes)}")
    if host_answered != args.host_requests:
        problems.append(f"host producer {host_answered}/{args.host_requests} answered")
    if uids != {WORKER_UID}:
        problems.append(f"worker uid {sorted(uids)} (want {WORKER_UID})")
    if (ready, metrics) != (200, 200):
        problems.append(f"/ready {ready}, /metrics {metrics}")
    if left:
        problems.append(f"left after down: {', '.join(left)}")
    if empty:
        problems.append(f"dashboard queries without data: {'; '.join(empty)}")
    if dashboards is not None and "Phoenix ranking worker" not in dashboards:
        problems.append(f"Grafana did not provision the dashboard (it has {dashboards})")
    problems += refused
    say(f"timings: {timings.line()}")
    verdict = "FAILED: " + "; ".join(problems) + ": " if problems else "OK: "
    return (f"compose-smoke: {verdict}{answered}/{sent} requests answered ({results} results, "
            f"{dead} dead letters{', codes as sent' if codes == expected_codes else ''}), "
            f"worker uid {','.join(map(str, sorted(uids)))}, "
            f"/ready {ready}, /metrics {metrics}, host producer {host_answered}/"
            f"{args.host_requests}, Prometheus scraping {scraped} worker with every dashboard "
            f"query answered{f' ({not_asked} engagement queries not asked)' if not_asked else ''}"
            f", Grafana {'provisioned' if dashboards else 'not run'}, "
            f"down {'clean' if not left else 'NOT clean'}, kafka {kafka}"
            f"{' secured (SASL_SSL/SCRAM, ACLs; refusals checked)' if stack.secured else ''}, "
            f"{timings.total:.0f} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.compose_smoke",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--host-requests", type=int, default=200,
                        help="requests sent from the host through localhost:29092 (200)")
    parser.add_argument("--secured", action="store_true",
                        help=f"the stack on a secured Kafka: {SECURED_FILE} over {COMPOSE_FILE}")
    args = parser.parse_args(argv)
    timings = Timings()
    try:
        line = smoke(args, timings)
    except SmokeError as exc:
        print(f"compose-smoke: FAILED after {timings.total:.0f} s: {exc}", flush=True)
        return 1
    print(line, flush=True)
    return 0 if line.startswith("compose-smoke: OK") else 1


if __name__ == "__main__":
    sys.exit(main())
