"""The grid plan: every cell (what it runs, over which time steps, on which device and node) and
every edge between them (what travels, from where to where, through which transport).

Rows are time slices (``numpy.array_split`` of T over R rows: T=10 over 3 rows gives 4, 3, 3),
columns are model segments. Cell (g, s) runs segment s over the steps of slice g, starting from
the state of cell (g-1, s). ``replicas`` independent copies of the grid are fed round-robin.
Edges, per replica:

- ``input``: driver -> (g, 0), slice g of the sample;
- ``activation``: (g, s-1) -> (g, s), the per-step outputs of segment s-1 over slice g (a layout of
  one or more tensors: with a cut inside a residual block, the main activation and the block's skip,
  see :mod:`bidl_models.cuts`);
- ``state``: (g-1, s) -> (g, s), segment s's membrane potentials and accumulator after slice g-1;
- ``result``: (R-1, C-1) -> driver, the last step's output of the last segment.

Hosts: ``node_hosts`` maps each node to its host's address (several Ray nodes may share a host); an
edge whose ends are on different hosts crosses the network, and :meth:`GridPlan.crossing` sums those
bytes per sample (:mod:`bidl_runtime.plan.hosts` places cells to keep it small). ``device_nodes`` and
``standby`` are the cluster's devices (all of them, used or not) and the ones declared standby: a
lost host's cells are re-placed on those that are free.

A plan is made by :func:`bidl_runtime.plan.place.place`; cells read their edges from it;
``python -m bidl_runtime.plan`` prints one. Pure data: no torch, no Ray (a plan is printed, pickled to
the cells and read back without them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

from bidl_models.specs import TensorSpec
from compile.program import Program

CellKey = tuple[int, int, int]          # (replica, row, col)
EDGE_KINDS = ("input", "activation", "state", "result")


def cell_name(replica: int, row: int, col: int, device: int) -> str:
    """``cell[g,s]@dev<id>`` (``r<k>.`` in front for replicas after the first): the actor's name."""
    return f"{f'r{replica}.' if replica else ''}cell[{row},{col}]@dev{device}"


@dataclass(frozen=True)
class CellPlan:
    """One cell: replica k, row g (time slice), column s (segment), its device, node and program."""

    replica: int
    row: int
    col: int
    device: int
    node: str
    t0: int
    chunk_len: int
    split: tuple[int | str, int | str]     # block indices or cuts inside blocks (bidl_models.cuts)
    program: Optional[Program] = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return cell_name(self.replica, self.row, self.col, self.device)

    @property
    def key(self) -> CellKey:
        return (self.replica, self.row, self.col)


@dataclass(frozen=True)
class Edge:
    """One channel of the grid. ``src``/``dst`` are cell keys, None for the driver; ``layout`` the
    tensors of one message; ``name`` the channel's name (the receiver's end)."""

    kind: str
    replica: int
    src: Optional[CellKey]
    dst: Optional[CellKey]
    transport: str
    layout: tuple[TensorSpec, ...]
    name: str

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.layout)


