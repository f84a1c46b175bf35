"""The runtime as a library: :class:`GridJob`, the one owner of the stage chain, and :func:`stream`.

The chain, each stage produced once, on first use::

    job = GridJob(load_config("clif3fc3dm_itout-b16x1-dvsglyphs"), grid="3x2", checkpoint=ckpt)
    job.layout, job.spec, job.slices      # GridLayout (rows x cols x replicas), ModelSpec, time slices
    job.artifacts()                       # compiled artifacts (cached) or, backend 'emulated', paced shapes
    job.plan()                            # placed on the connected Ray cluster, artifacts shipped to its nodes
    report = job.run(samples, verify=True)    # grid started, streamed, drained, closed -> RunReport

:class:`GridJob` extends :class:`compile.job.CompileJob` (which ``bidl-compile`` runs) with the
later stages; ``bidl-run``, ``bidl-plan``, :func:`stream` and the benchmarks all use it.
``job.start_artifacts()`` compiles in a thread while Ray starts (``bidl-run`` does). On an
initialised Ray (the nodes declare ``bidl_device`` resources): an embedded one from
:func:`bidl_runtime.cluster.ray_cluster.start_local` (token auth, 127.0.0.1 only), or a real
cluster joined with :func:`bidl_runtime.cluster.ray_cluster.join`::

    start_local(resources={"bidl_device": 6})
    report = stream(load_config("clif3fc3dm_itout-b16x1-dvsglyphs"), samples, grid=(3, 2))
    print(report.summary())
"""
from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from bidl_models.config import Config, shipped_config
from bidl_models.slicing import GridLayout
from compile.job import CompileJob
from compile.options import CompileOptions

from bidl_runtime.cell.pool import CellPool
from bidl_runtime.cluster.nodes import device_map
from bidl_runtime.cluster.ship import ship_programs
from bidl_runtime.driver.grid import Grid
from bidl_runtime.driver.report import RunReport
from bidl_runtime.driver.startup import StartupClock
from bidl_runtime.plan.emulated import emulate
from bidl_runtime.plan.grid_plan import GridPlan
from bidl_runtime.plan.hosts import HostMap, assign_hosts
from bidl_runtime.plan.place import Cluster, place
from bidl_runtime.runtime_config import COMPILED_BACKENDS, RuntimeConfig

DEFAULT_CONFIG = "clif3fc3dm_itout-b16x1-dvsglyphs"   # SeqClif3Fc3DmItout, 2x40x40, T=20, generated DVS data


@lru_cache(maxsize=None)
def default_config() -> Path:
    """The shipped default config's file: the commands' default, never a same-named file elsewhere."""
    return shipped_config(DEFAULT_CONFIG)


