"""BIDL's classification zoo: the 33 config files of BIDL 1.9, shipped in BIDL's tree
(``bidl_models/configs/<category>/<dataset>/<model>/``), each of which loads, builds at its own size and
runs a forward, and, shrunk (smaller frames, fewer steps), trains a step. Configs of one backbone class
differ only in sizes, so compiling for a 1x2 grid with verification runs once per backbone class (22),
and (slow) a grid run once per backbone family, bit-exact against the eager model, reusing the
compile tests' artifacts (one artifact root and one Ray cluster for the module). Attention over time
refuses time slices; token ids and It-mode models run through compile and the grid."""
from __future__ import annotations

import pytest
import torch

from bidl_models.classifier import build_classifier
from bidl_models.config import REPO_CONFIGS, backbone_config, find_config, load_config
from bidl_models.from_config import build_segments

# stem: (folder under bidl_models/configs, backbone type, T, per-step input (C, H, W) | 'tokens', classes, dataset)
ZOO = {
    "attentionVGG-it-b64x1-cifar10dvs": ("dvs/cifar10dvs/vgg_cifar10dvs/attentionVGG", "AttentionVGGNet", 10, (2, 128, 128), 10, "Cifar10Dvs"),
    "clif3fc3dm_itout-b16x1-dvsmnist": ("dvs/dvs_mnist/clif3fc3dm", "SeqClif3Fc3DmItout", 20, (2, 40, 40), 10, "DvsMnist"),
    "clif3fc3lc_itout-b16x1-luna16cls": ("three_D/luna16cls/clif3fc3lc", "SeqClif3Fc3LcItout", 8, (1, 32, 32), 2, "Luna16Cls32"),
    "clif3fc3mnpop_itout-b64x1-mnist": ("spikegen/clif3fc3mn", "SeqClif3Fc3DmItout", 10, (5, 28, 28), 10, "MNIST"),
    "clif3fc3mnrate_itout-b128x1-mnist": ("spikegen/clif3fc3mn", "SeqClif3Fc3DmItout", 20, (1, 28, 28), 10, "MNIST"),
    "clif3fc3mntime_itout-b128x1-mnist": ("spikegen/clif3fc3mn", "SeqClif3Fc3DmItout", 8, (1, 28, 28), 10, "MNIST"),
    "clif3flif2dg_itout-b16x1-dvsgesture": ("dvs/dvs_gesture/clif3flif2dg", "SeqClif3Flif2DgItout", 60, (2, 40, 40), 11, "DvsGesture"),
    "clif3flif2rg_itout-b16x1-rgbgesture": ("videodiff/rgbgesture/clif3flif2rg", "SeqClif3Flif2DgItout", 60, (2, 40, 40), 11, "RgbGesture"),
    "clif5fc2cd_it-b64x1-cifar10dvs": ("dvs/cifar10dvs/vgg_cifar10dvs/clif5fc2cd", "SeqClif5Fc2CdIt", 10, (2, 128, 128), 10, "Cifar10Dvs"),
    "clif5fc2cd_itout-b64x1-cifar10dvs": ("dvs/cifar10dvs/vgg_cifar10dvs/clif5fc2cd", "SeqClif5Fc2CdItout", 10, (2, 128, 128), 10, "Cifar10Dvs"),
    "clif5fc2dm_it-b16x1-dvsmnist": ("dvs/dvs_mnist/clif5fc2dm", "SeqClif5Fc2DmIt", 20, (2, 128, 128), 10, "DvsMnist"),
    "clif5fc2dm_itout-b16x1-dvsmnist": ("dvs/dvs_mnist/clif5fc2dm", "SeqClif5Fc2DmItout", 20, (2, 128, 128), 10, "DvsMnist"),
    "clif7fc1cd_it-b64x1-cifar10dvs": ("dvs/cifar10dvs/vgg_cifar10dvs/clif7fc1cd", "SeqClif7Fc1CdIt", 10, (2, 128, 128), 10, "Cifar10Dvs"),
    "clif7fc1cd_itout-b64x1-cifar10dvs": ("dvs/cifar10dvs/vgg_cifar10dvs/clif7fc1cd", "SeqClif7Fc1CdItout", 10, (2, 128, 128), 10, "Cifar10Dvs"),
    "clif7fc1dg_it-b16x1-dvsgesture": ("dvs/dvs_gesture/clif7fc1dg", "SeqClif7Fc1DgIt", 16, (2, 128, 128), 11, "DvsGesture"),
    "clif7fc1dg_itout-b16x1-dvsgesture": ("dvs/dvs_gesture/clif7fc1dg", "SeqClif7Fc1DgItout", 16, (2, 128, 128), 11, "DvsGesture"),
    "clifplus3fc3dm_itout-b16x1-dvsmnist": ("dvs/dvs_mnist/clif3fc3dm", "SeqClifplus3Fc3DmItout", 20, (2, 40, 40), 10, "DvsMnist"),
    "clifplus3fc3lc_itout-b16x1-luna16cls": ("three_D/luna16cls/clif3fc3lc", "SeqClifplus3Fc3LcItout", 8, (1, 32, 32), 2, "Luna16Cls32"),
    "clifplus3flifplus2dg_itout-b16x1-dvsgesture": ("dvs/dvs_gesture/clif3flif2dg", "SeqClifplus3Flifplus2DgItout", 60, (2, 40, 40), 11, "DvsGesture"),
    "clifplus3flifplus2rg_itout-b16x1-rgbgesture": ("videodiff/rgbgesture/clif3flif2rg", "SeqClifplus3Flifplus2DgItout", 60, (2, 40, 40), 11, "RgbGesture"),
    "clifplus5fc2cd_itout-b64x1-cifar10dvs": ("dvs/cifar10dvs/vgg_cifar10dvs/clif5fc2cd", "SeqClifplus5Fc2CdItout", 10, (2, 128, 128), 10, "Cifar10Dvs"),
    "fasttext-b16x1-imdb": ("text/imdb/fasttextIM", "FastTextItout", 500, "tokens", 1, "imdb"),
    "fasttextlifplus-b16x1-imdb": ("text/imdb/fasttextIM", "FastTextlifplusItout", 500, "tokens", 1, "imdb"),
    "resnetlif18-itout-b16x4-8-jester": ("video/jester/resnetlif18_t8", "ResNetLifItout", 8, (3, 224, 224), 27, "Jester20bn"),
    "resnetlif18-itout-b20x4-16-jester": ("video/jester/resnetlif18_t16", "ResNetLifItout", 16, (3, 112, 112), 27, "Jester20bn"),
    "resnetlif18-itout-b64x4-esimagenet": ("dvs/esimagenet/resnetlif18_esimagenet", "ResNetLifItout", 8, (2, 224, 224), 1000, "ESImagenet"),
    "resnetlif18-itout-b8x1-cifar10dvs": ("dvs/cifar10dvs/resnetlif18_cifar10dvs", "ResNetLifItout", 10, (2, 128, 128), 10, "Cifar10Dvs"),
    "resnetlif18-lite-itout-b20x4-16-jester": ("video/jester/resnetlif18_lite_t16", "ResNetLifReluItout", 16, (3, 112, 112), 27, "Jester20bn"),
    "resnetlif18-lite-itout-b8x1-cifar10dvs": ("dvs/cifar10dvs/resnetlif18_lite_cifar10dvs", "ResNetLifReluItout", 10, (2, 128, 128), 10, "Cifar10Dvs"),
    "resnetlif50-it-b16x1-cifar10dvs": ("dvs/cifar10dvs/resnetlif50_cifar10dvs", "ResNetLif", 10, (2, 128, 128), 10, "Cifar10Dvs"),
    "resnetlif50-itout-b8x1-cifar10dvs": ("dvs/cifar10dvs/resnetlif50_cifar10dvs", "ResNetLifItout", 10, (2, 128, 128), 10, "Cifar10Dvs"),
    "resnetlif50-itout-b8x1-cifar10dvs_mp": ("dvs/cifar10dvs/resnetlif50_cifar10dvs", "ResNetLifItout_MP", 10, (2, 128, 128), 10, "Cifar10Dvs"),
    "resnetlif50-lite-itout-b8x1-cifar10dvs": ("dvs/cifar10dvs/resnetlif50_lite_cifar10dvs", "ResNetLifReluItout", 10, (2, 128, 128), 10, "Cifar10Dvs"),
}
PROJECT_OWN = {"clif3fc3dm_itout-b16x1-dvsglyphs", "clif3fc3dm_itout-b16x1-dvsmnist_guide"}
WHOLE_SEQUENCE = {"attentionVGG-it-b64x1-cifar10dvs"}   # attention over time: grids of one time slice
T_SMALL = 2   # two steps: a 2-row grid still hands the state from row to row (export and load cost grow with T)
SMALL_HW = {  # the smallest frame each network family takes (its convolutions and poolings), for speed
    "SeqClif3Fc3": 16, "SeqClifplus3Fc3": 16, "SeqClif3Flif2": 16, "SeqClifplus3Flifplus2": 16,
    "SeqClif5Fc2": 64, "SeqClifplus5Fc2": 64, "SeqClif7Fc1": 128, "AttentionVGG": 64, "ResNet": 32,
}


