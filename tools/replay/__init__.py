"""Replay: rank recorded requests offline, copy topics to files and back, compare two models.

    python -m tools.replay offline FILE --out RESULTS [--checkpoint PATH] [--batch-size N]
                                   [--engagements ENGAGEMENTS]
    python -m tools.replay record TOPIC FILE [--bootstrap HOST:PORT] [--count N] [--timeout-s S]
    python -m tools.replay publish FILE [--topic T] [--rate R | --recorded-pace]
    python -m tools.replay compare FILE --checkpoint A --checkpoint B [--k 5] [--top 10]

FILE is a record file (`tools/recordfile.py`): the mock producer's `--out` or `replay record`.
`offline` and `compare` rank with `RankingPipeline`, the worker's own decode / validate /
assemble / rank / encode code, built by the worker's `build_pipeline` from its `Settings` (so
`RANKER_*` variables and any worker flag such as `--batch-buckets` or `--max-candidates` apply),
in chunks of `max_batch_size` records like the worker's batches. Differences from the live
worker, on purpose:
  * the worker's `max_age_ms` is not applied (a recorded file is old by definition); a
    request's own `deadline_ms` still is, against the replay's clock;
  * records that never went through Kafka (partition/offset None) are given partition 0 and
    their index in the file as offset, so dead letters still name `topic[partition]@offset`.

`--engagements FILE` (offline, compare) first applies every engagement of a record file (the
producer's `--engagements-out`, or `replay record user-engagements FILE`) to a history table
as the worker's history agent does, so v2 requests without history rank as they would live
after those engagements; without it, such requests rank with an empty history.

`record` reads from the beginning with manual assignment (no consumer group, nothing
committed) and stops after `--count` records or `--timeout-s` without a new one: the embedded
tansu broker misreports end offsets, so "read to the end offset" cannot be trusted. `publish`
sends the value bytes untouched with their keys (so the default partitioner puts one user on
one partition), stamps them with the send time and waits for every ack.

Exit codes: 0 done, 1 Kafka failed, 2 bad input (a truncated or foreign record file, a bad
checkpoint or setting, a missing topic), with a one-line message.

Modules, one per subcommand: `__main__` (arguments, exit codes), `offline`, `compare`,
`record`, `publish`; `stats` (Kendall tau, top-k overlap) and `files` (what the file
subcommands share: chunks, inputs, progress, the pipeline and its history table).
"""
