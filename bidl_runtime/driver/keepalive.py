"""Keeping a grid up after its run, and attaching to it from another process.

``python -m bidl_runtime.run --keep-alive`` leaves the cells alive (programs loaded, channels
closed) beside a small named actor, ``bidl-grid``, that hands the plan to one attaching driver at
a time. Another process joins the cluster with the printed address and namespace and runs samples
through the same cells, with no start-up::

    grid = attach("bidl-1a2b3c4d", address="127.0.0.1:6379")     # cluster.join(address, namespace) if needed
    report = grid.run(samples, verify=True)
    grid.close()                                                # lets go; the cells stay up

or ``python -m bidl_runtime.run --attach --address ADDR --namespace NS``. Token auth stays on: the
attaching process presents the cluster's token (the printed line names it, e.g.
``RAY_AUTH_TOKEN_PATH=...``).
"""
from __future__ import annotations

import uuid
from typing import Any, Optional

from bidl_runtime.cluster.ray_cluster import join
from bidl_runtime.errors import RunError
from bidl_runtime.plan.grid_plan import GridPlan
from bidl_runtime.plan.place import rebind_driver
from bidl_runtime.runtime_config import RuntimeConfig

from .grid import Grid

HOST_NAME = "bidl-grid"


class GridHost:
    """The named actor beside a kept-alive grid: its plan and tunables, lent to one driver at a time."""

    def __init__(self, plan: GridPlan, config: RuntimeConfig):
        self.plan, self.config = plan, config
        self.holder: Optional[str] = None
        self.runs = 0

    def lease(self, who: str) -> tuple[GridPlan, RuntimeConfig]:
        if self.holder is not None:
            raise RuntimeError(f"the grid is in use by {self.holder}; try again when it is done")
        self.holder = who
        return self.plan, self.config

    def release(self, who: str) -> None:
        if self.holder == who:
            self.holder = None
            self.runs += 1

    def info(self) -> dict[str, Any]:
        return {"config": self.plan.config, "grid": [self.plan.rows, self.plan.cols], "cells": len(self.plan.cells),
                "holder": self.holder, "runs": self.runs}


def host(grid: Grid) -> Any:
    """Start the ``bidl-grid`` actor for a grid whose run is over (its cells stay up); returns when
    other processes can find it."""
    import ray
    h = ray.remote(GridHost).options(name=HOST_NAME, num_cpus=0, max_concurrency=1).remote(grid.plan, grid.config)
    ray.get(h.info.remote(), timeout=grid.config.start_timeout_s)
    return h


class AttachedGrid(Grid):
    """A :class:`Grid` over a kept-alive grid's cells; ``close`` hands the lease back."""

    def __init__(self, plan: GridPlan, config: RuntimeConfig, actors: dict, lease: Any, who: str):
        super().__init__(plan, config, actors=actors, configured=True, owned=False)
        self._lease, self._who = lease, who

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        try:
            import ray
            ray.get(self._lease.release.remote(self._who), timeout=30)
        except Exception:  # noqa: BLE001 - the host may be gone with its cluster
            pass


def attach(namespace: str, address: Optional[str] = None) -> AttachedGrid:
    """The kept-alive grid in ``namespace`` of the cluster at ``address`` (connects if this
    process is not connected yet). RunError if there is none or it is in use."""
    import ray
    if not ray.is_initialized():
        join(address or "auto", namespace=namespace, log_to_driver=False, logging_level="WARNING")
    try:
        lease = ray.get_actor(HOST_NAME, namespace=namespace)
    except ValueError:
        raise RunError(f"no kept-alive grid in namespace {namespace!r} of this cluster (start one with "
                       "python -m bidl_runtime.run --keep-alive)") from None
    who = f"driver-{uuid.uuid4().hex[:8]}"
    try:
        plan, config = ray.get(lease.lease.remote(who), timeout=30)
    except Exception as e:  # noqa: BLE001
        raise RunError(f"cannot attach: {str(e).strip().splitlines()[-1]}") from None
    plan = rebind_driver(plan, ray.get_runtime_context().get_node_id(), config.transport)
    actors = {c.key: ray.get_actor(c.name, namespace=namespace) for c in plan.cells}
    return AttachedGrid(plan, config, actors, lease, who)