def shrink(name: str, T: int = T_SMALL) -> list[str]:
    """Overrides that make config ``name`` small: ``T`` steps, the smallest frames, no data."""
    bb_type = ZOO[name][1]
    out = ["data=None"]
    if name.endswith("_mp"):
        return out + [f"model_{i}.backbone.timestep={T}" for i in (0, 1)] + [
            "models_compile_inputshape=[[1,2,32,32],[1,512,4,4]]"]
    out.append(f"model.backbone.timestep={T}")
    hw = next((v for k, v in SMALL_HW.items() if bb_type.startswith(k)), None)
    if hw is not None:
        out += [f"model.backbone.h={hw}", f"model.backbone.w={hw}"]
    return out


def sample(net, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """Model input ``[T, B, ...]``: token ids below the vocabulary size, or event-count frames."""
    g = torch.Generator().manual_seed(seed)
    if net.input_dtype == "int64":
        return torch.randint(0, net.input_high, (net.timestep, batch), generator=g)
    return (torch.rand((net.timestep, batch) + tuple(net.input_shape), generator=g) < 0.3).float()


def chain(segs, x):
    """The segments run one after the other on ``x`` (eval mode), the outputs of every step."""
    for s in segs:
        s.backbone.eval()
    with torch.no_grad():
        for s in segs:
            x, _ = s.run(x)
    return x


# ------------------------------------------------------------------------------ the tree


def test_the_33_configs_are_shipped_in_bidls_tree():
    found = {p.stem: p for p in REPO_CONFIGS.rglob("*.py") if "_base_" not in p.parts}
    assert len(ZOO) == 33 and set(found) == set(ZOO) | PROJECT_OWN
    for name, (folder, *_) in ZOO.items():
        path = found[name]
        assert path.parent == REPO_CONFIGS / folder, name
        assert find_config(name) == path
        text = path.read_text()
        assert "_base_" not in text and "c0=" not in text, name   # BIDL's files: self-contained, its dialect


# ------------------------------------------------------------------------------ each config at its size


@pytest.mark.parametrize("name", sorted(ZOO))
def test_config_loads_builds_and_runs_a_forward(name):
    folder, bb_type, T, shape, nclass, dataset = ZOO[name]
    cfg = load_config(name)
    assert cfg.dataset_type == dataset and all(cfg.data[s]["type"] == dataset for s in ("train", "val", "test"))
    for key in ("optimizer", "lr_config", "runner", "checkpoint_config", "log_config", "fp16", "workflow"):
        assert key in cfg, key
    bb = backbone_config(cfg)
    assert bb["type"] == bb_type and bb["timestep"] == T
    segs = build_segments(cfg)
    net = segs[0].backbone
    assert net.timestep == T
    if shape == "tokens":
        assert net.input_shape == () and net.input_dtype == "int64" and net.input_high == bb["vocab_size"] == 1001
    else:
        assert net.input_shape in (shape, None) and net.input_dtype == "float32"
        if net.input_shape is None:                        # the _mp file: the shape is models_compile_inputshape's
            net.input_shape = tuple(cfg.models_compile_inputshape[0][1:])
    x = sample(net)
    y = chain(segs, x)
    assert y.shape == (T, 1, nclass) and torch.isfinite(y).all()
    assert (len(segs) == 2) == name.endswith("_mp")


# ------------------------------------------------------------------------------ shrunk: train, compile


@pytest.mark.parametrize("name", sorted(ZOO))
def test_shrunk_config_trains_a_step(name):
    """One optimizer step of the config's classifier (its loss) on generated data of its shape."""
    cfg = load_config(name, shrink(name))
    clf = build_classifier(dict(cfg.get("model", cfg.get("model_0")).to_dict(), backbone=backbone_config(cfg)))
    net = clf.backbone
    if net.input_shape is None:
        net.input_shape = tuple(cfg.models_compile_inputshape[0][1:])
    x = sample(net, batch=4, seed=1).transpose(0, 1)                    # BIDL's [B, T, ...]
    labels = torch.tensor([0, 1, 1, 0]) % max(ZOO[name][4], 2)
    clf.train()
    opt = torch.optim.SGD(clf.parameters(), lr=0.01)
    before = {k: v.detach().clone() for k, v in clf.named_parameters() if v.requires_grad}
    losses = clf.forward_train(x, labels)
    loss = sum(v for k, v in losses.items() if "loss" in k)
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    opt.step()
    changed = [k for k, v in clf.named_parameters() if v.requires_grad and not torch.equal(v, before[k])]
    assert len(changed) >= len(before) // 2, (len(changed), len(before))


def heavy_to_compile(name: str) -> bool:
    """ResNets, the 7-conv nets and the LIF+ 5-conv net: 1-3 minutes of compile each on a busy 2-core machine."""
    bb_type = ZOO[name][1]
    return bb_type.startswith(("ResNet", "SeqClif7", "SeqClifplus5"))


def one_per_class() -> list[str]:
    """The first config (by name) of each distinct backbone class: 22 of the 33."""
    first: dict[str, str] = {}
    for name in sorted(ZOO):
        first.setdefault(ZOO[name][1], name)
    return sorted(first.values())


# one config per backbone family on a 1x2 grid (each also compiled above, so its artifacts are reused);
# SeqClif7Fc1 (It), FastText (both) and AttentionVGG run on larger grids below, ResNetLif (It) too.
GRID_1X2 = ["clif3fc3dm_itout-b16x1-dvsmnist", "clif3flif2dg_itout-b16x1-dvsgesture",
            "clif5fc2cd_itout-b64x1-cifar10dvs", "clifplus3fc3dm_itout-b16x1-dvsmnist",
            "clifplus3flifplus2dg_itout-b16x1-dvsgesture", "clifplus5fc2cd_itout-b64x1-cifar10dvs",
            "resnetlif18-itout-b16x4-8-jester", "resnetlif50-itout-b8x1-cifar10dvs_mp"]


@pytest.fixture(scope="module")
def zoo_root(tmp_path_factory):
    """One artifact root for the module: the grid tests reuse what the compile tests built."""
    return tmp_path_factory.mktemp("zoo-artifacts")


def compile_1x2(name: str, root):
    """The shrunk config compiled for a 1x2 grid under ``root`` (where :func:`bidl_runtime.api.stream`
    finds it: compile and the runtime key the same directory)."""
    from compile import compile_config
    cfg = load_config(name, shrink(name))
    return cfg, compile_config(cfg, grid="1x2", out=root, progress=False, verbose=False)


def test_the_representatives_cover_every_class_and_family():
    reps = one_per_class()
    assert len(reps) == len({ZOO[n][1] for n in ZOO}) == 22
    assert {ZOO[n][1] for n in reps} == {ZOO[n][1] for n in ZOO}
    assert set(GRID_1X2) <= set(reps)                  # the grid runs reuse compiled artifacts
    families = {k for n in ZOO for k in SMALL_HW if ZOO[n][1].startswith(k)} | {"FastText"}
    on_grids = set(GRID_1X2) | {n for n, _ in LARGER_GRIDS}
    assert {k for n in on_grids for k in (*SMALL_HW, "FastText") if ZOO[n][1].startswith(k)} == families


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if heavy_to_compile(n) else n
                                  for n in one_per_class()])
