"""NIR interop: graphs from snnTorch run as snnTorch runs them, BIDL models export and import back
unchanged, hand-computed neuron dynamics, refusals by name, NIR models cut into segments and grid cells.

Needs the ``nir`` extra; the cross-framework tests also need ``snntorch`` and ``nirtorch`` (the
``nir-test`` extra) and skip cleanly without them.
"""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from torch import nn

nir = pytest.importorskip("nir")
pytestmark = pytest.mark.filterwarnings("ignore:nirtorch.extract_nir_graph:DeprecationWarning")

from bidl_models.backbones import BACKBONES, build_backbone  # noqa: E402
from bidl_models.layers import Conv2dLif, Conv2dLifPlus, FcLif, FcLifPlus, Lif1d, TemporalSequential  # noqa: E402
from bidl_models.nir import NirBackbone, NirExportError, NirImportError, from_nir, to_nir  # noqa: E402

DT = 1e-4   # snnTorch's NIR exporter and importer assume this step


def snntorch_modules():
    snn = pytest.importorskip("snntorch")
    pytest.importorskip("nirtorch")
    from snntorch.export_nir import export_to_nir
    from snntorch.import_nir import import_from_nir
    return snn, export_to_nir, import_from_nir


def spikes(steps, batch, shape, p=0.4, seed=1, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((steps, batch, *shape), generator=g) < p).float() * scale


def with_norm_state_off(cls, **kw):
    """``norm_state=False`` where the constructor takes it (BIDL's defaults put BN on the state)."""
    if "norm_state" in inspect.signature(cls).parameters:
        kw["norm_state"] = False
    return kw


def activate(net: nn.Module) -> nn.Module:
    """BN scale/shift and FC gains raised (and non-trivial running stats) so every layer spikes."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.fill_(1.5)
                m.bias.fill_(0.25)
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif isinstance(m, nn.Linear):
                m.weight.mul_(3.0)
                if m.bias is not None:
                    m.bias.add_(0.2)
    return net.eval()


# ------------------------------------------------------------------------------ against snnTorch

def snn_net(snn):
    """conv -> LIF -> avgpool -> flatten -> affine -> CubaLIF -> affine -> LIF, in snnTorch."""
    torch.manual_seed(0)
    full = lambda shape, v: torch.full(shape, v)  # noqa: E731 - snnTorch exports per-neuron params this way
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        snn.Leaky(beta=full((4, 8, 8), 0.8), threshold=full((4, 8, 8), 0.5), init_hidden=True, reset_mechanism="zero", reset_delay=False),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 12),
        snn.Synaptic(alpha=full((12,), 0.6), beta=full((12,), 0.85), threshold=full((12,), 0.7), init_hidden=True,
                     reset_mechanism="zero", reset_delay=False),
        nn.Linear(12, 5),
        snn.Leaky(beta=full((5,), 0.9), threshold=full((5,), 0.6), init_hidden=True, output=True,
                  reset_mechanism="zero", reset_delay=False))
    with torch.no_grad():
        net[0].weight.mul_(2.0)
        net[4].weight.mul_(2.0)
        net[6].weight.mul_(3.0)
    return net.eval()


@torch.no_grad()
def run_snn(snn, net, x):
    """snnTorch's own simulation: one call per step, hidden state reset first; (spikes, membranes)."""
    from snntorch import utils
    utils.reset(net)
    spk, mem = [], []
    for t in range(x.shape[0]):
        s, m = net(x[t])
        spk.append(s)
        mem.append(m.clone())
    return torch.stack(spk), torch.stack(mem)


