"""Where the default run's start-up goes: ``python -m bidl_runtime.run --grid 3x2``, phase by phase.

    python benchmarks/startup.py [--runs 3] [--grid 3x2] [--baseline-ref c1baf1a] [--out benchmarks/results]

Each run is the real command in a fresh process (a fresh embedded Ray), after one unmeasured
warm-up run that compiles or checks the artifacts. The command's JSON report carries the phases
(``imports``, ``model``, ``ray_start``, ``artifacts``, ``place``, ``cells``, ``wire``: seconds, with
their start offsets from the process start, some overlapping) and, per cell, when its process
started, how long its imports took and how long its program took to load. Printed: the medians
over the runs; written: ``startup.json`` with every run.

``--baseline-ref REF`` also measures the same command from git revision REF (extracted with
``git archive`` into a temporary directory, its own artifact cache) in the same invocation, runs
interleaved, so the before/after ratio comes from one machine state. A revision with this tree's
report (``bidl_runtime/launch.py``) is measured as this tree is, phase by phase; older revisions
print only their grid start-up, and for them a probe times the same phases through their library
API (``make_plan``, ``ray.init``, ``prepare``, ``Grid.start``), plus one cell process's imports and
program load.
The machine is shared: run-to-run spread is reported (min/max) next to the median, and CPU seconds
(the driver's, and every cell process's up to its program being loaded), which other load on the
machine disturbs far less than wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PHASES = ("imports", "model", "ray_start", "artifacts", "place", "cells", "wire")

# Times the old (pre-stage-chain) start-up phases through that tree's own API.
BASELINE_PROBE = r'''
import json, os, sys, time
t0 = float(sys.argv[1]); grid = tuple(int(v) for v in sys.argv[2].split("x")); arts = sys.argv[3]
out = {}
def mark(k, a): out[k + "_s"] = round(time.time() - a, 3); out[k + "_at"] = round(a - t0, 3)
a = time.time(); import torch, ray; from bidl_models.config import load_config
from bidl_runtime.api import prepare; from bidl_runtime.driver import Grid, RuntimeConfig, node_devices
from bidl_runtime.plan import make_plan; from bidl_runtime.defaults import default_checkpoint, default_config
from bidl_runtime.session import default_threads
out["imports_s"] = round(time.time() - t0, 3)
a = time.time(); cfg = load_config(default_config()); plan = make_plan(cfg, grid); mark("model", a)
a = time.time()
ray.init(num_cpus=os.cpu_count(), resources={"bidl_device": max(c.device for c in plan.cells) + 1},
         include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False, logging_level="WARNING")
mark("ray_start", a)
a = time.time(); plan = make_plan(cfg, grid, device_nodes=node_devices())
rcfg = RuntimeConfig(threads_per_cell=default_threads(len(plan.cells)))
prepared = prepare(cfg, plan, rcfg, default_checkpoint(cfg.name), arts, verbose=False); mark("artifacts", a)
a = time.time(); g = Grid(plan, prepared[0], rcfg); g.start(); mark("cells_and_wire", a)
out["total_s"] = round(time.time() - t0, 3)
out["driver_cpu_s"] = round(time.process_time(), 3)
pids = [s["pid"] for s in ray.get([x.stats.remote() for x in g.actors.values()])]
def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
out["cells_cpu_sum_s"] = round(sum(cpu(p) for p in pids), 3)
g.stop(); g.close()
@ray.remote(num_cpus=0)
def one_cell(path):
    import time; t = time.time(); import torch; t1 = time.time()
    from compile import load_artifact; t2 = time.time(); load_artifact(path); t3 = time.time()
    return {"torch_import_s": t1 - t, "other_imports_s": t2 - t1, "program_load_s": t3 - t2}
src = prepared[0][(1, plan.slices[0])].source.path
out["one_cell"] = {k: round(v, 3) for k, v in ray.get(one_cell.remote(src)).items()}
ray.shutdown()
print("PROBE " + json.dumps(out))
'''


def load_now() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


RAY_START_TIMEOUT = "timed out during startup"   # Ray's node start on an overloaded machine (its agents too slow)


def run_current(root: Path, grid: str, artifacts: Path, samples: int, env: dict,
                extra: tuple[str, ...] = (), tries: int = 3) -> dict[str, Any]:
    """One run of this tree's command; its report's start-up phases and the command's wall time. A
    run whose Ray node timed out while starting (a shared machine under load) is run again, counted."""
    for k in range(tries):
        try:
            return dict(_run_current(root, grid, artifacts, samples, env, extra), retries=k)
        except RuntimeError as e:
            if RAY_START_TIMEOUT not in str(e) or k == tries - 1:
                raise
            print(f"  (Ray's node timed out while starting, machine load {load_now()}: again)", flush=True)
    raise AssertionError("unreachable")


def _run_current(root: Path, grid: str, artifacts: Path, samples: int, env: dict,
                 extra: tuple[str, ...] = ()) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "bidl_runtime.run", "--grid", grid, "--samples", str(samples),
                            "--artifacts", str(artifacts), "--json", str(out), *extra], cwd=root, env=env,
                           capture_output=True, text=True, timeout=900)
        wall = time.perf_counter() - t
        if r.returncode != 0:
            raise RuntimeError(f"the command failed ({r.returncode}): {r.stderr[-2000:]}")
        rep = json.loads(out.read_text())
    s = rep["startup"]
    return {"command_wall_s": round(wall, 3), "startup": s, "grid_s": s.get("grid_s"), "total_s": s.get("total_s"),
            "cells_cpu_sum_s": s.get("cells_cpu_sum_s"), "driver_cpu_s": s.get("driver_cpu_s"),
            "frames_per_s": rep["frames_per_s"], "verify": rep["verify"]}


def run_baseline(root: Path, grid: str, artifacts: Path, samples: int, env: dict) -> dict[str, Any]:
    """One run of an older tree's command (its printed grid start-up) and one run of the probe."""
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "bidl_runtime.run", "--grid", grid, "--samples", str(samples),
                        "--artifacts", str(artifacts)], cwd=root, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"the baseline command failed ({r.returncode}): {r.stderr[-2000:]}")
    m = re.search(r"grid start-up ([0-9.]+) s", r.stdout)
    fps = re.search(r"throughput: ([0-9.]+) time-step frames/s", r.stdout)
    probe = subprocess.run([sys.executable, "-c", BASELINE_PROBE, str(time.time()), grid, str(artifacts)], cwd=root,
                           env=env, capture_output=True, text=True, timeout=900)
    line = next((ln for ln in probe.stdout.splitlines() if ln.startswith("PROBE ")), None)
    pr = json.loads(line[6:]) if line else {"error": probe.stderr[-1000:]}
    return {"command_wall_s": round(wall, 3), "grid_s": float(m.group(1)) if m else None, "probe": pr,
            "frames_per_s": float(fps.group(1)) if fps else None,
            "total_s": pr.get("total_s"), "cells_cpu_sum_s": pr.get("cells_cpu_sum_s"),
            "driver_cpu_s": pr.get("driver_cpu_s")}


