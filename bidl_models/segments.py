"""Model segments: contiguous block ranges of a backbone with explicit input, output and state specs.

A segment is a pure chunk function ``(x_chunk[t, B, ...], state) -> (y_chunk[t, B, ...], state)``
for any chunk length t. Running segments one after another, or running time in slices with the
state handed over, equals running the whole model over all T.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from .layers import Temporal, trace_steps
from .specs import State, TensorSpec, torch_dtype


@dataclass(frozen=True)
class SegmentSpecs:
    """Per-step input and output specs and the state specs of a segment (batch included)."""

    input: TensorSpec
    output: TensorSpec
    state: tuple[TensorSpec, ...]

    @property
    def state_nbytes(self) -> int:
        return sum(s.nbytes for s in self.state)


class Segment(Temporal):
    """Blocks ``[start, end)`` of a backbone (plus its stem if start == 0, plus head and
    accumulator if end == N). Shares the backbone's parameters."""

    def __init__(self, backbone, start: int, end: int):
        super().__init__()
        n = backbone.n_blocks
        if not (isinstance(start, int) and isinstance(end, int)) or not 0 <= start < end <= n:
            raise ValueError(f"split=[{start}, {end}]: out of range; expected 0 <= start < end <= {n} "
                             f"({type(backbone).__name__} has {n} blocks)")
        self.split = (start, end)
        self.n_blocks = n
        self.backbone_name = type(backbone).__name__
        self.units = nn.ModuleDict(backbone.units(start, end))
        self.training = backbone.training  # in the backbone's mode (the modules are the backbone's)
        object.__setattr__(self, "_backbone", backbone)  # not a submodule: no duplicated params

    @property
    def backbone(self):
        """The whole backbone this segment was cut from (weights shared)."""
        return self._backbone

    @property
    def timestep(self) -> int:
        """T of the backbone (the accumulator divides by it for amode='mean')."""
        return self._backbone.timestep

    @property
    def is_first(self) -> bool:
        return self.split[0] == 0

    @property
    def is_last(self) -> bool:
        return self.split[1] == self.n_blocks

    @property
    def input_dtype(self) -> str:
        """dtype of this segment's input: the model's (``float32``, token ids ``int64``) for the first."""
        return self._backbone.input_dtype if self.is_first else "float32"

    def whole_sequence_layers(self) -> list[tuple[str, str]]:
        """``(path, class)`` of the layers here that need all T steps in one chunk (no time slices)."""
        return self._backbone.whole_sequence_layers(*self.split)

    def run(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        new: State = {}
        for mod in self.units.values():
            x, s = mod.run(x, state)  # units name their state by the backbone's module paths
            new.update(s)
        return x, new

    def input_shape(self, model_in_shape: Optional[Sequence[int]] = None) -> tuple[int, ...]:
        """Per-sample, per-step input shape of this segment, given the model's input shape."""
        shape = tuple(model_in_shape) if model_in_shape is not None else self._backbone.default_input_shape()
        if self.is_first:
            return shape
        head = self._backbone.segment(0, self.split[0]).train(self.training)  # a fresh module would be in train mode
        out, _ = head.trace_shapes((1,) + shape, torch_dtype(head.input_dtype))
        return tuple(out.shape[1:])

    def specs(self, batch: int = 1, model_in_shape: Optional[Sequence[int]] = None) -> SegmentSpecs:
        """Input, output and state specs for a batch size, traced without compute."""
        try:
            ishape = (batch,) + self.input_shape(model_in_shape)
            out, state = self.trace_shapes(ishape, torch_dtype(self.input_dtype))
        except RuntimeError as e:
            shape = list(model_in_shape) if model_in_shape is not None else self._backbone.input_shape
            raise ValueError(f"model input shape {shape} does not fit {self.backbone_name} "
                             f"(too small for its convolutions and poolings?): {str(e).splitlines()[0]}") from None
        return SegmentSpecs(TensorSpec("x", ishape, self.input_dtype), out, tuple(state))

    def extra_repr(self) -> str:
        return f"{self.backbone_name} split=[{self.split[0]}, {self.split[1]}] of {self.n_blocks}"


def validate_splits(splits: Sequence[Sequence[int]], n_blocks: int, full: bool = True,
                    names: Optional[Sequence[str]] = None) -> list[tuple[int, int]]:
    """Check ``[[s0, e0], [s1, e1], ...]``: in range, ordered, contiguous (no gap, no overlap);
    with ``full`` they also cover all ``n_blocks``. Returns them as tuples."""
    names = list(names) if names else [f"split[{i}]" for i in range(len(splits))]
    out: list[tuple[int, int]] = []
    for name, sp in zip(names, splits):
        if (not isinstance(sp, (list, tuple)) or len(sp) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in sp)):
            raise ValueError(f"{name}={sp!r}: expected [start, end] with two ints")
        s, e = sp
        if not 0 <= s < e <= n_blocks:
            raise ValueError(f"{name}=[{s}, {e}]: out of range; expected 0 <= start < end <= {n_blocks}")
        out.append((s, e))
    if not out:
        raise ValueError("no segments given: expected at least one [start, end]")
    for k in range(1, len(out)):
        (ps, pe), (s, e) = out[k - 1], out[k]
        if s < pe:
            raise ValueError(f"{names[k - 1]}=[{ps}, {pe}] and {names[k]}=[{s}, {e}] overlap; "
                             f"expected {names[k]} to start at {pe}")
        if s > pe:
            raise ValueError(f"gap between {names[k - 1]}=[{ps}, {pe}] and {names[k]}=[{s}, {e}]: "
                             f"blocks {pe}..{s - 1} are in no segment; expected {names[k]} to start at {pe}")
    if full and (out[0][0] != 0 or out[-1][1] != n_blocks):
        raise ValueError(f"segments cover blocks [{out[0][0]}, {out[-1][1]}); expected the whole "
                         f"model [0, {n_blocks})")
    return out


