"""One error root per layer: every exception class the model library defines is a
`phoenix.errors.PhoenixError`, every other one the project defines a
`worker.errors.WorkerError`, so a command line catches one class (plus what Kafka clients
raise) in one place. Control-flow signals are no errors and are listed here by name."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

from phoenix.errors import PhoenixError
from worker.errors import WorkerError

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("phoenix", "worker", "training", "tools", "bench")
# Raised to unwind start-up on SIGTERM/SIGINT (a BaseException, like KeyboardInterrupt).
SIGNALS = {"worker.lifecycle.StartupStop"}


def project_modules() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] != "__main__":
                names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def defined_exceptions() -> list[type[BaseException]]:
    found = []
    for name in project_modules():
        module = importlib.import_module(name)
        found += [obj for _, obj in inspect.getmembers(module, inspect.isclass)
                  if issubclass(obj, BaseException) and obj.__module__ == name]
    return found


def test_every_project_exception_sits_under_its_layers_root():
    exceptions = defined_exceptions()
    assert len(exceptions) > 20  # the walk found them
    strays = []
    for error in exceptions:
        name = f"{error.__module__}.{error.__qualname__}"
        root = PhoenixError if error.__module__.startswith("phoenix.") else WorkerError
        if name not in SIGNALS and not issubclass(error, root):
            strays.append(f"{name} (not a {root.__name__})")
    assert strays == []


def test_the_model_library_needs_nothing_of_the_worker():
    assert not issubclass(PhoenixError, WorkerError) and not issubclass(WorkerError, PhoenixError)
    for path in (ROOT / "phoenix").rglob("*.py"):
        text = path.read_text()
        assert "import worker" not in text and "from worker" not in text, path.name


@pytest.mark.parametrize("argv, fragment", [
    (["offline", "in.records", "--out", "out.records", "--log-level", "LOUD"], "log_level"),
    (["offline", "in.records", "--out", "out.records", "--checkpoint",
      "/nonexistent/model.npz"], "/nonexistent/model.npz"),
], ids=["a setting (WorkerError)", "a checkpoint it cannot load (PhoenixError)"])
def test_replay_reports_any_of_its_errors_in_one_line(argv, fragment, capsys):
    from tools.replay.__main__ import EXIT_USAGE, main

    assert main(argv, environ={}) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("replay offline: error: ") and fragment in err
    assert "\n" not in err and "Traceback" not in err