def spread(xs: list[Optional[float]]) -> dict[str, Optional[float]]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"median": None, "min": None, "max": None}
    return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3)}


def summarize(runs: list[dict]) -> dict[str, Any]:
    out = {"command_wall_s": spread([r["command_wall_s"] for r in runs]),
           "total_s": spread([r.get("total_s") for r in runs]), "grid_s": spread([r.get("grid_s") for r in runs]),
           "cells_cpu_sum_s": spread([r.get("cells_cpu_sum_s") for r in runs]),
           "driver_cpu_s": spread([r.get("driver_cpu_s") for r in runs]),
           "frames_per_s": spread([r.get("frames_per_s") for r in runs])}
    if runs and "startup" in runs[0]:
        out["phases_s"] = {p: spread([r["startup"].get(f"{p}_s") for r in runs]) for p in PHASES}
        out["phases_at"] = {p: spread([r["startup"].get(f"{p}_at") for r in runs]) for p in PHASES}
        out["per_cell"] = {k: spread([r["startup"].get("cells", {}).get(k, {}).get("max") for r in runs])
                           for k in ("imports_s", "load_s", "process_start_at", "ready_at")}
    if runs and "probe" in runs[0]:
        keys = [k for k in runs[0]["probe"] if k.endswith("_s")]
        out["probe_s"] = {k: spread([r["probe"].get(k) for r in runs]) for k in keys}
        out["one_cell_s"] = {k: spread([r["probe"].get("one_cell", {}).get(k) for r in runs])
                             for k in runs[0]["probe"].get("one_cell", {})}
    return out


