"""The model spec recorded beside the artifacts (compile.spec_record): a rerun that finds its artifacts
cached reads the spec back and builds no model; the record is keyed by what the spec depends on,
sealed, and checked against the model when the model is built after all."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from bidl_models.config import load_config
from bidl_models.model_spec import ModelSpec
from compile import CompileOptions
from compile.job import CompileJob
from compile.seal import seal_manifest
from compile.spec_record import SPECS_DIR, read_record, record_path, recorded_spec
from conftest import TINY, active_net, write_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _job(cfg, out, ckpt=None, **kw) -> CompileJob:
    return CompileJob(cfg, grid="3x2", checkpoint=ckpt, options=CompileOptions(out=str(out), progress=False), **kw)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """A tiny model compiled for a 3x2 grid (its spec recorded), its config and checkpoint."""
    d = tmp_path_factory.mktemp("rec")
    cfg_path = write_config(d / "tiny.py", TINY["SeqClif3Fc3DmItout"][0])
    _, ckpt = active_net(load_config(cfg_path), d / "tiny.pth")
    first = _job(load_config(cfg_path), d / "art", ckpt)
    first.artifacts()
    return cfg_path, ckpt, d / "art", first.spec


def test_a_cached_rerun_reads_the_spec_back_and_builds_no_model(compiled):
    cfg_path, ckpt, out, fresh = compiled
    assert len(list((out / SPECS_DIR).glob("*.json"))) == 1
    job = _job(load_config(cfg_path), out, ckpt)
    arts = job.artifacts()
    assert {r.cache for r in arts.records} == {"hit"}
    assert job.spec._segments is None              # no module was built for the cached run
    assert job.spec == fresh and job.spec.io == fresh.io and job.spec.key == fresh.key
    assert job.weight_bytes() == list(fresh.weight_bytes) and all(b > 0 for b in job.weight_bytes())
    assert str(arts.root) == str(out / f"{fresh.name}-{fresh.key}")
    # the modules, when something needs them, are the model's: same outputs as the fresh spec's
    import torch
    x = torch.rand((3, 1) + fresh.in_shape)
    assert torch.equal(job.spec.segments[0].run(x)[0], fresh.segments[0].run(x)[0])


def test_the_cached_run_imports_no_shape_tracer(compiled):
    """The point of the record: a cached run's driver never imports torch's compiler stack."""
    cfg_path, ckpt, out, _ = compiled
    code = textwrap.dedent(f"""
        import sys
        from bidl_models.config import load_config
        from compile import CompileOptions
        from compile.job import CompileJob
        job = CompileJob(load_config({str(cfg_path)!r}), grid="3x2", checkpoint={str(ckpt)!r},
                         options=CompileOptions(out={str(out)!r}, progress=False))
        assert {{r.cache for r in job.artifacts().records}} == {{"hit"}}
        print("dynamo" if "torch._dynamo" in sys.modules else "no dynamo", job.spec._segments is None)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-3:] == ["no", "dynamo", "True"], r.stdout


def test_the_key_follows_the_weights_the_cut_and_the_seed(compiled, tmp_path):
    cfg_path, ckpt, out, fresh = compiled
    cfg = load_config(cfg_path)
    args = _job(cfg, out, ckpt).spec_args
    base = record_path(out, cfg, args)
    assert base.is_file() and base.parent == out / SPECS_DIR
    other = tmp_path / "other.pth"
    other.write_bytes(ckpt.read_bytes() + b"")        # the same content elsewhere: another path, another key
    assert record_path(out, cfg, {**args, "checkpoint": str(other)}) != base
    assert record_path(out, cfg, {**args, "seed": 1}) != base
    assert record_path(out, cfg, {**args, "columns": 3}) != base
    changed = tmp_path / "changed.py"
    assert "'nclass': 10" in cfg_path.read_text()
    changed.write_text(cfg_path.read_text().replace("'nclass': 10", "'nclass': 11"))
    a, b = load_config(changed), load_config(cfg_path)
    a.name = b.name                                        # the same name, another model
    assert record_path(out, a, args) != record_path(out, b, args)


@pytest.fixture
def record(compiled):
    """(config, spec arguments, record path, the fresh spec) of the compiled model; the record is put
    back as it was afterwards."""
    cfg_path, ckpt, out, fresh = compiled
    cfg = load_config(cfg_path)
    args = _job(cfg, out, ckpt).spec_args
    path = record_path(out, cfg, args)
    good = path.read_text()
    yield cfg, args, path, fresh
    path.write_text(good)


