"""The worker's Grafana dashboard as code: `python -m tools.dashboard` writes
`monitoring/grafana/dashboards/ranking-worker.json` from the panels listed here.

Each panel is a few PromQL queries over the worker's metrics (worker/monitoring.py), in
Grafana's JSON model (schema 39) on the provisioned Prometheus data source (uid `prometheus`).
Rates use Grafana's `$__rate_interval`, which Grafana sizes from the scrape interval; the
dashboard test (tests/test_dashboard.py) evaluates every query through a real Prometheus
scraping a worker under load, and checks that the committed JSON is what this module writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from tools.launcher import ROOT

DASHBOARD_PATH = ROOT / "monitoring" / "grafana" / "dashboards" / "ranking-worker.json"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
RATE_INTERVAL = "$__rate_interval"
_COLUMNS = 24  # Grafana's grid width
_PANEL_HEIGHT = 8


@dataclasses.dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclasses.dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    description: str = ""
    stacked: bool = False
    width: int = 12


def _rate(metric: str, by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}[{RATE_INTERVAL}]))"


def _quantile(q: float, histogram: str, by: str = "") -> str:
    labels = ", ".join(filter(None, (by, "le")))
    return (f"histogram_quantile({q}, sum by ({labels}) "
            f"(rate({histogram}_bucket[{RATE_INTERVAL}])))")


def _mean(histogram: str, by: str = "") -> str:
    return f"{_rate(histogram + '_sum', by)} / {_rate(histogram + '_count', by)}"


PANELS: tuple[Panel, ...] = (
    Panel("Throughput", (
        Query(_rate("ranker_requests_total"), "requests"),
        Query(_rate("ranker_results_total"), "results"),
        Query(_rate("ranker_dead_letters_total", "code"), "dead letters: {{code}}"),
        Query(_rate("ranker_shed_total"), "shed (expired)"),
    ), unit="reqps", description="Records consumed, results published, dead letters by code."),
    Panel("Latency (request sent to result acked)", (
        Query(_quantile(0.5, "ranker_request_latency_seconds"), "p50"),
        Query(_quantile(0.99, "ranker_request_latency_seconds"), "p99"),
        Query(_quantile(0.99, "ranker_queue_wait_seconds"), "p99 queue wait"),
    ), unit="s", description="From the request's timestamp to the broker's ack of its result."),
    Panel("Batch size", (
        Query(_mean("ranker_batch_size"), "mean"),
        Query(_quantile(0.99, "ranker_batch_size"), "p99"),
    ), description="Requests per ranked batch."),
    Panel("Time per batch, by stage", (
        Query(_mean("ranker_stage_seconds", "stage"), "{{stage}}"),
    ), unit="s", stacked=True, description="Mean seconds per batch in each stage of the path."),
    Panel("Consumer lag, by partition", (
        Query("sum by (partition) (ranker_consumer_lag)", "partition {{partition}}"),
    ), description="Records behind the partition's end (reported every 5 s)."),
    Panel("Results by model version", (
        Query(_rate("ranker_model_results_total", "version"), "{{version}}"),
    ), unit="reqps", stacked=True, description="Which model ranked them: rollouts and canaries."),
    Panel("Worker CPU: host path vs model", (
        Query(f"sum (rate(ranker_python_threads_cpu_seconds[{RATE_INTERVAL}]))",
              "host path (Python threads)"),
        Query(f"sum (rate(process_cpu_seconds_total[{RATE_INTERVAL}])) - "
              f"sum (rate(ranker_python_threads_cpu_seconds[{RATE_INTERVAL}]))",
              "model (XLA, native threads)"),
    ), unit="percentunit", stacked=True, description="CPU cores busy, all replicas."),
    Panel("XLA compilations", (
        Query("max by (instance) (ranker_compilations)", "{{instance}}"),
    ), description="Compilations so far: flat once ready (a rollout compiles once more)."),
    Panel("Ready, breaker open, recovering", (
        Query("min by (instance) (ranker_ready)", "ready {{instance}}"),
        Query("max by (instance) (ranker_breaker_open)", "breaker open {{instance}}"),
        Query("max by (instance) (ranker_recovering)", "recovering {{instance}}"),
    ), width=8, description="1 = yes. Not ready: compiling, rebalancing, recovering, breaker."),
    Panel("History table", (
        Query("sum (ranker_history_users)", "users held"),
        Query(_rate("ranker_engagements_total", "outcome"), "engagements/s: {{outcome}}"),
    ), width=8, description="Users in the history tables; engagements consumed by outcome."),
    Panel("Engagement lag (sent to visible in the table)", (
        Query(_quantile(0.5, "ranker_engagement_visible_lag_seconds"), "p50"),
        Query(_quantile(0.99, "ranker_engagement_visible_lag_seconds"), "p99"),
    ), unit="s", width=8, description="How long until a ranked request sees an engagement."),
)


def _layout(panels: Sequence[Panel]) -> Iterator[dict[str, int]]:
    """Grid positions, left to right, a new row when the next panel does not fit."""
    x = y = 0
    for panel in panels:
        if x + panel.width > _COLUMNS:
            x, y = 0, y + _PANEL_HEIGHT
        yield {"x": x, "y": y, "w": panel.width, "h": _PANEL_HEIGHT}
        x += panel.width


def _panel_json(panel_id: int, panel: Panel, grid: dict[str, int]) -> dict:
    custom = {"stacking": {"mode": "normal" if panel.stacked else "none"},
              "fillOpacity": 30 if panel.stacked else 0}
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": grid,
        "fieldConfig": {"defaults": {"unit": panel.unit, "custom": custom}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                    "tooltip": {"mode": "multi"}},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": q.expr,
                     "legendFormat": q.legend} for i, q in enumerate(panel.queries)],
    }


def dashboard(panels: Sequence[Panel] = PANELS) -> dict:
    """The dashboard in Grafana's JSON model."""
    return {
        "uid": "phoenix-ranker",
        "title": "Phoenix ranking worker",
        "tags": ["phoenix", "kafka", "ranking"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": []},
        "annotations": {"list": []},
        "panels": [_panel_json(i + 1, panel, grid)
                   for i, (panel, grid) in enumerate(zip(panels, _layout(panels)))],
    }


def render(panels: Sequence[Panel] = PANELS) -> str:
    return json.dumps(dashboard(panels), indent=2) + "\n"


def queries(document: dict) -> list[tuple[str, str]]:
    """(panel title, expression) of every query of a dashboard document."""
    return [(panel["title"], target["expr"]) for panel in document["panels"]
            for target in panel["targets"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.dashboard",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DASHBOARD_PATH)
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render())
    print(f"wrote {args.out} ({len(PANELS)} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