def test_shrunk_config_compiles_for_a_1x2_grid(name, zoo_root):
    """compile (1 time slice x 2 segments, each artifact verified against its eager segment inside),
    and the two artifacts chained equal the eager model bit for bit."""
    cfg, arts = compile_1x2(name, zoo_root)
    assert (arts.rows, arts.n_segments) == (1, 2) and arts.T == T_SMALL
    segs = build_segments(cfg)
    net = segs[0].backbone
    assert arts.input_dtype == net.input_dtype and arts.in_shape == tuple(net.input_shape or arts.in_shape)
    if net.input_shape is None:
        net.input_shape = arts.in_shape
    x = sample(net, batch=1, seed=2)
    whole = chain(segs, x)
    h = x
    with torch.inference_mode():
        for s in range(2):
            art = arts.load(s, T_SMALL)
            h, _ = art.run(h, art.fresh_state(1))
    assert torch.equal(h, whole), (h - whole).abs().max()


# ------------------------------------------------------------------------------ attention over time


@pytest.mark.slow   # 13-27 s on 2 cores
def test_attention_config_refuses_time_slices_naming_the_layer(tmp_path, capsys):
    """AttentionVGGNet weighs every step by all T steps: plan, compile and run refuse a grid that cuts
    time into slices (naming the layer and what is allowed) rather than compute something else;
    one time slice and any number of segments is fine."""
    from bidl_runtime.plan.emulated import emulate
    from conftest import make_plan
    from bidl_runtime.run import main as run_main
    from compile import compile_config
    name = "attentionVGG-it-b64x1-cifar10dvs"
    cfg = load_config(name, shrink(name, T=4))
    why = (r"AttentionVGGNet: layer 'twa1' \(TemporalWiseAttention, segment 0\) attends over all T=4 steps at "
           r"once, so the grid cannot cut time into 2 slices: grid 2x\d is not allowed; allowed: 1xC")
    with pytest.raises(ValueError, match=why):
        make_plan(cfg, "2x1")
    with pytest.raises(ValueError, match=why.replace("2x\\d", "2x2")):
        compile_config(cfg, grid="2x2", out=tmp_path, progress=False, verbose=False)
    assert not any(tmp_path.iterdir())                                  # nothing built
    from bidl_models.model_spec import ModelSpec
    with pytest.raises(ValueError, match=r"cannot cut time into 4 slices"):
        emulate(ModelSpec.from_config(cfg, columns=3), [1, 1, 1, 1])
    plan = make_plan(cfg, "1x3")
    assert plan.slices == (4,) and plan.cols == 3
    assert run_main(["--config", name, "--grid", "2x2", "--cfg-options", *shrink(name, T=4)]) == 2
    err = capsys.readouterr().err
    assert "error: AttentionVGGNet: layer 'twa1'" in err and "grid 2x2 is not allowed" in err


