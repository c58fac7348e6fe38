"""The benchmark's figures, in `plots/` beside the report (bench/results.md), each drawn from
the same results files as the report's tables (never a second measurement) and linked right
after the table it illustrates (`document`):

* latency_vs_load.png - left: p99 of the results (log scale) against the offered load, as a
  share of that run's fixed policy max, with the deadline every request carried; right:
  goodput (results by their deadline) on the same scale, against the offered load itself (the
  most any policy can give); one line per batch policy for each broker's run that has a curve;
* latency_cdf.png - the latency distribution of each end-to-end load phase, a panel per broker;
* cpu_per_request.png - CPU per request by process under load, stacked, a bar per broker and
  phase;
* candidates.png - candidates scored per second against the candidate count N, the reference
  layout's rows against the cached context, a panel per model config.

Each figure is a function `(runs, path) -> path | None`, `runs` mapping a broker kind to its
latest results (None: never run); None, writing nothing, when no run has the figure's section
(older results files do not). `python -m bench.e2e --redraw` redraws them all and rebuilds
the report from the results files, measuring nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

from bench import compare, curve
from training.plots import save

Runs = Mapping[str, "dict | None"]

PLOT_NAME = "latency_vs_load.png"
PLOTS_DIR = "plots"  # beside the report that links it
COLORS = {"fixed": "tab:orange", "deadline": "tab:blue"}  # one per policy
LINESTYLES = ("-", "--", ":", "-.")  # one per broker, in `runs` order
PLAIN = FuncFormatter(lambda value, _: f"{value:g}")  # 200, not 2 x 10^2, on log axes


def plot_path(markdown: Path | str, name: str = PLOT_NAME) -> Path:
    """Where the plot `name` of the report at `markdown` goes."""
    return Path(markdown).parent / PLOTS_DIR / name


def _present(runs: Runs, *keys: str) -> dict[str, Any]:
    """Each broker's section at `keys` (e.g. "end_to_end", "curve"), for the runs that have
    it (older results files do not)."""
    found = {kind: compare.dig(results, keys) for kind, results in runs.items()}
    return {kind: section for kind, section in found.items() if section}


def _title(runs: Runs, kind: str) -> str:
    return compare.column_title(kind, runs[kind])


def _plain_log(scale: Any, subs: Sequence[float] = (1.0, 2.0, 5.0)) -> None:
    """A log axis labelled at `subs` of each decade, in plain numbers: a label on every minor
    tick runs them into each other."""
    scale.set_major_locator(LogLocator(subs=subs))
    scale.set_major_formatter(PLAIN)
    scale.set_minor_formatter(NullFormatter())


# ----------------------------------------------------------------------------- latency vs load


def _percent(points: list[dict]) -> list[float]:
    return [100.0 * p["fraction"] for p in points]


def latency_vs_load(runs: Runs, path: Path | str) -> Path | None:
    """p99 and goodput against offered load for each batch policy (the report's curve)."""
    curves = _present(runs, "end_to_end", "curve")
    if not curves:
        return None
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    latency, goodput = figure.subplots(1, 2)
    for style, (kind, load_curve) in zip(LINESTYLES, curves.items()):
        reference = load_curve["reference_max_req_per_s"]
        for policy in curve.POLICIES:
            points = load_curve["policies"][policy]["points"]
            line = dict(color=COLORS.get(policy), linestyle=style, marker="o",
                        label=f"{policy}, {_title(runs, kind)}")
            latency.plot(_percent(points), [curve.p99_ms(p) for p in points], **line)  # nan: a gap
            goodput.plot(_percent(points),
                         [100.0 * p["goodput_req_per_s"] / reference for p in points], **line)
    deadlines = sorted({c["deadline_ms"] for c in curves.values()})
    for deadline in deadlines:
        latency.axhline(deadline, color="grey", linestyle=":", linewidth=1)
    latency.set(yscale="log", xlabel="offered load, % of the fixed policy's max",
                ylabel="p99 latency of results, ms (log)",
                title=f"p99 (dotted: the {', '.join(map(str, deadlines))} ms deadline)")
    _plain_log(latency.yaxis)
    top = 100.0 * max(curve.LOAD_FRACTIONS)
    goodput.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1,
                 label="offered (the most possible)")
    goodput.set(xlabel="offered load, % of the fixed policy's max",
                ylabel="goodput, % of the fixed policy's max",
                title="results within their deadline, per second")
    for axes in (latency, goodput):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize="small")
    return save(figure, path)


# ----------------------------------------------------------------------------- latency CDF

# The percentiles a phase's latency keeps (bench.stats.latency_summary) and the share of
# results at or below each. The max is left out: a share of 1 has no place on a logit axis.
PERCENTILES = (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99), ("p99_9_ms", 0.999))


