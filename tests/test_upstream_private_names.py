"""A dependency's private names are used in worker/upstream/ only.

The rule, checked by an `ast` walk of every module of phoenix/, worker/, training/, tools/ and
bench/ except worker/upstream/ (tests are exempt: the pin tests read internals on purpose):

1. No import of a private name or private module of a dependency (faust, mode, aiokafka,
   kafka, asyncio): `from faust.x import _y`, `import faust._cython`.
2. No attribute access `x._name` (one leading underscore, not a dunder) where `_name` is a
   private name a dependency defines (a `def _name`, a class-level `_name =`, or a
   `self._name =` anywhere in the dependency's source; the set is read from the installed
   packages). The exceptions are the project's own private state:
   - `self._name` / `cls._name` inside a class that does not derive from a dependency's
     class (a class derives from one when a base is imported from a dependency or from
     worker/upstream/, or is a project class that derives from one);
   - the public namedtuple API (`_asdict`, `_replace`, `_fields`, `_make`,
     `_field_defaults`);
   - a name read from a module imported from elsewhere than a dependency (`os._exit`).
   `super()._name` and `self._name` in a class deriving from a dependency's class are
   flagged, and so is a `def _name` there: that is reading or overriding the dependency's
   internals.
3. `getattr`/`setattr`/`hasattr`/`delattr` with a string constant that is such a name.
4. No frame or coroutine introspection (`cr_frame`, `cr_code`, `gi_frame`, `f_locals`,
   `f_back`, `sys._getframe`): that is reading another library's running code.

A name a project module defines privately and a dependency happens to define too is allowed
only as the project's own state (the `self` rule); accessed on another object it is flagged,
which errs on the safe side: move the access into worker/upstream/ or rename it.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = ROOT / "worker" / "upstream"
PACKAGES = ("phoenix", "worker", "training", "tools", "bench")
DEPENDENCIES = ("faust", "mode", "aiokafka", "kafka", "asyncio")
NAMEDTUPLE_API = {"_asdict", "_replace", "_fields", "_make", "_field_defaults"}
INTROSPECTION = {"cr_frame", "cr_code", "gi_frame", "f_locals", "f_back", "_getframe"}
_ATTRIBUTE_FUNCTIONS = {"getattr", "setattr", "hasattr", "delattr"}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and len(name) > 1


def _dependency_private_names() -> frozenset[str]:
    """Every private name the installed dependencies define (see the module doc, rule 2)."""
    names: set[str] = set()
    for package in DEPENDENCIES:
        try:
            module = importlib.import_module(package)
        except ModuleNotFoundError:  # kafka-python: not installed, so nothing uses it
            continue
        for location in module.__path__:
            for path in Path(location).rglob("*.py"):
                try:
                    tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
                except SyntaxError:
                    continue
                for node in ast.walk(tree):
                    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        names.add(node.name)
                        if isinstance(node, ast.ClassDef):
                            for item in node.body:
                                targets = (item.targets if isinstance(item, ast.Assign) else
                                           [item.target] if isinstance(item, ast.AnnAssign)
                                           else [])
                                names.update(t.id for t in targets if isinstance(t, ast.Name))
                    elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                        names.update(t.attr for t in targets if isinstance(t, ast.Attribute)
                                     and isinstance(t.value, ast.Name) and t.value.id == "self")
    return frozenset(n for n in names if _is_private(n))


DEPENDENCY_PRIVATE = _dependency_private_names()


def _from_dependency(module: str) -> bool:
    return module.split(".")[0] in DEPENDENCIES


def _imported_names(tree: ast.Module) -> dict[str, str]:
    """Local name -> the module (or module.name) it was imported from."""
    imported = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                imported[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return imported


def _base_root(base: ast.expr) -> str | None:
    while isinstance(base, ast.Attribute):
        base = base.value
    return base.id if isinstance(base, ast.Name) else None


def _derives_from_dependency(cls: ast.ClassDef, imported: dict[str, str],
                             derived: set[str]) -> bool:
    """Whether a base of `cls` is a dependency's class, a worker/upstream/ class, or a project
    class (by name, in `derived`) that derives from one."""
    for base in cls.bases:
        root = _base_root(base)
        if root is None:
            continue
        origin = imported.get(root, "")
        if _from_dependency(origin) or origin.startswith("worker.upstream"):
            return True
        name = base.attr if isinstance(base, ast.Attribute) else root
        if name in derived:
            return True
    return False


def _derived_project_classes(trees: dict[str, ast.Module]) -> set[str]:
    """Names of the project's classes that derive from a dependency's class (to a fixpoint,
    so a subclass of a subclass counts)."""
    derived: set[str] = set()
    while True:
        before = len(derived)
        for tree in trees.values():
            imported = _imported_names(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and _derives_from_dependency(
                        node, imported, derived):
                    derived.add(node.name)
        if len(derived) == before:
            return derived


class _Finder(ast.NodeVisitor):
    def __init__(self, where: str, imported: dict[str, str], derived: set[str]) -> None:
        self.where, self.imported, self.derived = where, imported, derived
        self.classes: list[bool] = []  # per enclosing class: derives from a dependency?
        self.found: list[str] = []

    def _say(self, node: ast.AST, what: str) -> None:
        self.found.append(f"{self.where}:{node.lineno}: {what}")

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.classes.append(_derives_from_dependency(node, self.imported, self.derived))
        self.generic_visit(node)
        self.classes.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if self.classes and self.classes[-1] and node.name in DEPENDENCY_PRIVATE:
            self._say(node, f"overrides {node.name}")
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            parts = alias.name.split(".")
            if _from_dependency(alias.name) and any(_is_private(p) for p in parts):
                self._say(node, f"import {alias.name}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and node.level == 0 and _from_dependency(node.module):
            private = [a.name for a in node.names if _is_private(a.name)]
            if private or any(_is_private(p) for p in node.module.split(".")):
                self._say(node, f"from {node.module} import {', '.join(private) or '...'}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        name = node.attr
        if name in INTROSPECTION:
            self._say(node, f"introspection .{name}")
        elif _is_private(name) and name in DEPENDENCY_PRIVATE and name not in NAMEDTUPLE_API:
            value = node.value
            own = isinstance(value, ast.Name) and value.id in ("self", "cls")
            via_super = (isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                         and value.func.id == "super")
            in_derived = bool(self.classes) and self.classes[-1]
            # On a module imported from elsewhere (os._exit): not a dependency's name.
            other_module = (isinstance(value, ast.Name) and value.id in self.imported
                            and not _from_dependency(self.imported[value.id]))
            if not (own or via_super or other_module) or in_derived:
                self._say(node, f"{ast.unparse(node)}")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if (isinstance(node.func, ast.Name) and node.func.id in _ATTRIBUTE_FUNCTIONS
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
                and node.args[1].value in DEPENDENCY_PRIVATE):
            self._say(node, f"{node.func.id}(..., {node.args[1].value!r})")
        self.generic_visit(node)


def private_uses(source: str, where: str = "<source>",
                 derived: set[str] | None = None) -> list[str]:
    """Where `source` uses a dependency's private name (the rule in the module doc)."""
    tree = ast.parse(source)
    finder = _Finder(where, _imported_names(tree), derived or set())
    finder.visit(tree)
    return finder.found


