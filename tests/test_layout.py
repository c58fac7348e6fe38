"""The package layout: each package imports only the packages below it in LAYERS."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Lowest first; a package may import itself and any package before it, never one after it.
LAYERS = ("phoenix", "worker", "training", "tools", "bench")


def imported_packages(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & set(LAYERS)


@pytest.mark.parametrize("package", LAYERS)
def test_imports_point_down_the_layers(package):
    allowed = set(LAYERS[: LAYERS.index(package) + 1])
    wrong = {str(path.relative_to(ROOT)): sorted(imported_packages(path) - allowed)
             for path in sorted((ROOT / package).rglob("*.py"))}
    assert {path: names for path, names in wrong.items() if names} == {}


def test_tools_open_kafka_clients_only_through_the_connection_settings():
    """A tool or benchmark that built its client from a bare bootstrap address would not
    reach a TLS/SASL cluster: every client takes `tools.kafka_io.connection(...)`. The
    project's own brokers' probes (local and plaintext by definition) are exempt."""
    bare = []
    for path in sorted([*(ROOT / "tools").rglob("*.py"), *(ROOT / "bench").rglob("*.py")]):
        if path.relative_to(ROOT).as_posix() in ("tools/broker/__init__.py",
                                                 "tools/kafka_cluster.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and any(k.arg == "bootstrap_servers"
                                                  for k in node.keywords):
                bare.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert bare == []
