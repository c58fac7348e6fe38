"""The record file: Kafka-shaped messages on disk, shared by the producer's `--out` and replay.

Layout: a stream of msgpack maps (use_bin_type=True), no framing beyond msgpack itself.
The first map is the header, every later map is one record:

    header: {"format": "phoenix-ranking-records", "version": 1}
    record: {"value": bytes, "key": bytes | None, "timestamp_ms": int, "topic": str,
             "partition": int | None, "offset": int | None}

`partition`/`offset` are None for records that never went through Kafka (the mock producer's
`--out`); `replay record` fills them from the topic. `value` is the message exactly as it
travels on the wire, so a file can hold malformed requests too (the dead-letter path is tested
from files as well).

Reading streams the file in chunks and never holds more than one record plus a chunk in memory.
Errors are typed: a foreign file, an unsupported version, a truncated tail and a malformed
record each raise their own `RecordFileError` subclass naming the record index and byte offset.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import IO, Any

import msgpack

from worker.errors import WorkerError

FORMAT_NAME = "phoenix-ranking-records"
FORMAT_VERSION = 1
RECORD_FIELDS: tuple[str, ...] = ("value", "key", "timestamp_ms", "topic", "partition", "offset")

# One record holds one Kafka message; Kafka's own default cap is 1 MiB, so 64 MiB leaves room
# for raised broker limits while refusing a corrupt length prefix that claims gigabytes.
MAX_RECORD_BYTES = 64 * 1024 * 1024
_READ_CHUNK = 1024 * 1024

PathLike = str | os.PathLike[str]


class RecordFileError(WorkerError):
    """A record file cannot be read or written as `phoenix-ranking-records`."""


class ForeignFileError(RecordFileError):
    """The file does not start with a `phoenix-ranking-records` header."""


class UnsupportedVersionError(RecordFileError):
    """The header names a format version this code does not read."""


class TruncatedFileError(RecordFileError):
    """The file ends in the middle of a record (the writer was killed or the copy was cut)."""


class BadRecordError(RecordFileError):
    """A record is not a map with exactly the record fields and their types."""


@dataclasses.dataclass(frozen=True)
class Record:
    value: bytes  # the message bytes, untouched
    key: bytes | None = None  # Kafka key (user id, 8 bytes big-endian, for requests)
    timestamp_ms: int = 0  # Kafka record timestamp (producer send time), epoch ms
    topic: str = ""  # topic the record was (or would have been) sent to
    partition: int | None = None  # None when the record never went through Kafka
    offset: int | None = None  # None when the record never went through Kafka

    def to_map(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in RECORD_FIELDS}


def _check_record(fields: Any, where: str) -> Record:
    """Builds a `Record` from a decoded map, or raises `BadRecordError` naming the field."""
    if not isinstance(fields, dict):
        raise BadRecordError(
            f"{where}: expected a map with fields {list(RECORD_FIELDS)}, got "
            f"{type(fields).__name__}; the file is corrupt or not a record file")
    missing = [name for name in RECORD_FIELDS if name not in fields]
    unknown = sorted(str(name) for name in fields if name not in RECORD_FIELDS)
    if missing or unknown:
        problems = "; ".join(part for part in (f"missing {missing}" if missing else "",
                                               f"unknown {unknown}" if unknown else "") if part)
        raise BadRecordError(
            f"{where}: {problems}; a record has exactly the fields {list(RECORD_FIELDS)}")
    expected = {
        "value": (bytes,),
        "key": (bytes, type(None)),
        "timestamp_ms": (int,),
        "topic": (str,),
        "partition": (int, type(None)),
        "offset": (int, type(None)),
    }
    for name, types in expected.items():
        value = fields[name]
        # bool is an int subclass; a bool in an int field is a writer bug, not a number.
        if not isinstance(value, types) or isinstance(value, bool):
            wanted = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            raise BadRecordError(
                f"{where}: field {name!r} must be {wanted}, got {type(value).__name__} "
                f"({value!r:.60})")
    return Record(**{name: fields[name] for name in RECORD_FIELDS})


class RecordWriter:
    """Streams records into a new file. Use as a context manager.

        with RecordWriter(path) as out:
            out.write(Record(value=b"...", key=b"...", timestamp_ms=..., topic="ranking-requests"))

    The file is written in place (a reader can follow it while it grows); if the writer dies
    mid-record the reader reports a `TruncatedFileError` naming the last complete record.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        self._file: IO[bytes] | None = None
        self._packer = msgpack.Packer(use_bin_type=True)
        self.count = 0  # records written so far

    def __enter__(self) -> "RecordWriter":
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        if self._file is not None:
            raise RecordFileError(f"{self.path}: writer is already open")
        self._file = open(self.path, "wb")
        self._file.write(self._packer.pack({"format": FORMAT_NAME, "version": FORMAT_VERSION}))

    def write(self, record: Record) -> None:
        if self._file is None:
            raise RecordFileError(
                f"{self.path}: writer is not open; use `with RecordWriter(path) as out:`")
        fields = record.to_map()
        _check_record(fields, f"{self.path}: record {self.count} to write")
        self._file.write(self._packer.pack(fields))
        self.count += 1

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            finally:
                self._file.close()
                self._file = None


