"""A grid cell: one Ray actor per (time slice g, segment s), owning its device context.

Lifecycle: ``configure(spec)`` opens the device context and loads the program (once per grid);
then per run ``open_inputs()`` creates the receiving ends of the cell's input edges,
``connect(...)`` attaches to the receivers of its output edges, ``loop()`` serves samples until a
stop message and returns the cell's stats, ``reset()`` drops the channel ends (the program stays
loaded, so a kept-alive grid runs again without loading anything). While the loop runs, ``ping()``
answers the driver's heartbeat (progress, and how long the current chunk has been computing) and
``abort()`` ends the loop within ``poll_s`` (the driver rewires a replica after a failure).

Loop per sample: wait for the input chunk (the ``input`` edge from the driver for s = 0, else the
``activation`` edge from cell (g, s-1): one tensor, or the main activation and its carry -- the skip
tensor -- when the columns are cut inside a residual block) and for the ``state`` edge from cell
(g-1, s) (zeros for g = 0), run the chunk, hand the outputs to the outbox thread (``state`` to (g+1, s), ``activation``
to (g, s+1), or the ``result`` to the driver; sent while the next chunk computes), then release
the inputs (their slots' credits go back to the senders). Which edges exist is the plan's business:
the cell only reads them. Cells hold no sample state between samples, so a restarted cell can
replay the driver's in-flight samples. Every wait is bounded (:func:`bidl_runtime.retry.patiently`).
"""
from __future__ import annotations

import time

_IMPORT_STARTED = time.time()   # this module is imported when the actor's worker gets the cell class

import os  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import traceback  # noqa: E402
from dataclasses import dataclass
from queue import Queue
from typing import Any, Optional  # noqa: E402

import torch  # noqa: E402,F401  (imported with the actor class, not on the first chunk)

from bidl_runtime.channels import attach_sender, create_receiver  # noqa: E402
from bidl_runtime.errors import CellError  # noqa: E402
from bidl_runtime.plan.grid_plan import CellPlan, Edge  # noqa: E402
from bidl_runtime.retry import attempt, patiently  # noqa: E402
from bidl_runtime.runtime_config import RuntimeConfig  # noqa: E402

from .contexts import open_context  # noqa: E402
from bidl_runtime.processes import process_start_time  # noqa: E402

from .events import BusyClock  # noqa: E402
from .metrics import CellMetrics, cell_labels  # noqa: E402
from .spans import LOOP, OUTBOX, TraceBuffer  # noqa: E402
from .template import forked_at  # noqa: E402

_IMPORTED_AT = time.time()


@dataclass(frozen=True)
class CellSpec:
    """Everything a cell needs (picklable; sent to the actor by the driver): its entry in the plan,
    its edges as the plan lists them, and the runtime tunables."""

    cell: CellPlan
    inputs: tuple[Edge, ...]
    outputs: tuple[Edge, ...]
    config: RuntimeConfig
    fault: Optional[tuple[str, int]] = None    # drill: (kind, sample id), kind in FAULTS
    config_name: str = ""                      # the model config's name (the metrics' ``config`` label)

    @property
    def x_edge(self) -> Edge:
        return next(e for e in self.inputs if e.kind in ("input", "activation"))

    @property
    def state_edge(self) -> Optional[Edge]:
        return next((e for e in self.inputs if e.kind == "state"), None)


class Aborted(Exception):
    """The driver aborted the loop (to rewire the cell's replica)."""


# fault drills (RuntimeConfig.faults, --inject-fault): what the cell does at the given sample
FAULTS = {
    "raise": "raise an exception in the loop",
    "exit": "exit the process at once (like a crash or SIGKILL)",
    "hang": "stop the process (SIGSTOP: frozen, silent)",
    "stall": "block inside the chunk's compute (alive, answering pings, making no progress)",
    "connect": "fail while connecting its output channels (a failed start-up)",
}


