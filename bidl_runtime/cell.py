"""A grid cell: one Ray actor per (time slice g, segment s), owning its device context.

Loop per sample: wait for the input chunk (from the driver for s = 0, else from cell (g, s-1)) and
for the state (from cell (g-1, s); zeros for g = 0), run the chunk, send the state right-of-time to
(g+1, s) and the activations down-the-segments to (g, s+1) (the last cell of the last row sends the
result to the driver), then release the inputs (their slots' credits go back to the senders).

Cells hold no sample state between samples, so a later issue can restart one and replay the
driver's in-flight samples. A ``stop`` message drains the grid in order; every wait is bounded.
"""
from __future__ import annotations

import os
import threading
import time
import traceback
from queue import Queue
from dataclasses import dataclass, field
from typing import Any, Optional

from bidl_models.specs import TensorSpec

from .channels import ChannelConfig, ChannelTimeout, attach_sender, create_receiver
from .devices import ArtifactSource, BusyClock, EmulatedSource, open_context
from .plan import CellPlan


@dataclass(frozen=True)
class CellSpec:
    """Everything a cell needs (picklable; sent to the actor by the driver)."""

    plan: CellPlan
    rows: int
    cols: int
    backend: str
    source: ArtifactSource | EmulatedSource
    x_layout: tuple[TensorSpec, ...]          # the input chunk [t, B, ...]
    state_layout: tuple[TensorSpec, ...]      # the segment's state tensors
    channel: ChannelConfig = field(default_factory=ChannelConfig)          # x input (transport by edge)
    state_channel: ChannelConfig = field(default_factory=ChannelConfig)    # state input
    threads: int = 1
    idle_timeout_s: float = 600.0             # no input for this long: the cell gives up
    poll_s: float = 0.5                       # blocking-wait granularity for abort checks
    metrics: bool = True
    fault: Optional[tuple[str, int]] = None    # test hook: ('raise' | 'exit', sample id)

    @property
    def state_in(self) -> bool:
        return self.plan.row > 0

    @property
    def state_out(self) -> bool:
        return self.plan.row < self.rows - 1

    @property
    def x_out(self) -> Optional[str]:
        """'cell' (to (g, s+1)), 'driver' (the sample's result) or None."""
        if self.plan.col < self.cols - 1:
            return "cell"
        return "driver" if self.plan.row == self.rows - 1 else None


class CellError(RuntimeError):
    """A cell failed; the message names the cell."""


