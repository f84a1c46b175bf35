"""What the main command's printed throughput is, verified or not, and on which backend, measured together.

    python benchmarks/throughput.py [--runs 3] [--samples 200] [--grid 3x2] [--artifacts DIR] [--out benchmarks/results]

Each run is the real command (``python -m bidl_runtime.run --grid 3x2 --samples 200``) in a fresh
process; the modes take turns in every round, so they see the same machine state: the default
(verified: the reference computes after the grid has streamed), the default with ``--verify-beside``
(the reference computes beside the grid at idle priority), the default with ``--no-verify``,
``--backend cpu --no-verify`` and ``--backend cpu`` (verified). One unmeasured warm-up run per backend first builds or checks the artifacts (and the
compiled programs). Printed: the median frames/s of each mode with its spread, the ratios the issue
asks for (verified over unverified: at least 0.95; the default verified over ``cpu --no-verify``: at
least 1.5), what verification cost (its processes' CPU seconds, how long after the last result it
finished), the command's wall time to its exit and the load averages; written: ``throughput.json`` (every run) and ``throughput.txt``.
The machine is shared: load averages are recorded before and after every run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODES: dict[str, list[str]] = {
    "default": [],
    "default --verify-beside": ["--verify-beside"],
    "default --no-verify": ["--no-verify"],
    "cpu --no-verify": ["--backend", "cpu", "--no-verify"],
    "cpu": ["--backend", "cpu"],
}


def load_now() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def run_once(grid: str, samples: int, artifacts: str, extra: list[str], env: dict) -> dict[str, Any]:
    """One run of the command; the figures of its JSON report."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        load = load_now()
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "bidl_runtime.run", "--grid", grid, "--samples", str(samples),
                            "--artifacts", artifacts, "--json", str(out), *extra], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - t
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(extra) or 'default'} failed ({r.returncode}): {r.stderr[-2000:]}")
        rep = json.loads(out.read_text())
    return {"frames_per_s": round(rep["frames_per_s"], 2), "backend": rep["backend"], "verify": rep["verify"],
            "verify_cost": rep.get("verify_cost"), "startup_s": rep["startup_s"], "wall_s": round(rep["wall_s"], 3),
            "command_wall_s": round(wall, 3), "load_before": load, "load_after": load_now()}


def spread(xs: list[Optional[float]]) -> dict[str, Optional[float]]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"median": None, "min": None, "max": None}
    return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3)}


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    runs = doc["runs"]
    out: dict[str, Any] = {}
    for mode in MODES:
        rs = [r for r in runs if r["mode"] == mode]
        cost = [r["verify_cost"] for r in rs if r.get("verify_cost")]
        out[mode] = {"frames_per_s": spread([r["frames_per_s"] for r in rs]),
                     "startup_s": spread([r["startup_s"] for r in rs]),
                     "command_wall_s": spread([r["command_wall_s"] for r in rs]),
                     "verify_cpu_s": spread([c["cpu_s"] for c in cost]),
                     "verify_after_streaming_s": spread([c["after_streaming_s"] for c in cost]),
                     "verified": [f"{r['verify']['equal']}/{r['verify']['compared']}" for r in rs if r["verify"]]}
    # ratios of runs of the same round (same machine state), then their median
    rounds = sorted({r["round"] for r in runs})

    def ratio(a: str, b: str) -> dict[str, Optional[float]]:
        vals = []
        for k in rounds:
            ra = [r["frames_per_s"] for r in runs if r["round"] == k and r["mode"] == a]
            rb = [r["frames_per_s"] for r in runs if r["round"] == k and r["mode"] == b]
            if ra and rb and rb[0]:
                vals.append(ra[0] / rb[0])
        return spread(vals)
    out["ratios"] = {"default verified / default --no-verify (target >= 0.95)": ratio("default", "default --no-verify"),
                     "default verified / cpu --no-verify (target >= 1.5)": ratio("default", "cpu --no-verify"),
                     "default --verify-beside / default --no-verify": ratio("default --verify-beside", "default --no-verify"),
                     "cpu verified / cpu --no-verify": ratio("cpu", "cpu --no-verify")}
    return out


def table(doc: dict[str, Any]) -> str:
    s = doc["summary"]

    def med(d: dict, fmt: str = "{:.1f}") -> str:
        return "-" if d.get("median") is None else (fmt.format(d["median"]) + " [" + fmt.format(d["min"]) + ".."
                                                   + fmt.format(d["max"]) + "]")
    lines = [f"`python -m bidl_runtime.run --grid {doc['grid']} --samples {doc['samples']}` on {doc['machine']['host']} "
             f"({doc['machine']['cpus']} cpus), {doc['rounds']} rounds, modes interleaved, median [min..max]; "
             f"load average {doc['load_before']} before, {doc['load_after']} after (a shared machine: noisy)", "",
             f"{'mode':<24}{'frames/s':>26}{'start-up s':>22}{'verify CPU s':>22}{'verify tail s':>22}"
             f"{'command wall s':>22}  verified"]
    for mode in MODES:
        m = s[mode]
        lines.append(f"{mode:<24}{med(m['frames_per_s']):>26}{med(m['startup_s']):>22}{med(m['verify_cpu_s']):>22}"
                     f"{med(m['verify_after_streaming_s']):>22}{med(m['command_wall_s']):>22}  "
                     f"{', '.join(sorted(set(m['verified']))) or '-'}")
    lines.append("")
    for k, v in s["ratios"].items():
        lines.append(f"{k:<58}{med(v, '{:.2f}'):>26}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="benchmarks/throughput.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="rounds (each runs every mode once)")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--grid", default="3x2")
    ap.add_argument("--artifacts", default=None, help="artifact cache (default: a fresh temporary one, warmed first)")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    if args.runs < 1:
        print("error: --runs must be >= 1", file=sys.stderr)
        return 2
    from bidl_runtime.cluster.ray_cluster import secure_env
    secure_env()   # token auth for every run (one token for this benchmark, in the children's environment)
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    doc: dict[str, Any] = {"benchmark": "throughput", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "machine": {"host": platform.node(), "cpus": os.cpu_count(),
                                       "python": platform.python_version()},
                           "grid": args.grid, "samples": args.samples, "rounds": args.runs, "modes": MODES,
                           "load_before": load_now(), "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        arts = args.artifacts or str(Path(tmp) / "artifacts")
        for extra in (["--no-verify"], ["--backend", "cpu", "--no-verify"]):
            print(f"warm-up: {' '.join(extra)} (builds or checks the artifacts in {arts}) ...", flush=True)
            run_once(args.grid, 4, arts, extra, env)
        for k in range(args.runs):
            for mode, extra in MODES.items():
                print(f"round {k + 1}/{args.runs}: {mode} ...", flush=True)
                doc["runs"].append(dict(run_once(args.grid, args.samples, arts, extra, env), mode=mode, round=k))
    doc["load_after"] = load_now()
    doc["summary"] = summarize(doc)
    text = table(doc)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(doc, indent=1))
    (out / "throughput.txt").write_text(text + "\n")
    print(f"wrote {out / 'throughput.json'}, {out / 'throughput.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
