"""The consumer tuning reaches Faust's aiokafka consumer, and the Faust/aiokafka/mode internals
the fixes in worker/upstream/ rely on are still what they were written against.

If a test in the "pin" group fails after an upgrade, re-read Faust's
faust/transport/drivers/aiokafka.py (AIOKafkaConsumerThread._create_worker_consumer) and
aiokafka's AIOKafkaConsumer.start(), then update the fix in worker/upstream/ that the test
names, the pins (worker/upstream/versions.py) and these tests.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import aiokafka
import faust
import pytest
import uvloop
from faust.app import base as faust_app_base
from faust.transport import base as faust_transport_base
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode import threads as mode_threads

from tests.conftest import Kafka
from worker.upstream import (changelog_end_offsets, fetch_wait, inline_delivery, stale_fetch,
                             tuned_app, versions)
from worker.upstream.fetch_wait import ConsumerTuning
from worker.upstream.tuned_app import TunedApp, TunedConsumer, TunedConsumerThread, TunedTransport
from worker.upstream.versions import KafkaTuningError

REPO = Path(__file__).resolve().parents[1]
_APP_OPTIONS = dict(
    env={},  # never let the test environment's BROKER_URL etc. reach Faust
    web_enabled=False,
    topic_disable_leader=True,
    table_standby_replicas=0,
    broker_session_timeout=2,
    broker_heartbeat_interval=0.5,
)


# ---- pin: versions and the Faust/aiokafka internals the override depends on ------------------


def test_pinned_versions_are_installed() -> None:
    assert faust.__version__ == versions.SUPPORTED_FAUST_VERSION
    assert aiokafka.__version__ == versions.SUPPORTED_AIOKAFKA_VERSION


@pytest.mark.parametrize(
    ("module", "version", "expected"),
    [
        (faust, "0.16.0", r"faust-streaming 0\.16\.0 \(need 0\.15\.3\)"),
        (aiokafka, "0.15.0", r"aiokafka 0\.15\.0 \(need 0\.14\.0\)"),
    ],
    ids=["faust", "aiokafka"],
)
def test_other_versions_are_refused_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, module: object, version: str, expected: str
) -> None:
    monkeypatch.setattr(module, "__version__", version)
    with pytest.raises(KafkaTuningError, match=expected) as raised:
        versions.check_versions()
    assert "worker/upstream/" in str(raised.value)  # says where to look


def test_faust_still_hard_codes_the_fetch_wait_in_the_overridden_method() -> None:
    method = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer
    assert list(inspect.signature(method).parameters) == ["self", "transport"]
    source = inspect.getsource(method)
    assert "aiokafka.AIOKafkaConsumer(" in source
    assert f"fetch_max_wait_ms={fetch_wait.FAUST_HARDCODED_FETCH_MAX_WAIT_MS}," in source


def test_faust_hooks_used_to_install_the_tuned_classes_are_unchanged() -> None:
    # App.transport builds the consumer transport through App._new_transport() ...
    transport_getter = inspect.getsource(faust_app_base.App.transport.fget)
    assert "self._new_transport()" in transport_getter
    assert list(inspect.signature(faust_app_base.App._new_transport).parameters) == ["self"]
    # ... the transport builds its consumer from the `Consumer` class attribute ...
    assert "self.Consumer(" in inspect.getsource(faust_transport_base.Transport.create_consumer)
    # ... which builds its thread through _new_consumer_thread(), the method TunedConsumer
    # overrides, and the thread builds the aiokafka consumer in _create_consumer().
    delegate_init = inspect.getsource(faust_consumer.ThreadDelegateConsumer.__init__)
    assert "self._new_consumer_thread()" in delegate_init
    thread_new = inspect.getsource(faust_aiokafka.Consumer._new_consumer_thread)
    assert "AIOKafkaConsumerThread(self, loop=self.loop, beacon=self.beacon)" in thread_new
    create = inspect.getsource(faust_aiokafka.AIOKafkaConsumerThread._create_consumer)
    assert "self._create_worker_consumer(transport)" in create


def test_aiokafka_builds_its_fetcher_from_the_attribute_we_set() -> None:
    source = inspect.getsource(aiokafka.AIOKafkaConsumer.start)
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in source

    async def construct() -> aiokafka.AIOKafkaConsumer:
        return aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", fetch_max_wait_ms=123)

    consumer = asyncio.run(construct())
    assert consumer._fetch_max_wait_ms == 123
    assert consumer._fetcher is None  # built later, in start(), which is why setting it works


# ---- the kwargs that reach the aiokafka consumer (no broker needed: nothing is started) -------


def _worker_consumer_of(app: faust.App) -> aiokafka.AIOKafkaConsumer:
    async def build() -> aiokafka.AIOKafkaConsumer:
        thread = app.consumer._thread  # the consumer thread Faust would start
        return thread._create_worker_consumer(app.transport)

    return asyncio.run(build())


def test_tuned_app_gives_the_consumer_our_fetch_wait_and_keeps_fausts_settings() -> None:
    app = TunedApp(
        "tuning-unit",
        broker="kafka://127.0.0.1:1",
        consumer_tuning=ConsumerTuning(fetch_max_wait_ms=37),
        **_APP_OPTIONS,
    )
    assert isinstance(app.transport, TunedTransport)
    assert isinstance(app.consumer, TunedConsumer)
    assert isinstance(app.consumer._thread, TunedConsumerThread)
    consumer = _worker_consumer_of(app)
    assert consumer._fetch_max_wait_ms == 37
    # Everything else still comes from Faust's own settings.
    assert consumer._group_id == "tuning-unit"
    assert consumer._session_timeout_ms == 2000
    assert consumer._heartbeat_interval_ms == 500
    assert consumer._enable_auto_commit is False


@pytest.mark.parametrize("make_loop", [uvloop.new_event_loop, asyncio.new_event_loop],
                         ids=["uvloop", "asyncio"])
def test_the_consumer_thread_runs_the_same_kind_of_loop_as_the_app(make_loop) -> None:
    loop = make_loop()
    asyncio.set_event_loop(loop)
    try:
        app = TunedApp("tuning-loop", broker="kafka://127.0.0.1:1", loop=loop, **_APP_OPTIONS)
        # mode caches a thread's first loop; the worker sets its loop before any, a test may not.
        app.transport.loop = loop
        thread = app.consumer._thread
        assert thread.parent_loop is loop
        assert type(thread.thread_loop) is type(loop) and thread.thread_loop is not loop
        # Pin: mode closes the thread's loop after its run only when this flag is set.
        assert thread._close_thread_loop_on_stop is True
        run = inspect.getsource(mode_threads.ServiceThread._start_thread)
        assert "if self._close_thread_loop_on_stop:" in run
        assert "self.thread_loop.close()" in run
        thread.thread_loop.close()
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_plain_faust_app_uses_the_hard_coded_wait() -> None:
    # The control: without TunedApp the same settings leave Faust's constant in place.
    app = faust.App("tuning-control", broker="kafka://127.0.0.1:1", **_APP_OPTIONS)
    consumer = _worker_consumer_of(app)
    assert consumer._fetch_max_wait_ms == fetch_wait.FAUST_HARDCODED_FETCH_MAX_WAIT_MS


def test_tuned_app_refuses_a_transport_that_is_not_aiokafka(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class OtherTransport:
        pass

    monkeypatch.setattr(tuned_app, "transport_by_url", lambda url: OtherTransport)
    app = TunedApp("tuning-other", broker="kafka://127.0.0.1:1", **_APP_OPTIONS)
    with pytest.raises(KafkaTuningError, match="not Faust's aiokafka driver"):
        app.transport


@pytest.mark.parametrize(
    "value",
    [0, -5, 60_001, 1.5, True, "10"],
    ids=["zero", "negative", "huge", "float", "bool", "str"],
)
def test_consumer_tuning_rejects_bad_fetch_waits(value: object) -> None:
    with pytest.raises(KafkaTuningError, match="fetch_max_wait_ms"):
        ConsumerTuning(fetch_max_wait_ms=value)  # type: ignore[arg-type]


# ---- live: a real Faust worker on the embedded broker -----------------------------------------

_PROBE = textwrap.dedent(
    """
    import sys

    import faust

    from worker.upstream.fetch_wait import ConsumerTuning
    from worker.upstream.tuned_app import TunedApp

    bootstrap, topic, wait_ms = sys.argv[1], sys.argv[2], int(sys.argv[3])
    app = TunedApp(
        f"tuning-probe-{topic}",
        broker=f"kafka://{bootstrap}",
        consumer_tuning=ConsumerTuning(fetch_max_wait_ms=wait_ms),
        **OPTIONS,
    )

    @app.agent(app.topic(topic, value_serializer="raw"))
    async def probe(stream):
        async for value in stream:
            consumer = app.consumer._thread._consumer  # the started aiokafka consumer
            print("RECEIVED", value.decode(), type(consumer).__name__,
                  consumer._fetcher._fetch_max_wait_ms, flush=True)

    faust.Worker(app, loglevel="warning", redirect_stdouts=False).execute_from_commandline()
    """
)


def _lines_of(process: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_for_line(lines: queue.Queue[str], marker: str, timeout_s: float) -> tuple[str, list[str]]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            continue
        seen.append(line)
        if marker in line:
            return line, seen
    raise AssertionError(f"No {marker!r} line within {timeout_s} s; output:\n{''.join(seen)}")


def test_fetch_wait_reaches_the_running_consumer(kafka: Kafka, tmp_path: Path) -> None:
    topic = kafka.new_topic(partitions=2)
    script = tmp_path / "probe.py"
    script.write_text(f"OPTIONS = {_APP_OPTIONS!r}\n" + _PROBE)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        [sys.executable, str(script), kafka.bootstrap, topic, "37"],
        cwd=tmp_path,  # Faust puts its data directory in the working directory
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = _lines_of(process)
        kafka.produce(topic, [b"hello"])  # read from the start once the agent is assigned
        line, _ = _wait_for_line(lines, "RECEIVED", timeout_s=60)
        assert line.split()[1:] == ["hello", "AIOKafkaConsumer", "37"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert not list(REPO.glob("tuning-probe-*")), "the probe left files in the repository"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# ---- inline delivery: the fetch loop's per-message wait_first -----------------------------


def test_faust_fetch_loop_still_delivers_through_wait_first_with_suspend_flow() -> None:
    # TunedConsumer.wait_first recognises exactly this call; if Faust changes it, the inline
    # path silently stops applying (and this test says where to look).
    source = inspect.getsource(faust_consumer.Consumer._drain_messages)
    assert "await self.wait_first(" in source
    assert "callback(message), self.suspend_flow.wait()" in " ".join(source.split())
    assert isinstance(_consumer().suspend_flow, asyncio.Event)
    assert inline_delivery.WaitResults._fields == ("done", "results", "stopped")


def _consumer() -> TunedConsumer:
    app = TunedApp("inline-unit", broker="kafka://127.0.0.1:1", **_APP_OPTIONS)
    return app.consumer


def test_a_delivery_that_does_not_block_runs_inline_in_the_fetch_loops_task() -> None:
    async def scenario():
        consumer = _consumer()
        seen = []

        async def delivery():
            seen.append(asyncio.current_task())
            return "delivered"

        results = await consumer.wait_first(delivery(), consumer.suspend_flow.wait())
        return results, seen, asyncio.current_task(), consumer

    results, seen, task, consumer = asyncio.run(scenario())
    assert results.results == ["delivered"] and not results.stopped
    assert seen == [task]  # no task was created for it
    assert (consumer.inline_deliveries, consumer.waited_deliveries) == (1, 0)


def test_a_blocked_delivery_is_interrupted_by_flow_suspension_as_in_faust() -> None:
    async def scenario():
        consumer = _consumer()
        space = asyncio.get_running_loop().create_future()  # a full buffer making room
        steps = []

        async def delivery():
            steps.append("started")
            try:
                steps.append(await space)
            finally:
                steps.append("unwound")

        waiting = asyncio.ensure_future(
            consumer.wait_first(delivery(), consumer.suspend_flow.wait()))
        await asyncio.sleep(0.01)
        assert not waiting.done() and steps == ["started"]
        consumer.suspend_flow.set()  # a rebalance: the fetch loop must not stay stuck
        await asyncio.wait_for(waiting, 1.0)
        # Faust's wait_first cancels the loser: the record is fetched again after the
        # rebalance from the committed offset, exactly as without the inline path.
        return steps, space.cancelled(), consumer

    steps, cancelled, consumer = asyncio.run(scenario())
    assert steps == ["started", "unwound"] and cancelled
    assert (consumer.inline_deliveries, consumer.waited_deliveries) == (0, 1)


def test_while_flow_is_suspended_delivery_goes_through_fausts_wait_first() -> None:
    async def scenario():
        consumer = _consumer()
        consumer.suspend_flow.set()
        seen = []

        async def delivery():
            seen.append(asyncio.current_task())

        await consumer.wait_first(delivery(), consumer.suspend_flow.wait())
        return seen, asyncio.current_task(), consumer

    seen, task, consumer = asyncio.run(scenario())
    assert len(seen) == 1 and seen[0] is not task  # Faust ran it as its own task
    assert (consumer.inline_deliveries, consumer.waited_deliveries) == (0, 0)


def test_resume_raises_a_delivery_error_and_cancellation_unwinds_the_delivery() -> None:
    async def scenario():
        loop = asyncio.get_running_loop()
        failing, blocked = loop.create_future(), loop.create_future()
        unwound = []

        async def fails():
            await failing

        async def stuck():
            try:
                await blocked
            finally:
                unwound.append(True)

        first = fails()
        resumed = asyncio.ensure_future(inline_delivery._resume(first, first.send(None)))
        failing.set_exception(ValueError("bad record"))
        with pytest.raises(ValueError, match="bad record"):
            await resumed
        second = stuck()
        resumed = asyncio.ensure_future(inline_delivery._resume(second, second.send(None)))
        await asyncio.sleep(0)
        resumed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await resumed
        return unwound, blocked.cancelled()

    assert asyncio.run(scenario()) == ([True], True)


# ---- the seek after a rebalance (with tables) ---------------------------------------------------


def test_faust_recovery_resumes_the_flow_before_it_seeks_the_stream_partitions() -> None:
    """Why TunedConsumer.perform_seek stops the flow: with a table, Faust 0.15.3 resumes the
    consumer's flow during recovery, then resumes the stream partitions and seeks them; a
    batch fetched from the old position and delivered after the seek is taken for a gap
    (counted as acked) and its re-fetched records dropped as already read."""
    from faust.tables import recovery

    restart = inspect.getsource(recovery.Recovery._restart_recovery.fun)
    assert restart.index("T(consumer.resume_flow)()") < restart.index(
        "T(self.on_recovery_completed)(generation_id)")
    completed = inspect.getsource(recovery.Recovery.on_recovery_completed)
    assert completed.index("consumer.resume_partitions(") < completed.index(
        "consumer.perform_seek()") < completed.index("consumer.resume_flow()")
    assert "self.app.on_rebalance_end()" in completed  # app.rebalancing stays True till here
    drain = inspect.getsource(faust_consumer.Consumer._drain_messages)
    assert "await self._add_gap(tp, r_offset + 1, offset)" in drain
    assert '"DROPPED MESSAGE ROFF %r: k=%r v=%r"' in drain
    getmany = inspect.getsource(faust_consumer.Consumer.getmany)
    assert "if not self.flow_active:\n                    break" in getmany
    seek = inspect.getsource(faust_consumer.Consumer.perform_seek)
    assert "read_offset.update(" in seek


def _seek_scenario(rebalancing: bool) -> tuple[list[bool], bool]:
    async def scenario():
        consumer = _consumer()
        consumer.app.rebalancing = rebalancing
        flow_during: list[bool] = []

        async def seek_to_committed():
            flow_during.append(consumer.flow_active)
            await asyncio.sleep(0)  # the fetch loop may run here
            flow_during.append(consumer.suspend_flow.is_set())
            return {}

        consumer.seek_to_committed = seek_to_committed
        consumer.resume_flow()
        await consumer.perform_seek()
        return flow_during, consumer.flow_active

    return asyncio.run(scenario())


def test_perform_seek_runs_with_the_flow_stopped_then_resumes_it() -> None:
    flow_during, after = _seek_scenario(rebalancing=False)
    assert flow_during == [False, True]  # stopped for the whole seek
    assert after  # and running again afterwards


def test_perform_seek_during_a_rebalance_leaves_resuming_to_faust() -> None:
    flow_during, after = _seek_scenario(rebalancing=True)
    assert flow_during == [False, True]
    assert not after  # Faust's recovery resumes it right after the seek


# ---- a fetch returned while the flow is stopped -------------------------------------------------


def test_faust_drops_a_fetch_that_returns_while_the_flow_is_stopped() -> None:
    """Why RewindStaleFetchThread puts such a fetch back: Faust's consumer thread checks the
    flow only before it waits for records, aiokafka's wait spans a rebalance, and Faust's
    getmany then drops the batch and seeks only the stream partitions (to their commits), so
    changelog records the recovery had sought to were consumed and never delivered."""
    from aiokafka.consumer import fetcher

    fetch = inspect.getsource(faust_aiokafka.AIOKafkaConsumerThread._fetch_records)
    assert fetch.index("if not self.consumer.flow_active:") < fetch.index(
        "await fetcher.fetched_records(")
    assert "self._fetch_records," in inspect.getsource(faust_aiokafka.AIOKafkaConsumerThread.getmany)
    assert "await self._subscriptions.wait_for_assignment()" in inspect.getsource(
        fetcher.Fetcher.fetched_records)
    getmany = inspect.getsource(faust_consumer.Consumer.getmany)
    assert getmany.index("await self._wait_next_records(timeout)") < getmany.index(
        "if self.flow_active:") < getmany.index("await self.perform_seek()")
    assert TunedConsumerThread._fetch_records is stale_fetch.RewindStaleFetchThread._fetch_records


def _fetch_returned(flow_active: bool) -> tuple[dict, list]:
    """What RewindStaleFetchThread._fetch_records returns, and the seeks it makes, for a
    fetch of two partitions that returns with the flow running or stopped."""
    records = {TP("req", 0): [types.SimpleNamespace(offset=o) for o in (7, 8)],
               TP("changelog", 1): [types.SimpleNamespace(offset=o) for o in (0, 1, 2)]}
    seeks: list[tuple[TP, int]] = []

    class Fetched:
        async def _fetch_records(self, consumer, active_partitions, timeout=None,
                                 max_records=None):
            return records

    class Thread(stale_fetch.RewindStaleFetchThread, Fetched):
        consumer = types.SimpleNamespace(flow_active=flow_active)

    kafka_consumer = types.SimpleNamespace(seek=lambda tp, offset: seeks.append((tp, offset)))
    fetched = asyncio.run(Thread()._fetch_records(kafka_consumer, set(records), timeout=1.0))
    return fetched, seeks


def test_a_fetch_returned_while_the_flow_is_stopped_is_sought_back_and_dropped() -> None:
    fetched, seeks = _fetch_returned(flow_active=False)
    assert fetched == {}
    assert seeks == [(TP("req", 0), 7), (TP("changelog", 1), 0)]  # each to its first record


def test_a_fetch_returned_with_the_flow_running_is_delivered_as_is() -> None:
    fetched, seeks = _fetch_returned(flow_active=True)
    assert {tp: [r.offset for r in batch] for tp, batch in fetched.items()} == {
        TP("req", 0): [7, 8], TP("changelog", 1): [0, 1, 2]}
    assert seeks == []


# ---- end offsets for table recovery ------------------------------------------------------------


def test_faust_recovery_reads_changelogs_up_to_the_threads_highwaters() -> None:
    """Why TunedConsumerThread._highwaters is where the end offsets are corrected: Faust's
    recovery takes each changelog's end from consumer.highwaters(), which the consumer
    thread answers with `_highwaters` (end_offsets unless in a transaction)."""
    from faust.tables import recovery

    build = inspect.getsource(recovery.Recovery._build_highwaters)
    assert "await consumer.highwaters(*tps)" in build
    assert "await self.call_thread(self._highwaters, partitions)" in inspect.getsource(
        faust_aiokafka.AIOKafkaConsumerThread.highwaters)
    assert "await consumer.end_offsets(partitions)" in inspect.getsource(
        faust_aiokafka.AIOKafkaConsumerThread._highwaters)
    assert TunedConsumerThread._highwaters is not faust_aiokafka.AIOKafkaConsumerThread._highwaters
    assert "self._create_client_consumer(self.transport)" in inspect.getsource(
        TunedConsumerThread._highwaters)


async def _end_offsets_scenario(bootstrap: str, topic: str) -> tuple[dict, dict]:
    producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=50)
    await producer.start()
    try:  # two flushes: offsets 0..9 in one record batch, 10..16 in the next
        for count in (10, 7):
            await asyncio.gather(*[await producer.send(topic, b"v", partition=0)
                                   for _ in range(count)])
    finally:
        await producer.stop()
    tps = [aiokafka.TopicPartition(topic, 0), aiokafka.TopicPartition(topic, 1)]
    consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        listed = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    fixed = await changelog_end_offsets.fetched_end_offsets(
        lambda: aiokafka.AIOKafkaConsumer(bootstrap_servers=bootstrap), listed, ConsumerTuning())
    return ({tp.partition: v for tp, v in listed.items()},
            {tp.partition: v for tp, v in fixed.items()})


def test_fetched_end_offsets_reach_past_the_last_batch_the_broker_lists(kafka: Kafka) -> None:
    """The embedded broker lists a partition's end as its last batch's base offset + 1 (11
    here, where 17 records were written); the fetch high watermark says 17. An empty
    partition stays at 0 and is not fetched."""
    topic = kafka.new_topic(partitions=2)
    listed, fixed = asyncio.run(_end_offsets_scenario(kafka.bootstrap, topic))
    assert fixed == {0: 17, 1: 0}  # 17 records written to partition 0, none to 1
    assert listed[0] <= 17  # never above; 11 on tansu 0.6, 17 on a broker without the bug


def test_fetched_end_offsets_keep_the_listed_end_when_no_fetch_answers(monkeypatch) -> None:
    class Silent:
        async def start(self): pass
        async def stop(self): pass
        def assign(self, tps): pass
        def seek(self, tp, offset): pass
        async def getmany(self, *tps, timeout_ms): await asyncio.sleep(timeout_ms / 1000)
        def highwater(self, tp): return None

    tp = aiokafka.TopicPartition("t", 0)
    monkeypatch.setattr(changelog_end_offsets, "apply_tuning", lambda consumer, tuning: None)
    ends = asyncio.run(changelog_end_offsets.fetched_end_offsets(Silent, {tp: 5},
                                                                 ConsumerTuning(), timeout_s=0.3))
    assert ends == {tp: 5}


def test_faust_recovery_resumes_stream_partitions_before_seeking_them() -> None:
    """Why uncommitted partitions need a seek of their own: Faust resumes the stream
    partitions first, so the fetcher reads past their start before the seek, and aiokafka's
    `seek_to_committed` leaves a partition without a committed offset where it is."""
    from faust.tables import recovery

    source = inspect.getsource(recovery.Recovery.on_recovery_completed)
    assert source.index("consumer.resume_partitions(") < source.index("consumer.perform_seek()")
    committed = inspect.getsource(aiokafka.AIOKafkaConsumer.seek_to_committed)
    assert "if offset and offset > 0:" in committed  # None and 0: no seek at all


def test_seek_to_committed_sends_uncommitted_stream_partitions_to_their_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    requests = aiokafka.TopicPartition("req", 1)
    at_zero = aiokafka.TopicPartition("req", 2)
    done = aiokafka.TopicPartition("req", 0)
    changelog = aiokafka.TopicPartition("app-user-history-changelog", 1)

    async def committed(self):  # what aiokafka answers: None where nothing was committed
        return {requests: None, at_zero: 0, done: 18, changelog: None}

    seeks: list = []

    async def earliest_offsets(self, *partitions):
        return {tp: 7 for tp in partitions}  # the log starts at 7 (older records deleted)

    async def call_thread(self, fun, *args):  # as if on the consumer's thread
        return await fun(*args)

    class Consumer:
        def seek(self, tp, offset):
            seeks.append((tp, offset))

    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "seek_to_committed", committed)
    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "earliest_offsets",
                        earliest_offsets)
    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "call_thread", call_thread)
    monkeypatch.setattr(faust_aiokafka.AIOKafkaConsumerThread, "_ensure_consumer",
                        lambda self: Consumer())
    thread = object.__new__(TunedConsumerThread)
    thread.app = type("App", (), {"tables": type("Tables", (), {
        "changelog_topics": {changelog.topic}})()})()
    assert asyncio.run(thread.seek_to_committed()) == {requests: None, at_zero: 0, done: 18,
                                                       changelog: None}
    assert seeks == [(requests, 7), (at_zero, 7)]  # concrete positions, never "awaiting reset"


def test_the_idempotent_producer_adds_to_the_options_faust_builds_its_producer_from():
    import inspect

    from worker.upstream.tuned_app import IdempotentProducer, TunedTransport

    assert TunedTransport.Producer is IdempotentProducer
    source = inspect.getsource(faust_aiokafka.Producer._new_producer)
    assert "**self._settings_extra()," in source  # merged last: our options win
    app = type("App", (), {"idempotent_producer": True, "in_transaction": False})()
    producer = IdempotentProducer.__new__(IdempotentProducer)
    producer.app = app
    assert producer._settings_extra() == {"acks": "all", "enable_idempotence": True}
    app.idempotent_producer = False
    assert producer._settings_extra() == {}


def test_reset_producer_id_starts_the_idempotent_producers_sequences_again():
    """IdempotentProducer.reset_producer_id relies on aiokafka numbering a batch when it is
    drained (and never un-numbering a refused one) and on the sender asking for a producer id
    whenever it has none; a transactional producer is left alone."""
    from aiokafka.producer import message_accumulator, sender, transaction_manager
    from worker.upstream.tuned_app import IdempotentProducer

    assert "increment_sequence_number(batch.tp, batch.record_count)" in inspect.getsource(
        message_accumulator.MessageAccumulator._pop_batch)
    waits = inspect.getsource(sender.Sender._maybe_wait_for_pid)
    assert "self._txn_manager.has_pid()" in waits and "_do_init_pid" in waits
    assert "await self._maybe_wait_for_pid()" in inspect.getsource(sender.Sender._sender_routine)

    async def reset(**options) -> tuple[bool, aiokafka.AIOKafkaProducer]:
        holder = IdempotentProducer.__new__(IdempotentProducer)  # only _producer is used
        holder._producer = aiokafka.AIOKafkaProducer(bootstrap_servers="127.0.0.1:1",
                                                     **options)
        txn = holder._producer._txn_manager
        if txn is not None:
            txn.set_pid_and_epoch(7, 0)
            txn.increment_sequence_number(aiokafka.TopicPartition("t", 0), 5)
        return holder.reset_producer_id(), holder._producer

    done, producer = asyncio.run(reset(enable_idempotence=True))
    txn = producer._txn_manager
    assert done and not txn.has_pid()
    assert txn.sequence_number(aiokafka.TopicPartition("t", 0)) == 0
    assert not txn._pid_waiter.done()  # the sender waits for a new id
    assert transaction_manager.NO_PRODUCER_ID == txn.producer_id
    assert asyncio.run(reset())[0] is False  # not idempotent: nothing to reset
    done, producer = asyncio.run(reset(transactional_id="t-0"))
    assert done is False and producer._txn_manager.producer_id == 7


# ---- the hook for the bounded stop (worker/upstream/stop_signal.py) ---------------------------


def test_mode_worker_handles_stop_signals_in_schedule_shutdown(monkeypatch) -> None:
    """StopSignalHookWorker overrides mode's `Worker._schedule_shutdown` and reads its
    `_signal_stop_time` to call the hook on the first signal only."""
    from mode import worker as mode_worker

    from worker.lifecycle import BoundedStopWorker
    from worker.upstream.stop_signal import StopSignalHookWorker

    for handler in (mode_worker.Worker._on_sigterm, mode_worker.Worker._on_sigint):
        assert "self._schedule_shutdown(signal.SIG" in inspect.getsource(handler)
    schedule = inspect.getsource(mode_worker.Worker._schedule_shutdown)
    assert "if not self._signal_stop_time:" in schedule
    assert "self._signal_stop_time = self.loop.time()" in schedule
    assert issubclass(BoundedStopWorker, StopSignalHookWorker)
    assert issubclass(StopSignalHookWorker, faust.Worker)

    calls: list[int] = []

    class Probe(StopSignalHookWorker):
        def __init__(self) -> None:  # no services, no loop: only the signal path is run
            self._signal_stop_time = None

        def on_first_stop_signal(self, signum):
            calls.append(signum)

    def schedule(self, signum):  # mode's, minus the stop it would start
        if not self._signal_stop_time:
            self._signal_stop_time = 1.0

    monkeypatch.setattr(mode_worker.Worker, "_schedule_shutdown", schedule)
    probe = Probe()
    probe._schedule_shutdown(signal.SIGTERM)
    probe._schedule_shutdown(signal.SIGINT)
    assert calls == [signal.SIGTERM]  # once, for the first signal
