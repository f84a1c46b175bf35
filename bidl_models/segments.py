"""Model segments: contiguous ranges of a backbone with explicit input, output and state specs.

A segment is a pure chunk function ``(x_chunk[t, B, ...], state) -> (y_chunk[t, B, ...], state)``
for any chunk length t. Running segments one after another, or running time in slices with the
state handed over, equals running the whole model over all T.

A segment runs between two cut positions (:mod:`bidl_models.cuts`): block boundaries (BIDL's
``split=[s, e]``) or positions inside residual blocks. A segment that starts inside a block takes
the tensors handed across the cut with its main input (``x, skip`` or ``x, part, skip``: its
``carry_in``), one that ends inside a block returns them (``carry_out``); ``run`` then takes and
returns a tuple instead of a tensor. :func:`auto_split` cuts a backbone into segments of near-equal
cost, inside blocks when that balances better than the best cut at block boundaries.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from .cuts import Cut, carry_names, check_cut
from .layers import Temporal, shape_tracing, trace_steps
from .specs import Signature, State, TensorSpec, specs_of, torch_dtype

Activation = Any   # a Tensor, or a tuple of Tensors across a cut inside a block


def as_tuple(x: Activation) -> tuple[Tensor, ...]:
    """The tensors of an activation: ``(x,)`` for a tensor."""
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


class Segment(Temporal):
    """The part ``[start, end)`` of a backbone (plus its stem if start == 0, plus head and
    accumulator if end == N); positions are block indices or cuts inside blocks. Shares the
    backbone's parameters."""

    def __init__(self, backbone, start: int | str | Cut, end: int | str | Cut):
        super().__init__()
        n = backbone.n_blocks
        try:
            s, e = Cut.parse(start), Cut.parse(end)
        except ValueError:
            s = e = None
        if s is None or not (Cut(0) <= s < e <= Cut(n)):
            raise ValueError(f"split=[{start}, {end}]: out of range; expected 0 <= start < end <= {n} "
                             f"({type(backbone).__name__} has {n} blocks)")
        self.cuts = (check_cut(backbone, s, "split start"), check_cut(backbone, e, "split end"))
        self.split = (s.value, e.value)
        self.n_blocks = n
        self.backbone_name = type(backbone).__name__
        self.units = nn.ModuleDict(backbone.units(s, e))
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
        return self.cuts[0] == Cut(0)

    @property
    def is_last(self) -> bool:
        return self.cuts[1] == Cut(self.n_blocks)

    @property
    def input_dtype(self) -> str:
        """dtype of this segment's input: the model's (``float32``, token ids ``int64``) for the first."""
        return self._backbone.input_dtype if self.is_first else "float32"

    def whole_sequence_layers(self) -> list[tuple[str, str]]:
        """``(path, class)`` of the layers here that need all T steps in one chunk (no time slices)."""
        return self._backbone.whole_sequence_layers(*self.cuts)

    def run(self, x: Activation, state: Optional[State] = None) -> tuple[Activation, State]:
        """``x``: the chunk input, with its carry as a tuple ``(x, skip, ...)`` when the segment starts
        inside a block; returns the output likewise (a tuple when it ends inside a block)."""
        new: State = {}
        for mod in self.units.values():
            x, s = mod.run(x, state)  # units name their state by the backbone's module paths
            new.update(s)
        return x, new

    def input_specs(self, batch: int = 1, model_in_shape: Optional[Sequence[int]] = None) -> tuple[TensorSpec, ...]:
        """Per-step specs of the inputs (``x`` and its carry) for a batch size, given the model's input shape."""
        shape = tuple(model_in_shape) if model_in_shape is not None else self._backbone.default_input_shape()
        if self.is_first:
            return (TensorSpec("x", (batch,) + shape, self.input_dtype),)
        head = self._backbone.segment(0, self.cuts[0]).train(self.training)  # a fresh module would be in train mode
        outs, _ = head.trace_io((TensorSpec("x", (batch,) + shape, head.input_dtype),))
        names = ("x",) + carry_names(self.cuts[0])
        return tuple(TensorSpec(n, o.shape, o.dtype) for n, o in zip(names, outs))

    def input_shape(self, model_in_shape: Optional[Sequence[int]] = None) -> tuple[int, ...]:
        """Per-sample, per-step shape of the main input ``x``, given the model's input shape."""
        return tuple(self.input_specs(1, model_in_shape)[0].shape[1:])

    def trace_io(self, inputs: Sequence[TensorSpec], t: Optional[int] = None
                 ) -> tuple[tuple[TensorSpec, ...], list[TensorSpec]]:
        """(per-step output specs -- ``y`` and its carry --, state specs) for these per-step inputs; no
        compute. ``t``: the chunk length traced (default :func:`~bidl_models.layers.trace_steps`)."""
        t = trace_steps(self) if t is None else t
        with shape_tracing(self):
            xs = tuple(torch.zeros((t,) + tuple(i.shape), dtype=torch_dtype(i.dtype)) for i in inputs)
            y, st = self.run(xs[0] if len(xs) == 1 else xs)
            names = ("y",) + carry_names(self.cuts[1])
            outs = tuple(TensorSpec(n, tuple(o.shape[1:]), str(o.dtype).removeprefix("torch."))
                         for n, o in zip(names, as_tuple(y)))
            return outs, specs_of(st)

    def specs(self, batch: int = 1, model_in_shape: Optional[Sequence[int]] = None) -> Signature:
        """Input, output and state specs for a batch size, traced without compute."""
        try:
            ins = self.input_specs(batch, model_in_shape)
            outs, state = self.trace_io(ins)
        except RuntimeError as e:
            shape = list(model_in_shape) if model_in_shape is not None else self._backbone.input_shape
            raise ValueError(f"model input shape {shape} does not fit {self.backbone_name} "
                             f"(too small for its convolutions and poolings?): {str(e).splitlines()[0]}") from None
        return Signature(ins[0], outs[0], tuple(state), ins[1:], outs[1:])

    def extra_repr(self) -> str:
        return f"{self.backbone_name} split=[{self.split[0]}, {self.split[1]}] of {self.n_blocks}"


