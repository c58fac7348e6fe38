"""The worker's settings: declared once, read from the environment and the command line once.

Each field's metadata names its environment variable and help text; `Settings.load()` applies
defaults, then `RANKER_*` variables, then `--flags`, and freezes the result. Nothing else in
the code reads the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
from typing import Any, Mapping, Sequence

from worker.topics import DEAD_LETTER_TOPIC, REQUESTS_TOPIC, RESULTS_TOPIC

ENV_PREFIX = "RANKER_"
COMPRESSION_TYPES = ("none", "gzip", "snappy", "lz4", "zstd")
EVENT_LOOPS = ("uvloop", "asyncio")


def _setting(default: Any, help: str, secret: bool = False) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, "secret": secret})


def _int_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected a boolean (true/false), got {text!r}")


class SettingsError(ValueError):
    """A setting with a value the worker cannot run with."""


@dataclasses.dataclass(frozen=True)
class Settings:
    # Kafka
    broker: str = _setting("kafka://127.0.0.1:9092", "bootstrap servers, kafka://host:port[;...]")
    requests_topic: str = _setting(REQUESTS_TOPIC, "input topic")
    results_topic: str = _setting(RESULTS_TOPIC, "output topic")
    dead_letter_topic: str = _setting(DEAD_LETTER_TOPIC, "dead-letter topic")
    partitions: int = _setting(4, "partitions when this worker creates the topics")
    group_id: str = _setting("phoenix-ranker", "consumer group (one per deployment)")
    worker_id: str = _setting("", "id put in results; default host-pid")
    session_timeout_s: float = _setting(6.0, "consumer session timeout (Kafka's minimum is 6)")
    heartbeat_interval_s: float = _setting(0.5, "consumer heartbeat interval")
    fetch_max_wait_ms: int = _setting(10, "consumer fetch long-poll wait (Faust hard-codes 1500)")
    max_poll_interval_s: float = _setting(300.0, "max time between polls before eviction")
    processing_guarantee: str = _setting("at_least_once", "at_least_once or exactly_once")
    # none: on one machine (the demo) bytes are free and CPU is what limits throughput; lz4
    # shrinks demo results ~2.5x for a network between worker and brokers (see README).
    compression_type: str = _setting("none", "codec for results and dead letters: none, gzip, "
                                     "snappy, lz4 or zstd")
    event_loop: str = _setting("uvloop", "the worker's asyncio event loop: uvloop or asyncio")
    data_dir: str = _setting(".cache/faust", "Faust's state directory (created if missing)")
    # Security (passed through to the Kafka clients)
    security_protocol: str = _setting("PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    sasl_mechanism: str = _setting("PLAIN", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    sasl_username: str = _setting("", "SASL user name")
    sasl_password: str = _setting("", "SASL password", secret=True)
    ssl_cafile: str = _setting("", "CA bundle for TLS")
    ssl_certfile: str = _setting("", "client certificate for mutual TLS")
    ssl_keyfile: str = _setting("", "client key for mutual TLS")
    # Batching and model
    max_batch_size: int = _setting(64, "most records taken from Kafka per batch")
    max_batch_wait_ms: float = _setting(5.0, "longest wait to fill a batch")
    batch_buckets: tuple[int, ...] = _setting((1, 2, 4, 8, 16, 32, 64),
                                              "requests per model call compiled at start")
    candidate_buckets: tuple[int, ...] = _setting(
        (), "candidate widths compiled (default: C, 2C, 4C, ... up to max_candidates)")
    cache_budget_mb: float = _setting(256.0, "most cached user+history keys/values one model "
                                      "call may hold, MiB (start-up fails if over)")
    checkpoint: str = _setting("checkpoints/demo.npz", "model checkpoint file, or a directory "
                               "of versions (the newest serves); 'random' = fresh model")
    checkpoint_poll_s: float = _setting(
        5.0, "seconds between looks for a new checkpoint version to load live (0 = never)")
    device: str = _setting("auto", "auto, cpu or gpu")
    jax_cache_dir: str = _setting(".cache/jax", "persistent compilation cache ('' = off)")
    max_age_ms: int = _setting(0, "dead-letter requests older than this (0 = never)")
    # Input caps
    max_message_bytes: int = _setting(1 << 20, "largest request accepted, in bytes")
    max_history: int = _setting(512, "most history items accepted on the wire")
    max_candidates: int = _setting(1024, "most candidates accepted per request")
    # Health
    metrics_port: int = _setting(9100, "Prometheus /metrics and /ready port (0 = off)")
    breaker_window: int = _setting(200, "recent messages the dead-letter breaker looks at")
    breaker_threshold: float = _setting(0.5, "failing share that stops consumption")
    breaker_cooldown_s: float = _setting(30.0, "pause before the breaker retries")
    log_level: str = _setting("INFO", "logging level")

    def __post_init__(self) -> None:
        checks = [
            (self.max_batch_size >= 1, "max_batch_size must be >= 1"),
            (self.max_batch_wait_ms >= 0, "max_batch_wait_ms must be >= 0"),
            (self.checkpoint_poll_s >= 0, "checkpoint_poll_s must be >= 0 (0 = never)"),
            (self.partitions >= 1, "partitions must be >= 1"),
            (self.fetch_max_wait_ms >= 1, "fetch_max_wait_ms must be >= 1 (0 busy-polls the broker)"),
            (self.processing_guarantee in ("at_least_once", "exactly_once"),
             "processing_guarantee must be at_least_once or exactly_once"),
            (self.security_protocol in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
             "security_protocol must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
            (self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
             "sasl_mechanism must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
            (self.device in ("auto", "cpu", "gpu"), "device must be auto, cpu or gpu"),
            (self.event_loop in EVENT_LOOPS, "event_loop must be uvloop or asyncio"),
            (self.compression_type in COMPRESSION_TYPES,
             f"compression_type must be one of {', '.join(COMPRESSION_TYPES)}"),
            (0 < self.breaker_threshold <= 1, "breaker_threshold must be in (0, 1]"),
            (self.breaker_window >= 1, "breaker_window must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise SettingsError(f"{message} (check {ENV_PREFIX}* variables and flags)")

    @property
    def resolved_worker_id(self) -> str:
        return self.worker_id or f"{socket.gethostname()}-{os.getpid()}"

    @property
    def bootstrap_servers(self) -> str:
        """host:port[,host:port] for plain Kafka clients."""
        return ",".join(part.split("://", 1)[-1] for part in self.broker.split(";"))

    @property
    def producer_compression(self) -> str | None:
        """The codec as Kafka clients take it (None: uncompressed)."""
        return None if self.compression_type == "none" else self.compression_type

    @property
    def faust_broker(self) -> str:
        return self.broker if "://" in self.broker else f"kafka://{self.broker}"

    def describe(self) -> str:
        """One line per setting, secrets masked: printed once at start."""
        lines = []
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.metadata.get("secret") and value:
                value = "***"
            lines.append(f"  {field.name:<22} {value!r}")
        return "\n".join(lines)

    @classmethod
    def env_name(cls, name: str) -> str:
        return ENV_PREFIX + name.upper()

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for field in dataclasses.fields(cls):
            parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name,
                                default=None, metavar=cls.env_name(field.name),
                                help=f"{field.metadata['help']} (default {field.default!r})")

    @classmethod
    def load(cls, argv: Sequence[str] | None = (), environ: Mapping[str, str] | None = None,
             **overrides: Any) -> "Settings":
        """Defaults < environment < command line < keyword overrides (tests)."""
        environ = os.environ if environ is None else environ
        parser = argparse.ArgumentParser(add_help=False)
        cls.add_arguments(parser)
        args, _ = parser.parse_known_args(list(argv or ()))
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = getattr(args, field.name)
            if raw is None:
                raw = environ.get(cls.env_name(field.name))
            if raw is None:
                continue
            try:
                values[field.name] = _convert(field.default, raw)
            except ValueError as exc:
                raise SettingsError(f"{cls.env_name(field.name)} / --"
                                    f"{field.name.replace('_', '-')}: {exc}") from None
        values.update(overrides)
        return cls(**values)


def _convert(default: Any, raw: str) -> Any:
    if isinstance(default, bool):
        return _bool(raw)
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    if isinstance(default, tuple):
        return _int_tuple(raw)
    return raw
