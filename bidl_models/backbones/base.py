"""What every backbone is: ``stem -> blocks[0..N) -> head -> temporal accumulator``.

The flat block list is what ``split=[s, e]`` indexes; the segment with ``s == 0`` also holds the
stem, the one with ``e == N`` also holds the head and the accumulator. The accumulator is state::

    mean: acc_t = acc_{t-1} + y_t / timestep     sum: acc_t = acc_{t-1} + y_t     pick: acc_t = y_t

so the model's result is the accumulator after the last step, wherever the time axis was cut.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from ..layers import Temporal, TemporalSequential
from ..specs import State

AMODES = ("mean", "sum", "pick")


class TemporalAccumulator(Temporal):
    """Running temporal aggregate (state ``acc``); outputs the aggregate after every step."""

    def __init__(self, amode: str = "mean", timestep: int = 1):
        super().__init__()
        if amode not in AMODES:
            raise ValueError(f"amode={amode!r}: expected one of {list(AMODES)}")
        if int(timestep) < 1:
            raise ValueError(f"timestep={timestep!r}: expected a positive int")
        self.amode, self.timestep = amode, int(timestep)

    def run(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        acc = state["acc"] if state else torch.zeros_like(x[0])
        outs = []
        for t in range(x.shape[0]):
            if self.amode == "mean":
                acc = acc + x[t] / self.timestep
            elif self.amode == "sum":
                acc = acc + x[t]
            else:
                acc = x[t]
            outs.append(acc)
        return torch.stack(outs), {"acc": acc}

    def extra_repr(self) -> str:
        return f"amode={self.amode}, timestep={self.timestep}"


@contextmanager
def seeded(seed: Optional[int]) -> Iterator[None]:
    """Deterministic weight initialisation inside the block (CPU RNG forked, then restored)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class Backbone(nn.Module):
    """Base of all backbones. Subclasses fill ``stem``, ``blocks``, ``head`` and call ``_finish``.

    ``run(x[T, B, ...], state)`` -> (accumulator after each step ``[T, B, nclass]``, state);
    ``forward(x[B, T, ...])`` -> logits ``[B, nclass]`` (BIDL's batch-first layout, fresh state).
    """

    stem: TemporalSequential
    blocks: nn.ModuleList
    head: TemporalSequential

    def _finish(self, timestep: int, amode: str, input_shape: Optional[Sequence[int]]) -> None:
        self.timestep = int(timestep)
        self.acc = TemporalAccumulator(amode, timestep)
        self.input_shape = tuple(int(d) for d in input_shape) if input_shape else None

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def units(self, start: int = 0, end: Optional[int] = None) -> list[tuple[str, Temporal]]:
        """(state prefix, module) of the units a segment ``[start, end)`` runs, in order."""
        end = self.n_blocks if end is None else end
        out: list[tuple[str, Temporal]] = []
        if start == 0 and len(self.stem):
            out.append(("stem", self.stem))
        out += [(f"block{i}", self.blocks[i]) for i in range(start, end)]
        if end == self.n_blocks:
            if len(self.head):
                out.append(("head", self.head))
            out.append(("acc", self.acc))
        return out

    def segment(self, start: int, end: int):
        """The contiguous segment of blocks ``[start, end)`` (shares this backbone's weights)."""
        from ..segments import Segment
        return Segment(self, start, end)

    def run(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        return self.segment(0, self.n_blocks).run(x, state)

    def forward(self, x: Tensor) -> Tensor:
        """``x[B, T, ...]`` -> logits ``[B, nclass]``: the accumulator after the last step."""
        if x.dim() < 3:
            raise ValueError(f"input of shape {list(x.shape)}: expected [B, T, ...]")
        if self.acc.amode == "mean" and x.shape[1] != self.timestep:
            raise ValueError(f"input has T={x.shape[1]} time steps but the backbone was built with "
                             f"timestep={self.timestep} (amode='mean' divides by it)")
        y, _ = self.run(x.transpose(0, 1))
        return y[-1]

    def default_input_shape(self) -> tuple[int, ...]:
        """Per-sample, per-step input shape ``(C, H, W)``; ValueError if the config does not fix it."""
        if self.input_shape is None:
            raise ValueError(f"{type(self).__name__}: the input size is not known from its config; "
                             "pass in_shape (e.g. from models_compile_inputshape or the dataset)")
        return self.input_shape
