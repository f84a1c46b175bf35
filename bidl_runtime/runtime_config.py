"""All runtime tunables in one place: the driver, the cells and their channels read them from here,
and every entry point (``bidl-run``, ``bidl-plan``, the library, the benchmarks) gets its defaults,
validation and command-line choices from here.

Pure data: no torch, no Ray (``bidl-run --help`` reads the choices without loading either).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping, Optional

from bidl_models.specs import known_fields

from bidl_runtime.channels.channel_config import ChannelConfig

BACKENDS = ("cpu", "emulated", "cuda", "compiled")
COMPUTE_BACKENDS = ("cpu", "compiled")     # cells that compute on this machine's cores (they share them)
COMPILED_BACKENDS = ("cuda", "compiled")   # cells that run a chunk function compiled at load (cell.compiled)
CHUNK_COMPILE_METHODS = ("auto", "graphs", "inductor", "aoti", "capture", "eager")   # see bidl_runtime.cell.compiled
RUN_BACKEND = "compiled"   # bidl-run's backend: the fastest whose outputs verify bit-exact (falls back to cpu, see launch)
COMPILE_START_TIMEOUT_S = 900.0   # start_timeout_s for them: a first Inductor compile of a large segment takes minutes
AMP = (None, "bf16", "fp16")
TRANSPORTS = ("auto", "shm", "tcp", "cuda")
# integer settings and their bounds, checked before anything is allocated (a grid's memory grows with them)
INT_RANGES = {"depth": (1, 64), "batch": (1, 4096), "max_inflight": (1, 65536), "threads_per_cell": (1, 1024),
              "max_restarts": (0, 1000), "trace_events": (1, 10_000_000), "verify_processes": (1, 64),
              "verify_pending_mb": (1, 1 << 20), "epoch": (0, 1_000_000)}
OPTIONAL_INTS = ("max_inflight", "threads_per_cell", "verify_processes")
FLAGS = ("backend", "transport", "depth", "batch", "max_inflight", "threads_per_cell", "max_restarts",
         "gpus_per_cell", "chunk_compile", "amp")   # settings that are bidl-run flags
# bidl-run's other integer flags (the driver keeps each sample's result: the memory admission counts them)
RUN_INT_RANGES = {"samples": (1, 1_000_000_000), "seed": (0, 2 ** 63 - 1)}


def check_int(name: str, v: Any) -> None:
    """ValueError (one line, naming the flag) unless ``v`` is an int in the range of setting or flag
    ``name`` (:data:`INT_RANGES`, :data:`RUN_INT_RANGES`; None where the setting is optional)."""
    low, high = INT_RANGES.get(name) or RUN_INT_RANGES[name]
    if v is None and name in OPTIONAL_INTS:
        return
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
        none = " or None" if name in OPTIONAL_INTS else ""
        if name in FLAGS or name in RUN_INT_RANGES:
            field_ = "" if name in RUN_INT_RANGES else f"; {name}={v!r}"
            raise ValueError(f"--{name.replace('_', '-')} {v!r}: expected an int >= {low}{none} "
                             f"(at most {high}{field_})")
        what = "a positive int" if low == 1 else f"an int >= {low}"
        raise ValueError(f"{name}={v!r}: expected {what}{none} (at most {high})")


@dataclass(frozen=True)
class DeviceProfile:
    """A device's speed: ``ref_fps`` time-step frames/s on a reference model of ``ref_flops``
    FLOPs per step (None: ResNetLif50 on 2x128x128, counted by the emulated backend when needed). A
    segment of ``f`` FLOPs per step takes ``f / ref_flops / ref_fps`` s per step."""

    name: str = "ka200"
    ref_fps: float = 28.8                      # the user guide's chip on ResNetLif50, 2x128x128
    ref_model: str = "ResNetLif50 2x128x128"
    ref_flops: Optional[float] = None

    def __post_init__(self) -> None:
        if not (isinstance(self.ref_fps, (int, float)) and math.isfinite(self.ref_fps) and self.ref_fps > 0):
            shown = f"{self.ref_fps:g}" if isinstance(self.ref_fps, (int, float)) else repr(self.ref_fps)
            raise ValueError(f"--profile-fps {shown}: expected a finite number of frames/s > 0 "
                             f"(DeviceProfile.ref_fps={self.ref_fps!r})")

    def seconds_per_step(self, flops: float, ref_flops: float) -> float:
        """Device seconds of one step of ``flops`` FLOPs, the reference model having ``ref_flops``."""
        return flops / ref_flops / self.ref_fps


def chunk_method(method: str, device: str, amp: Optional[str] = None) -> str:
    """A chunk compile method for a device kind (``'cpu'`` or ``'cuda'``), ``auto`` resolved."""
    if method != "auto":
        return method
    if device == "cuda":
        return "graphs"
    return "inductor" if amp else "aoti"


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass
class RuntimeConfig:
    """How a grid runs (what it runs is the plan's). Timeouts in seconds; every wait is bounded."""

    backend: str = "cpu"                 # cpu | emulated | cuda | compiled (cuda's code path on CPU: Inductor)
    transport: str = "auto"              # auto (shm on one node, tcp across; cuda between GPU cells of a node) | shm | tcp | cuda
    depth: int = 2                       # slots per channel
    batch: int = 1                       # samples per message (the chip's batch is 1)
    max_inflight: Optional[int] = None   # samples inside the grid; None: 2 x rows x replicas
    threads_per_cell: Optional[int] = None   # intra-op threads of each cell's process; None: cores / cells for
                                             # the compute backends (they share this machine), else 1 (resolved())
    poll_s: float = 0.2                  # granularity of every bounded wait (health checks, stop flags)
    idle_timeout_s: float = 600.0        # cell: no input (or a blocked output) for this long: it gives up
    start_timeout_s: float = 120.0       # cells spawned, configured and wired within this
    stop_timeout_s: float = 30.0         # draining the grid with stop messages
    health_grace_s: float = 3.0          # after a first sign of failure, wait this long to find the root cause
    heartbeat_s: float = 1.0             # driver: ping every cell this often (its progress, or its silence)
    hang_floor_s: float = 5.0            # a cell silent (ping unanswered) or in one chunk for max(hang_floor_s,
    hang_factor: float = 4.0             # hang_factor x its measured chunk time) is frozen / stuck
    max_restarts: int = 3                # per cell; past that the run stops naming it (0: never restart)
    metrics: bool = True                 # export Ray metrics from every cell (bidl_runtime.cell.metrics)
    trace_events: int = 20_000           # spans each cell keeps when a run is traced (the first quarter, then the latest)
    gpus_per_cell: float = 1.0           # cuda: Ray num_gpus of each cell (fractional: cells share a GPU)
    chunk_compile: str = "auto"          # cuda/compiled: how the chunk function is compiled (CHUNK_COMPILE_METHODS;
                                         # auto: Inductor + CUDA graphs on a GPU, an AOTInductor package on CPU)
    compile_cache: bool = True           # cuda/compiled: keep compiled programs on disk beside the artifact
    amp: Optional[str] = None            # cuda/compiled: None (fp32) | bf16 | fp16 autocast inside the chunk
    verify_processes: Optional[int] = None   # reference processes of a verified run (idle priority); None: the
                                             # cores over threads_per_cell, 1 to 4, when forked from a cell
                                             # template, else 1 (a new interpreter imports torch)
    verify_pending_mb: int = 256         # inputs held for the reference at most (MiB); past that the stream waits
    verify_beside: bool = False          # the reference computes beside the streaming grid (idle priority); False:
                                         # once it has streamed (programs loaded meanwhile): the grid's rate is its own
    profile: DeviceProfile = field(default_factory=DeviceProfile)   # emulated backend's device speed
    faults: dict = field(default_factory=dict)   # drills: {(replica, row, col): (kind, sample)}, see cell.FAULTS
    channel_secret: Optional[str] = field(default=None, repr=False)  # keys the channel handshakes; None: a Grid makes one
    host_probe_s: float = 0.5            # driver: probe every other host's Ray node this often (driver.hosts)
    host_loss_s: float = 2.0             # a host whose node has not answered for this long is lost: its cells re-placed
    tls: bool = False                    # TLS on the tcp channels (between hosts), with the node's Ray TLS files
    epoch: int = 0                       # grid epoch: raised by the driver at each re-placement; channels carry it

    def __post_init__(self) -> None:
        for name, choices in (("backend", BACKENDS), ("transport", TRANSPORTS),
                              ("chunk_compile", CHUNK_COMPILE_METHODS), ("amp", AMP)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{_named(name, getattr(self, name))}: expected one of {list(choices)}")
        for name in INT_RANGES:
            check_int(name, getattr(self, name))
        if self.transport == "cuda" and self.backend not in COMPILED_BACKENDS:
            raise ValueError(f"--transport cuda moves GPU memory between compiled cells: it needs --backend cuda "
                             f"(or compiled, its CPU stand-in: slots in host memory), got {self.backend!r}")
        if not (isinstance(self.hang_factor, (int, float)) and 1 <= self.hang_factor < float("inf")):
            raise ValueError(f"hang_factor={self.hang_factor!r}: expected a finite number >= 1")
        if not isinstance(self.gpus_per_cell, (int, float)) or not 0 < self.gpus_per_cell <= 8:
            raise ValueError(f"--gpus-per-cell {self.gpus_per_cell!r}: expected a number in (0, 8] "
                             "(a fraction shares one GPU between cells)")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("_s") and not (isinstance(v, (int, float)) and 0 < v < float("inf")):
                raise ValueError(f"{f.name}={v!r}: expected a finite number > 0")

    def resolved(self, cells: int) -> "RuntimeConfig":
        """This config for a grid of ``cells`` cells on this machine: ``threads_per_cell`` set (None
        becomes ``max(1, cores // cells)`` for the compute backends, 1 for the others)."""
        if self.threads_per_cell is not None:
            return self
        threads = max(1, cores() // max(1, cells)) if self.backend in COMPUTE_BACKENDS else 1
        return replace(self, threads_per_cell=threads)

    def hang_deadline(self, chunk_s: float = 0.0) -> float:
        """Seconds of silence (or of one chunk) after which a cell whose chunks take ``chunk_s`` is hung:
        ``max(hang_floor_s, hang_factor * chunk_s)``."""
        return max(self.hang_floor_s, self.hang_factor * chunk_s)

    def channel(self, transport: str) -> ChannelConfig:
        """The channel settings of an edge with this transport (waits at the poll granularity)."""
        wait = max(self.poll_s, 0.05)
        return ChannelConfig(transport=transport, depth=self.depth, send_timeout_s=wait, recv_timeout_s=wait,
                             secret=self.channel_secret, pin_memory=self.backend == "cuda",
                             cuda_memory="cuda" if self.backend == "cuda" else "host", epoch=self.epoch,
                             tls=self.tls and transport == "tcp")

    def context_options(self) -> dict[str, Any]:
        """The device context's options for this backend (see ``devices.open_context``)."""
        if self.backend not in COMPILED_BACKENDS:
            return {}
        return {"method": self.compile_method(), "cache": self.compile_cache, "amp": self.amp}

    def compile_method(self) -> str:
        """``chunk_compile`` resolved: ``auto`` is Inductor + CUDA graphs for the cuda backend, an
        AOTInductor package (native code, loads in milliseconds) for compiled cells on CPU, Inductor
        when the chunk runs under autocast (a package is fp32)."""
        return chunk_method(self.chunk_compile, "cuda" if self.backend == "cuda" else "cpu", self.amp)

    def reference_processes(self, forked: bool = True) -> int:
        """Reference processes of a verified run: ``verify_processes``, else cores / threads per cell,
        1 to 4, where they are ``forked`` from a cell template (torch loaded), else 1."""
        if self.verify_processes is not None:
            return self.verify_processes
        return max(1, min(4, cores() // max(1, self.threads_per_cell or 1))) if forked else 1

    def actor_gpus(self) -> float:
        """Ray ``num_gpus`` of a cell actor."""
        return float(self.gpus_per_cell) if self.backend == "cuda" else 0.0

    def replace(self, **changes: Any) -> "RuntimeConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The tunables (the channel secret left out: it goes to the cells through Ray only)."""
        d = asdict(self)
        d.pop("channel_secret")
        d["faults"] = {",".join(map(str, k)): list(v) for k, v in self.faults.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RuntimeConfig":
        d = known_fields(cls, d, "RuntimeConfig")
        if isinstance(d.get("profile"), Mapping):
            d["profile"] = DeviceProfile(**d["profile"])
        if d.get("faults"):
            d["faults"] = {tuple(int(v) for v in k.split(",")): tuple(v) for k, v in d["faults"].items()}
        return cls(**d)


def _named(name: str, value: Any) -> str:
    """How an error names a setting: its ``bidl-run`` flag when it has one, and its field."""
    return f"--{name.replace('_', '-')} {value!r} ({name}={value!r})" if name in FLAGS else f"{name}={value!r}"
