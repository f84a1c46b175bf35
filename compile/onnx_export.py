"""ONNX export of a segment's chunk program, state in and state out, checked with onnxruntime.

The ONNX model computes exactly what the artifact's program does::

    inputs   x[L, B, *in]  (float32, or uint8 event counts)   and every state tensor, ABI order
    outputs  y[L, B, *out]                                     and ``next.<name>`` for every state tensor

with ``L`` the chunk length and ``B`` symbolic (named ``batch``) when the artifact's batch is
dynamic. The state names are the artifact manifest's (``block1.lif.v``, ...), so a runtime can carry
the state from one chunk (time slice) to the next exactly as the grid does. Model metadata
(``metadata_props``) records the chunk length, split, state names and the source program's sha256.

- :func:`export_artifact` converts a compiled ``torch.export`` artifact (``compile_config``) into
  ``program.onnx`` beside it (or ``out``): the same ExportedProgram, translated by
  ``torch.onnx.export(..., dynamo=True)`` (needs the extra ``.[onnx]``: onnx, onnxscript).
- :func:`export_segment` exports an eager segment (any Temporal) for one chunk length.
- :func:`check_onnx` runs the ONNX model in onnxruntime (CPU) against the artifact or the eager
  segment over several consecutive chunks, each side carrying its own state, and returns the max
  |diff| of the output and of every state tensor.

Command line::

    python -m compile.onnx_export ARTIFACT_DIR [ARTIFACT_DIR ...] [--out DIR] [--check-chunks 3]
    python -m compile.onnx_export --config CFG [--checkpoint CKPT] [--grid RxC] [--splits ...]
                                  [--artifacts artifacts/]    # compile (cached), then export all
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .artifact import load_artifact
from .cache_dir import DEFAULT_HELP as ARTIFACTS_HELP, default_artifacts
from .job import compile_config

__all__ = ["export_artifact", "export_segment", "check_onnx", "OnnxExportError", "main"]

ONNX_FILE = "program.onnx"


class OnnxExportError(ValueError):
    """An artifact or segment that cannot be exported to ONNX (the message says which and why)."""


def _need(name: str):
    try:
        return __import__(name)
    except ImportError:
        raise ImportError(f"the {name!r} package is needed for ONNX export: pip install 'bidl-grid[onnx]'") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.onnx's progress lines and its 'torchvision is not installed' warnings, silenced."""
    names = ("torch.onnx", "torch.onnx._internal.exporter._registration", "onnxscript")
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in names]
    for lg, _ in saved:
        lg.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for lg, lvl in saved:
            lg.setLevel(lvl)


# ------------------------------------------------------------------------------ the ABI of one program

class _Abi:
    """Names, shapes and dtypes of a chunk program's inputs (from an artifact or a segment)."""

    def __init__(self, chunk_len: int, input_shape: Sequence[int], input_dtype: str, state: Sequence[tuple],
                 batch: int, meta: Mapping[str, Any]):
        self.chunk_len, self.input_shape, self.input_dtype = int(chunk_len), tuple(input_shape), input_dtype
        self.state = [(str(n), tuple(s), str(d)) for n, s, d in state]   # per-sample shapes
        self.batch, self.meta = int(batch), dict(meta)

    @property
    def state_names(self) -> list[str]:
        return [n for n, _, _ in self.state]

    def input_names(self) -> list[str]:
        return ["x", *self.state_names]

    def output_names(self) -> list[str]:
        return ["y", *(f"next.{n}" for n in self.state_names)]

    def example(self, batch: int, seed: int = 0, chunks: int = 1) -> tuple[Tensor, list[Tensor]]:
        """Seeded inputs ``x[chunks * L, B, ...]`` (spikes / small counts) and a zero state."""
        g = torch.Generator().manual_seed(seed)
        shape = (chunks * self.chunk_len, batch, *self.input_shape)
        if self.input_dtype == "uint8":
            x = torch.randint(0, 4, shape, generator=g, dtype=torch.uint8)
        else:
            x = (torch.rand(shape, generator=g) < 0.3).to(_dtype(self.input_dtype))
        state = [torch.zeros((batch, *s), dtype=_dtype(d)) for _, s, d in self.state]
        return x, state


