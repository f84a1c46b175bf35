"""All runtime tunables in one place: the driver, the cells and their channels read them from here."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Mapping, Optional

from bidl_models.specs import known_fields

from .channels import ChannelConfig
from bidl_runtime.cell.contexts import DeviceProfile

BACKENDS = ("cpu", "emulated", "cuda", "compiled")
COMPILED_BACKENDS = ("cuda", "compiled")   # cells that run a chunk function compiled at load (bidl_runtime.cell.compiled)
COMPILE_START_TIMEOUT_S = 900.0   # start_timeout_s for them: a first Inductor compile of a large segment takes minutes
AMP = (None, "bf16", "fp16")
TRANSPORTS = ("auto", "shm", "tcp", "cuda")


@dataclass
class RuntimeConfig:
    """How a grid runs (what it runs is the plan's). Timeouts in seconds; every wait is bounded."""

    backend: str = "cpu"                 # cpu | emulated | cuda | compiled (cuda's code path on CPU: Inductor)
    transport: str = "auto"              # auto (shm on one node, tcp across; cuda between GPU cells of a node) | shm | tcp | cuda
    depth: int = 2                       # slots per channel
    batch: int = 1                       # samples per message (the chip's batch is 1)
    max_inflight: Optional[int] = None   # samples inside the grid; None: 2 x rows x replicas
    threads_per_cell: int = 1            # intra-op threads of each cell's process
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
    chunk_compile: str = "graphs"        # cuda/compiled: how the chunk function is compiled (compiled.METHODS)
    compile_cache: bool = True           # cuda/compiled: keep compiled programs on disk beside the artifact
    amp: Optional[str] = None            # cuda/compiled: None (fp32) | bf16 | fp16 autocast inside the chunk
    profile: DeviceProfile = field(default_factory=DeviceProfile)   # emulated backend's device speed
    faults: dict = field(default_factory=dict)   # drills: {(replica, row, col): (kind, sample)}, see cell.FAULTS
    channel_secret: Optional[str] = field(default=None, repr=False)  # keys the channel handshakes; None: a Grid makes one

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"--backend {self.backend!r}: expected one of {list(BACKENDS)}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"--transport {self.transport!r}: expected one of {list(TRANSPORTS)}")
        if not isinstance(self.max_restarts, int) or isinstance(self.max_restarts, bool) or self.max_restarts < 0:
            raise ValueError(f"max_restarts={self.max_restarts!r}: expected an int >= 0")
        if not (isinstance(self.hang_factor, (int, float)) and 1 <= self.hang_factor < float("inf")):
            raise ValueError(f"hang_factor={self.hang_factor!r}: expected a finite number >= 1")
        for name in ("depth", "batch", "threads_per_cell", "trace_events"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}={v!r}: expected a positive int")
        from bidl_runtime.cell.compiled import METHODS
        if self.chunk_compile not in METHODS:
            raise ValueError(f"--chunk-compile {self.chunk_compile!r}: expected one of {list(METHODS)}")
        if self.amp not in AMP:
            raise ValueError(f"--amp {self.amp!r}: expected one of {list(AMP)}")
        if not isinstance(self.gpus_per_cell, (int, float)) or not 0 < self.gpus_per_cell <= 8:
            raise ValueError(f"--gpus-per-cell {self.gpus_per_cell!r}: expected a number in (0, 8] "
                             "(a fraction shares one GPU between cells)")
        if self.max_inflight is not None and (not isinstance(self.max_inflight, int) or self.max_inflight < 1):
            raise ValueError(f"max_inflight={self.max_inflight!r}: expected a positive int or None")
        for f in fields(self):
            if f.name.endswith("_s") and not (isinstance(getattr(self, f.name), (int, float))
                                               and 0 < getattr(self, f.name) < float("inf")):
                raise ValueError(f"{f.name}={getattr(self, f.name)!r}: expected a finite number > 0")

    def hang_deadline(self, chunk_s: float = 0.0) -> float:
        """Seconds of silence (or of one chunk) after which a cell whose chunks take ``chunk_s`` is hung:
        ``max(hang_floor_s, hang_factor * chunk_s)``."""
        return max(self.hang_floor_s, self.hang_factor * chunk_s)

    def channel(self, transport: str) -> ChannelConfig:
        """The channel settings of an edge with this transport (waits at the poll granularity)."""
        wait = max(self.poll_s, 0.05)
        return ChannelConfig(transport=transport, depth=self.depth, send_timeout_s=wait, recv_timeout_s=wait,
                             secret=self.channel_secret, pin_memory=self.backend == "cuda",
                             cuda_memory="cuda" if self.backend == "cuda" else "host")

    def context_options(self) -> dict[str, Any]:
        """The device context's options for this backend (see ``devices.open_context``)."""
        if self.backend not in COMPILED_BACKENDS:
            return {}
        return {"method": self.chunk_compile, "cache": self.compile_cache, "amp": self.amp}

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