def split_backbone(backbone, splits: Sequence[Sequence[int]], full: bool = True) -> list[Segment]:
    """Cut a backbone into the given contiguous segments (validated)."""
    return [backbone.segment(s, e) for s, e in validate_splits(splits, backbone.n_blocks, full)]


def check_chain(segments: Sequence[Segment], model_in_shape: Optional[Sequence[int]] = None,
                inshapes: Optional[Sequence[Sequence[int]]] = None,
                names: Optional[Sequence[str]] = None) -> list[SegmentSpecs]:
    """ValueError unless each segment's per-step output shape is the next one's input shape.

    ``inshapes`` (the config's ``models_compile_inputshape``, ``[1, C, H, W]`` each) are checked too.
    Returns the specs of every segment (batch 1).
    """
    names = list(names) if names else [f"segment {i}" for i in range(len(segments))]
    if inshapes is not None and len(inshapes) != len(segments):
        raise ValueError(f"models_compile_inputshape has {len(inshapes)} entries, expected one per "
                         f"segment ({len(segments)})")
    first_in = tuple(inshapes[0][1:]) if inshapes is not None else model_in_shape
    specs = [segments[0].specs(1, first_in)]
    for k in range(1, len(segments)):
        prev = specs[-1].output
        if segments[k - 1].split[1] != segments[k].split[0]:
            raise ValueError(f"{names[k]} split={list(segments[k].split)} does not continue "
                             f"{names[k - 1]} split={list(segments[k - 1].split)}")
        sp = segments[k].specs(1, first_in)
        if tuple(sp.input.shape) != tuple(prev.shape):
            raise ValueError(f"{names[k]} input shape {list(sp.input.shape)} != {names[k - 1]} "
                             f"output shape {list(prev.shape)}: segments do not chain")
        specs.append(sp)
    if inshapes is not None:
        for k, (sp, want) in enumerate(zip(specs, inshapes)):
            if list(sp.input.shape[1:]) != list(want[1:]):
                raise ValueError(f"models_compile_inputshape[{k}]={list(want)}: {names[k]} takes "
                                 f"{[1] + list(sp.input.shape[1:])} per step")
    return specs