class Cell:
    """The actor body (wrapped with ``ray.remote`` by the driver or the pool)."""

    def __init__(self, spec: Optional[CellSpec] = None):
        self.receivers: dict[str, Any] = {}
        self.senders: dict[str, Any] = {}
        self.ctx = None
        self.spec: Optional[CellSpec] = None
        self._metrics: Optional[CellMetrics] = None
        self._trace: Optional[TraceBuffer] = None
        self._abort = threading.Event()
        started = process_start_time()   # a worker forked from a cell template imported nothing itself
        self._timings = {"process_start": started, "import_started": max(_IMPORT_STARTED, started),
                         "imported": max(_IMPORTED_AT, started), "ready": time.time(),
                         "forked": forked_at() is not None}
        if spec is not None:
            self.configure(spec)

    def configure(self, spec: CellSpec) -> dict[str, float]:
        """(Re)build this cell for ``spec``: device context and program. A pooled or kept-alive
        actor is reconfigured instead of starting a new process. Returns start-up timings (epoch
        seconds: worker process start, cell module import start and end, actor ready; and the
        program load's seconds)."""
        self.close()
        self.spec = spec
        self.name = spec.cell.name
        rcfg = spec.config
        t = time.perf_counter()
        self.ctx = open_context(rcfg.backend, spec.cell.device, rcfg.threads_per_cell, **rcfg.context_options())
        self.ctx.load(spec.cell.program)
        self._timings["load_s"] = time.perf_counter() - t
        self._timings["configured"] = time.time()
        self._timings["cpu_s"] = time.process_time()   # this process's CPU seconds so far (start-up cost)
        self._timings["pid"] = os.getpid()
        self._abort.clear()
        self._metrics = _cell_metrics(spec) if rcfg.metrics else None
        self._fresh_counters()
        return dict(self._timings)

    def _fresh_counters(self) -> None:
        self.clock = BusyClock()
        self._t_start = 0.0
        self._t_end = 0.0
        self._samples = 0
        if self._metrics is not None:
            self._metrics.reset()
        self._first: Optional[dict] = None   # perf_counter timeline of the first sample (latency analysis)
        self._computing_since: Optional[float] = None   # perf_counter when the current chunk's compute began
        self._last_sample: Any = None

    def describe(self) -> dict[str, Any]:
        """Which cell this actor is configured as (a process attaching to a kept-alive grid checks it)."""
        return {"cell": self.spec.cell.name if self.spec else None, "pid": os.getpid(),
                "program": self.spec.cell.program.path if self.spec else None}

    # ------------------------------------------------------------------ wiring (control plane)

    def open_inputs(self) -> dict[str, Any]:
        """Create the receiving ends of this cell's input edges; their picklable endpoints by edge name."""
        for e in self.spec.inputs:
            self.receivers[e.name] = create_receiver(e.name, e.layout, self.spec.config.channel(e.transport))
        return {k: r.descriptor for k, r in self.receivers.items()}

    def connect(self, endpoints: dict[str, Any]) -> None:
        """Attach to the receivers of this cell's output edges (``{edge name: endpoint}``)."""
        if self.spec.fault is not None and self.spec.fault[0] == "connect":
            raise CellError(f"{self.name}: injected fault (connect)")
        for e in self.spec.outputs:   # this cell's grid epoch, not the receiver's: a fenced cell is refused
            self.senders[e.name] = attach_sender(endpoints[e.name], epoch=self.spec.config.epoch)

    def update(self, spec: CellSpec) -> None:
        """Take a re-placed grid's plan for this cell (its edges, names, tunables and grid epoch) without
        reloading its program, which must be the same (the driver rewires it next)."""
        old = self.spec.cell
        if (spec.cell.key, spec.cell.program) != (old.key, old.program) or spec.cell.device != old.device:
            raise CellError(f"{self.name}: update to {spec.cell.name} changes its cell, device or program: "
                            "configure it instead")
        self.spec, self.name = spec, spec.cell.name

    def reset(self, fresh: bool = True) -> None:
        """Drop the channel ends (and, ``fresh``, the counters of the last run: a rewire in the middle
        of a run keeps them); the program stays loaded."""
        self._close_channels()
        self._abort.clear()
        if fresh:
            self._fresh_counters()

    # ---------------------------------------------------------------- health (control plane)

    def ping(self) -> dict[str, Any]:
        """The heartbeat: samples done, the last one, seconds the current chunk has been computing
        (None between chunks) and the median chunk time (the driver derives its deadlines from it)."""
        since = self._computing_since
        return {"pid": os.getpid(), "samples": self._samples, "last_sample": self._last_sample,
                "computing_s": None if since is None else time.perf_counter() - since,
                "chunk_ms": _median(self.clock.samples_ms)}

    def abort(self) -> None:
        """End the running loop at its next bounded wait (it returns its stats, marked aborted)."""
        self._abort.set()

    def _check_abort(self) -> None:
        if self._abort.is_set():
            raise Aborted

    # ------------------------------------------------------------------------------ data plane

    def _recv(self, edge: Edge):
        """Next message on an input edge; bounded waits, idle limit."""
        rx = self.receivers[edge.name]
        rcfg = self.spec.config
        return patiently(lambda t: rx.recv(timeout=t), poll_s=rcfg.poll_s, limit_s=rcfg.idle_timeout_s,
                         check=self._check_abort,
                         give_up=lambda s: CellError(f"{self.name}: no {edge.kind} input on {edge.name} for {s:.0f} s"))

    def _send(self, edge: Edge, tensors: Any, meta: dict, tx: Any) -> None:
        """Send on an output edge's sender ``tx``, waiting for a credit as long as the receiver is alive
        (bounded by the idle limit): a slow downstream cell is back-pressure, not an error."""
        rcfg = self.spec.config
        patiently(lambda t: tx.send(tensors, meta, timeout=t), poll_s=rcfg.poll_s, limit_s=rcfg.idle_timeout_s,
                  check=self._check_abort,
                  give_up=lambda s: CellError(f"{self.name}: {edge.kind} output {edge.name} blocked for {s:.0f} s"))

    def loop(self, trace_events: int = 0) -> dict[str, Any]:
        """Serve samples until a stop message (or ``abort()``); returns this cell's stats (with its trace
        spans when ``trace_events`` > 0: at most that many kept, see :mod:`bidl_runtime.driver.trace`)."""
        self._trace = TraceBuffer(trace_events) if trace_events else None
        try:
            return self._loop()
        except Aborted:
            return dict(self.stats(), aborted=True)
        except CellError:
            raise
        except Exception as e:  # noqa: BLE001 - name the cell in whatever went wrong
            traceback.print_exc()  # the full trace goes to this worker's log
            raise CellError(f"{self.name}: {type(e).__name__}: {e}") from None

    def _loop(self) -> dict[str, Any]:
        spec = self.spec
        zero = self.ctx.reset_state() if spec.state_edge is None else None
        outbox = _Outbox(self.name, spec.config, self._check_abort)
        try:
            self._serve(spec, zero, outbox)
        finally:
            outbox.close()
        for s in self.senders.values():
            s.send_control("stop")
        return self.stats()

    def _serve(self, spec: CellSpec, zero, outbox: "_Outbox") -> None:
        """Receive, compute, hand the outputs to the outbox (sent while the next chunk computes)."""
        ev0, ev1 = self.ctx.create_event(), self.ctx.create_event()
        x_edge, state_edge = spec.x_edge, spec.state_edge
        tr = self._trace
        while True:
            t_w = time.perf_counter()
            mx = self._recv(x_edge)
            t_x = time.perf_counter()
            meta = mx.meta
            ms = self._recv(state_edge) if state_edge is not None else None
            t_in = time.perf_counter()
            if mx.kind == "stop":
                if ms is not None and ms.kind != "stop":
                    raise CellError(f"{self.name}: stop on the input but sample {ms.meta.get('sample')} "
                                    "from the row above")
                outbox.flush()
                return
            if ms is not None and ms.meta.get("sample") != meta.get("sample"):
                raise CellError(f"{self.name}: input is sample {meta.get('sample')} but the state from "
                                f"the row above is sample {ms.meta.get('sample')}")
            if mx.kind != "data" or (ms is not None and ms.kind != "data"):
                raise CellError(f"{self.name}: unexpected message kind {mx.kind!r} / "
                                f"{ms.kind if ms is not None else '-'!r}: {meta.get('error', '')}")
            x = _activation(mx, x_edge)
            state = ms.tensors if ms is not None else zero
            ev0.record(self.ctx.stream)
            if not self._t_start:
                self._t_start = time.perf_counter()  # busy % counts from the first compute
            t_exec = self._computing_since = time.perf_counter()
            if spec.fault is not None and spec.fault[1] == meta.get("sample"):
                self._inject(spec.fault[0])
            y, new_state = self.ctx.execute(x, state)
            self._computing_since = None
            ev1.record(self.ctx.stream)
            if self._first is None:
                self._first = {"x_ready": t_x, "inputs_ready": t_in, "exec_start": t_exec,
                               "exec_end": time.perf_counter()}
            ms_busy = ev0.elapsed_ms(ev1)
            self.clock.add(ms_busy)
            if tr is not None:
                t_end = time.perf_counter()
                _trace_chunk(tr, meta.get("sample"), t_w, t_x, t_in if state_edge is not None else None, t_exec, t_end)
            outbox.put(self._deliver(spec, meta.get("sample"), y, new_state, mx, ms, ms_busy, _steps(x), t_in - t_w))
            if tr is not None and time.perf_counter() - t_end > 20e-6:
                tr.add(LOOP, "wait outbox", t_end, time.perf_counter(), meta.get("sample"))

    def _deliver(self, spec: CellSpec, sample: Any, y, new_state, mx, ms, ms_busy: float, steps: int,
                 wait_s: float = 0.0):
        """The outbox job of one sample: send its outputs on every output edge, then release its
        inputs (the outputs may be views of the input slots, e.g. the emulated backend hands the
        state through)."""
        payloads = {"state": lambda e: new_state, "activation": lambda e: _named(e, y), "result": lambda e: {"y": y[-1]}}
        senders = dict(self.senders)   # this wiring's: a job outliving an abort never reaches a rewired channel
        tr = self._trace

        def job() -> None:
            out_meta = {"kind": "data", "sample": sample}
            for e in spec.outputs:
                t = time.perf_counter() if tr is not None else 0.0
                self._send(e, payloads[e.kind](e), out_meta, senders[e.name])
                if tr is not None:
                    tr.add(OUTBOX, f"send {e.kind}", t, time.perf_counter(), sample)
            mx.release()
            if ms is not None:
                ms.release()
            if self._samples == 0 and self._first is not None:
                self._first["sent"] = time.perf_counter()
            self._samples += 1
            self._last_sample = sample
            self._t_end = time.perf_counter()
            if self._metrics is not None:
                self._metrics.record(ms_busy, steps, wait_s, sum(s.stats.bytes for s in self.senders.values()),
                                     sum(s.depth - s.credits for s in self.senders.values()))
        return job

    def _inject(self, what: str) -> None:
        """Fault drills (see FAULTS), inside the chunk's compute."""
        if what == "exit":
            os._exit(17)
        if what == "hang":
            os.kill(os.getpid(), signal.SIGSTOP)
            return
        if what == "stall":
            while True:
                time.sleep(3600)
        if what == "raise":
            raise RuntimeError(f"injected fault ({what})")

    # ---------------------------------------------------------------------------- observability

    def stats(self) -> dict[str, Any]:
        wall = max(1e-9, (self._t_end or time.perf_counter()) - self._t_start) if self._t_start else 0.0
        c = self.spec.cell
        return {
            "cell": self.name, "replica": c.replica, "row": c.row, "col": c.col, "device": c.device,
            "samples": self._samples, "pid": os.getpid(), "node": _node_id(), "first_sample": self._first,
            "program": c.program.path, "format": getattr(self.ctx, "format", None),
            "busy_s": self.clock.busy_s, "wall_s": wall,
            "busy_pct": 100.0 * self.clock.busy_s / wall if wall else 0.0,
            "step_ms_median": _median(self.clock.samples_ms),
            "channels_in": {k: r.stats.snapshot() for k, r in self.receivers.items()},
            "channels_out": {k: s.stats.snapshot() for k, s in self.senders.items()},
            **({"trace": self._trace.export(_node_id())} if self._trace is not None else {}),
        }

    def _close_channels(self) -> None:
        for s in self.senders.values():
            s.close()
        for r in self.receivers.values():
            r.close()
        self.senders, self.receivers = {}, {}

    def close(self) -> None:
        """Close the channel ends and the device context (idempotent)."""
        self._close_channels()
        if self.ctx is not None:
            self.ctx.close()
            self.ctx = None


