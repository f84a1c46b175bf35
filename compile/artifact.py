"""Loading and checking compiled segment artifacts: the API the runtime uses.

An artifact is a directory holding

- ``program.pt2``: the segment's pure chunk function
  ``(x[chunk_len, B, *in], *state) -> (y[chunk_len, B, *out], *new_state)``, either a
  ``torch.export`` ExportedProgram (``format='torch.export'``, loaded with ``torch.export.load``)
  or an AOTInductor package (``format='aoti'``, loaded with ``torch._inductor.aoti_load_package``).
  Neither needs the model's Python source.
- ``program.ts`` (optional): the same program as TorchScript, traced from the exported program for
  the compiled batch and checked bit-exact against it; the runtime's cells load it (``fast=True``)
  because it loads in milliseconds where an ExportedProgram takes about a second of CPU per process.
- ``net_params.json``: the manifest (:class:`~compile.manifest.Manifest`: state ABI, provenance,
  cache key, verification result).

The flat state arguments follow the manifest's ``state`` list (the ABI order); :meth:`Artifact.run`
takes and returns named dicts instead. Loading refuses, with :class:`ArtifactError` (a
``ValueError``), a program whose sha256 differs from the manifest, a manifest of an unknown format,
one written by an incompatible torch, one whose keyed digest does not verify, or one that differs
from what the caller ``expect``\\ s.

The keyed digest (``manifest.seal``, :mod:`compile.seal`): HMAC-SHA256 over the manifest's canonical
JSON (which holds every program's sha256), keyed by this user's artifact key (``artifact_key``).
Editing a program and its recorded sha256 together, or any other manifest field, breaks it; only a
holder of the key can reseal. No program is deserialised before the seal checks out::

    art = load_artifact("artifacts/net/model_0/t4_b1")
    state = art.fresh_state(batch=1)
    y, state = art.run(x_chunk, state)            # x_chunk: [art.chunk_len, 1, *art.input_spec.shape[1:]]
    y, *flat = art(x_chunk, *state.values())      # the same, flat, in ABI order

A segment cut inside a block (:mod:`bidl_models.cuts`) takes the tensors handed across the cut after
``x`` (manifest ``carry_in``, e.g. a residual block's ``skip``) and returns its own after ``y``
(``carry_out``): ``art.run((x, skip), state)`` returns ``((y, skip), state)``.
"""
from __future__ import annotations

import json
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor

from bidl_models.checkpoint import file_sha256
from bidl_models.specs import TensorSpec, torch_dtype

from .errors import ArtifactError
from .manifest import (FAST_PROGRAM, FORMAT_VERSION, FORMATS, KIND, MANIFEST, PROGRAM, Manifest, ProgramFile,
                       read_manifest)
from .seal import artifact_key, check_seal, seal_manifest

__all__ = ["Artifact", "ArtifactError", "load_artifact", "read_manifest", "check_program",
           "file_sha256", "torch_compatible", "MANIFEST", "PROGRAM", "FAST_PROGRAM", "FORMAT_VERSION", "KIND",
           "FORMATS", "artifact_key", "seal_manifest", "check_seal"]


def torch_compatible(built: str, fmt: str, running: str = torch.__version__) -> bool:
    """ExportedPrograms and TorchScript load across patch releases (same major.minor); AOTInductor
    packages are native code built against one torch release (same major.minor.patch). Local tags
    (``+cpu``, ``+cu128``) are ignored."""
    def parts(v: str) -> list[str]:
        return v.split("+")[0].split(".")
    n = 3 if fmt == "aoti" else 2
    return parts(built)[:n] == parts(running)[:n]


def check_program(directory: str | Path, man: Manifest, program: Optional[ProgramFile] = None) -> Path:
    """The program file (default: the manifest's main program), after checking that it exists, hashes
    to the manifest's sha256, was built by a torch this process can load, and that the manifest's
    keyed digest verifies. ArtifactError otherwise."""
    pf = program or man.program
    prog = Path(directory) / pf.file
    if not prog.is_file():
        raise ArtifactError(prog, "missing", "program file missing (the manifest names it)")
    sha = file_sha256(prog)
    if sha != pf.sha256:
        raise ArtifactError(prog, "corrupt",
                            f"sha256 {sha[:16]}... differs from the manifest's {pf.sha256[:16]}...: "
                            "the program was modified or damaged; rebuild it (compile --force)",
                            {"program.sha256": (sha, pf.sha256)})
    built = man.versions.get("torch", "?")
    if not torch_compatible(built, pf.format):
        raise ArtifactError(Path(directory) / MANIFEST, "incompatible",
                            f"built with torch {built}, this process runs torch {torch.__version__} "
                            f"({pf.format} programs need the same "
                            f"{'major.minor.patch' if pf.format == 'aoti' else 'major.minor'}); "
                            "rebuild it (compile --force)", {"versions.torch": (built, torch.__version__)})
    check_seal(Path(directory) / MANIFEST, man.as_written)
    return prog


