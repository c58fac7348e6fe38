"""The ranking worker: `python -m worker.app [--flags]` (settings: worker/settings.py).

Start-up order matters: compile every bucket shape, make sure the topics exist (waiting for
the broker with back-off), and only then join the consumer group, so no request waits for a
compile and no long first compile triggers a rebalance.
"""

from __future__ import annotations

import signal

if __name__ == "__main__":
    # Until start-up installs its own handlers, Ctrl-C ends the process as SIGTERM does: at
    # once, without a KeyboardInterrupt traceback from whichever module was being imported.
    signal.signal(signal.SIGINT, signal.SIG_DFL)

import asyncio
import contextlib
import errno
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, NamedTuple

import faust
import uvloop

from phoenix import compilations
from phoenix.checkpoint import CheckpointError
from phoenix.config import ConfigError
from worker import codec, history
from worker.engagement import parse_engagement
from worker.exactly_once import commit_guard
from worker.errors import ValidationError
from worker.batching import FixedBatches, ScheduledBatches, key_lane, partition_lane
from worker.cost_model import CostModel
from worker.handler import BatchHandler, WorkerState, to_record
from worker.breaker import BreakerConfig, DeadLetterBreaker
from worker.broker_health import BrokerHealth
from worker.kafka_clients import (TopicLayout, check_group_access,
                                  check_transactions_supported, client_kwargs,
                                  ensure_topics_with_retry, faust_client_options,
                                  supports_idempotence)
from worker.lifecycle import (BoundedStopWorker, StartupSignals, StartupStop,
                              log_stopped_before_serving, report_user_error, stop_for_bug,
                              stop_on_signals)
from worker.monitoring import HealthServer, WorkerMetrics
from worker.pipeline import RankingPipeline
from worker.rollout import CheckpointWatcher, RolloutError
from worker.scheduler import DeadlineScheduler
from worker.serving import RANDOM_CHECKPOINT, build_pipeline, cache_summary, configure_jax
from worker.settings import Settings, SettingsError, flag_name
from worker.topics import HISTORY_TABLE  # changelog: topics.history_changelog_topic
from worker.upstream.fetch_wait import ConsumerTuning
from worker.upstream.memory_store_revoked_keys import track_key_partition
from worker.upstream.thread_safe_rocksdb_read import read_partition_dbs
from worker.upstream.tuned_app import TunedApp

log = logging.getLogger("worker")


class AppTopics(NamedTuple):
    requests: Any
    results: Any
    dead_letters: Any
    engagements: Any


def new_app(settings: Settings, replication_factor: int = 1,
            idempotent: bool = False) -> tuple[faust.App, AppTopics]:
    """The worker's Faust app and its three raw-bytes topics, no agent yet.
    `replication_factor`: of the topics Faust creates (the history changelog); `idempotent`:
    whether the broker takes idempotent producers (exactly-once makes them so anyway)."""
    app = TunedApp(
        settings.group_id,
        consumer_tuning=ConsumerTuning(fetch_max_wait_ms=settings.fetch_max_wait_ms),
        idempotent_producer=idempotent,
        env={},  # Faust would let BROKER_URL & co. from the environment override our settings
        datadir=os.path.join(settings.data_dir, "{conf.id}"),
        web_enabled=False,
        # The history table has no standby copies: a partition's new owner rebuilds it from the
        # changelog before it takes that partition's requests (README: Server-side history).
        table_standby_replicas=0,
        store="rocksdb://" if settings.history_store == "rocksdb" else "memory://",
        **faust_client_options(settings, replication_factor),
    )
    return app, AppTopics(*(app.topic(name, key_serializer="raw", value_serializer="raw")
                            for name in (settings.requests_topic, settings.results_topic,
                                         settings.dead_letter_topic,
                                         settings.engagements_topic)))


