"""Start-up accounting: where the seconds before the first sample go, shown while they pass.

    clock = StartupClock(show=True, steps=10)     # a progress bar on stderr
    with clock.phase("ray_start", "starting Ray"):
        start_local(...)                          # bidl_runtime.cluster.ray_cluster
    clock.cell_ready(name, timings)               # one per cell as it reports in (Grid.start)
    clock.as_dict()                               # {'ray_start_s': ..., 'cells': {...}, 'total_s': ...}

Phases are wall-clock seconds on the driver; phases that run in the background (Ray start while
the driver resolves the model) are recorded with their own start and end. Each cell reports its
process start (``spawn``: actor requested -> process running), its imports, and its program load.
"""
from __future__ import annotations

import statistics
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Optional


class StartupClock:
    """Named phases (epoch start/end on the driver) and per-cell timings; with ``show``, one progress
    bar on stderr that ticks once per finished phase and once per cell that loaded its program."""

    def __init__(self, show: bool = False, t0: Optional[float] = None, steps: Optional[int] = None) -> None:
        self.t0 = time.time() if t0 is None else t0
        self.phases: dict[str, tuple[float, float]] = {}
        self.cell_times: dict[str, dict[str, float]] = {}
        self.notes: dict[str, float] = {}
        self._lock = threading.Lock()
        self._bar = None
        if show:
            from tqdm import tqdm
            self._bar = tqdm(total=steps, desc="start-up", unit="step", leave=False, file=sys.stderr,
                             bar_format="{desc}: {n_fmt}/{total_fmt} steps [{elapsed}] {postfix}")

    # ----------------------------------------------------------------------------- recording

    @contextmanager
    def phase(self, name: str, doing: str = "") -> Iterator[None]:
        """Time the block as phase ``name``; the bar says ``doing`` meanwhile."""
        self._say(doing or name)
        t = time.time()
        try:
            yield
        finally:
            self.mark(name, t, time.time())

    def mark(self, name: str, start: float, end: float) -> None:
        """Record a phase measured elsewhere (epoch seconds) and tick the bar."""
        with self._lock:
            self.phases[name] = (start, end)
            if self._bar is not None:
                self._bar.update(1)
                self._bar.set_postfix_str(f"{name.replace('_', ' ')}: {end - start:.1f} s")

    def note(self, key: str, value: float) -> None:
        """Record a figure that is not a phase (e.g. ``driver_cpu_s``)."""
        with self._lock:
            self.notes[key] = value

    def cell_ready(self, name: str, timings: dict[str, float]) -> None:
        with self._lock:
            self.cell_times[name] = dict(timings)
            if self._bar is not None:
                self._bar.update(1)
                self._bar.set_postfix_str(f"{name} loaded its program ({len(self.cell_times)} cells ready)")

    def _say(self, what: str) -> None:
        if self._bar is not None:
            with self._lock:
                self._bar.set_postfix_str(what)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # -------------------------------------------------------------------------------- report

    def seconds(self, name: str) -> Optional[float]:
        p = self.phases.get(name)
        return None if p is None else p[1] - p[0]

    def as_dict(self) -> dict[str, Any]:
        """``<phase>_s`` durations, ``<phase>_at`` offsets from t0, notes, per-cell medians and
        maxima, the cells' CPU seconds summed, ``total_s`` (t0 to the end of the last phase),
        ``grid_s`` (cells configured and wired)."""
        out: dict[str, Any] = {}
        for name, (a, b) in sorted(self.phases.items(), key=lambda kv: kv[1][0]):
            out[f"{name}_s"] = round(b - a, 3)
            out[f"{name}_at"] = round(a - self.t0, 3)
        if self.phases:
            out["total_s"] = round(max(b for _, b in self.phases.values()) - self.t0, 3)
        if "cells" in self.phases and "wire" in self.phases:
            out["grid_s"] = round(self.phases["wire"][1] - self.phases["cells"][0], 3)
        out.update({k: round(v, 3) for k, v in self.notes.items()})
        if self.cell_times:
            keys = sorted({k for t in self.cell_times.values() for k in t})
            if all("cpu_s" in t for t in self.cell_times.values()):
                out["cells_cpu_sum_s"] = round(sum(t["cpu_s"] for t in self.cell_times.values()), 3)
            out["cells"] = {k: {"median": round(statistics.median(v), 3), "max": round(max(v), 3)}
                            for k in keys for v in [[t[k] for t in self.cell_times.values() if k in t]]}
            out["per_cell"] = {n: {k: round(v, 3) for k, v in t.items()} for n, t in sorted(self.cell_times.items())}
        return out
