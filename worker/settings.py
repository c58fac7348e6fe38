"""The worker's settings: declared once, read from the environment and the command line once.

Each field's metadata names its environment variable and help text; `Settings.load()` applies
defaults, then `RANKER_*` variables, then `--flags`, and freezes the result. Nothing else in
the code reads the environment. A secret (a password) can also come from a file named by
`RANKER_<NAME>_FILE` or `--<name>-file` (a mounted secret), and is never printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import socket
import textwrap
from typing import Any, Mapping, Sequence

from worker.errors import WorkerError
from worker.topics import DEAD_LETTER_TOPIC, ENGAGEMENTS_TOPIC, REQUESTS_TOPIC, RESULTS_TOPIC

ENV_PREFIX = "RANKER_"
COMPRESSION_TYPES = ("none", "gzip", "snappy", "lz4", "zstd")
EVENT_LOOPS = ("uvloop", "asyncio")
HISTORY_STORES = ("memory", "rocksdb")
BATCH_POLICIES = ("deadline", "fixed")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
PROG = "python -m worker.app"
HELP_HINT = f"`{PROG} --help` lists every setting"
# The fetch wait the embedded broker needs: tansu answers a waiting fetch only when the wait
# runs out, even once records are there, so the wait is added to every delivery. Every client
# of the embedded broker uses it (the worker's consumer: RANKER_FETCH_MAX_WAIT_MS).
EMBEDDED_BROKER_FETCH_WAIT_MS = 10


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


class SettingsError(WorkerError, ValueError):
    """A setting with a value the worker cannot run with (or a flag that is not a setting).
    The message is one line that names the variable or flag to change."""


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps help text at spaces only, so topic names and flags are never cut at a hyphen."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=100)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(text, width, break_on_hyphens=False)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error raises `SettingsError` (one line, the caller's exit code)
    instead of printing the usage block and exiting from inside a library call."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise SettingsError(f"{message} (`{self.prog} --help` lists every setting)")


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _closest(word: str, choices: Sequence[str]) -> str | None:
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return match[0] if match else None


@dataclasses.dataclass(frozen=True)
class Settings:
    # Kafka
    broker: str = _setting("kafka://127.0.0.1:9092", "bootstrap servers, kafka://host:port[;...]")
    requests_topic: str = _setting(REQUESTS_TOPIC, "input topic")
    results_topic: str = _setting(RESULTS_TOPIC, "output topic")
    dead_letter_topic: str = _setting(DEAD_LETTER_TOPIC, "dead-letter topic")
    engagements_topic: str = _setting(ENGAGEMENTS_TOPIC, "engagement input topic (created with "
                                      "the request topic's partition count)")
    partitions: int = _setting(4, "partitions when this worker creates the topics")
    replication_factor: int = _setting(0, "replicas of each topic this worker creates, its "
                                       "history changelog included (0 = 3, or fewer on a "
                                       "cluster of fewer brokers)")
    group_id: str = _setting("phoenix-ranker", "consumer group (one per deployment)")
    worker_id: str = _setting("", "id put in results; default host-pid")
    session_timeout_s: float = _setting(6.0, "consumer session timeout (Kafka's minimum is 6)")
    heartbeat_interval_s: float = _setting(0.5, "consumer heartbeat interval")
    # Apache Kafka answers a waiting fetch as soon as a record arrives, so the wait only bounds
    # how often an idle worker polls (Kafka's own default). The embedded broker answers only
    # when the wait runs out: everything run on it passes EMBEDDED_BROKER_FETCH_WAIT_MS.
    fetch_max_wait_ms: int = _setting(500, "consumer fetch long-poll wait (Faust hard-codes "
                                      "1500; the embedded broker needs "
                                      f"{EMBEDDED_BROKER_FETCH_WAIT_MS})")
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
    ssl_key_password: str = _setting("", "passphrase of an encrypted ssl_keyfile", secret=True)
    # Batching and model
    batch_policy: str = _setting("deadline", "deadline: batches sized from the model's "
                                 "measured cost, earliest deadline first, hopeless requests "
                                 "shed; fixed: max_batch_size records or max_batch_wait_ms")
    latency_target_ms: float = _setting(50.0, "the deadline policy's latency objective: a "
                                        "batch is predicted to take at most half of it, and "
                                        "a request without a deadline is due this long after "
                                        "it was sent")
    max_batch_size: int = _setting(64, "most records taken from Kafka per batch")
    max_batch_wait_ms: float = _setting(5.0, "longest a fetched record waits to be taken: "
                                        "to fill a batch (fixed policy), to be queued "
                                        "(deadline policy)")
    batch_buckets: tuple[int, ...] = _setting((1, 2, 4, 8, 16, 32, 64),
                                              "requests per model call compiled at start")
    candidate_buckets: tuple[int, ...] = _setting(
        (), "candidate widths compiled (default: C, 2C, 4C, ... up to max_candidates)")
    cache_budget_mb: float = _setting(256.0, "most cached user+history keys/values one model "
                                      "call may hold, MiB (start-up fails if over)")
    checkpoint: str = _setting("checkpoints/demo.npz", "model checkpoint file, or a directory "
                               "of versions (the newest serves); 'random' = fresh model")
    canary_checkpoint: str = _setting(
        "", "a second checkpoint (same model config) that ranks canary_share of the users")
    canary_share: float = _setting(
        0.0, "share of users, 0..1, ranked by the canary (chosen by a hash of the user id)")
    checkpoint_poll_s: float = _setting(
        5.0, "seconds between looks for a new checkpoint version to load live (0 = never)")
    device: str = _setting("auto", "auto, cpu or gpu")
    jax_cache_dir: str = _setting(".cache/jax", "persistent compilation cache ('' = off)")
    max_age_ms: int = _setting(0, "dead-letter requests older than this (0 = never)")
    # Server-side history (the engagements topic kept in a Faust table)
    history_cap: int = _setting(128, "most recent engagements kept per user (at least the "
                                "model's history length S)")
    history_store: str = _setting("memory", "where the history table lives: memory or rocksdb "
                                  "(under data_dir); both rebuilt from its changelog topic")
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
        checks = [  # (setting, holds, the rule)
            ("batch_policy", self.batch_policy in BATCH_POLICIES,
             f"must be one of {', '.join(BATCH_POLICIES)}"),
            ("latency_target_ms", self.latency_target_ms > 0, "must be > 0"),
            ("max_batch_size", self.max_batch_size >= 1, "must be >= 1"),
            # Faust's take() reads a zero `within` as "no timer": batches would wait to be full.
            ("max_batch_wait_ms", self.max_batch_wait_ms > 0,
             "must be > 0 (0 would hold every batch until max_batch_size records arrive)"),
            ("checkpoint_poll_s", self.checkpoint_poll_s >= 0, "must be >= 0 (0 = never)"),
            ("canary_share", 0.0 <= self.canary_share <= 1.0, "must be in 0..1"),
            ("canary_share", self.canary_share == 0.0 or bool(self.canary_checkpoint),
             "needs a canary_checkpoint to rank that share with"),
            ("partitions", self.partitions >= 1, "must be >= 1"),
            ("replication_factor", self.replication_factor >= 0, "must be >= 0 (0 = automatic)"),
            ("history_cap", self.history_cap >= 1, "must be >= 1"),
            ("history_store", self.history_store in HISTORY_STORES, "must be memory or rocksdb"),
            ("fetch_max_wait_ms", self.fetch_max_wait_ms >= 1,
             "must be >= 1 (0 busy-polls the broker)"),
            ("processing_guarantee", self.processing_guarantee in ("at_least_once",
                                                                   "exactly_once"),
             "must be at_least_once or exactly_once"),
            ("security_protocol", self.security_protocol in ("PLAINTEXT", "SSL",
                                                             "SASL_PLAINTEXT", "SASL_SSL"),
             "must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
            ("sasl_mechanism", self.sasl_mechanism in ("PLAIN", "SCRAM-SHA-256",
                                                       "SCRAM-SHA-512"),
             "must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
            ("device", self.device in ("auto", "cpu", "gpu"), "must be auto, cpu or gpu"),
            ("event_loop", self.event_loop in EVENT_LOOPS, "must be uvloop or asyncio"),
            ("compression_type", self.compression_type in COMPRESSION_TYPES,
             f"must be one of {', '.join(COMPRESSION_TYPES)}"),
            ("breaker_threshold", 0 < self.breaker_threshold <= 1, "must be in (0, 1]"),
            ("breaker_window", self.breaker_window >= 1, "must be >= 1"),
            ("metrics_port", 0 <= self.metrics_port <= 65535,
             "must be a TCP port, 1..65535, or 0 for none"),
            ("log_level", self.log_level.upper() in LOG_LEVELS,
             f"must be one of {', '.join(LOG_LEVELS)}"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise SettingsError(f"{self.env_name(name)} / {flag_name(name)}: {name} {rule}, "
                                    f"got {getattr(self, name)!r}")

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

    @staticmethod
    def default_text(field: dataclasses.Field) -> str:
        """A field's default as README and --help show it (as a variable would be written)."""
        default = field.default
        if isinstance(default, tuple):
            return ",".join(map(str, default)) or "(C)"
        return str(default)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for field in dataclasses.fields(cls):
            meaning = field.metadata["help"].replace("%", "%%")  # argparse formats help with %
            parser.add_argument(flag_name(field.name), dest=field.name, default=None,
                                metavar=_METAVARS.get(type(field.default), "TEXT"),
                                help=f"{meaning} [{cls.env_name(field.name)}, default "
                                     f"{cls.default_text(field)!r}]")
            if field.metadata["secret"]:
                parser.add_argument(
                    flag_name(field.name) + "-file", dest=field.name + _FILE, default=None,
                    metavar="PATH", help=f"a file holding the {field.name} (one line; "
                    f"safer than the flag, which `ps` shows) [{cls.env_name(field.name)}"
                    f"{_FILE.upper()}]")

    @classmethod
    def parser(cls, prog: str = PROG) -> argparse.ArgumentParser:
        """The worker's command line: one flag per field, `--help` generated from them."""
        parser = _Parser(
            prog=prog, usage=f"{prog} [--setting VALUE ...]", formatter_class=_HelpFormatter,
            allow_abbrev=False,  # a prefix of a flag is a typo, not that flag
            description="The Phoenix ranking worker: ranks the requests of a Kafka topic and "
                        "publishes the results. Every setting is a flag and a RANKER_* "
                        "environment variable (shown in brackets with its default); flags "
                        "win over variables, variables over defaults.")
        cls.add_arguments(parser)
        return parser

    @classmethod
    def load(cls, argv: Sequence[str] | None = (), environ: Mapping[str, str] | None = None,
             *, tool_flags: Sequence[str] = (), prog: str = PROG,
             **overrides: Any) -> "Settings":
        """Defaults < environment < command line < keyword overrides (tests). A flag or a
        RANKER_* variable that is not a setting raises `SettingsError` naming the closest
        (among the settings and `tool_flags`, the flags of the tool that passes `argv` on)."""
        environ = os.environ if environ is None else environ
        args, unknown = cls.parser(prog).parse_known_args(list(argv or ()))
        if unknown:
            raise SettingsError(_unknown_argument(unknown[0], tool_flags, prog))
        _check_variables(environ)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw, source = getattr(args, field.name), flag_name(field.name)
            if raw is None:
                raw, source = environ.get(cls.env_name(field.name)), cls.env_name(field.name)
            if field.metadata["secret"]:
                raw = _secret(field.name, raw, source, args, environ)
            if raw is None:
                continue
            try:
                values[field.name] = _convert(field.default, raw)
            except ValueError as exc:
                raise SettingsError(f"{source}: {exc}") from None
        values.update(overrides)
        return cls(**values)

    @classmethod
    def variable(cls, name: str, environ: Mapping[str, str] | None = None) -> str | None:
        """The raw RANKER_* value of setting `name`, None when unset (for tools that pick
        their own default when the user gave none)."""
        if name not in {field.name for field in dataclasses.fields(cls)}:
            raise KeyError(f"{name} is not a setting")
        return (os.environ if environ is None else environ).get(cls.env_name(name))


