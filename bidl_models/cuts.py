"""Cut positions: where a backbone may be cut into segments, block boundaries and inside residual blocks.

A segment is ``[start, end)`` between two cut positions. BIDL's ``split=[s, e]`` gives block
indices: the position ``b`` is the boundary before block ``b`` (``0`` the model's input, ``N`` its
end). A residual block (``lif_last(main(x) + downsample(x))``, main = its units ``conv1, lif1,
conv2, ...``) may also be cut inside::

    'b.k'     inside block b, after its first k units (1 <= k <= number of units): the edge
              carries (x = the k-th unit's output, skip = the block's input after the
              downsample's pooling, if any)
    'b.k:c'   as 'b.k', plus the first c output channels of unit k+1, a convolution
              (0 < c < its out channels): the edge carries (x, part = those c raw conv channels,
              skip); the next segment computes the other channels, joins them, then the BN

so ResNet-50's block 7 (``layer3.0``: conv1, lif1, conv2, lif2, conv3) can be cut at ``'7.4'``
(after lif2) or at ``'7.4:384'`` (and 384 of conv3's 1024 channels). The skip tensor travels as a
second activation on the same edge; the downsample's 1x1 conv and BN run where the residual add does.
Every position computes exactly the operations of the uncut block, in the same order, so segments
equal the whole model bit for bit on CPU. A convolution cut between output channels runs two narrower
convolutions: bit for bit when both parts are multiples of 16 channels (the SIMD block of the CPU
convolution kernels; :func:`~bidl_models.segments.auto_split` cuts only there), equal up to float
rounding otherwise (a narrower kernel may sum in another order). Tests pin both on CPU.

In configs and manifests a position is an ``int`` (block boundary, BIDL's meaning) or such a
string; :class:`Cut` is its parsed form (ordered).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from torch import Tensor, nn

from .layers import Temporal
from .specs import State, prefixed, sub_state

Span = tuple[int, int]      # (units done, channels of the next unit done) inside a block; (0, 0): its start
_TEXT = re.compile(r"^\s*(\d+)(?:\.(\d+)(?::(\d+))?)?\s*$")


@dataclass(frozen=True, order=True)
class Cut:
    """A cut position: before block ``block`` (``step == channels == 0``), or inside it after
    ``step`` units and ``channels`` output channels of the next one."""

    block: int
    step: int = 0
    channels: int = 0

    @classmethod
    def parse(cls, value: Any, where: str = "split") -> "Cut":
        """``7`` | ``'7'`` | ``'7.4'`` | ``'7.4:384'`` | a Cut; ValueError naming ``where`` otherwise."""
        if isinstance(value, Cut):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                raise ValueError(f"{where}={value}: out of range; expected a block index >= 0")
            return cls(value)
        m = _TEXT.match(value) if isinstance(value, str) else None
        if m is None:
            raise ValueError(f"{where}={value!r}: expected a block index (int) or a cut inside a block "
                             "'b.k' / 'b.k:c' (block b, after k units and c channels of the next)")
        b, k, c = (int(g) if g is not None else 0 for g in m.groups())
        if m.group(2) is not None and (k, c) == (0, 0):
            raise ValueError(f"{where}={value!r}: 'b.0' is the block boundary; write it as the int {b}")
        return cls(b, k, c)

    @property
    def inner(self) -> bool:
        """True for a position inside a block."""
        return (self.step, self.channels) != (0, 0)

    @property
    def span(self) -> Span:
        return (self.step, self.channels)

    @property
    def value(self) -> int | str:
        """The config/manifest form: the block index, or ``'b.k'`` / ``'b.k:c'``."""
        if not self.inner:
            return self.block
        return f"{self.block}.{self.step}" + (f":{self.channels}" if self.channels else "")

    @property
    def rank(self) -> int:
        """0 block boundary, 1 between units, 2 between channels (coarser cuts carry less)."""
        return 0 if not self.inner else (2 if self.channels else 1)

    def __str__(self) -> str:
        return str(self.value)


def carry_names(cut: Cut) -> tuple[str, ...]:
    """Names of the tensors that travel with the main activation across ``cut``."""
    if not cut.inner:
        return ()
    return ("part", "skip") if cut.channels else ("skip",)


def check_cut(backbone, cut: Cut, where: str = "split") -> Cut:
    """``cut`` if ``backbone`` can be cut there, else ValueError naming the position and what fits."""
    n = backbone.n_blocks
    if not 0 <= cut.block <= n:
        raise ValueError(f"{where}={cut.value!r}: out of range; expected 0 <= block <= {n}")
    if not cut.inner:
        return cut
    block = backbone.span_block(cut.block) if cut.block < n else None
    if block is None:
        raise ValueError(f"{where}={cut.value!r}: block {cut.block} of {type(backbone).__name__} cannot be cut inside "
                         "(only residual blocks can); expected a block index")
    units = block.stages()
    if not 1 <= cut.step <= len(units) and not (cut.step == 0 and cut.channels):
        raise ValueError(f"{where}={cut.value!r}: block {cut.block} has {len(units)} units {list(units)}; "
                         f"expected 1 <= k <= {len(units)} in 'b.k'")
    if cut.channels:
        co = block.stage_channels(cut.step) if cut.step < len(units) else 0
        if co == 0:
            nxt = units[cut.step] if cut.step < len(units) else "the residual add"
            raise ValueError(f"{where}={cut.value!r}: the unit after {cut.step} units of block {cut.block} is "
                             f"{nxt!r}, not a convolution that can be cut between output channels")
        if not 0 < cut.channels < co:
            raise ValueError(f"{where}={cut.value!r}: {units[cut.step]!r} of block {cut.block} has {co} output "
                             f"channels; expected 0 < c < {co}")
    return cut


def pack(h: Tensor, part: Optional[Tensor], skip: Tensor) -> tuple[Tensor, ...]:
    """The tensors a cut inside a block hands on: (x, skip) or (x, part, skip)."""
    return (h, skip) if part is None else (h, part, skip)


def unpack(carry: Sequence[Tensor], channels: int) -> tuple[Tensor, Optional[Tensor], Tensor]:
    """``(h, part, skip)`` from what :func:`pack` gave (``part`` None when ``channels == 0``)."""
    want = 3 if channels else 2
    if not isinstance(carry, (tuple, list)) or len(carry) != want:
        got = f"{len(carry)} tensors" if isinstance(carry, (tuple, list)) else type(carry).__name__
        raise ValueError(f"a cut inside a block hands on {want} tensors "
                         f"({'x, part, skip' if channels else 'x, skip'}), got {got}")
    return (carry[0], carry[1], carry[2]) if channels else (carry[0], None, carry[1])


class BlockPart(Temporal):
    """The part ``[start, end)`` of a residual block (``end`` None: to its end), as a segment unit;
    its state is named by the block's path, as the whole block's is."""

    def __init__(self, path: str, block: nn.Module, start: Span, end: Optional[Span]):
        super().__init__()
        self.path, self.start, self.end = path, tuple(start), (tuple(end) if end is not None else None)
        self.block = block
        self.training = block.training   # a view: in the mode of the block it runs

    def run(self, x: Any, state: Optional[State] = None) -> tuple[Any, State]:
        y, s = self.block.run_span(x, sub_state(state, self.path), self.start, self.end)
        return y, prefixed(s, self.path)

    def extra_repr(self) -> str:
        return f"{self.path} units {self.start} -> {self.end if self.end is not None else 'end'}"
