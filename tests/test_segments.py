"""Segment specs, split validation, chaining and the automatic splitter."""
import itertools

import pytest
import torch

from bidl_models import auto_split, build_backbone, check_chain, split_backbone
from bidl_models.segments import balanced_partition, block_costs, cost_profile, validate_splits


def resnet(depth=18, **kw):
    return build_backbone(dict(type="ResNetLifItout", depth=depth, nclass=10, input_channels=2,
                               h=32, w=32, timestep=4, **kw)).eval()


def test_segment_specs_match_real_run():
    net = resnet()
    seg = net.segment(2, 5)
    sp = seg.specs(batch=3)
    x = torch.rand((4,) + tuple(sp.input.shape))
    with torch.no_grad():
        y, st = seg.run(x)
    assert tuple(y.shape[1:]) == sp.output.shape
    assert [(s.name, s.shape) for s in sp.state] == [(k, tuple(v.shape)) for k, v in st.items()]
    assert sp.state_nbytes == sum(v.numel() * 4 for v in st.values())


def test_first_and_last_segments_hold_stem_and_head():
    net = resnet()
    first, mid, last = net.segment(0, 3), net.segment(3, 5), net.segment(5, 8)
    assert list(first.units)[0] == "stem" and "acc" not in first.units
    assert "stem" not in mid.units and "head" not in mid.units
    assert list(last.units)[-2:] == ["head", "acc"]
    assert [s.name for s in last.specs(1).state][-1] == "tempAdd"
    assert [s.name for s in first.specs(1).state][:2] == ["lif.lif.v", "layer1.0.lif1.lif.v"]


def test_segments_share_weights_with_backbone():
    net = resnet()
    seg = net.segment(0, 4)
    assert seg.units["block0"].parts[0] is net.layer1[0]
    n_params = sum(p.numel() for p in net.parameters())
    assert sum(p.numel() for p in seg.parameters()) < n_params


@pytest.mark.parametrize("splits, match", [
    ([[0, 9]], "out of range"),
    ([[-1, 3], [3, 8]], "out of range"),
    ([[3, 3], [3, 8]], "out of range"),
    ([[0, 5], [4, 8]], "overlap"),
    ([[0, 3], [5, 8]], "gap"),
    ([[0, 3], [3, 6]], "whole model"),
    ([[0, 3.5]], "two ints"),
    ([], "at least one"),
])
def test_bad_splits(splits, match):
    with pytest.raises(ValueError, match=match):
        split_backbone(resnet(), splits)


def test_segments_that_do_not_chain():
    a = resnet(18).segment(0, 3)
    b = resnet(50).segment(3, 16)  # other architecture: 256 channels where a gives 128
    with pytest.raises(ValueError, match="do not chain"):
        check_chain([a, b])
    c = resnet(18).segment(4, 8)
    with pytest.raises(ValueError, match="does not continue"):
        check_chain([a, c])
    with pytest.raises(ValueError, match="models_compile_inputshape"):
        check_chain([a, resnet(18).segment(3, 8)], inshapes=[[1, 2, 32, 32], [1, 64, 16, 16]])


def test_balanced_partition_is_optimal():
    costs = [5.0, 1.0, 7.0, 2.0, 2.0, 9.0, 1.0, 3.0]
    for n in range(1, 6):
        parts = balanced_partition(costs, n)
        assert parts[0][0] == 0 and parts[-1][1] == len(costs) and len(parts) == n
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
        best = min(
            max(sum(costs[i:j]) for i, j in zip((0,) + cut, cut + (len(costs),)))
            for cut in itertools.combinations(range(1, len(costs)), n - 1))
        assert max(sum(costs[s:e]) for s, e in parts) == best
    with pytest.raises(ValueError, match="segments"):
        balanced_partition(costs, 9)


@pytest.mark.parametrize("cost", ["flops", "time"])
def test_auto_split_balances_cost(cost):
    net = resnet(18)
    splits = auto_split(net, 3, cost=cost)
    validate_splits(splits, net.n_blocks, backbone=net)
    prof = cost_profile(net, cost="flops")
    parts = [prof.span(s, e) for s, e in splits]
    assert len(parts) == 3 and min(parts) > 0
    if cost == "flops":   # measured time on a shared machine is noisy: its split is judged by its own kind
        assert max(parts) <= 1.5 * prof.total / 3 + max(prof.blocks())


def test_block_costs_flops_are_real():
    net = resnet(18)
    costs = block_costs(net)
    assert len(costs) == 8 and all(c > 0 for c in costs)
    # the stem (7x7 conv on 2x32x32) is folded into block 0
    assert costs[0] > costs[1]
    with pytest.raises(ValueError, match="cost"):
        block_costs(net, cost="watts")


def test_specs_do_not_change_the_backbones_mode():
    """Tracing a segment's shapes must leave the backbone's (shared) modules in their mode."""
    net = resnet()
    net.segment(0, 4).specs(1)
    net.segment(2, 8).input_shape((2, 32, 32))
    assert not any(m.training for m in net.modules())
    net.train()
    net.segment(0, 8).specs(1)
    assert all(m.training for m in net.modules())
