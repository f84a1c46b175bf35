"""The scaling curve, measured through the real runtime, beside BIDL's published multi-device numbers.

    python benchmarks/fps_scaling.py [--backend emulated|cpu|cuda|compiled] [--devices 1,2,4,8,12,16,24]
        [--T 48,240] [--model resnetlif50] [--modes time,time2seg,replicas] [--samples N] [--out DIR] [--smoke]
    python benchmarks/fps_scaling.py --replot benchmarks/results/fps_scaling.json

For each device count n and each T: time-only grids (n x 1), time + 2-segment grids (n/2 x 2; the
columns cut where their costs balance, inside a residual block if need be, see bidl_models.cuts;
``--modes ...,time2seg_block`` adds the same grids cut at the best block boundary, BIDL's cut)
and data-parallel replicas (n copies of 1x1). Per configuration: time-step frames/s and samples/s
in steady state (results after the pipeline has filled: the first R + C - 1 results of a grid,
the first n of n replicas, are skipped; the window is the rest), efficiency against n times the
1-device figure measured in the same invocation, the first sample's latency (it enters an empty
grid) next to the grid's compute-bound minimum (the critical path of its cells' chunk times),
per-edge copy time and bytes moved, per-cell busy %.

``emulated`` paces each cell to a device profile (default: the user guide's chip, 28.8 frames/s
on ResNetLif50 2x128x128, segments paced by their FLOP share) while the real 12.55 MB state and
the real activations move through the real channels; ``cpu`` computes for real (small models);
``cuda`` puts every cell on the one GPU (``--gpus-per-cell``, default 1 / the largest count) with its
chunk compiled (``--chunk-compile``, default ``capture``: no code generation per time slice) and
cell-to-cell edges on the ``cuda`` transport; ``compiled`` is its code path on CPU (the cuda
transport with host-memory slots). ``--smoke``: toy sizes (1 and 2 cells, T=4, the small model,
``--backend cuda`` falls back to ``compiled`` without a GPU) to check the path, not to measure.
Writes ``fps_scaling.json``, ``fps_scaling.png`` and ``fps_scaling.txt`` (the device named in each)
into ``--out``;
``--replot results/fps_scaling.json`` redraws the PNG from a results file without measuring.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

HERE = Path(__file__).resolve().parent
PUBLISHED = HERE / "published_bidl_multichip_fps.csv"
MODELS = {
    # name: (config, per-step input shape, overrides)
    "resnetlif50": ("resnetlif50-itout-b8x1-cifar10dvs", (2, 128, 128), []),
    "resnetlif18": ("resnetlif18-itout-b8x1-cifar10dvs", (2, 128, 128), []),
    "clif3fc3dm": ("clif3fc3dm_itout-b16x1-dvsglyphs", (2, 40, 40), ["data=None"]),
}
MODES = ("time", "time2seg", "time2seg_block", "replicas")
DEFAULT_MODES = ("time", "time2seg", "replicas")


def device_name(backend: str) -> str:
    """What computed: the GPU's name for cuda, else this machine's CPU."""
    import torch
    if backend == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    if backend == "emulated":
        return "emulated (paced to the device profile)"
    return f"cpu: {platform.processor() or platform.machine()} x{os.cpu_count()}"


def published() -> dict[str, dict[int, float]]:
    """The published frames/s per device count: keys time_T240, time_T48, time2seg_T48."""
    out: dict[str, dict[int, float]] = {"time_T240": {}, "time_T48": {}, "time2seg_T48": {}}
    with open(PUBLISHED) as f:
        for row in csv.DictReader(f):
            n = int(row["devices"])
            for col, key in (("time_only_T240", "time_T240"), ("time_only_T48", "time_T48"),
                             ("time_and_2_segments_T48", "time2seg_T48")):
                if row[col]:
                    out[key][n] = float(row[col])
    return out


def grid_of(mode: str, n: int) -> Optional[tuple[tuple[int, int], int]]:
    """((rows, cols), replicas) of a mode at n devices, None where the mode does not apply."""
    if mode == "time":
        return (n, 1), 1
    if mode in ("time2seg", "time2seg_block"):
        return ((n // 2, 2), 1) if n >= 2 and n % 2 == 0 else None
    return (1, 1), n


def critical_path_s(chunk_s: dict[tuple[int, int], float], rows: int, cols: int) -> float:
    """Compute-bound latency of one sample through an empty grid: cell (g, s) starts when (g-1, s)
    and (g, s-1) are done, ``F(g, s) = max(F(g-1, s), F(g, s-1)) + c(g, s)``."""
    f: dict[tuple[int, int], float] = {}
    for g in range(rows):
        for s in range(cols):
            f[(g, s)] = max(f.get((g - 1, s), 0.0), f.get((g, s - 1), 0.0)) + chunk_s[(g, s)]
    return f[(rows - 1, cols - 1)]


def default_samples(rows: int, cols: int, replicas: int, T: int) -> int:
    """Enough results for a steady window after the fill: more for short chunks."""
    window = 8 if T <= 64 else 4
    if replicas > 1:
        return replicas * (3 if T <= 64 else 2)
    return rows + cols - 1 + window


def measure(plan, rcfg, pool, n_samples: int, x) -> dict[str, Any]:
    from bidl_runtime.driver.grid import Grid

    grid = Grid(plan, rcfg, pool)
    try:
        report = grid.run(itertools.repeat(x, n_samples), total=n_samples, progress=False)
    finally:
        grid.close()
    skip = plan.rows + plan.cols - 1 if plan.replicas == 1 else plan.replicas
    count, secs = report.window(skip)
    sps = count / secs
    if rcfg.backend == "emulated":
        chunk_s = {(g, s): plan.slices[g] * plan.cell(0, g, s).program.seconds_per_step
                   for g in range(plan.rows) for s in range(plan.cols)}
    else:
        med = {(c["row"], c["col"]): c["step_ms_median"] / 1e3 for c in report.cells if c["replica"] == 0}
        chunk_s = {k: med[k] for k in med}
    minimum = critical_path_s(chunk_s, plan.rows, plan.cols)
    per_step = [chunk_s[(0, s)] / plan.slices[0] for s in range(plan.cols)]
    first = report.latencies_s[min(report.latencies_s)]
    edges = report.edges()
    state_edges = [e for e in edges if e["edge"].endswith(":state")]
    x_edges = [e for e in edges if e["edge"].endswith(":x") and not e["edge"].startswith("driver")]

    def med(vals: list[Optional[float]]) -> Optional[float]:
        vals = sorted(v for v in vals if v is not None)
        return vals[len(vals) // 2] if vals else None

    busy = [c["busy_pct"] for c in report.cells]
    return {
        "frames_per_s": sps * plan.T, "samples_per_s": sps, "window_results": count, "window_s": secs,
        "samples": report.samples, "wall_s": report.wall_s, "startup_s": report.startup_s,
        "segment_step_ms": [1e3 * v for v in per_step],       # the columns' balance (emulated: their pace)
        "latency_first_ms": 1e3 * first, "latency_min_ms": 1e3 * minimum,
        "latency_over_min": first / minimum if minimum > 0 else None,
        "latency_p50_ms": report.latency_ms(0.5), "latency_p99_ms": report.latency_ms(0.99),
        "state_hop_copy_ms_median": med([e["copy_ms"] for e in state_edges]),
        "x_hop_copy_ms_median": med([e["copy_ms"] for e in x_edges]),
        "state_bytes_per_sample": (sum(e["bytes"] for e in state_edges) / report.samples) if state_edges else 0,
        "bytes_moved": sum(e["bytes"] for e in edges),
        "busy_pct_mean": sum(busy) / len(busy), "busy_pct_min": min(busy), "busy_pct_max": max(busy),
        "cells": [{k: c[k] for k in ("cell", "samples", "busy_pct", "step_ms_median")} for c in report.cells],
        "edges": [{k: e[k] for k in ("edge", "transport", "messages", "bytes", "copy_ms", "queue_ms")}
                  for e in edges],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bidl_runtime.cell.template import CellTemplate, template_workers
    template = CellTemplate.for_cells()   # cells fork from it, as bidl-run's do (before Ray is imported)
    import ray
    import torch
    from tqdm import tqdm

    from bidl_models.config import load_config
    from bidl_models.segments import auto_split
    from bidl_runtime.api import GridJob
    from bidl_runtime.cell.pool import CellPool
    from bidl_runtime.cluster.nodes import device_map
    from bidl_runtime.runtime_config import COMPILE_START_TIMEOUT_S, COMPILED_BACKENDS, DeviceProfile, RuntimeConfig

    devices = sorted({int(d) for d in args.devices.split(",")})
    Ts = [int(t) for t in args.T.split(",")]
    modes = [m for m in args.modes.split(",")]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"--modes {bad}: expected some of {list(MODES)}")
    if 1 not in devices:
        devices = [1] + devices  # efficiency needs the 1-device figure of this invocation
    config, shape, over = MODELS[args.model]
    jobs = []
    for T in Ts:
        for n in devices:
            for mode in modes:
                g = grid_of(mode, n)
                if g is None or (n == 1 and mode != "time"):
                    continue
                if g[0][0] > T:
                    continue
                jobs.append((T, n, mode, g))
    need = max(n for _, n, _, _ in jobs)
    from bidl_runtime.cluster.ray_cluster import start_local
    gpu = args.backend == "cuda"
    gpus_per_cell = args.gpus_per_cell or (1.0 / need if gpu else 1.0)
    with template_workers(template):
        start_local(num_cpus=os.cpu_count(), resources={"bidl_device": need}, include_dashboard=False,
                    log_to_driver=False, logging_level="WARNING", **({"num_gpus": 1} if gpu else {}))
    pool = CellPool(num_gpus=gpus_per_cell if gpu else 0.0)
    results: list[dict[str, Any]] = []
    base: dict[int, float] = {}
    t_all = time.perf_counter()
    try:
        cluster = device_map()
        bar = tqdm(jobs, unit="config", desc="fps scaling")
        for T, n, mode, ((rows, cols), reps) in bar:
            bar.set_postfix_str(f"T={T} n={n} {mode} {rows}x{cols}x{reps}")
            cfg = load_config(config, over + [f"model.backbone.timestep={T}"]
                              + ([f"models_compile_inputshape=[[1,{shape[0]},{shape[1]},{shape[2]}]]"]))
            if "lynxi_devices" in cfg:
                del cfg["lynxi_devices"]
            rcfg = RuntimeConfig(backend=args.backend, metrics=False,
                                 profile=DeviceProfile(ref_fps=args.profile_fps), transport=args.transport,
                                 gpus_per_cell=gpus_per_cell, chunk_compile=args.chunk_compile,
                                 start_timeout_s=(max(args.start_timeout, COMPILE_START_TIMEOUT_S)
                                                  if args.backend in COMPILED_BACKENDS else args.start_timeout))
            splits = None
            if mode == "time2seg_block":   # BIDL's cut: the best one at block boundaries, for comparison
                spec = GridJob(cfg, grid=(1, cols), runtime=rcfg).spec
                splits = auto_split(spec.segments[0].backbone, cols, spec.in_shape, granularity="block")
            job = GridJob(cfg, grid=(rows, cols), replicas=reps, runtime=rcfg, artifacts=args.artifacts, splits=splits)
            plan = job.plan(cluster)
            n_samples = args.samples or default_samples(rows, cols, reps, T)
            x = (torch.rand((T,) + shape, generator=torch.Generator().manual_seed(0)) < 0.2).float()
            m = measure(plan, rcfg, pool, n_samples, x)
            if n == 1 and mode == "time":
                base[T] = m["frames_per_s"]
            m.update(T=T, devices=n, mode=mode, grid=[rows, cols], replicas=reps,
                     splits=[list(s) for s in plan.splits], slices=list(plan.slices))
            m["efficiency"] = m["frames_per_s"] / (n * base[T]) if T in base else None
            results.append(m)
            if args.partial_to:   # what is measured so far survives a kill (check.sh's time limits)
                Path(args.partial_to).write_text(json.dumps({"partial": True, "backend": args.backend,
                                                             "device": device_name(args.backend),
                                                             "results": results}, indent=1))
    finally:
        pool.shutdown()
        ray.shutdown()
    return {
        "benchmark": "fps_scaling", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "backend": args.backend, "device": device_name(args.backend), "transport": args.transport,
        "chunk_compile": args.chunk_compile if args.backend in ("cuda", "compiled") else None,
        "model": args.model, "config": config, "input_shape": list(shape),
        "profile": {"ref_fps": args.profile_fps, "ref_model": "ResNetLif50 2x128x128",
                    "pacing": "segment seconds/step = segment FLOPs / ResNetLif50 FLOPs / ref_fps"},
        "window": "results after the first R+C-1 (grid) or the first n (replicas) are skipped",
        "baseline_frames_per_s": {str(T): v for T, v in base.items()},
        "wall_s": time.perf_counter() - t_all, "results": results, "published": {
            k: {str(n): v for n, v in d.items()} for k, d in published().items()},
        "targets": targets(results, published()),
    }


def targets(results: list[dict[str, Any]], pub: dict[str, dict[int, float]]) -> list[dict[str, Any]]:
    """The published time + 2-segment figures (12x2 at T=48: 681.1 frames/s) as targets for our
    2-column grids, each beside the time-only grid of the same run and device count: met when at
    least the published figure and at least 99% of the time-only one."""
    out = []
    for r in results:
        want = pub.get(f"time2seg_T{r['T']}", {}).get(r["devices"])
        same = [q for q in results if q["mode"] == "time" and q["T"] == r["T"] and q["devices"] == r["devices"]]
        if r["mode"] != "time2seg" or want is None or not same:
            continue
        ratio = r["frames_per_s"] / same[0]["frames_per_s"]
        out.append({"T": r["T"], "devices": r["devices"], "grid": "x".join(map(str, r["grid"])),
                    "frames_per_s": r["frames_per_s"], "time_only_grid": "x".join(map(str, same[0]["grid"])),
                    "time_only_frames_per_s": same[0]["frames_per_s"], "of_time_only": ratio,
                    "target_frames_per_s": want, "met": r["frames_per_s"] >= want and ratio >= 0.99})
    return out


def table(doc: dict[str, Any]) -> str:
    pub = {k: {int(n): v for n, v in d.items()} for k, d in doc["published"].items()}
    width = max([9] + [len(r["mode"]) for r in doc["results"]])
    lines = [f"fps_scaling {doc['date']} on {doc['machine']['host']} ({doc['machine']['cpus']} cpus), "
             f"device {doc.get('device')}, backend {doc['backend']}, model {doc['model']} {doc['input_shape']}, "
             f"device profile {doc['profile']['ref_fps']} frames/s on {doc['profile']['ref_model']}",
             f"{'T':>4} {'dev':>4} {'mode':<{width}} {'grid':>9} {'frames/s':>9} {'eff':>6} {'published':>10} "
             f"{'pub eff':>8} {'lat ms':>8} {'min ms':>8} {'lat/min':>8} {'state hop ms':>12} {'busy %':>7}"]
    lines.append("-" * len(lines[-1]))
    for r in doc["results"]:
        key = f"{r['mode']}_T{r['T']}"
        p = pub.get(key, {}).get(r["devices"]) if r["mode"] != "replicas" else None
        p1 = pub.get(key, {}).get(1) or pub.get(f"time_T{r['T']}", {}).get(1)
        peff = p / (r["devices"] * p1) if p and p1 else None
        grid = f"{r['grid'][0]}x{r['grid'][1]}" + (f"x{r['replicas']}" if r["replicas"] > 1 else "")
        hop = r["state_hop_copy_ms_median"]
        lines.append(
            f"{r['T']:>4} {r['devices']:>4} {r['mode']:<{width}} {grid:>9} {r['frames_per_s']:>9.1f} "
            f"{(r['efficiency'] or 0) * 100:>5.1f}% {(f'{p:.1f}' if p else '-'):>10} "
            f"{(f'{100 * peff:.1f}%' if peff else '-'):>8} {r['latency_first_ms']:>8.0f} "
            f"{r['latency_min_ms']:>8.0f} {r['latency_over_min']:>8.3f} "
            f"{(f'{hop:.2f}' if hop is not None else '-'):>12} {r['busy_pct_mean']:>7.1f}")
    for t in doc.get("targets", []):
        lines.append(f"T={t['T']}, {t['devices']} devices: {t['grid']} {t['frames_per_s']:.1f} frames/s = "
                     f"{100 * t['of_time_only']:.1f}% of {t['time_only_grid']} ({t['time_only_frames_per_s']:.1f}) "
                     f"in this run; target >= {t['target_frames_per_s']} and >= 99%: "
                     f"{'met' if t['met'] else 'NOT met'}")
    lines.append(f"total wall {doc['wall_s']:.0f} s")
    return "\n".join(lines)


MODE_STYLE = {"time": ("o", "C0", "time slices (n x 1)"), "time2seg": ("s", "C1", "time x 2 segments (n/2 x 2)"),
              "time2seg_block": ("d", "C3", "time x 2 segments, block cut (n/2 x 2)"),
              "replicas": ("^", "C2", "replicas (n x 1x1)")}


def plot_series(doc: dict[str, Any], T: int) -> dict[str, Any]:
    """What the plot draws for one T, from a results document (no drawing):

    ``ours[mode]`` and ``published[mode]``: ``(devices, frames_per_s, efficiency)`` lists, the published
    curve kept only over the device range measured here (its efficiency against the published 1-device
    figure); ``ideal``: ``(devices, n x our 1-device frames/s)`` over the measured device counts;
    ``devices``: the measured device counts."""
    rs = [r for r in doc["results"] if r["T"] == T]
    ns = sorted({r["devices"] for r in rs})
    base = doc["baseline_frames_per_s"].get(str(T))
    ours = {}
    for mode in MODE_STYLE:
        pts = sorted((r["devices"], r["frames_per_s"], r["efficiency"]) for r in rs if r["mode"] == mode)
        if pts:
            ours[mode] = tuple(map(list, zip(*pts)))
    pub = {k: {int(n): v for n, v in d.items()} for k, d in doc.get("published", {}).items()}
    pub1 = pub.get(f"time_T{T}", {}).get(1)
    published = {}
    for mode in ("time", "time2seg"):
        pts = sorted((n, v) for n, v in pub.get(f"{mode}_T{T}", {}).items() if ns and ns[0] <= n <= ns[-1])
        if pts:
            published[mode] = ([n for n, _ in pts], [v for _, v in pts],
                               [v / (n * pub1) if pub1 else None for n, v in pts])
    ideal = (ns, [n * base for n in ns]) if base else ([], [])
    return {"devices": ns, "ours": ours, "published": published, "ideal": ideal}


def plot(doc: dict[str, Any], path: Path) -> None:
    """Per T: frames/s against devices on log2 axes (the ideal n x 1-device line straight and on top),
    and below it the efficiency (frames/s over n x the 1-device figure), published BIDL curves dotted
    over the measured device range only."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import (FixedLocator, LogLocator, MaxNLocator, NullLocator, PercentFormatter,
                                   ScalarFormatter)
    Ts = sorted({r["T"] for r in doc["results"]})
    fig, axes = plt.subplots(2, len(Ts), figsize=(6.5 * len(Ts), 7.5), squeeze=False, sharex="col",
                             gridspec_kw={"height_ratios": [2.2, 1]})
    for col, T in enumerate(Ts):
        top, bottom = axes[0][col], axes[1][col]
        ser = plot_series(doc, T)
        ns = ser["devices"]
        effs = [1.0]
        for mode, (dev, fps, eff) in ser["ours"].items():
            marker, color, label = MODE_STYLE[mode]
            top.plot(dev, fps, marker + "-", color=color, ms=5, lw=1.5, label=f"ours: {label}")
            bottom.plot(dev, [100 * e for e in eff], marker + "-", color=color, ms=5, lw=1.5)
            effs += eff
        for mode, (dev, fps, eff) in ser["published"].items():
            marker, color, label = MODE_STYLE[mode]
            top.plot(dev, fps, marker + ":", color=color, mfc="none", alpha=0.8, label=f"published BIDL: {label}")
            if all(e is not None for e in eff):
                bottom.plot(dev, [100 * e for e in eff], marker + ":", color=color, mfc="none", alpha=0.8)
                effs += eff
        if ser["ideal"][0]:
            top.plot(*ser["ideal"], "--", color="black", lw=2.2, alpha=0.75, zorder=10,
                     label="ideal: n x our 1 device")
        bottom.axhline(100, ls="--", color="black", lw=2.2, alpha=0.75, zorder=10)
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_locator(FixedLocator(ns))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_locator(NullLocator())
            ax.grid(alpha=0.3)
        top.set_yscale("log", base=2)
        top.yaxis.set_major_locator(LogLocator(base=2, subs=(1.0, 1.5)))
        top.yaxis.set_major_formatter(ScalarFormatter())
        top.yaxis.set_minor_locator(NullLocator())
        top.set_ylabel("time-step frames/s")
        top.set_title(f"T={T}, {doc['model']} ({doc['backend']}, {doc.get('device') or str(doc['machine']['cpus']) + ' cpus'})",
                      fontsize=9)
        top.legend(fontsize=7.5, loc="upper left")
        bottom.set_ylim(max(0.0, 100 * min(effs) - 5), 100 * max(effs) + 3)
        bottom.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 5, 10]))
        bottom.yaxis.set_major_formatter(PercentFormatter(decimals=0))
        bottom.set_ylabel("efficiency vs n x 1 device")
        bottom.set_xlabel("devices (log2)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


RESULT_KEYS = ("results", "baseline_frames_per_s", "model", "backend", "machine")


def replot(json_path: Path) -> int:
    """Redraw the PNG beside a results JSON (``x.json`` -> ``x.png``), without measuring again.
    Exit code 2 with one ``error:`` line for a missing, unreadable or foreign file."""
    json_path = Path(json_path)
    try:
        doc = json.loads(json_path.read_text())
    except FileNotFoundError:
        print(f"error: --replot {str(json_path)!r}: no such file", file=sys.stderr)
        return 2
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        print(f"error: --replot {str(json_path)!r}: not JSON ({e})", file=sys.stderr)
        return 2
    missing = [k for k in RESULT_KEYS if not isinstance(doc, dict) or k not in doc]
    if missing:
        print(f"error: --replot {str(json_path)!r}: not an fps_scaling results file (missing "
              f"{', '.join(missing)})", file=sys.stderr)
        return 2
    png = json_path.with_suffix(".png")
    plot(doc, png)
    print(f"wrote {png}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/fps_scaling.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="emulated", choices=["emulated", "cpu", "cuda", "compiled"])
    ap.add_argument("--transport", default="auto", choices=["auto", "shm", "tcp", "cuda"])
    ap.add_argument("--chunk-compile", default="capture", help="cuda/compiled: bidl_runtime.cell.compiled.METHODS")
    ap.add_argument("--gpus-per-cell", type=float, default=None, help="cuda: default 1 / the largest cell count")
    ap.add_argument("--smoke", action="store_true", help="toy sizes; cuda falls back to compiled without a GPU")
    ap.add_argument("--partial-to", default=None, help="rewrite this JSON file after every configuration")
    ap.add_argument("--devices", default="1,2,4,8,12,16,24")
    ap.add_argument("--T", default="48,240")
    ap.add_argument("--model", default=None, choices=sorted(MODELS),
                    help="default: resnetlif50 (emulated), clif3fc3dm (cpu)")
    ap.add_argument("--modes", default=",".join(DEFAULT_MODES),
                    help=f"some of {','.join(MODES)}; time2seg cuts the 2 columns where they balance (inside a "
                         "residual block if need be), time2seg_block at the best block boundary (BIDL's cut)")
    ap.add_argument("--samples", type=int, default=None, help="samples per configuration (default: by grid)")
    ap.add_argument("--profile-fps", type=float, default=28.8, help="emulated device: frames/s on ResNetLif50")
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--start-timeout", type=float, default=600.0,
                    help="seconds a grid's cells may take to start (24 cells on a busy 2-core machine: minutes)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--replot", metavar="JSON", default=None,
                    help="only redraw the PNG beside this results JSON (e.g. benchmarks/results/fps_scaling.json)")
    args = ap.parse_args(argv)
    if args.replot:
        return replot(Path(args.replot))
    if args.backend == "cuda":
        import torch
        if not torch.cuda.is_available():
            if not args.smoke:
                print("error: --backend cuda: no CUDA device is visible (use --smoke for the CPU stand-in)",
                      file=sys.stderr)
                return 2
            print("note: no GPU: --smoke runs the cuda code path on CPU (--backend compiled, --transport cuda)")
            args.backend, args.transport = "compiled", "cuda"
    if args.smoke:
        args.devices, args.T, args.model = "1,2", "4", args.model or "clif3fc3dm"
        args.samples = args.samples or 6
        if args.backend == "compiled" and args.chunk_compile == "capture":
            args.chunk_compile = "eager"
    args.model = args.model or ("resnetlif50" if args.backend in ("emulated", "cuda") else "clif3fc3dm")
    try:
        doc = run(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = table(doc)
    print(text)
    (out / "fps_scaling.json").write_text(json.dumps(doc, indent=1))
    (out / "fps_scaling.txt").write_text(text + "\n")
    plot(doc, out / "fps_scaling.png")
    print(f"wrote {out / 'fps_scaling.json'}, {out / 'fps_scaling.txt'}, {out / 'fps_scaling.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
