"""One train-mode step of every backbone equals BIDL's (bidl_zoo.md, "How BatchNorm sees time in training").

From the same weights, batch and labels, ``bidl_models`` and the independent functional statement of
BIDL's forward pass in ``tests/bidl_reference.py`` (run with a :class:`~bidl_reference.TrainState`:
batch statistics, running statistics updated per call, rectangle surrogate) give the same loss, the
same gradient of every parameter and the same running statistics and ``num_batches_tracked`` of every
BatchNorm. Itout models call every BatchNorm once per time step (``num_batches_tracked`` += T); the
It models' ``TimeDistributed`` conv/BN once on all frames. Tolerance: 1e-3 of each tensor's scale
(fp32 sums in another order). ``MEASURED`` collects the maximum relative differences per backbone
(printed with ``-s``).
"""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from bidl_models.backbones import build_backbone
from bidl_models.registry import BACKBONES
from bidl_reference import TrainState, attention_vgg_forward, fasttext_forward, resnet_forward, seq_forward

COBE = [1, False, 0, 0, 0, 0]          # the LIF+ option of BIDL's shipped configs (what the reference states)
SEQ = dict(timestep=3, h=16, w=16)
C64 = dict(timestep=3, h=64, w=64)
C128 = dict(timestep=2, h=128, w=128, noise=0)
RES = dict(nclass=5, timestep=3, input_channels=2, h=32, w=32, stem_channels=4, base_channels=4, noise=0)
TEXT = dict(timestep=4, vocab_size=20, embedding_dim=8, hidden_dim=16, noise=0)
# registry name -> tiny constructor keywords (all 23 of BIDL's backbone names)
CASES = {
    "SeqClif3Fc3DmItout": dict(SEQ, cmode="analog"),
    "SeqClif3Fc3LcItout": dict(SEQ),
    "SeqClifplus3Fc3DmItout": dict(SEQ, neuron_config=COBE, cmode="analog"),
    "SeqClifplus3Fc3LcItout": dict(SEQ, neuron_config=COBE),
    "SeqClif3Fc3DmIt": dict(SEQ, cmode="analog"),
    "SeqClif5Fc2CdItout": dict(C64),
    "SeqClif5Fc2DmItout": dict(C64, cmode="analog"),
    "SeqClifplus5Fc2CdItout": dict(C64, neuron_config=COBE, cmode="analog"),
    "SeqClif5Fc2CdIt": dict(C64, cmode="analog"),
    "SeqClif5Fc2DmIt": dict(C64),
    "SeqClif7Fc1CdItout": dict(C128),
    "SeqClif7Fc1DgItout": dict(C128, cmode="analog"),
    "SeqClif7Fc1CdIt": dict(C128, cmode="analog"),
    "SeqClif7Fc1DgIt": dict(C128),
    "SeqClif3Flif2DgItout": dict(SEQ, noise=0),
    "SeqClifplus3Flifplus2DgItout": dict(SEQ, noise=0, neuron_config=COBE),
    "AttentionVGGNet": dict(timestep=3, h=64, w=64),
    "FastTextItout": dict(TEXT),
    "FastTextlifplusItout": dict(TEXT, neuron_config=COBE),
    "ResNetLifItout": dict(RES, depth=10),
    "ResNetLifItout_MP": dict(RES, depth=50),       # Bottleneck blocks
    "ResNetLifReluItout": dict(RES, depth=50),
    "ResNetLif": dict(RES, depth=10),
}
EXTRA = {"ResNetLifReluItout/depth10": ("ResNetLifReluItout", dict(RES, depth=10)),
         "SeqClif3Fc3DmItout/norm_state=False": ("SeqClif3Fc3DmItout", dict(SEQ, norm_state=False))}
