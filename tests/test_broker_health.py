"""worker.broker_health against a real broker: a frozen broker (SIGSTOP: its connections stay
open but nothing is answered, as when the network path is cut) is reported by node and by the
partitions it leads once it has been silent for the timeout, and forgotten when it answers."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import TEST_TOPIC_CONFIG, new_broker
from worker.broker_health import BrokerHealth
from worker.handler import WorkerState
from worker.topics import TopicSpec

pytestmark = [pytest.mark.kafka, pytest.mark.kafka_contract]


@pytest.mark.timeout(120)
def test_a_silent_leader_makes_the_worker_degraded_until_it_answers():
    with new_broker() as broker:
        broker.create_topics([TopicSpec("requests", 2, TEST_TOPIC_CONFIG)])
        health = BrokerHealth({"bootstrap_servers": broker.bootstrap_servers}, ["requests"],
                              timeout_s=1.0)
        state = WorkerState(compiled=True, assigned=True, degraded=health.reason)

        async def run() -> tuple[list, str, list, tuple]:
            try:
                assert await health.check() == [] and state.readiness() == (True, "ready")
                broker.pause()
                try:
                    deadline = time.monotonic() + 30
                    while not (silent := await health.check()):
                        assert time.monotonic() < deadline, "the frozen broker was never reported"
                    frozen = state.readiness()
                finally:
                    broker.resume()
                deadline = time.monotonic() + 30
                while (after := await health.check()) and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                return silent, frozen, after, state.readiness()
            finally:
                await health.close()

        silent, frozen, after, ready = asyncio.run(run())
    assert [s.leads for s in silent] == [("requests[0]", "requests[1]")]
    assert frozen[0] is False
    assert frozen[1].startswith(f"degraded: broker node {silent[0].node_id} "
                                f"({broker.bootstrap_servers}) has not answered for ")
    assert frozen[1].endswith("it leads requests[0], requests[1]")
    assert after == [] and ready == (True, "ready")
