"""tools/listener_proxy.py: the embedded broker's second listener (`tools.broker --listener`).

The broker here advertises an address no client can reach, so every client below works only if
the proxy rewrote each broker address it was sent: aiokafka (Metadata v0-v5-era encodings, the
admin client's controller lookup, a consumer group's FindCoordinator) and librdkafka (flexible,
compact-encoded Metadata).
"""

from __future__ import annotations

import asyncio
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ON_KAFKA, consume_async, produce_async
from tests.librdkafka_helpers import librdkafka_producer
from tests.librdkafka_helpers import produce as librdkafka_produce
from tools.broker import EmbeddedBroker, free_port
from tools.listener_proxy import FIND_COORDINATOR, METADATA, ListenerProxy, rewrite_response
from worker.topics import DEFAULT_TOPICS, ensure_topics, partition_counts

pytestmark = [pytest.mark.kafka, pytest.mark.skipif(
    ON_KAFKA, reason="the proxy serves the embedded broker's second listener; Apache Kafka "
    "serves several itself (tests/test_kafka_image.py)")]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hidden_broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(advertise="unreachable.invalid:9") as broker:
        yield broker


def test_clients_reach_the_broker_only_through_the_proxy(hidden_broker: EmbeddedBroker) -> None:
    async def scenario() -> None:
        port = free_port()
        proxy = ListenerProxy(("127.0.0.1", port), upstream=("127.0.0.1", hidden_broker.port),
                              advertised=("127.0.0.1", port))
        ready = asyncio.Event()
        server = asyncio.create_task(proxy.serve(ready))
        await asyncio.wait_for(ready.wait(), 5)
        bootstrap = f"127.0.0.1:{port}"
        try:
            assert await ensure_topics(bootstrap, {"proxied": 2}) == {"proxied": 2}
            assert await partition_counts(bootstrap, ["proxied"]) == {"proxied": 2}
            await produce_async(bootstrap, "proxied", [b"a", b"b", b"c"])
            await asyncio.to_thread(librdkafka_produce, librdkafka_producer(bootstrap),
                                    "proxied", [(b"k", b"d")])
            records = await consume_async(bootstrap, "proxied", 4, group_id="proxied-group",
                                          timeout_s=20)
            assert sorted(r.value for r in records) == [b"a", b"b", b"c", b"d"]
            assert proxy.connections > 0
        finally:
            server.cancel()
            with pytest.raises(asyncio.CancelledError):
                await server

    asyncio.run(scenario())


def _string(text: bytes, flexible: bool) -> bytes:
    return bytes([len(text) + 1]) + text if flexible else struct.pack(">h", len(text)) + text


def test_find_coordinator_v4_entries_are_rewritten() -> None:
    # v4+ (KIP-699) answers one coordinator per key: header tags, throttle, then the entries.
    entry = (_string(b"group", True) + struct.pack(">i", 1) + _string(b"kafka", True)
             + struct.pack(">i", 9092) + struct.pack(">h", 0) + b"\x00" + b"\x00")
    frame = struct.pack(">i", 7) + b"\x00" + struct.pack(">i", 0) + b"\x02" + entry + b"\x00"
    out = rewrite_response(FIND_COORDINATOR, 4, frame, "localhost", 29092)
    assert out == frame.replace(_string(b"kafka", True) + struct.pack(">i", 9092),
                                _string(b"localhost", True) + struct.pack(">i", 29092))


def test_other_answers_pass_unchanged() -> None:
    frame = struct.pack(">i", 1) + b"anything at all"
    assert rewrite_response(18, 3, frame, "localhost", 29092) == frame  # ApiVersions
    metadata_v0 = (struct.pack(">i", 1) + struct.pack(">i", 1) + struct.pack(">i", 0)
                   + _string(b"kafka", False) + struct.pack(">i", 9092) + b"topics...")
    rewritten = rewrite_response(METADATA, 0, metadata_v0, "localhost", 29092)
    assert rewritten.endswith(_string(b"localhost", False) + struct.pack(">i", 29092)
                              + b"topics...")


def test_broker_cli_serves_a_second_listener_and_creates_no_topics() -> None:
    port, host_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.broker", "--port", str(port), "--advertise",
         "unreachable.invalid:9", "--listener", f"127.0.0.1:{host_port}=127.0.0.1:{host_port}",
         "--no-topics"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()  # blocks until ready (or exit: empty string)
        assert f"listener 127.0.0.1:{host_port} advertised as 127.0.0.1:{host_port}" in banner
        assert "topics none" in banner
        bootstrap = f"127.0.0.1:{host_port}"
        assert asyncio.run(partition_counts(bootstrap, list(DEFAULT_TOPICS))) == {}
        asyncio.run(ensure_topics(bootstrap, {"cli-made": 3}))
        assert asyncio.run(partition_counts(bootstrap, ["cli-made"])) == {"cli-made": 3}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_broker_cli_rejects_a_malformed_listener() -> None:
    done = subprocess.run([sys.executable, "-m", "tools.broker", "--listener", "29092"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "BIND:PORT=HOST:PORT" in done.stderr
