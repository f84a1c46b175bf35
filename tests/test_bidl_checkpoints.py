"""BIDL checkpoints: our parameter names and shapes are BIDL's, BIDL files load strictly and give BIDL's
logits, conversion both ways, named errors.

``tests/data/bidl_checkpoint_keys.json`` holds the state_dict tables of ``bidl_checkpoint_keys.md``
(BIDL's backbones built from their real configs) for the backbones this project has.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bidl_models import build_backbone, load_model
from bidl_models.checkpoint import checkpoint_format, read_state_dict, to_bidl, to_project
from bidl_models.config import load_config
from bidl_models.convert_checkpoint import run as convert_main

from bidl_reference import attention_vgg_forward, fasttext_forward, resnet_forward, seq_forward

TABLES = json.loads((Path(__file__).parent / "data" / "bidl_checkpoint_keys.json").read_text())["backbones"]


def our_config(title: str) -> dict:
    """Our backbone config for a table: BIDL's class and the keywords of BIDL's own config."""
    entry = TABLES[title]
    cfg = dict(entry["backbone"], type=entry["bidl_class"])
    if cfg.get("neuron") == "lifplus":
        cfg["lifplus_form"] = "bidl"
    return cfg


def bidl_state_dict(title: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with BIDL's names and shapes (BN statistics and neuron parameters near use)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in TABLES[title]["keys"]:
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            t = torch.tensor(int(torch.randint(1, 1000, (), generator=g)))
        elif leaf == "running_var":
            t = torch.rand(shape, generator=g) + 0.5
        elif leaf == "running_mean":
            t = torch.randn(shape, generator=g) * 0.1
        elif leaf in ("alpha", "theta", "beta", "v_0", "epsilon", "tau_recip"):
            lo, hi = {"alpha": (0.2, 0.5), "theta": (0.3, 0.6), "beta": (-0.05, 0.05), "v_0": (-0.1, 0.1),
                      "epsilon": (0.2, 0.8), "tau_recip": (0.3, 0.7)}[leaf]
            t = lo + (hi - lo) * torch.rand(shape, generator=g)
        elif leaf == "weight" and len(shape) >= 2:
            t = torch.randn(shape, generator=g) * math.sqrt(2.0 / math.prod(shape[1:]))
        elif leaf == "weight":  # BN scale
            t = 1.0 + 0.2 * torch.randn(shape, generator=g)
        else:
            t = 0.1 * torch.randn(shape, generator=g)
        out[key] = t
    if "embedding_fc.weight" in out:  # FastText's chip-path copy: the embedding's transpose (tied in BIDL)
        out["embedding_fc.weight"] = out["embedding.weight"].t().contiguous()
    return out


def bidl_train_file(sd: dict, prefix: str = "module.", epoch: int = 4) -> dict:
    """What BIDL's tools/train.py saves (GPU-trained: DataParallel's ``module.`` on every key)."""
    return dict(state_dict={prefix + k: v for k, v in sd.items()}, optimizer_state_dict=None,
                scheduler_stat_dict={"last_epoch": epoch + 1, "_step_count": epoch + 2},
                epoch=epoch, time="2024-05-01 12:00:00", iters=123, seed=7, config="some-config")


@pytest.mark.parametrize("title", list(TABLES))
def test_our_state_dict_is_bidls(title):
    net = build_backbone(our_config(title))
    ours = [(k, list(v.shape)) for k, v in net.state_dict().items()]
    # same names, shapes and order (the order is the optimizer's: BIDL's optimizer states fit)
    assert ours == [(k, s) for k, s in TABLES[title]["keys"]]
    assert all(v.dtype == (torch.int64 if k.endswith("num_batches_tracked") else torch.float32)
               for k, v in net.state_dict().items())


@pytest.mark.parametrize("wrapper", ["train.py", "bare", "bare-cpu"])
@pytest.mark.parametrize("title", list(TABLES))
def test_bidl_checkpoint_loads_strictly(title, wrapper, tmp_path):
    sd = bidl_state_dict(title)
    obj = {"train.py": bidl_train_file(sd), "bare": {f"module.{k}": v for k, v in sd.items()}, "bare-cpu": sd}[wrapper]
    path = tmp_path / "latest.pth"
    torch.save(obj, path)
    net = load_model(dict(model=dict(backbone=our_config(title))), path)
    got = net.state_dict()
    assert list(got) == list(sd) and all(torch.equal(got[k], sd[k]) for k in sd)


def test_missing_extra_and_misshaped_keys_are_named(tmp_path):
    cfg = dict(model=dict(backbone=our_config("SeqClif3Fc3DmItout")))
    sd = bidl_state_dict("SeqClif3Fc3DmItout")
    cases = [({k: v for k, v in sd.items() if k != "clif2.lif.theta"}, r"missing keys: clif2\.lif\.theta$"),
             (dict(sd, **{"clif9.p0.weight": torch.zeros(1)}), r"unexpected keys: clif9\.p0\.weight$"),
             (dict(sd, **{"head.4.weight": torch.zeros(11, 128)}),
              r"shape mismatches: head\.4\.weight: checkpoint \[11, 128\] vs model \[10, 128\]")]
    for bad, match in cases:
        torch.save(bidl_train_file(bad), tmp_path / "bad.pth")
        with pytest.raises(ValueError, match=match):
            load_model(cfg, tmp_path / "bad.pth")


CASES = {  # title: (per-step input shape, T) -- small inputs and T keep it quick
    "SeqClif3Fc3DmItout": ((2, 40, 40), 5),
    "SeqClif5Fc2CdItout": ((2, 128, 128), 3),
    "SeqClif7Fc1CdItout": ((2, 128, 128), 3),
    "SeqClif3Flif2DgItout": ((2, 40, 40), 5),
    "ResNetLifItout-18": ((2, 64, 64), 3),
    "ResNetLifItout-50": ((2, 64, 64), 2),
    "ResNetLifReluItout-18": ((2, 64, 64), 3),
    "ResNetLifReluItout-50": ((2, 64, 64), 2),
    "ResNetLif-50": ((2, 64, 64), 2),
    "SeqClifplus3Fc3DmItout": ((2, 40, 40), 5),
    "SeqClifplus3Fc3LcItout": ((1, 32, 32), 4),
    "SeqClifplus5Fc2CdItout": ((2, 128, 128), 3),
    "SeqClifplus3Flifplus2DgItout": ((2, 40, 40), 5),
    "SeqClif3Fc3LcItout": ((1, 32, 32), 4),
    "SeqClif5Fc2DmItout": ((2, 128, 128), 3),
    "SeqClif5Fc2CdIt": ((2, 128, 128), 3),
    "SeqClif5Fc2DmIt": ((2, 128, 128), 3),
    "SeqClif7Fc1CdIt": ((2, 128, 128), 3),
    "SeqClif7Fc1DgIt": ((2, 128, 128), 3),
    "SeqClif7Fc1DgItout": ((2, 128, 128), 3),
    "AttentionVGGNet": ((2, 128, 128), 10),     # T=10: the attention weights are sized by T
    "FastTextItout": ((), 12),
    "FastTextlifplusItout": ((), 12),
}


def sample_input(title: str, shape: tuple, T: int, batch: int = 2, seed: int = 2) -> torch.Tensor:
    """``[B, T, ...]``: random spikes, or token ids for the text models."""
    g = torch.Generator().manual_seed(seed)
    if title.startswith("FastText"):
        return torch.randint(0, TABLES[title]["backbone"]["vocab_size"], (batch, T), generator=g)
    return (torch.rand((batch, T) + shape, generator=g) < 0.3).float()


def reference_logits(title: str, sd: dict, x: torch.Tensor, cfg: dict, norm=None) -> torch.Tensor:
    if title.startswith("ResNet"):
        return resnet_forward(sd, x, cfg["depth"], cfg["cmode"], norm=norm, lite=cfg["type"] == "ResNetLifReluItout")
    if title == "AttentionVGGNet":
        return attention_vgg_forward(sd, x, cfg["cmode"])
    if title.startswith("FastText"):
        return fasttext_forward(sd, x, cfg["cmode"])
    return seq_forward(sd, x, cfg["type"], cfg["cmode"], cfg.get("fmode", "spike"))


def test_cases_cover_every_table():
    assert set(CASES) == set(TABLES)


@pytest.mark.parametrize("title", list(CASES))
def test_logits_are_bidls(title, tmp_path):
    """load_model(config, BIDL checkpoint)(x[B, T, ...]) equals BIDL's forward pass (tests/bidl_reference.py)."""
    shape, T = CASES[title]
    sd = bidl_state_dict(title, seed=1)
    torch.save(bidl_train_file(sd), tmp_path / "ck.pth")
    cfg = dict(our_config(title), timestep=T)
    net = load_model(dict(model=dict(backbone=cfg)), tmp_path / "ck.pth")
    x = sample_input(title, shape, T)
    with torch.no_grad():
        ours = net(x)
        ref = reference_logits(title, sd, x, cfg)
    assert ours.abs().sum() > 0 and ours.std() > 0
    # equal up to float rounding: we apply synapses to all steps of a chunk in one call (another conv /
    # matmul batch than BIDL's one step), and the ResNets accumulate fc per step where BIDL's GPU path
    # takes fc of the mean pooled features (a chip accumulates too)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("itout, it, same", [("SeqClif7Fc1DgItout", "SeqClif7Fc1DgIt", True),
                                             ("ResNetLifItout-50", "ResNetLif-50", True),
                                             ("SeqClif5Fc2CdItout", "SeqClif5Fc2CdIt", False),
                                             ("SeqClif7Fc1CdItout", "SeqClif7Fc1CdIt", False)])
