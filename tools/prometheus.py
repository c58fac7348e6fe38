"""Prometheus and promtool from Debian's `prometheus` package, for the monitoring tests.

The package is fetched with `apt-get download` at the version pinned here (the one Debian 12
serves) and unpacked, not installed, under `.cache/prometheus/<version>/`; the first call
fetches it, later calls reuse it. The alert rules' unit tests run its `promtool`, the
dashboard's query test its `prometheus` against a live worker (`PrometheusServer`), and
`query` asks any Prometheus (the compose stack's too) through its HTTP API.

    tools = prometheus_binaries()
    subprocess.run([tools.promtool, "check", "rules", "monitoring/alerts.yml"], check=True)
    with PrometheusServer(["127.0.0.1:9100"], directory) as server:
        query(server.url, "sum(rate(ranker_results_total[15s]))")
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from tools.broker import free_port
from tools.launcher import ROOT
from worker.errors import WorkerError

PACKAGE = "prometheus"
VERSION = "2.42.0+ds-5+deb12u1"  # Debian 12's (bookworm) prometheus
CACHE_DIR = ROOT / ".cache" / "prometheus"
_FETCH_TIMEOUT_S = 600.0


class PrometheusMissing(WorkerError, RuntimeError):
    """Debian's prometheus package could not be fetched or unpacked (the message says why)."""


@dataclasses.dataclass(frozen=True)
class PrometheusBinaries:
    prometheus: Path
    promtool: Path
    version: str = VERSION


def prometheus_binaries(cache_dir: Path = CACHE_DIR) -> PrometheusBinaries:
    """The unpacked package's `prometheus` and `promtool`, fetched on the first call."""
    home = cache_dir / VERSION.replace("+", "_")
    found = PrometheusBinaries(home / "usr" / "bin" / "prometheus",
                               home / "usr" / "bin" / "promtool")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:  # one fetch, however many tests ask at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (found.prometheus.exists() and found.promtool.exists()):
            _fetch(home)
    return found


def _fetch(home: Path) -> None:
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise PrometheusMissing(f"{tool} not found: the monitoring tests take Prometheus from "
                                    f"Debian's package {PACKAGE}={VERSION}")
    with tempfile.TemporaryDirectory(dir=home.parent) as download:
        fetched = subprocess.run(["apt-get", "download", f"{PACKAGE}={VERSION}"], cwd=download,
                                 capture_output=True, text=True, timeout=_FETCH_TIMEOUT_S)
        packages = list(Path(download).glob(f"{PACKAGE}_*.deb"))
        if fetched.returncode != 0 or not packages:
            raise PrometheusMissing(f"apt-get download {PACKAGE}={VERSION} failed "
                                    f"({fetched.returncode}): {fetched.stderr.strip()[-400:]}")
        unpacked = Path(download) / "root"
        subprocess.run(["dpkg-deb", "-x", str(packages[0]), str(unpacked)], check=True,
                       timeout=_FETCH_TIMEOUT_S)
        shutil.rmtree(home, ignore_errors=True)
        unpacked.rename(home)


def query(url: str, expr: str, at: float | None = None, timeout_s: float = 10.0) -> list[dict]:
    """The instant vector (or scalar, as one sample) `expr` evaluates to at `at` (epoch
    seconds; default now) on the Prometheus at `url`: a list of {"metric", "value"}.
    Raises PrometheusError with Prometheus' own message on a bad query."""
    params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode(params)}",
                                    timeout=timeout_s) as response:
            body = json.load(response)
    except urllib.error.HTTPError as error:  # 400/422: a bad query, said in the body
        body = json.load(error)
    if body.get("status") != "success":
        raise PrometheusError(f"{expr!r}: {body.get('errorType')}: {body.get('error')}")
    data = body["data"]
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": data["result"]}]
    return data["result"]


class PrometheusError(WorkerError, RuntimeError):
    """Prometheus refused a query or did not start."""


class PrometheusServer:
    """Debian's `prometheus` scraping `targets` (host:port of /metrics) every
    `scrape_interval_s` (or running `config`, a whole configuration), its data in
    `directory`; a context manager."""

    def __init__(self, targets: Sequence[str], directory: Path, *,
                 scrape_interval_s: float = 1.0, rule_files: Sequence[Path] = (),
                 config: dict | None = None):
        self.targets = list(targets)
        self.directory = Path(directory)
        self.scrape_interval_s = scrape_interval_s
        self.rule_files = list(rule_files)
        self._config = config  # a whole configuration instead (targets etc. then unused)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None

    def config(self) -> dict:
        if self._config is not None:
            return self._config
        interval = f"{self.scrape_interval_s:g}s"
        return {"global": {"scrape_interval": interval, "evaluation_interval": interval},
                "rule_files": [str(path) for path in self.rule_files],
                "scrape_configs": [{"job_name": "ranker",
                                    "static_configs": [{"targets": self.targets}]}]}

    def start(self, timeout_s: float = 30.0) -> "PrometheusServer":
        binaries = prometheus_binaries()
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "prometheus.yml"
        config.write_text(json.dumps(self.config()))  # YAML is a superset of JSON
        self._log = open(self.directory / "prometheus.log", "w")
        self._proc = subprocess.Popen(
            [str(binaries.prometheus), f"--config.file={config}",
             f"--storage.tsdb.path={self.directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise PrometheusError(f"prometheus did not start:\n{self.log()[-2000:]}")
            time.sleep(0.2)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        return query(self.url, expr, at)

    def log(self) -> str:
        return (self.directory / "prometheus.log").read_text(errors="replace")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc is not None:
            self._log.close()

    def __enter__(self) -> "PrometheusServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
