"""The cells' Ray metrics: what each cell exports, under which Prometheus names, and the Grafana
dashboard that shows them.

Every cell records, per chunk, through ``ray.util.metrics`` (Ray's metrics agent on each node serves
them on the node's metrics export port, ``ray.nodes()[i]['MetricsExportPort']``, ``/metrics``)::

    name (ray.util.metrics)   kind       exported as (Prometheus)                  unit
    bidl_cell_frames          Counter    ray_bidl_cell_frames_total                time-step frames computed
    bidl_cell_samples         Counter    ray_bidl_cell_samples_total               samples (chunks) done
    bidl_cell_busy_seconds    Counter    ray_bidl_cell_busy_seconds_total          device-busy seconds
    bidl_cell_wait_seconds    Counter    ray_bidl_cell_wait_seconds_total          seconds blocked on inputs
    bidl_cell_bytes_sent      Counter    ray_bidl_cell_bytes_sent_total            bytes sent on output edges
    bidl_cell_chunk_ms        Histogram  ray_bidl_cell_chunk_ms_{bucket,sum,count}  device ms per chunk
    bidl_cell_queue_depth     Gauge      ray_bidl_cell_queue_depth                 sent, unreleased messages

Ray prefixes every application metric with ``ray_``; Prometheus' client adds ``_total`` to a
counter (and ``_bucket``/``_sum``/``_count`` to a histogram's series). Labels on every series:
:data:`LABELS` (``cell`` is the actor's name, ``config`` the model config's name), plus Ray's own
(``Component``, ``NodeAddress``, ``SessionName``, ``Version``, ``WorkerId``).

``python -m bidl_runtime.cell.metrics`` prints the names; ``--install-dashboard [DIR]`` copies the shipped
dashboard (``bidl_runtime/grafana/bidl_grid.json``, made by :func:`dashboard`) into Ray's Grafana
dashboards folder of the latest session; ``--write-dashboard`` regenerates the shipped file.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from bidl_runtime.cluster.ray_cluster import latest_session

LABELS = ("cell", "replica", "row", "col", "device", "config")
PREFIX = "ray_"                       # Ray's namespace for application metrics
CHUNK_MS_BUCKETS = (0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
DASHBOARD = Path(__file__).parents[1] / "grafana" / "bidl_grid.json"   # bidl_runtime/grafana/ (package data)
DASHBOARD_UID = "bidl-grid-cells"


@dataclass(frozen=True)
class MetricDef:
    """One cell metric: its ``ray.util.metrics`` name, kind and description."""

    name: str
    kind: str          # counter | histogram | gauge
    description: str

    @property
    def exported(self) -> str:
        """The Prometheus name of its value (the counter's ``_total``; a histogram's family name)."""
        return PREFIX + self.name + ("_total" if self.kind == "counter" else "")

    @property
    def series(self) -> tuple[str, ...]:
        """Every series name it appears under on the metrics endpoint."""
        if self.kind == "histogram":
            return tuple(f"{self.exported}_{s}" for s in ("bucket", "sum", "count"))
        return (self.exported,)


METRICS = (
    MetricDef("bidl_cell_frames", "counter", "time-step frames computed by the cell"),
    MetricDef("bidl_cell_samples", "counter", "samples (one chunk each) the cell finished"),
    MetricDef("bidl_cell_busy_seconds", "counter", "device-busy seconds (chunk compute)"),
    MetricDef("bidl_cell_wait_seconds", "counter", "seconds the cell waited for its input and state"),
    MetricDef("bidl_cell_bytes_sent", "counter", "bytes sent on the cell's output edges"),
    MetricDef("bidl_cell_chunk_ms", "histogram", "device milliseconds per chunk"),
    MetricDef("bidl_cell_queue_depth", "gauge", "messages this cell sent that its receivers have not released"),
)


def exported_series() -> set[str]:
    """Every Prometheus series name the cells export."""
    return {s for m in METRICS for s in m.series}


def cell_labels(cell: Any, config_name: str) -> dict[str, str]:
    """The label values of a cell (a :class:`~bidl_runtime.plan.grid_plan.CellPlan`)."""
    return {"cell": cell.name, "replica": str(cell.replica), "row": str(cell.row), "col": str(cell.col),
            "device": str(cell.device), "config": config_name}


class CellMetrics:
    """A cell's metric objects and label values; :meth:`record` once per finished sample.

    The metric objects are created once per process (Ray registers each name once); a reconfigured
    (pooled) actor only changes its labels."""

    _shared: Optional[dict[str, Any]] = None

    def __init__(self, labels: dict[str, str]):
        self.labels = dict(labels)
        self.m = self._objects()
        self._bytes = 0

    @classmethod
    def _objects(cls) -> dict[str, Any]:
        if cls._shared is None:
            from ray.util import metrics
            kinds = {"counter": lambda d: metrics.Counter(d.name, d.description, tag_keys=LABELS),
                     "gauge": lambda d: metrics.Gauge(d.name, d.description, tag_keys=LABELS),
                     "histogram": lambda d: metrics.Histogram(d.name, d.description, boundaries=list(CHUNK_MS_BUCKETS),
                                                              tag_keys=LABELS)}
            cls._shared = {d.name[len("bidl_cell_"):]: kinds[d.kind](d) for d in METRICS}
        return cls._shared

    def reset(self) -> None:
        """A new run: the channels' byte counts start again from zero."""
        self._bytes = 0

    def record(self, busy_ms: float, steps: int, wait_s: float, bytes_sent: int, queue_depth: int) -> None:
        """One finished sample: its compute, its frames, the time waited for its inputs, the cell's
        total bytes sent so far (this run) and its current queue depth."""
        m, tags = self.m, self.labels
        m["frames"].inc(steps, tags)
        m["samples"].inc(1, tags)
        if busy_ms > 0:
            m["busy_seconds"].inc(busy_ms / 1e3, tags)
        if wait_s > 0:
            m["wait_seconds"].inc(wait_s, tags)
        m["chunk_ms"].observe(busy_ms, tags)
        if bytes_sent > self._bytes:
            m["bytes_sent"].inc(bytes_sent - self._bytes, tags)
            self._bytes = bytes_sent
        m["queue_depth"].set(queue_depth, tags)


