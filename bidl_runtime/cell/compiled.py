"""Segment programs compiled for a device: warmed up at load, cached on disk beside the artifact.

    chunk = CompiledChunk.load("artifacts/net/model_0/t5_b1", device="cuda", batch=1, method="graphs")
    y, *new_state = chunk(x, *state)        # static shapes: x [chunk_len, batch, ...], state in ABI order
    chunk.info  # {'method', 'cache': 'hit'|'miss'|'off', 'compile_s', 'warmup_s', 'cache_file', ...}

Methods (``RuntimeConfig.chunk_compile``, ``run --chunk-compile``; ``auto``, the default, is
``graphs`` on a GPU and ``aoti`` on CPU, ``inductor`` under autocast on CPU):

- ``graphs``: ``torch.compile(mode="reduce-overhead")``: Inductor's fused kernels, replayed as CUDA
  graphs (no per-kernel launch cost; on CPU: Inductor without graphs). The GPU default: the only method
  measured on a GPU so far (issue 14: 8,023 time-step frames/s on ResNetLif50 T=10 B=1, about 8.6x
  SpikingJelly's fused neuron); ``benchmarks/gpu_cell.py`` measures every method in one run.
- ``inductor``: ``torch.compile`` default mode (Inductor kernels, launched one by one).
- ``aoti``: an AOTInductor package (a shared library) built from the artifact's exported program. The
  CPU default: once built, a process loads it in milliseconds, without the exported program or Inductor
  (:func:`load_package`); its fused C++ kernels run the chunk in one call.
- ``capture``: the exported program's own kernels captured once into a CUDA graph: no code generation,
  ready in about a second, kernels unfused (CUDA only).
- ``eager``: the exported program as it is.

The disk cache (``<artifact>/device_cache/``): one file per key = sha256 of (the program's sha256,
method, device kind, GPU name and compute capability, torch version, batch). ``aoti``: the package
itself (``<key>.aoti.pt2``: a second start loads it, nothing is compiled, no lock taken); ``graphs`` / ``inductor``: Inductor's cache
artifacts (:func:`torch.compiler.save_cache_artifacts`), loaded before compiling, so a second start
re-traces (seconds) but generates no code. A cache file is compiled code: each carries an HMAC-SHA256
keyed by the artifact key (:mod:`compile.seal`), checked before it is loaded; a bad or foreign one is
ignored and rebuilt. Cells that start together take a per-key lock: one compiles, the rest load its file.
"""
from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import Tensor

from bidl_models.specs import torch_dtype
from compile.artifact import check_program, load_artifact, read_manifest
from compile.seal import artifact_key

from bidl_runtime.runtime_config import CHUNK_COMPILE_METHODS, chunk_method

CUDA_ONLY = ("capture",)
CACHE_DIR = "device_cache"
WARMUP_CALLS = 3          # reduce-overhead: 1 eager warm-up run, 1 recording, 1 replay


