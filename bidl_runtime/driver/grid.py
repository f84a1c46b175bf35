"""The grid: the cell actors of a plan, wired as the plan's edges say, streaming samples; it heals itself.

    grid = Grid(plan, RuntimeConfig())
    report = grid.run(samples)            # start (once), wire, stream, drain -> RunReport
    report = grid.run(more_samples)       # the cells stay up between runs
    grid.close()

``start`` configures one actor per cell (prestarted ones from :func:`bidl_runtime.cell.pool.spawn`, a
:class:`~bidl_runtime.cell.pool.CellPool`'s, or new ones) and loads its program. Every ``run`` wires
the channels afresh (the cells' receivers first, then their senders and the driver's ends), starts
the cells' loops, streams (:class:`bidl_runtime.driver.stream.SampleStream`: samples admitted or rejected alone,
at most ``max_inflight`` in the grid, results in sample order) and drains the grid with stop messages.
With ``RuntimeConfig.batch`` N, N accepted samples travel as one message ``[t, N, ...]`` (named by
its first sample; the last group padded with zeros) and come back split per sample, in order.

Restart and replay: while it waits, the driver runs :class:`bidl_runtime.driver.health.Monitor` (loops,
heartbeats, deadlines derived from each cell's measured chunk time). A cell that died, raised, froze
or got stuck is named, and :meth:`Grid.recover` restarts its replica: the faulty cells are killed and
replaced by new actors on the same node with the same device id and program, the others abort their
loops, the replica is rewired (fresh channels, every end), and every sample of that replica still in
flight is replayed from its first time slice. The other replicas go on. ``max_restarts`` per cell
bounds it; past that (or on a grid this driver does not own) the run stops with an error naming the
cell. Every restart (cells, causes, replayed samples, times) is in the report.

A lost host (:mod:`bidl_runtime.driver.hosts`): ``check`` asks the grid's :class:`HostWatch` first,
and ``recover`` lets it settle whether a failed replica's host is gone before restarting anything;
a lost host's cells are re-placed on other hosts (the plan changes) and their replicas replayed.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, TypeVar

from torch import Tensor

from bidl_runtime.cell.cell import CellSpec
from bidl_runtime.cell.pool import CellPool, kill, new_actor
from bidl_runtime.cell.template import CellTemplate
from bidl_runtime.channels import ChannelError, attach_sender, create_receiver, new_secret, sweep_stale
from bidl_runtime.errors import RunError
from bidl_runtime.plan.grid_plan import CellKey, GridPlan
from bidl_runtime.processes import alive
from bidl_runtime.retry import Expired, patiently
from bidl_runtime.runtime_config import RuntimeConfig

from . import trace as tracing
from .health import Fault, Monitor, Trouble, _error_text
from .hosts import HostWatch
from .reference import ReferenceProcesses, ReferenceSpec
from .report import RunReport
from .startup import StartupClock
from .stream import SampleStream

T = TypeVar("T")


class _RewireFailed(Exception):
    """A cell failed while its replica was being restarted (diagnosed and restarted again)."""


class Grid:
    """Cell actors and channels for a plan; ``run`` streams samples; ``close`` tears it all down.

    ``actors``: cell actors started beforehand (``{cell key: actor}``, see ``pool.spawn``);
    ``configured``: they already run this plan's programs (a kept-alive grid one attaches to);
    ``owned``: close kills them, and failed cells are restarted (False for an attached grid: it only
    lets go of them, and a failure stops the run).
    """

    def __init__(self, plan: GridPlan, config: Optional[RuntimeConfig] = None, pool: Optional[CellPool] = None,
                 actors: Optional[dict[CellKey, Any]] = None, configured: bool = False, owned: bool = True,
                 clock: Optional[StartupClock] = None):
        self.plan = plan
        self.config = (config or RuntimeConfig()).resolved(len(plan.cells))   # threads per cell for this grid
        if self.config.channel_secret is None:  # one secret per grid, to the cells through their CellSpec
            self.config = self.config.replace(channel_secret=new_secret())
        b = plan.outputs(None)[0].layout[0].shape[1]
        if b != self.config.batch:
            raise ValueError(f"--batch {self.config.batch}: the plan's programs take {b} sample(s) per message; "
                             "compile (prepare) them with the runtime's batch")
        self.pool = pool
        self.actors: dict[CellKey, Any] = dict(actors or {})
        self.pids: dict[CellKey, int] = {}               # cell -> its process (a restart kills it at once)
        self.clock = clock or StartupClock()
        self.owned = owned
        self._configured = configured
        self._healthy = False
        self._closed = False
        self.loops: dict[Any, Any] = {}                  # loop ref -> CellPlan
        self.feeds: dict[tuple[int, int], Any] = {}      # (replica, row) -> sender into cell (row, 0)
        self.results: dict[int, Any] = {}                # replica -> receiver from the last cell
        self.monitor = Monitor(self)
        self.hosts = HostWatch(self)                     # lost hosts: detected, their cells re-placed
        self.stream: Optional[SampleStream] = None
        self.restarts: list[dict] = []                   # this run's restarts (the report lists them)
        self.restarts_of: dict[CellKey, int] = {}        # per cell, over the grid's life
        self._faults_fired: set[CellKey] = set()         # drills fire once: a restarted cell runs clean
        self._t_run = time.perf_counter()
        self._last_check = 0.0
        self.trace_events = 0                            # > 0: the cells trace this run (see bidl_runtime.driver.trace)

    # ---------------------------------------------------------------------------------- set-up

    def spec_of(self, key: CellKey) -> CellSpec:
        """What cell ``key`` is told: its plan entry, its edges, the tunables (and its drill, once)."""
        fault = None if key in self._faults_fired else self.config.faults.get(key)
        return CellSpec(self.plan.cell(*key), self.plan.inputs(key), self.plan.outputs(key), self.config, fault,
                        config_name=self.plan.config)

    def start(self) -> "Grid":
        """Get an actor per cell and load its program (once; runs reuse them)."""
        if self._configured:
            return self
        p, rcfg = self.plan, self.config
        for c in p.cells:
            if c.key not in self.actors:
                self.actors[c.key] = (self.pool.acquire(c) if self.pool is not None
                                      else new_actor(c.name, c.node, rcfg.actor_gpus()))
        self.hosts.start_spares()   # standby cells start their processes beside the grid's, not while it streams
        t = time.time()
        try:
            self._configure([c.key for c in p.cells], startup=True)
        except Exception as e:  # noqa: BLE001
            self.clock.close()
            self.close()
            raise RunError(f"starting the grid's cells failed: {_error_text(e)}") from None
        self.clock.mark("cells", t, time.time())
        self._configured = True
        return self

    def _configure(self, keys: list[CellKey], startup: bool = False) -> None:
        """Load the programs of cells ``keys`` (their actors exist); records their pids."""
        import ray
        rcfg = self.config
        refs = {self.actors[k].configure.remote(self.spec_of(k)): self.plan.cell(*k) for k in keys}
        pending = list(refs)
        deadline = time.perf_counter() + rcfg.start_timeout_s
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.perf_counter()))
            if not done:
                raise TimeoutError(f"{len(pending)} cell(s) not ready after {rcfg.start_timeout_s:.0f} s "
                                   f"({', '.join(refs[r].name for r in pending[:4])}...)")
            c = refs[done[0]]
            tm = ray.get(done[0])
            self.pids[c.key] = tm["pid"]
            if startup:
                self.clock.cell_ready(c.name, {
                    "process_start_at": tm["process_start"] - self.clock.t0,       # Ray's worker process
                    "assigned_at": tm["import_started"] - self.clock.t0,           # it became this cell
                    "imports_s": tm["ready"] - tm["import_started"],               # torch, channels, ...
                    "load_s": tm["load_s"], "ready_at": tm["configured"] - self.clock.t0, "cpu_s": tm["cpu_s"]})

    def wire(self) -> None:
        """Fresh channel ends for a run: the cells' receivers, the driver's result receivers, then
        every sender; start the cells' loops (the grid then waits for samples). ``run`` calls it."""
        t = time.time()
        try:
            self._wire(set(range(self.plan.replicas)), fresh=True)
        except Exception as e:  # noqa: BLE001
            self.close()
            raise RunError(f"wiring the grid's channels failed: {_error_text(e)}") from None
        self.clock.mark("wire", t, time.time())
        self.clock.note("driver_cpu_s", time.process_time())
        self.clock.close()

    def _wire(self, replicas: set[int], fresh: bool) -> None:
        """Wire the cells of ``replicas`` and the driver's ends to them, and start their loops
        (``fresh``: new run, the cells' counters start over; else a rewire after a restart)."""
        import ray
        p, rcfg = self.plan, self.config
        cells = [c for c in p.cells if c.replica in replicas]
        wait = rcfg.start_timeout_s
        self._stop_loops(replicas)
        self._close_driver_ends(replicas)
        ray.get([self.actors[c.key].reset.remote(fresh) for c in cells], timeout=wait)
        endpoints: dict[str, Any] = {}
        for ends in ray.get([self.actors[c.key].open_inputs.remote() for c in cells], timeout=wait):
            endpoints.update(ends)
        for e in p.inputs(None):
            if e.replica in replicas:
                self.results[e.replica] = create_receiver(e.name, e.layout, rcfg.channel(e.transport))
                endpoints[e.name] = self.results[e.replica].descriptor
        ray.get([self.actors[c.key].connect.remote({e.name: endpoints[e.name] for e in p.outputs(c.key)})
                 for c in cells], timeout=wait)
        for e in p.outputs(None):
            if e.replica in replicas:
                self.feeds[(e.replica, e.dst[1])] = attach_sender(endpoints[e.name], epoch=rcfg.epoch)
        for c in cells:
            self.loops[self.actors[c.key].loop.remote(self.trace_events)] = c
            self.monitor.track(c.key)

    def _stop_loops(self, replicas: set[int]) -> None:
        """End loops still running in ``replicas`` (a run that failed before its drain)."""
        import ray
        refs = [r for r, c in self.loops.items() if c.replica in replicas]
        if not refs:
            return
        aborts = [self.actors[self.loops[r].key].abort.remote() for r in refs]
        ray.wait(refs + aborts, num_returns=len(refs) + len(aborts), timeout=max(2.0, 10 * self.config.poll_s))
        for r in refs:
            self.loops.pop(r, None)

    # ------------------------------------------------------------------------------------ run

    def run(self, samples: Iterable, *, total: Optional[int] = None, progress: bool = True,
            verify: bool = False, journal: Any = None, trace: Optional[str | Path] = None) -> RunReport:
        """Stream ``samples`` (tensors ``[T, C, H, W]``, or ``(tensor, label)``) through the grid and
        drain it. ``verify``: compare every output, as it arrives, with the single-device run of the
        same artifacts; ``journal`` (:class:`bidl_runtime.driver.journal.Journal`): skip the samples it
        holds, record each new result in it; ``trace``: write the run's Chrome trace there (and its
        PNG timeline beside it)."""
        self.trace_events = self.config.trace_events if trace is not None else 0
        self.start()
        self.monitor = Monitor(self)
        self.restarts = []
        self._t_run = time.perf_counter()
        self.wire()
        rcfg = self.config
        # the reference runs in processes of its own, idle while the grid streams (computing after it,
        # or beside it at idle priority): the grid's figures are its own (see bidl_runtime.driver.reference)
        verifier = (ReferenceProcesses(ReferenceSpec.of(self.plan, rcfg),
                                       rcfg.reference_processes(CellTemplate.active() is not None),
                                       rcfg.verify_pending_mb, beside=rcfg.verify_beside) if verify else None)
        try:
            stream = self.stream = SampleStream(self, samples, verifier, journal)
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
            traced = tracing.write_run(trace, self.plan, cells, stream.fed_at, stream.done_at) if trace else None
            checked = verifier.result() if verifier is not None else None
        finally:
            if verifier is not None:
                verifier.close()
        return RunReport(plan=self.plan, backend=rcfg.backend, transport=rcfg.transport,
                         outputs=dict(sorted(stream.outputs.items())), labels=stream.labels, rejected=stream.rejected,
                         fed_at=stream.fed_at, done_at=stream.done_at, wall_s=wall, cells=cells,
                         driver_channels=self._driver_stats(), startup=self.clock.as_dict(), verify=checked,
                         restarts=list(self.restarts), resumed=stream.resumed, trace=traced,
                         verify_cost=verifier.cost() if verifier is not None else None,
                         duplicated=stream.duplicated)

    def _driver_stats(self) -> dict:
        return {"channels_out": {f"feed{k}": s.stats.snapshot() for k, s in self.feeds.items()},
                "channels_in": {f"result{k}": r.stats.snapshot() for k, r in self.results.items()}}

    def oldest_inflight(self) -> Optional[int]:
        """The replica holding the oldest sample in flight (None if none)."""
        return self.stream.oldest_inflight() if self.stream is not None else None

    # ---------------------------------------------------------------------------------- health

    def check(self, replicas: Optional[set[int]] = None) -> None:
        """The health check run between bounded waits: raises Trouble for a replica with a failed cell."""
        self._last_check = time.perf_counter()
        if self.stream is not None:
            self.stream.check_failed()
        inflight = self.stream is not None and self.stream.inflight > 0
        self.hosts.check()
        self.monitor.check(replicas, inflight=inflight)

    def tick(self, replica: int) -> None:
        """After a result from ``replica``: note when the grid streamed again after a restart; keep
        the heartbeats going when results flow without waits."""
        self.monitor.result_arrived()
        for r in reversed(self.restarts):
            if r["replica"] == replica:
                if r.get("streaming_again_at") is None:
                    r["streaming_again_at"] = time.perf_counter()
                    r["streaming_again_s"] = round(r["streaming_again_at"] - r["detected_at"], 3)
                break
        if time.perf_counter() - self._last_check >= self.config.poll_s:
            self.guarded(self.check)

    def guarded(self, fn: Callable[[], T]) -> T:
        """``fn()``, restarting a failed replica and retrying as often as that takes."""
        while True:
            try:
                return fn()
            except Trouble as t:
                self.recover(t)

    def feed(self, replica: int, row: int, tensors: dict, meta: dict, timeout: float) -> None:
        """Send one message on the driver's feed into cell (row, 0) of ``replica`` (the stream's senders)."""
        self.feeds[(replica, row)].send(tensors, meta, timeout=timeout)

    def hint(self, replica: int, what: str) -> None:
        """A sign of failure in ``replica`` seen outside the cells (a broken driver channel)."""
        self.monitor.hint(replica, what)

    def wait_result(self, replica: int, sample: int) -> Tensor:
        """Sample ``sample``'s output from ``replica`` (a copy); restarts failed replicas meanwhile."""
        rcfg = self.config
        while True:
            rec = self.results[replica]
            try:
                msg = patiently(lambda t: rec.recv(timeout=t), poll_s=rcfg.poll_s, check=self.check)
            except Trouble as t:
                self.recover(t)
                continue
            except ChannelError as e:     # the last cell is gone: find out why, restart, replay
                self.monitor.hint(replica, f"the driver's result channel failed: {e}")
                self.guarded(self.check)
                continue
            got, kind = msg.meta.get("sample"), msg.kind
            if kind == "data" and got == sample:
                y = msg.tensors["y"].clone()
                msg.release()
                return y
            msg.release()
            raise RunError(f"results out of order: expected sample {sample} from replica {replica}, got a "
                           f"{kind!r} message for sample {got}")

    # --------------------------------------------------------------------------------- recovery

    def recover(self, trouble: Trouble) -> None:
        """Restart replica ``trouble.replica``: kill and replace its faulty cells, abort and rewire the
        rest, replay its in-flight samples. RunError past ``max_restarts`` for a cell."""
        while True:
            lost = self.hosts.settle(trouble)   # a cell on a host that is gone: re-placed, not restarted there
            if lost is not None:
                self.hosts.heal(lost)
                return
            try:
                self._recover(trouble)
                return
            except _RewireFailed as e:
                faults = self.monitor.diagnose(trouble.replica)
                for f in faults:
                    f.cause = f"{f.cause} (while restarting the replica: {e})"
                trouble = Trouble(trouble.replica, faults)

    def _recover(self, trouble: Trouble) -> None:
        import ray
        rcfg, k = self.config, trouble.replica
        for f in trouble.faults:
            n = self.restarts_of[f.key] = self.restarts_of.get(f.key, 0) + 1
            if not self.owned:
                raise RunError(f"{f.name} failed: {f.cause} (the grid belongs to another driver (--keep-alive), "
                               "which restarts nothing for an attached run)")
            if n > rcfg.max_restarts:
                raise RunError(f"{f.name} failed: {f.cause} (restarted {n - 1} time(s): gave up after "
                               f"--max-restarts {rcfg.max_restarts})")
        detected = min(f.at for f in trouble.faults)
        steps = {"start": time.perf_counter()}
        replayed = self.stream.pause(k) if self.stream is not None else []
        steps["paused"] = time.perf_counter()
        cells = [c for c in self.plan.cells if c.replica == k]
        restart = {f.key for f in trouble.faults if f.restart}
        aborts = [self.actors[c.key].abort.remote() for c in cells if c.key not in restart]
        for f in trouble.faults:
            if f.restart:
                self._kill(f.key, now=f.kind == "frozen")
        refs = [r for r, c in self.loops.items() if c.replica == k]
        bound = max(2.0, 10 * rcfg.poll_s)
        _, stuck = ray.wait(refs + aborts, num_returns=len(refs + aborts), timeout=bound)
        for r in stuck:
            c = self.loops.get(r)
            if c is not None and c.key not in restart:   # did not stop for the rewire: replaced too
                trouble.faults.append(Fault(c.key, c.name, "stuck", f"did not stop within {bound:.0f} s when "
                                                                     "its replica was restarted"))
                restart.add(c.key)
                self._kill(c.key, now=True)
        for r in refs:
            self.loops.pop(r, None)
        steps["stopped"] = time.perf_counter()
        try:
            for key in sorted(restart):
                self._faults_fired.add(key)
                self.actors[key] = (self.pool.renew(self.plan.cell(*key)) if self.pool is not None
                                    else new_actor(self.plan.cell(*key).name, self.plan.cell(*key).node,
                                                      rcfg.actor_gpus()))
            self._configure(sorted(restart))
            steps["configured"] = time.perf_counter()
            self._wire({k}, fresh=False)
            steps["wired"] = time.perf_counter()
        except Exception as e:  # noqa: BLE001 - a cell failed meanwhile: diagnose again
            raise _RewireFailed(_error_text(e)) from None
        self.monitor.rewired()
        if self.stream is not None:
            self.stream.resume(k)
        now = time.perf_counter()
        self.restarts.append({
            "replica": k, "cells": [{"cell": f.name, "kind": f.kind, "cause": f.cause, "restarted": f.key in restart}
                                    for f in trouble.faults],
            "replayed": replayed, "detected_at": detected, "rewired_at": now,
            "detected_after_s": round(detected - self._t_run, 3), "rewired_s": round(now - detected, 3),
            "streaming_again_at": None, "streaming_again_s": None,
            "timeline_s": {k: round(v - detected, 3) for k, v in steps.items()}})
        _quiet(sweep_stale)   # slot files a killed cell had created before its senders attached

    def _kill(self, key: CellKey, now: bool = False) -> None:
        """Kill cell ``key``'s actor; ``now``: also SIGKILL its process when it runs on this node (a
        frozen process does not answer Ray's kill for seconds)."""
        if key in self.actors:
            kill(self.actors[key])
        pid, c = self.pids.get(key), self.plan.cell(*key)
        if now and pid and c.node in ("local", self.plan.driver_node):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    # ------------------------------------------------------------------------------- shutdown

    def drain(self) -> list[dict]:
        """Drain the grid with stop messages and return every cell's stats (``run`` calls it); a
        cell that fails meanwhile is restarted (nothing is in flight: a rewire) and drained again."""
        pending = set(range(self.plan.replicas))
        stats: dict[CellKey, dict] = {}
        while pending:
            k = min(pending)
            try:
                stats.update(self._drain(k))
                pending.discard(k)
            except Trouble as t:
                self.recover(t)
                pending.add(t.replica)
                pending.update(getattr(t, "replicas", ()))   # a lost host's heal rewires several
        self._healthy = True
        return [stats[c.key] for c in self.plan.cells]

    def _drain(self, k: int) -> dict[CellKey, dict]:
        import ray
        rcfg = self.config
        timeout = rcfg.stop_timeout_s
        for g in range(self.plan.rows):
            try:
                self.feeds[(k, g)].send_control("stop", timeout=timeout)
            except ChannelError as e:
                self.monitor.hint(k, f"sending stop failed: {e}")
        rec = self.results[k]

        def until_stop(t: float) -> None:
            msg = rec.recv(timeout=t)
            kind = msg.kind
            msg.release()
            if kind != "stop":
                raise Expired   # a late result: keep reading until the stop message
        try:
            patiently(until_stop, poll_s=rcfg.poll_s, limit_s=timeout, check=lambda: self.check({k}),
                      give_up=lambda s: RunError(f"stopping the grid failed: no stop message from replica {k} "
                                                 f"after {s:.0f} s"))
        except ChannelError as e:
            self.monitor.hint(k, f"the driver's result channel failed while stopping: {e}")
            self.check({k})
            raise RunError(f"stopping the grid failed: {e}") from None
        refs = {r: c for r, c in self.loops.items() if c.replica == k}
        done, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        if pending:
            names = ", ".join(refs[r].name for r in pending)
            raise RunError(f"stopping the grid failed: {names} did not stop within {timeout:.0f} s")
        out = {}
        for r in done:
            try:
                out[refs[r].key] = ray.get(r, timeout=timeout)
            except Exception:  # noqa: BLE001 - diagnosed and restarted by the caller
                self.check({k})
                raise
            self.loops.pop(r, None)
        return out

    def _close_driver_ends(self, replicas: Optional[set[int]] = None) -> None:
        for key in [key for key in self.feeds if replicas is None or key[0] in replicas]:
            _quiet(self.feeds.pop(key).close)
        for k in [k for k in self.results if replicas is None or k in replicas]:
            _quiet(self.results.pop(k).close)

    def close(self) -> None:
        """Let go of the cells (kill them if owned; return them to the pool) and close the driver's
        channel ends (idempotent). Cells close their channel ends first (their unattached slot files
        go), then owned ones are killed; slot files of dead processes are swept."""
        if self._closed:
            return
        self._closed = True
        import ray
        self.hosts.close()
        self._close_driver_ends()
        wait = self.config.stop_timeout_s
        pids = [p for p in self.pids.values() if p]
        if not self.owned:
            if self._healthy:
                _quiet(lambda: ray.get([a.reset.remote() for a in self.actors.values()], timeout=wait))
            return
        if self.pool is not None:
            if self._healthy:
                _quiet(lambda: ray.get([a.close.remote() for a in self.actors.values()], timeout=wait))
            else:
                self._close_cells()
            self.pool.release(self._healthy)
        else:
            silent = self._close_cells()
            for key in list(self.actors):
                self._kill(key, now=key in silent)
        self._sweep(pids)

    def _close_cells(self) -> set[CellKey]:
        """Best effort, bounded: end the cells' loops and close their channel ends; returns the cells
        that did not answer (frozen or gone)."""
        import ray
        bound = max(1.0, 5 * self.config.poll_s)
        aborts = [a.abort.remote() for a in self.actors.values()]
        _quiet(lambda: ray.wait(aborts + list(self.loops), num_returns=len(aborts) + len(self.loops), timeout=bound))
        closes = {a.close.remote(): key for key, a in self.actors.items()}
        answered: set = set()
        try:
            answered = set(ray.wait(list(closes), num_returns=len(closes), timeout=bound)[0])
        except Exception:  # noqa: BLE001 - teardown is best effort
            pass
        return {key for ref, key in closes.items() if ref not in answered}

    def _sweep(self, pids: list[int]) -> None:
        """Once the killed cells' processes are gone, remove the slot files they left."""
        deadline = time.perf_counter() + 3.0
        while pids and time.perf_counter() < deadline:
            pids = [p for p in pids if alive(p)]
            time.sleep(0.05)
        _quiet(sweep_stale)

    def __enter__(self) -> "Grid":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def _quiet(fn) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - teardown is best effort
        pass
