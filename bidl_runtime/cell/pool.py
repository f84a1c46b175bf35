"""Cell actors: started ahead of the plan (``spawn``), or kept between grids (:class:`CellPool`).

Starting a cell's process (Python, Ray's worker, torch) is most of a grid's start-up, and it does
not depend on the model: ``spawn(layout, cluster)`` starts every cell of a layout, named and placed
as the plan will name and place them, while the driver is still resolving the model and checking
its artifacts; ``Grid`` then only configures them.
"""
from __future__ import annotations

from typing import Any

from bidl_models.slicing import GridLayout
from bidl_runtime.plan.grid_plan import CellKey, CellPlan, cell_name

from .cell import Cell

ACTOR_OPTIONS: dict[str, Any] = dict(num_cpus=0, max_concurrency=3, resources={"bidl_device": 1})


def new_actor(name: str, node: str, num_gpus: float = 0.0, name_wait_s: float = 3.0) -> Any:
    """A cell actor named ``name`` on ``node`` (``'local'``: wherever Ray puts it); ``num_gpus``: its
    share of a GPU (cuda backend; fractional shares let cells share one). A restarted cell takes its
    predecessor's name once Ray has let go of it (waits up to ``name_wait_s``)."""
    import time

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    opts = dict(ACTOR_OPTIONS, name=name)
    if num_gpus:
        opts["num_gpus"] = num_gpus
    if node != "local":
        opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
    deadline = time.perf_counter() + name_wait_s
    while True:
        try:
            return ray.remote(Cell).options(**opts).remote()
        except ValueError:   # the name is still taken (the old actor is being killed)
            if time.perf_counter() > deadline:
                raise
            time.sleep(0.05)


def spawn(layout: GridLayout, device_nodes: tuple[str, ...], num_gpus: float = 0.0) -> dict[CellKey, Any]:
    """One unconfigured cell actor per cell of ``layout`` (``device_nodes[d]``: device d's node)."""
    out = {}
    for k in range(layout.replicas):
        for g in range(layout.rows):
            for s in range(layout.cols):
                d = layout.devices[k][g][s]
                out[(k, g, s)] = new_actor(cell_name(k, g, s, d), device_nodes[d], num_gpus)
    return out


class CellPool:
    """Idle cell actors kept between grids (one per device id and node), so that runs one after
    another (benchmarks, sweeps) reconfigure processes instead of starting new ones."""

    def __init__(self, num_gpus: float = 0.0) -> None:
        self.num_gpus = num_gpus
        self.idle: dict[tuple[str, int], Any] = {}
        self.busy: dict[tuple[str, int], Any] = {}

    def acquire(self, c: CellPlan) -> Any:
        """An actor for cell ``c`` (placed on its node)."""
        key = (c.node, c.device)
        if key in self.idle:
            a = self.busy[key] = self.idle.pop(key)
            return a
        a = self.busy[key] = new_actor(f"pool-dev{c.device}-{c.node[:8]}", c.node, self.num_gpus)
        return a

    def renew(self, c: CellPlan) -> Any:
        """A new actor for cell ``c`` in place of its (killed) busy one (a restart after a failure)."""
        key = (c.node, c.device)
        old = self.busy.pop(key, None)
        if old is not None:
            kill(old)
        a = self.busy[key] = new_actor(f"pool-dev{c.device}-{c.node[:8]}", c.node, self.num_gpus)
        return a

    def release(self, healthy: bool) -> None:
        """Return every busy actor (healthy run) or kill them (failed run)."""
        for key, a in self.busy.items():
            if healthy:
                self.idle[key] = a
            else:
                kill(a)
        self.busy = {}

    def shutdown(self) -> None:
        for a in list(self.idle.values()) + list(self.busy.values()):
            kill(a)
        self.idle, self.busy = {}, {}


def kill(actor: Any) -> None:
    """Kill an actor, best effort (it may be gone already)."""
    import ray
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # noqa: BLE001 - teardown is best effort
        pass
