"""The single-device run of the grid's own programs: what every grid output must equal, bit for bit.

:class:`Reference` runs a plan's programs on one device, slice by slice, segment by segment, the
state carried over: the exported programs for the ``cpu`` backend (the cells run their TorchScript
form), the cells' own compiled programs (the same AOTInductor package, loaded by the same
:class:`~bidl_runtime.cell.contexts.CompiledContext`) for ``compiled``, the exported programs on CPU
for ``cuda`` (equal within float tolerance, not bit for bit).

Verifying a run must not slow the grid it checks: :class:`ReferenceProcesses` (what
:meth:`~bidl_runtime.driver.grid.Grid.run` uses) runs the reference in processes of its own. By
default they start once the grid has streamed (forked from the cell template: well under a second)
and compute then: on a machine whose cores the cells share, even processes at the lowest CPU priority
(``SCHED_IDLE``: only cycles the grid leaves idle) slowed the default 3x2 grid, to 0.65-0.73x of its
unverified rate computing beside it and to about 0.9x only loading their programs beside it
(``benchmarks/throughput.py``). With ``verify_beside`` they start with the grid and compute beside it at
idle priority, back to normal priority once it has streamed (where a process may not leave that
priority again, no root and ``RLIMIT_NICE`` below 20, they compute after the stream instead). Inputs
wait for them in the driver, ``verify_pending_mb`` at most; past that they start and work beside the
grid, and the stream waits for them (reported).
:class:`Verifier` is the same comparison in a thread of the calling process.

    python -m bidl_runtime.driver.reference      # a reference process: frames in on stdin, JSON lines out
"""
from __future__ import annotations

import json
import os
import resource
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from queue import Queue
from typing import Any, BinaryIO, Mapping, Optional, Sequence

import torch
from torch import Tensor

from bidl_models.specs import torch_dtype
from compile.artifact import load_artifact, read_manifest
from compile.program import Program

from bidl_runtime.cell.compiled import exported_check
from bidl_runtime.cell.contexts import CompiledContext
from bidl_runtime.cell.template import CellTemplate
from bidl_runtime.errors import RunError
from bidl_runtime.plan.grid_plan import GridPlan
from bidl_runtime.runtime_config import RuntimeConfig, chunk_method

from .samples import batch_of

HEADER = struct.Struct("!I")
MODULE = "bidl_runtime.driver.reference"


@dataclass(frozen=True)
class ReferenceSpec:
    """What the single-device run needs, as plain data (it travels to a reference process as JSON):
    the programs of replica 0 by (segment, chunk length), the time slices, the input as the grid
    takes it, and how the cells run (backend, intra-op threads: CPU kernels may sum in another order
    with another thread count, and the comparison is bit-exact; compile method, batch)."""

    programs: tuple[tuple[int, int, str], ...]   # (segment, chunk length, artifact directory)
    slices: tuple[int, ...]
    cols: int
    sample_shape: tuple[int, ...]                # [T, ...] of one sample
    input_dtype: str
    threads: int = 1
    batch: int = 1
    backend: str = "cpu"
    method: str = "aoti"                         # compiled backend: the cells' chunk compile method
    amp: Optional[str] = None
    cache: bool = True

    @classmethod
    def of(cls, plan: GridPlan, config: RuntimeConfig) -> "ReferenceSpec":
        progs = {}
        for c in plan.cells:
            if c.replica == 0 and (c.col, c.chunk_len) not in progs:
                if c.program.emulated:
                    raise ValueError("the reference run needs compiled artifacts (backend cpu or compiled)")
                progs[(c.col, c.chunk_len)] = c.program.origin or c.program.path   # the driver's own copy
        x = plan.outputs(None)[0].layout[0]              # [t, B, ...] of the first input edge
        return cls(programs=tuple((s, t, str(p)) for (s, t), p in sorted(progs.items())), slices=tuple(plan.slices),
                   cols=plan.cols, sample_shape=(plan.T,) + tuple(x.shape[2:]), input_dtype=x.dtype,
                   threads=config.threads_per_cell or 1, batch=config.batch, backend=config.backend,
                   method=chunk_method(config.chunk_compile, "cpu", config.amp), amp=config.amp,
                   cache=config.compile_cache)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ReferenceSpec":
        d = dict(d)
        d["programs"] = tuple((int(s), int(t), str(p)) for s, t, p in d["programs"])
        for k in ("slices", "sample_shape"):
            d[k] = tuple(int(v) for v in d[k])
        return cls(**d)

    @property
    def kind(self) -> str:
        """What the grid's outputs are compared with (for the summary)."""
        if self.backend == "compiled":
            return f"the same compiled programs ({self.method}{'+' + self.amp if self.amp else ''})"
        return "the same artifacts (exported programs)"


