"""ModelSpec: a config resolved once (T, input shape and dtype, segments and splits, weights), no Ray."""
import pytest
import torch

from bidl_models.checkpoint import file_sha256, read_state_dict, state_dict_sha256
from bidl_models.config import load_config
from bidl_models.model_spec import ModelSpec, model_sha256
from conftest import TINY, active_net, tiny_dvsmnist, write_config


def test_resolves_everything_once_from_a_config():
    cfg = tiny_dvsmnist(10)
    spec = ModelSpec.from_config(cfg, columns=2)
    assert (spec.name, spec.T, spec.in_shape, spec.input_dtype) == (cfg.name, 10, (2, 16, 16), "float32")
    assert spec.n_segments == 2 and spec.splits[0][0] == 0 and spec.splits[-1][1] == spec.n_blocks == 6
    assert spec.split_source == "auto split (flops)" and spec.backbone == "SeqClif3Fc3DmItout"
    assert spec.weights_sha256 == "seeded:0" and spec.model_sha256 == model_sha256(cfg)
    assert [s.split for s in spec.segments] == list(spec.splits)
    assert spec.io[0].input.shape == (1, 2, 16, 16) and spec.io[1].input.shape == spec.io[0].output.shape
    assert spec.io_specs(3)[1].state[0].shape[0] == 3
    assert not any(m.training for s in spec.segments for m in s.modules())
    whole = ModelSpec.from_config(cfg)
    assert whole.splits == ((0, 6),) and whole.split_source == "whole model"
    given = ModelSpec.from_config(cfg, splits=[[0, 3], [3, 6]])
    assert given.splits == ((0, 3), (3, 6)) and given.split_source == "given"
    assert len({spec.key, whole.key, given.key}) == 3


def test_segments_equal_the_whole_model():
    spec = ModelSpec.from_config(tiny_dvsmnist(4), columns=3)
    x = (torch.rand((4, 1, 2, 16, 16), generator=torch.Generator().manual_seed(0)) < 0.3).float()
    h = x
    with torch.no_grad():
        for seg in spec.segments:
            h, _ = seg.run(h)
        ref, _ = spec.segments[0].backbone.run(x)
    torch.testing.assert_close(h, ref, rtol=1e-5, atol=1e-6)


def test_config_segments_and_weights(tmp_path):
    cfg = load_config("resnetlif50-itout-b8x1-cifar10dvs_mp")
    spec = ModelSpec.from_config(cfg, columns=2)
    assert spec.splits == ((0, 6), (6, 16)) and spec.split_source == "config model_0..n"
    assert spec.in_shape == (2, 128, 128)
    backbone, inshape = TINY["ResNetLifItout"]
    small = load_config(write_config(tmp_path / "r.py", backbone, inshape))
    _, ckpt = active_net(small, tmp_path / "r.pth")
    spec = ModelSpec.from_config(small, checkpoint=ckpt, input_dtype="uint8")
    assert spec.checkpoint_file_sha256 == file_sha256(ckpt) and spec.checkpoint == str(ckpt) and spec.input_dtype == "uint8"
    assert spec.weights_sha256 == state_dict_sha256(read_state_dict(ckpt))   # the weights by content
    sd = torch.load(ckpt, weights_only=True)
    name = next(k for k in sd if k.endswith("weight"))
    got = dict(spec.segments[0].backbone.named_parameters())
    assert torch.equal(got[name.removeprefix("backbone.")], sd[name])


def test_bad_input_is_named(tmp_path):
    cfg = tiny_dvsmnist(10)
    with pytest.raises(ValueError, match="grid has 7 segment columns but SeqClif3Fc3DmItout has only 6 blocks"):
        ModelSpec.from_config(cfg, columns=7)
    with pytest.raises(ValueError, match=r"grid has 3 segment columns, but the config defines 2 segment models"):
        ModelSpec.from_config(load_config("resnetlif50-itout-b8x1-cifar10dvs_mp"), columns=3)
    with pytest.raises(ValueError, match="splits=.*the config already cuts the model"):
        ModelSpec.from_config(load_config("resnetlif50-itout-b8x1-cifar10dvs_mp"), splits=[[0, 16]])
    with pytest.raises(ValueError, match=r"in_shape=\[2, 8, 8\] conflicts with models_compile_inputshape\[0\]"):
        ModelSpec.from_config(cfg, in_shape=(2, 8, 8))
    with pytest.raises(ValueError, match=r"models_compile_inputshape\[0\]='x': expected \[1, C, H, W\]"):
        ModelSpec.from_config(load_config("clif3fc3dm_itout-b16x1-dvsmnist", ["models_compile_inputshape=['x']"]))
    with pytest.raises(ValueError, match="input_dtype='int4'"):
        ModelSpec.from_config(cfg, input_dtype="int4")
    with pytest.raises(ValueError, match="columns=0"):
        ModelSpec.from_config(cfg, columns=0)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        ModelSpec.from_config(cfg, checkpoint=tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="expected a Config from bidl_models.config.load_config"):
        ModelSpec.from_config(dict(cfg))
    backbone, _ = TINY["ResNetLifItout"]
    with pytest.raises(ValueError, match="in_shape"):
        ModelSpec.from_config(load_config(write_config(tmp_path / "noshape.py", backbone)))