def test_snntorch_graph_runs_like_snntorch(tmp_path):
    snn, export_to_nir, _ = snntorch_modules()
    net = snn_net(snn)
    graph = export_to_nir(net, torch.zeros(1, 2, 8, 8), ignore_dims=[0])
    x = spikes(16, 3, (2, 8, 8), scale=2.0)
    ref_spk, ref_mem = run_snn(snn, net, x)
    assert 0.05 < ref_spk.mean() < 0.6, "the test network must spike, but not saturate"

    model = from_nir(graph, dt=DT)
    assert isinstance(model, NirBackbone) and model.n_blocks == 8
    # modules and state carry the NIR node names (snnTorch's Sequential indices), as BIDL's carry BIDL's
    assert isinstance(model.get_submodule("0"), nn.Conv2d) and model.nir_names["5"] == "5"
    assert {k.split(".")[0] for k in model.state_dict()} == {"0", "1", "4", "5", "6", "7"}
    with torch.no_grad():
        y, _ = model.run(x)
        mem = []
        st = None
        for t in range(x.shape[0]):          # step by step: the last LIF's membrane after each step
            _, st = model.segment(0, model.n_blocks).step(x[t], st)
            mem.append(st["7.v"])
    assert set(st) == {"1.v", "5.i", "5.v", "7.v", "tempAdd"}
    mem = torch.stack(mem)
    assert torch.equal(y, ref_spk), f"{int((y != ref_spk).sum())} spikes differ from snnTorch"
    quiet = ref_spk == 0   # where a neuron fired, NIR and snnTorch both hold v_reset: compare the rest
    diff = (mem - ref_mem)[quiet].abs().max().item()
    print(f"from_nir vs snnTorch: spikes equal ({int(ref_spk.sum())} spikes), membrane max|diff| {diff:.2e}")
    assert diff <= 1e-6

    path = tmp_path / "snn.nir"
    nir.write(str(path), graph)
    with torch.no_grad():
        assert torch.equal(from_nir(path, dt=DT).run(x)[0], ref_spk)


def test_bidl_lif_exports_into_snntorch():
    """BIDL's LIF mapped to NIR and imported by snnTorch gives BIDL's spikes: the mapping of
    alpha, threshold and reset checked by another framework's simulator."""
    snn, _, import_from_nir = snntorch_modules()
    torch.manual_seed(2)
    kw = dict(soma_params=dict(share="all_share", alpha=0.6, theta=0.4))
    net = TemporalSequential([("fc1", FcLif(6, 10, **with_norm_state_off(FcLif, **kw))),
                              ("fc2", FcLif(10, 4, **with_norm_state_off(FcLif, **kw)))])
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5 + 0.15)
                m.bias.zero_()
    net.eval()
    x = spikes(12, 3, (6,), p=0.5, scale=1.0)
    with torch.no_grad():
        ref = net.run(x)[0]
    assert 0.05 < ref.mean() < 0.7
    graph = to_nir(net, dt=DT, in_shape=(6,))
    assert sorted(graph.nodes) == ["fc1.lif", "fc1.p0", "fc2.lif", "fc2.p0", "input", "output"]   # module paths
    assert [type(graph.nodes[n]).__name__ for n in ("fc1.p0", "fc1.lif", "fc2.p0", "fc2.lif")] == \
        ["Affine", "LIF", "Affine", "LIF"]
    lif = graph.nodes["fc1.lif"]
    np.testing.assert_allclose(1 - DT / lif.tau, np.float32(0.6), rtol=1e-12)     # retention alpha (float32)
    np.testing.assert_allclose(lif.r * DT / lif.tau, 1.0, rtol=1e-12)  # input gain 1
    assert np.all(lif.v_threshold == np.float32(0.4)) and np.all(lif.v_leak == 0) and np.all(lif.v_reset == 0)
    imported = import_from_nir(graph)
    with torch.no_grad():
        state, outs = None, []
        for t in range(x.shape[0]):
            o, state = imported(x[t], state) if state is not None else imported(x[t])
            outs.append(o)
    assert torch.equal(torch.stack(outs), ref)


def test_to_nir_of_from_nir_keeps_types_and_weights():
    snn, export_to_nir, _ = snntorch_modules()
    graph = export_to_nir(snn_net(snn), torch.zeros(1, 2, 8, 8), ignore_dims=[0])
    again = to_nir(from_nir(graph, dt=DT), dt=DT)
    assert set(again.nodes) == set(graph.nodes)
    assert sorted(again.edges) == sorted(graph.edges)
    for name, node in graph.nodes.items():
        other = again.nodes[name]
        assert type(other) is type(node), name
        for field in ("weight", "bias", "tau", "r", "v_leak", "v_threshold", "v_reset", "tau_syn", "tau_mem",
                      "w_in", "kernel_size", "stride", "padding", "start_dim", "end_dim"):
            if hasattr(node, field):
                a, b = np.asarray(getattr(node, field)), np.asarray(getattr(other, field))
                assert np.array_equal(np.broadcast_to(a, np.broadcast_shapes(a.shape, b.shape)), b), (name, field)
    assert again.metadata["dt"] == DT


