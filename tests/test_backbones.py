"""Every backbone: step vs chunk, segments x time slices vs whole model, reset per sample, training."""
import pytest
import torch

from bidl_models import build_backbone, split_backbone

BACKBONES = {
    "clif3fc3dm": dict(type="SeqClif3Fc3DmItout", h0=16, w0=16),
    "clif3fc3dm-analog-sum": dict(type="SeqClif3Fc3DmItout", h=16, w=16, cmode="analog", amode="sum"),
    "clif3fc3dm-bn-on-current": dict(type="SeqClif3Fc3DmItout", h=16, w=16, norm_state=False, conv_bias=False),
    "clif3fc3dm-lifplus": dict(type="SeqClif3Fc3DmItout", h0=16, w0=16, neuron="lifplus",
                               neuron_config=[1, False, 1, 0, 1, 1]),
    "clif3fc3dm-lifplus-bidl": dict(type="SeqClif3Fc3DmItout", h=16, w=16, neuron="lifplus", cmode="analog",
                                    neuron_config=[2, True, 2, 1, 2, 0], lifplus_form="bidl"),
    "clif5fc2cd": dict(type="SeqClif5Fc2CdItout", h0=64, w0=64, soma_params="channel_share"),
    "clif3flif2dg": dict(type="SeqClif3Flif2DgItout", h0=16, w0=16, cmode="analog", amode="pick"),
    "clif3flif2dg-spike": dict(type="SeqClif3Flif2DgItout", input_channels=2, h=16, w=16, nclass=11,
                               cmode="spike", fmode="spike", noise=0),
    "clif7fc1cd": dict(type="SeqClif7Fc1CdItout", h=128, w=128, nclass=10),
    "resnet10": dict(type="ResNetLifItout", depth=10, nclass=10, input_channels=2, h=32, w=32),
    "resnet18-lowres": dict(type="ResNetLifItout", depth=18, nclass=5, input_channels=2, low_resolut=True,
                            h=12, w=12, cmode="analog"),
    "resnet18-odd-size-norm": dict(type="ResNetLifItout", depth=18, nclass=27, input_channels=3, h=56, w=56,
                                   norm=dict(mean=[0.5, 0.4, 0.3], std=[0.2, 0.3, 0.4])),
    "resnet50": dict(type="ResNetLifItout", depth=50, nclass=10, input_channels=2, h=32, w=32,
                     soma_params="channel_share"),
    # the rest of BIDL's zoo (issue 10)
    "clif3fc3lc": dict(type="SeqClif3Fc3LcItout", h=16, w=16, cmode="analog"),
    "clif5fc2dm": dict(type="SeqClif5Fc2DmItout", h=64, w=64),
    "clifplus5fc2cd": dict(type="SeqClifplus5Fc2CdItout", h=64, w=64, cmode="analog",
                           neuron_config=[1, False, 0, 0, 0, 0]),
    "clifplus3flifplus2dg": dict(type="SeqClifplus3Flifplus2DgItout", h=16, w=16, neuron_config=[1, False, 0, 0, 0, 0]),
    "clif3fc3dm-it": dict(type="SeqClif3Fc3DmIt", h=16, w=16, cmode="analog"),
    "clif5fc2dm-it": dict(type="SeqClif5Fc2DmIt", h=64, w=64, cmode="analog", it_batch=16),
    "clif7fc1cd-it": dict(type="SeqClif7Fc1CdIt", h=128, w=128, nclass=10),
    "resnet18-lite": dict(type="ResNetLifReluItout", depth=18, nclass=10, input_channels=2, h=32, w=32),
    "resnet50-lite": dict(type="ResNetLifReluItout", depth=50, nclass=10, input_channels=2, h=16, w=16,
                          cmode="analog", stem_channels=16, base_channels=16),
    "resnet50-it": dict(type="ResNetLif", depth=50, nclass=10, input_channels=2, h=16, w=16, it_batch=8,
                        stem_channels=16, base_channels=16),
    "fasttext": dict(type="FastTextItout", vocab_size=50, embedding_dim=8, hidden_dim=16),
    "fasttext-lifplus": dict(type="FastTextlifplusItout", vocab_size=50, embedding_dim=8, hidden_dim=16,
                             neuron_config=[1, False, 0, 0, 0, 0]),
}
WHOLE_SEQUENCE = {  # attention over time: whole sequences only
    "attention-vgg": dict(type="AttentionVGGNet", h=64, w=64, nclass=10),
    "attention-vgg-analog": dict(type="AttentionVGGNet", h=68, w=68, nclass=5, cmode="analog", input_channels=1),
}


