"""Tests of the compile package: artifacts equal the eager model, caching, refusal of bad artifacts.

Models are tiny (16x16 .. 64x64 inputs, T = 2 or 3, ResNet-10 at a quarter width; the _mp
ResNet-50 keeps its width but gets 2x32x32 inputs and T = 2) so that every test compiles in seconds on two
CPU cores. Checkpoints are "activated" (BatchNorm scale/shift raised) so that spikes reach the
deepest layers: with seeded initial weights the activity dies out and a comparison of outputs
would check little.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import shutil
import time
from pathlib import Path
from typing import Optional

import pytest
import torch
from torch import nn

from bidl_models.config import load_config
from bidl_models.model_spec import ModelSpec
from compile import (Artifact, ArtifactError, ArtifactSet, CompiledModel, CompileOptions, Manifest, VerificationError,
                     compile_config, compile_spec, load_artifact, read_manifest)
from compile.manifest import FAST_PROGRAM
from compile.spec_record import SPECS_DIR
from compile.__main__ import main as cli_main
from compile.artifact import MANIFEST, PROGRAM, seal_manifest, torch_compatible
from conftest import TINY, active_net, write_config

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-6


def spikes(steps: int, batch: int, shape, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand((steps, batch, *shape), generator=g) < 0.3).float()


def steps(h, a: int, b: int):
    """Steps [a, b) of an activation: a tensor, or x and its carry across a cut inside a block."""
    return tuple(t[a:b] for t in h) if isinstance(h, tuple) else h[a:b]


def cat(outs: list):
    """Chunks of an activation joined along time."""
    return tuple(torch.cat(z) for z in zip(*outs)) if isinstance(outs[0], tuple) else torch.cat(outs)


def run_grid(cm: CompiledModel, x: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
    """Run the artifacts as the grid does: per segment, time slices in row order with the state
    handed from row to row; the per-step outputs of a segment (with their carry when it ends inside
    a block) feed the next one."""
    h = x
    finals = []
    for s in range(cm.n_segments):
        outs, state, t = [], None, 0
        for g in range(cm.rows):
            art = load_artifact(cm.cell(g, s))
            xin = steps(h, t, t + art.chunk_len)
            if art.input_dtype == "uint8":
                xin = xin.to(torch.uint8)
            y, state = art.run(xin, state)
            outs.append(y)
            t += art.chunk_len
        assert t == x.shape[0]
        h = cat(outs)
        finals.append(state)
    return h, finals


@torch.no_grad()
def eager_grid(net: nn.Module, cm: CompiledModel, x: torch.Tensor) -> torch.Tensor:
    """The eager segments of ``net`` (cut like ``cm``) run exactly as :func:`run_grid` runs the
    artifacts: what the artifacts must reproduce to the last bit (``TOL``)."""
    h = x.float()
    for s, e in cm.splits:
        seg = net.segment(s, e)
        outs, state, t = [], None, 0
        for L in cm.row_chunks:
            y, state = seg.run(steps(h, t, t + L), state)
            outs.append(y)
            t += L
        h = cat(outs)
    return h


@torch.no_grad()
def eager(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """The whole eager model over all T in one call, fresh state: (per-step outputs, final state)."""
    return net.run(x.float())


def close_to_whole(got: torch.Tensor, ref: torch.Tensor) -> None:
    """Artifacts over time slices vs the eager model over all T in one call: equal up to float
    rounding (a Linear over T*B rows and over L*B rows may round differently)."""
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("compile")


# ------------------------------------------------------------------------------ helpers

def test_torch_compatibility_rule():
    assert torch_compatible("2.13.0+cpu", "torch.export", "2.13.1+cu128")
    assert not torch_compatible("2.12.0", "torch.export", "2.13.0")
    assert torch_compatible("2.13.0+cpu", "aoti", "2.13.0")
    assert not torch_compatible("2.13.0", "aoti", "2.13.1")


# ------------------------------------------------------------------------------ equivalence

@pytest.mark.parametrize("name", list(TINY))
def test_every_backbone_artifacts_equal_eager(name, workdir):
    """Time slices 2 + 1 (chunk lengths > 1 and 1), state carried, batch 2 on a batch-1 compile."""
    backbone, inshape = TINY[name]
    cfg = load_config(write_config(workdir / f"tiny_{name}.py", backbone, inshape))
    net, ckpt = active_net(cfg, workdir / f"{name}.pth")
    cm = compile_config(cfg, ckpt, grid="2x1", out=workdir / "art", progress=False, verbose=False)
    assert cm.row_chunks == [2, 1] and [r.cache for r in cm.records] == ["miss", "miss"]
    for r in cm.records:
        assert r.verify_max_abs_diff is not None and r.verify_max_abs_diff <= 1e-5
    x = spikes(3, 2, cm.in_shape)
    ref, ref_state = eager(net, x)
    got, finals = run_grid(cm, x)
    assert max_diff(got, eager_grid(net, cm, x)) <= TOL
    close_to_whole(got, ref)
    assert finals[0].keys() == ref_state.keys()
    for k, v in ref_state.items():
        torch.testing.assert_close(finals[0][k], v, rtol=1e-5, atol=1e-5)
    assert got[-1].std() > 0 and (got[-1, 0] - got[-1, 1]).abs().max() > 1e-3  # input reaches the output


@pytest.fixture(scope="module")
def resnet3(workdir):
    """Tiny ResNet-10 cut automatically into 3 segments on a 2 x 3 grid (chunk lengths 2 and 1)."""
    backbone, inshape = TINY["ResNetLifItout"]
    cfg = load_config(write_config(workdir / "resnet3.py", backbone, inshape))
    net, ckpt = active_net(cfg, workdir / "resnet3.pth", guide_format=True)
    t0 = time.perf_counter()
    cm = compile_config(cfg, ckpt, grid="2x3", out=workdir / "r3", progress=False, verbose=False)
    return cfg, ckpt, cm, time.perf_counter() - t0, net


def test_three_segment_grid_equals_whole_model(resnet3):
    cfg, ckpt, cm, _, net = resnet3
    assert cm.n_segments == 3 and cm.splits[0][0] == 0 and cm.splits[-1][1] == 4
    assert len(cm.records) == 6 and {r.chunk_len for r in cm.records} == {1, 2}
    x = spikes(3, 1, cm.in_shape)
    ref, ref_state = eager(net, x)
    got, finals = run_grid(cm, x)
    assert max_diff(got, eager_grid(net, cm, x)) <= TOL
    close_to_whole(got, ref)
    merged = {k: v for f in finals for k, v in f.items()}
    assert merged.keys() == ref_state.keys()
    for k, v in ref_state.items():
        torch.testing.assert_close(merged[k], v, rtol=1e-5, atol=1e-5)


def test_cuts_inside_blocks_compile_with_their_carry_in_the_manifest(workdir):
    """A config whose model_0..2 are cut inside residual blocks ('1.2:8': block 1 after conv1 and
    lif1, plus 8 of conv2's channels; '2.1': block 2 after conv1): each manifest names the tensors
    that travel with x and y, the ABI takes and returns them, and the artifacts chain like the model."""
    bb = dict(TINY["ResNetLifItout"][0], noise=0.0)
    text = (f"_bb = {bb!r}\n"
            "model_0 = dict(type='ImageClassifier', backbone=dict(_bb, split=[0, '1.2:8']))\n"
            "model_1 = dict(type='ImageClassifier', backbone=dict(_bb, split=['1.2:8', '2.1']))\n"
            "model_2 = dict(type='ImageClassifier', backbone=dict(_bb, split=['2.1', 4]))\n")
    (workdir / "cut3.py").write_text(text)
    whole = load_config(write_config(workdir / "cut_whole.py", bb, TINY["ResNetLifItout"][1]))
    net, ckpt = active_net(whole, workdir / "cut_whole.pth")
    cm = compile_config(load_config(workdir / "cut3.py"), ckpt, grid="2x3", in_shape=(2, 32, 32),
                        out=workdir / "cut3", progress=False, verbose=False)
    assert cm.splits == [(0, "1.2:8"), ("1.2:8", "2.1"), ("2.1", 4)]
    carry = {r.segment: ([c.name for c in r.manifest.carry_in], [c.name for c in r.manifest.carry_out])
             for r in cm.records}
    assert carry == {0: ([], ["part", "skip"]), 1: (["part", "skip"], ["skip"]), 2: (["skip"], [])}
    for r in cm.records:
        man = r.manifest
        assert Manifest.from_dict(man.to_dict()) == man and man.split == cm.splits[r.segment]
        assert man.args == ["x", *carry[r.segment][0], *man.state_names]
        assert man.returns == ["y", *carry[r.segment][1], *man.state_names]
        assert r.verify_max_abs_diff is not None and r.verify_max_abs_diff <= 1e-5
    assert not cm.records[0].manifest.is_last and cm.records[-1].manifest.is_last
    x = spikes(3, 1, cm.in_shape)
    ref, _ = eager(net, x)
    got, _ = run_grid(cm, x)
    assert max_diff(got, eager_grid(net, cm, x)) <= TOL
    close_to_whole(got, ref)
    assert got[-1].std() > 0


def test_two_segment_explicit_splits_equal_whole_model(workdir):
    """A config with model_0/model_1 (split) and a 3-row grid of chunk length 1, then 2 rows."""
    bb = dict(TINY["SeqClif3Fc3DmItout"][0])
    text = (f"_bb = {bb!r}\n"
            "model_0 = dict(type='ImageClassifier', backbone=dict(_bb, split=[0, 2]))\n"
            "model_1 = dict(type='ImageClassifier', backbone=dict(_bb, split=[2, 6]))\n"
            "lynxi_devices = [[0, 1], [2, 3], [4, 5]]\n")
    path = workdir / "seq2.py"
    path.write_text(text)
    cfg = load_config(path)
    whole = load_config(write_config(workdir / "seq_whole.py", bb))
    net, ckpt = active_net(whole, workdir / "seq_whole.pth")
    cm = compile_config(cfg, ckpt, out=workdir / "s2", progress=False, verbose=False)   # grid from lynxi_devices
    assert (cm.rows, cm.n_segments, cm.row_chunks) == (3, 2, [1, 1, 1])
    x = spikes(3, 1, cm.in_shape)
    ref, _ = eager(net, x)
    got, _ = run_grid(cm, x)
    assert max_diff(got, eager_grid(net, cm, x)) <= TOL
    close_to_whole(got, ref)
    cm2 = compile_config(cfg, ckpt, grid="2x2", out=workdir / "s2", progress=False, verbose=False)
    assert cm2.row_chunks == [2, 1]
    assert [r.cache for r in cm2.records if r.chunk_len == 1] == ["hit", "hit"]
    assert [r.cache for r in cm2.records if r.chunk_len == 2] == ["miss", "miss"]
    got2 = run_grid(cm2, x)[0]
    assert max_diff(got2, eager_grid(net, cm2, x)) <= TOL
    close_to_whole(got2, ref)
    with pytest.raises(ValueError, match="grid has 3 segment columns, but the config defines 2"):
        compile_config(cfg, ckpt, grid="1x3", out=workdir / "s2", progress=False, verbose=False)


@pytest.mark.slow   # 13-27 s on 2 cores
def test_mp_config_chained_equals_whole_resnet50(workdir):
    """configs/..._mp.py (ResNet-50 split [0, 6] + [6, 16]), input shrunk to 2x32x32 and T to 2 via
    overrides; a guide-format checkpoint of the whole model loads into both segments."""
    shrink = ["models_compile_inputshape=[[1,2,32,32],[1,512,4,4]]",
              "model_0.backbone.timestep=2", "model_1.backbone.timestep=2"]
    cfg = load_config("resnetlif50-itout-b8x1-cifar10dvs_mp", shrink)
    whole = load_config("resnetlif50-itout-b8x1-cifar10dvs",
                        ["models_compile_inputshape=[[1,2,32,32]]", "model.backbone.timestep=2"])
    net, ckpt = active_net(whole, workdir / "r50.pth", guide_format=True)
    # verify=False: this test compares the chained artifacts with the whole model itself
    cm = compile_config(cfg, ckpt, out=workdir / "mp", verify=False, progress=False, verbose=False)
    assert cm.splits == [(0, 6), (6, 16)] and cm.rows == 1 and cm.row_chunks == [2]
    man1 = read_manifest(cm.path(1, 2))
    assert list(man1.input.shape) == [1, 512, 4, 4] and man1.is_last and not man1.is_first
    assert man1.verify is None and man1.checkpoint["sha256"] == cm.checkpoint_sha256
    x = spikes(2, 1, (2, 32, 32))
    ref, _ = eager(net, x)
    got, _ = run_grid(cm, x)
    assert max_diff(got, eager_grid(net, cm, x)) <= TOL
    close_to_whole(got, ref)
    assert got[-1].std() > 0


def test_uint8_event_counts_and_dynamic_batch(workdir):
    backbone, _ = TINY["SeqClif3Fc3DmItout"]
    cfg = load_config(write_config(workdir / "u8.py", dict(backbone, cmode="spike")))
    net, ckpt = active_net(cfg, workdir / "u8.pth")
    cm = compile_config(cfg, ckpt, rows=1, input_dtype="uint8", out=workdir / "u8", progress=False, verbose=False)
    art = cm.load(0, 3)
    assert art.input_dtype == "uint8" and art.path.name == "t3_b1_uint8"
    assert art.manifest.batch.to_dict() == {"compiled": 1, "dynamic": True, "min": 1, "max": None, "note": ""}
    g = torch.Generator().manual_seed(3)
    counts = torch.randint(0, 4, (3, 3, 2, 16, 16), generator=g, dtype=torch.uint8)   # batch 3 on a batch-1 compile
    y, state = art.run(counts, art.fresh_state(3))
    ref, ref_state = eager(net, counts)     # rows=1: one chunk = the whole run
    assert max_diff(y, ref) <= TOL
    assert max(max_diff(state[k], v) for k, v in ref_state.items()) <= TOL
    with pytest.raises(ValueError, match="dtype float32, expected uint8"):
        art(counts.float(), *art.fresh_state(3).values())


# ------------------------------------------------------------------------------ caching and refusal

@pytest.mark.slow   # 13-27 s on 2 cores
def test_second_compile_is_a_cache_hit(resnet3):
    cfg, ckpt, cm, t_first, _ = resnet3
    t0 = time.perf_counter()
    again = compile_config(cfg, ckpt, grid="2x3", out=cm.root.parent, progress=False, verbose=False)
    t_hit = time.perf_counter() - t0
    assert [r.cache for r in again.records] == ["hit"] * 6
    print(f"6 artifacts: first compile {t_first:.2f} s, cache hit {t_hit:.2f} s")
    assert t_hit < t_first / 3, (t_hit, t_first)
    # a config change outside the model (data, devices) keeps the artifacts valid
    cfg2 = load_config(cfg.filename, ["data.samples_per_gpu=4", "lynxi_devices=[[0, 1, 2], [3, 4, 5]]"])
    assert [r.cache for r in compile_config(cfg2, ckpt, out=cm.root.parent, progress=False,
                                            verbose=False).records] == ["hit"] * 6
    # the same config name with another model gets its own directory (keyed by what defines the programs)
    cfg3 = load_config(cfg.filename, ["model.backbone.nclass=5"])
    other = compile_config(cfg3, None, grid="2x3", out=cm.root.parent, progress=False, verbose=False)
    assert other.root != cm.root and other.root.parent == cm.root.parent
    assert [r.cache for r in other.records] == ["miss"] * 6 and all(r.path.is_dir() for r in cm.records)
    # a directory holding another model's artifacts under this key is refused, naming the differing hash
    shutil.rmtree(other.root)
    shutil.copytree(cm.root, other.root)
    with pytest.raises(ArtifactError, match="model_sha256") as e:
        compile_config(cfg3, None, grid="2x3", out=cm.root.parent, progress=False, verbose=False)
    assert e.value.reason == "mismatch" and e.value.path.endswith(MANIFEST)


def _one_artifact(workdir: Path, tag: str, ckpt: Optional[Path] = None, **kw) -> tuple:
    backbone, _ = TINY["SeqClif3Fc3DmItout"]
    cfg = load_config(write_config(workdir / f"{tag}.py", dict(backbone, timestep=2)))
    cm = compile_config(cfg, ckpt, rows=1, out=workdir / tag, progress=False, verbose=False, **kw)
    return cfg, cm, cm.path(0, 2)


def test_flipped_program_byte_is_refused_then_force_rebuilds(workdir):
    cfg, cm, d = _one_artifact(workdir, "flip")
    prog = d / PROGRAM
    data = bytearray(prog.read_bytes())
    data[len(data) // 2] ^= 0x01
    prog.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256 .* differs from the manifest") as e:
        load_artifact(d)
    assert e.value.reason == "corrupt" and e.value.path == str(prog)
    with pytest.raises(ArtifactError, match=str(prog)):
        compile_config(cfg, rows=1, out=workdir / "flip", progress=False, verbose=False)
    cm2 = compile_config(cfg, rows=1, out=workdir / "flip", force=True, progress=False, verbose=False)
    assert cm2.records[0].cache == "miss"
    assert load_artifact(d).manifest.program.sha256 == read_manifest(d).program.sha256


def test_artifacts_are_keyed_by_the_weights_content(workdir):
    """Other weights: another directory; the same weights in BIDL's checkpoint format (wrapped, prefixed):
    the same directory, nothing compiled; a directory holding other weights under this key is refused."""
    from bidl_models.checkpoint import read_state_dict, state_dict_sha256
    backbone, _ = TINY["SeqClif3Fc3DmItout"]
    cfg = load_config(write_config(workdir / "ck.py", dict(backbone, timestep=2)))
    _, a = active_net(cfg, workdir / "a.pth")
    b = workdir / "b.pth"
    sd = torch.load(a, weights_only=True)
    last_bias = [k for k in sd if k.endswith("bias")][-1]
    sd[last_bias] = sd[last_bias] + 1.0
    torch.save(sd, b)
    bidl = workdir / "a_bidl.pth"   # BIDL's tools/train.py layout: state_dict under a wrapper, module. prefixes
    torch.save({"state_dict": {f"module.{k}": v for k, v in torch.load(a, weights_only=True).items()},
                "epoch": 3}, bidl)
    cm = compile_config(cfg, a, rows=1, out=workdir / "ck", progress=False, verbose=False)
    same = compile_config(cfg, bidl, rows=1, out=workdir / "ck", progress=False, verbose=False)
    assert same.root == cm.root and [r.cache for r in same.records] == ["hit"]
    other = compile_config(cfg, b, rows=1, out=workdir / "ck", progress=False, verbose=False)
    assert other.root != cm.root and [r.cache for r in other.records] == ["miss"]
    content_a, content_b = (state_dict_sha256(read_state_dict(p)) for p in (a, b))
    with pytest.raises(ArtifactError, match="checkpoint_sha256: artifact has"):
        load_artifact(cm.path(0, 2), expect={"checkpoint_sha256": content_b})
    assert load_artifact(cm.path(0, 2), expect={"checkpoint_sha256": content_a}).chunk_len == 2
    man = read_manifest(cm.path(0, 2))
    from bidl_models.checkpoint import file_sha256
    assert man.checkpoint["sha256"] == content_a and man.checkpoint["file_sha256"] == file_sha256(a)
    assert man.config["name"] == "ck"
    shutil.rmtree(other.root)
    shutil.copytree(cm.root, other.root)
    with pytest.raises(ArtifactError, match="checkpoint_sha256") as e:
        compile_config(cfg, b, rows=1, out=workdir / "ck", progress=False, verbose=False)
    assert set(e.value.diffs) == {"checkpoint_sha256"}


def test_bad_manifests_are_refused(workdir):
    _, cm, d = _one_artifact(workdir, "badman")
    man = json.loads((d / MANIFEST).read_text())
    old = dict(man, versions=dict(man["versions"], torch="2.1.0"))
    (d / MANIFEST).write_text(json.dumps(old))
    with pytest.raises(ArtifactError, match="built with torch 2.1.0") as e:
        load_artifact(d)
    assert e.value.reason == "incompatible"
    # edits by a holder of the artifact key (resealed): the structural checks still catch them
    (d / MANIFEST).write_text(json.dumps(seal_manifest(dict(man, state=man["state"][:-1]))))  # another program's
    with pytest.raises(ArtifactError, match="describes 1 \\+ 3 state tensors"):
        load_artifact(d)
    wrong_shape = [dict(man["state"][0], shape=[1, 7, 16, 16])] + man["state"][1:]
    (d / MANIFEST).write_text(json.dumps(seal_manifest(dict(man, state=wrong_shape))))
    with pytest.raises(ArtifactError, match=r"program input 1 \(clif1.lif.v\) has shape \['B', 32, 16, 16\], "
                                            r"the manifest says \[1, 7, 16, 16\]"):
        load_artifact(d)
    (d / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON") as e:
        load_artifact(d)
    assert e.value.reason == "corrupt"
    with pytest.raises(ArtifactError, match="no manifest"):
        load_artifact(workdir)


# ------------------------------------------------------------------------------ artifact API

def test_artifact_api_and_input_checks(resnet3):
    _, _, cm, _, _ = resnet3
    art = cm.load(0, 2)
    assert isinstance(art, Artifact) and art.segment_index == 0 and art.split == cm.splits[0]
    assert art.chunk_len == 2 and art.batch == 1 and art.dynamic_batch
    assert [s.name for s in art.state_specs] == art.manifest.args[1:] == list(art.fresh_state())
    assert art.state_names[0] == "lif.lif.v"
    x = spikes(2, 1, cm.in_shape)
    out = art(x, *art.fresh_state().values())            # (y, *carry_out, *state): this auto split ends inside a block
    y2, named = art.run(x)                              # None: a fresh sample
    ys = y2 if isinstance(y2, tuple) else (y2,)
    assert art.manifest.returns == ["y", *(c.name for c in art.carry_out), *art.state_names]
    assert len(out) == len(ys) + len(named) and all(torch.equal(a, b) for a, b in zip(out, (*ys, *named.values())))
    y, flat = out[0], list(named.values())
    assert tuple(y.shape) == (2,) + tuple(art.output_spec.shape)
    with pytest.raises(ValueError, match=r"input x has shape \[3, 1, 2, 32, 32\], expected \[2, 'B', 2, 32, 32\]"):
        art(spikes(3, 1, cm.in_shape), *flat)
    with pytest.raises(ValueError, match="missing \\['lif.lif.v'\\]"):
        art.run(x, {k: v for k, v in named.items() if k != "lif.lif.v"})
    with pytest.raises(ValueError, match=f"got {len(flat) + 1} state tensors"):
        art(x, *flat, flat[0])


def test_program_loads_without_model_source(resnet3, workdir):
    """torch.export.load of the program in a process where bidl_models and compile cannot be imported."""
    _, _, cm, _, _ = resnet3
    d = cm.path(2, 1)
    art = load_artifact(d)
    x = torch.rand(1, 1, *art.input_spec.shape[1:])
    state = list(art.fresh_state().values())
    torch.save({"x": x, "state": state, "ref": art(x, *state)}, workdir / "io.pt")
    code = textwrap.dedent(f"""
        import sys
        sys.modules['bidl_models'] = None; sys.modules['compile'] = None   # any import of them fails
        import torch
        ep = torch.export.load({str(d / PROGRAM)!r})
        io = torch.load({str(workdir / 'io.pt')!r})
        out = ep.module()(io['x'], *io['state'])
        assert len(out) == len(io['ref'])
        print(max((a - b).abs().max().item() for a, b in zip(out, io['ref'])))
    """)
    res = subprocess.run([sys.executable, "-c", code], cwd=str(workdir), capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert float(res.stdout.strip().splitlines()[-1]) == 0.0


# ------------------------------------------------------------------------------ verification

def test_failed_verification_writes_nothing(workdir):
    backbone, _ = TINY["SeqClif3Fc3DmItout"]
    cfg = load_config(write_config(workdir / "vf.py", dict(backbone, timestep=2)))
    with pytest.raises(VerificationError, match="more than tol=-1"):
        compile_config(cfg, rows=1, out=workdir / "vf", tol=-1.0, progress=False, verbose=False)
    leftovers = list((workdir / "vf").rglob("*"))
    assert [p for p in leftovers if p.is_file()] == []


def test_verification_uses_the_dataset_sample(workdir, monkeypatch, capsys):
    """With a dataset available, the first test sample drives verification (stated in the manifest)."""
    sample = (torch.rand(5, 2, 16, 16) < 0.5).float()
    calls = []

    def build_dataset(cfg, where="data"):
        calls.append(dict(cfg, where=where))
        return [{"img": sample}]

    monkeypatch.setattr("compile.build.build_dataset", build_dataset)
    backbone, _ = TINY["SeqClif3Fc3DmItout"]
    cfg = load_config(write_config(workdir / "ds.py", dict(backbone, timestep=2),
                                   extra="data = dict(test=dict(type='FakeDvs', data_prefix='x'))\n"))
    cm = compile_config(cfg, rows=1, out=workdir / "ds", progress=False)
    assert calls and calls[0]["type"] == "FakeDvs" and calls[0]["where"] == "data.test"   # the test split
    man = read_manifest(cm.path(0, 2))
    assert man.verify.input == "dataset FakeDvs test sample 0" and man.verify.n_chunks == 3
    out = capsys.readouterr().out
    assert "verify model_0 t2 (3 chunks, state carried)" in out and "clif1.lif.v=" in out
    assert "seeded" in read_manifest(cm.path(0, 2)).checkpoint["sha256"]


# ------------------------------------------------------------------------------ errors and CLI

def test_clear_errors_for_bad_input(workdir):
    backbone, inshape = TINY["ResNetLifItout"]
    cfg = load_config(write_config(workdir / "noshape.py", backbone))        # ResNet: input size unknown
    with pytest.raises(ValueError, match="in_shape"):
        compile_config(cfg, rows=1, out=workdir / "e", progress=False, verbose=False)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        compile_config(cfg, workdir / "nope.pth", in_shape=(2, 32, 32), out=workdir / "e", progress=False)
    other = load_config(write_config(workdir / "other.py", TINY["SeqClif3Fc3DmItout"][0]))
    _, wrong = active_net(other, workdir / "wrong.pth")
    with pytest.raises(ValueError, match="does not match ResNetLifItout: missing keys"):
        compile_config(cfg, wrong, in_shape=(2, 32, 32), out=workdir / "e", progress=False, verbose=False)
    with pytest.raises(ValueError, match="4 time-slice rows but the model has T=3"):
        compile_config(cfg, rows=4, in_shape=(2, 32, 32), out=workdir / "e", progress=False, verbose=False)
    with pytest.raises(ValueError, match="input_dtype='int4'"):
        compile_config(cfg, input_dtype="int4", out=workdir / "e", progress=False, verbose=False)


def test_compile_once_the_runtime_finds_what_bidl_compile_wrote(workdir, capsys):
    """``bidl-compile`` then the runtime's chain (what ``bidl-run`` and ``bidl-plan`` walk): the same
    directory, nothing compiled the second time, also when the weights come in BIDL's checkpoint format."""
    from bidl_runtime.api import GridJob
    backbone, _ = TINY["SeqClif3Fc3DmItout"]
    cfg_path = write_config(workdir / "once.py", dict(backbone, timestep=4))
    _, ckpt = active_net(load_config(cfg_path), workdir / "once.pth")
    bidl = workdir / "once_bidl.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in torch.load(ckpt, weights_only=True).items()}}, bidl)
    out = workdir / "once_art"
    t0 = time.perf_counter()
    assert cli_main(["--config", str(cfg_path), "--checkpoint", str(ckpt), "--grid", "2x1", "--out", str(out),
                     "--quiet"]) == 0
    t_compile = time.perf_counter() - t0
    capsys.readouterr()
    for weights in (ckpt, bidl):
        t0 = time.perf_counter()
        arts = GridJob(load_config(cfg_path), grid="2x1", checkpoint=weights, artifacts=out).artifacts()
        t_run = time.perf_counter() - t0
        assert arts.records and {r.cache for r in arts.records} == {"hit"} and len([d for d in out.iterdir() if d.name != SPECS_DIR]) == 1
        print(f"bidl-compile {t_compile:.2f} s; the run's artifact stage ({weights.name}) {t_run:.2f} s, 0 built")


def test_cli(workdir, capsys):
    backbone, _ = TINY["SeqClif3Fc3DmItout"]
    cfg_path = write_config(workdir / "cli.py", backbone)
    argv = ["--config", str(cfg_path), "--grid", "3x1", "--out", str(workdir / "cli_art"), "--quiet",
            "--cfg-options", "model.backbone.timestep=2"]
    with pytest.raises(SystemExit):
        cli_main(["--help"])
    capsys.readouterr()
    assert cli_main(argv) == 1                          # 3 rows for T=2
    assert "3 time-slice rows but the model has T=2" in capsys.readouterr().err
    argv[3] = "2x1"
    assert cli_main(argv) == 0
    cap = capsys.readouterr()
    assert "DETERMINISTIC SEEDED INITIAL WEIGHTS" in cap.err
    table = cap.out[cap.out.index("segment  split"):]
    assert "state bytes" in table and "miss" in table and "verify max|diff|" in table
    assert cap.out.startswith(f"config: {cfg_path.resolve()} (a Python file: it ran when loaded)\n")   # the file it loaded
    (root,) = (workdir / "cli_art").glob("cli-*")       # <out>/<config>-<key>: what bidl-run looks for
    man = read_manifest(root / "model_0" / "t1_b1")
    assert man.timestep == 2 and man.chunk_len == 1
    assert cli_main(argv) == 0
    cap = capsys.readouterr()                           # a cached compile: one line, no warning, no table
    lines = cap.out.splitlines()
    assert len(lines) == 2 and lines[1].startswith("cli: 1 artifact(s) reused from the cache"), cap.out
    assert "NOT a trained checkpoint" in cap.out and cap.err == ""
    assert cli_main(argv + ["--grid", "2y1"]) == 1
    assert "grid='2y1'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("BIDL_SKIP_AOT") == "1", reason="BIDL_SKIP_AOT=1")
def test_aot_package_matches_eager(workdir):
    """AOTInductor (native code; about 25 s of C++ compile for this tiny net on 2 cores)."""
    backbone, _ = TINY["SeqClif3Fc3DmItout"]
    cfg = load_config(write_config(workdir / "aot.py", dict(backbone, timestep=2, h0=8, w0=8)))
    net, ckpt = active_net(cfg, workdir / "aot.pth")
    cm = compile_config(cfg, ckpt, rows=2, aot=True, out=workdir / "aot", progress=False, verbose=False)
    rec = cm.records[0]
    assert rec.path.name == "t1_b1_aot" and rec.verify_max_abs_diff <= 1e-5
    art = cm.load(0, 1)
    assert art.format == "aoti" and art.manifest.program.aoti_seconds > 0
    x = spikes(2, 1, (2, 8, 8))
    ref, _ = eager(net, x)
    got, _ = run_grid(cm, x)
    close_to_whole(got, ref)


# ------------------------------------------------------------------------------ the stage API

def test_compile_spec_takes_the_resolved_spec_and_the_rows_slices(workdir):
    backbone, _ = TINY["SeqClif3Fc3DmItout"]
    cfg = load_config(write_config(workdir / "stage.py", dict(backbone, timestep=5)))
    net, ckpt = active_net(cfg, workdir / "stage.pth")
    spec = ModelSpec.from_config(cfg, columns=2, checkpoint=ckpt)
    arts = compile_spec(spec, [2, 2, 1], CompileOptions(out=str(workdir / "stage"), progress=False, verbose=False))
    assert isinstance(arts, ArtifactSet) and CompiledModel is ArtifactSet
    assert arts.slices == (2, 2, 1) and arts.rows == 3 and arts.splits == [tuple(s) for s in spec.splits]
    assert arts.split_source == "auto split (flops)" and arts.checkpoint_sha256 == spec.weights_sha256
    assert {(r.segment, r.chunk_len) for r in arts.records} == {(0, 2), (0, 1), (1, 2), (1, 1)}
    x = spikes(5, 1, spec.in_shape)
    got, _ = run_grid(arts, x)
    assert max_diff(got, eager_grid(net, arts, x)) <= TOL
    with pytest.raises(ValueError, match=r"slices=\[2, 2\]: expected positive time-slice lengths summing to T=5"):
        compile_spec(spec, [2, 2], CompileOptions(out=str(workdir / "stage"), progress=False, verbose=False))


def test_options_and_manifest_round_trip(workdir):
    opts = CompileOptions(out="x", batch=2, tol=1e-4, aot=True)
    assert CompileOptions.from_dict(opts.to_dict()) == opts
    with pytest.raises(ValueError, match=r"unknown \['bogus'\]"):
        CompileOptions.from_dict({"bogus": 1})
    with pytest.raises(ValueError, match="batch=0"):
        CompileOptions(batch=0)
    with pytest.raises(ValueError, match="options are the CompileOptions fields"):
        compile_config("clif3fc3dm_itout-b16x1-dvsglyphs", outdir="x")
    _, cm, d = _one_artifact(workdir, "roundtrip")
    man = read_manifest(d)
    assert isinstance(man, Manifest) and Manifest.from_dict(man.to_dict()) == man
    assert man.to_dict() == json.loads((d / MANIFEST).read_text())   # to_dict is the file, key for key
    assert man.args == ["x", *man.state_names] and man.is_first and man.is_last
    doc = man.to_dict()
    del doc["key"]
    with pytest.raises(ArtifactError, match="manifest lacks the key 'key'"):
        Manifest.from_dict(doc, d / MANIFEST)


def test_fast_form_equals_the_exported_program_and_is_checked(workdir):
    """The TorchScript form the cells load: bit-exact with the exported program over chunks with the
    state carried, hashed in the manifest, refused when damaged, and loaded in milliseconds."""
    backbone, inshape = TINY["ResNetLifItout"]
    cfg = load_config(write_config(workdir / "fast.py", dict(backbone, timestep=4), inshape))
    _, ckpt = active_net(cfg, workdir / "fast.pth")
    cm = compile_config(cfg, ckpt, grid="2x2", out=workdir / "fast", progress=False, verbose=False)
    for r in cm.records:
        assert r.manifest.fast is not None and r.manifest.fast.format == "torchscript"
        assert (r.path / FAST_PROGRAM).is_file()
        exported, fast = load_artifact(r.path), load_artifact(r.path, fast=True)
        assert exported.format == "torch.export" and fast.format == "torchscript" and not fast.dynamic_batch
        xs = tuple(spikes(3 * r.chunk_len, 1, t.shape[1:], seed=r.segment) for t in exported.manifest.inputs)
        x = xs if len(xs) > 1 else xs[0]                  # x and its carry when the segment starts inside a block
        sa, sf = exported.fresh_state(), fast.fresh_state()
        for c in range(3):
            xc = steps(x, c * r.chunk_len, (c + 1) * r.chunk_len)
            ya, sa = exported.run(xc, sa)
            yf, sf = fast.run(xc, sf)
            ya, yf = (ya, yf) if isinstance(ya, tuple) else ((ya,), (yf,))
            assert len(ya) == len(yf) == 1 + len(exported.carry_out)
            assert all(map(torch.equal, ya, yf)) and all(torch.equal(sa[k], sf[k]) for k in sa)
    code = textwrap.dedent(f"""
        import time; t = time.perf_counter()
        from compile.artifact import load_artifact
        art = load_artifact({str(cm.records[0].path)!r}, fast=True)
        import sys
        print(art.format, time.perf_counter() - t, 'torch._dynamo' in sys.modules)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    fmt, secs, dynamo = res.stdout.split()
    assert fmt == "torchscript" and dynamo == "False", res.stderr[-2000:]   # no torch.export machinery imported
    print(f"fast-form load in a fresh process (imports included): {float(secs):.2f} s")
    d = cm.records[0].path
    data = bytearray((d / FAST_PROGRAM).read_bytes())
    data[len(data) // 2] ^= 0x01
    (d / FAST_PROGRAM).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="program.ts: sha256 .* differs from the manifest"):
        load_artifact(d, fast=True)
    with pytest.raises(ArtifactError, match="program.ts"):
        compile_config(cfg, ckpt, grid="2x2", out=workdir / "fast", progress=False, verbose=False)


def test_fast_form_is_added_to_an_artifact_that_lacks_it(workdir):
    _, cm, d = _one_artifact(workdir, "nofast", fast_load=False)
    assert read_manifest(d).fast is None and not (d / FAST_PROGRAM).exists()
    cfg = load_config(workdir / "nofast.py")
    again = compile_config(cfg, rows=1, out=workdir / "nofast", progress=False, verbose=False)
    assert again.records[0].cache == "hit" and read_manifest(d).fast is not None
    assert load_artifact(d, fast=True).format == "torchscript"
