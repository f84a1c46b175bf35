"""Layers: one step at a time ("itout") equals the whole chunk ("it"); state specs; no batch baked in."""
import pytest
import torch

from bidl_models.layers import (
    Conv2dLif, Conv2dLifPlus, FcLif, FcLifPlus, Lif1d, Lif2d, LifPlus1d, LifPlus2d, soma_for,
)

LP = [1, True, 2, 1, 1, 1]
LAYERS = {
    "Lif1d": (lambda: Lif1d(6), (6,)),
    "Lif2d": (lambda: Lif2d(3, soma_params="channel_share"), (3, 5, 5)),
    "Lif2d-normstate": (lambda: Lif2d(3, norm_state=True), (3, 5, 5)),
    "FcLif": (lambda: FcLif(12, 7), (12,)),
    "FcLif-analog": (lambda: FcLif(12, 7, mode="analog"), (12,)),
    "FcLif-no-bn": (lambda: FcLif(12, 7, norm_state=False), (12,)),
    "Conv2dLif": (lambda: Conv2dLif(2, 4, 3, 1, 1), (2, 8, 8)),
    "Conv2dLif-bn-on-current": (lambda: Conv2dLif(2, 4, 3, 1, 1, norm_state=False, bias=False), (2, 8, 8)),
    "Conv2dLif-mp": (lambda: Conv2dLif(2, 4, 3, 1, 1, mp=True, soma_params="channel_share"), (2, 8, 8)),
    "LifPlus1d": (lambda: LifPlus1d(6, neuron_config=LP), (6,)),
    "LifPlus2d": (lambda: LifPlus2d(3, neuron_config=[2, False, 1, 2, 2, 2]), (3, 5, 5)),
    "FcLifPlus": (lambda: FcLifPlus(12, 7, neuron_config=LP), (12,)),
    "Conv2dLifPlus": (lambda: Conv2dLifPlus(2, 4, 3, 1, 1, neuron_config=LP), (2, 8, 8)),
    "LifPlus2d-bidl": (lambda: LifPlus2d(3, neuron_config=[2, True, 1, 1, 2, 0], form="bidl"), (3, 5, 5)),
    "FcLifPlus-bidl": (lambda: FcLifPlus(12, 7, neuron_config=[0, False, 2, 2, 1, 2], lifplus_form="bidl"), (12,)),
    "Conv2dLifPlus-bidl-cobe": (lambda: Conv2dLifPlus(2, 4, 3, 1, 1, neuron_config=[1, False, 0, 0, 0, 0],
                                                      lifplus_form="bidl", mode="analog"), (2, 8, 8)),
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
    assert torch.equal(s["lif.v"], st["lif.v"])


def test_channel_share_params_are_learnable_only_with_learn():
    frozen = FcLif(5, 4, soma_params="channel_share")
    assert not any(p.requires_grad for n, p in frozen.named_parameters() if n.startswith("lif.") and "norm" not in n)
    layer = FcLif(5, 4, soma_params=dict(share="channel_share", learn=True, theta=0.2))
    assert {n for n, p in layer.named_parameters() if p.requires_grad} >= {"lif.alpha", "lif.theta"}
    assert layer.lif.theta.shape == (1, 4) and torch.equal(layer.lif.theta, torch.full((1, 4), 0.2))
    x = torch.rand(3, 2, 5)
    layer.eval().run(x)[0].sum().backward()
    assert layer.lif.theta.grad is not None and layer.lif.theta.grad.abs().sum() > 0


def keys(m):
    return [(k, tuple(v.shape)) for k, v in m.state_dict().items()]


def test_bidl_names_and_shapes():
    bn = lambda p, c: [(f"{p}.weight", (c,)), (f"{p}.bias", (c,)), (f"{p}.running_mean", (c,)),  # noqa: E731
                       (f"{p}.running_var", (c,)), (f"{p}.num_batches_tracked", ())]
    lif = [("lif.alpha", ()), ("lif.beta", ()), ("lif.theta", ()), ("lif.v_0", ())]
    assert keys(Conv2dLif(2, 4, 3, 1, 1)) == [("p0.weight", (4, 2, 3, 3)), ("p0.bias", (4,))] + lif + bn("lif.norm", 4)
    assert keys(Conv2dLif(2, 4, 3, norm_state=False)) == ([("p0.weight", (4, 2, 3, 3)), ("p0.bias", (4,))]
                                                          + bn("norm", 4) + lif)
    assert keys(FcLif(6, 3)) == [("p0.weight", (3, 6)), ("p0.bias", (3,))] + lif + bn("lif.norm", 3)
    assert keys(Lif2d(5)) == lif
    cs = [(k, (1, 4, 1, 1)) for k, _ in lif]
    assert keys(Conv2dLif(2, 4, 3, soma_params="channel_share"))[2:6] == cs
    assert keys(FcLif(2, 4, soma_params="channel_share"))[2:6] == [(k, (1, 4)) for k, _ in lif]
    plus = Conv2dLifPlus(2, 4, 3, 1, 1, neuron_config=[1, False, 0, 0, 0, 0], lifplus_form="bidl")
    assert [k for k, _ in keys(plus)] == ["p0.weight", "p0.bias", "lifplus.epsilon", "lifplus.tau_recip",
                                          "lifplus.v_0", "lifplus.theta", "lifplus.alpha", "lifplus.beta"] + \
        [k for k, _ in bn("lifplus.norm", 4)]


def test_conv2dlif_bn_on_state_vs_on_current():
    """norm_state=True: U = BN(X + V) (the state is normalised); False: BN(X) + V."""
    torch.manual_seed(0)
    on_state, on_current = Conv2dLif(2, 3, 3, 1, 1, mode="analog", memb_mode=(0, "identity")), \
        Conv2dLif(2, 3, 3, 1, 1, norm_state=False, mode="analog", memb_mode=(0, "identity"))
    for m in (on_state, on_current):
        with torch.no_grad():
            m.p0.weight.copy_(torch.arange(54.0).view(3, 2, 3, 3) / 50)
            m.p0.bias.fill_(0.1)
    bn = on_state.lif.norm
    bn.running_mean.fill_(0.2); bn.running_var.fill_(4.0)  # noqa: E702
    on_current.norm.load_state_dict(bn.state_dict())
    on_state.eval(), on_current.eval()
    x = torch.rand(2, 1, 2, 6, 6)
    with torch.no_grad():
        ys, _ = on_state.run(x)
        yc, _ = on_current.run(x)
        cur = on_state.p0(x[0])
        u0 = (cur - 0.2) / (4.0 + 1e-5) ** 0.5
        torch.testing.assert_close(ys[0], u0)
        torch.testing.assert_close(yc[0], u0)
        v1 = 0.3 * u0 * (u0 <= 0.5)  # reset to 0 where it fired, else leak
        cur1 = on_state.p0(x[1])
        torch.testing.assert_close(ys[1], (cur1 + v1 - 0.2) / (4.0 + 1e-5) ** 0.5)
        torch.testing.assert_close(yc[1], (cur1 - 0.2) / (4.0 + 1e-5) ** 0.5 + v1)


@pytest.mark.parametrize("kw, match", [
    (dict(mode="voltage"), "mode"),
    (dict(soma_params="per_neuron"), "share"),
    (dict(soma_params=dict(gamma=1.0)), "soma_params keys"),
    (dict(soma_params=dict(learn=True, learnable=True)), "only one of"),
    (dict(memb_mode=(7, "relu")), "memb_mode"),
    (dict(surrogate_width=0), "surrogate_width"),
])
def test_bad_layer_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        Lif2d(3, **kw)


def test_bad_neuron_and_form():
    with pytest.raises(ValueError, match="neuron='izh'"):
        soma_for("izh", 2)
    with pytest.raises(ValueError, match="lifplus_form='euler'"):
        LifPlus2d(3, form="euler")
    with pytest.raises(ValueError, match="only used with neuron='lifplus'"):
        Conv2dLif(2, 3, 3, neuron_config=[0, 0, 0, 0, 0, 0])


def test_channel_share_needs_channels():
    with pytest.raises(ValueError, match="channel_share"):
        Lif2d(None, soma_params="channel_share")


@pytest.mark.parametrize("bn, shape", [(torch.nn.BatchNorm2d(3), (4, 5, 3, 6, 6)),
                                       (torch.nn.BatchNorm1d(3, momentum=None), (4, 5, 3)),
                                       (torch.nn.BatchNorm2d(3, affine=False), (2, 5, 3, 1, 1))])
def test_step_batch_norm_is_one_call_per_step(bn, shape):
    """A training BatchNorm marked bn_stats='step' (BIDL's itout models) normalises every step with that step's
    statistics and updates its running statistics once per step, as a loop of calls does; 'frames' is one call
    on all frames; eval mode is the same either way."""
    import copy

    from bidl_models.layers import per_step, set_bn_stats
    torch.manual_seed(0)
    x = torch.randn(shape) * 2 + 1
    if bn.weight is not None:
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    loop = copy.deepcopy(bn).train()
    want = torch.stack([loop(x[i]) for i in range(shape[0])])
    set_bn_stats(bn, "step")
    xg = x.clone().requires_grad_(True)
    got = per_step(bn.train(), xg)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for k, v in loop.state_dict().items():
        torch.testing.assert_close(bn.state_dict()[k], v, atol=1e-6, rtol=1e-5)
    assert int(bn.num_batches_tracked) == shape[0]
    got.sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    frames = copy.deepcopy(loop)
    set_bn_stats(frames, "frames")
    once = copy.deepcopy(frames)
    torch.testing.assert_close(per_step(frames, x), once(x.flatten(0, 1)).unflatten(0, shape[:2]))
    bn.eval()
    frames.eval()
    frames.load_state_dict(bn.state_dict())
    assert torch.equal(per_step(bn, x), per_step(frames, x))
