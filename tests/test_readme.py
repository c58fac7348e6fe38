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


DOCS = [Path(__file__).resolve().parents[1] / name
        for name in ("README.md", "docs/model.md", "schemas/README.md")]


def test_docs_link_only_to_files_in_the_repository():
    """Everything the project relies on is in the project: relative links resolve, and
    nothing points at specifications kept elsewhere."""
    import re
    for doc in DOCS:
        text = doc.read_text()
        assert "shared/" not in text, f"{doc.name} points outside the repository"
        for target in re.findall(r"\]\(([^)#]+)", text):
            if "://" not in target:
                assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"


def test_readme_points_to_the_model_contract():
    assert "](docs/model.md)" in README


def test_the_demo_ending_quoted_is_what_the_demo_prints():
    root = Path(__file__).resolve().parents[1]
    demo = (root / "tools" / "demo.py").read_text()
    viewer = (root / "tools" / "viewer.py").read_text()
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    ending = quick_start.split("```")[3].strip().splitlines()
    assert ending[0] == "worker metrics (from /metrics):" and ending[0] in demo
    assert ending[-1].startswith("demo: worker stopped (exit code 0); broker stopped")
    assert 'f"demo: worker stopped (exit code {code}); broker stopped"' in demo
    assert ending[-2].startswith("summary: results") and '"summary: "' in viewer
    assert "latency p50" in ending[-2] and 'f"latency p50' in viewer


def test_every_project_path_the_readme_names_exists():
    """A module moved or removed leaves no stale `worker/...py` behind in the README."""
    import re
    root = Path(__file__).resolve().parents[1]
    named = re.findall(r"`((?:worker|tools|phoenix|tests|bench|training|docker|schemas|docs|"
                       r"checkpoints)/[\w./-]*)`", README)
    assert len(named) > 50  # the pattern still finds the README's paths
    missing = sorted({path for path in named if not (root / path.rstrip(".")).exists()})
    assert missing == []


# One request's path, as README's map draws it: wire bytes -> validated request -> padded batch
# -> jitted model -> results and dead letters.
REQUEST_PATH = ["worker/validation.py", "worker/assembly.py", "phoenix/runner.py",
                "worker/pipeline.py"]


def test_the_maps_request_path_is_the_code():
    """The map names each step once, in the order a request passes them, and the pipeline
    (the step that runs the others) imports each of the earlier ones."""
    import ast
    import re
    root = Path(__file__).resolve().parents[1]
    paragraph = README.split("One module per step, data flowing one way:", 1)[1].split("\n\n")[0]
    named = re.findall(r"`((?:worker|phoenix)/\w+\.py)`", paragraph)
    assert [path for path in named if path in REQUEST_PATH] == REQUEST_PATH
    tree = ast.parse((root / REQUEST_PATH[-1]).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    for path in REQUEST_PATH[:-1]:
        assert path.removesuffix(".py").replace("/", ".") in imported, path
