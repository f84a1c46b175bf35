"""Compiling a model's segments into artifacts, with caching and verification.

:func:`compile_spec` is the stage: a resolved :class:`~bidl_models.model_spec.ModelSpec` and the
grid's time-slice lengths in, an :class:`ArtifactSet` out. For every model segment ``i`` and
every distinct slice length ``L`` (``numpy.array_split`` of T over R rows: at most two lengths) it
produces the artifact directory::

    <out>/<net>/model_<i>/t<L>_b<B>[_uint8][_aot][_<device>]/
        program.pt2       torch.export ExportedProgram (or AOTInductor package with aot=True) of
                          (x[L, B, *in], *state) -> (y[L, B, *out], *new_state)
        program.ts        the same program as TorchScript for batch B (fast_load; loads in ms)
        net_params.json   manifest (compile.manifest.Manifest): specs (state ABI order),
                          provenance, cache key, verification

``<net>`` is the config's name. The batch dimension is exported dynamic when torch.export allows
it (``manifest.batch.dynamic``), else static at ``B``. A uint8 first-segment input (event
counts, as on chip) is cast to float32 inside the program; a text model's ``int64`` token ids go in as
they are. :func:`compile_config` is the convenience around it: a config name or Config, a grid,
keyword options. A model with a layer that needs the whole sequence (attention over time) compiles
for one time slice only (:meth:`~bidl_models.model_spec.ModelSpec.check_slices`).

Caching: an artifact is reused when its manifest's cache key equals this compile's (net, model
sha256 -- the model-defining config keys --, checkpoint sha256 or ``seeded:<seed>``, segment and
split, chunk length, batch, input dtype, model input shape, torch version, aot, device) and its
program hashes to the recorded sha256. A key that differs, a corrupt manifest or program, or an
artifact from an incompatible torch raises :class:`~compile.errors.ArtifactError` (a
ValueError naming the file and what differs) unless ``force``, which rebuilds.

Verification: every newly built artifact is loaded back from disk and run against the eager
segment over ``verify_chunks`` consecutive chunks with the state carried over, on the dataset's
first test sample when ``bidl_models.datasets`` can load it, else on a deterministic seeded random
spike tensor (token ids for a text model; later segments get the eager output of the segments before them). The max abs
difference of the output and of every state tensor is printed and stored in the manifest; above
``tol`` (1e-5) the build fails with :class:`VerificationError` and nothing is written. The
TorchScript form is written only if it equals the exported program bit for bit over 3 chunks.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from bidl_models.checkpoint import file_sha256
from bidl_models.datasets import build_dataset
from bidl_models.model_spec import INPUT_DTYPES, ModelSpec, model_sha256
from bidl_models.segments import Segment, as_tuple
from bidl_models.specs import Signature, TensorSpec, one_hot_ids, torch_dtype

from .artifact import Artifact, check_program, load_artifact, load_torchscript
from .errors import ArtifactError, VerificationError
from .manifest import (FAST_PROGRAM, FORMAT_VERSION, MANIFEST, PROGRAM, BatchInfo, Manifest, ProgramFile,
                       Verification, read_manifest, write_manifest)
from .options import CompileOptions
from .program import Program, ProgramKey

__all__ = ["compile_spec", "ArtifactSet", "CompiledModel", "ArtifactRecord", "VerificationError",
           "ChunkProgram", "model_sha256", "artifact_dirname", "INPUT_DTYPES"]


# ------------------------------------------------------------------------------ small helpers

def artifact_dirname(chunk_len: int, batch: int, input_dtype: str = "float32", aot: bool = False,
                     device: str = "cpu") -> str:
    """``t<L>_b<B>[_uint8][_aot][_<device>]``."""
    name = f"t{chunk_len}_b{batch}"
    if input_dtype != "float32":
        name += f"_{input_dtype}"
    if aot:
        name += "_aot"
    if torch.device(device).type != "cpu":
        name += f"_{torch.device(device).type}"
    return name


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _versions() -> dict[str, str]:
    import numpy
    out = {"torch": torch.__version__, "python": platform.python_version(), "numpy": numpy.__version__}
    try:
        from importlib.metadata import version
        out["bidl-grid"] = version("bidl-grid")
    except Exception:  # noqa: BLE001 - not installed as a package (running from the tree)
        out["bidl-grid"] = "source-tree"
    return out


# ------------------------------------------------------------------------------ the program

class ChunkProgram(nn.Module):
    """``forward(x, *carry_in, *state) -> (y, *carry_out, *new_state)``: a segment's chunk function on
    flat tensors in the ABI order ``state_names``; ``n_carry``: the tensors that come with x across a
    cut inside a block; uint8 event counts (and other float dtypes) are cast to float32 first, token
    ids are not."""

    def __init__(self, segment: Segment, state_names: Sequence[str], n_carry: int = 0):
        super().__init__()
        self.segment = segment
        self.state_names = list(state_names)
        self.n_carry = n_carry

    def forward(self, x: Tensor, *rest: Tensor) -> tuple[Tensor, ...]:
        if x.dtype == torch.uint8 or (x.is_floating_point() and x.dtype != torch.float32):
            x = x.to(torch.float32)
        carry, state = rest[:self.n_carry], rest[self.n_carry:]
        y, new = self.segment.run((x, *carry) if carry else x, dict(zip(self.state_names, state)))
        return (*as_tuple(y), *(new[n] for n in self.state_names))


def _batch_is_symbolic(ep: Any) -> bool:
    name = ep.graph_signature.user_inputs[0]
    for n in ep.graph.nodes:
        if n.op == "placeholder" and n.name == name:
            return isinstance(n.meta["val"].shape[1], torch.SymInt)
    return False


def _export(prog: ChunkProgram, chunk_len: int, batch: int, inputs: Sequence[TensorSpec],
            state_specs: Sequence[TensorSpec], input_dtype: str, device: torch.device) -> tuple[Any, bool, str]:
    """ExportedProgram with a dynamic batch dim if torch.export keeps it symbolic, else static.
    ``inputs``: per-step specs of x and its carry.

    Traced with a batch of at least 2 (export specialises sizes 0 and 1)."""
    def example(b: int) -> tuple[Tensor, ...]:
        xs = [torch.zeros((chunk_len, b, *t.shape[1:]), dtype=torch_dtype(input_dtype if i == 0 else t.dtype),
                          device=device) for i, t in enumerate(inputs)]
        return (*xs, *(s.with_batch(b).zeros(device) for s in state_specs))

    note = ""
    auto = torch.export.Dim.AUTO
    dyn = ({1: auto}, tuple([{1: auto} for _ in inputs[1:]] + [{0: auto} for _ in state_specs]))
    try:
        with torch.no_grad():
            ep = torch.export.export(prog, example(max(batch, 2)), dynamic_shapes=dyn)
        if _batch_is_symbolic(ep):
            return ep, True, ""
        note = "torch.export specialised the batch dimension"
    except Exception as e:  # noqa: BLE001 - fall back to a static batch, and say why
        note = f"dynamic batch export failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    with torch.no_grad():
        ep = torch.export.export(prog, example(batch))
    return ep, False, note


# ------------------------------------------------------------------------------ verification input

def _dataset_sample(cfg: Mapping, in_shape: Sequence[int]) -> tuple[Optional[Tensor], str]:
    """The first test sample ``[T, *in_shape]`` of the config's dataset, or (None, why not)."""
    test = (cfg.get("data") or {}).get("test")
    if not test:
        return None, "config has no data.test"
    try:
        item = build_dataset(test, where="data.test")[0]   # data.test: the test split when test_mode is absent
    except Exception as e:  # noqa: BLE001 - data not downloaded, etc.
        return None, f"data.test unavailable ({type(e).__name__}: {' '.join(str(e).split())})"   # whole, one line
    img = item.get("img") if isinstance(item, Mapping) else item[0] if isinstance(item, (tuple, list)) else item
    try:
        t = torch.as_tensor(img)
    except Exception as e:  # noqa: BLE001
        return None, f"data.test sample 0 is not a tensor ({type(e).__name__})"
    ids = one_hot_ids(t) if t.dim() == len(in_shape) + 2 else None
    if ids is not None:                 # BIDL's ToOneHot test pipeline (IMDB): one-hot rows -> token ids
        t = ids
    if t.dim() != len(in_shape) + 1 or tuple(t.shape[1:]) != tuple(in_shape):
        return None, f"data.test sample 0 has shape {list(t.shape)}, the model takes [T, {', '.join(map(str, in_shape))}]"
    return t, f"dataset {test.get('type', '?')} test sample 0"


