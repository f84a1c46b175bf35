"""Device contexts: each cell's "SDK context", one interface for every backend.

Modelled on the user guide's SDK (context, streams, events, buffers, load model, reset, execute):

    ctx = open_context("cpu", device_id=3, threads=1)
    ctx.load(program)                       # a compile.program.Program: artifact path, or (emulated) a pace
    state = ctx.reset_state()               # zeroed state buffers of a fresh sample
    start, end = ctx.create_event(), ctx.create_event()
    start.record(); y, state = ctx.execute(x_chunk, state); end.record()
    busy_ms = start.elapsed_ms(end)

Backends: ``cpu`` (torch on CPU, thread count set per cell, runs compiled artifacts),
``compiled`` (the cuda backend's code path on CPU: the chunk function compiled by Inductor at load),
``emulated`` (no model compute: real tensor shapes, each chunk paced to a device profile, for
capacity planning and for measuring the runtime's own overhead) and ``cuda`` (a GPU or a share of
one: its own stream and events, the program compiled for the GPU by :mod:`bidl_runtime.cell.compiled`,
resident buffers; :class:`CompiledContext` is its device-parametric logic, run on CPU in tests).
Without a usable GPU, ``cuda`` fails at once with :class:`CudaUnavailable` (one line).
"""
from __future__ import annotations

import os
import shutil
import time
from abc import ABC, abstractmethod
from typing import ClassVar, Optional, Sequence

import torch
from torch import Tensor

from bidl_models.specs import State, TensorSpec, torch_dtype, zero_state
from compile.artifact import load_artifact, read_manifest
from compile.program import Program

from bidl_runtime.errors import CudaUnavailable

from .compiled import CompiledChunk
from .events import CudaEvent, CudaStream, Event, Stream

# ------------------------------------------------------------------------------------ contexts


