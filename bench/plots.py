"""The latency-vs-load curve as a picture: `plots/latency_vs_load.png` beside the report
(bench/results.md), drawn from the same results files as the report's tables (never a second
measurement), one line per batch policy for each broker's run that has a curve.

Left: p99 of the results (log scale) against the offered load, as a share of that run's fixed
policy max, with the deadline every request carried. Right: goodput (results by their
deadline) on the same scale, against the offered load itself (the most any policy can give).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from bench import compare, curve

PLOT_NAME = "latency_vs_load.png"
PLOTS_DIR = "plots"  # beside the report that links it
COLORS = {"fixed": "tab:orange", "deadline": "tab:blue"}  # one per policy
LINESTYLES = ("-", "--", ":", "-.")  # one per broker, in `runs` order


def plot_path(markdown: Path | str) -> Path:
    """Where the plot of the report at `markdown` goes."""
    return Path(markdown).parent / PLOTS_DIR / PLOT_NAME


def _curves(runs: Mapping[str, dict | None]) -> dict[str, dict]:
    """Each broker's curve, for the runs that have one (older results files do not)."""
    return {kind: results["end_to_end"]["curve"] for kind, results in runs.items()
            if results and results.get("end_to_end", {}).get("curve")}


def _percent(points: list[dict]) -> list[float]:
    return [100.0 * p["fraction"] for p in points]


def latency_vs_load(runs: Mapping[str, dict | None], path: Path | str) -> Path | None:
    """Draws the runs' curves to `path` (a PNG) and returns it; None, writing nothing, when no
    run has a curve."""
    curves = _curves(runs)
    if not curves:
        return None
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    latency, goodput = figure.subplots(1, 2)
    for style, (kind, load_curve) in zip(LINESTYLES, curves.items()):
        broker = compare.column_title(kind, runs[kind])
        reference = load_curve["reference_max_req_per_s"]
        for policy in curve.POLICIES:
            points = load_curve["policies"][policy]["points"]
            line = dict(color=COLORS.get(policy), linestyle=style, marker="o",
                        label=f"{policy}, {broker}")
            latency.plot(_percent(points), [curve.p99_ms(p) for p in points], **line)  # nan: a gap
            goodput.plot(_percent(points),
                         [100.0 * p["goodput_req_per_s"] / reference for p in points], **line)
    deadlines = sorted({c["deadline_ms"] for c in curves.values()})
    for deadline in deadlines:
        latency.axhline(deadline, color="grey", linestyle=":", linewidth=1)
    latency.set(yscale="log", xlabel="offered load, % of the fixed policy's max",
                ylabel="p99 latency of results, ms (log)",
                title=f"p99 (dotted: the {', '.join(map(str, deadlines))} ms deadline)")
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 200, not 2 x 10^2
    latency.yaxis.set_major_formatter(plain)
    latency.yaxis.set_minor_formatter(plain)
    top = 100.0 * max(curve.LOAD_FRACTIONS)
    goodput.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1,
                 label="offered (the most possible)")
    goodput.set(xlabel="offered load, % of the fixed policy's max",
                ylabel="goodput, % of the fixed policy's max",
                title="results within their deadline, per second")
    for axes in (latency, goodput):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path