def test_it_and_itout_modes_agree_where_bidls_do(itout, it, same, tmp_path):
    """On the same weights BIDL's It and itout nets give the same logits where only a linear head follows
    the time average (7Fc1 Dg: fc; ResNet: fc), not with a ReLU MLP head (5Fc2) or pools in other places (7Fc1 Cd)."""
    sd = bidl_state_dict(it, seed=4)
    shape, T = CASES[it]
    x = sample_input(it, shape, T)
    outs = []
    for title in (itout, it):
        own = sd if title == it else {k.replace(".module.", "."): v for k, v in sd.items()}  # ResNetLif's TimeDistributed
        torch.save(own, tmp_path / f"{title}.pth")
        net = load_model(dict(model=dict(backbone=dict(our_config(title), timestep=T))), tmp_path / f"{title}.pth")
        with torch.no_grad():
            outs.append(net(x))
    a, b = outs
    if same:
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    else:
        assert (a - b).abs().max() > 1e-3


def test_fasttext_tied_embedding_loads_with_and_without_the_copy(tmp_path):
    """BIDL's GPU-trained files hold embedding_fc.weight (the embedding's transpose), its CPU-trained ones
    drop it: both load strictly; a copy that is not the transpose is refused by name."""
    sd = bidl_state_dict("FastTextItout", seed=5)
    cfg = dict(model=dict(backbone=our_config("FastTextItout")))
    torch.save({k: v for k, v in sd.items() if k != "embedding_fc.weight"}, tmp_path / "cpu.pth")
    torch.save(bidl_train_file(sd), tmp_path / "gpu.pth")
    for f in ("cpu.pth", "gpu.pth"):
        net = load_model(cfg, tmp_path / f)
        assert torch.equal(net.state_dict()["embedding_fc.weight"], sd["embedding.weight"].t())
        assert net.embedding_fc.weight.data_ptr() == net.embedding.weight.data_ptr()   # tied, as BIDL's
    bad = dict(sd, **{"embedding_fc.weight": torch.zeros(16, 1001)})
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="embedding_fc.weight is not the transpose"):
        load_model(cfg, tmp_path / "bad.pth")
    tokens = torch.randint(0, 1001, (3, 7))
    with torch.no_grad():   # BIDL's test pipeline feeds one-hot rows (ToOneHot): the same logits
        one_hot = torch.nn.functional.one_hot(tokens, 1001).float()
        torch.testing.assert_close(net(tokens), net(one_hot), atol=1e-6, rtol=0)


