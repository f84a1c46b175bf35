"""The grid plan: which cell runs which segment over which time steps, on which device and node.

Rows are time slices (``numpy.array_split`` of T over R rows: T=10 over 3 rows gives 4, 3, 3),
columns are model segments. Cell (g, s) runs segment s over the steps of slice g, starting from
the state of cell (g-1, s). ``replicas`` independent copies of the grid are fed round-robin.

``python -m bidl_runtime.plan --config CFG [--grid RxC] [--replicas K]`` prints the plan as a table.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from bidl_models.config import Config, build_segments, load_config, validate_lynxi_devices
from bidl_models.grid import parse_grid, time_slices
from bidl_models.segments import auto_split, validate_splits


@dataclass(frozen=True)
class CellPlan:
    """One cell: replica k, row g (time slice), column s (segment)."""

    replica: int
    row: int
    col: int
    device: int
    node: str
    t0: int
    chunk_len: int
    split: tuple[int, int]

    @property
    def name(self) -> str:
        pre = f"r{self.replica}." if self.replica else ""
        return f"{pre}cell[{self.row},{self.col}]@dev{self.device}"

    @property
    def key(self) -> tuple[int, int, int]:
        return (self.replica, self.row, self.col)


@dataclass(frozen=True)
class GridPlan:
    """Rows x cols cells per replica, their devices and nodes, and the model's time/segment cuts."""

    config: str
    T: int
    rows: int
    cols: int
    replicas: int
    slices: tuple[int, ...]
    splits: tuple[tuple[int, int], ...]
    devices: tuple[tuple[tuple[int, ...], ...], ...]   # [replica][row][col] -> device id
    cells: tuple[CellPlan, ...] = field(repr=False)
    split_source: str = "config"

    def cell(self, replica: int, row: int, col: int) -> CellPlan:
        return self.cells[(replica * self.rows + row) * self.cols + col]

    @property
    def chunk_lens(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.slices)))

    def table(self) -> str:
        """A readable table of the plan."""
        lines = [f"plan for {self.config}: T={self.T}, grid {self.rows}x{self.cols} "
                 f"(rows = time slices {list(self.slices)}, columns = segments "
                 f"{[list(s) for s in self.splits]} from {self.split_source}), replicas={self.replicas}"]
        head = f"{'cell':<24} {'replica':>7} {'row':>4} {'col':>4} {'device':>6} {'steps':>9} {'blocks':>9}  node"
        lines += [head, "-" * len(head)]
        for c in self.cells:
            steps = f"{c.t0}..{c.t0 + c.chunk_len - 1}"
            blocks = f"{c.split[0]}..{c.split[1] - 1}"
            lines.append(f"{c.name:<24} {c.replica:>7} {c.row:>4} {c.col:>4} {c.device:>6} {steps:>9} "
                         f"{blocks:>9}  {c.node}")
        return "\n".join(lines)


def model_timestep(cfg: Mapping) -> int:
    """T of the config's model (``model.backbone.timestep``, or ``model_0``'s)."""
    model = cfg.get("model_0", cfg.get("model"))
    try:
        return int(model["backbone"]["timestep"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("config: model.backbone.timestep is missing; expected the number of time steps T") from None


def config_input_shape(cfg: Mapping) -> Optional[tuple[int, ...]]:
    """Per-step model input ``(C, H, W)`` from ``models_compile_inputshape[0]`` (None if absent)."""
    shapes = cfg.get("models_compile_inputshape")
    if not shapes:
        return None
    first = shapes[0]
    if not isinstance(first, (list, tuple)) or len(first) < 2:
        raise ValueError(f"models_compile_inputshape[0]={first!r}: expected [1, C, H, W]")
    return tuple(int(d) for d in first[1:])


def make_plan(cfg: Config, grid: Optional[tuple[int, int]] = None, replicas: int = 1,
              device_nodes: Optional[Sequence[str]] = None, model_in_shape: Optional[Sequence[int]] = None,
              cost: str = "flops") -> GridPlan:
    """Plan the grid from ``grid`` (RxC) or the config's ``lynxi_devices`` plus its segments.

    ``device_nodes[d]`` is the node of device id d (None: one local node with as many devices as
    needed). One model in the config is cut automatically into C near-equal-cost segments; with
    ``model_0..n`` the number of segments must equal C.
    """
    if not isinstance(replicas, int) or replicas < 1:
        raise ValueError(f"--replicas {replicas!r}: expected a positive int")
    T = model_timestep(cfg)
    model_in_shape = model_in_shape or config_input_shape(cfg)
    if grid is not None:
        rows, cols = grid
        base = [[g * cols + s for s in range(cols)] for g in range(rows)]
    elif cfg.get("lynxi_devices") is not None:
        base = validate_lynxi_devices(cfg["lynxi_devices"])
        rows, cols = len(base), len(base[0])
    else:
        rows, cols = 1, 1
        base = [[0]]
    slices = time_slices(T, rows)
    n_dev = rows * cols
    grids = [[[d + k * (max(max(r) for r in base) + 1) for d in row] for row in base] for k in range(replicas)]

    segs = build_segments(cfg, model_in_shape=model_in_shape)
    if len(segs) > 1:
        if len(segs) != cols:
            raise ValueError(f"config has {len(segs)} segment models (model_0..model_{len(segs) - 1}) but the "
                             f"grid has {cols} columns; expected one column per segment")
        splits = [seg.split for seg in segs]
        source = "config model_0..n"
    else:
        net = segs[0].backbone
        if cols > net.n_blocks:
            raise ValueError(f"grid has {cols} segment columns but {type(net).__name__} has only "
                             f"{net.n_blocks} blocks to split")
        splits = auto_split(net, cols, model_in_shape, cost) if cols > 1 else [(0, net.n_blocks)]
        source = f"auto split ({cost})" if cols > 1 else "whole model"
    validate_splits(splits, segs[0].n_blocks)

    used = sorted(d for g in grids for row in g for d in row)
    if device_nodes is None:
        device_nodes = ["local"] * (used[-1] + 1)
    missing = [d for d in used if d >= len(device_nodes)]
    if missing:
        raise ValueError(f"the plan needs device ids {missing} but the cluster has {len(device_nodes)} "
                         f"devices (ids 0..{len(device_nodes) - 1}); grid {rows}x{cols} x {replicas} "
                         f"replica(s) needs {n_dev * replicas}")
    cells = []
    t0s = [sum(slices[:g]) for g in range(rows)]
    for k in range(replicas):
        for g in range(rows):
            for s in range(cols):
                d = grids[k][g][s]
                cells.append(CellPlan(k, g, s, d, device_nodes[d], t0s[g], slices[g], tuple(splits[s])))
    return GridPlan(cfg.name, T, rows, cols, replicas, tuple(slices), tuple(tuple(s) for s in splits),
                    tuple(tuple(tuple(r) for r in g) for g in grids), tuple(cells), source)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bidl_runtime.plan", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None, help="config name or path (default: the runtime's default)")
    ap.add_argument("--grid", default=None, help="RxC: rows = time slices, columns = segments")
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--cfg-options", nargs="*", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    from .defaults import default_config
    try:
        cfg = load_config(args.config or default_config(), args.cfg_options)
        plan = make_plan(cfg, parse_grid(args.grid) if args.grid else None, args.replicas)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(plan.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
