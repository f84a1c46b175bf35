"""Memory admission: a plan starts only if its cells fit the memory of the nodes they go to.

Every cell is a process of its own (Python, Ray's worker, torch, its program), so a grid's memory
grows with its cells: 120 cells of the default model take about 26 GB. Before any cell starts,
``bidl-run`` adds up what each node's cells need (:func:`need`) and compares it with what the node has
available (:func:`check`: ValueError, one line, else nothing); ``bidl-plan`` shows the same figures.

A cell's memory is estimated as its backend's measured base, plus its segment's weights, plus its
channel slots and working buffers (from the plan's edges)::

    base[backend] + weights[col] + depth x bytes into it + 2 x (bytes into it + bytes out of it)

The bases are measured (:data:`MEASURED`, by ``benchmarks/cell_memory.py``): the proportional set size
(PSS) of each cell process of the default model on a 2x2 grid after 20 samples, less its segment's
weights; PSS counts a process's private pages and its share of shared ones (torch's libraries), so
the PSS of N cells adds up to what they take together. The embedded Ray node's own processes (GCS,
raylet, dashboard, agents) and the driver's copy of every result are added on the driver's node.

Pure data: no torch, no Ray.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from .grid_plan import CellKey, GridPlan

GB = 1e9
# measured: benchmarks/cell_memory.py, default model (clif3fc3dm_itout-b16x1-dvsglyphs), 2x2 grid,
# 20 samples, Python 3.11, torch 2.13 CPU, Ray 2.60, Linux x86-64; PSS less the segment's weights
CELL_BASE_BYTES = {
    "cpu": 219_000_000,        # measured (209 MiB): TorchScript program loaded, after 20 samples
    "emulated": 204_000_000,   # measured (194 MiB): torch imported, no program (paced shapes)
    "compiled": 219_000_000,   # not measured here: the cpu figure (Inductor's compiled chunks come on top)
    "cuda": 219_000_000,       # not measured here (no GPU): the cpu figure, host memory only
}
RAY_NODE_BYTES = 681_000_000   # measured: the embedded node's 18 processes (GCS, raylet, dashboard and its
                               # modules, agents, 2 idle workers) before any cell starts
RESULT_BYTES = 800             # measured (766 B): what the driver keeps per result besides its tensor
MEASURED = ("PSS (/proc/PID/smaps_rollup) of each cell process of the default model on a 2x2 grid after 20 "
            "samples, less its segment's weights (benchmarks/cell_memory.py; compiled and cuda: not measured, "
            "the cpu figure)")


@dataclass(frozen=True)
class NodeNeed:
    """What one node needs: each of its cells' bytes, and what else runs there (``extra``: name -> bytes)."""

    cells: dict[CellKey, int]
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.cells.values()) + sum(self.extra.values())


@dataclass(frozen=True)
class MemoryNeed:
    """A plan's memory, per node (``'local'``: this machine, one node)."""

    grid: str                    # '20x6', '2x2 x 3 replicas'
    backend: str
    nodes: dict[str, NodeNeed]

    def cell_bytes(self) -> dict[CellKey, int]:
        return {k: v for n in self.nodes.values() for k, v in n.cells.items()}

    @property
    def total(self) -> int:
        return sum(n.total for n in self.nodes.values())


def cell_bytes(plan: GridPlan, backend: str, weights: Sequence[int], depth: int) -> dict[CellKey, int]:
    """Estimated bytes of every cell of ``plan`` (see the module doc); ``weights[s]``: segment s's."""
    base = CELL_BASE_BYTES[backend]
    out = {}
    for c in plan.cells:
        into = sum(e.nbytes for e in plan.inputs(c.key))
        out_of = sum(e.nbytes for e in plan.outputs(c.key))
        held = 0 if backend == "emulated" else weights[c.col]
        out[c.key] = base + held + depth * into + 2 * (into + out_of)
    return out