class RecordReader:
    """Streams the records of a file. Use as a context manager and iterate.

        with RecordReader(path) as records:
            for record in records:
                ...

    `header` is the decoded header map; `bytes_read` grows as the file is consumed (for a
    byte-based progress bar: `os.path.getsize(path)` is the total).
    """

    def __init__(self, path: PathLike, *, max_record_bytes: int = MAX_RECORD_BYTES) -> None:
        self.path = os.fspath(path)
        self.max_record_bytes = max_record_bytes
        self.header: dict[str, Any] | None = None
        self.bytes_read = 0
        self._file: IO[bytes] | None = None
        self._unpacker: msgpack.Unpacker | None = None
        self._index = 0  # index of the next record
        self._consumed = 0  # byte offset just after the last complete object
        self._eof = False

    def __enter__(self) -> "RecordReader":
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        if self._file is not None:
            raise RecordFileError(f"{self.path}: reader is already open")
        self._file = open(self.path, "rb")
        self._unpacker = msgpack.Unpacker(
            raw=False, use_list=True, max_buffer_size=self.max_record_bytes + _READ_CHUNK)
        self._read_header()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __iter__(self) -> Iterator[Record]:
        if self._file is None:
            self.open()
        while True:
            where = f"{self.path}: record {self._index} at byte {self._consumed}"
            fields = self._next_object(where)
            if fields is None:
                return
            record = _check_record(fields, where)
            self._index += 1
            yield record

    def _read_header(self) -> None:
        where = f"{self.path}: header at byte 0"
        fix = (f"expected a file written by the mock producer's --out or `replay record` "
               f"(a msgpack map {{'format': {FORMAT_NAME!r}, 'version': {FORMAT_VERSION}}} "
               f"first)")
        try:
            header = self._next_object(where)
        except (TruncatedFileError, BadRecordError) as error:
            raise ForeignFileError(f"{self.path} is not a record file: {error}; {fix}") from error
        if header is None:
            raise ForeignFileError(f"{self.path} is empty: no header; {fix}")
        if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
            shown = repr(header)[:80]
            raise ForeignFileError(
                f"{self.path} is not a record file: it starts with {shown}; {fix}")
        version = header.get("version")
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise UnsupportedVersionError(
                f"{self.path}: record file version {version!r} is not supported (this code reads "
                f"version {FORMAT_VERSION}); read it with the tool version that wrote it or "
                f"re-record it")
        self.header = header

    def _next_object(self, where: str) -> Any | None:
        """The next msgpack object, None at a clean end of file. Feeds chunks as needed."""
        unpacker = self._unpacker
        if unpacker is None or self._file is None:
            raise RecordFileError(f"{self.path}: reader is not open")
        while True:
            try:
                obj = unpacker.unpack()
            except msgpack.OutOfData:
                pass
            except (msgpack.FormatError, msgpack.StackError, ValueError) as error:
                # ValueError covers msgpack's limit errors (a length prefix over the caps).
                raise BadRecordError(
                    f"{where}: not decodable as msgpack ({error}); the file is corrupt") from error
            else:
                self._consumed = unpacker.tell()
                return obj
            if self._eof:
                if self.bytes_read > self._consumed:
                    raise TruncatedFileError(
                        f"{where}: the file ends inside this record ({self.bytes_read} bytes, "
                        f"{self.bytes_read - self._consumed} of them in the partial record); "
                        f"the writer was interrupted or the copy was cut. The first "
                        f"{self._index} records are intact: truncate the file to "
                        f"{self._consumed} bytes to keep them")
                return None
            chunk = self._file.read(_READ_CHUNK)
            if not chunk:
                self._eof = True
                continue
            try:
                unpacker.feed(chunk)
            except msgpack.BufferFull as error:
                raise BadRecordError(
                    f"{where}: record is larger than the {self.max_record_bytes}-byte limit; "
                    f"the file is corrupt, or pass a larger max_record_bytes") from error
            self.bytes_read += len(chunk)


def read_records(path: PathLike) -> Iterator[Record]:
    """Yields every record of a file, streaming; raises a `RecordFileError` subclass on damage."""
    with RecordReader(path) as reader:
        yield from reader


def write_records(path: PathLike, records: "Iterator[Record] | list[Record]") -> int:
    """Writes a new record file; returns the number of records written."""
    with RecordWriter(path) as out:
        for record in records:
            out.write(record)
        return out.count