# ---------------------------------------------------------------------------------- scraping

def metrics_endpoints() -> list[str]:
    """``http://host:port/metrics`` of every live node of the connected Ray cluster."""
    import ray
    return [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
            for n in ray.nodes() if n.get("Alive") and n.get("MetricsExportPort")]


def parse_prometheus(text: str, prefix: str = PREFIX + "bidl_cell_") -> list[tuple[str, dict[str, str], float]]:
    """``(series name, labels, value)`` of every sample in a Prometheus text exposition whose name
    starts with ``prefix`` (label values without escapes other than ``\\"``)."""
    import re
    out = []
    pat = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        name, _, rest = line.partition("{")
        if rest:
            body, _, value = rest.rpartition("}")
            labels = {k: v.replace('\\"', '"') for k, v in pat.findall(body)}
        else:
            name, _, value = line.partition(" ")
            labels = {}
        out.append((name.strip(), labels, float(value.split()[0])))
    return out


# ---------------------------------------------------------------------------------- dashboard

def _panel(pid: int, title: str, expr: str, legend: str, unit: str, x: int, y: int, desc: str) -> dict:
    return {"id": pid, "type": "timeseries", "title": title, "description": desc,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
            "fieldConfig": {"defaults": {"unit": unit, "custom": {"lineWidth": 1, "fillOpacity": 10}},
                            "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "right", "calcs": ["mean", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
            "targets": [{"refId": "A", "expr": expr, "legendFormat": legend,
                         "datasource": {"type": "prometheus", "uid": "${datasource}"}}]}


def dashboard() -> dict:
    """The Grafana dashboard of the cell metrics (what ``bidl_runtime/grafana/bidl_grid.json`` holds)."""
    sel = 'config=~"$config", replica=~"$replica", SessionName=~"$session"'
    by = "config, replica, row, col, device, cell"
    leg = "{{cell}}"
    rate = "[$__rate_interval]"
    panels = [
        ("Frames/s per cell", f"sum by ({by}) (rate(ray_bidl_cell_frames_total{{{sel}}}{rate}))", "short",
         "time-step frames computed per second (the user guide's unit), per cell"),
        ("Busy % per cell", f"100 * sum by ({by}) (rate(ray_bidl_cell_busy_seconds_total{{{sel}}}{rate}))",
         "percent", "share of wall time the cell's device computed; a balanced pipeline keeps all cells high"),
        ("Chunk ms per cell (p50)",
         f"histogram_quantile(0.5, sum by (le, {by}) (rate(ray_bidl_cell_chunk_ms_bucket{{{sel}}}{rate})))",
         "ms", "median device time per chunk (bucketed)"),
        ("Chunk ms per cell (mean)",
         f"sum by ({by}) (rate(ray_bidl_cell_chunk_ms_sum{{{sel}}}{rate})) / "
         f"sum by ({by}) (rate(ray_bidl_cell_chunk_ms_count{{{sel}}}{rate}))",
         "ms", "mean device time per chunk"),
        ("Bytes sent/s per cell", f"sum by ({by}) (rate(ray_bidl_cell_bytes_sent_total{{{sel}}}{rate}))",
         "Bps", "bytes per second on the cell's output edges (state and activations)"),
        ("Queue depth per cell", f"max by ({by}) (ray_bidl_cell_queue_depth{{{sel}}})", "short",
         "messages the cell sent that its receivers have not released yet: a full queue is back-pressure"),
        ("Input wait % per cell", f"100 * sum by ({by}) (rate(ray_bidl_cell_wait_seconds_total{{{sel}}}{rate}))",
         "percent", "share of wall time the cell waited for its input or state: stalls upstream"),
        ("Samples/s per cell", f"sum by ({by}) (rate(ray_bidl_cell_samples_total{{{sel}}}{rate}))", "short",
         "samples (chunks) finished per second"),
    ]
    out = [_panel(i + 1, t, e, leg, u, 12 * (i % 2), 8 * (i // 2), d) for i, (t, e, u, d) in enumerate(panels)]

    def var(name: str, label: str, query_metric: str = "ray_bidl_cell_frames_total") -> dict:
        return {"name": name, "label": label, "type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "query": {"query": f"label_values({query_metric}, {label})", "refId": f"var-{name}"},
                "definition": f"label_values({query_metric}, {label})", "includeAll": True, "multi": True,
                "allValue": ".*", "current": {"text": "All", "value": "$__all"}, "refresh": 2, "sort": 1}
    return {
        "uid": DASHBOARD_UID, "title": "bidl-grid: cells", "tags": ["bidl-grid", "ray"],
        "description": "Per-cell figures of the bidl-grid spatio-temporal grid (bidl_runtime.cell.metrics)",
        "editable": True, "schemaVersion": 39, "version": 1, "refresh": "5s", "timezone": "browser",
        "time": {"from": "now-15m", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0},
            var("session", "SessionName"), var("config", "config"), var("replica", "replica")]},
        "panels": out,
    }


def dashboard_exprs(doc: dict) -> list[str]:
    """Every PromQL expression in a dashboard (panel targets and template queries)."""
    exprs = [t["expr"] for p in doc.get("panels", []) for t in p.get("targets", [])]
    for v in doc.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            exprs.append(q["query"])
    return exprs


def dashboard_metric_names(doc: dict) -> set[str]:
    """The ``ray_bidl_*`` series names a dashboard's expressions use."""
    import re
    return {n for e in dashboard_exprs(doc) for n in re.findall(r"\bray_bidl_\w+", e)}


def grafana_dashboards_dir() -> Path:
    """Ray's Grafana dashboards folder of the latest session on this machine (what Ray's generated
    provisioning, ``session_latest/metrics/grafana/provisioning/dashboards/default.yml``, points at),
    or ``$RAY_METRICS_GRAFANA_DASHBOARD_OUTPUT_DIR`` when set."""
    if os.environ.get("RAY_METRICS_GRAFANA_DASHBOARD_OUTPUT_DIR"):
        return Path(os.environ["RAY_METRICS_GRAFANA_DASHBOARD_OUTPUT_DIR"])
    return latest_session() / "metrics" / "grafana" / "dashboards"   # a running embedded cluster's, else Ray's default


def install_dashboard(directory: Optional[str | Path] = None) -> Path:
    """Copy the shipped dashboard into ``directory`` (default :func:`grafana_dashboards_dir`); returns
    the file written. FileNotFoundError when the folder does not exist (no Ray session with a dashboard)."""
    d = Path(directory) if directory is not None else grafana_dashboards_dir()
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such folder (start Ray with its dashboard first, or name a folder)")
    out = d / DASHBOARD.name
    shutil.copyfile(DASHBOARD, out)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bidl_runtime.cell.metrics", description=__doc__.split("\n\n")[0])
    ap.add_argument("--install-dashboard", nargs="?", const="", default=None, metavar="DIR",
                    help="copy the Grafana dashboard into DIR (default: Ray's dashboards folder of the latest session)")
    ap.add_argument("--write-dashboard", action="store_true", help="regenerate the shipped dashboard JSON")
    args = ap.parse_args(argv)
    if args.write_dashboard:
        DASHBOARD.parent.mkdir(parents=True, exist_ok=True)
        DASHBOARD.write_text(json.dumps(dashboard(), indent=1) + "\n")
        print(f"wrote {DASHBOARD}")
        return 0
    if args.install_dashboard is not None:
        try:
            print(f"dashboard installed: {install_dashboard(args.install_dashboard or None)}")
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    print(f"labels: {', '.join(LABELS)}")
    for m in METRICS:
        shown = m.exported + ("_{bucket,sum,count}" if m.kind == "histogram" else "")
        print(f"{shown:<46} {m.kind:<9} {m.description}")
    print(f"dashboard: {DASHBOARD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
