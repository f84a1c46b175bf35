"""Spatio-temporal slicing: the grid's shape, rows (time slices) x columns (model segments) x replicas,
and its device ids.

A grid is R rows (time slices) by C columns (model segments). T time steps are cut over the rows
with ``numpy.array_split`` semantics: the first ``T % R`` rows get one step more (T=10, R=3: 4, 3, 3).
``--grid RxC`` numbers devices row by row (``g * C + s``); a config's ``lynxi_devices`` gives them
explicitly; replica k gets the same layout shifted past the devices of replicas 0..k-1. Without
either, the grid is one row by the config's segments (``model_0..n``; 1 for a whole model).

Pure data (no torch): compile and the runtime's planner both read it. Sizes are checked before
anything is allocated: at most :data:`MAX_CELLS` cells per grid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

MAX_CELLS = 4096      # cells of one grid (rows x cols x replicas): far above any machine's devices
MAX_DEVICE_IDS = 65536   # device ids 0..65535 (a node declares that many bidl_device resources at most)


def parse_grid(grid: str | Sequence[int]) -> tuple[int, int]:
    """``'3x2'`` or ``(3, 2)`` -> (rows = time slices, cols = segments)."""
    if isinstance(grid, str):
        parts = [p.strip() for p in grid.lower().split("x")]
        if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
            raise ValueError(f"grid={grid!r}: expected RxC with two positive ints, e.g. 3x2 (rows = time slices, "
                             "columns = model segments)")
        if any(len(p.lstrip("0")) > 9 for p in parts):   # read no huge number: far past MAX_CELLS anyway
            shown = grid if len(grid) <= 40 else f"{grid[:18]}...{grid[-18:]}"
            raise ValueError(f"grid={shown!r}: expected at most {MAX_CELLS} cells (rows x cols x replicas)")
        r, c = (int(p) for p in parts)
    else:
        if len(grid) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in grid):
            raise ValueError(f"grid={grid!r}: expected (rows, cols) with two positive ints")
        r, c = grid
    if r < 1 or c < 1:
        raise ValueError(f"grid={grid!r}: expected RxC with positive ints (rows and cols >= 1)")
    return r, c


def check_size(rows: int, cols: int, replicas: int) -> None:
    """ValueError (one line) unless ``replicas`` is a positive int and the grid has at most
    :data:`MAX_CELLS` cells: checked before anything is allocated for it."""
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
        raise ValueError(f"--replicas {replicas!r}: expected a positive int")
    if rows * cols * replicas > MAX_CELLS:
        raise ValueError(f"grid {rows}x{cols} x {replicas} replica(s) = {rows * cols * replicas} cells; expected "
                         f"at most {MAX_CELLS} (rows <= T time steps, columns <= the model's blocks)")


def time_slices(T: int, rows: int) -> list[int]:
    """Slice length of every row: ``numpy.array_split`` of T steps over ``rows``."""
    if not 1 <= rows <= T:
        raise ValueError(f"grid has {rows} time-slice rows but the model has T={T} time steps; "
                         "expected 1 <= rows <= T (every row needs at least one step)")
    q, r = divmod(T, rows)
    return [q + 1] * r + [q] * (rows - r)


def validate_lynxi_devices(devices: Any, key: str = "lynxi_devices") -> list[list[int]]:
    """``[[0, 1], [2, 3]]`` -> rows = time slices, columns = segments. ValueError when ragged,
    empty, not ints, too many, or a device id repeats."""
    if not isinstance(devices, (list, tuple)) or not devices:
        raise ValueError(f"{key}={devices!r}: expected a non-empty list of rows, e.g. [[0, 1], [2, 3]]")
    if len(devices) > MAX_CELLS:
        raise ValueError(f"{key}: {len(devices)} rows; expected at most {MAX_CELLS} cells in all")
    rows = []
    for g, row in enumerate(devices):
        if not isinstance(row, (list, tuple)) or not row:
            raise ValueError(f"{key}[{g}]={row!r}: expected a non-empty list of device ids")
        if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < MAX_DEVICE_IDS for d in row):
            raise ValueError(f"{key}[{g}]={row!r}: expected int device ids in 0..{MAX_DEVICE_IDS - 1}")
        rows.append([int(d) for d in row])
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise ValueError(f"{key}={devices!r} is ragged: row lengths {[len(r) for r in rows]}; expected "
                         "every time-slice row to list one device per segment")
    flat = [d for r in rows for d in r]
    if len(flat) > MAX_CELLS:
        raise ValueError(f"{key}: {len(flat)} devices; expected at most {MAX_CELLS}")
    dup = sorted({d for d in flat if flat.count(d) > 1})
    if dup:
        raise ValueError(f"{key}={devices!r}: device ids {dup} appear more than once")
    return rows


def config_segments(cfg: Optional[Mapping]) -> int:
    """How many segment models a config defines (``model_0..n``; 1 for a whole ``model``)."""
    if cfg is None:
        return 1
    return max(1, sum(1 for k in cfg if isinstance(k, str) and k.startswith("model_") and k[6:].isdigit()))


def check_segment_columns(cols: int, n: int) -> None:
    """ValueError unless a grid of ``cols`` columns fits a config of ``n`` segment models (one each)."""
    if cols != n:
        raise ValueError(f"grid has {cols} segment columns, but the config defines {n} segment models "
                         f"(model_0..model_{n - 1}); expected {n} columns (one per segment), not {cols} columns")


def config_timestep(cfg: Optional[Mapping]) -> Optional[int]:
    """T as the config states it (``model[_0].backbone.timestep``), None where it does not."""
    for key in ("model", "model_0"):
        model = cfg.get(key) if cfg is not None else None
        backbone = model.get("backbone") if hasattr(model, "get") else None
        t = backbone.get("timestep") if hasattr(backbone, "get") else None
        if isinstance(t, int) and not isinstance(t, bool):
            return t
    return None


def check_config_grid(cfg: Optional[Mapping], rows: int, cols: int) -> None:
    """ValueError (one line, as the model's own checks say it) for a grid that the config alone rules
    out: more rows than its stated T, or other columns than its segment models (``model_0..n``).
    Checked before the model is built (and before a cluster starts)."""
    n = config_segments(cfg)
    if n > 1:
        check_segment_columns(cols, n)
    t = config_timestep(cfg)
    if t is not None:
        time_slices(t, rows)


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
        """From ``grid`` ('RxC' or (R, C)), else the config's ``lynxi_devices``, else 1 x the config's
        segments. ValueError (one line) for anything malformed or past :data:`MAX_CELLS` cells."""
        check_size(1, 1, replicas)
        if grid is not None:
            rows, cols = parse_grid(grid)
            source = "--grid"
            base = None
        elif cfg is not None and cfg.get("lynxi_devices") is not None:
            base = validate_lynxi_devices(cfg["lynxi_devices"])
            rows, cols = len(base), len(base[0])
            source = "lynxi_devices"
        else:
            rows, cols, base = 1, config_segments(cfg), None
            source = f"default 1x{cols}"
        check_size(rows, cols, replicas)
        if base is None:
            base = [[g * cols + s for s in range(cols)] for g in range(rows)]
        step = max(max(r) for r in base) + 1
        if step * replicas > MAX_DEVICE_IDS:
            raise ValueError(f"{source}: device ids up to {step * replicas - 1} ({replicas} replica(s) of ids "
                             f"0..{step - 1}); expected at most {MAX_DEVICE_IDS - 1}")
        devices = tuple(tuple(tuple(d + k * step for d in row) for row in base) for k in range(replicas))
        return cls(rows, cols, replicas, devices, source)

    @property
    def n_cells(self) -> int:
        return self.rows * self.cols * self.replicas

    @property
    def max_device(self) -> int:
        return max(d for g in self.devices for row in g for d in row)