class Cell:
    """The actor body (wrapped with ``ray.remote`` by the driver)."""

    def __init__(self, spec: Optional[CellSpec] = None):
        self.receivers: dict[str, Any] = {}
        self.senders: dict[str, Any] = {}
        self.ctx = None
        self._metrics: Optional[dict] = None
        if spec is not None:
            self.configure(spec)

    def configure(self, spec: CellSpec) -> None:
        """(Re)build this cell for ``spec``: device context, loaded segment, fresh counters. A
        pooled actor is reconfigured between runs instead of starting a new process."""
        self.close()
        self.spec = spec
        self.name = spec.plan.name
        self.ctx = open_context(spec.backend, spec.plan.device, spec.threads)
        self.ctx.load(spec.source)
        self.clock = BusyClock()
        self._abort = False
        self._t_start = 0.0
        self._t_end = 0.0
        self._samples = 0
        self._bytes_reported = 0
        self._first: Optional[dict] = None   # perf_counter timeline of the first sample (latency analysis)
        if spec.metrics and self._metrics is None:
            self._metrics = self._make_metrics()

    # ------------------------------------------------------------------ wiring (control plane)

    def open_inputs(self) -> dict[str, Any]:
        """Create this cell's receiving channel ends; returns their picklable endpoints."""
        tag = self.spec.plan.name
        self.receivers["x"] = create_receiver(f"{tag}:x", self.spec.x_layout, self.spec.channel)
        if self.spec.state_in:
            self.receivers["state"] = create_receiver(f"{tag}:state", self.spec.state_layout,
                                                     self.spec.state_channel)
        return {k: r.descriptor for k, r in self.receivers.items()}

    def connect(self, outputs: dict[str, Any]) -> None:
        """Attach to downstream endpoints: ``{'x': ..., 'state': ...}`` as this cell needs."""
        for key in ("x", "state"):
            if outputs.get(key) is not None:
                self.senders[key] = attach_sender(outputs[key])

    def abort(self) -> None:
        self._abort = True

    # ------------------------------------------------------------------------------ data plane

    def _recv(self, key: str):
        """Next message on input ``key``; bounded waits, abort-aware, idle limit."""
        r = self.receivers[key]
        waited = 0.0
        while True:
            if self._abort:
                raise CellError(f"{self.name}: aborted by the driver")
            try:
                return r.recv(timeout=self.spec.poll_s)
            except ChannelTimeout:
                waited += self.spec.poll_s
                if waited >= self.spec.idle_timeout_s:
                    raise CellError(f"{self.name}: no {key} input for {waited:.0f} s") from None

    def _send(self, key: str, tensors: Any, meta: dict) -> None:
        """Send on output ``key``, waiting for a credit as long as the receiver is alive (bounded
        by the idle limit, abort-aware): a slow downstream cell is back-pressure, not an error."""
        s = self.senders[key]
        waited = 0.0
        while True:
            if self._abort:
                raise CellError(f"{self.name}: aborted by the driver")
            try:
                s.send(tensors, meta, timeout=self.spec.poll_s)
                return
            except ChannelTimeout:
                waited += self.spec.poll_s
                if waited >= self.spec.idle_timeout_s:
                    raise CellError(f"{self.name}: {key} output blocked for {waited:.0f} s") from None

    def loop(self) -> dict[str, Any]:
        """Serve samples until a stop message; returns this cell's stats."""
        try:
            return self._loop()
        except CellError:
            raise
        except Exception as e:  # noqa: BLE001 - name the cell in whatever went wrong
            traceback.print_exc()  # the full trace goes to this worker's log
            raise CellError(f"{self.name}: {type(e).__name__}: {e}") from None

    def _loop(self) -> dict[str, Any]:
        spec = self.spec
        zero = self.ctx.reset_state() if not spec.state_in else None
        ev0, ev1 = self.ctx.create_event(), self.ctx.create_event()
        outbox = _Outbox(self.name, spec.poll_s, lambda: self._abort)
        try:
            self._serve(spec, zero, ev0, ev1, outbox)
        finally:
            outbox.close()
        for s in self.senders.values():
            s.send_control("stop")
        return self.stats()

    def _serve(self, spec: CellSpec, zero, ev0, ev1, outbox: "_Outbox") -> None:
        """Receive, compute, hand the outputs to the outbox (sent while the next chunk computes)."""
        while True:
            mx = self._recv("x")
            t_x = time.perf_counter()
            meta = mx.meta
            ms = self._recv("state") if spec.state_in else None
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
            if spec.fault is not None and spec.fault[1] == meta.get("sample"):
                self._inject(spec.fault[0])
            x = mx.tensors["x"]
            state = ms.tensors if ms is not None else zero
            ev0.record(self.ctx.stream)
            if not self._t_start:
                self._t_start = time.perf_counter()  # busy % counts from the first compute
            t_exec = time.perf_counter()
            y, new_state = self.ctx.execute(x, state)
            ev1.record(self.ctx.stream)
            if self._first is None:
                self._first = {"x_ready": t_x, "inputs_ready": t_in, "exec_start": t_exec,
                               "exec_end": time.perf_counter()}
            ms_busy = ev0.elapsed_ms(ev1)
            self.clock.add(ms_busy)
            outbox.put(self._deliver(spec, meta.get("sample"), y, new_state, mx, ms, ms_busy, x.shape[0]))

    def _deliver(self, spec: CellSpec, sample: Any, y, new_state, mx, ms, ms_busy: float, steps: int):
        """The outbox job of one sample: send its outputs, then release its inputs (the outputs may
        be views of the input slots, e.g. the emulated backend hands the state through)."""
        def job() -> None:
            out_meta = {"kind": "data", "sample": sample}
            if spec.state_out:
                self._send("state", new_state, out_meta)
            if spec.x_out == "cell":
                self._send("x", {"x": y}, out_meta)
            elif spec.x_out == "driver":
                self._send("x", {"y": y[-1]}, out_meta)
            mx.release()
            if ms is not None:
                ms.release()
            if self._samples == 0 and self._first is not None:
                self._first["sent"] = time.perf_counter()
            self._samples += 1
            self._t_end = time.perf_counter()
            if self._metrics is not None:
                self._record_metrics(ms_busy, steps)
        return job

    def _inject(self, what: str) -> None:
        """Fault injection for tests and drills: raise, or kill this process."""
        if what == "exit":
            os._exit(17)
        raise RuntimeError(f"injected fault ({what})")

    # ---------------------------------------------------------------------------- observability

    def stats(self) -> dict[str, Any]:
        wall = max(1e-9, (self._t_end or time.perf_counter()) - self._t_start) if self._t_start else 0.0
        return {
            "cell": self.name, "replica": self.spec.plan.replica, "row": self.spec.plan.row,
            "col": self.spec.plan.col, "device": self.spec.plan.device, "samples": self._samples,
            "pid": os.getpid(), "node": _node_id(), "first_sample": self._first,
            "busy_s": self.clock.busy_s, "wall_s": wall,
            "busy_pct": 100.0 * self.clock.busy_s / wall if wall else 0.0,
            "step_ms_median": _median(self.clock.samples_ms),
            "channels_in": {k: r.stats.snapshot() for k, r in self.receivers.items()},
            "channels_out": {k: s.stats.snapshot() for k, s in self.senders.items()},
        }

    def _make_metrics(self) -> dict[str, Any]:
        try:
            from ray.util import metrics
        except Exception:  # noqa: BLE001 - metrics are optional outside Ray
            return {}
        tags = ("cell",)
        return {
            "frames": metrics.Counter("bidl_cell_frames", "time-step frames processed", tag_keys=tags),
            "latency": metrics.Histogram("bidl_cell_chunk_ms", "device time per chunk (ms)",
                                         boundaries=[0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
                                         tag_keys=tags),
            "bytes": metrics.Counter("bidl_cell_bytes_sent", "bytes sent on output channels", tag_keys=tags),
            "queue": metrics.Gauge("bidl_cell_queue_depth",
                                   "messages this cell sent that its receivers have not released yet",
                                   tag_keys=tags),
        }

    def _record_metrics(self, ms_busy: float, steps: int) -> None:
        m, tags = self._metrics, {"cell": self.name}
        if not m or not self.spec.metrics:
            return
        m["frames"].inc(steps, tags)
        m["latency"].observe(ms_busy, tags)
        sent = sum(s.stats.bytes for s in self.senders.values())
        prev = self._bytes_reported
        if sent > prev:
            m["bytes"].inc(sent - prev, tags)
            self._bytes_reported = sent
        pending = sum(s.depth - s.credits for s in self.senders.values())
        m["queue"].set(pending, tags)

    def close(self) -> None:
        """Close the channel ends and the device context (idempotent)."""
        for s in self.senders.values():
            s.close()
        for r in self.receivers.values():
            r.close()
        self.senders, self.receivers = {}, {}
        if self.ctx is not None:
            self.ctx.close()
            self.ctx = None


class _Outbox:
    """A thread that sends one sample's outputs while the cell computes the next chunk (depth 1:
    the cell waits before handing over a second job). Errors re-raise in the cell's loop."""

    def __init__(self, name: str, poll_s: float, aborted) -> None:
        self.name, self.poll_s, self.aborted = name, poll_s, aborted
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

    def _check(self) -> None:
        if self.err is not None:
            err, self.err = self.err, None
            raise err

    def put(self, job) -> None:
        self.flush()
        self.idle.clear()
        self.q.put(job)

    def flush(self) -> None:
        """Wait until the previous job is sent (abort-aware); re-raise its error."""
        while not self.idle.wait(self.poll_s):
            if self.aborted():
                raise CellError(f"{self.name}: aborted by the driver")
        self._check()

    def close(self) -> None:
        self.q.put(None)
        self.thread.join(timeout=max(1.0, 10 * self.poll_s))


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
