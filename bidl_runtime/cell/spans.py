"""A cell's trace spans: what it did when (wait input, wait state, compute, wait outbox, send), kept
in bounded memory while a traced run lasts; the driver turns them into a trace file
(:mod:`bidl_runtime.driver.trace`, where the format is described).
"""
from __future__ import annotations

import os
import time
from collections import deque
from typing import Any, Optional

LOOP, OUTBOX = 0, 1                               # a cell's thread ids in its trace
THREADS = {LOOP: "loop", OUTBOX: "outbox"}
CATEGORIES = ("wait", "compute", "send")


def category(name: str) -> str:
    """``wait`` / ``compute`` / ``send`` from a span's name."""
    return name.split(" ", 1)[0] if name.split(" ", 1)[0] in CATEGORIES else "other"


def clock_anchor() -> tuple[int, int]:
    """``(wall ns, monotonic ns)`` read together: maps this node's monotonic clock to wall time."""
    return time.time_ns(), time.monotonic_ns()


class TraceBuffer:
    """Spans ``(thread, name, start, end, sample)`` of one cell (``time.perf_counter()`` seconds): the first ``capacity // 4``
    kept, then a ring of the latest; ``dropped`` counts what the ring overwrote. Appends are
    thread-safe (the loop and the outbox thread both add)."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"trace capacity {capacity}: expected at least 1 span")
        self.head_cap = capacity // 4
        self.head: list[tuple] = []
        self.ring: deque = deque(maxlen=capacity - self.head_cap)
        self.added = 0

    def add(self, thread: int, name: str, t0: float, t1: float, sample: Any) -> None:
        self.added += 1
        if len(self.head) < self.head_cap:
            self.head.append((thread, name, t0, t1, sample))
        else:
            self.ring.append((thread, name, t0, t1, sample))

    @property
    def dropped(self) -> int:
        return max(0, self.added - len(self.head) - len(self.ring))

    def export(self, node: Optional[str] = None) -> dict[str, Any]:
        """What the cell returns with its stats (plain, picklable): spans in ``time.monotonic_ns()``."""
        off = time.monotonic_ns() - time.perf_counter_ns()
        spans = [(th, n, int(a * 1e9) + off, int(b * 1e9) + off, s) for th, n, a, b, s in self.head + list(self.ring)]
        return {"spans": spans, "dropped": self.dropped, "anchor": clock_anchor(), "node": node, "pid": os.getpid()}