def _dtype(name: str) -> torch.dtype:
    d = getattr(torch, name, None)
    if not isinstance(d, torch.dtype):
        raise OnnxExportError(f"dtype {name!r}: not a torch dtype")
    return d


def _no_carry(what: str, split: Any, carry: bool) -> None:
    if carry:
        raise OnnxExportError(f"{what}: split={list(split)} cuts inside a residual block (x travels with its skip "
                              "tensor); ONNX export takes segments cut at block boundaries")


def _artifact_abi(art: Any) -> _Abi:
    _no_carry(str(art.path), art.split, bool(getattr(art, "carry_in", ()) or getattr(art, "carry_out", ())))
    man = art.manifest
    prog = man["program"] if isinstance(man, Mapping) else getattr(man, "program")
    get = (lambda d, k, default=None: d.get(k, default)) if isinstance(prog, Mapping) else \
        (lambda d, k, default=None: getattr(d, k, default))
    meta = {"source": "bidl-grid artifact", "artifact": str(art.path), "program_sha256": get(prog, "sha256", ""),
            "segment_index": art.segment_index, "split": list(art.split)}
    return _Abi(art.chunk_len, art.input_spec.shape[1:], art.input_dtype,
                [(s.name, s.shape[1:], s.dtype) for s in art.state_specs], art.batch, meta)


def _program_file(art: Any) -> Path:
    man = art.manifest
    prog = man["program"] if isinstance(man, Mapping) else getattr(man, "program")
    name = prog.get("file") if isinstance(prog, Mapping) else getattr(prog, "file", None)
    return Path(art.path) / (name or "program.pt2")


# ------------------------------------------------------------------------------ export

def _to_onnx(model: Any, args: tuple, abi: _Abi, out: Path, dynamic: bool, opset: Optional[int]) -> Path:
    """torch.onnx (dynamo) translation, batch dims renamed 'batch', metadata added, saved to ``out``."""
    onnx = _need("onnx")
    _need("onnxscript")
    with _quiet():
        prog = torch.onnx.export(model, args, dynamo=True, input_names=abi.input_names(),
                                 output_names=abi.output_names(), opset_version=opset, verbose=False)
    proto = prog.model_proto
    if dynamic:
        for vi in list(proto.graph.input) + list(proto.graph.output):
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_param"):
                    d.dim_param = "batch"
    meta = dict(abi.meta, chunk_len=abi.chunk_len, input_dtype=abi.input_dtype, state_names=abi.state_names,
                dynamic_batch=dynamic, batch=abi.batch, torch=torch.__version__)
    del proto.metadata_props[:]
    for k, v in meta.items():
        p = proto.metadata_props.add()
        p.key, p.value = k, v if isinstance(v, str) else json.dumps(v)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(out))
    onnx.checker.check_model(str(out))
    return out


def export_artifact(artifact: Any, out: Optional[str | Path] = None, *, opset: Optional[int] = None) -> Path:
    """``program.onnx`` from a compiled artifact (a directory or a loaded :class:`compile.Artifact`).

    The artifact is loaded (and its program's sha256 checked) with :func:`compile.load_artifact`;
    its ExportedProgram is translated as is. AOTInductor artifacts (``--aot``) are refused: compile
    without ``--aot`` for ONNX. Returns the path written (default ``<artifact>/program.onnx``).
    """
    art = artifact if hasattr(artifact, "state_specs") else load_artifact(artifact)
    if art.format != "torch.export":
        raise OnnxExportError(f"{art.path}: a {art.format!r} artifact (AOTInductor package) has no graph to "
                              "translate; compile it without --aot for ONNX export")
    abi = _artifact_abi(art)
    ep = torch.export.load(str(_program_file(art)))
    x, state = abi.example(max(art.batch, 2) if art.dynamic_batch else art.batch)
    dest = Path(out) if out is not None else Path(art.path) / ONNX_FILE
    return _to_onnx(ep, (x, *state), abi, dest, art.dynamic_batch, opset)