@dataclass(frozen=True)
class GridPlan:
    """Rows x cols cells per replica, their devices, nodes and programs, and the edges between them."""

    config: str
    T: int
    rows: int
    cols: int
    replicas: int
    slices: tuple[int, ...]
    splits: tuple[tuple[int | str, int | str], ...]
    devices: tuple[tuple[tuple[int, ...], ...], ...]   # [replica][row][col] -> device id
    cells: tuple[CellPlan, ...] = field(repr=False)
    edges: tuple[Edge, ...] = field(repr=False)
    split_source: str = "config"
    driver_node: str = "local"
    node_hosts: tuple[tuple[str, str], ...] = ()     # node -> its host's address (absent: the node is its host)
    device_nodes: tuple[str, ...] = ()               # the cluster's node of every device id, used or not
    standby: tuple[int, ...] = ()                    # device ids declared standby (idle until a host is lost)

    def cell(self, replica: int, row: int, col: int) -> CellPlan:
        return self.cells[(replica * self.rows + row) * self.cols + col]

    def host(self, node: str) -> str:
        """The host (address) of ``node``."""
        return dict(self.node_hosts).get(node, node)

    def end_host(self, key: Optional[CellKey]) -> str:
        """The host of an edge's end (None: the driver's)."""
        return self.host(self.driver_node if key is None else self.cell(*key).node)

    def crosses(self, e: Edge) -> bool:
        """Whether edge ``e`` joins two hosts."""
        return self.end_host(e.src) != self.end_host(e.dst)

    @property
    def batch(self) -> int:
        """Samples per message (the input edges' batch dimension)."""
        return int(self.outputs(None)[0].layout[0].shape[1]) if self.outputs(None) else 1

    def crossing(self) -> dict[str, int]:
        """Bytes per sample over edges between hosts, by edge kind (and ``total``)."""
        out = {k: 0 for k in EDGE_KINDS}
        for e in self.edges:
            if self.crosses(e):
                out[e.kind] += e.nbytes // self.batch
        out["total"] = sum(out.values())
        return out

    @property
    def chunk_lens(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.slices)))

    def inputs(self, key: Optional[CellKey]) -> tuple[Edge, ...]:
        """Edges into cell ``key`` (None: into the driver, the results)."""
        return tuple(e for e in self.edges if e.dst == key)

    def outputs(self, key: Optional[CellKey]) -> tuple[Edge, ...]:
        """Edges out of cell ``key`` (None: out of the driver, the inputs)."""
        return tuple(e for e in self.edges if e.src == key)

    def edge(self, name: str) -> Edge:
        for e in self.edges:
            if e.name == name:
                return e
        raise KeyError(f"no edge {name!r}; edges: {[e.name for e in self.edges]}")

    def _end(self, key: Optional[CellKey]) -> str:
        return "driver" if key is None else self.cell(*key).name

    def table(self, memory: Optional[Mapping[CellKey, int]] = None) -> str:
        """A readable table of the cells (with ``memory``: each cell's estimated bytes), then one of the edges."""
        lines = [f"plan for {self.config}: T={self.T}, grid {self.rows}x{self.cols} "
                 f"(rows = time slices {list(self.slices)}, columns = segments "
                 f"{[list(s) for s in self.splits]} from {self.split_source}), replicas={self.replicas}"]
        mem = f" {'memory':>8}" if memory is not None else ""
        hosts = len({self.host(c.node) for c in self.cells} | {self.host(self.driver_node)}) > 1
        hw = max([len(self.host(c.node)) for c in self.cells] + [4])
        head = (f"{'cell':<24} {'replica':>7} {'row':>4} {'col':>4} {'device':>6} {'steps':>9} {'blocks':>9}{mem}  "
                + (f"{'host':<{hw}}  " if self.node_hosts else "") + "node")
        lines += [head, "-" * len(head)]
        for c in self.cells:
            steps = f"{c.t0}..{c.t0 + c.chunk_len - 1}"
            inner = not all(isinstance(v, int) for v in c.split)
            blocks = f"[{c.split[0]}, {c.split[1]})" if inner else f"{c.split[0]}..{c.split[1] - 1}"
            mem = f" {memory[c.key] / 1e9:>5.2f} GB" if memory is not None else ""
            lines.append(f"{c.name:<24} {c.replica:>7} {c.row:>4} {c.col:>4} {c.device:>6} {steps:>9} "
                         f"{blocks:>9}{mem}  " + (f"{self.host(c.node):<{hw}}  " if self.node_hosts else "")
                         + (c.node if not self.node_hosts or self.host(c.node) != c.node else ""))
        aw = max([len(f"{self.end_host(e.src)}->{self.end_host(e.dst)}") for e in self.edges] + [5])
        head = (f"{'edge':<28} {'kind':<10} {'from':<22} {'to':<22} {'via':<4} {'bytes/msg':>10} {'bytes/sample':>12} "
                + (f"{'hosts':<{aw}} " if hosts else "") + " tensors")
        lines += ["", head, "-" * len(head)]
        for e in self.edges:
            tensors = ", ".join(f"{t.name}{list(t.shape)}" + ("" if t.dtype == "float32" else f":{t.dtype}")
                                for t in e.layout)
            if len(tensors) > 60:
                tensors = (f"{len(e.layout)} tensors" if e.kind == "state"   # an activation: its names
                           else f"{len(e.layout)} tensors: " + ", ".join(t.name for t in e.layout))
            across = (f"{(f'{self.end_host(e.src)}->{self.end_host(e.dst)}' if self.crosses(e) else '-'):<{aw}} "
                      if hosts else "")
            lines.append(f"{e.name:<28} {e.kind:<10} {self._end(e.src):<22} {self._end(e.dst):<22} "
                         f"{e.transport:<4} {e.nbytes:>10,} {e.nbytes // self.batch:>12,} {across} {tensors}")
        if hosts:
            x = self.crossing()
            n = sum(1 for e in self.edges if self.crosses(e))
            per = {}
            for c in self.cells:
                per.setdefault(self.host(c.node), []).append(c)
            lines += ["", "hosts: " + ", ".join(f"{h} {len(cs)} cell(s)" for h, cs in per.items())
                      + f"; driver on {self.host(self.driver_node)}",
                      f"across hosts: {n} edge(s), {x['total']:,} bytes per sample ("
                      + ", ".join(f"{k} {x[k]:,}" for k in EDGE_KINDS if x[k]) + ")"]
        return "\n".join(lines)
