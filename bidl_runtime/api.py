"""The runtime as a library: plan, prepare, stream, verify (the CLI and benchmarks use this).

    import ray; ray.init(resources={"bidl_device": 6})
    cfg = load_config("clif3fc3dm_itout-b16x1-dvsglyphs")
    report = stream(cfg, samples, grid=(3, 2))
    print(report.summary())

``ray`` must be initialised (the cluster's nodes declare ``bidl_device`` resources).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import torch

from bidl_models.config import Config

from .driver import CellPool, Grid, RunReport, RuntimeConfig, node_devices
from .plan import GridPlan, make_plan
from .session import compiled_segments, emulated_segments, reference_output


class KeepInputs:
    """Wraps a sample iterable and keeps each sample's input (for the reference comparison)."""

    def __init__(self, samples: Iterable):
        self.samples = samples
        self.kept: dict[int, torch.Tensor] = {}

    def __iter__(self):
        for i, item in enumerate(self.samples):
            self.kept[i] = item[0] if isinstance(item, tuple) else item
            yield item


def prepare(cfg: Config, plan: GridPlan, rcfg: RuntimeConfig, checkpoint: Optional[str | Path] = None,
            artifacts: str | Path = "artifacts", force_compile: bool = False, verbose: bool = True):
    """Segment runtimes per (column, chunk length) and, for real backends, the loaded artifacts."""
    if rcfg.backend == "emulated":
        return emulated_segments(cfg, plan, rcfg.profile, rcfg.batch), {}
    return compiled_segments(cfg, plan, checkpoint, artifacts, rcfg.batch, force_compile, verbose=verbose,
                             progress=verbose)


def verify_report(report: RunReport, arts: Mapping, plan: GridPlan, inputs: Mapping[int, torch.Tensor],
                  threads: int) -> dict[str, Any]:
    """Compare every grid output with the single-device run of the same artifacts (bit-exact)."""
    equal = compared = 0
    worst = 0.0
    for i, y in report.outputs.items():
        x = inputs[i]
        xb = x.to(torch.float32).unsqueeze(1) if x.dim() == 4 else x
        ref = reference_output(arts, plan, xb, threads)
        compared += 1
        if torch.equal(ref, y):
            equal += 1
        else:
            worst = max(worst, float((ref - y).abs().max()))
    return {"equal": equal, "compared": compared, "max_abs_diff": worst}


def stream(cfg: Config, samples: Iterable, grid: Optional[tuple[int, int]] = None, replicas: int = 1,
           rcfg: Optional[RuntimeConfig] = None, checkpoint: Optional[str | Path] = None,
           artifacts: str | Path = "artifacts", verify: bool = False, total: Optional[int] = None,
           progress: bool = False, verbose: bool = False, plan: Optional[GridPlan] = None,
           prepared: Optional[tuple] = None, pool: Optional[CellPool] = None) -> RunReport:
    """Plan the grid on the connected cluster, prepare its segments, stream ``samples`` through it,
    stop it, and (``verify``) compare with the single-device reference. The grid is always torn down."""
    rcfg = rcfg or RuntimeConfig()
    plan = plan or make_plan(cfg, grid, replicas, device_nodes=node_devices())
    segments, arts = prepared or prepare(cfg, plan, rcfg, checkpoint, artifacts, verbose=verbose)
    x0 = segments[(0, plan.slices[0])].x
    shape = (plan.T,) + tuple(x0.shape[2:])
    src = KeepInputs(samples) if verify else samples
    g = Grid(plan, segments, rcfg, pool)
    try:
        t0 = time.perf_counter()
        g.start()
        startup = time.perf_counter() - t0
        report = g.run(src, shape, progress=progress, total=total)
        report.cells = g.stop()
        report.startup_s = startup
    finally:
        g.close()
    if verify:
        report.verify = verify_report(report, arts, plan, src.kept, rcfg.threads_per_cell)
    return report
