"""Chaos drill on the default model: kill (SIGKILL) and freeze (SIGSTOP) random cells of a streaming grid.

    python benchmarks/chaos.py [--quick] [--samples N] [--faults F] [--grid 3x2] [--seed S] [--out benchmarks/results]

The default model (the default config, its shipped weights, synthetic seeded event frames) streams
``--samples`` samples through a ``--grid`` grid on an embedded Ray (token auth, 127.0.0.1) while
:class:`bidl_runtime.driver.chaos.Chaos` injects ``--faults`` faults, alternately SIGKILL and SIGSTOP, into
random cells at random times spread over the run. Every output is checked against the single-device
reference run of the same artifacts as it arrives (``verify``). ``--quick``: 300 samples, 4 faults
(about 2 minutes here). Printed: one row per fault (cell, diagnosis, seconds until it was named,
until its replica was rewired, until its replica streamed again, samples replayed), then::

    faults injected N, survived N
    samples lost 0, duplicated 0, bit-exact N/N
    time to recover (max over all N faults): named ... s (<kind> <cell>), streaming again ... s (<kind> <cell>)

Both maxima are over every fault, whatever its kind (a frozen cell whose replacement is slow to start
shows as the slowest recovery, as it is).

Written: ``chaos.json`` (every fault, every restart, the run's figures). Targets on this 2-core
machine (issue 12): a frozen cell named within max(10 s, 5 x its chunk time); the grid streaming again
within 15 s of a kill.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="300 samples, 4 faults (about 2 minutes)")
    ap.add_argument("--samples", type=int, default=None, help="samples to stream (default 1000; --quick 300)")
    ap.add_argument("--faults", type=int, default=None, help="faults to inject (default 10; --quick 4)")
    ap.add_argument("--grid", default="3x2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    n = args.samples or (300 if args.quick else 1000)
    faults = args.faults if args.faults is not None else (4 if args.quick else 10)

    from bidl_runtime.cell.template import CellTemplate, template_workers
    template = CellTemplate.for_cells()   # cells fork from it, as bidl-run's do (before Ray is imported)
    import ray

    from bidl_models.checkpoint import shipped_weights
    from bidl_models.config import load_config
    from bidl_runtime.api import GridJob, default_config
    from bidl_runtime.cluster.ray_cluster import start_local
    from bidl_runtime.driver.chaos import Chaos
    from bidl_models.datasets.synthetic import synthetic_samples
    from bidl_runtime.runtime_config import RuntimeConfig

    cfg = load_config(default_config())
    job = GridJob(cfg, grid=args.grid, checkpoint=shipped_weights(cfg.name), artifacts=args.artifacts,
                  runtime=RuntimeConfig(metrics=False, max_restarts=max(3, faults)))
    with template_workers(template):
        start_local(num_cpus=os.cpu_count(), resources={"bidl_device": job.layout.max_device + 1},
                    include_dashboard=False, log_to_driver=False, logging_level="WARNING", namespace="bidl-chaos")
    try:
        plan = job.plan()
        x = plan.outputs(None)[0].layout[0]
        items = synthetic_samples(plan.T, tuple(x.shape[2:]), n, args.seed)
        grid = job.grid()
        try:
            grid.start()
            chaos = Chaos(grid, faults=faults, total=n, seed=args.seed).start()
            t0 = time.perf_counter()
            report = grid.run(items, total=n, progress=True, verify=True)
            wall = time.perf_counter() - t0
            chaos.stop()
            s = chaos.summary(report, expected=n)
        finally:
            grid.close()
    finally:
        ray.shutdown()

    print(f"\n{cfg.name} on a {args.grid} grid: {n} samples in {wall:.1f} s "
          f"({report.samples_per_s:.1f} samples/s with {s['injected']} faults; {report.replayed} replayed)")
    head = (f"{'fault':<6}{'cell':<18}{'diagnosis':<11}{'named s':>9}{'rewired s':>11}{'streaming s':>13}"
            f"{'replayed':>10}")
    print(head + "\n" + "-" * len(head))
    for f in s["faults"]:
        def fmt(k):
            return f"{f[k]:.2f}" if f.get(k) is not None else "-"
        print(f"{f['kind']:<6}{f['cell']:<18}{f.get('diagnosis', 'MISSED'):<11}{fmt('named_after_s'):>9}"
              f"{fmt('rewired_after_s'):>11}{fmt('streaming_again_after_s'):>13}{f.get('replayed', 0):>10}")
    recover = {"named_max": s["max_named_s"], "streaming_again_max": s["max_streaming_again_s"],
               "not_streaming_again": s["not_streaming_again"]}
    doc = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
           "cpus": os.cpu_count(), "config": cfg.name, "grid": args.grid, "samples": n, "seed": args.seed,
           "wall_s": wall, "samples_per_s": report.samples_per_s, "summary": s, "recover": recover,
           "restarts": report.to_json()["restarts"], "verify": report.verify,
           "hang_deadline_floor_s": job.runtime.hang_floor_s, "heartbeat_s": job.runtime.heartbeat_s}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "chaos.json").write_text(json.dumps(doc, indent=1, default=str))
    print(f"written {out / 'chaos.json'}")
    exact = s["bit_exact"]
    print(f"faults injected {s['injected']}, survived {s['survived']}")
    print(f"samples lost {s['lost']}, duplicated {s['duplicated']}, bit-exact {exact}/{n}")
    print(recover_line(s))
    ok = s["survived"] == s["injected"] and s["lost"] == 0 and s["duplicated"] == 0 and exact == n
    return 0 if ok else 1


def recover_line(s: dict) -> str:
    """The summary's line: the slowest naming and the slowest return to streaming over all faults."""
    def worst(w):
        return f"{w['s']:.1f} s ({w['kind']} {w['cell']})" if w else "-"
    missing = (f"; never streaming again: {', '.join(s['not_streaming_again'])}" if s["not_streaming_again"] else "")
    return (f"time to recover (max over all {s['injected']} faults): named {worst(s['max_named_s'])}, "
            f"streaming again {worst(s['max_streaming_again_s'])}{missing}")


if __name__ == "__main__":
    sys.exit(main())