def table(doc: dict[str, Any]) -> str:
    def med(d: dict) -> str:
        return "-" if d.get("median") is None else f"{d['median']:.2f} [{d['min']:.2f}..{d['max']:.2f}]"
    cur = doc["current"]["summary"]
    lines = [f"start-up of `python -m bidl_runtime.run --grid {doc['grid']}` on {doc['machine']['host']} "
             f"({doc['machine']['cpus']} cpus), {doc['runs']} runs, median [min..max] seconds; "
             f"load average {doc['load_before']} before, {doc['load_after']} after (a shared machine: noisy)",
             "", f"{'phase (this tree)':<28}{'seconds':>22}{'starts at':>22}"]
    for p in PHASES:
        lines.append(f"{p:<28}{med(cur['phases_s'][p]):>22}{med(cur['phases_at'][p]):>22}")
    lines += [f"{'per cell (max): imports':<28}{med(cur['per_cell']['imports_s']):>22}",
              f"{'per cell (max): program load':<28}{med(cur['per_cell']['load_s']):>22}",
              f"{'grid start-up (cells+wire)':<28}{med(cur['grid_s']):>22}",
              f"{'start-up from process start':<28}{med(cur['total_s']):>22}",
              f"{'CPU s: cells (sum)':<28}{med(cur['cells_cpu_sum_s']):>22}",
              f"{'CPU s: driver':<28}{med(cur['driver_cpu_s']):>22}",
              f"{'whole command':<28}{med(cur['command_wall_s']):>22}",
              f"{'streaming frames/s':<28}{med(cur['frames_per_s']):>22}"]
    if "baseline" in doc and "phases_s" in doc["baseline"]["summary"]:
        base = doc["baseline"]["summary"]
        lines += ["", f"{'phase (' + doc['baseline']['ref'] + ')':<28}{'seconds':>22}{'starts at':>22}"]
        for p in PHASES:
            lines.append(f"{p:<28}{med(base['phases_s'][p]):>22}{med(base['phases_at'][p]):>22}")
        lines += [f"{'per cell (max): imports':<28}{med(base['per_cell']['imports_s']):>22}",
                  f"{'per cell (max): program load':<28}{med(base['per_cell']['load_s']):>22}",
                  f"{'start-up from process start':<28}{med(base['total_s']):>22}",
                  f"{'CPU s: cells (sum)':<28}{med(base['cells_cpu_sum_s']):>22}",
                  f"{'CPU s: driver':<28}{med(base['driver_cpu_s']):>22}",
                  f"{'whole command':<28}{med(base['command_wall_s']):>22}",
                  f"{'streaming frames/s':<28}{med(base['frames_per_s']):>22}", ""]
        lines += ratio_lines(base, cur, (("start-up from process start", "total_s"),
                                         ("grid start-up (cells+wire)", "grid_s")))
    elif "baseline" in doc:
        base = doc["baseline"]["summary"]
        lines += ["", f"{'baseline ' + doc['baseline']['ref']:<28}{'seconds':>22}"]
        for k, v in base.get("probe_s", {}).items():
            lines.append(f"{'probe: ' + k[:-2]:<28}{med(v):>22}")
        for k, v in base.get("one_cell_s", {}).items():
            lines.append(f"{'one cell: ' + k[:-2]:<28}{med(v):>22}")
        lines += [f"{'grid start-up (printed)':<28}{med(base['grid_s']):>22}",
                  f"{'whole command':<28}{med(base['command_wall_s']):>22}",
                  f"{'streaming frames/s':<28}{med(base['frames_per_s']):>22}", ""]
        lines += ratio_lines(base, cur, (("grid start-up (printed)", "grid_s"),
                                         ("start-up from process start", "total_s")))
    return "\n".join(lines)