def test_bidl_config_and_checkpoint_unchanged(tmp_path):
    """A BIDL user's own config file and GPU-trained checkpoint, through the shipped BIDL-named config."""
    sd = bidl_state_dict("SeqClif3Fc3DmItout", seed=3)
    torch.save(bidl_train_file(sd), tmp_path / "latest.pth")
    net = load_model("clif3fc3dm_itout-b16x1-dvsmnist", tmp_path / "latest.pth")
    x = (torch.rand(2, 20, 2, 40, 40) < 0.2).float()
    with torch.no_grad():
        torch.testing.assert_close(net(x), seq_forward(sd, x, "SeqClif3Fc3DmItout", "analog"), atol=1e-5, rtol=1e-5)


def test_jester_input_normalisation_is_bidls(tmp_path):
    cfg = load_config("resnetlif18-itout-b20x4-16-jester", ["model.backbone.timestep=2"])
    net = load_model(cfg)
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(1, 2, 3, 112, 112) * 255
    with torch.no_grad():
        ref = resnet_forward(sd, x, 18, "analog", norm=cfg.model.backbone.norm.to_dict())
        torch.testing.assert_close(net(x), ref, atol=1e-5, rtol=1e-5)


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (list(a), list(b))
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def bidl_file_with_optimizer(title="ResNetLifItout-18"):
    """A BIDL train.py checkpoint with a real SGD state (momentum buffers) and MultiStepLR state."""
    net = build_backbone(our_config(title))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[1, 3])
    for p in net.parameters():
        p.grad = torch.randn_like(p) if p.requires_grad else None
    opt.step()
    sched.step()
    sd = bidl_state_dict(title)
    return dict(state_dict={f"module.{k}": v for k, v in sd.items()}, optimizer_state_dict=opt.state_dict(),
                scheduler_stat_dict=sched.state_dict(), epoch=1, time="2024-05-01 12:00:00", iters=500, seed=3,
                config="resnetlif18-itout-b8x1-cifar10dvs")


