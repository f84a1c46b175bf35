"""ONNX export of segment chunk programs: onnxruntime (CPU) agrees with the compiled artifacts and the
eager segments, chunk after chunk with the state carried; the ABI (names, dynamic batch) is kept.

Needs the ``onnx`` extra (onnx, onnxruntime, onnxscript); skips cleanly without it.
"""
from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from bidl_models.config import load_config  # noqa: E402
from bidl_models.from_config import build_segments  # noqa: E402
from compile import compile_config, load_artifact  # noqa: E402
from compile.onnx_export import OnnxExportError, check_onnx, export_artifact, export_segment, main  # noqa: E402
from conftest import activate  # noqa: E402 - BN/FC gains raised so spikes reach the deepest layers

TOL = 1e-5
RESNET = dict(type="ResNetLifItout", depth=10, nclass=10, timestep=3, input_channels=2, stem_channels=8,
              base_channels=8, soma_params="channel_share", down_t=[1, "avg"])


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """A ResNet-10 config with an activated checkpoint, compiled for a 2x2 grid (chunks of 2 and 1)."""
    root = tmp_path_factory.mktemp("onnx")
    cfg = root / "resnet10onnx.py"
    cfg.write_text(f"model = dict(type='ImageClassifier', backbone={RESNET!r})\n"
                   "models_compile_inputshape = [[1, 2, 32, 32]]\n")
    net = activate(build_segments(load_config(str(cfg)))[0].backbone)
    ckpt = root / "w.pth"
    torch.save(net.state_dict(), ckpt)
    cm = compile_config(str(cfg), str(ckpt), grid="2x2", splits=[[0, 1], [1, 4]], out=root / "art",  # block
                        progress=False, verbose=False, use_dataset=False)  # boundaries: ONNX takes no carry
    return types.SimpleNamespace(root=root, cfg=cfg, ckpt=ckpt, cm=cm, net=net)


@pytest.mark.slow   # 13-27 s on 2 cores
def test_every_artifact_exports_and_matches_in_onnxruntime(compiled):
    for rec in compiled.cm.records:
        art = load_artifact(rec.path)
        path = export_artifact(rec.path)
        assert path == Path(rec.path) / "program.onnx"
        model = onnx.load(str(path))
        names = [i.name for i in model.graph.input]
        assert names == ["x", *art.state_names]
        assert [o.name for o in model.graph.output] == ["y", *(f"next.{n}" for n in art.state_names)]
        meta = {p.key: p.value for p in model.metadata_props}
        assert int(meta["chunk_len"]) == art.chunk_len and meta["program_sha256"] == art.manifest.program.sha256
        x_dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        assert x_dims == [art.chunk_len, "batch", *art.input_spec.shape[1:]]
        diffs = check_onnx(path, art, chunks=3, batch=3)
        print(f"model_{rec.segment} t{rec.chunk_len}: onnxruntime vs artifact max|diff| "
              f"y {diffs['y']:.2e}, state {max(v for k, v in diffs.items() if k != 'y'):.2e}")
        assert max(diffs.values()) <= TOL, diffs
    assert len(compiled.cm.records) == 4