# ------------------------------------------------------------------------------ BIDL models both ways

def bidl_models():
    seq = build_backbone(dict(type="SeqClif3Flif2DgItout", timestep=3, c0=2, h0=16, w0=16, nclass=11,
                              **with_norm_state_off(BACKBONES.get("SeqClif3Flif2DgItout"))))
    res_kw = dict(type="ResNetLifItout", depth=10, nclass=10, timestep=4, input_channels=2, stem_channels=8,
                  base_channels=8, low_resolut=True, soma_params="channel_share", down_t=[1, "avg"],
                  h=16, w=16, norm=dict(mean=[0.2, 0.1], std=[0.5, 2.0]),   # BIDL's input normalisation
                  **with_norm_state_off(BACKBONES.get("ResNetLifItout")))
    res = build_backbone(res_kw)
    torch.manual_seed(4)
    conv_kw = with_norm_state_off(Conv2dLif, soma_params="channel_share")
    stack = TemporalSequential([
        ("c1", Conv2dLif(2, 6, 3, 1, 1, **conv_kw)),
        ("pool", nn.AvgPool2d(2)),
        ("c2", Conv2dLif(6, 8, 3, 2, 1, **conv_kw)),
        ("gap", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))),
        ("fc", FcLif(8, 5, **with_norm_state_off(FcLif, soma_params=dict(share="all_share", alpha=1.0)))),
        ("out", nn.Linear(5, 3, bias=False)),
    ])
    return {"SeqClif3Flif2DgItout": (seq, seq.default_input_shape()),
            "ResNetLifItout-10-lowres-avg": (res, res.default_input_shape()),
            "conv-avgpool-IF-stack": (stack, (2, 12, 12))}


@pytest.mark.parametrize("name", ["SeqClif3Flif2DgItout", "ResNetLifItout-10-lowres-avg", "conv-avgpool-IF-stack"])
def test_from_nir_of_to_nir_gives_the_models_outputs(name, tmp_path):
    net, shape = bidl_models()[name]
    activate(net)
    graph = to_nir(net, dt=1e-3, in_shape=shape)
    kinds = {type(n).__name__ for n in graph.nodes.values()}
    lifs = sorted(k for k, n in graph.nodes.items() if type(n).__name__ in ("LIF", "IF"))
    cells = sorted(p for p, m in net.named_modules() if type(m).__name__ == "Lif")
    assert lifs == cells, "one NIR neuron per LIF cell, named by its module path"
    assert "LIF" in kinds and not kinds - {"Input", "Output", "Conv2d", "LIF", "IF", "AvgPool2d", "Flatten",
                                           "Affine", "Linear", "I"}
    path = tmp_path / f"{name}.nir"
    nir.write(str(path), graph)
    back = from_nir(path)                          # dt from the file's metadata
    assert back.dt == 1e-3
    x = spikes(6 if name.startswith("conv") else net.timestep, 2, shape)
    with torch.no_grad():
        ref, ref_state = net.run(x)
        got, got_state = back.run(x)
    # the imported model's LIF state has the original's names (NIR's v is taken before the leak)
    assert {k for k in ref_state if k.endswith(".lif.v")} == {k for k in got_state if k.endswith(".lif.v")}
    active = [k for k, v in ref_state.items() if k.endswith(".v") and v.abs().sum() > 0]
    assert len(active) >= 3, "activated weights must drive the LIF layers"
    diff = (got - ref).abs().max().item()
    print(f"{name}: from_nir(to_nir(m)) vs m max|diff| {diff:.2e} over {x.shape[0]} steps, "
          f"{len(graph.nodes)} NIR nodes, {back.n_blocks} blocks")
    assert diff <= 1e-5