class _Chunk(nn.Module):
    """``forward(x, *state) -> (y, *next_state)`` of a Temporal on flat tensors in ``names`` order."""

    def __init__(self, seg: nn.Module, names: Sequence[str]):
        super().__init__()
        self.seg, self.names = seg, list(names)

    def forward(self, x: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        if x.dtype != torch.float32:
            x = x.to(torch.float32)
        y, new = self.seg.run(x, dict(zip(self.names, state)))
        return (y, *(new[n] for n in self.names))


def export_segment(segment: nn.Module, out: str | Path, *, chunk_len: int, batch: int = 1,
                   in_shape: Optional[Sequence[int]] = None, input_dtype: str = "float32",
                   opset: Optional[int] = None) -> Path:
    """ONNX of an eager segment (any Temporal module) for chunks of ``chunk_len`` steps.

    ``in_shape``: the per-step input shape without the batch (default: the segment's own). The
    batch is exported dynamic when torch.export keeps it symbolic (traced at batch >= 2).
    """
    if in_shape is None:
        if not hasattr(segment, "input_shape"):
            raise OnnxExportError(f"{type(segment).__name__}: pass in_shape (the per-step input without the batch)")
        in_shape = segment.input_shape()
    _no_carry(type(segment).__name__, getattr(segment, "split", ()),
              any(c.inner for c in getattr(segment, "cuts", ())))
    segment.eval()
    _, specs = segment.trace_shapes((batch,) + tuple(in_shape))
    split = list(getattr(segment, "split", ()))
    abi = _Abi(chunk_len, in_shape, input_dtype, [(s.name, s.shape[1:], s.dtype) for s in specs], batch,
               {"source": f"bidl-grid eager {type(segment).__name__}", "split": split})
    prog = _Chunk(segment, abi.state_names).eval()
    b = max(batch, 2)
    x, state = abi.example(b)
    dyn = ({1: torch.export.Dim.AUTO}, tuple({0: torch.export.Dim.AUTO} for _ in state))
    with torch.no_grad():
        try:
            ep = torch.export.export(prog, (x, *state), dynamic_shapes=dyn)
            dynamic = True
        except Exception:  # noqa: BLE001 - fall back to the static batch
            x, state = abi.example(batch)
            ep = torch.export.export(prog, (x, *state))
            dynamic = False
    name = ep.graph_signature.user_inputs[0]
    for n in ep.graph.nodes:
        if n.op == "placeholder" and n.name == name:
            dynamic = dynamic and isinstance(n.meta["val"].shape[1], torch.SymInt)
    return _to_onnx(ep, (x, *state), abi, Path(out), dynamic, opset)


# ------------------------------------------------------------------------------ check

def _session(path: Path):
    ort = _need("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, min(2, os.cpu_count() or 1))
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _abi_of_onnx(sess: Any) -> _Abi:
    meta = sess.get_modelmeta().custom_metadata_map
    inputs = sess.get_inputs()
    types = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(double)": "float64"}
    if "chunk_len" not in meta:
        raise OnnxExportError("the ONNX model has no bidl-grid metadata (chunk_len, state_names): export it "
                              "with compile.onnx_export")
    state = [(i.name, tuple(i.shape[1:]), types.get(i.type, "float32")) for i in inputs[1:]]
    return _Abi(int(meta["chunk_len"]), tuple(inputs[0].shape[2:]), types.get(inputs[0].type, "float32"),
                state, int(json.loads(meta.get("batch", "1"))), meta)


@torch.no_grad()
def check_onnx(onnx_path: str | Path, reference: Any, *, chunks: int = 3, batch: Optional[int] = None,
               seed: int = 0) -> dict[str, float]:
    """Max |diff| between onnxruntime (CPU) and ``reference`` over ``chunks`` consecutive chunks.

    ``reference``: a loaded artifact (called flat, ``art(x, *state)``), an artifact directory, or an
    eager segment (``run(x, state)``). Each side carries its own state from chunk to chunk; the
    result maps ``'y'`` and every state name to the largest difference seen.
    """
    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {str(path)!r}: no such file")
    sess = _session(path)
    abi = _abi_of_onnx(sess)
    if isinstance(reference, (str, Path)):
        reference = load_artifact(reference)
    if hasattr(reference, "state_specs"):          # an Artifact
        def ref(x: Tensor, state: list[Tensor]) -> list[Tensor]:
            return list(reference(x, *state))
        if batch is None:
            batch = 2 if reference.dynamic_batch else reference.batch
    else:                                           # an eager Temporal
        reference.eval()
        names = abi.state_names

        def ref(x: Tensor, state: list[Tensor]) -> list[Tensor]:
            xin = x if x.dtype == torch.float32 else x.float()
            y, new = reference.run(xin, dict(zip(names, state)))
            return [y, *(new[n] for n in names)]
        batch = batch or 2
    xs, state = abi.example(batch, seed, chunks)
    ort_state = [s.numpy() for s in state]
    ref_state = list(state)
    diffs = {n: 0.0 for n in ["y", *abi.state_names]}
    in_names = [i.name for i in sess.get_inputs()]
    L = abi.chunk_len
    for c in range(chunks):
        x = xs[c * L:(c + 1) * L]
        got = sess.run(None, dict(zip(in_names, [x.numpy(), *ort_state])))
        want = ref(x, ref_state)
        for name, g, w in zip(diffs, got, want):
            w = w.detach().cpu().numpy()
            if g.shape != w.shape:
                raise OnnxExportError(f"{path}: output {name!r} has shape {list(g.shape)}, the reference "
                                      f"{list(w.shape)}")
            diffs[name] = max(diffs[name], float(np.abs(g.astype(np.float64) - w).max()) if g.size else 0.0)
        ort_state, ref_state = got[1:], want[1:]
    return diffs


# ------------------------------------------------------------------------------ CLI

def _table(rows: list[list[str]]) -> str:
    head = ["artifact", "onnx", "size", "export s", "max|diff| y", "max|diff| state"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    line: Callable[[list[str]], str] = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m compile.onnx_export",
        description="Export compiled segment artifacts (torch.export programs) to ONNX, state in and state out, "
                    "and check each against its artifact in onnxruntime (CPU).")
    p.add_argument("artifacts", nargs="*", help="artifact directories (…/model_<i>/t<L>_b<B>)")
    p.add_argument("--config", help="compile this config first (cached) and export all its artifacts")
    p.add_argument("--checkpoint", help="weights for --config (default: seeded initial weights)")
    p.add_argument("--grid", help="ROWSxCOLS for --config (as python -m compile)")
    p.add_argument("--splits", help="[[s0,e0],...] for --config")
    p.add_argument("--in-shape", help="per-step model input C,H,W for --config")
    p.add_argument("--artifacts-root", default=default_artifacts(),
                   help=f"artifact root for --config ({ARTIFACTS_HELP})")
    p.add_argument("--out", help="directory for the .onnx files (default: program.onnx inside each artifact)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: torch.onnx's)")
    p.add_argument("--check-chunks", type=int, default=3, help="chunks run with state carried in the check "
                                                                "(0: no check; default 3)")
    p.add_argument("--tol", type=float, default=1e-4, help="max |diff| accepted by the check (default 1e-4)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    dirs = [Path(a) for a in args.artifacts]
    try:
        if args.config:
            import ast
            splits = ast.literal_eval(args.splits) if args.splits else None
            shape = [int(v) for v in args.in_shape.replace("x", ",").split(",")] if args.in_shape else None
            cm = compile_config(args.config, args.checkpoint, grid=args.grid, splits=splits, in_shape=shape,
                                out=args.artifacts_root, progress=False, verbose=False)
            dirs += [r.path for r in cm.records]
        if not dirs:
            print("error: give artifact directories or --config", file=sys.stderr)
            return 2
        rows, worst = [], 0.0
        for d in dirs:
            t0 = time.perf_counter()
            dest = None
            if args.out:
                d_abs = Path(d).resolve()
                dest = Path(args.out) / f"{d_abs.parent.parent.name}_{d_abs.parent.name}_{d_abs.name}.onnx"
            path = export_artifact(d, dest, opset=args.opset)
            secs = time.perf_counter() - t0
            if args.check_chunks > 0:
                diffs = check_onnx(path, d, chunks=args.check_chunks)
                dy = diffs.pop("y")
                ds = max(diffs.values(), default=0.0)
                worst = max(worst, dy, ds)
                cells = [f"{dy:.1e}", f"{ds:.1e}"]
            else:
                cells = ["-", "-"]
            rows.append([str(d), str(path), f"{path.stat().st_size / 1e6:.1f} MB", f"{secs:.1f}", *cells])
        print(_table(rows))
        if worst > args.tol:
            print(f"error: onnxruntime differs from the artifact by {worst:.3g} > --tol {args.tol:g}", file=sys.stderr)
            return 1
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