def validate_splits(splits: Sequence[Sequence[Any]], n_blocks: int, full: bool = True,
                    names: Optional[Sequence[str]] = None, backbone: Any = None) -> list[tuple[int | str, int | str]]:
    """Check ``[[s0, e0], [s1, e1], ...]``: in range, ordered, contiguous (no gap, no overlap);
    with ``full`` they also cover all ``n_blocks``. Positions are block indices (ints) or cuts inside
    blocks (``'7.4'``, ``'7.4:384'``, see :mod:`bidl_models.cuts`; checked against ``backbone`` when
    given). Returns them as tuples of ints and normalised position strings."""
    names = list(names) if names else [f"split[{i}]" for i in range(len(splits))]
    out: list[tuple[Cut, Cut]] = []
    for name, sp in zip(names, splits):
        if (not isinstance(sp, (list, tuple)) or len(sp) != 2
                or not all(isinstance(v, (int, str, Cut)) and not isinstance(v, bool) for v in sp)):
            raise ValueError(f"{name}={sp!r}: expected [start, end] with two ints (block indices) or cut "
                             "positions inside blocks like '7.4'")
        s, e = (Cut.parse(v, name) for v in sp)
        if not Cut(0) <= s < e <= Cut(n_blocks):
            raise ValueError(f"{name}=[{s}, {e}]: out of range; expected 0 <= start < end <= {n_blocks}")
        if backbone is not None:
            check_cut(backbone, s, name)
            check_cut(backbone, e, name)
        out.append((s, e))
    if not out:
        raise ValueError("no segments given: expected at least one [start, end]")
    for k in range(1, len(out)):
        (ps, pe), (s, e) = out[k - 1], out[k]
        if s < pe:
            raise ValueError(f"{names[k - 1]}=[{ps}, {pe}] and {names[k]}=[{s}, {e}] overlap; "
                             f"expected {names[k]} to start at {pe}")
        if s > pe:
            what = (f"blocks {pe.block}..{s.block - 1} are" if not (pe.inner or s.inner)
                    else f"the part between {pe} and {s} is")
            raise ValueError(f"gap between {names[k - 1]}=[{ps}, {pe}] and {names[k]}=[{s}, {e}]: "
                             f"{what} in no segment; expected {names[k]} to start at {pe}")
    if full and (out[0][0] != Cut(0) or out[-1][1] != Cut(n_blocks)):
        raise ValueError(f"segments cover blocks [{out[0][0]}, {out[-1][1]}); expected the whole "
                         f"model [0, {n_blocks})")
    return [(s.value, e.value) for s, e in out]