def test_bidl_lif_mapping_equations():
    soma = Lif1d(3, soma_params=dict(share="channel_share", alpha=0.25, theta=0.75, v_0=-0.5))
    with torch.no_grad():
        soma.lif.alpha.copy_(torch.tensor([[0.0, 0.25, 0.9]]))   # BIDL's channel_share shape [1, C]
    g = to_nir(soma, dt=0.01, in_shape=(3,))
    lif = [n for n in g.nodes.values() if type(n).__name__ == "LIF"][0]
    alpha = np.array([0.0, 0.25, 0.9], np.float32).astype(np.float64)
    np.testing.assert_allclose(lif.tau, 0.01 / (1 - alpha), rtol=1e-12)
    np.testing.assert_allclose(lif.r, lif.tau / 0.01, rtol=1e-12)
    np.testing.assert_array_equal(lif.v_reset, [-0.5] * 3)
    np.testing.assert_array_equal(lif.v_threshold, [0.75] * 3)
    np.testing.assert_array_equal(lif.v_leak, [0.0] * 3)
    integ = to_nir(Lif1d(3, soma_params=dict(alpha=1.0)), dt=0.01, in_shape=(3,))
    node = [n for n in integ.nodes.values() if type(n).__name__ == "IF"][0]
    np.testing.assert_allclose(node.r, 100.0)


def refusal_cases():
    """id -> (model, per-step input shape, what the message must say, the module path it must name)."""
    lifplus = [0, False, 0, 0, 0, 1]
    seq = lambda *kv: TemporalSequential(list(kv))  # noqa: E731
    cases = {
        "max pooling after the layer": (
            build_backbone(dict(type="SeqClif3Fc3DmItout", timestep=2, c0=2, h0=16, w0=16, norm_state=False)),
            None, "max pooling", "mp1"),
        "max pooling inside the layer (mp=True)": (
            seq(("c", Conv2dLif(2, 4, 3, 1, 1, mp=True, norm_state=False))), (2, 8, 8), "max pooling", "c.pool"),
        "BIDL's default Conv2dLif (BN on the state)": (
            seq(("c", Conv2dLif(2, 4, 3, 1, 1))), (2, 8, 8), "BatchNorm on the membrane state", "c.lif"),
        "BIDL's default FcLif (BN on the state)": (
            seq(("f", FcLif(4, 3))), (4,), "BatchNorm on the membrane state", "f.lif"),
        "BIDL's default backbone": (
            build_backbone(dict(type="SeqClif3Flif2DgItout", timestep=2, c0=2, h0=16, w0=16)), None,
            "BatchNorm on the membrane state", "clif1.lif"),
        "analog output": (
            seq(("f", FcLif(4, 3, mode="analog", norm_state=False))), (4,), "outputs the membrane", "f.lif"),
        "LIF+ (documented form)": (
            seq(("c", Conv2dLifPlus(2, 4, 3, 1, 1, norm_state=False, neuron_config=lifplus))), (2, 8, 8),
            "lifplus neuron", "c.lifplus"),
        "LIF+ (BIDL's form)": (
            seq(("f", FcLifPlus(4, 3, norm_state=False, neuron_config=lifplus, lifplus_form="bidl"))), (4,),
            "lifplus neuron", "f.lifplus"),
        "beta != 0": (seq(("l", Lif1d(4, soma_params=dict(beta=0.1)))), (4,), "beta=0.1", "l.lif"),
        "activation function": (seq(("fc", nn.Linear(4, 3)), ("act", nn.ReLU())), (4,), "activation function", "act"),
        "ceil-mode downsample that rounds up": (
            build_backbone(dict(type="ResNetLifItout", depth=10, nclass=3, input_channels=2, stem_channels=4,
                                base_channels=4, low_resolut=True, down_t=[1, "avg"], h=18, w=18)),
            None, "ceil_mode=True", "layer3.0.downsample.0"),
        "cut inside a residual block": (
            build_backbone(dict(type="ResNetLifItout", depth=10, nclass=3, input_channels=2, stem_channels=4,
                                base_channels=4, h=32, w=32)).segment(0, "1.2"),
            (2, 32, 32), "cuts inside a residual block", "<model>"),
    }
    return cases


