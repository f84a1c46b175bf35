"""Config files in the user guide's format: _base_, overrides, segments, bad input."""
import textwrap

import pytest
import torch

from bidl_models import build_backbone
from bidl_models.config import build_segments, load_config, validate_lynxi_devices

SHIPPED = ["clif3fc3dm_itout-b16x1-dvsmnist", "clif5fc2cd_itout-b64x1-cifar10dvs",
           "clif3flif2dg_itout-b16x1-dvsgesture", "resnetlif18-itout-b8x1-cifar10dvs",
           "resnetlif50-itout-b8x1-cifar10dvs", "resnetlif50-itout-b8x1-cifar10dvs_mp"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_build(name):
    cfg = load_config(name)
    segs = build_segments(cfg)
    assert segs[-1].is_last and segs[0].is_first
    for key in ("model", "data", "optimizer", "lr_config", "runner"):
        assert key in cfg, key
    assert cfg.name == name


def test_mp_config_two_segments_equal_whole_model():
    cfg = load_config("resnetlif50-itout-b8x1-cifar10dvs_mp", ["model_0.backbone.depth=18",
                                                              "model_1.backbone.depth=18",
                                                              "model_0.backbone.split=[0,3]",
                                                              "model_1.backbone.split=[3,8]",
                                                              "models_compile_inputshape=None"])
    segs = build_segments(cfg, model_in_shape=(2, 32, 32))
    assert [s.split for s in segs] == [(0, 3), (3, 8)]
    whole = build_backbone(dict(cfg.model.backbone, depth=18)).eval()
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


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


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