def split_backbone(backbone, splits: Sequence[Sequence[Any]], full: bool = True) -> list[Segment]:
    """Cut a backbone into the given contiguous segments (validated)."""
    return [backbone.segment(s, e) for s, e in validate_splits(splits, backbone.n_blocks, full, backbone=backbone)]


def check_chain(segments: Sequence[Segment], model_in_shape: Optional[Sequence[int]] = None,
                inshapes: Optional[Sequence[Sequence[int]]] = None,
                names: Optional[Sequence[str]] = None) -> list[Signature]:
    """ValueError unless each segment's per-step outputs (shapes, carry included) are the next one's inputs.

    ``inshapes`` (the config's ``models_compile_inputshape``, ``[1, C, H, W]`` each: the main input
    ``x`` of each segment) are checked too. Returns the specs of every segment (batch 1).
    """
    names = list(names) if names else [f"segment {i}" for i in range(len(segments))]
    if inshapes is not None and len(inshapes) != len(segments):
        raise ValueError(f"models_compile_inputshape has {len(inshapes)} entries, expected one per "
                         f"segment ({len(segments)})")
    first_in = tuple(inshapes[0][1:]) if inshapes is not None else model_in_shape
    specs = [segments[0].specs(1, first_in)]
    shapes = lambda ts: [list(t.shape) for t in ts]  # noqa: E731
    for k in range(1, len(segments)):
        prev = specs[-1].outputs
        if segments[k - 1].cuts[1] != segments[k].cuts[0]:
            raise ValueError(f"{names[k]} split={list(segments[k].split)} does not continue "
                             f"{names[k - 1]} split={list(segments[k - 1].split)}")
        sp = segments[k].specs(1, first_in)
        if shapes(sp.inputs) != shapes(prev):
            what = "shape" if len(prev) == 1 else "shapes"
            got, want = (shapes(sp.inputs), shapes(prev)) if len(prev) > 1 else (list(sp.input.shape), list(prev[0].shape))
            raise ValueError(f"{names[k]} input {what} {got} != {names[k - 1]} output {what} {want}: "
                             "segments do not chain")
        specs.append(sp)
    if inshapes is not None:
        for k, (sp, want) in enumerate(zip(specs, inshapes)):
            if list(sp.input.shape[1:]) != list(want[1:]):
                raise ValueError(f"models_compile_inputshape[{k}]={list(want)}: {names[k]} takes "
                                 f"{[1] + list(sp.input.shape[1:])} per step")
    return specs


# ------------------------------------------------------------------------------ costs

@dataclass(frozen=True)
class CostAtom:
    """The work from the previous cut position to ``end``: ``cost``, of which ``lead`` comes first
    and cannot be cut (the stem before block 0's first unit); ``channels`` > 0: the rest is a
    convolution that may be cut after any of its output channels (cost proportional)."""

    end: Cut
    cost: float
    lead: float = 0.0
    channels: int = 0

    @property
    def block(self) -> int:
        """The block this work belongs to."""
        return self.end.block if self.end.inner else self.end.block - 1


