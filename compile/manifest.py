"""The artifact manifest (``net_params.json``): one dataclass, written and parsed here only.

A manifest states the segment's state ABI (input, output and state specs in argument order),
the program file(s) and their sha256, where the artifact came from (config, checkpoint, versions),
the cache key it was built for, the verification result, and its seal (a keyed digest of the document,
``compile.seal``). :meth:`Manifest.to_dict` is the JSON layout on disk (:func:`write_manifest` seals it); :meth:`Manifest.from_dict` reads it back, refusing (``ArtifactError``) a document
of another kind or format version, or one that lacks a required key.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Optional

from bidl_models.cuts import Cut
from bidl_models.specs import Signature, TensorSpec

from .errors import ArtifactError
from .seal import SEAL, seal_manifest

MANIFEST = "net_params.json"
PROGRAM = "program.pt2"
FAST_PROGRAM = "program.ts"
FORMAT_VERSION = 1
KIND = "bidl-segment-artifact"
FORMATS = ("torch.export", "aoti")
ABI = ("program(x[chunk_len, B, *input.shape[1:]], *carry_in, *state) -> (y[chunk_len, B, *output.shape[1:]], "
       "*carry_out, *new_state); state in the order of 'state'; zeros = a fresh sample; carry_in/carry_out: the "
       "tensors ([chunk_len, B, ...]) that travel with x/y across a cut inside a block (e.g. a residual block's skip)")
REQUIRED = ("program", "input", "output", "state", "chunk_len", "batch", "segment_index", "split", "versions", "key",
            "input_dtype")


@dataclass(frozen=True)
class ProgramFile:
    """One program file of an artifact and how it was made."""

    file: str
    format: str                      # torch.export | aoti | torchscript (the fast-load form)
    device: str
    sha256: str
    bytes: int
    export_seconds: float = 0.0
    aoti_seconds: float = 0.0

    @property
    def compile_seconds(self) -> float:
        return round(self.export_seconds + self.aoti_seconds, 3)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "format": self.format, "device": self.device, "sha256": self.sha256,
                "bytes": self.bytes, "export_seconds": self.export_seconds, "aoti_seconds": self.aoti_seconds,
                "compile_seconds": self.compile_seconds}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ProgramFile":
        return cls(str(d["file"]), str(d["format"]), str(d.get("device", "cpu")), str(d["sha256"]), int(d["bytes"]),
                   float(d.get("export_seconds", d.get("compile_seconds", 0.0))), float(d.get("aoti_seconds", 0.0)))


@dataclass(frozen=True)
class BatchInfo:
    """The batch the specs were written for; ``dynamic``: the program takes any batch >= 1."""

    compiled: int
    dynamic: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"compiled": self.compiled, "dynamic": self.dynamic, "min": 1 if self.dynamic else self.compiled,
                "max": None if self.dynamic else self.compiled, "note": self.note}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BatchInfo":
        return cls(int(d["compiled"]), bool(d["dynamic"]), str(d.get("note", "")))


@dataclass(frozen=True)
class Verification:
    """Artifact vs eager segment over ``n_chunks`` chunks with the state carried over."""

    input: str                              # where the input came from (dataset sample, random spikes)
    n_chunks: int
    batch: int
    tol: float
    max_abs_diff: dict[str, float]          # per output ('y') and state tensor
    seconds: float

    @property
    def worst(self) -> float:
        return max(self.max_abs_diff.values())

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "n_chunks": self.n_chunks, "batch": self.batch, "tol": self.tol,
                "max_abs_diff": dict(self.max_abs_diff), "seconds": self.seconds}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Verification":
        return cls(str(d["input"]), int(d["n_chunks"]), int(d["batch"]), float(d["tol"]),
                   {str(k): float(v) for k, v in d["max_abs_diff"].items()}, float(d.get("seconds", 0.0)))


@dataclass(frozen=True)
class Manifest:
    """Everything known about one artifact (segment ``segment_index`` for chunks of ``chunk_len``)."""

    net: str
    segment_index: int
    split: tuple[int | str, int | str]      # block indices, or cuts inside blocks ('7.4', bidl_models.cuts)
    chunk_len: int
    batch: BatchInfo
    input_dtype: str
    signature: Signature                    # per step, [B, ...]; state in ABI order; carries travel with x / y
    program: ProgramFile
    key: dict[str, Any]                     # the cache key it was built for
    versions: dict[str, str]
    n_segments: int = 1
    n_blocks: int = 0
    backbone: str = ""
    timestep: int = 0
    config: dict[str, Any] = field(default_factory=dict)        # name, file, sha256, model_sha256
    checkpoint: dict[str, Any] = field(default_factory=dict)    # path, sha256
    created: str = ""
    verify: Optional[Verification] = None
    fast: Optional[ProgramFile] = None      # TorchScript form for batch.compiled (None: not built)
    seal: Optional[dict[str, Any]] = None   # keyed digest of the document as written (compile.seal)
    document: Optional[dict[str, Any]] = field(default=None, compare=False, repr=False)  # as read (from_dict)

    @property
    def is_first(self) -> bool:
        return self.split[0] == 0

    @property
    def is_last(self) -> bool:
        return self.split[1] == self.n_blocks

    # the signature's parts, as the ABI names them
    input = property(lambda self: self.signature.input)
    output = property(lambda self: self.signature.output)
    state = property(lambda self: self.signature.state)
    carry_in = property(lambda self: self.signature.carry_in)
    carry_out = property(lambda self: self.signature.carry_out)
    inputs = property(lambda self: self.signature.inputs)
    outputs = property(lambda self: self.signature.outputs)

    @property
    def state_names(self) -> list[str]:
        return [s.name for s in self.state]

    @property
    def state_nbytes(self) -> int:
        return self.signature.state_nbytes

    @property
    def args(self) -> list[str]:
        return ["x", *(c.name for c in self.carry_in), *self.state_names]

    @property
    def returns(self) -> list[str]:
        return ["y", *(c.name for c in self.carry_out), *self.state_names]

    @property
    def as_written(self) -> dict[str, Any]:
        """The document this manifest was read from (what its seal covers), else :meth:`to_dict`."""
        return self.document if self.document is not None else self.to_dict()

    def replace(self, **changes: Any) -> "Manifest":
        """A changed copy; it no longer stands for the document it was read from."""
        return replace(self, **{"document": None, **changes})

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND, "format_version": FORMAT_VERSION, "net": self.net, "segment_index": self.segment_index,
            "n_segments": self.n_segments, "split": list(self.split), "n_blocks": self.n_blocks,
            "is_first": self.is_first, "is_last": self.is_last, "backbone": self.backbone, "timestep": self.timestep,
            "chunk_len": self.chunk_len, "batch": self.batch.to_dict(), "input_dtype": self.input_dtype,
            **self.signature.to_dict(),
            "state_nbytes": self.state_nbytes, "args": self.args, "returns": self.returns, "abi": ABI,
            "config": dict(self.config), "checkpoint": dict(self.checkpoint), "versions": dict(self.versions),
            "created": self.created, "program": self.program.to_dict(),
            "fast": self.fast.to_dict() if self.fast is not None else None,
            "key": dict(self.key), "verify": self.verify.to_dict() if self.verify is not None else None,
            **({SEAL: dict(self.seal)} if self.seal is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Any, path: str | Path = MANIFEST) -> "Manifest":
        """Parse a manifest document; ArtifactError (naming ``path``) if it is not a usable one."""
        if not isinstance(d, dict) or d.get("kind") != KIND:
            raise ArtifactError(path, "corrupt", f"manifest 'kind' is {d.get('kind') if isinstance(d, dict) else None!r}, "
                                                 f"expected {KIND!r}")
        if d.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(path, "incompatible", f"manifest format_version={d.get('format_version')!r}, "
                                                      f"this code reads {FORMAT_VERSION}")
        for key in REQUIRED:
            if key not in d:
                raise ArtifactError(path, "corrupt", f"manifest lacks the key {key!r}")
        if not isinstance(d["program"], Mapping) or d["program"].get("format") not in FORMATS:
            fmt = d["program"].get("format") if isinstance(d["program"], Mapping) else None
            raise ArtifactError(path, "corrupt", f"program.format={fmt!r}, expected one of {list(FORMATS)}")
        try:
            return cls(
                net=str(d.get("net", "")), segment_index=int(d["segment_index"]),
                split=(_position(d["split"][0]), _position(d["split"][1])), chunk_len=int(d["chunk_len"]),
                batch=BatchInfo.from_dict(d["batch"]), input_dtype=str(d["input_dtype"]),
                signature=Signature.from_dict(d),
                program=ProgramFile.from_dict(d["program"]),
                key=dict(d["key"]), versions=dict(d["versions"]), n_segments=int(d.get("n_segments", 1)),
                n_blocks=int(d.get("n_blocks", d["split"][1])), backbone=str(d.get("backbone", "")),
                timestep=int(d.get("timestep", 0)), config=dict(d.get("config") or {}),
                checkpoint=dict(d.get("checkpoint") or {}), created=str(d.get("created", "")),
                verify=Verification.from_dict(d["verify"]) if d.get("verify") else None,
                fast=ProgramFile.from_dict(d["fast"]) if d.get("fast") else None,
                seal=dict(d[SEAL]) if isinstance(d.get(SEAL), Mapping) else None, document=d)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise ArtifactError(path, "corrupt", f"manifest field unreadable: {type(e).__name__}: {e}") from None


def _position(v: Any) -> int | str:
    """A split position as written: a block index, or a cut inside a block ('7.4')."""
    return Cut.parse(v if isinstance(v, str) else int(v)).value


def read_manifest(directory: str | Path) -> Manifest:
    """The manifest of an artifact directory (ArtifactError if absent, unreadable or unusable)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ArtifactError(path, "missing", "no manifest: not an artifact directory (compile it first)")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(path, "corrupt", f"manifest is not valid JSON ({e})") from None
    return Manifest.from_dict(doc, path)


def write_manifest(directory: str | Path, man: Manifest) -> None:
    """Write ``net_params.json``, sealed with this user's artifact key (``compile.seal``), atomically
    (a temporary file renamed into place)."""
    d = Path(directory)
    tmp = d / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(seal_manifest(man.to_dict()), indent=2) + "\n")
    tmp.replace(d / MANIFEST)
