"""Placing artifacts on a cluster: the stage that turns an artifact set into a :class:`GridPlan`.

    plan = place(arts, Cluster.connect(), GridLayout.resolve(cfg, "3x2"))

Every cell gets its device's node and the program of its (segment, chunk length); every edge its
transport (``auto``: shared memory within a node, tcp across nodes). With a connected cluster,
the artifacts of cells on other nodes than the driver's are shipped there first (through Ray,
checked by hash on arrival, see :mod:`bidl_runtime.cluster.ship`), and those cells get the path on their
node; cells on the driver's node get absolute paths. Nothing depends on a working directory.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

from bidl_models.specs import TensorSpec

from bidl_runtime.cell.contexts import ArtifactSource
from .emulated import EmulatedSet, chunk_spec, emulate
from bidl_models.slicing import GridLayout, time_slices
from .grid_plan import CellPlan, Edge, GridPlan, Program

LOCAL = "local"


@dataclass(frozen=True)
class Cluster:
    """Where devices are: ``device_nodes[d]`` is the node of device id d, ``driver_node`` the
    driver's. ``connected``: a Ray cluster this process is connected to (artifacts get shipped)."""

    device_nodes: tuple[str, ...]
    driver_node: str = LOCAL
    connected: bool = False

    @classmethod
    def local(cls, devices: int) -> "Cluster":
        """One node, ``devices`` devices, no Ray (plans for printing and tests)."""
        return cls((LOCAL,) * devices)

    @classmethod
    def connect(cls) -> "Cluster":
        """The connected Ray cluster: alive nodes in order (the driver's first), each contributing
        its ``bidl_device`` resource count of device ids."""
        import ray
        here = ray.get_runtime_context().get_node_id()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        nodes.sort(key=lambda n: (n["NodeID"] != here, n["NodeID"]))
        out: list[str] = []
        for n in nodes:
            out += [n["NodeID"]] * int(n.get("Resources", {}).get("bidl_device", 0))
        return cls(tuple(out), here, True)


def place(artifacts, cluster: Cluster, layout: GridLayout, *, transport: str = "auto",
          backend: str = "cpu") -> GridPlan:
    """The plan of ``layout`` running ``artifacts`` (a ``compile.ArtifactSet`` or an
    :class:`~bidl_runtime.plan.emulated.EmulatedSet`) on ``cluster``. ValueError if they do not fit.

    Per edge (``auto``): shared memory within a node, tcp across nodes; with ``backend='cuda'``, an
    edge between two cells of one node goes GPU -> GPU (``cuda``, CUDA IPC), one across nodes through
    pinned host copies over tcp; the driver's edges are host memory (shm or tcp). ``transport='cuda'``
    forces that choice (with ``backend='compiled'`` the cuda edges keep their slots in host memory)."""
    slices, splits = tuple(artifacts.slices), tuple(tuple(s) for s in artifacts.splits)
    if layout.rows != len(slices) or layout.cols != len(splits):
        raise ValueError(f"grid {layout.rows}x{layout.cols} does not fit artifacts for {len(slices)} time slice(s) "
                         f"x {len(splits)} segment(s); compile for this grid")
    if transport not in ("auto", "shm", "tcp", "cuda"):
        raise ValueError(f"--transport {transport!r}: expected auto, shm, tcp or cuda")
    if transport == "cuda" and backend not in ("cuda", "compiled"):
        raise ValueError(f"--transport cuda moves GPU memory between compiled cells: it needs --backend cuda "
                         f"(or compiled, its CPU stand-in: slots in host memory), got {backend!r}")
    used = sorted({d for g in layout.devices for row in g for d in row})
    missing = [d for d in used if d >= len(cluster.device_nodes)]
    if missing:
        n = len(cluster.device_nodes)
        raise ValueError(f"the plan needs device ids {missing} but the cluster has {n} devices "
                         f"(ids 0..{n - 1}); grid {layout.rows}x{layout.cols} x {layout.replicas} replica(s) "
                         f"needs {layout.n_cells}")
    programs = _programs(artifacts)
    node_of = {d: cluster.device_nodes[d] for d in used}
    on_node = _ship(artifacts, programs, layout, node_of, cluster)

    t0s = [sum(slices[:g]) for g in range(layout.rows)]
    cells: list[CellPlan] = []
    for k in range(layout.replicas):
        for g in range(layout.rows):
            for s in range(layout.cols):
                d = layout.devices[k][g][s]
                node = node_of[d]
                prog = on_node.get((node, s, slices[g]), programs[(s, slices[g])])
                cells.append(CellPlan(k, g, s, d, node, t0s[g], slices[g], splits[s], prog))
    plan_cells = {c.key: c for c in cells}
    driver = cluster.driver_node

    def via(a: str, b: str, gpu_ends: bool = False) -> str:
        if gpu_ends and ((backend == "cuda" and transport == "auto") or transport == "cuda"):
            return "cuda" if a == b else "tcp"
        if transport == "cuda":
            return "shm" if a == b else "tcp"
        return transport if transport != "auto" else ("shm" if a == b else "tcp")

    edges: list[Edge] = []
    for c in cells:
        prog = c.program
        assert prog is not None
        if c.col == 0:
            edges.append(Edge("input", c.replica, None, c.key, via(driver, c.node), (prog.x,), f"{c.name}:x"))
        else:
            src = plan_cells[(c.replica, c.row, c.col - 1)]
            edges.append(Edge("activation", c.replica, src.key, c.key, via(src.node, c.node, True), prog.inputs,
                              f"{c.name}:x"))
        if c.row > 0:
            src = plan_cells[(c.replica, c.row - 1, c.col)]
            edges.append(Edge("state", c.replica, src.key, c.key, via(src.node, c.node, True), prog.state,
                              f"{c.name}:state"))
        if c.row == layout.rows - 1 and c.col == layout.cols - 1:
            y = TensorSpec("y", tuple(prog.y.shape[1:]), prog.y.dtype)
            edges.append(Edge("result", c.replica, c.key, None, via(c.node, driver), (y,),
                              f"driver:result[{c.replica}]"))
    return GridPlan(artifacts.net, artifacts.T, layout.rows, layout.cols, layout.replicas, slices, splits,
                    layout.devices, tuple(cells), tuple(edges), artifacts.split_source or "config", driver)