def make(name, T=10, batch=2, seed=1):
    net = build_backbone(dict({**BACKBONES, **WHOLE_SEQUENCE}[name], timestep=T)).eval()
    g = torch.Generator().manual_seed(seed)
    if net.input_dtype == "int64":   # token ids, one per step
        return net, torch.randint(0, net.input_high, (T, batch), generator=g)
    x = (torch.rand((T, batch) + net.default_input_shape(), generator=g) < 0.3).float() * 2
    return net, x


def assert_states_close(a, b, atol=1e-6):
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("name", list(BACKBONES))
def test_single_step_equals_multi_step(name):
    net, x = make(name)
    whole = net.segment(0, net.n_blocks)
    with torch.no_grad():
        ys, st = net.run(x)
        s = None
        for t in range(x.shape[0]):
            y, s = whole.step(x[t], s)
            torch.testing.assert_close(y, ys[t], atol=1e-6, rtol=0)
    assert_states_close(s, st)
    assert sum(v.abs().sum() for v in st.values()) > 0


@pytest.mark.parametrize("T, slices", [(10, (4, 3, 3)), (7, (1, 1, 5))])
@pytest.mark.parametrize("name", list(BACKBONES))
def test_segments_and_time_slices_equal_whole(name, T, slices):
    net, x = make(name, T=T)
    n = net.n_blocks
    cuts = [(0, n // 3), (n // 3, (2 * n) // 3), ((2 * n) // 3, n)] if n >= 3 else [(0, 1), (1, n)]
    segs = split_backbone(net, cuts)
    with torch.no_grad():
        whole, whole_state = net.run(x)
        states = [None] * len(segs)
        outs, t0 = [], 0
        for length in slices:
            h = x[t0:t0 + length]
            for i, seg in enumerate(segs):
                h, states[i] = seg.run(h, states[i])
            outs.append(h)
            t0 += length
    torch.testing.assert_close(torch.cat(outs), whole, atol=1e-6, rtol=0)
    merged = {k: v for s in states for k, v in s.items()}
    assert_states_close(merged, whole_state)
    assert merged.keys() == whole_state.keys()


@pytest.mark.parametrize("name", list(BACKBONES))
def test_same_input_twice_gives_same_output(name):
    net, x = make(name)
    xb = x.transpose(0, 1)  # BIDL layout [B, T, ...]
    with torch.no_grad():
        other = torch.randint_like(xb, 0, net.input_high) if net.input_high else torch.rand_like(xb)
        a = net(xb)
        net(other)  # a different sample in between must not leak state
        b = net(xb)
    assert torch.equal(a, b)
    assert a.shape == (x.shape[1], net.acc.timestep and a.shape[1])


@pytest.mark.parametrize("name", list(WHOLE_SEQUENCE))
def test_whole_sequence_models_cut_into_segments_not_time_slices(name):
    """Attention over time: segments of the whole sequence equal the whole model; one step or a time
    slice across an attention layer is refused naming it, not computed differently."""
    net, x = make(name, T=6)
    assert [p for p, _ in net.whole_sequence_layers()] == ["twa1", "tcja", "twa2"]
    segs = split_backbone(net, [(0, 3), (3, 7), (7, net.n_blocks)])
    assert [len(s.whole_sequence_layers()) for s in segs] == [0, 1, 2]
    with torch.no_grad():
        whole, whole_state = net.run(x)
        h, states = x, {}
        for seg in segs:
            h, st = seg.run(h)
            states.update(st)
        torch.testing.assert_close(h, whole, atol=1e-6, rtol=0)
        assert_states_close(states, whole_state)
        assert whole[-1].std() > 0
        # the segment before the attention runs in time slices; the one holding it does not
        a, sa = segs[0].run(x[:2])
        b, _ = segs[0].run(x[2:], sa)
        torch.testing.assert_close(torch.cat([a, b]), segs[0].run(x)[0], atol=1e-6, rtol=0)
        with pytest.raises(ValueError, match=r"TemporalWiseAttention attends over all T=6 steps at once; got a chunk of 2"):
            segs[1].run(a)
        with pytest.raises(ValueError, match="got a chunk of 1 step"):
            net.segment(0, net.n_blocks).step(x[0])
        with pytest.raises(ValueError, match="timestep=6"):
            net(x[:5].transpose(0, 1))


def test_whole_sequence_attention_attends_each_sample_on_its_own():
    net, x = make("attention-vgg", T=4, batch=3)
    with torch.no_grad():
        together = net(x.transpose(0, 1))
        alone = torch.cat([net(x[:, i:i + 1].transpose(0, 1)) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["clif3fc3dm", "clif3flif2dg", "resnet10", "clif3fc3dm-lifplus", "clif3fc3dm-it",
                                  "resnet18-lite", "fasttext", "attention-vgg"])
def test_surrogate_gradients_train(name):
    torch.manual_seed(0)   # initial weights and dropout: not the RNG state the tests before left
    net, x = make(name, T=6, batch=8, seed=3)
    net.train()
    xb = x.transpose(0, 1)
    labels = torch.arange(8) % 4
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        out = net(xb)
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0], (labels % 2).float())
                if out.shape[1] == 1 else torch.nn.functional.cross_entropy(out, labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first_conv = next(p for n, p in net.named_parameters() if p.requires_grad and p.dim() >= 2)
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    assert losses[-1] < losses[0] * 0.9, losses


def test_resnet50_state_is_the_published_12_55_mb():
    net = build_backbone(dict(type="ResNetLifItout", depth=50, nclass=10, input_channels=2, timestep=10))
    specs = net.segment(0, 16).specs(1, (2, 128, 128))
    membrane = sum(s.nbytes for s in specs.state if s.name != "tempAdd")
    assert membrane == 12_550_144
    assert net.segment(6, 16).input_shape((2, 128, 128)) == (512, 16, 16)


@pytest.mark.parametrize("depth, blocks", [(10, 4), (18, 8), (34, 16), (50, 16), (101, 33), (152, 50)])
def test_resnet_depths_block_counts(depth, blocks):
    net = build_backbone(dict(type="ResNetLifItout", depth=depth, nclass=10, input_channels=2))
    assert net.n_blocks == blocks
    assert net.n_blocks == sum(len(getattr(net, f"layer{i}")) for i in range(1, 5))


def test_forward_takes_other_step_counts_as_bidl(caplog):
    """T=7 for timestep=10: BIDL's itout sum over the 7 steps divided by 10, with one warning line."""
    net, x = make("clif3fc3dm", T=10)
    with caplog.at_level("WARNING", logger="bidl_models"), torch.no_grad():
        y = net(x[:7].transpose(0, 1))
        net(x[:7].transpose(0, 1))
        acc, _ = net.run(x[:7])
    assert torch.equal(y, acc[-1])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "T=7 time steps but model.backbone.timestep=10" in lines[0]


def test_resnetlif18_jester_112_builds_runs_and_splits():
    """The user guide's evaluation example: ResNetLif18, 3x112x112, T=16, 27 classes (layer4 sees 7x7:
    the shortcut's ceil-mode average pool gives the strided conv's 4x4)."""
    from bidl_models import load_model
    net = load_model("resnetlif18-itout-b20x4-16-jester")
    assert net.timestep == 16 and net.default_input_shape() == (3, 112, 112)
    assert net.segment(6, 8).input_shape((3, 112, 112)) == (256, 7, 7)
    assert net.segment(0, 8).specs(1).output.shape == (1, 27)
    x = (torch.rand(16, 1, 3, 112, 112) < 0.3).float() * 255
    slices = ((0, 6), (6, 11), (11, 16))
    with torch.no_grad():
        whole, st = net.run(x)
        segs = split_backbone(net, [(0, 3), (3, 7), (7, 8)])
        states, outs = [None] * 3, []
        for a, b in slices:
            h = x[a:b]
            for i, seg in enumerate(segs):
                h, states[i] = seg.run(h, states[i])
            outs.append(h)
    torch.testing.assert_close(torch.cat(outs), whole, atol=1e-6, rtol=0)
    assert whole.shape == (16, 1, 27) and whole[-1].std() > 0
    assert st["layer4.1.lif2.lif.v"].shape == (1, 512, 4, 4)


def test_resnetlif18_on_2x224x224_builds_runs_and_splits():
    net = build_backbone(dict(type="ResNetLifItout", depth=18, nclass=1000, timestep=2, input_channels=2, h=224,
                              w=224, cmode="analog")).eval()
    x = (torch.rand(2, 1, 2, 224, 224) < 0.3).float()
    with torch.no_grad():
        whole, _ = net.run(x)
        h, s0 = net.segment(0, 4).run(x)
        y, _ = net.segment(4, 8).run(h)
    assert whole.shape == (2, 1, 1000) and h.shape == (2, 1, 128, 28, 28)
    torch.testing.assert_close(y, whole, atol=1e-6, rtol=0)


@pytest.mark.parametrize("first_import", ["bidl_models", "bidl_models.nir"])
def test_nir_graph_type_is_registered_without_the_nir_package(first_import):
    """Configs name ``type='NirGraph'`` without importing bidl_models.nir; without the ``nir`` extra
    the backbones still import, and building a NirGraph says which extra to install. Either module
    may be imported first (bidl_models.nir imports the backbones it registers with)."""
    import subprocess
    import sys
    code = (
        "import sys\n"
        "sys.modules['nir'] = None   # the extra is absent: 'import nir' raises ImportError\n"
        f"import {first_import}\n"
        "from bidl_models.backbones import BACKBONES, build_backbone\n"
        "assert 'NirGraph' in BACKBONES, BACKBONES.names()\n"
        "try:\n"
        "    build_backbone(dict(type='NirGraph', graph='net.nir', dt=1e-4))\n"
        "except ImportError as e:\n"
        "    assert isinstance(e, ValueError)   # the CLIs report bad configs (ValueError) in one line\n"
        "    print('ImportError:', e)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "ImportError: the 'nir' package is needed" in res.stdout and "bidl-grid[nir]" in res.stdout


def test_config_file_digests_hash_the_nir_file_content(tmp_path):
    """The compile cache key includes the content of a NirGraph's graph file, not only its path."""
    from bidl_models.backbones import config_file_digests
    from compile.build import model_sha256
    f = tmp_path / "net.nir"
    cfg = {"model": {"type": "ImageClassifier", "backbone": {"type": "NirGraph", "graph": str(f), "dt": 1e-4}}}
    assert config_file_digests(cfg) == {"model.backbone.graph": "missing"}
    f.write_bytes(b"graph one")
    one, key_one = config_file_digests(cfg), model_sha256(cfg)
    f.write_bytes(b"graph two")
    assert config_file_digests(cfg) != one and model_sha256(cfg) != key_one
    plain = {"model": {"type": "ImageClassifier", "backbone": {"type": "SeqClif3Fc3DmItout", "h": 16, "w": 16}}}
    assert config_file_digests(plain) == {}
