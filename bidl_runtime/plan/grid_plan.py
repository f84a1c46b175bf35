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

    def cell(self, replica: int, row: int, col: int) -> CellPlan:
        return self.cells[(replica * self.rows + row) * self.cols + col]

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
        head = f"{'cell':<24} {'replica':>7} {'row':>4} {'col':>4} {'device':>6} {'steps':>9} {'blocks':>9}{mem}  node"
        lines += [head, "-" * len(head)]
        for c in self.cells:
            steps = f"{c.t0}..{c.t0 + c.chunk_len - 1}"
            inner = not all(isinstance(v, int) for v in c.split)
            blocks = f"[{c.split[0]}, {c.split[1]})" if inner else f"{c.split[0]}..{c.split[1] - 1}"
            mem = f" {memory[c.key] / 1e9:>5.2f} GB" if memory is not None else ""
            lines.append(f"{c.name:<24} {c.replica:>7} {c.row:>4} {c.col:>4} {c.device:>6} {steps:>9} "
                         f"{blocks:>9}{mem}  {c.node}")
        head = f"{'edge':<28} {'kind':<10} {'from':<22} {'to':<22} {'via':<4} {'bytes/msg':>10}  tensors"
        lines += ["", head, "-" * len(head)]
        for e in self.edges:
            tensors = ", ".join(f"{t.name}{list(t.shape)}" + ("" if t.dtype == "float32" else f":{t.dtype}")
                                for t in e.layout)
            if len(tensors) > 60:
                tensors = (f"{len(e.layout)} tensors" if e.kind == "state"   # an activation: its names
                           else f"{len(e.layout)} tensors: " + ", ".join(t.name for t in e.layout))
            lines.append(f"{e.name:<28} {e.kind:<10} {self._end(e.src):<22} {self._end(e.dst):<22} "
                         f"{e.transport:<4} {e.nbytes:>10,}  {tensors}")
        return "\n".join(lines)
