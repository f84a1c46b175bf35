"""The grid's shape: rows (time slices) x columns (model segments) x replicas, and device ids.

A grid is R rows (time slices) by C columns (model segments). T time steps are cut over the rows
with ``numpy.array_split`` semantics: the first ``T % R`` rows get one step more (T=10, R=3: 4, 3, 3).
``--grid RxC`` numbers devices row by row (``g * C + s``); a config's ``lynxi_devices`` gives them
explicitly; replica k gets the same layout shifted past the devices of replicas 0..k-1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence


def parse_grid(grid: str | Sequence[int]) -> tuple[int, int]:
    """``'3x2'`` or ``(3, 2)`` -> (rows = time slices, cols = segments)."""
    if isinstance(grid, str):
        parts = grid.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"grid={grid!r}: expected RxC with two positive ints, e.g. 3x2 (rows = time slices, "
                             "columns = model segments)")
        r, c = (int(p) for p in parts)
    else:
        if len(grid) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in grid):
            raise ValueError(f"grid={grid!r}: expected (rows, cols) with two positive ints")
        r, c = grid
    if r < 1 or c < 1:
        raise ValueError(f"grid={grid!r}: expected RxC with positive ints (rows and cols >= 1)")
    return r, c


def time_slices(T: int, rows: int) -> list[int]:
    """Slice length of every row: ``numpy.array_split`` of T steps over ``rows``."""
    if not 1 <= rows <= T:
        raise ValueError(f"grid has {rows} time-slice rows but the model has T={T} time steps; "
                         "expected 1 <= rows <= T (every row needs at least one step)")
    q, r = divmod(T, rows)
    return [q + 1] * r + [q] * (rows - r)


@dataclass(frozen=True)
class GridLayout:
    """Rows x cols cells per replica and the device id of each: ``devices[replica][row][col]``."""

    rows: int
    cols: int
    replicas: int
    devices: tuple[tuple[tuple[int, ...], ...], ...]
    source: str = "--grid"

    @classmethod
    def resolve(cls, cfg: Optional[Mapping] = None, grid: str | Sequence[int] | None = None,
                replicas: int = 1) -> "GridLayout":
        """From ``grid`` ('RxC' or (R, C)), else the config's ``lynxi_devices``, else 1x1."""
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
            raise ValueError(f"--replicas {replicas!r}: expected a positive int")
        if grid is not None:
            rows, cols = parse_grid(grid)
            base = [[g * cols + s for s in range(cols)] for g in range(rows)]
            source = "--grid"
        elif cfg is not None and cfg.get("lynxi_devices") is not None:
            from bidl_models.config import validate_lynxi_devices
            base = validate_lynxi_devices(cfg["lynxi_devices"])
            rows, cols = len(base), len(base[0])
            source = "lynxi_devices"
        else:
            rows, cols, base, source = 1, 1, [[0]], "default 1x1"
        step = max(max(r) for r in base) + 1
        devices = tuple(tuple(tuple(d + k * step for d in row) for row in base) for k in range(replicas))
        return cls(rows, cols, replicas, devices, source)

    @property
    def n_cells(self) -> int:
        return self.rows * self.cols * self.replicas

    @property
    def max_device(self) -> int:
        return max(d for g in self.devices for row in g for d in row)
