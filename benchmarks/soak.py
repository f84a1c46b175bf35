"""Soak: a long stream on the default model, the driver's and every cell's memory and the throughput over time.

    python benchmarks/soak.py [--samples 10000] [--grid 3x2] [--no-verify] [--every 2] [--out benchmarks/results]

The default model (default config, shipped weights, synthetic seeded event frames) streams
``--samples`` samples through a ``--grid`` grid on an embedded Ray, verifying every output against the
single-device reference as it arrives (the default; ``--no-verify`` leaves it out). Every ``--every``
seconds a thread records the resident set size (``VmRSS``) of the driver and of each cell process
(by pid, from /proc) and the results collected so far. Issue 12's bound: after the first 500 samples,
no process grows more than 5% over the rest of the stream. Printed: per process its RSS at 500
samples, at the end, the peak and the growth; the throughput in the first and last tenth of the run.
Written: ``soak.json`` (every sample point) and ``soak.png`` (RSS and samples/s over time).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WARMUP = 500   # samples after which memory must be flat


def rss_mib(pid: int) -> float | None:
    """Resident set size of process ``pid`` in MiB (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Sampler:
    """Records ``{t, collected, rss: {process: MiB}}`` every ``every`` seconds while a grid runs."""

    def __init__(self, grid, every: float):
        self.grid, self.every = grid, every
        self.points: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)
        self.t0 = time.perf_counter()

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._point()

    def _point(self) -> None:
        s = self.grid.stream
        rss = {"driver": rss_mib(os.getpid())}
        for key, pid in self.grid.pids.items():
            rss[self.grid.plan.cell(*key).name] = rss_mib(pid)
        self.points.append({"t": round(time.perf_counter() - self.t0, 3),
                            "collected": s.collected if s is not None else 0, "rss_mib": rss})

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._point()


def growth(points: list[dict], name: str) -> dict:
    """RSS of ``name`` at the first point with >= WARMUP samples, at the end, its peak after it, growth %."""
    after = [p for p in points if p["collected"] >= WARMUP and p["rss_mib"].get(name) is not None]
    if len(after) < 2:
        return {"at_warmup_mib": None, "end_mib": None, "peak_mib": None, "growth_pct": None}
    base = after[0]["rss_mib"][name]
    peak = max(p["rss_mib"][name] for p in after)
    return {"at_warmup_mib": round(base, 1), "end_mib": round(after[-1]["rss_mib"][name], 1),
            "peak_mib": round(peak, 1), "growth_pct": round(100 * (peak - base) / base, 2)}


def plot(points: list[dict], names: list[str], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    t = [p["t"] for p in points]
    for name in names:
        a.plot(t, [p["rss_mib"].get(name) for p in points], label=name)
    a.set_ylabel("RSS (MiB)")
    a.legend(fontsize=7, ncol=2)
    a.set_title(title)
    rate = [0.0] + [(q["collected"] - p["collected"]) / max(1e-9, q["t"] - p["t"]) for p, q in zip(points, points[1:])]
    b.plot(t, rate)
    b.set_ylabel("samples/s")
    b.set_xlabel("seconds into the stream")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--grid", default="3x2")
    ap.add_argument("--no-verify", dest="verify", action="store_false")
    ap.add_argument("--every", type=float, default=2.0, help="seconds between sample points")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    n = args.samples

    import ray

    from bidl_models.checkpoint import shipped_weights
    from bidl_models.config import load_config
    from bidl_runtime.api import GridJob, default_config
    from bidl_runtime.cluster.ray_cluster import start_local
    from bidl_models.datasets.synthetic import synthetic_samples

    cfg = load_config(default_config())
    job = GridJob(cfg, grid=args.grid, checkpoint=shipped_weights(cfg.name), artifacts=args.artifacts)  # as the CLI runs
    start_local(num_cpus=os.cpu_count(), resources={"bidl_device": job.layout.max_device + 1}, include_dashboard=True,
                dashboard_host="127.0.0.1", log_to_driver=False, logging_level="WARNING", namespace="bidl-soak")
    try:
        plan = job.plan()
        x = plan.outputs(None)[0].layout[0]
        grid = job.grid()
        try:
            grid.start()
            sampler = Sampler(grid, args.every).start()
            report = grid.run(synthetic_samples(plan.T, tuple(x.shape[2:]), n, args.seed), total=n, progress=True,
                              verify=args.verify)
            sampler.stop()
        finally:
            grid.close()
    finally:
        ray.shutdown()

    points = sampler.points
    names = ["driver"] + [c.name for c in plan.cells]
    mem = {name: growth(points, name) for name in names}
    tenth = max(1, len(points) // 10)

    def rate(ps):
        return (ps[-1]["collected"] - ps[0]["collected"]) / max(1e-9, ps[-1]["t"] - ps[0]["t"]) if len(ps) > 1 else None
    first, last = rate(points[:tenth + 1]), rate(points[-tenth - 1:])
    worst = max((m["growth_pct"] for m in mem.values() if m["growth_pct"] is not None), default=None)
    doc = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
           "cpus": os.cpu_count(), "config": cfg.name, "grid": args.grid, "samples": n, "verify": report.verify,
           "wall_s": report.wall_s, "samples_per_s": report.samples_per_s, "first_tenth_samples_per_s": first,
           "last_tenth_samples_per_s": last, "warmup_samples": WARMUP, "memory": mem, "worst_growth_pct": worst,
           "points": points}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(doc, indent=1))
    plot(points, names, out / "soak.png", f"{cfg.name}, {args.grid} grid, {n} samples"
         + (", verify on" if args.verify else ""))

    print(f"\n{cfg.name} on a {args.grid} grid: {report.samples} samples in {report.wall_s:.0f} s "
          f"({report.samples_per_s:.1f} samples/s; first tenth {first or 0:.1f}, last tenth {last or 0:.1f})")
    if report.verify:
        print(f"verify: {report.verify['equal']}/{report.verify['compared']} bit-exact")
    head = f"{'process':<22}{f'RSS@{WARMUP} MiB':>14}{'end MiB':>10}{'peak MiB':>10}{'growth %':>10}"
    print(head + "\n" + "-" * len(head))
    for name, m in mem.items():
        def fmt(v):
            return "-" if v is None else f"{v:.1f}"
        print(f"{name:<22}{fmt(m['at_warmup_mib']):>14}{fmt(m['end_mib']):>10}{fmt(m['peak_mib']):>10}"
              f"{fmt(m['growth_pct']):>10}")
    print(f"written {out / 'soak.json'}, {out / 'soak.png'}")
    print(f"worst RSS growth after {WARMUP} samples: {worst}% (bound 5%)")
    return 0 if worst is not None and worst <= 5 and report.samples == n else 1


if __name__ == "__main__":
    sys.exit(main())
