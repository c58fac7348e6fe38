"""`make broker/worker/produce/results/demo` take ports (checked with `make -n`, which only
prints the commands)."""

import os
import shutil
import subprocess

import pytest

from tools.launcher import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def command(target: str, *assignments: str) -> str:
    """The last command `make TARGET` would run (any venv steps come first)."""
    # Under `make test` the parent's MAKELEVEL/MAKEFLAGS would make this make print
    # "Entering/Leaving directory" lines and inherit its flags: run it as from a shell.
    dropped = ("BROKER", "BROKER_PORT", "METRICS_PORT", "MAKELEVEL", "MAKEFLAGS", "MFLAGS")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    run = subprocess.run(["make", "--no-print-directory", "-n", target, *assignments],
                         cwd=ROOT, capture_output=True, text=True, check=True, env=env)
    return run.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("target, assignments, expected", [
    ("broker", ("BROKER_PORT=9093",), "tools.broker --kind embedded --port 9093"),
    ("broker", ("BROKER=kafka",), "tools.broker --kind kafka --port 9092"),
    ("demo", ("BROKER=kafka",), "tools.demo --broker kafka"),
    ("bench", ("BROKER=kafka",), "bench.e2e --broker kafka"),
    ("produce", ("BROKER_PORT=9093",), "--bootstrap 127.0.0.1:9093"),
    ("results", ("BROKER_PORT=9093",), "tools.viewer --bootstrap 127.0.0.1:9093"),
    ("worker", ("BROKER_PORT=9093", "METRICS_PORT=9201"),
     "--broker kafka://127.0.0.1:9093 --metrics-port 9201"),
    ("demo", ("METRICS_PORT=9200",), "--metrics-port 9200"),
    ("demo", ("BROKER_PORT=9300",), "--broker-port 9300"),
    ("demo", ("SERVER_HISTORY=1",), "--server-history"),
], ids=["broker", "broker_kafka", "demo_kafka", "bench_kafka", "produce", "results", "worker", "demo_metrics", "demo_broker",
        "demo_server_history"])
def test_targets_take_ports(target, assignments, expected):
    assert expected in command(target, *assignments)


def test_ports_not_given_leave_the_tools_defaults():
    """The demo picks free ports; the others keep RANKER_BROKER & co. (the broker: 9092)."""
    line = command("demo")
    assert "--metrics-port" not in line and "--broker-port" not in line
    for target in ("worker", "produce", "results"):
        assert "127.0.0.1" not in command(target) and "--metrics-port" not in command(target)
    assert "tools.broker --kind embedded --port 9092" in command("broker")