class DeviceContext(ABC):
    """One cell's device: open, streams, events, buffers, load, reset state, execute a chunk."""

    backend: ClassVar[str]
    torch_device: ClassVar[str] = "cpu"
    format: str = ""          # the loaded program's form (torchscript, torch.export, aoti; emulated)

    def __init__(self, device_id: int, threads: int = 1):
        self.device_id = int(device_id)
        self.threads = int(threads)
        self.state_specs: tuple[TensorSpec, ...] = ()
        self.stream = self.create_stream()

    def create_stream(self) -> Stream:
        return Stream()

    def create_event(self) -> Event:
        return Event()

    def alloc(self, specs: Sequence[TensorSpec]) -> State:
        """Device buffers for ``specs`` (zeroed)."""
        return zero_state(specs, self.torch_device)

    def reset_state(self) -> State:
        """Zeroed state buffers for the first time slice of a fresh sample."""
        return self.alloc(self.state_specs)

    @abstractmethod
    def load(self, program: Program) -> None:
        """Load a segment's program (a compiled artifact, or an emulated one's pace); sets the state specs."""

    @abstractmethod
    def execute(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        """Run the loaded segment over one chunk ``x[t, B, ...]`` from ``state``; ``x`` and the output
        are tuples (x and its carry) for a segment cut inside a block."""

    def close(self) -> None:
        return None


class CpuContext(DeviceContext):
    """torch on CPU, ``threads`` intra-op threads for this cell's process, compiled artifacts."""

    backend = "cpu"

    def __init__(self, device_id: int, threads: int = 1):
        super().__init__(device_id, threads)
        torch.set_num_threads(max(1, self.threads))
        self.artifact = None

    def load(self, program: Program) -> None:
        if program.emulated:
            raise ValueError("cpu backend loads compiled artifacts, got an emulated program (no artifact path)")
        self.artifact = load_artifact(program.path, fast=program.fast)
        self.format = self.artifact.format
        self.state_specs = tuple(self.artifact.state_specs)

    def execute(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        with torch.inference_mode():
            return self.artifact.run(x, state)


class EmulatedContext(DeviceContext):
    """No model compute: returns an output of the real shape and hands the state through, after
    sleeping (blocking, no spin) until ``t * seconds_per_step`` has passed since the call began."""

    backend = "emulated"

    def __init__(self, device_id: int, threads: int = 1):
        super().__init__(device_id, threads)
        self.seconds_per_step = 0.0
        self._outs: tuple[Tensor, ...] = ()

    def load(self, program: Program) -> None:
        sig = program.signature
        self.state_specs = tuple(sig.state)
        self.seconds_per_step = float(program.seconds_per_step)
        self._outs = tuple(t.zeros() for t in sig.outputs)
        self.format = "emulated"

    def execute(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        t0 = time.perf_counter()
        t = (x[0] if isinstance(x, (tuple, list)) else x).shape[0]
        deadline = t0 + t * self.seconds_per_step
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            time.sleep(left)
        if len(self._outs) == 1:
            return self._outs[0][:t], state
        return tuple(o[:t] for o in self._outs), state


def cuda_problem() -> Optional[str]:
    """Why this process cannot run the cuda backend (None: it can)."""
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"no CUDA device is available to this process (this torch, {torch.__version__}, is built without CUDA)"
    return "no CUDA device is visible to this process (torch.cuda.is_available() is False)"


def require_cuda(what: str = "--backend cuda") -> None:
    """CudaUnavailable (one line) unless a CUDA device is usable here."""
    why = cuda_problem()
    if why is not None:
        raise CudaUnavailable(f"{what}: {why}; use --backend cpu (or emulated)")


class CompiledContext(DeviceContext):
    """A segment program compiled for ``device`` (:class:`~bidl_runtime.cell.compiled.CompiledChunk`), with
    resident buffers: the input ``x`` (and its carry, for a segment cut inside a block: ``execute``
    then takes and returns tuples, as the other contexts do) and the state at fixed addresses (the compiled program, CUDA
    graphs included, reads them in place), and two sets of output buffers, used in turn, so that the
    outputs of chunk k are still intact while the cell's outbox sends them during chunk k+1 (it has
    sent them before chunk k+2 starts). ``execute`` copies the chunk's inputs in, runs the program,
    copies its outputs out, and returns when they are complete.

    The logic of the ``cuda`` backend, device-parametric: on CPU it runs the Inductor path in tests.
    """

    backend = "compiled"

    @staticmethod
    def unusable() -> Optional[str]:
        """Why compiled cells cannot run here (checked by the driver before anything starts): building
        their programs takes a C++ compiler."""
        if cxx_compiler() is None:
            return "no C++ compiler found (g++, c++ or clang++ on PATH, or $CXX) to build the compiled programs"
        return None

    def __init__(self, device_id: int, threads: int = 1, device: str | torch.device = "cpu",
                 method: str = "inductor", cache: bool = True, amp: Optional[str] = None):
        self.device = torch.device(device)
        self.method, self.cache, self.amp = method, bool(cache), amp
        super().__init__(device_id, threads)
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, self.threads))
        self.chunk = None
        self.compile_info: dict = {}
        self.state_names: list[str] = []

    def alloc(self, specs: Sequence[TensorSpec]) -> State:
        return zero_state(specs, self.device)

    def load(self, program: Program) -> None:
        if program.emulated:
            raise ValueError(f"{self.backend} backend loads compiled artifacts, got an emulated program (no artifact path)")
        man = read_manifest(program.path)
        batch = man.batch.compiled
        self.state_specs = tuple(s.with_batch(batch) for s in man.state)
        self.state_names = [s.name for s in man.state]
        x_specs = [TensorSpec("x", (man.chunk_len,) + tuple(man.input.with_batch(batch).shape), man.input_dtype)]
        x_specs += [TensorSpec(c.name, (man.chunk_len,) + tuple(c.with_batch(batch).shape), c.dtype)
                    for c in man.carry_in]
        self.x_in = [s.zeros(self.device) for s in x_specs]           # x, *carry_in
        self.state_in = [s.zeros(self.device) for s in self.state_specs]
        self.n_out = 1 + len(man.carry_out)                           # y, *carry_out
        self.chunk = CompiledChunk.load(program.path, self.device, batch, self.method, self.cache,
                                        static_inputs=[*self.x_in, *self.state_in], amp=self.amp)
        self.compile_info = dict(self.chunk.info)
        with torch.inference_mode():
            outs = self.chunk(*self.x_in, *self.state_in)
        dtypes = ([torch_dtype(man.output.dtype)] + [torch_dtype(c.dtype) for c in man.carry_out]
                  + [torch_dtype(s.dtype) for s in self.state_specs])
        # the manifest's dtypes (under amp the program may return lower precision: copy_ casts back)
        self._outs = [[torch.empty(o.shape, dtype=d, device=self.device) for o, d in zip(outs, dtypes)]
                      for _ in range(2)]
        self._turn = 0
        self._sync()
        self.format = f"{self.method}{'+' + self.amp if self.amp else ''} ({self.device.type})"

    def _sync(self) -> None:
        return None

    def _inputs_in(self, x: Tensor | Sequence[Tensor], state: State) -> None:
        xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
        if len(xs) != len(self.x_in):
            raise ValueError(f"{self.backend} backend: got {len(xs)} input tensor(s), the segment takes "
                             f"{len(self.x_in)} (x and its carry)")
        for buf, t in zip(self.x_in, xs):
            if t.data_ptr() != buf.data_ptr():
                buf.copy_(t, non_blocking=True)
        for buf, name in zip(self.state_in, self.state_names):
            t = state[name]
            if t.data_ptr() != buf.data_ptr():
                buf.copy_(t, non_blocking=True)

    def execute(self, x: Tensor | Sequence[Tensor], state: State) -> tuple[Tensor | tuple[Tensor, ...], State]:
        with torch.inference_mode():
            self._inputs_in(x, state)
            outs = self.chunk(*self.x_in, *self.state_in)
            bufs = self._outs[self._turn]
            self._turn ^= 1
            for b, o in zip(bufs, outs):
                b.copy_(o, non_blocking=True)
        self._sync()
        n = self.n_out
        y = bufs[0] if n == 1 else tuple(bufs[:n])
        return y, dict(zip(self.state_names, bufs[n:]))


def cxx_compiler() -> Optional[str]:
    """The C++ compiler Inductor would use (``$CXX``, else g++, c++ or clang++ on PATH), or None."""
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def cuda_device_for(device_id: int) -> torch.device:
    """The GPU of a cell: the one Ray assigned to this actor (``num_gpus``; it is then the only visible
    one, or the first of them), else device id modulo the visible GPUs."""
    try:
        import ray
        if ray.is_initialized() and ray.get_gpu_ids():
            return torch.device("cuda", 0)
    except Exception:  # noqa: BLE001 - outside a Ray worker
        pass
    return torch.device("cuda", int(device_id) % torch.cuda.device_count())


class CudaContext(CompiledContext):
    """One GPU (or a fraction of one: ``--gpus-per-cell``), its own CUDA stream and events; the
    program compiled for the GPU (``method``, see :mod:`bidl_runtime.cell.compiled`), warmed up and cached
    on disk at load; input, state and output buffers resident on the GPU at fixed addresses.

    ``execute`` runs on the cell's stream: it first orders the stream after the calling thread's
    current stream (where a ``cuda`` channel's receiver made the sender's copy event wait), then
    copies in, runs, copies out, and synchronises the stream (the outbox thread reads the outputs)."""

    backend = "cuda"
    torch_device = "cuda"

    @staticmethod
    def unusable() -> Optional[str]:
        """Why this backend cannot run here (checked by the driver before anything starts)."""
        why = cuda_problem()
        return None if why is None else f"{why}; use --backend cpu (or emulated)"

    def __init__(self, device_id: int, threads: int = 1, method: str = "graphs", cache: bool = True,
                 amp: Optional[str] = None):
        require_cuda("backend 'cuda'")
        dev = cuda_device_for(device_id)
        torch.cuda.set_device(dev)
        super().__init__(device_id, threads, device=dev, method=method, cache=cache, amp=amp)

    def create_stream(self) -> Stream:
        return CudaStream(self.device)

    def create_event(self) -> Event:
        return CudaEvent()

    def load(self, program: Program) -> None:
        with torch.cuda.stream(self.stream.raw):
            super().load(program)

    def _sync(self) -> None:
        self.stream.raw.synchronize()

    def execute(self, x: Tensor | Sequence[Tensor], state: State) -> tuple[Tensor | tuple[Tensor, ...], State]:
        s = self.stream.raw
        # after the receiver's wait on the sender's copy (the caller's stream), and after the copies
        # out of the output buffers that the outbox enqueued on the default stream (it reuses them)
        s.wait_stream(torch.cuda.current_stream(self.device))
        s.wait_stream(torch.cuda.default_stream(self.device))
        with torch.cuda.stream(s):
            return super().execute(x, state)

    def close(self) -> None:
        self.chunk = None
        self._outs = []


BACKENDS: dict[str, type[DeviceContext]] = {c.backend: c for c in (CpuContext, EmulatedContext, CudaContext,
                                                                     CompiledContext)}


def backend_problem(backend: str) -> Optional[str]:
    """Why ``backend`` cannot run on this machine (None: it can); the driver asks before starting."""
    if backend not in BACKENDS:
        return f"expected one of {sorted(BACKENDS)}"
    check = getattr(BACKENDS[backend], "unusable", None)
    return check() if check is not None else None


def open_context(backend: str, device_id: int, threads: int = 1, **options) -> DeviceContext:
    """Open device ``device_id`` with the named backend (``options``: the cuda backend's ``method``
    and ``cache``, see :meth:`bidl_runtime.runtime_config.RuntimeConfig.context_options`)."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r}: expected one of {sorted(BACKENDS)}")
    return BACKENDS[backend](device_id, threads, **options)
