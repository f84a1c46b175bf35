"""One run's driver side: admit samples, feed them to the grid, collect results, replay after a restart.

Threads: a feeder (admits each item, assigns it a replica round-robin, cuts it into the plan's time
slices), one sender per (replica, row) (a row still busy never holds back the rows above it), and the
collector (the caller's thread: results in sample order; it also runs the grid's health checks and
recoveries, see :meth:`bidl_runtime.driver.grid.Grid.recover`).

Replay bookkeeping: the **ledger** holds every admitted sample (its replica and input) from the moment
it is fed until its result is collected; nothing else holds inputs (verification gets each input with
its result and drops it once checked). Each replica has an **epoch**; every queued slice carries the
epoch it was queued in. ``pause(k)`` (a restart of replica k) bumps the epoch, so the senders drop
what they hold of the old one, and, under the same lock as the feeder's, queues the replica's ledger
entries again, in feed order, ahead of anything new: every in-flight sample is replayed from its first
time slice, once. The senders wait for ``resume(k)`` (the replica rewired) before sending. A result
is taken once (the collector waits for each sample's result in feed order and drops it from the
ledger), so nothing is lost and nothing is duplicated.

Batches (``RuntimeConfig.batch`` N): N admitted samples travel as one message ``[t, N, ...]``, named
by its first sample (the last group padded with zeros); the ledger, the replay and the result order
go by message, and each result is split per sample, in order (padding rows dropped).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from queue import Queue
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Protocol, TypeVar

import torch
from torch import Tensor

from bidl_models.specs import torch_dtype

from bidl_runtime.channels import ChannelError
from bidl_runtime.errors import RunError
from bidl_runtime.plan.grid_plan import GridPlan
from bidl_runtime.retry import attempt, patiently
from bidl_runtime.runtime_config import RuntimeConfig

from .samples import admit, batch_of

if TYPE_CHECKING:  # pragma: no cover
    from .journal import Journal
    from .reference import Verifier

R = TypeVar("R")


class Supervisor(Protocol):
    """What a stream needs of the grid that runs it (:class:`bidl_runtime.driver.grid.Grid`): the plan
    and tunables, a send on the driver's feed into cell (row, 0) of a replica, the bounded health
    check, recovery around a call, the next result of a replica, and where to report a broken feed."""

    plan: GridPlan
    config: RuntimeConfig

    def feed(self, replica: int, row: int, tensors: dict, meta: dict, timeout: float) -> None: ...

    def check(self) -> None: ...

    def guarded(self, fn: Callable[[], R]) -> R: ...

    def wait_result(self, replica: int, sample: int) -> Tensor: ...

    def tick(self, replica: int) -> None: ...

    def hint(self, replica: int, what: str) -> None: ...


class Stopped(Exception):
    """The stream was stopped (an error elsewhere); the thread that sees it just ends."""


class _Superseded(Exception):
    """The replica was restarted while a sender held a slice of the old epoch (it is replayed)."""


class SampleStream:
    """The driver's side of one run over ``grid``'s wired channels."""

    def __init__(self, grid: Supervisor, samples: Iterable, verifier: Optional["Verifier"] = None,
                 journal: Optional["Journal"] = None):
        p, rcfg = grid.plan, grid.config
        self.grid, self.samples, self.verifier, self.journal = grid, samples, verifier, journal
        x = p.outputs(None)[0].layout[0]                  # [t, B, ...] of the first input edge
        self.shape = (p.T,) + tuple(x.shape[2:])
        self.dtype = torch_dtype(x.dtype)
        self.nclass = int(p.inputs(None)[0].layout[0].shape[-1])
        self.starts = [sum(p.slices[:g]) for g in range(p.rows)]
        self.slots = threading.Semaphore(rcfg.max_inflight or 2 * p.rows * p.replicas)
        self.order: deque[tuple[int, int]] = deque()      # (sample, replica) whose result is due, feed order
        self.cv = threading.Condition()                   # order, feeding
        self.feeding = True
        self.lock = threading.Lock()                      # ledger, epochs, queue order
        self.batch = rcfg.batch                             # samples per message (--batch)
        # message (its first sample) -> (replica, its samples [(id, input)], batched input)
        self.ledger: dict[int, tuple[int, list[tuple[int, Tensor]], Tensor]] = {}
        self.epoch = [0] * p.replicas
        self.ready = [threading.Event() for _ in range(p.replicas)]
        for e in self.ready:
            e.set()
        self.queues: dict[tuple[int, int], Queue] = {(k, g): Queue() for k in range(p.replicas)
                                                     for g in range(p.rows)}
        self.sending: dict[tuple[int, int], Optional[int]] = {key: None for key in self.queues}
        self.rr = 0
        self.stop = threading.Event()
        self.error: Optional[BaseException] = None
        self.fed_at: dict[int, float] = {}
        self.done_at: dict[int, float] = {}
        self.labels: dict[int, int] = {}
        self.rejected: dict[int, str] = {}
        self.outputs: dict[int, Tensor] = {}
        self.resumed = 0                                   # samples taken from the journal
        self.collected = 0                                 # results collected in this run
        self.duplicated = 0                                # results that came for a sample already taken

    # ------------------------------------------------------------------------ bookkeeping

    def oldest_inflight(self) -> Optional[int]:
        """The replica of the oldest sample in the grid (None if none)."""
        with self.lock:
            return next(iter(self.ledger.values()))[0] if self.ledger else None

    @property
    def inflight(self) -> int:
        """Samples in the grid."""
        with self.lock:
            return sum(len(group) for _, group, _ in self.ledger.values())

    def pause(self, replica: int) -> list[int]:
        """Start a restart of ``replica``: drop what its senders hold, queue its in-flight samples
        again (ahead of new ones) and hold them until :meth:`resume`. Returns the replayed sample ids."""
        with self.lock:
            self.epoch[replica] += 1
            self.ready[replica].clear()
            e = self.epoch[replica]
            ids = []
            for gid, (k, group, xb) in self.ledger.items():
                if k == replica:
                    self._queue(replica, e, gid, xb)
                    ids += [i for i, _ in group]
        rcfg = self.grid.config
        deadline = time.perf_counter() + max(2.0, 10 * rcfg.poll_s)
        keys = [(replica, g) for g in range(self.grid.plan.rows)]
        while time.perf_counter() < deadline and any(self.sending[key] not in (None, e) for key in keys):
            time.sleep(0.01)
        return ids

    def resume(self, replica: int) -> None:
        """The replica is rewired: its senders go on (replays first)."""
        self.ready[replica].set()

    def _queue(self, k: int, epoch: int, i: int, xb: Tensor) -> None:
        p = self.grid.plan
        for g in range(p.rows):
            self.queues[(k, g)].put((epoch, i, xb[self.starts[g]:self.starts[g] + p.slices[g]]))

    def reject(self, i: int, why: str) -> None:
        self.rejected[i] = f"sample {i}: {why}"
        if self.journal is not None:
            self.journal.record(i, rejected=self.rejected[i])

    # ---------------------------------------------------------------------------- threads

    def _fail(self, e: BaseException) -> None:
        self.error = self.error or e
        self.stop.set()

    def check_failed(self) -> None:
        """Raise RunError if a feeding thread failed (the collector would wait for nothing)."""
        if self.stop.is_set() and self.error is not None:
            raise RunError(f"feeding the grid failed: {type(self.error).__name__}: {self.error}")

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Stopped

    def _current(self, k: int, epoch: int) -> None:
        self._check_stop()
        if self.epoch[k] != epoch:
            raise _Superseded

    def send_rows(self, key: tuple[int, int]) -> None:
        """Thread per (replica, row): sends the row's slices of its queue, in order."""
        k, _ = key
        q, poll = self.queues[key], self.grid.config.poll_s
        try:
            while (item := q.get()) is not None:
                epoch, i, chunk = item
                if epoch != self.epoch[k]:
                    continue                     # queued before a restart: replayed in the new epoch
                self.sending[key] = epoch
                try:
                    patiently(lambda t: attempt(self.ready[k].wait(t)), poll_s=poll,
                              check=lambda: self._current(k, epoch))
                    patiently(lambda t: self.grid.feed(k, key[1], {"x": chunk}, {"kind": "data", "sample": i}, t),
                              poll_s=poll, check=lambda: self._current(k, epoch))
                except _Superseded:
                    pass
                except ChannelError as e:        # a cell of the replica failed: its restart replays this
                    if epoch == self.epoch[k]:
                        self.grid.hint(k, f"the driver's feed failed: {e}")
                finally:
                    self.sending[key] = None
        except Stopped:
            pass
        except Exception as e:  # noqa: BLE001
            self._fail(e)

    def feed(self) -> None:
        """Admit samples, group ``batch`` of them per message (the last group padded with zeros),
        assign each message a replica round-robin and queue its slices for the row senders."""
        done = self.journal.done if self.journal is not None else {}
        group: list[tuple[int, Tensor]] = []
        try:
            for i, item in enumerate(self.samples):
                self._check_stop()
                if i in done:
                    self._resume(i)
                    continue
                x, label, why = admit(item, self.shape, self.nclass, self.dtype)
                if why:
                    self.reject(i, why)
                    continue
                if label is not None:
                    self.labels[i] = label
                group.append((i, x))
                if len(group) == self.batch:
                    self._dispatch(group)
                    group = []
            if group:
                self._dispatch(group)
                group = []
        except Stopped:
            pass
        except Exception as e:  # noqa: BLE001 - the data source failed: what it gave is finished first
            self.error = self.error or e
            if group:
                try:
                    self._dispatch(group)
                except Stopped:
                    pass
        finally:
            with self.cv:
                self.feeding = False
                self.cv.notify()

    def _dispatch(self, group: list[tuple[int, Tensor]]) -> None:
        """One message of ``len(group)`` samples, ``[T, batch, ...]``, named by its first sample."""
        p, poll = self.grid.plan, self.grid.config.poll_s
        patiently(lambda t: attempt(self.slots.acquire(timeout=t)), poll_s=poll, check=self._check_stop)
        xb = batch_of([x for _, x in group], self.shape, self.dtype, self.batch)
        gid = group[0][0]
        now = time.perf_counter()
        for i, _ in group:
            self.fed_at[i] = now
        with self.lock:
            k = self.rr % p.replicas
            self.rr += 1
            self.ledger[gid] = (k, group, xb)
            self._queue(k, self.epoch[k], gid, xb)
        with self.cv:
            self.order.append((gid, k))
            self.cv.notify()

    def _resume(self, i: int) -> None:
        """Sample ``i`` was finished by an earlier run (the journal): take its record."""
        rec = self.journal.done[i]
        self.resumed += 1
        if "rejected" in rec:
            self.rejected[i] = rec["rejected"]
            return
        self.outputs[i] = self.journal.output(i)
        if rec.get("label") is not None:
            self.labels[i] = int(rec["label"])

    # ------------------------------------------------------------------------- collector

    def next_sample(self) -> Optional[tuple[int, int]]:
        """The next (message, replica) whose result is due, None when all are in."""
        with self.cv:
            patiently(lambda t: attempt(self.cv.wait_for(lambda: self.order or not self.feeding, timeout=t)),
                      poll_s=self.grid.config.poll_s, check=self.grid.check)
            return self.order.popleft() if self.order else None

    def take(self, gid: int, y: Tensor) -> int:
        """Message ``gid``'s result is in: out of the ledger; per sample (row j of ``y``: its j-th
        sample) checked, journaled, or rejected if its values overflowed float32 inside the model.
        Returns the number of samples taken."""
        with self.lock:
            entry = self.ledger.pop(gid, None)
        if entry is None or gid in self.done_at:   # never by design: counted, so a test can tell
            self.duplicated += 1
            return 0
        group = entry[1]
        self.slots.release()
        now = time.perf_counter()
        ys: list[Optional[Tensor]] = []                   # None: rejected (the verifier skips it)
        for j, (i, x) in enumerate(group):
            yi = y if len(group) == 1 and y.shape[0] == 1 else y[j:j + 1].clone()
            self.done_at[i] = now
            self.collected += 1
            if not bool(torch.isfinite(yi).all()):
                self.labels.pop(i, None)
                peak = float(x.abs().max()) if x.is_floating_point() else float(x.max())
                self.reject(i, f"its output has {int((~torch.isfinite(yi)).sum())} NaN/Inf values: its values "
                               f"(max |x| {peak:.3g}) overflow float32 inside the model")
                ys.append(None)
                continue
            self.outputs[i] = yi
            if self.journal is not None:
                self.journal.record(i, yi, self.labels.get(i))
            ys.append(yi)
        if self.verifier is not None and any(yi is not None for yi in ys):
            self.verifier.submit_group([i for i, _ in group], [x for _, x in group], ys)
        return len(group)

    def run(self, bar: Any = None) -> None:
        """Feed and collect until every admitted sample's result is in (raises RunError on a data
        source failure, or what a recovery could not fix)."""
        threads = [threading.Thread(target=self.send_rows, args=(key,), name=f"bidl-feed{key}", daemon=True)
                   for key in self.queues]
        threads.append(threading.Thread(target=self.feed, name="bidl-feeder", daemon=True))
        for t in threads:
            t.start()
        try:
            while (due := self.grid.guarded(self.next_sample)) is not None:
                gid, k = due
                y = self.grid.wait_result(k, gid)
                n = self.take(gid, y)
                self.grid.tick(k)
                if bar is not None:
                    bar.update(n)
            if self.error is not None:
                raise RunError(f"reading samples failed: {type(self.error).__name__}: {self.error}")
        finally:
            self.stop.set()
            for q in self.queues.values():
                q.put(None)
            for t in threads:
                t.join(timeout=5)