# ------------------------------------------------------------------------------ token ids through compile


def write_imdb(root, n=3, L=T_SMALL, vocab=1001, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (n, L)).astype(np.int32)
    np.save(root / "test.npy", tokens)
    np.save(root / "test_label.npy", np.arange(n) % 2)
    return tokens


def imdb_overrides(root):
    return [f"data.test.data_prefix={root / 'test.npy'}", f"data.test.ann_file={root / 'test_label.npy'}",
            f"model.backbone.timestep={T_SMALL}"]


def test_token_model_artifacts_take_int64_ids(tmp_path):
    """FastText compiles with an int64 [T, B] input ABI, verified on the config's first test review
    (BIDL's one-hot test pipeline turned back into ids), and refuses float input."""
    from compile import compile_config
    tokens = write_imdb(tmp_path)
    cfg = load_config("fasttext-b16x1-imdb", imdb_overrides(tmp_path))
    arts = compile_config(cfg, grid="1x2", out=tmp_path / "a", progress=False, verbose=False)
    assert arts.input_dtype == "int64" and arts.in_shape == ()
    man = arts.record(0, T_SMALL).manifest
    assert man.input_dtype == "int64" and list(man.input.shape) == [1]
    assert "random" not in man.verify.input and man.verify.worst <= 1e-5, man.verify.input
    art = arts.load(0, T_SMALL)
    with pytest.raises(ValueError, match="input x has dtype float32, expected int64"):
        art.run(torch.zeros(T_SMALL, 1), art.fresh_state(1))
    net = build_segments(cfg)[0].backbone.eval()
    x = torch.from_numpy(tokens[0]).long()[:, None]
    h = x
    with torch.inference_mode():
        for s in range(2):
            a = arts.load(s, T_SMALL)
            h, _ = a.run(h, a.fresh_state(1))
        assert torch.equal(h[-1], net(x.t()))                         # the last step's logit = BIDL's output


