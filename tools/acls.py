"""The Kafka ACLs the ranking worker and its request producers need, and no more.

    python -m tools.acls --group phoenix-ranker --principal User:ranker [--exactly-once]
        [--requests T --results T --dead-letters T --engagements T] [--no-create-topics]
        [--producer User:svc] [--reader User:app] [--bootstrap-server HOST:PORT]
        [--command-config admin.properties]

prints them as `kafka-acls.sh` commands, one a line. `worker_acls` and `producer_acls` are the
same list as code: tests/test_secured_kafka.py grants exactly these (tools/kafka_security.py)
and shows a worker ranking with them on a broker that denies everything else.

Kafka implies Describe from Read and Write (on topics, groups and transactional ids), so the
list names neither Describe nor IdempotentWrite: a principal with Write on a topic may start an
idempotent producer (Kafka 3.0 and later).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import shlex
import sys
from collections.abc import Sequence

from worker import topics
from worker.settings import Settings

PROG = "python -m tools.acls"
DEFAULT_BOOTSTRAP = "127.0.0.1:9092"

# Resource types, operations and pattern types, spelled as Kafka's protocol and kafka-acls.sh do.
TOPIC, GROUP, TRANSACTIONAL_ID, CLUSTER = "TOPIC", "GROUP", "TRANSACTIONAL_ID", "CLUSTER"
READ, WRITE, CREATE = "READ", "WRITE", "CREATE"
LITERAL, PREFIXED = "LITERAL", "PREFIXED"
CLUSTER_NAME = "kafka-cluster"  # the one cluster resource's name
# kafka-acls.sh's flag naming each resource type.
_RESOURCE_FLAGS = {TOPIC: "--topic", GROUP: "--group", TRANSACTIONAL_ID: "--transactional-id",
                   CLUSTER: "--cluster"}


@dataclasses.dataclass(frozen=True)
class Acl:
    """One ALLOW rule: `principal` may do `operation` on a resource."""

    principal: str  # "User:name", as the broker's principal builder names the client
    operation: str  # READ, WRITE or CREATE
    resource_type: str  # TOPIC, GROUP, TRANSACTIONAL_ID or CLUSTER
    resource_name: str  # a topic, a group id, a transactional id (prefix), kafka-cluster
    pattern_type: str = LITERAL  # LITERAL: that name; PREFIXED: every name starting with it
    host: str = "*"  # from any host

    def command(self, bootstrap: str = DEFAULT_BOOTSTRAP, command_config: str | None = None
                ) -> str:
        """This rule as a `kafka-acls.sh` command line (`command_config`: the admin's client
        properties file, for a secured broker)."""
        admin = ["--command-config", command_config] if command_config else []
        words = ["kafka-acls.sh", "--bootstrap-server", bootstrap, *admin, "--add",
                 "--allow-principal", self.principal, "--allow-host", self.host,
                 "--operation", _camel(self.operation), _RESOURCE_FLAGS[self.resource_type]]
        if self.resource_type != CLUSTER:
            words.append(self.resource_name)
        if self.pattern_type != LITERAL:
            words += ["--resource-pattern-type", self.pattern_type.lower()]
        return shlex.join(words)


@dataclasses.dataclass(frozen=True)
class WorkerResources:
    """What one worker deployment uses: its consumer group and its four topics."""

    group_id: str  # RANKER_GROUP_ID
    requests: str = topics.REQUESTS_TOPIC  # RANKER_REQUESTS_TOPIC
    results: str = topics.RESULTS_TOPIC  # RANKER_RESULTS_TOPIC
    dead_letters: str = topics.DEAD_LETTER_TOPIC  # RANKER_DEAD_LETTER_TOPIC
    engagements: str = topics.ENGAGEMENTS_TOPIC  # RANKER_ENGAGEMENTS_TOPIC

    @property
    def changelog(self) -> str:
        """The history table's changelog topic (Faust creates, writes and reads it)."""
        return topics.history_changelog_topic(self.group_id)

    @property
    def transactional_id_prefix(self) -> str:
        """Every transactional id the worker uses under exactly-once starts with this: Faust's
        `{group_id}-{group}-{partition}` and start-up's probe `{group_id}-eos-probe`."""
        return f"{self.group_id}-"