@dataclass(frozen=True)
class CostProfile:
    """A backbone's cost per step along its cut positions (:func:`cost_profile`)."""

    atoms: tuple[CostAtom, ...]
    n_blocks: int

    @property
    def total(self) -> float:
        return sum(a.cost for a in self.atoms)

    def blocks(self) -> list[float]:
        """Cost of each block (stem in block 0, head and accumulator in the last)."""
        out = [0.0] * self.n_blocks
        for a in self.atoms:
            out[a.block] += a.cost
        return out

    def at(self, cut: Cut | int | str) -> float:
        """Cost of everything before position ``cut``."""
        cut = Cut.parse(cut)
        done, reached = 0.0, Cut(0)
        for a in self.atoms:
            if a.end <= cut:
                done, reached = done + a.cost, a.end
                continue
            if cut.channels and a.channels and a.end == Cut(cut.block, cut.step + 1):
                return done + a.lead + (a.cost - a.lead) * cut.channels / a.channels
            break
        if reached != cut:
            raise ValueError(f"cut {cut}: not a position of this cost profile")
        return done

    def span(self, start: Cut | int | str, end: Cut | int | str) -> float:
        """Cost of the segment ``[start, end)``."""
        return self.at(end) - self.at(start)

    def pieces(self, quantum: int = 0) -> tuple[list[Cut], list[float]]:
        """Every cut position (after the start) and the cost of the piece before each: units, and with
        ``quantum`` > 0 also every ``quantum`` output channels of a convolution."""
        ends: list[Cut] = []
        costs: list[float] = []
        for a in self.atoms:
            if quantum and a.channels > quantum:
                per = (a.cost - a.lead) / a.channels
                first = Cut(a.end.block, a.end.step - 1) if a.end.inner else None
                if first is not None:
                    prev = 0
                    for c in range(quantum, a.channels, quantum):
                        ends.append(Cut(first.block, first.step, c))
                        costs.append(per * (c - prev) + (a.lead if prev == 0 else 0.0))
                        prev = c
                    ends.append(a.end)
                    costs.append(per * (a.channels - prev))
                    continue
            ends.append(a.end)
            costs.append(a.cost)
        return ends, costs


def cost_profile(backbone, model_in_shape: Optional[Sequence[int]] = None,
                 cost: Literal["flops", "time"] = "flops", batch: int = 1, repeats: int = 3) -> CostProfile:
    """Cost per step of every piece of work between cut positions: whole blocks, and each unit of a
    block that can be cut inside (a residual block: its units, then its tail).

    ``flops``: conv/matmul FLOPs counted on fake tensors plus 8 FLOPs per neuron state element;
    ``time``: median wall time of a real step on zeros (``repeats`` runs).
    """
    if cost not in ("flops", "time"):
        raise ValueError(f"cost={cost!r}: expected 'flops' or 'time'")
    shape = (batch,) + tuple(model_in_shape if model_in_shape is not None else backbone.default_input_shape())
    steps = trace_steps(backbone)   # a whole-sequence layer runs on all its T steps: cost per step = / steps
    measure = (lambda fn: _flops(fn, steps)) if cost == "flops" else (lambda fn: _wall(fn, repeats, steps))
    atoms: list[CostAtom] = []
    lead = 0.0
    was = backbone.training
    backbone.eval()
    try:
        with torch.no_grad(), (shape_tracing(backbone) if cost == "flops" else nullcontext()):
            x: Any = torch.zeros((steps,) + shape, dtype=torch_dtype(backbone.input_dtype))
            for name, mod in backbone.units():
                i = int(name[5:]) if name.startswith("block") else None
                block = backbone.span_block(i) if i is not None else None
                if i is None:
                    c, x = measure(lambda: mod.run(x))
                    if not atoms:
                        lead += c        # the stem: before block 0's first piece
                    else:                # head and accumulator: with the last block's last piece
                        a = atoms[-1]
                        atoms[-1] = CostAtom(a.end, a.cost + c, a.lead, a.channels)
                    continue
                spans = ([((k, 0), (k + 1, 0)) for k in range(len(block.stages()))] + [((len(block.stages()), 0), None)]
                         if block is not None else [None])
                for sp in spans:
                    if sp is None:
                        c, x = measure(lambda: mod.run(x))
                        atoms.append(CostAtom(Cut(i + 1), c + lead, lead))
                    else:
                        c, x = measure(lambda: block.run_span(x, None, *sp))
                        end = Cut(i, sp[1][0]) if sp[1] is not None else Cut(i + 1)
                        ch = block.stage_channels(sp[0][0]) if sp[1] is not None else 0
                        atoms.append(CostAtom(end, c + lead, lead, ch))
                    lead = 0.0
    finally:
        backbone.train(was)
    return CostProfile(tuple(atoms), backbone.n_blocks)


def _flops(fn: Callable[[], tuple[Any, State]], steps: int = 1) -> tuple[float, Any]:
    """FLOPs per step of a run on ``steps`` steps (8 per neuron state element and step added)."""
    with FlopCounterMode(display=False) as fc:
        y, st = fn()
    return (fc.get_total_flops() + 8.0 * steps * sum(v.numel() for v in st.values())) / steps, y


def _wall(fn: Callable[[], tuple[Any, State]], repeats: int, steps: int = 1) -> tuple[float, Any]:
    """Median wall time per step of a run on ``steps`` steps."""
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        y, _ = fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2] / steps, y


