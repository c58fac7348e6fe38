"""Prometheus and promtool from Debian's `prometheus` package, for the monitoring tests.

The package is fetched with `apt-get download` at the version pinned here (the one Debian 12
serves) and unpacked, not installed, under `.cache/prometheus/<version>/`; the first call
fetches it, later calls reuse it. The alert rules' unit tests run its `promtool`, the
dashboard's query test its `prometheus` against a live worker.

    tools = prometheus_binaries()
    subprocess.run([tools.promtool, "check", "rules", "monitoring/alerts.yml"], check=True)
"""

from __future__ import annotations

import dataclasses
import fcntl
import shutil
import subprocess
import tempfile
from pathlib import Path

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
