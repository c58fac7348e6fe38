"""The benchmark's and the evaluation's figures (bench/plots.py, training/plots.py): each drawn
from a results dict shaped like the real files, nothing where its section is missing, and
linked from the report next to its table."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
from matplotlib.image import imread

from bench import plots
from bench.load import NATIVE
from training import plots as eval_plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG that matplotlib reads back."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width = imread(path).shape[:2]
    return width, height


def _latency(p50: float) -> dict:
    return {"count": 100, "mean_ms": p50, "p50_ms": p50, "p90_ms": 2 * p50, "p99_ms": 3 * p50,
            "p99_9_ms": 4 * p50, "max_ms": 5 * p50}


def _phase(name: str, p50: float, cpu_scale: float = 1.0) -> dict:
    cpu = {"worker python threads": 300.0, NATIVE: 400.0, "broker": 200.0,
           "bench producer + consumer": 100.0}
    cpu = {k: v * cpu_scale for k, v in cpu.items()}
    return {"phase": name, "latency_ms": _latency(p50),
            "cpu_us_per_request": {**cpu, "total": sum(cpu.values()), "cores busy": 1.7}}


def _sweep(config: str, scale: float) -> list[dict]:
    rows = [{"config": config, "N": n, "multi_row_cand_per_s": 1000.0 * scale,
             "cached_cand_per_s": 10.0 * n * scale} for n in (8, 64, 256, 1024)]
    return rows[::-1]  # the plot sorts by N: not the file's order to rely on


def _run(kind: str, title: str, phases: list[dict], sweep: list[dict] | None = None) -> dict:
    """A results file as bench.e2e writes it, with what the report and the plots read."""
    return {"started": 0.0, "quick": False, "duration_s": 60.0, "targets": [],
            "broker": {"kind": kind, "title": title, "executable": kind},
            "environment": {"cpu_count": 2, "machine": "x86_64", "jax_version": "0",
                            "jax_backend": "cpu", "python": "3.11", "jax_devices": ["cpu:0"],
                            "load_average_at_start": [0.1, 0.1, 0.1]},
            "settings": {"fetch_max_wait_ms": 10},
            "end_to_end": {"phases": phases}, "large_candidates": sweep or []}


def _runs() -> dict[str, dict | None]:
    embedded = _run("embedded", "embedded broker (tansu)",
                    [_phase("max", 2000.0), _phase("half max", 90.0, 2.0),
                     _phase("light", 18.0, 20.0)],
                    _sweep("demo S=32 C=8", 1.0) + _sweep("reference S=128 C=32", 0.2))
    kafka = _run("kafka", "Apache Kafka 4.1.1",
                 [_phase("max", 1900.0), _phase("half max", 80.0, 2.1),
                  _phase("exactly_once max", 2900.0, 1.1)],
                 _sweep("demo S=32 C=8", 1.1))
    return {"embedded": embedded, "kafka": kafka}


def _without(runs: dict, *keys: str) -> dict:
    """The runs as older results files: `keys` (a path into each run) left out."""
    older = {}
    for kind, results in runs.items():
        results = dict(results, end_to_end=dict(results["end_to_end"]))
        parent = results
        for key in keys[:-1]:
            parent = parent[key]
        parent.pop(keys[-1], None)
        older[kind] = results
    return older


# ----------------------------------------------------------------------------- each figure


@pytest.mark.parametrize("draw, section, size", [
    (plots.latency_cdf, ("end_to_end", "phases"), (1200, 500)),  # a panel per broker
    (plots.cpu_per_request, ("end_to_end", "phases"), (1200, 495)),  # 12 x (1.2 + 0.75 x 5 bars)
    (plots.candidates, ("large_candidates",), (1200, 480)),  # a panel per config
    (plots.latency_vs_load, ("end_to_end", "curve"), None),  # drawn in test_bench
])
def test_each_figure_is_a_png_and_nothing_without_its_section(tmp_path, draw, section, size):
    runs = _runs()
    if size is not None:
        path = tmp_path / "plots" / f"{draw.__name__}.png"
        assert draw(runs, path) == path
        assert _png_size(path) == size
        assert path.stat().st_size > 10_000  # lines, labels and legends, not an empty canvas
        assert draw({"embedded": None, "kafka": runs["kafka"]}, path) == path  # one broker
    missing = tmp_path / "missing.png"
    assert draw(_without(runs, *section), missing) is None
    assert draw({"embedded": None, "kafka": None}, missing) is None
    assert not missing.exists()


def test_the_cdf_goes_through_the_percentiles_the_phase_kept():
    latency = _latency(10.0)
    assert plots.cdf_points(latency) == ([10.0, 20.0, 30.0, 40.0], [0.5, 0.9, 0.99, 0.999])
    del latency["p90_ms"], latency["p99_9_ms"]  # an older file's summary
    assert plots.cdf_points(latency) == ([10.0, 30.0], [0.5, 0.99])
    assert plots.cdf_points(None) == ([], [])  # a phase without results


def test_the_cpu_bars_are_each_process_of_each_phase_under_load():
    runs = _runs()
    bars = plots.cpu_bars(runs)
    assert [label for label, _ in bars] == [
        "embedded broker (tansu)\nmax", "embedded broker (tansu)\nhalf max",  # light left out
        "Apache Kafka 4.1.1\nmax", "Apache Kafka 4.1.1\nhalf max",
        "Apache Kafka 4.1.1\nexactly_once max"]
    half_max = runs["kafka"]["end_to_end"]["phases"][1]["cpu_us_per_request"]
    assert bars[3][1] == {k: half_max[k] for k in ("worker python threads", NATIVE, "broker",
                                                   "bench producer + consumer")}
    assert sum(bars[3][1].values()) == pytest.approx(half_max["total"])  # the stack's height
    assert plots.cpu_bars({"embedded": None}) == []


def test_the_candidate_series_are_each_configs_sweep_by_n():
    rows = _runs()["embedded"]["large_candidates"]
    series = plots.candidate_series(rows)
    assert list(series) == ["demo S=32 C=8", "reference S=128 C=32"]
    demo = series["demo S=32 C=8"]
    assert list(demo) == [label for label, _ in plots.SCORING_PATHS]
    assert demo["cached context"] == ([8, 64, 256, 1024], [80.0, 640.0, 2560.0, 10240.0])
    assert series["reference S=128 C=32"]["multi-row (reference layout)"][1] == [200.0] * 4


# ----------------------------------------------------------------------------- the report


def test_the_report_links_each_figure_after_the_table_it_illustrates(tmp_path):
    markdown = tmp_path / "report" / "results.md"
    text, drawn = plots.document(_runs(), lambda run: "### Large candidate sets\n\n| N |\n",
                                 markdown)
    names = {png.name for png in drawn}
    assert names == {"latency_cdf.png", "cpu_per_request.png", "candidates.png"}  # no curve
    assert all(png.parent == markdown.parent / "plots" and png.exists() for png in drawn)
    cdf = text.index("](plots/latency_cdf.png)")
    assert text.index("## Max") < cdf < text.index("## Processing guarantees")
    cpu = text.index("](plots/cpu_per_request.png)")
    assert text.index("## CPU per request at max load") < cpu < text.index("## Host floors")
    assert text.index("### Large candidate sets") < text.index("](plots/candidates.png)")
    assert text.count("](plots/candidates.png)") == 1  # once, not under each run
    assert "latency_vs_load" not in text and "## Ranking quality" not in text
    (markdown.parent / "plots" / "eval.png").write_bytes(PNG_SIGNATURE)  # `make eval`'s
    with_eval, _ = plots.document(_runs(), lambda run: "", markdown)
    assert with_eval.rstrip().endswith("](plots/eval.png)")
    bare, none = plots.document(_runs(), lambda run: "", None)  # no report file: no figures
    assert "![" not in bare and none == []


def test_a_link_goes_after_the_table_or_at_the_end():
    text = "# A\n\n## T\n\nwords\n\n| a |\n|---|\n| 1 |\n## Next\n"
    assert plots.link_after(text, "## T", "![t](t.png)") == (
        "# A\n\n## T\n\nwords\n\n| a |\n|---|\n| 1 |\n\n![t](t.png)\n\n## Next\n")
    assert plots.link_after("# A\n\n| a |\n", "## Gone", "![g](g.png)") == (
        "# A\n\n| a |\n\n![g](g.png)\n")  # a heading reworded: still linked


# ----------------------------------------------------------------------------- evaluation

PAYLOAD = {"checkpoint": "checkpoints/demo.npz", "model_version": "demo-v1",
           "eval": {"requests": 50}, "ndcg@5_gap_closed": 0.8,
           "methods": {name: {"auc": {"favorite": fav, "reply": 0.6}, "mean_auc": mean,
                              "ndcg@5": n5, "ndcg@all": nall}
                       for name, fav, mean, n5, nall in (
                           ("trained", 0.85, 0.75, 0.95, 0.97), ("random", 0.5, 0.51, 0.65, 0.8),
                           ("oracle", 0.9, 0.8, 0.99, 0.995))}}


def test_the_eval_series_are_the_payloads_numbers():
    names, series = eval_plots.eval_series(PAYLOAD)
    assert names == ["trained", "random", "oracle"]
    assert series == {"NDCG@5": [0.95, 0.65, 0.99], "NDCG@all": [0.97, 0.8, 0.995],
                      "mean AUC, all actions": [0.75, 0.51, 0.8],
                      "favorite AUC": [0.85, 0.5, 0.9]}


def test_evaluate_plots_the_payload_it_writes_to_json(tmp_path):
    from training.evaluate import EvalConfig, MethodResult, _parse_args, to_json

    assert _parse_args(["--plot", "bench/plots/eval.png"]).plot == "bench/plots/eval.png"
    results = {name: MethodResult(name, m["auc"], m["mean_auc"], m["ndcg@5"], m["ndcg@all"])
               for name, m in PAYLOAD["methods"].items()}
    payload = to_json("ckpt.npz", types.SimpleNamespace(model_version="demo-v1"),
                      EvalConfig(requests=50), results)
    assert payload["methods"] == PAYLOAD["methods"]
    assert payload["ndcg@5_gap_closed"] == pytest.approx((0.95 - 0.65) / (0.99 - 0.65))
    path = tmp_path / "plots" / "eval.png"
    assert eval_plots.eval_scores(payload, path) == path
    assert _png_size(path) == (1200, 480)
    assert eval_plots.eval_scores({"methods": {}}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