def rebind_driver(plan: GridPlan, node: str, transport: str = "auto") -> GridPlan:
    """The same plan driven from another node (a process that attaches to a kept-alive grid):
    its input and result edges get the transport for that node."""
    from dataclasses import replace

    def via(a: str, b: str) -> str:
        if transport == "cuda":     # the driver's ends are host memory
            return "shm" if a == b else "tcp"
        return transport if transport != "auto" else ("shm" if a == b else "tcp")
    edges = []
    for e in plan.edges:
        if e.kind == "input":
            e = replace(e, transport=via(node, plan.cell(*e.dst).node))
        elif e.kind == "result":
            e = replace(e, transport=via(plan.cell(*e.src).node, node))
        edges.append(e)
    return replace(plan, edges=tuple(edges), driver_node=node)


def make_plan(cfg: Mapping, grid: str | Sequence[int] | None = None, replicas: int = 1,
              device_nodes: Optional[Sequence[str]] = None, transport: str = "auto") -> GridPlan:
    """A plan without Ray or compile (shapes from the model spec, no programs to run): what
    ``python -m bidl_runtime.plan`` prints. ``device_nodes`` as in :class:`Cluster` (default:
    one node with as many devices as the layout uses)."""
    from bidl_models.model_spec import ModelSpec
    layout = GridLayout.resolve(cfg, grid, replicas)
    spec = ModelSpec.from_config(cfg, columns=layout.cols)
    arts = emulate(spec, time_slices(spec.T, layout.rows))
    cluster = Cluster(tuple(device_nodes)) if device_nodes is not None else Cluster.local(layout.max_device + 1)
    return place(arts, cluster, layout, transport=transport)


# ------------------------------------------------------------------------------------ helpers


def _programs(artifacts) -> dict[tuple[int, int], Program]:
    """(segment, chunk length) -> Program, paths on the driver's node (absolute)."""
    if isinstance(artifacts, EmulatedSet):
        return {key: Program(src, src.input, src.output, tuple(src.state), tuple(src.carry_in), tuple(src.carry_out))
                for key, src in artifacts.sources.items()}
    out: dict[tuple[int, int], Program] = {}
    b = artifacts.batch
    for r in artifacts.records:
        man = r.manifest
        x = TensorSpec("x", (r.chunk_len,) + tuple(man.input.with_batch(b).shape), man.input_dtype)
        y = chunk_spec("y", man.output.with_batch(b), r.chunk_len)
        state = tuple(s.with_batch(b) for s in man.state)
        carry = [tuple(chunk_spec(c.name, c.with_batch(b), r.chunk_len) for c in cs) for cs in (man.carry_in, man.carry_out)]
        out[(r.segment, r.chunk_len)] = Program(ArtifactSource(str(Path(r.path).resolve())), x, y, state, *carry)
    return out


def _ship(artifacts, programs: dict[tuple[int, int], Program], layout: GridLayout, node_of: dict[int, str],
          cluster: Cluster) -> dict[tuple[str, int, int], Program]:
    """Ship compiled artifacts to the other nodes whose cells need them; (node, s, L) -> Program there."""
    if isinstance(artifacts, EmulatedSet) or not cluster.connected:
        return {}
    from dataclasses import replace

    from bidl_runtime.cluster.ship import Package, ship
    need: dict[str, set[tuple[int, int]]] = {}
    for k in range(layout.replicas):
        for g, L in enumerate(artifacts.slices):
            for s in range(layout.cols):
                node = node_of[layout.devices[k][g][s]]
                if node != cluster.driver_node:
                    need.setdefault(node, set()).add((s, L))
    out: dict[tuple[str, int, int], Program] = {}
    for node, keys in need.items():
        pkgs = {key: Package.of(programs[key].source.path) for key in sorted(keys)}
        paths, _ = ship(list(pkgs.values()), node)
        for key, pkg in pkgs.items():
            prog = programs[key]
            out[(node, *key)] = replace(prog, source=replace(prog.source, path=paths[pkg.digest]))
    return out
