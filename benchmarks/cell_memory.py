"""Measure what a grid costs in memory: each cell's process per backend, the embedded Ray node, the driver.

    python benchmarks/cell_memory.py [--grid 2x2] [--backends cpu,emulated] [--samples 20] [--out benchmarks/results]

For every backend the default model (the default config, its shipped weights) runs on a ``--grid``
grid on one embedded Ray (token auth, 127.0.0.1): cells started, their programs loaded, ``--samples``
samples streamed, then each cell process's proportional set size (PSS, /proc/PID/smaps_rollup:
private pages plus its share of the pages it shares, e.g. torch's libraries, so the PSS of N cells
adds up to what they take together) is read, beside its segment's weight bytes. Also read: the Ray
node's own processes (GCS, raylet, dashboard, agents: PSS summed, before any cell starts) and the
driver's. Printed as a table; written to ``cell_memory.json``. ``bidl_runtime.plan.admission`` keeps
the figures (``CELL_BASE_BYTES``: a cell's PSS less its weights) and says how they were measured.
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


def pss(pid: int) -> int:
    """Proportional set size of process ``pid`` in bytes (0 if gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", default="2x2")
    ap.add_argument("--backends", default="cpu,emulated")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)

    import ray

    from bidl_models.checkpoint import shipped_weights
    from bidl_models.config import load_config
    from bidl_runtime.api import GridJob, default_config
    from bidl_runtime.cluster.cleanup import ray_processes
    from bidl_runtime.cluster.ray_cluster import start_local
    from bidl_runtime.driver.samples import synthetic_samples
    from bidl_runtime.runtime_config import RuntimeConfig

    cfg = load_config(default_config())
    first = GridJob(cfg, grid=args.grid)
    start_local(num_cpus=os.cpu_count(), resources={"bidl_device": first.layout.max_device + 1},
                include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False, logging_level="WARNING",
                namespace="bidl-cell-memory")
    doc: dict = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
                 "cpus": os.cpu_count(), "config": cfg.name, "grid": args.grid, "samples": args.samples,
                 "backends": {}}
    try:
        session = ray._private.worker._global_node.get_session_dir_path()
        time.sleep(3)   # the dashboard's and agents' processes settle
        node = [p for p in ray_processes() if p.session == session]
        doc["ray_node"] = {"pss_bytes": sum(pss(p.pid) for p in node),
                           "processes": sorted(p.name for p in node)}
        for backend in args.backends.split(","):
            job = GridJob(cfg, grid=args.grid, checkpoint=shipped_weights(cfg.name), artifacts=args.artifacts,
                          runtime=RuntimeConfig(backend=backend, metrics=False))
            weights = job.weight_bytes()
            grid = job.grid()
            try:
                grid.start()
                plan = grid.plan
                x = plan.outputs(None)[0].layout[0]
                grid.run(synthetic_samples(plan.T, tuple(x.shape[2:]), args.samples, 0), progress=False)
                time.sleep(1)
                cells = [{"cell": c.name, "pid": grid.pids[c.key], "pss_bytes": pss(grid.pids[c.key]),
                          "weights_bytes": weights[c.col] if backend != "emulated" else 0}
                         for c in plan.cells]
            finally:
                grid.close()
            base = [c["pss_bytes"] - c["weights_bytes"] for c in cells]
            doc["backends"][backend] = {"cells": cells, "base_bytes_max": max(base),
                                        "base_bytes_mean": sum(base) // len(base)}
        doc["driver_pss_bytes"] = pss(os.getpid())
    finally:
        ray.shutdown()

    mb = 2 ** 20
    print(f"{cfg.name} on a {args.grid} grid, {args.samples} samples; PSS per process (MiB)")
    print(f"Ray node ({len(doc['ray_node']['processes'])} processes): {doc['ray_node']['pss_bytes'] / mb:.0f}; "
          f"driver: {doc['driver_pss_bytes'] / mb:.0f}")
    for backend, b in doc["backends"].items():
        per = ", ".join(f"{c['cell']} {c['pss_bytes'] / mb:.0f} (weights {c['weights_bytes'] / mb:.1f})"
                        for c in b["cells"])
        print(f"{backend:<9} cells: {per}; base (PSS - weights) max {b['base_bytes_max'] / mb:.0f}, "
              f"mean {b['base_bytes_mean'] / mb:.0f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cell_memory.json").write_text(json.dumps(doc, indent=1))
    print(f"written {out / 'cell_memory.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
