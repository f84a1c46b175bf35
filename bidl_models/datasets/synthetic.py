"""Seeded synthetic input for a model whose data is missing (``--synthetic``): no files needed.

A sample is what the model reads per step, for ``T`` steps:

* frames (a float model): event counts ``x[T, C, H, W] = 1[u < rate]``, ``u ~ U(0, 1)`` i.i.d.
  (float32, ``rate`` 0.2 by default);
* token ids (an integer model): ``x[T] ~ U{0, ..., high - 1}``.

:func:`synthetic_samples` streams them from one generator seeded with ``seed`` (the grid's seeded
stand-in for a missing test set); :class:`SyntheticData` is a dataset of ``n`` of them, sample ``i``
drawn from a generator seeded with ``(seed, i)`` (so any worker makes the same one), each with a
seeded label in ``0 .. nclass - 1`` (0 or 1 for a one-logit model), top-k ``evaluate`` as every
dataset's. Nothing to learn is in them: they exercise the pipeline, not the model.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .base import BaseDataset


def is_token_dtype(dtype: Optional[torch.dtype]) -> bool:
    """An integer input other than uint8 event counts (and bool): token ids."""
    return dtype is not None and not dtype.is_floating_point and dtype not in (torch.uint8, torch.bool)


def draw_sample(g: torch.Generator, T: int, shape: Sequence[int], rate: float = 0.2,
                dtype: torch.dtype = torch.float32, high: Optional[int] = None) -> Tensor:
    """One sample from ``g``: frames ``[T, *shape]`` (float32 0/1) or, for a token ``dtype``, ids
    ``[T, *shape]`` in ``[0, high)``."""
    if is_token_dtype(dtype):
        return torch.randint(0, int(high or 2), (T,) + tuple(shape), generator=g).to(dtype)
    return (torch.rand((T,) + tuple(shape), generator=g) < rate).to(torch.float32)


def synthetic_samples(T: int, shape: Sequence[int], n: Optional[int], seed: int = 0, rate: float = 0.2,
                      dtype: torch.dtype = torch.float32, high: Optional[int] = None) -> Iterator[Tensor]:
    """``n`` samples (endless for None) of :func:`draw_sample` from one generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    i = 0
    while n is None or i < n:
        yield draw_sample(g, T, shape, rate, dtype, high)
        i += 1


class SyntheticData(BaseDataset):
    """``n`` seeded samples ``dict(img, gt_label)`` of a model's input (module docstring).

    ``timestep``: T; ``shape``: the per-step shape (``()`` for one token per step); ``nclass``: the
    classes labels are drawn from (1: a one-logit model, labels 0 / 1); ``dtype`` ``'float32'`` or
    ``'int64'`` (token ids below ``high``); ``seed`` makes the set (splits use different seeds).
    """

    def __init__(self, n: int, timestep: int, shape: Sequence[int], nclass: int, seed: int = 0,
                 dtype: str = "float32", high: Optional[int] = None, rate: float = 0.2, name: str = "synthetic"):
        for key, val, low in (("n", n, 1), ("timestep", timestep, 1), ("nclass", nclass, 1)):
            if isinstance(val, bool) or not isinstance(val, int) or val < low:
                raise ValueError(f"SyntheticData: {key}={val!r}: expected an int >= {low}")
        dt = getattr(torch, str(dtype), None)
        if not isinstance(dt, torch.dtype):
            raise ValueError(f"SyntheticData: dtype={dtype!r}: expected a torch dtype name (float32, int64)")
        if is_token_dtype(dt) and (high is None or int(high) < 1):
            raise ValueError(f"SyntheticData: high={high!r}: token ids need the vocabulary size (a positive int)")
        self.n, self.timestep, self.shape, self.nclass = n, timestep, tuple(int(d) for d in shape), nclass
        self.seed, self.dtype, self.high, self.rate, self.name = int(seed), dt, high, float(rate), name
        super().__init__(data_prefix=None, pipeline=())

    @property
    def source(self) -> str:
        step = ", ".join(map(str, self.shape))
        kind = f"token ids below {self.high}" if is_token_dtype(self.dtype) else "random event frames"
        step = f"[T={self.timestep}{', ' + step if step else ''}]"
        return f"{self.name} ({self.n} seeded {kind} {step}, seed {self.seed})"

    def load_annotations(self) -> list[dict]:
        labels = np.random.default_rng(self.seed).integers(0, max(self.nclass, 2), size=self.n)
        return [{"index": i, "gt_label": np.int64(labels[i])} for i in range(self.n)]

    def load_sample(self, info: dict) -> dict:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(info["index"]))
        img = draw_sample(g, self.timestep, self.shape, self.rate, self.dtype, self.high)
        return {"img": img, "gt_label": torch.as_tensor(info["gt_label"])}
