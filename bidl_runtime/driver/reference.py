"""The single-device run of the grid's own artifacts: what every grid output must equal, bit for bit.

:class:`Verifier` checks a stream as its results arrive (in a thread, behind a bounded queue), so a
run of any length holds no more inputs than the grid has in flight.
"""
from __future__ import annotations

import threading
from queue import Queue
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor

from bidl_models.specs import torch_dtype
from compile.artifact import load_artifact

from bidl_runtime.plan.grid_plan import GridPlan

from .samples import batch_of


class Reference:
    """Runs the plan's programs on one device: slice by slice, segment by segment, with the state
    carried over. Loads the exported programs (not the cells' fast form), on first use.

    ``threads`` must be the cells' intra-op thread count: CPU kernels may sum in another order
    with another thread count, and the comparison is bit-exact.
    """

    def __init__(self, plan: GridPlan, threads: int = 1):
        self.plan, self.threads = plan, threads
        self._arts: Optional[dict[tuple[int, int], Any]] = None

    def _artifacts(self) -> dict[tuple[int, int], Any]:
        if self._arts is None:
            self._arts = {}
            for c in self.plan.cells:
                if c.replica == 0 and (c.col, c.chunk_len) not in self._arts:
                    if c.program.emulated:
                        raise ValueError("the reference run needs compiled artifacts (backend cpu)")
                    # the driver's own copy (a cell on another host runs one shipped and resealed there)
                    self._arts[(c.col, c.chunk_len)] = load_artifact(c.program.origin or c.program.path)
        return self._arts

    def output(self, x: Tensor) -> Tensor:
        """The last step's output ``[B, nclass]`` for ``x`` ``[T, B, ...]``."""
        arts = self._artifacts()
        states: list[Optional[dict]] = [None] * self.plan.cols
        t0 = 0
        y = x
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                for t in self.plan.slices:
                    h = x[t0:t0 + t]
                    for s in range(self.plan.cols):
                        art = arts[(s, t)]
                        if states[s] is None:
                            states[s] = art.fresh_state(x.shape[1])   # h may be x and its carry (a cut in a block)
                        h, states[s] = art.run(h, states[s])
                    y = h
                    t0 += t
        finally:
            torch.set_num_threads(before)
        return y[-1]

    def output_of(self, x: Tensor) -> Tensor:
        """:meth:`output` of a sample as the grid gets it (``[T, ...]``, or ``[T, B, ...]``)."""
        first = self._artifacts()[(0, self.plan.slices[0])]
        dtype = torch_dtype(first.input_dtype)   # float32, uint8 (event counts), int64 (token ids)
        unbatched = len(self.plan.outputs(None)[0].layout[0].shape) - 1   # [t, B, ...] without B
        return self.output((x.unsqueeze(1) if x.dim() == unbatched else x).to(dtype))

    def output_of_group(self, xs: Sequence[Tensor], batch: int) -> Tensor:
        """:meth:`output` of samples ``xs`` run as the grid ran them: one message ``[T, batch, ...]``
        (a partial group padded with zeros); row j is sample j's output."""
        first = self._artifacts()[(0, self.plan.slices[0])]
        dtype = torch.uint8 if first.input_dtype == "uint8" else torch.float32
        shape = (self.plan.T,) + tuple(self.plan.outputs(None)[0].layout[0].shape[2:])
        return self.output(batch_of(list(xs), shape, dtype, batch))

    def compare(self, outputs: Mapping[int, Tensor], inputs: Mapping[int, Tensor],
                groups: Optional[Sequence[Sequence[int]]] = None, batch: int = 1) -> dict[str, Any]:
        """``{'equal', 'compared', 'max_abs_diff'}`` of every grid output against this run. ``groups``:
        the samples of each message (default: one each), run here as the grid ran them: ``batch``
        wide, a partial group padded with zeros."""
        v = Verifier(self, batch=batch)
        for ids in (groups if groups is not None else [[i] for i in outputs]):
            ids = [i for i in ids if i in outputs]
            if ids:
                v.check_group(ids, [inputs[i] for i in ids], [outputs[i] for i in ids])
        return v.result()


class Verifier:
    """Compares grid outputs with the reference as they arrive: ``submit(i, x, y)`` hands a sample
    to a checking thread (blocking while ``depth`` samples wait: back-pressure, not memory growth),
    which drops the input once checked; ``result()`` waits for the last ones and returns
    ``{'equal', 'compared', 'max_abs_diff'}``. ``differ`` lists the first samples that differ.
    With ``batch`` N (``--batch``) the grid ran samples N per message: ``submit_group`` hands over
    one message's samples, run here the same way (bit-exact needs the same batch)."""

    def __init__(self, reference: Reference, depth: int = 8, batch: int = 1):
        self.reference = reference
        self.batch = batch
        self.equal = self.compared = 0
        self.worst = 0.0
        self.differ: list[int] = []
        self.error: Optional[BaseException] = None
        self._q: Queue = Queue(maxsize=max(1, depth))
        self._thread: Optional[threading.Thread] = None

    def check(self, i: int, x: Tensor, y: Tensor) -> None:
        """Compare one sample now (in the calling thread)."""
        self._count(i, self.reference.output_of(x), y)

    def check_group(self, ids: Sequence[int], xs: Sequence[Tensor], ys: Sequence[Optional[Tensor]]) -> None:
        """Compare the samples of one message now (``ys[j]``: sample ``ids[j]``'s grid output; None:
        not compared, e.g. rejected)."""
        if self.batch == 1 and len(ids) == 1:
            if ys[0] is not None:
                self.check(ids[0], xs[0], ys[0])
            return
        ref = self.reference.output_of_group(xs, self.batch)
        for j, (i, y) in enumerate(zip(ids, ys)):
            if y is not None:
                self._count(i, ref[j:j + 1], y)

    def _count(self, i: int, ref: Tensor, y: Tensor) -> None:
        self.compared += 1
        if torch.equal(ref, y):
            self.equal += 1
        else:
            self.worst = max(self.worst, float((ref - y).abs().max()))
            if len(self.differ) < 20:
                self.differ.append(i)

    def submit(self, i: int, x: Tensor, y: Tensor) -> None:
        """Queue a sample for the checking thread (started on first use)."""
        self.submit_group([i], [x], [y])

    def submit_group(self, ids: Sequence[int], xs: Sequence[Tensor], ys: Sequence[Optional[Tensor]]) -> None:
        """Queue one message's samples for the checking thread (started on first use)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bidl-verify", daemon=True)
            self._thread.start()
        self._q.put((list(ids), list(xs), list(ys)))

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            if self.error is None:
                try:
                    self.check_group(*item)
                except BaseException as e:  # noqa: BLE001 - reported by result()
                    self.error = e
            del item   # the input goes as soon as it is checked

    def result(self) -> dict[str, Any]:
        """Wait for the queued samples; the counts (re-raises the checking thread's error)."""
        if self._thread is not None:
            self._q.put(None)
            self._thread.join()
            self._thread = None
        if self.error is not None:
            raise self.error
        return {"equal": self.equal, "compared": self.compared, "max_abs_diff": self.worst}
