"""A model resolved once from a loaded config: what every later stage needs, built once, no Ray.

    cfg = load_config("clif3fc3dm_itout-b16x1-dvsglyphs")
    spec = ModelSpec.from_config(cfg, columns=2, checkpoint="bidl_models/weights/clif3fc3dm_itout-b16x1-dvsglyphs.pth")
    spec.T, spec.in_shape, spec.input_dtype       # 20, (2, 40, 40), 'float32' (token models: (), 'int64')
    spec.splits, spec.split_source                 # ((0, 2), (2, 6)), 'auto split (flops)'
    spec.segments[1].run(h)                        # the weight-loaded segment modules (eval mode)
    spec.weights_sha256, spec.model_sha256         # provenance and cache keys
    again = ModelSpec.from_dict(cfg, spec.to_dict(), resolve)   # the record: the model is built (resolve())
                                                                # only when its segments are first read

The per-step input shape comes from ``models_compile_inputshape[0]`` (``[1, C, H, W]``), else from
an explicit ``in_shape``, else from the backbone (``c0/h0/w0``, ``input_size``); the two explicit
ones must agree. Segments are the config's ``model_0..n`` (with ``split``), else the one model cut
into ``columns`` near-equal-cost parts (or into the given ``splits``).
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from .backbones import config_file_digests
from .checkpoint import file_sha256, read_state_dict, state_dict_sha256
from .config import Config
from .from_config import build_segments
from .specs import Signature
from .segments import Segment, auto_split, check_chain, split_backbone
from .slicing import check_segment_columns

INPUT_DTYPES = ("float32", "uint8", "int64", "int32")
FLOAT_INPUTS = ("float32", "uint8")     # frames: float, or uint8 event counts cast inside the program
TOKEN_INPUTS = ("int64", "int32")       # token ids (a model with input_dtype int64 reads them)
_RESOLVING = threading.Lock()           # a recorded spec builds its model once (ModelSpec.segments)


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


def config_input_shape(cfg: Mapping) -> Optional[tuple[int, ...]]:
    """Per-step model input ``(C, H, W)`` from ``models_compile_inputshape[0]`` (None if absent)."""
    shapes = cfg.get("models_compile_inputshape")
    if not shapes:
        return None
    first = shapes[0]
    if (not isinstance(first, (list, tuple)) or len(first) < 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in first)):
        raise ValueError(f"models_compile_inputshape[0]={first!r}: expected [1, C, H, W] with positive ints")
    return tuple(int(d) for d in first[1:])


@dataclass(frozen=True)
class ModelSpec:
    """A config's model, resolved: T, per-step input shape and dtype, segments and their block
    ranges, weights and their hash. Produced once by :meth:`from_config`; read by compile, the
    planner and the runtime."""

    name: str                                   # the config's name (artifact directories use it)
    config: Config = field(repr=False)          # the loaded config (provenance, data for verification)
    T: int                                      # time steps per sample
    in_shape: tuple[int, ...]                   # per-step model input (C, H, W), batch excluded
    input_dtype: str                            # first segment's input: float32 | uint8 (event counts) | int64 (tokens)
    splits: tuple[tuple[int | str, int | str], ...]   # [start, end) of each segment: block indices or cuts
                                                      # inside blocks ('7.4', bidl_models.cuts)
    split_source: str                           # 'config model_0..n' | 'auto split (flops)' | 'given' | 'whole model'
    n_blocks: int
    backbone: str                               # backbone type name
    checkpoint: Optional[str]                   # weights file, None: seeded initial weights
    weights_sha256: str                         # the weights' content (state_dict_sha256), or 'seeded:<seed>'
    model_sha256: str                           # hash of the model-defining config keys
    seed: int
    _segments: Optional[tuple[Segment, ...]] = field(repr=False, compare=False)   # see ``segments``
    io: tuple[Signature, ...] = field(repr=False, compare=False)   # per segment, batch 1
    input_high: Optional[int] = None            # integer inputs lie in [0, input_high) (a vocabulary's size)
    checkpoint_file_sha256: str = ""            # the weights file's sha256 (provenance), or 'seeded:<seed>'
    whole_sequence: tuple[tuple[int, str, str], ...] = ()   # (segment, layer path, class) of every layer
                                                            # that attends over all T steps at once
    weight_bytes: tuple[int, ...] = ()          # bytes of each segment's weights (parameters and buffers)
    _resolve: Optional[Callable[[], "ModelSpec"]] = field(default=None, repr=False, compare=False)

    @property
    def segments(self) -> tuple[Segment, ...]:
        """The weight-loaded segment modules (eval mode). A spec read back from its record
        (:meth:`from_dict`) builds them on first use, once, and checks that the model so built is
        the one recorded (ValueError naming the field that differs)."""
        if self._segments is None:
            with _RESOLVING:
                if self._segments is None:
                    fresh = self._resolve()
                    for f in fields(self):
                        if f.compare and getattr(fresh, f.name) != getattr(self, f.name):
                            raise ValueError(f"{self.name}: the recorded model spec says {f.name}="
                                             f"{getattr(self, f.name)!r}, the model built now has "
                                             f"{getattr(fresh, f.name)!r}: the record is stale")
                    if fresh.io != self.io:
                        raise ValueError(f"{self.name}: the recorded model spec's signatures differ from the model "
                                         "built now: the record is stale")
                    object.__setattr__(self, "_segments", fresh._segments)
        return self._segments

    def to_dict(self) -> dict:
        """Everything but the config and the modules, as JSON types (:meth:`from_dict` reads it back)."""
        return {"name": self.name, "T": self.T, "in_shape": list(self.in_shape), "input_dtype": self.input_dtype,
                "splits": [list(s) for s in self.splits], "split_source": self.split_source,
                "n_blocks": self.n_blocks, "backbone": self.backbone, "checkpoint": self.checkpoint,
                "weights_sha256": self.weights_sha256, "model_sha256": self.model_sha256, "seed": self.seed,
                "io": [sig.to_dict() for sig in self.io], "input_high": self.input_high,
                "checkpoint_file_sha256": self.checkpoint_file_sha256,
                "whole_sequence": [list(w) for w in self.whole_sequence], "weight_bytes": list(self.weight_bytes)}

    @classmethod
    def from_dict(cls, cfg: Config, d: Mapping, resolve: Callable[[], "ModelSpec"]) -> "ModelSpec":
        """A spec of ``cfg`` from :meth:`to_dict`'s record, without building the model: ``resolve``
        (e.g. ``lambda: ModelSpec.from_config(cfg, ...)`` with the arguments the record was made with)
        builds it when :attr:`segments` is first read. KeyError / TypeError / ValueError for a
        record that is not one."""
        position = lambda v: v if isinstance(v, str) else int(v)  # noqa: E731 - block index or cut ('7.4')
        return cls(str(d["name"]), cfg, int(d["T"]), tuple(int(x) for x in d["in_shape"]), str(d["input_dtype"]),
                   tuple((position(a), position(b)) for a, b in d["splits"]), str(d["split_source"]),
                   int(d["n_blocks"]), str(d["backbone"]), d["checkpoint"], str(d["weights_sha256"]),
                   str(d["model_sha256"]), int(d["seed"]), None, tuple(Signature.from_dict(x) for x in d["io"]),
                   None if d["input_high"] is None else int(d["input_high"]), str(d["checkpoint_file_sha256"]),
                   tuple((int(i), str(p), str(c)) for i, p, c in d["whole_sequence"]),
                   tuple(int(b) for b in d["weight_bytes"]), resolve)

    @classmethod
    def from_config(cls, cfg: Config, *, columns: Optional[int] = None,
                    splits: Optional[Sequence[Sequence[int]]] = None, checkpoint: Optional[str | Path] = None,
                    in_shape: Optional[Sequence[int]] = None, input_dtype: Optional[str] = None, seed: int = 0,
                    cost: str = "flops") -> "ModelSpec":
        """Resolve ``cfg`` (from ``load_config``). ``columns``: segments wanted (None: the config's);
        ``splits``: explicit block ranges for a single-model config; ``input_dtype``: None for the
        model's own (``float32``; ``int64`` token ids for a text model), ``uint8`` for event counts.
        ValueError naming the key or argument for anything that does not fit; FileNotFoundError for
        a missing checkpoint."""
        if not isinstance(cfg, Config) or not cfg.name:
            raise ValueError("cfg: expected a Config from bidl_models.config.load_config (it carries the name "
                             "that artifact directories use)")
        if input_dtype is not None and input_dtype not in INPUT_DTYPES:
            raise ValueError(f"input_dtype={input_dtype!r}: expected one of {list(INPUT_DTYPES)}")
        if columns is not None and (not isinstance(columns, int) or isinstance(columns, bool) or columns < 1):
            raise ValueError(f"columns={columns!r}: expected a positive int")
        shape = _explicit_in_shape(cfg, in_shape)
        if checkpoint is not None:
            if not Path(checkpoint).is_file():
                raise FileNotFoundError(f"checkpoint {str(checkpoint)!r}: no such file")
            weights = state_dict_sha256(read_state_dict(checkpoint))
            checkpoint_file_sha256 = file_sha256(checkpoint)
        else:
            weights = checkpoint_file_sha256 = f"seeded:{seed}"
        segs = build_segments(cfg, seed=seed, model_in_shape=shape, checkpoint=checkpoint)
        net = segs[0].backbone.eval()   # inference everywhere downstream; the FLOP count traces BN in eval mode
        input_dtype = _input_dtype(type(net).__name__, net.input_dtype, input_dtype)
        if shape is None:
            try:
                shape = tuple(net.default_input_shape())
            except ValueError as e:
                raise ValueError(f"{e} (give in_shape / --in-shape C,H,W or models_compile_inputshape)") from None
        if len(segs) > 1:
            if splits is not None:
                raise ValueError(f"splits={splits!r}: the config already cuts the model into {len(segs)} segments "
                                 "(model_0..n with split); drop splits or use a single-model config")
            if columns is not None:
                check_segment_columns(columns, len(segs))
            source = "config model_0..n"
        else:
            if splits is not None:
                if columns is not None and columns != len(splits):
                    raise ValueError(f"grid has {columns} segment columns but splits={splits!r} has {len(splits)}")
                segs, source = split_backbone(net, splits), "given"
            elif (columns or 1) > 1:
                if columns > net.n_blocks:
                    raise ValueError(f"grid has {columns} segment columns but {type(net).__name__} has only "
                                     f"{net.n_blocks} blocks to split")
                segs, source = split_backbone(net, auto_split(net, columns, shape, cost)), f"auto split ({cost})"
            else:
                source = "whole model"
        for s in segs:
            s.eval()
        io = tuple(check_chain(segs, shape)) if len(segs) > 1 else (segs[0].specs(1, shape),)
        whole = tuple((i, path, kind) for i, seg in enumerate(segs) for path, kind in seg.whole_sequence_layers())
        weight_bytes = tuple(sum(t.numel() * t.element_size() for t in seg.state_dict().values()) for seg in segs)
        return cls(cfg.name, cfg, int(net.timestep), tuple(shape), input_dtype,
                   tuple(tuple(s.split) for s in segs), source, segs[0].n_blocks, segs[0].backbone_name,
                   str(checkpoint) if checkpoint is not None else None, weights, model_sha256(cfg), seed,
                   tuple(segs), io, getattr(net, "input_high", None), checkpoint_file_sha256, whole, weight_bytes)

    @property
    def n_segments(self) -> int:
        return len(self.splits)

    def check_slices(self, slices: Sequence[int]) -> None:
        """ValueError (one line) when the grid would cut time into slices across a layer that needs
        the whole sequence at once (attention over time): such a model runs on 1xC grids only."""
        rows = len(tuple(slices))
        if rows <= 1:
            return
        for i, path, cls in self.whole_sequence[:1]:
            raise ValueError(
                f"{self.backbone}: layer {path!r} ({cls}, segment {i}) attends over all T={self.T} steps at once, "
                f"so the grid cannot cut time into {rows} slices: grid {rows}x{self.n_segments} is not allowed; "
                f"allowed: 1xC (C = 1..{self.n_blocks} segments, time not sliced; replicas are fine)")

    def io_specs(self, batch: int = 1) -> list[Signature]:
        """Per-step input/output and state specs of every segment for ``batch`` samples per message."""
        return [s.with_batch(batch) for s in self.io]

    @property
    def key(self) -> str:
        """Short hash of what defines the compiled programs: the model, the weights' content (not their
        file's path or format) and the cut."""
        text = f"{self.model_sha256}|{self.weights_sha256}|{[list(s) for s in self.splits]}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _input_dtype(backbone: str, declared: str, asked: Optional[str]) -> str:
    """The first segment's input dtype: the model's own unless ``asked`` is another of its kind."""
    if asked is None:
        return declared
    kind = TOKEN_INPUTS if declared in TOKEN_INPUTS else FLOAT_INPUTS
    if asked not in kind:
        raise ValueError(f"input_dtype={asked!r}: {backbone} reads {declared} "
                         f"({'token ids' if kind is TOKEN_INPUTS else 'frames'}); expected one of {list(kind)}")
    return asked


def _explicit_in_shape(cfg: Mapping, in_shape: Optional[Sequence[int]]) -> Optional[tuple[int, ...]]:
    first = config_input_shape(cfg)
    if in_shape is None:
        return first
    shape = tuple(int(d) for d in in_shape)
    if first is not None and first != shape:
        raise ValueError(f"in_shape={list(shape)} conflicts with models_compile_inputshape[0]="
                         f"{list(cfg['models_compile_inputshape'][0])}; override models_compile_inputshape instead")
    return shape
