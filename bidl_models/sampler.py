"""The training order, seeded and resumable: which sample each iteration sees, and its augmentation.

:class:`EpochSampler` draws epoch ``e``'s order as ``torch.randperm(N)`` from a generator seeded by
``(seed, e)``; with W ranks the order is padded (by repeating its start) to a multiple of W and rank r
reads every W-th sample from position r (``DistributedSampler``'s sharding). ``set_epoch(e, start)``
makes the next pass yield that epoch's order from position ``start``: a run resumed after ``k``
iterations of batch ``b`` passes ``start = k * b`` and sees exactly the batches an uninterrupted run
would have seen next.

It yields ``(epoch, index)`` pairs, and :class:`SeededSamples` reads sample ``index`` with numpy's,
Python's and torch's global RNGs seeded by ``(seed, epoch, index)`` (and restored afterwards), so a
sample's random crop, flip or noise depends on nothing but ``(seed, epoch, index)``: not on the number
of DataLoader workers, not on which samples were read before, not on where a run was resumed.
"""
from __future__ import annotations

import math
import random
from typing import Any, Iterator

import numpy as np
import torch


class EpochSampler(torch.utils.data.Sampler):
    """Seeded per-epoch permutation of ``n`` samples, sharded over ``world`` ranks, from a start position."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world: int = 1):
        if n < 1:
            raise ValueError(f"EpochSampler: {n} samples; expected at least 1")
        if not 0 <= rank < world:
            raise ValueError(f"EpochSampler: rank {rank} outside world size {world}")
        self.n, self.seed, self.shuffle, self.rank, self.world = int(n), int(seed), bool(shuffle), rank, world
        self.per_rank = math.ceil(self.n / world)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The next pass yields epoch ``epoch``'s samples for this rank from position ``start``."""
        if not 0 <= start <= self.per_rank:
            raise ValueError(f"EpochSampler: start {start} outside [0, {self.per_rank}]")
        self.epoch, self.start = int(epoch), int(start)

    def order(self, epoch: int) -> list[int]:
        """This rank's whole order of epoch ``epoch``."""
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(int(np.random.SeedSequence([self.seed, int(epoch)]).generate_state(1, np.uint64)[0] >> 1))
            idx = torch.randperm(self.n, generator=g).tolist()
        else:
            idx = list(range(self.n))
        total = self.per_rank * self.world
        while len(idx) < total:
            idx += idx[:total - len(idx)]
        return idx[self.rank:total:self.world]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        for i in self.order(epoch)[self.start:]:
            yield epoch, i

    def __len__(self) -> int:
        return self.per_rank - self.start


def _seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


class SeededSamples(torch.utils.data.Dataset):
    """``dataset`` indexed by ``(epoch, index)``; every read runs under RNGs seeded by ``(seed, epoch, index)``."""

    def __init__(self, dataset: Any, seed: int = 0):
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        s = _seed_of(self.seed, epoch, index)
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(s)
                np.random.seed(s % 2**32)
                random.seed(s)
                return self.dataset[index]
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


# ------------------------------------------------------------------------- RNG state in checkpoints

def rng_state() -> dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, numpy, Python) as tensors and plain values, so a
    checkpoint holding them still loads with ``torch.load(weights_only=True)``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(st: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(st["torch"])
    npst = st["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), int(npst["pos"]),
                         int(npst["has_gauss"]), float(npst["gauss"])))
    py = st["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
