"""The worker as a child process (`python -m worker.app`): for the demo's tools, the
benchmark, the soak run and the tests. Readiness and metrics are read over its HTTP port.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping, Sequence

from tools.broker import free_port
from worker.errors import WorkerError

ROOT = Path(__file__).resolve().parents[1]


class WorkerProcessError(WorkerError, RuntimeError):
    """The worker exited or did not become ready; the message ends with its log tail."""


class WorkerProcess:
    """One worker on `bootstrap` with the given topics, its own metrics port and log file."""

    def __init__(self, bootstrap: str, *, requests: str, results: str, dead_letters: str,
                 group_id: str, checkpoint: str, partitions: int = 1,
                 extra_args: Sequence[str] = (), entry: Sequence[str] = ("-m", "worker.app"),
                 env: Mapping[str, str] | None = None, log_prefix: str = "worker-",
                 metrics_port: int | None = None, engagements: str | None = None,
                 netns: str | None = None, http_host: str = "127.0.0.1"):
        """`netns`: run it in that network namespace (`ip netns exec`), reached at
        `http_host` there."""
        self.metrics_port = metrics_port or free_port()
        self.http_host = http_host
        self.log_path = Path(tempfile.mkstemp(prefix=log_prefix, suffix=".log")[1])
        self.args = [
            *(("ip", "netns", "exec", netns) if netns else ()), sys.executable, *entry, "--broker", f"kafka://{bootstrap}",
            "--requests-topic", requests, "--results-topic", results,
            "--dead-letter-topic", dead_letters, "--partitions", str(partitions),
            "--group-id", group_id, "--metrics-port", str(self.metrics_port),
            "--checkpoint", str(checkpoint),
            *(("--engagements-topic", engagements) if engagements else ()), *extra_args]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.started_at: float | None = None
        self.ready_after_s = float("nan")

    def start(self) -> "WorkerProcess":
        self.started_at = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, cwd=ROOT, start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str) -> tuple[int, str]:
        """(HTTP status, body) of a GET on the worker's port; status 0 when unreachable."""
        try:
            with urllib.request.urlopen(f"http://{self.http_host}:{self.metrics_port}{path}",
                                        timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:  # e.g. 503 from /ready, with its reason
            return error.code, error.read().decode()
        except (urllib.error.URLError, OSError):
            return 0, ""

    def ready(self) -> bool:
        return self.get("/ready")[0] == 200

    def wait_ready(self, timeout_s: float = 120.0) -> float:
        """Seconds from start to ready; `WorkerProcessError` if it exits or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise WorkerProcessError(
                    f"the worker exited with {self.proc.returncode}:\n{self.log()}")
            if self.ready():
                self.ready_after_s = time.monotonic() - self.started_at
                return self.ready_after_s
            time.sleep(0.1)
        raise WorkerProcessError(f"the worker was not ready after {timeout_s} s:\n{self.log()}")

    def metrics(self) -> str:
        status, text = self.get("/metrics")
        if status != 200:
            raise WorkerProcessError(f"GET /metrics answered {status}:\n{self.log()}")
        return text

    def metric(self, name: str) -> float:
        """Sum of every sample of `name` (all labels)."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith(name) and not line.startswith("#"):
                head, value = line.rsplit(" ", 1)
                if head == name or head.startswith(name + "{"):
                    total += float(value)
        return total

    def terminate(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)

    def wait(self, timeout_s: float = 60.0) -> int:
        return self.proc.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; returns the exit code."""
        if self.proc is None:
            return None
        self.terminate()
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()
        return self.proc.returncode

    def log(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def close(self) -> None:
        """Kills it if still running and removes the log file."""
        self.kill()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.log_path.unlink(missing_ok=True)