def need(plan: GridPlan, backend: str, weights: Sequence[int], depth: int, samples: int = 0,
         ray_node: bool = False) -> MemoryNeed:
    """What ``plan`` needs per node: its cells, and on the driver's node the driver's copy of
    ``samples`` results and (``ray_node``: an embedded cluster still to start) Ray's own processes."""
    per = cell_bytes(plan, backend, weights, depth)
    nodes: dict[str, dict[CellKey, int]] = {}
    for c in plan.cells:
        nodes.setdefault(c.node, {})[c.key] = per[c.key]
    out = {n: NodeNeed(cells) for n, cells in nodes.items()}
    driver = out.setdefault(plan.driver_node, NodeNeed({}))
    result = sum(e.nbytes for e in plan.inputs(None)) // max(1, plan.replicas)
    if samples:
        driver.extra[f"the driver's {samples} results"] = samples * (RESULT_BYTES + result)
    if ray_node:
        driver.extra["Ray"] = RAY_NODE_BYTES
    grid = f"{plan.rows}x{plan.cols}" + (f" x {plan.replicas} replicas" if plan.replicas > 1 else "")
    return MemoryNeed(grid, backend, out)


def cells_only(rows: int, cols: int, replicas: int, backend: str, ray_node: bool = False) -> MemoryNeed:
    """A lower bound known before the model is resolved: each cell's measured base only (no weights,
    no channel slots), all on this machine, and Ray's own processes (``ray_node``)."""
    cells = {(r, i, j): CELL_BASE_BYTES[backend] for r in range(replicas) for i in range(rows) for j in range(cols)}
    node = NodeNeed(cells, {"Ray": RAY_NODE_BYTES} if ray_node else {})
    grid = f"{rows}x{cols}" + (f" x {replicas} replicas" if replicas > 1 else "")
    return MemoryNeed(grid, backend, {"local": node})


def _gb(n: float) -> str:
    return f"{n / GB:.1f} GB" if n >= GB else f"{n / GB:.2f} GB"


def describe(n: NodeNeed) -> str:
    """``'120 cells (0.22 GB each) and Ray (0.45 GB)'``."""
    sizes = sorted(n.cells.values())
    each = (f"{sizes[0] / GB:.2f} GB" if sizes[-1] - sizes[0] < 0.005 * GB
            else f"{sizes[0] / GB:.2f}-{sizes[-1] / GB:.2f} GB") if sizes else ""
    parts = [f"{len(sizes)} cells ({each} each)"] if sizes else []
    parts += [f"{name} ({_gb(v)})" for name, v in n.extra.items() if v >= 0.005 * GB]
    return " and ".join(parts) if parts else "nothing"


def where(node: str, driver_node: str, address: Optional[str] = None) -> str:
    """How a message names a node: 'this node', or 'node <address>'."""
    if node in ("local", driver_node):
        return "this node"
    return f"node {address or node[:12]}"


def check(m: MemoryNeed, available: Mapping[str, int], driver_node: str = "local",
          addresses: Optional[Mapping[str, str]] = None) -> None:
    """ValueError (one line) for the first node whose need exceeds what it has ``available``
    (nodes missing from ``available`` are not checked)."""
    for node, n in m.nodes.items():
        have = available.get(node)
        if have is None or n.total <= have:
            continue
        name = where(node, driver_node, (addresses or {}).get(node))
        on = "" if name == "this node" else f" on {name}"
        raise ValueError(f"grid {m.grid} needs about {_gb(n.total)}{on} for {describe(n)}, {name} has {_gb(have)} "
                         "available; fewer cells or replicas, or --no-memory-check to start it anyway")


def lines(m: MemoryNeed, available: Optional[Mapping[str, int]] = None, driver_node: str = "local") -> list[str]:
    """What ``bidl-plan`` prints: per node the need, what it has, whether it fits."""
    base = CELL_BASE_BYTES[m.backend] / GB
    note = "" if m.backend in ("cpu", "emulated") else ", not measured: the cpu figure"
    out = [f"memory, estimated: {base:.2f} GB per {m.backend} cell (measured{note}: "
           f"bidl_runtime.plan.admission) + its weights and channel slots"]
    for node, n in m.nodes.items():
        name = where(node, driver_node)
        have = (available or {}).get(node)
        fits = "" if have is None else (f"; {name} has {_gb(have)} available: "
                                        + ("fits" if n.total <= have else "does NOT fit (bidl-run refuses it "
                                                                           "without --no-memory-check)"))
        out.append(f"  {name}: about {_gb(n.total)} for {describe(n)}{fits}")
    return out
