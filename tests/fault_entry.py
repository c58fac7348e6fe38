"""Test-only worker entry point: the real `worker.app.main`, with faults injected.

    python -m tests.fault_entry [--fault-slow-ms N [--fault-slow-batches K]]
                                [--fault-poison-user ID] <worker flags>

--fault-slow-ms       each batch sleeps N ms in the executor thread before it is ranked (the
                      first K batches with --fault-slow-batches K; 0 = every batch), as a slow
                      model call or a stalled device would.
--fault-poison-user   any model call whose batch holds a request of this user id raises
                      `InjectedFault` (the pipeline must isolate it and dead-letter only it).
--fault-handler-bug ID
                      the batch step raises `InjectedFault` (a bug, not bad input) for the
                      batch that holds request ID, after ranking it and before publishing.
--fault-predict-slow X
                      the cost model's start-up measure of every call shape is X times what
                      was measured: the scheduler predicts batches far slower than they run.
--fault-publish-fail ID[:N]
                      sending the result of request ID raises `InjectedFault` (not a Kafka
                      error) every time, and so do the first N sends of the publish_failed
                      dead letter that stands in for it (default N = 0).

Every injected fault logs a `fault:` line, so tests can check that it really fired. Never
imported by the worker itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import sys
import time
from typing import Sequence

from worker import app
from worker.cost_model import CostModel
from worker.handler import BatchHandler
from worker.pipeline import DecodedBatch, Outcome, ProcessedBatch, RankingPipeline
from worker.request import RankingRequest

log = logging.getLogger("fault")


class InjectedFault(RuntimeError):
    """Raised by the poisoned model call (the test looks for its message in the dead letter)."""


@dataclasses.dataclass(frozen=True)
class Faults:
    slow_ms: int = 0  # sleep per batch before ranking
    slow_batches: int = 0  # how many batches are slow (0 = all)
    poison_user: int = 0  # user id that makes ranking raise (0 = none)
    handler_bug_request: str = ""  # request id whose batch makes the handler raise
    publish_fail_request: str = ""  # request id whose result can never be sent ("" = none)
    publish_fail_stand_in: int = 0  # failed sends of its publish_failed dead letter
    predict_slow: float = 0.0  # factor on the cost model's measured shape times (0 = none)


def poison_message(user_id: int) -> str:
    return f"injected fault: user {user_id} is poison"


def install(faults: Faults) -> None:
    """Monkeypatches `RankingPipeline` before the worker builds its pipeline."""
    if faults.slow_ms > 0:
        process = RankingPipeline.process
        batches = itertools.count()

        def slow_process(self: RankingPipeline, decoded: DecodedBatch) -> ProcessedBatch:
            n = next(batches)
            if faults.slow_batches == 0 or n < faults.slow_batches:
                log.warning("fault: batch %d (%d records) sleeps %d ms", n, len(decoded),
                            faults.slow_ms)
                time.sleep(faults.slow_ms / 1000)
            return process(self, decoded)

        RankingPipeline.process = slow_process

    if faults.poison_user:
        rank = RankingPipeline._rank

        def poisoned_rank(self: RankingPipeline, requests: list[RankingRequest],
                          runner) -> list:
            if any(r.user_id == faults.poison_user for r in requests):
                log.warning("fault: model call of %d requests holds poison user %d",
                            len(requests), faults.poison_user)
                raise InjectedFault(poison_message(faults.poison_user))
            return rank(self, requests, runner)

        RankingPipeline._rank = poisoned_rank

    if faults.handler_bug_request:
        record_breaker = BatchHandler._record_breaker

        def buggy_record_breaker(self: BatchHandler, outcomes) -> None:
            if any(o.request_id == faults.handler_bug_request for o in outcomes):
                log.warning("fault: the handler raises for the batch of %s",
                            faults.handler_bug_request)
                raise InjectedFault(f"injected fault: a bug around {faults.handler_bug_request}")
            record_breaker(self, outcomes)

        BatchHandler._record_breaker = buggy_record_breaker

    if faults.predict_slow:
        measure = CostModel.measure.__func__

        def slow_measure(cls, *args, **kwargs) -> CostModel:
            model = measure(cls, *args, **kwargs)
            log.warning("fault: the cost model predicts every call %gx slower",
                        faults.predict_slow)
            model.shape_ms = {s: ms * faults.predict_slow for s, ms in model.shape_ms.items()}
            return model

        CostModel.measure = classmethod(slow_measure)

    if faults.publish_fail_request:
        send = BatchHandler._send
        stand_in_sends = itertools.count(1)

        async def failing_send(self: BatchHandler, producer, outcome: Outcome):
            if outcome.request_id == faults.publish_fail_request and (
                    outcome.is_result or next(stand_in_sends) <= faults.publish_fail_stand_in):
                log.warning("fault: sending the %s of %s fails",
                            outcome.dead_letter_code or "result", outcome.request_id)
                raise InjectedFault(f"injected fault: {outcome.request_id} cannot be sent")
            return await send(self, producer, outcome)

        BatchHandler._send = failing_send


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--fault-slow-ms", type=int, default=0)
    parser.add_argument("--fault-slow-batches", type=int, default=0)
    parser.add_argument("--fault-poison-user", type=int, default=0)
    parser.add_argument("--fault-publish-fail", default="")
    parser.add_argument("--fault-handler-bug", default="")
    parser.add_argument("--fault-predict-slow", type=float, default=0.0)
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    request_id, _, times = args.fault_publish_fail.partition(":")
    install(Faults(slow_ms=args.fault_slow_ms, slow_batches=args.fault_slow_batches,
                   poison_user=args.fault_poison_user,
                   handler_bug_request=args.fault_handler_bug, publish_fail_request=request_id,
                   publish_fail_stand_in=int(times or 0),
                   predict_slow=args.fault_predict_slow))
    return app.main(rest)


if __name__ == "__main__":
    sys.exit(main())