BATCH = 3
TOL = 1e-3
MEASURED: dict[str, dict[str, float]] = {}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread (two threads spin on a shared machine, 100x slower per BatchNorm)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_every_backbone_name_is_covered():
    ours = {n for n in BACKBONES.names() if not BACKBONES.get(n).__module__.startswith(("test_", "conftest"))}
    assert set(CASES) == ours - {"NirGraph"} and len(CASES) == 23   # (test modules register stand-ins)


def activate(net: torch.nn.Module) -> torch.nn.Module:
    """Raise BatchNorm scale / shift and Linear gains so that every layer spikes (in place)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.fill_(1.5)
                m.bias.fill_(0.25)
            elif isinstance(m, torch.nn.Linear):
                m.weight.mul_(3.0)
                if m.bias is not None:
                    m.bias.add_(0.2)
    return net


def build(name: str, kw: dict) -> torch.nn.Module:
    net = activate(build_backbone(dict(type=name, **kw), seed=0))
    if hasattr(net, "dropout"):
        net.dropout.p = 0.0       # dropout masks are random draws on both sides; the rest of the step is exact
    return net


def batch(net, seed: int = 1, steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ``[B, T, ...]``, labels) for ``net``."""
    g = torch.Generator().manual_seed(seed)
    T = net.timestep if steps is None else steps
    if net.input_dtype == "int64":
        x = torch.randint(0, net.input_high, (BATCH, T), generator=g)
    else:
        x = (torch.rand((BATCH, T) + tuple(net.default_input_shape()), generator=g) < 0.3).float()
    nclass = net.fc.out_features if hasattr(net, "fc") and isinstance(net.fc, torch.nn.Linear) else None
    return x, torch.randint(0, max(nclass or 2, 2), (BATCH,), generator=g)


def loss_of(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], y.float())
    return F.cross_entropy(logits, y % logits.shape[1])


def reference(name: str, kw: dict, sd: TrainState, x: torch.Tensor) -> torch.Tensor:
    """BIDL's forward pass of backbone ``name`` (tests/bidl_reference.py)."""
    cmode = kw.get("cmode", "analog" if name.startswith("FastText") else "spike")
    if name.startswith("Seq"):
        return seq_forward(sd, x, name, cmode, timestep=kw.get("timestep"))
    if name == "AttentionVGGNet":
        return attention_vgg_forward(sd, x, cmode)
    if name.startswith("FastText"):
        return fasttext_forward(sd, x, cmode)
    return resnet_forward(sd, x, kw["depth"], cmode, lite="Relu" in name, timestep=kw.get("timestep"))


def reference_state(net: torch.nn.Module, noise: float = 0.0) -> TrainState:
    """A copy of ``net``'s state_dict: its trainable parameters as leaves that take gradients."""
    params = dict(net.named_parameters())
    sd = TrainState()
    for k, v in net.state_dict().items():
        t = v.detach().clone()
        sd[k] = t.requires_grad_(True) if k in params and params[k].requires_grad else t
    sd.noise = noise
    return sd


