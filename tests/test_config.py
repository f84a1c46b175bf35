"""Config files in both of BIDL's dialects: lookup, substitutions, normalisation, _base_, overrides,
segments, bad input."""
import textwrap

import pytest
import torch

from bidl_models import build_backbone, load_model
from bidl_models.classifier import build_classifier
from bidl_models.config import backbone_config, find_config, load_config
from bidl_models.from_config import build_segments
from bidl_models.slicing import validate_lynxi_devices

# configs named like BIDL's files (BIDL's content), then the project's own
BIDL_NAMED = ["clif3fc3dm_itout-b16x1-dvsmnist", "clif5fc2cd_itout-b64x1-cifar10dvs",
              "clif7fc1cd_itout-b64x1-cifar10dvs", "clif3flif2dg_itout-b16x1-dvsgesture",
              "clif7fc1dg_itout-b16x1-dvsgesture", "resnetlif18-itout-b8x1-cifar10dvs",
              "resnetlif50-itout-b8x1-cifar10dvs", "resnetlif50-itout-b8x1-cifar10dvs_mp",
              "resnetlif18-itout-b20x4-16-jester"]
SHIPPED = BIDL_NAMED + ["clif3fc3dm_itout-b16x1-dvsmnist_guide", "clif3fc3dm_itout-b16x1-dvsglyphs"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_build(name):
    cfg = load_config(name)
    segs = build_segments(cfg)
    assert segs[-1].is_last and segs[0].is_first
    for key in ("data", "optimizer", "lr_config", "runner"):
        assert key in cfg, key
    assert "model" in cfg or "model_0" in cfg
    assert cfg.name == name
    for split in ("train", "val", "test"):
        assert cfg.data[split]["type"] == cfg.dataset_type  # filled from dataset_type when absent
    # BIDL's keys it ignores are accepted: neck=None, head.cal_acc, runner.type, ...
    for key in [k for k in cfg if k == "model" or k.startswith("model_")]:
        clf = build_classifier(dict(cfg[key].to_dict(), backbone=backbone_config(cfg)))
        assert clf.head.cal_acc


@pytest.mark.parametrize("name", BIDL_NAMED)
def test_bidl_named_configs_are_in_bidls_dialect(name):
    """BIDL's files: self-contained, input_channels/h/w, a torch scheduler (or the _mp file's mix)."""
    path = find_config(name)
    text = path.read_text()
    assert "_base_" not in text and "c0=" not in text
    cfg = load_config(name)
    assert cfg.lr_config.policy in ("MultiStepLR", "CosineAnnealingLR", "CosineAnnealing")
    for key in ("checkpoint_config", "log_config", "dist_params", "workflow", "fp16", "load_from", "resume_from"):
        assert key in cfg, key


def test_both_dialects_build_identical_models():
    guide, repo = load_config("clif3fc3dm_itout-b16x1-dvsmnist_guide"), load_config("clif3fc3dm_itout-b16x1-dvsmnist")
    assert "c0" in guide.model.backbone and "input_channels" in repo.model.backbone
    a, b = load_model(guide), load_model(repo)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = (torch.rand(2, 20, 2, 40, 40) < 0.3).float()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("bb", [
    dict(type="SeqClif3Fc3DmItout", nclass=5), dict(type="SeqClif5Fc2CdItout"),
    dict(type="SeqClif3Flif2DgItout", fmode="analog"), dict(type="SeqClif7Fc1CdItout", nclass=10),
    dict(type="ResNetLifItout", depth=10, nclass=4),
])
def test_guide_keys_equal_repository_keys_for_every_backbone(bb):
    guide = build_backbone(dict(bb, c0=3, h0=128, w0=128))
    repo = build_backbone(dict(bb, input_channels=3, h=128, w=128))
    assert guide.input_shape == repo.input_shape == (3, 128, 128)
    sa, sb = guide.state_dict(), repo.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_both_spellings_disagreeing_is_named():
    with pytest.raises(ValueError, match=r"model.backbone: c0=2 and input_channels=3 name the same setting"):
        build_backbone(dict(type="SeqClif3Fc3DmItout", c0=2, input_channels=3))


def write(tmp_path, name, text):
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))
    return p


