"""Device contexts: each cell's "SDK context", one interface for every backend.

Modelled on the user guide's SDK (context, streams, events, buffers, load model, reset, execute):

    ctx = open_context("cpu", device_id=3, threads=1)
    ctx.load(ArtifactSource(path))          # or EmulatedSource(...) for the emulated backend
    state = ctx.reset_state()               # zeroed state buffers of a fresh sample
    start, end = ctx.create_event(), ctx.create_event()
    start.record(); y, state = ctx.execute(x_chunk, state); end.record()
    busy_ms = start.elapsed_ms(end)

Backends: ``cpu`` (torch on CPU, thread count set per cell, runs compiled artifacts) and
``emulated`` (no model compute: real tensor shapes, each chunk paced to a device profile, for
capacity planning and for measuring the runtime's own overhead). ``cuda`` is a registered seam:
a subclass maps streams/events to ``torch.cuda.Stream``/``Event`` and artifacts to the device.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar, Optional, Sequence

import torch
from torch import Tensor

from bidl_models.specs import State, TensorSpec, zero_state
from compile.artifact import load_artifact

# ----------------------------------------------------------------------------- model sources


@dataclass(frozen=True)
class ArtifactSource:
    """A compiled segment artifact directory (see ``compile``), absolute on the cell's node;
    ``fast``: load its TorchScript form when it has one (milliseconds instead of about a second)."""

    path: str
    fast: bool = True


@dataclass(frozen=True)
class EmulatedSource:
    """What the emulated backend needs of a segment: its real chunk tensor specs and its pace."""

    input: TensorSpec                   # [t, B, ...] chunk input
    output: TensorSpec                  # [t, B, ...] chunk output
    state: tuple[TensorSpec, ...]       # state tensors (batch included)
    seconds_per_step: float             # device time of one time step of this segment
    carry_in: tuple[TensorSpec, ...] = ()    # [t, B, ...] with the input across a cut inside a block
    carry_out: tuple[TensorSpec, ...] = ()   # [t, B, ...] with the output


@dataclass(frozen=True)
class DeviceProfile:
    """A device's speed: ``ref_fps`` time-step frames/s on a reference model of ``ref_flops``
    FLOPs per step. A segment of ``f`` FLOPs per step takes ``f / ref_flops / ref_fps`` s per step."""

    name: str = "ka200"
    ref_fps: float = 28.8                      # the user guide's chip on ResNetLif50, 2x128x128
    ref_model: str = "ResNetLif50 2x128x128"
    ref_flops: Optional[float] = None          # computed on first use when None

    def __post_init__(self) -> None:
        import math
        if not (isinstance(self.ref_fps, (int, float)) and math.isfinite(self.ref_fps) and self.ref_fps > 0):
            raise ValueError(f"DeviceProfile.ref_fps={self.ref_fps!r}: expected a finite number of frames/s > 0")

    def seconds_per_step(self, flops: float) -> float:
        ref = self.ref_flops if self.ref_flops is not None else resnet50_step_flops()
        return flops / ref / self.ref_fps


_RESNET50_FLOPS: list[float] = []


def resnet50_step_flops() -> float:
    """FLOPs of one ResNetLif50 time step on 2x128x128 (counted on fake tensors, cached)."""
    if not _RESNET50_FLOPS:
        from bidl_models import build_backbone
        from bidl_models.segments import block_costs
        net = build_backbone(dict(type="ResNetLifItout", depth=50, nclass=10, input_channels=2, timestep=1))
        _RESNET50_FLOPS.append(sum(block_costs(net, (2, 128, 128))))
    return _RESNET50_FLOPS[0]


# ------------------------------------------------------------------------------ streams, events


class Stream:
    """An in-order queue of device work. On CPU, work runs when enqueued (synchronous)."""


class Event:
    """A point in a stream: ``record`` marks it; timings between two."""

    def __init__(self) -> None:
        self._t: Optional[float] = None

    def record(self, stream: Optional[Stream] = None) -> None:
        self._t = time.perf_counter()

    def elapsed_ms(self, end: "Event") -> float:
        if self._t is None or end._t is None:
            raise RuntimeError("elapsed_ms needs two recorded events")
        return (end._t - self._t) * 1e3


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
    def load(self, source) -> None:
        """Load a segment (artifact or emulation spec); sets the state specs."""

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

    def load(self, source) -> None:
        if not isinstance(source, ArtifactSource):
            raise ValueError(f"cpu backend loads compiled artifacts, got {type(source).__name__}")
        self.artifact = load_artifact(source.path, fast=source.fast)
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

    def load(self, source) -> None:
        if not isinstance(source, EmulatedSource):
            raise ValueError(f"emulated backend needs an EmulatedSource, got {type(source).__name__}")
        self.state_specs = tuple(source.state)
        self.seconds_per_step = float(source.seconds_per_step)
        self._outs = tuple(t.zeros() for t in (source.output, *source.carry_out))
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


class CudaContext(DeviceContext):
    """Seam for CUDA devices: streams/events map to torch.cuda, artifacts move to the device."""

    backend = "cuda"
    torch_device = "cuda"

    @staticmethod
    def unusable() -> Optional[str]:
        """Why this backend cannot run here (checked by the driver before anything starts)."""
        if not torch.cuda.is_available():
            return ("no CUDA device is available to this process (torch.cuda.is_available() is False; this torch "
                    f"is {torch.__version__})")
        return "not implemented yet; use cpu or emulated"

    def __init__(self, device_id: int, threads: int = 1):
        raise RuntimeError(f"backend 'cuda': {self.unusable()}")

    def load(self, source) -> None:  # pragma: no cover - seam
        raise NotImplementedError

    def execute(self, x: Tensor, state: State) -> tuple[Tensor, State]:  # pragma: no cover - seam
        raise NotImplementedError


BACKENDS: dict[str, type[DeviceContext]] = {c.backend: c for c in (CpuContext, EmulatedContext, CudaContext)}


def backend_problem(backend: str) -> Optional[str]:
    """Why ``backend`` cannot run on this machine (None: it can); the driver asks before starting."""
    if backend not in BACKENDS:
        return f"expected one of {sorted(BACKENDS)}"
    check = getattr(BACKENDS[backend], "unusable", None)
    return check() if check is not None else None


def open_context(backend: str, device_id: int, threads: int = 1) -> DeviceContext:
    """Open device ``device_id`` with the named backend."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r}: expected one of {sorted(BACKENDS)}")
    return BACKENDS[backend](device_id, threads)


@dataclass
class BusyClock:
    """Accumulates device-busy time between event pairs; keeps the last ``window`` chunk times (for
    medians: a long stream does not grow the cell's memory)."""

    busy_s: float = 0.0
    window: int = 2048
    samples_ms: deque = field(default_factory=deque)

    def add(self, ms: float) -> None:
        self.busy_s += ms / 1e3
        self.samples_ms.append(ms)
        if len(self.samples_ms) > self.window:
            self.samples_ms.popleft()