@pytest.mark.parametrize("case", list(refusal_cases()))
def test_to_nir_refuses_what_nir_cannot_express(case):
    model, shape, what, where = refusal_cases()[case]
    with pytest.raises(NirExportError) as e:
        to_nir(model, dt=1e-3, in_shape=shape)
    msg = str(e.value)
    assert what in msg and f"at {where!r}" in msg and "\n" not in msg and msg.startswith("to_nir: ")


# ------------------------------------------------------------------------------ hand-built graphs

def chain(*nodes, shape):
    names = [f"n{i}" for i in range(len(nodes))]
    all_nodes = {"input": nir.Input(input_type=np.array(shape)), **dict(zip(names, nodes)),
                 "output": nir.Output(output_type=np.array(shape))}
    seq = ["input", *names, "output"]
    return nir.NIRGraph(nodes=all_nodes, edges=list(zip(seq, seq[1:])), type_check=False)


def one(v):
    return np.array([v], dtype=np.float64)


@pytest.mark.parametrize("node, want", [
    # LI: a = 1 - dt/tau = 0.5, gain = dt r / tau = 1, leak term dt/tau v_leak = 0.1
    (lambda: nir.LI(tau=one(2e-4), r=one(2.0), v_leak=one(0.2)), [1.1, 1.65, 1.925]),
    # I: gain dt r = 1: the running sum
    (lambda: nir.I(r=one(1e4)), [1.0, 2.0, 3.0]),
    # IF: U = v + x; fires above 1.5 and resets to 0
    (lambda: nir.IF(r=one(1e4), v_threshold=one(1.5), v_reset=one(0.0)), [0.0, 1.0, 0.0]),
    # LIF: U = 0.5 v + x, threshold 1.2: 1 -> 1.5 fire, reset 0 -> 1
    (lambda: nir.LIF(tau=one(2e-4), r=one(2.0), v_leak=one(0.0), v_threshold=one(1.2), v_reset=one(0.0)),
     [0.0, 1.0, 0.0]),
    # CubaLIF: i = 0.5 i + 1 x  (1, 1.5, 1.75); U = 0 v + i; threshold 1.2
    (lambda: nir.CubaLIF(tau_syn=one(2e-4), tau_mem=one(1e-4), r=one(1.0), v_leak=one(0.0), v_threshold=one(1.2),
                         w_in=one(2.0)), [0.0, 1.0, 1.0]),
    (lambda: nir.CubaLI(tau_syn=one(2e-4), tau_mem=one(1e-4), r=one(1.0), v_leak=one(0.0), w_in=one(2.0)),
     [1.0, 1.5, 1.75]),
])
def test_neuron_dynamics_by_hand(node, want):
    model = from_nir(chain(node(), shape=(1,)), dt=1e-4)
    with torch.no_grad():
        y, _ = model.run(torch.ones(3, 1, 1))
    np.testing.assert_allclose(y[:, 0, 0].numpy(), want, rtol=1e-6)


def test_stateless_nodes_by_hand():
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 1, 4, 4)
    g = chain(nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
              nir.Scale(scale=np.array([0.5], np.float32)),
              nir.Flatten(input_type={"input": np.array([1, 2, 2])}, start_dim=0, end_dim=-1),
              nir.Linear(weight=np.array([[1.0, 0, 0, 0], [0, 0, 0, 1.0]], np.float32)),
              nir.Threshold(threshold=np.array([10.0, 10.0], np.float32)), shape=(1, 4, 4))
    with torch.no_grad():
        y, _ = from_nir(g, dt=1.0).run(x)
    # window sums 10, 18, 42, 50 -> halves 5, 9, 21, 25 -> picks 5, 25 -> above 10: 0, 1
    assert y.tolist() == [[[0.0, 1.0]]]