def test_file_placeholders_are_substituted(tmp_path):
    p = write(tmp_path, "sub/my-cfg.py", """
        data = dict(data_root='{{ fileDirname }}/../data', name='{{fileBasenameNoExtension}}',
                    file='{{ fileBasename }}', ext='{{fileExtname}}')
    """)
    cfg = load_config(p)
    assert cfg.data.data_root == (tmp_path / "sub").resolve().as_posix() + "/../data"
    assert (cfg.data["name"], cfg.data.file, cfg.data.ext) == ("my-cfg", "my-cfg.py", ".py")


BIDL_TREE_CFG = """
model = dict(type='ImageClassifier', neck=None,
             backbone=dict(type='SeqClif3Fc3DmItout', timestep=4, input_channels=2, h=16, w=16, nclass=3),
             head=dict(type='ClsHead', loss=dict(type='CrossEntropyLoss', loss_weight=1.0), topk=(1,), cal_acc=True))
"""


def test_bare_stem_found_in_a_bidl_tree(tmp_path, monkeypatch):
    tree = tmp_path / "BIDL"
    path = write(tree, "applications/classification/dvs/dvs_mnist/clif3fc3dm/my-net_itout-b2x1-dvsmnist.py",
                 BIDL_TREE_CFG)
    with pytest.raises(FileNotFoundError, match=r"no my-net_itout-b2x1-dvsmnist.py under .*BIDL_CONFIG_ROOT"):
        load_config("my-net_itout-b2x1-dvsmnist")
    cfg = load_config("my-net_itout-b2x1-dvsmnist", config_root=tree)
    assert cfg.filename == str(path.resolve()) and cfg.name == "my-net_itout-b2x1-dvsmnist"
    monkeypatch.setenv("BIDL_CONFIG_ROOT", str(tree))
    assert load_config("my-net_itout-b2x1-dvsmnist").filename == str(path.resolve())
    write(tree, "applications/classification/other/my-net_itout-b2x1-dvsmnist.py", BIDL_TREE_CFG)
    with pytest.raises(ValueError, match="ambiguous"):
        load_config("my-net_itout-b2x1-dvsmnist")


DVSMNIST = "clif3fc3dm_itout-b16x1-dvsmnist"


def test_a_bidl_checkout_is_searched_first_as_bidls_tools_do(tmp_path, monkeypatch):
    """In a BIDL checkout (or its tools/), a bare stem is BIDL's file under ./applications/classification/,
    not the shipped copy of the same name (an edited timestep=30 stays 30); the note names both."""
    from bidl_models.config import REPO_CONFIGS, describe_source, locate_config, shipped_config
    shipped = shipped_config(DVSMNIST)
    assert shipped.is_relative_to(REPO_CONFIGS)
    edited = shipped.read_text().replace("timestep=20", "timestep=30")
    assert edited != shipped.read_text()
    mine = write(tmp_path, f"applications/classification/dvs/dvs_mnist/clif3fc3dm/{DVSMNIST}.py", edited)
    (tmp_path / "tools").mkdir()
    for cwd in (tmp_path, tmp_path / "tools"):
        monkeypatch.chdir(cwd)
        cfg = load_config(DVSMNIST)
        assert cfg.model.backbone.timestep == 30 and cfg.filename == str(mine.resolve())
        assert cfg.found.shadowed == (shipped,)
        line, note = describe_source(cfg).splitlines()
        assert line == f"config: {mine.resolve()} (a Python file: it ran when loaded)"
        assert note.startswith(f"config {DVSMNIST!r}: ") and f"won over {shipped}" in note
    # a command's built-in default is the shipped file, whatever the working directory holds
    assert shipped_config(DVSMNIST) == shipped
    assert load_config(DVSMNIST, shipped_only=True).model.backbone.timestep == 20
    assert locate_config(str(mine), shipped_only=True).path == shipped      # a path is not taken either


def test_lookup_order_after_the_checkout(tmp_path, monkeypatch):
    """--config-root, then $BIDL_CONFIG_ROOT, then ./configs, then the shipped configs; the first wins."""
    from bidl_models.config import config_roots
    monkeypatch.chdir(tmp_path)
    a = write(tmp_path / "root_a", "x/tiny-order.py", BIDL_TREE_CFG)
    b = write(tmp_path / "root_b", "tiny-order.py", BIDL_TREE_CFG.replace("nclass=3", "nclass=4"))
    c = write(tmp_path / "configs", "tiny-order.py", BIDL_TREE_CFG.replace("nclass=3", "nclass=5"))
    monkeypatch.setenv("BIDL_CONFIG_ROOT", str(tmp_path / "root_b"))
    roots = config_roots(tmp_path / "root_a")
    assert roots[0] == tmp_path / "applications" / "classification" and roots[1:4] == [
        tmp_path / "root_a", tmp_path / "root_b", tmp_path / "configs"]
    cfg = load_config("tiny-order", config_root=tmp_path / "root_a")
    assert cfg.filename == str(a.resolve()) and cfg.found.shadowed == (b, c)
    assert load_config("tiny-order").model.backbone.nclass == 4
    monkeypatch.delenv("BIDL_CONFIG_ROOT")
    assert load_config("tiny-order").model.backbone.nclass == 5 and load_config("tiny-order").found.note is None


