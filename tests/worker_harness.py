"""Runs the real worker (`python -m worker.app`, or a test entry wrapping it) as a subprocess
against a broker, with its own topics and consumer group, and reads its readiness.

    worker = WorkerProcess(kafka.bootstrap, topics).start()
    worker.wait_ready()
    ...
    worker.terminate(); assert worker.wait() == 0
"""

from __future__ import annotations

import dataclasses
import time
import uuid

from tests.conftest import TEST_BROKER
from tools import launcher as worker_process
from tools.broker.kinds import broker_class
from tools.launcher import ROOT

DEMO_CHECKPOINT = ROOT / "checkpoints" / "demo.npz"
# Few shapes keep the start fast; the persistent JAX cache makes later starts faster still.
# Test traffic has 8 candidates per request unless a test says otherwise (and raises the cap):
# a cap of 64 compiles widths 8..64 only.
TEST_BUCKETS = "1,8,64"
TEST_MAX_CANDIDATES = "64"
# What the test broker needs of a worker (the embedded broker: a short fetch wait).
_FETCH_WAIT_MS = broker_class(TEST_BROKER).fetch_wait_ms
BROKER_ENV = {"RANKER_FETCH_MAX_WAIT_MS": str(_FETCH_WAIT_MS)} if _FETCH_WAIT_MS else {}


@dataclasses.dataclass(frozen=True)
class WorkerTopics:
    requests: str
    results: str
    dead_letters: str
    engagements: str = ""  # default: its own, named after the request topic (the worker makes it)

    def __post_init__(self) -> None:
        if not self.engagements:
            object.__setattr__(self, "engagements", f"eng-{self.requests}")

    @classmethod
    def create(cls, kafka, partitions: int = 1) -> "WorkerTopics":
        """Fresh topics on the `kafka` fixture's broker (results/dead letters: 1 partition so
        a test can read them in order; engagements: the request topic's partitions)."""
        return cls(kafka.new_topic(partitions, prefix="req"), kafka.new_topic(1, prefix="res"),
                   kafka.new_topic(1, prefix="dlq"), kafka.new_topic(partitions, prefix="eng"))


class WorkerProcess(worker_process.WorkerProcess):
    """`tools.launcher.WorkerProcess` with test defaults: fresh group, the demo checkpoint,
    few bucket shapes, a short session and the repo's JAX compilation cache."""

    def __init__(self, bootstrap: str, topics: WorkerTopics, *, group_id: str | None = None,
                 extra_args: tuple[str, ...] = (), entry: tuple[str, ...] = ("-m", "worker.app"),
                 env: dict[str, str] | None = None, partitions: int = 1,
                 **launch: str):
        super().__init__(
            bootstrap, requests=topics.requests, results=topics.results,
            dead_letters=topics.dead_letters, engagements=topics.engagements,
            group_id=group_id or f"group-{uuid.uuid4().hex[:8]}", checkpoint=DEMO_CHECKPOINT,
            partitions=partitions, entry=entry,
            extra_args=("--batch-buckets", TEST_BUCKETS, "--max-candidates", TEST_MAX_CANDIDATES,
                        "--session-timeout-s", "2",
                        "--max-batch-wait-ms", "5", *extra_args),
            env={"RANKER_JAX_CACHE_DIR": str(ROOT / ".cache" / "jax"), **BROKER_ENV,
                 **(env or {})}, **launch)
        self.bootstrap = bootstrap
        self.topics = topics
        self.group_id = self.args[self.args.index("--group-id") + 1]


def wait_for_metric(worker, name: str, value: float, timeout_s: float = 30.0) -> None:
    """Waits until `worker`'s metric `name` reaches `value`. A batch's metrics are observed
    once its answers are acked, so a reader can see the answers first."""
    deadline = time.monotonic() + timeout_s
    while worker.metric(name) < value:
        assert time.monotonic() < deadline, f"{name} = {worker.metric(name)}, waited for {value}"
        time.sleep(0.1)
