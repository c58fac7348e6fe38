"""The compose files as data: the plain stack, or the plain file with the secured one over it,
merged as Compose merges files given with `-f` (for the keys these files use).

Compose's rules: maps merge key by key (`environment`, `depends_on`, `healthcheck`), `ports`
and `volumes` add to the base's (a volume replaces the base's one at the same container path),
anything else given again replaces the base's value (`command`, `entrypoint`, a health
check's `test`). tests/test_compose.py has a Compose CLI check both files when one is
installed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SECURED_FILE = ROOT / "docker-compose.secured.yml"

_ADDED = ("ports", "volumes")


def read(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), (
        f"{path.name} has no `services:` map")
    return data


def services(*, secured: bool = False) -> dict[str, dict[str, Any]]:
    """The stack's services: docker-compose.yml, with docker-compose.secured.yml over it."""
    merged = copy.deepcopy(read(COMPOSE_FILE)["services"])
    if secured:
        for name, override in read(SECURED_FILE)["services"].items():
            merged[name] = merge(merged.get(name, {}), override)
    return merged


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key in _ADDED and isinstance(out.get(key), list):
            out[key] = _add(out[key], value, by_target=key == "volumes")
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _add(base: list[Any], more: list[Any], *, by_target: bool) -> list[Any]:
    def target(entry: Any) -> Any:
        return str(entry).split(":")[1] if by_target and ":" in str(entry) else entry

    given = {target(entry) for entry in more}
    return [entry for entry in base if target(entry) not in given] + list(more)