class _Outbox:
    """A thread that sends one sample's outputs while the cell computes the next chunk (depth 1:
    the cell waits before handing over a second job). Errors re-raise in the cell's loop."""

    def __init__(self, name: str, config: RuntimeConfig, check=None) -> None:
        self.name, self.config, self.check = name, config, check
        self.q: Queue = Queue(maxsize=1)
        self.err: Optional[BaseException] = None
        self.idle = threading.Event()
        self.idle.set()
        self.thread = threading.Thread(target=self._run, name=f"{name}-outbox", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.q.get()
            if job is None:
                return
            try:
                if self.err is None:
                    job()
            except BaseException as e:  # noqa: BLE001 - handed to the cell loop
                self.err = e
            finally:
                self.idle.set()

    def put(self, job) -> None:
        self.flush()
        self.idle.clear()
        self.q.put(job)

    def flush(self) -> None:
        """Wait until the previous job is sent (its sends are bounded by the idle limit); re-raise its error."""
        patiently(lambda t: attempt(self.idle.wait(t)), poll_s=self.config.poll_s,
                  limit_s=2 * self.config.idle_timeout_s, check=self.check,
                  give_up=lambda s: CellError(f"{self.name}: outbox still sending after {s:.0f} s"))
        if self.err is not None:
            err, self.err = self.err, None
            raise err

    def close(self) -> None:
        self.q.put(None)
        self.thread.join(timeout=max(1.0, 10 * self.config.poll_s))


def _activation(msg: Any, edge: Edge) -> Any:
    """The chunk input of a message: one tensor, or the tuple of x and its carry (a cut inside a block)
    in the edge's layout order."""
    if len(edge.layout) == 1:
        return msg.tensors[edge.layout[0].name]
    return tuple(msg.tensors[t.name] for t in edge.layout)


def _named(edge: Edge, y: Any) -> dict[str, Any]:
    """A segment's output (y, or y and its carry) by the names of the edge's layout, in order."""
    ys = y if isinstance(y, (tuple, list)) else (y,)
    if len(ys) != len(edge.layout):
        raise CellError(f"{edge.name}: the segment returns {len(ys)} tensors, the edge carries {len(edge.layout)} "
                        f"({[t.name for t in edge.layout]})")
    return {t.name: v for t, v in zip(edge.layout, ys)}


def _steps(x: Any) -> int:
    return (x[0] if isinstance(x, (tuple, list)) else x).shape[0]


def _cell_metrics(spec: CellSpec) -> Optional[CellMetrics]:
    try:
        return CellMetrics(cell_labels(spec.cell, spec.config_name))
    except Exception:  # noqa: BLE001 - metrics are optional outside Ray
        return None


def _trace_chunk(tr: TraceBuffer, sample: Any, t_w: float, t_x: float, t_state: Optional[float], t_exec: float,
                 t_end: float) -> None:
    """The loop's spans of one chunk: waits for its input (and state), its compute."""
    tr.add(LOOP, "wait input", t_w, t_x, sample)
    if t_state is not None:
        tr.add(LOOP, "wait state", t_x, t_state, sample)
    tr.add(LOOP, "compute", t_exec, t_end, sample)


def _node_id() -> Optional[str]:
    try:
        import ray
        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray
        return None


def _median(xs: list[float]) -> Optional[float]:
    if not xs:
        return None
    s = sorted(xs)
    return s[len(s) // 2]