def test_branches_sum_and_subgraphs_inline():
    lif = lambda: nir.LIF(tau=one(2e-4), r=one(2.0), v_leak=one(0.0), v_threshold=one(10.0), v_reset=one(0.0))  # noqa: E731
    inner = nir.NIRGraph(nodes={"i": nir.Input(input_type=np.array([1])), "s": nir.Scale(scale=one(3.0)),
                                "o": nir.Output(output_type=np.array([1]))},
                         edges=[("i", "s"), ("s", "o")], type_check=False)
    g = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([1])), "a": nir.Scale(scale=one(2.0)),
                            "sub": inner, "li": nir.LI(tau=one(1e-4), r=one(1.0), v_leak=one(0.0)),
                            "lif": lif(), "output": nir.Output(output_type=np.array([1]))},
                     edges=[("input", "a"), ("input", "sub"), ("a", "li"), ("sub", "li"), ("li", "lif"),
                            ("lif", "output")], type_check=False)
    model = from_nir(g, dt=1e-4)
    # the branch (a | sub) -> li stays in one block; li and lif are cut points after it
    assert model.n_blocks == 2 and set(model.block(0).nir_names.values()) == {"a", "sub.s", "li"}
    assert model.layout[1] == (("a", "sub.s", "li"), ("lif",))
    assert isinstance(model.sub.s, type(model.a)), "the inlined subgraph's node is the nested module sub.s"
    with torch.no_grad():
        y, st = model.run(torch.ones(3, 1, 1))
    # li: a = 0, gain 1: v = 2x + 3x = 5 each step; lif: U = 0.5 v + 5 -> 5, 7.5, 8.75 (no spike)
    np.testing.assert_allclose(st["lif.v"].item(), 8.75)
    assert set(st) == {"li.v", "lif.v", "tempAdd"}
    assert y.sum() == 0


def test_node_names_that_cannot_be_module_paths():
    """Names that clash with the backbone's attributes, dotted prefixes of other names, or odd
    characters get flat names; to_nir gives the original names back."""
    scale = lambda v: nir.Scale(scale=one(v))  # noqa: E731
    names = ["acc", "run", "x.y", "x", "a b", "a_b", "5"]
    seq = ["input", *names, "output"]
    g = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([1])), "output": nir.Output(output_type=np.array([1])),
                            **{n: scale(2.0 + i) for i, n in enumerate(names)}},
                     edges=list(zip(seq, seq[1:])), type_check=False)
    model = from_nir(g, dt=1.0)
    assert model.nir_names == {"acc_1": "acc", "run_1": "run", "x_y": "x.y", "x": "x", "a_b": "a b",
                               "a_b_1": "a_b", "5": "5"}
    with torch.no_grad():
        assert model.run(torch.ones(1, 1, 1))[0].item() == np.prod([2.0 + i for i in range(len(names))])
    again = to_nir(model, dt=1.0)
    assert set(again.nodes) == set(g.nodes) and sorted(again.edges) == sorted(g.edges)


@pytest.mark.parametrize("mutate, message", [
    (lambda g: g.edges.append(("lif", "a")), "recurrent"),
    (lambda g: g.nodes.update(input2=nir.Input(input_type=np.array([1]))), "Input nodes"),
    (lambda g: g.edges.append(("a", "nowhere")), "'nowhere'"),
    (lambda g: g.nodes.update(a=nir.Delay(delay=one(1.0))), "Delay"),
])
def test_bad_graphs_are_refused_by_name(mutate, message):
    g = chain(nir.Scale(scale=one(1.0)), nir.LIF(tau=one(2e-4), r=one(2.0), v_leak=one(0.0), v_threshold=one(1.0),
                                                 v_reset=one(0.0)), shape=(1,))
    g.nodes = {("a" if k == "n0" else "lif" if k == "n1" else k): v for k, v in g.nodes.items()}
    g.edges = [("input", "a"), ("a", "lif"), ("lif", "output")]
    mutate(g)
    with pytest.raises(NirImportError, match=message):
        from_nir(g, dt=1e-4)


def test_dt_is_required_and_rescales_on_export():
    g = chain(nir.Affine(weight=np.eye(2, dtype=np.float32) * 2, bias=np.zeros(2, np.float32)),
              nir.LIF(tau=np.full(2, 5e-4), r=np.full(2, 5.0), v_leak=np.zeros(2), v_threshold=np.ones(2),
                      v_reset=np.zeros(2)),
              nir.I(r=np.full(2, 1e4)), shape=(2,))
    with pytest.raises(NirImportError, match="dt"):
        from_nir(g)
    m = from_nir(g, dt=1e-4)
    x = spikes(8, 2, (2,), scale=1.0)
    g10 = to_nir(m, dt=1e-3)      # the same discrete model stated at a 10x coarser step
    assert g10.nodes["n1"].tau[0] == pytest.approx(5e-3) and g10.nodes["n2"].r[0] == pytest.approx(1e3)
    with torch.no_grad():
        assert torch.equal(from_nir(g10).run(x)[0], m.run(x)[0])


