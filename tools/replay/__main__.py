"""`python -m tools.replay`: the arguments of every subcommand, the worker settings, and the
exit codes (0 done, 1 Kafka failed, 2 bad input with a one-line message)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence

import tools.replay
from phoenix.errors import PhoenixError
from tools.replay import compare, offline, publish, record
from worker.errors import WorkerError
from worker.settings import Settings

PROG = "python -m tools.replay"
EXIT_OK, EXIT_KAFKA, EXIT_USAGE = 0, 1, 2

_COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], None]] = {
    "offline": offline.command, "compare": compare.command,
    "record": record.command, "publish": publish.command,
}


def _settings_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{PROG} ... [worker settings]", add_help=False)
    Settings.add_arguments(parser)
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=tools.replay.__doc__.split("\n\n")[0],
        epilog="offline, compare, record and publish also take any worker setting flag "
               "(e.g. --batch-buckets 1,8,64, --max-candidates, --broker) and RANKER_* variables.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--no-progress", action="store_true", help="hide progress bars")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    offline_ = commands.add_parser("offline", parents=[common],
                                   help="rank a record file without Kafka")
    offline_.add_argument("file", help="record file of requests")
    offline_.add_argument("--out", required=True,
                          help="record file for results and dead letters")
    offline_.add_argument("--checkpoint",
                          help="model checkpoint (default: the worker's setting)")
    offline_.add_argument("--engagements", metavar="FILE", help="record file of engagements "
                          "applied to the history table first (for v2 requests without history)")
    offline_.add_argument("--batch-size", type=int, help="records per batch (default: the "
                          "worker's max_batch_size)")

    record_ = commands.add_parser("record", parents=[common],
                                  help="copy a topic's messages into a record file")
    record_.add_argument("topic")
    record_.add_argument("file", help="record file to write")
    record_.add_argument("--bootstrap", help="host:port[,...] (default: the worker's broker)")
    record_.add_argument("--count", type=int, help="stop after this many messages")
    record_.add_argument("--timeout-s", type=float, default=record.DEFAULT_IDLE_TIMEOUT_S,
                         help=f"stop after this long without a message "
                              f"(default {record.DEFAULT_IDLE_TIMEOUT_S})")

    publish_ = commands.add_parser("publish", parents=[common],
                                   help="send a record file's messages to a topic")
    publish_.add_argument("file", help="record file to send")
    publish_.add_argument("--topic", help="default: the worker's requests topic")
    publish_.add_argument("--bootstrap", help="host:port[,...] (default: the worker's broker)")
    pacing = publish_.add_mutually_exclusive_group()
    pacing.add_argument("--rate", type=float, default=0.0,
                        help="messages per second (default 0: as fast as acks allow)")
    pacing.add_argument("--recorded-pace", action="store_true",
                        help="keep the gaps between the records' timestamps")
    publish_.add_argument("--max-request-bytes", type=int,
                          default=publish.DEFAULT_MAX_REQUEST_BYTES,
                          help=f"largest producer request "
                               f"(default {publish.DEFAULT_MAX_REQUEST_BYTES})")

    compare_ = commands.add_parser("compare", parents=[common],
                                   help="rank a file with two checkpoints, compare")
    compare_.add_argument("file", help="record file of requests")
    compare_.add_argument("--checkpoint", action="append", required=True, metavar="PATH",
                          help="give exactly twice: model A, then model B")
    compare_.add_argument("--k", type=int, default=compare.DEFAULT_K,
                          help=f"top-k for the overlap (default {compare.DEFAULT_K})")
    compare_.add_argument("--top", type=int, default=compare.DEFAULT_TOP_CHANGES,
                          help=f"largest score changes shown "
                               f"(default {compare.DEFAULT_TOP_CHANGES})")
    compare_.add_argument("--engagements", metavar="FILE", help="record file of engagements "
                          "applied to the history table first (for v2 requests without history)")
    compare_.add_argument("--batch-size", type=int, help="records per batch (default: the "
                          "worker's max_batch_size)")
    compare_.add_argument("--summary-only", action="store_true",
                          help="print the summary, not one line per request")
    return parser


def _settings(rest: Sequence[str], environ: Mapping[str, str] | None,
              batch_size: int | None = None) -> Settings:
    _settings_parser().parse_args(list(rest))  # unknown flags: usage error, exit 2
    overrides = {"max_batch_size": batch_size} if batch_size is not None else {}
    return Settings.load(rest, environ, **overrides)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    from aiokafka.errors import KafkaError  # imported lazily by the Kafka parts too

    args, rest = _parser().parse_known_args(argv)
    try:
        settings = _settings(rest, environ, getattr(args, "batch_size", None))
        _COMMANDS[args.command](args, settings)
    except (WorkerError, PhoenixError, OSError) as error:  # our roots; a file it cannot read
        print(f"replay {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except KafkaError as error:
        print(f"replay {args.command}: Kafka error: {_one_line(error)}", file=sys.stderr)
        return EXIT_KAFKA
    return EXIT_OK


def _one_line(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
