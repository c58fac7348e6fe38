"""tools/acls.py without a broker: the worker's least-privilege list and its command line.
That the list is enough, and what Kafka does without it, is shown on a secured Apache Kafka
by tests/test_secured_kafka.py."""

from __future__ import annotations

import shlex
import subprocess
import sys

import faust
import pytest

from tools import acls
from tools.acls import Acl, WorkerResources, producer_acls, reader_acls, worker_acls
from tools.launcher import ROOT
from worker.topics import HISTORY_TABLE

RESOURCES = WorkerResources("ranker", "req", "res", "dlq", "eng")


def _rules(found: list[Acl]) -> set[tuple[str, str, str, str]]:
    return {(a.operation, a.resource_type, a.resource_name, a.pattern_type) for a in found}


def test_the_worker_reads_its_inputs_and_writes_its_outputs_and_nothing_more() -> None:
    assert _rules(worker_acls("User:w", RESOURCES, creates_topics=False)) == {
        ("READ", "TOPIC", "req", "LITERAL"), ("READ", "TOPIC", "eng", "LITERAL"),
        ("READ", "TOPIC", "ranker-user-history-changelog", "LITERAL"),
        ("WRITE", "TOPIC", "res", "LITERAL"), ("WRITE", "TOPIC", "dlq", "LITERAL"),
        ("WRITE", "TOPIC", "ranker-user-history-changelog", "LITERAL"),
        ("CREATE", "TOPIC", "ranker-user-history-changelog", "LITERAL"),
        ("READ", "GROUP", "ranker", "LITERAL")}


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at_least_once", "exactly_once"])
def test_creating_topics_and_transactions_add_only_their_own_rules(exactly_once: bool) -> None:
    base = _rules(worker_acls("User:w", RESOURCES, creates_topics=False))
    more = _rules(worker_acls("User:w", RESOURCES, exactly_once=exactly_once))
    expected = {("CREATE", "TOPIC", name, "LITERAL") for name in ("req", "res", "dlq", "eng")}
    if exactly_once:
        expected.add(("WRITE", "TRANSACTIONAL_ID", "ranker-", "PREFIXED"))
    assert more - base == expected
    assert not any(rule[1] == "CLUSTER" for rule in more)  # nothing cluster-wide


def test_the_changelog_is_the_one_faust_names() -> None:
    app = faust.App("ranker", broker="kafka://127.0.0.1:1", env={}, store="memory://")
    table = app.Table(HISTORY_TABLE, default=None)
    assert table.changelog_topic.get_topic_name() == RESOURCES.changelog


def test_the_printed_commands_are_kafka_acls_lines(capsys: pytest.CaptureFixture[str]) -> None:
    code = acls.main(["--principal", "User:ranker", "--group", "g", "--requests", "req",
                      "--exactly-once", "--producer", "User:svc",
                      "--bootstrap-server", "kafka:9093"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    expected = worker_acls("User:ranker", WorkerResources("g", requests="req"),
                           exactly_once=True) + producer_acls("User:svc", "req")
    assert lines == [acl.command("kafka:9093") for acl in expected]
    assert shlex.split(lines[0])[:8] == ["kafka-acls.sh", "--bootstrap-server", "kafka:9093",
                                         "--add", "--allow-principal", "User:ranker",
                                         "--allow-host", "*"]
    assert ("kafka-acls.sh --bootstrap-server kafka:9093 --add --allow-principal User:ranker "
            "--allow-host '*' --operation Write --transactional-id g- "
            "--resource-pattern-type prefixed") in lines
    assert lines[-1].endswith("--allow-principal User:svc --allow-host '*' --operation Write "
                              "--topic req")


def test_readers_and_a_secured_brokers_admin_config(capsys: pytest.CaptureFixture[str]) -> None:
    code = acls.main(["--principal", "User:w", "--group", "g", "--results", "res",
                      "--dead-letters", "dlq", "--reader", "User:viewer",
                      "--command-config", "/etc/kafka/secrets/admin.properties"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    readers = [line for line in lines if "User:viewer" in line]
    assert readers == [acl.command(acls.DEFAULT_BOOTSTRAP, "/etc/kafka/secrets/admin.properties")
                       for acl in reader_acls("User:viewer", ["res", "dlq"])]
    assert {acl.operation for acl in reader_acls("User:viewer", ["res", "dlq"])} == {"READ"}
    assert all(shlex.split(line)[3:5] == ["--command-config",
                                          "/etc/kafka/secrets/admin.properties"]
               for line in lines)


def test_help_works_and_a_bad_principal_is_a_one_line_error() -> None:
    shown = subprocess.run([sys.executable, "-m", "tools.acls", "--help"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "--exactly-once" in shown.stdout
    bad = subprocess.run([sys.executable, "-m", "tools.acls", "--principal", "ranker"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "expected TYPE:NAME such as User:ranker, got 'ranker'" in bad.stderr
    assert "Traceback" not in bad.stderr
    typo = subprocess.run([sys.executable, "-m", "tools.acls", "--principal", "User:r",
                           "--grup", "g"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert typo.returncode == 2
    assert typo.stderr.splitlines()[-1].endswith(
        "unrecognized argument '--grup'; did you mean --group?")
