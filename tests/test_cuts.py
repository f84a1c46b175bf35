"""Cuts inside residual blocks: positions, checks, bit-exact equivalence with the uncut model,
specs of the tensors handed across a cut, and the splitter that uses them to balance columns."""
import itertools

import pytest
import torch

from bidl_models import auto_split, build_backbone, check_chain, split_backbone
from bidl_models.cuts import Cut, carry_names
from bidl_models.segments import as_tuple, cost_profile, min_max_cuts, validate_splits
from conftest import TINY, activate


def tiny_resnet(depth: int, **kw):
    """A small activated ResNet (every layer spikes) in eval mode, 2x32x32 input, T=4."""
    base = dict(TINY["ResNetLifItout"][0], depth=depth, timestep=4, h=32, w=32, noise=0.0)
    base.update(kw)
    return activate(build_backbone(base)).eval()


def spikes(steps: int, batch: int, shape, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((steps, batch, *shape), generator=g) < 0.3).float()


def run_chain(net, cuts, x, slices=(4,)):
    """Segments between ``cuts`` run one after another, each over time slices with its state handed on;
    returns the last output and the merged final state."""
    h, final = x, {}
    for s, e in zip(cuts, cuts[1:]):
        seg = net.segment(s, e)
        outs, state, t = [], None, 0
        for L in slices:
            xs = tuple(v[t:t + L] for v in as_tuple(h))
            y, state = seg.run(xs if len(xs) > 1 else xs[0], state)
            outs.append(as_tuple(y))
            t += L
        h = tuple(torch.cat(z) for z in zip(*outs))
        h = h if len(h) > 1 else h[0]
        final.update(state)
    return h, final


def assert_same(got, want):
    (y, st), (y0, st0) = got, want
    assert torch.equal(y, y0)
    assert list(st) == list(st0) or set(st) == set(st0)
    for k in st0:
        assert torch.equal(st[k], st0[k]), k


# ------------------------------------------------------------------------------ positions

def test_cut_positions_parse_order_and_print():
    assert Cut.parse(7) == Cut(7) and Cut.parse("7") == Cut(7) and Cut.parse(" 7.4 ") == Cut(7, 4)
    assert Cut.parse("7.4:384") == Cut(7, 4, 384) and Cut.parse(Cut(3, 1)) == Cut(3, 1)
    assert Cut(7) < Cut(7, 0, 16) < Cut(7, 1) < Cut(7, 4) < Cut(7, 4, 384) < Cut(7, 5) < Cut(8)
    assert [c.value for c in (Cut(7), Cut(7, 4), Cut(7, 4, 384))] == [7, "7.4", "7.4:384"]
    assert [c.rank for c in (Cut(7), Cut(7, 4), Cut(7, 4, 384))] == [0, 1, 2]
    assert carry_names(Cut(7)) == () and carry_names(Cut(7, 4)) == ("skip",)
    assert carry_names(Cut(7, 4, 384)) == ("part", "skip")
    for bad, match in [(-1, "out of range"), ("7.0", "block boundary"), ("7.a", "expected a block index"),
                       (2.5, "expected a block index"), (True, "expected a block index")]:
        with pytest.raises(ValueError, match=match):
            Cut.parse(bad)


def test_cuts_are_checked_against_the_backbone():
    net = tiny_resnet(10)          # BasicBlock: conv1, lif1, conv2
    assert net.span_block(0).stages() == ("conv1", "lif1", "conv2")
    for splits, match in [
        ([[0, "0.4"], ["0.4", 4]], r"block 0 has 3 units \['conv1', 'lif1', 'conv2'\]"),
        ([[0, "0.1:4"], ["0.1:4", 4]], "'lif1', not a convolution"),
        ([[0, "0.2:16"], ["0.2:16", 4]], "has 16 output channels; expected 0 < c < 16"),
        ([[0, "0.3:4"], ["0.3:4", 4]], "the residual add"),
        ([[0, "4.1"]], "out of range"),
        ([[0, "1.2"], ["1.1", 4]], "overlap"),
        ([[0, "1.1"], ["1.2", 4]], "the part between 1.1 and 1.2 is in no segment"),
    ]:
        with pytest.raises(ValueError, match=match):
            split_backbone(net, splits)
    seq = build_backbone(TINY["SeqClif3Fc3DmItout"][0])
    with pytest.raises(ValueError, match="cannot be cut inside"):
        split_backbone(seq, [[0, "1.1"], ["1.1", seq.n_blocks]])
    assert validate_splits([[0, "1.2:8"], ["1.2:8", 4]], 4, backbone=net) == [(0, "1.2:8"), ("1.2:8", 4)]