class Reference:
    """Runs the plan's programs on one device: slice by slice, segment by segment, with the state
    carried over. Loads the programs on first use (see the module doc for which form)."""

    def __init__(self, spec: ReferenceSpec | GridPlan, threads: int = 1):
        if isinstance(spec, GridPlan):   # the plan of a cpu grid, ``threads`` intra-op threads
            spec = ReferenceSpec.of(spec, RuntimeConfig(threads_per_cell=threads))
        self.spec = spec
        self._progs: Optional[dict[tuple[int, int], Any]] = None

    def load(self) -> dict[tuple[int, int], Any]:
        """The programs by (segment, chunk length), loaded once."""
        if self._progs is None:
            torch.set_num_threads(self.spec.threads)
            self._progs = {(s, t): self._load(p) for s, t, p in self.spec.programs}
        return self._progs

    def _load(self, path: str) -> Any:
        sp = self.spec
        if sp.backend != "compiled":
            return _Exported(load_artifact(path))
        ctx = CompiledContext(0, sp.threads, device="cpu", method=sp.method, cache=sp.cache, amp=sp.amp)
        ctx.load(Program(signature=None, path=path))   # the cells' own code path: bit for bit theirs
        return _Compiled(ctx, read_manifest(path).input_dtype)

    def exported_checks(self) -> Optional[dict[str, Any]]:
        """Compiled programs only: how they compare with the exported ones (the programs verified
        against the model when compiled), over every program: ``max_abs_diff``, ``spikes_equal``
        (see :func:`~bidl_runtime.cell.compiled.exported_check`)."""
        if self.spec.backend != "compiled":
            return None
        checks = [exported_check(p, prog.ctx.chunk) for (_, _, p), prog in zip(self.spec.programs,
                                                                                 self.load().values())]
        return {"max_abs_diff": max(c["max_abs_diff"] for c in checks),
                "spikes_equal": all(c["spikes_equal"] for c in checks), "programs": len(checks)}

    def output(self, x: Tensor) -> Tensor:
        """The last step's output ``[B, nclass]`` for ``x`` ``[T, B, ...]``."""
        progs = self.load()
        states: list[Optional[dict]] = [None] * self.spec.cols
        t0 = 0
        y = x
        before = torch.get_num_threads()
        torch.set_num_threads(self.spec.threads)
        try:
            with torch.inference_mode():
                for t in self.spec.slices:
                    h = x[t0:t0 + t]
                    for s in range(self.spec.cols):
                        prog = progs[(s, t)]
                        if states[s] is None:
                            states[s] = prog.fresh_state(x.shape[1])   # h may be x and its carry (a cut in a block)
                        h, states[s] = prog.run(h, states[s])
                    y = h
                    t0 += t
        finally:
            torch.set_num_threads(before)
        return y[-1].clone()

    def output_of(self, x: Tensor) -> Tensor:
        """:meth:`output` of a sample as the grid gets it (``[T, ...]``, or ``[T, B, ...]``)."""
        dtype = torch_dtype(self._input_dtype())   # float32, uint8 (event counts), int64 (token ids)
        return self.output((x.unsqueeze(1) if x.dim() == len(self.spec.sample_shape) else x).to(dtype))

    def output_of_group(self, xs: Sequence[Tensor], batch: int) -> Tensor:
        """:meth:`output` of samples ``xs`` run as the grid ran them: one message ``[T, batch, ...]``
        (a partial group padded with zeros); row j is sample j's output."""
        dtype = torch.uint8 if self._input_dtype() == "uint8" else torch.float32
        return self.output(batch_of(list(xs), self.spec.sample_shape, dtype, batch))

    def _input_dtype(self) -> str:
        first = self.load()[(0, self.spec.slices[0])]
        return first.input_dtype

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


