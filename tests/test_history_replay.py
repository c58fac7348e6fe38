"""Server-side history offline: the producer's `--server-history` output replayed with
`--engagements` ranks exactly as the same requests carrying the table's history."""

from __future__ import annotations

import collections

import pytest

from phoenix.runner import RankingRunner
from tests.phoenix_helpers import TINY
from tools import producer
from tools.replay.__main__ import main
from tools.recordfile import read_records, write_records, Record
from worker import codec, wire
from worker.errors import ValidationError

FLAGS = ["--batch-buckets", "1,4,16", "--max-candidates", "16", "--no-progress"]
STAMP_MS = 1_700_000_000_000
ITEM_KEYS = ("post_id", "author_id", "actions", "surface")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny.npz")
    RankingRunner.create(TINY, seed=3, model_version="tiny").save(path)
    return path


def run_cli(capsys, *argv):
    code = main(list(argv), environ={})
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def results_of(path: str) -> dict[str, dict]:
    messages = (codec.decode_message(r.value) for r in read_records(path))
    return {m["request_id"]: m for m in messages if "ranked" in m}


def test_replay_with_engagements_equals_requests_carrying_the_table_history(
        capsys, tmp_path, checkpoint):
    events = list(producer.generate_events(seed=5, count=60, bad_fraction=0.1))
    v2, engagements = str(tmp_path / "v2.rec"), str(tmp_path / "eng.rec")
    written = producer.write_events_to_file(
        producer.with_server_history(events), v2, fixed_timestamp_ms=STAMP_MS,
        engagements_path=engagements)
    assert written == len(events)  # every request once; engagements in their own file

    # What the table holds per user after every engagement, as a v1 request would carry it:
    # ordered by timestamp (equal times in arrival order), an item with the post and time of
    # one already kept dropped as a duplicate (the world repeats posts across histories, and
    # with one fixed stamp two requests of a user give the same times).
    seen = collections.defaultdict(dict)  # user -> {(post, time): (time, arrival, item)}
    for arrival, record in enumerate(read_records(engagements)):
        m = codec.decode_message(record.value)
        seen[m["user_id"]].setdefault((m["post_id"], m["timestamp_ms"]), (
            m["timestamp_ms"], arrival, {k: m[k] for k in ITEM_KEYS}))
    by_user = {user: [item for *_, item in sorted(kept.values(), key=lambda v: v[:2])]
               for user, kept in seen.items()}
    v1_records = []
    for record in read_records(v2):
        try:
            message = codec.decode_message(record.value)
        except ValidationError:
            continue  # a malformed event (kept v1 by the producer)
        if message.get("schema") != wire.REQUEST_SCHEMA_V2:
            continue
        explicit = {**message, "schema": wire.REQUEST_SCHEMA,
                    "history": by_user[message["user_id"]][-TINY.history_seq_len:]}
        v1_records.append(Record(value=codec.encode_request(explicit), key=record.key,
                                 timestamp_ms=STAMP_MS, topic=record.topic))
    v1 = str(tmp_path / "v1.rec")
    write_records(v1, v1_records)
    assert len(v1_records) == sum(e.kind == producer.VALID for e in events)

    out = run_cli(capsys, "offline", v2, "--out", str(tmp_path / "v2-out.rec"),
                  "--engagements", engagements, "--checkpoint", checkpoint, *FLAGS)
    assert "engagements: " in out and " 0 invalid" in out
    run_cli(capsys, "offline", v1, "--out", str(tmp_path / "v1-out.rec"),
            "--checkpoint", checkpoint, *FLAGS)
    from_table, explicit = results_of(str(tmp_path / "v2-out.rec")), results_of(
        str(tmp_path / "v1-out.rec"))
    assert sorted(from_table) == sorted(explicit) and len(explicit) == len(v1_records)
    for request_id, result in from_table.items():
        assert result["schema"] == "ranking-result.v2" and result["history_source"] == "table"
        assert result["history_items"] == min(TINY.history_seq_len,
                                              len(by_user[result["user_id"]]))
        assert result["ranked"] == explicit[request_id]["ranked"], request_id

    # Without the engagements, the same requests rank with empty histories.
    run_cli(capsys, "offline", v2, "--out", str(tmp_path / "bare.rec"), "--checkpoint",
            checkpoint, *FLAGS)
    assert {r["history_items"] for r in results_of(str(tmp_path / "bare.rec")).values()} == {0}


def test_server_history_events_send_each_history_first_then_a_v2_request():
    events = list(producer.generate_events(seed=2, count=12, bad_fraction=0.2))
    out = list(producer.with_server_history(events))
    assert [e.index for e in out if not e.engagement] == [e.index for e in events]
    sent_ms = 1_000_000
    for event in events:
        mine = [e for e in out if e.index == event.index]
        if event.kind != producer.VALID:  # malformed events are left as they were
            assert mine == [event]
            continue
        request = codec.decode_message(mine[-1].encode(sent_ms))
        assert request["schema"] == wire.REQUEST_SCHEMA_V2 and "history" not in request
        engagements = [codec.decode_message(e.encode(sent_ms)) for e in mine[:-1]]
        assert [{k: m[k] for k in ITEM_KEYS} for m in engagements] == event.request["history"]
        times = [m["timestamp_ms"] for m in engagements]
        assert times == sorted(set(times)) and times[-1] < request["timestamp_ms"]
        assert {m["user_id"] for m in engagements} == {request["user_id"]}
        assert all(e.key == codec.user_key(request["user_id"]) for e in mine)


def test_server_history_file_output_needs_an_engagements_file(capsys, tmp_path):
    with pytest.raises(SystemExit):
        producer.main(["--count", "2", "--out", str(tmp_path / "r.rec"), "--server-history"])
    assert "--engagements-out" in capsys.readouterr().err