class GridJob(CompileJob):
    """One model on one grid: :class:`~compile.job.CompileJob`'s stages (layout, spec, slices,
    artifacts), then the plan, the grid and its runs. ``runtime``: how the grid runs (its backend
    decides the artifacts: compiled programs, or paced shapes for ``emulated``); ``artifacts``: the
    cache root; ``verbose`` / ``progress``: compile's log lines and progress bar; ``hosts``: the
    devices of each host (:class:`~bidl_runtime.plan.hosts.HostMap`; default: the config's
    ``lynxi_hosts`` / ``lynxi_standby``, else the cluster's nodes as they come)."""

    def __init__(self, config: Config, *, grid: str | Sequence[int] | None = None, replicas: int = 1,
                 checkpoint: str | Path | None = None, runtime: Optional[RuntimeConfig] = None,
                 artifacts: str | Path = "artifacts", force_compile: bool = False, verbose: bool = False,
                 progress: Optional[bool] = None, splits: Optional[Sequence[Sequence[int | str]]] = None,
                 seed: int = 0, hosts: Optional[HostMap] = None):
        self.runtime = runtime or RuntimeConfig()
        options = CompileOptions(out=str(artifacts), batch=self.runtime.batch, force=force_compile, verbose=verbose,
                                 progress=verbose if progress is None else progress,
                                 fast_load=self.runtime.backend not in COMPILED_BACKENDS)  # they compile the exported program
        super().__init__(config, grid=grid, replicas=replicas, checkpoint=checkpoint, options=options,
                         splits=splits, seed=seed)
        self._plan: Optional[GridPlan] = None
        self.hosts = hosts if hosts is not None else HostMap.resolve(config)
        self._layouts: dict[str, GridLayout] = {}

    def check_hosts(self) -> None:
        """ValueError (one line, naming the flag) when the host map has fewer active devices than the
        layout has cells (checked before Ray starts)."""
        if self.hosts is not None and self.hosts.active < self.layout.n_cells:
            raise ValueError(f"{self.hosts.source} {self.hosts.describe()}: {self.hosts.active} active device(s), "
                             f"the grid {self.layout.rows}x{self.layout.cols} x {self.layout.replicas} replica(s) "
                             f"needs {self.layout.n_cells}")

    def layout_on(self, cluster: Cluster) -> GridLayout:
        """The layout with the device ids its cells get on ``cluster``: with a host map, chosen so that
        the fewest bytes per sample cross hosts (:func:`~bidl_runtime.plan.hosts.assign_hosts`, on the
        model's real edge sizes, the driver on ``cluster``'s driver host); the layout's own ids without
        one, or when the config gives them (``lynxi_devices``)."""
        if self.hosts is None or self.layout.source == "lynxi_devices":
            return self.layout
        driver = cluster.host(cluster.driver_node)
        if driver not in self._layouts:
            shapes = place(emulate(self.spec, self.slices, None, self.runtime.batch),
                           Cluster.local(self.layout.max_device + 1), self.layout)
            devices = assign_hosts(shapes, self.hosts, driver)
            self._layouts[driver] = replace(self.layout, devices=devices,
                                            source=f"{self.layout.source} on {self.hosts.source}")
        return self._layouts[driver]

    def build(self):
        """Artifacts for the backend: compiled (or cached), or for ``emulated`` the model's real shapes
        paced by the runtime's device profile."""
        if self.runtime.backend == "emulated":
            return emulate(self.spec, self.slices, self.runtime.profile, self.runtime.batch)
        return super().build()

    def preview(self, device_nodes: Optional[Sequence[str]] = None) -> GridPlan:
        """The plan's cells and edges without Ray or compile (shapes from the model spec, nothing to
        run): what ``bidl-plan`` prints. ``device_nodes`` as in :class:`Cluster` (default: the host map's
        hosts, each a node named by its address, the driver on the first; without one, one node with as
        many devices as the layout uses)."""
        shapes = emulate(self.spec, self.slices, None, self.runtime.batch)
        cluster = (Cluster(tuple(device_nodes)) if device_nodes is not None
                   else Cluster.of_hosts(self.hosts) if self.hosts is not None
                   else Cluster.local(self.layout.max_device + 1))
        return place(shapes, cluster, self.layout_on(cluster), transport=self.runtime.transport,
                     backend=self.runtime.backend)

    def plan(self, cluster: Optional[Cluster] = None) -> GridPlan:
        """The artifacts placed on ``cluster`` (default: the connected Ray cluster's devices, once),
        compiled programs shipped to the other nodes whose cells run them."""
        if cluster is None and self._plan is not None:
            return self._plan
        where = cluster or device_map(self.hosts)
        plan = place(self.artifacts(), where, self.layout_on(where), transport=self.runtime.transport,
                     backend=self.runtime.backend)
        if where.connected:
            plan = ship_programs(plan)
        if cluster is None:
            self._plan = plan
        return plan

    def grid(self, *, pool: Optional[CellPool] = None, actors: Optional[dict] = None,
             clock: Optional[StartupClock] = None) -> Grid:
        """A grid of this job's plan (cells not started yet: ``Grid.start``, or ``run``)."""
        return Grid(self.plan(), self.runtime, pool, actors=actors, clock=clock)

    def run(self, samples: Iterable, *, pool: Optional[CellPool] = None, **run_options: Any) -> RunReport:
        """One run on a new grid, always torn down (``run_options``: :meth:`Grid.run`'s: ``verify``,
        ``total``, ``progress``, ``journal``, ``trace``)."""
        g = self.grid(pool=pool)
        try:
            return g.run(samples, **run_options)
        finally:
            g.close()


def stream(cfg: Config, samples: Iterable, grid: Optional[tuple[int, int] | str] = None, replicas: int = 1,
           rcfg: Optional[RuntimeConfig] = None, checkpoint: Optional[str | Path] = None,
           artifacts: str | Path = "artifacts", verify: bool = False, total: Optional[int] = None,
           progress: bool = False, verbose: bool = False, pool: Optional[CellPool] = None,
           trace: Optional[str | Path] = None) -> RunReport:
    """The whole chain in one call on the connected cluster (:class:`GridJob`): one run with ``verify``
    (compare with the single-device reference) and ``trace`` (a Chrome trace file, with a PNG
    timeline beside it; see :mod:`bidl_runtime.driver.trace`). The grid is always torn down."""
    job = GridJob(cfg, grid=grid, replicas=replicas, checkpoint=checkpoint, runtime=rcfg, artifacts=artifacts,
                  verbose=verbose)
    return job.run(samples, pool=pool, total=total, progress=progress, verify=verify, trace=trace)