def _project_modules() -> dict[str, ast.Module]:
    return {str(path.relative_to(ROOT)): ast.parse(path.read_text(), str(path))
            for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def test_the_dependencies_private_names_were_found():
    # The rule is only as good as this set: it must hold the names the fixes use.
    assert {"_dbs", "_key_partition", "_schedule_shutdown", "_signal_stop_time",
            "_send_pending", "_fetch_max_wait_ms", "_asyncio_future_blocking",
            "_txn_manager"} <= DEPENDENCY_PRIVATE


def test_only_worker_upstream_uses_a_dependencys_private_names():
    modules = _project_modules()
    derived = _derived_project_classes(modules)
    found = []
    for where, tree in modules.items():
        if (ROOT / where).is_relative_to(UPSTREAM):
            continue
        finder = _Finder(where, _imported_names(tree), derived)
        finder.visit(tree)
        found += finder.found
    assert found == [], ("a dependency's private name outside worker/upstream/: move the "
                         "code into a module there named after what it fixes")


@pytest.mark.parametrize("source", [
    # What worker/app.py, worker/lifecycle.py and worker/kafka_tuning.py held before the move.
    "def get(table, key):\n    for db in list(table.data._dbs.values()):\n        pass\n",
    "def track(table):\n    return getattr(table.data, '_key_partition', None)\n",
    "import faust\nclass W(faust.Worker):\n    def _schedule_shutdown(self, signum):\n"
    "        if not self._signal_stop_time:\n            super()._schedule_shutdown(signum)\n",
    "def resume(awaited):\n    awaited._asyncio_future_blocking = False\n",
    "def is_delivery(wait, event):\n    return wait.cr_frame.f_locals.get('self') is event\n",
    "from faust.transport.producer import ProducerBuffer\nclass B(ProducerBuffer):\n"
    "    async def _send_pending(self, fut):\n        await super()._send_pending(fut)\n",
    "from aiokafka import _private_thing\n",
], ids=["table-dbs", "getattr-key-partition", "worker-signal", "asyncio-future",
        "frame", "super-override", "private-import"])
def test_the_rule_catches_a_dependencys_private_names(source):
    assert private_uses(source) != []


@pytest.mark.parametrize("source", [
    "class Own:\n    def __init__(self):\n        self._client = None\n"
    "    def close(self):\n        return self._client\n",
    "def with_tables(batch, tables):\n    return batch._replace(tables=tables)._asdict()\n",
    "import os\ndef stop():\n    os._exit(0)\n",
], ids=["own-private-state", "namedtuple-api", "stdlib"])
def test_the_rule_leaves_the_projects_own_names_alone(source):
    assert private_uses(source) == []
