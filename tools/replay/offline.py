"""`replay offline`: rank a record file with the worker's pipeline, write every outcome."""

from __future__ import annotations

import argparse
import collections
import dataclasses
import math
import os
import time
from collections.abc import Iterable, Mapping

from phoenix import compilations
from tools.recordfile import Record, RecordReader, RecordWriter
from tools.replay import files
from tools.replay.files import ReplayError, iter_outcome_batches, replay_pipeline
from worker import history
from worker.pipeline import Outcome, RankingPipeline
from worker.settings import Settings


def outcome_record(outcome: Outcome, results_topic: str, dead_letter_topic: str,
                   timestamp_ms: int) -> Record:
    """The file record of one outcome, as the worker would publish it (never went to Kafka)."""
    topic = results_topic if outcome.is_result else dead_letter_topic
    return Record(value=outcome.value, key=outcome.key, timestamp_ms=timestamp_ms, topic=topic)


@dataclasses.dataclass(frozen=True)
class OfflineSummary:
    requests: int  # records read
    results: int  # ranked
    dead_letters: Mapping[str, int]  # dead-letter code -> count (codes seen only)
    seconds: float  # wall time of reading, ranking and writing
    model_version: str
    compilations: int  # XLA compilations in the process during the run
    by_version: Mapping[str, int] = dataclasses.field(default_factory=dict)  # results per model

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else math.nan

    def lines(self) -> list[str]:
        letters = ", ".join(f"{code} {n}" for code, n in sorted(self.dead_letters.items()))
        return [
            f"requests      {self.requests}",
            f"results       {self.results}",
            f"dead letters  {sum(self.dead_letters.values())}" + (f" ({letters})" if letters
                                                                  else ""),
            f"requests/s    {self.requests_per_s:.1f} ({self.seconds:.2f} s, "
            f"{self.compilations} compilations)",
            f"model         {self.model_version}" + (
                " (results by model: " + ", ".join(f"{v} {n}" for v, n in sorted(
                    self.by_version.items())) + ")" if len(self.by_version) > 1 else ""),
        ]


def summarize(codes: Iterable[str | None], seconds: float, model_version: str,
              compilations: int = 0, versions: Iterable[str | None] = ()) -> OfflineSummary:
    """Summary from each outcome's dead-letter code (None for a result) and, optionally,
    each outcome's model version (None for a dead letter)."""
    counts = collections.Counter(codes)
    results = counts.pop(None, 0)
    by_version = collections.Counter(v for v in versions if v is not None)
    return OfflineSummary(requests=results + sum(counts.values()), results=results,
                          dead_letters=dict(counts), seconds=seconds,
                          model_version=model_version, compilations=compilations,
                          by_version=dict(by_version))


def run_offline(path: str, out_path: str, pipeline: RankingPipeline, batch_size: int, *,
                results_topic: str, dead_letter_topic: str, requests_topic: str = "",
                progress: bool = True) -> OfflineSummary:
    """Ranks every record of `path`, writes every outcome to `out_path`, returns the summary.

    The output appears only when complete (written beside it, then renamed): a damaged input
    raises its `RecordFileError` and leaves no partial results file behind.
    """
    if os.path.abspath(path) == os.path.abspath(out_path):
        raise ReplayError(f"--out {out_path} is the input file; write the results elsewhere")
    partial = out_path + ".partial"
    codes: list[str | None] = []
    versions: list[str | None] = []
    compiled_before = compilations.count()
    start = time.perf_counter()
    try:
        with RecordReader(path) as reader, RecordWriter(partial) as out, \
                files.progress(path, "offline", progress) as bar:
            for outcomes in iter_outcome_batches(files.tracked(reader, bar), pipeline,
                                                 batch_size, requests_topic):
                now = time.time_ns() // 1_000_000
                for outcome in outcomes:
                    out.write(outcome_record(outcome, results_topic, dead_letter_topic, now))
                    codes.append(outcome.dead_letter_code)
                    versions.append(outcome.model_version)
        os.replace(partial, out_path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return summarize(codes, time.perf_counter() - start, pipeline.runner.model_version,
                     compilations.count() - compiled_before, versions)


def command(args: argparse.Namespace, settings: Settings) -> None:
    """`replay offline`: prints where the results went and the summary."""
    table: history.HistoryTable = {}
    pipeline = replay_pipeline(settings, args.checkpoint, table)
    files.load_history_file(args.engagements, [(pipeline, table)], settings)
    summary = run_offline(args.file, args.out, pipeline, settings.max_batch_size,
                          results_topic=settings.results_topic,
                          dead_letter_topic=settings.dead_letter_topic,
                          requests_topic=settings.requests_topic,
                          progress=not args.no_progress)
    print(f"{args.file} -> {args.out}")
    print("\n".join(summary.lines()))