def test_onnx_outputs_are_not_trivial(compiled):
    """The check compares real activity: the last segment's state and output are non-zero."""
    rec = [r for r in compiled.cm.records if r.segment == 1 and r.chunk_len == 2][0]
    path = export_artifact(rec.path, compiled.root / "last.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    art = load_artifact(rec.path)
    g = torch.Generator().manual_seed(0)
    first = compiled.net.segment(*compiled.cm.splits[0])
    x = (torch.rand((2, 2, 2, 32, 32), generator=g) < 0.3).float()
    with torch.no_grad():
        h, _ = first.run(x)
    feeds = {"x": h.numpy(), **{s.name: np.zeros((2, *s.shape[1:]), np.float32) for s in art.state_specs}}
    out = sess.run(None, feeds)
    assert np.abs(out[0]).sum() > 0 and sum(np.abs(o).sum() > 0 for o in out[1:]) >= len(out[1:]) // 2
    ref = art(h, *(torch.from_numpy(feeds[n]) for n in art.state_names))
    for o, r in zip(out, ref):
        np.testing.assert_allclose(o, r.numpy(), rtol=0, atol=TOL)


def test_eager_segment_export_matches_eager(compiled, tmp_path):
    seg = compiled.net.segment(2, compiled.net.n_blocks)
    path = export_segment(seg, tmp_path / "seg.onnx", chunk_len=2, batch=1, in_shape=seg.input_shape((2, 32, 32)))
    diffs = check_onnx(path, seg, chunks=3, batch=2)
    assert max(diffs.values()) <= TOL, diffs
    assert set(diffs) == {"y", *(s.name for s in seg.specs(1, (2, 32, 32)).state)}


@pytest.mark.parametrize("bb, state_key", [
    # BIDL's default layouts: Conv2dLif and FcLif with BN on the membrane state
    (dict(type="SeqClif3Flif2DgItout", h=16, w=16, timestep=3), "flif1.lif.v"),
    # LIF+ in BIDL's form (COBA, reversal voltage, RR, EXI, SBT), analog output
    (dict(type="SeqClif3Fc3DmItout", h=16, w=16, timestep=3, neuron="lifplus", cmode="analog",
          neuron_config=[2, True, 2, 1, 2, 0], lifplus_form="bidl"), "clif2.lifplus.r_m1"),
], ids=["bn-on-state", "lifplus-bidl"])
def test_bidl_layouts_export_and_match(bb, state_key, tmp_path):
    from bidl_models import build_backbone
    net = activate(build_backbone(bb)).eval()
    seg = net.segment(1, net.n_blocks)
    path = export_segment(seg, tmp_path / "seg.onnx", chunk_len=2, batch=1, in_shape=seg.input_shape())
    diffs = check_onnx(path, seg, chunks=3, batch=2)
    assert state_key in diffs and max(diffs.values()) <= TOL, diffs


@pytest.mark.slow   # 13-27 s on 2 cores
def test_uint8_input_artifact(compiled):
    cm = compile_config(str(compiled.cfg), str(compiled.ckpt), rows=1, input_dtype="uint8",
                        out=compiled.root / "u8", progress=False, verbose=False, use_dataset=False)
    rec = cm.records[0]
    path = export_artifact(rec.path)
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert max(check_onnx(path, rec.path, chunks=2).values()) <= TOL


def test_cli_exports_and_checks(compiled, tmp_path, capsys):
    dirs = [str(r.path) for r in compiled.cm.records if r.chunk_len == 1]
    assert main([*dirs, "--out", str(tmp_path), "--check-chunks", "2"]) == 0
    out = capsys.readouterr().out
    assert "max|diff| y" in out and len(list(tmp_path.glob("*.onnx"))) == 2
    assert main([str(tmp_path / "nowhere")]) == 1
    assert "error:" in capsys.readouterr().err


def test_refusals_name_the_problem(tmp_path):
    aot = types.SimpleNamespace(state_specs=[], format="aoti", path=tmp_path / "t3_b1_aot")
    with pytest.raises(OnnxExportError, match="without --aot"):
        export_artifact(aot)
    bare = tmp_path / "plain.onnx"
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    onnx.save(onnx.helper.make_model(graph), str(bare))
    with pytest.raises(OnnxExportError, match="metadata"):
        check_onnx(bare, None)
    with pytest.raises(FileNotFoundError):
        check_onnx(tmp_path / "missing.onnx", None)
    from bidl_models import build_backbone
    inner = build_backbone(dict(RESNET, h=32, w=32)).segment(0, "1.2")
    with pytest.raises(OnnxExportError, match=r"split=\[0, '1.2'\] cuts inside a residual block"):
        export_segment(inner, tmp_path / "inner.onnx", chunk_len=1)


def test_nir_graph_to_grid_artifact_to_onnx(tmp_path):
    """A NIR graph compiled as a grid segment and exported to ONNX: the whole interop chain."""
    nir = pytest.importorskip("nir")
    one = lambda v: np.full((6,), v)  # noqa: E731
    g = nir.NIRGraph(nodes={
        "input": nir.Input(input_type=np.array([4])),
        "fc": nir.Affine(weight=np.linspace(-1, 1, 24, dtype=np.float32).reshape(6, 4) * 2,
                         bias=np.full(6, 0.3, np.float32)),
        "lif": nir.LIF(tau=one(4e-4), r=one(4.0), v_leak=one(0.0), v_threshold=one(0.5), v_reset=one(0.0)),
        "out": nir.Linear(weight=np.eye(3, 6, dtype=np.float32)),
        "li": nir.LI(tau=one(2e-4)[:3], r=one(2.0)[:3], v_leak=one(0.0)[:3]),
        "output": nir.Output(output_type=np.array([3]))},
        edges=[("input", "fc"), ("fc", "lif"), ("lif", "out"), ("out", "li"), ("li", "output")])
    path = tmp_path / "tiny.nir"
    nir.write(str(path), g)
    cfg = tmp_path / "tinynir.py"
    cfg.write_text(f"model = dict(type='ImageClassifier', backbone=dict(type='NirGraph', graph={str(path)!r}, "
                   "dt=1e-4, timestep=4))\n")   # NirGraph is a registered backbone type: no import needed
    cm = compile_config(str(cfg), grid="1x2", out=tmp_path / "art", progress=False, verbose=False, use_dataset=False)
    state_names = []
    for rec in cm.records:
        onnx_path = export_artifact(rec.path)
        state_names += [i.name for i in onnx.load(str(onnx_path)).graph.input[1:]]
        diffs = check_onnx(onnx_path, rec.path, chunks=2)
        print(f"NIR model_{rec.segment}: onnxruntime vs artifact max|diff| {max(diffs.values()):.2e}")
        assert max(diffs.values()) <= TOL
    assert sorted(state_names) == ["li.v", "lif.v", "tempAdd"]   # the state is named by the NIR nodes
