"""The record file: round trips, and a typed error for each way a file can be wrong."""

from __future__ import annotations

import os

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.errors import WorkerError
from tools.recordfile import (
    FORMAT_NAME,
    BadRecordError,
    ForeignFileError,
    Record,
    RecordFileError,
    RecordReader,
    RecordWriter,
    TruncatedFileError,
    UnsupportedVersionError,
    read_records,
    write_records,
)


def _records(n: int) -> list[Record]:
    return [Record(value=bytes([i]) * (i * 7), key=None if i % 3 == 0 else i.to_bytes(8, "big"),
                   timestamp_ms=1_700_000_000_000 + i, topic="ranking-requests",
                   partition=None if i % 2 else i % 4, offset=None if i % 2 else i)
            for i in range(n)]


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _good_fields(**changes: object) -> dict:
    fields = {"value": b"v", "key": b"k", "timestamp_ms": 1, "topic": "t", "partition": 0,
              "offset": 0}
    fields.update(changes)
    return fields


def test_round_trip(tmp_path):
    path = tmp_path / "r.rec"
    records = _records(50) + [Record(value=b"")]  # empty value (a tombstone-like message)
    assert write_records(path, records) == len(records)
    assert list(read_records(path)) == records


def test_reader_reports_header_and_bytes_read(tmp_path):
    path = tmp_path / "r.rec"
    write_records(path, _records(3))
    with RecordReader(path) as reader:
        assert list(reader) == _records(3)
        assert reader.header == {"format": FORMAT_NAME, "version": 1}
        assert reader.bytes_read == os.path.getsize(path)


def test_round_trip_across_read_chunks(tmp_path):
    # Records bigger than the 1 MiB read chunk must be reassembled across feeds.
    path = tmp_path / "big.rec"
    records = [Record(value=bytes(range(256)) * 9000, topic="t"), Record(value=b"x", topic="t")]
    write_records(path, records)
    assert list(read_records(path)) == records


@settings(max_examples=40, deadline=None)
@given(st.lists(st.builds(
    Record,
    value=st.binary(max_size=64),
    key=st.none() | st.binary(max_size=8),
    timestamp_ms=st.integers(min_value=0, max_value=2**63 - 1),
    topic=st.text(max_size=20),
    partition=st.none() | st.integers(min_value=0, max_value=2**31 - 1),
    offset=st.none() | st.integers(min_value=0, max_value=2**63 - 1),
), max_size=10))
def test_round_trip_property(tmp_path_factory, records):
    path = tmp_path_factory.mktemp("prop") / "p.rec"
    write_records(path, records)
    assert list(read_records(path)) == records


def test_errors_share_the_worker_root():
    for cls in (ForeignFileError, UnsupportedVersionError, TruncatedFileError, BadRecordError):
        assert issubclass(cls, RecordFileError)
    assert issubclass(RecordFileError, WorkerError)


@pytest.mark.parametrize("content", [
    pytest.param(b"request_id,user_id\nabc,1\n", id="csv-text"),
    pytest.param(b'{"format": "phoenix-ranking-records"}', id="json"),
    pytest.param(_pack({"format": "other-records", "version": 1}), id="other-format"),
    pytest.param(_pack([FORMAT_NAME, 1]), id="header-not-a-map"),
    pytest.param(b"\xc1\xc1\xc1", id="not-msgpack"),
    pytest.param(b"\xdb\xff\xff\xff\xff", id="claims-a-4GiB-string"),
])
def test_foreign_file(tmp_path, content):
    path = tmp_path / "foreign.bin"
    path.write_bytes(content)
    with pytest.raises(ForeignFileError, match="is not a record file"):
        list(read_records(path))


def test_empty_file_is_foreign(tmp_path):
    path = tmp_path / "empty.rec"
    path.write_bytes(b"")
    with pytest.raises(ForeignFileError, match="is empty: no header"):
        list(read_records(path))


def test_unsupported_version(tmp_path):
    path = tmp_path / "v2.rec"
    path.write_bytes(_pack({"format": FORMAT_NAME, "version": 2}) + _pack(_good_fields()))
    with pytest.raises(UnsupportedVersionError, match=r"version 2 is not supported.*reads "
                                                      r"version 1"):
        list(read_records(path))


@pytest.mark.parametrize("cut", [1, 5, 20])
def test_truncated_file_names_record_and_offset(tmp_path, cut):
    records = _records(6)
    full, intact = tmp_path / "full.rec", tmp_path / "intact.rec"
    write_records(full, records)
    write_records(intact, records[:5])  # where record 5 starts, measured independently
    start = os.path.getsize(intact)
    data = full.read_bytes()
    assert len(data) - start > cut  # the cut really lands inside record 5
    truncated = tmp_path / "cut.rec"
    truncated.write_bytes(data[:-cut])

    seen = []
    with pytest.raises(TruncatedFileError, match=rf"record 5 at byte {start}: the file ends "
                                                 rf"inside this record.*truncate the file to "
                                                 rf"{start} bytes"):
        for record in read_records(truncated):
            seen.append(record)
    assert seen == records[:5]  # everything before the damage is still delivered


def test_truncated_header_is_foreign(tmp_path):
    path = tmp_path / "h.rec"
    path.write_bytes(_pack({"format": FORMAT_NAME, "version": 1})[:-3])
    with pytest.raises(ForeignFileError, match="not a record file"):
        list(read_records(path))


@pytest.mark.parametrize("fields, message", [
    pytest.param({k: v for k, v in _good_fields().items() if k != "topic"},
                 r"missing \['topic'\]", id="missing-field"),
    pytest.param(_good_fields(headers=[]), r"unknown \['headers'\]", id="unknown-field"),
    pytest.param(_good_fields(value="text"), r"field 'value' must be bytes, got str",
                 id="value-str"),
    pytest.param(_good_fields(timestamp_ms=1.5), r"field 'timestamp_ms' must be int, got float",
                 id="timestamp-float"),
    pytest.param(_good_fields(partition=True), r"field 'partition' must be int or None",
                 id="partition-bool"),
    pytest.param([b"v"], r"expected a map", id="not-a-map"),
])
def test_record_with_wrong_fields(tmp_path, fields, message):
    path = tmp_path / "bad.rec"
    path.write_bytes(_pack({"format": FORMAT_NAME, "version": 1}) + _pack(_good_fields())
                     + _pack(fields))
    reader = read_records(path)
    assert next(reader) == Record(**_good_fields())
    with pytest.raises(BadRecordError, match=rf"record 1 at byte \d+: {message}"):
        next(reader)


def test_corrupt_record_bytes(tmp_path):
    path = tmp_path / "corrupt.rec"
    path.write_bytes(_pack({"format": FORMAT_NAME, "version": 1}) + b"\xc1" + b"\x00" * 10)
    with pytest.raises(BadRecordError, match=r"record 0 at byte \d+: not decodable as msgpack"):
        list(read_records(path))


def test_writer_refuses_bad_record(tmp_path):
    with RecordWriter(tmp_path / "w.rec") as out:
        with pytest.raises(BadRecordError, match="field 'value' must be bytes"):
            out.write(Record(value="not bytes"))  # type: ignore[arg-type]
        assert out.count == 0


def test_writer_must_be_open(tmp_path):
    writer = RecordWriter(tmp_path / "w.rec")
    with pytest.raises(RecordFileError, match="writer is not open"):
        writer.write(Record(value=b"x"))
