"""Chaos drills: kill (SIGKILL) and freeze (SIGSTOP) random cells of a running grid.

    chaos = Chaos(grid, faults=4, total=400, seed=1).start()    # before grid.run(...)
    report = grid.run(samples, verify=True)
    events = chaos.stop()                                         # what was done, when
    print(chaos.summary(report, expected=400))

A thread watches the run's progress and injects fault j when about ``(j + 1) / (faults + 1)`` of the
``total`` results are in (jittered, so the times are random but spread over the run), into a random
cell of this node (by the process id the grid knows). ``summary`` matches every fault with the
restart that named its cell, and measures for every fault, whatever its kind: how long until it was
named, and until its replica streamed again; the maxima are over all faults (a slow replacement of a
frozen cell counts as much as one of a killed cell); and whether every sample came back once and
bit-exact.
"""
from __future__ import annotations

import os
import random
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # pragma: no cover
    from .grid import Grid
    from .report import RunReport

KINDS = {"kill": signal.SIGKILL, "stop": signal.SIGSTOP}


class Chaos:
    """Fault injector for ``grid``'s next run (see the module doc). ``kinds`` cycle in order."""

    def __init__(self, grid: "Grid", faults: int, total: int, kinds: tuple[str, ...] = ("kill", "stop"),
                 seed: int = 0):
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"Chaos kinds {unknown}: expected some of {list(KINDS)}")
        self.grid, self.faults, self.total, self.kinds = grid, int(faults), int(total), kinds
        self.rng = random.Random(seed)
        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._stopped_pids: set[int] = set()

    def start(self) -> "Chaos":
        self._thread = threading.Thread(target=self._run, name="bidl-chaos", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[dict[str, Any]]:
        """Stop injecting; continue any process still frozen (one the run ended before naming)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for pid in self._stopped_pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except (ProcessLookupError, PermissionError):
                pass
        return self.events

    def _targets(self) -> list[tuple]:
        g = self.grid
        here = ("local", g.plan.driver_node)
        return [c.key for c in g.plan.cells if c.node in here and g.pids.get(c.key)]

    def _run(self) -> None:
        marks = []
        for j in range(self.faults):
            span = self.total / (self.faults + 1)
            marks.append(int((j + 1) * span + self.rng.uniform(-0.3, 0.3) * span))
        for j, mark in enumerate(marks):
            kind = self.kinds[j % len(self.kinds)]
            while not self._stop.is_set():
                s = self.grid.stream
                if s is not None and s.collected >= mark and s.inflight > 0 and not s.stop.is_set():
                    break
                time.sleep(0.02)
            if self._stop.is_set():
                return
            key = self.rng.choice(self._targets())
            pid = self.grid.pids[key]
            try:
                os.kill(pid, KINDS[kind])
            except ProcessLookupError:
                continue
            if kind == "stop":
                self._stopped_pids.add(pid)
            self.events.append({"kind": kind, "cell": self.grid.plan.cell(*key).name, "key": key, "pid": pid,
                                "at": time.perf_counter(), "after_results": self.grid.stream.collected})

    # ------------------------------------------------------------------------------ figures

    def summary(self, report: "RunReport", expected: int, reference: Optional[dict] = None) -> dict[str, Any]:
        """Faults matched with the restarts that named their cells; recovery times; lost/duplicated.

        ``expected``: samples the run was given (all good); ``reference``: ``{sample: output}`` to
        compare with (else the report's own verification counts)."""
        restarts = list(report.restarts)
        out = []
        for ev in self.events:
            named = None
            for r in restarts:
                cells = {c["cell"] for c in r["cells"]}
                if ev["cell"] in cells and r["detected_at"] >= ev["at"] - 0.05:
                    named = r
                    break
            row = {"kind": ev["kind"], "cell": ev["cell"], "after_results": ev["after_results"],
                   "survived": named is not None}
            if named is not None:
                row["named_after_s"] = round(named["detected_at"] - ev["at"], 3)
                row["rewired_after_s"] = round(named["rewired_at"] - ev["at"], 3)
                if named.get("streaming_again_at") is not None:
                    row["streaming_again_after_s"] = round(named["streaming_again_at"] - ev["at"], 3)
                row["replayed"] = len(named["replayed"])
                row["diagnosis"] = next(c["kind"] for c in named["cells"] if c["cell"] == ev["cell"])
            out.append(row)
        worst = {k: _worst(out, k) for k in ("named_after_s", "streaming_again_after_s")}
        lost = expected - len(report.outputs) - len(report.rejected)
        duplicated = self.grid.stream.duplicated if self.grid.stream is not None else 0
        if reference is not None:
            exact = sum(1 for i, y in report.outputs.items() if i in reference and _equal(reference[i], y))
        else:
            exact = report.verify["equal"] if report.verify else None
        return {"faults": out, "injected": len(self.events), "survived": sum(r["survived"] for r in out),
                "samples": expected, "lost": lost, "duplicated": duplicated, "bit_exact": exact,
                "restarts": len(restarts), "replayed": report.replayed,
                "max_named_s": worst["named_after_s"], "max_streaming_again_s": worst["streaming_again_after_s"],
                "not_streaming_again": [f"{r['kind']} {r['cell']}" for r in out
                                        if r["survived"] and r.get("streaming_again_after_s") is None]}


def _worst(faults: list[dict], key: str) -> Optional[dict[str, Any]]:
    """The fault with the largest ``key`` (seconds) over all faults: ``{'s', 'kind', 'cell'}`` (None if none has it)."""
    timed = [f for f in faults if f.get(key) is not None]
    if not timed:
        return None
    f = max(timed, key=lambda f: f[key])
    return {"s": f[key], "kind": f["kind"], "cell": f["cell"]}


def _equal(a, b) -> bool:
    import torch
    return bool(torch.equal(a, b))
