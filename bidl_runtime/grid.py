"""The grid: the cell actors of a plan, wired as the plan's edges say, streaming samples.

    grid = Grid(plan, RuntimeConfig())
    report = grid.run(samples)            # start (once), wire, stream, drain -> RunReport
    report = grid.run(more_samples)       # the cells stay up between runs
    grid.close()

``start`` configures one actor per cell (prestarted ones from :func:`bidl_runtime.pool.spawn`, a
:class:`~bidl_runtime.pool.CellPool`'s, or new ones) and loads its program. Every ``run`` wires
the channels afresh (the cells' receivers first, then their senders and the driver's ends), starts
the cells' loops, streams, and drains the grid with stop messages. Each accepted sample is
assigned to a replica round-robin and cut along T into the plan's slices; slice g goes to cell
(g, 0) of that replica. Results come back from the result edges in sample order. At most
``max_inflight`` samples are in the grid (back-pressure reaches the data iterator, which is only
advanced when a slot frees). Bad samples (shape, dtype, NaN/Inf) are rejected with a reason
naming the sample and the stream goes on. A cell that raises or dies stops the run within
``poll_s`` + Ray's failure detection, with an error naming the cell.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from queue import Queue
from typing import Any, Iterable, Optional

from torch import Tensor

from bidl_models.specs import torch_dtype

from .cell import CellError, CellSpec
from .channels import ChannelError, attach_sender, create_receiver, new_secret
from .config import RuntimeConfig
from .data import check_sample
from .plan import CellKey, GridPlan
from .pool import CellPool, kill, new_actor
from .reference import Reference
from .report import RunReport
from .retry import Expired, attempt, patiently
from .startup import StartupClock


class RunError(RuntimeError):
    """The run failed (a cell raised or died, or a wait expired); names the cell where known."""


class _Stopped(Exception):
    """The stream was stopped (an error elsewhere); the thread that sees it just ends."""


class Grid:
    """Cell actors and channels for a plan; ``run`` streams samples; ``close`` tears it all down.

    ``actors``: cell actors started beforehand (``{cell key: actor}``, see ``pool.spawn``);
    ``configured``: they already run this plan's programs (a kept-alive grid one attaches to);
    ``owned``: close kills them (False for an attached grid: it only lets go of them).
    """

    def __init__(self, plan: GridPlan, config: Optional[RuntimeConfig] = None, pool: Optional[CellPool] = None,
                 actors: Optional[dict[CellKey, Any]] = None, configured: bool = False, owned: bool = True,
                 clock: Optional[StartupClock] = None):
        self.plan = plan
        self.config = config or RuntimeConfig()
        if self.config.channel_secret is None:  # one secret per grid, to the cells through their CellSpec
            self.config = self.config.replace(channel_secret=new_secret())
        self.pool = pool
        self.actors: dict[CellKey, Any] = dict(actors or {})
        self.clock = clock or StartupClock()
        self.owned = owned
        self._configured = configured
        self._healthy = False
        self._closed = False
        self.loops: dict[Any, Any] = {}                  # loop ref -> CellPlan
        self.feeds: dict[tuple[int, int], Any] = {}      # (replica, row) -> sender into cell (row, 0)
        self.results: dict[int, Any] = {}                # replica -> receiver from the last cell
        # sample -> (replica, input) until its result is back: what a restarted cell would replay
        self.inflight: dict[int, tuple[int, Tensor]] = {}

    # ---------------------------------------------------------------------------------- set-up

    def spec_of(self, key: CellKey) -> CellSpec:
        """What cell ``key`` is told: its plan entry, its edges, the tunables."""
        return CellSpec(self.plan.cell(*key), self.plan.inputs(key), self.plan.outputs(key), self.config,
                        self.config.faults.get(key))

    def start(self) -> "Grid":
        """Get an actor per cell and load its program (once; runs reuse them)."""
        if self._configured:
            return self
        p, cfg = self.plan, self.config
        for c in p.cells:
            if c.key not in self.actors:
                self.actors[c.key] = self.pool.acquire(c) if self.pool is not None else new_actor(c.name, c.node)
        t = time.time()
        refs = {self.actors[c.key].configure.remote(self.spec_of(c.key)): c for c in p.cells}
        try:
            pending = list(refs)
            deadline = time.perf_counter() + cfg.start_timeout_s
            import ray
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.perf_counter()))
                if not done:
                    raise TimeoutError(f"{len(pending)} cell(s) not ready after {cfg.start_timeout_s:.0f} s "
                                       f"({', '.join(refs[r].name for r in pending[:4])}...)")
                tm = ray.get(done[0])
                self.clock.cell_ready(refs[done[0]].name, {
                    "process_start_at": tm["process_start"] - self.clock.t0,       # Ray's worker process
                    "assigned_at": tm["import_started"] - self.clock.t0,           # it became this cell
                    "imports_s": tm["ready"] - tm["import_started"],               # torch, channels, ...
                    "load_s": tm["load_s"], "ready_at": tm["configured"] - self.clock.t0, "cpu_s": tm["cpu_s"]})
        except Exception as e:  # noqa: BLE001
            self.clock.close()
            self.close()
            raise RunError(f"starting the grid's cells failed: {_cell_error_text(e)}") from None
        self.clock.mark("cells", t, time.time())
        self._configured = True
        return self

    def wire(self) -> None:
        """Fresh channel ends for a run: the cells' receivers, the driver's result receivers, then
        every sender; start the cells' loops (the grid then waits for samples). ``run`` calls it."""
        import ray
        p, cfg = self.plan, self.config
        t = time.time()
        self._close_driver_ends()
        try:
            ray.get([self.actors[c.key].reset.remote() for c in p.cells], timeout=cfg.start_timeout_s)
            endpoints: dict[str, Any] = {}
            for ends in ray.get([self.actors[c.key].open_inputs.remote() for c in p.cells],
                                timeout=cfg.start_timeout_s):
                endpoints.update(ends)
            for e in p.inputs(None):
                self.results[e.replica] = create_receiver(e.name, e.layout, cfg.channel(e.transport))
                endpoints[e.name] = self.results[e.replica].descriptor
            ray.get([self.actors[c.key].connect.remote({e.name: endpoints[e.name] for e in p.outputs(c.key)})
                     for c in p.cells], timeout=cfg.start_timeout_s)
            for e in p.outputs(None):
                self.feeds[(e.replica, e.dst[1])] = attach_sender(endpoints[e.name])
        except Exception as e:  # noqa: BLE001
            self.close()
            raise RunError(f"wiring the grid's channels failed: {_cell_error_text(e)}") from None
        self.loops = {self.actors[c.key].loop.remote(): c for c in p.cells}
        self.clock.mark("wire", t, time.time())
        self.clock.note("driver_cpu_s", time.process_time())
        self.clock.close()

    # ---------------------------------------------------------------------------------- health

    def check_health(self) -> None:
        """Raise RunError naming the cell if any cell's loop ended (raised, died) before stop.

        A failure spreads (neighbours see a dead peer), so after the first one the driver waits
        ``health_grace_s`` for the others and blames the root cause: a dead process first, then a
        cell's own error, then channel failures caused by a neighbour.
        """
        import ray
        import ray.exceptions as rex
        done, _ = ray.wait(list(self.loops), num_returns=len(self.loops), timeout=0)
        if not done:
            return
        deadline = time.perf_counter() + self.config.health_grace_s
        while time.perf_counter() < deadline and len(done) < len(self.loops):
            more, _ = ray.wait(list(self.loops), num_returns=len(self.loops), timeout=0.25)
            if len(more) == len(done):
                break
            done = more
        failures = []
        for ref in done:
            cell = self.loops[ref]
            try:
                ray.get(ref, timeout=1)
                failures.append((3, cell, "stopped before the end of the stream"))
            except Exception as e:  # noqa: BLE001
                text = _cell_error_text(e)
                rank = 0 if isinstance(e, rex.RayActorError) else (2 if _is_channel_failure(text) else 1)
                failures.append((rank, cell, text))
        failures.sort(key=lambda f: (f[0], f[1].key))
        rank, cell, text = failures[0]
        others = f" ({len(failures) - 1} other cell(s) failed after it)" if len(failures) > 1 else ""
        raise RunError(f"{cell.name} failed: {text}{others}")

    def _after_channel_error(self, e: Exception) -> None:
        """A channel broke: give Ray a moment to report which cell failed, then raise."""
        cfg = self.config
        patiently(lambda t: attempt(bool(time.sleep(t))), poll_s=cfg.poll_s, limit_s=cfg.channel_failure_grace_s,
                  check=self.check_health, give_up=lambda s: RunError(f"a channel of the grid failed: {e}"))

    # ------------------------------------------------------------------------------------ run

    def run(self, samples: Iterable, *, total: Optional[int] = None, progress: bool = True,
            verify: bool = False) -> RunReport:
        """Stream ``samples`` (tensors ``[T, C, H, W]``, or ``(tensor, label)``) through the grid and
        drain it; ``verify``: compare every output with the single-device run of the same artifacts."""
        self.start()
        self.wire()
        stream = _Stream(self, samples, keep_inputs=verify)
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=total, unit="sample", desc=f"grid {self.plan.rows}x{self.plan.cols}", leave=False)
        t0 = time.perf_counter()
        try:
            stream.run(bar)
        finally:
            if bar is not None:
                bar.close()
        wall = time.perf_counter() - t0
        cells = self.drain()
        checked = (Reference(self.plan, self.config.threads_per_cell).compare(stream.outputs, stream.inputs)
                   if verify else None)
        return RunReport(plan=self.plan, backend=self.config.backend, transport=self.config.transport,
                         outputs=stream.outputs, labels=stream.labels, rejected=stream.rejected,
                         fed_at=stream.fed_at, done_at=stream.done_at, wall_s=wall, cells=cells,
                         driver_channels=self._driver_stats(), startup=self.clock.as_dict(), verify=checked)

    def _driver_stats(self) -> dict:
        return {"channels_out": {f"feed{k}": s.stats.snapshot() for k, s in self.feeds.items()},
                "channels_in": {f"result{k}": r.stats.snapshot() for k, r in self.results.items()}}

    def wait_result(self, replica: int, sample: int):
        """The result message of ``sample`` from ``replica`` (checks the cells' health meanwhile)."""
        rec, cfg = self.results[replica], self.config
        try:
            msg = patiently(lambda t: rec.recv(timeout=t), poll_s=cfg.poll_s, limit_s=cfg.result_timeout_s,
                            check=self.check_health,
                            give_up=lambda s: RunError(f"no result for sample {sample} from replica {replica} "
                                                       f"after {s:.0f} s"))
        except ChannelError as e:
            self._after_channel_error(e)
            raise
        got = msg.meta.get("sample")
        if got != sample:
            msg.release()
            raise RunError(f"results out of order: expected sample {sample}, got {got}")
        return msg

    # ------------------------------------------------------------------------------- shutdown

    def drain(self) -> list[dict]:
        """Drain the grid with stop messages and return every cell's stats (``run`` calls it)."""
        import ray
        timeout = self.config.stop_timeout_s
        for s in self.feeds.values():
            try:
                s.send_control("stop", timeout=timeout)
            except Exception:  # noqa: BLE001 - a dead cell is reported by the loops below
                pass
        for rec in self.results.values():
            def until_stop(t: float, rec=rec) -> None:
                msg = rec.recv(timeout=t)
                kind = msg.kind
                msg.release()
                if kind != "stop":
                    raise Expired   # a late result: keep reading until the stop message
            try:
                patiently(until_stop, poll_s=self.config.poll_s, limit_s=timeout)
            except (TimeoutError, ChannelError):
                pass   # the loops' results below tell what happened
        try:
            stats = ray.get(list(self.loops), timeout=timeout)
        except Exception as e:  # noqa: BLE001
            raise RunError(f"stopping the grid failed: {_cell_error_text(e)}") from None
        finally:
            self.loops = {}
        self._healthy = True
        return stats

    def _close_driver_ends(self) -> None:
        for s in self.feeds.values():
            _quiet(s.close)
        for rec in self.results.values():
            _quiet(rec.close)
        self.feeds, self.results = {}, {}

    def close(self) -> None:
        """Let go of the cells (kill them if owned; return them to the pool) and close the driver's
        channel ends (idempotent)."""
        if self._closed:
            return
        self._closed = True
        import ray
        self._close_driver_ends()
        wait = self.config.stop_timeout_s
        if not self.owned:
            if self._healthy:
                _quiet(lambda: ray.get([a.reset.remote() for a in self.actors.values()], timeout=wait))
            return
        if self.pool is not None:
            if self._healthy:
                _quiet(lambda: ray.get([a.close.remote() for a in self.actors.values()], timeout=wait))
            self.pool.release(self._healthy)
        else:
            for a in self.actors.values():
                kill(a)

    def __enter__(self) -> "Grid":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class _Stream:
    """One run's driver side: a feeder thread (admits samples, assigns replicas round-robin, cuts
    them into the plan's slices), one sender thread per (replica, row), and the collector (results
    in sample order, in the calling thread)."""

    def __init__(self, grid: Grid, samples: Iterable, keep_inputs: bool):
        p, cfg = grid.plan, grid.config
        self.grid, self.samples, self.keep_inputs = grid, samples, keep_inputs
        x = p.outputs(None)[0].layout[0]                  # [t, B, C, H, W] of the first input edge
        self.shape = (p.T,) + tuple(x.shape[2:])
        self.dtype = torch_dtype(x.dtype)
        self.starts = [sum(p.slices[:g]) for g in range(p.rows)]
        self.slots = threading.Semaphore(cfg.max_inflight or 2 * p.rows * p.replicas)
        self.order: deque[tuple[int, int]] = deque()      # (sample, replica) in feed order
        self.cv = threading.Condition()
        self.feeding = True
        self.stop = threading.Event()
        self.error: Optional[BaseException] = None
        self.fed_at: dict[int, float] = {}
        self.done_at: dict[int, float] = {}
        self.labels: dict[int, int] = {}
        self.rejected: dict[int, str] = {}
        self.outputs: dict[int, Tensor] = {}
        self.inputs: dict[int, Tensor] = {}
        self.queues: dict[tuple[int, int], Queue] = {key: Queue() for key in grid.feeds}

    def _fail(self, e: BaseException) -> None:
        self.error = self.error or e
        self.stop.set()

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise _Stopped

    def send_rows(self, key: tuple[int, int]) -> None:
        """Thread per (replica, row): a row still busy with older samples never holds back the rows
        above it (each gets its slice when ready)."""
        q, sender, poll = self.queues[key], self.grid.feeds[key], self.grid.config.poll_s
        try:
            while (item := q.get()) is not None:
                i, chunk = item
                patiently(lambda t: sender.send({"x": chunk}, {"kind": "data", "sample": i}, timeout=t),
                          poll_s=poll, check=self._check_stop)
        except _Stopped:
            pass
        except Exception as e:  # noqa: BLE001
            self._fail(e)

    def feed(self) -> None:
        p, poll = self.grid.plan, self.grid.config.poll_s
        try:
            nxt = 0
            for i, item in enumerate(self.samples):
                x, label = (item if isinstance(item, tuple) else (item, None))
                why = check_sample(x, self.shape, self.dtype)
                if why:
                    self.rejected[i] = f"sample {i}: {why}"
                    continue
                patiently(lambda t: attempt(self.slots.acquire(timeout=t)), poll_s=poll, check=self._check_stop)
                k = nxt % p.replicas
                nxt += 1
                if label is not None:
                    self.labels[i] = int(label)
                if self.keep_inputs:
                    self.inputs[i] = x
                xb = (x.unsqueeze(1) if x.dim() == len(self.shape) else x).to(self.dtype)
                self.fed_at[i] = time.perf_counter()
                self.grid.inflight[i] = (k, x)
                with self.cv:
                    self.order.append((i, k))
                    self.cv.notify()
                for g in range(p.rows):
                    self.queues[(k, g)].put((i, xb[self.starts[g]:self.starts[g] + p.slices[g]]))
                self._check_stop()
        except _Stopped:
            pass
        except Exception as e:  # noqa: BLE001
            self._fail(e)
        finally:
            for q in self.queues.values():
                q.put(None)
            with self.cv:
                self.feeding = False
                self.cv.notify()

    def next_sample(self) -> Optional[tuple[int, int]]:
        """The next (sample, replica) whose result is due, None when all are in."""
        with self.cv:
            patiently(lambda t: attempt(self.cv.wait_for(lambda: self.order or not self.feeding, timeout=t)),
                      poll_s=self.grid.config.poll_s, check=self.grid.check_health)
            return self.order.popleft() if self.order else None

    def run(self, bar) -> None:
        threads = [threading.Thread(target=self.send_rows, args=(key,), name=f"bidl-feed{key}", daemon=True)
                   for key in self.queues]
        threads.append(threading.Thread(target=self.feed, name="bidl-feeder", daemon=True))
        for t in threads:
            t.start()
        try:
            while (due := self.next_sample()) is not None:
                i, k = due
                msg = self.grid.wait_result(k, i)
                self.done_at[i] = time.perf_counter()
                self.outputs[i] = msg.tensors["y"].clone()
                msg.release()
                self.slots.release()
                self.grid.inflight.pop(i, None)
                if bar is not None:
                    bar.update(1)
            if self.error is not None:
                raise RunError(f"reading samples failed: {type(self.error).__name__}: {self.error}")
        except BaseException:
            self.stop.set()
            raise
        finally:
            for t in threads:
                t.join(timeout=5)


def _cell_error_text(e: BaseException) -> str:
    """The readable part of a Ray error raised for a cell: its CellError, or that it died."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, CellError):
        return str(cause)
    import ray.exceptions as rex
    if isinstance(e, rex.RayActorError):
        return "the actor died (its process exited or was killed)"
    text = str(e).strip()
    return text.splitlines()[-1] if text else type(e).__name__


def _is_channel_failure(text: str) -> bool:
    """A failure that a neighbour's death causes (not a root cause)."""
    return any(k in text for k in ("PeerDied", "ChannelClosed", "ChannelTimeout"))


def _quiet(fn) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - teardown is best effort
        pass