_METAVARS = {int: "INT", float: "NUMBER", tuple: "N,N,...", str: "TEXT"}
_FILE = "_file"  # a secret's file: RANKER_<NAME>_FILE, --<name>-file


def _secret(name: str, raw: str | None, source: str, args: argparse.Namespace,
            environ: Mapping[str, str]) -> str | None:
    """A secret setting's value: `raw` (given directly) or the content of the file its
    `_FILE` flag or variable names (one trailing newline dropped). Errors name the setting
    and the file, never the value."""
    path, path_source = getattr(args, name + _FILE), flag_name(name) + "-file"
    if path is None:
        path_source = Settings.env_name(name) + _FILE.upper()
        path = environ.get(path_source)
    if path is None:
        return raw
    if raw is not None:
        raise SettingsError(f"{source} and {path_source} both give the {name}: set one")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise SettingsError(f"{path_source}: cannot read the {name} from {path!r}: "
                            f"{reason}") from None
    return text[:-1] if text.endswith("\n") else text


def _unknown_argument(argument: str, tool_flags: Sequence[str] = (), prog: str = PROG) -> str:
    hint = f"`{prog} --help` lists them"
    if not argument.startswith("-"):
        return f"unexpected argument {argument!r}: options are given as --flag VALUE; {hint}"
    given = argument.split("=", 1)[0]
    flags = [*tool_flags, *(flag_name(field.name) for field in dataclasses.fields(Settings))]
    close = _closest(given, flags)
    suggestion = f"; did you mean {close}?" if close else ""
    return f"unknown flag {given}{suggestion} ({hint})"


def _check_variables(environ: Mapping[str, str]) -> None:
    """A misspelt RANKER_* variable would otherwise be ignored without a word."""
    known = [Settings.env_name(field.name) for field in dataclasses.fields(Settings)]
    known += [Settings.env_name(field.name) + _FILE.upper()
              for field in dataclasses.fields(Settings) if field.metadata["secret"]]
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known:
            close = _closest(name, known)
            hint = f"; did you mean {close}?" if close else "; unset it"
            raise SettingsError(f"the environment variable {name} is not a setting{hint} "
                                f"({HELP_HINT})")


def _convert(default: Any, raw: str) -> Any:
    try:
        if isinstance(default, bool):
            return _bool(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            return _int_tuple(raw)
    except ValueError:
        kind = {bool: "true or false", int: "an integer", float: "a number",
                tuple: "comma-separated integers (1,8,64)"}.get(type(default), "a value")
        raise ValueError(f"expected {kind}, got {raw!r}") from None
    return raw
