"""What `offline` and `compare` share: the worker's pipeline with a history table, the file's
records as the pipeline's inputs in chunks, and a progress bar over the file."""

from __future__ import annotations

import collections
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import NamedTuple, TypeVar

from tqdm import tqdm

from tools.recordfile import Record, RecordReader
from worker import history
from worker.engagement import parse_engagement
from worker.errors import ValidationError, WorkerError
from worker.pipeline import InputRecord, Outcome, RankingPipeline
from worker.serving import build_pipeline
from worker.settings import Settings
from worker.validation import ValidationLimits

T = TypeVar("T")

REPLAY_WORKER_ID = "replay"


class ReplayError(WorkerError):
    """Input replay cannot use (a missing topic, a bad argument); exit code 2."""


def replay_pipeline(settings: Settings, checkpoint: str | None = None,
                    table: history.HistoryTable | None = None,
                    worker_id: str = REPLAY_WORKER_ID) -> RankingPipeline:
    """The worker's own pipeline, without max age (a recording is old by nature), reading v2
    requests' history from `table` (None: every history empty)."""
    return build_pipeline(settings, checkpoint, worker_id, apply_max_age=False,
                          history=history.lookup(table) if table is not None else None)


class HistoryLoad(NamedTuple):
    applied: int  # engagements now in the table
    ignored: int  # duplicates, or older than a full history keeps
    invalid: int  # would be dead-lettered by the worker; skipped here

    def line(self) -> str:
        return (f"engagements: {self.applied} applied, {self.ignored} ignored (duplicate or "
                f"too old), {self.invalid} invalid (skipped)")


def load_history(records: Iterable[Record], table: history.HistoryTable,
                 limits: ValidationLimits, cap: int) -> HistoryLoad:
    """Applies every engagement of `records`, in file order, to `table`, as the worker's
    history agent does (a pipeline built with `table` ranks v2 requests with it)."""
    counts = collections.Counter()
    for record in records:
        try:
            engagement = parse_engagement(record.value, limits)
        except ValidationError:
            counts["invalid"] += 1
            continue
        counts["applied" if history.apply(table, engagement, cap) else "ignored"] += 1
    return HistoryLoad(counts["applied"], counts["ignored"], counts["invalid"])


def load_history_file(path: str | None,
                      tables: Sequence[tuple[RankingPipeline, history.HistoryTable]],
                      settings: Settings) -> None:
    """Fills each pipeline's table from the engagements file `path` (None: nothing)."""
    if path is None:
        return
    for pipeline, table in tables:
        with RecordReader(path) as reader:
            loaded = load_history(reader, table, pipeline.limits, settings.history_cap)
    print(f"{path}: {loaded.line()}")


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last may be shorter); streams its input."""
    if size < 1:
        raise ReplayError(f"batch size must be >= 1, got {size}")
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def to_input(record: Record, index: int, default_topic: str) -> InputRecord:
    """The pipeline's view of a file record. Never-consumed records get partition 0, offset =
    their index in the file (the dead-letter schema wants non-negative ints)."""
    return InputRecord(
        value=record.value, key=record.key, topic=record.topic or default_topic,
        partition=record.partition if record.partition is not None else 0,
        offset=record.offset if record.offset is not None else index,
        timestamp_ms=record.timestamp_ms or None)


def to_inputs(records: Iterable[Record], default_topic: str) -> Iterator[InputRecord]:
    for index, record in enumerate(records):
        yield to_input(record, index, default_topic)


def iter_outcome_batches(records: Iterable[Record], pipeline: RankingPipeline, batch_size: int,
                         default_topic: str = "") -> Iterator[list[Outcome]]:
    """Ranks `records` in chunks of `batch_size`, as the worker batches them; one list of
    outcomes per chunk, in input order. Streams: holds one chunk at a time."""
    for chunk in chunked(to_inputs(records, default_topic), batch_size):
        yield pipeline.process(pipeline.decode(chunk)).outcomes


def progress(path: str, desc: str, enabled: bool) -> tqdm:
    """A byte-based bar over the input file (records vary in size; bytes are known upfront)."""
    return tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, desc=desc,
                disable=None if enabled else True, file=sys.stderr, leave=False)


def tracked(reader: RecordReader, bar: tqdm) -> Iterator[Record]:
    """`reader`'s records, advancing `bar` by the bytes read."""
    for record in reader:
        if reader.bytes_read > bar.n:
            bar.update(reader.bytes_read - bar.n)
        yield record