class _Exported:
    """An artifact's exported program (the reference of the cpu and cuda backends)."""

    def __init__(self, art: Any):
        self.art, self.input_dtype = art, art.input_dtype

    def fresh_state(self, batch: int) -> dict[str, Tensor]:
        return self.art.fresh_state(batch)

    def run(self, x: Any, state: dict[str, Tensor]) -> tuple[Any, dict[str, Tensor]]:
        return self.art.run(x, state)


class _Compiled:
    """A compiled program in the cells' own context (the reference of the compiled backend): its
    outputs are copied out, since the context reuses its output buffers."""

    def __init__(self, ctx: CompiledContext, input_dtype: str):
        self.ctx, self.input_dtype = ctx, input_dtype

    def fresh_state(self, batch: int) -> dict[str, Tensor]:
        return self.ctx.reset_state()

    def run(self, x: Any, state: dict[str, Tensor]) -> tuple[Any, dict[str, Tensor]]:
        y, new = self.ctx.execute(x, state)
        y = tuple(t.clone() for t in y) if isinstance(y, tuple) else y.clone()
        return y, {k: v.clone() for k, v in new.items()}


class Verifier:
    """Compares grid outputs with the reference as they arrive, in a thread of this process:
    ``submit(i, x, y)`` hands a sample to a checking thread (blocking while ``depth`` samples wait:
    back-pressure, not memory growth), which drops the input once checked; ``result()`` waits for the
    last ones and returns ``{'equal', 'compared', 'max_abs_diff'}``. ``differ`` lists the first
    samples that differ. With ``batch`` N (``--batch``) the grid ran samples N per message:
    ``submit_group`` hands over one message's samples, run here the same way (bit-exact needs the
    same batch)."""

    def __init__(self, reference: Any, depth: int = 8, batch: int = 1):
        self.reference = reference
        self.batch = batch
        self.equal = self.compared = 0
        self.worst = 0.0
        self.differ: list[int] = []
        self.error: Optional[BaseException] = None
        self.busy_s = 0.0
        self._q: Queue = Queue(maxsize=max(1, depth))
        self._thread: Optional[threading.Thread] = None

    def check(self, i: int, x: Tensor, y: Tensor) -> None:
        """Compare one sample now (in the calling thread)."""
        self._count(i, self.reference.output_of(x), y)

    def check_group(self, ids: Sequence[int], xs: Sequence[Tensor], ys: Sequence[Optional[Tensor]]) -> None:
        """Compare the samples of one message now (``ys[j]``: sample ``ids[j]``'s grid output; None:
        not compared, e.g. rejected)."""
        t = time.perf_counter()
        try:
            if self.batch == 1 and len(ids) == 1:
                if ys[0] is not None:
                    self.check(ids[0], xs[0], ys[0])
                return
            ref = self.reference.output_of_group(xs, self.batch)
            for j, (i, y) in enumerate(zip(ids, ys)):
                if y is not None:
                    self._count(i, ref[j:j + 1], y)
        finally:
            self.busy_s += time.perf_counter() - t

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

    def close(self) -> None:
        """Nothing to stop but the thread (a daemon)."""
        return None


# ---------------------------------------------------------------------- reference processes (driver)


def can_leave_idle_priority() -> bool:
    """Whether a process of this user may go back from ``SCHED_IDLE`` to normal priority (root, or
    an ``RLIMIT_NICE`` of 20)."""
    if not hasattr(os, "SCHED_IDLE"):
        return False
    try:
        return os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20
    except (OSError, ValueError, AttributeError):
        return False


