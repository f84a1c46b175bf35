"""Grid shape and time slicing, shared by the compiler and the runtime.

A grid is R rows (time slices) by C columns (model segments). T time steps are cut over the rows
with ``numpy.array_split`` semantics: the first ``T % R`` rows get one step more (T=10, R=3: 4, 3, 3).
"""
from __future__ import annotations

from typing import Sequence


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
