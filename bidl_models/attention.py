"""Attention over time: BIDL's ``TemporalWiseAttention`` (TA-SNN, Yao et al. ICCV'21) and ``TCJA``
(temporal-channel joint attention). Both weigh every step by statistics of *all* T steps, so they
run on the whole sequence at once (``whole_sequence = True``): a chunk of fewer steps is refused,
and the planner allows no time slices across a segment that holds one.

Per sample, on ``x[t, b]`` (``t = 0..T-1``, any per-step shape, mean ``m`` over the per-step axes):

TemporalWiseAttention (``sharedMLP`` = Linear(T, T/r, no bias), ReLU, Linear(T/r, T, no bias))::

    a_t = m(x_t);   s = sigmoid(sharedMLP(a));   y_t = s_t * x_t

TCJA (``x_t`` of shape ``[C, H, W]``; ``Z[t, c]`` = mean over H, W; Conv1d without bias, padding
``(k - 1) / 2``)::

    A = conv_t(Z)      channels = the T steps, length = the C channels     (kernel k_t)
    B = conv_c(Z^T)    channels = the C channels, length = the T steps     (kernel k_c)
    y[t, c] = sigmoid(A[t, c] * B[c, t]) * x[t, c]

BIDL folds steps and samples into one axis and reads it back per sample in the other order, which
is the same only for a batch of one; here every sample is attended on its own (BIDL's result at batch 1).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .layers import Temporal
from .specs import State


class _WholeSequence(Temporal):
    """A stateless layer that needs all ``T`` steps of a sample in one chunk."""

    whole_sequence = True

    def _check_chunk(self, x: Tensor) -> None:
        if x.shape[0] != self.T:
            raise ValueError(f"{type(self).__name__} attends over all T={self.T} steps at once; got a chunk of "
                             f"{x.shape[0]} step(s): run the whole sequence in one call (no step(), no time slices)")


class TemporalWiseAttention(_WholeSequence):
    """TA-SNN's temporal-wise attention (module docstring). ``dimension``: BIDL's per-step rank hint
    (2: ``[L]``, 3: ``[C, H, W]``, 4); the mean runs over whatever per-step axes the input has."""

    def __init__(self, T: int, reduction: int = 2, dimension: int = 3):
        super().__init__()
        if int(T) < 1 or int(reduction) < 1 or int(T) < int(reduction):
            raise ValueError(f"TemporalWiseAttention T={T!r}, reduction={reduction!r}: expected T >= reduction >= 1")
        if dimension not in (2, 3, 4):
            raise ValueError(f"TemporalWiseAttention dimension={dimension!r}: expected 2, 3 or 4")
        self.T, self.reduction, self.dimension = int(T), int(reduction), dimension
        self.sharedMLP = nn.Sequential(nn.Linear(self.T, self.T // self.reduction, bias=False), nn.ReLU(),
                                       nn.Linear(self.T // self.reduction, self.T, bias=False))

    def run(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        self._check_chunk(x)
        a = x.flatten(2).mean(-1).transpose(0, 1)                  # [B, T]
        s = torch.sigmoid(self.sharedMLP(a)).transpose(0, 1)       # [T, B]
        return x * s.reshape(s.shape + (1,) * (x.dim() - 2)), {}

    def extra_repr(self) -> str:
        return f"T={self.T}, reduction={self.reduction}"


class TCJA(_WholeSequence):
    """Temporal-channel joint attention on ``[T, B, C, H, W]`` (module docstring)."""

    def __init__(self, kernel_size_t: int = 2, kernel_size_c: int = 1, T: int = 8, channel: int = 128):
        super().__init__()
        for name, k in (("kernel_size_t", kernel_size_t), ("kernel_size_c", kernel_size_c)):
            if int(k) < 1 or int(k) % 2 == 0:
                raise ValueError(f"TCJA {name}={k!r}: expected an odd kernel size (the attention map keeps "
                                 f"the T x C shape only then; BIDL's configs use 3)")
        self.T, self.C = int(T), int(channel)
        self.conv_t = nn.Conv1d(self.T, self.T, int(kernel_size_t), padding=(int(kernel_size_t) - 1) // 2, bias=False)
        self.conv_c = nn.Conv1d(self.C, self.C, int(kernel_size_c), padding=(int(kernel_size_c) - 1) // 2, bias=False)

    def run(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        self._check_chunk(x)
        if x.dim() != 5 or x.shape[2] != self.C:
            raise ValueError(f"TCJA(channel={self.C}) takes [T, B, {self.C}, H, W], got {list(x.shape)}")
        z = x.mean((-2, -1)).transpose(0, 1)                       # [B, T, C]
        a = self.conv_t(z)                                         # [B, T, C]
        b = self.conv_c(z.transpose(1, 2)).transpose(1, 2)         # [B, T, C]
        gate = torch.sigmoid(a * b).transpose(0, 1)                # [T, B, C]
        return x * gate[..., None, None], {}

    def extra_repr(self) -> str:
        return f"T={self.T}, channel={self.C}"


__all__ = ["TemporalWiseAttention", "TCJA"]