def cdf_points(latency: Mapping[str, float] | None) -> tuple[list[float], list[float]]:
    """(ms, share of results at or below) at each percentile the phase kept: the results
    files hold percentiles, not the samples, so the CDF can only be drawn through these."""
    kept = [(latency[key], share) for key, share in PERCENTILES
            if latency and latency.get(key) is not None]
    return [ms for ms, _ in kept], [share for _, share in kept]


def latency_cdf(runs: Runs, path: Path | str) -> Path | None:
    """The latency CDF of each end-to-end load phase, a panel per broker."""
    phases = _present(runs, "end_to_end", "phases")
    if not phases:
        return None
    names = list(dict.fromkeys(p["phase"] for run in phases.values() for p in run))
    color = {name: f"C{i % 10}" for i, name in enumerate(names)}  # same phase, same colour
    figure = Figure(figsize=(6 * len(phases), 5), layout="constrained")
    panels = figure.subplots(1, len(phases), sharey=True, squeeze=False)[0]
    lines = {}
    for axes, (kind, run) in zip(panels, phases.items()):
        for phase in run:
            ms, shares = cdf_points(phase.get("latency_ms"))
            if ms:
                lines[phase["phase"]], = axes.plot(ms, shares, marker="o",
                                                   color=color[phase["phase"]])
        axes.set(xscale="log", yscale="logit", ylim=(0.3, 0.9995),
                 xlabel="latency, producer to consumer, ms (log)",
                 title=f"{_title(runs, kind)}: each load phase")
        _plain_log(axes.xaxis)
        axes.grid(True, which="both", alpha=0.3)
    panels[0].yaxis.set_major_locator(FixedLocator([share for _, share in PERCENTILES]))
    panels[0].yaxis.set_major_formatter(PLAIN)
    panels[0].yaxis.set_minor_locator(NullLocator())
    # One legend for every panel: a phase has the same colour in each.
    figure.legend([lines[n] for n in names if n in lines], [n for n in names if n in lines],
                  loc="outside right upper", fontsize="small", title="load phase")
    panels[0].set_ylabel("share of results at or below (logit)\n"
                         "through p50, p90, p99, p99.9 only: the results keep no samples")
    return save(figure, path)


# ----------------------------------------------------------------------------- CPU

# The phases under load, each guarantee's where the run has it. Light load is left out: at
# 20 requests/s every process's idle CPU, spread over few requests, dwarfs the rest.
CPU_PHASES = tuple(compare.guarantee_phase(g, p)
                   for g in compare.GUARANTEES for p in ("max", "half max"))
NOT_PROCESSES = ("total", "cores busy")  # sums of the processes, not one of them


def cpu_bars(runs: Runs) -> list[tuple[str, dict[str, float]]]:
    """(bar label, CPU microseconds per request by process) for each broker's phases in
    CPU_PHASES that it ran, in that order."""
    bars = []
    for kind, results in runs.items():
        for name in CPU_PHASES:
            cpu = compare.phase_value(name, "cpu_us_per_request")(results) if results else None
            if cpu:
                bars.append((f"{_title(runs, kind)}\n{name}",
                             {k: v for k, v in cpu.items() if k not in NOT_PROCESSES}))
    return bars


def cpu_per_request(runs: Runs, path: Path | str) -> Path | None:
    """CPU per request by process, stacked, a bar per broker and phase under load."""
    bars = cpu_bars(runs)
    if not bars:
        return None
    processes = list(dict.fromkeys(p for _, cpu in bars for p in cpu))
    figure = Figure(figsize=(12, 1.2 + 0.75 * len(bars)), layout="constrained")
    axes = figure.subplots()
    rows = range(len(bars))
    left = [0.0] * len(bars)
    for i, process in enumerate(processes):
        widths = [cpu.get(process, 0.0) for _, cpu in bars]
        axes.barh(rows, widths, 0.7, left=left, color=f"C{i % 10}", label=process)
        left = [a + b for a, b in zip(left, widths)]
    for row, total in zip(rows, left):
        axes.text(total, row, f" {total:.0f}", va="center", fontsize="small")
    axes.set_yticks(rows, [label for label, _ in bars], fontsize="small")
    axes.invert_yaxis()  # the first bar on top, as in the report
    axes.set_xlim(0, 1.1 * max(left))  # room for the totals
    axes.set(xlabel="CPU per request, microseconds (all cores)",
             title="CPU per request by process under load (light load left out: idle CPU "
                   "over few requests)")
    axes.grid(True, axis="x", alpha=0.3)
    figure.legend(loc="outside lower center", ncols=len(processes), fontsize="small")
    return save(figure, path)


# ----------------------------------------------------------------------------- candidates

# Both scoring paths of a large candidate set: (label, its candidates/s in a sweep row).
SCORING_PATHS = (("multi-row (reference layout)", "multi_row_cand_per_s"),
                 ("cached context", "cached_cand_per_s"))


