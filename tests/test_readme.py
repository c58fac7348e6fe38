"""README promises that drift silently unless checked."""

import dataclasses
from pathlib import Path

from worker.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_quick_start_shows_the_two_commands_first():
    quick_start = README.split("## Quick start", 1)[1].split("##", 1)[0]
    assert "make demo" in quick_start and "make test" in quick_start


def test_every_setting_is_documented_with_its_default():
    for field in dataclasses.fields(Settings):
        row = next((line for line in README.splitlines()
                    if line.startswith(f"| `{Settings.env_name(field.name)}` |")), None)
        assert row is not None, f"README lacks a row for {Settings.env_name(field.name)}"
        shown = Settings.default_text(field)  # as `--help` shows it
        assert f"`{shown}`" in row, f"README shows a stale default for {field.name}"
