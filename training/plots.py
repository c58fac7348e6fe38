"""Ranking quality as a picture: NDCG@k and AUC per method (`make eval` writes
`bench/plots/eval.png`), drawn from the payload `training.evaluate` writes to its JSON (never a
second evaluation). Also the one way every figure of the project is written (`save`).

matplotlib's object API (`Figure`, Agg, no pyplot): headless, and no global state between
figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

# What the AUC panel shows of each method: the mean over the actions, and the action the
# issue's target is on (favorite AUC >= 0.75).
AUC_SERIES = (("mean AUC, all actions", lambda m: m["mean_auc"]),
              ("favorite AUC", lambda m: m["auc"]["favorite"]))


def save(figure: Figure, path: Path | str) -> Path:
    """Writes `figure` as a PNG to `path` (its folder made if need be) and returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path


def eval_series(payload: Mapping[str, Any]) -> tuple[list[str], dict[str, list[float]]]:
    """(methods in the payload's order, each plotted figure's value per method): every
    NDCG@k the payload has, then AUC_SERIES."""
    methods = payload["methods"]
    names = list(methods)
    ndcg_keys = [key for key in next(iter(methods.values())) if key.startswith("ndcg@")]
    series = {key.replace("ndcg", "NDCG"): [methods[n][key] for n in names] for key in ndcg_keys}
    series.update({label: [get(methods[n]) for n in names] for label, get in AUC_SERIES})
    return names, series


def _grouped_bars(axes: Any, names: list[str], series: Mapping[str, list[float]]) -> None:
    """One group of bars per method, one bar per series, each labelled with its value (the
    differences near the top are too small to read off the axis)."""
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        offset = (i - (len(series) - 1) / 2) * width
        bars = axes.bar([x + offset for x in range(len(names))], values, width, label=label)
        axes.bar_label(bars, fmt="%.3f", fontsize="x-small", rotation=90, padding=2)
    axes.set_xticks(range(len(names)), names)
    axes.set_ylim(0, 1.25)  # room above a bar at 1 for its label, then the legend
    axes.grid(True, axis="y", alpha=0.3)


def eval_scores(payload: Mapping[str, Any], path: Path | str) -> Path | None:
    """NDCG@k (left) and AUC (right) per method to `path` (a PNG); None, writing nothing, when
    the payload has no methods."""
    if not payload.get("methods"):
        return None
    names, series = eval_series(payload)
    auc_labels = {label for label, _ in AUC_SERIES}
    figure = Figure(figsize=(12, 4.8), layout="constrained")
    ndcg, auc = figure.subplots(1, 2)
    _grouped_bars(ndcg, names, {k: v for k, v in series.items() if k not in auc_labels})
    ndcg.set(xlabel="method", ylabel="NDCG of each request's final order (mean)",
             title="NDCG@k (gain: true expected weighted score)")
    _grouped_bars(auc, names, {k: v for k, v in series.items() if k in auc_labels})
    auc.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance")
    auc.set(xlabel="method", ylabel="AUC over all held-out candidates",
            title="AUC against labels drawn from the true probabilities")
    for axes in (ndcg, auc):
        axes.legend(fontsize="small", loc="upper center", ncols=3)
    evaluated = payload.get("eval", {})
    gap = payload.get("ndcg@5_gap_closed")
    figure.suptitle(f"{payload.get('model_version', 'model')} on "
                    f"{evaluated.get('requests', '?')} held-out requests"
                    + (f"; trained closes {gap:.1%} of the random-to-oracle NDCG@5 gap"
                       if gap is not None else ""))
    return save(figure, path)