def rel(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    """max |a - b| over the scale of b (max |b|); a missing gradient is zero."""
    if a is None and b is None:
        return 0.0
    a = torch.zeros_like(b) if a is None else a.detach().float()
    b = torch.zeros_like(a) if b is None else b.detach().float()
    scale = float(b.abs().max()) if b.numel() else 0.0
    diff = float((a - b).abs().max()) if b.numel() else 0.0
    return diff / scale if scale > 0 else diff


def train_step_differences(name: str, kw: dict, noise: float = 0.0) -> dict[str, float]:
    """Max relative differences (loss, gradients, running statistics) of one train-mode step of
    ``bidl_models`` against the reference; ``num_batches_tracked`` must be equal."""
    net = build(name, kw)
    x, y = batch(net)
    sd = reference_state(net, noise)
    net.train()
    loss = loss_of(net(x), y)
    loss.backward()
    ref_loss = loss_of(reference(name, kw, sd, x), y)
    ref_loss.backward()
    got = net.state_dict()
    # a gradient that is zero in exact arithmetic -- the bias of a conv or linear right before a BatchNorm (the BN
    # removes any per-channel shift) -- is rounding noise on both sides: such a bias (its gradient below 1e-3 of
    # its own layer's weight gradient; 2e-5 at most measured, real biases 0.15 or more) must be below that on
    # both sides; every other tensor is compared with its own scale
    trained = {k: p for k, p in net.named_parameters() if p.requires_grad}
    zero = set()
    for k, p in trained.items():
        w = k[:-len("bias")] + "weight"
        if k.endswith(".bias") and w in trained and sd[w].grad is not None:
            scale = float(sd[w].grad.abs().max())
            if sd[k].grad is None or float(sd[k].grad.abs().max()) < 1e-3 * scale:
                zero.add(k)
                assert p.grad is None or float(p.grad.abs().max()) < 1e-3 * scale, k
    grads = {k: rel(p.grad, sd[k].grad) for k, p in trained.items() if k not in zero}
    stats = {k: rel(got[k], sd[k]) for k in got if k.endswith(("running_mean", "running_var"))}
    tracked = {k: (int(got[k]), int(sd[k])) for k in got if k.endswith("num_batches_tracked")}
    assert all(a == b for a, b in tracked.values()), {k: v for k, v in tracked.items() if v[0] != v[1]}
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in net.parameters())
    assert sum(float(p.grad.abs().sum()) for p in net.parameters() if p.grad is not None) > 0
    return dict(loss=rel(loss, ref_loss), grads=max(grads.values()), running=max(stats.values(), default=0.0),
                worst_grad=max(grads, key=grads.get), bn_calls=max((a for a, _ in tracked.values()), default=0),
                zero_grads=len(zero), tensors=len(trained), stats=len(stats))


@pytest.mark.parametrize("case", [*CASES, *EXTRA])
def test_one_train_step_equals_bidls(case):
    name, kw = EXTRA[case] if case in EXTRA else (case, CASES[case])
    torch.manual_seed(0)
    d = train_step_differences(name, kw)
    MEASURED[case] = d
    print(f"\n{case}: loss {d['loss']:.1e}, grads {d['grads']:.1e} (worst {d['worst_grad']}; "
          f"{d['tensors']} tensors, {d['zero_grads']} zero in exact arithmetic), running stats {d['running']:.1e} "
          f"({d['stats']} tensors), BN calls per batch up to {d['bn_calls']}")
    assert d["loss"] <= TOL and d["grads"] <= TOL and d["running"] <= TOL, d


@pytest.mark.parametrize("name,kw", [("SeqClif3Flif2DgItout", dict(SEQ, noise=0.2)),
                                     ("ResNetLifItout", dict(RES, depth=10, noise=0.2, h=64, w=64))])
def test_training_noise_is_bidls(name, kw, monkeypatch):
    """With noise, both add ``noise * std(U over H, W) * N(0, 1)`` per step; with the draws fixed to 1
    (``randn_like`` patched on both sides) the step is the same, so only the draws' order differs.
    (Sizes without 1x1 maps: there BIDL's std is NaN, the project adds no noise.)"""
    monkeypatch.setattr(torch, "randn_like", torch.ones_like)
    d = train_step_differences(name, kw, noise=0.2)
    assert d["loss"] <= TOL and d["grads"] <= TOL and d["running"] <= TOL, d


