"""The runtime as a library: the stage chain, and ``stream`` that runs all of it.

The chain (each stage produced once, data flowing one way)::

    cfg    = load_config("clif3fc3dm_itout-b16x1-dvsglyphs")                 # bidl_models.config
    layout = GridLayout.resolve(cfg, "3x2")                                  # rows x cols x replicas, devices
    spec   = ModelSpec.from_config(cfg, columns=layout.cols, checkpoint=ckpt) # bidl_models.model_spec
    arts   = compile_spec(spec, time_slices(spec.T, layout.rows),            # compile (or emulate(spec, ...))
                          CompileOptions(out=artifact_dir(spec)))
    plan   = place(arts, Cluster.connect(), layout)                          # bidl_runtime.plan.place -> GridPlan
    report = Grid(plan, RuntimeConfig()).run(samples)                        # bidl_runtime.driver.grid -> RunReport

:func:`prepare` does the layout/spec/artifacts part, :func:`stream` all of it on an initialised
Ray (the cluster's nodes declare ``bidl_device`` resources): an embedded one from
:func:`bidl_runtime.cluster.ray_cluster.start_local` (token auth, 127.0.0.1 only), or a real cluster joined with
:func:`bidl_runtime.cluster.ray_cluster.join`::

    from bidl_runtime.cluster.ray_cluster import start_local
    start_local(resources={"bidl_device": 6})
    report = stream(load_config("clif3fc3dm_itout-b16x1-dvsglyphs"), samples, grid=(3, 2))
    print(report.summary())
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Sequence

from bidl_models.config import Config
from bidl_models.model_spec import ModelSpec

from .runtime_config import RuntimeConfig
from bidl_runtime.plan.emulated import emulate
from bidl_runtime.driver.grid import Grid
from bidl_models.slicing import GridLayout, time_slices
from bidl_runtime.plan.place import Cluster, place
from bidl_runtime.cell.pool import CellPool
from bidl_runtime.driver.report import RunReport


def artifact_dir(spec: ModelSpec, root: str | Path = "artifacts") -> Path:
    """The runtime's artifact directory for a model, its weights and its cut: models that differ
    (another T, split or checkpoint) get their own directory instead of meeting ``compile``'s
    refusal of a mismatched artifact."""
    return Path(root) / f"{spec.name}-{spec.key}"


def prepare(cfg: Config, layout: GridLayout, config: RuntimeConfig, checkpoint: Optional[str | Path] = None,
            artifacts: str | Path = "artifacts", force_compile: bool = False,
            verbose: bool = True) -> tuple[ModelSpec, object]:
    """``(spec, artifact set)`` for a layout: compiled artifacts (built or reused) for real backends,
    an :class:`~bidl_runtime.plan.emulated.EmulatedSet` for ``emulated``."""
    spec = ModelSpec.from_config(cfg, columns=layout.cols, checkpoint=checkpoint)
    return spec, build_artifacts(spec, time_slices(spec.T, layout.rows), config, artifacts, force_compile, verbose)


def build_artifacts(spec: ModelSpec, slices: Sequence[int], config: RuntimeConfig, artifacts: str | Path = "artifacts",
                    force_compile: bool = False, verbose: bool = True, progress: Optional[bool] = None):
    """The artifact stage for a resolved spec and the rows' time slices (see :func:`prepare`);
    ``verbose``: compile's log lines, ``progress``: its progress bar (default: as verbose)."""
    if config.backend == "emulated":
        return emulate(spec, slices, config.profile, config.batch)
    from compile import CompileOptions, compile_spec
    from .runtime_config import COMPILED_BACKENDS
    opts = CompileOptions(out=str(artifact_dir(spec, artifacts)), batch=config.batch, force=force_compile,
                          verbose=verbose, progress=verbose if progress is None else progress,
                          fast_load=config.backend not in COMPILED_BACKENDS)   # they compile the exported program
    return compile_spec(spec, slices, opts)


def stream(cfg: Config, samples: Iterable, grid: Optional[tuple[int, int] | str] = None, replicas: int = 1,
           rcfg: Optional[RuntimeConfig] = None, checkpoint: Optional[str | Path] = None,
           artifacts: str | Path = "artifacts", verify: bool = False, total: Optional[int] = None,
           progress: bool = False, verbose: bool = False, pool: Optional[CellPool] = None,
           trace: Optional[str | Path] = None) -> RunReport:
    """The whole chain on the connected cluster: layout, spec, artifacts, placement, one run with
    ``verify`` (compare with the single-device reference) and ``trace`` (a Chrome trace file, with a
    PNG timeline beside it; see :mod:`bidl_runtime.driver.trace`). The grid is always torn down."""
    rcfg = rcfg or RuntimeConfig()
    layout = GridLayout.resolve(cfg, grid, replicas)
    _, arts = prepare(cfg, layout, rcfg, checkpoint, artifacts, verbose=verbose)
    plan = place(arts, Cluster.connect(), layout, transport=rcfg.transport, backend=rcfg.backend)
    g = Grid(plan, rcfg, pool)
    try:
        return g.run(samples, total=total, progress=progress, verify=verify, trace=trace)
    finally:
        g.close()