class _Child:
    """One reference process and the driver's threads that feed it (frames in order) and read it."""

    def __init__(self, proc: subprocess.Popen, name: str, idle: bool):
        self.proc, self.name, self.idle = proc, name, idle
        self.frames: deque[tuple[bytes, int]] = deque()
        self.cv = threading.Condition()
        self.closed = False
        self.result: Optional[dict] = None
        self.error: Optional[str] = None
        self.done = 0
        self.pid: Optional[int] = None             # the process that computes (not the template's client)
        self.stderr_tail = b""
        self.writer = threading.Thread(target=self._write, name=f"{name}-in", daemon=True)
        self.reader = threading.Thread(target=self._read, name=f"{name}-out", daemon=True)
        self.errors = threading.Thread(target=self._read_stderr, name=f"{name}-err", daemon=True)
        for t in (self.writer, self.reader, self.errors):
            t.start()

    def put(self, frame: bytes, size: int) -> None:
        with self.cv:
            self.frames.append((frame, size))
            self.cv.notify_all()

    def _write(self) -> None:
        try:
            while True:
                with self.cv:
                    while not self.frames and not self.closed:
                        self.cv.wait()
                    if not self.frames:
                        break
                    frame, size = self.frames.popleft()
                self.proc.stdin.write(frame)
                self.proc.stdin.flush()
                self.on_written(size)
            self.proc.stdin.close()
        except (OSError, ValueError) as e:
            self.error = self.error or f"its input closed ({e})"
            self.on_written(0)

    def on_written(self, size: int) -> None:   # set by ReferenceProcesses
        return None

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("kind") == "hello":
                with self.cv:
                    self.pid = int(msg["pid"])
                    if self.idle:
                        _set_policy(self.pid, getattr(os, "SCHED_IDLE", 0))
            elif msg.get("kind") == "done":
                self.done = int(msg["n"])
            elif msg.get("kind") == "result":
                self.result = msg
            elif msg.get("kind") == "error":
                self.error = msg.get("error", "unknown error")

    def _read_stderr(self) -> None:
        for chunk in iter(lambda: self.proc.stderr.read(4096), b""):
            self.stderr_tail = (self.stderr_tail + chunk)[-4000:]

    def close_input(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify_all()


class ReferenceProcesses:
    """:class:`Verifier`'s interface (``submit_group``, ``result``, ``close``) with the reference
    run in ``processes`` processes of its own (see the module doc), one message in turn to each.
    ``cost()`` says what verifying took: the processes' CPU seconds, how long after the last result
    they finished, how long the stream waited for them."""

    def __init__(self, spec: ReferenceSpec, processes: int = 1, pending_mb: int = 256,
                 template: Optional[CellTemplate] = None, beside: bool = False):
        self.spec = spec
        self.batch = spec.batch
        self.limit = max(1, pending_mb) << 20
        self.idle = can_leave_idle_priority()     # idle priority until the end of the stream, then normal
        self.beside = beside and self.idle        # computes beside the grid, else after it has streamed
        self.pending = 0
        self.held_s = 0.0
        self.n = 0
        self.cv = threading.Condition()
        self.started = time.perf_counter()
        self.streamed_at: Optional[float] = None
        self.finished_at: Optional[float] = None
        self.waiting: list[tuple[int, bytes, int]] = []   # frames held until the end of the stream
        self.processes = max(1, processes)
        self.template = template or CellTemplate.active()
        self.children: list[_Child] = []
        if self.beside:
            self._start_children(idle=True)

    def _start_children(self, idle: bool) -> None:
        """Start the processes, once (they load their programs at once): at idle priority with ``idle``
        (while the grid streams), else at normal priority. After streaming (the default) nothing of the
        reference runs before the grid has streamed: with the cell template a process starts in well
        under a second."""
        if self.children:
            return
        spec_frame = _frame({"kind": "spec", "spec": self.spec.to_json(), "load_now": True})
        try:
            for k in range(self.processes):
                child = _Child(_start(self.template, idle), f"bidl-reference-{k}", idle)
                child.on_written = self._written
                child.put(spec_frame, 0)
                self.children.append(child)
        except BaseException:
            self.close()
            raise

    def _written(self, size: int) -> None:
        with self.cv:
            self.pending -= size
            self.cv.notify_all()

    def submit(self, i: int, x: Tensor, y: Tensor) -> None:
        self.submit_group([i], [x], [y])

    def submit_group(self, ids: Sequence[int], xs: Sequence[Tensor], ys: Sequence[Optional[Tensor]]) -> None:
        """Hand one message's samples to the next reference process (waits while ``pending_mb`` of
        inputs wait for the processes: the time is reported)."""
        frame = _group_frame(ids, xs, ys)
        size = len(frame)
        k = self.n % self.processes
        self.n += 1
        with self.cv:
            if self.pending + size > self.limit and self.pending > 0:
                self._release_held()   # past the bound: the reference works now, beside the grid
                t = time.perf_counter()
                while self.pending + size > self.limit and self.pending > 0 and not self._failed():
                    self.cv.wait(0.2)
                self.held_s += time.perf_counter() - t
            self.pending += size
            if self.beside:
                self.children[k].put(frame, size)
            else:
                self.waiting.append((k, frame, size))
        self._raise_if_failed()

    def _release_held(self) -> None:
        self._start_children(idle=self.idle and self.streamed_at is None)   # mid-stream: beside it, at idle priority
        for k, frame, size in self.waiting:
            self.children[k].put(frame, size)
        self.waiting = []

    def _failed(self) -> bool:
        return any(c.error is not None or c.proc.poll() not in (None, 0) for c in self.children)

    def _raise_if_failed(self) -> None:
        for c in self.children:
            if c.error is not None or c.proc.poll() not in (None, 0):
                raise RunError(f"the reference run failed ({c.name}): {c.error or _exit_text(c)}"
                               + _tail(c))

    def result(self) -> dict[str, Any]:
        """Wait for every process (the stream has ended: they work at normal priority now); the
        counts ``{'equal', 'compared', 'max_abs_diff'}``. RunError if a process failed."""
        self.streamed_at = time.perf_counter()
        for c in self.children:
            with c.cv:
                was_idle, c.idle = c.idle, False   # a hello read from now on leaves its priority alone
            if was_idle:
                _set_policy(c.pid, os.SCHED_OTHER)
        with self.cv:
            self._release_held()
        for k, c in enumerate(self.children):   # one process compares the compiled programs with the exported
            c.put(_frame({"kind": "end", "check_exported": k == 0}), 0)
            c.close_input()
        for c in self.children:
            c.proc.wait()
            c.reader.join()
            c.errors.join()
        self.finished_at = time.perf_counter()
        self._raise_if_failed()
        missing = [c for c in self.children if c.result is None]
        if missing:
            raise RunError(f"the reference run failed ({missing[0].name}): no result" + _tail(missing[0]))
        rs = [c.result for c in self.children]
        self.differ = sorted(i for r in rs for i in r["differ"])[:20]
        self.cost_ = {"processes": len(rs), "priority": "idle while streaming" if self.beside else "after streaming",
                      "cpu_s": round(sum(r["cpu_s"] for r in rs), 3), "busy_s": round(sum(r["busy_s"] for r in rs), 3),
                      "load_s": round(max(r["load_s"] for r in rs), 3),
                      "after_streaming_s": round(self.finished_at - self.streamed_at, 3),
                      "stream_waited_s": round(self.held_s, 3), "compares": self.spec.kind,
                      "compiled_vs_exported": rs[0].get("exported_checks")}
        return {"equal": sum(r["equal"] for r in rs), "compared": sum(r["compared"] for r in rs),
                "max_abs_diff": max(r["max_abs_diff"] for r in rs)}

    def cost(self) -> Optional[dict[str, Any]]:
        """What verifying took (after :meth:`result`)."""
        return getattr(self, "cost_", None)

    def close(self) -> None:
        """Stop the processes that are still running (an interrupted or failed run)."""
        for c in self.children:
            c.close_input()
            if c.proc.poll() is None:
                try:
                    c.proc.kill()
                except OSError:
                    pass
            try:
                c.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


def _set_policy(pid: Optional[int], policy: int) -> None:
    """Every thread of process ``pid`` to scheduling ``policy`` (idle while the grid streams, normal
    once it has streamed)."""
    if pid is None:
        return
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        try:
            os.sched_setscheduler(tid, policy, os.sched_param(0))
        except OSError:
            pass


def _start(template: Optional[CellTemplate], idle: bool) -> subprocess.Popen:
    """A reference process: forked from the cell template when there is one (torch loaded), else a
    new interpreter (at idle priority, ``idle``, before it imports anything)."""
    if template is not None and template.alive():
        cmd = template.command("-m", MODULE)
    else:
        lower = "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0)); " if idle else ""
        cmd = [sys.executable, "-c", f"import os, runpy; {lower}runpy.run_module({MODULE!r}, run_name='__main__')"]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def _exit_text(c: _Child) -> str:
    code = c.proc.poll()
    if code is None:
        return "no answer"
    return f"the process ended with {'signal ' + str(-code) if code < 0 else 'exit code ' + str(code)}"


def _tail(c: _Child) -> str:
    lines = [ln for ln in c.stderr_tail.decode(errors="replace").splitlines() if ln.strip()]
    return f" (last error output: {lines[-1].strip()[:300]})" if lines else ""


def _frame(header: dict, payload: bytes = b"") -> bytes:
    head = json.dumps(dict(header, nbytes=len(payload))).encode()
    return HEADER.pack(len(head)) + head + payload


def _tensor_meta(t: Tensor) -> list:
    return [list(t.shape), str(t.dtype).removeprefix("torch.")]


def _group_frame(ids: Sequence[int], xs: Sequence[Tensor], ys: Sequence[Optional[Tensor]]) -> bytes:
    """One message's samples (inputs and the grid's outputs) as a frame: a JSON header (shapes,
    dtypes) and the tensors' bytes."""
    parts, ymeta = [], []
    for x in xs:
        parts.append(x.detach().contiguous().cpu().numpy().tobytes())
    for y in ys:
        if y is None:
            ymeta.append(None)
            continue
        ymeta.append(_tensor_meta(y))
        parts.append(y.detach().contiguous().cpu().numpy().tobytes())
    header = {"kind": "group", "ids": [int(i) for i in ids], "xs": [_tensor_meta(x) for x in xs], "ys": ymeta}
    return _frame(header, b"".join(parts))


# ------------------------------------------------------------------------ a reference process (child)


def _read_exactly(f: BinaryIO, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def _read_frame(f: BinaryIO) -> tuple[dict, bytes]:
    (n,) = HEADER.unpack(_read_exactly(f, HEADER.size))
    header = json.loads(_read_exactly(f, n))
    return header, _read_exactly(f, int(header.get("nbytes", 0)))


def _tensors(metas: Sequence[Optional[list]], payload: bytes, offset: int) -> tuple[list[Optional[Tensor]], int]:
    out: list[Optional[Tensor]] = []
    for m in metas:
        if m is None:
            out.append(None)
            continue
        shape, dtype = m
        t = torch.empty(shape, dtype=torch_dtype(dtype))
        n = t.numel() * t.element_size()
        if n:
            t.view(-1).view(torch.uint8).copy_(torch.frombuffer(bytearray(payload[offset:offset + n]), dtype=torch.uint8))
        out.append(t)
        offset += n
    return out, offset


def serve(inp: BinaryIO, out: BinaryIO) -> int:
    """A reference process's loop: a ``spec`` frame (programs loaded now with ``load_now``, else at
    the first sample), ``group`` frames (each compared, ``done`` reported), an ``end`` frame (the
    result). Its priority is the driver's business (idle while the grid streams, see the module doc)."""
    def say(msg: dict) -> None:
        out.write((json.dumps(msg) + "\n").encode())
        out.flush()

    say({"kind": "hello", "pid": os.getpid()})
    load_s = 0.0
    try:
        header, _ = _read_frame(inp)
        spec = ReferenceSpec.from_json(header["spec"])
        verifier = Verifier(Reference(spec), batch=spec.batch)
        if header.get("load_now"):
            t_load = time.perf_counter()
            verifier.reference.load()
            load_s = time.perf_counter() - t_load
        n = 0
        while True:
            header, payload = _read_frame(inp)
            if header["kind"] == "end":
                break
            xs, off = _tensors(header["xs"], payload, 0)
            ys, _ = _tensors(header["ys"], payload, off)
            if not n and not load_s:
                t_load = time.perf_counter()
                verifier.reference.load()
                load_s = time.perf_counter() - t_load
            verifier.check_group(header["ids"], xs, ys)
            n += 1
            say({"kind": "done", "n": n})
        checks = verifier.reference.exported_checks() if header.get("check_exported") else None
        cpu = time.process_time()
        say({"kind": "result", "equal": verifier.equal, "compared": verifier.compared,
             "max_abs_diff": verifier.worst, "differ": verifier.differ, "busy_s": verifier.busy_s,
             "cpu_s": cpu, "load_s": load_s, "exported_checks": checks})
        return 0
    except EOFError:
        say({"kind": "error", "error": "its input ended early (the driver stopped)"})
        return 1
    except Exception as e:  # noqa: BLE001 - one line to the driver
        say({"kind": "error", "error": f"{type(e).__name__}: {e}"})
        return 1


def main() -> int:
    """Entry point of a reference process: frames on stdin, JSON lines on stdout (anything else
    printed goes to stderr)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the driver stops it
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    sys.exit(main())