def test_runtime_samples_of_a_token_model():
    """The grid's admission check and sample sources for token ids."""
    from bidl_models.datasets.synthetic import synthetic_samples
    from bidl_runtime.driver.samples import check_sample
    ids = torch.tensor([3, 0, 1000, 7])
    assert check_sample(ids, [4], torch.int64) is None
    assert check_sample(ids.float(), [4], torch.int64) == "dtype float32, expected integer token ids (int64)"
    assert check_sample(torch.tensor([1, -2, 3, 4]), [4], torch.int64) == "negative token id -2"
    assert check_sample(ids[:3], [4], torch.int64) == "shape [3], expected [4] ([T])"
    xs = list(synthetic_samples(6, (), 5, seed=1, dtype=torch.int64, high=1001))
    assert all(x.shape == (6,) and x.dtype == torch.int64 and 0 <= int(x.min()) and int(x.max()) < 1001 for x in xs)
    assert not torch.equal(xs[0], xs[1])
    assert all(torch.equal(a, b) for a, b in zip(xs, synthetic_samples(6, (), 5, seed=1, dtype=torch.int64,
                                                                         high=1001)))


def test_runtime_reads_a_token_config_test_split(tmp_path):
    """dataset_samples of the imdb config: BIDL's one-hot test pipeline comes back as the int64 ids."""
    from bidl_runtime.driver.samples import dataset_samples
    tokens = write_imdb(tmp_path, n=3)
    cfg = load_config("fasttext-b16x1-imdb", imdb_overrides(tmp_path))
    got = list(dataset_samples(cfg, 3, torch.int64))
    assert [int(lab) for _, lab in got] == [0, 1, 0]
    for (x, _), want in zip(got, tokens):
        assert x.dtype == torch.int64 and x.tolist() == want.tolist()


