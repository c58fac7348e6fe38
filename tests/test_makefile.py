"""`make broker/worker/produce/results/demo` take ports (checked with `make -n`, which only
prints the commands)."""

import shutil
import subprocess

import pytest

from tools.launcher import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def command(target: str, *assignments: str) -> str:
    """The last command `make TARGET` would run (any venv steps come first)."""
    run = subprocess.run(["make", "-n", target, *assignments], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    return run.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("target, assignments, expected", [
    ("broker", ("BROKER_PORT=9093",), "tools.broker --port 9093"),
    ("produce", ("BROKER_PORT=9093",), "--bootstrap 127.0.0.1:9093"),
    ("results", ("BROKER_PORT=9093",), "tools.viewer --bootstrap 127.0.0.1:9093"),
    ("worker", ("BROKER_PORT=9093", "METRICS_PORT=9201"),
     "--broker kafka://127.0.0.1:9093 --metrics-port 9201"),
    ("demo", ("METRICS_PORT=9200",), "tools.demo --metrics-port 9200"),
    ("demo", ("BROKER_PORT=9300",), "--broker-port 9300"),
], ids=["broker", "produce", "results", "worker", "demo_metrics", "demo_broker"])
def test_targets_take_ports(target, assignments, expected):
    assert expected in command(target, *assignments)


def test_demo_picks_its_own_ports_unless_given():
    line = command("demo")
    assert "--metrics-port" not in line and "--broker-port" not in line
