"""Compiling a config's model segments into artifacts, with caching and verification.

:func:`compile_config` is what ``python -m compile`` and the runtime call. For every model
segment ``i`` and every distinct time-slice length ``L`` the grid needs (``numpy.array_split`` of
T over R rows: at most two lengths) it produces the artifact directory::

    <out>/<net>/model_<i>/t<L>_b<B>[_uint8][_aot][_<device>]/
        program.pt2       torch.export ExportedProgram (or AOTInductor package with aot=True) of
                          (x[L, B, *in], *state) -> (y[L, B, *out], *new_state)
        net_params.json   manifest: specs (state ABI order), provenance, cache key, verification

``<net>`` is the config's name. The batch dimension is exported dynamic when torch.export allows
it (``manifest['batch']['dynamic']``), else static at ``B``. A uint8 first-segment input (event
counts, as on chip) is cast to float32 inside the program.

Caching: an artifact is reused when its manifest's cache key equals this compile's (net, model
sha256 -- the model-defining config keys --, checkpoint sha256 or ``seeded:<seed>``, segment and
split, chunk length, batch, input dtype, model input shape, torch version, aot, device) and its
program hashes to the recorded sha256. A key that differs, a corrupt manifest or program, or an
artifact from an incompatible torch raises :class:`~compile.artifact.ArtifactError` (a
ValueError naming the file and what differs) unless ``force=True``, which rebuilds.

Verification: every newly built artifact is loaded back from disk and run against the eager
segment over ``verify_chunks`` consecutive chunks with the state carried over, on the dataset's
first test sample when ``bidl_models.datasets`` can load it, else on a deterministic seeded random
spike tensor (later segments get the eager output of the segments before them). The max abs
difference of the output and of every state tensor is printed and stored in the manifest; above
``tol`` (1e-5) the build fails with :class:`VerificationError` and nothing is written.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from bidl_models.backbones import config_file_digests
from bidl_models.checkpoint import file_sha256
from bidl_models.config import Config, load_config, model_segment_configs, validate_lynxi_devices
from bidl_models.grid import parse_grid, time_slices
from bidl_models.segments import Segment, auto_split, check_chain, split_backbone
from bidl_models.specs import TensorSpec, torch_dtype

from .artifact import (FORMAT_VERSION, KIND, MANIFEST, PROGRAM, Artifact, ArtifactError, check_program,
                       load_artifact, read_manifest, seal_manifest)

__all__ = ["compile_config", "CompiledModel", "ArtifactRecord", "VerificationError", "ChunkProgram",
           "model_sha256", "artifact_dirname"]

INPUT_DTYPES = ("float32", "uint8")


class VerificationError(RuntimeError):
    """A freshly built artifact disagrees with the eager segment by more than the tolerance."""


# ------------------------------------------------------------------------------ small helpers

def model_sha256(cfg: Mapping) -> str:
    """Hash of the config keys that define the model (``model``/``model_<i>``,
    ``models_compile_inputshape``) and of the content of files they name (a NirGraph's ``graph``):
    other keys (data, schedule, devices) do not change a program."""
    keys = sorted(k for k in cfg if k == "model" or (k.startswith("model_") and k[6:].isdigit())
                  or k == "models_compile_inputshape")
    plain = {k: (cfg[k].to_dict() if isinstance(cfg[k], Config) else cfg[k]) for k in keys}
    files = config_file_digests(cfg)
    if files:   # only then: the keys of configs without files stay as they were
        plain["files"] = files
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=repr).encode()).hexdigest()


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


def _backbone_of(seg: Segment) -> nn.Module:
    return seg.backbone  # the (weight-loaded) backbone the segment was cut from


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
    """``forward(x, *state) -> (y, *new_state)``: a segment's chunk function on flat tensors in
    the ABI order ``state_names``; a non-float32 input is cast to float32 first."""

    def __init__(self, segment: Segment, state_names: Sequence[str]):
        super().__init__()
        self.segment = segment
        self.state_names = list(state_names)

    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        if x.dtype != torch.float32:
            x = x.to(torch.float32)
        y, new = self.segment.run(x, dict(zip(self.state_names, state)))
        return (y, *(new[n] for n in self.state_names))


def _batch_is_symbolic(ep: Any) -> bool:
    name = ep.graph_signature.user_inputs[0]
    for n in ep.graph.nodes:
        if n.op == "placeholder" and n.name == name:
            return isinstance(n.meta["val"].shape[1], torch.SymInt)
    return False


def _export(prog: ChunkProgram, chunk_len: int, batch: int, in_shape: Sequence[int],
            state_specs: Sequence[TensorSpec], input_dtype: str, device: torch.device) -> tuple[Any, bool, str]:
    """ExportedProgram with a dynamic batch dim if torch.export keeps it symbolic, else static.

    Traced with a batch of at least 2 (export specialises sizes 0 and 1)."""
    def example(b: int) -> tuple[Tensor, ...]:
        x = torch.zeros((chunk_len, b, *in_shape), dtype=torch_dtype(input_dtype), device=device)
        return (x, *(s.with_batch(b).zeros(device) for s in state_specs))

    note = ""
    auto = torch.export.Dim.AUTO
    dyn = ({1: auto}, tuple({0: auto} for _ in state_specs))
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
    try:
        from bidl_models.datasets import build_dataset  # written in parallel; optional here
    except Exception as e:  # noqa: BLE001
        return None, f"no dataset package ({type(e).__name__})"
    test = (cfg.get("data") or {}).get("test")
    if not test:
        return None, "config has no data.test"
    try:
        item = build_dataset(test)[0]
    except Exception as e:  # noqa: BLE001 - data not downloaded, etc.
        return None, f"data.test unavailable ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    img = item.get("img") if isinstance(item, Mapping) else item[0] if isinstance(item, (tuple, list)) else item
    try:
        t = torch.as_tensor(img).to(torch.float32)
    except Exception as e:  # noqa: BLE001
        return None, f"data.test sample 0 is not a tensor ({type(e).__name__})"
    if t.dim() != len(in_shape) + 1 or tuple(t.shape[1:]) != tuple(in_shape):
        return None, f"data.test sample 0 has shape {list(t.shape)}, the model takes [T, {', '.join(map(str, in_shape))}]"
    return t, f"dataset {test.get('type', '?')} test sample 0"


def verification_input(cfg: Mapping, in_shape: Sequence[int], steps: int, batch: int, seed: int = 0,
                       use_dataset: bool = True) -> tuple[Tensor, str]:
    """``[steps, batch, *in_shape]`` float32 model input for verification, and where it came from.

    Batch element 0 is the dataset's first test sample (time axis tiled to ``steps``) when available;
    everything else is a seeded random spike tensor (P(1) = 0.3)."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand((steps, batch, *in_shape), generator=g) < 0.3).to(torch.float32)
    if not use_dataset:
        return x, f"random spikes (seed {seed}; dataset not used)"
    sample, why = _dataset_sample(cfg, in_shape)
    if sample is None:
        return x, f"random spikes (seed {seed}; {why})"
    reps = -(-steps // sample.shape[0])
    x[:, 0] = sample.repeat(reps, *([1] * len(in_shape)))[:steps]
    return x, why


def _max_abs(a: Tensor, b: Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


@torch.no_grad()
def verify_artifact(art: Artifact, seg: Segment, x: Tensor, n_chunks: int) -> dict[str, float]:
    """Max abs difference, per output and state tensor, between ``art`` and the eager ``seg`` run
    over ``n_chunks`` consecutive chunks of ``x`` (state carried over). ``x`` is float32."""
    L = art.chunk_len
    b = x.shape[1]
    diffs = {"y": 0.0, **{n: 0.0 for n in art.state_names}}
    st_e: Optional[dict[str, Tensor]] = None
    st_a = [t for t in _zeros_for(art, b, x.device)]
    for c in range(n_chunks):
        xc = x[c * L:(c + 1) * L]
        if art.input_dtype == "uint8":  # event counts: the eager model sees the same integer values
            xc = xc.round().clamp(0, 255)
        ye, st_e = seg.run(xc, st_e)
        if list(st_e) != art.state_names:
            raise VerificationError(f"{art.path}: eager state names {list(st_e)} differ from the manifest's "
                                    f"{art.state_names}")
        xa = xc.to(torch.uint8) if art.input_dtype == "uint8" else xc
        ya, *st_a = art(xa, *st_a)
        diffs["y"] = max(diffs["y"], _max_abs(ye, ya))
        for n, t in zip(art.state_names, st_a):
            diffs[n] = max(diffs[n], _max_abs(st_e[n], t))
    return diffs


def _zeros_for(art: Artifact, batch: int, device: torch.device) -> list[Tensor]:
    return [s.with_batch(batch).zeros(device) for s in art.state_specs]


# ------------------------------------------------------------------------------ results

@dataclass
class ArtifactRecord:
    """One artifact of a compile: where it is and what this compile did with it."""

    segment: int
    split: tuple[int, int]
    chunk_len: int
    path: Path
    cache: str                      # 'hit' | 'miss' (built now)
    state_nbytes: int
    program_bytes: int
    compile_seconds: float          # export (+ AOTInductor) time when it was built
    verify_max_abs_diff: Optional[float]
    seconds: float                  # wall time spent on it by this compile (check or build + verify)


@dataclass
class CompiledModel:
    """Result of :func:`compile_config`: the artifacts of every (segment, chunk length).

    ``row_chunks[g]`` is the chunk length of time-slice row ``g``; ``cell(g, s)`` the artifact
    directory that grid cell runs; ``load(s, L)`` loads one, requiring this compile's cache key.
    """

    net: str
    root: Path
    rows: int
    timestep: int
    row_chunks: list[int]
    splits: list[tuple[int, int]]
    batch: int
    input_dtype: str
    aot: bool
    in_shape: tuple[int, ...]
    checkpoint_sha256: str
    model_sha256: str
    records: list[ArtifactRecord] = field(default_factory=list)
    keys: dict[tuple[int, int], dict] = field(default_factory=dict)

    @property
    def n_segments(self) -> int:
        return len(self.splits)

    @property
    def chunk_lens(self) -> list[int]:
        """Distinct chunk lengths, longest first."""
        return sorted(set(self.row_chunks), reverse=True)

    def path(self, segment: int, chunk_len: int) -> Path:
        for r in self.records:
            if r.segment == segment and r.chunk_len == chunk_len:
                return r.path
        raise KeyError(f"no artifact for segment {segment}, chunk_len {chunk_len}; have "
                       f"{[(r.segment, r.chunk_len) for r in self.records]}")

    def cell(self, row: int, segment: int) -> Path:
        """Artifact directory of grid cell (time-slice row, segment)."""
        if not 0 <= row < self.rows:
            raise IndexError(f"row {row}: the grid has {self.rows} rows")
        return self.path(segment, self.row_chunks[row])

    def load(self, segment: int, chunk_len: int, device: str | torch.device | None = None) -> Artifact:
        """:func:`~compile.artifact.load_artifact` requiring this compile's cache key."""
        return load_artifact(self.path(segment, chunk_len), expect=self.keys[(segment, chunk_len)],
                             device=device)

    def table(self) -> str:
        """The readable summary table printed at the end of a compile."""
        head = ["segment", "split", "chunk", "state bytes", "program", "compile s", "verify max|diff|",
                "cache", "time s"]
        rows = []
        for r in self.records:
            rows.append([f"model_{r.segment}", f"[{r.split[0]}, {r.split[1]}]", str(r.chunk_len),
                         f"{r.state_nbytes:,}", _human_bytes(r.program_bytes), f"{r.compile_seconds:.2f}",
                         "-" if r.verify_max_abs_diff is None else f"{r.verify_max_abs_diff:.1e}",
                         r.cache, f"{r.seconds:.2f}"])
        widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
        return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


# ------------------------------------------------------------------------------ compile

def _resolve_in_shape(cfg: Mapping, in_shape: Optional[Sequence[int]]) -> Optional[tuple[int, ...]]:
    inshapes = cfg.get("models_compile_inputshape")
    first = tuple(int(d) for d in inshapes[0][1:]) if inshapes else None
    if in_shape is not None:
        in_shape = tuple(int(d) for d in in_shape)
        if first is not None and first != in_shape:
            raise ValueError(f"in_shape={list(in_shape)} conflicts with models_compile_inputshape[0]="
                             f"{list(inshapes[0])}; override models_compile_inputshape instead")
        return in_shape
    return first


def _segments(cfg: Mapping, checkpoint: Optional[str | Path], seed: int, in_shape: Optional[tuple[int, ...]],
              cols: Optional[int], splits: Optional[Sequence[Sequence[int]]]) -> list[Segment]:
    from bidl_models.config import build_segments
    segs = build_segments(cfg, seed=seed, model_in_shape=in_shape, checkpoint=checkpoint)
    if len(segs) > 1:
        if splits is not None:
            raise ValueError(f"splits={splits!r}: the config already cuts the model into {len(segs)} segments "
                             "(model_0..n with split); drop splits or use a single-model config")
        if cols is not None and cols != len(segs):
            raise ValueError(f"grid has {cols} segment columns, but the config defines {len(segs)} segments "
                             f"(model_0..model_{len(segs) - 1})")
        return segs
    if splits is None and (cols or 1) == 1:
        return segs
    bb = _backbone_of(segs[0]).eval()  # block_costs traces in the module's mode: BN needs eval here
    if splits is None:
        splits = auto_split(bb, cols, in_shape)
    elif cols is not None and cols != len(splits):
        raise ValueError(f"grid has {cols} segment columns but splits={splits!r} has {len(splits)}")
    segs = split_backbone(bb, splits)
    check_chain(segs, in_shape)
    return segs


def compile_config(cfg: Config | str | Path, checkpoint: Optional[str | Path] = None, *,
                   grid: str | Sequence[int] | None = None, rows: Optional[int] = None,
                   splits: Optional[Sequence[Sequence[int]]] = None, out: str | Path = "artifacts",
                   force: bool = False, aot: bool = False, batch: int = 1, input_dtype: str = "float32",
                   in_shape: Optional[Sequence[int]] = None, seed: int = 0, device: str = "cpu",
                   verify: bool = True, use_dataset: bool = True, verify_chunks: int = 3, tol: float = 1e-5,
                   overrides: Sequence[str] = (), progress: bool = True, verbose: bool = True) -> CompiledModel:
    """Compile every segment of ``cfg`` for every chunk length of the grid (see module docstring).

    ``cfg``: a loaded Config or a config name/path (``overrides`` apply then). Grid rows come from
    ``grid`` ('RxC' or (R, C)), else ``rows``, else the config's ``lynxi_devices``, else 1; segment
    columns from the config's ``model_0..n``, else ``splits``, else an automatic FLOP-balanced
    split into the grid's columns. ``in_shape``: per-step model input (C, H, W) when neither the
    backbone nor ``models_compile_inputshape`` fixes it. Raises ArtifactError (stale/corrupt cache,
    unless ``force``), VerificationError, ValueError (bad arguments, naming them).
    """
    log: Callable[[str], None] = _logger(verbose)
    if not isinstance(cfg, Config):
        cfg = load_config(cfg, overrides)
    elif overrides:
        raise ValueError("overrides apply when cfg is a name or path; apply them with load_config")
    if not cfg.name:
        raise ValueError("cfg has no name (load it with bidl_models.config.load_config): the artifact "
                         "directory <out>/<name> needs it")
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(f"input_dtype={input_dtype!r}: expected one of {list(INPUT_DTYPES)}")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch={batch!r}: expected a positive int")
    if verify_chunks < 1:
        raise ValueError(f"verify_chunks={verify_chunks!r}: expected >= 1")
    dev = torch.device(device)

    n_rows, n_cols = None, None
    if grid is not None:
        n_rows, n_cols = parse_grid(grid)
    elif rows is not None:
        n_rows = int(rows)
    elif cfg.get("lynxi_devices") is not None:
        devs = validate_lynxi_devices(cfg.lynxi_devices)
        n_rows, n_cols = len(devs), len(devs[0])
    n_rows = n_rows or 1
    if n_cols is None and splits is None:
        n_cols = len(model_segment_configs(cfg))

    shape = _resolve_in_shape(cfg, in_shape)
    if checkpoint is not None:
        ckpt_sha = file_sha256(checkpoint) if Path(checkpoint).is_file() else None
        if ckpt_sha is None:
            raise FileNotFoundError(f"checkpoint {str(checkpoint)!r}: no such file")
    else:
        ckpt_sha = f"seeded:{seed}"
        print(f"WARNING: no checkpoint: compiling DETERMINISTIC SEEDED INITIAL WEIGHTS (seed={seed}) of "
              f"{cfg.name}, not a trained model", file=sys.stderr, flush=True)
    segs = _segments(cfg, checkpoint, seed, shape, n_cols, splits)
    try:
        model_in = tuple(segs[0].input_shape(shape))
    except ValueError as e:
        raise ValueError(f"{e} (give in_shape / --in-shape C,H,W or models_compile_inputshape)") from None
    timestep = int(_backbone_of(segs[0]).timestep)
    row_chunks = time_slices(timestep, n_rows)
    lens = sorted(set(row_chunks), reverse=True)
    msha = model_sha256(cfg)
    root = Path(out) / cfg.name
    for s in segs:
        s.eval().to(dev)
    specs = [s.specs(batch, model_in) for s in segs]

    result = CompiledModel(cfg.name, root, n_rows, timestep, row_chunks, [s.split for s in segs], batch,
                           input_dtype, aot, model_in, ckpt_sha, msha)
    log(f"compiling {cfg.name} ({cfg.filename}): {len(segs)} segment(s) {[list(s.split) for s in segs]}, "
        f"T={timestep} over {n_rows} row(s) -> chunk lengths {lens}, batch {batch}, "
        f"{'AOTInductor' if aot else 'torch.export'} on {dev}, into {root}")

    jobs = [(i, L) for i in range(len(segs)) for L in lens]
    inputs: dict[int, Tensor] = {}
    input_note: list[str] = []

    def seg_input(i: int) -> Tensor:
        """Verification input of segment i: the eager chain's output of the model input."""
        if not inputs:
            x, why = verification_input(cfg, model_in, verify_chunks * lens[0], batch, seed, use_dataset)
            input_note.append(why)
            log(f"verification input: {why}")
            inputs[0] = x.to(dev)
        for k in range(1, i + 1):
            if k not in inputs:
                with torch.no_grad():
                    inputs[k] = segs[k - 1].run(inputs[k - 1])[0]
        return inputs[i]

    from tqdm import tqdm
    bar = tqdm(jobs, desc=f"compile {cfg.name}", unit="artifact", disable=not progress, file=sys.stderr)
    for i, L in bar:
        t0 = time.perf_counter()
        seg, sp = segs[i], specs[i]
        dtype_i = input_dtype if i == 0 else "float32"
        key = {"format_version": FORMAT_VERSION, "net": cfg.name, "model_sha256": msha,
               "checkpoint_sha256": ckpt_sha, "segment_index": i, "n_segments": len(segs),
               "split": list(seg.split), "chunk_len": L, "batch": batch, "input_dtype": dtype_i,
               "in_shape": list(model_in), "torch": torch.__version__, "aot": bool(aot), "device": dev.type}
        d = root / f"model_{i}" / artifact_dirname(L, batch, dtype_i, aot, str(dev))
        man = None if force else _cached(d, key)
        if man is not None:
            cache = "hit"
            if verify and not man.get("verify"):
                art = load_artifact(d, expect=key, device=dev)
                man = _record_verify(d, man, art, seg, seg_input(i)[: verify_chunks * L], verify_chunks, tol,
                                     input_note, log)
        else:
            cache = "miss"
            man = _build(d, key, seg, sp, cfg, checkpoint, L, batch, dtype_i, aot, dev, verify, verify_chunks,
                         tol, seg_input, input_note, log, i)
        diff = max(man["verify"]["max_abs_diff"].values()) if man.get("verify") else None
        rec = ArtifactRecord(i, tuple(seg.split), L, d, cache, sum(s.nbytes for s in sp.state),
                             int(man["program"]["bytes"]), float(man["program"]["compile_seconds"]), diff,
                             time.perf_counter() - t0)
        result.records.append(rec)
        result.keys[(i, L)] = key
        log(f"model_{i} t{L}: {cache} ({rec.seconds:.2f} s) -> {d}")
    bar.close()
    log("\n" + result.table())
    if checkpoint is None:
        log(f"weights: seeded:{seed} (deterministic initial weights, NOT a trained checkpoint)")
    return result


def _logger(verbose: bool) -> Callable[[str], None]:
    if not verbose:
        return lambda msg: None

    def log(msg: str) -> None:
        from tqdm import tqdm
        tqdm.write(msg, file=sys.stdout)
        sys.stdout.flush()
    return log


def _cached(d: Path, key: Mapping[str, Any]) -> Optional[dict]:
    """The manifest of a reusable artifact at ``d``, None if there is none; ArtifactError if the
    one there is corrupt, stale or for something else."""
    if not d.exists() or (d.is_dir() and not any(d.iterdir())):
        return None
    man = read_manifest(d)
    diffs = {k: (man["key"].get(k, "<absent>"), v) for k, v in key.items()
             if json.dumps(man["key"].get(k, "<absent>")) != json.dumps(v)}
    if diffs:
        txt = "; ".join(f"{k}: artifact {a!r} vs this compile {b!r}" for k, (a, b) in diffs.items())
        raise ArtifactError(d / MANIFEST, "mismatch", f"existing artifact was built from different inputs ({txt}); "
                            "it will not be reused: rebuild with --force (force=True) or use another --out",
                            diffs)
    check_program(d, man)
    return man


def _build(d: Path, key: dict, seg: Segment, sp: Any, cfg: Config, checkpoint: Optional[str | Path], L: int,
           batch: int, input_dtype: str, aot: bool, dev: torch.device, verify: bool, n_chunks: int, tol: float,
           seg_input: Callable[[int], Tensor], input_note: list[str], log: Callable[[str], None],
           i: int) -> dict:
    """Export (+ AOTInductor), write into a temporary directory, verify, then move into place."""
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = d.parent / f".{d.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        names = [s.name for s in sp.state]
        prog = ChunkProgram(seg, names).eval()
        t0 = time.perf_counter()
        ep, dynamic, note = _export(prog, L, batch, sp.input.shape[1:], sp.state, input_dtype, dev)
        t_export = time.perf_counter() - t0
        t_aot = 0.0
        if aot:
            from torch._inductor import aoti_compile_and_package
            t1 = time.perf_counter()
            aoti_compile_and_package(ep, package_path=str(tmp / PROGRAM))
            t_aot = time.perf_counter() - t1
        else:
            torch.export.save(ep, str(tmp / PROGRAM))
        if note:
            log(f"model_{i} t{L}: static batch {batch} ({note})")
        log(f"model_{i} t{L}: exported in {t_export:.2f} s" + (f", AOTInductor {t_aot:.2f} s" if aot else "")
            + f", program {_human_bytes((tmp / PROGRAM).stat().st_size)}")
        man = {
            "kind": KIND, "format_version": FORMAT_VERSION, "net": cfg.name,
            "segment_index": i, "n_segments": key["n_segments"], "split": list(seg.split),
            "n_blocks": seg.n_blocks, "is_first": seg.is_first, "is_last": seg.is_last,
            "backbone": seg.backbone_name, "timestep": int(_backbone_of(seg).timestep), "chunk_len": L,
            "batch": {"compiled": batch, "dynamic": dynamic, "min": 1 if dynamic else batch,
                      "max": None if dynamic else batch, "note": note},
            "input_dtype": input_dtype,
            "input": sp.input.to_dict(), "output": sp.output.to_dict(),
            "state": [s.to_dict() for s in sp.state],
            "state_nbytes": sum(s.nbytes for s in sp.state),
            "args": ["x", *names], "returns": ["y", *names],
            "abi": "program(x[chunk_len, B, *input.shape[1:]], *state) -> (y[chunk_len, B, *output.shape[1:]], "
                   "*new_state); state in the order of 'state'; zeros = a fresh sample",
            "config": {"name": cfg.name, "file": cfg.filename, "sha256": cfg.sha256(),
                       "model_sha256": key["model_sha256"]},
            "checkpoint": {"path": str(checkpoint) if checkpoint is not None else None,
                           "sha256": key["checkpoint_sha256"]},
            "versions": _versions(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "program": {"file": PROGRAM, "format": "aoti" if aot else "torch.export", "device": str(dev),
                        "sha256": file_sha256(tmp / PROGRAM), "bytes": (tmp / PROGRAM).stat().st_size,
                        "export_seconds": round(t_export, 3), "aoti_seconds": round(t_aot, 3),
                        "compile_seconds": round(t_export + t_aot, 3)},
            "key": key, "verify": None,
        }
        _write_manifest(tmp, man)
        if verify:
            art = load_artifact(tmp, expect=key, device=dev)
            man = _record_verify(tmp, man, art, seg, seg_input(i)[: n_chunks * L], n_chunks, tol, input_note,
                                 log, final=d)
        if d.exists():
            if any(d.iterdir()) and not ((d / MANIFEST).exists() or (d / PROGRAM).exists()):
                raise ValueError(f"{d} exists and is not an artifact directory; refusing to replace it")
            shutil.rmtree(d)
        tmp.rename(d)
        return man
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _write_manifest(d: Path, man: Mapping) -> None:
    tmp = d / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(seal_manifest(man), indent=2) + "\n")
    tmp.replace(d / MANIFEST)


def _record_verify(d: Path, man: dict, art: Artifact, seg: Segment, x: Tensor, n_chunks: int, tol: float,
                   input_note: list[str], log: Callable[[str], None], final: Optional[Path] = None) -> dict:
    """Verify ``art`` (loaded from ``d``), store the result in ``d``'s manifest; errors name ``final``."""
    t0 = time.perf_counter()
    diffs = verify_artifact(art, seg, x, n_chunks)
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
        raise VerificationError(f"{final or d}: artifact differs from the eager segment by more than tol={tol:g}: "
                                + ", ".join(f"{k}={v:.3e}" for k, v in bad.items()) + hint)
    man = dict(man, verify={"input": input_note[0] if input_note else "?", "n_chunks": n_chunks,
                            "batch": int(x.shape[1]), "tol": tol, "max_abs_diff": diffs,
                            "seconds": round(time.perf_counter() - t0, 3)})
    _write_manifest(d, man)
    return man