# ------------------------------------------------------------------------------ on the grid (Ray)


def stream_outputs(cfg, xs, grid, root):
    from bidl_runtime.api import stream
    from bidl_runtime.runtime_config import RuntimeConfig
    report = stream(cfg, [(x, 0) for x in xs], grid=grid, rcfg=RuntimeConfig(metrics=False),
                    artifacts=root, verify=True)
    assert report.verify == {"equal": len(xs), "compared": len(xs), "max_abs_diff": 0.0}, report.verify
    return torch.cat([report.outputs[i] for i in range(len(xs))])


@pytest.mark.slow
@pytest.mark.parametrize("name", GRID_1X2)
def test_shrunk_config_on_a_1x2_grid_equals_the_eager_model(name, ray_local, zoo_root):
    cfg, _ = compile_1x2(name, zoo_root)         # built by the compile test (in this run): reused
    segs = build_segments(cfg)
    net = segs[0].backbone
    if net.input_shape is None:
        net.input_shape = tuple(cfg.models_compile_inputshape[0][1:])
    xs = [sample(net, seed=s)[:, 0] for s in range(2)]
    got = stream_outputs(cfg, xs, "1x2", zoo_root)
    want = torch.cat([chain(segs, x[:, None])[-1] for x in xs])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)      # artifacts vs eager: torch.export's kernels


LARGER_GRIDS = [("fasttext-b16x1-imdb", "2x2"), ("fasttextlifplus-b16x1-imdb", "2x1"),
                ("clif7fc1dg_it-b16x1-dvsgesture", "2x2"), ("resnetlif50-it-b16x1-cifar10dvs", "2x2"),
                ("attentionVGG-it-b64x1-cifar10dvs", "1x3")]


@pytest.mark.slow
@pytest.mark.parametrize("name,grid", LARGER_GRIDS)
def test_token_it_and_attention_models_on_larger_grids(name, grid, ray_local, zoo_root):
    """Token ids and It-mode models across time slices (the state handed from row to row); the
    attention model across three segments of one time slice."""
    cfg = load_config(name, shrink(name))
    net = build_segments(cfg)[0].backbone.eval()
    xs = [sample(net, seed=s)[:, 0] for s in range(3)]
    got = stream_outputs(cfg, xs, grid, zoo_root)
    with torch.no_grad():
        want = torch.cat([net(x[None]) for x in xs])                  # BIDL's forward [B, T, ...]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got.std() > 0 or net.input_dtype == "int64"