def test_bidl_to_project_to_bidl_is_identity(tmp_path):
    for obj in (bidl_file_with_optimizer(), bidl_train_file(bidl_state_dict("SeqClif3Flif2DgItout"), prefix=""),
                bidl_state_dict("SeqClif3Fc3DmItout"), {f"module.{k}": v for k, v in
                                                        bidl_state_dict("SeqClif3Fc3DmItout").items()}):
        proj = to_project(obj)
        assert checkpoint_format(proj) == "project"
        assert all(k.startswith("backbone.") for k in proj["state_dict"])
        assert_same(to_bidl(proj), obj)
        # and through the CLI, files in between
        torch.save(obj, tmp_path / "bidl.pth")
        convert_main([str(tmp_path / "bidl.pth"), str(tmp_path / "proj.pth")])
        convert_main([str(tmp_path / "proj.pth"), str(tmp_path / "back.pth"), "--to", "bidl"])
        assert_same(torch.load(tmp_path / "back.pth", weights_only=True), obj)


def test_project_checkpoint_to_bidl(tmp_path):
    obj = bidl_file_with_optimizer()
    proj = to_project(obj)
    assert proj["epoch"] == 2 and proj["optimizer"] is obj["optimizer_state_dict"]  # BIDL's epoch is 0-based
    proj.pop("meta")  # as if trained here: no BIDL fields remembered
    proj["meta"] = dict(config_name="resnetlif18-itout-b8x1-cifar10dvs", iter=1000, seed=0, time="t")
    back = to_bidl(proj)
    assert list(back) == ["state_dict", "optimizer_state_dict", "scheduler_stat_dict", "epoch", "time", "iters",
                          "seed", "config"]
    assert back["epoch"] == 1 and back["iters"] == 1000 and back["config"] == "resnetlif18-itout-b8x1-cifar10dvs"
    assert not any(k.startswith(("module.", "backbone.")) for k in back["state_dict"])
    torch.save(back, tmp_path / "for_bidl.pth")
    net = load_model("resnetlif18-itout-b8x1-cifar10dvs", tmp_path / "for_bidl.pth")
    assert torch.equal(net.state_dict()["fc.weight"], obj["state_dict"]["module.fc.weight"])


def test_convert_checks_the_config(tmp_path, capsys):
    sd = bidl_state_dict("SeqClif3Fc3DmItout")
    torch.save(bidl_train_file(sd), tmp_path / "a.pth")
    res = convert_main([str(tmp_path / "a.pth"), str(tmp_path / "b.pth"), "--config",
                        "clif3fc3dm_itout-b16x1-dvsmnist"])
    assert res["target_format"] == "project" and res["tensors"] == 39
    assert torch.load(tmp_path / "b.pth", weights_only=True)["config"]["model"]["backbone"]["h"] == 40
    with pytest.raises(ValueError, match=r"missing keys: head\.4\.bias"):
        torch.save({k: v for k, v in sd.items() if k != "head.4.bias"}, tmp_path / "c.pth")
        convert_main([str(tmp_path / "c.pth"), str(tmp_path / "d.pth"), "--config", "clif3fc3dm_itout-b16x1-dvsmnist"])
    with pytest.raises(ValueError, match=r"norm_state=False has no counterpart in BIDL"):
        cfg_opts = ["--cfg-options", "model.backbone.norm_state=False"]
        net = load_model(load_config("clif3fc3dm_itout-b16x1-dvsmnist", cfg_opts[1:]))
        torch.save({"state_dict": net.state_dict()}, tmp_path / "e.pth")
        convert_main([str(tmp_path / "e.pth"), str(tmp_path / "f.pth"), "--to", "bidl", "--config",
                      "clif3fc3dm_itout-b16x1-dvsmnist", *cfg_opts])


def test_read_state_dict_strips_wrappers(tmp_path):
    sd = bidl_state_dict("SeqClif3Fc3DmItout")
    for obj in ({"state_dict": {f"module.backbone.{k}": v for k, v in sd.items()}},
                {"model": {f"backbone.{k}": v for k, v in sd.items()}}):
        torch.save(obj, tmp_path / "x.pth")
        assert list(read_state_dict(tmp_path / "x.pth")) == list(sd)
    torch.save({"state_dict": {"a.w": torch.zeros(1), "module.a.w": torch.zeros(1)}}, tmp_path / "y.pth")
    with pytest.raises(ValueError, match="two tensors map to 'a.w'"):
        read_state_dict(tmp_path / "y.pth")