def verification_input(cfg: Mapping, in_shape: Sequence[int], steps: int, batch: int, seed: int = 0,
                       use_dataset: bool = True, dtype: str = "float32",
                       high: Optional[int] = None) -> tuple[Tensor, str]:
    """``[steps, batch, *in_shape]`` model input for verification, and where it came from: float32
    (``dtype`` float32 / uint8), or int64 token ids in ``[0, high)`` (``dtype`` int64 / int32).

    Batch element 0 is the dataset's first test sample (time axis tiled to ``steps``) when available;
    everything else is a seeded random spike tensor (P(1) = 0.3), or seeded random token ids."""
    g = torch.Generator().manual_seed(seed)
    tokens = dtype not in ("float32", "uint8")
    if tokens:
        x = torch.randint(0, int(high or 2), (steps, batch, *in_shape), generator=g)
        what = f"random token ids in [0, {int(high or 2)})"
    else:
        x = (torch.rand((steps, batch, *in_shape), generator=g) < 0.3).to(torch.float32)
        what = "random spikes"
    if not use_dataset:
        return x, f"{what} (seed {seed}; dataset not used)"
    sample, why = _dataset_sample(cfg, in_shape)
    if sample is not None and tokens and sample.is_floating_point():
        sample, why = None, f"data.test sample 0 is {str(sample.dtype).removeprefix('torch.')}, the model reads token ids"
    if sample is None:
        return x, f"{what} (seed {seed}; {why})"
    sample = sample.to(x.dtype)
    reps = -(-steps // sample.shape[0])
    x[:, 0] = sample.repeat(reps, *([1] * len(in_shape)))[:steps]
    return x, why


def _max_abs(a: Tensor, b: Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def chunk(x: Any, a: int, b: int) -> Any:
    """Steps ``[a, b)`` of an activation (a tensor, or the tuple of x and its carry)."""
    return tuple(t[a:b] for t in x) if isinstance(x, (tuple, list)) else x[a:b]


@torch.no_grad()
def verify_artifact(art: Artifact, seg: Segment, x: Any, n_chunks: int) -> dict[str, float]:
    """Max abs difference, per output (``y`` and its carry) and state tensor, between ``art`` and the
    eager ``seg`` run over ``n_chunks`` consecutive chunks of ``x`` (state carried over). ``x`` is
    float32: a tensor, or the tuple of x and its carry for a segment that starts inside a block."""
    L = art.chunk_len
    b = as_tuple(x)[0].shape[1]
    outs = ["y", *(c.name for c in art.carry_out)]
    diffs = {**{n: 0.0 for n in outs}, **{n: 0.0 for n in art.state_names}}
    st_e: Optional[dict[str, Tensor]] = None
    st_a = [t for t in _zeros_for(art, b, as_tuple(x)[0].device)]
    for c in range(n_chunks):
        xc = chunk(x, c * L, (c + 1) * L)
        if art.input_dtype == "uint8":  # event counts: the eager model sees the same integer values
            xc = xc.round().clamp(0, 255)
        ye, st_e = seg.run(xc, st_e)
        if list(st_e) != art.state_names:
            raise VerificationError(f"{art.path}: eager state names {list(st_e)} differ from the manifest's "
                                    f"{art.state_names}")
        want = torch_dtype(art.input_dtype)
        xa = xc if isinstance(xc, tuple) or xc.dtype == want else xc.to(want)   # int64 token ids stay
        ya, st_a = _split_outputs(art, art(xa, *st_a))
        for n, e, a in zip(outs, as_tuple(ye), ya):
            diffs[n] = max(diffs[n], _max_abs(e, a))
        for n, t in zip(art.state_names, st_a):
            diffs[n] = max(diffs[n], _max_abs(st_e[n], t))
    return diffs


def _split_outputs(art: Artifact, flat: Sequence[Tensor]) -> tuple[tuple[Tensor, ...], list[Tensor]]:
    """(outputs: y and its carry, new state) of a flat program result."""
    k = 1 + len(art.carry_out)
    return tuple(flat[:k]), list(flat[k:])


def _zeros_for(art: Artifact, batch: int, device: torch.device) -> list[Tensor]:
    return [s.with_batch(batch).zeros(device) for s in art.state_specs]


# ------------------------------------------------------------------------------ results

@dataclass
class ArtifactRecord:
    """One artifact of a compile: where it is, its manifest, and what this compile did with it."""

    segment: int
    split: tuple[int | str, int | str]
    chunk_len: int
    path: Path
    cache: str                      # 'hit' | 'miss' (built now)
    manifest: Manifest
    seconds: float                  # wall time spent on it by this compile (check or build + verify)

    @property
    def state_nbytes(self) -> int:
        return self.manifest.state_nbytes

    @property
    def program_bytes(self) -> int:
        return self.manifest.program.bytes

    @property
    def compile_seconds(self) -> float:
        return self.manifest.program.compile_seconds

    @property
    def verify_max_abs_diff(self) -> Optional[float]:
        return self.manifest.verify.worst if self.manifest.verify is not None else None


@dataclass
class ArtifactSet:
    """Result of :func:`compile_spec`: the artifacts of every (segment, chunk length).

    ``slices[g]`` is the chunk length of time-slice row ``g``; ``cell(g, s)`` the artifact
    directory that grid cell runs; ``load(s, L)`` loads one, requiring this compile's cache key.
    """

    net: str
    root: Path
    T: int
    slices: tuple[int, ...]
    splits: list[tuple[int | str, int | str]]
    batch: int
    input_dtype: str
    aot: bool
    in_shape: tuple[int, ...]
    checkpoint_sha256: str
    model_sha256: str
    split_source: str = ""
    records: list[ArtifactRecord] = field(default_factory=list)
    keys: dict[tuple[int, int], dict] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.slices)

    @property
    def timestep(self) -> int:
        return self.T

    @property
    def row_chunks(self) -> list[int]:
        return list(self.slices)

    @property
    def n_segments(self) -> int:
        return len(self.splits)

    @property
    def chunk_lens(self) -> list[int]:
        """Distinct chunk lengths, longest first."""
        return sorted(set(self.slices), reverse=True)

    def record(self, segment: int, chunk_len: int) -> ArtifactRecord:
        for r in self.records:
            if r.segment == segment and r.chunk_len == chunk_len:
                return r
        raise KeyError(f"no artifact for segment {segment}, chunk_len {chunk_len}; have "
                       f"{[(r.segment, r.chunk_len) for r in self.records]}")

    def path(self, segment: int, chunk_len: int) -> Path:
        return self.record(segment, chunk_len).path

    def cell(self, row: int, segment: int) -> Path:
        """Artifact directory of grid cell (time-slice row, segment)."""
        if not 0 <= row < self.rows:
            raise IndexError(f"row {row}: the grid has {self.rows} rows")
        return self.path(segment, self.slices[row])

    def load(self, segment: int, chunk_len: int, device: str | torch.device | None = None,
             fast: bool = False) -> Artifact:
        """:func:`~compile.artifact.load_artifact` requiring this compile's cache key."""
        return load_artifact(self.path(segment, chunk_len), expect=self.keys[(segment, chunk_len)],
                             device=device, fast=fast)

    def programs(self) -> dict[ProgramKey, Program]:
        """``(segment, chunk length) -> Program``: each artifact directory (absolute) with its chunk
        signature for this set's batch (the :class:`~compile.program.ProgramSet` protocol)."""
        out: dict[ProgramKey, Program] = {}
        for r in self.records:
            sig = r.manifest.signature.with_batch(self.batch).chunk(r.chunk_len)
            sig = replace(sig, input=replace(sig.input, dtype=r.manifest.input_dtype))
            out[(r.segment, r.chunk_len)] = Program(sig, str(Path(r.path).resolve()))
        return out

    @property
    def all_cached(self) -> bool:
        """Every artifact was reused from the cache (nothing built)."""
        return bool(self.records) and all(r.cache == "hit" for r in self.records)

    def summary_line(self) -> str:
        """One line for a compile that built nothing (what a cached compile prints instead of the table)."""
        built = sum(r.cache == "miss" for r in self.records)
        what = (f"{len(self.records)} artifact(s) reused from the cache" if not built
                else f"{built} of {len(self.records)} artifact(s) built")
        return (f"{self.net}: {what} in {self.root} ({self.n_segments} segment(s) x chunk lengths {self.chunk_lens}, "
                f"checked in {sum(r.seconds for r in self.records):.2f} s" + ("; --force rebuilds)" if not built else ")"))

    def table(self) -> str:
        """The readable summary table printed at the end of a compile."""
        head = ["segment", "split", "chunk", "state bytes", "program", "compile s", "verify max|diff|",
                "fast", "cache", "time s"]
        rows = []
        for r in self.records:
            rows.append([f"model_{r.segment}", f"[{r.split[0]}, {r.split[1]}]", str(r.chunk_len),
                         f"{r.state_nbytes:,}", _human_bytes(r.program_bytes), f"{r.compile_seconds:.2f}",
                         "-" if r.verify_max_abs_diff is None else f"{r.verify_max_abs_diff:.1e}",
                         "yes" if r.manifest.fast is not None else "no", r.cache, f"{r.seconds:.2f}"])
        widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
        return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


CompiledModel = ArtifactSet   # the name this result had before the stage chain (kept for callers)


# ------------------------------------------------------------------------------ compile

@dataclass
class _Job:
    """One artifact to produce: segment ``i`` of ``spec`` for chunks of ``L`` into ``d``."""

    spec: ModelSpec
    opts: CompileOptions
    i: int
    L: int
    d: Path
    key: dict
    io: Signature
    device: torch.device

    @property
    def seg(self) -> Segment:
        return _segment(self.spec, self.i, self.device)

    @property
    def input_dtype(self) -> str:
        return self.spec.input_dtype if self.i == 0 else "float32"


def _segment(spec: ModelSpec, i: int, device: torch.device) -> Segment:
    """Segment ``i`` of ``spec`` in eval mode on ``device``."""
    return spec.segments[i].eval().to(device)


def compile_spec(spec: ModelSpec, slices: Sequence[int], options: CompileOptions = CompileOptions()) -> ArtifactSet:
    """Compile every segment of ``spec`` for every distinct length in ``slices`` (the grid rows'
    time-slice lengths, summing to T). Raises ArtifactError (stale/corrupt cache, unless
    ``options.force``), VerificationError, ValueError (slices that do not cut T)."""
    slices = tuple(int(t) for t in slices)
    if not slices or any(t < 1 for t in slices) or sum(slices) != spec.T:
        raise ValueError(f"slices={list(slices)}: expected positive time-slice lengths summing to T={spec.T}")
    spec.check_slices(slices)
    opts = options
    seeded = (f"WARNING: no checkpoint: compiling DETERMINISTIC SEEDED INITIAL WEIGHTS (seed={spec.seed}) of "
              f"{spec.name}, not a trained model") if spec.checkpoint is None else None
    # lines held back until something is built (the seeded-weights warning with them, on stderr)
    log = _QuietLog(_logger(opts.verbose), warn=seeded)
    dev = torch.device(opts.device)
    lens = sorted(set(slices), reverse=True)
    root = opts.root / f"{spec.name}-{spec.key}"   # one directory per model, weights content and cut
    io = spec.io_specs(opts.batch)   # the modules are touched only to build or verify (a recorded spec: built then)
    result = ArtifactSet(spec.name, root, spec.T, slices, [tuple(s) for s in spec.splits], opts.batch,
                         spec.input_dtype, opts.aot, spec.in_shape, spec.weights_sha256, spec.model_sha256,
                         spec.split_source)
    log(f"compiling {spec.name} ({spec.config.filename}): {spec.n_segments} segment(s) "
        f"{[list(s) for s in spec.splits]}, T={spec.T} over {len(slices)} row(s) -> chunk lengths {lens}, "
        f"batch {opts.batch}, {'AOTInductor' if opts.aot else 'torch.export'} on {dev}, into {root}")

    inputs: dict[int, Any] = {}
    input_note: list[str] = []

    def seg_input(i: int) -> Any:
        """Verification input of segment i (x, or x and its carry across a cut inside a block): the eager
        chain's output of the model input, run in chunks of the longest slice with the state carried
        (as the artifacts are verified)."""
        if not inputs:
            x, why = verification_input(spec.config, spec.in_shape, opts.verify_chunks * lens[0], opts.batch,
                                        spec.seed, opts.use_dataset, spec.input_dtype, spec.input_high)
            input_note.append(why)
            log(f"verification input: {why}")
            inputs[0] = x.to(dev)
        for k in range(1, i + 1):
            if k not in inputs:
                prev, st, outs = inputs[k - 1], None, []
                with torch.no_grad():
                    for c in range(0, as_tuple(prev)[0].shape[0], lens[0]):
                        y, st = _segment(spec, k - 1, dev).run(chunk(prev, c, c + lens[0]), st)
                        outs.append(as_tuple(y))
                cat = tuple(torch.cat(parts) for parts in zip(*outs))
                inputs[k] = cat[0] if len(cat) == 1 else cat
        return inputs[i]

    from tqdm import tqdm
    jobs = [(i, L) for i in range(spec.n_segments) for L in lens]
    bar = tqdm(jobs, desc=f"compile {spec.name}", unit="artifact", disable=not opts.progress, file=sys.stderr,
               delay=0.5)   # a cached check takes milliseconds: no bar for it
    for i, L in bar:
        t0 = time.perf_counter()
        dtype_i = spec.input_dtype if i == 0 else "float32"
        key = {"format_version": FORMAT_VERSION, "net": spec.name, "model_sha256": spec.model_sha256,
               "checkpoint_sha256": spec.weights_sha256, "segment_index": i, "n_segments": spec.n_segments,
               "split": list(spec.splits[i]), "chunk_len": L, "batch": opts.batch, "input_dtype": dtype_i,
               "in_shape": list(spec.in_shape), "torch": torch.__version__, "aot": bool(opts.aot),
               "device": dev.type}
        job = _Job(spec, opts, i, L, root / f"model_{i}" / artifact_dirname(L, opts.batch, dtype_i, opts.aot, str(dev)),
                   key, io[i], dev)
        man = None if opts.force else _cached(job.d, key)
        if man is not None:
            cache = "hit"
            if opts.verify and man.verify is None:
                log.loud()
                art = load_artifact(job.d, expect=key, device=dev)
                man = _record_verify(job, man, art, seg_input(i), input_note, log)
            if _wants_fast(job) and man.fast is None:
                log.loud()
                man = _add_fast(job.d, man, load_artifact(job.d, expect=key, device=dev), log)
        else:
            cache = "miss"
            log.loud()
            man = _build(job, seg_input, input_note, log)
        rec = ArtifactRecord(i, tuple(spec.splits[i]), L, job.d, cache, man, time.perf_counter() - t0)
        result.records.append(rec)
        result.keys[(i, L)] = key
        log(f"model_{i} t{L}: {cache} ({rec.seconds:.2f} s) -> {job.d}")
    if log.quiet:                      # all reused, nothing verified or added: one line, no table
        bar.leave = False
        bar.close()
        if opts.verbose:
            log.emit(result.summary_line() + (f"; weights seeded:{spec.seed}, NOT a trained checkpoint"
                                              if spec.checkpoint is None else ""))
        elif seeded:
            _warn(seeded)
        return result
    bar.close()
    log("\n" + result.table())
    if spec.checkpoint is None:
        log(f"weights: seeded:{spec.seed} (deterministic initial weights, NOT a trained checkpoint)")
    return result


class _QuietLog:
    """A compile's log: lines are held back while every artifact is a cache hit (a cached compile
    prints one summary line); the first artifact that needs work (``loud()``) prints them and
    everything after as it comes."""

    def __init__(self, emit: Callable[[str], None], warn: Optional[str] = None):
        self.emit = emit
        self.warn = warn               # printed on stderr when the log turns loud
        self.quiet = True
        self.held: list[str] = []

    def __call__(self, msg: str) -> None:
        if self.quiet:
            self.held.append(msg)
        else:
            self.emit(msg)

    def loud(self) -> None:
        if self.quiet:
            self.quiet = False
            if self.warn:
                _warn(self.warn)
            for msg in self.held:
                self.emit(msg)
            self.held = []


def _warn(msg: str) -> None:
    """A warning on stderr, above the compile's progress bar (which is on stderr too), never on its line."""
    from tqdm import tqdm
    tqdm.write(msg, file=sys.stderr)
    sys.stderr.flush()


def _logger(verbose: bool) -> Callable[[str], None]:
    if not verbose:
        return lambda msg: None

    def log(msg: str) -> None:
        from tqdm import tqdm
        tqdm.write(msg, file=sys.stdout)
        sys.stdout.flush()
    return log


def _cached(d: Path, key: Mapping[str, Any]) -> Optional[Manifest]:
    """The manifest of a reusable artifact at ``d``, None if there is none; ArtifactError if the
    one there is corrupt, stale or for something else."""
    if not d.exists() or (d.is_dir() and not any(d.iterdir())):
        return None
    man = read_manifest(d)
    diffs = {k: (man.key.get(k, "<absent>"), v) for k, v in key.items()
             if _json(man.key.get(k, "<absent>")) != _json(v)}
    if diffs:
        txt = "; ".join(f"{k}: artifact {a!r} vs this compile {b!r}" for k, (a, b) in diffs.items())
        raise ArtifactError(d / MANIFEST, "mismatch", f"existing artifact was built from different inputs ({txt}); "
                            "it will not be reused: rebuild with --force (force=True) or use another --out",
                            diffs)
    check_program(d, man)
    if man.fast is not None:
        check_program(d, man, man.fast)
    return man


def _json(v: Any) -> str:
    import json
    return json.dumps(v)


def _build(job: _Job, seg_input: Callable[[int], Any], input_note: list[str], log: Callable[[str], None]) -> Manifest:
    """Export (+ AOTInductor), write into a temporary directory, verify, then move into place."""
    d, opts, seg, sp = job.d, job.opts, job.seg, job.io
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = d.parent / f".{d.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        names = [s.name for s in sp.state]
        prog = ChunkProgram(seg, names, len(sp.carry_in)).eval()
        t0 = time.perf_counter()
        ep, dynamic, note = _export(prog, job.L, opts.batch, sp.inputs, sp.state, job.input_dtype, job.device)
        t_export = time.perf_counter() - t0
        t_aot = 0.0
        if opts.aot:
            from torch._inductor import aoti_compile_and_package
            t1 = time.perf_counter()
            aoti_compile_and_package(ep, package_path=str(tmp / PROGRAM))
            t_aot = time.perf_counter() - t1
        else:
            torch.export.save(ep, str(tmp / PROGRAM))
        if note:
            log(f"model_{job.i} t{job.L}: static batch {opts.batch} ({note})")
        log(f"model_{job.i} t{job.L}: exported in {t_export:.2f} s" + (f", AOTInductor {t_aot:.2f} s" if opts.aot else "")
            + f", program {_human_bytes((tmp / PROGRAM).stat().st_size)}")
        spec = job.spec
        man = Manifest(
            net=spec.name, segment_index=job.i, split=tuple(seg.split), chunk_len=job.L,
            batch=BatchInfo(opts.batch, dynamic, note), input_dtype=job.input_dtype,
            signature=(replace(sp, input=TensorSpec(sp.input.name, sp.input.shape, job.input_dtype))
                       if job.i == 0 else sp),
            program=ProgramFile(PROGRAM, "aoti" if opts.aot else "torch.export", str(job.device),
                                file_sha256(tmp / PROGRAM), (tmp / PROGRAM).stat().st_size,
                                round(t_export, 3), round(t_aot, 3)),
            key=job.key, versions=_versions(), n_segments=spec.n_segments, n_blocks=seg.n_blocks,
            backbone=seg.backbone_name, timestep=spec.T,
            config={"name": spec.name, "file": spec.config.filename, "sha256": spec.config.sha256(),
                    "model_sha256": spec.model_sha256},
            checkpoint={"path": spec.checkpoint, "sha256": spec.weights_sha256,
                        "file_sha256": spec.checkpoint_file_sha256},
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        write_manifest(tmp, man)
        if opts.verify or _wants_fast(job):
            art = load_artifact(tmp, expect=job.key, device=job.device)
            if opts.verify:
                man = _record_verify(job, man, art, seg_input(job.i), input_note, log, tmp=tmp)
            if _wants_fast(job):
                man = _add_fast(tmp, man, art, log)
        if d.exists():
            if any(d.iterdir()) and not ((d / MANIFEST).exists() or (d / PROGRAM).exists()):
                raise ValueError(f"{d} exists and is not an artifact directory; refusing to replace it")
            shutil.rmtree(d)
        tmp.rename(d)
        return man
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _record_verify(job: _Job, man: Manifest, art: Artifact, x: Tensor, input_note: list[str],
                   log: Callable[[str], None], tmp: Optional[Path] = None) -> Manifest:
    """Verify ``art`` against the eager segment, store the result in the manifest of ``tmp`` (a build
    in progress) or ``job.d``; errors name ``job.d``."""
    n_chunks, tol = job.opts.verify_chunks, job.opts.tol
    t0 = time.perf_counter()
    diffs = verify_artifact(art, job.seg, chunk(x, 0, n_chunks * job.L), n_chunks)
    worst = max(diffs.values())
    shown = ", ".join(f"{k}={v:.1e}" for k, v in diffs.items())
    log(f"verify model_{art.segment_index} t{art.chunk_len} ({n_chunks} chunks, state carried): "
        f"max|diff| {worst:.1e}: {shown}")
    if not worst <= tol:
        bad = {k: v for k, v in diffs.items() if not v <= tol}
        hint = ""
        if art.format == "aoti":
            hint = ("; AOTInductor's fused kernels round differently from eager kernels (~1e-7), and a membrane "
                    "that close to the threshold fires in one and not the other, after which the runs diverge: "
                    "accept with a larger tol (--tol) if that is acceptable, or use the torch.export program")
        raise VerificationError(f"{job.d}: artifact differs from the eager segment by more than tol={tol:g}: "
                                + ", ".join(f"{k}={v:.3e}" for k, v in bad.items()) + hint)
    man = man.replace(verify=Verification(input_note[0] if input_note else "?", n_chunks, int(as_tuple(x)[0].shape[1]), tol,
                                          diffs, round(time.perf_counter() - t0, 3)))
    write_manifest(tmp or job.d, man)
    return man


def _wants_fast(job: _Job) -> bool:
    return job.opts.fast_load and not job.opts.aot and job.device.type == "cpu"


FAST_CHECK_CHUNKS = 3


def _add_fast(d: Path, man: Manifest, art: Artifact, log: Callable[[str], None]) -> Manifest:
    """Trace the exported program ``art`` into TorchScript for its compiled batch, keep it only if
    it equals the program bit for bit over 3 chunks (state carried, seeded input), record it."""
    b = man.batch.compiled
    g = torch.Generator().manual_seed(7)
    xs = tuple((torch.rand((FAST_CHECK_CHUNKS * man.chunk_len, b, *t.shape[1:]), generator=g) < 0.3)
               .to(torch_dtype(man.input_dtype if i == 0 else t.dtype)) for i, t in enumerate(man.inputs))
    state0 = [s.with_batch(b).zeros() for s in man.state]
    t0 = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")   # TorchScript's deprecation notice and tracer notes on the shape guards
        traced = torch.jit.trace(art._program, (*chunk(xs, 0, man.chunk_len), *state0), check_trace=False)
        torch.jit.save(traced, str(d / FAST_PROGRAM))
    fast = Artifact(d, man, load_torchscript(d / FAST_PROGRAM), "torchscript")
    sa, sf = list(state0), list(state0)
    for c in range(FAST_CHECK_CHUNKS):
        xc = chunk(xs, c * man.chunk_len, (c + 1) * man.chunk_len)
        ya, sa = _split_outputs(art, art(xc, *sa))
        yf, sf = _split_outputs(fast, fast(xc, *sf))
        if not (all(torch.equal(p, q) for p, q in zip(ya, yf)) and all(torch.equal(p, q) for p, q in zip(sa, sf))):
            (d / FAST_PROGRAM).unlink()
            log(f"model_{man.segment_index} t{man.chunk_len}: the TorchScript form differs from the exported "
                "program; not written (cells load the exported program)")
            return man
    pf = ProgramFile(FAST_PROGRAM, "torchscript", "cpu", file_sha256(d / FAST_PROGRAM),
                     (d / FAST_PROGRAM).stat().st_size, round(time.perf_counter() - t0, 3))
    man = man.replace(fast=pf)
    write_manifest(d, man)
    return man
