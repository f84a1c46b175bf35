"""Timelines of a run: what every cell did when, as a Chrome/Perfetto trace and a PNG.

    report = grid.run(samples, trace="run.json")      # or: python -m bidl_runtime.run --trace run.json
    # run.json: open in https://ui.perfetto.dev or chrome://tracing; run.png: the first samples

Each cell records spans into a :class:`~bidl_runtime.cell.spans.TraceBuffer` (only when a run is traced: otherwise the loop
pays one ``is None`` test per hook): on its loop thread ``wait input`` (its input or activation
edge), ``wait state`` (the row above), ``compute`` (the chunk), ``wait outbox`` (the previous
sample's sends still running: back-pressure from below); on its outbox thread ``send <kind>`` per
output edge (waiting for a credit included). The buffer keeps the first ``capacity // 4`` spans and
a ring of the latest ones (bounded memory; the rest are counted as dropped); the loop returns it
with its stats at the end of the run.

Times are on ``CLOCK_MONOTONIC`` (``time.monotonic_ns()``: one clock for every process of a node).
The hooks read ``time.perf_counter()`` (the loop reads it anyway; on Linux it is the same clock) and
:meth:`TraceBuffer.export` maps them onto ``time.monotonic_ns()`` with an offset read in the same
process, so the mapping holds wherever the two clocks differ. The driver adds its own tracks from the run's feed and result times (``fed_at``,
``done_at``, on its ``perf_counter``, mapped onto its monotonic clock): a ``feed`` mark per sample,
``result`` (the driver waiting for the next result in order), and each sample's time in flight.
Cells on another node than the driver are mapped through both nodes' wall clocks (``time.time_ns``
taken beside the monotonic one), so their alignment is as good as the nodes' clock sync; the trace
says which nodes were mapped that way.

In the trace, each cell is one process track (named like the actor, sorted replica, row, column;
its node and OS pid in its labels) with threads ``loop`` and ``outbox``; the driver is the first.
Every span's ``args`` hold its ``sample`` and, on a cell's track, the cell's ``replica``, ``row``
and ``col``.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Optional

from bidl_runtime.cell.spans import CATEGORIES, LOOP, OUTBOX, THREADS, category, clock_anchor  # noqa: F401

DRIVER_THREADS = {0: "feed", 1: "results", 2: "samples in flight"}

# ------------------------------------------------------------------------------ the trace

def _us(t_ns: int, t0: int) -> float:
    return round((t_ns - t0) / 1e3, 3)


def _meta(pid: int, what: str, args: dict, tid: int = 0) -> dict:
    return {"ph": "M", "pid": pid, "tid": tid, "name": what, "args": args}


def build_trace(plan: Any, cells: Iterable[dict], fed_at: dict[int, float], done_at: dict[int, float],
                driver_node: Optional[str] = None) -> dict[str, Any]:
    """The Chrome trace (``{'traceEvents': [...], ...}``) of a run: ``cells`` are the cells' stats,
    each with its ``trace`` (a :meth:`TraceBuffer.export`); ``fed_at``/``done_at`` the driver's
    ``perf_counter`` times per sample."""
    wall, mono = clock_anchor()
    perf_to_mono = mono - time.perf_counter_ns()      # the driver's perf_counter -> its monotonic clock
    cells = sorted((c for c in cells if c.get("trace")), key=lambda c: (c["replica"], c["row"], c["col"]))
    spans: list[tuple[int, int, str, int, int, dict]] = []    # (pid, tid, name, t0, t1, args)
    meta: list[dict] = [_meta(0, "process_name", {"name": "driver"}), _meta(0, "process_sort_index", {"sort_index": 0}),
                        _meta(0, "process_labels", {"labels": f"node {driver_node or '?'}, pid {os.getpid()}"})]
    meta += [_meta(0, "thread_name", {"name": n}, tid) for tid, n in DRIVER_THREADS.items()]
    mapped: dict[str, float] = {}
    dropped = {}
    for pid, c in enumerate(cells, start=1):
        tr = c["trace"]
        shift = 0
        if driver_node and tr.get("node") and tr["node"] != driver_node:    # another node: via wall clocks
            cw, cm = tr["anchor"]
            shift = (cw - cm) - (wall - mono)
            mapped[tr["node"]] = shift / 1e6
        meta += [_meta(pid, "process_name", {"name": c["cell"]}), _meta(pid, "process_sort_index", {"sort_index": pid}),
                 _meta(pid, "process_labels", {"labels": f"node {tr.get('node') or '?'}, pid {tr.get('pid')}, "
                                                         f"replica {c['replica']} row {c['row']} col {c['col']} "
                                                         f"device {c['device']}"})]
        meta += [_meta(pid, "thread_name", {"name": n}, tid) for tid, n in THREADS.items()]
        where = {"replica": c["replica"], "row": c["row"], "col": c["col"]}
        for tid, name, t0, t1, sample in tr["spans"]:
            spans.append((pid, tid, name, t0 + shift, t1 + shift, {"sample": sample, **where}))
        if tr.get("dropped"):
            dropped[c["cell"]] = tr["dropped"]
    fed = {i: int(t * 1e9) + perf_to_mono for i, t in fed_at.items()}
    done = {i: int(t * 1e9) + perf_to_mono for i, t in done_at.items()}
    prev = None
    for i in sorted(done, key=done.get):
        start = max(fed.get(i, done[i]), prev if prev is not None else fed.get(i, done[i]))
        spans.append((0, 1, "result", start, done[i], {"sample": i}))
        prev = done[i]
    times = [s[3] for s in spans] + list(fed.values())
    t0 = min(times) if times else mono
    events: list[dict] = []
    for pid, tid, name, a, b, args in spans:
        events.append({"name": name, "cat": category(name) if pid else "driver", "ph": "X", "ts": _us(a, t0),
                       "dur": round(max(0, b - a) / 1e3, 3), "pid": pid, "tid": tid, "args": args})
    for i, t in fed.items():
        events.append({"name": "feed", "cat": "driver", "ph": "i", "s": "t", "ts": _us(t, t0), "pid": 0, "tid": 0,
                       "args": {"sample": i}})
        if i in done:
            common = {"name": f"sample {i}", "cat": "sample", "id": i, "pid": 0, "tid": 2}
            events.append(dict(common, ph="b", ts=_us(t, t0)))
            events.append(dict(common, ph="e", ts=_us(done[i], t0)))
    events.sort(key=lambda e: (e["ts"], e["pid"], e["tid"]))
    return {
        "traceEvents": meta + events, "displayTimeUnit": "ms",
        "otherData": {"config": plan.config, "grid": f"{plan.rows}x{plan.cols}", "replicas": plan.replicas,
                      "T": plan.T, "clock": "CLOCK_MONOTONIC (time.monotonic_ns), microseconds from the first event",
                      "driver_node": driver_node, "nodes_mapped_by_wall_clock_ms": mapped,
                      "dropped_spans": dropped, "origin_monotonic_ns": t0},
    }


def spans_of(doc: dict) -> dict[str, list[dict]]:
    """The complete (``X``) events of a trace by track name (``driver`` or the cell's name)."""
    names = {e["pid"]: e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"}
    out: dict[str, list[dict]] = {n: [] for n in names.values()}
    for e in doc["traceEvents"]:
        if e["ph"] == "X":
            out[names[e["pid"]]].append(e)
    return out


# ------------------------------------------------------------------------------ the PNG

def describe_samples(ids: set[int]) -> str:
    """What a timeline shows, in words: ``11 samples (0-10)``, ``3 samples (0, 2, 5)``, ``no samples``."""
    if not ids:
        return "no samples"
    lo, hi = min(ids), max(ids)
    which = f"{lo}-{hi}" if len(ids) == hi - lo + 1 and len(ids) > 2 else ", ".join(map(str, sorted(ids)))
    return f"{len(ids)} sample{'s' if len(ids) != 1 else ''} ({which})"


def plot_timeline(doc: dict, path: str | Path, first: int) -> Path:
    """A PNG of the time until the first ``first`` samples are computed: one row per cell (compute
    coloured by sample, so a sample can be followed through the grid; waits grey, long waits red;
    sends below), the driver's feed marks and result waits on top; its title names the samples whose compute it draws (those
    of later samples that start in the window too). ImportError without matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    tracks = spans_of(doc)
    order = ["driver"] + [n for n in tracks if n != "driver"]
    computes = [e for n in order[1:] for e in tracks[n] if e["name"] == "compute"]
    shown = [e for e in computes if isinstance(e["args"]["sample"], int) and e["args"]["sample"] < first]
    if not shown:
        end = max((e["ts"] + e.get("dur", 0) for e in doc["traceEvents"] if "ts" in e), default=1.0)
    else:
        end = max(e["ts"] + e["dur"] for e in shown)
    end_ms = end / 1e3 * 1.02 + 1e-3
    med = {}
    for n in order[1:]:
        d = sorted(e["dur"] for e in tracks[n] if e["name"] == "compute")
        med[n] = d[len(d) // 2] if d else 0.0
    fig = Figure(figsize=(14, 1.2 + 0.45 * len(order)), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    cmap = __import__("matplotlib").colormaps["tab10"]
    drawn: set[int] = set()          # samples whose compute appears in the window: what the title names
    for row, n in enumerate(order):
        y = len(order) - 1 - row
        for e in tracks[n]:
            a, w = e["ts"] / 1e3, e["dur"] / 1e3
            if a > end_ms:
                continue
            s = e["args"]["sample"]
            if e["name"] == "compute":
                ax.broken_barh([(a, w)], (y - 0.35, 0.55), color=cmap(s % 10) if isinstance(s, int) else "k")
                if isinstance(s, int):
                    drawn.add(s)
                if isinstance(s, int) and w > end_ms / 60:
                    ax.text(a + w / 2, y - 0.07, str(s), ha="center", va="center", fontsize=7, color="white")
            elif e["name"].startswith("wait"):
                stall = med[n] > 0 and e["dur"] > 2 * med[n]
                ax.broken_barh([(a, w)], (y - 0.35, 0.55), color="#d62728" if stall else "#cccccc",
                               alpha=0.55 if stall else 0.8)
            elif e["name"].startswith("send"):
                ax.broken_barh([(a, w)], (y - 0.45, 0.1), color="#222222")
            elif e["name"] == "result":
                ax.broken_barh([(a, w)], (y - 0.25, 0.35), color="#9467bd", alpha=0.6)
        if n == "driver":
            feeds = [e["ts"] / 1e3 for e in doc["traceEvents"] if e["ph"] == "i" and e["name"] == "feed"
                     and e["ts"] / 1e3 <= end_ms]
            ax.vlines(feeds, y + 0.05, y + 0.4, color="k", linewidth=0.8)
    ax.set_yticks(range(len(order)))
    ax.set_yticklabels(list(reversed(order)), fontsize=8)
    ax.set_xlim(0, end_ms)
    ax.set_xlabel("ms from the first event (CLOCK_MONOTONIC)")
    od = doc.get("otherData", {})
    ax.set_title(f"{od.get('config', '')}: grid {od.get('grid', '')} x{od.get('replicas', 1)}, "
                 f"{describe_samples(drawn)} (fill, then steady state)", fontsize=10)
    ax.legend(handles=[Patch(color=cmap(0), label="compute (colour = sample)"), Patch(color="#cccccc", label="wait"),
                       Patch(color="#d62728", alpha=0.55, label="wait > 2x median chunk (stall)"),
                       Patch(color="#222222", label="send (outbox thread)"), Patch(color="#9467bd", alpha=0.6, label="driver: result wait"),
                       Patch(color="k", label="driver: feed")],
              loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.6 / len(order)), ncol=6, fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def write_trace(doc: dict, path: str | Path, first: Optional[int] = None) -> dict[str, Any]:
    """Write ``doc`` to ``path`` (JSON) and its PNG timeline beside it (``.png``); returns what was
    written (paths, counts, why the PNG is missing if it is)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    od = doc.get("otherData", {})
    if first is None:
        rows, cols = (int(v) for v in str(od.get("grid", "1x1")).split("x"))
        first = max(8, 2 * (rows + cols) * int(od.get("replicas", 1)))
    out: dict[str, Any] = {"json": str(path), "events": sum(1 for e in doc["traceEvents"] if e["ph"] != "M"),
                           "dropped": sum(od.get("dropped_spans", {}).values()), "png": None}
    png = path.with_suffix(".png") if path.suffix != ".png" else path.with_name(path.name + ".timeline.png")
    try:
        out["png"] = str(plot_timeline(doc, png, first))
    except ImportError as e:
        out["png_missing"] = f"no PNG timeline ({e}); `pip install matplotlib` to get it"
    return out


def write_run(path: str | Path, plan: Any, cells: list[dict], fed_at: dict[int, float],
              done_at: dict[int, float]) -> dict[str, Any]:
    """The driver's end of a traced run: take each cell's ``trace`` out of its stats (the report
    keeps the figures, not the spans), build the trace and write it (:func:`write_trace`)."""
    traced = []
    for c in cells:
        tr = c.pop("trace", None)
        if tr is not None:
            traced.append(dict(c, trace=tr))
    try:
        import ray
        node = ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray
        node = None
    return write_trace(build_trace(plan, traced, fed_at, done_at, node), path)