def test_config_root_on_the_command_line(tmp_path, capsys):
    from bidl_models import convert_checkpoint
    tree = tmp_path / "BIDL"
    write(tree, "applications/classification/x/y/z/tiny-cfg.py", BIDL_TREE_CFG)
    net = load_model(load_config("tiny-cfg", config_root=tree))
    torch.save({"state_dict": net.state_dict()}, tmp_path / "w.pth")
    convert_checkpoint.run([str(tmp_path / "w.pth"), str(tmp_path / "o.pth"), "--config", "tiny-cfg",
                             "--config-root", str(tree)])
    assert "checked against tiny-cfg" in capsys.readouterr().out


def test_lifplus_configs_use_bidls_lifplus_unless_told(tmp_path):
    text = BIDL_TREE_CFG.replace("nclass=3", "nclass=3, neuron='lifplus', neuron_config=[1, False, 0, 0, 0, 0]")
    cfg = load_config(write(tmp_path, "lp.py", text))
    assert cfg.model.backbone.lifplus_form == "bidl"
    net = load_model(cfg)
    assert "clif1.lifplus.epsilon" in net.state_dict() and "clif1.lifplus.tau_recip" in net.state_dict()
    cfg = load_config(write(tmp_path, "lp.py", text), ["model.backbone.lifplus_form=documented"])
    assert cfg.model.backbone.lifplus_form == "documented"
    assert "clif1.lifplus.dt_tau" in load_model(cfg).state_dict()


def test_mp_config_two_segments_equal_whole_model():
    cfg = load_config("resnetlif50-itout-b8x1-cifar10dvs_mp", ["model_0.backbone.depth=18",
                                                              "model_1.backbone.depth=18",
                                                              "model_0.backbone.split=[0,3]",
                                                              "model_1.backbone.split=[3,8]",
                                                              "models_compile_inputshape=None"])
    segs = build_segments(cfg, model_in_shape=(2, 32, 32))
    assert [s.split for s in segs] == [(0, 3), (3, 8)]
    whole = build_backbone(backbone_config(cfg)).eval()
    x = (torch.rand(10, 1, 2, 32, 32) < 0.3).float()
    with torch.no_grad():
        h, _ = segs[0].eval().run(x)
        y, _ = segs[1].eval().run(h)
        ref, _ = whole.run(x)
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=0)


def test_mp_config_matches_published_inputshape():
    cfg = load_config("resnetlif50-itout-b8x1-cifar10dvs_mp")
    assert cfg.lynxi_devices == [[0, 1]]
    segs = build_segments(cfg)
    assert segs[1].input_shape((2, 128, 128)) == (512, 16, 16)


def test_base_inheritance_delete_and_overrides(tmp_path):
    write(tmp_path, "base.py", """
        model = dict(type='ImageClassifier', backbone=dict(type='SeqClif3Fc3DmItout', timestep=20, nclass=10))
        optimizer = dict(type='SGD', lr=0.1, momentum=0.9)
        runner = dict(max_epochs=40)
    """)
    child = write(tmp_path, "child.py", """
        _base_ = 'base.py'
        model = dict(backbone=dict(timestep=8))
        optimizer = dict(_delete_=True, type='Adam', lr=1e-3)
        import math
        extra = math.pi > 3
    """)
    cfg = load_config(child, ["runner.max_epochs=3", "model.backbone.cmode=analog",
                              "data.samples_per_gpu=4", "optimizer.betas=[0.9, 0.99]"])
    assert cfg.model.backbone.timestep == 8 and cfg.model.backbone.nclass == 10
    assert cfg.optimizer == {"type": "Adam", "lr": 1e-3, "betas": [0.9, 0.99]}
    assert cfg.runner.max_epochs == 3 and cfg.data.samples_per_gpu == 4
    assert cfg.model.backbone.cmode == "analog" and cfg.extra is True
    assert "math" not in cfg
    assert cfg.sha256() != load_config(child).sha256()


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match="no-such-config"):
        load_config("no-such-config")