def test_the_all_frames_form_is_an_explicit_key():
    """``bn_stats='frames'`` on an itout ResNet gives BIDL's It model's step (ResNetLif: one call on all
    frames, num_batches_tracked + 1); the default calls every BatchNorm per step (+ T)."""
    kw = dict(RES, depth=10)
    frames = build("ResNetLifItout", dict(kw, bn_stats="frames"))
    it = build("ResNetLif", kw)
    step = build("ResNetLifItout", kw)
    assert frames.bn_stats == "frames" and step.bn_stats == "step" and it.bn_stats == "frames"
    it.load_state_dict({k: frames.state_dict()[k.replace(".module.", ".")] for k in it.state_dict()})
    x, y = batch(frames)
    outs = {}
    for tag, net in (("frames", frames), ("it", it), ("step", step)):
        net.train()
        loss = loss_of(net(x), y)
        loss.backward()
        outs[tag] = (loss.detach(), {k.replace(".module.", "."): v.clone() for k, v in net.state_dict().items()},
                     {k.replace(".module.", "."): p.grad for k, p in net.named_parameters()})
    (lf, sf, gf), (li, si, gi), (ls, ss, _) = outs["frames"], outs["it"], outs["step"]
    assert rel(lf, li) <= TOL and all(rel(gf[k], gi[k]) <= TOL for k in gf)
    assert all(rel(sf[k], si[k]) <= TOL for k in sf if "running" in k)
    assert int(sf["conv.1.num_batches_tracked"]) == 1 and int(ss["conv.1.num_batches_tracked"]) == 3
    assert rel(lf, ls) > 1e-4              # not the same training step
    with pytest.raises(ValueError, match=r"ResNetLifItout: bn_stats='time': expected one of \['step', 'frames'\]"):
        build_backbone(dict(type="ResNetLifItout", bn_stats="time", **kw))


def test_per_step_statistics_make_time_slices_exact_in_training():
    """Per-step BatchNorm statistics depend on nothing but the step: running the steps in two chunks
    (state handed over) gives the outputs and running statistics of one chunk, in training too."""
    net = build("ResNetLifItout", dict(RES, depth=10, timestep=4))
    x, _ = batch(net)
    xt = x.transpose(0, 1)
    net.train()
    whole = build("ResNetLifItout", dict(RES, depth=10, timestep=4)).train()
    whole.load_state_dict(net.state_dict())
    with torch.no_grad():
        y_all, _ = whole.run(xt)
        y1, st = net.run(xt[:1])
        y2, _ = net.run(xt[1:], st)
    assert torch.allclose(torch.cat([y1, y2]), y_all, atol=1e-5)
    a, b = net.state_dict(), whole.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


@pytest.mark.parametrize("name,kw", [("SeqClif3Fc3DmItout", dict(SEQ, cmode="analog")),
                                     ("SeqClif3Fc3DmIt", dict(SEQ, cmode="analog")),
                                     ("ResNetLifItout", dict(RES, depth=10)),
                                     ("ResNetLif", dict(RES, depth=10))])
def test_other_step_counts_follow_bidl_with_one_warning_line(name, kw, caplog):
    """T != timestep: itout models sum the steps and divide by timestep (ResNets their pooled features,
    then fc), It models average over the steps given; one warning line per model and T."""
    net = build(name, kw).eval()
    x, _ = batch(net, steps=5)
    with caplog.at_level(logging.WARNING, logger="bidl_models"):
        with torch.no_grad():
            got = net(x)
            again = net(x)
    ref = reference(name, kw, {k: v for k, v in net.state_dict().items()}, x)
    assert torch.allclose(got, ref, atol=1e-4, rtol=1e-4) and torch.equal(got, again)
    lines = [r.getMessage() for r in caplog.records if "time steps" in r.getMessage()]
    assert len(lines) == 1 and f"input has T=5 time steps but model.backbone.timestep={kw['timestep']}" in lines[0]
    assert ("given" in lines[0]) == name.endswith("It") or name == "ResNetLif"


def test_attention_over_time_still_needs_its_timestep():
    net = build("AttentionVGGNet", CASES["AttentionVGGNet"]).eval()
    x, _ = batch(net, steps=4)
    with pytest.raises(ValueError, match=r"input has T=4 time steps but the backbone was built with timestep=3; "
                                         r"twa1 \(TemporalWiseAttention\) attends over exactly that many"):
        net(x)