def test_an_edited_record_is_not_used_and_is_rewritten(record):
    cfg, args, path, fresh = record
    doc = json.loads(path.read_text())
    doc["spec"]["splits"] = [[0, 1], [1, 6]]           # edited without the key: the seal breaks
    path.write_text(json.dumps(doc))
    assert read_record(path, cfg, args) is None
    spec, read = recorded_spec(path.parents[1], cfg, args)    # resolved again (modules built), nothing written
    assert not read and spec._segments is not None and spec == fresh and read_record(path, cfg, args) is None
    job = _job(cfg, path.parents[1], args["checkpoint"])
    assert {r.cache for r in job.artifacts().records} == {"hit"}   # the compile's check rewrites it
    assert job.spec._segments is not None and read_record(path, cfg, args) == fresh
    path.write_text("{not json")
    assert read_record(path, cfg, args) is None


def test_a_stale_record_is_refused_when_the_model_is_built(record):
    """A sealed record that does not describe the model (it cannot happen but through the key or a
    bug): building the modules names the field and says the record is stale."""
    cfg, args, path, _ = record
    doc = json.loads(path.read_text())
    doc.pop("seal")
    doc["spec"]["weights_sha256"] = "0" * 64
    path.write_text(json.dumps(seal_manifest(doc)))
    spec = read_record(path, cfg, args)
    assert spec is not None and spec.weights_sha256 == "0" * 64 and spec._segments is None
    with pytest.raises(ValueError, match="weights_sha256=.*the record is stale"):
        spec.segments


def test_round_trip_keeps_every_field_and_the_whole_sequence_check(tmp_path):
    """to_dict / from_dict keep every compared field, the signatures, the weights' bytes and the layers
    that forbid time slices (checked without building the model)."""
    cfg = load_config(write_config(tmp_path / "r.py", TINY["ResNetLifItout"][0], TINY["ResNetLifItout"][1]))
    spec = ModelSpec.from_config(cfg, columns=2)
    back = ModelSpec.from_dict(cfg, json.loads(json.dumps(spec.to_dict())), lambda: spec)
    assert back == spec and back.io == spec.io and back.weight_bytes == spec.weight_bytes
    assert back.splits == spec.splits and back.whole_sequence == spec.whole_sequence == ()
    back.check_slices([1, 1, 1])
    whole = ModelSpec.from_dict(cfg, {**spec.to_dict(), "whole_sequence": [[1, "block3.attn", "TimeAttention"]]},
                                lambda: spec)
    with pytest.raises(ValueError, match="layer 'block3.attn' \\(TimeAttention, segment 1\\)"):
        whole.check_slices([1, 2])
    assert back._segments is None


def test_plan_only_or_a_refused_grid_leaves_no_record(tmp_path):
    """A command that compiles nothing (bidl-plan's preview) records nothing and makes no directory; a
    compile refused for its grid records nothing either."""
    cfg = load_config(write_config(tmp_path / "p.py", TINY["SeqClif3Fc3DmItout"][0]))
    job = _job(cfg, tmp_path / "none")
    assert job.spec.T == 3 and not (tmp_path / "none").exists()
    (tmp_path / "root").mkdir()
    refused = CompileJob(cfg, grid="4x2", options=CompileOptions(out=str(tmp_path / "root"), progress=False))
    with pytest.raises(ValueError, match="4 time-slice rows but the model has T=3"):
        refused.artifacts()
    assert list((tmp_path / "root").rglob("*")) == []


@pytest.mark.slow
def test_bidl_run_refuses_a_grid_the_recorded_model_cannot_take_before_ray(compiled):
    """With the spec recorded, the model's checks come before Ray starts (one line, exit 2)."""
    cfg_path, ckpt, out, _ = compiled
    r = subprocess.run([sys.executable, "-m", "bidl_runtime.run", "--config", str(cfg_path), "--checkpoint",
                        str(ckpt), "--grid", "4x2", "--artifacts", str(out), "--backend", "cpu"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "error: grid has 4 time-slice rows but the model has T=3" in r.stderr
    assert "ray start" not in r.stderr and "ray:" not in r.stdout, r.stdout + r.stderr


def test_a_cache_that_cannot_take_the_record_still_serves(compiled, tmp_path):
    """Where the record cannot be written (a read-only cache; here its directory's name is taken by a
    file, which also stops root): the artifacts are found, nothing fails, the next run resolves the
    model again."""
    import shutil
    cfg_path, ckpt, out, fresh = compiled
    ro = tmp_path / "ro"
    shutil.copytree(out, ro)
    shutil.rmtree(ro / SPECS_DIR)
    (ro / SPECS_DIR).write_text("not a directory")
    job = _job(load_config(cfg_path), ro, ckpt)
    assert {r.cache for r in job.artifacts().records} == {"hit"} and job.spec == fresh
    assert (ro / SPECS_DIR).read_text() == "not a directory"