def candidate_series(rows: Sequence[dict]) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """config -> scoring path -> (N, candidates/s), N ascending, from one run's sweep."""
    series: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for row in sorted(rows, key=lambda r: r["N"]):
        paths = series.setdefault(row["config"], {label: ([], []) for label, _ in SCORING_PATHS})
        for label, key in SCORING_PATHS:
            paths[label][0].append(row["N"])
            paths[label][1].append(row[key])
    return series


def candidates(runs: Runs, path: Path | str) -> Path | None:
    """Candidates/s against N for both scoring paths, a panel per config, a line style per
    broker's run (the sweep is the model alone: the runs differ only by when they ran)."""
    sweeps = {kind: candidate_series(rows)
              for kind, rows in _present(runs, "large_candidates").items()}
    if not sweeps:
        return None
    configs = list(dict.fromkeys(c for series in sweeps.values() for c in series))
    figure = Figure(figsize=(6 * len(configs), 4.8), layout="constrained")
    panels = figure.subplots(1, len(configs), squeeze=False)[0]
    for axes, config in zip(panels, configs):
        for style, (kind, series) in zip(LINESTYLES, sweeps.items()):
            for i, (label, (ns, rates)) in enumerate(series.get(config, {}).items()):
                axes.plot(ns, rates, color=f"C{i}", linestyle=style, marker="o",
                          label=f"{label}, {_title(runs, kind)} run")
        sizes = sorted({n for s in sweeps.values() for n in s.get(config, {}).get(
            SCORING_PATHS[0][0], ([], []))[0]})
        axes.set(xscale="log", yscale="log", xlabel="candidates per request, N (log)",
                 ylabel="candidates scored per second (log)",
                 title=f"{config}: model alone, jitted")
        axes.xaxis.set_major_locator(FixedLocator(sizes))  # the sweep's own N
        axes.xaxis.set_major_formatter(PLAIN)
        axes.xaxis.set_minor_locator(NullLocator())
        _plain_log(axes.yaxis, (1.0, 2.0, 3.0, 5.0, 7.0))  # often less than a decade
        axes.grid(True, which="both", alpha=0.3)
    # One legend for every panel: colour = scoring path, line style = run.
    handles, labels = panels[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncols=2, fontsize="small")
    return save(figure, path)


# ----------------------------------------------------------------------------- the report


class Plot(NamedTuple):
    """A figure `document` draws and links."""

    name: str  # its file in plots/
    draw: Callable[[Runs, Path], Path | None]
    after: str  # the report's heading whose table it follows
    alt: str


PLOTS = (
    Plot("latency_cdf.png", latency_cdf, "## Max",
         "latency CDF of each load phase, each broker"),
    Plot("cpu_per_request.png", cpu_per_request, "## CPU per request at max load",
         "CPU per request by process under load, each broker"),
    Plot(PLOT_NAME, latency_vs_load, "## Latency against load",
         "p99 and goodput against offered load, each batch policy and broker"),
    Plot("candidates.png", candidates, "### Large candidate sets",
         "candidates/s against N, both scoring paths"),
)


class Elsewhere(NamedTuple):
    """A figure another command draws into the same folder: linked, where present, in a
    section of its own at the end."""

    name: str
    heading: str
    sentence: str
    alt: str


ELSEWHERE = (Elsewhere("eval.png", "## Ranking quality",
                       "From `make eval` (`bench/eval.json`): NDCG@k and AUC of each method on "
                       "held-out requests.", "NDCG@k and AUC per method"),)


def link_after(text: str, heading: str, line: str) -> str:
    """`text` with `line` as a paragraph after the first table under `heading`; at the end
    where there is no such heading (a report reworded since: the figure stays linked)."""
    lines = text.split("\n")
    if heading not in lines:
        return text.rstrip("\n") + f"\n\n{line}\n"
    end = lines.index(heading) + 1
    while end < len(lines) and not lines[end].startswith(("|", "#")):
        end += 1
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    after = [""] if end < len(lines) and lines[end] else []  # a blank line before what follows
    return "\n".join(lines[:end] + ["", line] + after + lines[end:])


def document(runs: Runs, detail: Callable[[dict], str],
             markdown: Path | str | None) -> tuple[str, list[Path]]:
    """The report (`compare.document`) and, given where it goes (`markdown`), every figure the
    runs have data for drawn in plots/ beside it and linked after the table it illustrates,
    then the figures other commands left there. Returns the text and the figures drawn."""
    text = compare.document(runs, detail)
    if markdown is None:
        return text, []
    drawn = []
    for plot in PLOTS:
        png = plot.draw(runs, plot_path(markdown, plot.name))
        if png is not None:
            text = link_after(text, plot.after, f"![{plot.alt}]({PLOTS_DIR}/{plot.name})")
            drawn.append(png)
    for other in ELSEWHERE:
        if plot_path(markdown, other.name).exists():
            text = (text.rstrip("\n") + f"\n\n{other.heading}\n\n{other.sentence}\n\n"
                    f"![{other.alt}]({PLOTS_DIR}/{other.name})\n")
    return text, drawn