def ratio_lines(base: dict, cur: dict, first: tuple) -> list[str]:
    """Before -> after lines (medians) for ``first`` then CPU, whole command and streaming figures."""
    out = []
    for label, key in (*first, ("CPU s: cells (sum)", "cells_cpu_sum_s"), ("CPU s: driver", "driver_cpu_s"),
                       ("whole command", "command_wall_s")):
        b, c = base[key]["median"], cur[key]["median"]
        if b and c:
            out.append(f"{label:<28} {b:>7.1f} -> {c:>6.1f} s  ({b / c:.1f}x)")
    b, c = base["frames_per_s"]["median"], cur["frames_per_s"]["median"]
    if b and c:
        out.append(f"{'streaming frames/s':<28} {b:>7.1f} -> {c:>6.1f}    ({c / b:.2f}x)")
    return out


def extract(ref: str, dest: Path) -> Path:
    """``git archive REF`` of this repository into ``dest``."""
    data = subprocess.run(["git", "archive", ref], cwd=REPO, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/startup.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--grid", default="3x2")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--baseline-ref", default=None, help="also measure this git revision (e.g. c1baf1a)")
    ap.add_argument("--artifacts", default=None, help="artifact cache (default: a fresh temporary one, warmed first)")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--name", default="startup", help="file names of the results (default %(default)s)")
    ap.add_argument("--extra", default="", help="more flags for this tree's command, e.g. '--backend cpu'")
    args = ap.parse_args(argv)
    extra = tuple(args.extra.split())
    if args.runs < 1:
        print("error: --runs must be >= 1", file=sys.stderr)
        return 2
    from bidl_runtime.cluster.ray_cluster import secure_env
    secure_env()   # token auth for every run (one token for this benchmark, in the children's environment)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    doc: dict[str, Any] = {"benchmark": "startup", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "machine": {"host": platform.node(), "cpus": os.cpu_count(),
                                       "python": platform.python_version()},
                           "grid": args.grid, "runs": args.runs, "samples": args.samples, "extra": list(extra),
                           "load_before": load_now()}
    with tempfile.TemporaryDirectory() as tmp:
        arts = Path(args.artifacts) if args.artifacts else Path(tmp) / "artifacts"
        cur_env = dict(env, PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
        print(f"warm-up run (compiles or checks the artifacts in {arts}) ...", flush=True)
        run_current(REPO, args.grid, arts, 4, cur_env, extra)
        base_root = None
        if args.baseline_ref:
            base_root = extract(args.baseline_ref, Path(tmp) / "baseline")
            # the older tree's embedded cluster: token auth (the env's token) and loopback only (Ray's single-machine
            # switch; that tree has no cluster.start_local)
            base_env = dict(env, PYTHONPATH=str(base_root), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
            same_report = (base_root / "bidl_runtime" / "launch.py").is_file()
            run_base = (lambda n: run_current(base_root, args.grid, Path(tmp) / "baseline-artifacts", n, base_env)
                        if same_report else
                        run_baseline(base_root, args.grid, Path(tmp) / "baseline-artifacts", n, base_env))
            print(f"warm-up run of {args.baseline_ref} ...", flush=True)
            run_base(4)
        current, baseline = [], []
        for i in range(args.runs):   # interleaved: both trees see the same machine state
            print(f"run {i + 1}/{args.runs} ...", flush=True)
            current.append(run_current(REPO, args.grid, arts, args.samples, cur_env, extra))
            if base_root is not None:
                baseline.append(run_base(args.samples))
    doc["load_after"] = load_now()
    doc["current"] = {"runs": current, "summary": summarize(current)}
    if args.baseline_ref:
        doc["baseline"] = {"ref": args.baseline_ref, "runs": baseline, "summary": summarize(baseline)}
    text = table(doc)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(doc, indent=1))
    (out / f"{args.name}.txt").write_text(text + "\n")
    print(f"wrote {out / (args.name + '.json')}, {out / (args.name + '.txt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
