"""A broker that dies: the worker on a three-node Apache Kafka cluster (KRaft, replication 3,
`min.insync.replicas=2`) under a steady load, while a node is SIGKILLed and restarted: the
leader of a request partition, then the leader of the results partition, then the active
controller. Each time nothing is lost, every request is answered (once, under exactly-once),
the worker never exits, and the pause in results is reported (run with -s to see it).

These tests always run on Apache Kafka (they start their own cluster), whatever TEST_BROKER
says.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from tests.conftest import KAFKA_TEST_CONFIG
from tests.librdkafka_helpers import Reader, Record
from tests.netns_hosts import TestHosts
from tests.test_reliability import Load, request_ids, valid_requests
from tests.worker_harness import WorkerProcess, WorkerTopics
from tools.broker import port_free
from tools.kafka_cluster import KafkaCluster
from tools.launcher import ROOT
from worker import codec

pytestmark = [pytest.mark.kafka, pytest.mark.cluster]

RATE = 40.0  # requests/s, steady, for the whole test
DOWN_S = 8.0  # how long a killed node stays down


@dataclasses.dataclass
class Fault:
    what: str
    node: int
    killed_at: float
    restarted_at: float = 0.0
    settled_at: float = 0.0  # 10 s after the restart
    pause_s: float = 0.0  # longest gap between results from the kill to settled_at

    def report(self, load: Load, answers: collections.Counter, copies: collections.Counter
               ) -> str:
        """What happened to the requests sent from the kill to `settled_at`."""
        ids = request_ids(load.sent_between(self.killed_at, self.settled_at))
        lost = len(ids - set(answers))
        duplicates = _duplicates(answers, copies, ids)
        return (f"node {self.node} ({self.what}) killed for {DOWN_S:.0f} s: {len(ids)} sent "
                f"from the kill to 10 s after the restart, {len(ids) - lost} answered, {lost} "
                f"lost, {duplicates} duplicates; results paused {self.pause_s:.1f} s at most")


@pytest.fixture(scope="module")
def cluster() -> Iterator[KafkaCluster]:
    with KafkaCluster(3, config=KAFKA_TEST_CONFIG) as started:
        yield started


def _topics(cluster: KafkaCluster) -> WorkerTopics:
    tag = uuid.uuid4().hex[:8]
    topics = WorkerTopics(f"req-{tag}", f"res-{tag}", f"dlq-{tag}", f"eng-{tag}")
    cluster.create_topics({topics.requests: 2, topics.results: 1, topics.dead_letters: 1,
                           topics.engagements: 2})
    return topics


def _longest_gap(records: list[Record], start: float, end: float) -> float:
    times = [start] + [r.received_s for r in records if start <= r.received_s <= end] + [end]
    return max(b - a for a, b in zip(times, times[1:]))


def _kill_and_restart(cluster: KafkaCluster, what: str, node: int, worker: WorkerProcess,
                      reader: Reader, results: str) -> Fault:
    fault = Fault(what, node, time.monotonic())
    cluster.node(node).kill()
    time.sleep(DOWN_S)  # the outage itself: its length is the point, nothing to wait for
    assert worker.proc.poll() is None, worker.log()
    cluster.node(node).start()
    fault.restarted_at = time.monotonic()
    _wait(lambda: all(len(cluster.in_sync(topic, p)) == 3 for topic, p in ((results, 0),)),
          60, f"node {node} back in sync")
    settle = fault.settled_at = fault.restarted_at + 10
    _wait(lambda: time.monotonic() > settle, 30, "results after the restart")
    fault.pause_s = _longest_gap(reader.records([results]), fault.killed_at, settle)
    return fault


def _group_coordinated_by(cluster: KafkaCluster, node: int) -> str:
    """A fresh group id whose coordinator is `node` (a group's coordinator is the leader of
    the offsets topic's partition its id hashes to: about one id in three)."""
    for _ in range(100):
        group = f"group-{uuid.uuid4().hex[:8]}"
        if cluster.coordinator_of(group) == node:
            return group
    raise AssertionError(f"no group id coordinated by node {node} in 100 tries")


def _wait(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_a_node_dies_under_load_and_nothing_is_lost(cluster: KafkaCluster, guarantee: str):
    topics = _topics(cluster)
    bootstrap = ";".join(node.bootstrap_servers for node in cluster.nodes)
    worker = WorkerProcess(bootstrap, topics, partitions=2,
                           extra_args=("--processing-guarantee", guarantee))
    try:
        worker.start().wait_ready()
        messages = valid_requests(seed=41, count=int(RATE * 400), prefix=f"{guarantee}-")
        with Reader(cluster.bootstrap_servers, _read(topics)) as reader:
            load = Load(cluster.bootstrap_servers, topics.requests, messages, rate=RATE,
                        idempotent=True).start()
            _wait(lambda: len(reader.records(_out(topics))) >= 2 * RATE, 60,
                  "results before the faults")
            faults = []
            for what, leader in (
                    ("leader of requests[0]", lambda: cluster.leader_of(topics.requests, 0)),
                    ("leader of results[0]", lambda: cluster.leader_of(topics.results, 0)),
                    ("active controller", cluster.active_controller)):
                faults.append(_kill_and_restart(cluster, what, leader(), worker, reader,
                                                topics.results))
            load.stop()
            load.join()
            assert not load.failed, load.failed[:3]
            sent = request_ids([s.message for s in load.acked])
            _wait(lambda: sent <= _ids(reader, topics), 120, f"answers to {len(sent)} requests")
            time.sleep(2.0)  # a late duplicate would arrive within a few commit intervals
            answers = collections.Counter(_all_ids(reader, topics))
            copies = _request_copies(reader, topics)
        assert worker.proc.poll() is None, worker.log()
    finally:
        worker.close()
    duplicates = _duplicates(answers, copies, sent)
    print(f"\n{guarantee}: {len(sent)} sent, {len(sent & set(answers))} answered, "
          f"{len(sent - set(answers))} lost, {duplicates} duplicates "
          f"({_written_twice(copies)} requests written twice by the load)")
    for fault in faults:
        print(f"  {fault.report(load, answers, copies)}")
    assert not sent - set(answers)
    assert not [a for a in answers if a.startswith("dead:")], "requests dead-lettered"
    if guarantee == "exactly_once":
        assert duplicates == 0


def _read(topics: WorkerTopics) -> list[str]:
    """What the tests' reader follows: the worker's input (to count each request's copies)
    and its output."""
    return [topics.requests, *_out(topics)]


def _out(topics: WorkerTopics) -> list[str]:
    return [topics.results, topics.dead_letters]


def _request_copies(reader: Reader, topics: WorkerTopics) -> collections.Counter:
    """How many records of the requests topic carry each request id."""
    return collections.Counter(str(codec.decode_message(r.value).get("request_id"))
                               for r in reader.records([topics.requests]))


def _duplicates(answers: collections.Counter, copies: collections.Counter,
                ids: set[str]) -> int:
    """Answers to `ids` beyond one per copy of the request in the input: a request written
    twice is rightly answered twice."""
    return sum(max(0, answers[i] - max(1, copies[i])) for i in ids)


def _written_twice(copies: collections.Counter) -> int:
    return sum(1 for n in copies.values() if n > 1)


def _all_ids(reader: Reader, topics: WorkerTopics) -> list[str]:
    ids = []
    for record in reader.records(_out(topics)):
        message = codec.decode_message(record.value)
        dead = "error" in message
        ids.append(("dead:" if dead else "") + str(message.get("request_id")))
    return ids


def _ids(reader: Reader, topics: WorkerTopics) -> set[str]:
    return set(_all_ids(reader, topics))


@pytest.mark.timeout(180)
def test_the_broker_tool_runs_a_three_node_cluster(tmp_path):
    """`python -m tools.broker --kind kafka --nodes 3`: three nodes on PORT..PORT+2, every
    ranking topic on all three, stopped cleanly by SIGTERM."""
    port = next(p for p in range(20000, 60000, 7)
                if all(port_free("127.0.0.1", p + i) for i in range(3)))
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.broker", "--kind", "kafka", "--nodes", "3", "--port",
         str(port), "--partitions", "2", "--data-dir", str(tmp_path / "data")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = process.stdout.readline()
        assert "(3 nodes) ready" in line, line + process.stdout.read(4000)
        bootstrap = ",".join(f"127.0.0.1:{port + i}" for i in range(3))

        async def describe() -> tuple[int, list]:
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
            await admin.start()
            try:
                brokers = (await admin.describe_cluster())["brokers"]
                return len(brokers), await admin.describe_topics(["ranking-requests"])
            finally:
                await admin.close()

        brokers, described = asyncio.run(describe())
        assert brokers == 3
        assert [len(p["replicas"]) for p in described[0]["partitions"]] == [3, 3]
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0]
    assert process.returncode == 0, output
    assert "broker stopped" in output


@pytest.mark.timeout(420)
@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_cut_off_from_a_leader_for_20s_degraded_then_caught_up(guarantee: str):
    """The cluster and the worker on hosts of their own (network namespaces): the worker's
    host loses its network path to the node leading requests[0] for 20 s while both keep
    running. That node also coordinates the worker's group (the group id is chosen so): the
    worker's session expires and it joins again after the heal, keeping its partitions (the
    case that once answered 139 requests twice under exactly-once). Nothing is lost, /ready
    says degraded (naming that node) meanwhile, and after the heal the same worker process
    catches up."""
    names = ["k1", "k2", "k3", "worker"]
    with TestHosts(names) as hosts, KafkaCluster(
            3, hosts=[hosts.address(n) for n in names[:3]],
            netns=[hosts.netns(n) for n in names[:3]], config=KAFKA_TEST_CONFIG) as cluster:
        topics = _topics(cluster)
        leader = cluster.leader_of(topics.requests, 0)
        group = _group_coordinated_by(cluster, leader)
        bootstrap = ";".join(node.bootstrap_servers for node in cluster.nodes)
        worker = WorkerProcess(bootstrap, topics, group_id=group, partitions=2,
                               netns=hosts.netns("worker"), http_host=hosts.address("worker"),
                               extra_args=("--processing-guarantee", guarantee))
        try:
            worker.start().wait_ready()
            pid = worker.proc.pid
            messages = valid_requests(seed=43, count=int(RATE * 400), prefix=f"cut-{guarantee}-")
            with Reader(cluster.bootstrap_servers, _read(topics)) as reader:
                load = Load(cluster.bootstrap_servers, topics.requests, messages,
                            rate=RATE, idempotent=True).start()
                _wait(lambda: len(reader.records(_out(topics))) >= 2 * RATE, 60,
                      "results before the cut")
                assert cluster.leader_of(topics.requests, 0) == leader
                assert cluster.coordinator_of(group) == leader
                cut_at = time.monotonic()
                hosts.cut("worker", f"k{leader}")
                said = []
                while time.monotonic() - cut_at < 20:
                    status, body = worker.get("/ready")
                    if status != 200:
                        said.append(body)
                    time.sleep(0.5)
                hosts.heal("worker", f"k{leader}")
                healed_at = time.monotonic()
                _wait(worker.ready, 60, "ready again after the heal")
                ready_again_s = time.monotonic() - healed_at
                time.sleep(3)  # load after the heal, too
                load.stop()
                load.join()
                assert not load.failed, load.failed[:3]
                sent = request_ids([s.message for s in load.acked])
                _wait(lambda: sent <= _ids(reader, topics), 120, f"answers to {len(sent)} requests")
                caught_up_s = time.monotonic() - healed_at
                answers = collections.Counter(_all_ids(reader, topics))
                copies = _request_copies(reader, topics)
                during = request_ids(load.sent_between(cut_at, healed_at))
                pause = _longest_gap(reader.records([topics.results]), cut_at, healed_at + 5)
            assert worker.proc.pid == pid and worker.proc.poll() is None, worker.log()
        finally:
            worker.close()
    duplicates = _duplicates(answers, copies, sent)
    print(f"\n{guarantee}, cut from node {leader} (leader of requests[0], the group's "
          f"coordinator) for 20 s: "
          f"{len(sent)} sent, {len(sent & set(answers))} answered, "
          f"{len(sent - set(answers))} lost, {duplicates} duplicates "
          f"({_written_twice(copies)} requests written twice by the load); results paused "
          f"{pause:.1f} s at most; ready again {ready_again_s:.1f} s and every request "
          f"answered {caught_up_s:.1f} s after the heal; of the {len(during)} sent during the "
          f"cut, {len(during - set(answers))} lost, "
          f"{_duplicates(answers, copies, during)} duplicates")
    degraded = [body for body in said if "degraded" in body and f"node {leader}" in body]
    assert degraded, f"/ready never said degraded naming node {leader}: {said[:3]}"
    assert not sent - set(answers)
    if guarantee == "exactly_once":
        assert duplicates == 0
