"""The seeded, resumable training order (bidl_models.sampler)."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from bidl_models.sampler import EpochSampler, SeededSamples, rng_state, set_rng_state


def test_epoch_orders_are_seeded_permutations_sharded_like_distributed_sampler():
    s = EpochSampler(10, seed=3)
    s.set_epoch(0)
    e0 = [i for _, i in s]
    s.set_epoch(1)
    e1 = [i for _, i in s]
    assert sorted(e0) == list(range(10)) and e0 != e1
    assert e0 == [i for _, i in EpochSampler(10, seed=3)] and e0 != [i for _, i in EpochSampler(10, seed=4)]
    shards = [EpochSampler(10, seed=3, rank=r, world=3) for r in range(3)]
    orders = [sh.order(0) for sh in shards]
    assert [len(o) for o in orders] == [4, 4, 4] and [len(sh) for sh in shards] == [4, 4, 4]
    assert sorted(sum(orders, [])) == sorted(e0 + e0[:2])                     # padded from the start, no loss
    assert orders[1] == (e0 + e0[:2])[1::3]


def test_a_start_position_yields_the_rest_of_the_epoch():
    s = EpochSampler(13, seed=0)
    s.set_epoch(2)
    whole = list(s)
    s.set_epoch(2, start=5)
    assert list(s) == whole[5:] and len(s) == 8 and all(e == 2 for e, _ in whole)
    with pytest.raises(ValueError, match=r"start 14 outside \[0, 13\]"):
        s.set_epoch(2, start=14)


class Draws(torch.utils.data.Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, i):
        return (i, np.random.rand(), random.random(), torch.rand(()).item())


def test_a_samples_randomness_depends_only_on_seed_epoch_and_index():
    ds = SeededSamples(Draws(), seed=7)
    a = ds[(1, 3)]
    np.random.seed(123)
    torch.manual_seed(5)
    before = (np.random.get_state()[1].copy(), torch.get_rng_state().clone(), random.getstate())
    assert ds[(1, 3)] == a and ds[(2, 3)] != a and ds[(1, 4)][1:] != a[1:]
    assert SeededSamples(Draws(), seed=8)[(1, 3)] != a
    after = (np.random.get_state()[1], torch.get_rng_state(), random.getstate())
    assert np.array_equal(before[0], after[0]) and torch.equal(before[1], after[1]) and before[2] == after[2]


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    np.random.seed(1)
    random.seed(2)
    torch.manual_seed(3)
    np.random.randn()                                   # a cached gaussian in numpy's state
    st = rng_state()
    want = (np.random.rand(3), random.random(), torch.rand(3))
    torch.save({"rng": st}, tmp_path / "r.pth")
    set_rng_state(torch.load(tmp_path / "r.pth", weights_only=True)["rng"])
    got = (np.random.rand(3), random.random(), torch.rand(3))
    assert np.array_equal(want[0], got[0]) and want[1] == got[1] and torch.equal(want[2], got[2])