def worker_acls(principal: str, resources: WorkerResources, *, exactly_once: bool = False,
                creates_topics: bool = True) -> list[Acl]:
    """The ACLs a worker running as `principal` needs.

    Read: the request and engagement topics, the history changelog (rebuilt from it at start),
    the consumer group. Write: results, dead letters, the changelog. Create, by name (never on
    the cluster): the changelog always, since Faust asks to create it at every start and stops
    when refused (Kafka refuses a principal without Create even a topic that exists); with
    `creates_topics` (the worker's default) the four others too. Without, the deployment
    makes them first, and the worker takes a refusal to create one that exists as "exists".
    `exactly_once`: Write on the transactional ids the worker uses (a prefixed rule); Read on
    the group covers the offsets its transactions commit.
    """
    r = resources
    acls = [Acl(principal, READ, TOPIC, name) for name in (r.requests, r.engagements,
                                                           r.changelog)]
    acls += [Acl(principal, WRITE, TOPIC, name) for name in (r.results, r.dead_letters,
                                                             r.changelog)]
    acls.append(Acl(principal, READ, GROUP, r.group_id))
    created = [r.requests, r.results, r.dead_letters, r.engagements] if creates_topics else []
    acls += [Acl(principal, CREATE, TOPIC, name) for name in [*created, r.changelog]]
    if exactly_once:
        acls.append(Acl(principal, WRITE, TRANSACTIONAL_ID, r.transactional_id_prefix, PREFIXED))
    return acls


def producer_acls(principal: str, requests_topic: str) -> list[Acl]:
    """The ACLs a service that sends ranking requests needs: Write on the request topic."""
    return [Acl(principal, WRITE, TOPIC, requests_topic)]


def reader_acls(principal: str, topics: Sequence[str], group_id: str | None = None
                ) -> list[Acl]:
    """The ACLs a downstream reader of `topics` (results, dead letters) needs: Read on each,
    and Read on its consumer group if it reads in one."""
    acls = [Acl(principal, READ, TOPIC, topic) for topic in topics]
    return acls + ([Acl(principal, READ, GROUP, group_id)] if group_id else [])


def _camel(operation: str) -> str:
    """READ -> Read, IDEMPOTENT_WRITE -> IdempotentWrite (kafka-acls.sh's spelling)."""
    return "".join(part.capitalize() for part in operation.split("_"))


def _principal(text: str) -> str:
    kind, sep, name = text.partition(":")
    if not sep or not kind or not name:
        raise argparse.ArgumentTypeError(f"expected TYPE:NAME such as User:ranker, got {text!r}")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog=PROG, allow_abbrev=False,
        description="Print the kafka-acls.sh commands that grant the ranking worker (and, with "
                    "--producer and --reader, request producers and result readers) what it "
                    "needs.")
    parser.add_argument("--principal", required=True, type=_principal,
                        help="the worker's principal, e.g. User:ranker")
    parser.add_argument("--group", default=defaults.group_id,
                        help=f"the worker's consumer group, RANKER_GROUP_ID ({defaults.group_id})")
    parser.add_argument("--requests", default=defaults.requests_topic,
                        help=f"request topic ({defaults.requests_topic})")
    parser.add_argument("--results", default=defaults.results_topic,
                        help=f"results topic ({defaults.results_topic})")
    parser.add_argument("--dead-letters", default=defaults.dead_letter_topic,
                        help=f"dead-letter topic ({defaults.dead_letter_topic})")
    parser.add_argument("--engagements", default=defaults.engagements_topic,
                        help=f"engagement topic ({defaults.engagements_topic})")
    parser.add_argument("--exactly-once", action="store_true",
                        help="the worker runs with RANKER_PROCESSING_GUARANTEE=exactly_once")
    parser.add_argument("--no-create-topics", action="store_true",
                        help="the deployment creates the topics: Create on the history "
                             "changelog only (Faust asks for it at every start)")
    parser.add_argument("--producer", action="append", default=[], type=_principal,
                        metavar="PRINCIPAL", help="also a request producer (repeatable)")
    parser.add_argument("--reader", action="append", default=[], type=_principal,
                        metavar="PRINCIPAL", help="also a reader of the results and dead "
                        "letters without a consumer group, as the results viewer (repeatable)")
    parser.add_argument("--bootstrap-server", default=DEFAULT_BOOTSTRAP,
                        help=f"named in the printed commands ({DEFAULT_BOOTSTRAP})")
    parser.add_argument("--command-config", metavar="FILE",
                        help="the admin's client properties, named in the printed commands "
                             "(a secured broker)")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        flags = [flag for action in parser._actions for flag in action.option_strings]
        close = difflib.get_close_matches(unknown[0].split("=", 1)[0], flags, n=1)
        parser.error(f"unrecognized argument {unknown[0]!r}"
                     + (f"; did you mean {close[0]}?" if close else ""))
    resources = WorkerResources(args.group, args.requests, args.results, args.dead_letters,
                                args.engagements)
    acls = worker_acls(args.principal, resources, exactly_once=args.exactly_once,
                       creates_topics=not args.no_create_topics)
    for producer in args.producer:
        acls += producer_acls(producer, args.requests)
    for reader in args.reader:
        acls += reader_acls(reader, [args.results, args.dead_letters])
    for acl in acls:
        print(acl.command(args.bootstrap_server, args.command_config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