# ------------------------------------------------------------------------------ auto split

def block_costs(backbone, model_in_shape: Optional[Sequence[int]] = None,
                cost: Literal["flops", "time"] = "flops", batch: int = 1, repeats: int = 3) -> list[float]:
    """Cost of each block, the stem folded into block 0 and head + accumulator into the last.

    ``flops``: conv/matmul FLOPs counted on fake tensors plus 8 FLOPs per neuron state element;
    ``time``: median wall time of a real step on zeros (``repeats`` runs).
    """
    shape = (batch,) + tuple(model_in_shape if model_in_shape is not None else backbone.default_input_shape())
    units = backbone.units()
    costs: list[float] = []
    steps = trace_steps(backbone)   # a whole-sequence layer runs on all its T steps: cost per step = / steps
    dtype = torch_dtype(backbone.input_dtype)
    if cost == "flops":
        was = backbone.training
        backbone.eval()
        try:
            with torch.no_grad(), FakeTensorMode(allow_non_fake_inputs=True):
                x = torch.zeros((steps,) + shape, dtype=dtype)
                for _, mod in units:
                    with FlopCounterMode(display=False) as fc:
                        x, st = mod.run(x)
                    costs.append((fc.get_total_flops() + 8.0 * steps * sum(v.numel() for v in st.values())) / steps)
        finally:
            backbone.train(was)
    elif cost == "time":
        was = backbone.training
        backbone.eval()
        with torch.no_grad():
            x = torch.zeros((steps,) + shape, dtype=dtype)
            for _, mod in units:
                ts = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    y, _ = mod.run(x)
                    ts.append(time.perf_counter() - t0)
                costs.append(sorted(ts)[len(ts) // 2] / steps)
                x = y
        backbone.train(was)
    else:
        raise ValueError(f"cost={cost!r}: expected 'flops' or 'time'")
    names = [n for n, _ in units]
    per_block = costs[names.index("block0"):names.index("block0") + backbone.n_blocks]
    per_block[0] += sum(c for n, c in zip(names, costs) if n == "stem")
    per_block[-1] += sum(c for n, c in zip(names, costs) if n in ("head", "acc"))
    return per_block


def balanced_partition(costs: Sequence[float], n: int) -> list[tuple[int, int]]:
    """Cut ``costs`` into ``n`` contiguous non-empty parts minimising the largest part's sum."""
    m = len(costs)
    if not 1 <= n <= m:
        raise ValueError(f"cannot cut {m} blocks into {n} segments: expected 1 <= segments <= {m}")
    pre = [0.0]
    for c in costs:
        pre.append(pre[-1] + c)
    inf = float("inf")
    best = [[inf] * (m + 1) for _ in range(n + 1)]
    cut = [[0] * (m + 1) for _ in range(n + 1)]
    best[0][0] = 0.0
    for k in range(1, n + 1):
        for j in range(k, m + 1):
            for i in range(k - 1, j):
                v = max(best[k - 1][i], pre[j] - pre[i])
                if v < best[k][j]:
                    best[k][j], cut[k][j] = v, i
    bounds, j = [], m
    for k in range(n, 0, -1):
        i = cut[k][j]
        bounds.append((i, j))
        j = i
    return bounds[::-1]


def auto_split(backbone, n: int, model_in_shape: Optional[Sequence[int]] = None,
               cost: Literal["flops", "time"] = "flops") -> list[tuple[int, int]]:
    """Splits ``[(s, e), ...]`` cutting the backbone into ``n`` segments of near-equal cost."""
    return balanced_partition(block_costs(backbone, model_in_shape, cost), n)