# ------------------------------------------------------------------------------ equivalence

def every_cut(net, blocks=None):
    """Every kind of position in ``blocks`` (default all): the block boundary, after every unit, and
    after the first, the middle and the last multiple of 16 output channels of every convolution."""
    for b in (range(net.n_blocks) if blocks is None else blocks):
        if b:
            yield Cut(b)
        blk = net.span_block(b)
        units = blk.stages()
        for k in range(len(units) + 1):
            if k:
                yield Cut(b, k)
            co = blk.stage_channels(k) if k < len(units) else 0
            for c in sorted({16, co // 32 * 16, co - 16} - {0}) if co > 16 else ():
                yield Cut(b, k, c)


def uncut(net, x, slices):
    """The whole model over the same time slices (a Linear over L*B rows may round differently from
    one over T*B rows, so time slicing is compared with time slicing)."""
    return run_chain(net, [0, net.n_blocks], x, slices)


def check_every_cut(net, cuts):
    x = spikes(4, 2, (2, 32, 32))
    with torch.no_grad():
        want = uncut(net, x, (3, 1))
        assert want[0].abs().sum() > 0
        cuts = list(cuts)
        assert {c.rank for c in cuts} == {0, 1, 2}
        for c in cuts:
            assert_same(run_chain(net, [0, c.value, net.n_blocks], x, slices=(3, 1)), want)


def test_every_cut_equals_the_whole_model_bit_for_bit():
    """Whole backbone vs two segments at each cut position (BasicBlock: blocks, units, conv channels;
    average-pool downsample), over two time slices with the state handed on: same outputs and same
    final state, bit for bit on CPU."""
    net = tiny_resnet(10, base_channels=32)          # convolutions of 32, 64, 128 and 256 channels
    assert len(list(every_cut(net))) == 3 + 4 * 3 + 2 * 1 + 3 * 2 * 3
    check_every_cut(net, every_cut(net))


@pytest.mark.parametrize("blocks", [(0, 3), pytest.param(None, marks=pytest.mark.slow)])
def test_every_bottleneck_cut_equals_the_whole_model_bit_for_bit(blocks):
    """As above for Bottleneck blocks (ResNet-50: conv1, lif1, conv2, lif2, conv3); the default run
    checks the first block and the first of stage 2 (stride and downsample), the slow one all 16."""
    net = tiny_resnet(50, base_channels=8, stem_channels=8)         # 8 to 256 channels
    check_every_cut(net, every_cut(net, blocks))


def test_several_cuts_inside_one_block_and_one_convolution():
    net = tiny_resnet(10, base_channels=32)
    x = spikes(4, 1, (2, 32, 32), seed=3)
    with torch.no_grad():
        want = uncut(net, x, (1, 2, 1))
        torch.testing.assert_close(want[0], net.run(x)[0], rtol=1e-6, atol=1e-6)
        for cuts in ([0, "1.1", "1.2", "1.2:32", 4],         # after conv1, lif1, half of conv2
                     [0, "2.0:16", "2.0:48", "2.3", 3, 4],   # conv1 cut twice, then before the add
                     [0, "0.2:16", "3.2:112", 4]):
            assert_same(run_chain(net, cuts, x, slices=(1, 2, 1)), want)


def test_channel_cuts_off_the_simd_block_agree_to_rounding():
    """A convolution cut after a channel count that is not a multiple of 16 runs a narrower kernel,
    whose sums may round differently (the splitter only cuts at multiples of 16)."""
    net = tiny_resnet(10)
    x = spikes(4, 1, (2, 32, 32), seed=3)
    with torch.no_grad():
        y0, st0 = uncut(net, x, (4,))
        for cut in ("0.2:1", "1.0:7", "3.2:127"):
            y, st = run_chain(net, [0, cut, 4], x)
            torch.testing.assert_close(y, y0, rtol=1e-5, atol=1e-6)
            for k in st0:
                torch.testing.assert_close(st[k], st0[k], rtol=1e-5, atol=1e-6)


def test_specs_name_what_crosses_a_cut():
    net = tiny_resnet(10)
    a, b = net.segment(0, "2.2:8"), net.segment("2.2:8", 4)
    sa, sb = check_chain([a, b], (2, 32, 32))
    assert [t.name for t in sa.outputs] == ["y", "part", "skip"] and [t.name for t in sb.inputs] == ["x", "part", "skip"]
    assert [t.shape for t in sa.outputs] == [t.shape for t in sb.inputs]
    x = spikes(2, 1, (2, 32, 32))
    with torch.no_grad():
        y, _ = a.run(x)
    assert [tuple(t.shape[1:]) for t in y] == [t.shape for t in sa.outputs]
    # the skip travels after the downsample's pooling: the block input (32x4x4) pooled by its stride
    assert net.segment(2, 4).input_shape((2, 32, 32)) == (32, 4, 4)
    assert sa.carry_out[1].shape[1:] == (32, 2, 2) and sa.carry_out[0].shape[1:] == (8, 2, 2)
    assert b.input_shape((2, 32, 32)) == (64, 2, 2)
    c = net.segment("2.2:8", "3.1")
    assert [t.name for t in c.specs(1, (2, 32, 32)).carry_out] == ["skip"]
    with pytest.raises(ValueError, match="does not continue"):
        check_chain([a, net.segment("2.2", 4)], (2, 32, 32))


# ------------------------------------------------------------------------------ costs and the splitter

def test_cost_profile_adds_up():
    net = tiny_resnet(18)
    prof = cost_profile(net, (2, 32, 32))
    assert abs(sum(prof.blocks()) - prof.total) <= 1e-9 * prof.total
    assert prof.at(0) == 0 and prof.at(net.n_blocks) == pytest.approx(prof.total)
    cuts = [Cut(0), Cut(2, 1), Cut(2, 2, 16), Cut(5), Cut(7, 3), Cut(8)]
    assert sum(prof.span(s, e) for s, e in zip(cuts, cuts[1:])) == pytest.approx(prof.total)
    conv2 = prof.span(Cut(2, 2), Cut(2, 3))                 # block 2's conv2, 32 output channels
    assert prof.span(Cut(2, 2), Cut(2, 2, 8)) == pytest.approx(conv2 / 4)
    with pytest.raises(ValueError, match="not a position"):
        prof.at(Cut(2, 1, 4))                                # lif1 has no channels to cut


def test_min_max_cuts_is_optimal_and_prefers_coarse_positions():
    costs = [5.0, 1.0, 7.0, 2.0, 2.0, 9.0, 1.0, 3.0]
    ranks = [0, 2, 1, 0, 2, 0, 1, 2]
    for n in range(1, 6):
        cuts = min_max_cuts(costs, ranks, n)
        bounds = [0, *cuts, len(costs)]
        got = max(sum(costs[i:j]) for i, j in zip(bounds, bounds[1:]))
        best = min(max(sum(costs[i:j]) for i, j in zip((0,) + c, c + (len(costs),)))
                   for c in itertools.combinations(range(1, len(costs)), n - 1))
        assert got == best and cuts == sorted(set(cuts))
    assert min_max_cuts([1.0, 1.0, 1.0, 1.0], [0, 2, 0, 2], 2) == [2]
    with pytest.raises(ValueError, match="segments"):
        min_max_cuts(costs, ranks, 9)


def test_auto_split_balances_resnet50_columns_within_one_percent():
    """The published 12x2 grid's model: two columns of ResNetLif50 (2x128x128) by FLOPs. At block
    boundaries the best cut leaves 6.6 % more on one column; inside a residual block it is within 1 %."""
    net = build_backbone(dict(type="ResNetLifItout", depth=50, nclass=10, input_channels=2, h=128, w=128,
                              timestep=48)).eval()
    prof = cost_profile(net, (2, 128, 128))
    half = prof.total / 2
    block = auto_split(net, 2, (2, 128, 128), granularity="block")
    unit = auto_split(net, 2, (2, 128, 128), granularity="unit")
    chan = auto_split(net, 2, (2, 128, 128))
    assert all(isinstance(v, int) for s in block for v in s)
    assert max(prof.span(s, e) for s, e in block) / half > 1.05
    assert any(isinstance(v, str) and ":" not in v for v in unit[0])
    assert max(prof.span(s, e) for s, e in unit) <= max(prof.span(s, e) for s, e in block)
    assert ":" in str(chan[0][1]) and max(prof.span(s, e) for s, e in chan) / half <= 1.01
    validate_splits(chan, net.n_blocks, backbone=net)
    with pytest.raises(ValueError, match="granularity"):
        auto_split(net, 2, (2, 128, 128), granularity="neuron")
