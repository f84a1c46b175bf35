"""Layers: one step at a time ("itout") equals the whole chunk ("it"); state specs; no batch baked in."""
import pytest
import torch

from bidl_models.layers import (
    Conv2dLif, Conv2dLifPlus, FcLif, FcLifPlus, Lif1d, Lif2d, LifPlus1d, LifPlus2d,
)

LP = [1, True, 2, 1, 1, 1]
LAYERS = {
    "Lif1d": (lambda: Lif1d(6), (6,)),
    "Lif2d": (lambda: Lif2d(3, soma_params="channel_share"), (3, 5, 5)),
    "Lif2d-normstate": (lambda: Lif2d(3, norm_state=True), (3, 5, 5)),
    "FcLif": (lambda: FcLif(12, 7), (12,)),
    "FcLif-analog": (lambda: FcLif(12, 7, mode="analog"), (12,)),
    "Conv2dLif": (lambda: Conv2dLif(2, 4, 3, 1, 1), (2, 8, 8)),
    "Conv2dLif-mp": (lambda: Conv2dLif(2, 4, 3, 1, 1, mp=True, soma_params="channel_share"), (2, 8, 8)),
    "LifPlus1d": (lambda: LifPlus1d(6, neuron_config=LP), (6,)),
    "LifPlus2d": (lambda: LifPlus2d(3, neuron_config=[2, False, 1, 2, 2, 2]), (3, 5, 5)),
    "FcLifPlus": (lambda: FcLifPlus(12, 7, neuron_config=LP), (12,)),
    "Conv2dLifPlus": (lambda: Conv2dLifPlus(2, 4, 3, 1, 1, neuron_config=LP), (2, 8, 8)),
}


def make(name):
    torch.manual_seed(0)
    ctor, shape = LAYERS[name]
    layer = ctor().eval()
    x = torch.rand(9, 3, *shape) * 2.0  # [T, B, ...]
    return layer, x


@pytest.mark.parametrize("name", list(LAYERS))
def test_step_by_step_equals_whole_sequence(name):
    layer, x = make(name)
    with torch.no_grad():
        ys, st = layer.run(x)
        s = None
        for t in range(x.shape[0]):
            y, s = layer.step(x[t], s)
            torch.testing.assert_close(y, ys[t], atol=1e-6, rtol=0)
    assert st.keys() == s.keys()
    for k in st:
        torch.testing.assert_close(s[k], st[k], atol=1e-6, rtol=0)
    assert ys.abs().sum() > 0, "the test input must make the layer active"


@pytest.mark.parametrize("name", list(LAYERS))
def test_state_spec_matches_real_state(name):
    layer, x = make(name)
    specs = layer.state_spec(tuple(x.shape[1:]))
    with torch.no_grad():
        _, st = layer.run(x)
    assert [s.name for s in specs] == list(st)
    assert [tuple(s.shape) for s in specs] == [tuple(v.shape) for v in st.values()]
    assert all(s.dtype == "float32" for s in specs)


@pytest.mark.parametrize("name", list(LAYERS))
def test_no_batch_baked_in(name):
    layer, x = make(name)
    with torch.no_grad():
        full, _ = layer.run(x)
        for b in range(x.shape[1]):
            alone, _ = layer.run(x[:, b:b + 1])
            torch.testing.assert_close(alone[:, 0], full[:, b], atol=1e-6, rtol=0)


def test_chunks_with_state_equal_whole():
    layer, x = make("Conv2dLif")
    with torch.no_grad():
        whole, st = layer.run(x)
        a, s = layer.run(x[:4])
        b, s = layer.run(x[4:], s)
    assert torch.equal(torch.cat([a, b]), whole)
    assert torch.equal(s["soma.v"], st["soma.v"])


def test_learnable_channel_share_params_get_gradients():
    layer = FcLif(5, 4, soma_params="channel_share")
    assert {n for n, _ in layer.named_parameters()} >= {"soma.alpha", "soma.theta"}
    x = torch.rand(3, 2, 5)
    layer.run(x)[0].sum().backward()
    assert layer.soma.theta.grad is not None and layer.soma.theta.grad.abs().sum() > 0


@pytest.mark.parametrize("kw, match", [
    (dict(mode="voltage"), "mode"),
    (dict(soma_params="per_neuron"), "share"),
    (dict(soma_params=dict(gamma=1.0)), "soma_params keys"),
    (dict(memb_mode=(7, "relu")), "memb_mode"),
    (dict(neuron="izh"), "neuron"),
])
def test_bad_layer_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        Lif2d(3, **kw)


def test_channel_share_needs_channels():
    with pytest.raises(ValueError, match="channel_share"):
        Lif2d(None, soma_params="channel_share")
