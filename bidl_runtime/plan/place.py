"""Placing programs on devices: the stage that turns a program set into a :class:`GridPlan`.

    plan = place(artifacts, Cluster.local(6), GridLayout.resolve(cfg, "3x2"))

Every cell gets its device's node and the program of its (segment, chunk length); every edge its
transport. Pure: no Ray, no torch (the cluster's device map comes from
:func:`bidl_runtime.cluster.nodes.device_map`, and programs that cells on other nodes run are shipped
there afterwards by :func:`bidl_runtime.cluster.ship.ship_programs`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from bidl_models.slicing import GridLayout
from bidl_models.specs import TensorSpec
from compile.program import ProgramSet

from .grid_plan import CellPlan, Edge, GridPlan
from .hosts import HostMap

LOCAL = "local"


@dataclass(frozen=True)
class Cluster:
    """Where devices are: ``device_nodes[d]`` is the node of device id d, ``driver_node`` the
    driver's. ``connected``: a Ray cluster this process is connected to (programs get shipped).
    ``node_hosts``: each node's host address (a node absent from it is its own host); ``standby``:
    device ids declared standby (see :mod:`bidl_runtime.plan.hosts`)."""

    device_nodes: tuple[str, ...]
    driver_node: str = LOCAL
    connected: bool = False
    node_hosts: tuple[tuple[str, str], ...] = ()
    standby: tuple[int, ...] = ()

    @classmethod
    def local(cls, devices: int) -> "Cluster":
        """One node, ``devices`` devices, no Ray (plans for printing and tests)."""
        return cls((LOCAL,) * devices)

    @classmethod
    def of_hosts(cls, hosts: HostMap) -> "Cluster":
        """The devices of a host map, each host one node named by its address, the driver on the
        first host, no Ray (``bidl-plan --hosts``)."""
        return cls(hosts.device_hosts, hosts.addresses[0], False, tuple((a, a) for a in hosts.addresses),
                   hosts.standby_ids)

    def host(self, node: str) -> str:
        """The host (address) of ``node``."""
        return dict(self.node_hosts).get(node, node)


def edge_transport(transport: str, backend: str, a: str, b: str, gpu_ends: bool = False) -> str:
    """The transport of an edge between nodes ``a`` and ``b`` (``gpu_ends``: both ends are cells, whose
    tensors live on their device). ``auto``: shared memory within a node, tcp across nodes; with
    ``backend='cuda'``, GPU -> GPU (``cuda``, CUDA IPC) between two cells of one node; ``cuda`` forces
    that for cell-to-cell edges (the driver's ends stay host memory)."""
    if gpu_ends and ((backend == "cuda" and transport == "auto") or transport == "cuda"):
        return "cuda" if a == b else "tcp"
    if transport in ("auto", "cuda"):
        return "shm" if a == b else "tcp"
    return transport


def place(programs: ProgramSet, cluster: Cluster, layout: GridLayout, *, transport: str = "auto",
          backend: str = "cpu") -> GridPlan:
    """The plan of ``layout`` running ``programs`` (compiled artifacts or an emulated set) on
    ``cluster``; ``transport`` and ``backend`` as validated by :class:`~bidl_runtime.runtime_config.RuntimeConfig`
    (see :func:`edge_transport`). ValueError if they do not fit."""
    slices, splits = tuple(programs.slices), tuple(tuple(s) for s in programs.splits)
    if layout.rows != len(slices) or layout.cols != len(splits):
        raise ValueError(f"grid {layout.rows}x{layout.cols} does not fit artifacts for {len(slices)} time slice(s) "
                         f"x {len(splits)} segment(s); compile for this grid")
    used = sorted({d for g in layout.devices for row in g for d in row})
    missing = [d for d in used if d >= len(cluster.device_nodes)]
    spare = sorted(set(used) & set(cluster.standby))
    if spare:
        raise ValueError(f"the plan puts cells on device ids {spare}, which are declared standby (idle until a "
                         "host is lost): give the grid active devices")
    if missing:
        n = len(cluster.device_nodes)
        raise ValueError(f"the plan needs device ids {missing} but the cluster has {n} devices "
                         f"(ids 0..{n - 1}); grid {layout.rows}x{layout.cols} x {layout.replicas} replica(s) "
                         f"needs {layout.n_cells}")
    progs = programs.programs()
    t0s = [sum(slices[:g]) for g in range(layout.rows)]
    cells: list[CellPlan] = []
    for k in range(layout.replicas):
        for g in range(layout.rows):
            for s in range(layout.cols):
                d = layout.devices[k][g][s]
                cells.append(CellPlan(k, g, s, d, cluster.device_nodes[d], t0s[g], slices[g], splits[s],
                                      progs[(s, slices[g])]))
    by_key = {c.key: c for c in cells}
    driver = cluster.driver_node

    def via(a: str, b: str, gpu_ends: bool = False) -> str:
        return edge_transport(transport, backend, a, b, gpu_ends)

    edges: list[Edge] = []
    for c in cells:
        sig = c.program.signature
        if c.col == 0:
            edges.append(Edge("input", c.replica, None, c.key, via(driver, c.node), (sig.input,), f"{c.name}:x"))
        else:
            src = by_key[(c.replica, c.row, c.col - 1)]
            edges.append(Edge("activation", c.replica, src.key, c.key, via(src.node, c.node, True), sig.inputs,
                              f"{c.name}:x"))
        if c.row > 0:
            src = by_key[(c.replica, c.row - 1, c.col)]
            edges.append(Edge("state", c.replica, src.key, c.key, via(src.node, c.node, True), sig.state,
                              f"{c.name}:state"))
        if c.row == layout.rows - 1 and c.col == layout.cols - 1:
            y = TensorSpec("y", tuple(sig.output.shape[1:]), sig.output.dtype)
            edges.append(Edge("result", c.replica, c.key, None, via(c.node, driver), (y,),
                              f"driver:result[{c.replica}]"))
    return GridPlan(programs.net, programs.T, layout.rows, layout.cols, layout.replicas, slices, splits,
                    layout.devices, tuple(cells), tuple(edges), programs.split_source or "config", driver,
                    cluster.node_hosts, cluster.device_nodes, cluster.standby)


def rebind_driver(plan: GridPlan, node: str, transport: str = "auto") -> GridPlan:
    """The same plan driven from another node (a process that attaches to a kept-alive grid):
    its input and result edges get the transport for that node."""
    edges = []
    for e in plan.edges:
        if e.kind == "input":
            e = replace(e, transport=edge_transport(transport, "cpu", node, plan.cell(*e.dst).node))
        elif e.kind == "result":
            e = replace(e, transport=edge_transport(transport, "cpu", plan.cell(*e.src).node, node))
        edges.append(e)
    return replace(plan, edges=tuple(edges), driver_node=node)


@dataclass(frozen=True)
class _PlanPrograms:
    """A plan's programs as a :class:`~compile.program.ProgramSet` (each from its driver-side origin)."""

    plan: GridPlan

    @property
    def net(self) -> str:
        return self.plan.config

    @property
    def T(self) -> int:
        return self.plan.T

    @property
    def slices(self) -> tuple[int, ...]:
        return self.plan.slices

    @property
    def splits(self) -> tuple:
        return self.plan.splits

    @property
    def split_source(self) -> str:
        return self.plan.split_source

    @property
    def batch(self) -> int:
        return self.plan.batch

    def programs(self) -> dict:
        out = {}
        for c in self.plan.cells:
            p = c.program
            out.setdefault((c.col, c.chunk_len), replace(p, path=p.origin or p.path, origin=None))
        return out


def move_cells(plan: GridPlan, moves: dict, transport: str = "auto", backend: str = "cpu") -> GridPlan:
    """``plan`` with cells moved to other devices (``{cell key: device id}``, after their host was lost):
    moved cells get their device's node and their program's driver-side directory (ship it next: the
    :func:`~bidl_runtime.cluster.ship.ship_programs` of those cells), every edge its transport (and, with
    a moved end, its new name); the others keep their programs. The devices taken stop being standby."""
    devices = tuple(tuple(tuple(moves.get((k, g, s), plan.devices[k][g][s]) for s in range(plan.cols))
                          for g in range(plan.rows)) for k in range(plan.replicas))
    taken = set(moves.values())
    cluster = Cluster(plan.device_nodes, plan.driver_node, True, plan.node_hosts,
                      tuple(d for d in plan.standby if d not in taken))
    layout = GridLayout(plan.rows, plan.cols, plan.replicas, devices, "re-placed")
    new = place(_PlanPrograms(plan), cluster, layout, transport=transport, backend=backend)
    old = {c.key: c for c in plan.cells}
    return replace(new, cells=tuple(c if c.key in moves else replace(c, program=old[c.key].program)
                                    for c in new.cells), split_source=plan.split_source)