def block_costs(backbone, model_in_shape: Optional[Sequence[int]] = None,
                cost: Literal["flops", "time"] = "flops", batch: int = 1, repeats: int = 3) -> list[float]:
    """Cost of each block, the stem folded into block 0 and head + accumulator into the last
    (:func:`cost_profile` summed per block)."""
    return cost_profile(backbone, model_in_shape, cost, batch, repeats).blocks()


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


CHANNEL_QUANTUM = 16   # auto_split cuts a convolution after multiples of this many output channels
GRANULARITIES = ("block", "unit", "channel")


def min_max_cuts(costs: Sequence[float], ranks: Sequence[int], n: int) -> list[int]:
    """Cut ``costs`` into ``n`` contiguous non-empty parts minimising the largest part's sum; returns
    the n-1 cut indices (a cut at i: between costs[i-1] and costs[i]). Among the optimal partitions,
    each cut (left to right) goes where ``ranks[i]`` (of the position before costs[i]) is lowest,
    then where its part comes closest to an even share of what is left."""
    m = len(costs)
    if not 1 <= n <= m:
        raise ValueError(f"cannot cut {m} pieces into {n} segments: expected 1 <= segments <= {m}")
    pre = [0.0]
    for c in costs:
        pre.append(pre[-1] + c)

    def parts_needed(limit: float) -> int:
        parts, begun = 1, 0
        for j in range(1, m + 1):
            if pre[j] - pre[begun] > limit:
                parts, begun = parts + 1, j - 1
        return parts

    lo, hi = max(costs), pre[m]
    for _ in range(200):
        if hi - lo <= 1e-12 * pre[m]:
            break
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if parts_needed(mid) <= n else (mid, hi)
    limit = hi * (1 + 1e-12)
    # earliest[k]: the earliest start from which n - k parts of at most `limit` still cover the rest
    earliest = [0] * (n + 1)
    earliest[n] = m
    for k in range(n - 1, 0, -1):
        j = earliest[k + 1]
        while j > 0 and pre[earliest[k + 1]] - pre[j - 1] <= limit:
            j -= 1
        earliest[k] = j
    cuts, prev = [], 0
    for k in range(1, n):
        first = max(earliest[k], prev + 1)
        last = first
        while last + 1 <= m - (n - k) and pre[last + 1] - pre[prev] <= limit:
            last += 1
        even = pre[prev] + (pre[m] - pre[prev]) / (n - k + 1)
        best = min(range(first, last + 1), key=lambda j: (ranks[j], abs(pre[j] - even)))
        cuts.append(best)
        prev = best
    return cuts


def auto_split(backbone, n: int, model_in_shape: Optional[Sequence[int]] = None,
               cost: Literal["flops", "time"] = "flops",
               granularity: Literal["block", "unit", "channel"] = "channel") -> list[tuple[int | str, int | str]]:
    """Splits ``[(s, e), ...]`` cutting the backbone into ``n`` segments of near-equal cost.

    The best cut at block boundaries (BIDL's), unless cutting inside residual blocks -- after a
    unit (``granularity='unit'``), or also between a convolution's output channels, in multiples of
    :data:`CHANNEL_QUANTUM` (``'channel'``) -- makes the costliest segment cheaper.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity={granularity!r}: expected one of {list(GRANULARITIES)}")
    prof = cost_profile(backbone, model_in_shape, cost)
    per_block = prof.blocks()
    coarse = [(s, e) for s, e in balanced_partition(per_block, n)]
    if granularity == "block" or not any(a.end.inner for a in prof.atoms):
        return coarse
    ends, costs = prof.pieces(CHANNEL_QUANTUM if granularity == "channel" else 0)
    cuts = min_max_cuts(costs, [0] + [c.rank for c in ends[:-1]], n)
    bounds = [Cut(0)] + [ends[j - 1] for j in cuts] + [Cut(backbone.n_blocks)]
    fine = list(zip(bounds, bounds[1:]))
    worst = lambda parts: max(prof.span(s, e) for s, e in parts)  # noqa: E731
    if worst(fine) < worst(coarse) * (1 - 1e-9):
        return [(s.value, e.value) for s, e in fine]
    return coarse