def test_unparsable_config(tmp_path):
    p = write(tmp_path, "bad.py", "model = dict(type='X',\n")
    with pytest.raises(ValueError, match="does not parse: line"):
        load_config(p)


def test_missing_base(tmp_path):
    p = write(tmp_path, "c.py", "_base_ = ['nope.py']\n")
    with pytest.raises(FileNotFoundError, match="nope.py"):
        load_config(p)


def test_bad_override():
    with pytest.raises(ValueError, match="key.sub=value"):
        load_config(SHIPPED[0], ["runner.max_epochs"])
    with pytest.raises(ValueError, match="not a dict"):
        load_config(SHIPPED[0], ["runner.max_epochs.x=1"])


def test_unknown_backbone_type():
    with pytest.raises(ValueError, match=r"model.backbone.type='SeqClif9'.*expected one of"):
        build_backbone(dict(type="SeqClif9"))


def test_wrong_backbone_kwargs():
    with pytest.raises(ValueError, match=r"unexpected key\(s\) \['depht'\]; accepted keys"):
        build_backbone(dict(type="ResNetLifItout", depht=18, nclass=10))
    with pytest.raises(ValueError, match=r"missing required key\(s\) \['depth'\]"):
        build_backbone(dict(type="ResNetLifItout", nclass=10))
    with pytest.raises(ValueError, match="depth=19"):
        build_backbone(dict(type="ResNetLifItout", depth=19, nclass=10))
    with pytest.raises(ValueError, match="amode='max'"):
        build_backbone(dict(type="SeqClif3Fc3DmItout", amode="max"))
    with pytest.raises(ValueError, match="neuron_config"):
        build_backbone(dict(type="SeqClif3Fc3DmItout", neuron_config=[0, 0, 0, 0, 0, 0]))


def test_split_key_in_backbone_config():
    seg = build_backbone(dict(type="ResNetLifItout_MP", depth=18, nclass=10, input_channels=2, split=[2, 8]))
    assert seg.split == (2, 8) and seg.is_last
    with pytest.raises(ValueError, match=r"model.backbone.split=\[6, 20\]: out of range"):
        build_backbone(dict(type="ResNetLifItout", depth=18, nclass=10, split=[6, 20]))


def test_segment_configs_that_do_not_chain():
    cfg = load_config("resnetlif50-itout-b8x1-cifar10dvs_mp", ["models_compile_inputshape.1=[1,256,16,16]"])
    with pytest.raises(ValueError, match=r"models_compile_inputshape\[1\]"):
        build_segments(cfg)
    cfg = load_config("resnetlif50-itout-b8x1-cifar10dvs_mp", ["model_1.backbone.split=[5,16]"])
    with pytest.raises(ValueError, match="overlap"):
        build_segments(cfg)
    cfg = load_config("resnetlif50-itout-b8x1-cifar10dvs_mp", ["model_1.backbone.depth=101"])
    with pytest.raises(ValueError, match="blocks"):
        build_segments(cfg)


@pytest.mark.parametrize("devices, match", [
    ([[0, 1], [2]], "ragged"),
    ([], "non-empty"),
    ([[0, 1], [1, 2]], "more than once"),
    ([[0, "a"]], "int device ids"),
    ([[]], "non-empty list of device ids"),
])
def test_bad_lynxi_devices(devices, match):
    with pytest.raises(ValueError, match=match):
        validate_lynxi_devices(devices)


def test_lynxi_devices_grid_shape():
    assert validate_lynxi_devices([[0, 1], [2, 3], [4, 5]]) == [[0, 1], [2, 3], [4, 5]]


def test_an_override_in_either_dialect_sets_the_configs_key():
    repo = load_config("clif3fc3dm_itout-b16x1-dvsmnist", ["model.backbone.h0=16", "model.backbone.c0=3"])
    assert repo.model.backbone.h == 16 and repo.model.backbone.input_channels == 3 and "h0" not in repo.model.backbone
    guide = load_config("clif3fc3dm_itout-b16x1-dvsmnist_guide", ["model.backbone.w=24"])
    assert guide.model.backbone.w0 == 24 and "w" not in guide.model.backbone
