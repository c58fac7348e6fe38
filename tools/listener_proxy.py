"""A second listener for the embedded broker, as Apache Kafka's named listeners provide.

Tansu listens on one address and advertises one name. In a compose network that name is the
service's (`kafka:9092`), which the host cannot resolve; Kafka solves this with a second
listener that advertises `localhost:29092`. This proxy is that second listener: it accepts
Kafka connections, forwards every frame to the broker unchanged, and rewrites the broker
address in the two answers that carry one (Metadata and FindCoordinator), so a client that
bootstrapped here keeps talking here. Every other answer passes through byte for byte
(DescribeCluster too: neither aiokafka nor librdkafka's producer and consumer use it).

    proxy = ListenerProxy(("0.0.0.0", 29092), upstream=("127.0.0.1", 9092),
                          advertised=("localhost", 29092))
    await proxy.serve()  # until cancelled
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable

from worker.errors import WorkerError

METADATA = 3  # Kafka API keys whose answers name brokers
FIND_COORDINATOR = 10
# First flexible (compact-encoded, tagged-field) version of each: its response header and body
# differ from the older encodings.
_FLEXIBLE_FROM = {METADATA: 9, FIND_COORDINATOR: 3}
_MAX_FRAME = 256 * 1024 * 1024  # far above any answer the worker's clients get; guards a bad size


class ProtocolError(WorkerError, ValueError):
    """A frame that does not parse as the Kafka answer its request announced."""


class _Reader:
    def __init__(self, data: bytes, offset: int = 0) -> None:
        self.data, self.pos = data, offset

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolError("frame ends early")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int16(self) -> int:
        return int(struct.unpack(">h", self.take(2))[0])

    def int32(self) -> int:
        return int(struct.unpack(">i", self.take(4))[0])

    def uvarint(self) -> int:
        shift = result = 0
        while True:
            byte = self.take(1)[0]
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7

    def string(self, flexible: bool) -> bytes | None:
        size = self.uvarint() - 1 if flexible else self.int16()
        return None if size < 0 else self.take(size)

    def tagged_fields(self) -> bytes:
        """The raw bytes of a tagged-field section (kept as they are)."""
        start = self.pos
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self.take(self.uvarint())  # size, then the value
        return self.data[start:self.pos]


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string(value: bytes, flexible: bool) -> bytes:
    return _uvarint(len(value) + 1) + value if flexible else struct.pack(">h", len(value)) + value


def _nullable(value: bytes | None, flexible: bool) -> bytes:
    if value is None:
        return b"\x00" if flexible else struct.pack(">h", -1)
    return _string(value, flexible)


def rewrite_response(api_key: int, version: int, frame: bytes, host: str, port: int) -> bytes:
    """`frame` (a response without its size prefix) with every broker address set to
    `host:port`; unchanged for other APIs. Raises `ProtocolError` on a malformed frame."""
    if api_key not in _FLEXIBLE_FROM:
        return frame
    flexible = version >= _FLEXIBLE_FROM[api_key]
    r = _Reader(frame)
    out = bytearray(r.take(4))  # correlation id
    if flexible:
        out += r.tagged_fields()  # response header v1
    new_host = host.encode()

    def address() -> None:
        # node_id, host, port: the one place a broker is named.
        out.extend(r.take(4))
        r.string(flexible)
        r.int32()
        out.extend(_string(new_host, flexible) + struct.pack(">i", port))

    def copy(read: Callable[[], object]) -> None:
        start = r.pos
        read()
        out.extend(frame[start:r.pos])

    if api_key == METADATA:
        if version >= 3:
            copy(r.int32)  # throttle_time_ms
        count = r.uvarint() - 1 if flexible else r.int32()
        out.extend(_uvarint(count + 1) if flexible else struct.pack(">i", count))
        for _ in range(max(count, 0)):
            address()
            if version >= 1:
                out.extend(_nullable(r.string(flexible), flexible))  # rack
            if flexible:
                out.extend(r.tagged_fields())
    elif version < 4:  # FIND_COORDINATOR: one coordinator
        if version >= 1:
            copy(r.int32)  # throttle_time_ms
        copy(r.int16)  # error_code
        if version >= 1:
            out.extend(_nullable(r.string(flexible), flexible))  # error_message
        address()
    else:  # FIND_COORDINATOR v4+: one entry per requested key
        copy(r.int32)
        count = r.uvarint() - 1
        out.extend(_uvarint(count + 1))
        for _ in range(max(count, 0)):
            out.extend(_nullable(r.string(True), True))  # key
            address()
            copy(r.int16)
            out.extend(_nullable(r.string(True), True))
            out.extend(r.tagged_fields())
    out.extend(frame[r.pos:])  # everything after the addresses is copied as it is
    return bytes(out)


async def _read_frame(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readexactly(4)
    except asyncio.IncompleteReadError:
        return None  # the peer closed the connection between frames
    size = struct.unpack(">i", head)[0]
    if not 0 <= size <= _MAX_FRAME:
        raise ProtocolError(f"frame size {size} out of range")
    return await reader.readexactly(size)


def _write_frame(writer: asyncio.StreamWriter, frame: bytes) -> None:
    writer.write(struct.pack(">i", len(frame)) + frame)


class ListenerProxy:
    """Listen on `bind`, forward to the broker at `upstream`, advertise `advertised`."""

    def __init__(self, bind: tuple[str, int], *, upstream: tuple[str, int],
                 advertised: tuple[str, int]) -> None:
        self.bind, self.upstream, self.advertised = bind, upstream, advertised
        self.connections = 0  # accepted so far (tests and logs)

    async def serve(self, started: asyncio.Event | None = None) -> None:
        server = await asyncio.start_server(self._handle, *self.bind)
        async with server:
            if started is not None:
                started.set()
            await server.serve_forever()

    async def _handle(self, client_r: asyncio.StreamReader,
                      client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            broker_r, broker_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        # Kafka answers a connection's requests in order, but a client may send several before
        # the first answer: remember what each correlation id asked for.
        pending: dict[int, tuple[int, int]] = {}

        async def requests() -> None:
            while (frame := await _read_frame(client_r)) is not None:
                if len(frame) >= 8:
                    api_key, version, correlation = struct.unpack(">hhi", frame[:8])
                    pending[correlation] = (api_key, version)
                _write_frame(broker_w, frame)
                await broker_w.drain()

        async def responses() -> None:
            host, port = self.advertised
            while (frame := await _read_frame(broker_r)) is not None:
                correlation = struct.unpack(">i", frame[:4])[0] if len(frame) >= 4 else None
                api_key, version = pending.pop(correlation, (-1, -1))
                _write_frame(client_w, rewrite_response(api_key, version, frame, host, port))
                await client_w.drain()

        tasks = [asyncio.create_task(requests()), asyncio.create_task(responses())]
        try:
            # Either side closing (or a malformed frame) ends the pair: Kafka clients reconnect.
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for writer in (client_w, broker_w):
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()


def parse_address(text: str) -> tuple[str, int]:
    """'host:port' -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)
