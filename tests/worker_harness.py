"""Runs the real worker (`python -m worker.app`, or a test entry wrapping it) as a subprocess
against a broker, with its own topics and consumer group, and reads its readiness.

    worker = WorkerProcess(kafka.bootstrap, topics).start()
    worker.wait_ready()
    ...
    worker.terminate(); assert worker.wait() == 0
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from worker.broker import free_port

ROOT = Path(__file__).resolve().parents[1]
DEMO_CHECKPOINT = ROOT / "checkpoints" / "demo.npz"
# Few shapes keep the start fast; the persistent JAX cache makes later starts faster still.
TEST_BUCKETS = "1,8,64"


@dataclasses.dataclass(frozen=True)
class WorkerTopics:
    requests: str
    results: str
    dead_letters: str

    @classmethod
    def create(cls, kafka, partitions: int = 1) -> "WorkerTopics":
        """Fresh topics on the `kafka` fixture's broker (results/dead letters: 1 partition so
        a test can read them in order)."""
        return cls(kafka.new_topic(partitions, prefix="req"), kafka.new_topic(1, prefix="res"),
                   kafka.new_topic(1, prefix="dlq"))


class WorkerProcess:
    def __init__(self, bootstrap: str, topics: WorkerTopics, *, group_id: str | None = None,
                 extra_args: tuple[str, ...] = (), entry: tuple[str, ...] = ("-m", "worker.app"),
                 env: dict[str, str] | None = None, partitions: int = 1):
        self.bootstrap = bootstrap
        self.topics = topics
        self.group_id = group_id or f"group-{uuid.uuid4().hex[:8]}"
        self.metrics_port = free_port()
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="worker-", suffix=".log", delete=False)
        self.args = [
            sys.executable, *entry,
            "--broker", f"kafka://{bootstrap}",
            "--requests-topic", topics.requests, "--results-topic", topics.results,
            "--dead-letter-topic", topics.dead_letters, "--partitions", str(partitions),
            "--group-id", self.group_id, "--metrics-port", str(self.metrics_port),
            "--checkpoint", str(DEMO_CHECKPOINT), "--batch-buckets", TEST_BUCKETS,
            "--session-timeout-s", "2", "--max-batch-wait-ms", "5", *extra_args,
        ]
        self.env = {**os.environ, "RANKER_JAX_CACHE_DIR": str(ROOT / ".cache" / "jax"),
                    **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.env, cwd=ROOT, start_new_session=True)
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/ready",
                                        timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float = 60.0) -> float:
        """Seconds from process start to ready; raises with the log tail on timeout/exit."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            if self.ready():
                self.ready_at = time.monotonic()
                return self.ready_at - self.started_at
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready after {timeout_s} s:\n{self.log()}")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics",
                                    timeout=2) as response:
            return response.read().decode()

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
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)

    def wait(self, timeout_s: float = 60.0) -> int:
        return self.proc.wait(timeout=timeout_s)

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")[-6000:]

    def close(self) -> None:
        self.kill()
        if self.proc:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        os.unlink(self._log.name)