def _thread_safe_lookup(table: Any, store: str) -> Any:
    """user id -> stored value, safe to call from the decode thread while the event loop
    writes. Memory store: `table.get` is a dict get. RocksDB store: Faust's own read is not
    thread-safe (worker/upstream/thread_safe_rocksdb_read.py)."""
    if store == "memory":
        return history.lookup(table)

    def get(user_id: int) -> bytes | None:
        return read_partition_dbs(table, codec.user_key(user_id))

    return get


def _add_history(app: faust.App, engagements: Any, settings: Settings, partitions: int,
                 pipeline: RankingPipeline, handler: BatchHandler, metrics: WorkerMetrics,
                 on_bug: Any) -> Any:
    """The history table (user key -> packed history, worker.history) and the agent that
    appends each engagement to it; v2 requests without history read it through `pipeline`."""
    # bytes keys and values: Faust stores and logs them raw (no json).
    table = app.Table(HISTORY_TABLE, default=None, partitions=partitions, key_type=bytes,
                      value_type=bytes,
                      help="user id -> the user's most recent engagements (worker.history)")
    pipeline.history.attach(_thread_safe_lookup(table, settings.history_store))

    def ingest(event: Any) -> Any:
        """One engagement into the table; returns its dead letter if it is bad, else None."""
        record = to_record(event)
        try:
            engagement = parse_engagement(record.value, pipeline.limits)
        except ValidationError as error:
            metrics.engagements.labels("dead_letter").inc()
            metrics.dead_letters.labels(error.code).inc()
            return pipeline.dead_letter(record, error)
        if history.apply(table, engagement, settings.history_cap):
            # Memory store: dropped when its partition moves to another worker.
            track_key_partition(table, codec.user_key(engagement.user_id), record.partition)
            metrics.engagements.labels("applied").inc()
            metrics.engagement_visible_lag.observe(
                max(0.0, time.time() * 1000 - engagement.timestamp_ms) / 1000)
        else:
            metrics.engagements.labels("ignored").inc()
        return None

    @app.agent(engagements, concurrency=1)
    async def record_history(stream):
        # Applied on the event loop (tens of microseconds each), acked once its dead letter
        # (if any) was acknowledged; Faust commits an offset only after flushing the producer,
        # changelog writes included. Under exactly-once, no commit comes between the table
        # write and the ack (worker/exactly_once.py).
        try:
            async for event in stream.noack().events():
                async with commit_guard(await app.maybe_start_producer()):
                    dead_letter = ingest(event)
                    if dead_letter is not None:
                        await handler.publish([dead_letter])
                    await stream.ack(event)
        except Exception as error:  # noqa: BLE001 (CancelledError is not an Exception)
            on_bug(error)
            await asyncio.Event().wait()  # no agent restart: held until the stop cancels it

    return table


class BrokerLayout(NamedTuple):
    """What start-up found on the broker: the topics as they exist, and whether it takes
    idempotent producers."""

    topics: TopicLayout
    idempotent: bool


def create_app(settings: Settings, pipeline: RankingPipeline, state: WorkerState,
               metrics: WorkerMetrics, watcher: CheckpointWatcher | None = None,
               layout: BrokerLayout | None = None, cost: CostModel | None = None
               ) -> faust.App:
    """The worker's app, wired step by step: the history table and its agent, the ranking
    agent, with a `watcher` live model rollout, partition tracking, broker health and lag
    reporting. `layout`: what start-up found on the broker (default: the settings'
    partitions, one replica, no idempotence); `cost`: the model's measured cost per call
    shape (default: measured now, for the deadline policy). Every thread pool is shut down when the app
    stops."""
    layout = layout or BrokerLayout(TopicLayout(settings.partitions, 1), idempotent=False)
    app, topics = new_app(settings, layout.topics.replication_factor, layout.idempotent)
    on_bug = _bug_stopper(state)
    ranker = _thread_pool(app, "ranker")  # one thread: batches are ranked in handling order
    handler = BatchHandler(pipeline, topics.results, topics.dead_letters, metrics, state,
                           ranker, flow_active=app.flow_control.is_active,
                           decode_executor=_thread_pool(app, "decoder"), on_bug=on_bug)
    table = _add_history(app, topics.engagements, settings, layout.topics.partitions,
                         pipeline, handler, metrics, on_bug)
    _add_ranking(app, topics.requests, settings, state, handler,
                 _batches(settings, handler, metrics, cost), on_bug)
    if watcher is not None:
        _add_rollout(app, settings, watcher, pipeline, metrics, ranker)
    _add_partition_tracking(app, state, metrics)
    _add_broker_health(app, settings, topics, state, metrics)
    _add_lag_reporting(app, settings, state, metrics, table)
    return app


