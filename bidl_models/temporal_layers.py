"""BIDL's small time-axis layers: ``Aggregation``, ``TimeDistributed``, ``ThreshFiring``.

* :class:`Aggregation` -- the temporal aggregate (BIDL's ``temporal_aggregation.Aggregation(mode, dim,
  idx)``), streamed: a running aggregate carried as state, so any cut of the time axis gives the
  same result after the last step::

      mean: a_t = a_{t-1} + x_t / timestep      sum: a_t = a_{t-1} + x_t      pick: a_t = x_t (idx = -1)

  (``pick`` with ``idx = k >= 0`` keeps ``x_k``; a step counter is part of the state). The output
  after every step is the aggregate so far; after the T-th step it is BIDL's aggregate of the whole
  sequence. The backbones' temporal head (``tempAdd``) is one of these.
* :class:`TimeDistributed` -- BIDL's wrapper that applies a stateless module to every step (its
  keys are ``<name>.module.*``, as BIDL's); the time axis is folded into the batch by the caller.
* :class:`ThreshFiring` -- a stateless spike at 0: ``F = 1[x > 0]`` (rectangle surrogate); with
  ``mode='randn'`` the threshold is ``noise_scale * N(0, 1)`` per element while training.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .layers import Temporal
from .neurons import spike
from .specs import State

AGG_MODES = ("mean", "sum", "pick")


class Aggregation(Temporal):
    """Running temporal aggregate (module docstring); state ``acc`` (and ``t`` for ``pick`` at idx >= 0).

    ``dim`` is BIDL's time axis of its tensor layout (0 for ``[T, B, ...]``, 1 for ``[B, T, ...]``);
    here time is always the leading axis of a chunk, so it is only checked. ``timestep`` is the T that
    ``mean`` divides by (required for ``mean``).
    """

    state_name = "acc"

    def __init__(self, mode: str = "mean", dim: int = 1, idx: int = -1, timestep: Optional[int] = None):
        super().__init__()
        if mode not in AGG_MODES:
            raise ValueError(f"Aggregation mode={mode!r}: expected one of {list(AGG_MODES)}")
        if dim not in (0, 1):
            raise ValueError(f"Aggregation dim={dim!r}: expected the time axis, 0 ([T, B, ...]) or 1 ([B, T, ...])")
        if not isinstance(idx, int) or idx < -1:
            raise ValueError(f"Aggregation idx={idx!r}: expected -1 (the last step) or a step index >= 0")
        if mode == "mean" and (timestep is None or int(timestep) < 1):
            raise ValueError(f"timestep={timestep!r}: expected a positive int (mode 'mean' divides by it)")
        self.mode, self.dim, self.idx = mode, dim, idx
        self.timestep = int(timestep) if timestep is not None else None

    @property
    def divides_by_timestep(self) -> bool:
        """The result depends on T being exactly ``timestep`` (mean divides by it)."""
        return self.mode == "mean"

    def run(self, x: Tensor, state: Optional[State] = None) -> tuple[Tensor, State]:
        name = self.state_name
        acc = state[name] if state and name in state else torch.zeros_like(x[0])
        counted = self.mode == "pick" and self.idx >= 0
        t = state["t"] if counted and state and "t" in state else x.new_zeros(x.shape[1])
        outs = []
        for i in range(x.shape[0]):
            if self.mode == "mean":
                acc = acc + x[i] / self.timestep
            elif self.mode == "sum":
                acc = acc + x[i]
            elif not counted:
                acc = x[i]
            else:
                hit = (t == self.idx).to(x.dtype).view((-1,) + (1,) * (x.dim() - 2))
                acc = hit * x[i] + (1.0 - hit) * acc
                t = t + 1.0
            outs.append(acc)
        new = {name: acc}
        if counted:
            new["t"] = t
        return torch.stack(outs), new

    def extra_repr(self) -> str:
        return f"mode={self.mode}, idx={self.idx}, timestep={self.timestep}"


class TimeDistributed(nn.Module):
    """``module(x)`` on steps folded into the batch (BIDL's TimeDistributed; keys ``module.*``)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)


class ThreshFiring(nn.Module):
    """Stateless spike ``1[x - thr > 0]``: ``thr = 0`` (``fixed``), or in training
    ``thr = noise_scale * N(0, 1)`` per element (``randn``; 0 in eval)."""

    def __init__(self, mode: str = "fixed", noise_scale: float = 1e-9, surrogate_width: float = 1.0):
        super().__init__()
        if mode not in ("fixed", "randn"):
            raise ValueError(f"ThreshFiring mode={mode!r}: expected 'fixed' or 'randn'")
        self.mode, self.noise_scale, self.width = mode, float(noise_scale), float(surrogate_width)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "randn" and self.training:
            x = x - self.noise_scale * torch.randn_like(x)
        return spike(x, self.width)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, noise_scale={self.noise_scale}"