def _diff_expect(man: Manifest, expect: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields of the manifest's cache key (or top level) that differ from ``expect``."""
    top = man.to_dict()
    diffs = {}
    for k, want in expect.items():
        have = man.key.get(k, top.get(k, "<absent>"))
        if _norm(have) != _norm(want):
            diffs[k] = (have, want)
    return diffs


def _norm(v: Any) -> Any:
    return json.loads(json.dumps(v, default=str))


class Artifact:
    """A loaded, checked segment program with its :class:`~compile.manifest.Manifest`.

    ``__call__(x, *state)`` runs the flat ABI; :meth:`run` the named one. Inputs are checked
    against the manifest (chunk length, dtype, per-step shape, batch) before they reach the
    program, so a wrong tensor gives a readable error rather than a guard failure. ``format`` is
    the form that runs: ``torch.export``, ``aoti`` or ``torchscript`` (the fast-load form, static batch).
    """

    def __init__(self, directory: str | Path, manifest: Manifest, program: Any, fmt: Optional[str] = None):
        self.path = Path(directory)
        self.manifest = manifest
        self._program = program
        self.format: str = fmt or manifest.program.format
        self.input_spec: TensorSpec = manifest.input
        self.output_spec: TensorSpec = manifest.output
        self.carry_in: tuple[TensorSpec, ...] = manifest.carry_in     # travel with x (a cut inside a block)
        self.carry_out: tuple[TensorSpec, ...] = manifest.carry_out   # travel with y
        self.state_specs: list[TensorSpec] = list(manifest.state)
        self.state_names: list[str] = manifest.state_names
        self.chunk_len: int = manifest.chunk_len
        self.segment_index: int = manifest.segment_index
        self.split: tuple[int | str, int | str] = manifest.split
        self.batch: int = manifest.batch.compiled
        self.dynamic_batch: bool = manifest.batch.dynamic and self.format != "torchscript"
        self.input_dtype: str = manifest.input_dtype
        self.device = torch.device(manifest.program.device)
        self.is_first: bool = manifest.is_first
        self.is_last: bool = manifest.is_last

    def __repr__(self) -> str:
        return (f"Artifact({str(self.path)!r}, segment={self.segment_index}, split={list(self.split)}, "
                f"chunk_len={self.chunk_len}, batch={self.batch}{'+' if self.dynamic_batch else ''}, "
                f"format={self.format})")

    def _check_batch(self, b: int, what: str) -> None:
        if not self.dynamic_batch and b != self.batch:
            raise ValueError(f"{self.path}: {what} has batch {b}, but this artifact was compiled for a "
                             f"static batch of {self.batch}")

    def _check_inputs(self, xs: Sequence[Tensor], state: Sequence[Tensor]) -> None:
        if len(xs) != 1 + len(self.carry_in):
            raise ValueError(f"{self.path}: got {len(xs)} input tensors, expected {1 + len(self.carry_in)} "
                             f"({self.manifest.args[:1 + len(self.carry_in)]})")
        b = xs[0].shape[1] if xs[0].dim() > 1 else None
        for i, (x, spec) in enumerate(zip(xs, (self.input_spec, *self.carry_in))):
            name = "input x" if i == 0 else f"carry {spec.name!r}"
            want = (self.chunk_len, "B") + tuple(spec.shape[1:])
            if (x.dim() != len(want) or x.shape[0] != self.chunk_len or tuple(x.shape[2:]) != tuple(spec.shape[1:])
                    or (i and x.shape[1] != b)):
                raise ValueError(f"{self.path}: {name} has shape {list(x.shape)}, expected {list(want)} "
                                 f"(chunk_len, batch, per-step shape)")
            dtype = self.input_dtype if i == 0 else spec.dtype
            if x.dtype != torch_dtype(dtype):
                raise ValueError(f"{self.path}: {name} has dtype {str(x.dtype).removeprefix('torch.')}, "
                                 f"expected {dtype}" + (" (manifest input_dtype)" if i == 0 else ""))
        self._check_batch(b, "input x")
        if len(state) != len(self.state_specs):
            raise ValueError(f"{self.path}: got {len(state)} state tensors, expected {len(self.state_specs)} "
                             f"({self.state_names})")
        for t, s in zip(state, self.state_specs):
            if tuple(t.shape) != (b,) + tuple(s.shape[1:]) or t.dtype != torch_dtype(s.dtype):
                raise ValueError(f"{self.path}: state {s.name!r} is {list(t.shape)} "
                                 f"{str(t.dtype).removeprefix('torch.')}, expected "
                                 f"{[b] + list(s.shape[1:])} {s.dtype}")

    def _split_args(self, x: Any, rest: Sequence[Tensor]) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """(inputs, state) from ``x`` (a tensor, or the tuple of x and its carry) and the rest of a flat call."""
        if isinstance(x, (tuple, list)):
            return tuple(x), tuple(rest)
        n = len(self.carry_in)
        return (x, *rest[:n]), tuple(rest[n:])

    @torch.no_grad()
    def __call__(self, x: Any, *rest: Tensor) -> tuple[Tensor, ...]:
        """``(x_chunk, *carry_in, *state) -> (y_chunk, *carry_out, *new_state)``, state in ABI order
        (:attr:`state_names`); ``x`` may also be the tuple ``(x_chunk, *carry_in)``."""
        xs, state = self._split_args(x, rest)
        self._check_inputs(xs, state)
        if self.format == "torchscript":
            with torch.jit.optimized_execution(False):   # the plain interpreter: the ops as traced, nothing fused
                return tuple(self._program(*xs, *state))
        return tuple(self._program(*xs, *state))

    def fresh_state(self, batch: Optional[int] = None, device: str | torch.device | None = None) -> dict[str, Tensor]:
        """A fresh sample's state (all zeros) for ``batch`` (default: the compiled batch), in ABI order."""
        b = self.batch if batch is None else int(batch)
        self._check_batch(b, "fresh_state")
        dev = self.device if device is None else device
        return {s.name: s.with_batch(b).zeros(dev) for s in self.state_specs}

    def run(self, x: Any, state: Optional[Mapping[str, Tensor]] = None) -> tuple[Any, dict[str, Tensor]]:
        """Named form: ``state`` maps every ABI name to its tensor (None: a fresh sample). ``x``: the chunk
        input, or ``(x, *carry_in)`` for a segment that starts inside a block; the output likewise."""
        first = x[0] if isinstance(x, (tuple, list)) else x
        if state is None:
            state = self.fresh_state(first.shape[1], first.device)
        missing = [n for n in self.state_names if n not in state]
        extra = [n for n in state if n not in set(self.state_names)]
        if missing or extra:
            raise ValueError(f"{self.path}: state names differ from the manifest; missing {missing}, "
                             f"unexpected {extra}")
        out = self(x, *(state[n] for n in self.state_names))
        k = 1 + len(self.carry_out)
        y = out[0] if k == 1 else tuple(out[:k])
        return y, dict(zip(self.state_names, out[k:]))


def _program_arity(ep: Any) -> tuple[int, int]:
    sig = ep.graph_signature
    return len(sig.user_inputs), len(sig.user_outputs)


def _check_exported(path: Path, ep: Any, man: Manifest) -> None:
    """The exported graph's inputs agree with the manifest (count and non-batch dims)."""
    n_in, n_out = _program_arity(ep)
    n_state = len(man.state)
    want_in, want_out = len(man.inputs) + n_state, len(man.outputs) + n_state
    if n_in != want_in or n_out != want_out:
        ways = " each way" if len(man.inputs) == len(man.outputs) else f" in, {len(man.outputs)} + {n_state} out"
        raise ArtifactError(path, "mismatch", f"program takes {n_in} inputs and returns {n_out}; the manifest "
                                              f"describes {len(man.inputs)} + {n_state} state tensors{ways}")
    names = list(ep.graph_signature.user_inputs)
    vals = {n.name: n.meta.get("val") for n in ep.graph.nodes if n.op == "placeholder"}
    chunked = [TensorSpec(t.name, (man.chunk_len,) + tuple(t.shape), t.dtype) for t in man.inputs]
    specs = [*chunked, *man.state]
    for i, (name, spec) in enumerate(zip(names, specs)):
        v = vals.get(name)
        if v is None:
            continue
        bdim = 1 if i < len(chunked) else 0
        got = [d if isinstance(d, int) else None for d in v.shape]
        want = list(spec.shape)
        if len(got) != len(want) or any(g is not None and g != w for k, (g, w) in enumerate(zip(got, want))
                                         if k != bdim):
            raise ArtifactError(path, "mismatch", f"program input {i} ({spec.name}) has shape "
                                                  f"{['B' if g is None else g for g in got]}, the manifest says {want}")


_PROGRAMS: "OrderedDict[tuple[str, str, str], Any]" = OrderedDict()
PROGRAM_CACHE_SIZE = 8


def _cached_program(key: tuple[str, str, str], make: Any) -> Any:
    """In-process LRU of loaded programs keyed by (program sha256, format, device): the bytes were
    just hashed, so an entry is exactly what loading the file again would give."""
    if key in _PROGRAMS:
        _PROGRAMS.move_to_end(key)
        return _PROGRAMS[key]
    prog = make()
    _PROGRAMS[key] = prog
    while len(_PROGRAMS) > PROGRAM_CACHE_SIZE:
        _PROGRAMS.popitem(last=False)
    return prog


def load_torchscript(path: str | Path) -> Any:
    """Load a TorchScript program (the fast-load form), without torch's deprecation chatter."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path), map_location="cpu")


def load_artifact(path: str | Path, expect: Optional[Mapping[str, Any]] = None,
                  device: str | torch.device | None = None, fast: bool = False) -> Artifact:
    """Load and check the artifact in directory ``path`` (or its ``net_params.json``).

    ``expect``: cache-key fields the caller requires, e.g. ``{'checkpoint_sha256': ..., 'chunk_len': 4}``;
    any difference raises :class:`ArtifactError` naming the field. ``device``: where an
    ExportedProgram runs (moved there; AOTInductor packages run where they were built).
    ``fast``: run the TorchScript form when the artifact has one (CPU, static batch
    ``batch.compiled``; loads in milliseconds instead of deserialising the exported graph), else
    the main program. Every program file is hashed and checked on every call; a program with the
    same sha256 loaded before in this process is reused.
    """
    d = Path(path)
    if d.name == MANIFEST:
        d = d.parent
    if not d.is_dir():
        raise ArtifactError(d, "missing", "no such artifact directory")
    man = read_manifest(d)
    if expect:
        diffs = _diff_expect(man, expect)
        if diffs:
            txt = "; ".join(f"{k}: artifact has {a!r}, expected {b!r}" for k, (a, b) in diffs.items())
            raise ArtifactError(d / MANIFEST, "mismatch", f"artifact does not match: {txt}", diffs)
    if fast and man.fast is not None and (device is None or torch.device(device).type == "cpu"):
        fast_path = check_program(d, man, man.fast)
        program = _cached_program((man.fast.sha256, "torchscript", "cpu"), lambda: load_torchscript(fast_path))
        return Artifact(d, man, program, "torchscript")
    prog_path = check_program(d, man)
    fmt = man.program.format
    built_on = torch.device(man.program.device)
    sha = man.program.sha256
    if fmt == "torch.export":
        target = torch.device(device) if device is not None else built_on

        def make_export() -> tuple[Any, Any]:
            try:
                ep = torch.export.load(str(prog_path))
            except Exception as e:  # noqa: BLE001 - any deserialisation failure is a bad program
                raise ArtifactError(prog_path, "corrupt",
                                    f"torch.export.load failed: {type(e).__name__}: {e}") from None
            moved = ep
            if target != built_on:
                from torch.export.passes import move_to_device_pass
                moved = move_to_device_pass(ep, target)
            return ep, moved.module()

        ep, program = _cached_program((sha, fmt, str(target)), make_export)
        _check_exported(prog_path, ep, man)   # every time: the manifest may differ from the last load's
        man = man.replace(program=ProgramFile(**{**man.program.__dict__, "device": str(target)}))
    else:
        if device is not None and torch.device(device).type != built_on.type:
            raise ValueError(f"{prog_path}: AOTInductor package built for {built_on}, cannot run on {device}; "
                             "compile it on that device")

        def make_aoti() -> Any:
            try:
                from torch._inductor import aoti_load_package
                return aoti_load_package(str(prog_path))
            except Exception as e:  # noqa: BLE001
                raise ArtifactError(prog_path, "corrupt",
                                    f"aoti_load_package failed: {type(e).__name__}: {e}") from None

        program = _cached_program((sha, fmt, str(built_on)), make_aoti)
    return Artifact(d, man, program)