def device_tag(device: torch.device) -> str:
    """What a compiled program depends on besides the program: the device kind, and on CUDA the
    GPU's name and compute capability."""
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"cuda:{p.name}:sm{p.major}{p.minor}"
    return device.type


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cache_key(program_sha256: str, method: str, device: torch.device, batch: int, amp: Optional[str] = None) -> str:
    """The disk-cache key of a compiled program: everything its generated code depends on."""
    text = "|".join([program_sha256, method, device_tag(device), torch.__version__, str(int(batch)), str(amp)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _mac(data: bytes) -> str:
    return hmac.new(artifact_key(), b"bidl device cache|" + data, hashlib.sha256).hexdigest()


def write_sealed(path: Path, data: bytes) -> None:
    """Write ``data`` and its keyed digest (``path.seal``), each atomically (rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for p, b in ((path, data), (path.with_name(path.name + ".seal"), _mac(data).encode())):
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        tmp.write_bytes(b)
        tmp.replace(p)


def read_sealed(path: Path) -> Optional[bytes]:
    """The bytes of a cache file whose keyed digest verifies; None if absent, unsealed or altered."""
    seal = path.with_name(path.name + ".seal")
    if not path.is_file() or not seal.is_file():
        return None
    data = path.read_bytes()
    return data if hmac.compare_digest(seal.read_text().strip(), _mac(data)) else None


@contextmanager
def key_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path.lock`` (cells compiling the same key wait for the first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class CompiledChunk:
    """A chunk function ``(x, *carry_in, *state) -> (y, *carry_out, *new_state)`` compiled for ``device``
    at static shapes."""

    fn: Callable[..., Sequence[Tensor]]
    method: str
    device: torch.device
    batch: int
    info: dict[str, Any] = field(default_factory=dict)
    amp: Optional[str] = None

    def __call__(self, x: Tensor, *state: Tensor) -> Sequence[Tensor]:
        if self.method in ("graphs",) and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()   # the previous replay's outputs were copied out
        if self.amp is None:
            return self.fn(x, *state)
        with torch.autocast(self.device.type, dtype=AMP_DTYPES[self.amp]):
            return self.fn(x, *state)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device, batch: int, method: str = "graphs",
             cache: bool = True, static_inputs: Optional[Sequence[Tensor]] = None,
             amp: Optional[str] = None) -> "CompiledChunk":
        """Compile (or load from the disk cache) the artifact at ``path`` for ``device`` and ``batch``,
        and warm it up. ``static_inputs``: the caller's resident input buffers (x, *state), whose
        addresses never change (CUDA graphs read them in place); zeros of the right shapes if None.
        ``amp``: run the chunk under ``torch.autocast`` in ``'bf16'`` or ``'fp16'`` (None: fp32);
        inputs, state and outputs keep the manifest's dtypes, the matrix work runs in the low precision."""
        if method not in CHUNK_COMPILE_METHODS:
            raise ValueError(f"chunk_compile={method!r}: expected one of {list(CHUNK_COMPILE_METHODS)}")
        method = chunk_method(method, torch.device(device).type, amp)
        if amp is not None and amp not in AMP_DTYPES:
            raise ValueError(f"amp={amp!r}: expected None or one of {list(AMP_DTYPES)}")
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if method in CUDA_ONLY and dev.type != "cuda":
            raise ValueError(f"chunk_compile={method!r} needs a CUDA device, got {dev}")
        man = read_manifest(path)
        check_program(path, man)          # the program's sha256 and the manifest's seal (nothing deserialised)
        if not man.batch.dynamic and batch != man.batch.compiled:
            raise ValueError(f"{path}: compiled for a static batch of {man.batch.compiled}, asked for {batch}")
        inputs = list(static_inputs) if static_inputs is not None else manifest_inputs(man, batch, dev)
        key = cache_key(man.program.sha256, method, dev, batch, amp)
        file = Path(path) / CACHE_DIR / f"{key}.{method}.{'pt2' if method == 'aoti' else 'bin'}"
        info: dict[str, Any] = {"method": method, "device": device_tag(dev), "batch": batch, "amp": amp,
                                "cache": "off", "cache_file": str(file) if cache else None}
        t0 = time.perf_counter()
        builder = {"graphs": _torch_compile, "inductor": _torch_compile, "aoti": _aoti, "capture": _capture,
                   "eager": _eager}[method]
        cached = cache and method in ("graphs", "inductor", "aoti")
        program = _Program(path, dev)

        def build_and_run_once() -> "CompiledChunk":
            # torch.compile compiles on the first call: it happens here, under the key lock, so that
            # cells starting together compile once and the others load the file this one writes
            c = cls(builder(program, method, dev, inputs, file if cached else None, info), method, dev, batch, info, amp)
            with torch.inference_mode():
                _ = [o.clone() for o in c(*inputs)]
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            info["compile_s"] = time.perf_counter() - t0
            if cached and method == "aoti" and info["cache"] == "miss":
                info["exported_check"] = exported_check(path, c, program)   # its exported program is loaded
            if cached and method != "aoti" and info["cache"] == "miss":
                data, _ = torch.compiler.save_cache_artifacts() or (None, None)
                if data:
                    write_sealed(file, data)
                    info["cache_bytes"] = len(data)
            return c

        if cached and method == "aoti" and read_sealed(file) is not None:
            chunk = build_and_run_once()      # a built package loads without the lock (nothing is written)
        elif cached:
            with key_lock(file):
                chunk = build_and_run_once()
        else:
            chunk = build_and_run_once()
        t1 = time.perf_counter()
        with torch.inference_mode():
            for _ in range(WARMUP_CALLS - 1 if method in ("graphs", "inductor") else 0):
                _ = [o.clone() for o in chunk(*inputs)]   # reduce-overhead: records, then replays
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        info["warmup_s"] = time.perf_counter() - t1
        return chunk


class _Program:
    """An artifact's exported program, deserialised on first use (a built AOTInductor package runs
    without it: it is about a second of CPU per process)."""

    def __init__(self, path: str | Path, device: torch.device):
        self.path, self.device = Path(path), device
        self._art: Any = None

    @property
    def art(self) -> Any:
        if self._art is None:
            self._art = load_artifact(self.path, device=self.device)
        return self._art

    def module(self) -> Any:
        """The exported program as a callable module (on the device it was loaded for)."""
        return self.art._program


def manifest_inputs(man: Any, batch: int, device: torch.device) -> list[Tensor]:
    """Zeros ``(x, *carry_in, *state)`` of a manifest's shapes for ``batch`` on ``device``."""
    x = torch.zeros((man.chunk_len, batch, *man.input.shape[1:]), dtype=torch_dtype(man.input_dtype), device=device)
    carry = [torch.zeros((man.chunk_len, batch, *c.shape[1:]), dtype=torch_dtype(c.dtype), device=device)
             for c in man.carry_in]
    return [x, *carry] + [s.with_batch(batch).zeros(device) for s in man.state]


def example_inputs(art: Any, batch: int, device: torch.device) -> list[Tensor]:
    """Zeros ``(x, *carry_in, *state)`` of a loaded artifact's shapes for ``batch`` on ``device``."""
    return manifest_inputs(art.manifest, batch, device)


CHECK_CHUNKS = 2   # seeded random chunks a compiled program is compared on with its exported program


def exported_check(path: str | Path, chunk: "CompiledChunk", program: Optional["_Program"] = None) -> dict[str, Any]:
    """How a compiled chunk's outputs compare with its artifact's exported program (the program the
    model was verified against at compile time) over :data:`CHECK_CHUNKS` seeded random chunks from a
    fresh state (the state carried between them): ``max_abs_diff`` over every output, and
    ``spikes_equal``: every output that is all 0/1 in the exported program's (spikes) equal. Kept
    beside the compiled file (``<file>.check.json``): computed once per compiled program, by the cell
    that builds it (``program``: its exported program, loaded already)."""
    if not chunk.info.get("cache_file"):
        return _compare_with_exported(path, chunk, program)
    cached = Path(chunk.info["cache_file"] + ".check.json")
    with key_lock(cached):
        try:
            return json.loads(cached.read_text())
        except (OSError, ValueError):
            out = _compare_with_exported(path, chunk, program)
            tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(out))
            tmp.replace(cached)
            return out


def _compare_with_exported(path: str | Path, chunk: "CompiledChunk", program: Optional["_Program"]) -> dict[str, Any]:
    man = read_manifest(path)
    exported = (program or _Program(path, chunk.device)).module()
    inputs = manifest_inputs(man, chunk.batch, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    n_x, n_out = 1 + len(man.carry_in), 1 + len(man.carry_out)
    xs = [(torch.rand(t.shape, generator=g) < 0.3).to(t.dtype) if k == 0 or t.dtype != torch.float32
          else torch.randn(t.shape, generator=g) for k, t in enumerate(inputs[:n_x])]
    worst, spikes_equal = 0.0, True
    state_a = state_b = [t.to(chunk.device) for t in inputs[n_x:]]
    xs = [x.to(chunk.device) for x in xs]
    with torch.inference_mode():
        for _ in range(CHECK_CHUNKS):
            a = [o.clone() for o in chunk(*xs, *state_a)]
            b = [o.clone() for o in exported(*xs, *state_b)]
            for u, v in zip(a, b):
                u, v = u.float().cpu(), v.float().cpu()
                if u.numel():
                    worst = max(worst, float((u - v).abs().max()))
                    if bool(((v == 0) | (v == 1)).all()) and not torch.equal(u, v):
                        spikes_equal = False
            state_a, state_b = a[n_out:], b[n_out:]
    return {"max_abs_diff": worst, "spikes_equal": spikes_equal, "chunks": CHECK_CHUNKS,
            "input": "seeded random chunks from a fresh state"}


def _eager(program: _Program, method, dev, inputs, file, info) -> Callable:
    return program.module()


def _torch_compile(program: _Program, method, dev, inputs, file: Optional[Path], info: dict) -> Callable:
    if file is not None:
        data = read_sealed(file)
        if data is not None:
            torch.compiler.load_cache_artifacts(data)
            info["cache"] = "hit"
        else:
            info["cache"] = "miss"
    if dev.type == "cuda":
        for t in inputs:   # resident buffers: the graphs read them in place instead of copying them in
            torch._dynamo.mark_static_address(t)
    mode = "reduce-overhead" if method == "graphs" and dev.type == "cuda" else None
    return torch.compile(program.module(), mode=mode, fullgraph=True, dynamic=False)


def _aoti(program: _Program, method, dev, inputs, file: Optional[Path], info: dict) -> Callable:
    if info.get("amp"):
        raise ValueError("chunk_compile='aoti' builds the fp32 program: use 'graphs' or 'inductor' with amp")
    if file is not None:
        if read_sealed(file) is not None:
            info["cache"] = "hit"
            return load_package(file, dev)
        info["cache"] = "miss"
    from torch._inductor import aoti_compile_and_package  # noqa: E402 - Inductor loads only to build a package
    ep = torch.export.export(program.module(), tuple(inputs))     # static shapes of this batch, on the device
    out = file or Path(program.path) / CACHE_DIR / f".aoti-{os.getpid()}.pt2"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.pt2")
    aoti_compile_and_package(ep, package_path=str(tmp))
    if file is not None:
        data = tmp.read_bytes()
        write_sealed(file, data)
        info["cache_bytes"] = len(data)
        tmp.unlink()
        return load_package(file, dev)
    tmp.replace(out)
    return load_package(out, dev)


def load_package(path: Path, device: torch.device) -> Callable[..., Sequence[Tensor]]:
    """An AOTInductor package as a function of its flat tensor inputs: torch's package loader, without
    importing Inductor (seconds of CPU per process) where torch has it (``torch._C._aoti``)."""
    index = device.index if device.type == "cuda" and device.index is not None else -1
    try:
        loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, index)
    except AttributeError:   # a torch without the loader binding: Inductor's own
        from torch._inductor import aoti_load_package  # noqa: E402 - fallback only
        return aoti_load_package(str(path), device_index=index)

    def run(*args: Tensor) -> list[Tensor]:
        return loader.boxed_run(list(args))
    return run


def _capture(program: _Program, method, dev, inputs, file, info) -> Callable:
    """One CUDA graph of the exported program at the static buffers ``inputs``; replays return its
    static outputs (copy them out before the next call)."""
    mod = program.module()
    if info.get("amp"):
        plain, dtype = mod, AMP_DTYPES[info["amp"]]

        def mod(*args: Tensor) -> Sequence[Tensor]:
            with torch.autocast("cuda", dtype=dtype):
                return plain(*args)
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(2):
            mod(*inputs)
    torch.cuda.current_stream(dev).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        static_out = mod(*inputs)
    bound = [t.data_ptr() for t in inputs]

    def replay(*args: Tensor) -> Sequence[Tensor]:
        for buf, a, ptr in zip(inputs, args, bound):
            if a.data_ptr() != ptr:
                buf.copy_(a, non_blocking=True)
        graph.replay()
        return static_out
    return replay