# ------------------------------------------------------------------------------ segments and the grid

def test_nir_model_splits_into_segments_and_time_slices():
    net, shape = bidl_models()["ResNetLifItout-10-lowres-avg"]
    activate(net)
    model = from_nir(to_nir(net, dt=1e-3, in_shape=shape))
    x = spikes(net.timestep, 2, shape)
    with torch.no_grad():
        whole, _ = model.run(x)
        k = model.n_blocks // 2
        h = x
        for seg in (model.segment(0, k), model.segment(k, model.n_blocks)):
            ys, st = [], None
            for t0, t1 in ((0, 1), (1, 4)):       # two time slices with the state handed over
                y, st = seg.run(h[t0:t1], st)
                ys.append(y)
            h = torch.cat(ys)
    assert torch.equal(h, whole)
    # the state is named by the NIR nodes, which are the ResNet's module paths; the ResNet's
    # accumulator is the I node "acc" (renamed: the backbone's own accumulator is acc), its "tempAdd"
    # is the NIR model's (pick) accumulator
    with torch.no_grad():
        names = set(model.run(x)[1])
        ref_names = set(net.run(x)[1])
    assert names == ref_names | {"acc_1.v"}
    specs = model.segment(k, model.n_blocks).specs(batch=1)
    assert specs.state and {s.name for s in specs.state} < names


def run_grid(cm, x):
    """Artifacts cell by cell: time slices down each column with the state carried, columns in turn."""
    from compile import load_artifact
    h = x
    for s in range(cm.n_segments):
        outs, state, t = [], None, 0
        for g in range(cm.rows):
            art = load_artifact(cm.cell(g, s))
            y, state = art.run(h[t:t + art.chunk_len], state)
            outs.append(y)
            t += art.chunk_len
        h = torch.cat(outs)
    return h


def test_nir_config_compiles_into_grid_artifacts(tmp_path):
    from bidl_models.config import load_config
    from compile import compile_config
    from compile.build import model_sha256
    net, shape = bidl_models()["conv-avgpool-IF-stack"]
    activate(net)
    path = tmp_path / "stack.nir"
    nir.write(str(path), to_nir(net, dt=1e-3, in_shape=shape))
    cfg = tmp_path / "nirstack.py"
    cfg.write_text(f"model = dict(type='ImageClassifier', backbone=dict(type='NirGraph', graph={str(path)!r}, "
                   "timestep=4))\n")   # no import: NirGraph is registered with the other backbones
    compile_kw = dict(grid="2x2", out=tmp_path / "art", progress=False, verbose=False, use_dataset=False)
    cm = compile_config(str(cfg), **compile_kw)
    assert cm.n_segments == 2 and all(r.verify_max_abs_diff is not None and r.verify_max_abs_diff <= 1e-6
                                       for r in cm.records)
    x = spikes(4, 1, shape)
    with torch.no_grad():
        torch.testing.assert_close(run_grid(cm, x), net.run(x)[0], rtol=0, atol=1e-5)

    # the compile cache key hashes the graph file's content: the same path with other weights is
    # another model (its own directory, compiled anew), not a cache hit on the stale artifacts
    key0 = model_sha256(load_config(str(cfg)))
    with torch.no_grad():
        net.c1.p0.weight.mul_(-1.0)
    nir.write(str(path), to_nir(net, dt=1e-3, in_shape=shape))
    assert model_sha256(load_config(str(cfg))) != key0
    first = cm.root
    cm = compile_config(str(cfg), **compile_kw)
    assert cm.root != first and all(r.cache == "miss" for r in cm.records)
    with torch.no_grad():
        want = net.run(x)[0]
    assert (run_grid(cm, x) - want).abs().max() <= 1e-5