def _thread_pool(app: faust.App, name: str) -> ThreadPoolExecutor:
    """A one-thread pool that `app` shuts down when it stops: mode exits a service's
    contexts after its agents and timers stopped. Work not started is cancelled; a running
    call (a rollout's compile) is not waited for."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
    app.add_context(_shut_down_on_exit(pool))
    return pool


@contextlib.contextmanager
def _shut_down_on_exit(pool: ThreadPoolExecutor) -> Iterator[ThreadPoolExecutor]:
    try:
        yield pool
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def _bug_stopper(state: WorkerState) -> Callable[[BaseException], None]:
    def on_bug(error: BaseException) -> None:
        """The first report stops the worker; main() then exits 1 (a bug) or 2 (a
        `SettingsError`: something to change on the cluster, said in one line)."""
        if state.failed is None:
            state.failed = error
            stop_for_bug(error)

    return on_bug


def _batches(settings: Settings, handler: BatchHandler, metrics: WorkerMetrics,
             cost: CostModel | None) -> FixedBatches | ScheduledBatches:
    """The batch policy the settings name (the deadline one measures the model's cost per
    call shape first, unless given `cost`)."""
    if settings.batch_policy == "fixed":
        return FixedBatches(handler, settings.max_batch_wait_ms / 1000)
    cost = cost or handler.pipeline.measure_cost()
    lane = partition_lane if settings.processing_guarantee == "exactly_once" else key_lane
    return ScheduledBatches(
        handler, DeadlineScheduler(cost, settings.max_batch_size, settings.latency_target_ms),
        lane, metrics, queue_limit=2 * settings.max_batch_size,
        wait_s=settings.max_batch_wait_ms / 1000)


def _add_ranking(app: faust.App, requests: Any, settings: Settings, state: WorkerState,
                 handler: BatchHandler, batches: FixedBatches | ScheduledBatches,
                 on_bug: Callable[[BaseException], None]) -> None:
    """The agent that takes the requests for `batches` to queue, and `handler` to rank and
    answer."""
    state.recovering = lambda: bool(app.in_recovery)
    # Faust suspends flow control when partitions are revoked and resumes it last, after the
    # stream partitions are resumed and sought (Recovery._resume_streams and
    # Recovery.on_recovery_completed).
    state.resuming = lambda: not app.flow_control.is_active()

    @app.agent(requests, concurrency=1)
    async def rank(stream):
        dispatcher = asyncio.ensure_future(batches.run())
        # noack_take: Faust must not ack (and so commit) before the results are acked.
        try:
            async for events in stream.noack_take(settings.max_batch_size,
                                                  within=batches.wait_s):
                await batches.take(stream, events)
            await batches.flush()
        except Exception as error:  # noqa: BLE001 (CancelledError is not an Exception)
            on_bug(error)
            await asyncio.Event().wait()  # no agent restart: held until the stop cancels it
        finally:
            dispatcher.cancel()
            await handler.close()  # stopping: let the batches in flight finish


def _add_rollout(app: faust.App, settings: Settings, watcher: CheckpointWatcher,
                 pipeline: RankingPipeline, metrics: WorkerMetrics,
                 ranker: ThreadPoolExecutor) -> None:
    """Live model rollout: every `checkpoint_poll_s`, a new checkpoint is loaded, checked and
    compiled beside the serving model (on a thread of its own), then swapped in on `ranker`:
    between two batches, so each batch is ranked by one version only."""
    loader = _thread_pool(app, "rollout")

    @app.timer(settings.checkpoint_poll_s)
    async def roll_out():
        path = watcher.poll()
        if path is None:
            return
        loop = asyncio.get_running_loop()
        serving = pipeline.runner.model_version
        log.info("new checkpoint %s: loading, checking and compiling it", path)
        try:
            candidate = await loop.run_in_executor(
                loader, watcher.prepare, path, pipeline.runner,
                pipeline.assembler.buckets.shapes())
        except RolloutError as error:
            metrics.model_load_failures.inc()
            log.error("refused the new checkpoint: %s; model %s keeps serving", error, serving)
            return
        old = await loop.run_in_executor(ranker, pipeline.swap_runner, candidate.runner)
        metrics.model_info.remove(old.model_version)
        metrics.model_info.labels(candidate.runner.model_version).set(1)
        log.info("model %s from %s serves from the next batch on (was %s)",
                 candidate.runner.model_version, path, old.model_version)


def _add_partition_tracking(app: faust.App, state: WorkerState, metrics: WorkerMetrics) -> None:
    """Readiness follows the rebalances: not ready from a revocation until an assignment."""
    metrics.recovering.set_function(lambda: float(state.recovering()))
    metrics.ready.set_function(lambda: float(state.readiness()[0]))  # as /ready says, at scrape

    @app.on_partitions_revoked.connect
    async def on_revoked(app, revoked, **kwargs):
        state.assigned = False

    @app.on_partitions_assigned.connect
    async def on_assigned(app, assigned, **kwargs):
        state.assigned = True
        log.info("assigned partitions: %s", sorted(f"{tp.topic}[{tp.partition}]"
                                                   for tp in assigned))


def _add_broker_health(app: faust.App, settings: Settings, topics: AppTopics,
                       state: WorkerState, metrics: WorkerMetrics) -> None:
    """Readiness says which broker node leading a partition of the worker's topics does not
    answer it (worker.broker_health), checked on a timer; its client closes with the app."""
    health = BrokerHealth(client_kwargs(settings),
                          [topic.get_topic_name() for topic in topics])
    state.degraded = health.reason

    @app.timer(health.interval_s)
    async def check_brokers():
        try:
            silent = await health.check()
        except Exception as error:  # noqa: BLE001 (no bootstrap node answers: say so, go on)
            log.warning("cannot check the broker nodes: %r", error)
            return
        metrics.silent_brokers.set(len(silent))

    @app.on_before_shutdown.connect
    async def close_health(app, **kwargs):
        await health.close()


_LAG_REPORT_INTERVAL_S = 5.0


def _add_lag_reporting(app: faust.App, settings: Settings, state: WorkerState,
                       metrics: WorkerMetrics, table: Any) -> None:
    """Every few seconds: consumer lag per partition, how fetched records were delivered,
    and (memory store) how many users the history table holds."""

    @app.timer(_LAG_REPORT_INTERVAL_S)
    async def report_lag():
        consumer = app.consumer
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            last = state.last_offsets.get((tp.topic, tp.partition))
            if highwater is not None and last is not None:
                metrics.consumer_lag.labels(str(tp.partition)).set(max(0, highwater - last - 1))
        metrics.fetch_deliveries.labels("inline").set(consumer.inline_deliveries)
        metrics.fetch_deliveries.labels("waited").set(consumer.waited_deliveries)
        if settings.history_store == "memory":  # a RocksDB count would read every key
            metrics.history_users.set(len(table.data))


def _run_until_complete(loop: asyncio.AbstractEventLoop, coro,
                        signals: StartupSignals) -> None:
    """Like `loop.run_until_complete`, but a stop signal mid-way (`signals.check`, every
    0.25 s) cancels the task, so nothing is left pending to warn about at exit."""
    task = loop.create_task(coro)
    watch = loop.create_task(_until_done_or_stopped(task, signals))
    try:
        loop.run_until_complete(watch)
    except BaseException:
        for pending in (task, watch):
            pending.cancel()
        with contextlib.suppress(BaseException):
            loop.run_until_complete(asyncio.gather(task, watch, return_exceptions=True))
        raise


async def _until_done_or_stopped(task: asyncio.Task, signals: StartupSignals) -> None:
    while not task.done():
        signals.check()
        await asyncio.wait({task}, timeout=0.25)
    task.result()


def _prepare_broker(settings: Settings, loop: asyncio.AbstractEventLoop,
                    signals: StartupSignals, state: WorkerState) -> BrokerLayout:
    """Creates the topics (waiting for the broker, and saying why on /ready meanwhile);
    returns their partitions and replicas, and whether the broker takes idempotent
    producers."""
    found: list[Any] = []

    def waiting(reason: str | None) -> None:
        state.broker_wait = reason

    async def probe() -> None:
        found.append(await ensure_topics_with_retry(settings, on_wait=waiting))
        await check_group_access(settings)
        if settings.processing_guarantee == "exactly_once":
            await check_transactions_supported(settings)
            found.append(True)
        else:
            found.append(await supports_idempotence(settings))

    _run_until_complete(loop, probe(), signals)
    return BrokerLayout(*found)


def _start_health(settings: Settings, metrics: WorkerMetrics,
                  state: WorkerState) -> HealthServer | None:
    if not settings.metrics_port:
        return None
    try:
        health = HealthServer(metrics, state.readiness, settings.metrics_port).start()
    except OSError as error:
        reason = {errno.EADDRINUSE: "already in use",
                  errno.EACCES: "not open to this user"}.get(error.errno, error.strerror)
        raise SettingsError(
            f"RANKER_METRICS_PORT / --metrics-port: port {settings.metrics_port} for /metrics "
            f"and /ready is {reason}; set another port, or 0 for none") from None
    log.info("metrics and readiness on :%d (/metrics, /ready)", health.port)
    return health


# The settings a bucket ConfigError can come from (its message names the buckets' fields).
_BUCKET_SETTINGS = ("batch_buckets", "candidate_buckets", "max_candidates", "cache_budget_mb")


def _check_history_cap(settings: Settings, pipeline: RankingPipeline) -> None:
    keep = pipeline.limits.history_keep
    if settings.history_cap < keep:
        raise SettingsError(
            f"RANKER_HISTORY_CAP / --history-cap: history_cap {settings.history_cap} is below "
            f"the model's history length S={keep}; keep at least {keep} engagements per user")
    if pipeline.limits.num_surfaces > history.MAX_SURFACES:
        raise SettingsError(f"the checkpoint's {pipeline.limits.num_surfaces} product surfaces "
                            f"do not fit the history table's {history.MAX_SURFACES}")


def _load_pipeline(settings: Settings) -> RankingPipeline:
    """The pipeline of the configured checkpoint(s); a checkpoint that does not load, or
    buckets the model cannot run with, is a `SettingsError` naming what to set."""
    try:
        return build_pipeline(settings, history=history.TableLookup())
    except CheckpointError as error:  # the message starts with the path and says why
        raise SettingsError(
            f"cannot load the checkpoint {error}; set RANKER_CHECKPOINT / --checkpoint to a "
            "checkpoint file (`make train` writes one), a directory of them, or 'random'") from None
    except ConfigError as error:  # buckets the model or the caps cannot run with
        names = ", ".join(f"{Settings.env_name(n)} / {flag_name(n)}" for n in _BUCKET_SETTINGS)
        raise SettingsError(f"{error} (settings: {names})") from None


def _ready_pipeline(settings: Settings, started: float, metrics: WorkerMetrics,
                    state: WorkerState, backend: str, signals: StartupSignals
                    ) -> RankingPipeline:
    """The one way to a serving pipeline: load the checkpoint, check the history table can
    hold what the model reads, compile every bucket shape."""
    pipeline = _load_pipeline(settings)
    _check_history_cap(settings, pipeline)
    signals.check()
    log.info("%s", cache_summary(pipeline, settings.cache_budget_mb))
    pipeline.warmup(after_each=signals.check)
    state.compiled = True
    for runner in pipeline.runners():
        metrics.model_info.labels(runner.model_version).set(1)
    metrics.compilations.set(compilations.count())
    log.info("model %s on %s: %d compilations (%.1f s), ready %.1f s after start",
             pipeline.runner.model_version, backend, compilations.count(),
             compilations.seconds(), time.monotonic() - started)
    return pipeline


def _start_and_serve(settings: Settings) -> int:
    started = time.monotonic()
    metrics = WorkerMetrics()
    state = WorkerState(breaker=DeadLetterBreaker(BreakerConfig(
        window=settings.breaker_window, threshold=settings.breaker_threshold,
        cooldown_s=settings.breaker_cooldown_s)))
    health = None
    try:
        # Until Faust's handlers take over, a signal stops start-up: no traceback.
        with stop_on_signals() as signals:
            log.info("settings:\n%s", settings.describe())
            health = _start_health(settings, metrics, state)
            backend = configure_jax(settings)
            signals.check()
            # Before the first load: a version written while it compiles is still new then.
            watcher = (CheckpointWatcher(settings.checkpoint) if settings.checkpoint_poll_s > 0
                       and settings.checkpoint != RANDOM_CHECKPOINT else None)
            pipeline = _ready_pipeline(settings, started, metrics, state, backend, signals)
            waiting = asyncio.new_event_loop()  # closed before Faust's loop starts
            try:
                layout = _prepare_broker(settings, waiting, signals, state)
            finally:
                waiting.close()
        loop = new_event_loop(settings)  # current before the app is made: Faust binds to it
        serve(create_app(settings, pipeline, state, metrics, watcher, layout), settings,
              loop)
    finally:
        if health is not None:
            health.stop()
    if isinstance(state.failed, SettingsError):
        return report_user_error(state.failed)
    return 1 if state.failed is not None else 0


def new_event_loop(settings: Settings) -> asyncio.AbstractEventLoop:
    """The worker's event loop (uvloop unless settings say asyncio), set as current."""
    loop = uvloop.new_event_loop() if settings.event_loop == "uvloop" else asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def serve(app: faust.App, settings: Settings, loop: asyncio.AbstractEventLoop) -> None:
    """Runs `app` until SIGTERM/SIGINT (drain, commit, exit) or a stop for a bug."""
    os.makedirs(settings.data_dir, exist_ok=True)  # Faust creates only the last level
    worker = BoundedStopWorker(app, loglevel=settings.log_level.upper(), redirect_stdouts=False,
                               quiet=True, loop=loop)
    # At WARNING or above, Faust's terminal spinner sets the root logger to DEBUG, so every
    # aiokafka/Faust debug() call builds a record (~2.6 per message). No spinner, no DEBUG.
    worker.spinner = None
    try:
        worker.execute_from_commandline()
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.load(sys.argv[1:] if argv is None else argv)  # --help exits here
    except SettingsError as error:
        return report_user_error(error)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _start_and_serve(settings)
    except SettingsError as error:
        return report_user_error(error)
    except (StartupStop, KeyboardInterrupt) as stop:
        log_stopped_before_serving(getattr(stop, "signal_name", "SIGINT"))
        return 0


if __name__ == "__main__":
    sys.exit(main())
